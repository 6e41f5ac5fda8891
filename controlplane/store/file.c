/* Atomic whole-file writes and bounded reads; see file.h. */
#include "controlplane/store/file.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The directory part of PATH into OUT ("." when there is none). */
static int dir_of(const char *path, char *out, size_t cap)
{
    const char *slash = strrchr(path, '/');
    size_t n;
    if (!slash) {
        out[0] = '.';
        n = 1;
    } else if (slash == path) {
        out[0] = '/';
        n = 1;
    } else {
        n = (size_t)(slash - path);
        if (n >= cap)
            return -ENAMETOOLONG;
        memcpy(out, path, n);
    }
    out[n] = 0;
    return 0;
}

static int fsync_path(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int ret = fsync(fd) < 0 ? -errno : 0;
    close(fd);
    return ret;
}

int ztm_file_sync_dir(const char *path)
{
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
        return fsync_path(path);
    char dir[PATH_MAX];
    int ret = dir_of(path, dir, sizeof(dir));
    return ret < 0 ? ret : fsync_path(dir);
}

int ztm_file_write_atomic(const char *path, const void *data, size_t len, mode_t mode)
{
    char tmp[PATH_MAX], dir[PATH_MAX];
    int ret, fd = -1;
    if (snprintf(tmp, sizeof(tmp), "%s.tmp.XXXXXX", path) >= (int)sizeof(tmp))
        return -ENAMETOOLONG;
    if ((ret = dir_of(path, dir, sizeof(dir))) < 0)
        return ret;
    /* mkstemp creates the file with mode 0600: no window in which a key is
     * readable by others, whatever MODE ends up being. */
    fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0)
        return -errno;
    if (fchmod(fd, mode) < 0)
        goto fail_errno;
    for (size_t off = 0; off < len;) {
        ssize_t w = write(fd, (const char *)data + off, len - off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            goto fail_errno;
        }
        off += (size_t)w;
    }
    if (fsync(fd) < 0)
        goto fail_errno;
    if (close(fd) < 0) {
        fd = -1;
        goto fail_errno;
    }
    fd = -1;
    if (rename(tmp, path) < 0)
        goto fail_errno;
    return fsync_path(dir);

fail_errno:
    ret = -errno;
    if (fd >= 0)
        close(fd);
    unlink(tmp);
    return ret;
}

int ztm_file_read(const char *path, size_t max, void **data, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct stat st;
    int ret = 0;
    char *buf = NULL;
    if (fstat(fd, &st) < 0) {
        ret = -errno;
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        ret = -EINVAL;
        goto out;
    }
    if ((unsigned long long)st.st_size > max) {
        ret = -EFBIG;
        goto out;
    }
    size_t size = (size_t)st.st_size, off = 0;
    buf = malloc(size + 1);
    if (!buf) {
        ret = -ENOMEM;
        goto out;
    }
    while (off < size) {
        ssize_t r = read(fd, buf + off, size - off);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            ret = -errno;
            goto out;
        }
        if (r == 0)
            break; /* shrank under us: return what is there */
        off += (size_t)r;
    }
    buf[off] = 0;
    *data = buf;
    *len = off;
    buf = NULL;
out:
    free(buf);
    close(fd);
    return ret;
}

void ztm_file_free_secret(void *p, size_t len)
{
    if (!p)
        return;
    /* explicit_bzero: the store library does not link BoringSSL */
    explicit_bzero(p, len);
    free(p);
}

int ztm_file_mkdirs(const char *path, mode_t mode)
{
    char buf[PATH_MAX];
    size_t n = strlen(path);
    if (n == 0)
        return -EINVAL;
    if (n >= sizeof(buf))
        return -ENAMETOOLONG;
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] != '/' && buf[i] != 0)
            continue;
        char c = buf[i];
        buf[i] = 0;
        if (mkdir(buf, mode) < 0 && errno != EEXIST)
            return -errno;
        buf[i] = c;
    }
    struct stat st;
    if (stat(path, &st) < 0)
        return -errno;
    return S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
}
