/* ztm-hublink-driver: one hub link (dataplane/agent/hublink.h) on a
 * one-worker engine, for the integration tests. It prints what happens as
 * one line per event on stdout and runs until SIGTERM/SIGINT (then stops
 * the link and exits 0 once it is gone).
 *
 *   ztm-hublink-driver --hub ADDR [--hub ADDR...] --mesh MESH
 *                      --cert FILE --key FILE --ca FILE [options]
 *
 * Options:
 *   --allow-no-events    a hub without Relay.Events (a bare controller) is up
 *   --call PATH          on every UP: call PATH with an empty request
 *   --open PEER          on the first UP: open a relay stream to PEER
 *   --accept             accept every incoming session
 *   --send BYTES         bytes each relay stream sends, then EOF (default 0)
 *   --seed N             pattern seed of what we send (0-255)
 *   --consume-delay MS   hand received bytes back to the window this late
 *   --backoff-min MS  --backoff-max MS
 *   --log-level LEVEL
 *
 * Lines: "state STATE hub=ADDR [why=...]", "reply path=P status=S len=N
 * msg=...", "call_refused path=P error=E", "incoming session=N from=NAME",
 * "relay joined", "relay eof received=N sha256=HEX", "relay closed
 * reason=... error=0|1 sent=N received=N sha256=HEX". Byte i of the pattern
 * with seed S is (i % 251) ^ ((i >> 16) & 255) ^ S. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <openssl/sha.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dataplane/agent/hublink.h"
#include "dataplane/runtime/log.h"

#define MAX_HUBS 8

typedef struct relay relay_t;

typedef struct {
    const char *hubs[MAX_HUBS];
    size_t n_hubs;
    const char *mesh, *cert, *key, *ca;
    bool allow_no_events, accept;
    const char *call_path, *open_peer;
    uint64_t send;
    unsigned seed;
    uint64_t consume_delay_ns;
    uint64_t backoff_min_ns, backoff_max_ns;
    /* on the worker */
    ztm_worker_t *w;
    ztm_hublink_t *h;
    bool opened;
    unsigned calls_out;
} driver_t;

struct relay {
    driver_t *d;
    ztm_relay_stream_t *s;
    uint64_t sent, received, unconsumed;
    SHA256_CTX sha;
    ztm_timer_t consume_timer;
};

static uint8_t pattern(uint64_t i, unsigned seed)
{
    return (uint8_t)((i % 251) ^ ((i >> 16) & 255) ^ seed);
}

static void out(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void out(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
}

static void hex(const uint8_t *d, size_t n, char *o)
{
    for (size_t i = 0; i < n; i++)
        sprintf(o + 2 * i, "%02x", d[i]);
}

/* ---- relay streams --------------------------------------------------------- */
static void r_joined(void *arg)
{
    out("relay joined");
}

static void r_consume_later(ztm_timer_t *t)
{
    relay_t *r = (relay_t *)((char *)t - offsetof(relay_t, consume_timer));
    ztm_relay_stream_consume(r->s, r->unconsumed);
    r->unconsumed = 0;
}

static void r_data(void *arg, const uint8_t *data, size_t len)
{
    relay_t *r = arg;
    SHA256_Update(&r->sha, data, len);
    r->received += len;
    if (!r->d->consume_delay_ns) {
        ztm_relay_stream_consume(r->s, len);
        return;
    }
    r->unconsumed += len;
    if (!ztm_timer_armed(&r->consume_timer))
        ztm_timer_arm(ztm_worker_timers(r->d->w), &r->consume_timer,
                      ztm_worker_now(r->d->w) + r->d->consume_delay_ns);
}

static void r_digest(relay_t *r, char *o)
{
    uint8_t md[SHA256_DIGEST_LENGTH];
    SHA256_CTX c = r->sha;
    SHA256_Final(md, &c);
    hex(md, sizeof(md), o);
}

static void r_eof(void *arg)
{
    relay_t *r = arg;
    char h[65];
    r_digest(r, h);
    out("relay eof received=%" PRIu64 " sha256=%s", r->received, h);
}

static size_t r_produce(void *arg, uint8_t *buf, size_t cap, bool *eof)
{
    relay_t *r = arg;
    uint64_t left = r->d->send - r->sent;
    size_t n = left < cap ? (size_t)left : cap;
    for (size_t i = 0; i < n; i++)
        buf[i] = pattern(r->sent + i, r->d->seed);
    r->sent += n;
    *eof = r->sent == r->d->send;
    return n;
}

static void r_close(void *arg, const char *reason, bool error)
{
    relay_t *r = arg;
    char h[65];
    r_digest(r, h);
    ztm_timer_cancel(ztm_worker_timers(r->d->w), &r->consume_timer);
    out("relay closed reason=\"%s\" error=%d sent=%" PRIu64 " received=%" PRIu64 " sha256=%s",
        reason, error, r->sent, r->received, h);
    free(r);
}

static const ztm_relay_cb_t relay_cb = {
    .on_joined = r_joined,
    .on_data = r_data,
    .on_eof = r_eof,
    .produce = r_produce,
    .on_close = r_close,
};

static relay_t *relay_new(driver_t *d)
{
    relay_t *r = calloc(1, sizeof(*r));
    if (!r)
        abort();
    r->d = d;
    SHA256_Init(&r->sha);
    ztm_timer_init(&r->consume_timer, r_consume_later);
    return r;
}

/* ---- the link ---------------------------------------------------------------- */
static void on_reply(void *arg, ztm_grpc_status_t st, const char *msg, const uint8_t *body,
                     size_t len)
{
    driver_t *d = arg;
    d->calls_out--;
    out("reply path=%s status=%s len=%zu msg=\"%s\"", d->call_path, ztm_grpc_status_name(st), len,
        msg ? msg : "");
}

static void on_state(void *arg, ztm_hublink_state_t st, const char *hub, const char *why)
{
    driver_t *d = arg;
    if (why)
        out("state %s hub=%s why=\"%s\"", ztm_hublink_state_name(st), hub, why);
    else
        out("state %s hub=%s record_layer=%s", ztm_hublink_state_name(st), hub,
            ztm_hublink_record_layer(d->h));
    if (st != ZTM_HUBLINK_UP)
        return;
    if (d->call_path) {
        int r = ztm_hublink_call(d->h, d->call_path, NULL, 0, 0, on_reply, d);
        if (r < 0)
            out("call_refused path=%s error=%s", d->call_path, strerror(-r));
        else
            d->calls_out++;
    }
    if (d->open_peer && !d->opened) {
        d->opened = true;
        relay_t *r = relay_new(d);
        int e = ztm_hublink_open(d->h, d->open_peer, &relay_cb, r, &r->s);
        if (e < 0) {
            out("open_refused peer=%s error=%s", d->open_peer, strerror(-e));
            free(r);
        }
    }
}

static void on_incoming(void *arg, uint64_t session, const char *from, const char *from_id)
{
    driver_t *d = arg;
    out("incoming session=%" PRIu64 " from=%s", session, from);
    if (!d->accept)
        return;
    relay_t *r = relay_new(d);
    int e = ztm_hublink_accept(d->h, session, &relay_cb, r, &r->s);
    if (e < 0) {
        out("accept_refused session=%" PRIu64 " error=%s", session, strerror(-e));
        free(r);
    }
}

static int svc_start(ztm_worker_t *w, void *arg)
{
    driver_t *d = arg;
    d->w = w;
    ztm_tls_config_t tc = {
        .role = ZTM_TLS_CLIENT, .cert_file = d->cert, .key_file = d->key, .ca_file = d->ca};
    ztm_tls_ctx_t *tls;
    int r = ztm_tls_ctx_new(&tls, &tc);
    if (r < 0)
        return r;
    ztm_hublink_config_t hc = {
        .hubs = d->hubs,
        .n_hubs = d->n_hubs,
        .mesh = d->mesh,
        .tls = tls,
        .on_state = on_state,
        .on_incoming = on_incoming,
        .arg = d,
        .backoff_min_ns = d->backoff_min_ns,
        .backoff_max_ns = d->backoff_max_ns,
    };
    r = ztm_hublink_new(w, &hc, &d->h);
    ztm_tls_ctx_free(tls); /* the link holds its own */
    if (r < 0)
        return r;
    ztm_hublink_allow_no_events(d->h, d->allow_no_events);
    return 0;
}

static void svc_drain(ztm_worker_t *w, void *arg)
{
    driver_t *d = arg;
    if (d->h) {
        ztm_hublink_stats_t st;
        ztm_hublink_stats(d->h, &st);
        out("stopping connects=%" PRIu64 " disconnects=%" PRIu64 " bytes_in=%" PRIu64
            " bytes_out=%" PRIu64,
            st.connects, st.disconnects, st.bytes_in, st.bytes_out);
        ztm_hublink_stop(d->h);
        d->h = NULL;
    }
}

static bool svc_idle(ztm_worker_t *w, void *arg)
{
    return true;
}

static const ztm_service_t driver_service = {.name = "hublink-driver",
                                             .start = svc_start,
                                             .drain = svc_drain,
                                             .stop = svc_drain,
                                             .idle = svc_idle};

static uint64_t ms_arg(const char *s)
{
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end) {
        fprintf(stderr, "ztm-hublink-driver: not a number: %s\n", s);
        exit(2);
    }
    return v;
}

int main(int argc, char **argv)
{
    enum {
        O_HUB = 256,
        O_MESH,
        O_CERT,
        O_KEY,
        O_CA,
        O_NOEV,
        O_CALL,
        O_OPEN,
        O_ACCEPT,
        O_SEND,
        O_SEED,
        O_CDELAY,
        O_BMIN,
        O_BMAX,
        O_LEVEL
    };
    static const struct option opts[] = {
        {"hub", required_argument, NULL, O_HUB},
        {"mesh", required_argument, NULL, O_MESH},
        {"cert", required_argument, NULL, O_CERT},
        {"key", required_argument, NULL, O_KEY},
        {"ca", required_argument, NULL, O_CA},
        {"allow-no-events", no_argument, NULL, O_NOEV},
        {"call", required_argument, NULL, O_CALL},
        {"open", required_argument, NULL, O_OPEN},
        {"accept", no_argument, NULL, O_ACCEPT},
        {"send", required_argument, NULL, O_SEND},
        {"seed", required_argument, NULL, O_SEED},
        {"consume-delay", required_argument, NULL, O_CDELAY},
        {"backoff-min", required_argument, NULL, O_BMIN},
        {"backoff-max", required_argument, NULL, O_BMAX},
        {"log-level", required_argument, NULL, O_LEVEL},
        {0},
    };
    driver_t d = {0};
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case O_HUB:
            if (d.n_hubs == MAX_HUBS) {
                fprintf(stderr, "ztm-hublink-driver: at most %d hubs\n", MAX_HUBS);
                return 2;
            }
            d.hubs[d.n_hubs++] = optarg;
            break;
        case O_MESH:
            d.mesh = optarg;
            break;
        case O_CERT:
            d.cert = optarg;
            break;
        case O_KEY:
            d.key = optarg;
            break;
        case O_CA:
            d.ca = optarg;
            break;
        case O_NOEV:
            d.allow_no_events = true;
            break;
        case O_CALL:
            d.call_path = optarg;
            break;
        case O_OPEN:
            d.open_peer = optarg;
            break;
        case O_ACCEPT:
            d.accept = true;
            break;
        case O_SEND:
            d.send = ms_arg(optarg);
            break;
        case O_SEED:
            d.seed = (unsigned)ms_arg(optarg) & 255;
            break;
        case O_CDELAY:
            d.consume_delay_ns = ms_arg(optarg) * ZTM_NS_PER_MS;
            break;
        case O_BMIN:
            d.backoff_min_ns = ms_arg(optarg) * ZTM_NS_PER_MS;
            break;
        case O_BMAX:
            d.backoff_max_ns = ms_arg(optarg) * ZTM_NS_PER_MS;
            break;
        case O_LEVEL: {
            ztm_log_level_t lv;
            if (!ztm_log_parse_level(optarg, &lv)) {
                fprintf(stderr, "ztm-hublink-driver: bad --log-level %s\n", optarg);
                return 2;
            }
            ztm_log_set_level(lv);
            break;
        }
        default:
            fprintf(stderr, "ztm-hublink-driver: bad usage (see the comment at the top of "
                            "tests/integration/agent/hublink_driver.c)\n");
            return 2;
        }
    }
    if (!d.n_hubs || !d.mesh || !d.cert || !d.key || !d.ca) {
        fprintf(stderr, "ztm-hublink-driver: --hub, --mesh, --cert, --key and --ca are required\n");
        return 2;
    }
    ztm_engine_config_t ec = {
        .workers = 1, .buf_count = 64, .buf_size = 16384, .drain_timeout_ns = 5 * ZTM_NS_PER_SEC};
    int r = ztm_engine_run(&ec, &driver_service, &d, NULL);
    if (r < 0) {
        fprintf(stderr, "ztm-hublink-driver: %s\n", ztm_tls_strerror(r));
        return 1;
    }
    out("exited");
    return 0;
}
