/* An agent's link to its hub; see hublink.h.
 *
 * A hublink owns at most one connection at a time: a client link (mTLS) and
 * the HTTP/2 client session on it. The session carries three kinds of
 * streams, told apart by the strm_t each stream's data starts with: the
 * Events stream (one per connection, embedded in the hublink), unary calls
 * and relay streams.
 *
 * Re-entrancy. Relay and event callbacks run inside nghttp2's callbacks and
 * may call back into us. Whatever would flush or free the session (writing,
 * closing the link) is postponed while we are inside a session call
 * (in_h2) and done when it returns, or from the zero-delay "soon" timer.
 * Replies to unary calls are always delivered from that timer, never from
 * inside the call that made them. The hublink is reference counted (as a
 * redis client is while a handler runs): one reference for "not stopped",
 * one held by the live link, one by each entry point while it runs, so a
 * stop from inside a callback frees nothing under our feet. */
#include "dataplane/agent/hublink.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "controlplane/ca/identity.h"
#include "dataplane/h2/h2.h"
#include "dataplane/h2/h2link.h"
#include "dataplane/link/link.h"
#include "dataplane/runtime/log.h"
#include "ztm/v1/relay.pb-c.h"

#define BACKOFF_MIN_NS     (500 * ZTM_NS_PER_MS)
#define BACKOFF_MAX_NS     (30 * ZTM_NS_PER_SEC)
#define STABLE_UP_NS       (10 * ZTM_NS_PER_SEC) /* an UP this long resets the backoff */
#define CONNECT_TIMEOUT_NS (10 * ZTM_NS_PER_SEC)
#define TICK_NS            ZTM_NS_PER_SEC
#define PING_INTERVAL_NS   (15 * ZTM_NS_PER_SEC)
#define PING_TIMEOUT_NS    (10 * ZTM_NS_PER_SEC)
#define CALL_TIMEOUT_NS    (15 * ZTM_NS_PER_SEC)
#define MAX_CALLS          256         /* unary calls in flight; past this: RESOURCE_EXHAUSTED */
#define MAX_EVENT          (64 * 1024) /* one Event message */
#define HOST_MAX           256

typedef enum { K_EVENTS, K_CALL, K_RELAY } strm_kind_t;

/* The head of every stream's data (the session's sdata). */
typedef struct {
    strm_kind_t kind;
    int32_t id;
} strm_t;

typedef struct call call_t;
struct call {
    strm_t s;
    ztm_hublink_t *h;
    call_t *prev, *next;     /* h->calls while in flight; h->done_* once answered */
    ztm_hublink_reply_fn cb; /* NULL: cancelled by a stop, nothing to call */
    void *arg;
    uint8_t *frame; /* prefix + request */
    size_t frame_len, frame_off;
    ztm_grpc_decoder_t dec;
    ztm_timer_t deadline;
    int http_status;
    bool have_status, have_body, done;
    ztm_grpc_status_t status;
    char msg[256];
    uint8_t *body;
    size_t body_len;
};

struct ztm_relay_stream {
    strm_t s;
    ztm_hublink_t *h;
    ztm_relay_stream_t *prev, *next;
    ztm_relay_cb_t cb;
    void *arg;
    bool gone;   /* reset by the user, or the link stopped: no more callbacks */
    bool joined; /* 200 received */
    bool refused;
    uint64_t held; /* bytes handed to on_data and not yet consumed */
    char reason[160];
};

typedef struct {
    strm_t s;
    bool open;
    int http_status;
    bool have_status;
    ztm_grpc_status_t status;
    char msg[160];
    ztm_grpc_decoder_t dec;
    uint8_t frame[ZTM_GRPC_PREFIX_LEN + 64];
    size_t frame_len, frame_off;
} events_t;

struct ztm_hublink {
    int refs;
    ztm_worker_t *w;
    char **hubs;
    size_t n_hubs, hub_idx;
    char *mesh;
    ztm_tls_ctx_t *tls;
    ztm_hublink_config_t cfg; /* callbacks and limits (strings point at our copies) */
    bool allow_no_events;

    ztm_hublink_state_t state;
    bool stopped;
    bool failover;     /* the last attempt failed: try the next hub */
    uint64_t delay_ns; /* the next backoff's base */
    uint64_t up_since;
    uint64_t rng;
    ztm_timer_t retry_timer, tick_timer, soon_timer;
    ztm_resolver_t *resolver, *own_resolver;
    ztm_resolve_job_t *lookup; /* the hub's name being looked up */

    /* the connection */
    ztm_link_t *link;
    ztm_h2_session_t *h2;
    unsigned in_h2;     /* depth of calls into the session */
    bool close_pending; /* close the link once out of the session */
    bool kick_pending;  /* the session may have output */
    const char *why;    /* our cause for the connection's end, if ours */
    char why_buf[200];
    char host[HOST_MAX]; /* SNI and :authority */
    char hub_name[ZTM_NAME_MAX + 1];
    events_t ev;

    call_t *calls; /* in flight */
    unsigned n_calls;
    call_t *done_head, *done_tail; /* answered, to be delivered */
    ztm_relay_stream_t *relays;

    char last_error[200];
    bool have_error;
    ztm_hublink_stats_t stats;
};

static void h_get(ztm_hublink_t *h)
{
    h->refs++;
}

static void call_free(call_t *c)
{
    ztm_grpc_decoder_free(&c->dec);
    free(c->frame);
    free(c->body);
    free(c);
}

static void h_free(ztm_hublink_t *h)
{
    ztm_timers_t *ts = ztm_worker_timers(h->w);
    ztm_timer_cancel(ts, &h->retry_timer);
    ztm_timer_cancel(ts, &h->tick_timer);
    ztm_timer_cancel(ts, &h->soon_timer);
    while (h->done_head) {
        call_t *c = h->done_head;
        h->done_head = c->next;
        call_free(c);
    }
    ztm_grpc_decoder_free(&h->ev.dec);
    for (size_t i = 0; i < h->n_hubs; i++)
        free(h->hubs[i]);
    free(h->hubs);
    free(h->mesh);
    ztm_tls_ctx_free(h->tls);
    ztm_resolver_free(h->own_resolver);
    free(h);
}

static void h_put(ztm_hublink_t *h)
{
    if (--h->refs == 0)
        h_free(h);
}

const char *ztm_hublink_state_name(ztm_hublink_state_t st)
{
    switch (st) {
    case ZTM_HUBLINK_CONNECTING:
        return "connecting";
    case ZTM_HUBLINK_UP:
        return "up";
    case ZTM_HUBLINK_BACKOFF:
        return "backoff";
    case ZTM_HUBLINK_STOPPED:
        return "stopped";
    }
    return "?";
}

static const char *cur_hub(const ztm_hublink_t *h)
{
    return h->hubs[h->hub_idx];
}

/* Our own cause for ending the connection; the first one counts. */
static void set_why(ztm_hublink_t *h, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_why(ztm_hublink_t *h, const char *fmt, ...)
{
    if (h->why)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(h->why_buf, sizeof(h->why_buf), fmt, ap);
    va_end(ap);
    h->why = h->why_buf;
}

static void set_state(ztm_hublink_t *h, ztm_hublink_state_t st, const char *why)
{
    h->state = st;
    if (!h->stopped && h->cfg.on_state)
        h->cfg.on_state(h->cfg.arg, st, cur_hub(h), why);
}

static bool is_up(const ztm_hublink_t *h)
{
    return !h->stopped && h->state == ZTM_HUBLINK_UP && h->h2 && h->link && !h->close_pending;
}

/* ---- writing and closing, outside the session's callbacks ------------------ */
static void soon(ztm_hublink_t *h)
{
    ztm_timer_arm(ztm_worker_timers(h->w), &h->soon_timer, ztm_worker_now(h->w));
}

/* The session may have output: write it once we are out of the session. */
static void kick(ztm_hublink_t *h)
{
    if (!h->h2 || !h->link)
        return;
    h->kick_pending = true;
    soon(h);
}

static void conn_close(ztm_hublink_t *h)
{
    h->close_pending = true;
    soon(h);
}

/* Runs what was postponed while inside the session. Call with a reference
 * held; the link's on_close may run inside (it drops the link's own). */
static void settle(ztm_hublink_t *h, int err)
{
    if (h->in_h2 || !h->link)
        return;
    if (h->close_pending) {
        h->kick_pending = false;
        ztm_link_close(h->link, h->why ? h->why : "closed");
        return;
    }
    if (h->h2 && (h->kick_pending || err)) {
        h->kick_pending = false;
        ztm_h2link_settle(h->h2, h->link, err);
    }
}

/* ---- unary calls ------------------------------------------------------------------ */
static void call_unlink(ztm_hublink_t *h, call_t *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        h->calls = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    h->n_calls--;
}

/* The call has its result: off its stream (reset unless STREAM_CLOSING),
 * queued for delivery from the soon timer. */
static void call_finish(call_t *c, ztm_grpc_status_t st, const char *msg, bool stream_closing)
{
    ztm_hublink_t *h = c->h;
    if (c->done)
        return;
    c->done = true;
    c->status = st;
    if (msg)
        snprintf(c->msg, sizeof(c->msg), "%s", msg);
    if (st != ZTM_GRPC_OK) {
        free(c->body);
        c->body = NULL;
        c->body_len = 0;
    }
    ztm_timer_cancel(ztm_worker_timers(h->w), &c->deadline);
    if (c->s.id > 0 && h->h2 && !stream_closing) {
        ztm_h2_stream_set_data(h->h2, c->s.id, NULL);
        ztm_h2_reset(h->h2, c->s.id, ZTM_H2_CANCEL);
        kick(h);
    }
    c->s.id = 0;
    call_unlink(h, c);
    if (h->done_tail)
        h->done_tail->next = c;
    else
        h->done_head = c;
    h->done_tail = c;
    soon(h);
}

static void deliver_replies(ztm_hublink_t *h)
{
    while (h->done_head && !h->stopped) {
        call_t *c = h->done_head;
        h->done_head = c->next;
        if (!h->done_head)
            h->done_tail = NULL;
        c->next = NULL;
        if (c->cb)
            c->cb(c->arg, c->status, c->msg[0] ? c->msg : NULL, c->body, c->body_len);
        call_free(c);
    }
}

static void on_call_deadline(ztm_timer_t *t)
{
    call_t *c = (call_t *)((char *)t - offsetof(call_t, deadline));
    ztm_hublink_t *h = c->h;
    h_get(h);
    call_finish(c, ZTM_GRPC_DEADLINE_EXCEEDED, "no answer before the deadline", false);
    h_put(h);
}

/* gRPC's mapping of an HTTP status without grpc-status (PROTOCOL-HTTP2.md). */
static ztm_grpc_status_t status_of_http(int http)
{
    switch (http) {
    case 400:
        return ZTM_GRPC_INTERNAL;
    case 401:
        return ZTM_GRPC_UNAUTHENTICATED;
    case 403:
        return ZTM_GRPC_PERMISSION_DENIED;
    case 404:
        return ZTM_GRPC_UNIMPLEMENTED;
    case 429:
    case 502:
    case 503:
    case 504:
        return ZTM_GRPC_UNAVAILABLE;
    default:
        return ZTM_GRPC_UNKNOWN;
    }
}

static bool hdr_is(const ztm_h2_header_t *hd, const char *name)
{
    size_t n = strlen(name);
    return hd->name_len == n && memcmp(hd->name, name, n) == 0;
}

/* grpc-status and grpc-message among N fields (trailers, or a trailers-only head). */
static void read_grpc_status(const ztm_h2_header_t *hd, size_t n, bool *have, ztm_grpc_status_t *st,
                             char *msg, size_t cap)
{
    for (size_t i = 0; i < n; i++) {
        if (hdr_is(&hd[i], "grpc-status")) {
            if (ztm_grpc_status_parse(hd[i].value, hd[i].value_len, st) < 0)
                *st = ZTM_GRPC_UNKNOWN;
            *have = true;
        } else if (hdr_is(&hd[i], "grpc-message")) {
            size_t k = ztm_grpc_message_decode(hd[i].value, hd[i].value_len, msg, cap);
            if (k >= cap)
                msg[cap - 1] = 0;
        }
    }
}

static void call_on_data(ztm_hublink_t *h, call_t *c, const uint8_t *data, size_t len)
{
    while (len && !c->done) {
        ztm_grpc_message_t m;
        bool ready;
        ssize_t n = ztm_grpc_decoder_feed(&c->dec, data, len, &m, &ready);
        if (n < 0) {
            char why[128];
            snprintf(why, sizeof(why), "bad reply framing: %s", ztm_grpc_strerror((int)n));
            call_finish(c, ztm_grpc_error_status((int)n), why, false);
            return;
        }
        data += n;
        len -= (size_t)n;
        if (ready && !c->have_body) {
            c->body = malloc(m.len ? m.len : 1);
            if (!c->body) {
                call_finish(c, ZTM_GRPC_RESOURCE_EXHAUSTED, "out of memory", false);
                return;
            }
            memcpy(c->body, m.data, m.len);
            c->body_len = m.len;
            c->have_body = true;
        }
    }
}

static void call_on_close(ztm_hublink_t *h, call_t *c, uint32_t error_code)
{
    char why[240];
    if (c->have_status) {
        if (c->status == ZTM_GRPC_OK && !c->have_body)
            call_finish(c, ZTM_GRPC_INTERNAL, "OK without a reply message", true);
        else if (c->status == ZTM_GRPC_OK && ztm_grpc_decoder_finish(&c->dec) < 0)
            call_finish(c, ZTM_GRPC_INTERNAL, "the reply ended inside a message", true);
        else
            call_finish(c, c->status, NULL, true);
    } else if (c->http_status && c->http_status != 200) {
        snprintf(why, sizeof(why), "the hub answered HTTP %d", c->http_status);
        call_finish(c, status_of_http(c->http_status), why, true);
    } else if (!h->h2) {
        snprintf(why, sizeof(why), "link down: %s", h->why ? h->why : "closed");
        call_finish(c, ZTM_GRPC_UNAVAILABLE, why, true);
    } else if (error_code == ZTM_H2_REFUSED_STREAM) {
        call_finish(c, ZTM_GRPC_UNAVAILABLE, "refused by the hub (going away)", true);
    } else {
        call_finish(c, ZTM_GRPC_UNAVAILABLE,
                    error_code ? "the hub reset the call" : "the call ended without a status",
                    true);
    }
}

int ztm_hublink_call(ztm_hublink_t *h, const char *path, const uint8_t *req, size_t len,
                     uint64_t timeout_ns, ztm_hublink_reply_fn cb, void *arg)
{
    if (!is_up(h))
        return -ENOTCONN;
    if (!path || !cb || len > ZTM_GRPC_DEFAULT_MAX_MESSAGE)
        return -EINVAL;
    call_t *c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    c->s.kind = K_CALL;
    c->h = h;
    c->cb = cb;
    c->arg = arg;
    ztm_grpc_decoder_init(&c->dec, 0, false);
    ztm_timer_init(&c->deadline, on_call_deadline);
    c->next = h->calls;
    if (h->calls)
        h->calls->prev = c;
    h->calls = c;
    h->n_calls++;
    if (h->n_calls > MAX_CALLS) {
        call_finish(c, ZTM_GRPC_RESOURCE_EXHAUSTED, "too many calls in flight on the hub link",
                    false);
        return 0;
    }
    c->frame_len = ZTM_GRPC_PREFIX_LEN + len;
    if (!(c->frame = malloc(c->frame_len))) {
        call_finish(c, ZTM_GRPC_RESOURCE_EXHAUSTED, "out of memory", false);
        return 0;
    }
    ztm_grpc_prefix_encode(c->frame, false, (uint32_t)len);
    if (len)
        memcpy(c->frame + ZTM_GRPC_PREFIX_LEN, req, len);
    if (!timeout_ns)
        timeout_ns = CALL_TIMEOUT_NS;
    char tmo[ZTM_GRPC_TIMEOUT_MAX];
    size_t tl = ztm_grpc_timeout_format(timeout_ns, tmo);
    ztm_h2_header_t hd[] = {
        {"content-type", 12, "application/grpc", 16},
        {"te", 2, "trailers", 8},
        {"user-agent", 10, "ztm/" ZTM_VERSION, 4 + strlen(ZTM_VERSION)},
        {"grpc-timeout", 12, tmo, tl},
    };
    ztm_h2_msg_t m = {.method = "POST",
                      .scheme = "https",
                      .authority = h->host,
                      .path = path,
                      .headers = hd,
                      .n_headers = 4};
    int32_t id = ztm_h2_request(h->h2, &m, ZTM_H2_BODY, &c->s);
    if (id < 0) {
        call_finish(c, ZTM_GRPC_UNAVAILABLE,
                    id == ZTM_H2_E_CLOSED ? "the hub link is closing" : ztm_h2_strerror(id), false);
        return 0;
    }
    c->s.id = id;
    ztm_timer_arm(ztm_worker_timers(h->w), &c->deadline, ztm_worker_now(h->w) + timeout_ns);
    kick(h);
    return 0;
}

/* ---- relay streams ---------------------------------------------------------------- */
static void relay_unlink(ztm_hublink_t *h, ztm_relay_stream_t *s)
{
    if (s->prev)
        s->prev->next = s->next;
    else
        h->relays = s->next;
    if (s->next)
        s->next->prev = s->prev;
    s->prev = s->next = NULL;
    h->stats.relay_streams--;
}

static int relay_start(ztm_hublink_t *h, const char *path, const ztm_h2_header_t *extra,
                       const ztm_relay_cb_t *cb, void *arg, ztm_relay_stream_t **out)
{
    if (!is_up(h))
        return -ENOTCONN;
    if (!cb || !cb->on_close)
        return -EINVAL;
    ztm_relay_stream_t *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->s.kind = K_RELAY;
    s->h = h;
    s->cb = *cb;
    s->arg = arg;
    ztm_h2_header_t hd[] = {
        {"content-type", 12, "application/octet-stream", 24},
        {"user-agent", 10, "ztm/" ZTM_VERSION, 4 + strlen(ZTM_VERSION)},
        *extra,
    };
    ztm_h2_msg_t m = {.method = "POST",
                      .scheme = "https",
                      .authority = h->host,
                      .path = path,
                      .headers = hd,
                      .n_headers = 3};
    int32_t id = ztm_h2_request(h->h2, &m, ZTM_H2_BODY, &s->s);
    if (id < 0) {
        free(s);
        return id == ZTM_H2_E_CLOSED ? -ENOTCONN : id == -ENOMEM ? -ENOMEM : -EINVAL;
    }
    s->s.id = id;
    s->next = h->relays;
    if (h->relays)
        h->relays->prev = s;
    h->relays = s;
    h->stats.relay_streams++;
    kick(h);
    *out = s;
    return 0;
}

int ztm_hublink_open(ztm_hublink_t *h, const char *to, const ztm_relay_cb_t *cb, void *arg,
                     ztm_relay_stream_t **out)
{
    if (!to || !*to)
        return -EINVAL;
    ztm_h2_header_t peer = {"ztm-peer", 8, to, strlen(to)};
    return relay_start(h, "/ztm.relay/open", &peer, cb, arg, out);
}

int ztm_hublink_accept(ztm_hublink_t *h, uint64_t session_id, const ztm_relay_cb_t *cb, void *arg,
                       ztm_relay_stream_t **out)
{
    char id[24];
    int n = snprintf(id, sizeof(id), "%" PRIu64, session_id);
    ztm_h2_header_t sess = {"ztm-session", 11, id, (size_t)n};
    return relay_start(h, "/ztm.relay/accept", &sess, cb, arg, out);
}

void ztm_relay_stream_consume(ztm_relay_stream_t *s, size_t n)
{
    ztm_hublink_t *h = s->h;
    if (n > s->held)
        n = (size_t)s->held;
    s->held -= n;
    if (n && h->h2 && s->s.id > 0) {
        ztm_h2_consume(h->h2, s->s.id, n);
        kick(h);
    }
}

void ztm_relay_stream_resume(ztm_relay_stream_t *s)
{
    ztm_hublink_t *h = s->h;
    if (!s->gone && h->h2 && s->s.id > 0) {
        ztm_h2_resume(h->h2, s->s.id);
        kick(h);
    }
}

/* No more callbacks for S; the session lets go of it in on_stream_close. */
static void relay_drop(ztm_hublink_t *h, ztm_relay_stream_t *s)
{
    s->gone = true;
    if (h->h2 && s->s.id > 0) {
        ztm_h2_reset(h->h2, s->s.id, ZTM_H2_CANCEL);
        kick(h);
    }
}

void ztm_relay_stream_reset(ztm_relay_stream_t *s)
{
    if (!s->gone)
        relay_drop(s->h, s);
}

static void relay_on_response(ztm_hublink_t *h, ztm_relay_stream_t *s, const ztm_h2_msg_t *resp)
{
    if (resp->status == 200) {
        s->joined = true;
        if (!s->gone && s->cb.on_joined)
            s->cb.on_joined(s->arg);
        return;
    }
    s->refused = true;
    snprintf(s->reason, sizeof(s->reason), "hub answered %d", resp->status);
    for (size_t i = 0; i < resp->n_headers; i++) {
        const ztm_h2_header_t *hd = &resp->headers[i];
        if (hdr_is(hd, "ztm-error") && hd->value_len) {
            int n =
                hd->value_len < sizeof(s->reason) ? (int)hd->value_len : (int)sizeof(s->reason) - 1;
            snprintf(s->reason, sizeof(s->reason), "%.*s", n, hd->value);
        }
    }
    ztm_h2_reset(h->h2, s->s.id, ZTM_H2_CANCEL);
}

static void relay_on_data(ztm_hublink_t *h, ztm_relay_stream_t *s, const uint8_t *data, size_t len)
{
    if (s->gone || !s->joined || !s->cb.on_data) {
        ztm_h2_consume(h->h2, s->s.id, len);
        return;
    }
    h->stats.bytes_in += len;
    s->held += len;
    s->cb.on_data(s->arg, data, len);
}

static void relay_on_close(ztm_hublink_t *h, ztm_relay_stream_t *s, uint32_t error_code)
{
    relay_unlink(h, s);
    /* Credit the user will never return (it sees no stream after this). */
    if (s->held && h->h2)
        ztm_h2_consume(h->h2, s->s.id, (size_t)s->held);
    if (!s->gone) {
        const char *reason = "done";
        bool error = true;
        if (s->refused)
            reason = s->reason;
        else if (!h->h2)
            reason = "link down";
        else if (error_code || !s->joined)
            reason = "reset";
        else
            error = false;
        s->gone = true;
        s->cb.on_close(s->arg, reason, error);
    }
    free(s);
}

static ssize_t relay_read_body(ztm_hublink_t *h, ztm_relay_stream_t *s, uint8_t *dst, size_t max,
                               bool *eof)
{
    if (s->gone || !s->cb.produce)
        return -1;
    size_t n = s->cb.produce(s->arg, dst, max, eof);
    if (n > max)
        return -1;
    h->stats.bytes_out += n;
    return (ssize_t)n;
}

/* ---- the Events stream ---------------------------------------------------------- */
static void go_up(ztm_hublink_t *h)
{
    if (h->state == ZTM_HUBLINK_UP)
        return;
    h->up_since = ztm_worker_now(h->w);
    h->stats.connects++;
    set_state(h, ZTM_HUBLINK_UP, NULL);
}

static void on_event(ztm_hublink_t *h, const uint8_t *data, size_t len)
{
    Ztm__V1__Event *ev = ztm__v1__event__unpack(NULL, len, data);
    if (!ev) {
        ztm_log(ZTM_LOG_WARN, "hublink.bad_event", "hub=%s len=%zu", cur_hub(h), len);
        return;
    }
    if (ev->kind_case == ZTM__V1__EVENT__KIND_HELLO && ev->hello) {
        Ztm__V1__Hello *hi = ev->hello;
        ztm_log(ZTM_LOG_INFO, "hublink.up",
                "hub=%s hub_name=%s endpoint=%s endpoint_id=%s record_layer=%s", cur_hub(h),
                hi->hub_name ? hi->hub_name : "", hi->endpoint_name ? hi->endpoint_name : "",
                hi->endpoint_id ? hi->endpoint_id : "", ztm_link_record_layer(h->link));
        go_up(h);
    } else if (ev->kind_case == ZTM__V1__EVENT__KIND_INCOMING && ev->incoming) {
        Ztm__V1__Incoming *in = ev->incoming;
        ztm_log(ZTM_LOG_DEBUG, "hublink.incoming", "session=%" PRIu64 " from=%s", in->session_id,
                in->from_name ? in->from_name : "");
        if (h->state == ZTM_HUBLINK_UP && !h->stopped && h->cfg.on_incoming)
            h->cfg.on_incoming(h->cfg.arg, in->session_id, in->from_name ? in->from_name : "",
                               in->from_endpoint_id ? in->from_endpoint_id : "");
    }
    ztm__v1__event__free_unpacked(ev, NULL);
}

static void events_on_data(ztm_hublink_t *h, const uint8_t *data, size_t len)
{
    ztm_h2_consume(h->h2, h->ev.s.id, len);
    while (len && !h->stopped && !h->close_pending) {
        ztm_grpc_message_t m;
        bool ready;
        ssize_t n = ztm_grpc_decoder_feed(&h->ev.dec, data, len, &m, &ready);
        if (n < 0) {
            set_why(h, "events: %s", ztm_grpc_strerror((int)n));
            ztm_h2_reset(h->h2, h->ev.s.id, ZTM_H2_CANCEL);
            conn_close(h);
            return;
        }
        data += n;
        len -= (size_t)n;
        if (ready)
            on_event(h, m.data, m.len);
    }
}

static void events_on_close(ztm_hublink_t *h, uint32_t error_code)
{
    events_t *ev = &h->ev;
    ev->open = false;
    if (h->stopped || !h->h2 || h->close_pending)
        return;
    if (ev->have_status && ev->status == ZTM_GRPC_UNIMPLEMENTED && h->allow_no_events) {
        ztm_log(ZTM_LOG_INFO, "hublink.up", "hub=%s events=unimplemented record_layer=%s",
                cur_hub(h), ztm_link_record_layer(h->link));
        go_up(h);
        return;
    }
    if (ev->have_status)
        set_why(h, "events: %s%s%s", ztm_grpc_status_name(ev->status), ev->msg[0] ? ": " : "",
                ev->msg);
    else if (ev->http_status && ev->http_status != 200)
        set_why(h, "events: the hub answered HTTP %d", ev->http_status);
    else
        set_why(h, "events: %s", error_code ? "reset by the hub" : "ended without a status");
    ztm_log(ZTM_LOG_WARN, "hublink.events_ended", "hub=%s why=\"%s\"", cur_hub(h), h->why);
    conn_close(h);
}

static int events_open(ztm_hublink_t *h)
{
    events_t *ev = &h->ev;
    ztm_grpc_decoder_free(&ev->dec);
    memset(ev, 0, sizeof(*ev));
    ev->s.kind = K_EVENTS;
    ztm_grpc_decoder_init(&ev->dec, MAX_EVENT, false);
    Ztm__V1__EventsRequest req = ZTM__V1__EVENTS_REQUEST__INIT;
    req.agent_version = (char *)ZTM_VERSION;
    size_t n = ztm__v1__events_request__get_packed_size(&req);
    if (n > sizeof(ev->frame) - ZTM_GRPC_PREFIX_LEN)
        return -EMSGSIZE;
    ztm__v1__events_request__pack(&req, ev->frame + ZTM_GRPC_PREFIX_LEN);
    ztm_grpc_prefix_encode(ev->frame, false, (uint32_t)n);
    ev->frame_len = ZTM_GRPC_PREFIX_LEN + n;
    ztm_h2_header_t hd[] = {
        {"content-type", 12, "application/grpc", 16},
        {"te", 2, "trailers", 8},
        {"user-agent", 10, "ztm/" ZTM_VERSION, 4 + strlen(ZTM_VERSION)},
    };
    ztm_h2_msg_t m = {.method = "POST",
                      .scheme = "https",
                      .authority = h->host,
                      .path = "/ztm.v1.Relay/Events",
                      .headers = hd,
                      .n_headers = 3};
    int32_t id = ztm_h2_request(h->h2, &m, ZTM_H2_BODY, &ev->s);
    if (id < 0)
        return id;
    ev->s.id = id;
    ev->open = true;
    return 0;
}

/* ---- session callbacks ------------------------------------------------------------ */
static void h2_on_response(ztm_h2_session_t *ss, void *user, int32_t id, void *sdata,
                           const ztm_h2_msg_t *resp)
{
    ztm_hublink_t *h = user;
    strm_t *st = sdata;
    if (!st)
        return;
    if (st->kind == K_RELAY) {
        relay_on_response(h, (ztm_relay_stream_t *)st, resp);
    } else if (st->kind == K_CALL) {
        call_t *c = (call_t *)st;
        c->http_status = resp->status;
        read_grpc_status(resp->headers, resp->n_headers, &c->have_status, &c->status, c->msg,
                         sizeof(c->msg));
    } else {
        h->ev.http_status = resp->status;
        read_grpc_status(resp->headers, resp->n_headers, &h->ev.have_status, &h->ev.status,
                         h->ev.msg, sizeof(h->ev.msg));
    }
}

static void h2_on_data(ztm_h2_session_t *ss, void *user, int32_t id, void *sdata,
                       const uint8_t *data, size_t len)
{
    ztm_hublink_t *h = user;
    strm_t *st = sdata;
    if (!st) {
        ztm_h2_consume(ss, id, len);
    } else if (st->kind == K_RELAY) {
        relay_on_data(h, (ztm_relay_stream_t *)st, data, len);
    } else if (st->kind == K_CALL) {
        ztm_h2_consume(ss, id, len);
        call_on_data(h, (call_t *)st, data, len);
    } else {
        events_on_data(h, data, len);
    }
}

static void h2_on_trailers(ztm_h2_session_t *ss, void *user, int32_t id, void *sdata,
                           const ztm_h2_header_t *t, size_t n)
{
    ztm_hublink_t *h = user;
    strm_t *st = sdata;
    if (!st || st->kind == K_RELAY)
        return;
    if (st->kind == K_CALL) {
        call_t *c = (call_t *)st;
        read_grpc_status(t, n, &c->have_status, &c->status, c->msg, sizeof(c->msg));
    } else {
        read_grpc_status(t, n, &h->ev.have_status, &h->ev.status, h->ev.msg, sizeof(h->ev.msg));
    }
}

static void h2_on_end_stream(ztm_h2_session_t *ss, void *user, int32_t id, void *sdata)
{
    strm_t *st = sdata;
    if (st && st->kind == K_RELAY) {
        ztm_relay_stream_t *s = (ztm_relay_stream_t *)st;
        if (s->joined && !s->gone && s->cb.on_eof)
            s->cb.on_eof(s->arg);
    }
}

static void h2_on_stream_close(ztm_h2_session_t *ss, void *user, int32_t id, void *sdata,
                               uint32_t error_code)
{
    ztm_hublink_t *h = user;
    strm_t *st = sdata;
    if (!st)
        return;
    if (st->kind == K_RELAY)
        relay_on_close(h, (ztm_relay_stream_t *)st, error_code);
    else if (st->kind == K_CALL)
        call_on_close(h, (call_t *)st, error_code);
    else
        events_on_close(h, error_code);
}

static ssize_t h2_read_body(ztm_h2_session_t *ss, void *user, int32_t id, void *sdata, uint8_t *dst,
                            size_t max, bool *eof)
{
    ztm_hublink_t *h = user;
    strm_t *st = sdata;
    const uint8_t *src;
    size_t *off, total;
    if (!st)
        return -1;
    if (st->kind == K_RELAY)
        return relay_read_body(h, (ztm_relay_stream_t *)st, dst, max, eof);
    if (st->kind == K_CALL) {
        call_t *c = (call_t *)st;
        src = c->frame, off = &c->frame_off, total = c->frame_len;
    } else {
        src = h->ev.frame, off = &h->ev.frame_off, total = h->ev.frame_len;
    }
    size_t n = total - *off;
    if (n > max)
        n = max;
    memcpy(dst, src + *off, n);
    *off += n;
    *eof = *off == total;
    return (ssize_t)n;
}

static void h2_on_goaway(ztm_h2_session_t *ss, void *user, uint32_t error_code, int32_t last)
{
    ztm_hublink_t *h = user;
    ztm_log(ZTM_LOG_INFO, "hublink.goaway", "hub=%s error_code=%u last_stream=%d", cur_hub(h),
            error_code, last);
    set_why(h, "the hub went away (GOAWAY)");
    /* Let the streams in flight finish; the link closes when the session is idle. */
    ztm_h2_shutdown(ss);
}

static const ztm_h2_callbacks_t h2_cbs = {
    .on_response = h2_on_response,
    .on_data = h2_on_data,
    .on_trailers = h2_on_trailers,
    .on_end_stream = h2_on_end_stream,
    .on_stream_close = h2_on_stream_close,
    .read_body = h2_read_body,
    .on_goaway = h2_on_goaway,
};

static uint64_t h2_clock(void *user)
{
    ztm_hublink_t *h = user;
    return ztm_worker_now(h->w);
}

/* ---- the link ----------------------------------------------------------------------- */
static void on_tick(ztm_timer_t *t)
{
    ztm_hublink_t *h = (ztm_hublink_t *)((char *)t - offsetof(ztm_hublink_t, tick_timer));
    if (!h->h2 || !h->link)
        return;
    h_get(h);
    ztm_timer_arm(ztm_worker_timers(h->w), &h->tick_timer, ztm_worker_now(h->w) + TICK_NS);
    h->in_h2++;
    int r = ztm_h2_tick(h->h2);
    h->in_h2--;
    if (r == ZTM_H2_E_DEAD_PEER)
        set_why(h, "the hub did not answer a PING");
    h->kick_pending = true;
    settle(h, r);
    h_put(h);
}

static int link_on_open(ztm_link_t *l, void *user)
{
    ztm_hublink_t *h = user;
    if (h->stopped)
        return -ECANCELED;
    ztm_tls_conn_t *tc = ztm_link_tls(l);
    X509 *peer = tc ? ztm_tls_conn_peer_cert(tc) : NULL;
    ztm_identity_t id;
    if (!peer || ztm_identity_from_cert(peer, &id) < 0 || id.role != ZTM_ROLE_HUB ||
        strcmp(id.mesh, h->mesh) != 0) {
        bool known = peer && ztm_identity_from_cert(peer, &id) == 0;
        ztm_log(ZTM_LOG_WARN, "hublink.not_a_hub",
                "hub=%s link=%llu peer_name=%s peer_role=%s peer_mesh=%s mesh=%s", cur_hub(h),
                (unsigned long long)ztm_link_id(l), known ? id.name : "-",
                known && ztm_role_name(id.role) ? ztm_role_name(id.role) : "-",
                known ? id.mesh : "-", h->mesh);
        set_why(h, "not_a_hub");
        return -EPERM;
    }
    snprintf(h->hub_name, sizeof(h->hub_name), "%s", id.name);
    ztm_h2_config_t hc = {.conn_id = ztm_link_id(l),
                          .clock = h2_clock,
                          .ping_interval_ns = PING_INTERVAL_NS,
                          .ping_timeout_ns = PING_TIMEOUT_NS};
    int r = ztm_h2_new(&h->h2, ZTM_H2_CLIENT, &h2_cbs, h, &hc);
    if (r < 0) {
        set_why(h, "cannot start HTTP/2: %s", ztm_h2_strerror(r));
        return r;
    }
    if ((r = events_open(h)) < 0) {
        set_why(h, "cannot open the Events stream: %s", ztm_h2_strerror(r));
        return r;
    }
    ztm_timer_arm(ztm_worker_timers(h->w), &h->tick_timer, ztm_worker_now(h->w) + TICK_NS);
    ztm_link_want_write(l);
    return 0;
}

static int link_on_data(ztm_link_t *l, void *user, const uint8_t *data, size_t len)
{
    ztm_hublink_t *h = user;
    if (!h->h2)
        return 0;
    h_get(h);
    h->in_h2++;
    int r = ztm_h2_feed(h->h2, data, len);
    h->in_h2--;
    h->kick_pending = true;
    settle(h, r);
    h_put(h);
    return 0;
}

static size_t link_produce(ztm_link_t *l, void *user, uint8_t *buf, size_t cap)
{
    ztm_hublink_t *h = user;
    if (!h->h2)
        return 0;
    h_get(h);
    h->in_h2++;
    size_t n = 0;
    int r = ztm_h2_flush(h->h2, buf, cap, &n);
    h->in_h2--;
    if (r == 0 && !n && ztm_h2_idle(h->h2))
        ztm_link_close(l, h->why ? h->why : "done");
    else if (h->close_pending)
        soon(h);
    h_put(h);
    return n;
}

static void schedule_retry(ztm_hublink_t *h, const char *why);

static void link_on_close(ztm_link_t *l, void *user, const char *reason)
{
    ztm_hublink_t *h = user;
    ztm_h2_session_t *s = h->h2;
    bool was_up = h->state == ZTM_HUBLINK_UP;
    const char *why = h->why ? h->why : reason;
    if (!h->why)
        set_why(h, "%s", reason);
    h->link = NULL;
    h->h2 = NULL;
    h->close_pending = h->kick_pending = false;
    ztm_timer_cancel(ztm_worker_timers(h->w), &h->tick_timer);
    /* Streams still open end here: relay streams see "link down", calls
     * UNAVAILABLE (delivered from the soon timer). */
    h->in_h2++;
    ztm_h2_free(s);
    h->in_h2--;
    if (!h->stopped) {
        if (was_up) {
            h->stats.disconnects++;
            if (ztm_worker_now(h->w) - h->up_since >= STABLE_UP_NS)
                h->delay_ns = h->cfg.backoff_min_ns;
        }
        ztm_log(ZTM_LOG_WARN, "hublink.down", "hub=%s was=%s why=\"%s\"", cur_hub(h),
                ztm_hublink_state_name(h->state), why);
        schedule_retry(h, h->why);
    }
    h_put(h); /* the link's reference */
}

static const ztm_link_upper_t link_upper = {
    .on_open = link_on_open,
    .on_data = link_on_data,
    .produce = link_produce,
    .on_close = link_on_close,
};

/* ---- connecting and backing off -------------------------------------------------- */
static uint64_t rng_next(ztm_hublink_t *h)
{
    uint64_t x = h->rng; /* xorshift64: jitter needs spread, not secrecy */
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return h->rng = x;
}

static void schedule_retry(ztm_hublink_t *h, const char *why)
{
    snprintf(h->last_error, sizeof(h->last_error), "%s", why ? why : "failed");
    h->have_error = true;
    uint64_t base = h->delay_ns;
    uint64_t wait = base / 2 + rng_next(h) % (base + 1); /* base * [0.5, 1.5] */
    h->delay_ns = base * 2 > h->cfg.backoff_max_ns ? h->cfg.backoff_max_ns : base * 2;
    ztm_log(ZTM_LOG_INFO, "hublink.backoff", "hub=%s delay_ms=%llu why=\"%s\"", cur_hub(h),
            (unsigned long long)(wait / ZTM_NS_PER_MS), h->last_error);
    ztm_timer_arm(ztm_worker_timers(h->w), &h->retry_timer, ztm_worker_now(h->w) + wait);
    h->failover = true; /* the next attempt goes to the next hub */
    set_state(h, ZTM_HUBLINK_BACKOFF, h->last_error);
}

static void dial(ztm_hublink_t *h, const ztm_addr_t *addr);

static void on_resolved(void *arg, int err, const ztm_addr_t *addr, const char *why)
{
    ztm_hublink_t *h = arg;
    h->lookup = NULL;
    if (h->stopped) {
        h_put(h);
        return;
    }
    if (err < 0) {
        set_why(h, "cannot resolve the hub's name: %s", why);
        schedule_retry(h, h->why);
    } else {
        dial(h, addr);
    }
    h_put(h); /* the lookup's */
}

static void attempt(ztm_hublink_t *h)
{
    if (h->failover) {
        h->failover = false;
        h->hub_idx = (h->hub_idx + 1) % h->n_hubs;
    }
    const char *hub = cur_hub(h);
    h->why = NULL;
    set_state(h, ZTM_HUBLINK_CONNECTING, NULL);
    if (h->stopped)
        return;
    /* SNI and :authority: the host part ("[v6]" sends none, as ztm join). */
    snprintf(h->host, sizeof(h->host), "%s", hub);
    char *colon = strrchr(h->host, ':');
    if (colon)
        *colon = 0;
    ztm_addr_t addr;
    const char *why = NULL;
    int r = ztm_resolve(h->resolver, hub, &addr, &why, on_resolved, h, &h->lookup);
    if (r == -EINPROGRESS) {
        h_get(h); /* the lookup's: on_resolved puts it */
        return;
    }
    if (r < 0) {
        set_why(h, "bad hub address: %s", why);
        schedule_retry(h, h->why);
        return;
    }
    dial(h, &addr);
}

static void dial(ztm_hublink_t *h, const ztm_addr_t *addr)
{
    ztm_link_config_t lc = {.tls = h->tls,
                            .sni = h->host[0] == '[' ? NULL : h->host,
                            .connect_timeout_ns = CONNECT_TIMEOUT_NS};
    h->ev.open = false;
    h_get(h); /* the link's */
    int r = ztm_link_connect(h->w, addr, &lc, &link_upper, h, &h->link);
    if (r < 0) {
        h->link = NULL;
        h_put(h);
        set_why(h, "cannot dial: %s", ztm_tls_strerror(r));
        schedule_retry(h, h->why);
    }
}

static void on_retry(ztm_timer_t *t)
{
    ztm_hublink_t *h = (ztm_hublink_t *)((char *)t - offsetof(ztm_hublink_t, retry_timer));
    h_get(h);
    if (!h->stopped && !h->link)
        attempt(h);
    h_put(h);
}

static void on_soon(ztm_timer_t *t)
{
    ztm_hublink_t *h = (ztm_hublink_t *)((char *)t - offsetof(ztm_hublink_t, soon_timer));
    h_get(h);
    settle(h, 0);
    deliver_replies(h);
    h_put(h);
}

/* ---- the public surface ------------------------------------------------------------- */
int ztm_hublink_new(ztm_worker_t *w, const ztm_hublink_config_t *cfg, ztm_hublink_t **out)
{
    if (!w || !cfg || !cfg->hubs || !cfg->n_hubs || !cfg->mesh || !cfg->tls || !out)
        return -EINVAL;
    ztm_hublink_t *h = calloc(1, sizeof(*h));
    if (!h)
        return -ENOMEM;
    h->refs = 1;
    h->w = w;
    h->cfg = *cfg;
    if (!h->cfg.backoff_min_ns)
        h->cfg.backoff_min_ns = BACKOFF_MIN_NS;
    if (!h->cfg.backoff_max_ns)
        h->cfg.backoff_max_ns = BACKOFF_MAX_NS;
    if (h->cfg.backoff_max_ns < h->cfg.backoff_min_ns)
        h->cfg.backoff_max_ns = h->cfg.backoff_min_ns;
    h->delay_ns = h->cfg.backoff_min_ns;
    h->rng = ztm_now_ns() ^ ((uint64_t)(uintptr_t)h << 17) ^ 0x9e3779b97f4a7c15ull;
    ztm_timer_init(&h->retry_timer, on_retry);
    ztm_timer_init(&h->tick_timer, on_tick);
    ztm_timer_init(&h->soon_timer, on_soon);
    ztm_grpc_decoder_init(&h->ev.dec, MAX_EVENT, false);
    h->mesh = strdup(cfg->mesh);
    h->hubs = calloc(cfg->n_hubs, sizeof(*h->hubs));
    if (!h->mesh || !h->hubs)
        goto Fail;
    h->n_hubs = cfg->n_hubs;
    for (size_t i = 0; i < cfg->n_hubs; i++) {
        if (!cfg->hubs[i] || !(h->hubs[i] = strdup(cfg->hubs[i])))
            goto Fail;
    }
    h->cfg.hubs = (const char *const *)h->hubs;
    h->cfg.mesh = h->mesh;
    ztm_tls_ctx_ref(cfg->tls);
    h->tls = cfg->tls;
    h->cfg.tls = NULL;
    h->resolver = cfg->resolver;
    if (!h->resolver) {
        if (ztm_resolver_new(w, &h->own_resolver) < 0)
            goto Fail;
        h->resolver = h->own_resolver;
    }
    h->cfg.resolver = NULL;
    h->state = ZTM_HUBLINK_CONNECTING;
    /* The first attempt runs from the loop, so that on_state never runs
     * inside this call. */
    ztm_timer_arm(ztm_worker_timers(w), &h->retry_timer, ztm_worker_now(w));
    *out = h;
    return 0;
Fail:
    h_free(h);
    return -ENOMEM;
}

void ztm_hublink_stop(ztm_hublink_t *h)
{
    if (!h || h->stopped)
        return;
    h->stopped = true;
    h->state = ZTM_HUBLINK_STOPPED;
    if (h->lookup) { /* the owner's reference keeps H alive through this put */
        ztm_resolve_cancel(h->lookup);
        h->lookup = NULL;
        h_put(h);
    }
    ztm_timers_t *ts = ztm_worker_timers(h->w);
    ztm_timer_cancel(ts, &h->retry_timer);
    while (h->done_head) {
        call_t *c = h->done_head;
        h->done_head = c->next;
        call_free(c);
    }
    h->done_tail = NULL;
    for (call_t *c = h->calls; c; c = c->next) {
        c->cb = NULL;
        ztm_timer_cancel(ts, &c->deadline);
    }
    for (ztm_relay_stream_t *s = h->relays; s; s = s->next)
        if (!s->gone)
            relay_drop(h, s);
    if (h->h2) {
        if (h->ev.open)
            ztm_h2_reset(h->h2, h->ev.s.id, ZTM_H2_CANCEL);
        ztm_h2_shutdown(h->h2); /* GOAWAY */
    }
    if (h->link) {
        if (!h->why)
            h->why = "stopped";
        conn_close(h);
        /* Out of the session: close now (the link sends the GOAWAY and the
         * resets first); inside it, the caller's entry point does. */
        h_get(h);
        settle(h, 0);
        h_put(h);
    }
    h_put(h); /* the "not stopped" reference */
}

void ztm_hublink_allow_no_events(ztm_hublink_t *h, bool allow)
{
    h->allow_no_events = allow;
}

void ztm_hublink_set_tls(ztm_hublink_t *h, ztm_tls_ctx_t *tls)
{
    if (!tls)
        return;
    ztm_tls_ctx_ref(tls);
    ztm_tls_ctx_free(h->tls);
    h->tls = tls;
}

ztm_hublink_state_t ztm_hublink_state(const ztm_hublink_t *h)
{
    return h->state;
}

const char *ztm_hublink_hub(const ztm_hublink_t *h)
{
    return cur_hub(h);
}

const char *ztm_hublink_record_layer(const ztm_hublink_t *h)
{
    return h->state == ZTM_HUBLINK_UP && h->link ? ztm_link_record_layer(h->link) : "-";
}

const char *ztm_hublink_last_error(const ztm_hublink_t *h)
{
    return h->have_error ? h->last_error : NULL;
}

void ztm_hublink_stats(const ztm_hublink_t *h, ztm_hublink_stats_t *out)
{
    *out = h->stats;
}
