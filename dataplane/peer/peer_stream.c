/* The streams of a peer session: each inner HTTP/2 stream joined to a local
 * TCP socket or a UDP flow; see peer.h and peer_int.h.
 *
 * Each stream has two fixed rings of PEER_STREAM_BUF bytes. "up" holds what
 * the local side sent and the inner stream has not taken yet: the socket is
 * read only while it has room, read_body drains it (and parks the stream
 * when it is empty). "down" holds what the far end sent and the socket has
 * not taken yet: bytes are consumed on the inner stream (WINDOW_UPDATE) only
 * once a send took them, and the stream window equals the ring, so the far
 * end can never send more than fits. A UDP flow carries datagrams in the
 * same rings, each behind a 2-byte big-endian length.
 *
 * A stream is released when both its inner stream has closed and its local
 * side is done, and its last completion is in. Half-close: a FIN read
 * becomes END_STREAM (after the buffered bytes); END_STREAM becomes
 * shutdown(SHUT_WR) once the ring is sent. An RST read becomes
 * RST_STREAM(CANCEL); a reset inner stream closes the socket with an RST. */
#include "dataplane/peer/peer_int.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "dataplane/runtime/log.h"

/* WAIT: the importer waits for the response, the exporter connects. */
typedef enum { ST_WAIT, ST_OPEN, ST_REFUSED } st_phase_t;

struct pstream {
    ztm_ref_t ref;
    ztm_peer_t *p;
    pstream_t *prev, *next;
    int32_t id;
    int fd;
    st_phase_t phase;
    bool client, udp;
    bool h2_live;    /* the inner stream is open */
    bool local_done; /* the socket (or the user's flow) is finished with */
    bool own_dropped;
    bool abortive;
    bool up_eof, up_parked;
    bool down_eof, down_shut;
    bool end_told; /* UDP importer: on_end called (or the user closed) */
    uint8_t *up, *down, *dgram;
    uint32_t up_head, up_len, down_head, down_len;
    uint32_t send_len;             /* UDP: the bytes of the frame in flight */
    uint64_t bytes_up, bytes_down; /* to and from the far end */
    ztm_op_t recv_op, send_op, connect_op;
    struct msghdr msg;
    struct iovec iov[2];
    ztm_timer_t timer; /* exporter TCP: connect deadline; UDP: idle */
    uint64_t last_active;
    ztm_peer_udp_cb_t cb;
    void *cb_arg;
    const char *end_reason;
    ztm_addr_t to;
    char service[PEER_SERVICE_MAX + 1];
    char why[128];
};

/* A datagram that wraps around the ring, made whole for on_reply. */
static __thread uint8_t dgram_scratch[PEER_DGRAM_MAX];

static void up_arm(pstream_t *st);
static void down_send(pstream_t *st);
static void udp_send_next(pstream_t *st);

/* ---- rings ---------------------------------------------------------------- */
static void ring_put(uint8_t *ring, uint32_t head, uint32_t *len, const uint8_t *src, uint32_t n)
{
    uint32_t tail = (head + *len) % PEER_STREAM_BUF;
    uint32_t first = n < PEER_STREAM_BUF - tail ? n : PEER_STREAM_BUF - tail;
    memcpy(ring + tail, src, first);
    memcpy(ring, src + first, n - first);
    *len += n;
}

static void ring_peek(const uint8_t *ring, uint32_t head, uint32_t off, uint8_t *dst, uint32_t n)
{
    uint32_t at = (head + off) % PEER_STREAM_BUF;
    uint32_t first = n < PEER_STREAM_BUF - at ? n : PEER_STREAM_BUF - at;
    memcpy(dst, ring + at, first);
    memcpy(dst + first, ring, n - first);
}

/* The head only moves forward: a receive in flight lands at the tail. */
static void ring_drop(uint32_t *head, uint32_t *len, uint32_t n)
{
    *head = (*head + n) % PEER_STREAM_BUF;
    *len -= n;
}

static uint32_t frame_len(const pstream_t *st)
{
    uint8_t h[2];
    ring_peek(st->down, st->down_head, 0, h, 2);
    return (uint32_t)h[0] << 8 | h[1];
}

/* ---- lifetime --------------------------------------------------------------- */
static void pstream_release(ztm_ref_t *ref)
{
    pstream_t *st = (pstream_t *)((char *)ref - offsetof(pstream_t, ref));
    ztm_peer_t *p = st->p;
    ztm_timer_cancel(ztm_worker_timers(p->w), &st->timer);
    ztm_log(ZTM_LOG_DEBUG, "tunnel.close",
            "peer=%llu stream=%d side=%s service=%s proto=%s up=%llu down=%llu end=%s",
            (unsigned long long)p->id, st->id, st->client ? "importer" : "exporter", st->service,
            st->udp ? "udp" : "tcp", (unsigned long long)st->bytes_up,
            (unsigned long long)st->bytes_down,
            st->phase == ST_REFUSED ? "refused"
            : st->abortive          ? "reset"
                                    : "done");
    if (st->fd >= 0) {
        if (st->abortive)
            ztm_sock_abortive(st->fd);
        close(st->fd);
    }
    if (st->prev)
        st->prev->next = st->next;
    else
        p->streams = st->next;
    if (st->next)
        st->next->prev = st->prev;
    p->n_streams--;
    free(st->up); /* one block: up, down, dgram */
    free(st);
    peer_stream_gone(p);
    ztm_ref_put(&p->ref);
}

static void maybe_release(pstream_t *st)
{
    if (!st->h2_live && st->local_done && !st->own_dropped) {
        st->own_dropped = true;
        ztm_ref_put(&st->ref);
    }
}

static void on_recv(ztm_worker_t *w, ztm_op_t *op, int res, uint32_t flags);
static void on_tcp_send(ztm_worker_t *w, ztm_op_t *op, int res, uint32_t flags);
static void on_udp_send(ztm_worker_t *w, ztm_op_t *op, int res, uint32_t flags);
static void on_connect(ztm_worker_t *w, ztm_op_t *op, int res, uint32_t flags);
static void on_stream_timer(ztm_timer_t *t);

static pstream_t *pstream_new(ztm_peer_t *p, int fd, bool client, bool udp, const char *service)
{
    pstream_t *st = calloc(1, sizeof(*st));
    uint8_t *bufs = st ? malloc(2 * PEER_STREAM_BUF + (udp && !client ? PEER_DGRAM_MAX : 0)) : NULL;
    if (!bufs) {
        free(st);
        return NULL;
    }
    ztm_ref_init(&st->ref, pstream_release);
    st->p = p;
    ztm_ref_get(&p->ref);
    st->fd = fd;
    st->client = client;
    st->udp = udp;
    st->up = bufs;
    st->down = bufs + PEER_STREAM_BUF;
    if (udp && !client)
        st->dgram = bufs + 2 * PEER_STREAM_BUF;
    snprintf(st->service, sizeof(st->service), "%s", service);
    ztm_op_init(&st->recv_op, on_recv, &st->ref);
    ztm_op_init(&st->send_op, udp ? on_udp_send : on_tcp_send, &st->ref);
    ztm_op_init(&st->connect_op, on_connect, &st->ref);
    ztm_timer_init(&st->timer, on_stream_timer);
    st->last_active = ztm_worker_now(p->w);
    st->next = p->streams;
    if (p->streams)
        p->streams->prev = st;
    p->streams = st;
    p->n_streams++;
    p->stats.streams_total++;
    return st;
}

/* The local side is finished: its ops are cancelled, the socket closes at
 * the release (with an RST if ABORTIVE). Bytes still held for it are
 * given back to the far end's window. May release ST: callers touch it no
 * more unless a reference of theirs keeps it. */
static void close_local(pstream_t *st, bool abortive)
{
    if (st->local_done) {
        maybe_release(st);
        return;
    }
    ztm_peer_t *p = st->p;
    st->local_done = true;
    st->abortive = abortive;
    ztm_timer_cancel(ztm_worker_timers(p->w), &st->timer);
    if (st->fd >= 0)
        ztm_worker_cancel_fd(p->w, st->fd);
    if (st->down_len && p->h2)
        ztm_h2_consume(p->h2, st->id, st->down_len);
    st->down_len = st->down_head = 0;
    maybe_release(st);
}

/* UDP importer: tells the user once that the flow ended. */
static void tell_end(pstream_t *st, const char *why)
{
    if (!st->udp || !st->client || st->end_told)
        return;
    st->end_told = true;
    if (st->cb.on_end)
        st->cb.on_end(st->cb_arg, why);
}

/* The local socket failed or was reset: so is the inner stream. */
static void reset_both(pstream_t *st)
{
    if (st->h2_live && st->p->h2)
        ztm_h2_reset(st->p->h2, st->id, ZTM_H2_CANCEL);
    close_local(st, true);
}

void pstream_abort_all(ztm_peer_t *p)
{
    pstream_t *next;
    for (pstream_t *st = p->streams; st; st = next) {
        next = st->next; /* closing may release st */
        tell_end(st, "closed");
        close_local(st, true);
    }
}

/* ---- socket -> inner stream ------------------------------------------------ */
static void resume_up(pstream_t *st)
{
    if (st->up_parked && st->h2_live && st->p->h2) {
        st->up_parked = false;
        ztm_h2_resume(st->p->h2, st->id);
    }
}

static void up_arm(pstream_t *st)
{
    if (st->local_done || st->fd < 0 || st->up_eof || st->recv_op.inflight || !st->h2_live ||
        st->phase == ST_REFUSED || (!st->client && st->phase != ST_OPEN))
        return;
    ztm_worker_t *w = st->p->w;
    if (st->udp) {
        if (PEER_STREAM_BUF - st->up_len < 2 + PEER_DGRAM_MAX)
            return; /* back-pressure: the kernel's buffer fills and drops */
        io_uring_prep_recv(ztm_worker_sqe(w, &st->recv_op), st->fd, st->dgram, PEER_DGRAM_MAX, 0);
        return;
    }
    uint32_t room = PEER_STREAM_BUF - st->up_len;
    if (!room)
        return;
    uint32_t tail = (st->up_head + st->up_len) % PEER_STREAM_BUF;
    uint32_t n = room < PEER_STREAM_BUF - tail ? room : PEER_STREAM_BUF - tail;
    io_uring_prep_recv(ztm_worker_sqe(w, &st->recv_op), st->fd, st->up + tail, n, 0);
}

static void frame_in(pstream_t *st, const uint8_t *d, uint32_t len)
{
    uint8_t h[2] = {(uint8_t)(len >> 8), (uint8_t)len};
    ring_put(st->up, st->up_head, &st->up_len, h, 2);
    ring_put(st->up, st->up_head, &st->up_len, d, len);
}

static void on_recv(ztm_worker_t *w, ztm_op_t *op, int res, uint32_t flags)
{
    pstream_t *st = (pstream_t *)((char *)op - offsetof(pstream_t, recv_op));
    ztm_peer_t *p = st->p;
    peer_enter(p);
    if (st->local_done || res == -ECANCELED) {
        /* nothing */
    } else if (st->udp) {
        /* A datagram (an empty one too); errors are ICMP news on a connected
         * UDP socket, which a flow outlives. */
        if (res >= 0 && !st->up_eof) {
            frame_in(st, st->dgram, (uint32_t)res);
            st->last_active = ztm_worker_now(w);
            resume_up(st);
        }
        up_arm(st);
    } else if (res > 0) {
        st->up_len += (uint32_t)res;
        resume_up(st);
        up_arm(st);
    } else if (res == 0) {
        st->up_eof = true;
        resume_up(st);
    } else {
        if (res != -ECONNRESET && res != -EPIPE)
            ztm_log(ZTM_LOG_WARN, "tunnel.recv_error",
                    "peer=%llu stream=%d service=%s error=\"%s\"", (unsigned long long)p->id,
                    st->id, st->service, strerror(-res));
        reset_both(st);
    }
    peer_leave(p);
}

static ssize_t on_read_body(ztm_h2_session_t *s, void *user, int32_t id, void *sdata, uint8_t *dst,
                            size_t max, bool *eof)
{
    pstream_t *st = sdata;
    if (!st) {
        *eof = true;
        return 0;
    }
    uint32_t n = max < st->up_len ? (uint32_t)max : st->up_len;
    if (n) {
        ring_peek(st->up, st->up_head, 0, dst, n);
        ring_drop(&st->up_head, &st->up_len, n);
        st->p->stats.bytes_out += n;
        st->bytes_up += n;
        up_arm(st);
    }
    if (!st->up_len && st->up_eof)
        *eof = true;
    else if (!n)
        st->up_parked = true;
    return n;
}

/* ---- inner stream -> socket ------------------------------------------------- */
static void maybe_shut(pstream_t *st)
{
    if (st->local_done || !st->down_eof || st->down_len || st->down_shut || st->send_op.inflight ||
        st->phase != ST_OPEN || st->udp)
        return;
    if (shutdown(st->fd, SHUT_WR) < 0 && errno != ENOTCONN) {
        reset_both(st);
        return;
    }
    st->down_shut = true;
    if (!st->h2_live)
        close_local(st, false);
}

static void down_send(pstream_t *st)
{
    if (st->local_done || st->send_op.inflight || st->phase != ST_OPEN)
        return;
    if (!st->down_len) {
        maybe_shut(st);
        return;
    }
    uint32_t n = st->down_len < PEER_STREAM_BUF - st->down_head ? st->down_len
                                                                : PEER_STREAM_BUF - st->down_head;
    io_uring_prep_send(ztm_worker_sqe(st->p->w, &st->send_op), st->fd, st->down + st->down_head, n,
                       MSG_NOSIGNAL);
}

static void on_tcp_send(ztm_worker_t *w, ztm_op_t *op, int res, uint32_t flags)
{
    pstream_t *st = (pstream_t *)((char *)op - offsetof(pstream_t, send_op));
    ztm_peer_t *p = st->p;
    peer_enter(p);
    if (st->local_done || res == -ECANCELED) {
        /* nothing */
    } else if (res < 0) {
        reset_both(st);
    } else {
        ring_drop(&st->down_head, &st->down_len, (uint32_t)res);
        if (p->h2)
            ztm_h2_consume(p->h2, st->id, (size_t)res);
        down_send(st);
    }
    peer_leave(p);
}

/* ---- UDP flows ---------------------------------------------------------------- */
/* Our side of the flow ends: END_STREAM after what is queued. */
static void udp_end_flow(pstream_t *st, const char *why)
{
    if (st->up_eof)
        return;
    st->up_eof = true;
    if (!st->end_reason)
        st->end_reason = why;
    if (st->recv_op.inflight)
        ztm_worker_cancel_op(st->p->w, &st->recv_op);
    st->up_parked = true; /* resume even if not parked: the EOF must go out */
    resume_up(st);
}

static void udp_arm_idle(pstream_t *st)
{
    ztm_peer_t *p = st->p;
    ztm_timer_arm(ztm_worker_timers(p->w), &st->timer, st->last_active + p->udp_idle_timeout_ns);
}

/* Exporter: the next whole datagram in the ring goes to the target. */
static void udp_send_next(pstream_t *st)
{
    if (st->local_done || st->send_op.inflight || st->phase != ST_OPEN)
        return;
    if (st->down_len < 2 || st->down_len < 2 + frame_len(st)) {
        if (st->down_eof) /* the importer ended the flow (a torn frame is dropped) */
            udp_end_flow(st, "ended");
        return;
    }
    uint32_t len = frame_len(st);
    uint32_t at = (st->down_head + 2) % PEER_STREAM_BUF;
    uint32_t first = len < PEER_STREAM_BUF - at ? len : PEER_STREAM_BUF - at;
    st->iov[0] = (struct iovec){st->down + at, first};
    st->iov[1] = (struct iovec){st->down, len - first};
    memset(&st->msg, 0, sizeof(st->msg));
    st->msg.msg_iov = st->iov;
    st->msg.msg_iovlen = len - first ? 2 : 1;
    st->send_len = 2 + len;
    io_uring_prep_sendmsg(ztm_worker_sqe(st->p->w, &st->send_op), st->fd, &st->msg, MSG_NOSIGNAL);
}

static void on_udp_send(ztm_worker_t *w, ztm_op_t *op, int res, uint32_t flags)
{
    pstream_t *st = (pstream_t *)((char *)op - offsetof(pstream_t, send_op));
    ztm_peer_t *p = st->p;
    peer_enter(p);
    if (!st->local_done && res != -ECANCELED) {
        /* Sent or not (UDP may drop), the datagram is done with. */
        ring_drop(&st->down_head, &st->down_len, st->send_len);
        if (p->h2)
            ztm_h2_consume(p->h2, st->id, st->send_len);
        st->last_active = ztm_worker_now(w);
        udp_send_next(st);
    }
    peer_leave(p);
}

/* Importer: every whole datagram in the ring goes to the user. */
static void udp_deliver(pstream_t *st)
{
    ztm_peer_t *p = st->p;
    while (st->down_len >= 2 && st->down_len >= 2 + frame_len(st) && !st->local_done) {
        uint32_t len = frame_len(st);
        uint32_t at = (st->down_head + 2) % PEER_STREAM_BUF;
        const uint8_t *d = st->down + at;
        if (len > PEER_STREAM_BUF - at) {
            ring_peek(st->down, st->down_head, 2, dgram_scratch, len);
            d = dgram_scratch;
        }
        if (!st->end_told && st->cb.on_reply)
            st->cb.on_reply(st->cb_arg, d, len);
        if (st->local_done) /* the user closed the flow from on_reply */
            break;
        ring_drop(&st->down_head, &st->down_len, 2 + len);
        if (p->h2)
            ztm_h2_consume(p->h2, st->id, 2 + len);
    }
}

static void udp_idle(pstream_t *st)
{
    ztm_peer_t *p = st->p;
    uint64_t now = ztm_worker_now(p->w);
    if (now - st->last_active >= p->udp_idle_timeout_ns)
        udp_end_flow(st, "idle");
    else
        udp_arm_idle(st);
}

/* ---- the exporter: connecting to the target ------------------------------- */
static void sanitize(char *dst, size_t cap, const char *src)
{
    size_t i = 0;
    for (; src && src[i] && i + 1 < cap; i++)
        dst[i] = src[i] == '"' || (unsigned char)src[i] < 0x20 || src[i] == 0x7f ? '?' : src[i];
    dst[i] = 0;
}

/* Answers STATUS with a ztm-error header; the stream carries nothing more. */
static void refuse(pstream_t *st, int status, const char *why)
{
    ztm_peer_t *p = st->p;
    sanitize(st->why, sizeof(st->why), why);
    st->phase = ST_REFUSED;
    p->stats.streams_refused++;
    ztm_log(ZTM_LOG_INFO, "tunnel.deny",
            "peer=%llu stream=%d caller=%s service=%s status=%d error=\"%s\"",
            (unsigned long long)p->id, st->id, p->peer_id.name, st->service, status, st->why);
    if (st->h2_live && p->h2) {
        ztm_h2_header_t h = {"ztm-error", 9, st->why, strlen(st->why)};
        if (ztm_h2_respond(p->h2, st->id, status, &h, 1, 0) < 0)
            ztm_h2_reset(p->h2, st->id, ZTM_H2_REFUSED_STREAM);
    }
    close_local(st, false);
}

static void connect_failed(pstream_t *st, const char *what)
{
    char to[ZTM_ADDRSTRLEN], why[96];
    ztm_addr_format((const struct sockaddr *)&st->to.ss, to, sizeof(to));
    ztm_log(ZTM_LOG_WARN, "tunnel.connect_failed",
            "peer=%llu stream=%d service=%s to=%s error=\"%s\"", (unsigned long long)st->p->id,
            st->id, st->service, to, what);
    snprintf(why, sizeof(why), "target: %s", what);
    refuse(st, 502, why);
}

static void opened(pstream_t *st)
{
    ztm_peer_t *p = st->p;
    st->phase = ST_OPEN;
    if (p->h2 && ztm_h2_respond(p->h2, st->id, 200, NULL, 0, ZTM_H2_BODY) < 0) {
        reset_both(st);
        return;
    }
    if (st->udp) {
        udp_arm_idle(st);
        udp_send_next(st);
    } else {
        ztm_timer_cancel(ztm_worker_timers(p->w), &st->timer);
        ztm_sock_nodelay(st->fd);
        down_send(st);
    }
    up_arm(st);
}

static void on_connect(ztm_worker_t *w, ztm_op_t *op, int res, uint32_t flags)
{
    pstream_t *st = (pstream_t *)((char *)op - offsetof(pstream_t, connect_op));
    ztm_peer_t *p = st->p;
    peer_enter(p);
    if (!st->local_done && st->phase == ST_WAIT) {
        if (res < 0)
            connect_failed(st, strerror(-res));
        else
            opened(st);
    }
    peer_leave(p);
}

static void start_target(pstream_t *st)
{
    ztm_peer_t *p = st->p;
    int fd = socket(st->to.ss.ss_family, (st->udp ? SOCK_DGRAM : SOCK_STREAM) | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        connect_failed(st, strerror(errno));
        return;
    }
    st->fd = fd;
    if (st->udp) {
        /* Connecting a UDP socket only sets its peer: nothing to wait for. */
        if (connect(fd, (const struct sockaddr *)&st->to.ss, st->to.len) < 0)
            connect_failed(st, strerror(errno));
        else
            opened(st);
        return;
    }
    ztm_timer_arm(ztm_worker_timers(p->w), &st->timer,
                  ztm_worker_now(p->w) + p->connect_timeout_ns);
    io_uring_prep_connect(ztm_worker_sqe(p->w, &st->connect_op), fd,
                          (const struct sockaddr *)&st->to.ss, st->to.len);
}

static void on_stream_timer(ztm_timer_t *t)
{
    pstream_t *st = (pstream_t *)((char *)t - offsetof(pstream_t, timer));
    ztm_peer_t *p = st->p;
    peer_enter(p);
    ztm_ref_get(&st->ref);
    if (!st->local_done) {
        if (st->udp)
            udp_idle(st);
        else if (!st->client && st->phase == ST_WAIT)
            connect_failed(st, "timed out");
    }
    ztm_ref_put(&st->ref);
    peer_leave(p);
}

/* ---- inner session callbacks ------------------------------------------------ */
static void refuse_bare(ztm_h2_session_t *s, int32_t id, int status, const char *why)
{
    ztm_h2_header_t h = {"ztm-error", 9, why, strlen(why)};
    if (ztm_h2_respond(s, id, status, &h, 1, 0) < 0)
        ztm_h2_reset(s, id, ZTM_H2_REFUSED_STREAM);
}

static void on_request(ztm_h2_session_t *s, void *user, int32_t id, void *sdata,
                       const ztm_h2_msg_t *req)
{
    ztm_peer_t *p = user;
    size_t alen = req->authority ? strlen(req->authority) : 0;
    if (!req->method || strcmp(req->method, "CONNECT") || req->protocol || alen < 5 ||
        alen - 4 > PEER_SERVICE_MAX ||
        (strcmp(req->authority + alen - 4, ".tcp") && strcmp(req->authority + alen - 4, ".udp"))) {
        refuse_bare(s, id, 400, "expected CONNECT SERVICE.tcp or SERVICE.udp");
        return;
    }
    if (p->state != P_OPEN) {
        ztm_h2_reset(s, id, ZTM_H2_REFUSED_STREAM);
        return;
    }
    char service[PEER_SERVICE_MAX + 1];
    memcpy(service, req->authority, alen - 4);
    service[alen - 4] = 0;
    bool udp = !strcmp(req->authority + alen - 4, ".udp");
    pstream_t *st = pstream_new(p, -1, false, udp, service);
    if (!st) {
        ztm_h2_reset(s, id, ZTM_H2_INTERNAL_ERROR);
        return;
    }
    st->id = id;
    st->h2_live = true;
    ztm_h2_stream_set_data(s, id, st);
    const char *why = p->resolve(p->resolve_arg, &p->peer_id, st->service, udp, &st->to);
    if (why)
        refuse(st, strcmp(why, "unknown service") ? 403 : 404, why);
    else
        start_target(st);
}

static void on_response(ztm_h2_session_t *s, void *user, int32_t id, void *sdata,
                        const ztm_h2_msg_t *resp)
{
    ztm_peer_t *p = user;
    pstream_t *st = sdata;
    if (!st || st->phase != ST_WAIT)
        return;
    if (resp->status == 200) {
        st->phase = ST_OPEN;
        if (st->udp) {
            udp_arm_idle(st);
            udp_deliver(st);
        } else {
            down_send(st);
        }
        return;
    }
    const char *err = "";
    for (size_t i = 0; i < resp->n_headers; i++)
        if (!strcmp(resp->headers[i].name, "ztm-error"))
            err = resp->headers[i].value;
    sanitize(st->why, sizeof(st->why), err);
    st->phase = ST_REFUSED;
    p->stats.streams_refused++;
    ztm_log(ZTM_LOG_WARN, "tunnel.refused", "peer=%llu service=%s status=%d error=\"%s\"",
            (unsigned long long)p->id, st->service, resp->status, st->why);
    if (p->on_refused)
        p->on_refused(p->refused_arg, st->service, st->udp, resp->status, st->why);
    if (resp->end_stream) {
        /* The exporter is done with the stream: end ours too (a reset would
         * count against the rapid-reset budget of the session). */
        st->up_len = 0;
        st->up_eof = true;
        st->up_parked = true;
        resume_up(st);
    } else {
        ztm_h2_reset(s, id, ZTM_H2_CANCEL);
    }
    if (st->udp) {
        char why[160];
        snprintf(why, sizeof(why), "refused: %d %s", resp->status, st->why);
        tell_end(st, why);
    }
    close_local(st, false);
}

static void on_data(ztm_h2_session_t *s, void *user, int32_t id, void *sdata, const uint8_t *data,
                    size_t len)
{
    ztm_peer_t *p = user;
    pstream_t *st = sdata;
    if (!st || st->local_done || st->phase == ST_REFUSED) {
        ztm_h2_consume(s, id, len);
        return;
    }
    if (len > PEER_STREAM_BUF - st->down_len) { /* past the window we gave */
        ztm_h2_consume(s, id, len);
        ztm_h2_reset(s, id, ZTM_H2_FLOW_CONTROL_ERROR);
        tell_end(st, "reset");
        close_local(st, true);
        return;
    }
    ring_put(st->down, st->down_head, &st->down_len, data, (uint32_t)len);
    p->stats.bytes_in += len;
    st->bytes_down += len;
    if (!st->udp) {
        down_send(st);
        return;
    }
    st->last_active = ztm_worker_now(p->w);
    if (st->phase != ST_OPEN)
        return;
    if (st->client)
        udp_deliver(st);
    else
        udp_send_next(st);
}

static void on_end_stream(ztm_h2_session_t *s, void *user, int32_t id, void *sdata)
{
    pstream_t *st = sdata;
    if (!st)
        return;
    st->down_eof = true;
    if (!st->udp)
        maybe_shut(st);
    else if (st->client)
        udp_end_flow(st, "ended");
    else
        udp_send_next(st);
}

static void on_stream_close(ztm_h2_session_t *s, void *user, int32_t id, void *sdata,
                            uint32_t error_code)
{
    pstream_t *st = sdata;
    if (!st)
        return;
    st->h2_live = false;
    st->up_parked = false;
    if (error_code) {
        tell_end(st, "reset");
        close_local(st, true);
    } else if (st->udp) {
        tell_end(st, st->end_reason ? st->end_reason : "ended");
        close_local(st, false);
    } else if (!st->down_eof || st->phase != ST_OPEN || st->down_shut) {
        close_local(st, false);
    } /* else the socket still gets what is buffered, then FIN (maybe_shut) */
}

const ztm_h2_callbacks_t peer_h2_callbacks = {
    .on_request = on_request,
    .on_response = on_response,
    .on_data = on_data,
    .on_end_stream = on_end_stream,
    .on_stream_close = on_stream_close,
    .read_body = on_read_body,
};

/* ---- the importer's API -------------------------------------------------------- */
static bool service_valid(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > PEER_SERVICE_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] <= 0x20 || s[i] == '"' || s[i] == 0x7f)
            return false;
    return true;
}

static int open_stream(ztm_peer_t *p, pstream_t *st, const char *suffix)
{
    char authority[PEER_SERVICE_MAX + 8];
    snprintf(authority, sizeof(authority), "%s%s", st->service, suffix);
    ztm_h2_msg_t req = {.method = "CONNECT", .authority = authority};
    int32_t id = ztm_h2_request(p->h2, &req, ZTM_H2_BODY, st);
    if (id < 0) {
        close_local(st, false);
        return id == ZTM_H2_E_CLOSED ? -ESHUTDOWN : id == -ENOMEM ? -ENOMEM : -EIO;
    }
    st->id = id;
    st->h2_live = true;
    return 0;
}

static bool may_open(const ztm_peer_t *p)
{
    return p->client && p->h2 && !p->close_reason &&
           (p->state == P_HANDSHAKE || p->state == P_OPEN);
}

int pstream_connect_tcp(ztm_peer_t *p, const char *service, int fd)
{
    if (!may_open(p) || !service_valid(service)) {
        close(fd);
        return service_valid(service) ? -ESHUTDOWN : -EINVAL;
    }
    pstream_t *st = pstream_new(p, fd, true, false, service);
    if (!st) {
        close(fd);
        return -ENOMEM;
    }
    ztm_sock_nodelay(fd);
    int r = open_stream(p, st, ".tcp");
    if (r == 0)
        up_arm(st); /* the first bytes leave with the request */
    return r;
}

int pstream_udp_open(ztm_peer_t *p, const char *service, const ztm_peer_udp_cb_t *cb, void *arg,
                     uint32_t *flow_id)
{
    if (!service_valid(service) || !cb || !flow_id)
        return -EINVAL;
    if (!may_open(p))
        return -ESHUTDOWN;
    pstream_t *st = pstream_new(p, -1, true, true, service);
    if (!st)
        return -ENOMEM;
    st->cb = *cb;
    st->cb_arg = arg;
    int r = open_stream(p, st, ".udp");
    if (r == 0) {
        *flow_id = (uint32_t)st->id;
        udp_arm_idle(st);
    }
    return r;
}

static pstream_t *flow_find(ztm_peer_t *p, uint32_t flow_id)
{
    if (!p->h2 || flow_id == 0 || flow_id > INT32_MAX)
        return NULL;
    pstream_t *st = ztm_h2_stream_data(p->h2, (int32_t)flow_id);
    return st && st->udp && st->client && !st->end_told && st->h2_live ? st : NULL;
}

int pstream_udp_send(ztm_peer_t *p, uint32_t flow_id, const uint8_t *dgram, size_t len)
{
    pstream_t *st = flow_find(p, flow_id);
    if (!st || st->up_eof)
        return -ENOENT;
    if (len > PEER_DGRAM_MAX)
        return -EMSGSIZE;
    if (PEER_STREAM_BUF - st->up_len < 2 + len)
        return 0; /* dropped, as UDP may */
    frame_in(st, dgram, (uint32_t)len);
    st->last_active = ztm_worker_now(p->w);
    resume_up(st);
    return 0;
}

void pstream_udp_close(ztm_peer_t *p, uint32_t flow_id)
{
    pstream_t *st = flow_find(p, flow_id);
    if (!st)
        return;
    st->end_told = true; /* the user knows */
    udp_end_flow(st, "closed");
    close_local(st, false); /* replies still on their way are dropped */
}
