/* A bounded single-producer single-consumer queue of small fixed messages.
 *
 * The one way threads talk to a worker: each producer thread owns one queue
 * into each worker it talks to (see worker.h, the mailbox), so neither end
 * ever takes a lock. Capacity is a power of two fixed at init; a full queue
 * refuses the push (the producer decides: retry later, or drop and count). */
#ifndef ZTM_RUNTIME_SPSC_H
#define ZTM_RUNTIME_SPSC_H

#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct {
    uint32_t type;
    uint32_t u32;
    uint64_t u64;
    void *ptr;
} ztm_msg_t;

typedef struct {
    alignas(64) _Atomic uint32_t head; /* next slot to read; written by the consumer */
    alignas(64) _Atomic uint32_t tail; /* next slot to write; written by the producer */
    alignas(64) uint32_t mask;
    ztm_msg_t *slots;
} ztm_spsc_t;

/* CAP must be a power of two >= 2. Returns 0, -EINVAL or -ENOMEM. */
int ztm_spsc_init(ztm_spsc_t *q, uint32_t cap);
void ztm_spsc_fini(ztm_spsc_t *q);
/* Producer side. False when full. */
bool ztm_spsc_push(ztm_spsc_t *q, const ztm_msg_t *m);
/* Consumer side. False when empty. */
bool ztm_spsc_pop(ztm_spsc_t *q, ztm_msg_t *out);

#endif
