/* Provided buffer ring with per-buffer reference counts; see bufring.h. */
#include "dataplane/runtime/bufring.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>

struct ztm_bufring {
    struct io_uring_buf_ring *ring; /* shared with the kernel */
    uint8_t *mem;                   /* COUNT * SIZE bytes of buffers */
    size_t ring_bytes, mem_bytes;
    uint32_t count, size, mask;
    uint32_t pending;   /* added since the last publish */
    uint32_t available; /* in the kernel's hands (incl. pending) */
    uint16_t bgid;
    uint16_t *refs;
};

int ztm_bufring_new(struct io_uring *ring, uint16_t bgid, uint32_t count, uint32_t size,
                    ztm_bufring_t **out)
{
    if (count == 0 || count > 32768 || (count & (count - 1)) || size == 0 || size > (1u << 24))
        return -EINVAL;
    int ret = -ENOMEM;
    ztm_bufring_t *br = calloc(1, sizeof(*br));
    if (!br)
        return -ENOMEM;
    br->count = count;
    br->size = size;
    br->mask = (uint32_t)io_uring_buf_ring_mask(count);
    br->bgid = bgid;
    br->refs = calloc(count, sizeof(*br->refs));
    if (!br->refs)
        goto fail;
    br->ring_bytes = count * sizeof(struct io_uring_buf);
    br->ring = mmap(NULL, br->ring_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (br->ring == MAP_FAILED) {
        br->ring = NULL;
        goto fail;
    }
    br->mem_bytes = (size_t)count * size;
    /* Untouched pages cost nothing: RSS grows only as buffers get used. */
    br->mem = mmap(NULL, br->mem_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (br->mem == MAP_FAILED) {
        br->mem = NULL;
        goto fail;
    }
    io_uring_buf_ring_init(br->ring);
    struct io_uring_buf_reg reg = {
        .ring_addr = (unsigned long)br->ring,
        .ring_entries = count,
        .bgid = bgid,
    };
    ret = io_uring_register_buf_ring(ring, &reg, 0);
    if (ret < 0)
        goto fail;
    for (uint32_t i = 0; i < count; i++)
        io_uring_buf_ring_add(br->ring, br->mem + (size_t)i * size, size, (unsigned short)i,
                              (int)br->mask, (int)i);
    io_uring_buf_ring_advance(br->ring, (int)count);
    br->available = count;
    *out = br;
    return 0;
fail:
    if (br->mem)
        munmap(br->mem, br->mem_bytes);
    if (br->ring)
        munmap(br->ring, br->ring_bytes);
    free(br->refs);
    free(br);
    return ret;
}

void ztm_bufring_free(ztm_bufring_t *br, struct io_uring *ring)
{
    if (!br)
        return;
    io_uring_unregister_buf_ring(ring, br->bgid);
    munmap(br->mem, br->mem_bytes);
    munmap(br->ring, br->ring_bytes);
    free(br->refs);
    free(br);
}

uint16_t ztm_bufring_gid(const ztm_bufring_t *br)
{
    return br->bgid;
}

uint32_t ztm_bufring_buf_size(const ztm_bufring_t *br)
{
    return br->size;
}

uint32_t ztm_bufring_available(const ztm_bufring_t *br)
{
    return br->available;
}

void *ztm_bufring_addr(const ztm_bufring_t *br, uint16_t bid)
{
    assert(bid < br->count);
    return br->mem + (size_t)bid * br->size;
}

void ztm_bufring_take(ztm_bufring_t *br, uint16_t bid)
{
    assert(bid < br->count && br->refs[bid] == 0 && br->available > 0);
    br->refs[bid] = 1;
    br->available--;
}

void ztm_bufring_ref(ztm_bufring_t *br, uint16_t bid)
{
    assert(bid < br->count && br->refs[bid] > 0 && br->refs[bid] < UINT16_MAX);
    br->refs[bid]++;
}

void ztm_bufring_put(ztm_bufring_t *br, uint16_t bid)
{
    assert(bid < br->count && br->refs[bid] > 0);
    if (--br->refs[bid])
        return;
    io_uring_buf_ring_add(br->ring, br->mem + (size_t)bid * br->size, br->size, bid,
                          (int)br->mask, (int)br->pending);
    br->pending++;
    br->available++;
}

uint32_t ztm_bufring_publish(ztm_bufring_t *br)
{
    uint32_t n = br->pending;
    if (n) {
        io_uring_buf_ring_advance(br->ring, (int)n);
        br->pending = 0;
    }
    return n;
}
