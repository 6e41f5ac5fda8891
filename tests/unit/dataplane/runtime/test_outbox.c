/* The outbox: messages between workers are never lost and never reordered
 * when the mailbox (1024 slots) is full, the destination is woken once per
 * flush, and what can no longer be delivered (the destination's loop has
 * ended) is discarded, by the outbox or by the engine at its end. Runs under
 * TSan too. */
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include "dataplane/runtime/outbox.h"
#include "dataplane/runtime/worker.h"
#include "tests/unit/check.h"

#define N_MSGS 20000u /* per producer: many times the mailbox */
#define MSG_DATA (ZTM_MSG_SERVICE + 1)
#define MSG_LATE (ZTM_MSG_SERVICE + 2)

typedef struct {
    ztm_outbox_t *ob;
    ztm_timer_t go;
    size_t max_waiting;
} wstate_t;

static wstate_t ws[3];
static uint32_t next_from[3]; /* worker 0's: the next number expected from each producer */
static unsigned out_of_order, received;
static bool late_sent;
static _Atomic unsigned discarded;

static void discard(void *arg, const ztm_msg_t *m)
{
    free(m->ptr);
    atomic_fetch_add(&discarded, 1);
}

static void svc_discard(const ztm_msg_t *m, void *arg)
{
    discard(arg, m);
}

static void on_go(ztm_timer_t *t)
{
    wstate_t *s = (wstate_t *)((char *)t - offsetof(wstate_t, go));
    unsigned id = (unsigned)(s - ws);
    for (uint32_t i = 0; i < N_MSGS; i++) {
        ztm_msg_t m = {.type = MSG_DATA, .u32 = i, .u64 = id};
        ztm_outbox_post(s->ob, 0, &m);
        size_t w = ztm_outbox_waiting(s->ob);
        if (w > s->max_waiting)
            s->max_waiting = w;
    }
}

static int svc_start(ztm_worker_t *w, void *arg)
{
    unsigned id = (unsigned)ztm_worker_id(w);
    int r = ztm_outbox_new(w, discard, NULL, &ws[id].ob);
    if (r < 0)
        return r;
    if (id != 0) {
        ztm_timer_init(&ws[id].go, on_go);
        ztm_timer_arm(ztm_worker_timers(w), &ws[id].go, ztm_worker_now(w) + ZTM_NS_PER_MS);
    }
    return 0;
}

static void svc_tick(ztm_worker_t *w, void *arg)
{
    ztm_outbox_flush(ws[ztm_worker_id(w)].ob);
}

static void svc_message(ztm_worker_t *w, const ztm_msg_t *m, void *arg)
{
    if (m->type != MSG_DATA)
        return;
    unsigned from = (unsigned)m->u64;
    if (m->u32 != next_from[from])
        out_of_order++;
    next_from[from] = m->u32 + 1;
    if (++received == 2 * N_MSGS)
        ztm_engine_shutdown(ztm_worker_engine(w), 0);
}

static bool svc_idle(ztm_worker_t *w, void *arg)
{
    unsigned id = (unsigned)ztm_worker_id(w);
    if (id != 0)
        return ztm_outbox_waiting(ws[id].ob) == 0;
    ztm_engine_t *e = ztm_worker_engine(w);
    if (ztm_engine_running(e) != 1)
        return false; /* the others first */
    if (!late_sent) {
        late_sent = true;
        /* Worker 1 has ended: the outbox discards at once. Worker 2: left
         * in its mailbox, for the engine to discard at its end. */
        for (int i = 0; i < 10; i++) {
            ztm_msg_t m = {.type = MSG_LATE, .ptr = malloc(16)};
            ztm_outbox_post(ws[0].ob, 1, &m);
        }
        ztm_msg_t m = {.type = MSG_LATE, .ptr = malloc(16)};
        CHECK(ztm_engine_push(e, 0, 2, &m));
    }
    return true;
}

static void svc_finish(ztm_worker_t *w, void *arg)
{
    ztm_outbox_free(ws[ztm_worker_id(w)].ob);
}

static const ztm_service_t svc = {
    .name = "outbox",
    .start = svc_start,
    .tick = svc_tick,
    .message = svc_message,
    .idle = svc_idle,
    .finish = svc_finish,
    .discard = svc_discard,
};

int main(void)
{
    ztm_engine_config_t cfg = {.workers = 3, .buf_count = 8, .buf_size = 4096,
                               .drain_timeout_ns = 5 * ZTM_NS_PER_SEC};
    alarm(60);
    CHECK_EQ(ztm_engine_run(&cfg, &svc, NULL, NULL), 0);
    CHECK_EQ(received, 2 * N_MSGS);
    CHECK_EQ(out_of_order, 0);
    CHECK_EQ(next_from[1], N_MSGS);
    CHECK_EQ(next_from[2], N_MSGS);
    /* The mailbox holds 1024: a burst of 20000 must have waited here. */
    CHECK(ws[1].max_waiting > 0 && ws[2].max_waiting > 0);
    CHECK_EQ(atomic_load(&discarded), 11);
    return check_done("outbox");
}
