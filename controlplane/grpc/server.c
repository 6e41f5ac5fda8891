/* The control API over gRPC's wire format; see server.h.
 *
 * One call is one HTTP/2 stream. A unary call is answered when its request
 * has arrived whole (exactly one message): HEADERS, one length-prefixed
 * DATA message, then trailers; an error found before that is a trailers-
 * only answer. A Watch call answers HEADERS, then pulls one event at a
 * time from the API's cursor into the stream as the peer's window allows
 * (nothing queues beyond one message per stream), parks when caught up,
 * and is resumed when the store says events were appended. */
#include "controlplane/grpc/server.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "controlplane/ca/identity.h"
#include "controlplane/grpc/forward.h"
#include "controlplane/grpc/frame.h"
#include "controlplane/services/revset.h"
#include "dataplane/h2/h2.h"
#include "dataplane/h2/h2link.h"
#include "dataplane/link/link.h"
#include "dataplane/runtime/log.h"

typedef struct ztm_grpc_conn gconn_t;
typedef struct gcall gcall_t;

#define MAX_ROUTES 4
#define WATCH_ROOM (64u << 10) /* a forwarded Watch asks for this much at a time */

struct ztm_grpc_server {
    ztm_worker_t *w;
    ztm_api_t *api;              /* the store's thread runs the calls here */
    ztm_grpc_fwd_t *fwd;         /* ... or they are forwarded to it */
    ztm_revset_t *revoked;       /* forwarding: the revocations we know of */
    ztm_grpc_local_fn local_fn;  /* ... or local_fn answers (no store) */
    void *local_arg;
    ztm_grpc_route_t routes[MAX_ROUTES];
    size_t n_routes;
    ztm_store_t *store;
    ztm_store_sub_t *sub;
    uint32_t max_message;
    gconn_t *conns;
    unsigned n_conns;
    gcall_t *watches; /* calls streaming Watch events */
    gcall_t *ready_head, *ready_tail; /* unary calls to run at the end of this loop turn */
    bool draining;
    bool in_run;      /* inside ztm_grpc_server_run: cuts wait for the replies */
    ztm_timer_t tick; /* keepalive PINGs, dead peers, the graceful GOAWAY's second step */
    bool cut_pending; /* some connection's identity was revoked */
};

struct ztm_grpc_conn {
    ztm_grpc_server_t *srv;
    ztm_link_t *link;
    ztm_h2_session_t *h2;
    ztm_identity_t identity;
    bool has_identity;
    bool revoked; /* its certificate was revoked: */
    bool cut;     /* ... and it is being closed */
    gconn_t *prev, *next;
};

struct gcall {
    ztm_grpc_route_stream_t route; /* .route NULL: a call of ours */
    gconn_t *c;
    int32_t id;
    const ztm_api_method_t *m;
    ztm_grpc_decoder_t dec;
    uint8_t *req;
    size_t req_len;
    unsigned n_msgs;
    bool answered;     /* response head submitted */
    bool request_done; /* END_STREAM received */
    bool finished;     /* the body is complete: eof on the next pull */
    ztm_timer_t deadline;
    uint8_t *out; /* one framed response message */
    size_t out_len, out_off;
    ztm_api_watch_t *watch;
    ztm_grpc_fcall_t *fc; /* forwarded, not over yet */
    char *local_path; /* local servers: the method's path */
    gcall_t *wprev, *wnext;
    gcall_t *rprev, *rnext;
    bool queued;
    bool dec_ready; /* a known method: the decoder is set up */
};

static const ztm_h2_header_t CT = {"content-type", 12, "application/grpc", 16};

/* ---- answering -------------------------------------------------------- */
static void conn_kick(gconn_t *c)
{
    if (c->h2 && ztm_h2_want_write(c->h2))
        ztm_link_want_write(c->link);
}

static size_t status_headers(ztm_h2_header_t *h, char *code, char *msg, size_t msg_cap,
                             ztm_grpc_status_t st, const char *message)
{
    snprintf(code, 4, "%d", (int)st);
    size_t n = 0;
    h[n++] = (ztm_h2_header_t){"grpc-status", 11, code, strlen(code)};
    if (message && *message) {
        size_t need = ztm_grpc_message_encode(message, strlen(message), msg, msg_cap);
        h[n++] = (ztm_h2_header_t){"grpc-message", 12, msg, need < msg_cap ? need : msg_cap - 1};
    }
    return n;
}

static const char *call_path(const gcall_t *call)
{
    return call->m ? ztm_api_path(call->m) : call->local_path ? call->local_path : "-";
}

/* Trailers-only: the whole answer in one HEADERS frame with END_STREAM. */
static void answer_status(gcall_t *call, ztm_grpc_status_t st, const char *message)
{
    if (call->answered)
        return;
    call->answered = true;
    char code[4], msg[768];
    ztm_h2_header_t h[3];
    h[0] = CT;
    size_t n = 1 + status_headers(h + 1, code, msg, sizeof(msg), st, message);
    ztm_h2_respond(call->c->h2, call->id, 200, h, n, 0);
    if (st != ZTM_GRPC_OK)
        ztm_log(ZTM_LOG_INFO, "grpc.call", "method=%s status=%s message=\"%s\"",
                call_path(call), ztm_grpc_status_name(st), message ? message : "");
}

/* Ends a stream that already has its head, with trailers. */
static void finish_with(gcall_t *call, ztm_grpc_status_t st, const char *message)
{
    char code[4], msg[768];
    ztm_h2_header_t h[2];
    size_t n = status_headers(h, code, msg, sizeof(msg), st, message);
    ztm_h2_trailers(call->c->h2, call->id, h, n);
    call->finished = true;
    ztm_h2_resume(call->c->h2, call->id);
}

static bool frame_message(gcall_t *call, const uint8_t *body, size_t len)
{
    free(call->out);
    call->out = malloc(ZTM_GRPC_PREFIX_LEN + len);
    if (!call->out)
        return false;
    ztm_grpc_prefix_encode(call->out, false, (uint32_t)len);
    if (len)
        memcpy(call->out + ZTM_GRPC_PREFIX_LEN, body, len);
    call->out_len = ZTM_GRPC_PREFIX_LEN + len;
    call->out_off = 0;
    return true;
}

static void watch_unlink(gcall_t *call)
{
    ztm_grpc_server_t *s = call->c->srv;
    if (!call->wprev && s->watches != call)
        return;
    if (call->wprev)
        call->wprev->wnext = call->wnext;
    else
        s->watches = call->wnext;
    if (call->wnext)
        call->wnext->wprev = call->wprev;
    call->wprev = call->wnext = NULL;
}

static void ready_unlink(gcall_t *call)
{
    ztm_grpc_server_t *s = call->c->srv;
    if (!call->queued)
        return;
    if (call->rprev)
        call->rprev->rnext = call->rnext;
    else
        s->ready_head = call->rnext;
    if (call->rnext)
        call->rnext->rprev = call->rprev;
    else
        s->ready_tail = call->rprev;
    call->rprev = call->rnext = NULL;
    call->queued = false;
}

/* Sends a unary call's reply (held until its store group was durable). */
static void send_reply(gcall_t *call, ztm_api_reply_t *reply)
{
    gconn_t *c = call->c;
    if (call->answered)
        return; /* its deadline came first */
    if (reply->status != ZTM_GRPC_OK || !frame_message(call, reply->body, reply->len)) {
        answer_status(call, reply->status != ZTM_GRPC_OK ? reply->status : ZTM_GRPC_RESOURCE_EXHAUSTED,
                      reply->status != ZTM_GRPC_OK ? reply->message : "out of memory");
        return;
    }
    call->answered = true;
    char code[4], msg[8];
    ztm_h2_header_t t[1];
    size_t tn = status_headers(t, code, msg, sizeof(msg), ZTM_GRPC_OK, NULL);
    ztm_h2_respond(c->h2, call->id, 200, &CT, 1, ZTM_H2_BODY | ZTM_H2_TRAILERS);
    ztm_h2_trailers(c->h2, call->id, t, tn);
    call->finished = true; /* the one message is all */
}

static void fc_release(gcall_t *call)
{
    if (call->fc) {
        ztm_grpc_fwd_release(call->fc);
        call->fc = NULL;
    }
}

static void watch_link(gcall_t *call)
{
    ztm_grpc_server_t *s = call->c->srv;
    call->wnext = s->watches;
    if (s->watches)
        s->watches->wprev = call;
    s->watches = call;
}

/* Ends a Watch from this side (drain, revocation): trailers after what is
 * under way, or a trailers-only answer when its head has not gone yet. */
static void watch_end(gcall_t *call, ztm_grpc_status_t st, const char *message)
{
    watch_unlink(call);
    fc_release(call);
    if (!call->answered)
        answer_status(call, st, message);
    else if (!call->finished)
        finish_with(call, st, message);
}

static void run_call(gcall_t *call)
{
    gconn_t *c = call->c;
    ztm_grpc_server_t *s = c->srv;
    const ztm_identity_t *caller = c->has_identity ? &c->identity : NULL;
    ztm_api_reply_t reply = {0};
    if (s->fwd) {
        /* The wire work stays here; the store's thread runs the call. */
        call->fc = ztm_grpc_fwd_call(s->fwd, call->m, caller, call->req, call->req_len, call);
        call->req = NULL;
        if (!call->fc) {
            answer_status(call, ZTM_GRPC_RESOURCE_EXHAUSTED, "out of memory");
            return;
        }
        if (ztm_api_streaming(call->m))
            watch_link(call);
        return;
    }
    if (!call->m || !ztm_api_streaming(call->m)) {
        /* Run with the other calls of this loop turn: one durable write. */
        call->queued = true;
        call->rprev = s->ready_tail;
        if (s->ready_tail)
            s->ready_tail->rnext = call;
        else
            s->ready_head = call;
        s->ready_tail = call;
        return;
    }
    call->watch = ztm_api_watch_open(s->api, call->m, caller, call->req, call->req_len, &reply);
    if (!call->watch) {
        answer_status(call, reply.status, reply.message);
        ztm_api_reply_clear(&reply);
        return;
    }
    ztm_api_reply_clear(&reply);
    call->answered = true;
    ztm_h2_respond(c->h2, call->id, 200, &CT, 1, ZTM_H2_BODY | ZTM_H2_TRAILERS);
    watch_link(call);
}

/* ---- deadlines -------------------------------------------------------- */
static void on_deadline(ztm_timer_t *t)
{
    gcall_t *call = (gcall_t *)((char *)t - offsetof(gcall_t, deadline));
    gconn_t *c = call->c;
    fc_release(call); /* not run yet: it will not be; run: its answer is dropped */
    if (!call->answered) {
        watch_unlink(call);
        /* The answer ends our side of the stream; what the client may still
         * send is consumed and dropped (an RST now would discard the
         * queued answer before it leaves). */
        answer_status(call, ZTM_GRPC_DEADLINE_EXCEEDED, "deadline exceeded (grpc-timeout)");
    } else if (!call->finished) {
        watch_unlink(call);
        finish_with(call, ZTM_GRPC_DEADLINE_EXCEEDED, "deadline exceeded (grpc-timeout)");
    }
    conn_kick(c);
}

/* ---- HTTP/2 callbacks ------------------------------------------------- */
static const ztm_h2_header_t *find_header(const ztm_h2_msg_t *m, const char *name)
{
    size_t nl = strlen(name);
    for (size_t i = 0; i < m->n_headers; i++)
        if (m->headers[i].name_len == nl && memcmp(m->headers[i].name, name, nl) == 0)
            return &m->headers[i];
    return NULL;
}

static void on_request(ztm_h2_session_t *h, void *user, int32_t id, void *sdata,
                       const ztm_h2_msg_t *req)
{
    gconn_t *c = user;
    ztm_grpc_server_t *s = c->srv;
    const char *rpath = req->path ? req->path : "";
    for (size_t i = 0; i < s->n_routes; i++) {
        const ztm_grpc_route_t *rt = &s->routes[i];
        if (strncmp(rpath, rt->prefix, strlen(rt->prefix)) == 0) {
            if (c->revoked) {
                ztm_h2_reset(h, id, ZTM_H2_REFUSED_STREAM);
                return;
            }
            rt->on_request(rt->arg, c, h, id, req);
            return;
        }
    }
    gcall_t *call = calloc(1, sizeof(*call));
    if (!call) {
        ztm_h2_reset(h, id, ZTM_H2_INTERNAL_ERROR);
        return;
    }
    call->c = c;
    call->id = id;
    call->request_done = req->end_stream;
    ztm_timer_init(&call->deadline, on_deadline);
    ztm_h2_stream_set_data(h, id, call);

    if (!req->method || strcmp(req->method, "POST") != 0) {
        call->answered = true;
        ztm_h2_header_t allow = {"allow", 5, "POST", 4};
        ztm_h2_respond(h, id, 405, &allow, 1, 0);
        return;
    }
    const ztm_h2_header_t *ct = find_header(req, "content-type");
    if (!ct || !ztm_grpc_content_type_ok(ct->value, ct->value_len)) {
        call->answered = true;
        ztm_h2_respond(h, id, 415, NULL, 0, 0);
        return;
    }
    if (c->revoked) {
        answer_status(call, ZTM_GRPC_UNAUTHENTICATED, "certificate revoked");
        return;
    }
    const char *path = rpath;
    if (s->local_fn) {
        call->local_path = strdup(path);
        if (!call->local_path) {
            answer_status(call, ZTM_GRPC_RESOURCE_EXHAUSTED, "out of memory");
            return;
        }
    } else if (!(call->m = ztm_api_find(path, strlen(path)))) {
        char msg[160];
        snprintf(msg, sizeof(msg), "unknown method %.120s", path);
        answer_status(call, ZTM_GRPC_UNIMPLEMENTED, msg);
        return;
    }
    const ztm_h2_header_t *enc = find_header(req, "grpc-encoding");
    bool identity_enc = !enc || (enc->value_len == 8 && memcmp(enc->value, "identity", 8) == 0);
    ztm_grpc_decoder_init(&call->dec, s->max_message, false);
    call->dec_ready = true;
    if (!identity_enc)
        ztm_log(ZTM_LOG_DEBUG, "grpc.encoding", "encoding=\"%.*s\" msg=\"not supported\"",
                (int)enc->value_len, enc->value);
    const ztm_h2_header_t *to = find_header(req, "grpc-timeout");
    if (to) {
        uint64_t ns;
        if (ztm_grpc_timeout_parse(to->value, to->value_len, &ns) < 0) {
            answer_status(call, ZTM_GRPC_INVALID_ARGUMENT, "malformed grpc-timeout");
            return;
        }
        uint64_t now = ztm_worker_now(s->w);
        uint64_t at = ns > UINT64_MAX - now ? UINT64_MAX : now + ns;
        ztm_timer_arm(ztm_worker_timers(s->w), &call->deadline, at);
    }
}

static void on_data(ztm_h2_session_t *h, void *user, int32_t id, void *sdata, const uint8_t *data,
                    size_t len)
{
    gcall_t *call = sdata;
    if (call && call->route.route) {
        call->route.route->on_data(call->route.route->arg, h, id, sdata, data, len);
        return;
    }
    ztm_h2_consume(h, id, len); /* bounded by the message limit below */
    if (!call || call->answered || !call->dec_ready)
        return;
    while (len) {
        ztm_grpc_message_t msg;
        bool ready;
        ssize_t n = ztm_grpc_decoder_feed(&call->dec, data, len, &msg, &ready);
        if (n < 0) {
            answer_status(call, ztm_grpc_error_status((int)n), ztm_grpc_strerror((int)n));
            return;
        }
        data += n;
        len -= (size_t)n;
        if (!ready)
            continue;
        if (++call->n_msgs > 1) {
            answer_status(call, ZTM_GRPC_INVALID_ARGUMENT, "more than one request message");
            return;
        }
        call->req = malloc(msg.len ? msg.len : 1);
        if (!call->req) {
            answer_status(call, ZTM_GRPC_RESOURCE_EXHAUSTED, "out of memory");
            return;
        }
        memcpy(call->req, msg.data, msg.len);
        call->req_len = msg.len;
    }
}

static void on_end_stream(ztm_h2_session_t *h, void *user, int32_t id, void *sdata)
{
    gcall_t *call = sdata;
    if (!call)
        return;
    if (call->route.route) {
        call->route.route->on_end_stream(call->route.route->arg, h, id, sdata);
        return;
    }
    call->request_done = true;
    if (call->answered || !call->dec_ready)
        return;
    int err = ztm_grpc_decoder_finish(&call->dec);
    if (err < 0) {
        answer_status(call, ztm_grpc_error_status(err), ztm_grpc_strerror(err));
        return;
    }
    if (call->n_msgs != 1) {
        answer_status(call, ZTM_GRPC_INVALID_ARGUMENT, "missing request message");
        return;
    }
    run_call(call);
}

static ssize_t read_body(ztm_h2_session_t *h, void *user, int32_t id, void *sdata, uint8_t *dst,
                         size_t max, bool *eof)
{
    gcall_t *call = sdata;
    if (!call)
        return -1;
    if (call->route.route)
        return call->route.route->read_body(call->route.route->arg, h, id, sdata, dst, max, eof);
    for (;;) {
        if (call->out_off < call->out_len) {
            size_t n = call->out_len - call->out_off;
            if (n > max)
                n = max;
            memcpy(dst, call->out + call->out_off, n);
            call->out_off += n;
            *eof = call->finished && call->out_off == call->out_len;
            return (ssize_t)n;
        }
        if (call->fc) {
            ztm_grpc_fwd_more(call->fc, WATCH_ROOM);
            return 0; /* parked until the control plane answers */
        }
        if (call->finished || !call->watch) {
            *eof = true;
            return 0;
        }
        uint8_t *body = NULL;
        size_t len = 0;
        ztm_api_reply_t reply = {0};
        int r = ztm_api_watch_next(call->watch, &body, &len, &reply);
        if (r == 1) {
            bool ok = frame_message(call, body, len);
            free(body);
            if (!ok) {
                watch_unlink(call);
                finish_with(call, ZTM_GRPC_RESOURCE_EXHAUSTED, "out of memory");
            }
            continue;
        }
        if (r == 0)
            return 0; /* caught up: parked until the store says more */
        watch_unlink(call);
        char code[4], msg[768];
        ztm_h2_header_t t[2];
        size_t tn = status_headers(t, code, msg, sizeof(msg), reply.status, reply.message);
        ztm_h2_trailers(h, id, t, tn);
        ztm_api_reply_clear(&reply);
        call->finished = true;
        *eof = true;
        return 0;
    }
}

static void on_stream_close(ztm_h2_session_t *h, void *user, int32_t id, void *sdata,
                            uint32_t error_code)
{
    gcall_t *call = sdata;
    if (!call)
        return;
    if (call->route.route) {
        call->route.route->on_stream_close(call->route.route->arg, h, id, sdata, error_code);
        return;
    }
    ztm_grpc_server_t *s = call->c->srv;
    ztm_timer_cancel(ztm_worker_timers(s->w), &call->deadline);
    watch_unlink(call);
    ready_unlink(call);
    fc_release(call);
    if (call->watch)
        ztm_api_watch_close(call->watch);
    if (call->dec_ready)
        ztm_grpc_decoder_free(&call->dec);
    free(call->local_path);
    free(call->req);
    free(call->out);
    free(call);
}

static const ztm_h2_callbacks_t h2_cbs = {
    .on_request = on_request,
    .on_data = on_data,
    .on_end_stream = on_end_stream,
    .read_body = read_body,
    .on_stream_close = on_stream_close,
};

/* ---- the link upper layer --------------------------------------------- */
static uint64_t h2_clock(void *user)
{
    gconn_t *c = user;
    return ztm_worker_now(c->srv->w);
}

static void after_h2(gconn_t *c, int r)
{
    ztm_h2link_settle(c->h2, c->link, r);
}

static int on_open(ztm_link_t *l, void *user)
{
    gconn_t *c = user;
    ztm_tls_conn_t *tls = ztm_link_tls(l);
    X509 *peer = tls ? ztm_tls_conn_peer_cert(tls) : NULL;
    if (peer) {
        int r = ztm_identity_from_cert(peer, &c->identity);
        if (r < 0) {
            /* Chained to our CA, yet not an identity we issue: refuse. */
            ztm_log(ZTM_LOG_WARN, "grpc.identity_refused", "link=%llu error=\"%s\"",
                    (unsigned long long)ztm_link_id(l), ztm_ca_strerror(r));
            return -EACCES;
        }
        c->has_identity = true;
    }
    ztm_h2_config_t hc = {.conn_id = ztm_link_id(l), .clock = h2_clock};
    int r = ztm_h2_new(&c->h2, ZTM_H2_SERVER, &h2_cbs, c, &hc);
    if (r < 0)
        return r;
    if (c->srv->draining)
        ztm_h2_shutdown(c->h2);
    ztm_link_want_write(l);
    return 0;
}

static int on_link_data(ztm_link_t *l, void *user, const uint8_t *data, size_t len)
{
    gconn_t *c = user;
    ztm_h2link_feed(c->h2, l, data, len);
    return 0;
}

static size_t produce(ztm_link_t *l, void *user, uint8_t *buf, size_t cap)
{
    gconn_t *c = user;
    return ztm_h2link_produce(c->h2, l, buf, cap);
}

static void on_close(ztm_link_t *l, void *user, const char *reason)
{
    gconn_t *c = user;
    ztm_grpc_server_t *s = c->srv;
    ztm_h2_free(c->h2); /* on_stream_close frees each call */
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->n_conns--;
    free(c);
}

static const ztm_link_upper_t upper = {
    .on_open = on_open,
    .on_data = on_link_data,
    .produce = produce,
    .on_close = on_close,
};

/* ---- the server ------------------------------------------------------- */
/* Revocation is enforced at once: a connection of a revoked identity takes
 * no new call (UNAUTHENTICATED), its watches end with UNAUTHENTICATED, what
 * is already answered goes out, and it closes. Runs after replies of the
 * current store group were sent, so a caller that revoked itself still gets
 * its answer. */
static void cut_revoked(ztm_grpc_server_t *s)
{
    if (!s->cut_pending)
        return;
    s->cut_pending = false;
    gconn_t *next;
    for (gconn_t *c = s->conns; c; c = next) {
        next = c->next;
        if (!c->revoked || c->cut)
            continue;
        c->cut = true;
        ztm_log(ZTM_LOG_INFO, "grpc.revoked_cut", "link=%llu endpoint=%s serial=%s",
                (unsigned long long)ztm_link_id(c->link), c->identity.name, c->identity.serial);
        if (!c->h2) {
            ztm_link_close(c->link, "certificate revoked");
            continue;
        }
        for (gcall_t *call = s->watches, *wn; call; call = wn) {
            wn = call->wnext;
            if (call->c == c && !call->finished)
                watch_end(call, ZTM_GRPC_UNAUTHENTICATED, "certificate revoked");
        }
        for (size_t i = 0; i < s->n_routes; i++)
            if (s->routes[i].on_conn_revoked)
                s->routes[i].on_conn_revoked(s->routes[i].arg, c);
        ztm_h2_shutdown(c->h2);
        conn_kick(c); /* trailers and GOAWAY go out before close_notify */
        ztm_link_close(c->link, "certificate revoked");
    }
}

static void on_store_notify(void *arg, uint64_t version)
{
    ztm_grpc_server_t *s = arg;
    for (gconn_t *c = s->conns; c; c = c->next) {
        if (s->api && c->has_identity && !c->revoked &&
            ztm_api_identity_revoked(s->api, &c->identity)) {
            c->revoked = true;
            s->cut_pending = true;
        }
    }
    for (gcall_t *call = s->watches; call; call = call->wnext) {
        if (call->c->revoked || !call->c->h2)
            continue;
        ztm_h2_resume(call->c->h2, call->id);
        conn_kick(call->c);
    }
    if (!s->in_run)
        cut_revoked(s);
}

static void on_tick(ztm_timer_t *t)
{
    ztm_grpc_server_t *s = (ztm_grpc_server_t *)((char *)t - offsetof(ztm_grpc_server_t, tick));
    gconn_t *next;
    for (gconn_t *c = s->conns; c; c = next) {
        next = c->next;
        if (c->h2 && !c->cut)
            after_h2(c, ztm_h2_tick(c->h2));
    }
    ztm_timer_arm(ztm_worker_timers(s->w), &s->tick, ztm_worker_now(s->w) + ZTM_NS_PER_SEC);
}

int ztm_grpc_server_new(ztm_worker_t *w, ztm_api_t *api, ztm_store_t *store,
                        const ztm_grpc_server_config_t *cfg, ztm_grpc_server_t **out)
{
    ztm_grpc_server_t *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->w = w;
    s->api = api;
    s->store = store;
    s->max_message = cfg && cfg->max_message ? cfg->max_message : ZTM_GRPC_DEFAULT_MAX_MESSAGE;
    int r = store ? ztm_store_subscribe(store, on_store_notify, s, &s->sub) : 0;
    if (r < 0) {
        free(s);
        return r;
    }
    ztm_timer_init(&s->tick, on_tick);
    ztm_timer_arm(ztm_worker_timers(w), &s->tick, ztm_worker_now(w) + ZTM_NS_PER_SEC);
    *out = s;
    return 0;
}

void ztm_grpc_server_free(ztm_grpc_server_t *s)
{
    if (!s)
        return;
    ztm_timer_cancel(ztm_worker_timers(s->w), &s->tick);
    if (s->store)
        ztm_store_unsubscribe(s->store, s->sub);
    ztm_grpc_fwd_free(s->fwd);
    ztm_revset_put(s->revoked);
    free(s);
}

int ztm_grpc_server_accept(ztm_grpc_server_t *s, int fd, ztm_tls_ctx_t *tls)
{
    gconn_t *c = calloc(1, sizeof(*c));
    if (!c) {
        close(fd);
        return -ENOMEM;
    }
    c->srv = s;
    ztm_link_config_t lc = {.tls = tls};
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->n_conns++;
    int r = ztm_link_accept(s->w, fd, &lc, &upper, c, &c->link);
    if (r < 0) {
        s->conns = c->next;
        if (c->next)
            c->next->prev = NULL;
        s->n_conns--;
        free(c);
    }
    return r;
}

void ztm_grpc_server_drain(ztm_grpc_server_t *s)
{
    s->draining = true;
    gconn_t *next;
    for (gconn_t *c = s->conns; c; c = next) {
        next = c->next;
        if (c->h2) {
            ztm_h2_shutdown(c->h2);
            /* Watch streams never end by themselves: end them now. */
            for (gcall_t *call = s->watches, *wn; call; call = wn) {
                wn = call->wnext;
                if (call->c == c && !call->finished)
                    watch_end(call, ZTM_GRPC_UNAVAILABLE, "server shutting down");
            }
            after_h2(c, 0);
        } else {
            ztm_link_close(c->link, "drain");
        }
    }
}

void ztm_grpc_server_stop(ztm_grpc_server_t *s)
{
    gconn_t *next;
    for (gconn_t *c = s->conns; c; c = next) {
        next = c->next;
        ztm_link_abort(c->link, "stopped");
    }
}

void ztm_grpc_server_run(ztm_grpc_server_t *s)
{
    if (!s->ready_head)
        return;
    enum { MAX_GROUP = 256 };
    gcall_t *batch[MAX_GROUP];
    ztm_api_reply_t replies[MAX_GROUP];
    s->in_run = true;
    while (s->ready_head) {
        size_t n = 0;
        int g = s->store ? ztm_store_group_begin(s->store) : 0;
        while (s->ready_head && n < MAX_GROUP) {
            gcall_t *call = s->ready_head;
            ready_unlink(call);
            gconn_t *c = call->c;
            memset(&replies[n], 0, sizeof(replies[n]));
            const ztm_identity_t *caller = c->has_identity ? &c->identity : NULL;
            if (s->api)
                ztm_api_unary(s->api, call->m, caller, call->req, call->req_len, &replies[n]);
            else
                s->local_fn(s->local_arg, call->local_path, caller, call->req, call->req_len,
                            &replies[n]);
            batch[n++] = call;
        }
        int end = g < 0 ? g : s->store ? ztm_store_group_end(s->store) : 0;
        if (end < 0)
            ztm_log(ZTM_LOG_ERROR, "grpc.store_write", "calls=%zu error=\"%s\"", n,
                    end < -4095 ? ztm_store_strerror(end) : strerror(-end));
        for (size_t i = 0; i < n; i++) {
            if (end < 0) {
                /* The group was undone: nothing of these calls happened. */
                ztm_api_reply_clear(&replies[i]);
                replies[i].status = ZTM_GRPC_UNAVAILABLE;
                snprintf(replies[i].message, sizeof(replies[i].message),
                         "the store could not be written; nothing was changed, retry");
            }
            send_reply(batch[i], &replies[i]);
            ztm_api_reply_clear(&replies[i]);
            conn_kick(batch[i]->c);
        }
    }
    s->in_run = false;
    cut_revoked(s);
}

const char *ztm_grpc_server_verify(void *arg, ztm_tls_conn_t *conn, X509 *peer)
{
    ztm_grpc_server_t *s = arg;
    ztm_identity_t id;
    if (ztm_identity_from_cert(peer, &id) < 0)
        return "not_an_identity";
    if (s->fwd ? ztm_revset_has(s->revoked, id.serial) : ztm_api_identity_revoked(s->api, &id))
        return "revoked";
    return NULL;
}

/* ---- forwarding ------------------------------------------------------- */
static void on_fwd_reply(void *arg, void *p, ztm_api_reply_t *reply)
{
    gcall_t *call = p;
    call->fc = NULL; /* the answer is the end of it */
    watch_unlink(call);
    if (ztm_api_streaming(call->m) && !call->answered) {
        answer_status(call, reply->status, reply->message); /* a Watch refused */
    } else {
        send_reply(call, reply);
    }
    conn_kick(call->c);
}

static void on_fwd_watch(void *arg, void *p, bool opened, uint8_t *data, size_t len,
                         ztm_api_reply_t *end)
{
    gcall_t *call = p;
    gconn_t *c = call->c;
    if (opened && !call->answered) {
        call->answered = true;
        ztm_h2_respond(c->h2, call->id, 200, &CT, 1, ZTM_H2_BODY | ZTM_H2_TRAILERS);
    }
    if (data) {
        free(call->out); /* drained already: we asked for more only then */
        call->out = data;
        call->out_len = len;
        call->out_off = 0;
    }
    if (end) {
        call->fc = NULL;
        watch_unlink(call);
        if (!call->finished)
            finish_with(call, end->status, end->message);
    }
    ztm_h2_resume(c->h2, call->id);
    conn_kick(c);
}

int ztm_grpc_server_new_forward(ztm_worker_t *w, ztm_outbox_t *ob, unsigned control,
                                const ztm_grpc_server_config_t *cfg, ztm_grpc_server_t **out)
{
    ztm_grpc_server_t *s;
    int r = ztm_grpc_server_new(w, NULL, NULL, cfg, &s);
    if (r < 0)
        return r;
    ztm_grpc_fwd_sink_t sink = {.on_reply = on_fwd_reply, .on_watch = on_fwd_watch, .arg = s};
    if ((r = ztm_grpc_fwd_new(w, ob, control, &sink, &s->fwd)) < 0) {
        ztm_grpc_server_free(s);
        return r;
    }
    *out = s;
    return 0;
}

bool ztm_grpc_server_message(ztm_grpc_server_t *s, const ztm_msg_t *m)
{
    return s->fwd && ztm_grpc_fwd_message(s->fwd, m);
}

void ztm_grpc_server_set_revoked(ztm_grpc_server_t *s, ztm_revset_t *revoked)
{
    ztm_revset_put(s->revoked);
    s->revoked = revoked;
    for (gconn_t *c = s->conns; c; c = c->next) {
        if (c->has_identity && !c->revoked && ztm_revset_has(revoked, c->identity.serial)) {
            c->revoked = true;
            s->cut_pending = true;
        }
    }
    cut_revoked(s);
}

int ztm_grpc_server_new_local(ztm_worker_t *w, ztm_grpc_local_fn fn, void *arg,
                              const ztm_grpc_server_config_t *cfg, ztm_grpc_server_t **out)
{
    int r = ztm_grpc_server_new(w, NULL, NULL, cfg, out);
    if (r == 0) {
        (*out)->local_fn = fn;
        (*out)->local_arg = arg;
    }
    return r;
}

int ztm_grpc_server_add_route(ztm_grpc_server_t *s, const ztm_grpc_route_t *route)
{
    if (s->n_routes == MAX_ROUTES || !route->prefix || !route->on_request || !route->on_data ||
        !route->on_end_stream || !route->read_body || !route->on_stream_close)
        return -EINVAL;
    s->routes[s->n_routes++] = *route;
    return 0;
}

const ztm_identity_t *ztm_grpc_conn_identity(const ztm_grpc_conn_t *c)
{
    return c->has_identity ? &c->identity : NULL;
}

ztm_link_t *ztm_grpc_conn_link(const ztm_grpc_conn_t *c)
{
    return c->link;
}

void ztm_grpc_conn_kick(ztm_grpc_conn_t *c)
{
    if (c->h2)
        ztm_h2link_settle(c->h2, c->link, 0);
}

unsigned ztm_grpc_server_conns(const ztm_grpc_server_t *s)
{
    return s->n_conns;
}
