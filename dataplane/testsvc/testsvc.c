/* The HTTP/2 test service and client; see testsvc.h.
 *
 * Each connection is a link (socket + TLS/kTLS/plaintext) carrying one
 * HTTP/2 session. Bodies stream under HTTP/2 flow control in both roles:
 * an echo stream buffers at most what the peer's stream window allows, and
 * credit goes back only as its bytes leave. */
#include "dataplane/testsvc/testsvc.h"

#include <errno.h>
#include <inttypes.h>
#include <openssl/sha.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dataplane/h2/h2.h"
#include "dataplane/h2/h2link.h"
#include "dataplane/link/link.h"
#include "dataplane/runtime/acceptor.h"
#include "dataplane/runtime/log.h"
#include "dataplane/runtime/worker.h"
#include "dataplane/tls/ktls.h"

#define PATTERN_PERIOD 251
#define PATTERN_SPAN (128 * 1024)
#define ECHO_MAX (1u << 20) /* = the stream window: a peer cannot send more unconsumed */
#define TICK_NS ZTM_NS_PER_SEC

static uint8_t pattern[PATTERN_PERIOD + PATTERN_SPAN];

static void pattern_init(void)
{
    for (size_t i = 0; i < sizeof(pattern); i++)
        pattern[i] = ztm_testsvc_pattern(i);
}

/* Copies N pattern bytes starting at body offset OFF. */
static void pattern_fill(uint8_t *dst, uint64_t off, size_t n)
{
    while (n) {
        size_t chunk = n < PATTERN_SPAN ? n : PATTERN_SPAN;
        memcpy(dst, pattern + off % PATTERN_PERIOD, chunk);
        dst += chunk;
        off += chunk;
        n -= chunk;
    }
}

static bool pattern_check(const uint8_t *p, uint64_t off, size_t n)
{
    while (n) {
        size_t chunk = n < PATTERN_SPAN ? n : PATTERN_SPAN;
        if (memcmp(p, pattern + off % PATTERN_PERIOD, chunk) != 0)
            return false;
        p += chunk;
        off += chunk;
        n -= chunk;
    }
    return true;
}

/* ---- a connection: link + HTTP/2 ------------------------------------ */
typedef struct svc svc_t;
typedef struct conn conn_t;

struct conn {
    svc_t *svc;
    ztm_worker_t *w;
    ztm_link_t *link;
    ztm_h2_session_t *h2;
    conn_t *prev, *next;
};

/* Per-worker state, shared by server and client. */
struct svc {
    const ztm_testsvc_config_t *cfg;
    ztm_tls_ctx_t *tls;
    ztm_worker_t *w;
    bool client;
    ztm_acceptor_t acceptor;
    bool listening;
    conn_t *conns;
    unsigned n_conns;
    ztm_timer_t tick;
    /* client */
    unsigned issued, done;
    uint64_t received;
    int failed;
    uint64_t t0;
    SHA256_CTX sha;
    const char *record_layer;
};

typedef struct {
    int *listen_fds;
    const ztm_testsvc_config_t *cfg;
    ztm_tls_ctx_t *tls;
    char addr_str[ZTM_ADDRSTRLEN];
    _Atomic int result;
} shared_t;

static uint64_t h2_clock(void *user)
{
    conn_t *c = user;
    return ztm_worker_now(c->w);
}

static void conn_after_h2(conn_t *c, int r)
{
    ztm_h2link_settle(c->h2, c->link, r);
}

static int on_link_data(ztm_link_t *l, void *user, const uint8_t *data, size_t len)
{
    conn_t *c = user;
    if (!c->h2)
        return -EPROTO;
    ztm_h2link_feed(c->h2, l, data, len);
    return 0;
}

static size_t on_link_produce(ztm_link_t *l, void *user, uint8_t *buf, size_t cap)
{
    conn_t *c = user;
    return ztm_h2link_produce(c->h2, l, buf, cap);
}

static void on_link_close(ztm_link_t *l, void *user, const char *reason)
{
    conn_t *c = user;
    svc_t *s = c->svc;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->n_conns--;
    ztm_h2_free(c->h2);
    if (s->client && s->done < s->cfg->requests && !s->failed) {
        ztm_log(ZTM_LOG_ERROR, "h2test.failed", "reason=\"connection closed: %s\" done=%u", reason, s->done);
        s->failed = 1;
    }
    free(c);
    if (s->client) /* the client's one connection: the run is over */
        ztm_engine_shutdown(ztm_worker_engine(s->w), ztm_worker_id(s->w));
}

static conn_t *conn_new(svc_t *s)
{
    conn_t *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->svc = s;
    c->w = s->w;
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->n_conns++;
    return c;
}

/* ---- server ------------------------------------------------------------ */
typedef enum { ST_BYTES, ST_ECHO, ST_STATIC } sstream_kind_t;

typedef struct {
    sstream_kind_t kind;
    uint64_t off, remaining;
    uint8_t *buf;
    size_t cap, head, len;
    bool ended;
    const char *body;
} sstream_t;

static void srv_reply(ztm_h2_session_t *h, int32_t id, int status, const char *body)
{
    sstream_t *st = calloc(1, sizeof(*st));
    if (!st) {
        ztm_h2_reset(h, id, ZTM_H2_INTERNAL_ERROR);
        return;
    }
    st->kind = ST_STATIC;
    st->body = body;
    st->remaining = strlen(body);
    ztm_h2_stream_set_data(h, id, st);
    ztm_h2_header_t hd[] = {{"content-type", 12, "text/plain", 10}};
    ztm_h2_respond(h, id, status, hd, 1, ZTM_H2_BODY);
}

static void srv_on_request(ztm_h2_session_t *h, void *user, int32_t id, void *sdata,
                           const ztm_h2_msg_t *req)
{
    const char *m = req->method ? req->method : "";
    const char *p = req->path ? req->path : "";
    if (strcmp(m, "GET") == 0 && strncmp(p, "/bytes/", 7) == 0) {
        char *end;
        errno = 0;
        unsigned long long n = strtoull(p + 7, &end, 10);
        if (errno || end == p + 7 || *end || n > (1ull << 40)) {
            srv_reply(h, id, 400, "bad size\n");
            return;
        }
        sstream_t *st = calloc(1, sizeof(*st));
        if (!st) {
            ztm_h2_reset(h, id, ZTM_H2_INTERNAL_ERROR);
            return;
        }
        st->kind = ST_BYTES;
        st->remaining = n;
        ztm_h2_stream_set_data(h, id, st);
        char len[24];
        int ll = snprintf(len, sizeof(len), "%llu", n);
        ztm_h2_header_t hd[] = {{"content-type", 12, "application/octet-stream", 24},
                                {"content-length", 14, len, (size_t)ll}};
        ztm_h2_respond(h, id, 200, hd, 2, n ? ZTM_H2_BODY : 0);
    } else if (strcmp(m, "POST") == 0 || strcmp(m, "PUT") == 0) {
        sstream_t *st = calloc(1, sizeof(*st));
        if (!st) {
            ztm_h2_reset(h, id, ZTM_H2_INTERNAL_ERROR);
            return;
        }
        st->kind = ST_ECHO;
        st->ended = req->end_stream;
        ztm_h2_stream_set_data(h, id, st);
        ztm_h2_header_t hd[] = {{"content-type", 12, "application/octet-stream", 24}};
        ztm_h2_respond(h, id, 200, hd, 1, ZTM_H2_BODY);
    } else if (strcmp(m, "GET") == 0 && strcmp(p, "/") == 0) {
        srv_reply(h, id, 200, "ok\n");
    } else {
        srv_reply(h, id, 404, "not found\n");
    }
}

static void srv_on_data(ztm_h2_session_t *h, void *user, int32_t id, void *sdata,
                        const uint8_t *data, size_t len)
{
    sstream_t *st = sdata;
    if (!st || st->kind != ST_ECHO) {
        ztm_h2_consume(h, id, len); /* a body we do not want: drop it */
        return;
    }
    if (st->head + st->len + len > st->cap) {
        if (st->head) {
            memmove(st->buf, st->buf + st->head, st->len);
            st->head = 0;
        }
        if (st->len + len > st->cap) {
            size_t cap = st->cap ? st->cap : 65536;
            while (cap < st->len + len)
                cap *= 2;
            if (cap > ECHO_MAX) {
                /* Only a peer that ignores flow control gets here. */
                ztm_h2_reset(h, id, ZTM_H2_FLOW_CONTROL_ERROR);
                return;
            }
            uint8_t *nb = realloc(st->buf, cap);
            if (!nb) {
                ztm_h2_reset(h, id, ZTM_H2_INTERNAL_ERROR);
                return;
            }
            st->buf = nb;
            st->cap = cap;
        }
    }
    memcpy(st->buf + st->head + st->len, data, len);
    st->len += len;
    ztm_h2_resume(h, id);
}

static void srv_on_end_stream(ztm_h2_session_t *h, void *user, int32_t id, void *sdata)
{
    sstream_t *st = sdata;
    if (st && st->kind == ST_ECHO) {
        st->ended = true;
        ztm_h2_resume(h, id);
    }
}

static ssize_t srv_read_body(ztm_h2_session_t *h, void *user, int32_t id, void *sdata,
                             uint8_t *dst, size_t max, bool *eof)
{
    sstream_t *st = sdata;
    if (!st)
        return -1;
    size_t n;
    switch (st->kind) {
    case ST_BYTES:
        n = st->remaining < max ? (size_t)st->remaining : max;
        pattern_fill(dst, st->off, n);
        st->off += n;
        st->remaining -= n;
        *eof = st->remaining == 0;
        return (ssize_t)n;
    case ST_STATIC:
        n = st->remaining < max ? (size_t)st->remaining : max;
        memcpy(dst, st->body + st->off, n);
        st->off += n;
        st->remaining -= n;
        *eof = st->remaining == 0;
        return (ssize_t)n;
    case ST_ECHO:
        n = st->len < max ? st->len : max;
        if (n) {
            memcpy(dst, st->buf + st->head, n);
            st->head += n;
            st->len -= n;
            ztm_h2_consume(h, id, n); /* the peer may send this much more */
        }
        *eof = st->ended && st->len == 0;
        return (ssize_t)n;
    }
    return -1;
}

static void srv_on_stream_close(ztm_h2_session_t *h, void *user, int32_t id, void *sdata,
                                uint32_t error_code)
{
    sstream_t *st = sdata;
    if (st) {
        free(st->buf);
        free(st);
    }
}

static const ztm_h2_callbacks_t srv_h2 = {
    .on_request = srv_on_request,
    .on_data = srv_on_data,
    .on_end_stream = srv_on_end_stream,
    .read_body = srv_read_body,
    .on_stream_close = srv_on_stream_close,
};

static int srv_on_open(ztm_link_t *l, void *user)
{
    conn_t *c = user;
    ztm_h2_config_t hc = {.conn_id = ztm_link_id(l), .clock = h2_clock};
    int r = ztm_h2_new(&c->h2, ZTM_H2_SERVER, &srv_h2, c, &hc);
    if (r < 0)
        return r;
    if (c->svc->w && ztm_worker_draining(c->svc->w))
        ztm_h2_shutdown(c->h2);
    ztm_link_want_write(l);
    return 0;
}

static const ztm_link_upper_t srv_upper = {
    .on_open = srv_on_open,
    .on_data = on_link_data,
    .produce = on_link_produce,
    .on_close = on_link_close,
};

static void srv_on_accept(ztm_acceptor_t *a, int fd)
{
    svc_t *s = a->user;
    conn_t *c = conn_new(s);
    if (!c) {
        close(fd);
        return;
    }
    ztm_link_config_t lc = {.tls = s->tls};
    if (ztm_link_accept(s->w, fd, &lc, &srv_upper, c, &c->link) < 0) {
        c->link = NULL;
        /* no link, no on_close: unlink by hand */
        s->conns = c->next;
        if (c->next)
            c->next->prev = NULL;
        s->n_conns--;
        free(c);
    }
}

/* Keepalive and dead-peer checks for every connection, once a second. */
static void on_tick(ztm_timer_t *t)
{
    svc_t *s = (svc_t *)((char *)t - offsetof(svc_t, tick));
    conn_t *next;
    for (conn_t *c = s->conns; c; c = next) {
        next = c->next;
        if (c->h2)
            conn_after_h2(c, ztm_h2_tick(c->h2));
    }
    ztm_timer_arm(ztm_worker_timers(s->w), &s->tick, ztm_worker_now(s->w) + TICK_NS);
}

/* ---- the engine service (server) ------------------------------------- */
static int srv_start(ztm_worker_t *w, void *arg)
{
    shared_t *sh = arg;
    svc_t *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->cfg = sh->cfg;
    s->tls = sh->tls;
    s->w = w;
    ztm_worker_set_data(w, s);
    ztm_timer_init(&s->tick, on_tick);
    ztm_timer_arm(ztm_worker_timers(w), &s->tick, ztm_worker_now(w) + TICK_NS);
    ztm_acceptor_start(&s->acceptor, w, sh->listen_fds[ztm_worker_id(w)], srv_on_accept, s);
    sh->listen_fds[ztm_worker_id(w)] = -1;
    s->listening = true;
    return 0;
}

static void srv_drain(ztm_worker_t *w, void *arg)
{
    svc_t *s = ztm_worker_data(w);
    if (s->listening)
        ztm_acceptor_stop(&s->acceptor);
    ztm_timer_cancel(ztm_worker_timers(w), &s->tick);
    conn_t *next;
    for (conn_t *c = s->conns; c; c = next) {
        next = c->next;
        if (c->h2) {
            ztm_h2_shutdown(c->h2);
            conn_after_h2(c, 0);
        } else {
            ztm_link_close(c->link, "drain");
        }
    }
}

static void srv_stop(ztm_worker_t *w, void *arg)
{
    svc_t *s = ztm_worker_data(w);
    conn_t *next;
    for (conn_t *c = s->conns; c; c = next) {
        next = c->next;
        ztm_link_abort(c->link, "drain deadline");
    }
}

static void srv_tick(ztm_worker_t *w, void *arg)
{
    svc_t *s = ztm_worker_data(w);
    if (!ztm_worker_draining(w))
        return;
    /* Graceful GOAWAY needs a PING round trip: keep ticking the sessions. */
    conn_t *next;
    for (conn_t *c = s->conns; c; c = next) {
        next = c->next;
        if (c->h2)
            conn_after_h2(c, ztm_h2_tick(c->h2));
    }
}

static bool srv_idle(ztm_worker_t *w, void *arg)
{
    svc_t *s = ztm_worker_data(w);
    return !s || (s->n_conns == 0 && (!s->listening || ztm_acceptor_closed(&s->acceptor)));
}

static void srv_finish(ztm_worker_t *w, void *arg)
{
    svc_t *s = ztm_worker_data(w);
    if (!s)
        return;
    if (s->listening && s->acceptor.fd >= 0)
        close(s->acceptor.fd);
    ztm_timers_t *ts = ztm_worker_timers(w);
    ztm_timer_cancel(ts, &s->tick);
    free(s);
    ztm_worker_set_data(w, NULL);
}

static void srv_ready(void *arg, unsigned workers)
{
    shared_t *sh = arg;
    ztm_log_ready("h2test.listen", "addr=%s workers=%u tls=%s ktls=%s ktls_kernel=%s",
            sh->addr_str, workers, sh->tls ? "mtls" : "none", ztm_ktls_mode_name(sh->cfg->ktls),
            ztm_ktls_available() == 0 ? "yes" : "no");
}

static const ztm_service_t server_service = {
    .name = "h2test",
    .start = srv_start,
    .tick = srv_tick,
    .drain = srv_drain,
    .stop = srv_stop,
    .idle = srv_idle,
    .finish = srv_finish,
    .draining = NULL,
};

static int make_tls(const ztm_testsvc_config_t *cfg, ztm_tls_role_t role, ztm_tls_ctx_t **out)
{
    *out = NULL;
    if (!cfg->cert_file)
        return 0;
    ztm_tls_config_t tc = {
        .role = role,
        .cert_file = cfg->cert_file,
        .key_file = cfg->key_file,
        .ca_file = cfg->ca_file,
        .ktls = cfg->ktls,
        .client_cert_optional = cfg->client_cert_optional,
    };
    return ztm_tls_ctx_new(out, &tc);
}

int ztm_testsvc_server(const ztm_testsvc_config_t *cfg)
{
    pattern_init();
    unsigned n = cfg->workers ? cfg->workers : ztm_engine_cpus();
    shared_t sh = {.cfg = cfg};
    int ret = make_tls(cfg, ZTM_TLS_SERVER, &sh.tls);
    if (ret < 0)
        return ret;
    sh.listen_fds = calloc(n, sizeof(int));
    if (!sh.listen_fds) {
        ztm_tls_ctx_free(sh.tls);
        return -ENOMEM;
    }
    ztm_addr_t bound;
    ret = ztm_listen_group(&cfg->addr, n, 4096, sh.listen_fds, &bound);
    if (ret < 0)
        goto out;
    ztm_addr_format((struct sockaddr *)&bound.ss, sh.addr_str, sizeof(sh.addr_str));
    ztm_engine_config_t ec = {.workers = n, .pin = true, .drain_timeout_ns = cfg->drain_timeout_ns};
    ret = ztm_engine_run(&ec, &server_service, &sh, srv_ready);
    for (unsigned i = 0; i < n; i++)
        if (sh.listen_fds[i] >= 0)
            close(sh.listen_fds[i]);
out:
    free(sh.listen_fds);
    ztm_tls_ctx_free(sh.tls);
    return ret;
}

/* ---- client ------------------------------------------------------------ */
typedef struct {
    uint64_t size, sent, received;
    int status;
    bool bad;
} cstream_t;

static void cli_issue(conn_t *c);

static void cli_fail(svc_t *s, const char *what, int32_t id)
{
    if (!s->failed)
        ztm_log(ZTM_LOG_ERROR, "h2test.failed", "stream=%d reason=\"%s\"", id, what);
    s->failed = 1;
}

static void cli_on_response(ztm_h2_session_t *h, void *user, int32_t id, void *sdata,
                            const ztm_h2_msg_t *resp)
{
    cstream_t *st = sdata;
    st->status = resp->status;
    if (resp->status != 200)
        cli_fail(((conn_t *)user)->svc, "status not 200", id);
}

static void cli_on_data(ztm_h2_session_t *h, void *user, int32_t id, void *sdata,
                        const uint8_t *data, size_t len)
{
    conn_t *c = user;
    cstream_t *st = sdata;
    if (!pattern_check(data, st->received, len) || st->received + len > st->size) {
        st->bad = true;
        cli_fail(c->svc, "body bytes differ from the pattern", id);
    }
    SHA256_Update(&c->svc->sha, data, len);
    st->received += len;
    c->svc->received += len;
    ztm_h2_consume(h, id, len);
}

static ssize_t cli_read_body(ztm_h2_session_t *h, void *user, int32_t id, void *sdata,
                             uint8_t *dst, size_t max, bool *eof)
{
    cstream_t *st = sdata;
    uint64_t left = st->size - st->sent;
    size_t n = left < max ? (size_t)left : max;
    pattern_fill(dst, st->sent, n);
    st->sent += n;
    *eof = st->sent == st->size;
    return (ssize_t)n;
}

static void cli_on_stream_close(ztm_h2_session_t *h, void *user, int32_t id, void *sdata,
                                uint32_t error_code)
{
    conn_t *c = user;
    svc_t *s = c->svc;
    cstream_t *st = sdata;
    if (error_code)
        cli_fail(s, "stream reset", id);
    else if (st->received != st->size)
        cli_fail(s, "short body", id);
    free(st);
    s->done++;
    if (s->done == s->cfg->requests) {
        uint64_t ns = ztm_worker_now(s->w) - s->t0;
        unsigned char d[SHA256_DIGEST_LENGTH];
        char hex[2 * SHA256_DIGEST_LENGTH + 1];
        SHA256_Final(d, &s->sha);
        for (int i = 0; i < SHA256_DIGEST_LENGTH; i++)
            snprintf(hex + 2 * i, 3, "%02x", d[i]);
        double secs = (double)ns / 1e9;
        printf("%s requests=%u %s=%" PRIu64 " received=%" PRIu64 " seconds=%.3f mbytes_per_s=%.1f "
               "record_layer=%s sha256=%s\n",
               s->failed ? "FAIL" : "ok", s->done, s->cfg->post ? "post_size" : "get_size",
               s->cfg->size, s->received, secs, secs > 0 ? (double)s->received / secs / 1e6 : 0.0,
               ztm_link_record_layer(c->link), hex);
        fflush(stdout);
        ztm_h2_shutdown(c->h2);
    } else {
        cli_issue(c);
    }
}

static const ztm_h2_callbacks_t cli_h2 = {
    .on_response = cli_on_response,
    .on_data = cli_on_data,
    .read_body = cli_read_body,
    .on_stream_close = cli_on_stream_close,
};

static void cli_issue(conn_t *c)
{
    svc_t *s = c->svc;
    const ztm_testsvc_config_t *cfg = s->cfg;
    while (s->issued < cfg->requests && s->issued - s->done < cfg->streams) {
        cstream_t *st = calloc(1, sizeof(*st));
        if (!st) {
            cli_fail(s, "out of memory", 0);
            return;
        }
        st->size = cfg->size;
        char path[40];
        snprintf(path, sizeof(path), cfg->post ? "/echo" : "/bytes/%" PRIu64, cfg->size);
        ztm_h2_msg_t req = {.method = cfg->post ? "POST" : "GET",
                            .scheme = s->tls ? "https" : "http",
                            .authority = cfg->sni ? cfg->sni : "ztm",
                            .path = path};
        int32_t id = ztm_h2_request(c->h2, &req, cfg->post && cfg->size ? ZTM_H2_BODY : 0, st);
        if (id < 0) {
            free(st);
            cli_fail(s, "cannot open a stream", 0);
            return;
        }
        s->issued++;
    }
}

static int cli_on_open(ztm_link_t *l, void *user)
{
    conn_t *c = user;
    svc_t *s = c->svc;
    ztm_h2_config_t hc = {.conn_id = ztm_link_id(l), .clock = h2_clock};
    int r = ztm_h2_new(&c->h2, ZTM_H2_CLIENT, &cli_h2, c, &hc);
    if (r < 0)
        return r;
    s->t0 = ztm_worker_now(s->w);
    cli_issue(c);
    ztm_link_want_write(l);
    return 0;
}

static const ztm_link_upper_t cli_upper = {
    .on_open = cli_on_open,
    .on_data = on_link_data,
    .produce = on_link_produce,
    .on_close = on_link_close,
};

static void on_client_deadline(ztm_timer_t *t)
{
    svc_t *s = (svc_t *)((char *)t - offsetof(svc_t, tick));
    cli_fail(s, "timed out", 0);
    for (conn_t *c = s->conns; c; c = c->next)
        ztm_link_abort(c->link, "client timeout");
}

static int cli_start(ztm_worker_t *w, void *arg)
{
    shared_t *sh = arg;
    svc_t *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->cfg = sh->cfg;
    s->tls = sh->tls;
    s->w = w;
    s->client = true;
    SHA256_Init(&s->sha);
    ztm_worker_set_data(w, s);
    ztm_timer_init(&s->tick, on_client_deadline);
    ztm_timer_arm(ztm_worker_timers(w), &s->tick, ztm_worker_now(w) + sh->cfg->timeout_ns);
    conn_t *c = conn_new(s);
    if (!c)
        return -ENOMEM;
    ztm_link_config_t lc = {.tls = s->tls, .sni = sh->cfg->sni};
    int r = ztm_link_connect(w, &sh->cfg->addr, &lc, &cli_upper, c, &c->link);
    if (r < 0) {
        s->conns = NULL;
        s->n_conns = 0;
        free(c);
        return r;
    }
    return 0;
}

static bool cli_idle(ztm_worker_t *w, void *arg)
{
    svc_t *s = ztm_worker_data(w);
    return !s || s->n_conns == 0;
}

static void cli_stop(ztm_worker_t *w, void *arg)
{
    svc_t *s = ztm_worker_data(w);
    conn_t *next;
    for (conn_t *c = s->conns; c; c = next) {
        next = c->next;
        ztm_link_abort(c->link, "stopped");
    }
}

static void cli_finish(ztm_worker_t *w, void *arg)
{
    shared_t *sh = arg;
    svc_t *s = ztm_worker_data(w);
    if (!s)
        return;
    ztm_timer_cancel(ztm_worker_timers(w), &s->tick);
    if (s->failed || s->done < s->cfg->requests)
        atomic_store(&sh->result, 1);
    free(s);
    ztm_worker_set_data(w, NULL);
}

static const ztm_service_t client_service = {
    .name = "h2test-client",
    .start = cli_start,
    .stop = cli_stop,
    .idle = cli_idle,
    .finish = cli_finish,
};

int ztm_testsvc_client(const ztm_testsvc_config_t *cfg)
{
    pattern_init();
    shared_t sh = {.cfg = cfg};
    int ret = make_tls(cfg, ZTM_TLS_CLIENT, &sh.tls);
    if (ret < 0)
        return ret;
    ztm_engine_config_t ec = {.workers = 1, .pin = false, .drain_timeout_ns = 5 * ZTM_NS_PER_SEC};
    ret = ztm_engine_run(&ec, &client_service, &sh, NULL);
    ztm_tls_ctx_free(sh.tls);
    if (ret < 0)
        return ret;
    return atomic_load(&sh.result);
}
