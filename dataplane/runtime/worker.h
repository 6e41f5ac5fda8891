/* The engine: one worker thread per core, each with its own io_uring, timers
 * and receive-buffer ring, running one service (relay, hub, agent, ...).
 *
 * Completions dispatch through ops: a ztm_op_t embedded in its owner is the
 * SQE's user_data. Every submitted op holds a reference on its owner
 * (ztm_ref_t) until its final completion, so an owner is freed only when no
 * completion can still point at it: close is "cancel everything, drop our
 * own reference", and the free happens when the last completion is in.
 *
 * Other threads talk to a worker only through its mailbox (bounded SPSC
 * queues, one per producer, plus an eventfd the worker reads through its
 * ring). SIGINT/SIGTERM are handled by the thread that runs the engine: the
 * first starts a drain (services stop accepting; live work goes on until the
 * deadline), the second stops at once. */
#ifndef ZTM_RUNTIME_WORKER_H
#define ZTM_RUNTIME_WORKER_H

#include <liburing.h>
#include <stdbool.h>
#include <stdint.h>

#include "dataplane/runtime/bufring.h"
#include "dataplane/runtime/spsc.h"
#include "dataplane/runtime/timer.h"

typedef struct ztm_worker ztm_worker_t;
typedef struct ztm_engine ztm_engine_t;

/* ---- references -------------------------------------------------------- */
typedef struct ztm_ref ztm_ref_t;
struct ztm_ref {
    uint32_t n;
    void (*release)(ztm_ref_t *r); /* called once, when n drops to zero */
};

static inline void ztm_ref_init(ztm_ref_t *r, void (*release)(ztm_ref_t *))
{
    r->n = 1;
    r->release = release;
}
static inline void ztm_ref_get(ztm_ref_t *r)
{
    r->n++;
}
static inline void ztm_ref_put(ztm_ref_t *r)
{
    if (--r->n == 0)
        r->release(r);
}

/* ---- operations -------------------------------------------------------- */
typedef struct ztm_op ztm_op_t;
/* RES is cqe->res (a count or -errno), FLAGS cqe->flags (IORING_CQE_F_*). */
typedef void (*ztm_op_cb)(ztm_worker_t *w, ztm_op_t *op, int res, uint32_t flags);
struct ztm_op {
    ztm_op_cb cb;
    ztm_ref_t *owner; /* referenced while the op is in flight; may be NULL */
    uint32_t inflight; /* submissions of this op not yet finally completed */
};

static inline void ztm_op_init(ztm_op_t *op, ztm_op_cb cb, ztm_ref_t *owner)
{
    op->cb = cb;
    op->owner = owner;
    op->inflight = 0;
}

/* An SQE for OP (user_data = OP; OP's owner referenced until the final
 * completion, i.e. the first CQE without IORING_CQE_F_MORE). Never NULL: a
 * full submission queue is submitted first. */
struct io_uring_sqe *ztm_worker_sqe(ztm_worker_t *w, ztm_op_t *op);
/* An SQE whose completion is ignored (cancel requests, best-effort work). */
struct io_uring_sqe *ztm_worker_sqe_ignored(ztm_worker_t *w);
/* Asks the kernel to cancel every op on FD (completion ignored). */
void ztm_worker_cancel_fd(ztm_worker_t *w, int fd);
/* Asks the kernel to cancel OP (completion ignored); no-op if OP is idle. */
void ztm_worker_cancel_op(ztm_worker_t *w, ztm_op_t *op);

/* ---- the worker's own things ------------------------------------------- */
int ztm_worker_id(const ztm_worker_t *w);
ztm_engine_t *ztm_worker_engine(const ztm_worker_t *w);
ztm_timers_t *ztm_worker_timers(ztm_worker_t *w);
ztm_bufring_t *ztm_worker_bufring(ztm_worker_t *w);
/* Monotonic time at the start of this loop turn (ns). */
uint64_t ztm_worker_now(const ztm_worker_t *w);
void *ztm_worker_data(const ztm_worker_t *w);
void ztm_worker_set_data(ztm_worker_t *w, void *data);
bool ztm_worker_draining(const ztm_worker_t *w);

/* ---- the service an engine runs ---------------------------------------- */
typedef struct {
    const char *name;
    /* On each worker thread before its loop; non-zero (-errno) aborts the engine. */
    int (*start)(ztm_worker_t *w, void *arg);
    /* After each batch of completions (publish buffers, retry starved reads). */
    void (*tick)(ztm_worker_t *w, void *arg);
    /* First signal: stop accepting; live work continues. */
    void (*drain)(ztm_worker_t *w, void *arg);
    /* Drain deadline or second signal: close whatever is still live. */
    void (*stop)(ztm_worker_t *w, void *arg);
    /* True when the worker holds no live work (checked while draining). */
    bool (*idle)(ztm_worker_t *w, void *arg);
    /* After the loop, on the worker thread: free per-worker state. */
    void (*finish)(ztm_worker_t *w, void *arg);
    /* A message posted with ztm_engine_post of a service type (>= 16). */
    void (*message)(ztm_worker_t *w, const ztm_msg_t *m, void *arg);
    /* On the engine's thread when the first signal arrives (for logging). */
    void (*draining)(void *arg, uint64_t timeout_ns);
    /* On the engine's thread once every worker has ended: a service message
     * that no worker read (posted to a worker after its loop ended). Frees
     * what M carries. */
    void (*discard)(const ztm_msg_t *m, void *arg);
} ztm_service_t;

typedef struct {
    unsigned workers;        /* 0: one per CPU we may run on */
    bool pin;                /* pin worker i to the i-th allowed CPU */
    uint32_t sq_entries;     /* 0: 1024 */
    uint32_t cq_entries;     /* 0: 16 * sq_entries (completions come in bursts) */
    uint32_t buf_count;      /* receive buffers per worker (power of two; 0: 256) */
    uint32_t buf_size;       /* bytes per receive buffer (0: 65536) */
    uint64_t drain_timeout_ns;
} ztm_engine_config_t;

/* Number of CPUs this process may run on. */
unsigned ztm_engine_cpus(void);

/* Runs SVC on CFG->workers threads until a signal and a drain (or a start
 * failure). Blocks SIGINT/SIGTERM in every thread and ignores SIGPIPE.
 * READY, if set, is called on this thread once every worker has started.
 * Returns 0 after a clean stop, or the first -errno a worker's start gave. */
int ztm_engine_run(const ztm_engine_config_t *cfg, const ztm_service_t *svc, void *arg,
                   void (*ready)(void *arg, unsigned workers));

/* Built-in message types; services use types >= ZTM_MSG_SERVICE. */
enum { ZTM_MSG_DRAIN = 1, ZTM_MSG_STOP = 2, ZTM_MSG_SERVICE = 16 };

/* Posts M to worker TO. FROM is the posting worker's id, or -1 for the
 * engine's own thread. Thread-safe for distinct FROM values. False when the
 * queue is full (the caller retries or drops and counts). */
bool ztm_engine_post(ztm_engine_t *e, int from, unsigned to, const ztm_msg_t *m);
/* As ztm_engine_post, without waking TO: a producer that posts many
 * messages in one loop turn wakes each destination once, at the end of the
 * turn, with ztm_engine_wake. */
bool ztm_engine_push(ztm_engine_t *e, int from, unsigned to, const ztm_msg_t *m);
void ztm_engine_wake(ztm_engine_t *e, unsigned to);
unsigned ztm_engine_workers(const ztm_engine_t *e);
/* True once worker I's loop has ended: it reads its mailbox no more (what
 * is posted to it from then on goes to the service's discard). */
bool ztm_engine_worker_ended(const ztm_engine_t *e, unsigned i);
/* Workers whose loop has not ended yet. When a worker's loop ends every
 * other worker is woken, so one that waits for the others to end (its idle
 * callback checks this) sees the change. */
unsigned ztm_engine_running(const ztm_engine_t *e);
/* From worker FROM: drain every worker, as the first signal would (a client
 * whose work is done ends the engine this way). */
void ztm_engine_shutdown(ztm_engine_t *e, int from);

#endif
