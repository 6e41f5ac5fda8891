/* A main() for fuzz targets built without libFuzzer (gcc, or clang without
 * -DZTM_FUZZ=ON): runs LLVMFuzzerTestOneInput once per file named on the
 * command line, descending into directories, so every target builds and
 * its corpus replays as a regression test under any compiler and under
 * ASan/UBSan. Exit status 0 when every input ran (a bug aborts). */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int runs;

static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return -1;
    }
    size_t cap = 4096, len = 0;
    uint8_t *buf = malloc(cap);
    size_t n;
    while (buf && (n = fread(buf + len, 1, cap - len, f)) > 0) {
        len += n;
        if (len == cap) {
            uint8_t *b = realloc(buf, cap *= 2);
            if (!b) {
                free(buf);
                buf = NULL;
            } else {
                buf = b;
            }
        }
    }
    fclose(f);
    if (!buf)
        return -1;
    /* an exact-size copy, so that ASan sees reads past the end */
    uint8_t *exact = malloc(len ? len : 1);
    memcpy(exact, buf, len);
    free(buf);
    LLVMFuzzerTestOneInput(exact, len);
    free(exact);
    runs++;
    return 0;
}

static int run_path(const char *path)
{
    struct stat st;
    if (stat(path, &st) < 0) {
        perror(path);
        return -1;
    }
    if (!S_ISDIR(st.st_mode))
        return run_file(path);
    DIR *d = opendir(path);
    if (!d)
        return -1;
    struct dirent *de;
    int ret = 0;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        char sub[4096];
        snprintf(sub, sizeof(sub), "%s/%s", path, de->d_name);
        if (run_path(sub) < 0)
            ret = -1;
    }
    closedir(d);
    return ret;
}

int main(int argc, char **argv)
{
    int ret = 0;
    for (int i = 1; i < argc; i++)
        if (run_path(argv[i]) < 0)
            ret = 1;
    fprintf(stderr, "%s: %d inputs\n", argv[0], runs);
    return ret;
}
