/* Timers: order, cancel, re-arm, callbacks that re-arm themselves. */
#include <stdlib.h>

#include "dataplane/runtime/timer.h"
#include "tests/unit/check.h"

#define N 2000

static ztm_timer_t timers[N];
static uint64_t fired_at[N];
static int fired_order[N], n_fired;
static ztm_timers_t heap;

static void on_fire(ztm_timer_t *t)
{
    int i = (int)(t - timers);
    fired_at[i] = t->deadline;
    fired_order[n_fired++] = i;
}

static int rearms;
static ztm_timer_t self_rearm;
static void on_self(ztm_timer_t *t)
{
    if (++rearms < 5)
        ztm_timer_arm(&heap, t, t->deadline + 10);
}

int main(void)
{
    ztm_timers_init(&heap);
    CHECK_EQ(ztm_timers_next(&heap), UINT64_MAX);
    srand(7);
    for (int i = 0; i < N; i++) {
        ztm_timer_init(&timers[i], on_fire);
        CHECK(!ztm_timer_armed(&timers[i]));
        CHECK_EQ(ztm_timer_arm(&heap, &timers[i], 1000 + (uint64_t)(rand() % 100000)), 0);
    }
    /* Cancel every third, move every fifth. */
    for (int i = 0; i < N; i += 3)
        ztm_timer_cancel(&heap, &timers[i]);
    for (int i = 1; i < N; i += 5)
        ztm_timer_arm(&heap, &timers[i], 500 + (uint64_t)(rand() % 200000));
    ztm_timer_cancel(&heap, &timers[0]); /* twice: harmless */
    uint64_t expect_next = UINT64_MAX;
    for (int i = 0; i < N; i++)
        if (ztm_timer_armed(&timers[i]) && timers[i].deadline < expect_next)
            expect_next = timers[i].deadline;
    CHECK_EQ(ztm_timers_next(&heap), expect_next);
    int expected = 0;
    for (int i = 0; i < N; i++)
        expected += ztm_timer_armed(&timers[i]);
    CHECK(expected > N / 2 && expected < N);

    /* Run in steps: each step fires exactly the due ones, in order. */
    for (uint64_t now = 0; now <= 250000; now += 977)
        ztm_timers_run(&heap, now);
    CHECK_EQ(n_fired, expected);
    for (int k = 1; k < n_fired; k++)
        CHECK(fired_at[fired_order[k - 1]] <= fired_at[fired_order[k]]);
    for (int i = 0; i < N; i++)
        CHECK(!ztm_timer_armed(&timers[i]));
    CHECK_EQ(ztm_timers_next(&heap), UINT64_MAX);

    /* A callback may re-arm its own timer. */
    ztm_timer_init(&self_rearm, on_self);
    ztm_timer_arm(&heap, &self_rearm, 10);
    for (uint64_t now = 0; now < 200; now += 5)
        ztm_timers_run(&heap, now);
    CHECK_EQ(rearms, 5);
    CHECK(!ztm_timer_armed(&self_rearm));

    /* Fini disarms what is left. */
    ztm_timer_arm(&heap, &timers[5], 1);
    ztm_timers_fini(&heap);
    CHECK(!ztm_timer_armed(&timers[5]));
    return check_done("timer");
}
