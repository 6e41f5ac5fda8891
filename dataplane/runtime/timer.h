/* Timers of one worker: a binary min-heap of deadlines (CLOCK_MONOTONIC ns).
 *
 * A timer is embedded in its owner and holds its heap index, so arm, re-arm
 * and cancel are O(log n) with no allocation after the heap has grown to the
 * number of live timers. Not thread-safe: each worker owns its heap. The loop
 * sleeps until ztm_timers_next() and then calls ztm_timers_run(). */
#ifndef ZTM_RUNTIME_TIMER_H
#define ZTM_RUNTIME_TIMER_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#define ZTM_TIMER_IDLE UINT32_MAX
#define ZTM_NS_PER_MS 1000000ull
#define ZTM_NS_PER_SEC 1000000000ull

typedef struct ztm_timer ztm_timer_t;
typedef void (*ztm_timer_cb)(ztm_timer_t *t);

struct ztm_timer {
    uint64_t deadline;
    uint32_t idx; /* heap slot, ZTM_TIMER_IDLE when not armed */
    ztm_timer_cb cb;
};

typedef struct {
    ztm_timer_t **heap;
    uint32_t n, cap;
} ztm_timers_t;

static inline uint64_t ztm_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * ZTM_NS_PER_SEC + (uint64_t)ts.tv_nsec;
}

void ztm_timers_init(ztm_timers_t *ts);
void ztm_timers_fini(ztm_timers_t *ts);

static inline void ztm_timer_init(ztm_timer_t *t, ztm_timer_cb cb)
{
    t->deadline = 0;
    t->idx = ZTM_TIMER_IDLE;
    t->cb = cb;
}

static inline bool ztm_timer_armed(const ztm_timer_t *t)
{
    return t->idx != ZTM_TIMER_IDLE;
}

/* Arms (or moves) T to fire at DEADLINE. Returns 0 or -ENOMEM. */
int ztm_timer_arm(ztm_timers_t *ts, ztm_timer_t *t, uint64_t deadline);
/* Disarms T if armed; safe to call on an idle timer. */
void ztm_timer_cancel(ztm_timers_t *ts, ztm_timer_t *t);
/* Earliest deadline, or UINT64_MAX when nothing is armed. */
uint64_t ztm_timers_next(const ztm_timers_t *ts);
/* Fires (in deadline order) every timer due at NOW; each is disarmed before
 * its callback runs, which may re-arm it or free its owner. Returns the count. */
unsigned ztm_timers_run(ztm_timers_t *ts, uint64_t now);

#endif
