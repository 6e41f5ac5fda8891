/* One unary gRPC call on a private engine; see client.h. */
#include "controlplane/grpc/client.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "dataplane/h2/h2.h"
#include "dataplane/h2/h2link.h"
#include "dataplane/link/link.h"
#include "dataplane/runtime/log.h"
#include "dataplane/runtime/worker.h"

typedef struct {
    const ztm_grpc_target_t *t;
    const char *path;
    const uint8_t *req;
    size_t req_len;
    ztm_grpc_result_t *out;
    ztm_tls_ctx_t *tls;
    /* on the worker */
    ztm_worker_t *w;
    ztm_link_t *link;
    ztm_h2_session_t *h2;
    bool link_live;
    uint8_t *frame; /* prefix + request */
    size_t frame_len, frame_off;
    ztm_grpc_decoder_t dec;
    int http_status;
    bool have_status, have_body;
    ztm_timer_t deadline;
    bool done;
    ztm_grpc_message_cb on_message; /* server-streaming: each message */
    void *cb_arg;
    bool stopped;                   /* the callback asked to stop */
    int32_t stream_id;
} call_t;

/* Records a local failure: the message is WHAT followed by DETAIL. */
static void fail(call_t *c, ztm_grpc_status_t st, const char *what, const char *detail)
{
    if (c->done)
        return;
    c->out->status = st;
    snprintf(c->out->message, sizeof(c->out->message), "%s%s", what, detail);
    c->done = true;
}

static void finish(call_t *c)
{
    if (c->link_live)
        ztm_link_close(c->link, "done");
    else
        ztm_engine_shutdown(ztm_worker_engine(c->w), ztm_worker_id(c->w));
}

static void on_response(ztm_h2_session_t *h, void *user, int32_t id, void *sdata,
                        const ztm_h2_msg_t *resp)
{
    call_t *c = user;
    c->http_status = resp->status;
    /* Trailers-only answers carry grpc-status in the head. */
    for (size_t i = 0; i < resp->n_headers; i++) {
        const ztm_h2_header_t *hd = &resp->headers[i];
        if (hd->name_len == 11 && memcmp(hd->name, "grpc-status", 11) == 0) {
            ztm_grpc_status_parse(hd->value, hd->value_len, &c->out->status);
            c->have_status = true;
        } else if (hd->name_len == 12 && memcmp(hd->name, "grpc-message", 12) == 0) {
            ztm_grpc_message_decode(hd->value, hd->value_len, c->out->message, sizeof(c->out->message));
        }
    }
}

static void on_data(ztm_h2_session_t *h, void *user, int32_t id, void *sdata, const uint8_t *data,
                    size_t len)
{
    call_t *c = user;
    ztm_h2_consume(h, id, len);
    while (len) {
        ztm_grpc_message_t msg;
        bool ready;
        ssize_t n = ztm_grpc_decoder_feed(&c->dec, data, len, &msg, &ready);
        if (n < 0) {
            fail(c, ZTM_GRPC_INTERNAL, "bad response framing: ", ztm_grpc_strerror((int)n));
            ztm_h2_reset(h, id, ZTM_H2_CANCEL);
            return;
        }
        data += n;
        len -= (size_t)n;
        if (ready && c->on_message) {
            c->have_body = true;
            if (!c->stopped && c->on_message(c->cb_arg, msg.data, msg.len)) {
                c->stopped = true;
                fail(c, ZTM_GRPC_CANCELLED, "stopped by the client", "");
                ztm_h2_reset(h, id, ZTM_H2_CANCEL);
                return;
            }
        } else if (ready && !c->have_body) {
            c->out->body = malloc(msg.len ? msg.len : 1);
            if (c->out->body) {
                memcpy(c->out->body, msg.data, msg.len);
                c->out->len = msg.len;
                c->have_body = true;
            }
        }
    }
}

static void on_trailers(ztm_h2_session_t *h, void *user, int32_t id, void *sdata,
                        const ztm_h2_header_t *t, size_t n)
{
    call_t *c = user;
    ztm_h2_msg_t m = {.headers = t, .n_headers = n, .status = c->http_status};
    on_response(h, user, id, sdata, &m);
}

static ssize_t read_body(ztm_h2_session_t *h, void *user, int32_t id, void *sdata, uint8_t *dst,
                         size_t max, bool *eof)
{
    call_t *c = user;
    size_t n = c->frame_len - c->frame_off;
    if (n > max)
        n = max;
    memcpy(dst, c->frame + c->frame_off, n);
    c->frame_off += n;
    *eof = c->frame_off == c->frame_len;
    return (ssize_t)n;
}

static void on_stream_close(ztm_h2_session_t *h, void *user, int32_t id, void *sdata,
                            uint32_t error_code)
{
    call_t *c = user;
    if (!c->done) {
        if (c->http_status && c->http_status != 200 && !c->have_status) {
            char code[8];
            snprintf(code, sizeof(code), "%d", c->http_status);
            fail(c, ZTM_GRPC_UNKNOWN, "the server answered HTTP ", code);
        } else if (!c->have_status) {
            fail(c, ZTM_GRPC_UNAVAILABLE, error_code ? "the server reset the call" : "the call ended without a status", "");
        } else if (c->out->status == ZTM_GRPC_OK && !c->have_body && !c->on_message) {
            fail(c, ZTM_GRPC_INTERNAL, "OK without a response message", "");
        } else {
            c->done = true;
        }
    }
    ztm_h2_shutdown(h);
}

static const ztm_h2_callbacks_t h2_cbs = {
    .on_response = on_response,
    .on_data = on_data,
    .on_trailers = on_trailers,
    .read_body = read_body,
    .on_stream_close = on_stream_close,
};

static uint64_t h2_clock(void *user)
{
    call_t *c = user;
    return ztm_worker_now(c->w);
}

static int on_open(ztm_link_t *l, void *user)
{
    call_t *c = user;
    ztm_h2_config_t hc = {.conn_id = ztm_link_id(l), .clock = h2_clock};
    int r = ztm_h2_new(&c->h2, ZTM_H2_CLIENT, &h2_cbs, c, &hc);
    if (r < 0)
        return r;
    char timeout[ZTM_GRPC_TIMEOUT_MAX];
    size_t tl = c->t->timeout_ns ? ztm_grpc_timeout_format(c->t->timeout_ns, timeout) : 0;
    ztm_h2_header_t hd[] = {
        {"content-type", 12, "application/grpc", 16},
        {"te", 2, "trailers", 8},
        {"user-agent", 10, "ztm/" ZTM_VERSION, 4 + strlen(ZTM_VERSION)},
        {"grpc-timeout", 12, timeout, tl},
    };
    ztm_h2_msg_t req = {.method = "POST", .scheme = "https",
                        .authority = c->t->sni ? c->t->sni : "ztm", .path = c->path,
                        .headers = hd, .n_headers = tl ? 4 : 3};
    c->stream_id = ztm_h2_request(c->h2, &req, ZTM_H2_BODY, NULL);
    if (c->stream_id < 0)
        return -EPROTO;
    ztm_link_want_write(l);
    return 0;
}

static int on_link_data(ztm_link_t *l, void *user, const uint8_t *data, size_t len)
{
    call_t *c = user;
    ztm_h2link_feed(c->h2, l, data, len);
    return 0;
}

static size_t produce(ztm_link_t *l, void *user, uint8_t *buf, size_t cap)
{
    call_t *c = user;
    return ztm_h2link_produce(c->h2, l, buf, cap);
}

static void on_close(ztm_link_t *l, void *user, const char *reason)
{
    call_t *c = user;
    c->link_live = false;
    fail(c, ZTM_GRPC_UNAVAILABLE, "connection closed: ", reason);
    ztm_h2_free(c->h2);
    c->h2 = NULL;
    finish(c);
}

static const ztm_link_upper_t upper = {
    .on_open = on_open, .on_data = on_link_data, .produce = produce, .on_close = on_close};

static void on_deadline(ztm_timer_t *t)
{
    call_t *c = (call_t *)((char *)t - offsetof(call_t, deadline));
    fail(c, ZTM_GRPC_DEADLINE_EXCEEDED, "no answer before the deadline", "");
    if (c->link_live)
        ztm_link_abort(c->link, "deadline");
}

static int svc_start(ztm_worker_t *w, void *arg)
{
    call_t *c = arg;
    c->w = w;
    ztm_timer_init(&c->deadline, on_deadline);
    if (c->t->timeout_ns)
        ztm_timer_arm(ztm_worker_timers(w), &c->deadline, ztm_worker_now(w) + c->t->timeout_ns);
    ztm_link_config_t lc = {.tls = c->tls, .sni = c->t->sni, .connect_timeout_ns = c->t->timeout_ns};
    int r = ztm_link_connect(w, &c->t->addr, &lc, &upper, c, &c->link);
    if (r < 0)
        return r;
    c->link_live = true;
    return 0;
}

static bool svc_idle(ztm_worker_t *w, void *arg)
{
    call_t *c = arg;
    return !c->link_live;
}

static void svc_stop(ztm_worker_t *w, void *arg)
{
    call_t *c = arg;
    if (c->link_live)
        ztm_link_abort(c->link, "stopped");
}

static void svc_drain(ztm_worker_t *w, void *arg)
{
    call_t *c = arg;
    if (!c->done)
        fail(c, ZTM_GRPC_CANCELLED, "interrupted", "");
    if (c->link_live)
        ztm_link_close(c->link, "interrupted");
}

static void svc_finish(ztm_worker_t *w, void *arg)
{
    call_t *c = arg;
    ztm_timer_cancel(ztm_worker_timers(w), &c->deadline);
}

static const ztm_service_t client_service = {
    .name = "grpc-client", .start = svc_start, .idle = svc_idle, .drain = svc_drain,
    .stop = svc_stop, .finish = svc_finish};

void ztm_grpc_result_clear(ztm_grpc_result_t *r)
{
    free(r->body);
    r->body = NULL;
    r->len = 0;
}

static int run_call(const ztm_grpc_target_t *t, const char *path, const uint8_t *req, size_t len,
                    ztm_grpc_message_cb on_message, void *arg, ztm_grpc_result_t *out, bool deadline)
{
    memset(out, 0, sizeof(*out));
    ztm_grpc_target_t tt = *t;
    if (!tt.timeout_ns && deadline)
        tt.timeout_ns = 30 * ZTM_NS_PER_SEC;
    call_t c = {.t = &tt, .path = path, .req = req, .req_len = len, .out = out,
                .on_message = on_message, .cb_arg = arg};
    if (len > UINT32_MAX)
        return -EMSGSIZE;
    ztm_tls_config_t tc = {.role = ZTM_TLS_CLIENT, .cert_file = t->cert_file,
                           .key_file = t->key_file, .ca_file = t->ca_file, .ca_pin = t->ca_pin};
    /* A Unix socket is local and its mode guards it: plaintext. */
    int r = t->addr.ss.ss_family == AF_UNIX ? 0 : ztm_tls_ctx_new(&c.tls, &tc);
    if (r < 0)
        return r;
    c.frame_len = ZTM_GRPC_PREFIX_LEN + len;
    c.frame = malloc(c.frame_len);
    if (!c.frame) {
        ztm_tls_ctx_free(c.tls);
        return -ENOMEM;
    }
    ztm_grpc_prefix_encode(c.frame, false, (uint32_t)len);
    if (len)
        memcpy(c.frame + ZTM_GRPC_PREFIX_LEN, req, len);
    ztm_grpc_decoder_init(&c.dec, 0, false);
    ztm_engine_config_t ec = {.workers = 1, .pin = false, .buf_count = 16, .buf_size = 16384,
                              .drain_timeout_ns = ZTM_NS_PER_SEC};
    r = ztm_engine_run(&ec, &client_service, &c, NULL);
    if (r < 0 && !c.done)
        fail(&c, ZTM_GRPC_UNAVAILABLE, "cannot connect: ", strerror(-r));
    ztm_grpc_decoder_free(&c.dec);
    free(c.frame);
    ztm_tls_ctx_free(c.tls);
    if (out->status != ZTM_GRPC_OK)
        ztm_grpc_result_clear(out);
    return 0;
}

int ztm_grpc_call(const ztm_grpc_target_t *t, const char *path, const uint8_t *req, size_t len,
                  ztm_grpc_result_t *out)
{
    return run_call(t, path, req, len, NULL, NULL, out, true);
}

int ztm_grpc_stream(const ztm_grpc_target_t *t, const char *path, const uint8_t *req, size_t len,
                    ztm_grpc_message_cb on_message, void *arg, ztm_grpc_result_t *out)
{
    return run_call(t, path, req, len, on_message, arg, out, false);
}
