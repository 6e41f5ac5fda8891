/* SPSC queue: bounds, wrap-around, and a two-thread run checked for order
 * and loss (run under TSan in the thread build). */
#include <errno.h>
#include <pthread.h>

#include "dataplane/runtime/spsc.h"
#include "tests/unit/check.h"

#define MSGS 1000000u

static ztm_spsc_t q;

static void *producer(void *arg)
{
    for (uint32_t i = 0; i < MSGS;) {
        ztm_msg_t m = {.type = 1, .u32 = i, .u64 = (uint64_t)i * 3, .ptr = &q};
        if (ztm_spsc_push(&q, &m))
            i++;
    }
    return NULL;
}

int main(void)
{
    CHECK_EQ(ztm_spsc_init(&q, 3), -EINVAL);
    CHECK_EQ(ztm_spsc_init(&q, 0), -EINVAL);
    CHECK_EQ(ztm_spsc_init(&q, 4), 0);
    ztm_msg_t m = {0}, out;
    CHECK(!ztm_spsc_pop(&q, &out));
    for (uint32_t round = 0; round < 10; round++) {
        for (uint32_t i = 0; i < 4; i++) {
            m.u32 = round * 10 + i;
            CHECK(ztm_spsc_push(&q, &m));
        }
        CHECK(!ztm_spsc_push(&q, &m)); /* full */
        for (uint32_t i = 0; i < 4; i++) {
            CHECK(ztm_spsc_pop(&q, &out));
            CHECK_EQ(out.u32, round * 10 + i);
        }
        CHECK(!ztm_spsc_pop(&q, &out));
    }
    ztm_spsc_fini(&q);

    CHECK_EQ(ztm_spsc_init(&q, 256), 0);
    pthread_t t;
    pthread_create(&t, NULL, producer, NULL);
    uint32_t next = 0, bad = 0;
    while (next < MSGS) {
        if (!ztm_spsc_pop(&q, &out))
            continue;
        if (out.u32 != next || out.u64 != (uint64_t)next * 3 || out.ptr != &q)
            bad++;
        next++;
    }
    pthread_join(t, NULL);
    CHECK_EQ(bad, 0);
    CHECK(!ztm_spsc_pop(&q, &out));
    ztm_spsc_fini(&q);
    return check_done("spsc");
}
