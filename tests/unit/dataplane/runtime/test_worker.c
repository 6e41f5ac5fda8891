/* The engine: an owner is released only after its last completion; messages
 * from the engine thread and from another worker arrive in order; a signal
 * drains the workers and the engine returns. Runs under TSan too. */
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include "dataplane/runtime/worker.h"
#include "tests/unit/check.h"

#define MAIN_MSGS 1000u
#define PEER_MSGS 100u

typedef struct {
    ztm_ref_t ref;
    ztm_op_t nops[3];
    ztm_op_t sleeper;
    struct __kernel_timespec ts;
    int completions;
    int completions_at_release;
    ztm_timer_t close_timer;
} owner_t;

static ztm_engine_t *engine;
static _Atomic int released, drained, finished;
static owner_t *the_owner;
static uint32_t next_from_main, next_from_peer, out_of_order;
static int sleeper_res;

static void on_release(ztm_ref_t *r)
{
    owner_t *o = (owner_t *)r;
    o->completions_at_release = o->completions;
    atomic_fetch_add(&released, 1);
    free(o);
}

static void on_op(ztm_worker_t *w, ztm_op_t *op, int res, uint32_t flags)
{
    owner_t *o = the_owner;
    o->completions++;
    if (op == &o->sleeper)
        sleeper_res = res;
}

static void on_close_timer(ztm_timer_t *t)
{
    owner_t *o = the_owner;
    /* "close": cancel what is in flight and drop our own reference. The
     * release must wait for the cancelled op's completion. */
    extern ztm_worker_t *w0;
    ztm_worker_cancel_op(w0, &o->sleeper);
    ztm_ref_put(&o->ref);
}

ztm_worker_t *w0;

static int svc_start(ztm_worker_t *w, void *arg)
{
    if (ztm_worker_id(w) != 0)
        return 0;
    /* Read by the engine thread in on_ready, after the start barrier. */
    engine = ztm_worker_engine(w);
    w0 = w;
    owner_t *o = calloc(1, sizeof(*o));
    the_owner = o;
    ztm_ref_init(&o->ref, on_release);
    for (int i = 0; i < 3; i++) {
        ztm_op_init(&o->nops[i], on_op, &o->ref);
        io_uring_prep_nop(ztm_worker_sqe(w, &o->nops[i]));
    }
    ztm_op_init(&o->sleeper, on_op, &o->ref);
    o->ts.tv_sec = 30;
    io_uring_prep_timeout(ztm_worker_sqe(w, &o->sleeper), &o->ts, 0, 0);
    ztm_timer_init(&o->close_timer, on_close_timer);
    ztm_timer_arm(ztm_worker_timers(w), &o->close_timer, ztm_worker_now(w) + 50 * ZTM_NS_PER_MS);
    /* Worker 0 talks to worker 1 as a peer producer. */
    for (uint32_t i = 0; i < PEER_MSGS; i++) {
        ztm_msg_t m = {.type = ZTM_MSG_SERVICE + 1, .u32 = i};
        while (!ztm_engine_post(engine, 0, 1, &m))
            ;
    }
    return 0;
}

static void svc_message(ztm_worker_t *w, const ztm_msg_t *m, void *arg)
{
    if (m->type == ZTM_MSG_SERVICE) {
        if (m->u32 != next_from_main)
            out_of_order++;
        next_from_main++;
    } else if (m->type == ZTM_MSG_SERVICE + 1) {
        if (m->u32 != next_from_peer)
            out_of_order++;
        next_from_peer++;
    }
    if (next_from_main == MAIN_MSGS && next_from_peer == PEER_MSGS && m->u32 != UINT32_MAX) {
        next_from_main++; /* once */
        kill(getpid(), SIGTERM);
    }
}

static void svc_drain(ztm_worker_t *w, void *arg)
{
    atomic_fetch_add(&drained, 1);
}

static bool svc_idle(ztm_worker_t *w, void *arg)
{
    /* Per worker, as real services do: nothing wakes a worker when another
     * thread's state changes. */
    return ztm_worker_id(w) != 0 || atomic_load(&released) == 1;
}

static void svc_finish(ztm_worker_t *w, void *arg)
{
    atomic_fetch_add(&finished, 1);
}

static void on_ready(void *arg, unsigned n)
{
    for (uint32_t i = 0; i < MAIN_MSGS; i++) {
        ztm_msg_t m = {.type = ZTM_MSG_SERVICE, .u32 = i};
        while (!ztm_engine_post(engine, -1, 1, &m))
            usleep(100);
    }
}

static const ztm_service_t svc = {
    .name = "test",
    .start = svc_start,
    .message = svc_message,
    .drain = svc_drain,
    .idle = svc_idle,
    .finish = svc_finish,
};

static int fail_start(ztm_worker_t *w, void *arg)
{
    return ztm_worker_id(w) == 1 ? -EADDRNOTAVAIL : 0;
}

int main(void)
{
    ztm_engine_config_t cfg = {.workers = 2, .pin = true, .buf_count = 8, .buf_size = 4096,
                               .drain_timeout_ns = 5 * ZTM_NS_PER_SEC};
    alarm(30); /* a hang is a failure, not a stuck CI job */
    CHECK_EQ(ztm_engine_run(&cfg, &svc, NULL, on_ready), 0);
    CHECK_EQ(atomic_load(&released), 1);
    /* 3 nops + the cancelled sleeper, all in before the release. */
    CHECK_EQ(sleeper_res, -ECANCELED);
    CHECK_EQ(atomic_load(&drained), 2);
    CHECK_EQ(atomic_load(&finished), 2);
    CHECK_EQ(next_from_peer, PEER_MSGS);
    CHECK_EQ(next_from_main, MAIN_MSGS + 1);
    CHECK_EQ(out_of_order, 0);

    /* A worker whose start fails stops the whole engine with its error. */
    ztm_service_t bad = {.name = "bad", .start = fail_start};
    CHECK_EQ(ztm_engine_run(&cfg, &bad, NULL, NULL), -EADDRNOTAVAIL);
    return check_done("worker");
}
