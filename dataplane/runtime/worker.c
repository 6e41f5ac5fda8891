/* Workers and the engine; see worker.h. */
#include "dataplane/runtime/worker.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "dataplane/runtime/log.h"

#define INBOX_CAP 1024

/* liburing maps and unmaps its rings with raw system calls, which ThreadSanitizer
 * does not see: when a worker exits and another maps a new ring at the same
 * address, the old writes look like a race with the new ones. Every ring's
 * teardown releases one sync object and every new ring acquires it, which is
 * the order the kernel already enforces. */
#if defined(__SANITIZE_THREAD__)
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
static char ring_reuse_sync;
#define RING_MAPPED() __tsan_acquire(&ring_reuse_sync)
#define RING_UNMAPPED() __tsan_release(&ring_reuse_sync)
#else
#define RING_MAPPED() ((void)0)
#define RING_UNMAPPED() ((void)0)
#endif

struct ztm_worker {
    int id;
    int cpu; /* -1: not pinned */
    ztm_engine_t *engine;
    pthread_t thread;
    struct io_uring ring;
    bool ring_ok;
    ztm_timers_t timers;
    ztm_bufring_t *bufs;
    uint64_t now;
    void *data;
    uint64_t inflight; /* counted ops not yet finally completed */
    bool draining, stopping;
    _Atomic bool ended; /* the loop is over: the mailbox is read no more */
    ztm_timer_t drain_timer;
    int efd;
    uint64_t efd_val;
    ztm_op_t mbox_op;
    ztm_spsc_t *inbox; /* one queue per producer: [0] engine thread, [1+i] worker i */
};

struct ztm_engine {
    ztm_engine_config_t cfg;
    const ztm_service_t *svc;
    void *arg;
    unsigned n;
    ztm_worker_t *workers;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    unsigned started;
    int start_err;
    _Atomic unsigned alive;
    _Atomic unsigned running; /* workers whose loop has not ended */
    _Atomic unsigned drained; /* workers whose service has stopped accepting */
    pthread_t runner;         /* the thread in ztm_engine_run, woken when the last worker ends */
};

/* ---- ops ------------------------------------------------------------- */
static struct io_uring_sqe *get_sqe(ztm_worker_t *w)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&w->ring);
    if (!sqe) {
        io_uring_submit(&w->ring);
        sqe = io_uring_get_sqe(&w->ring);
        /* After a submit the whole SQ is free again. */
        assert(sqe);
    }
    return sqe;
}

struct io_uring_sqe *ztm_worker_sqe(ztm_worker_t *w, ztm_op_t *op)
{
    struct io_uring_sqe *sqe = get_sqe(w);
    io_uring_sqe_set_data(sqe, op);
    op->inflight++;
    w->inflight++;
    if (op->owner)
        ztm_ref_get(op->owner);
    return sqe;
}

struct io_uring_sqe *ztm_worker_sqe_ignored(ztm_worker_t *w)
{
    struct io_uring_sqe *sqe = get_sqe(w);
    io_uring_sqe_set_data(sqe, NULL);
    return sqe;
}

void ztm_worker_cancel_fd(ztm_worker_t *w, int fd)
{
    struct io_uring_sqe *sqe = ztm_worker_sqe_ignored(w);
    io_uring_prep_cancel_fd(sqe, fd, IORING_ASYNC_CANCEL_ALL);
    io_uring_sqe_set_data(sqe, NULL);
}

void ztm_worker_cancel_op(ztm_worker_t *w, ztm_op_t *op)
{
    if (!op->inflight)
        return;
    struct io_uring_sqe *sqe = ztm_worker_sqe_ignored(w);
    io_uring_prep_cancel(sqe, op, IORING_ASYNC_CANCEL_ALL);
    io_uring_sqe_set_data(sqe, NULL);
}

int ztm_worker_id(const ztm_worker_t *w)
{
    return w->id;
}
ztm_engine_t *ztm_worker_engine(const ztm_worker_t *w)
{
    return w->engine;
}
ztm_timers_t *ztm_worker_timers(ztm_worker_t *w)
{
    return &w->timers;
}
ztm_bufring_t *ztm_worker_bufring(ztm_worker_t *w)
{
    return w->bufs;
}
uint64_t ztm_worker_now(const ztm_worker_t *w)
{
    return w->now;
}
void *ztm_worker_data(const ztm_worker_t *w)
{
    return w->data;
}
void ztm_worker_set_data(ztm_worker_t *w, void *data)
{
    w->data = data;
}
bool ztm_worker_draining(const ztm_worker_t *w)
{
    return w->draining;
}
unsigned ztm_engine_workers(const ztm_engine_t *e)
{
    return e->n;
}
bool ztm_engine_worker_ended(const ztm_engine_t *e, unsigned i)
{
    return i >= e->n || atomic_load(&e->workers[i].ended);
}
unsigned ztm_engine_running(const ztm_engine_t *e)
{
    return atomic_load(&((ztm_engine_t *)e)->running);
}

/* ---- mailbox --------------------------------------------------------- */
static void on_mailbox(ztm_worker_t *w, ztm_op_t *op, int res, uint32_t flags);

static void arm_mailbox(ztm_worker_t *w)
{
    struct io_uring_sqe *sqe = get_sqe(w);
    io_uring_prep_read(sqe, w->efd, &w->efd_val, sizeof(w->efd_val), 0);
    io_uring_sqe_set_data(sqe, &w->mbox_op);
}

static void start_drain(ztm_worker_t *w)
{
    if (w->draining)
        return;
    w->draining = true;
    ztm_engine_t *e = w->engine;
    if (e->svc->drain)
        e->svc->drain(w, e->arg);
    atomic_fetch_add(&e->drained, 1);
    ztm_timer_arm(&w->timers, &w->drain_timer, w->now + e->cfg.drain_timeout_ns);
}

static void stop_now(ztm_worker_t *w)
{
    start_drain(w);
    if (w->stopping)
        return;
    w->stopping = true;
    ztm_timer_cancel(&w->timers, &w->drain_timer);
    if (w->engine->svc->stop)
        w->engine->svc->stop(w, w->engine->arg);
}

static void on_drain_deadline(ztm_timer_t *t)
{
    ztm_worker_t *w = (ztm_worker_t *)((char *)t - offsetof(ztm_worker_t, drain_timer));
    stop_now(w);
}

static void on_mailbox(ztm_worker_t *w, ztm_op_t *op, int res, uint32_t flags)
{
    ztm_engine_t *e = w->engine;
    ztm_msg_t m;
    for (unsigned p = 0; p <= e->n; p++) {
        while (ztm_spsc_pop(&w->inbox[p], &m)) {
            if (m.type == ZTM_MSG_DRAIN)
                start_drain(w);
            else if (m.type == ZTM_MSG_STOP)
                stop_now(w);
            else if (e->svc->message)
                e->svc->message(w, &m, e->arg);
        }
    }
    if (res < 0 && res != -EINTR && res != -EAGAIN && res != -ECANCELED)
        ztm_log(ZTM_LOG_ERROR, "worker.mailbox", "error=\"%s\"", strerror(-res));
    arm_mailbox(w);
}

bool ztm_engine_push(ztm_engine_t *e, int from, unsigned to, const ztm_msg_t *m)
{
    if (to >= e->n || from < -1 || from >= (int)e->n)
        return false;
    return ztm_spsc_push(&e->workers[to].inbox[from + 1], m);
}

void ztm_engine_wake(ztm_engine_t *e, unsigned to)
{
    if (to >= e->n)
        return;
    uint64_t one = 1;
    ssize_t r = write(e->workers[to].efd, &one, sizeof(one));
    (void)r; /* EAGAIN only when the counter is saturated: the worker is awake anyway */
}

bool ztm_engine_post(ztm_engine_t *e, int from, unsigned to, const ztm_msg_t *m)
{
    if (!ztm_engine_push(e, from, to, m))
        return false;
    ztm_engine_wake(e, to);
    return true;
}

/* ---- the loop -------------------------------------------------------- */
static int setup_ring(ztm_worker_t *w)
{
    const ztm_engine_config_t *c = &w->engine->cfg;
    struct io_uring_params p;
    memset(&p, 0, sizeof(p));
    /* SINGLE_ISSUER|DEFER_TASKRUN: only this thread submits, and completion
     * work runs when we wait, in batches, not on interrupts. CQSIZE: bursts of
     * completions (many connections) must never overflow the CQ. */
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_CQSIZE |
              IORING_SETUP_CLAMP | IORING_SETUP_SUBMIT_ALL;
    p.cq_entries = c->cq_entries;
    int r = io_uring_queue_init_params(c->sq_entries, &w->ring, &p);
    if (r == -EINVAL) {
        /* Older kernels: no DEFER_TASKRUN. Correct, only a little slower. */
        memset(&p, 0, sizeof(p));
        p.flags = IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP;
        p.cq_entries = c->cq_entries;
        r = io_uring_queue_init_params(c->sq_entries, &w->ring, &p);
        if (r == 0 && w->id == 0)
            ztm_log(ZTM_LOG_WARN, "worker.ring", "msg=\"kernel lacks DEFER_TASKRUN; using defaults\"");
    }
    if (r < 0)
        return r;
    RING_MAPPED();
    w->ring_ok = true;
    return ztm_bufring_new(&w->ring, 0, c->buf_count, c->buf_size, &w->bufs);
}

static void pin_self(ztm_worker_t *w)
{
    if (w->cpu < 0)
        return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(w->cpu, &set);
    int r = pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
    if (r)
        ztm_log(ZTM_LOG_WARN, "worker.pin", "cpu=%d error=\"%s\"", w->cpu, strerror(r));
}

static void run_loop(ztm_worker_t *w)
{
    const ztm_service_t *svc = w->engine->svc;
    void *arg = w->engine->arg;
    for (;;) {
        if (w->draining && w->inflight == 0 && (!svc->idle || svc->idle(w, arg)))
            break;
        struct io_uring_cqe *cqe;
        uint64_t next = ztm_timers_next(&w->timers);
        int r;
        if (next != UINT64_MAX) {
            uint64_t now = ztm_now_ns();
            uint64_t d = next > now ? next - now : 0;
            struct __kernel_timespec ts = {.tv_sec = (long long)(d / ZTM_NS_PER_SEC),
                                           .tv_nsec = (long long)(d % ZTM_NS_PER_SEC)};
            r = io_uring_submit_and_wait_timeout(&w->ring, &cqe, 1, &ts, NULL);
        } else {
            r = io_uring_submit_and_wait(&w->ring, 1);
        }
        if (r < 0 && r != -ETIME && r != -EINTR && r != -EAGAIN && r != -EBUSY) {
            ztm_log(ZTM_LOG_ERROR, "worker.wait", "error=\"%s\"", strerror(-r));
            break;
        }
        w->now = ztm_now_ns();
        unsigned head, n = 0;
        io_uring_for_each_cqe(&w->ring, head, cqe)
        {
            n++;
            ztm_op_t *op = io_uring_cqe_get_data(cqe);
            if (!op)
                continue;
            if (op == &w->mbox_op) {
                on_mailbox(w, op, cqe->res, cqe->flags);
                continue;
            }
            bool final = !(cqe->flags & IORING_CQE_F_MORE);
            ztm_ref_t *owner = op->owner;
            if (final) {
                assert(op->inflight > 0);
                op->inflight--;
                w->inflight--;
            }
            op->cb(w, op, cqe->res, cqe->flags);
            if (final && owner)
                ztm_ref_put(owner);
        }
        io_uring_cq_advance(&w->ring, n);
        ztm_timers_run(&w->timers, w->now);
        if (svc->tick)
            svc->tick(w, arg);
        ztm_bufring_publish(w->bufs);
    }
}

static void *worker_main(void *p)
{
    ztm_worker_t *w = p;
    ztm_engine_t *e = w->engine;
    ztm_log_set_worker(w->id);
    pin_self(w);
    ztm_timers_init(&w->timers);
    ztm_timer_init(&w->drain_timer, on_drain_deadline);
    w->now = ztm_now_ns();
    int err = setup_ring(w);
    if (err == 0) {
        arm_mailbox(w);
        if (e->svc->start)
            err = e->svc->start(w, e->arg);
    }
    pthread_mutex_lock(&e->lock);
    e->started++;
    if (err && !e->start_err)
        e->start_err = err;
    pthread_cond_broadcast(&e->cond);
    pthread_mutex_unlock(&e->lock);

    if (err == 0)
        run_loop(w);
    else
        ztm_log(ZTM_LOG_ERROR, "worker.start", "error=\"%s\"", strerror(-err));
    atomic_store(&w->ended, true);
    atomic_fetch_sub(&e->running, 1);
    for (unsigned i = 0; i < e->n; i++)
        if (i != (unsigned)w->id)
            ztm_engine_wake(e, i);
    if (e->svc->finish)
        e->svc->finish(w, e->arg);
    if (w->bufs)
        ztm_bufring_free(w->bufs, &w->ring);
    if (w->ring_ok) {
        io_uring_queue_exit(&w->ring);
        RING_UNMAPPED();
    }
    ztm_timers_fini(&w->timers);
    if (atomic_fetch_sub(&e->alive, 1) == 1)
        pthread_kill(e->runner, SIGUSR1); /* no need to wait for the next tick */
    return NULL;
}

unsigned ztm_engine_cpus(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0)
            return (unsigned)n;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (unsigned)n : 1;
}

static int nth_allowed_cpu(unsigned i)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) != 0)
        return -1;
    int count = CPU_COUNT(&set);
    if (count <= 0)
        return -1;
    unsigned want = i % (unsigned)count;
    for (int c = 0; c < CPU_SETSIZE; c++)
        if (CPU_ISSET(c, &set) && want-- == 0)
            return c;
    return -1;
}

void ztm_engine_shutdown(ztm_engine_t *e, int from)
{
    ztm_msg_t m = {.type = ZTM_MSG_DRAIN};
    for (unsigned i = 0; i < e->n; i++)
        if (!ztm_engine_post(e, from, i, &m))
            ztm_log(ZTM_LOG_ERROR, "engine.post", "worker=%u msg=\"mailbox full\"", i);
}

static void post_all(ztm_engine_t *e, uint32_t type)
{
    ztm_msg_t m = {.type = type};
    for (unsigned i = 0; i < e->n; i++)
        if (!ztm_engine_post(e, -1, i, &m))
            ztm_log(ZTM_LOG_ERROR, "engine.post", "worker=%u type=%u msg=\"mailbox full\"", i, type);
}

int ztm_engine_run(const ztm_engine_config_t *cfg, const ztm_service_t *svc, void *arg,
                   void (*ready)(void *arg, unsigned workers))
{
    ztm_engine_t *e = calloc(1, sizeof(*e));
    if (!e)
        return -ENOMEM;
    e->cfg = *cfg;
    if (!e->cfg.workers)
        e->cfg.workers = ztm_engine_cpus();
    if (!e->cfg.sq_entries)
        e->cfg.sq_entries = 1024;
    if (!e->cfg.cq_entries)
        e->cfg.cq_entries = 16 * e->cfg.sq_entries;
    if (!e->cfg.buf_count)
        e->cfg.buf_count = 256;
    if (!e->cfg.buf_size)
        e->cfg.buf_size = 65536;
    e->svc = svc;
    e->arg = arg;
    e->n = e->cfg.workers;
    pthread_mutex_init(&e->lock, NULL);
    pthread_cond_init(&e->cond, NULL);

    int ret = 0;
    unsigned created = 0;
    sigset_t sigs, old;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGUSR1); /* internal: the last worker has ended */
    pthread_sigmask(SIG_BLOCK, &sigs, &old);
    e->runner = pthread_self();
    signal(SIGPIPE, SIG_IGN);

    e->workers = calloc(e->n, sizeof(*e->workers));
    if (!e->workers) {
        ret = -ENOMEM;
        goto out;
    }
    for (unsigned i = 0; i < e->n; i++) {
        ztm_worker_t *w = &e->workers[i];
        w->id = (int)i;
        w->engine = e;
        w->efd = -1;
        w->cpu = cfg->pin ? nth_allowed_cpu(i) : -1;
        ztm_op_init(&w->mbox_op, on_mailbox, NULL);
        /* Blocking on purpose: io_uring does not poll-retry reads of O_NONBLOCK
         * files, and writers never block (the counter never nears its max). */
        w->efd = eventfd(0, EFD_CLOEXEC);
        w->inbox = calloc(e->n + 1, sizeof(*w->inbox));
        if (w->efd < 0 || !w->inbox) {
            ret = w->efd < 0 ? -errno : -ENOMEM;
            goto out;
        }
        for (unsigned p = 0; p <= e->n; p++)
            if ((ret = ztm_spsc_init(&w->inbox[p], INBOX_CAP)) < 0)
                goto out;
    }
    atomic_store(&e->alive, e->n);
    atomic_store(&e->running, e->n);
    for (; created < e->n; created++) {
        int r = pthread_create(&e->workers[created].thread, NULL, worker_main, &e->workers[created]);
        if (r) {
            ret = -r;
            atomic_fetch_sub(&e->alive, e->n - created);
            atomic_fetch_sub(&e->running, e->n - created);
            for (unsigned i = created; i < e->n; i++)
                atomic_store(&e->workers[i].ended, true);
            break;
        }
    }
    pthread_mutex_lock(&e->lock);
    while (e->started < created)
        pthread_cond_wait(&e->cond, &e->lock);
    if (!ret)
        ret = e->start_err;
    pthread_mutex_unlock(&e->lock);
    if (ret) {
        post_all(e, ZTM_MSG_STOP);
        post_all(e, ZTM_MSG_DRAIN);
        goto join;
    }
    if (ready)
        ready(arg, e->n);

    unsigned signals = 0;
    while (atomic_load(&e->alive) > 0) {
        struct timespec tick = {.tv_sec = 0, .tv_nsec = 100 * 1000 * 1000};
        int sig = sigtimedwait(&sigs, NULL, &tick);
        if (sig < 0 || sig == SIGUSR1)
            continue;
        signals++;
        if (signals == 1) {
            post_all(e, ZTM_MSG_DRAIN);
            /* Report the drain once every worker has stopped accepting, so
             * that the line is true when a reader sees it (bounded wait). */
            for (int i = 0; i < 1000 && atomic_load(&e->drained) < e->n &&
                            atomic_load(&e->alive) > 0;
                 i++)
                usleep(1000);
            if (svc->draining)
                svc->draining(arg, e->cfg.drain_timeout_ns);
        } else {
            ztm_log(ZTM_LOG_WARN, "engine.stop", "signal=%d msg=\"second signal: stopping now\"", sig);
            post_all(e, ZTM_MSG_STOP);
        }
    }
join:
    for (unsigned i = 0; i < created; i++)
        pthread_join(e->workers[i].thread, NULL);
out:
    if (e->workers) {
        for (unsigned i = 0; i < e->n; i++) {
            ztm_worker_t *w = &e->workers[i];
            if (w->inbox)
                for (unsigned p = 0; p <= e->n; p++) {
                    ztm_msg_t m;
                    while (w->inbox[p].slots && ztm_spsc_pop(&w->inbox[p], &m))
                        if (m.type >= ZTM_MSG_SERVICE && svc->discard)
                            svc->discard(&m, arg);
                    ztm_spsc_fini(&w->inbox[p]);
                }
            free(w->inbox);
            if (w->efd >= 0)
                close(w->efd);
        }
        free(e->workers);
    }
    pthread_mutex_destroy(&e->lock);
    pthread_cond_destroy(&e->cond);
    free(e);
    /* The last worker's wake-up may still be pending: take it before the
     * caller's mask comes back (SIGUSR1's default action ends the process). */
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    struct timespec zero = {0, 0};
    while (sigtimedwait(&usr1, NULL, &zero) == SIGUSR1)
        ;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return ret;
}
