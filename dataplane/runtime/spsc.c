/* SPSC ring; see spsc.h. Acquire/release pairs: the producer publishes a
 * slot with a release store of tail, the consumer frees it with a release
 * store of head. */
#include "dataplane/runtime/spsc.h"

#include <errno.h>
#include <stdlib.h>

int ztm_spsc_init(ztm_spsc_t *q, uint32_t cap)
{
    if (cap < 2 || (cap & (cap - 1)))
        return -EINVAL;
    q->slots = calloc(cap, sizeof(*q->slots));
    if (!q->slots)
        return -ENOMEM;
    q->mask = cap - 1;
    atomic_init(&q->head, 0);
    atomic_init(&q->tail, 0);
    return 0;
}

void ztm_spsc_fini(ztm_spsc_t *q)
{
    free(q->slots);
    q->slots = NULL;
}

bool ztm_spsc_push(ztm_spsc_t *q, const ztm_msg_t *m)
{
    uint32_t tail = atomic_load_explicit(&q->tail, memory_order_relaxed);
    uint32_t head = atomic_load_explicit(&q->head, memory_order_acquire);
    if (tail - head > q->mask)
        return false;
    q->slots[tail & q->mask] = *m;
    atomic_store_explicit(&q->tail, tail + 1, memory_order_release);
    return true;
}

bool ztm_spsc_pop(ztm_spsc_t *q, ztm_msg_t *out)
{
    uint32_t head = atomic_load_explicit(&q->head, memory_order_relaxed);
    uint32_t tail = atomic_load_explicit(&q->tail, memory_order_acquire);
    if (head == tail)
        return false;
    *out = q->slots[head & q->mask];
    atomic_store_explicit(&q->head, head + 1, memory_order_release);
    return true;
}
