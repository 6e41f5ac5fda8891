/* Fuzz target: the embedded store's file loader. The input (after a mode
 * byte) is written as DIR/store.db and the store opened: it must load or
 * refuse with ZTM_STORE_E_CORRUPT/FORMAT, never crash. A store that loads
 * must save and load again. With mode bit 0 the target first rewrites the
 * trailing CRC-32C to match, so that mutations reach the structural checks
 * behind the checksum. */
#include "controlplane/store/store.h"
#include "dataplane/runtime/log.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "fuzz.h"

static char dir[64];

static uint32_t crc32c(const uint8_t *p, size_t n)
{
    uint32_t c = 0xffffffffu;
    while (n--) {
        c ^= *p++;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
    }
    return c ^ 0xffffffffu;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!dir[0]) {
        strcpy(dir, "/tmp/ztm-fuzz-store-XXXXXX");
        FUZZ_ASSERT(mkdtemp(dir) != NULL);
        ztm_log_set_level((ztm_log_level_t)(ZTM_LOG_ERROR + 1)); /* quiet: every input is "corrupt" */
    }
    if (size < 1)
        return 0;
    bool fix_crc = data[0] & 1;
    data++;
    size--;
    uint8_t *copy = malloc(size ? size : 1);
    memcpy(copy, data, size);
    if (fix_crc && size >= 4) {
        uint32_t c = crc32c(copy, size - 4);
        for (int i = 0; i < 4; i++)
            copy[size - 4 + i] = (uint8_t)(c >> (8 * i));
    }
    char path[128];
    snprintf(path, sizeof(path), "%s/store.db", dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    FUZZ_ASSERT(fd >= 0);
    FUZZ_ASSERT(write(fd, copy, size) == (ssize_t)size);
    close(fd);
    free(copy);
    ztm_store_options_t o = {.dir = dir};
    ztm_store_t *s;
    int r = ztm_store_open_embedded(&o, &s);
    if (r < 0) {
        FUZZ_ASSERT(r == ZTM_STORE_E_CORRUPT || r == ZTM_STORE_E_FORMAT || r == -ENOMEM);
        return 0;
    }
    /* rewrite (a commit with no change still writes nothing; add one) */
    uint64_t v = ztm_store_version(s);
    FUZZ_ASSERT(ztm_store_put(s, ZTM_STORE_META, "fuzz", "x", 1) == 0);
    ztm_store_close(s);
    FUZZ_ASSERT(ztm_store_open_embedded(&o, &s) == 0);
    FUZZ_ASSERT(ztm_store_version(s) == v);
    ztm_store_close(s);
    return 0;
}
