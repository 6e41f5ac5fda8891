/* A worker's receive-buffer pool, shared with the kernel as a provided
 * buffer ring (IORING_REGISTER_PBUF_RING).
 *
 * Receives are submitted with IOSQE_BUFFER_SELECT: the kernel picks a buffer
 * only when data arrives, so an idle connection holds no buffer and memory
 * follows traffic, not connection count. A completed receive hands the
 * buffer to user space (ztm_bufring_take); it goes back to the kernel when
 * its last reference is put. Returned buffers are published in batches
 * (ztm_bufring_publish, once per loop turn). An empty ring makes receives
 * fail with -ENOBUFS: callers treat that as back-pressure and retry once
 * buffers come back (ztm_bufring_available() > 0).
 *
 * Debian's liburing 2.3 lacks io_uring_setup_buf_ring, so the ring is mmap'd
 * here and registered with io_uring_register_buf_ring. One worker only. */
#ifndef ZTM_RUNTIME_BUFRING_H
#define ZTM_RUNTIME_BUFRING_H

#include <liburing.h>
#include <stdint.h>

typedef struct ztm_bufring ztm_bufring_t;

/* COUNT: power of two, 1..32768; SIZE: bytes per buffer. Returns 0 or -errno
 * (-EINVAL on bad sizes, or the kernel's answer to the registration). */
int ztm_bufring_new(struct io_uring *ring, uint16_t bgid, uint32_t count, uint32_t size,
                    ztm_bufring_t **out);
/* Unregisters and unmaps. No buffer may be in use by the kernel or a caller. */
void ztm_bufring_free(ztm_bufring_t *br, struct io_uring *ring);

uint16_t ztm_bufring_gid(const ztm_bufring_t *br);
uint32_t ztm_bufring_buf_size(const ztm_bufring_t *br);
/* Buffers the kernel may still pick (published or pending publish). */
uint32_t ztm_bufring_available(const ztm_bufring_t *br);
void *ztm_bufring_addr(const ztm_bufring_t *br, uint16_t bid);

/* A completion handed buffer BID to user space: one reference. */
void ztm_bufring_take(ztm_bufring_t *br, uint16_t bid);
void ztm_bufring_ref(ztm_bufring_t *br, uint16_t bid);
/* Drops a reference; at zero the buffer is queued for return to the kernel. */
void ztm_bufring_put(ztm_bufring_t *br, uint16_t bid);
/* Makes queued buffers visible to the kernel. Returns how many. */
uint32_t ztm_bufring_publish(ztm_bufring_t *br);

#endif
