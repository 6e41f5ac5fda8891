/* A peer session: carrier bytes <-> TLS (buffer mode) <-> the inner HTTP/2
 * session; see peer.h. The streams and their sockets are in peer_stream.c.
 *
 * Ciphertext the carrier feeds goes straight into TLS as far as TLS takes
 * it; the rest waits in a queue of fixed chunks (bounded by the carrier's
 * window, since `consumed` is reported only for bytes TLS took). Decrypted
 * bytes go straight to the inner session, which always takes all of them:
 * its stream windows equal the streams' buffers. Output is made when the
 * carrier asks for it (ztm_peer_produce): HTTP/2 frames one TLS record at a
 * time, sealed into TLS's out buffer, copied to the carrier.
 *
 * Every entry point (carrier calls, completions, timers, the API) holds a
 * reference and a depth count; only the outermost one calls the carrier
 * (want_write, consumed), so nothing here is re-entered from inside the
 * inner session's callbacks, and the session is freed only after the last
 * of them returned and the last completion is in. `closed` is delivered
 * from a NOP completion, never from inside a carrier's own call. */
#include "dataplane/peer/peer_int.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dataplane/runtime/log.h"

#define IN_CHUNK  (16u * 1024)
#define PLAIN_BUF (16u * 1024) /* one full TLS record of plaintext */
#define TICK_NS   ZTM_NS_PER_SEC
/* A carrier that does not take our last bytes this long is given up on. */
#define NOTIFY_NS (10 * ZTM_NS_PER_SEC)

#define DEFAULT_IDLE_NS     (300 * ZTM_NS_PER_SEC)
#define DEFAULT_UDP_IDLE_NS (60 * ZTM_NS_PER_SEC)
#define DEFAULT_CONNECT_NS  (10 * ZTM_NS_PER_SEC)

struct in_chunk {
    in_chunk_t *next;
    uint32_t off, len;
    uint8_t data[IN_CHUNK];
};

static __thread uint64_t next_peer_seq;

static void session_end(ztm_peer_t *p, const char *reason, bool error);
static void drive_tls(ztm_peer_t *p);

/* ---- entry points and settling ------------------------------------------ */
static bool output_pending(const ztm_peer_t *p)
{
    if (p->state == P_DONE)
        return false;
    const uint8_t *d;
    if (ztm_tls_out_pending(p->tls, &d))
        return true;
    if (p->state == P_NOTIFY)
        return true; /* the EOF is still to be given */
    return p->ready && p->state < P_NOTIFY && (p->carry_len || (p->h2 && ztm_h2_want_write(p->h2)));
}

static void begin_notify(ztm_peer_t *p)
{
    int r = ztm_tls_shutdown(p->tls);
    if (r == -ENOBUFS)
        return; /* the next produce makes room; settle tries again */
    if (r < 0 && r != ZTM_TLS_E_CLOSED) {
        session_end(p, "tls: close_notify failed", true);
        return;
    }
    p->state = P_NOTIFY;
    p->notify_at = ztm_worker_now(p->w);
}

static void advance_close(ztm_peer_t *p)
{
    if (!p->ready || p->state == P_DONE || p->state == P_NOTIFY)
        return;
    if (p->peer_closed) { /* the far end sent close_notify: nothing more comes */
        begin_notify(p);
        return;
    }
    if (!p->h2)
        return;
    if (p->state == P_OPEN && ztm_h2_idle(p->h2)) {
        /* GOAWAY both ways and no stream left (the far end's doing). */
        p->state = P_CLOSING;
        if (!p->close_reason)
            p->close_reason = "closed";
    }
    if (p->state == P_CLOSING && ztm_h2_idle(p->h2) && !p->carry_len && p->n_streams == 0 &&
        !ztm_h2_wait_peer_close(p->h2))
        begin_notify(p);
}

/* Outermost exit: carrier calls happen here only. A carrier may call back
 * in from them (produce from want_write); the loop then looks again. */
static void settle(ztm_peer_t *p)
{
    if (p->settling)
        return;
    p->settling = true;
    for (;;) {
        advance_close(p);
        if (p->state == P_DONE || p->gone)
            break;
        bool called = false;
        if (p->consumed_pending) {
            size_t n = p->consumed_pending;
            p->consumed_pending = 0;
            p->carrier.consumed(p->carrier_arg, n);
            called = true;
        }
        if (p->state != P_DONE && !p->gone && !p->want_write_sent && output_pending(p)) {
            p->want_write_sent = true;
            p->carrier.want_write(p->carrier_arg);
            called = true;
        }
        if (!called)
            break;
    }
    p->settling = false;
}

void peer_enter(ztm_peer_t *p)
{
    ztm_ref_get(&p->ref);
    p->depth++;
}

void peer_leave(ztm_peer_t *p)
{
    if (p->depth == 1)
        settle(p);
    p->depth--;
    ztm_ref_put(&p->ref);
}

/* ---- lifetime ------------------------------------------------------------ */
static void set_reason(ztm_peer_t *p, const char *prefix, const char *what)
{
    if (p->reason[0])
        return;
    if (prefix)
        snprintf(p->reason, sizeof(p->reason), "%s: %s", prefix, what);
    else
        snprintf(p->reason, sizeof(p->reason), "%s", what);
}

static void peer_release(ztm_ref_t *ref)
{
    ztm_peer_t *p = (ztm_peer_t *)((char *)ref - offsetof(ztm_peer_t, ref));
    assert(p->state == P_DONE && !p->streams && !p->h2);
    ztm_timer_cancel(ztm_worker_timers(p->w), &p->timer);
    ztm_tls_conn_free(p->tls);
    free(p->rbuf);
    free(p->obuf);
    free(p);
}

static void on_defer(ztm_worker_t *w, ztm_op_t *op, int res, uint32_t flags)
{
    ztm_peer_t *p = (ztm_peer_t *)((char *)op - offsetof(ztm_peer_t, defer_op));
    peer_enter(p);
    if (p->state == P_DONE && !p->gone && !p->closed_sent) {
        p->closed_sent = true;
        p->gone = true; /* nothing more of the carrier */
        p->carrier.closed(p->carrier_arg, p->reason, p->end_error);
    }
    peer_leave(p);
}

static void defer(ztm_peer_t *p)
{
    if (p->defer_op.inflight)
        return; /* its completion looks at the state then */
    io_uring_prep_nop(ztm_worker_sqe(p->w, &p->defer_op));
}

static void free_input(ztm_peer_t *p)
{
    in_chunk_t *c = p->in_head;
    while (c) {
        in_chunk_t *next = c->next;
        free(c);
        c = next;
    }
    p->in_head = p->in_tail = NULL;
    free(p->in_spare);
    p->in_spare = NULL;
}

/* Ends the session now: streams end (abortively unless already done),
 * `closed` follows from a completion unless the carrier is gone. */
static void session_end(ztm_peer_t *p, const char *reason, bool error)
{
    if (p->state == P_DONE)
        return;
    set_reason(p, NULL, reason ? reason : p->close_reason ? p->close_reason : "closed");
    p->state = P_DONE;
    p->end_error = error;
    ztm_timer_cancel(ztm_worker_timers(p->w), &p->timer);
    ztm_h2_session_t *h2 = p->h2;
    p->h2 = NULL; /* its streams' last callbacks must not call into it */
    ztm_h2_free(h2);
    pstream_abort_all(p);
    free_input(p);
    ztm_log(error ? ZTM_LOG_WARN : ZTM_LOG_INFO, "peer.close",
            "peer=%llu role=%s name=%s in=%llu out=%llu streams=%llu reason=\"%s\"",
            (unsigned long long)p->id, p->client ? "client" : "server",
            p->ready ? p->peer_id.name : "-", (unsigned long long)p->stats.bytes_in,
            (unsigned long long)p->stats.bytes_out, (unsigned long long)p->stats.streams_total,
            p->reason);
    if (!p->gone)
        defer(p);
    ztm_ref_put(&p->ref); /* the session's own reference */
}

/* ---- timers -------------------------------------------------------------- */
static void arm_timer(ztm_peer_t *p)
{
    if (p->state == P_DONE)
        return;
    uint64_t now = ztm_worker_now(p->w), next = now + TICK_NS;
    if (!p->ready) {
        uint64_t dl = ztm_tls_handshake_deadline(p->tls);
        if (dl < next)
            next = dl;
    } else if (p->state == P_OPEN && p->n_streams == 0) {
        uint64_t dl = p->idle_since + p->idle_timeout_ns;
        if (dl < next)
            next = dl;
    }
    if (next <= now) /* a due timer re-armed from its callback would spin */
        next = now + ZTM_NS_PER_MS;
    ztm_timer_arm(ztm_worker_timers(p->w), &p->timer, next);
}

static void close_with(ztm_peer_t *p, const char *why)
{
    if (p->state >= P_CLOSING || p->close_reason)
        return;
    p->close_reason = why;
    if (p->h2)
        (void)ztm_h2_shutdown(p->h2);
    if (p->state == P_OPEN)
        p->state = P_CLOSING;
}

static void on_timer(ztm_timer_t *t)
{
    ztm_peer_t *p = (ztm_peer_t *)((char *)t - offsetof(ztm_peer_t, timer));
    peer_enter(p);
    uint64_t now = ztm_worker_now(p->w);
    if (p->state == P_HANDSHAKE) {
        if (now >= ztm_tls_handshake_deadline(p->tls))
            drive_tls(p); /* the handshake fails with -ETIMEDOUT */
    } else if (p->state == P_NOTIFY) {
        if (now - p->notify_at >= NOTIFY_NS)
            session_end(p, "close: the carrier took no more bytes", true);
    } else if (p->h2) {
        int r = ztm_h2_tick(p->h2);
        if (r == ZTM_H2_E_DEAD_PEER)
            session_end(p, "h2: peer stopped answering", true);
        else if (p->state == P_OPEN && p->n_streams == 0 &&
                 now - p->idle_since >= p->idle_timeout_ns)
            close_with(p, "idle");
    }
    arm_timer(p);
    peer_leave(p);
}

void peer_stream_gone(ztm_peer_t *p)
{
    if (p->n_streams == 0 && p->state != P_DONE) {
        p->idle_since = ztm_worker_now(p->w);
        arm_timer(p);
    }
}

/* ---- TLS and the inner session: input ------------------------------------ */
static void tls_failed(ztm_peer_t *p, int err)
{
    const char *why = ztm_tls_conn_verify_reason(p->tls);
    if (err == ZTM_TLS_E_VERIFY && why)
        set_reason(p, "verify", why);
    else if (err == -ETIMEDOUT)
        set_reason(p, "handshake", "timed out");
    else
        set_reason(p, "tls", ztm_tls_strerror(err));
    session_end(p, NULL, true);
}

/* The far end must be an agent or gateway of our mesh, and for the
 * dialling end the very endpoint it meant. */
static bool check_peer(ztm_peer_t *p)
{
    X509 *cert = ztm_tls_conn_peer_cert(p->tls);
    ztm_identity_t *id = &p->peer_id;
    bool ok = cert && ztm_identity_from_cert(cert, id) == 0 && !strcmp(id->mesh, p->mesh) &&
              (id->role == ZTM_ROLE_AGENT || id->role == ZTM_ROLE_GATEWAY) &&
              (!p->client || !strcmp(id->name, p->expect_name));
    if (!ok) {
        ztm_log(ZTM_LOG_WARN, "peer.wrong_peer",
                "peer=%llu expected=%s got_name=%s got_mesh=%s got_role=%s",
                (unsigned long long)p->id, p->client ? p->expect_name : "-", cert ? id->name : "-",
                cert ? id->mesh : "-",
                cert && ztm_role_name(id->role) ? ztm_role_name(id->role) : "-");
        memset(id, 0, sizeof(*id));
        session_end(p, "verify: wrong_peer", true);
        return false;
    }
    p->ready = true;
    p->state = p->close_reason ? P_CLOSING : P_OPEN;
    p->idle_since = ztm_worker_now(p->w);
    ztm_log(ZTM_LOG_INFO, "peer.open", "peer=%llu role=%s name=%s peer_role=%s cipher=%s",
            (unsigned long long)p->id, p->client ? "client" : "server", id->name,
            ztm_role_name(id->role), ztm_tls_conn_cipher(p->tls));
    arm_timer(p);
    return true;
}

static void drive_tls(ztm_peer_t *p)
{
    if (p->state == P_DONE || p->peer_closed)
        return;
    if (p->state == P_HANDSHAKE) {
        int r = ztm_tls_handshake(p->tls);
        if (r == -EAGAIN)
            return;
        if (r == -ENOBUFS) {
            p->in_blocked = true;
            return;
        }
        if (r < 0) {
            tls_failed(p, r);
            return;
        }
        if (!check_peer(p))
            return;
    }
    while (p->state != P_DONE) {
        ssize_t n = ztm_tls_read(p->tls, p->rbuf, PLAIN_BUF);
        if (n > 0) {
            int r = ztm_h2_feed(p->h2, p->rbuf, (size_t)n);
            /* CLOSED: the inner session had ended; what comes is dropped
             * until the close_notify. */
            if (r < 0 && r != ZTM_H2_E_CLOSED) {
                set_reason(p, "h2", ztm_h2_strerror(r));
                session_end(p, NULL, true);
            }
            continue;
        }
        if (n == 0) {
            p->peer_closed = true;
            if (!p->close_reason)
                p->close_reason = "closed";
        } else if (n == -ENOBUFS) {
            p->in_blocked = true;
        } else if (n != -EAGAIN) {
            tls_failed(p, (int)n);
        }
        return;
    }
}

/* Feeds queued ciphertext as far as TLS takes it. */
static void pump_input(ztm_peer_t *p)
{
    p->in_blocked = false;
    while (p->in_head && p->state != P_DONE) {
        in_chunk_t *c = p->in_head;
        size_t n = ztm_tls_feed(p->tls, c->data + c->off, c->len - c->off);
        c->off += (uint32_t)n;
        p->consumed_pending += n;
        if (c->off == c->len) {
            p->in_head = c->next;
            if (!p->in_head)
                p->in_tail = NULL;
            if (!p->in_spare) {
                c->next = NULL;
                p->in_spare = c;
            } else {
                free(c);
            }
        }
        drive_tls(p);
        if (!n)
            return;
    }
    drive_tls(p);
}

static bool queue_input(ztm_peer_t *p, const uint8_t *data, size_t len)
{
    while (len) {
        in_chunk_t *c = p->in_tail;
        if (!c || c->len == IN_CHUNK) {
            c = p->in_spare;
            if (c)
                p->in_spare = NULL;
            else if (!(c = malloc(sizeof(*c))))
                return false;
            c->next = NULL;
            c->off = c->len = 0;
            if (p->in_tail)
                p->in_tail->next = c;
            else
                p->in_head = c;
            p->in_tail = c;
        }
        size_t n = IN_CHUNK - c->len;
        if (n > len)
            n = len;
        memcpy(c->data + c->len, data, n);
        c->len += (uint32_t)n;
        data += n;
        len -= n;
    }
    return true;
}

void ztm_peer_feed(ztm_peer_t *p, const uint8_t *data, size_t len)
{
    if (p->state == P_DONE || !len)
        return;
    peer_enter(p);
    if (!p->in_head) {
        while (len && p->state != P_DONE) {
            size_t n = ztm_tls_feed(p->tls, data, len);
            p->consumed_pending += n;
            data += n;
            len -= n;
            drive_tls(p);
            if (!n)
                break;
        }
    }
    if (len && p->state != P_DONE && !queue_input(p, data, len))
        session_end(p, "out of memory", true);
    peer_leave(p);
}

void ztm_peer_feed_eof(ztm_peer_t *p)
{
    if (p->state == P_DONE)
        return;
    peer_enter(p);
    ztm_tls_feed_eof(p->tls);
    pump_input(p);
    peer_leave(p);
}

/* ---- output -------------------------------------------------------------- */
/* Seals the next record's worth of inner frames into TLS's out buffer.
 * False when there was nothing to seal. */
static bool fill_tls(ztm_peer_t *p)
{
    if (!p->ready || p->state >= P_NOTIFY)
        return false;
    if (!p->carry_len) {
        if (!p->h2 || !ztm_h2_want_write(p->h2))
            return false;
        size_t len = 0;
        if (ztm_h2_flush(p->h2, p->obuf, PLAIN_BUF, &len) < 0) {
            session_end(p, "h2: internal error", true);
            return false;
        }
        if (!len)
            return false;
        p->carry_off = 0;
        p->carry_len = (uint32_t)len;
    }
    ssize_t r = ztm_tls_write(p->tls, p->obuf + p->carry_off, p->carry_len);
    if (r == -ENOBUFS)
        return false;
    if (r < 0) {
        tls_failed(p, (int)r);
        return false;
    }
    p->carry_off += (uint32_t)r;
    p->carry_len -= (uint32_t)r;
    return true;
}

size_t ztm_peer_produce(ztm_peer_t *p, uint8_t *buf, size_t cap, bool *eof)
{
    *eof = false;
    if (p->state == P_DONE)
        return 0;
    peer_enter(p);
    p->want_write_sent = false;
    size_t n = 0;
    while (n < cap && p->state != P_DONE) {
        const uint8_t *d;
        size_t pending = ztm_tls_out_pending(p->tls, &d);
        if (pending) {
            size_t k = pending < cap - n ? pending : cap - n;
            memcpy(buf + n, d, k);
            ztm_tls_out_consume(p->tls, k);
            n += k;
            continue;
        }
        if (!fill_tls(p))
            break;
    }
    const uint8_t *d;
    if (p->state == P_NOTIFY && !ztm_tls_out_pending(p->tls, &d)) {
        *eof = true;
        session_end(p, NULL, false);
    } else if (p->in_blocked || p->in_head) {
        pump_input(p); /* TLS had waited for its output to drain */
    }
    peer_leave(p);
    return n;
}

void ztm_peer_carrier_gone(ztm_peer_t *p, const char *reason)
{
    if (p->state == P_DONE) {
        p->gone = true;
        return;
    }
    peer_enter(p);
    p->gone = true;
    set_reason(p, "carrier", reason ? reason : "gone");
    session_end(p, NULL, true);
    peer_leave(p);
}

/* ---- the session's API ----------------------------------------------------- */
static uint64_t peer_clock(void *user)
{
    ztm_peer_t *p = user;
    return ztm_worker_now(p->w);
}

int ztm_peer_new(ztm_worker_t *w, const ztm_peer_config_t *cfg, const ztm_peer_carrier_t *carrier,
                 void *carrier_arg, ztm_peer_t **out)
{
    if (!w || !cfg || !cfg->tls || !cfg->mesh || !carrier || !carrier->want_write ||
        !carrier->consumed || !carrier->closed || !out || strlen(cfg->mesh) > ZTM_MESH_MAX ||
        (cfg->expect_name && strlen(cfg->expect_name) > ZTM_NAME_MAX))
        return -EINVAL;
    ztm_peer_t *p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    int r = -ENOMEM;
    p->rbuf = malloc(PLAIN_BUF);
    p->obuf = malloc(PLAIN_BUF);
    if (!p->rbuf || !p->obuf)
        goto fail;
    r = ztm_tls_conn_new(&p->tls, cfg->tls, NULL);
    if (r < 0)
        goto fail;
    p->client = ztm_tls_conn_role(p->tls) == ZTM_TLS_CLIENT;
    r = -EINVAL;
    if (p->client ? !cfg->expect_name : !cfg->resolve)
        goto fail;
    p->w = w;
    p->id = next_peer_seq++ * ztm_engine_workers(ztm_worker_engine(w)) + (uint64_t)ztm_worker_id(w);
    p->carrier = *carrier;
    p->carrier_arg = carrier_arg;
    snprintf(p->mesh, sizeof(p->mesh), "%s", cfg->mesh);
    if (cfg->expect_name)
        snprintf(p->expect_name, sizeof(p->expect_name), "%s", cfg->expect_name);
    p->resolve = cfg->resolve;
    p->resolve_arg = cfg->resolve_arg;
    p->on_refused = cfg->on_refused;
    p->refused_arg = cfg->refused_arg;
    p->idle_timeout_ns = cfg->idle_timeout_ns ? cfg->idle_timeout_ns : DEFAULT_IDLE_NS;
    p->udp_idle_timeout_ns =
        cfg->udp_idle_timeout_ns ? cfg->udp_idle_timeout_ns : DEFAULT_UDP_IDLE_NS;
    p->connect_timeout_ns = cfg->connect_timeout_ns ? cfg->connect_timeout_ns : DEFAULT_CONNECT_NS;
    /* Every reset here stands for a local connection that was reset or
     * refused, between two verified endpoints: a budget well above what a
     * busy importer's clients cause, still far below a flood. */
    ztm_h2_config_t hc = {
        .stream_window = PEER_STREAM_BUF,
        .reset_burst = 1000,
        .reset_rate = 500,
        .conn_id = p->id,
        .clock = peer_clock,
    };
    r = ztm_h2_new(&p->h2, p->client ? ZTM_H2_CLIENT : ZTM_H2_SERVER, &peer_h2_callbacks, p, &hc);
    if (r < 0)
        goto fail;
    r = ztm_tls_handshake(p->tls); /* the client's first flight */
    if (r < 0 && r != -EAGAIN)
        goto fail;
    ztm_ref_init(&p->ref, peer_release);
    ztm_op_init(&p->defer_op, on_defer, &p->ref);
    ztm_timer_init(&p->timer, on_timer);
    p->state = P_HANDSHAKE;
    arm_timer(p);
    defer(p); /* asks the carrier for the first flight once the caller has *OUT */
    *out = p;
    return 0;
fail:
    ztm_h2_free(p->h2);
    ztm_tls_conn_free(p->tls);
    free(p->rbuf);
    free(p->obuf);
    free(p);
    return r;
}

void ztm_peer_close(ztm_peer_t *p)
{
    if (p->state == P_DONE)
        return;
    peer_enter(p);
    close_with(p, "closed");
    peer_leave(p);
}

int ztm_peer_connect_tcp(ztm_peer_t *p, const char *service, int fd)
{
    peer_enter(p);
    int r = pstream_connect_tcp(p, service, fd);
    peer_leave(p);
    return r;
}

int ztm_peer_udp_open(ztm_peer_t *p, const char *service, const ztm_peer_udp_cb_t *cb, void *arg,
                      uint32_t *flow_id)
{
    peer_enter(p);
    int r = pstream_udp_open(p, service, cb, arg, flow_id);
    peer_leave(p);
    return r;
}

int ztm_peer_udp_send(ztm_peer_t *p, uint32_t flow_id, const uint8_t *dgram, size_t len)
{
    peer_enter(p);
    int r = pstream_udp_send(p, flow_id, dgram, len);
    peer_leave(p);
    return r;
}

void ztm_peer_udp_close(ztm_peer_t *p, uint32_t flow_id)
{
    peer_enter(p);
    pstream_udp_close(p, flow_id);
    peer_leave(p);
}

bool ztm_peer_ready(const ztm_peer_t *p)
{
    return p->ready;
}

const ztm_identity_t *ztm_peer_identity(const ztm_peer_t *p)
{
    return p->ready ? &p->peer_id : NULL;
}

unsigned ztm_peer_streams(const ztm_peer_t *p)
{
    return p->n_streams;
}

void ztm_peer_stats(const ztm_peer_t *p, ztm_peer_stats_t *out)
{
    *out = p->stats;
}
