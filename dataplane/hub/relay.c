/* The hub's relay; see relay.h.
 *
 * Three kinds of stream data, each beginning with rstream_t (which begins
 * with the server's ztm_grpc_route_stream_t): an Events stream (events_t),
 * and the two sides of a session (side_t). A session (session_t) holds, per
 * direction, the bytes received from one side and not yet sent to the
 * other: a ring that grows on demand up to one stream window, never past
 * it, since those bytes are consumed (their credit returned) only when
 * the other side's read_body takes them.
 *
 * A session's life: WAITING (the opener's stream held, Incoming pushed to
 * the target, a timer running), then JOINED (both answered 200, spliced) or
 * ENDED (504, or the hub draining). It is freed when neither stream is left. */
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
#include "dataplane/runtime/log.h"
#include "ztm/v1/relay.pb-c.h"

#define EVENTS_PATH       "/ztm.v1.Relay/Events"
#define OPEN_PATH         "/ztm.relay/open"
#define ACCEPT_PATH       "/ztm.relay/accept"
#define EVQ_MAX           8           /* Incoming messages queued per Events stream */
#define BUF_MIN           (16u << 10) /* a direction's first allocation */
#define DEFAULT_WINDOW    (1u << 20)  /* dataplane/h2's default stream window */
#define DEFAULT_ACCEPT_NS (10 * ZTM_NS_PER_SEC)
#define TRIM_NS           ZTM_NS_PER_SEC /* an empty large buffer is freed after this */

/* ---- a small intrusive hash table ---------------------------------------- */
typedef struct hnode {
    struct hnode *next;
    uint64_t hash;
} hnode_t;

typedef struct {
    hnode_t **b;
    size_t nb, n;
} htab_t;

static int htab_insert(htab_t *t, hnode_t *n)
{
    if (t->n >= t->nb) {
        size_t nb = t->nb ? t->nb * 2 : 64;
        hnode_t **b = calloc(nb, sizeof(*b));
        if (!b)
            return -ENOMEM;
        for (size_t i = 0; i < t->nb; i++) {
            for (hnode_t *e = t->b[i], *next; e; e = next) {
                next = e->next;
                e->next = b[e->hash & (nb - 1)];
                b[e->hash & (nb - 1)] = e;
            }
        }
        free(t->b);
        t->b = b;
        t->nb = nb;
    }
    hnode_t **head = &t->b[n->hash & (t->nb - 1)];
    n->next = *head;
    *head = n;
    t->n++;
    return 0;
}

static void htab_remove(htab_t *t, hnode_t *n)
{
    if (!t->nb)
        return;
    for (hnode_t **p = &t->b[n->hash & (t->nb - 1)]; *p; p = &(*p)->next) {
        if (*p == n) {
            *p = n->next;
            n->next = NULL;
            t->n--;
            return;
        }
    }
}

static hnode_t *htab_first(const htab_t *t, uint64_t hash)
{
    return t->nb ? t->b[hash & (t->nb - 1)] : NULL;
}

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

/* ---- a byte ring, bounded -------------------------------------------------- */
typedef struct {
    uint8_t *p;
    size_t cap, head, len;
} ring_t;

/* Appends LEN bytes; grows up to MAX. -ENOBUFS past MAX, -ENOMEM. */
static int ring_put(ring_t *r, const uint8_t *d, size_t len, size_t max)
{
    if (len == 0)
        return 0;
    if (r->len + len > max)
        return -ENOBUFS;
    if (r->len + len > r->cap) {
        size_t cap = r->cap ? r->cap : BUF_MIN;
        while (cap < r->len + len)
            cap *= 2;
        if (cap > max)
            cap = max;
        uint8_t *p = malloc(cap);
        if (!p)
            return -ENOMEM;
        size_t first = r->cap - r->head < r->len ? r->cap - r->head : r->len;
        if (r->len) {
            memcpy(p, r->p + r->head, first);
            memcpy(p + first, r->p, r->len - first);
        }
        free(r->p);
        r->p = p;
        r->cap = cap;
        r->head = 0;
    }
    size_t tail = (r->head + r->len) % r->cap;
    size_t first = r->cap - tail < len ? r->cap - tail : len;
    memcpy(r->p + tail, d, first);
    memcpy(r->p, d + first, len - first);
    r->len += len;
    return 0;
}

static size_t ring_get(ring_t *r, uint8_t *dst, size_t max)
{
    size_t n = r->len < max ? r->len : max;
    if (n == 0)
        return 0;
    size_t first = r->cap - r->head < n ? r->cap - r->head : n;
    memcpy(dst, r->p + r->head, first);
    memcpy(dst + first, r->p, n - first);
    r->head = r->len == n ? 0 : (r->head + n) % r->cap;
    r->len -= n;
    return n;
}

static void ring_free(ring_t *r)
{
    free(r->p);
    *r = (ring_t){0};
}

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
    hnode_t node; /* in r->endpoints (by name) while it is the endpoint's current stream */
    bool registered;
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

typedef enum { SESS_WAITING, SESS_JOINED, SESS_ENDED } sess_state_t;

typedef struct side side_t;
typedef struct {
    ztm_hub_relay_t *r;
    hnode_t node; /* in r->waiting while WAITING */
    uint64_t id;
    sess_state_t state;
    side_t *side[2];   /* 0: the opener, 1: the acceptor; NULL once its stream closed */
    ring_t buf[2];     /* bytes from side d waiting to go to the other side */
    bool eof[2];       /* side d ended its request body */
    uint64_t bytes[2]; /* bytes relayed from side d to the other */
    ztm_timer_t timer;
    bool logged_end;
    char from_id[ZTM_ID_MAX + 1], from_name[ZTM_NAME_MAX + 1];
    char to_id[ZTM_ID_MAX + 1], to_name[ZTM_NAME_MAX + 1];
} session_t;

struct side {
    rstream_t s;
    session_t *sess;
    int dir;
    bool reset_pending; /* the other side went: RST_STREAM(CANCEL) from run */
};

typedef struct {
    events_t *ev; /* came: its Hello waits for the version (NULL if it closed since) */
    char id[ZTM_ID_MAX + 1];
    char name[ZTM_NAME_MAX + 1];
    bool present;
} presence_t;

struct ztm_hub_relay {
    ztm_worker_t *w;
    ztm_grpc_server_t *srv;
    ztm_grpc_route_t route; /* what our streams' ztm_grpc_route_stream_t point at */
    char *hub_name, *mesh;
    uint64_t accept_ns;
    size_t window;
    uint64_t (*on_presence)(void *arg, const ztm_hub_presence_t *changes, size_t n);
    void *arg;
    htab_t endpoints; /* name -> events_t */
    htab_t waiting;   /* session id -> session_t (WAITING) */
    size_t joined;
    rstream_t *dirty_head, *dirty_tail;
    rstream_t *all;
    presence_t *pq; /* presence changes of this turn */
    size_t pq_n, pq_cap;
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

static int presence_push(ztm_hub_relay_t *r, events_t *ev, const char *id, const char *name,
                         bool present)
{
    if (r->pq_n == r->pq_cap) {
        size_t cap = r->pq_cap ? r->pq_cap * 2 : 16;
        presence_t *pq = realloc(r->pq, cap * sizeof(*pq));
        if (!pq)
            return -ENOMEM;
        r->pq = pq;
        r->pq_cap = cap;
    }
    presence_t *p = &r->pq[r->pq_n++];
    p->ev = ev;
    snprintf(p->id, sizeof(p->id), "%s", id);
    snprintf(p->name, sizeof(p->name), "%s", name);
    p->present = present;
    return 0;
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
    mark_dirty(&ev->s);
}

static void events_unregister(events_t *ev)
{
    if (!ev->registered)
        return;
    htab_remove(&ev->s.r->endpoints, &ev->node);
    ev->registered = false;
}

static events_t *endpoint_find(ztm_hub_relay_t *r, const char *name)
{
    uint64_t hash = hash_str(name);
    for (hnode_t *n = htab_first(&r->endpoints, hash); n; n = n->next) {
        events_t *ev = (events_t *)((char *)n - offsetof(events_t, node));
        if (n->hash == hash && strcmp(ev->ep_name, name) == 0)
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

static void events_start(ztm_hub_relay_t *r, ztm_grpc_conn_t *c, ztm_h2_session_t *h, int32_t id,
                         const ztm_identity_t *who)
{
    events_t *ev = calloc(1, sizeof(*ev));
    if (!ev || presence_push(r, ev, who->id, who->name, true) < 0) {
        free(ev);
        answer_grpc(h, id, ZTM_GRPC_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    ev->s = (rstream_t){{&r->route}, RS_EVENTS, r, c, h, id};
    snprintf(ev->ep_id, sizeof(ev->ep_id), "%s", who->id);
    snprintf(ev->ep_name, sizeof(ev->ep_name), "%s", who->name);
    events_t *old = endpoint_find(r, who->name);
    ev->node.hash = hash_str(who->name);
    if (htab_insert(&r->endpoints, &ev->node) < 0) {
        r->pq_n--;
        free(ev);
        answer_grpc(h, id, ZTM_GRPC_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    ev->registered = true;
    if (old) {
        events_unregister(old);
        events_finish(old, ZTM_GRPC_ALREADY_EXISTS,
                      "another Events stream of this endpoint replaced this one");
        ztm_log(ZTM_LOG_INFO, "relay.events_replaced", "endpoint=%s id=%s", who->name, who->id);
    }
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
    ztm_hub_relay_t *r = ev->s.r;
    if (!ev->registered)
        return;
    events_unregister(ev);
    if (presence_push(r, NULL, ev->ep_id, ev->ep_name, false) < 0)
        ztm_log(ZTM_LOG_ERROR, "relay.presence", "endpoint=%s error=\"out of memory\"",
                ev->ep_name);
    ztm_log(ZTM_LOG_INFO, "relay.events_close", "endpoint=%s id=%s reason=%s", ev->ep_name,
            ev->ep_id, why);
}

static void events_close(events_t *ev)
{
    ztm_hub_relay_t *r = ev->s.r;
    for (size_t i = 0; i < r->pq_n; i++)
        if (r->pq[i].ev == ev)
            r->pq[i].ev = NULL;
    events_leave(ev, "closed");
    stream_disown(&ev->s);
    events_free(ev);
}

/* ---- sessions --------------------------------------------------------------------- */
static const char *dir_name(int d)
{
    return d == 0 ? "opener" : "acceptor";
}

static void session_log_end(session_t *s, const char *reason, uint32_t code)
{
    if (s->logged_end)
        return;
    s->logged_end = true;
    ztm_log(ZTM_LOG_INFO, "relay.session_end",
            "session=%" PRIu64 " from=%s to=%s bytes_ab=%" PRIu64 " bytes_ba=%" PRIu64
            " reason=%s error=%u",
            s->id, s->from_name, s->to_name, s->bytes[0], s->bytes[1], reason, code);
}

static void session_unwait(session_t *s)
{
    ztm_hub_relay_t *r = s->r;
    if (s->state == SESS_WAITING)
        htab_remove(&r->waiting, &s->node);
    ztm_timer_cancel(ztm_worker_timers(r->w), &s->timer);
}

static void session_free(session_t *s)
{
    session_unwait(s);
    if (s->state == SESS_JOINED)
        s->r->joined--;
    ring_free(&s->buf[0]);
    ring_free(&s->buf[1]);
    free(s);
}

static session_t *session_find(ztm_hub_relay_t *r, uint64_t id)
{
    for (hnode_t *n = htab_first(&r->waiting, id); n; n = n->next) {
        session_t *s = (session_t *)((char *)n - offsetof(session_t, node));
        if (s->id == id)
            return s;
    }
    return NULL;
}

/* Ends a session nobody accepted: STATUS to the opener, whose bytes are
 * dropped (their window credit returned). */
static void session_refuse(session_t *s, int status, const char *reason, const char *msg)
{
    side_t *a = s->side[0];
    session_unwait(s);
    s->state = SESS_ENDED;
    session_log_end(s, reason, 0);
    if (!a)
        return;
    if (s->buf[0].len)
        ztm_h2_consume(a->s.h, a->s.id, s->buf[0].len);
    ring_free(&s->buf[0]);
    ztm_h2_header_t e = {"ztm-error", 9, msg, strlen(msg)};
    ztm_h2_respond(a->s.h, a->s.id, status, &e, 1, 0);
    mark_dirty(&a->s);
}

/* The session's timer: the accept deadline while WAITING, then the trim
 * of buffers that went empty. */
static void on_session_timer(ztm_timer_t *t)
{
    session_t *s = (session_t *)((char *)t - offsetof(session_t, timer));
    if (s->state != SESS_WAITING) {
        for (int d = 0; d < 2; d++)
            if (s->buf[d].len == 0)
                ring_free(&s->buf[d]);
        return;
    }
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
                        session_t *s, int dir)
{
    side_t *x = calloc(1, sizeof(*x));
    if (!x)
        return NULL;
    x->s = (rstream_t){{&r->route}, RS_SIDE, r, c, h, id};
    x->sess = s;
    x->dir = dir;
    return x;
}

static void session_open(ztm_hub_relay_t *r, ztm_grpc_conn_t *c, ztm_h2_session_t *h, int32_t id,
                         const ztm_h2_msg_t *req, const ztm_identity_t *who)
{
    const ztm_h2_header_t *peer = find_header(req, "ztm-peer");
    if (!peer || !ztm_name_valid(peer->value)) {
        answer_http(h, id, 400, "header ztm-peer: expected the name of an endpoint");
        return;
    }
    events_t *target = endpoint_find(r, peer->value);
    if (!target) {
        answer_http(h, id, 404, "endpoint %s is not connected to this hub", peer->value);
        return;
    }
    if (r->draining) {
        answer_http(h, id, 503, "the hub is shutting down");
        return;
    }
    session_t *s = calloc(1, sizeof(*s));
    side_t *a = s ? side_new(r, c, h, id, s, 0) : NULL;
    if (!a) {
        free(s);
        answer_http(h, id, 500, "out of memory");
        return;
    }
    s->r = r;
    do {
        if (RAND_bytes((uint8_t *)&s->id, sizeof(s->id)) != 1)
            abort(); /* BoringSSL's RNG does not fail */
    } while (s->id == 0 || session_find(r, s->id));
    s->node.hash = s->id;
    if (htab_insert(&r->waiting, &s->node) < 0) {
        free(a);
        free(s);
        answer_http(h, id, 500, "out of memory");
        return;
    }
    s->state = SESS_WAITING;
    s->side[0] = a;
    s->eof[0] = req->end_stream;
    snprintf(s->from_id, sizeof(s->from_id), "%s", who->id);
    snprintf(s->from_name, sizeof(s->from_name), "%s", who->name);
    snprintf(s->to_id, sizeof(s->to_id), "%s", target->ep_id);
    snprintf(s->to_name, sizeof(s->to_name), "%s", target->ep_name);
    ztm_timer_init(&s->timer, on_session_timer);
    ztm_timer_arm(ztm_worker_timers(r->w), &s->timer, ztm_worker_now(r->w) + r->accept_ns);
    stream_own(&a->s);

    Ztm__V1__Incoming in = ZTM__V1__INCOMING__INIT;
    in.session_id = s->id;
    in.from_endpoint_id = s->from_id;
    in.from_name = s->from_name;
    Ztm__V1__Event e = ZTM__V1__EVENT__INIT;
    e.kind_case = ZTM__V1__EVENT__KIND_INCOMING;
    e.incoming = &in;
    size_t len;
    uint8_t *msg = frame_event(&e, &len);
    if (!msg) {
        session_refuse(s, 500, "out_of_memory", "out of memory");
        return;
    }
    events_push(target, msg, len, s->id);
    ztm_log(ZTM_LOG_INFO, "relay.session_open", "from=%s to=%s session=%" PRIu64, s->from_name,
            s->to_name, s->id);
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
    session_t *s = session_find(r, sid);
    if (!s || strcmp(s->to_id, who->id) != 0 || !s->side[0]) {
        answer_http(h, id, 404, "no session %" PRIu64 " is waiting for endpoint %s", sid,
                    who->name);
        return;
    }
    side_t *b = side_new(r, c, h, id, s, 1);
    if (!b) {
        answer_http(h, id, 500, "out of memory");
        return;
    }
    session_unwait(s);
    s->state = SESS_JOINED;
    r->joined++;
    s->side[1] = b;
    s->eof[1] = req->end_stream;
    stream_own(&b->s);
    char sid_s[24];
    snprintf(sid_s, sizeof(sid_s), "%" PRIu64, s->id);
    ztm_h2_header_t hd = {"ztm-session", 11, sid_s, strlen(sid_s)};
    side_t *a = s->side[0];
    ztm_h2_respond(a->s.h, a->s.id, 200, &hd, 1, ZTM_H2_BODY);
    ztm_h2_respond(h, id, 200, &hd, 1, ZTM_H2_BODY);
    mark_dirty(&a->s);
    ztm_log(ZTM_LOG_INFO, "relay.session_joined", "from=%s to=%s session=%" PRIu64 " held=%zu",
            s->from_name, s->to_name, s->id, s->buf[0].len);
}

/* Side X's request body bytes: held for the other side. */
static void side_data(side_t *x, const uint8_t *data, size_t len)
{
    session_t *s = x->sess;
    int d = x->dir;
    side_t *y = s->side[1 - d];
    bool keep = s->state == SESS_WAITING || (s->state == SESS_JOINED && y && !y->reset_pending);
    if (!keep) {
        ztm_h2_consume(x->s.h, x->s.id, len); /* nobody will take them */
        return;
    }
    int e = ring_put(&s->buf[d], data, len, x->s.r->window);
    if (e < 0) {
        /* More than the window we announced: the peer broke flow control,
         * or the server's window is not the one we were told. */
        ztm_log(ZTM_LOG_WARN, "relay.overflow", "session=%" PRIu64 " side=%s held=%zu error=\"%s\"",
                s->id, dir_name(d), s->buf[d].len, strerror(-e));
        ztm_h2_consume(x->s.h, x->s.id, len);
        ztm_h2_reset(x->s.h, x->s.id, ZTM_H2_INTERNAL_ERROR);
        return;
    }
    if (s->state == SESS_JOINED) {
        ztm_h2_resume(y->s.h, y->s.id);
        mark_dirty(&y->s);
    }
}

static void side_end_stream(side_t *x)
{
    session_t *s = x->sess;
    int d = x->dir;
    s->eof[d] = true;
    side_t *y = s->side[1 - d];
    if (s->state == SESS_JOINED && y) {
        ztm_h2_resume(y->s.h, y->s.id);
        mark_dirty(&y->s);
    }
}

/* Y's response body: the other side's bytes. Consumed on the source only
 * now that they leave the hub: its sender gets the credit back. */
static ssize_t side_read(side_t *y, uint8_t *dst, size_t max, bool *eof)
{
    session_t *s = y->sess;
    int d = 1 - y->dir;
    size_t n = ring_get(&s->buf[d], dst, max);
    if (n) {
        s->bytes[d] += n;
        side_t *x = s->side[d];
        if (x) {
            ztm_h2_consume(x->s.h, x->s.id, n);
            mark_dirty(&x->s);
        }
    }
    *eof = s->eof[d] && s->buf[d].len == 0;
    /* A session that goes quiet keeps no large buffer: trimmed a moment
     * later (not at once, which would reallocate all through a transfer
     * whose reader is faster than its writer). */
    if (s->buf[d].len == 0 && s->buf[d].cap > BUF_MIN && !ztm_timer_armed(&s->timer))
        ztm_timer_arm(ztm_worker_timers(s->r->w), &s->timer, ztm_worker_now(s->r->w) + TRIM_NS);
    return (ssize_t)n;
}

static void side_close(side_t *x, uint32_t code)
{
    session_t *s = x->sess;
    int d = x->dir;
    stream_disown(&x->s);
    s->side[d] = NULL;
    /* Bytes it sent that are still here: their credit goes back now (the
     * connection window needs it); in a clean end the other side still
     * gets them. */
    if (s->buf[d].len)
        ztm_h2_consume(x->s.h, x->s.id, s->buf[d].len);
    side_t *y = s->side[1 - d];
    switch (s->state) {
    case SESS_WAITING: /* the opener went before an accept */
        session_unwait(s);
        s->state = SESS_ENDED;
        session_log_end(s, code ? "opener_reset" : "opener_gone", code);
        break;
    case SESS_JOINED:
        if (code) {
            session_log_end(s, d == 0 ? "opener_reset" : "acceptor_reset", code);
            ring_free(&s->buf[d]);
            if (y) {
                y->reset_pending = true;
                mark_dirty(&y->s);
            }
        } else if (!y) {
            session_log_end(s, "done", 0);
        }
        break;
    case SESS_ENDED:
        break;
    }
    free(x);
    if (!s->side[0] && !s->side[1])
        session_free(s);
}

/* ---- route callbacks -------------------------------------------------------------- */
static void on_request(void *arg, ztm_grpc_conn_t *c, ztm_h2_session_t *h, int32_t id,
                       const ztm_h2_msg_t *req)
{
    ztm_hub_relay_t *r = arg;
    const char *path = req->path ? req->path : "";
    const ztm_identity_t *who = ztm_grpc_conn_identity(c);
    bool post = req->method && strcmp(req->method, "POST") == 0;
    if (strncmp(path, "/ztm.v1.Relay/", 14) == 0) {
        if (!post) {
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
    if (!post) {
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
    side_data((side_t *)rs, data, len);
}

static void on_end_stream(void *arg, ztm_h2_session_t *h, int32_t id, void *sdata)
{
    rstream_t *rs = sdata;
    if (rs->kind == RS_SIDE)
        side_end_stream((side_t *)rs);
}

static ssize_t read_body(void *arg, ztm_h2_session_t *h, int32_t id, void *sdata, uint8_t *dst,
                         size_t max, bool *eof)
{
    rstream_t *rs = sdata;
    if (rs->kind == RS_EVENTS)
        return events_read((events_t *)rs, dst, max, eof);
    return side_read((side_t *)rs, dst, max, eof);
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
    r->srv = srv;
    r->hub_name = strdup(cfg->hub_name ? cfg->hub_name : "");
    r->mesh = strdup(cfg->mesh ? cfg->mesh : "");
    r->accept_ns = cfg->accept_timeout_ns ? cfg->accept_timeout_ns : DEFAULT_ACCEPT_NS;
    r->window = cfg->stream_window ? cfg->stream_window : DEFAULT_WINDOW;
    r->on_presence = cfg->on_presence;
    r->arg = cfg->arg;
    if (!r->hub_name || !r->mesh) {
        ztm_hub_relay_free(r);
        return -ENOMEM;
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
    int e = ztm_grpc_server_add_route(srv, &r->route);
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
    free(r->endpoints.b);
    free(r->waiting.b);
    free(r->pq);
    free(r->hub_name);
    free(r->mesh);
    free(r);
}

void ztm_hub_relay_run(ztm_hub_relay_t *r)
{
    if (r->pq_n) {
        uint64_t version = 0;
        if (r->on_presence) {
            ztm_hub_presence_t ch[64];
            for (size_t i = 0; i < r->pq_n;) {
                size_t n = 0;
                for (; n < 64 && i + n < r->pq_n; n++)
                    ch[n] = (ztm_hub_presence_t){r->pq[i + n].id, r->pq[i + n].name,
                                                 r->pq[i + n].present};
                version = r->on_presence(r->arg, ch, n);
                i += n;
            }
        }
        for (size_t i = 0; i < r->pq_n; i++)
            if (r->pq[i].ev)
                events_hello(r, r->pq[i].ev, version);
        r->pq_n = 0;
    }
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
}

void ztm_hub_relay_drain(ztm_hub_relay_t *r)
{
    r->draining = true;
    for (size_t i = 0; i < r->endpoints.nb; i++) {
        for (hnode_t *n = r->endpoints.b[i]; n; n = n->next) {
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

size_t ztm_hub_relay_endpoints(const ztm_hub_relay_t *r)
{
    return r->endpoints.n;
}

size_t ztm_hub_relay_waiting(const ztm_hub_relay_t *r)
{
    return r->waiting.n;
}

size_t ztm_hub_relay_joined(const ztm_hub_relay_t *r)
{
    return r->joined;
}
