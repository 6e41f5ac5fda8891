/* Links: socket <-> record layer <-> upper protocol, on one worker; see link.h.
 *
 * Two I/O modes. "tls": BoringSSL keeps the record layer; ciphertext is
 * received straight into the TLS staging buffer and sent straight from its
 * out buffer. "raw": the kernel holds the record layer (kTLS) or there is
 * none (plaintext); receives use the worker's provided buffers, sends go
 * from a per-link buffer the upper layer writes into. A link starts in tls
 * mode and may move to raw once the handshake is done (ztm_ktls_enable).
 *
 * States move one way: CONNECTING -> HANDSHAKE -> OPEN -> CLOSING -> LINGER
 * -> DEAD. LINGER: our side is shut down (FIN sent); we read and drop what
 * the peer still sends until its FIN or a short deadline, because closing a
 * socket with unread bytes sends an RST, and an RST can destroy our last
 * answer before the peer has read it.
 * DEAD means every op was cancelled and the link's own reference dropped;
 * the release runs when the last completion is in. */
#include "dataplane/link/link.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "dataplane/runtime/log.h"
#include "dataplane/tls/ktls.h"

#define RAW_OUT_CAP (64 * 1024)
#define SCRATCH_CAP (16 * 1024)     /* one full TLS record of plaintext */
#define TLS_OUT_HIGH (64 * 1024)    /* stop producing past this much ciphertext */
#define CTL_BUF_CAP (16 * 1024 + 256)
#define CLOSE_FLUSH_NS (5 * ZTM_NS_PER_SEC)
#define LINGER_NS (2 * ZTM_NS_PER_SEC)

typedef enum { L_CONNECTING, L_HANDSHAKE, L_OPEN, L_CLOSING, L_LINGER, L_DEAD } link_state_t;

struct ztm_link {
    ztm_ref_t ref;
    ztm_worker_t *w;
    uint64_t id;
    int fd;
    link_state_t state;
    bool client;
    bool raw;           /* records not in user space: plaintext or kTLS */
    bool ktls;          /* the kernel holds the record layer */
    bool ktls_settling; /* handshake done, kTLS switch still to be decided */
    bool want_write;
    bool notify_queued; /* close_notify is in the TLS out buffer */
    bool abortive;
    bool ctl_mode; /* kTLS: next receive must be a recvmsg (control record) */
    bool recv_ctl; /* the receive in flight is that recvmsg */
    ztm_tls_conn_t *tls;
    const ztm_link_upper_t *upper;
    void *user;
    ztm_op_t connect_op, recv_op, send_op;
    ztm_timer_t timer;
    uint64_t connect_timeout_ns;
    /* raw mode: plaintext waiting to be sent, [out_off, out_len) */
    uint8_t *out;
    uint32_t out_off, out_len;
    /* tls mode: plaintext the TLS out buffer could not take yet */
    uint8_t *carry;
    uint32_t carry_off, carry_len;
    /* kTLS control records */
    uint8_t *ctl_buf;
    struct msghdr ctl_msg;
    struct iovec ctl_iov;
    uint8_t ctl_cmsg[64];
    uint64_t bytes_in, bytes_out;
    const char *reason;
    char reason_buf[128];
    char peer_str[ZTM_ADDRSTRLEN];
    ztm_addr_t peer;
};

/* Per worker: decrypted input on its way up, and plaintext on its way down.
 * Two buffers, because an upper layer may ask to write (and so produce)
 * while it is still parsing the input it was handed. */
static __thread uint8_t scratch_in[SCRATCH_CAP];
static __thread uint8_t scratch_out[SCRATCH_CAP];
static __thread uint64_t next_link_seq;

static void drive(ztm_link_t *l);
static void flush(ztm_link_t *l);
static void arm_recv(ztm_link_t *l);
static void become_dead(ztm_link_t *l, const char *reason, bool abortive);

/* ---- accessors ------------------------------------------------------- */
ztm_worker_t *ztm_link_worker(const ztm_link_t *l)
{
    return l->w;
}
ztm_tls_conn_t *ztm_link_tls(const ztm_link_t *l)
{
    return l->tls;
}
const char *ztm_link_record_layer(const ztm_link_t *l)
{
    return l->ktls ? "kernel" : l->tls ? "user" : "none";
}
const char *ztm_link_peer_str(const ztm_link_t *l)
{
    return l->peer_str;
}
uint64_t ztm_link_id(const ztm_link_t *l)
{
    return l->id;
}

/* The first cause of a close is the one reported. */
static void set_reason(ztm_link_t *l, const char *prefix, const char *what)
{
    if (l->reason)
        return;
    if (prefix) {
        snprintf(l->reason_buf, sizeof(l->reason_buf), "%s: %s", prefix, what);
        l->reason = l->reason_buf;
    } else {
        l->reason = what;
    }
}

/* A TLS error as the reason; a peer's fatal alert is named, since it is
 * often the only word the far end gives on why it refused us (a hub
 * refusing a revoked certificate sends "access denied"). */
static void set_tls_reason(ztm_link_t *l, const char *prefix, int r)
{
    int alert = r == ZTM_TLS_E_PEER_ALERT && l->tls ? ztm_tls_conn_alert(l->tls) : -1;
    if (alert < 0) {
        set_reason(l, prefix, ztm_tls_strerror(r));
        return;
    }
    char what[96];
    snprintf(what, sizeof(what), "%s (%s)", ztm_tls_strerror(r), ztm_tls_alert_name(alert));
    set_reason(l, prefix, what);
}

/* ---- lifetime -------------------------------------------------------- */
static void link_release(ztm_ref_t *ref)
{
    ztm_link_t *l = (ztm_link_t *)ref;
    ztm_timer_cancel(ztm_worker_timers(l->w), &l->timer);
    if (l->fd >= 0) {
        if (l->abortive)
            ztm_sock_abortive(l->fd);
        close(l->fd);
    }
    ztm_log(ZTM_LOG_INFO, "link.close", "link=%llu peer=%s in=%llu out=%llu reason=\"%s\"",
            (unsigned long long)l->id, l->peer_str, (unsigned long long)l->bytes_in,
            (unsigned long long)l->bytes_out, l->reason ? l->reason : "done");
    if (l->upper->on_close)
        l->upper->on_close(l, l->user, l->reason ? l->reason : "done");
    ztm_tls_conn_free(l->tls);
    free(l->out);
    free(l->carry);
    free(l->ctl_buf);
    free(l);
}

static void become_dead(ztm_link_t *l, const char *reason, bool abortive)
{
    if (l->state == L_DEAD)
        return;
    if (!l->reason)
        l->reason = reason;
    l->state = L_DEAD;
    l->abortive = abortive;
    ztm_timer_cancel(ztm_worker_timers(l->w), &l->timer);
    if (l->fd >= 0)
        ztm_worker_cancel_fd(l->w, l->fd);
    ztm_ref_put(&l->ref);
}

void ztm_link_abort(ztm_link_t *l, const char *reason)
{
    become_dead(l, reason, true);
}

static bool arm_ctl_recv(ztm_link_t *l);

static void arm_linger_recv(ztm_link_t *l)
{
    if (l->recv_op.inflight)
        return;
    if (l->ctl_mode) { /* kTLS: the peer's close_notify is a control record */
        if (!arm_ctl_recv(l))
            become_dead(l, NULL, false);
        return;
    }
    ztm_bufring_t *br = ztm_worker_bufring(l->w);
    struct io_uring_sqe *sqe = ztm_worker_sqe(l->w, &l->recv_op);
    io_uring_prep_recv(sqe, l->fd, NULL, ztm_bufring_buf_size(br), 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = ztm_bufring_gid(br);
}

static void finish_close(ztm_link_t *l)
{
    if (l->ktls)
        (void)ztm_ktls_send_close_notify(l->tls, l->fd);
    if (shutdown(l->fd, SHUT_WR) < 0) {
        become_dead(l, NULL, false);
        return;
    }
    l->state = L_LINGER;
    ztm_timer_arm(ztm_worker_timers(l->w), &l->timer, ztm_worker_now(l->w) + LINGER_NS);
    arm_linger_recv(l);
}

/* LINGER: drop what arrives until the peer's FIN. */
static void on_recv_linger(ztm_link_t *l, int res, uint32_t flags)
{
    if (flags & IORING_CQE_F_BUFFER) {
        ztm_bufring_t *br = ztm_worker_bufring(l->w);
        uint16_t bid = (uint16_t)(flags >> IORING_CQE_BUFFER_SHIFT);
        ztm_bufring_take(br, bid);
        ztm_bufring_put(br, bid);
    }
    if (res == -EIO && l->ktls) {
        l->ctl_mode = true; /* kTLS: a control record is next; RECVMSG it */
        arm_linger_recv(l);
    } else if (res > 0) {
        arm_linger_recv(l);
    } else {
        /* EOF, an error, or an empty buffer ring (-ENOBUFS would re-fire at
         * once: draining a closing link is not worth a busy loop). */
        become_dead(l, NULL, false);
    }
}

void ztm_link_close(ztm_link_t *l, const char *reason)
{
    if (l->state >= L_CLOSING)
        return;
    if (!l->reason)
        l->reason = reason;
    if (l->state == L_CONNECTING) {
        become_dead(l, reason, false);
        return;
    }
    l->state = L_CLOSING;
    ztm_timer_arm(ztm_worker_timers(l->w), &l->timer, ztm_worker_now(l->w) + CLOSE_FLUSH_NS);
    flush(l); /* the upper layer's last bytes, then close_notify (flush) */
}

/* ---- receiving ------------------------------------------------------- */
static void deliver(ztm_link_t *l, const uint8_t *data, size_t n)
{
    l->bytes_in += n;
    if (l->upper->on_data(l, l->user, data, n) < 0)
        ztm_link_close(l, "protocol error");
}

static void on_recv_raw(ztm_link_t *l, int res, uint32_t flags)
{
    ztm_bufring_t *br = ztm_worker_bufring(l->w);
    if (flags & IORING_CQE_F_BUFFER) {
        uint16_t bid = (uint16_t)(flags >> IORING_CQE_BUFFER_SHIFT);
        ztm_bufring_take(br, bid);
        if (res > 0 && l->state == L_OPEN)
            deliver(l, ztm_bufring_addr(br, bid), (size_t)res);
        ztm_bufring_put(br, bid);
        if (res > 0) {
            flush(l);
            arm_recv(l);
            return;
        }
    }
    if (l->state != L_OPEN)
        return;
    if (res == 0) {
        if (l->ktls)
            ztm_link_close(l, "truncated: transport closed without close_notify");
        else
            ztm_link_close(l, "peer_closed");
    } else if (res == -EIO && l->ktls) {
        l->ctl_mode = true; /* a control record is next: recvmsg it */
        arm_recv(l);
    } else if (res == -ENOBUFS) {
        /* The ring ran dry; try again shortly (back-pressure, rare). */
        ztm_timer_arm(ztm_worker_timers(l->w), &l->timer, ztm_worker_now(l->w) + ZTM_NS_PER_MS);
    } else if (res == -ECONNRESET || res == -EPIPE) {
        become_dead(l, "reset", true);
    } else if (res != -ECANCELED) {
        set_reason(l, "recv", strerror(-res));
        become_dead(l, l->reason, true);
    }
}

static void on_recv_ctl(ztm_link_t *l, int res)
{
    if (l->state != L_OPEN)
        return;
    ssize_t r = ztm_ktls_on_recvmsg(l->tls, &l->ctl_msg, res);
    l->ctl_mode = false;
    if (r > 0) {
        deliver(l, l->ctl_buf, (size_t)r);
        flush(l);
        arm_recv(l);
    } else if (r == -EAGAIN) {
        arm_recv(l);
    } else if (r == 0) {
        ztm_link_close(l, "peer_closed");
    } else {
        set_tls_reason(l, "tls", (int)r);
        ztm_link_close(l, l->reason);
    }
}

static void on_recv(ztm_worker_t *w, ztm_op_t *op, int res, uint32_t flags)
{
    ztm_link_t *l = (ztm_link_t *)((char *)op - offsetof(ztm_link_t, recv_op));
    if (l->state == L_LINGER) {
        if (l->recv_ctl) { /* the control record is consumed: keep dropping */
            l->recv_ctl = false;
            l->ctl_mode = false;
            if (res > 0)
                arm_linger_recv(l);
            else
                become_dead(l, NULL, false);
            return;
        }
        on_recv_linger(l, res, flags);
        return;
    }
    if (l->raw) {
        if (l->recv_ctl) {
            l->recv_ctl = false;
            on_recv_ctl(l, res);
            return;
        }
        on_recv_raw(l, res, flags);
        return;
    }
    if (l->state == L_DEAD || l->state == L_CONNECTING)
        return;
    if (res > 0) {
        ztm_tls_in_commit(l->tls, (size_t)res);
        drive(l);
    } else if (res == 0) {
        ztm_tls_feed_eof(l->tls);
        drive(l);
        if (l->state < L_CLOSING)
            ztm_link_close(l, "peer_closed");
    } else if (res == -ECONNRESET || res == -EPIPE) {
        become_dead(l, "reset", true);
    } else if (res != -ECANCELED) {
        set_reason(l, "recv", strerror(-res));
        become_dead(l, l->reason, true);
    }
}

/* kTLS: one RECVMSG with a control buffer for the record that made RECV
 * fail with EIO. False when out of memory. */
static bool arm_ctl_recv(ztm_link_t *l)
{
    if (!l->ctl_buf && !(l->ctl_buf = malloc(CTL_BUF_CAP)))
        return false;
    l->ctl_iov.iov_base = l->ctl_buf;
    l->ctl_iov.iov_len = CTL_BUF_CAP;
    memset(&l->ctl_msg, 0, sizeof(l->ctl_msg));
    l->ctl_msg.msg_iov = &l->ctl_iov;
    l->ctl_msg.msg_iovlen = 1;
    l->ctl_msg.msg_control = l->ctl_cmsg;
    l->ctl_msg.msg_controllen = sizeof(l->ctl_cmsg);
    struct io_uring_sqe *sqe = ztm_worker_sqe(l->w, &l->recv_op);
    io_uring_prep_recvmsg(sqe, l->fd, &l->ctl_msg, 0);
    l->recv_ctl = true;
    return true;
}

static void arm_recv(ztm_link_t *l)
{
    if (l->recv_op.inflight || (l->state != L_OPEN && l->state != L_HANDSHAKE))
        return;
    struct io_uring_sqe *sqe;
    if (!l->raw) {
        /* Before a kTLS switch, our handshake output must be on the wire
         * and nothing past the handshake may be read (ztm_ktls_enable). */
        if (l->ktls_settling) {
            const uint8_t *p;
            if (ztm_tls_out_pending(l->tls, &p))
                return;
        }
        size_t room;
        uint8_t *p = ztm_tls_in_space(l->tls, &room);
        size_t lim = ztm_tls_recv_limit(l->tls);
        if (room > lim)
            room = lim;
        if (!room)
            return; /* drive() reads plaintext and makes room */
        sqe = ztm_worker_sqe(l->w, &l->recv_op);
        io_uring_prep_recv(sqe, l->fd, p, room, 0);
        return;
    }
    if (l->ctl_mode) {
        if (!arm_ctl_recv(l))
            become_dead(l, "out of memory", true);
        return;
    }
    ztm_bufring_t *br = ztm_worker_bufring(l->w);
    sqe = ztm_worker_sqe(l->w, &l->recv_op);
    io_uring_prep_recv(sqe, l->fd, NULL, ztm_bufring_buf_size(br), 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = ztm_bufring_gid(br);
}

/* ---- sending --------------------------------------------------------- */
static void on_send(ztm_worker_t *w, ztm_op_t *op, int res, uint32_t flags)
{
    ztm_link_t *l = (ztm_link_t *)((char *)op - offsetof(ztm_link_t, send_op));
    if (l->state == L_DEAD || l->state == L_LINGER)
        return;
    if (res < 0) {
        if (res == -EPIPE || res == -ECONNRESET)
            become_dead(l, "reset", true);
        else if (res != -ECANCELED) {
            set_reason(l, "send", strerror(-res));
            become_dead(l, l->reason, true);
        }
        return;
    }
    l->bytes_out += (uint64_t)res;
    if (l->raw) {
        l->out_off += (uint32_t)res;
        if (l->ktls && ztm_ktls_note_sent(l->tls, l->fd, (size_t)res) == ZTM_TLS_E_RECORD_LIMIT) {
            ztm_link_close(l, "tls: record limit reached, reconnect");
            return;
        }
        flush(l);
        return;
    }
    ztm_tls_out_consume(l->tls, (size_t)res);
    drive(l);
}

static bool tls_take(ztm_link_t *l, const uint8_t *p, size_t n, size_t *taken)
{
    ssize_t r = ztm_tls_write(l->tls, p, n);
    if (r == -ENOBUFS) {
        *taken = 0;
        return true;
    }
    if (r < 0) {
        set_tls_reason(l, "tls", (int)r);
        become_dead(l, l->reason, true);
        return false;
    }
    *taken = (size_t)r;
    return true;
}

/* Moves plaintext from the upper layer into BoringSSL, at most a little
 * more than TLS_OUT_HIGH of ciphertext at a time. */
static void produce_tls(ztm_link_t *l)
{
    const uint8_t *p;
    while (ztm_tls_out_pending(l->tls, &p) < TLS_OUT_HIGH) {
        size_t taken;
        if (l->carry_len) {
            if (!tls_take(l, l->carry + l->carry_off, l->carry_len, &taken))
                return;
            l->carry_off += (uint32_t)taken;
            l->carry_len -= (uint32_t)taken;
            if (l->carry_len)
                return;
            continue;
        }
        if (!l->want_write)
            return;
        size_t n = l->upper->produce(l, l->user, scratch_out, sizeof(scratch_out));
        if (!n) {
            l->want_write = false;
            return;
        }
        if (!tls_take(l, scratch_out, n, &taken))
            return;
        if (taken < n) {
            if (!l->carry && !(l->carry = malloc(SCRATCH_CAP))) {
                become_dead(l, "out of memory", true);
                return;
            }
            memcpy(l->carry, scratch_out + taken, n - taken);
            l->carry_off = 0;
            l->carry_len = (uint32_t)(n - taken);
            return;
        }
    }
}

static void flush(ztm_link_t *l)
{
    if (l->send_op.inflight || l->state == L_DEAD || l->state == L_CONNECTING ||
        l->state == L_LINGER)
        return;
    struct io_uring_sqe *sqe;
    if (l->raw) {
        if (l->out_off == l->out_len)
            l->out_off = l->out_len = 0;
        while (l->want_write && l->out_len < RAW_OUT_CAP) {
            size_t n = l->upper->produce(l, l->user, l->out + l->out_len, RAW_OUT_CAP - l->out_len);
            if (!n)
                l->want_write = false;
            l->out_len += (uint32_t)n;
        }
        /* produce may have closed the link, and that flushed already */
        if (l->send_op.inflight || l->state == L_DEAD || l->state == L_LINGER)
            return;
        if (l->out_len > l->out_off) {
            sqe = ztm_worker_sqe(l->w, &l->send_op);
            io_uring_prep_send(sqe, l->fd, l->out + l->out_off, l->out_len - l->out_off, MSG_NOSIGNAL);
        } else if (l->state == L_CLOSING) {
            finish_close(l);
        }
        return;
    }
    if (l->state == L_OPEN || l->state == L_CLOSING)
        produce_tls(l);
    /* produce may have closed the link, and that flushed already */
    if (l->send_op.inflight || l->state == L_DEAD || l->state == L_LINGER)
        return;
    /* close_notify goes after everything the upper layer had to say. */
    if (l->state == L_CLOSING && !l->want_write && !l->carry_len && !l->notify_queued &&
        ztm_tls_handshake_done(l->tls)) {
        if (ztm_tls_shutdown(l->tls) != -ENOBUFS)
            l->notify_queued = true;
    }
    const uint8_t *data;
    size_t pending = ztm_tls_out_pending(l->tls, &data);
    if (pending) {
        sqe = ztm_worker_sqe(l->w, &l->send_op);
        io_uring_prep_send(sqe, l->fd, data, pending, MSG_NOSIGNAL);
    } else if (l->state == L_CLOSING && !l->want_write && !l->carry_len) {
        finish_close(l);
    }
}

void ztm_link_want_write(ztm_link_t *l)
{
    l->want_write = true;
    flush(l);
}

/* ---- handshake, kTLS switch, plaintext ------------------------------- */
static void try_ktls(ztm_link_t *l)
{
    if (!l->ktls_settling || l->recv_op.inflight || l->send_op.inflight || l->state != L_OPEN)
        return;
    int r = ztm_ktls_enable(l->tls, l->fd);
    if (r == -EAGAIN)
        return;
    l->ktls_settling = false;
    if (r < 0) {
        set_tls_reason(l, "tls", r);
        become_dead(l, l->reason, true);
        return;
    }
    if (ztm_ktls_state(l->tls) == (ZTM_KTLS_TX | ZTM_KTLS_RX)) {
        if (!(l->out = malloc(RAW_OUT_CAP))) {
            become_dead(l, "out of memory", true);
            return;
        }
        l->raw = true;
        l->ktls = true;
    }
}

static void opened(ztm_link_t *l)
{
    l->state = L_OPEN;
    ztm_timer_cancel(ztm_worker_timers(l->w), &l->timer);
    if (l->tls && ztm_ktls_pending(l->tls))
        l->ktls_settling = true;
    ztm_log(ZTM_LOG_INFO, "link.open", "link=%llu peer=%s role=%s tls=%s cipher=%s",
            (unsigned long long)l->id, l->peer_str, l->client ? "client" : "server",
            l->tls ? (l->ktls_settling ? "pending" : "user") : "none",
            l->tls ? ztm_tls_conn_cipher(l->tls) : "none");
    if (l->upper->on_open && l->upper->on_open(l, l->user) < 0)
        ztm_link_close(l, "refused by the upper layer");
}

static void drive(ztm_link_t *l)
{
    if (l->state == L_HANDSHAKE) {
        int r = ztm_tls_handshake(l->tls);
        if (r == -EAGAIN) {
            flush(l);
            arm_recv(l);
            return;
        }
        if (r < 0) {
            const char *why = ztm_tls_conn_verify_reason(l->tls);
            if (why)
                set_reason(l, "handshake", why);
            else
                set_tls_reason(l, "handshake", r);
            l->state = L_CLOSING; /* send the alert, then close */
            ztm_timer_arm(ztm_worker_timers(l->w), &l->timer, ztm_worker_now(l->w) + CLOSE_FLUSH_NS);
            flush(l);
            return;
        }
        opened(l);
    }
    while (l->state == L_OPEN && !l->raw) {
        ssize_t n = ztm_tls_read(l->tls, scratch_in, sizeof(scratch_in));
        if (n > 0) {
            deliver(l, scratch_in, (size_t)n);
            continue;
        }
        if (n == 0) {
            ztm_link_close(l, "peer_closed");
        } else if (n != -EAGAIN && n != -ENOBUFS && n != -EOPNOTSUPP) {
            set_tls_reason(l, "tls", (int)n);
            ztm_link_close(l, l->reason);
        }
        break;
    }
    flush(l);
    try_ktls(l);
    if (l->raw && l->state == L_OPEN)
        flush(l);
    arm_recv(l);
}

/* ---- timers, connect, start ------------------------------------------- */
static void on_timer(ztm_timer_t *t)
{
    ztm_link_t *l = (ztm_link_t *)((char *)t - offsetof(ztm_link_t, timer));
    switch (l->state) {
    case L_CONNECTING:
        ztm_log(ZTM_LOG_WARN, "link.connect_failed", "link=%llu to=%s error=\"timed out\"",
                (unsigned long long)l->id, l->peer_str);
        become_dead(l, "connect: timed out", true);
        break;
    case L_HANDSHAKE:
        ztm_log(ZTM_LOG_WARN, "tls.handshake_failed", "link=%llu peer=%s reason=timeout",
                (unsigned long long)l->id, l->peer_str);
        become_dead(l, "handshake: timed out", true);
        break;
    case L_OPEN:
        arm_recv(l); /* the ENOBUFS retry */
        break;
    case L_CLOSING:
        become_dead(l, NULL, true);
        break;
    case L_LINGER:
        become_dead(l, NULL, false);
        break;
    case L_DEAD:
        break;
    }
}

static int link_new(ztm_worker_t *w, int fd, const ztm_link_config_t *cfg,
                    const ztm_link_upper_t *upper, void *user, bool client, ztm_link_t **out)
{
    ztm_link_t *l = calloc(1, sizeof(*l));
    if (!l)
        return -ENOMEM;
    ztm_ref_init(&l->ref, link_release);
    l->w = w;
    l->fd = fd;
    l->client = client;
    l->upper = upper;
    l->user = user;
    l->id = next_link_seq++ * ztm_engine_workers(ztm_worker_engine(w)) + (uint64_t)ztm_worker_id(w);
    l->connect_timeout_ns = cfg->connect_timeout_ns ? cfg->connect_timeout_ns : 10 * ZTM_NS_PER_SEC;
    ztm_op_init(&l->connect_op, NULL, &l->ref);
    ztm_op_init(&l->recv_op, on_recv, &l->ref);
    ztm_op_init(&l->send_op, on_send, &l->ref);
    ztm_timer_init(&l->timer, on_timer);
    if (cfg->tls) {
        int r = ztm_tls_conn_new(&l->tls, cfg->tls, client ? cfg->sni : NULL);
        if (r < 0) {
            free(l);
            return r;
        }
        ztm_tls_conn_set_user(l->tls, l);
    } else {
        l->raw = true;
        if (!(l->out = malloc(RAW_OUT_CAP))) {
            free(l);
            return -ENOMEM;
        }
    }
    *out = l;
    return 0;
}

static void start_transport(ztm_link_t *l)
{
    ztm_sock_nodelay(l->fd);
    if (l->tls) {
        l->state = L_HANDSHAKE;
        ztm_timer_arm(ztm_worker_timers(l->w), &l->timer, ztm_tls_handshake_deadline(l->tls));
        drive(l);
    } else {
        opened(l);
        flush(l);
        arm_recv(l);
    }
}

int ztm_link_accept(ztm_worker_t *w, int fd, const ztm_link_config_t *cfg,
                    const ztm_link_upper_t *upper, void *user, ztm_link_t **out)
{
    ztm_link_t *l;
    int r = link_new(w, fd, cfg, upper, user, false, &l);
    if (r < 0) {
        close(fd);
        return r;
    }
    l->peer.len = sizeof(l->peer.ss);
    if (getpeername(fd, (struct sockaddr *)&l->peer.ss, &l->peer.len) == 0)
        ztm_addr_format((struct sockaddr *)&l->peer.ss, l->peer_str, sizeof(l->peer_str));
    else
        snprintf(l->peer_str, sizeof(l->peer_str), "unknown");
    *out = l;
    start_transport(l);
    return 0;
}

static void on_connect(ztm_worker_t *w, ztm_op_t *op, int res, uint32_t flags)
{
    ztm_link_t *l = (ztm_link_t *)((char *)op - offsetof(ztm_link_t, connect_op));
    if (l->state != L_CONNECTING)
        return;
    if (res < 0) {
        ztm_log(ZTM_LOG_WARN, "link.connect_failed", "link=%llu to=%s error=\"%s\"",
                (unsigned long long)l->id, l->peer_str, strerror(-res));
        set_reason(l, "connect", strerror(-res));
        become_dead(l, l->reason, false);
        return;
    }
    ztm_timer_cancel(ztm_worker_timers(w), &l->timer);
    start_transport(l);
}

int ztm_link_connect(ztm_worker_t *w, const ztm_addr_t *to, const ztm_link_config_t *cfg,
                     const ztm_link_upper_t *upper, void *user, ztm_link_t **out)
{
    int fd = socket(to->ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    ztm_link_t *l;
    int r = link_new(w, fd, cfg, upper, user, true, &l);
    if (r < 0) {
        close(fd);
        return r;
    }
    l->connect_op.cb = on_connect;
    l->peer = *to;
    ztm_addr_format((const struct sockaddr *)&to->ss, l->peer_str, sizeof(l->peer_str));
    l->state = L_CONNECTING;
    ztm_timer_arm(ztm_worker_timers(w), &l->timer, ztm_worker_now(w) + l->connect_timeout_ns);
    struct io_uring_sqe *sqe = ztm_worker_sqe(w, &l->connect_op);
    io_uring_prep_connect(sqe, fd, (const struct sockaddr *)&l->peer.ss, l->peer.len);
    *out = l;
    return 0;
}
