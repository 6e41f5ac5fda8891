/* The hub's relay, one per data-plane worker; see relay.h.
 *
 * Two kinds of stream data, each beginning with rstream_t (which begins
 * with the server's ztm_grpc_route_stream_t): an Events stream (events_t),
 * and a session's stream (side_t), whose bytes go through its splice half
 * (xsplice.h) from the start: held until the session is joined, then sent
 * to the other half.
 *
 * A session's life, on the opener's worker: an open makes a waiting
 * session (session_t: a timer, the opener's stream) and asks the registry
 * where the peer is; FOUND: Incoming is pushed on the peer's worker (or
 * NOTFOUND: 404); the accept, on whatever worker it arrives, comes here by
 * message (the session ID's low byte names this worker), and the two
 * halves are bound to each other. The waiting session is gone then: the
 * halves carry the rest. An open nobody accepts gets 504; one waiting when
 * the hub drains, 503. */
#include "dataplane/hub/relay.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

#include "controlplane/ca/identity.h"
#include "controlplane/grpc/frame.h"
#include "dataplane/h2/h2.h"
#include "dataplane/hub/htab.h"
#include "dataplane/hub/hubmsg.h"
#include "dataplane/hub/xsplice.h"
#include "dataplane/runtime/log.h"
#include "ztm/v1/relay.pb-c.h"

#define EVENTS_PATH       "/ztm.v1.Relay/Events"
#define OPEN_PATH         "/ztm.relay/open"
#define ACCEPT_PATH       "/ztm.relay/accept"
#define EVQ_MAX           8          /* Incoming messages queued per Events stream */
#define DEFAULT_WINDOW    (1u << 20) /* dataplane/h2's default stream window */
#define DEFAULT_ACCEPT_NS (10 * ZTM_NS_PER_SEC)
#define SID_WORKER_MASK   0xffull /* a session ID's low byte: the opener's worker */

/* ---- the relay's objects --------------------------------------------------- */
typedef enum { RS_EVENTS, RS_SIDE } rs_kind_t;

typedef struct rstream {
    ztm_grpc_route_stream_t route; /* first: how the server tells route streams apart */
    rs_kind_t kind;
    ztm_hub_relay_t *r;
    ztm_grpc_conn_t *c;
    ztm_h2_session_t *h;
    int32_t id;
    bool dirty; /* on r's list of streams whose connection needs a kick */
    struct rstream *dprev, *dnext;
    struct rstream *aprev, *anext; /* r's list of every stream we own */
} rstream_t;

typedef struct {
    rstream_t s;
    hnode_t node; /* in r->events, by token */
    uint64_t token;
    bool registered; /* it stands for its endpoint at the registry */
    bool hello_sent; /* nothing but Hello goes first */
    bool finished;   /* trailers given: the body ends when the queue is empty */
    char ep_id[ZTM_ID_MAX + 1];
    char ep_name[ZTM_NAME_MAX + 1];
    uint8_t *cur; /* the framed message being sent */
    size_t cur_len, cur_off;
    uint8_t *q[EVQ_MAX]; /* framed messages waiting */
    size_t q_len[EVQ_MAX];
    uint64_t q_session[EVQ_MAX]; /* the session each offers (for the log) */
    unsigned q_head, q_n;
} events_t;

typedef struct side side_t;

/* An open waiting for its accept (on the opener's worker). */
typedef struct {
    ztm_hub_relay_t *r;
    hnode_t node; /* in r->waiting, by id */
    uint64_t id;
    side_t *a;  /* the opener's stream */
    bool found; /* the registry named the peer: Incoming is on its way */
    ztm_timer_t timer;
    char from_id[ZTM_ID_MAX + 1], from_name[ZTM_NAME_MAX + 1];
    char to_id[ZTM_ID_MAX + 1], to_name[ZTM_NAME_MAX + 1];
} session_t;

struct side {
    rstream_t s;
    ztm_xs_half_t *h;
    session_t *sess;    /* the opener's, while it waits */
    bool joined;        /* its half is bound to the other */
    bool awaiting;      /* the acceptor's: the opener's worker has not answered */
    bool gone;          /* ... and its stream closed meanwhile (freed at the answer) */
    bool reset_pending; /* the other side went: RST_STREAM(CANCEL) from run */
};

struct ztm_hub_relay {
    ztm_worker_t *w;
    unsigned self, workers;
    ztm_grpc_server_t *srv;
    ztm_grpc_route_t route; /* what our streams' ztm_grpc_route_stream_t point at */
    char *hub_name, *mesh;
    uint64_t accept_ns;
    size_t window;
    ztm_outbox_t *ob;
    unsigned registry;
    ztm_xs_t *xs;
    htab_t events; /* token -> events_t */
    uint64_t next_token;
    htab_t waiting; /* session id -> session_t */
    size_t joined;
    rstream_t *dirty_head, *dirty_tail;
    rstream_t *all;
    bool draining;
};

/* ---- deferred work ----------------------------------------------------------- */
static void mark_dirty(rstream_t *s)
{
    ztm_hub_relay_t *r = s->r;
    if (s->dirty)
        return;
    s->dirty = true;
    s->dnext = NULL;
    s->dprev = r->dirty_tail;
    if (r->dirty_tail)
        r->dirty_tail->dnext = s;
    else
        r->dirty_head = s;
    r->dirty_tail = s;
}

static void unmark_dirty(rstream_t *s)
{
    ztm_hub_relay_t *r = s->r;
    if (!s->dirty)
        return;
    if (s->dprev)
        s->dprev->dnext = s->dnext;
    else
        r->dirty_head = s->dnext;
    if (s->dnext)
        s->dnext->dprev = s->dprev;
    else
        r->dirty_tail = s->dprev;
    s->dirty = false;
    s->dprev = s->dnext = NULL;
}

/* S becomes ours: its stream data, on the list of every stream. */
static void stream_own(rstream_t *s)
{
    ztm_hub_relay_t *r = s->r;
    ztm_h2_stream_set_data(s->h, s->id, s);
    s->aprev = NULL;
    s->anext = r->all;
    if (r->all)
        r->all->aprev = s;
    r->all = s;
}

static void stream_disown(rstream_t *s)
{
    ztm_hub_relay_t *r = s->r;
    unmark_dirty(s);
    if (s->aprev)
        s->aprev->anext = s->anext;
    else
        r->all = s->anext;
    if (s->anext)
        s->anext->aprev = s->aprev;
}

/* ---- messages to other workers ------------------------------------------------ */
static hubmsg_t *msg_new(void)
{
    hubmsg_t *p = calloc(1, sizeof(*p));
    if (!p)
        ztm_log(ZTM_LOG_ERROR, "relay.message", "error=\"out of memory\"");
    return p;
}

static void post(ztm_hub_relay_t *r, unsigned to, uint32_t type, hubmsg_t *p, uint64_t u64)
{
    ztm_msg_t m = {.type = type, .u64 = u64, .ptr = p};
    ztm_outbox_post(r->ob, to, &m);
}

bool ztm_hub_discard(const ztm_msg_t *m)
{
    if (m->type >= ZTM_HUB_MSG_FIRST && m->type < ZTM_HUB_MSG_FIRST + ZTM_HUB_MSG_COUNT) {
        free(m->ptr);
        return true;
    }
    return ztm_xs_discard(m);
}

/* ---- answers ------------------------------------------------------------------ */
static const ztm_h2_header_t CT = {"content-type", 12, "application/grpc", 16};

/* A plain HTTP error with its reason in ztm-error (no body). */
static void answer_http(ztm_h2_session_t *h, int32_t id, int status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void answer_http(ztm_h2_session_t *h, int32_t id, int status, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    ztm_h2_header_t e = {"ztm-error", 9, msg, strlen(msg)};
    ztm_h2_respond(h, id, status, &e, 1, 0);
}

static size_t grpc_status_headers(ztm_h2_header_t *h, char code[4], char *msg, size_t cap,
                                  ztm_grpc_status_t st, const char *message)
{
    snprintf(code, 4, "%d", (int)st);
    h[0] = (ztm_h2_header_t){"grpc-status", 11, code, strlen(code)};
    size_t need = ztm_grpc_message_encode(message, strlen(message), msg, cap);
    h[1] = (ztm_h2_header_t){"grpc-message", 12, msg, need < cap ? need : cap - 1};
    return 2;
}

/* gRPC trailers-only: the whole answer in one HEADERS frame. */
static void answer_grpc(ztm_h2_session_t *h, int32_t id, ztm_grpc_status_t st, const char *message)
{
    char code[4], msg[512];
    ztm_h2_header_t hd[3] = {CT};
    size_t n = 1 + grpc_status_headers(hd + 1, code, msg, sizeof(msg), st, message);
    ztm_h2_respond(h, id, 200, hd, n, 0);
}

/* 200 with the session's ID: the body from here on is the peer's bytes. */
static void answer_joined(side_t *x, uint64_t sid)
{
    char sid_s[24];
    snprintf(sid_s, sizeof(sid_s), "%" PRIu64, sid);
    ztm_h2_header_t hd = {"ztm-session", 11, sid_s, strlen(sid_s)};
    ztm_h2_respond(x->s.h, x->s.id, 200, &hd, 1, ZTM_H2_BODY);
    mark_dirty(&x->s);
}

static const ztm_h2_header_t *find_header(const ztm_h2_msg_t *m, const char *name)
{
    size_t nl = strlen(name);
    for (size_t i = 0; i < m->n_headers; i++)
        if (m->headers[i].name_len == nl && memcmp(m->headers[i].name, name, nl) == 0)
            return &m->headers[i];
    return NULL;
}

/* ---- Events -------------------------------------------------------------------- */
/* Frames EV (an Event message) into a new buffer. */
static uint8_t *frame_event(const Ztm__V1__Event *ev, size_t *len)
{
    size_t n = ztm__v1__event__get_packed_size(ev);
    uint8_t *p = malloc(ZTM_GRPC_PREFIX_LEN + n);
    if (!p)
        return NULL;
    ztm_grpc_prefix_encode(p, false, (uint32_t)n);
    ztm__v1__event__pack(ev, p + ZTM_GRPC_PREFIX_LEN);
    *len = ZTM_GRPC_PREFIX_LEN + n;
    return p;
}

/* Ends EV's body with STATUS once what is queued has gone. */
static void events_finish(events_t *ev, ztm_grpc_status_t st, const char *message)
{
    if (ev->finished)
        return;
    ev->finished = true;
    ev->hello_sent = true; /* nothing more waits for it */
    char code[4], msg[256];
    ztm_h2_header_t t[2];
    size_t n = grpc_status_headers(t, code, msg, sizeof(msg), st, message);
    ztm_h2_trailers(ev->s.h, ev->s.id, t, n);
    ztm_h2_resume(ev->s.h, ev->s.id);
    mark_dirty(&ev->s);
}

static events_t *events_find(ztm_hub_relay_t *r, uint64_t token)
{
    uint64_t hash = htab_hash_u64(token);
    for (hnode_t *n = htab_first(&r->events, hash); n; n = n->next) {
        events_t *ev = (events_t *)((char *)n - offsetof(events_t, node));
        if (ev->token == token)
            return ev;
    }
    return NULL;
}

/* Queues MSG (framed, taken over). A full queue drops its oldest message:
 * an agent that does not read its events loses the oldest offers (each
 * would have timed out anyway), not the hub's memory. */
static void events_push(events_t *ev, uint8_t *msg, size_t len, uint64_t session)
{
    if (ev->finished) {
        free(msg);
        return;
    }
    if (ev->q_n == EVQ_MAX) {
        ztm_log(ZTM_LOG_WARN, "relay.event_dropped",
                "endpoint=%s session=%" PRIu64 " msg=\"the agent does not read its events; "
                "the oldest pending one was dropped\"",
                ev->ep_name, ev->q_session[ev->q_head]);
        free(ev->q[ev->q_head]);
        ev->q_head = (ev->q_head + 1) % EVQ_MAX;
        ev->q_n--;
    }
    unsigned tail = (ev->q_head + ev->q_n) % EVQ_MAX;
    ev->q[tail] = msg;
    ev->q_len[tail] = len;
    ev->q_session[tail] = session;
    ev->q_n++;
    ztm_h2_resume(ev->s.h, ev->s.id);
    mark_dirty(&ev->s);
}

static ssize_t events_read(events_t *ev, uint8_t *dst, size_t max, bool *eof)
{
    for (;;) {
        if (ev->cur_off < ev->cur_len) {
            size_t n = ev->cur_len - ev->cur_off;
            if (n > max)
                n = max;
            memcpy(dst, ev->cur + ev->cur_off, n);
            ev->cur_off += n;
            *eof = ev->finished && ev->cur_off == ev->cur_len && ev->q_n == 0;
            return (ssize_t)n;
        }
        free(ev->cur);
        ev->cur = NULL;
        ev->cur_len = ev->cur_off = 0;
        if (ev->hello_sent && ev->q_n) {
            ev->cur = ev->q[ev->q_head];
            ev->cur_len = ev->q_len[ev->q_head];
            ev->q_head = (ev->q_head + 1) % EVQ_MAX;
            ev->q_n--;
            continue;
        }
        *eof = ev->finished;
        return 0; /* parked until a push */
    }
}

static void events_free(events_t *ev)
{
    free(ev->cur);
    for (unsigned i = 0; i < ev->q_n; i++)
        free(ev->q[(ev->q_head + i) % EVQ_MAX]);
    free(ev);
}

/* Tells the registry about EV (REG, or UNREG). */
static bool events_tell(events_t *ev, uint32_t type)
{
    ztm_hub_relay_t *r = ev->s.r;
    hubmsg_t *p = msg_new();
    if (!p)
        return false;
    p->token = ev->token;
    p->worker = r->self;
    snprintf(p->id, sizeof(p->id), "%s", ev->ep_id);
    snprintf(p->name, sizeof(p->name), "%s", ev->ep_name);
    post(r, r->registry, type, p, ev->token);
    return true;
}

static void events_start(ztm_hub_relay_t *r, ztm_grpc_conn_t *c, ztm_h2_session_t *h, int32_t id,
                         const ztm_identity_t *who)
{
    events_t *ev = calloc(1, sizeof(*ev));
    if (!ev) {
        answer_grpc(h, id, ZTM_GRPC_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    ev->s = (rstream_t){{&r->route}, RS_EVENTS, r, c, h, id};
    ev->token = ++r->next_token;
    snprintf(ev->ep_id, sizeof(ev->ep_id), "%s", who->id);
    snprintf(ev->ep_name, sizeof(ev->ep_name), "%s", who->name);
    ev->node.hash = htab_hash_u64(ev->token);
    if (htab_insert(&r->events, &ev->node) < 0 || !events_tell(ev, HUB_MSG_REG)) {
        htab_remove(&r->events, &ev->node);
        free(ev);
        answer_grpc(h, id, ZTM_GRPC_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    ev->registered = true;
    stream_own(&ev->s);
    ztm_h2_respond(h, id, 200, &CT, 1, ZTM_H2_BODY | ZTM_H2_TRAILERS);
    ztm_log(ZTM_LOG_INFO, "relay.events_open", "endpoint=%s id=%s link=%llu", who->name, who->id,
            (unsigned long long)ztm_link_id(ztm_grpc_conn_link(c)));
}

/* The Hello, once presence has a version. */
static void events_hello(ztm_hub_relay_t *r, events_t *ev, uint64_t version)
{
    Ztm__V1__Hello hello = ZTM__V1__HELLO__INIT;
    hello.endpoint_id = ev->ep_id;
    hello.endpoint_name = ev->ep_name;
    hello.hub_name = r->hub_name;
    hello.version = version;
    Ztm__V1__Event e = ZTM__V1__EVENT__INIT;
    e.kind_case = ZTM__V1__EVENT__KIND_HELLO;
    e.hello = &hello;
    size_t len;
    uint8_t *msg = frame_event(&e, &len);
    if (!msg) {
        events_finish(ev, ZTM_GRPC_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    /* Hello goes before anything queued: it is the one in progress. */
    free(ev->cur);
    ev->cur = msg;
    ev->cur_len = len;
    ev->cur_off = 0;
    ev->hello_sent = true;
    ztm_h2_resume(ev->s.h, ev->s.id);
    mark_dirty(&ev->s);
}

/* EV no longer stands for its endpoint: gone from the registry (opens to
 * it get 404) and from presence. */
static void events_leave(events_t *ev, const char *why)
{
    if (!ev->registered)
        return;
    ev->registered = false;
    if (!events_tell(ev, HUB_MSG_UNREG))
        ztm_log(ZTM_LOG_ERROR, "relay.presence", "endpoint=%s error=\"out of memory\"",
                ev->ep_name);
    ztm_log(ZTM_LOG_INFO, "relay.events_close", "endpoint=%s id=%s reason=%s", ev->ep_name,
            ev->ep_id, why);
}

static void events_close(events_t *ev)
{
    ztm_hub_relay_t *r = ev->s.r;
    events_leave(ev, "closed");
    htab_remove(&r->events, &ev->node);
    stream_disown(&ev->s);
    events_free(ev);
}

static void on_hello(ztm_hub_relay_t *r, hubmsg_t *p)
{
    events_t *ev = events_find(r, p->token);
    if (ev && !ev->finished)
        events_hello(r, ev, p->version);
    free(p);
}

static void on_replaced(ztm_hub_relay_t *r, uint64_t token)
{
    events_t *ev = events_find(r, token);
    if (!ev || !ev->registered)
        return;
    ev->registered = false; /* the new stream stands for the endpoint now */
    events_finish(ev, ZTM_GRPC_ALREADY_EXISTS,
                  "another Events stream of this endpoint replaced this one");
    ztm_log(ZTM_LOG_INFO, "relay.events_replaced", "endpoint=%s id=%s", ev->ep_name, ev->ep_id);
}

/* A session opened on worker P->worker to an endpoint whose Events stream
 * is here: Incoming on it, or NOTFOUND back if it went meanwhile. */
static void on_incoming(ztm_hub_relay_t *r, hubmsg_t *p)
{
    events_t *ev = events_find(r, p->token);
    if (!ev || !ev->registered || ev->finished) {
        post(r, p->worker, HUB_MSG_NOTFOUND, p, p->sid);
        return;
    }
    Ztm__V1__Incoming in = ZTM__V1__INCOMING__INIT;
    in.session_id = p->sid;
    in.from_endpoint_id = p->id;
    in.from_name = p->name;
    Ztm__V1__Event e = ZTM__V1__EVENT__INIT;
    e.kind_case = ZTM__V1__EVENT__KIND_INCOMING;
    e.incoming = &in;
    size_t len;
    uint8_t *msg = frame_event(&e, &len);
    if (!msg) {
        post(r, p->worker, HUB_MSG_NOTFOUND, p, p->sid);
        return;
    }
    events_push(ev, msg, len, p->sid);
    free(p);
}

/* ---- sessions --------------------------------------------------------------------- */
static void session_log_end(session_t *s, const char *reason)
{
    ztm_log(ZTM_LOG_INFO, "relay.session_end",
            "session=%" PRIu64 " from=%s to=%s bytes_ab=0 bytes_ba=0 reason=%s error=0", s->id,
            s->from_name, s->to_name, reason);
}

static void session_free(session_t *s)
{
    ztm_hub_relay_t *r = s->r;
    htab_remove(&r->waiting, &s->node);
    ztm_timer_cancel(ztm_worker_timers(r->w), &s->timer);
    if (s->a)
        s->a->sess = NULL;
    free(s);
}

static session_t *session_find(ztm_hub_relay_t *r, uint64_t id)
{
    for (hnode_t *n = htab_first(&r->waiting, htab_hash_u64(id)); n; n = n->next) {
        session_t *s = (session_t *)((char *)n - offsetof(session_t, node));
        if (s->id == id)
            return s;
    }
    return NULL;
}

/* Ends a session nobody accepted: STATUS to the opener, whose bytes are
 * dropped (their window credit returned). REASON NULL: not logged (the
 * open was refused before it was offered to anyone). */
static void session_refuse(session_t *s, int status, const char *reason, const char *msg)
{
    side_t *a = s->a;
    if (reason)
        session_log_end(s, reason);
    ztm_xs_half_drop(a->h);
    ztm_h2_header_t e = {"ztm-error", 9, msg, strlen(msg)};
    ztm_h2_respond(a->s.h, a->s.id, status, &e, 1, 0);
    mark_dirty(&a->s);
    session_free(s);
}

/* The accept deadline. */
static void on_session_timer(ztm_timer_t *t)
{
    session_t *s = (session_t *)((char *)t - offsetof(session_t, timer));
    char msg[160];
    snprintf(msg, sizeof(msg), "endpoint %s did not accept the session within %.3g s", s->to_name,
             (double)s->r->accept_ns / ZTM_NS_PER_SEC);
    session_refuse(s, 504, "timeout", msg);
}

static bool identity_ok(const ztm_hub_relay_t *r, const ztm_identity_t *who)
{
    return who && (who->role == ZTM_ROLE_AGENT || who->role == ZTM_ROLE_GATEWAY) &&
           strcmp(who->mesh, r->mesh) == 0;
}

static side_t *side_new(ztm_hub_relay_t *r, ztm_grpc_conn_t *c, ztm_h2_session_t *h, int32_t id,
                        int dir)
{
    side_t *x = calloc(1, sizeof(*x));
    if (!x)
        return NULL;
    x->s = (rstream_t){{&r->route}, RS_SIDE, r, c, h, id};
    if (!(x->h = ztm_xs_half_new(r->xs, x, dir))) {
        free(x);
        return NULL;
    }
    return x;
}

/* A side that never became a session's (out of memory on the way). */
static void side_discard(side_t *x)
{
    ztm_xs_half_close(x->h, 0);
    free(x);
}

static void session_open(ztm_hub_relay_t *r, ztm_grpc_conn_t *c, ztm_h2_session_t *h, int32_t id,
                         const ztm_h2_msg_t *req, const ztm_identity_t *who)
{
    const ztm_h2_header_t *peer = find_header(req, "ztm-peer");
    if (!peer || !ztm_name_valid(peer->value)) {
        answer_http(h, id, 400, "header ztm-peer: expected the name of an endpoint");
        return;
    }
    if (r->draining) {
        answer_http(h, id, 503, "the hub is shutting down");
        return;
    }
    session_t *s = calloc(1, sizeof(*s));
    side_t *a = s ? side_new(r, c, h, id, 0) : NULL;
    hubmsg_t *p = a ? msg_new() : NULL;
    if (!p) {
        if (a)
            side_discard(a);
        free(s);
        answer_http(h, id, 500, "out of memory");
        return;
    }
    s->r = r;
    do {
        if (RAND_bytes((uint8_t *)&s->id, sizeof(s->id)) != 1)
            abort(); /* BoringSSL's RNG does not fail */
        s->id = (s->id & ~SID_WORKER_MASK) | r->self;
    } while ((s->id >> 8) == 0 || session_find(r, s->id));
    s->node.hash = htab_hash_u64(s->id);
    if (htab_insert(&r->waiting, &s->node) < 0) {
        free(p);
        side_discard(a);
        free(s);
        answer_http(h, id, 500, "out of memory");
        return;
    }
    s->a = a;
    a->sess = s;
    snprintf(s->from_id, sizeof(s->from_id), "%s", who->id);
    snprintf(s->from_name, sizeof(s->from_name), "%s", who->name);
    snprintf(s->to_name, sizeof(s->to_name), "%s", peer->value);
    ztm_timer_init(&s->timer, on_session_timer);
    ztm_timer_arm(ztm_worker_timers(r->w), &s->timer, ztm_worker_now(r->w) + r->accept_ns);
    stream_own(&a->s);
    if (req->end_stream)
        ztm_xs_half_eof(a->h);
    /* Where is the peer? */
    p->sid = s->id;
    p->worker = r->self;
    snprintf(p->name, sizeof(p->name), "%s", peer->value);
    post(r, r->registry, HUB_MSG_FIND, p, s->id);
}

/* The registry knows the peer: offer it the session. */
static void on_found(ztm_hub_relay_t *r, hubmsg_t *p)
{
    session_t *s = session_find(r, p->sid);
    if (!s || s->found) {
        free(p); /* the opener went meanwhile */
        return;
    }
    s->found = true;
    snprintf(s->to_id, sizeof(s->to_id), "%s", p->id);
    snprintf(s->to_name, sizeof(s->to_name), "%s", p->name);
    unsigned to = p->worker;
    p->worker = r->self;
    snprintf(p->id, sizeof(p->id), "%s", s->from_id);
    snprintf(p->name, sizeof(p->name), "%s", s->from_name);
    post(r, to, HUB_MSG_INCOMING, p, p->sid);
    ztm_log(ZTM_LOG_INFO, "relay.session_open", "from=%s to=%s session=%" PRIu64, s->from_name,
            s->to_name, s->id);
}

static void on_notfound(ztm_hub_relay_t *r, uint64_t sid)
{
    session_t *s = session_find(r, sid);
    if (!s)
        return;
    char msg[160];
    snprintf(msg, sizeof(msg), "endpoint %s is not connected to this hub", s->to_name);
    session_refuse(s, 404, s->found ? "not_connected" : NULL, msg);
}

static bool parse_u64(const char *v, uint64_t *out)
{
    if (!*v || strlen(v) > 20)
        return false;
    uint64_t n = 0;
    for (; *v; v++) {
        if (*v < '0' || *v > '9')
            return false;
        uint64_t d = (uint64_t)(*v - '0');
        if (n > (UINT64_MAX - d) / 10)
            return false;
        n = n * 10 + d;
    }
    *out = n;
    return true;
}

static void session_accept(ztm_hub_relay_t *r, ztm_grpc_conn_t *c, ztm_h2_session_t *h, int32_t id,
                           const ztm_h2_msg_t *req, const ztm_identity_t *who)
{
    const ztm_h2_header_t *hs = find_header(req, "ztm-session");
    uint64_t sid;
    if (!hs || !parse_u64(hs->value, &sid)) {
        answer_http(h, id, 400, "header ztm-session: expected a session ID (decimal)");
        return;
    }
    unsigned owner = (unsigned)(sid & SID_WORKER_MASK);
    if (owner == r->registry || owner >= r->workers) {
        answer_http(h, id, 404, "no session %" PRIu64 " is waiting for endpoint %s", sid,
                    who->name);
        return;
    }
    side_t *b = side_new(r, c, h, id, 1);
    hubmsg_t *p = b ? msg_new() : NULL;
    if (!p) {
        if (b)
            side_discard(b);
        answer_http(h, id, 500, "out of memory");
        return;
    }
    stream_own(&b->s);
    if (req->end_stream)
        ztm_xs_half_eof(b->h);
    /* The session's worker decides (here too: same path). */
    b->awaiting = true;
    ztm_xs_half_hold(b->h);
    p->sid = sid;
    p->worker = r->self;
    p->half = b->h;
    p->side = b;
    snprintf(p->id, sizeof(p->id), "%s", who->id);
    snprintf(p->name, sizeof(p->name), "%s", who->name);
    post(r, owner, HUB_MSG_ACCEPT, p, sid);
}

/* On the opener's worker: an accept of session P->sid by P->id, whose
 * stream is on worker P->worker. */
static void on_accept(ztm_hub_relay_t *r, hubmsg_t *p)
{
    session_t *s = session_find(r, p->sid);
    if (!s || !s->found || strcmp(s->to_id, p->id) != 0) {
        post(r, p->worker, HUB_MSG_REFUSED, p, p->sid);
        return;
    }
    side_t *a = s->a;
    ztm_xs_half_bind(a->h, p->worker, p->half, s->id, s->from_name, s->to_name);
    a->joined = true;
    r->joined++;
    answer_joined(a, s->id);
    ztm_log(ZTM_LOG_INFO, "relay.session_joined",
            "from=%s to=%s session=%" PRIu64 " held=%zu acceptor_worker=%u", s->from_name,
            s->to_name, s->id, ztm_xs_half_held(a->h), p->worker);
    unsigned to = p->worker;
    p->peer = a->h;
    post(r, to, HUB_MSG_JOINED, p, p->sid);
    session_free(s);
}

/* Back on the acceptor's worker: joined (P->peer is the opener's half on
 * the session's worker), or refused. */
static void on_accept_answer(ztm_hub_relay_t *r, hubmsg_t *p, bool joined)
{
    side_t *b = p->side;
    b->awaiting = false;
    if (joined) {
        ztm_xs_half_bind(b->h, (unsigned)(p->sid & SID_WORKER_MASK), p->peer, 0, NULL, NULL);
        if (!b->gone) {
            b->joined = true;
            r->joined++;
            answer_joined(b, p->sid);
        }
    } else if (!b->gone) {
        answer_http(b->s.h, b->s.id, 404, "no session %" PRIu64 " is waiting for endpoint %s",
                    p->sid, p->name);
        ztm_xs_half_drop(b->h);
        mark_dirty(&b->s);
    }
    ztm_xs_half_unhold(b->h);
    if (b->gone)
        free(b);
    free(p);
}

static void side_close(side_t *x, uint32_t code)
{
    ztm_hub_relay_t *r = x->s.r;
    session_t *s = x->sess;
    if (s) { /* the opener went before an accept */
        session_log_end(s, code ? "opener_reset" : "opener_gone");
        s->a = NULL;
        session_free(s);
    }
    if (x->joined)
        r->joined--;
    ztm_xs_half_close(x->h, code);
    stream_disown(&x->s);
    if (x->awaiting)
        x->gone = true; /* the answer frees it */
    else
        free(x);
}

/* ---- the splice's needs ------------------------------------------------------------ */
static void xs_readable(void *arg, void *side)
{
    side_t *x = side;
    ztm_h2_resume(x->s.h, x->s.id);
    mark_dirty(&x->s);
}

static void xs_reset(void *arg, void *side)
{
    side_t *x = side;
    x->reset_pending = true;
    mark_dirty(&x->s);
}

static void xs_consumed(void *arg, void *side, size_t n)
{
    side_t *x = side;
    ztm_h2_consume(x->s.h, x->s.id, n);
    mark_dirty(&x->s);
}

static void xs_end(void *arg, const ztm_xs_end_t *e)
{
    ztm_log(ZTM_LOG_INFO, "relay.session_end",
            "session=%" PRIu64 " from=%s to=%s bytes_ab=%" PRIu64 " bytes_ba=%" PRIu64
            " reason=%s error=%u",
            e->id, e->from, e->to, e->bytes_ab, e->bytes_ba, e->reason, e->error);
}

/* ---- route callbacks -------------------------------------------------------------- */
static void on_request(void *arg, ztm_grpc_conn_t *c, ztm_h2_session_t *h, int32_t id,
                       const ztm_h2_msg_t *req)
{
    ztm_hub_relay_t *r = arg;
    const char *path = req->path ? req->path : "";
    const ztm_identity_t *who = ztm_grpc_conn_identity(c);
    bool is_post = req->method && strcmp(req->method, "POST") == 0;
    if (strncmp(path, "/ztm.v1.Relay/", 14) == 0) {
        if (!is_post) {
            ztm_h2_header_t allow = {"allow", 5, "POST", 4};
            ztm_h2_respond(h, id, 405, &allow, 1, 0);
            return;
        }
        const ztm_h2_header_t *ct = find_header(req, "content-type");
        if (!ct || !ztm_grpc_content_type_ok(ct->value, ct->value_len)) {
            ztm_h2_respond(h, id, 415, NULL, 0, 0);
            return;
        }
        if (strcmp(path, EVENTS_PATH) != 0) {
            char msg[160];
            snprintf(msg, sizeof(msg), "unknown method %.120s", path);
            answer_grpc(h, id, ZTM_GRPC_UNIMPLEMENTED, msg);
            return;
        }
        if (!identity_ok(r, who)) {
            answer_grpc(h, id, ZTM_GRPC_PERMISSION_DENIED,
                        "only agents and gateways of this mesh may use the relay");
            return;
        }
        if (r->draining) {
            answer_grpc(h, id, ZTM_GRPC_UNAVAILABLE, "the hub is shutting down");
            return;
        }
        events_start(r, c, h, id, who);
        return;
    }
    bool open = strcmp(path, OPEN_PATH) == 0, accept = strcmp(path, ACCEPT_PATH) == 0;
    if (!open && !accept) {
        answer_http(h, id, 404, "no such relay path");
        return;
    }
    if (!is_post) {
        ztm_h2_header_t allow = {"allow", 5, "POST", 4};
        ztm_h2_respond(h, id, 405, &allow, 1, 0);
        return;
    }
    if (!identity_ok(r, who)) {
        answer_http(h, id, 403, "only agents and gateways of this mesh may use the relay");
        return;
    }
    if (open)
        session_open(r, c, h, id, req, who);
    else
        session_accept(r, c, h, id, req, who);
}

static void on_data(void *arg, ztm_h2_session_t *h, int32_t id, void *sdata, const uint8_t *data,
                    size_t len)
{
    rstream_t *rs = sdata;
    if (rs->kind == RS_EVENTS) {
        ztm_h2_consume(h, id, len); /* the request (agent_version) is not used */
        return;
    }
    side_t *x = (side_t *)rs;
    int e = ztm_xs_half_data(x->h, data, len);
    if (e < 0) {
        /* More than the window we announced: the peer broke flow control,
         * or the server's window is not the one we were told. */
        ztm_log(ZTM_LOG_WARN, "relay.overflow", "held=%zu len=%zu error=\"%s\"",
                ztm_xs_half_held(x->h), len, strerror(-e));
        ztm_h2_consume(h, id, len);
        ztm_h2_reset(h, id, ZTM_H2_INTERNAL_ERROR);
    }
}

static void on_end_stream(void *arg, ztm_h2_session_t *h, int32_t id, void *sdata)
{
    rstream_t *rs = sdata;
    if (rs->kind == RS_SIDE)
        ztm_xs_half_eof(((side_t *)rs)->h);
}

static ssize_t read_body(void *arg, ztm_h2_session_t *h, int32_t id, void *sdata, uint8_t *dst,
                         size_t max, bool *eof)
{
    rstream_t *rs = sdata;
    if (rs->kind == RS_EVENTS)
        return events_read((events_t *)rs, dst, max, eof);
    return (ssize_t)ztm_xs_half_read(((side_t *)rs)->h, dst, max, eof);
}

static void on_stream_close(void *arg, ztm_h2_session_t *h, int32_t id, void *sdata,
                            uint32_t error_code)
{
    rstream_t *rs = sdata;
    if (rs->kind == RS_EVENTS)
        events_close((events_t *)rs);
    else
        side_close((side_t *)rs, error_code);
}

/* C is being closed for a revoked certificate: end its streams now rather
 * than when its link is gone (a peer that does not read keeps a closing
 * link for seconds), so that partners learn at once. */
static void on_conn_revoked(void *arg, ztm_grpc_conn_t *c)
{
    ztm_hub_relay_t *r = arg;
    for (rstream_t *s = r->all; s; s = s->anext) {
        if (s->c != c)
            continue;
        if (s->kind == RS_EVENTS) {
            events_t *ev = (events_t *)s;
            events_leave(ev, "revoked");
            events_finish(ev, ZTM_GRPC_UNAUTHENTICATED, "certificate revoked");
        } else {
            ((side_t *)s)->reset_pending = true;
            mark_dirty(s);
        }
    }
}

/* ---- the relay ---------------------------------------------------------------------- */
int ztm_hub_relay_new(ztm_worker_t *w, ztm_grpc_server_t *srv, const ztm_hub_relay_config_t *cfg,
                      ztm_hub_relay_t **out)
{
    ztm_hub_relay_t *r = calloc(1, sizeof(*r));
    if (!r)
        return -ENOMEM;
    r->w = w;
    r->self = (unsigned)ztm_worker_id(w);
    r->workers = ztm_engine_workers(ztm_worker_engine(w));
    r->srv = srv;
    r->ob = cfg->ob;
    r->registry = cfg->registry;
    r->hub_name = strdup(cfg->hub_name ? cfg->hub_name : "");
    r->mesh = strdup(cfg->mesh ? cfg->mesh : "");
    r->accept_ns = cfg->accept_timeout_ns ? cfg->accept_timeout_ns : DEFAULT_ACCEPT_NS;
    r->window = cfg->stream_window ? cfg->stream_window : DEFAULT_WINDOW;
    ztm_xs_ops_t ops = {.on_readable = xs_readable, .on_reset = xs_reset,
                        .on_consumed = xs_consumed, .on_end = xs_end, .arg = r};
    int e = r->self > SID_WORKER_MASK ? -EINVAL : 0; /* session IDs name the worker */
    if (e == 0 && (!r->hub_name || !r->mesh || ztm_xs_new(w, r->ob, r->window, &ops, &r->xs) < 0))
        e = -ENOMEM;
    if (e < 0) {
        ztm_hub_relay_free(r);
        return e;
    }
    r->route = (ztm_grpc_route_t){
        .prefix = "/ztm.v1.Relay/",
        .on_request = on_request,
        .on_data = on_data,
        .on_end_stream = on_end_stream,
        .read_body = read_body,
        .on_stream_close = on_stream_close,
        .on_conn_revoked = on_conn_revoked,
        .arg = r,
    };
    e = ztm_grpc_server_add_route(srv, &r->route);
    ztm_grpc_route_t rt = r->route;
    rt.prefix = "/ztm.relay/";
    if (e == 0)
        e = ztm_grpc_server_add_route(srv, &rt);
    if (e < 0) {
        ztm_hub_relay_free(r);
        return e;
    }
    *out = r;
    return 0;
}

void ztm_hub_relay_free(ztm_hub_relay_t *r)
{
    if (!r)
        return;
    ztm_xs_free(r->xs);
    htab_free(&r->events);
    htab_free(&r->waiting);
    free(r->hub_name);
    free(r->mesh);
    free(r);
}

bool ztm_hub_relay_message(ztm_hub_relay_t *r, const ztm_msg_t *m)
{
    switch (m->type) {
    case HUB_MSG_HELLO:
        on_hello(r, m->ptr);
        return true;
    case HUB_MSG_REPLACED:
        on_replaced(r, m->u64);
        return true;
    case HUB_MSG_FOUND:
        on_found(r, m->ptr);
        return true;
    case HUB_MSG_NOTFOUND:
        free(m->ptr);
        on_notfound(r, m->u64);
        return true;
    case HUB_MSG_INCOMING:
        on_incoming(r, m->ptr);
        return true;
    case HUB_MSG_ACCEPT:
        on_accept(r, m->ptr);
        return true;
    case HUB_MSG_JOINED:
    case HUB_MSG_REFUSED:
        on_accept_answer(r, m->ptr, m->type == HUB_MSG_JOINED);
        return true;
    default:
        return ztm_xs_message(r->xs, m);
    }
}

void ztm_hub_relay_run(ztm_hub_relay_t *r)
{
    /* Kicking a connection flushes it, which may mark others (credit
     * returned, bytes taken) or close streams (unlinking them): take from
     * the head until the list is empty. */
    while (r->dirty_head) {
        rstream_t *s = r->dirty_head;
        unmark_dirty(s);
        ztm_grpc_conn_t *c = s->c;
        if (s->kind == RS_SIDE && ((side_t *)s)->reset_pending)
            ztm_h2_reset(s->h, s->id, ZTM_H2_CANCEL);
        ztm_grpc_conn_kick(c); /* S may be gone after this */
    }
    /* The streams' reads made credit: it goes now, with new bytes. */
    ztm_xs_run(r->xs);
}

void ztm_hub_relay_drain(ztm_hub_relay_t *r)
{
    r->draining = true;
    for (size_t i = 0; i < r->events.nb; i++) {
        for (hnode_t *n = r->events.b[i]; n; n = n->next) {
            events_t *ev = (events_t *)((char *)n - offsetof(events_t, node));
            events_finish(ev, ZTM_GRPC_UNAVAILABLE, "the hub is shutting down");
        }
    }
    while (r->waiting.n) {
        for (size_t i = 0; i < r->waiting.nb; i++) {
            hnode_t *n = r->waiting.b[i];
            if (n) {
                session_t *s = (session_t *)((char *)n - offsetof(session_t, node));
                session_refuse(s, 503, "hub_draining", "the hub is shutting down");
                break;
            }
        }
    }
    ztm_hub_relay_run(r);
}

bool ztm_hub_relay_idle(const ztm_hub_relay_t *r)
{
    return ztm_xs_halves(r->xs) == 0;
}

size_t ztm_hub_relay_endpoints(const ztm_hub_relay_t *r)
{
    return r->events.n;
}

size_t ztm_hub_relay_waiting(const ztm_hub_relay_t *r)
{
    return r->waiting.n;
}

size_t ztm_hub_relay_joined(const ztm_hub_relay_t *r)
{
    return r->joined;
}
