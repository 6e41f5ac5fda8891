/* ztm-grpcbench: the control plane's call rates, from a C client on ztm's own
 * stack (link + BoringSSL TLS 1.3 + HTTP/2 + gRPC framing on the engine).
 *
 *   ztm-grpcbench unary --connect HOST:PORT --ca CA --cert CERT --key KEY
 *                       [--sni localhost] [--conns 4] [--streams 32]
 *                       [--seconds 5] [--warmup 1] [--workers 1]
 *                       [--server-pid PID] [--json]
 *   ztm-grpcbench join  --connect HOST:PORT --ca CA --cert CERT --key KEY
 *                       --count N [--sni localhost] [--conns 4] [--streams 32]
 *                       [--workers 1] [--timeout 300] [--server-pid PID] [--json]
 *
 * unary: finds one endpoint (ListEndpoints, page_size 1), then opens CONNS
 * connections with the given (admin) identity; each keeps STREAMS
 * Mesh.GetEndpoint calls of that endpoint in flight and issues a new one as
 * each completes. Calls that complete within the SECONDS after the WARMUP
 * are counted: calls/s, and each call's latency (request sent to status
 * received).
 *
 * join: untimed first, with the admin identity: COUNT Mesh.Invite calls
 * (distinct names, pipelined the same way), then COUNT P-256 keys and CSRs
 * (the joiners' own work). Timed: CONNS connections with server-only TLS (no
 * client certificate, as a joiner has none) run the COUNT Mesh.Join calls
 * (token + CSR), STREAMS at a time per connection. Joins/s is counted from
 * the engine's start (connections and handshakes included) to the last
 * answer.
 *
 * Latency percentiles come from a log-linear histogram (64 sub-buckets per
 * power of two: within 0.8 % of the exact value), so memory does not grow
 * with the number of calls. --server-pid adds the server's CPU use over the
 * measured period (from /proc; 100 % = one core); the client's own is always
 * reported.
 *
 * Exit codes: 0 every call succeeded; 1 some call failed (the figures are
 * still printed, with the first failure's status and message), or the
 * benchmark could not run; 2 usage. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "controlplane/ca/identity.h"
#include "controlplane/ca/keys.h"
#include "controlplane/grpc/client.h"
#include "controlplane/grpc/frame.h"
#include "dataplane/h2/h2.h"
#include "dataplane/link/link.h"
#include "dataplane/runtime/log.h"
#include "dataplane/runtime/net.h"
#include "dataplane/runtime/worker.h"
#include "dataplane/tls/tls.h"
#include "ztm/v1/mesh.pb-c.h"

#define PROG "ztm-grpcbench"
#define MAX_CONNS 1024
#define MAX_STREAMS 1000 /* the server's SETTINGS_MAX_CONCURRENT_STREAMS */
#define MAX_WORKERS 64
#define MAX_COUNT 100000 /* requests, tokens and CSRs are held in memory: ~1.5 KiB each */
#define CALL_TIMEOUT_NS (60 * ZTM_NS_PER_SEC) /* sent as grpc-timeout */

static void usage(FILE *f)
{
    fprintf(f,
            "Usage:\n"
            "  " PROG " unary --connect HOST:PORT --ca CA --cert CERT --key KEY [--sni NAME]\n"
            "                [--conns 4] [--streams 32] [--seconds 5] [--warmup 1] [--workers 1]\n"
            "                [--server-pid PID] [--json]\n"
            "  " PROG " join  --connect HOST:PORT --ca CA --cert CERT --key KEY --count N\n"
            "                [--sni NAME] [--conns 4] [--streams 32] [--workers 1] [--timeout 300]\n"
            "                [--server-pid PID] [--json]\n"
            "\n"
            "unary: CONNS connections with the identity CERT/KEY, each keeping STREAMS\n"
            "       Mesh.GetEndpoint calls in flight for SECONDS after a WARMUP; prints\n"
            "       calls/s, latency percentiles (µs) and errors.\n"
            "join:  makes N invites with CERT/KEY (an admin) and N keys + CSRs, untimed;\n"
            "       then, timed, runs the N Mesh.Join calls over CONNS connections with\n"
            "       server-only TLS, STREAMS at a time each; prints joins/s, latency, errors.\n"
            "CA is the mesh CA the server's certificate chains to; NAME (default localhost)\n"
            "is the server name sent and checked. --server-pid PID adds the server's CPU %%\n"
            "over the measured period. --json: one JSON object on stdout.\n"
            "Exit code 1 when any call failed (the figures are still printed).\n");
}

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, PROG ": error: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (try '" PROG " --help')\n");
    va_end(ap);
    return 2;
}

static void die_msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void die_msg(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, PROG ": error: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
}

/* ---- latency histogram ----------------------------------------------------- */

/* Values in ns. Below 128: one bucket per ns; above, 64 buckets per power of
 * two up to 2^48 ns (78 hours). */
#define H_BUCKETS (41 * 64 + 128)

typedef struct {
    uint64_t b[H_BUCKETS];
    uint64_t n, min, max;
    double sum;
} hist_t;

static unsigned h_index(uint64_t v)
{
    if (v < 128)
        return (unsigned)v;
    if (v >= (1ull << 48))
        v = (1ull << 48) - 1;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v);
    unsigned shift = msb - 6;
    return shift * 64 + (unsigned)(v >> shift);
}

/* The middle of bucket I. */
static uint64_t h_value(unsigned i)
{
    if (i < 128)
        return i;
    unsigned shift = i / 64 - 1;
    uint64_t top = i - shift * 64;
    return (top << shift) + ((1ull << shift) - 1) / 2;
}

static void h_add(hist_t *h, uint64_t v)
{
    h->b[h_index(v)]++;
    if (!h->n || v < h->min)
        h->min = v;
    if (v > h->max)
        h->max = v;
    h->n++;
    h->sum += (double)v;
}

static void h_merge(hist_t *into, const hist_t *from)
{
    if (!from->n)
        return;
    for (unsigned i = 0; i < H_BUCKETS; i++)
        into->b[i] += from->b[i];
    if (!into->n || from->min < into->min)
        into->min = from->min;
    if (from->max > into->max)
        into->max = from->max;
    into->n += from->n;
    into->sum += from->sum;
}

/* Nearest-rank percentile, in µs. */
static double h_pct_us(const hist_t *h, double p)
{
    if (!h->n)
        return 0;
    uint64_t rank = (uint64_t)ceil(p / 100.0 * (double)h->n);
    if (rank < 1)
        rank = 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < H_BUCKETS; i++) {
        seen += h->b[i];
        if (seen >= rank) {
            uint64_t v = h_value(i);
            if (v < h->min)
                v = h->min;
            if (v > h->max)
                v = h->max;
            return (double)v / 1000.0;
        }
    }
    return (double)h->max / 1000.0;
}

/* ---- CPU time ----------------------------------------------------------------- */

static double self_cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* User + system CPU seconds of process PID (all its threads); < 0 if unknown. */
static double proc_cpu_s(long pid)
{
    if (pid <= 0)
        return -1;
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p)
        return -1;
    /* after ")": state (field 3) ... utime (14), stime (15) */
    unsigned long long ut = 0, st = 0;
    if (sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return -1;
    long tck = sysconf(_SC_CLK_TCK);
    return (double)(ut + st) / (double)(tck > 0 ? tck : 100);
}

/* ---- one phase: calls of one method over C connections × S streams ------------ */

typedef struct job job_t;
typedef struct wstate wstate_t;
typedef struct conn conn_t;
typedef struct slot slot_t;

/* A request, framed (gRPC prefix + message). */
typedef struct {
    uint8_t *data;
    size_t len;
} frame_t;

/* Checks (and may keep) the response message of request IDX. Returns NULL,
 * or why the answer is wrong. */
typedef const char *(*on_message_fn)(job_t *j, size_t idx, const uint8_t *data, size_t len);

struct job {
    const char *method; /* "GetEndpoint", for messages */
    const char *path;
    ztm_tls_ctx_t *tls;
    ztm_addr_t addr;
    const char *sni;
    unsigned n_conns, streams, workers;
    /* repeat: frames[0] again and again until end_at; else frames[0..n) once each */
    bool repeat;
    const frame_t *frames;
    size_t n;
    _Atomic size_t next;
    uint64_t t0, warm_at, end_at, hard_at; /* CLOCK_MONOTONIC ns */
    on_message_fn on_message;
    void *arg;
    char timeout_hdr[ZTM_GRPC_TIMEOUT_MAX];
    size_t timeout_len;
    long server_pid;
    /* the results */
    pthread_mutex_t lock;
    char first_error[600];
    _Atomic unsigned workers_done;
    wstate_t *ws;
    conn_t *conns;
    double cpu_t0, cpu_t1, srv_cpu0, srv_cpu1, self_cpu0, self_cpu1; /* repeat: sampled on worker 0 */
};

struct wstate {
    job_t *j;
    ztm_worker_t *w;
    unsigned id;
    unsigned live; /* links not yet closed */
    bool stopping; /* issue no new call */
    bool done;
    ztm_timer_t warm_timer, end_timer, hard_timer;
    uint64_t end_at; /* repeat: the window's end (earlier if interrupted) */
    hist_t hist;
    uint64_t ok, errors, late; /* late: OK but outside the measured window */
    uint64_t last_done;
    bool interrupted;
};

struct slot {
    conn_t *c;
    size_t idx;
    const frame_t *f;
    size_t off;
    uint64_t started;
    ztm_grpc_decoder_t dec;
    int http_status;
    bool have_status;
    unsigned n_msgs;
    const char *bad; /* the response message was wrong */
    ztm_grpc_status_t status;
    char message[256];
};

struct conn {
    wstate_t *ws;
    unsigned id;
    ztm_link_t *link;
    bool link_live, opened, finished, freeing;
    ztm_h2_session_t *h2;
    slot_t *slots;
    unsigned *free_slots;
    unsigned n_free;
    unsigned inflight;
    const char *close_reason;
};

static void job_error(job_t *j, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void job_error(job_t *j, const char *fmt, ...)
{
    pthread_mutex_lock(&j->lock);
    if (!j->first_error[0]) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(j->first_error, sizeof(j->first_error), fmt, ap);
        va_end(ap);
    }
    pthread_mutex_unlock(&j->lock);
}

static void worker_done(wstate_t *ws)
{
    if (ws->done)
        return;
    ws->done = true;
    ztm_timers_t *ts = ztm_worker_timers(ws->w);
    ztm_timer_cancel(ts, &ws->end_timer);
    ztm_timer_cancel(ts, &ws->hard_timer);
    job_t *j = ws->j;
    /* The last worker to finish ends the engine. */
    if (atomic_fetch_add(&j->workers_done, 1) + 1 == j->workers)
        ztm_engine_shutdown(ztm_worker_engine(ws->w), ztm_worker_id(ws->w));
}

/* Takes the next request; false when there is none (or no more now). */
static bool next_request(conn_t *c, size_t *idx, const frame_t **f)
{
    wstate_t *ws = c->ws;
    job_t *j = ws->j;
    if (ws->stopping)
        return false;
    if (j->repeat) {
        if (ztm_now_ns() >= ws->end_at)
            return false;
        *idx = 0;
        *f = &j->frames[0];
        return true;
    }
    if (atomic_load_explicit(&j->next, memory_order_relaxed) >= j->n)
        return false;
    size_t i = atomic_fetch_add(&j->next, 1);
    if (i >= j->n)
        return false;
    *idx = i;
    *f = &j->frames[i];
    return true;
}

static void conn_finish(conn_t *c)
{
    if (c->finished)
        return;
    c->finished = true;
    if (c->h2) {
        ztm_h2_shutdown(c->h2); /* GOAWAY; the link closes once the session is idle */
        if (ztm_h2_want_write(c->h2))
            ztm_link_want_write(c->link);
        else if (ztm_h2_idle(c->h2))
            ztm_link_close(c->link, "done");
    } else if (c->link_live) {
        ztm_link_close(c->link, "done");
    }
}

/* Keeps the connection's streams busy; finishes it when no work is left. */
static void conn_fill(conn_t *c)
{
    job_t *j = c->ws->j;
    if (c->freeing || c->finished || !c->h2)
        return;
    while (c->n_free) {
        size_t idx;
        const frame_t *f;
        if (!next_request(c, &idx, &f))
            break;
        slot_t *s = &c->slots[c->free_slots[c->n_free - 1]];
        s->idx = idx;
        s->f = f;
        s->off = 0;
        s->http_status = 0;
        s->have_status = false;
        s->n_msgs = 0;
        s->bad = NULL;
        s->status = ZTM_GRPC_UNKNOWN;
        s->message[0] = 0;
        ztm_h2_header_t hd[] = {
            {"content-type", 12, "application/grpc", 16},
            {"te", 2, "trailers", 8},
            {"grpc-timeout", 12, j->timeout_hdr, j->timeout_len},
            {"user-agent", 10, PROG "/" ZTM_VERSION, strlen(PROG "/" ZTM_VERSION)},
        };
        ztm_h2_msg_t req = {.method = "POST", .scheme = "https", .authority = j->sni,
                            .path = j->path, .headers = hd, .n_headers = 4};
        s->started = ztm_now_ns();
        int32_t id = ztm_h2_request(c->h2, &req, ZTM_H2_BODY, s);
        if (id < 0) {
            c->ws->errors++;
            job_error(j, "%s: cannot open a stream: %s", j->method, ztm_h2_strerror(id));
            c->ws->stopping = true;
            break;
        }
        c->n_free--;
        c->inflight++;
    }
    if (c->inflight == 0)
        conn_finish(c);
}

/* ---- HTTP/2 callbacks ---- */

static void parse_status(slot_t *s, const ztm_h2_header_t *h, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (h[i].name_len == 11 && memcmp(h[i].name, "grpc-status", 11) == 0) {
            if (ztm_grpc_status_parse(h[i].value, h[i].value_len, &s->status) == 0)
                s->have_status = true;
        } else if (h[i].name_len == 12 && memcmp(h[i].name, "grpc-message", 12) == 0) {
            ztm_grpc_message_decode(h[i].value, h[i].value_len, s->message, sizeof(s->message));
        }
    }
}

static void on_response(ztm_h2_session_t *h, void *user, int32_t id, void *sdata,
                        const ztm_h2_msg_t *resp)
{
    slot_t *s = sdata;
    s->http_status = resp->status;
    parse_status(s, resp->headers, resp->n_headers); /* trailers-only answers */
}

static void on_data(ztm_h2_session_t *h, void *user, int32_t id, void *sdata, const uint8_t *data,
                    size_t len)
{
    slot_t *s = sdata;
    conn_t *c = user;
    job_t *j = c->ws->j;
    ztm_h2_consume(h, id, len);
    while (len && !s->bad) {
        ztm_grpc_message_t msg;
        bool ready;
        ssize_t n = ztm_grpc_decoder_feed(&s->dec, data, len, &msg, &ready);
        if (n < 0) {
            s->bad = ztm_grpc_strerror((int)n);
            ztm_h2_reset(h, id, ZTM_H2_CANCEL);
            return;
        }
        data += n;
        len -= (size_t)n;
        if (!ready)
            continue;
        if (++s->n_msgs > 1) {
            s->bad = "more than one response message";
        } else if (j->on_message) {
            s->bad = j->on_message(j, s->idx, msg.data, msg.len);
        }
    }
}

static void on_trailers(ztm_h2_session_t *h, void *user, int32_t id, void *sdata,
                        const ztm_h2_header_t *t, size_t n)
{
    parse_status(sdata, t, n);
}

static ssize_t read_body(ztm_h2_session_t *h, void *user, int32_t id, void *sdata, uint8_t *dst,
                         size_t max, bool *eof)
{
    slot_t *s = sdata;
    size_t n = s->f->len - s->off;
    if (n > max)
        n = max;
    memcpy(dst, s->f->data + s->off, n);
    s->off += n;
    *eof = s->off == s->f->len;
    return (ssize_t)n;
}

static void on_stream_close(ztm_h2_session_t *h, void *user, int32_t id, void *sdata,
                            uint32_t error_code)
{
    slot_t *s = sdata;
    conn_t *c = s->c;
    wstate_t *ws = c->ws;
    job_t *j = ws->j;
    uint64_t now = ztm_now_ns();
    bool ok = s->have_status && s->status == ZTM_GRPC_OK && s->n_msgs == 1 && !s->bad;
    if (ok) {
        if (!j->repeat || (s->started >= j->warm_at && now < ws->end_at)) {
            ws->ok++;
            h_add(&ws->hist, now - s->started);
            if (now > ws->last_done)
                ws->last_done = now;
        } else {
            ws->late++;
        }
    } else {
        ws->errors++;
        if (s->bad)
            job_error(j, "%s: bad response: %s", j->method, s->bad);
        else if (s->have_status && s->status != ZTM_GRPC_OK)
            job_error(j, "%s: %s: %s", j->method, ztm_grpc_status_name(s->status), s->message);
        else if (s->have_status)
            job_error(j, "%s: OK without a response message", j->method);
        else if (s->http_status && s->http_status != 200)
            job_error(j, "%s: the server answered HTTP %d", j->method, s->http_status);
        else if (c->freeing)
            job_error(j, "%s: connection closed with the call in flight: %s", j->method,
                      c->close_reason ? c->close_reason : "?");
        else
            job_error(j, "%s: the stream ended without a status (HTTP/2 error code %u)", j->method,
                      error_code);
    }
    ztm_grpc_decoder_free(&s->dec);
    ztm_grpc_decoder_init(&s->dec, 0, false);
    c->free_slots[c->n_free++] = (unsigned)(s - c->slots);
    c->inflight--;
    if (!c->freeing)
        conn_fill(c);
}

static void on_goaway(ztm_h2_session_t *h, void *user, uint32_t error_code, int32_t last_stream_id)
{
    conn_t *c = user;
    if (!c->finished) {
        job_error(c->ws->j, "%s: the server sent GOAWAY (error code %u)", c->ws->j->method,
                  error_code);
        c->finished = true; /* open no more streams */
    }
}

static const ztm_h2_callbacks_t h2_cbs = {
    .on_response = on_response,
    .on_data = on_data,
    .on_trailers = on_trailers,
    .read_body = read_body,
    .on_stream_close = on_stream_close,
    .on_goaway = on_goaway,
};

/* ---- the link's upper layer ---- */

static uint64_t h2_clock(void *user)
{
    conn_t *c = user;
    return ztm_worker_now(c->ws->w);
}

static int on_open(ztm_link_t *l, void *user)
{
    conn_t *c = user;
    ztm_h2_config_t hc = {.conn_id = ztm_link_id(l), .clock = h2_clock};
    int r = ztm_h2_new(&c->h2, ZTM_H2_CLIENT, &h2_cbs, c, &hc);
    if (r < 0)
        return r;
    c->opened = true;
    conn_fill(c);
    ztm_link_want_write(l);
    return 0;
}

static int on_link_data(ztm_link_t *l, void *user, const uint8_t *data, size_t len)
{
    conn_t *c = user;
    int r = ztm_h2_feed(c->h2, data, len);
    if (r < 0 && r != ZTM_H2_E_CLOSED && !c->close_reason)
        c->close_reason = ztm_h2_strerror(r);
    if (ztm_h2_want_write(c->h2))
        ztm_link_want_write(l);
    else if (r < 0 || ztm_h2_idle(c->h2))
        ztm_link_close(l, r < 0 && r != ZTM_H2_E_CLOSED ? "protocol error" : "done");
    return 0;
}

static size_t produce(ztm_link_t *l, void *user, uint8_t *buf, size_t cap)
{
    conn_t *c = user;
    size_t n = 0;
    if (!c->h2 || ztm_h2_flush(c->h2, buf, cap, &n) < 0)
        return 0;
    if (!ztm_h2_want_write(c->h2) && ztm_h2_idle(c->h2))
        ztm_link_close(l, "done");
    return n;
}

static void on_close(ztm_link_t *l, void *user, const char *reason)
{
    conn_t *c = user;
    wstate_t *ws = c->ws;
    job_t *j = ws->j;
    c->link_live = false;
    if (!c->close_reason)
        c->close_reason = reason;
    /* Closing before we were done is a failure (calls in flight count
     * themselves below). */
    if (!c->finished && !ws->interrupted)
        job_error(j, "%s: connection %u %s: %s", j->method, c->id,
                  c->opened ? "closed" : "failed", reason);
    c->freeing = true;
    ztm_h2_free(c->h2); /* calls in flight end as errors */
    c->h2 = NULL;
    if (--ws->live == 0)
        worker_done(ws);
}

static const ztm_link_upper_t upper = {
    .on_open = on_open, .on_data = on_link_data, .produce = produce, .on_close = on_close};

/* ---- the service ---- */

#define WS_OF(t, field) ((wstate_t *)((char *)(t) - offsetof(wstate_t, field)))

static void on_warm(ztm_timer_t *t)
{
    job_t *j = WS_OF(t, warm_timer)->j;
    j->cpu_t0 = (double)ztm_now_ns() / 1e9;
    j->srv_cpu0 = proc_cpu_s(j->server_pid);
    j->self_cpu0 = self_cpu_s();
}

static void on_end(ztm_timer_t *t)
{
    wstate_t *ws = WS_OF(t, end_timer);
    job_t *j = ws->j;
    if (ws->id == 0) {
        j->cpu_t1 = (double)ztm_now_ns() / 1e9;
        j->srv_cpu1 = proc_cpu_s(j->server_pid);
        j->self_cpu1 = self_cpu_s();
    }
    ws->stopping = true;
    for (unsigned i = ws->id; i < j->n_conns; i += j->workers) {
        conn_t *c = &j->conns[i];
        if (!c->link_live)
            continue;
        if (!c->opened)
            ztm_link_abort(c->link, "not connected by the end");
        else if (c->inflight == 0)
            conn_finish(c);
    }
}

static void on_hard(ztm_timer_t *t)
{
    wstate_t *ws = WS_OF(t, hard_timer);
    job_t *j = ws->j;
    unsigned inflight = 0;
    for (unsigned i = ws->id; i < j->n_conns; i += j->workers)
        inflight += j->conns[i].inflight;
    job_error(j, "%s: timed out: %u calls still in flight %.1f s after the start (server stalled?)",
              j->method, inflight, (double)(ztm_now_ns() - j->t0) / 1e9);
    ws->stopping = true;
    for (unsigned i = ws->id; i < j->n_conns; i += j->workers)
        if (j->conns[i].link_live)
            ztm_link_abort(j->conns[i].link, "timed out");
}

static int svc_start(ztm_worker_t *w, void *arg)
{
    job_t *j = arg;
    unsigned id = (unsigned)ztm_worker_id(w);
    wstate_t *ws = &j->ws[id];
    ws->w = w;
    ws->end_at = j->end_at;
    ztm_timers_t *ts = ztm_worker_timers(w);
    ztm_timer_init(&ws->warm_timer, on_warm);
    ztm_timer_init(&ws->end_timer, on_end);
    ztm_timer_init(&ws->hard_timer, on_hard);
    if (j->repeat) {
        if (id == 0)
            ztm_timer_arm(ts, &ws->warm_timer, j->warm_at);
        ztm_timer_arm(ts, &ws->end_timer, j->end_at);
    }
    ztm_timer_arm(ts, &ws->hard_timer, j->hard_at);
    int last = 0;
    for (unsigned i = id; i < j->n_conns; i += j->workers) {
        conn_t *c = &j->conns[i];
        ztm_link_config_t lc = {.tls = j->tls, .sni = j->sni, .connect_timeout_ns = 10 * ZTM_NS_PER_SEC};
        int r = ztm_link_connect(w, &j->addr, &lc, &upper, c, &c->link);
        if (r < 0) {
            last = r;
            ws->errors++;
            job_error(j, "%s: connection %u: cannot connect: %s", j->method, i, strerror(-r));
            continue;
        }
        c->link_live = true;
        ws->live++;
    }
    if (ws->live == 0) {
        ztm_timer_cancel(ts, &ws->warm_timer);
        ztm_timer_cancel(ts, &ws->end_timer);
        ztm_timer_cancel(ts, &ws->hard_timer);
        return last ? last : -EINVAL;
    }
    return 0;
}

static void svc_drain(ztm_worker_t *w, void *arg)
{
    job_t *j = arg;
    wstate_t *ws = &j->ws[ztm_worker_id(w)];
    if (ws->done)
        return;
    /* A signal: stop issuing, let what is in flight finish. */
    ws->interrupted = true;
    ws->stopping = true;
    uint64_t now = ztm_now_ns();
    if (now < ws->end_at)
        ws->end_at = now;
    job_error(j, "%s: interrupted", j->method);
    for (unsigned i = ws->id; i < j->n_conns; i += j->workers) {
        conn_t *c = &j->conns[i];
        if (c->link_live && c->inflight == 0)
            conn_finish(c);
    }
}

static void svc_stop(ztm_worker_t *w, void *arg)
{
    job_t *j = arg;
    wstate_t *ws = &j->ws[ztm_worker_id(w)];
    ws->interrupted = true;
    for (unsigned i = ws->id; i < j->n_conns; i += j->workers)
        if (j->conns[i].link_live)
            ztm_link_abort(j->conns[i].link, "stopped");
}

static bool svc_idle(ztm_worker_t *w, void *arg)
{
    job_t *j = arg;
    return j->ws[ztm_worker_id(w)].live == 0;
}

static void svc_finish(ztm_worker_t *w, void *arg)
{
    job_t *j = arg;
    wstate_t *ws = &j->ws[ztm_worker_id(w)];
    ztm_timers_t *ts = ztm_worker_timers(w);
    ztm_timer_cancel(ts, &ws->warm_timer);
    ztm_timer_cancel(ts, &ws->end_timer);
    ztm_timer_cancel(ts, &ws->hard_timer);
}

static const ztm_service_t bench_service = {
    .name = "grpcbench", .start = svc_start, .drain = svc_drain, .stop = svc_stop,
    .idle = svc_idle, .finish = svc_finish};

/* ---- running a phase ---- */

typedef struct {
    uint64_t ok, errors, late, not_run;
    hist_t hist;
    double elapsed_s; /* list: start to last answer; repeat: the window */
    double server_cpu_pct, client_cpu_pct; /* < 0: unknown */
    char error[600];
} result_t;

typedef struct {
    ztm_addr_t addr;
    const char *connect, *sni, *ca, *cert, *key;
    unsigned conns, streams, workers;
    double seconds, warmup, timeout;
    size_t count;
    long server_pid;
    bool json;
} opts_t;

static int frame_message(const ProtobufCMessage *m, frame_t *f)
{
    size_t len = protobuf_c_message_get_packed_size(m);
    f->data = malloc(ZTM_GRPC_PREFIX_LEN + len);
    if (!f->data)
        return -ENOMEM;
    ztm_grpc_prefix_encode(f->data, false, (uint32_t)len);
    protobuf_c_message_pack(m, f->data + ZTM_GRPC_PREFIX_LEN);
    f->len = ZTM_GRPC_PREFIX_LEN + len;
    return 0;
}

/* Runs J (its method, frames, TLS and timing set by the caller) on a
 * private engine and fills *RES. Returns 0, or -errno when it could not run. */
static int run_job(job_t *j, const opts_t *o, result_t *res)
{
    memset(res, 0, sizeof(*res));
    res->server_cpu_pct = res->client_cpu_pct = -1;
    j->addr = o->addr;
    j->sni = o->sni;
    j->n_conns = o->conns;
    j->streams = o->streams;
    j->workers = o->workers < o->conns ? o->workers : o->conns;
    j->server_pid = o->server_pid;
    j->timeout_len = ztm_grpc_timeout_format(CALL_TIMEOUT_NS, j->timeout_hdr);
    pthread_mutex_init(&j->lock, NULL);
    atomic_store(&j->next, 0);
    atomic_store(&j->workers_done, 0);
    j->ws = calloc(j->workers, sizeof(*j->ws));
    j->conns = calloc(j->n_conns, sizeof(*j->conns));
    int r = 0;
    if (!j->ws || !j->conns) {
        r = -ENOMEM;
        goto out;
    }
    for (unsigned i = 0; i < j->workers; i++) {
        j->ws[i].j = j;
        j->ws[i].id = i;
    }
    for (unsigned i = 0; i < j->n_conns; i++) {
        conn_t *c = &j->conns[i];
        c->ws = &j->ws[i % j->workers];
        c->id = i;
        c->slots = calloc(j->streams, sizeof(*c->slots));
        c->free_slots = calloc(j->streams, sizeof(*c->free_slots));
        if (!c->slots || !c->free_slots) {
            r = -ENOMEM;
            goto out;
        }
        for (unsigned k = 0; k < j->streams; k++) {
            c->slots[k].c = c;
            ztm_grpc_decoder_init(&c->slots[k].dec, 0, false);
            c->free_slots[k] = j->streams - 1 - k;
        }
        c->n_free = j->streams;
    }
    ztm_engine_config_t ec = {.workers = j->workers, .pin = false, .buf_count = 16,
                              .buf_size = 16384, .drain_timeout_ns = 5 * ZTM_NS_PER_SEC};
    double srv0 = proc_cpu_s(o->server_pid), self0 = self_cpu_s();
    j->t0 = ztm_now_ns();
    if (j->repeat) {
        j->warm_at = j->t0 + (uint64_t)(o->warmup * 1e9);
        j->end_at = j->warm_at + (uint64_t)(o->seconds * 1e9);
        j->hard_at = j->end_at + 30 * ZTM_NS_PER_SEC;
    } else {
        j->hard_at = j->t0 + (uint64_t)(o->timeout * 1e9);
    }
    r = ztm_engine_run(&ec, &bench_service, j, NULL);
    uint64_t t_end = ztm_now_ns();
    double srv1 = proc_cpu_s(o->server_pid), self1 = self_cpu_s();
    if (r < 0 && !j->first_error[0])
        job_error(j, "%s: %s", j->method, strerror(-r));
    r = 0;
    uint64_t last = j->t0, window_end = j->warm_at;
    for (unsigned i = 0; i < j->workers; i++) {
        wstate_t *ws = &j->ws[i];
        if (ws->end_at > window_end)
            window_end = ws->end_at;
        res->ok += ws->ok;
        res->errors += ws->errors;
        res->late += ws->late;
        h_merge(&res->hist, &ws->hist);
        if (ws->last_done > last)
            last = ws->last_done;
    }
    if (j->repeat) {
        res->elapsed_s = (double)(window_end - j->warm_at) / 1e9;
        double wall = j->cpu_t1 - j->cpu_t0;
        if (wall > 0 && j->srv_cpu0 >= 0 && j->srv_cpu1 >= 0)
            res->server_cpu_pct = (j->srv_cpu1 - j->srv_cpu0) / wall * 100;
        if (wall > 0 && j->cpu_t0 > 0)
            res->client_cpu_pct = (j->self_cpu1 - j->self_cpu0) / wall * 100;
    } else {
        res->elapsed_s = (double)(last - j->t0) / 1e9;
        size_t issued = atomic_load(&j->next);
        if (issued > j->n)
            issued = j->n;
        res->not_run = j->n - issued;
        double wall = (double)(t_end - j->t0) / 1e9;
        if (wall > 0 && srv0 >= 0 && srv1 >= 0)
            res->server_cpu_pct = (srv1 - srv0) / wall * 100;
        if (wall > 0)
            res->client_cpu_pct = (self1 - self0) / wall * 100;
    }
    if (res->not_run && !j->first_error[0])
        job_error(j, "%s: %" PRIu64 " calls never ran", j->method, res->not_run);
    snprintf(res->error, sizeof(res->error), "%s", j->first_error);
out:
    if (j->conns) {
        for (unsigned i = 0; i < j->n_conns; i++) {
            conn_t *c = &j->conns[i];
            if (c->slots)
                for (unsigned k = 0; k < j->streams; k++)
                    ztm_grpc_decoder_free(&c->slots[k].dec);
            free(c->slots);
            free(c->free_slots);
        }
    }
    free(j->conns);
    free(j->ws);
    j->conns = NULL;
    j->ws = NULL;
    pthread_mutex_destroy(&j->lock);
    return r;
}

/* ---- output ---- */

static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            fprintf(f, "\\%c", ch);
        else if (ch < 0x20)
            fprintf(f, "\\u%04x", ch);
        else
            fputc(ch, f);
    }
    fputc('"', f);
}

static void json_num_or_null(FILE *f, const char *key, double v)
{
    if (v < 0)
        fprintf(f, ",\"%s\":null", key);
    else
        fprintf(f, ",\"%s\":%.1f", key, v);
}

static void print_latency_json(const hist_t *h)
{
    printf(",\"min_us\":%.1f,\"mean_us\":%.1f,\"p50_us\":%.1f,\"p90_us\":%.1f,\"p99_us\":%.1f,"
           "\"p99_9_us\":%.1f,\"max_us\":%.1f",
           h->n ? (double)h->min / 1000 : 0, h->n ? h->sum / (double)h->n / 1000 : 0,
           h_pct_us(h, 50), h_pct_us(h, 90), h_pct_us(h, 99), h_pct_us(h, 99.9),
           (double)h->max / 1000);
}

static void print_latency_text(const hist_t *h)
{
    if (!h->n) {
        printf("latency µs   (no call completed)\n");
        return;
    }
    printf("latency µs   min %.1f  mean %.1f  p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f  max %.1f\n",
           (double)h->min / 1000, h->sum / (double)h->n / 1000, h_pct_us(h, 50), h_pct_us(h, 90),
           h_pct_us(h, 99), h_pct_us(h, 99.9), (double)h->max / 1000);
}

static void print_cpu_text(const result_t *r)
{
    if (r->server_cpu_pct < 0 && r->client_cpu_pct < 0)
        return;
    printf("CPU          ");
    if (r->server_cpu_pct >= 0)
        printf("server %.0f %%%s", r->server_cpu_pct, r->client_cpu_pct >= 0 ? ", " : "");
    if (r->client_cpu_pct >= 0)
        printf("client %.0f %%", r->client_cpu_pct);
    printf(" (100 %% = one core)\n");
}

/* ---- unary ---- */

static const char *check_endpoint(job_t *j, size_t idx, const uint8_t *data, size_t len)
{
    /* The first answer is decoded and checked; the rest only counted. */
    static _Atomic bool checked;
    if (atomic_exchange(&checked, true))
        return NULL;
    Ztm__V1__Endpoint *ep = ztm__v1__endpoint__unpack(NULL, len, data);
    if (!ep)
        return "not an Endpoint message";
    bool same = strcmp(ep->id, (const char *)j->arg) == 0;
    ztm__v1__endpoint__free_unpacked(ep, NULL);
    return same ? NULL : "an Endpoint with another ID";
}

static int run_unary(const opts_t *o)
{
    /* An endpoint to get: the first one listed. */
    ztm_grpc_target_t t = {.addr = o->addr, .sni = o->sni, .cert_file = o->cert,
                           .key_file = o->key, .ca_file = o->ca, .timeout_ns = 10 * ZTM_NS_PER_SEC};
    Ztm__V1__ListEndpointsRequest lreq = ZTM__V1__LIST_ENDPOINTS_REQUEST__INIT;
    lreq.page_size = 1;
    uint8_t lbuf[64];
    size_t llen = ztm__v1__list_endpoints_request__pack(&lreq, lbuf);
    ztm_grpc_result_t res;
    int r = ztm_grpc_call(&t, "/ztm.v1.Mesh/ListEndpoints", lbuf, llen, &res);
    if (r < 0) {
        die_msg("cannot use the TLS files (%s)", ztm_tls_strerror(r));
        return 1;
    }
    if (res.status != ZTM_GRPC_OK) {
        die_msg("ListEndpoints: %s: %s", ztm_grpc_status_name(res.status), res.message);
        return 1;
    }
    Ztm__V1__ListEndpointsResponse *lr = ztm__v1__list_endpoints_response__unpack(NULL, res.len, res.body);
    ztm_grpc_result_clear(&res);
    if (!lr || lr->n_endpoints == 0) {
        die_msg("ListEndpoints: %s", lr ? "no endpoint to get" : "undecodable answer");
        if (lr)
            ztm__v1__list_endpoints_response__free_unpacked(lr, NULL);
        return 1;
    }
    char id[128];
    snprintf(id, sizeof(id), "%s", lr->endpoints[0]->id);
    ztm__v1__list_endpoints_response__free_unpacked(lr, NULL);

    Ztm__V1__GetEndpointRequest greq = ZTM__V1__GET_ENDPOINT_REQUEST__INIT;
    greq.key_case = ZTM__V1__GET_ENDPOINT_REQUEST__KEY_ID;
    greq.id = id;
    frame_t f;
    if (frame_message(&greq.base, &f) < 0) {
        die_msg("out of memory");
        return 1;
    }
    ztm_tls_config_t tc = {.role = ZTM_TLS_CLIENT, .cert_file = o->cert, .key_file = o->key,
                           .ca_file = o->ca};
    ztm_tls_ctx_t *tls;
    if ((r = ztm_tls_ctx_new(&tls, &tc)) < 0) {
        free(f.data);
        die_msg("TLS set-up: %s", ztm_tls_strerror(r));
        return 1;
    }
    job_t j = {.method = "GetEndpoint", .path = "/ztm.v1.Mesh/GetEndpoint", .tls = tls,
               .repeat = true, .frames = &f, .n = 1, .on_message = check_endpoint, .arg = id};
    result_t rs;
    r = run_job(&j, o, &rs);
    ztm_tls_ctx_free(tls);
    free(f.data);
    if (r < 0) {
        die_msg("%s", strerror(-r));
        return 1;
    }
    double rate = rs.elapsed_s > 0 ? (double)rs.ok / rs.elapsed_s : 0;
    unsigned workers = o->workers < o->conns ? o->workers : o->conns;
    if (o->json) {
        printf("{\"mode\":\"unary\",\"method\":\"GetEndpoint\",\"connect\":");
        json_str(stdout, o->connect);
        printf(",\"conns\":%u,\"streams\":%u,\"workers\":%u,\"seconds\":%g,\"warmup\":%g,"
               "\"elapsed_s\":%.6f,\"calls_ok\":%" PRIu64 ",\"errors\":%" PRIu64
               ",\"calls_outside_window\":%" PRIu64 ",\"calls_per_s\":%.1f",
               o->conns, o->streams, workers, o->seconds,
               o->warmup, rs.elapsed_s, rs.ok, rs.errors, rs.late, rate);
        print_latency_json(&rs.hist);
        json_num_or_null(stdout, "server_cpu_pct", rs.server_cpu_pct);
        json_num_or_null(stdout, "client_cpu_pct", rs.client_cpu_pct);
        printf(",\"error\":");
        if (rs.error[0])
            json_str(stdout, rs.error);
        else
            printf("null");
        printf("}\n");
    } else {
        printf("GetEndpoint on %s: %u connection%s x %u streams, %u worker%s; %.3f s measured "
               "after %g s warm-up\n",
               o->connect, o->conns, o->conns == 1 ? "" : "s", o->streams, workers,
               workers == 1 ? "" : "s", rs.elapsed_s, o->warmup);
        printf("calls        %" PRIu64 " OK (%.1f/s), %" PRIu64 " errors\n", rs.ok, rate, rs.errors);
        print_latency_text(&rs.hist);
        print_cpu_text(&rs);
        if (rs.error[0])
            printf("first error  %s\n", rs.error);
    }
    if (rs.error[0])
        fprintf(stderr, PROG ": error: %s\n", rs.error);
    return rs.errors || rs.error[0] || rs.ok == 0 ? 1 : 0;
}

/* ---- join ---- */

typedef struct {
    char **tokens;
} invites_t;

static const char *keep_token(job_t *j, size_t idx, const uint8_t *data, size_t len)
{
    invites_t *inv = j->arg;
    Ztm__V1__InviteResponse *r = ztm__v1__invite_response__unpack(NULL, len, data);
    if (!r)
        return "not an InviteResponse message";
    const char *bad = NULL;
    if (!r->token[0])
        bad = "no token in the InviteResponse";
    else if (!(inv->tokens[idx] = strdup(r->token)))
        bad = "out of memory";
    ztm__v1__invite_response__free_unpacked(r, NULL);
    return bad;
}

static const char *check_join(job_t *j, size_t idx, const uint8_t *data, size_t len)
{
    Ztm__V1__JoinResponse *r = ztm__v1__join_response__unpack(NULL, len, data);
    if (!r)
        return "not a JoinResponse message";
    const char *bad = NULL;
    if (!r->endpoint || !r->endpoint->id[0])
        bad = "a JoinResponse without the endpoint's ID";
    else if (!strstr(r->certificate_pem, "-----BEGIN CERTIFICATE-----"))
        bad = "a JoinResponse without a certificate";
    ztm__v1__join_response__free_unpacked(r, NULL);
    return bad;
}

static void free_frames(frame_t *f, size_t n)
{
    if (!f)
        return;
    for (size_t i = 0; i < n; i++)
        free(f[i].data);
    free(f);
}

static int run_join(const opts_t *o)
{
    size_t n = o->count;
    int rc = 1, r;
    char **names = calloc(n, sizeof(*names));
    char **csrs = calloc(n, sizeof(*csrs));
    invites_t inv = {.tokens = calloc(n, sizeof(char *))};
    frame_t *frames = calloc(n, sizeof(*frames));
    ztm_tls_ctx_t *admin_tls = NULL, *join_tls = NULL;
    result_t ri, rj;
    if (!names || !csrs || !inv.tokens || !frames) {
        die_msg("out of memory");
        goto out;
    }
    /* Names unique to this run, so a server may be reused. */
    char prefix[40];
    snprintf(prefix, sizeof(prefix), "gb-%lx-%lx", (long)getpid(), (long)time(NULL));
    for (size_t i = 0; i < n; i++) {
        if (asprintf(&names[i], "%s-%zu", prefix, i) < 0) {
            names[i] = NULL;
            die_msg("out of memory");
            goto out;
        }
        Ztm__V1__InviteRequest ireq = ZTM__V1__INVITE_REQUEST__INIT;
        ireq.name = names[i];
        if (frame_message(&ireq.base, &frames[i]) < 0) {
            die_msg("out of memory");
            goto out;
        }
    }

    /* 1. the invites (untimed), with the admin identity */
    ztm_tls_config_t atc = {.role = ZTM_TLS_CLIENT, .cert_file = o->cert, .key_file = o->key,
                            .ca_file = o->ca};
    if ((r = ztm_tls_ctx_new(&admin_tls, &atc)) < 0) {
        die_msg("TLS set-up (admin identity): %s", ztm_tls_strerror(r));
        goto out;
    }
    job_t ji = {.method = "Invite", .path = "/ztm.v1.Mesh/Invite", .tls = admin_tls,
                .frames = frames, .n = n, .on_message = keep_token, .arg = &inv};
    opts_t oi = *o;
    oi.server_pid = 0;
    uint64_t t = ztm_now_ns();
    if ((r = run_job(&ji, &oi, &ri)) < 0) {
        die_msg("%s", strerror(-r));
        goto out;
    }
    double invite_s = (double)(ztm_now_ns() - t) / 1e9;
    if (ri.error[0] || ri.ok != n) {
        die_msg("making the invites: %s", ri.error[0] ? ri.error : "not all answered");
        goto out;
    }
    free_frames(frames, n);
    frames = NULL;

    /* 2. the joiners' keys and CSRs (untimed) */
    t = ztm_now_ns();
    for (size_t i = 0; i < n; i++) {
        EVP_PKEY *key;
        size_t len;
        key = NULL;
        if ((r = ztm_key_generate(&key)) < 0 || (r = ztm_csr_create(key, names[i], &csrs[i], &len)) < 0) {
            EVP_PKEY_free(key);
            die_msg("cannot make a key or CSR: %s", ztm_ca_strerror(r));
            goto out;
        }
        EVP_PKEY_free(key);
    }
    double keygen_s = (double)(ztm_now_ns() - t) / 1e9;
    if (!(frames = calloc(n, sizeof(*frames)))) {
        die_msg("out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        Ztm__V1__JoinRequest jreq = ZTM__V1__JOIN_REQUEST__INIT;
        jreq.token = inv.tokens[i];
        jreq.csr_pem = csrs[i];
        jreq.agent_version = PROG "/" ZTM_VERSION;
        if (frame_message(&jreq.base, &frames[i]) < 0) {
            die_msg("out of memory");
            goto out;
        }
    }

    /* 3. the joins (timed), with server-only TLS */
    ztm_tls_config_t jtc = {.role = ZTM_TLS_CLIENT, .cert_file = NULL, .key_file = NULL,
                            .ca_file = o->ca};
    if ((r = ztm_tls_ctx_new(&join_tls, &jtc)) < 0) {
        die_msg("TLS set-up (server-only): %s", ztm_tls_strerror(r));
        goto out;
    }
    job_t jj = {.method = "Join", .path = "/ztm.v1.Mesh/Join", .tls = join_tls, .frames = frames,
                .n = n, .on_message = check_join};
    if ((r = run_job(&jj, o, &rj)) < 0) {
        die_msg("%s", strerror(-r));
        goto out;
    }
    double rate = rj.elapsed_s > 0 ? (double)rj.ok / rj.elapsed_s : 0;
    unsigned workers = o->workers < o->conns ? o->workers : o->conns;
    if (o->json) {
        printf("{\"mode\":\"join\",\"method\":\"Join\",\"connect\":");
        json_str(stdout, o->connect);
        printf(",\"count\":%zu,\"conns\":%u,\"streams\":%u,\"workers\":%u,\"elapsed_s\":%.6f,"
               "\"joins_ok\":%" PRIu64 ",\"errors\":%" PRIu64 ",\"not_run\":%" PRIu64
               ",\"joins_per_s\":%.1f",
               n, o->conns, o->streams, workers, rj.elapsed_s, rj.ok, rj.errors, rj.not_run, rate);
        print_latency_json(&rj.hist);
        json_num_or_null(stdout, "server_cpu_pct", rj.server_cpu_pct);
        json_num_or_null(stdout, "client_cpu_pct", rj.client_cpu_pct);
        printf(",\"invites_s\":%.3f,\"invites_per_s\":%.1f,\"keygen_s\":%.3f,\"error\":", invite_s,
               invite_s > 0 ? (double)n / invite_s : 0, keygen_s);
        if (rj.error[0])
            json_str(stdout, rj.error);
        else
            printf("null");
        printf("}\n");
    } else {
        printf("untimed      %zu invites in %.3f s (%.0f/s); %zu keys + CSRs in %.3f s\n", n,
               invite_s, (double)n / invite_s, n, keygen_s);
        printf("Join on %s: %u connection%s (server-only TLS) x %u streams, %u worker%s; %.3f s "
               "from the start to the last answer\n",
               o->connect, o->conns, o->conns == 1 ? "" : "s", o->streams, workers,
               workers == 1 ? "" : "s", rj.elapsed_s);
        printf("joins        %" PRIu64 " OK (%.1f/s), %" PRIu64 " errors, %" PRIu64 " not run\n",
               rj.ok, rate, rj.errors, rj.not_run);
        print_latency_text(&rj.hist);
        print_cpu_text(&rj);
        if (rj.error[0])
            printf("first error  %s\n", rj.error);
    }
    if (rj.error[0])
        fprintf(stderr, PROG ": error: %s\n", rj.error);
    rc = rj.errors || rj.not_run || rj.error[0] || rj.ok != n ? 1 : 0;
out:
    ztm_tls_ctx_free(admin_tls);
    ztm_tls_ctx_free(join_tls);
    free_frames(frames, n);
    for (size_t i = 0; i < n; i++) {
        if (names)
            free(names[i]);
        if (csrs)
            free(csrs[i]);
        if (inv.tokens && inv.tokens[i]) {
            explicit_bzero(inv.tokens[i], strlen(inv.tokens[i]));
            free(inv.tokens[i]);
        }
    }
    free(names);
    free(csrs);
    free(inv.tokens);
    return rc;
}

/* ---- command line ---- */

static bool parse_double(const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end != '\0' || !(v >= lo && v <= hi))
        return false;
    *out = v;
    return true;
}

static bool parse_uint(const char *s, double lo, double hi, double *out)
{
    return parse_double(s, lo, hi, out) && *out == floor(*out);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *mode = argv[1];
    if (strcmp(mode, "-h") == 0 || strcmp(mode, "--help") == 0) {
        usage(stdout);
        return 0;
    }
    bool join = strcmp(mode, "join") == 0;
    if (!join && strcmp(mode, "unary") != 0)
        return usage_error("unknown mode '%s': expected 'unary' or 'join'", mode);

    opts_t o = {.sni = "localhost", .conns = 4, .streams = 32, .workers = 1, .seconds = 5,
                .warmup = 1, .timeout = 300};
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return 0;
        }
        if (strcmp(a, "--json") == 0) {
            o.json = true;
            continue;
        }
        static const char *const common[] = {"--connect", "--ca", "--cert", "--key", "--sni",
                                             "--conns", "--streams", "--workers", "--server-pid"};
        bool known = false;
        for (size_t k = 0; k < sizeof(common) / sizeof(common[0]); k++)
            known |= strcmp(a, common[k]) == 0;
        if (join)
            known |= strcmp(a, "--count") == 0 || strcmp(a, "--timeout") == 0;
        else
            known |= strcmp(a, "--seconds") == 0 || strcmp(a, "--warmup") == 0;
        if (!known)
            return usage_error("unknown option '%s' for %s", a, mode);
        if (i + 1 >= argc)
            return usage_error("option '%s' needs a value", a);
        const char *v = argv[++i];
        double d;
        if (strcmp(a, "--connect") == 0) {
            o.connect = v;
        } else if (strcmp(a, "--ca") == 0) {
            o.ca = v;
        } else if (strcmp(a, "--cert") == 0) {
            o.cert = v;
        } else if (strcmp(a, "--key") == 0) {
            o.key = v;
        } else if (strcmp(a, "--sni") == 0) {
            o.sni = v;
        } else if (strcmp(a, "--conns") == 0) {
            if (!parse_uint(v, 1, MAX_CONNS, &d))
                return usage_error("bad --conns '%s': expected 1..%d", v, MAX_CONNS);
            o.conns = (unsigned)d;
        } else if (strcmp(a, "--streams") == 0) {
            if (!parse_uint(v, 1, MAX_STREAMS, &d))
                return usage_error("bad --streams '%s': expected 1..%d", v, MAX_STREAMS);
            o.streams = (unsigned)d;
        } else if (strcmp(a, "--workers") == 0) {
            if (!parse_uint(v, 1, MAX_WORKERS, &d))
                return usage_error("bad --workers '%s': expected 1..%d", v, MAX_WORKERS);
            o.workers = (unsigned)d;
        } else if (strcmp(a, "--server-pid") == 0) {
            if (!parse_uint(v, 1, 1e9, &d))
                return usage_error("bad --server-pid '%s'", v);
            o.server_pid = (long)d;
        } else if (strcmp(a, "--count") == 0) {
            if (!parse_uint(v, 1, MAX_COUNT, &d))
                return usage_error("bad --count '%s': expected 1..%d", v, MAX_COUNT);
            o.count = (size_t)d;
        } else if (strcmp(a, "--timeout") == 0) {
            if (!parse_double(v, 1, 86400, &d))
                return usage_error("bad --timeout '%s': expected seconds >= 1", v);
            o.timeout = d;
        } else if (strcmp(a, "--seconds") == 0) {
            if (!parse_double(v, 0.01, 86400, &d))
                return usage_error("bad --seconds '%s': expected a number of seconds > 0", v);
            o.seconds = d;
        } else {
            if (!parse_double(v, 0, 86400, &d))
                return usage_error("bad --warmup '%s': expected a number of seconds >= 0", v);
            o.warmup = d;
        }
    }
    if (!o.connect)
        return usage_error("%s needs --connect HOST:PORT", mode);
    if (!o.ca || !o.cert || !o.key)
        return usage_error("%s needs --ca, --cert and --key (the admin identity)", mode);
    if (join && !o.count)
        return usage_error("join needs --count N");
    const char *why;
    if (ztm_addr_parse(o.connect, &o.addr, &why) < 0)
        return usage_error("--connect '%s': %s", o.connect, why);
    ztm_log_set_level(ZTM_LOG_WARN);
    return join ? run_join(&o) : run_unary(&o);
}
