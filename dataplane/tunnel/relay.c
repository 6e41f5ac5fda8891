/* The L4 relay on the engine; see relay.h.
 *
 * A session joins a client socket and an upstream socket with two
 * directions. Each direction keeps at most DIR_BUFS received buffers
 * (borrowed from the worker's provided-buffer ring) and has at most one
 * receive and one send in flight, which keeps bytes in order and memory
 * bounded: when a direction's queue is full its receive is not re-armed,
 * the kernel's socket buffers fill, and TCP flow control stops the writer.
 * Queued buffers go out in one sendmsg (batched send). A session's ops hold
 * references on it; closing cancels the ops and drops the session's own
 * reference, and the release (fds closed, buffers returned, log line) runs
 * when the last completion is in. */
#include "dataplane/tunnel/relay.h"

#include <assert.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "dataplane/runtime/acceptor.h"
#include "dataplane/runtime/log.h"
#include "dataplane/runtime/worker.h"

#define DIR_BUFS 4

struct ztm_relay {
    ztm_relay_config_t cfg;
    char target_str[ZTM_ADDRSTRLEN];
    char listen_str[ZTM_ADDRSTRLEN];
    unsigned n_workers;
    int *listen_fds;
    _Atomic unsigned live;
    _Atomic unsigned long forced;
};

typedef struct session session_t;
typedef struct relay_worker relay_worker_t;

typedef struct dir {
    session_t *s;
    ztm_op_t recv_op, send_op;
    int src, dst; /* indexes into s->fd */
    uint16_t bid[DIR_BUFS];
    uint32_t len[DIR_BUFS];
    uint8_t head, count;
    uint32_t off; /* bytes of the head buffer already sent */
    struct iovec iov[DIR_BUFS];
    struct msghdr msg;
    bool eof;  /* src sent FIN */
    bool shut; /* FIN passed on to dst */
    bool starved;
    struct dir *starved_next;
    uint64_t bytes;
} dir_t;

typedef enum { S_CONNECTING, S_OPEN, S_CLOSING } session_state_t;

struct session {
    ztm_ref_t ref;
    relay_worker_t *rw;
    uint64_t id;
    int fd[2]; /* [0] client, [1] upstream */
    dir_t d[2]; /* [0] client -> upstream ("up"), [1] upstream -> client ("down") */
    ztm_op_t connect_op;
    ztm_timer_t timer;
    uint64_t start_ns, last_active;
    session_state_t state;
    bool abortive;
    const char *reason;
    char client[ZTM_ADDRSTRLEN];
    session_t *prev, *next;
};

struct relay_worker {
    ztm_relay_t *relay;
    ztm_worker_t *w;
    ztm_acceptor_t acceptor;
    session_t *sessions; /* live list */
    unsigned n_sessions;
    uint64_t next_id;
    dir_t *starved_head, *starved_tail;
};

static void session_close(session_t *s, const char *reason, bool abortive);
static void dir_arm_recv(ztm_worker_t *w, dir_t *d);
static void dir_send(ztm_worker_t *w, dir_t *d);

/* ---- session lifetime ------------------------------------------------ */
static void session_release(ztm_ref_t *ref)
{
    session_t *s = (session_t *)((char *)ref - offsetof(session_t, ref));
    relay_worker_t *rw = s->rw;
    ztm_bufring_t *br = ztm_worker_bufring(rw->w);
    for (int i = 0; i < 2; i++) {
        dir_t *d = &s->d[i];
        while (d->count) {
            ztm_bufring_put(br, d->bid[d->head]);
            d->head = (uint8_t)((d->head + 1) % DIR_BUFS);
            d->count--;
        }
        if (s->fd[i] >= 0) {
            if (s->abortive)
                ztm_sock_abortive(s->fd[i]);
            close(s->fd[i]);
        }
    }
    /* Free the slot before saying so: a client that saw this line may
     * connect again at once and must not be refused by --max-conns. */
    atomic_fetch_sub(&rw->relay->live, 1);
    ztm_log(ZTM_LOG_INFO, "conn.close", "conn=%llu client=%s up=%llu down=%llu ms=%llu reason=%s",
            (unsigned long long)s->id, s->client, (unsigned long long)s->d[0].bytes,
            (unsigned long long)s->d[1].bytes,
            (unsigned long long)((ztm_worker_now(rw->w) - s->start_ns) / ZTM_NS_PER_MS), s->reason);
    if (s->prev)
        s->prev->next = s->next;
    else
        rw->sessions = s->next;
    if (s->next)
        s->next->prev = s->prev;
    rw->n_sessions--;
    free(s);
}

static void starved_remove(relay_worker_t *rw, dir_t *d)
{
    if (!d->starved)
        return;
    dir_t **pp = &rw->starved_head, *prev = NULL;
    while (*pp && *pp != d) {
        prev = *pp;
        pp = &(*pp)->starved_next;
    }
    if (*pp) {
        *pp = d->starved_next;
        if (rw->starved_tail == d)
            rw->starved_tail = prev;
    }
    d->starved = false;
    d->starved_next = NULL;
}

static void session_close(session_t *s, const char *reason, bool abortive)
{
    if (s->state == S_CLOSING)
        return;
    relay_worker_t *rw = s->rw;
    ztm_worker_t *w = rw->w;
    s->state = S_CLOSING;
    s->reason = reason;
    s->abortive = abortive;
    ztm_timer_cancel(ztm_worker_timers(w), &s->timer);
    for (int i = 0; i < 2; i++) {
        starved_remove(rw, &s->d[i]);
        if (s->fd[i] >= 0)
            ztm_worker_cancel_fd(w, s->fd[i]);
    }
    ztm_ref_put(&s->ref); /* the session's own reference; ops hold the rest */
}

/* ---- one direction --------------------------------------------------- */
static void dir_maybe_finish(ztm_worker_t *w, dir_t *d)
{
    session_t *s = d->s;
    if (s->state != S_OPEN || !d->eof || d->count || d->shut || d->send_op.inflight)
        return;
    /* Everything the source sent has gone out: pass its FIN on. */
    if (shutdown(s->fd[d->dst], SHUT_WR) < 0 && errno != ENOTCONN) {
        session_close(s, "error", true);
        return;
    }
    d->shut = true;
    if (s->d[0].shut && s->d[1].shut)
        session_close(s, "done", false);
}

static void on_recv(ztm_worker_t *w, ztm_op_t *op, int res, uint32_t flags)
{
    dir_t *d = (dir_t *)((char *)op - offsetof(dir_t, recv_op));
    session_t *s = d->s;
    ztm_bufring_t *br = ztm_worker_bufring(w);
    if (flags & IORING_CQE_F_BUFFER) {
        uint16_t bid = (uint16_t)(flags >> IORING_CQE_BUFFER_SHIFT);
        ztm_bufring_take(br, bid);
        if (res <= 0 || s->state == S_CLOSING) {
            ztm_bufring_put(br, bid);
        } else {
            unsigned slot = (d->head + d->count) % DIR_BUFS;
            d->bid[slot] = bid;
            d->len[slot] = (uint32_t)res;
            d->count++;
        }
    }
    if (s->state == S_CLOSING)
        return;
    s->last_active = ztm_worker_now(w);
    if (res > 0) {
        d->bytes += (uint64_t)res;
        dir_send(w, d);
        dir_arm_recv(w, d);
    } else if (res == 0) {
        d->eof = true;
        dir_maybe_finish(w, d);
    } else if (res == -ENOBUFS) {
        /* Back-pressure from the ring: wait for buffers to come back. */
        d->starved = true;
        d->starved_next = NULL;
        relay_worker_t *rw = s->rw;
        if (rw->starved_tail)
            rw->starved_tail->starved_next = d;
        else
            rw->starved_head = d;
        rw->starved_tail = d;
    } else if (res == -ECONNRESET || res == -EPIPE) {
        session_close(s, "reset", true);
    } else if (res != -ECANCELED) {
        ztm_log(ZTM_LOG_WARN, "conn.recv_error", "conn=%llu side=%s error=\"%s\"",
                (unsigned long long)s->id, d->src ? "upstream" : "client", strerror(-res));
        session_close(s, "error", true);
    }
}

static void dir_arm_recv(ztm_worker_t *w, dir_t *d)
{
    session_t *s = d->s;
    if (d->eof || d->starved || s->state == S_CLOSING || d->count >= DIR_BUFS || d->recv_op.inflight)
        return;
    ztm_bufring_t *br = ztm_worker_bufring(w);
    struct io_uring_sqe *sqe = ztm_worker_sqe(w, &d->recv_op);
    io_uring_prep_recv(sqe, s->fd[d->src], NULL, ztm_bufring_buf_size(br), 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = ztm_bufring_gid(br);
}

static void on_send(ztm_worker_t *w, ztm_op_t *op, int res, uint32_t flags)
{
    dir_t *d = (dir_t *)((char *)op - offsetof(dir_t, send_op));
    session_t *s = d->s;
    if (s->state == S_CLOSING)
        return;
    if (res < 0) {
        if (res == -EPIPE || res == -ECONNRESET)
            session_close(s, "reset", true);
        else if (res != -ECANCELED) {
            ztm_log(ZTM_LOG_WARN, "conn.send_error", "conn=%llu side=%s error=\"%s\"",
                    (unsigned long long)s->id, d->dst ? "upstream" : "client", strerror(-res));
            session_close(s, "error", true);
        }
        return;
    }
    s->last_active = ztm_worker_now(w);
    ztm_bufring_t *br = ztm_worker_bufring(w);
    uint32_t left = (uint32_t)res;
    while (left && d->count) {
        uint32_t avail = d->len[d->head] - d->off;
        if (left < avail) {
            d->off += left;
            left = 0;
            break;
        }
        left -= avail;
        ztm_bufring_put(br, d->bid[d->head]);
        d->head = (uint8_t)((d->head + 1) % DIR_BUFS);
        d->count--;
        d->off = 0;
    }
    assert(left == 0);
    dir_send(w, d);
    dir_arm_recv(w, d);
    dir_maybe_finish(w, d);
}

static void dir_send(ztm_worker_t *w, dir_t *d)
{
    session_t *s = d->s;
    if (d->send_op.inflight || !d->count || s->state != S_OPEN)
        return;
    ztm_bufring_t *br = ztm_worker_bufring(w);
    for (unsigned i = 0; i < d->count; i++) {
        unsigned slot = (d->head + i) % DIR_BUFS;
        uint32_t off = i == 0 ? d->off : 0;
        d->iov[i].iov_base = (char *)ztm_bufring_addr(br, d->bid[slot]) + off;
        d->iov[i].iov_len = d->len[slot] - off;
    }
    memset(&d->msg, 0, sizeof(d->msg));
    d->msg.msg_iov = d->iov;
    d->msg.msg_iovlen = d->count;
    struct io_uring_sqe *sqe = ztm_worker_sqe(w, &d->send_op);
    io_uring_prep_sendmsg(sqe, s->fd[d->dst], &d->msg, MSG_NOSIGNAL);
}

/* ---- connect and deadlines ------------------------------------------- */
static void on_timer(ztm_timer_t *t)
{
    session_t *s = (session_t *)((char *)t - offsetof(session_t, timer));
    relay_worker_t *rw = s->rw;
    ztm_relay_t *r = rw->relay;
    uint64_t now = ztm_worker_now(rw->w);
    if (s->state == S_CONNECTING) {
        ztm_log(ZTM_LOG_WARN, "conn.connect_failed", "conn=%llu to=%s error=\"timed out\"",
                (unsigned long long)s->id, r->target_str);
        session_close(s, "connect_timeout", false);
        return;
    }
    if (s->state != S_OPEN || !r->cfg.idle_timeout_ns)
        return;
    if (now - s->last_active >= r->cfg.idle_timeout_ns)
        session_close(s, "idle", false);
    else
        ztm_timer_arm(ztm_worker_timers(rw->w), t, s->last_active + r->cfg.idle_timeout_ns);
}

static void on_connect(ztm_worker_t *w, ztm_op_t *op, int res, uint32_t flags)
{
    session_t *s = (session_t *)((char *)op - offsetof(session_t, connect_op));
    ztm_relay_t *r = s->rw->relay;
    if (s->state != S_CONNECTING)
        return;
    if (res < 0) {
        ztm_log(ZTM_LOG_WARN, "conn.connect_failed", "conn=%llu to=%s error=\"%s\"",
                (unsigned long long)s->id, r->target_str, strerror(-res));
        session_close(s, "connect_failed", false);
        return;
    }
    s->state = S_OPEN;
    s->last_active = ztm_worker_now(w);
    ztm_sock_nodelay(s->fd[1]);
    ztm_timers_t *ts = ztm_worker_timers(w);
    if (r->cfg.idle_timeout_ns)
        ztm_timer_arm(ts, &s->timer, s->last_active + r->cfg.idle_timeout_ns);
    else
        ztm_timer_cancel(ts, &s->timer);
    dir_send(w, &s->d[0]);
    dir_arm_recv(w, &s->d[1]);
    dir_maybe_finish(w, &s->d[0]);
}

static void dir_init(session_t *s, dir_t *d, int src)
{
    d->s = s;
    d->src = src;
    d->dst = !src;
    ztm_op_init(&d->recv_op, on_recv, &s->ref);
    ztm_op_init(&d->send_op, on_send, &s->ref);
}

static void session_start(relay_worker_t *rw, int fd)
{
    ztm_worker_t *w = rw->w;
    ztm_relay_t *r = rw->relay;
    char client[ZTM_ADDRSTRLEN] = "unknown";
    struct sockaddr_storage peer;
    socklen_t peer_len = sizeof(peer);
    if (getpeername(fd, (struct sockaddr *)&peer, &peer_len) == 0)
        ztm_addr_format((struct sockaddr *)&peer, client, sizeof(client));

    unsigned live = atomic_fetch_add(&r->live, 1);
    if (live >= r->cfg.max_conns) {
        atomic_fetch_sub(&r->live, 1);
        ztm_log(ZTM_LOG_WARN, "conn.reject", "client=%s reason=max_conns limit=%u", client,
                r->cfg.max_conns);
        close(fd);
        return;
    }
    session_t *s = calloc(1, sizeof(*s));
    int up = s ? socket(r->cfg.target.ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0) : -1;
    if (up < 0) {
        int e = s ? errno : ENOMEM;
        atomic_fetch_sub(&r->live, 1);
        ztm_log(ZTM_LOG_ERROR, "conn.error", "client=%s error=\"%s\"", client, strerror(e));
        free(s);
        close(fd);
        return;
    }
    ztm_ref_init(&s->ref, session_release);
    s->rw = rw;
    s->id = rw->next_id++ * r->n_workers + (uint64_t)ztm_worker_id(w);
    s->fd[0] = fd;
    s->fd[1] = up;
    memcpy(s->client, client, sizeof(client));
    s->start_ns = s->last_active = ztm_worker_now(w);
    s->reason = "error";
    s->state = S_CONNECTING;
    dir_init(s, &s->d[0], 0);
    dir_init(s, &s->d[1], 1);
    ztm_op_init(&s->connect_op, on_connect, &s->ref);
    ztm_timer_init(&s->timer, on_timer);
    s->next = rw->sessions;
    if (rw->sessions)
        rw->sessions->prev = s;
    rw->sessions = s;
    rw->n_sessions++;
    ztm_sock_nodelay(fd);
    ztm_log(ZTM_LOG_DEBUG, "conn.open", "conn=%llu client=%s", (unsigned long long)s->id, client);

    ztm_timer_arm(ztm_worker_timers(w), &s->timer, s->start_ns + r->cfg.connect_timeout_ns);
    struct io_uring_sqe *sqe = ztm_worker_sqe(w, &s->connect_op);
    io_uring_prep_connect(sqe, up, (struct sockaddr *)&r->cfg.target.ss, r->cfg.target.len);
    /* Read from the client at once: its first bytes leave as soon as the
     * upstream connection is up. */
    dir_arm_recv(w, &s->d[0]);
}

/* ---- accepting ------------------------------------------------------- */
static void on_accept(ztm_acceptor_t *a, int fd)
{
    session_start(a->user, fd);
}

/* ---- the service ----------------------------------------------------- */
static int svc_start(ztm_worker_t *w, void *arg)
{
    ztm_relay_t *r = arg;
    relay_worker_t *rw = calloc(1, sizeof(*rw));
    if (!rw)
        return -ENOMEM;
    rw->relay = r;
    rw->w = w;
    ztm_worker_set_data(w, rw);
    ztm_acceptor_start(&rw->acceptor, w, r->listen_fds[ztm_worker_id(w)], on_accept, rw);
    r->listen_fds[ztm_worker_id(w)] = -1; /* the worker owns it now */
    return 0;
}

static void svc_tick(ztm_worker_t *w, void *arg)
{
    relay_worker_t *rw = ztm_worker_data(w);
    ztm_bufring_t *br = ztm_worker_bufring(w);
    /* Buffers came back: let starved receives try again, one per buffer. */
    uint32_t avail = ztm_bufring_available(br);
    while (rw->starved_head && avail--) {
        dir_t *d = rw->starved_head;
        rw->starved_head = d->starved_next;
        if (!rw->starved_head)
            rw->starved_tail = NULL;
        d->starved = false;
        d->starved_next = NULL;
        dir_arm_recv(w, d);
    }
}

static void svc_drain(ztm_worker_t *w, void *arg)
{
    relay_worker_t *rw = ztm_worker_data(w);
    ztm_acceptor_stop(&rw->acceptor);
}

static void svc_stop(ztm_worker_t *w, void *arg)
{
    ztm_relay_t *r = arg;
    relay_worker_t *rw = ztm_worker_data(w);
    session_t *next;
    for (session_t *s = rw->sessions; s; s = next) {
        next = s->next; /* closing may free s */
        if (s->state != S_CLOSING) {
            atomic_fetch_add(&r->forced, 1);
            session_close(s, "drain", false);
        }
    }
}

static bool svc_idle(ztm_worker_t *w, void *arg)
{
    relay_worker_t *rw = ztm_worker_data(w);
    return !rw || (rw->n_sessions == 0 && ztm_acceptor_closed(&rw->acceptor));
}

static void svc_finish(ztm_worker_t *w, void *arg)
{
    relay_worker_t *rw = ztm_worker_data(w);
    if (!rw)
        return;
    if (rw->acceptor.fd >= 0) /* a start that failed elsewhere: never stopped */
        close(rw->acceptor.fd);
    free(rw);
    ztm_worker_set_data(w, NULL);
}

static void svc_draining(void *arg, uint64_t timeout_ns)
{
    ztm_relay_t *r = arg;
    ztm_log(ZTM_LOG_INFO, "relay.drain", "live=%u timeout_ms=%llu", atomic_load(&r->live),
            (unsigned long long)(timeout_ns / ZTM_NS_PER_MS));
}

static void on_ready(void *arg, unsigned workers)
{
    ztm_relay_t *r = arg;
    ztm_log_ready("relay.listen", "addr=%s to=%s workers=%u", r->listen_str,
            r->target_str, workers);
}

static const ztm_service_t relay_service = {
    .name = "relay",
    .start = svc_start,
    .tick = svc_tick,
    .drain = svc_drain,
    .stop = svc_stop,
    .idle = svc_idle,
    .finish = svc_finish,
    .draining = svc_draining,
};

int ztm_relay_open(const ztm_relay_config_t *cfg, ztm_relay_t **out)
{
    ztm_relay_t *r = calloc(1, sizeof(*r));
    if (!r)
        return -ENOMEM;
    r->cfg = *cfg;
    r->n_workers = cfg->workers ? cfg->workers : ztm_engine_cpus();
    r->listen_fds = calloc(r->n_workers, sizeof(int));
    if (!r->listen_fds) {
        free(r);
        return -ENOMEM;
    }
    ztm_addr_t bound;
    int ret = ztm_listen_group(&cfg->listen, r->n_workers, 4096, r->listen_fds, &bound);
    if (ret < 0) {
        free(r->listen_fds);
        free(r);
        return ret;
    }
    ztm_addr_format((struct sockaddr *)&bound.ss, r->listen_str, sizeof(r->listen_str));
    if (cfg->target_name)
        snprintf(r->target_str, sizeof(r->target_str), "%s", cfg->target_name);
    else
        ztm_addr_format((struct sockaddr *)&cfg->target.ss, r->target_str, sizeof(r->target_str));
    *out = r;
    return 0;
}

int ztm_relay_run(ztm_relay_t *r)
{
    ztm_engine_config_t ec = {
        .workers = r->n_workers,
        .pin = true,
        .buf_size = r->cfg.buf_size,
        .drain_timeout_ns = r->cfg.drain_timeout_ns,
    };
    int ret = ztm_engine_run(&ec, &relay_service, r, on_ready);
    ztm_log(ZTM_LOG_INFO, "relay.stop", "forced=%lu", atomic_load(&r->forced));
    return ret;
}

void ztm_relay_free(ztm_relay_t *r)
{
    if (!r)
        return;
    for (unsigned i = 0; i < r->n_workers; i++)
        if (r->listen_fds[i] >= 0)
            close(r->listen_fds[i]);
    free(r->listen_fds);
    free(r);
}
