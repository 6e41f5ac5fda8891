/* HTTP/2 sessions on nghttp2; see h2.h.
 *
 * Output. ztm_h2_flush points the session at the caller's buffer and runs
 * nghttp2_session_send: control frames arrive through on_send (partial
 * writes are fine, nghttp2 keeps the rest), DATA frames through on_read +
 * on_send_data with NGHTTP2_DATA_FLAG_NO_COPY. on_read already knows where
 * the frame will land, so it has the application write the payload 9 bytes
 * past the current end of the buffer and on_send_data only puts the frame
 * header in front: one copy, from the application's source. A DATA frame is
 * sized to the room left; when the room left is too small to be worth a
 * frame, on_read returns NGHTTP2_ERR_PAUSE and the flush ends (nghttp2 keeps
 * the stream's place). Only a caller buffer under 10 bytes, where not even
 * one payload byte fits, goes through the spill buffer (a second copy).
 *
 * Input. A header block is gathered into one session-wide buffer (HTTP/2
 * never interleaves header blocks) and handed over complete, with the
 * pseudo-header fields split out. DATA is delivered as it comes and counted
 * consumed only when the application says so (automatic WINDOW_UPDATE is
 * off).
 *
 * Streams. Each stream nghttp2 knows carries an h2_stream_t as its user
 * data; all of them are also on a session list, so requests still queued
 * in nghttp2 (no nghttp2 stream yet) are found by id and freed with the
 * session. */
#include "dataplane/h2/h2.h"

#include <assert.h>
#include <errno.h>
#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dataplane/runtime/log.h"
#include "dataplane/runtime/timer.h"

#define FRAME_HD 9
/* A DATA frame smaller than this is not started in a partly filled buffer:
 * the flush ends there and the next one starts the frame. */
#define DATA_MIN  1024
#define SPILL_CAP (FRAME_HD + 16384)
#define MAX_RATE  1000000u
#define NANO      1000000000ull

/* Ping payloads: 'K' keepalive, 'S' shutdown round trip; then 7 bytes. */
#define PING_KEEPALIVE 'K'
#define PING_SHUTDOWN  'S'

enum {
    S_APP = 1 << 0,          /* the application knows the stream */
    S_BODY = 1 << 1,         /* we send a body through read_body */
    S_TRAILERS = 1 << 2,     /* ... and end with trailers */
    S_EOF = 1 << 3,          /* read_body said EOF */
    S_DEFERRED = 1 << 4,     /* parked until ztm_h2_resume */
    S_DISCARD = 1 << 5,      /* refused (header list too large): drop what comes */
    S_APP_RESET = 1 << 6,    /* the application reset it */
    S_RESPONDED = 1 << 7,    /* server: response submitted */
    S_GOT_RESPONSE = 1 << 8, /* client: final response head seen */
    S_TRAILERS_SENT = 1 << 9,
    S_RST_AFTER_HEAD = 1 << 10, /* RST_STREAM NO_ERROR once our final head is out */
};

typedef struct h2_stream h2_stream_t;
struct h2_stream {
    int32_t id;
    uint32_t flags;
    uint32_t refused; /* error code reported at close for a refused stream */
    void *data;
    nghttp2_nv *trailers; /* one block: the array, then the strings */
    size_t n_trailers;
    h2_stream_t *prev, *next;
};

typedef struct {
    uint32_t name_off, name_len, value_off, value_len;
} hent_t;

/* The session's life. Graceful: OPEN -> NOTICE -> PING -> FINAL (server),
 * OPEN -> FINAL (client). Any -> TERMINATING (a GOAWAY that ends it now);
 * any -> DEAD (nghttp2 failed; never touched again but to free it). */
typedef enum { P_OPEN, P_NOTICE, P_PING, P_FINAL, P_TERMINATING, P_DEAD } phase_t;

typedef struct {
    uint64_t nanotokens, last;
    uint64_t max; /* burst * NANO, 0: unlimited */
    uint32_t rate;
} bucket_t;

struct ztm_h2_session {
    nghttp2_session *ng;
    ztm_h2_role_t role;
    ztm_h2_callbacks_t cb;
    void *user;
    ztm_h2_config_t cfg;
    phase_t phase;
    int close_err; /* what ztm_h2_feed returns once the session is ending */

    /* the flush in progress */
    uint8_t *out;
    size_t out_cap, out_len;
    uint8_t *pend_dst; /* where on_read put the payload of the DATA frame */
    size_t pend_len;   /* ... and its length */
    bool pend_spill;
    uint8_t *spill;
    size_t spill_len, spill_off;

    /* the header block being received */
    uint8_t *hb;
    size_t hb_len, hb_cap;
    hent_t *hent;
    size_t n_hent, hent_cap;
    size_t hb_list; /* RFC 9113 size so far */
    bool hb_too_big;
    ztm_h2_header_t *hview;
    size_t hview_cap;

    h2_stream_t *streams;
    size_t n_streams;

    /* peer's GOAWAY */
    bool goaway_recv;
    uint64_t goaway_recv_at;

    /* keepalive and shutdown */
    uint64_t last_recv;
    bool ka_outstanding;
    uint64_t ka_sent, rtt;
    uint64_t shut_start;

    bucket_t resets, flood;
    uint64_t n_resets, n_flood;
    char last_err[96];
};

/* ---- small things ------------------------------------------------------ */
static uint64_t now_ns(ztm_h2_session_t *s)
{
    return s->cfg.clock ? s->cfg.clock(s->user) : ztm_now_ns();
}

static void bucket_init(bucket_t *b, uint32_t burst, uint32_t rate, uint64_t now)
{
    b->max = burst == UINT32_MAX ? 0 : (uint64_t)burst * NANO;
    b->rate = rate > MAX_RATE ? MAX_RATE : rate;
    b->nanotokens = b->max;
    b->last = now;
}

/* Takes one token; false when none is left. */
static bool bucket_take(bucket_t *b, uint64_t now)
{
    if (!b->max)
        return true;
    uint64_t elapsed = now > b->last ? now - b->last : 0;
    b->last = now > b->last ? now : b->last;
    if (elapsed >= 3600 * NANO)
        b->nanotokens = b->max;
    else {
        b->nanotokens += elapsed * b->rate; /* < 3.6e18: no overflow */
        if (b->nanotokens > b->max)
            b->nanotokens = b->max;
    }
    if (b->nanotokens < NANO)
        return false;
    b->nanotokens -= NANO;
    return true;
}

static void set_phase(ztm_h2_session_t *s, phase_t next)
{
    switch (next) {
    case P_NOTICE:
        assert(s->phase == P_OPEN);
        break;
    case P_PING:
        assert(s->phase == P_NOTICE);
        break;
    case P_FINAL:
        assert(s->phase == P_OPEN || s->phase == P_NOTICE || s->phase == P_PING);
        break;
    case P_TERMINATING:
        assert(s->phase != P_DEAD);
        break;
    case P_DEAD:
    case P_OPEN:
        break;
    }
    s->phase = next;
}

static bool ending(const ztm_h2_session_t *s)
{
    return s->phase == P_TERMINATING || s->phase == P_DEAD;
}

/* nghttp2 failed in a way that leaves the session unusable. */
static int go_dead(ztm_h2_session_t *s, int ngerr, const char *where)
{
    if (s->phase != P_DEAD)
        ztm_log(ZTM_LOG_ERROR, "h2.internal", "conn=%llu where=%s error=\"%s\"",
                (unsigned long long)s->cfg.conn_id, where, nghttp2_strerror(ngerr));
    set_phase(s, P_DEAD);
    s->close_err = ZTM_H2_E_INTERNAL;
    return ZTM_H2_E_INTERNAL;
}

static int map_err(ztm_h2_session_t *s, int rv, const char *where)
{
    switch (rv) {
    case 0:
        return 0;
    case NGHTTP2_ERR_NOMEM:
        return -ENOMEM;
    case NGHTTP2_ERR_INVALID_ARGUMENT:
        return -EINVAL;
    case NGHTTP2_ERR_STREAM_CLOSED:
    case NGHTTP2_ERR_STREAM_CLOSING:
    case NGHTTP2_ERR_STREAM_SHUT_WR:
    case NGHTTP2_ERR_INVALID_STREAM_ID:
    case NGHTTP2_ERR_INVALID_STREAM_STATE:
    case NGHTTP2_ERR_DATA_EXIST:
    case NGHTTP2_ERR_INVALID_STATE:
        return ZTM_H2_E_STREAM;
    case NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE:
    case NGHTTP2_ERR_SESSION_CLOSING:
    case NGHTTP2_ERR_GOAWAY_ALREADY_SENT:
        return ZTM_H2_E_CLOSED;
    default:
        if (nghttp2_is_fatal(rv))
            return go_dead(s, rv, where);
        return ZTM_H2_E_INTERNAL;
    }
}

/* The peer went past a limit: GOAWAY ENHANCE_YOUR_CALM, stop reading. */
static void calm(ztm_h2_session_t *s, const char *event, const char *what)
{
    if (ending(s))
        return;
    ztm_log(ZTM_LOG_WARN, event,
            "conn=%llu what=%s resets=%llu control_frames=%llu action=goaway_enhance_your_calm",
            (unsigned long long)s->cfg.conn_id, what, (unsigned long long)s->n_resets,
            (unsigned long long)s->n_flood);
    if (nghttp2_session_terminate_session(s->ng, NGHTTP2_ENHANCE_YOUR_CALM) != 0) {
        go_dead(s, NGHTTP2_ERR_NOMEM, "terminate");
        return;
    }
    set_phase(s, P_TERMINATING);
    s->close_err = ZTM_H2_E_CALM;
}

static void count_reset(ztm_h2_session_t *s)
{
    s->n_resets++;
    if (!bucket_take(&s->resets, now_ns(s)))
        calm(s, "h2.rapid_reset", "stream_resets");
}

static void count_flood(ztm_h2_session_t *s, const char *what)
{
    s->n_flood++;
    if (!bucket_take(&s->flood, now_ns(s)))
        calm(s, "h2.flood", what);
}

/* ---- streams ----------------------------------------------------------- */
static h2_stream_t *stream_new(ztm_h2_session_t *s, int32_t id)
{
    h2_stream_t *st = calloc(1, sizeof(*st));
    if (!st)
        return NULL;
    st->id = id;
    st->next = s->streams;
    if (s->streams)
        s->streams->prev = st;
    s->streams = st;
    s->n_streams++;
    return st;
}

static void stream_free(ztm_h2_session_t *s, h2_stream_t *st)
{
    if (st->prev)
        st->prev->next = st->next;
    else
        s->streams = st->next;
    if (st->next)
        st->next->prev = st->prev;
    s->n_streams--;
    free(st->trailers);
    free(st);
}

static h2_stream_t *stream_find(ztm_h2_session_t *s, int32_t id)
{
    if (id <= 0 || s->phase == P_DEAD)
        return NULL;
    h2_stream_t *st = nghttp2_session_get_stream_user_data(s->ng, id);
    if (st)
        return st;
    /* A request nghttp2 has not sent yet has no nghttp2 stream. */
    if (s->role != ZTM_H2_CLIENT)
        return NULL;
    for (st = s->streams; st; st = st->next)
        if (st->id == id)
            return st;
    return NULL;
}

/* ---- header fields ------------------------------------------------------ */
/* Copies N application headers after the PSEUDO ones into a nghttp2 array
 * (fields are copied again by nghttp2 on submit). */
static nghttp2_nv *nv_build(nghttp2_nv *stack, size_t stack_n, const nghttp2_nv *pseudo,
                            size_t n_pseudo, const ztm_h2_header_t *h, size_t n)
{
    size_t total = n_pseudo + n;
    nghttp2_nv *nv = total <= stack_n ? stack : malloc(total * sizeof(*nv));
    if (!nv)
        return NULL;
    for (size_t i = 0; i < n_pseudo; i++)
        nv[i] = pseudo[i];
    for (size_t i = 0; i < n; i++) {
        nv[n_pseudo + i] = (nghttp2_nv){(uint8_t *)h[i].name, (uint8_t *)h[i].value, h[i].name_len,
                                        h[i].value_len, NGHTTP2_NV_FLAG_NONE};
    }
    return nv;
}

static nghttp2_nv nv_str(const char *name, const char *value)
{
    return (nghttp2_nv){(uint8_t *)name, (uint8_t *)value, strlen(name), strlen(value),
                        NGHTTP2_NV_FLAG_NONE};
}

static bool headers_valid(const ztm_h2_header_t *h, size_t n)
{
    if (n && !h)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!h[i].name || !h[i].name_len || (!h[i].value && h[i].value_len))
            return false;
    return true;
}

static int hb_reserve(ztm_h2_session_t *s, size_t more)
{
    if (s->hb_len + more > s->hb_cap) {
        size_t cap = s->hb_cap ? s->hb_cap : 1024;
        while (cap < s->hb_len + more)
            cap *= 2;
        uint8_t *p = realloc(s->hb, cap);
        if (!p)
            return -ENOMEM;
        s->hb = p;
        s->hb_cap = cap;
    }
    if (s->n_hent == s->hent_cap) {
        size_t cap = s->hent_cap ? s->hent_cap * 2 : 32;
        hent_t *p = realloc(s->hent, cap * sizeof(*p));
        if (!p)
            return -ENOMEM;
        s->hent = p;
        s->hent_cap = cap;
    }
    return 0;
}

static void hb_reset(ztm_h2_session_t *s)
{
    s->hb_len = 0;
    s->n_hent = 0;
    s->hb_list = 0;
    s->hb_too_big = false;
}

/* Splits the gathered block into MSG (pseudo fields) and s->hview. */
static int hb_view(ztm_h2_session_t *s, ztm_h2_msg_t *msg)
{
    memset(msg, 0, sizeof(*msg));
    if (s->n_hent > s->hview_cap) {
        ztm_h2_header_t *p = realloc(s->hview, s->n_hent * sizeof(*p));
        if (!p)
            return -ENOMEM;
        s->hview = p;
        s->hview_cap = s->n_hent;
    }
    size_t n = 0;
    for (size_t i = 0; i < s->n_hent; i++) {
        const hent_t *e = &s->hent[i];
        const char *name = (const char *)s->hb + e->name_off;
        const char *value = (const char *)s->hb + e->value_off;
        if (name[0] != ':') {
            s->hview[n++] = (ztm_h2_header_t){name, e->name_len, value, e->value_len};
            continue;
        }
        if (!strcmp(name, ":method"))
            msg->method = value;
        else if (!strcmp(name, ":scheme"))
            msg->scheme = value;
        else if (!strcmp(name, ":authority"))
            msg->authority = value;
        else if (!strcmp(name, ":path"))
            msg->path = value;
        else if (!strcmp(name, ":protocol"))
            msg->protocol = value;
        else if (!strcmp(name, ":status"))
            msg->status = atoi(value);
    }
    msg->headers = s->hview;
    msg->n_headers = n;
    return 0;
}

/* ---- nghttp2 callbacks: input ------------------------------------------- */
static int on_begin_frame(nghttp2_session *ng, const nghttp2_frame_hd *hd, void *user)
{
    ztm_h2_session_t *s = user;
    s->last_recv = now_ns(s);
    return 0;
}

static int on_begin_headers(nghttp2_session *ng, const nghttp2_frame *frame, void *user)
{
    ztm_h2_session_t *s = user;
    if (frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    hb_reset(s);
    if (s->role == ZTM_H2_SERVER && frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
        h2_stream_t *st = stream_new(s, frame->hd.stream_id);
        if (!st)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* RST_STREAM, session lives */
        nghttp2_session_set_stream_user_data(ng, frame->hd.stream_id, st);
    }
    return 0;
}

static int on_header(nghttp2_session *ng, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user)
{
    ztm_h2_session_t *s = user;
    if (frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    s->hb_list += namelen + valuelen + 32;
    if (s->hb_list > s->cfg.max_header_list)
        s->hb_too_big = true;
    if (s->hb_too_big)
        return 0; /* keep decoding (HPACK state), stop keeping */
    if (hb_reserve(s, namelen + valuelen + 2) < 0)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    hent_t *e = &s->hent[s->n_hent++];
    e->name_off = (uint32_t)s->hb_len;
    e->name_len = (uint32_t)namelen;
    memcpy(s->hb + s->hb_len, name, namelen);
    s->hb_len += namelen;
    s->hb[s->hb_len++] = 0;
    e->value_off = (uint32_t)s->hb_len;
    e->value_len = (uint32_t)valuelen;
    memcpy(s->hb + s->hb_len, value, valuelen);
    s->hb_len += valuelen;
    s->hb[s->hb_len++] = 0;
    return 0;
}

/* A header list over max_header_list. A request gets 431 (and, if its
 * body is still coming, RST_STREAM NO_ERROR after it, RFC 9113 8.1: a
 * reset submitted now would cancel the queued head); a response or
 * trailers we cannot take reset the stream, and the application hears
 * ENHANCE_YOUR_CALM at close even if the stream had ended cleanly. */
static void refuse_headers(ztm_h2_session_t *s, h2_stream_t *st, const nghttp2_frame *frame)
{
    int32_t id = frame->hd.stream_id;
    ztm_log(ZTM_LOG_WARN, "h2.header_list_too_large", "conn=%llu stream=%d size=%zu limit=%u",
            (unsigned long long)s->cfg.conn_id, id, s->hb_list, s->cfg.max_header_list);
    st->flags |= S_DISCARD;
    st->refused = NGHTTP2_ENHANCE_YOUR_CALM;
    count_reset(s); /* refusing costs like a reset; the RST below is not counted again */
    if (s->role == ZTM_H2_SERVER && frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
        nghttp2_nv nv = nv_str(":status", "431");
        st->flags |= S_RESPONDED;
        if (nghttp2_submit_response(s->ng, id, &nv, 1, NULL) != 0)
            nghttp2_submit_rst_stream(s->ng, NGHTTP2_FLAG_NONE, id, NGHTTP2_REFUSED_STREAM);
        else if (!(frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
            st->flags |= S_RST_AFTER_HEAD;
    } else {
        nghttp2_submit_rst_stream(s->ng, NGHTTP2_FLAG_NONE, id, NGHTTP2_ENHANCE_YOUR_CALM);
    }
}

static bool deliverable(const h2_stream_t *st)
{
    return st && (st->flags & S_APP) && !(st->flags & (S_DISCARD | S_APP_RESET));
}

static void on_headers_recv(ztm_h2_session_t *s, const nghttp2_frame *frame)
{
    int32_t id = frame->hd.stream_id;
    h2_stream_t *st = nghttp2_session_get_stream_user_data(s->ng, id);
    bool end = frame->hd.flags & NGHTTP2_FLAG_END_STREAM;
    if (!st || (st->flags & S_DISCARD))
        return;
    if (s->hb_too_big) {
        refuse_headers(s, st, frame);
        return;
    }
    ztm_h2_msg_t msg;
    if (hb_view(s, &msg) < 0) {
        nghttp2_submit_rst_stream(s->ng, NGHTTP2_FLAG_NONE, id, NGHTTP2_INTERNAL_ERROR);
        return;
    }
    msg.end_stream = end;
    bool trailers;
    if (s->role == ZTM_H2_SERVER) {
        trailers = frame->headers.cat != NGHTTP2_HCAT_REQUEST;
        if (!trailers) {
            st->flags |= S_APP;
            if (s->cb.on_request)
                s->cb.on_request(s, s->user, id, st->data, &msg);
            else
                ztm_h2_reset(s, id, NGHTTP2_REFUSED_STREAM);
        }
    } else {
        trailers = st->flags & S_GOT_RESPONSE;
        if (!trailers) {
            if (msg.status < 200)
                return; /* informational: the final head follows */
            st->flags |= S_GOT_RESPONSE;
            if (deliverable(st) && s->cb.on_response)
                s->cb.on_response(s, s->user, id, st->data, &msg);
        }
    }
    if (trailers && deliverable(st) && s->cb.on_trailers)
        s->cb.on_trailers(s, s->user, id, st->data, msg.headers, msg.n_headers);
    if (end && deliverable(st) && s->cb.on_end_stream)
        s->cb.on_end_stream(s, s->user, id, st->data);
}

static void on_ping_ack(ztm_h2_session_t *s, const uint8_t *opaque)
{
    uint64_t now = now_ns(s);
    if (opaque[0] == PING_KEEPALIVE && s->ka_outstanding) {
        s->ka_outstanding = false;
        s->rtt = now - s->ka_sent;
    } else if (opaque[0] == PING_SHUTDOWN && s->phase == P_PING) {
        /* The peer has seen the notice: every stream it opened before is
         * in, so the final GOAWAY names the last one. */
        if (nghttp2_submit_goaway(s->ng, NGHTTP2_FLAG_NONE,
                                  nghttp2_session_get_last_proc_stream_id(s->ng), NGHTTP2_NO_ERROR,
                                  NULL, 0) == 0)
            set_phase(s, P_FINAL);
    }
}

static int on_frame_recv(nghttp2_session *ng, const nghttp2_frame *frame, void *user)
{
    ztm_h2_session_t *s = user;
    switch (frame->hd.type) {
    case NGHTTP2_HEADERS:
        on_headers_recv(s, frame);
        break;
    case NGHTTP2_DATA:
        if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) {
            h2_stream_t *st = nghttp2_session_get_stream_user_data(ng, frame->hd.stream_id);
            if (deliverable(st) && s->cb.on_end_stream)
                s->cb.on_end_stream(s, s->user, frame->hd.stream_id, st->data);
        } else if (frame->hd.length == 0) {
            count_flood(s, "empty_data");
        }
        break;
    case NGHTTP2_RST_STREAM:
        count_reset(s);
        break;
    case NGHTTP2_PING:
        if (frame->hd.flags & NGHTTP2_FLAG_ACK)
            on_ping_ack(s, frame->ping.opaque_data);
        else
            count_flood(s, "ping");
        break;
    case NGHTTP2_SETTINGS:
        if (!(frame->hd.flags & NGHTTP2_FLAG_ACK))
            count_flood(s, "settings");
        break;
    case NGHTTP2_PRIORITY:
        count_flood(s, "priority");
        break;
    case NGHTTP2_GOAWAY:
        if (!s->goaway_recv)
            s->goaway_recv_at = now_ns(s);
        s->goaway_recv = true;
        ztm_log(ZTM_LOG_DEBUG, "h2.goaway_recv", "conn=%llu error=%s last_stream=%d",
                (unsigned long long)s->cfg.conn_id,
                nghttp2_http2_strerror(frame->goaway.error_code), frame->goaway.last_stream_id);
        if (s->cb.on_goaway)
            s->cb.on_goaway(s, s->user, frame->goaway.error_code, frame->goaway.last_stream_id);
        break;
    default:
        break;
    }
    return 0;
}

static int on_data_chunk(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data,
                         size_t len, void *user)
{
    ztm_h2_session_t *s = user;
    h2_stream_t *st = nghttp2_session_get_stream_user_data(ng, id);
    if (!deliverable(st) || !s->cb.on_data) {
        /* Nobody will consume these: give the window back now. */
        int rv = nghttp2_session_consume(ng, id, len);
        return nghttp2_is_fatal(rv) ? rv : 0;
    }
    s->cb.on_data(s, s->user, id, st->data, data, len);
    return 0;
}

static int on_stream_close(nghttp2_session *ng, int32_t id, uint32_t error_code, void *user)
{
    ztm_h2_session_t *s = user;
    h2_stream_t *st = nghttp2_session_get_stream_user_data(ng, id);
    if (!st)
        return 0;
    if (!error_code)
        error_code = st->refused;
    if ((st->flags & S_APP) && s->cb.on_stream_close)
        s->cb.on_stream_close(s, s->user, id, st->data, error_code);
    nghttp2_session_set_stream_user_data(ng, id, NULL);
    stream_free(s, st);
    return 0;
}

static int on_error(nghttp2_session *ng, int lib_error_code, const char *msg, size_t len,
                    void *user)
{
    ztm_h2_session_t *s = user;
    int n = len < sizeof(s->last_err) - 1 ? (int)len : (int)sizeof(s->last_err) - 1;
    memcpy(s->last_err, msg, (size_t)n);
    s->last_err[n] = 0;
    for (int i = 0; i < n; i++)
        if (s->last_err[i] == '"')
            s->last_err[i] = '\'';
    ztm_log(ZTM_LOG_DEBUG, "h2.peer_error", "conn=%llu error=\"%s\"",
            (unsigned long long)s->cfg.conn_id, s->last_err);
    return 0;
}

/* ---- nghttp2 callbacks: output ------------------------------------------ */
static ssize_t on_send(nghttp2_session *ng, const uint8_t *data, size_t len, int flags, void *user)
{
    ztm_h2_session_t *s = user;
    /* Nothing may pass a DATA frame still in the spill buffer. */
    if (!s->out || s->spill_off < s->spill_len)
        return NGHTTP2_ERR_WOULDBLOCK;
    size_t room = s->out_cap - s->out_len;
    if (room == 0)
        return NGHTTP2_ERR_WOULDBLOCK;
    size_t n = len < room ? len : room;
    memcpy(s->out + s->out_len, data, n);
    s->out_len += n;
    return (ssize_t)n;
}

static void spill_drain(ztm_h2_session_t *s)
{
    size_t left = s->spill_len - s->spill_off, room = s->out_cap - s->out_len;
    size_t n = left < room ? left : room;
    memcpy(s->out + s->out_len, s->spill + s->spill_off, n);
    s->out_len += n;
    s->spill_off += n;
    if (s->spill_off == s->spill_len)
        s->spill_off = s->spill_len = 0;
}

/* Where the next DATA frame's payload goes: right after its header in the
 * caller's buffer, or the spill buffer when the caller's buffer is tiny.
 * NEED is how much payload makes the frame worth starting. */
static int data_place(ztm_h2_session_t *s, size_t length, size_t need)
{
    size_t room = s->out_cap - s->out_len;
    if (room >= FRAME_HD + need || (s->out_len == 0 && room > FRAME_HD)) {
        s->pend_spill = false;
        s->pend_dst = s->out + s->out_len + FRAME_HD;
        s->pend_len = length < room - FRAME_HD ? length : room - FRAME_HD;
        return 0;
    }
    if (s->out_len > 0)
        return NGHTTP2_ERR_PAUSE;
    if (!s->spill && !(s->spill = malloc(SPILL_CAP)))
        return NGHTTP2_ERR_PAUSE;
    s->pend_spill = true;
    s->pend_dst = s->spill + FRAME_HD;
    s->pend_len = length < SPILL_CAP - FRAME_HD ? length : SPILL_CAP - FRAME_HD;
    return 0;
}

static ssize_t on_read(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t length,
                       uint32_t *data_flags, nghttp2_data_source *source, void *user)
{
    ztm_h2_session_t *s = user;
    h2_stream_t *st = source->ptr;
    if (!s->out || s->spill_off < s->spill_len)
        return NGHTTP2_ERR_PAUSE;
    bool ask = (st->flags & S_BODY) && !(st->flags & S_EOF);
    int rv = data_place(s, length, ask ? (length < DATA_MIN ? length : DATA_MIN) : 0);
    if (rv)
        return rv;
    size_t n = 0;
    if (ask) {
        bool eof = false;
        ssize_t got = s->cb.read_body ? s->cb.read_body(s, s->user, id, st->data, s->pend_dst,
                                                        s->pend_len, &eof)
                                      : (eof = true, 0);
        if (got < 0 || (size_t)got > s->pend_len) {
            if (got > 0)
                ztm_log(ZTM_LOG_ERROR, "h2.read_body", "conn=%llu stream=%d got=%zd max=%zu",
                        (unsigned long long)s->cfg.conn_id, id, got, s->pend_len);
            st->flags |= S_APP_RESET;
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* RST_STREAM INTERNAL_ERROR */
        }
        n = (size_t)got;
        if (eof)
            st->flags |= S_EOF;
        if (n == 0 && !eof) {
            st->flags |= S_DEFERRED;
            return NGHTTP2_ERR_DEFERRED;
        }
    }
    s->pend_len = n;
    *data_flags |= NGHTTP2_DATA_FLAG_NO_COPY;
    if (!(st->flags & S_EOF))
        return (ssize_t)n;
    if (!(st->flags & S_TRAILERS)) {
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
        return (ssize_t)n;
    }
    if (st->trailers) {
        rv = nghttp2_submit_trailer(ng, id, st->trailers, st->n_trailers);
        free(st->trailers);
        st->trailers = NULL;
        if (rv != 0)
            return nghttp2_is_fatal(rv) ? rv : NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        st->flags |= S_TRAILERS_SENT;
        *data_flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
        return (ssize_t)n;
    }
    if (n == 0) { /* body done, trailers not yet given: wait for them */
        st->flags |= S_DEFERRED;
        return NGHTTP2_ERR_DEFERRED;
    }
    return (ssize_t)n;
}

static int on_send_data(nghttp2_session *ng, nghttp2_frame *frame, const uint8_t *framehd,
                        size_t length, nghttp2_data_source *source, void *user)
{
    ztm_h2_session_t *s = user;
    /* on_read placed exactly this frame's payload; no padding is ever chosen. */
    assert(length == s->pend_len && frame->data.padlen == 0);
    if (!s->pend_spill) {
        assert(s->pend_dst == s->out + s->out_len + FRAME_HD);
        memcpy(s->out + s->out_len, framehd, FRAME_HD);
        s->out_len += FRAME_HD + length;
    } else {
        memcpy(s->spill, framehd, FRAME_HD);
        s->spill_len = FRAME_HD + length;
        s->spill_off = 0;
        spill_drain(s);
    }
    return 0;
}

static int on_frame_send(nghttp2_session *ng, const nghttp2_frame *frame, void *user)
{
    ztm_h2_session_t *s = user;
    switch (frame->hd.type) {
    case NGHTTP2_HEADERS: {
        h2_stream_t *st = nghttp2_session_get_stream_user_data(ng, frame->hd.stream_id);
        if (st && (st->flags & S_RST_AFTER_HEAD) &&
            nghttp2_session_get_stream_remote_close(ng, frame->hd.stream_id) == 0)
            nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, frame->hd.stream_id, NGHTTP2_NO_ERROR);
        break;
    }
    case NGHTTP2_RST_STREAM: {
        /* A reset the application did not ask for was caused by the peer
         * (a stream error, a refused stream): it counts like one received. */
        h2_stream_t *st = nghttp2_session_get_stream_user_data(ng, frame->hd.stream_id);
        if (!st || !(st->flags & (S_APP_RESET | S_DISCARD)))
            count_reset(s);
        break;
    }
    case NGHTTP2_GOAWAY:
        if (frame->goaway.error_code != NGHTTP2_NO_ERROR && !ending(s)) {
            /* Not ours: nghttp2 found a connection error in what the peer
             * sent (it reports those only by queueing this GOAWAY). */
            int n = (int)(frame->goaway.opaque_data_len < 80 ? frame->goaway.opaque_data_len : 80);
            char why[81];
            for (int i = 0; i < n; i++) {
                char c = (char)frame->goaway.opaque_data[i];
                why[i] = c == '"' || c < 0x20 || c > 0x7e ? '?' : c;
            }
            why[n] = 0;
            ztm_log(ZTM_LOG_INFO, "h2.protocol_error", "conn=%llu error=%s reason=\"%s\"",
                    (unsigned long long)s->cfg.conn_id,
                    nghttp2_http2_strerror(frame->goaway.error_code), why);
            set_phase(s, P_TERMINATING);
            s->close_err = ZTM_H2_E_PROTOCOL;
            break;
        }
        if (s->phase == P_NOTICE && frame->goaway.last_stream_id == INT32_MAX) {
            /* The notice is out: a PING behind it comes back after the peer
             * has read it. */
            uint8_t opaque[8] = {PING_SHUTDOWN};
            if (nghttp2_submit_ping(ng, NGHTTP2_FLAG_NONE, opaque) == 0)
                set_phase(s, P_PING);
        }
        break;
    default:
        break;
    }
    return 0;
}

/* ---- session ------------------------------------------------------------ */
static void config_defaults(ztm_h2_config_t *c, ztm_h2_role_t role)
{
    if (!c->conn_window)
        c->conn_window = 16u << 20;
    if (!c->stream_window)
        c->stream_window = 1u << 20;
    if (!c->max_concurrent_streams)
        c->max_concurrent_streams = role == ZTM_H2_SERVER ? 1000 : 100;
    if (!c->max_header_list)
        c->max_header_list = 64u << 10;
    if (!c->reset_burst)
        c->reset_burst = 200;
    if (!c->reset_rate)
        c->reset_rate = 50;
    if (!c->flood_burst)
        c->flood_burst = 1000;
    if (!c->flood_rate)
        c->flood_rate = 100;
    if (!c->max_outbound_ack)
        c->max_outbound_ack = 1000;
    if (!c->max_outbound_queue)
        c->max_outbound_queue = 2 * c->max_concurrent_streams + 1000;
    if (!c->ping_interval_ns)
        c->ping_interval_ns = 30 * NANO;
    if (!c->ping_timeout_ns)
        c->ping_timeout_ns = 20 * NANO;
}

static nghttp2_session_callbacks *callbacks_new(void)
{
    nghttp2_session_callbacks *cbs;
    if (nghttp2_session_callbacks_new(&cbs) != 0)
        return NULL;
    nghttp2_session_callbacks_set_send_callback(cbs, on_send);
    nghttp2_session_callbacks_set_send_data_callback(cbs, on_send_data);
    nghttp2_session_callbacks_set_on_begin_frame_callback(cbs, on_begin_frame);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
    nghttp2_session_callbacks_set_on_frame_send_callback(cbs, on_frame_send);
    nghttp2_session_callbacks_set_error_callback2(cbs, on_error);
    return cbs;
}

int ztm_h2_new(ztm_h2_session_t **out, ztm_h2_role_t role, const ztm_h2_callbacks_t *cb, void *user,
               const ztm_h2_config_t *cfg)
{
    *out = NULL;
    if (!cb || (role != ZTM_H2_SERVER && role != ZTM_H2_CLIENT))
        return -EINVAL;
    if (cfg && ((cfg->conn_window && cfg->conn_window < 65535) ||
                cfg->conn_window > NGHTTP2_MAX_WINDOW_SIZE ||
                cfg->stream_window > NGHTTP2_MAX_WINDOW_SIZE))
        return -EINVAL;
    int err = -ENOMEM;
    nghttp2_session_callbacks *cbs = NULL;
    nghttp2_option *opt = NULL;
    ztm_h2_session_t *s = calloc(1, sizeof(*s));
    if (!s)
        goto Exit;
    s->role = role;
    s->cb = *cb;
    s->user = user;
    if (cfg)
        s->cfg = *cfg;
    config_defaults(&s->cfg, role);
    uint64_t now = now_ns(s);
    s->last_recv = now;
    bucket_init(&s->resets, s->cfg.reset_burst, s->cfg.reset_rate, now);
    bucket_init(&s->flood, s->cfg.flood_burst, s->cfg.flood_rate, now);

    if (!(cbs = callbacks_new()) || nghttp2_option_new(&opt) != 0)
        goto Exit;
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_no_closed_streams(opt, 1);
    nghttp2_option_set_max_outbound_ack(opt, s->cfg.max_outbound_ack);
    nghttp2_option_set_max_settings(opt, 32);
    /* enough CONTINUATIONs for a header list at our limit, no more */
    nghttp2_option_set_max_continuations(opt, 8 + s->cfg.max_header_list / 16384);
    /* nghttp2's own reset limit (GOAWAY INTERNAL_ERROR) stays as a backstop
     * behind ours, which answers ENHANCE_YOUR_CALM first. */
    if (s->cfg.reset_burst != UINT32_MAX)
        nghttp2_option_set_stream_reset_rate_limit(opt, 2ull * s->cfg.reset_burst + 16,
                                                   2ull * s->cfg.reset_rate + 16);
    int rv = role == ZTM_H2_SERVER ? nghttp2_session_server_new2(&s->ng, cbs, s, opt)
                                   : nghttp2_session_client_new2(&s->ng, cbs, s, opt);
    if (rv != 0) {
        s->ng = NULL;
        goto Exit;
    }

    nghttp2_settings_entry iv[6];
    size_t n = 0;
    iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, s->cfg.stream_window};
    iv[n++] =
        (nghttp2_settings_entry){NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, s->cfg.max_header_list};
    iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_NO_RFC7540_PRIORITIES, 1};
    if (role == ZTM_H2_SERVER) {
        iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS,
                                           s->cfg.max_concurrent_streams};
        if (s->cfg.enable_connect_protocol)
            iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL, 1};
    } else {
        iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_ENABLE_PUSH, 0};
    }
    if (nghttp2_submit_settings(s->ng, NGHTTP2_FLAG_NONE, iv, n) != 0)
        goto Exit;
    if (nghttp2_session_set_local_window_size(s->ng, NGHTTP2_FLAG_NONE, 0,
                                              (int32_t)s->cfg.conn_window) != 0)
        goto Exit;
    *out = s;
    s = NULL;
    err = 0;
Exit:
    nghttp2_option_del(opt);
    if (cbs)
        nghttp2_session_callbacks_del(cbs);
    ztm_h2_free(s);
    return err;
}

void ztm_h2_free(ztm_h2_session_t *s)
{
    if (!s)
        return;
    /* The application hears of every stream it knows once, even now. */
    while (s->streams) {
        h2_stream_t *st = s->streams;
        if ((st->flags & S_APP) && s->cb.on_stream_close)
            s->cb.on_stream_close(s, s->user, st->id, st->data, NGHTTP2_CANCEL);
        if (s->ng && st->id > 0)
            nghttp2_session_set_stream_user_data(s->ng, st->id, NULL);
        stream_free(s, st);
    }
    nghttp2_session_del(s->ng);
    free(s->spill);
    free(s->hb);
    free(s->hent);
    free(s->hview);
    free(s);
}

int ztm_h2_feed(ztm_h2_session_t *s, const uint8_t *data, size_t len)
{
    if (s->close_err)
        return s->close_err;
    if (!nghttp2_session_want_read(s->ng))
        return s->close_err = ZTM_H2_E_CLOSED;
    ssize_t rv = nghttp2_session_mem_recv(s->ng, data, len);
    if (rv < 0) {
        switch (rv) {
        case NGHTTP2_ERR_FLOODED:
        case NGHTTP2_ERR_TOO_MANY_CONTINUATIONS:
            calm(s, "h2.flood", rv == NGHTTP2_ERR_FLOODED ? "unread_acks" : "continuations");
            break;
        case NGHTTP2_ERR_BAD_CLIENT_MAGIC:
            ztm_log(ZTM_LOG_INFO, "h2.bad_preface", "conn=%llu",
                    (unsigned long long)s->cfg.conn_id);
            if (nghttp2_session_terminate_session(s->ng, NGHTTP2_PROTOCOL_ERROR) != 0)
                return go_dead(s, NGHTTP2_ERR_NOMEM, "terminate");
            set_phase(s, P_TERMINATING);
            s->close_err = ZTM_H2_E_PROTOCOL;
            break;
        default:
            return go_dead(s, (int)rv, "mem_recv");
        }
        return s->close_err;
    }
    if (s->close_err)
        return s->close_err;
    if (nghttp2_session_get_outbound_queue_size(s->ng) > s->cfg.max_outbound_queue) {
        calm(s, "h2.flood", "unread_output");
        return s->close_err;
    }
    if (!nghttp2_session_want_read(s->ng)) {
        /* nghttp2 ended the session: either the graceful end (GOAWAY and no
         * stream left) or a connection error it answered with GOAWAY. */
        if (s->goaway_recv || s->phase != P_OPEN) {
            s->close_err = ZTM_H2_E_CLOSED;
        } else {
            ztm_log(ZTM_LOG_INFO, "h2.protocol_error", "conn=%llu error=\"%s\"",
                    (unsigned long long)s->cfg.conn_id, s->last_err);
            s->close_err = ZTM_H2_E_PROTOCOL;
        }
        return s->close_err;
    }
    return 0;
}

int ztm_h2_flush(ztm_h2_session_t *s, uint8_t *buf, size_t cap, size_t *out_len)
{
    *out_len = 0;
    if (s->phase == P_DEAD)
        return 0;
    s->out = buf;
    s->out_cap = cap;
    s->out_len = 0;
    if (s->spill_off < s->spill_len)
        spill_drain(s);
    int rv = 0;
    if (s->spill_off == s->spill_len && s->out_len < cap)
        rv = nghttp2_session_send(s->ng);
    *out_len = s->out_len;
    s->out = NULL;
    s->out_cap = s->out_len = 0;
    if (rv < 0)
        return go_dead(s, rv, "send");
    return 0;
}

bool ztm_h2_want_write(const ztm_h2_session_t *s)
{
    if (s->phase == P_DEAD)
        return false;
    return s->spill_off < s->spill_len || nghttp2_session_want_write(s->ng);
}

bool ztm_h2_wait_peer_close(ztm_h2_session_t *s)
{
    return s->role == ZTM_H2_SERVER && s->goaway_recv &&
           now_ns(s) - s->goaway_recv_at < 2000000000ull;
}

bool ztm_h2_idle(const ztm_h2_session_t *s)
{
    if (s->phase == P_DEAD)
        return true;
    return !ztm_h2_want_write(s) && !nghttp2_session_want_read(s->ng);
}

/* ---- streams: the application's side ------------------------------------ */
int32_t ztm_h2_request(ztm_h2_session_t *s, const ztm_h2_msg_t *req, unsigned flags, void *sdata)
{
    if (s->role != ZTM_H2_CLIENT || !req || !req->method ||
        !headers_valid(req->headers, req->n_headers))
        return -EINVAL;
    if (s->phase != P_OPEN || s->goaway_recv)
        return ZTM_H2_E_CLOSED;
    nghttp2_nv pseudo[5], stack[32];
    size_t np = 0;
    pseudo[np++] = nv_str(":method", req->method);
    if (req->scheme)
        pseudo[np++] = nv_str(":scheme", req->scheme);
    if (req->authority)
        pseudo[np++] = nv_str(":authority", req->authority);
    if (req->path)
        pseudo[np++] = nv_str(":path", req->path);
    if (req->protocol)
        pseudo[np++] = nv_str(":protocol", req->protocol);
    nghttp2_nv *nv = nv_build(stack, 32, pseudo, np, req->headers, req->n_headers);
    if (!nv)
        return -ENOMEM;
    h2_stream_t *st = stream_new(s, 0);
    if (!st) {
        if (nv != stack)
            free(nv);
        return -ENOMEM;
    }
    st->data = sdata;
    st->flags =
        S_APP | (flags & ZTM_H2_BODY ? S_BODY : 0) | (flags & ZTM_H2_TRAILERS ? S_TRAILERS : 0);
    nghttp2_data_provider prd = {.source.ptr = st, .read_callback = on_read};
    bool body = flags & (ZTM_H2_BODY | ZTM_H2_TRAILERS);
    int32_t id =
        nghttp2_submit_request(s->ng, NULL, nv, np + req->n_headers, body ? &prd : NULL, st);
    if (nv != stack)
        free(nv);
    if (id < 0) {
        stream_free(s, st);
        return map_err(s, id, "submit_request");
    }
    st->id = id;
    return id;
}

int ztm_h2_respond(ztm_h2_session_t *s, int32_t stream_id, int status, const ztm_h2_header_t *h,
                   size_t n, unsigned flags)
{
    if (s->role != ZTM_H2_SERVER || status < 100 || status > 999 || !headers_valid(h, n))
        return -EINVAL;
    h2_stream_t *st = stream_find(s, stream_id);
    if (!st || (st->flags & (S_RESPONDED | S_DISCARD)))
        return ZTM_H2_E_STREAM;
    char code[4];
    snprintf(code, sizeof(code), "%d", status);
    nghttp2_nv pseudo = nv_str(":status", code), stack[32];
    nghttp2_nv *nv = nv_build(stack, 32, &pseudo, 1, h, n);
    if (!nv)
        return -ENOMEM;
    uint32_t saved = st->flags;
    st->flags |= S_RESPONDED | (flags & ZTM_H2_BODY ? S_BODY : 0) |
                 (flags & ZTM_H2_TRAILERS ? S_TRAILERS : 0);
    nghttp2_data_provider prd = {.source.ptr = st, .read_callback = on_read};
    bool body = flags & (ZTM_H2_BODY | ZTM_H2_TRAILERS);
    int rv = nghttp2_submit_response(s->ng, stream_id, nv, n + 1, body ? &prd : NULL);
    if (nv != stack)
        free(nv);
    if (rv != 0) {
        st->flags = saved;
        return map_err(s, rv, "submit_response");
    }
    return 0;
}

int ztm_h2_trailers(ztm_h2_session_t *s, int32_t stream_id, const ztm_h2_header_t *h, size_t n)
{
    if (!headers_valid(h, n))
        return -EINVAL;
    h2_stream_t *st = stream_find(s, stream_id);
    if (!st || !(st->flags & S_TRAILERS) || st->trailers || (st->flags & S_TRAILERS_SENT))
        return ZTM_H2_E_STREAM;
    size_t bytes = n * sizeof(nghttp2_nv);
    for (size_t i = 0; i < n; i++)
        bytes += h[i].name_len + h[i].value_len + 2;
    nghttp2_nv *nv = malloc(bytes ? bytes : 1);
    if (!nv)
        return -ENOMEM;
    uint8_t *p = (uint8_t *)(nv + n);
    for (size_t i = 0; i < n; i++) {
        nv[i] = (nghttp2_nv){p, NULL, h[i].name_len, h[i].value_len, NGHTTP2_NV_FLAG_NONE};
        memcpy(p, h[i].name, h[i].name_len);
        p += h[i].name_len;
        *p++ = 0;
        nv[i].value = p;
        if (h[i].value_len)
            memcpy(p, h[i].value, h[i].value_len);
        p += h[i].value_len;
        *p++ = 0;
    }
    st->trailers = nv;
    st->n_trailers = n;
    return ztm_h2_resume(s, stream_id);
}

int ztm_h2_resume(ztm_h2_session_t *s, int32_t stream_id)
{
    h2_stream_t *st = stream_find(s, stream_id);
    if (!st)
        return ZTM_H2_E_STREAM;
    if (!(st->flags & S_DEFERRED))
        return 0;
    st->flags &= ~(uint32_t)S_DEFERRED;
    int rv = nghttp2_session_resume_data(s->ng, stream_id);
    if (rv == NGHTTP2_ERR_INVALID_ARGUMENT)
        return 0; /* nghttp2 had dropped the data item (stream closing) */
    return map_err(s, rv, "resume_data");
}

int ztm_h2_consume(ztm_h2_session_t *s, int32_t stream_id, size_t n)
{
    if (s->phase == P_DEAD || stream_id <= 0 || n == 0)
        return 0;
    return map_err(s, nghttp2_session_consume(s->ng, stream_id, n), "consume");
}

int ztm_h2_reset(ztm_h2_session_t *s, int32_t stream_id, uint32_t error_code)
{
    h2_stream_t *st = stream_find(s, stream_id);
    if (!st)
        return ZTM_H2_E_STREAM;
    st->flags |= S_APP_RESET;
    return map_err(s, nghttp2_submit_rst_stream(s->ng, NGHTTP2_FLAG_NONE, stream_id, error_code),
                   "submit_rst_stream");
}

int ztm_h2_stream_set_data(ztm_h2_session_t *s, int32_t stream_id, void *sdata)
{
    h2_stream_t *st = stream_find(s, stream_id);
    if (!st)
        return ZTM_H2_E_STREAM;
    st->data = sdata;
    return 0;
}

void *ztm_h2_stream_data(ztm_h2_session_t *s, int32_t stream_id)
{
    h2_stream_t *st = stream_find(s, stream_id);
    return st ? st->data : NULL;
}

/* ---- keepalive and shutdown ---------------------------------------------- */
int ztm_h2_ping(ztm_h2_session_t *s)
{
    if (ending(s))
        return ZTM_H2_E_CLOSED;
    if (s->ka_outstanding)
        return 0;
    uint8_t opaque[8] = {PING_KEEPALIVE};
    int rv = nghttp2_submit_ping(s->ng, NGHTTP2_FLAG_NONE, opaque);
    if (rv != 0)
        return map_err(s, rv, "submit_ping");
    s->ka_outstanding = true;
    s->ka_sent = now_ns(s);
    return 0;
}

int ztm_h2_tick(ztm_h2_session_t *s)
{
    if (s->phase == P_DEAD || s->close_err == ZTM_H2_E_DEAD_PEER)
        return s->close_err;
    uint64_t now = now_ns(s);
    if (s->ka_outstanding && now - s->ka_sent >= s->cfg.ping_timeout_ns) {
        ztm_log(ZTM_LOG_WARN, "h2.dead_peer", "conn=%llu ping_ms=%llu",
                (unsigned long long)s->cfg.conn_id,
                (unsigned long long)((now - s->ka_sent) / ZTM_NS_PER_MS));
        if (!ending(s) && nghttp2_session_terminate_session(s->ng, NGHTTP2_NO_ERROR) == 0)
            set_phase(s, P_TERMINATING);
        s->close_err = ZTM_H2_E_DEAD_PEER;
        return ZTM_H2_E_DEAD_PEER;
    }
    if (ending(s))
        return 0;
    if (!s->ka_outstanding && now - s->last_recv >= s->cfg.ping_interval_ns) {
        int rv = ztm_h2_ping(s);
        if (rv < 0)
            return rv;
    }
    if ((s->phase == P_NOTICE || s->phase == P_PING) &&
        now - s->shut_start >= s->cfg.ping_timeout_ns) {
        int rv = nghttp2_submit_goaway(s->ng, NGHTTP2_FLAG_NONE,
                                       nghttp2_session_get_last_proc_stream_id(s->ng),
                                       NGHTTP2_NO_ERROR, NULL, 0);
        if (rv != 0)
            return map_err(s, rv, "submit_goaway");
        set_phase(s, P_FINAL);
    }
    return 0;
}

uint64_t ztm_h2_last_recv(const ztm_h2_session_t *s)
{
    return s->last_recv;
}

bool ztm_h2_ping_outstanding(const ztm_h2_session_t *s, uint64_t *sent_ns)
{
    if (sent_ns)
        *sent_ns = s->ka_outstanding ? s->ka_sent : 0;
    return s->ka_outstanding;
}

uint64_t ztm_h2_rtt(const ztm_h2_session_t *s)
{
    return s->rtt;
}

int ztm_h2_shutdown(ztm_h2_session_t *s)
{
    if (s->phase != P_OPEN)
        return 0;
    int rv;
    if (s->role == ZTM_H2_SERVER) {
        rv = nghttp2_submit_shutdown_notice(s->ng);
        if (rv == 0) {
            set_phase(s, P_NOTICE);
            s->shut_start = now_ns(s);
        }
    } else {
        rv = nghttp2_submit_goaway(s->ng, NGHTTP2_FLAG_NONE,
                                   nghttp2_session_get_last_proc_stream_id(s->ng), NGHTTP2_NO_ERROR,
                                   NULL, 0);
        if (rv == 0)
            set_phase(s, P_FINAL);
    }
    return map_err(s, rv, "shutdown");
}

int ztm_h2_terminate(ztm_h2_session_t *s, uint32_t error_code)
{
    if (ending(s))
        return 0;
    int rv = nghttp2_session_terminate_session(s->ng, error_code);
    if (rv != 0)
        return map_err(s, rv, "terminate");
    set_phase(s, P_TERMINATING);
    s->close_err = ZTM_H2_E_CLOSED;
    return 0;
}

/* ---- queries ------------------------------------------------------------- */
size_t ztm_h2_streams(const ztm_h2_session_t *s)
{
    return s->n_streams;
}

int32_t ztm_h2_recv_window(ztm_h2_session_t *s, int32_t stream_id)
{
    if (s->phase == P_DEAD)
        return -1;
    return stream_id ? nghttp2_session_get_stream_local_window_size(s->ng, stream_id)
                     : nghttp2_session_get_local_window_size(s->ng);
}

int32_t ztm_h2_send_window(ztm_h2_session_t *s, int32_t stream_id)
{
    if (s->phase == P_DEAD)
        return -1;
    return stream_id ? nghttp2_session_get_stream_remote_window_size(s->ng, stream_id)
                     : nghttp2_session_get_remote_window_size(s->ng);
}

const char *ztm_h2_strerror(int err)
{
    switch (err) {
    case 0:
        return "ok";
    case ZTM_H2_E_PROTOCOL:
        return "protocol";
    case ZTM_H2_E_CALM:
        return "calm";
    case ZTM_H2_E_CLOSED:
        return "closed";
    case ZTM_H2_E_DEAD_PEER:
        return "dead_peer";
    case ZTM_H2_E_STREAM:
        return "stream";
    case ZTM_H2_E_INTERNAL:
        return "internal";
    default:
        return err < 0 && err > -4096 ? strerror(-err) : "unknown";
    }
}
