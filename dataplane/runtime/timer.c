/* Min-heap timers; see timer.h. */
#include "dataplane/runtime/timer.h"

#include <errno.h>
#include <stdlib.h>

void ztm_timers_init(ztm_timers_t *ts)
{
    ts->heap = NULL;
    ts->n = ts->cap = 0;
}

void ztm_timers_fini(ztm_timers_t *ts)
{
    for (uint32_t i = 0; i < ts->n; i++)
        ts->heap[i]->idx = ZTM_TIMER_IDLE;
    free(ts->heap);
    ts->heap = NULL;
    ts->n = ts->cap = 0;
}

static void place(ztm_timers_t *ts, uint32_t i, ztm_timer_t *t)
{
    ts->heap[i] = t;
    t->idx = i;
}

static void sift_up(ztm_timers_t *ts, uint32_t i)
{
    ztm_timer_t *t = ts->heap[i];
    while (i > 0) {
        uint32_t parent = (i - 1) / 2;
        if (ts->heap[parent]->deadline <= t->deadline)
            break;
        place(ts, i, ts->heap[parent]);
        i = parent;
    }
    place(ts, i, t);
}

static void sift_down(ztm_timers_t *ts, uint32_t i)
{
    ztm_timer_t *t = ts->heap[i];
    for (;;) {
        uint32_t l = 2 * i + 1, r = l + 1, m = i;
        uint64_t best = t->deadline;
        if (l < ts->n && ts->heap[l]->deadline < best) {
            m = l;
            best = ts->heap[l]->deadline;
        }
        if (r < ts->n && ts->heap[r]->deadline < best)
            m = r;
        if (m == i)
            break;
        place(ts, i, ts->heap[m]);
        i = m;
    }
    place(ts, i, t);
}

int ztm_timer_arm(ztm_timers_t *ts, ztm_timer_t *t, uint64_t deadline)
{
    if (ztm_timer_armed(t)) {
        uint64_t old = t->deadline;
        t->deadline = deadline;
        if (deadline < old)
            sift_up(ts, t->idx);
        else
            sift_down(ts, t->idx);
        return 0;
    }
    if (ts->n == ts->cap) {
        uint32_t cap = ts->cap ? ts->cap * 2 : 64;
        ztm_timer_t **h = realloc(ts->heap, cap * sizeof(*h));
        if (!h)
            return -ENOMEM;
        ts->heap = h;
        ts->cap = cap;
    }
    t->deadline = deadline;
    place(ts, ts->n++, t);
    sift_up(ts, t->idx);
    return 0;
}

void ztm_timer_cancel(ztm_timers_t *ts, ztm_timer_t *t)
{
    if (!ztm_timer_armed(t))
        return;
    uint32_t i = t->idx;
    t->idx = ZTM_TIMER_IDLE;
    ts->n--;
    if (i == ts->n)
        return;
    ztm_timer_t *last = ts->heap[ts->n];
    place(ts, i, last);
    if (i > 0 && ts->heap[(i - 1) / 2]->deadline > last->deadline)
        sift_up(ts, i);
    else
        sift_down(ts, i);
}

uint64_t ztm_timers_next(const ztm_timers_t *ts)
{
    return ts->n ? ts->heap[0]->deadline : UINT64_MAX;
}

unsigned ztm_timers_run(ztm_timers_t *ts, uint64_t now)
{
    unsigned fired = 0;
    while (ts->n && ts->heap[0]->deadline <= now) {
        ztm_timer_t *t = ts->heap[0];
        ztm_timer_cancel(ts, t);
        fired++;
        t->cb(t);
    }
    return fired;
}
