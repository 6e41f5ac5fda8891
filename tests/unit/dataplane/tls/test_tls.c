/* Unit tests of dataplane/tls/tls.c: two connections joined in memory, no
 * sockets, no engine: exactly how a worker drives the layer with its own
 * buffers. Usage: test_tls CERTDIR [test-name] */
#include "dataplane/runtime/log.h"
#include "dataplane/tls/ktls.h"
#include "dataplane/tls/tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static const char *certdir;
static int failures;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);               \
            failures++;                                                                            \
            return;                                                                                \
        }                                                                                          \
    } while (0)
#define CHECK_EQ(a, b)                                                                             \
    do {                                                                                           \
        long long a_ = (long long)(a), b_ = (long long)(b);                                        \
        if (a_ != b_) {                                                                            \
            fprintf(stderr, "%s:%d: CHECK failed: %s == %s (%lld vs %lld: %s)\n", __FILE__,        \
                    __LINE__, #a, #b, a_, b_, ztm_tls_strerror((int)a_));                          \
            failures++;                                                                            \
            return;                                                                                \
        }                                                                                          \
    } while (0)
#define CHECK_STR(a, b)                                                                            \
    do {                                                                                           \
        const char *a_ = (a), *b_ = (b);                                                           \
        if (!a_ || strcmp(a_, b_) != 0) {                                                          \
            fprintf(stderr, "%s:%d: CHECK failed: %s is \"%s\", want \"%s\"\n", __FILE__,          \
                    __LINE__, #a, a_ ? a_ : "(null)", b_);                                         \
            failures++;                                                                            \
            return;                                                                                \
        }                                                                                          \
    } while (0)

static char *path(const char *name)
{
    static char bufs[8][512];
    static int i;
    char *p = bufs[i++ % 8];
    snprintf(p, 512, "%s/%s", certdir, name);
    return p;
}

typedef struct {
    int calls;
    char subject[256];
    const char *refuse;
} hook_state_t;

static const char *on_verify(void *arg, ztm_tls_conn_t *conn, X509 *peer)
{
    hook_state_t *h = arg;
    h->calls++;
    X509_NAME_oneline(X509_get_subject_name(peer), h->subject, sizeof(h->subject));
    return h->refuse;
}

static ztm_tls_ctx_t *make_ctx(ztm_tls_role_t role, const char *cert, hook_state_t *hook,
                               uint32_t out_buf)
{
    char certf[64], keyf[64];
    snprintf(certf, sizeof(certf), "%s.pem", cert);
    snprintf(keyf, sizeof(keyf), "%s.key", cert);
    ztm_tls_config_t cfg = {
        .role = role,
        .cert_file = path(certf),
        .key_file = path(keyf),
        .ca_file = path("ca.pem"),
        .on_verify = hook ? on_verify : NULL,
        .on_verify_arg = hook,
        .out_buf_size = out_buf,
    };
    ztm_tls_ctx_t *ctx = NULL;
    int r = ztm_tls_ctx_new(&ctx, &cfg);
    if (r != 0) {
        fprintf(stderr, "ztm_tls_ctx_new(%s): %s\n", cert, ztm_tls_strerror(r));
        exit(2);
    }
    return ctx;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* Moves A's pending ciphertext into B, in pieces of at most CHUNK bytes
 * (0: as much as fits), through B's zero-copy in_space. Returns bytes moved. */
static size_t move(ztm_tls_conn_t *a, ztm_tls_conn_t *b, size_t chunk)
{
    size_t moved = 0;
    for (;;) {
        const uint8_t *data;
        size_t n = ztm_tls_out_pending(a, &data);
        if (n == 0)
            break;
        size_t room;
        uint8_t *dst = ztm_tls_in_space(b, &room);
        if (room == 0) {
            ztm_tls_in_commit(b, 0);
            break;
        }
        if (n > room)
            n = room;
        if (chunk) {
            size_t piece = 1 + rng() % chunk;
            if (n > piece)
                n = piece;
        }
        memcpy(dst, data, n);
        if (ztm_tls_in_commit(b, n) != 0)
            abort();
        ztm_tls_out_consume(a, n);
        moved += n;
    }
    return moved;
}

/* Runs both handshakes to completion or failure. */
static bool in_progress(int r)
{
    return r == -EAGAIN || r == -ENOBUFS;
}

static void handshake(ztm_tls_conn_t *c, ztm_tls_conn_t *s, int *rc, int *rs)
{
    *rc = *rs = -EAGAIN;
    for (int round = 0; round < 50; round++) {
        if (in_progress(*rc))
            *rc = ztm_tls_handshake(c);
        size_t m1 = move(c, s, 0);
        if (in_progress(*rs))
            *rs = ztm_tls_handshake(s);
        size_t m2 = move(s, c, 0);
        if (!in_progress(*rc) && !in_progress(*rs))
            break;
        if (m1 == 0 && m2 == 0 && round > 3)
            break;
    }
}

static void test_handshake_ok(void)
{
    hook_state_t hs = {0}, hc = {0};
    ztm_tls_ctx_t *sctx = make_ctx(ZTM_TLS_SERVER, "server", &hs, 0);
    ztm_tls_ctx_t *cctx = make_ctx(ZTM_TLS_CLIENT, "client", &hc, 0);
    ztm_tls_conn_t *s, *c;
    CHECK_EQ(ztm_tls_conn_new(&s, sctx, NULL), 0);
    CHECK_EQ(ztm_tls_conn_new(&c, cctx, "server.ztm.test"), 0);
    ztm_tls_ctx_free(sctx); /* connections keep their context alive */
    ztm_tls_ctx_free(cctx);
    CHECK(!ztm_tls_handshake_done(c));
    CHECK_EQ(ztm_tls_read(c, (char[8]){0}, 8), -ENOTCONN);
    CHECK_EQ(ztm_tls_write(c, "x", 1), -ENOTCONN);
    CHECK(ztm_tls_conn_peer_cert(c) == NULL);
    int rc, rs;
    handshake(c, s, &rc, &rs);
    CHECK_EQ(rc, 0);
    CHECK_EQ(rs, 0);
    CHECK(ztm_tls_handshake_done(c) && ztm_tls_handshake_done(s));
    CHECK_EQ(hs.calls, 1);
    CHECK_EQ(hc.calls, 1);
    CHECK(strstr(hs.subject, "CN=client.ztm.test") != NULL);
    CHECK(strstr(hc.subject, "CN=server.ztm.test") != NULL);
    CHECK(ztm_tls_conn_peer_cert(s) != NULL);
    CHECK(ztm_tls_conn_verify_reason(s) == NULL);
    CHECK_STR(ztm_tls_conn_sni(s), "server.ztm.test");
    CHECK(strncmp(ztm_tls_conn_cipher(c), "TLS_", 4) == 0);
    CHECK_STR(ztm_tls_conn_cipher(c), ztm_tls_conn_cipher(s));
    /* Off mode: the record layer settles in user space at once. */
    CHECK(!ztm_ktls_pending(c));
    CHECK_EQ(ztm_ktls_state(c), 0);
    CHECK_EQ(ztm_tls_recv_limit(c), SIZE_MAX);
    /* Nothing pending after the handshake: no tickets between our peers. */
    const uint8_t *d;
    CHECK_EQ(ztm_tls_out_pending(s, &d), 0);
    /* A round trip. */
    CHECK_EQ(ztm_tls_write(c, "ping", 4), 4);
    move(c, s, 0);
    char buf[16];
    CHECK_EQ(ztm_tls_read(s, buf, sizeof(buf)), 4);
    CHECK(memcmp(buf, "ping", 4) == 0);
    CHECK_EQ(ztm_tls_read(s, buf, sizeof(buf)), -EAGAIN);
    CHECK_EQ(ztm_tls_read(s, buf, 0), -EINVAL);
    CHECK_EQ(ztm_tls_write(s, buf, 0), 0);
    ztm_tls_conn_free(c);
    ztm_tls_conn_free(s);
}

typedef struct {
    const char *server_cert, *client_cert;
    const char *reason;       /* expected on the refusing side */
    bool server_refuses;      /* else the client refuses */
    const char *hook_refusal; /* server hook refuses with this */
} refusal_case_t;

static void run_refusal(const refusal_case_t *t)
{
    hook_state_t hs = {.refuse = t->hook_refusal};
    ztm_tls_ctx_t *sctx = make_ctx(ZTM_TLS_SERVER, t->server_cert, &hs, 0);
    ztm_tls_ctx_t *cctx = make_ctx(ZTM_TLS_CLIENT, t->client_cert, NULL, 0);
    ztm_tls_conn_t *s, *c;
    CHECK_EQ(ztm_tls_conn_new(&s, sctx, NULL), 0);
    CHECK_EQ(ztm_tls_conn_new(&c, cctx, NULL), 0);
    int rc, rs;
    handshake(c, s, &rc, &rs);
    char buf[64];
    if (t->server_refuses) {
        CHECK_EQ(rs, ZTM_TLS_E_VERIFY);
        CHECK_STR(ztm_tls_conn_verify_reason(s), t->reason);
        CHECK(ztm_tls_conn_peer_cert(s) == NULL);
        /* TLS 1.3: the client finished first; it learns at its next read. */
        if (rc == 0)
            rc = (int)ztm_tls_read(c, buf, sizeof(buf));
        CHECK_EQ(rc, ZTM_TLS_E_PEER_ALERT);
        CHECK(ztm_tls_conn_alert(c) > 0);
        CHECK(ztm_tls_conn_verify_reason(c) == NULL);
    } else {
        CHECK_EQ(rc, ZTM_TLS_E_VERIFY);
        CHECK_STR(ztm_tls_conn_verify_reason(c), t->reason);
        CHECK_EQ(rs, ZTM_TLS_E_PEER_ALERT);
    }
    /* A failed connection stays failed. */
    CHECK_EQ(ztm_tls_handshake(t->server_refuses ? s : c), ZTM_TLS_E_CLOSED);
    ztm_tls_conn_free(c);
    ztm_tls_conn_free(s);
    ztm_tls_ctx_free(sctx);
    ztm_tls_ctx_free(cctx);
}

static void test_refusals(void)
{
    static const refusal_case_t cases[] = {
        {"server", "expired-client", "expired", true, NULL},
        {"server", "notyet-client", "not_yet_valid", true, NULL},
        {"server", "foreign-client", "unknown_ca", true, NULL},
        {"server", "wrongeku-client", "wrong_key_usage", true, NULL},
        {"expired-server", "client", "expired", false, NULL},
        {"notyet-server", "client", "not_yet_valid", false, NULL},
        {"foreign-server", "client", "unknown_ca", false, NULL},
        {"wrongeku-server", "client", "wrong_key_usage", false, NULL},
        {"server", "client", "revoked", true, "revoked"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int before = failures;
        run_refusal(&cases[i]);
        if (failures != before)
            fprintf(stderr, "  in case server=%s client=%s\n", cases[i].server_cert,
                    cases[i].client_cert);
    }
}

static void open_pair(ztm_tls_conn_t **c, ztm_tls_conn_t **s, uint32_t out_buf)
{
    ztm_tls_ctx_t *sctx = make_ctx(ZTM_TLS_SERVER, "server", NULL, out_buf);
    ztm_tls_ctx_t *cctx = make_ctx(ZTM_TLS_CLIENT, "client", NULL, out_buf);
    ztm_tls_conn_new(s, sctx, NULL);
    ztm_tls_conn_new(c, cctx, NULL);
    ztm_tls_ctx_free(sctx);
    ztm_tls_ctx_free(cctx);
    int rc, rs;
    handshake(*c, *s, &rc, &rs);
    if (rc != 0 || rs != 0) {
        fprintf(stderr, "handshake failed: %s / %s\n", ztm_tls_strerror(rc), ztm_tls_strerror(rs));
        exit(1);
    }
}

typedef struct {
    size_t sent, got;
    SHA256_CTX tx, rx;
    uint8_t src[70000]; /* generated, not yet taken by ztm_tls_write */
    size_t src_len;
} stream_t;

static void fill(uint64_t *seed, uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        *seed = *seed * 6364136223846793005ull + 1442695040888963407ull;
        p[i] = (uint8_t)(*seed >> 56);
    }
}

/* One step of one direction: write a random-sized piece, move ciphertext
 * in random-sized pieces, read into a random-sized buffer. */
static int pump(ztm_tls_conn_t *from, ztm_tls_conn_t *to, stream_t *st, uint64_t *gen, size_t total)
{
    static uint8_t dst[70000];
    uint8_t *src = st->src;
    if (st->sent < total) {
        size_t want = 1 + rng() % 65536;
        if (want > total - st->sent)
            want = total - st->sent;
        if (st->src_len < want) {
            fill(gen, src + st->src_len, want - st->src_len);
            st->src_len = want;
        }
        ssize_t w = ztm_tls_write(from, src, want);
        if (w > 0) {
            SHA256_Update(&st->tx, src, (size_t)w);
            memmove(src, src + w, st->src_len - (size_t)w);
            st->src_len -= (size_t)w;
            st->sent += (size_t)w;
        } else if (w != -ENOBUFS) {
            return (int)w;
        }
    }
    move(from, to, 3000);
    for (;;) {
        ssize_t r = ztm_tls_read(to, dst, 1 + rng() % sizeof(dst));
        if (r == -EAGAIN)
            break;
        if (r <= 0)
            return r == 0 ? -EPIPE : (int)r;
        SHA256_Update(&st->rx, dst, (size_t)r);
        st->got += (size_t)r;
    }
    return 0;
}

static void test_transfer(void)
{
    ztm_tls_conn_t *c, *s;
    /* The smallest out buffer: writes hit -ENOBUFS all the time. */
    open_pair(&c, &s, 16384 + 256 + 5);
    const size_t total = 6u << 20;
    static stream_t up, down;
    uint64_t gen_up = 1, gen_down = 2;
    SHA256_Init(&up.tx), SHA256_Init(&up.rx), SHA256_Init(&down.tx), SHA256_Init(&down.rx);
    for (int i = 0; (up.got < total || down.got < total) && i < 100000; i++) {
        CHECK_EQ(pump(c, s, &up, &gen_up, total), 0);
        CHECK_EQ(pump(s, c, &down, &gen_down, total), 0);
        if (i == 50) /* user space follows KeyUpdate (and answers a request) */
            CHECK_EQ(ztm_tls_key_update(c, true), 0);
    }
    CHECK_EQ(up.got, total);
    CHECK_EQ(down.got, total);
    uint8_t a[32], b[32];
    SHA256_Final(a, &up.tx), SHA256_Final(b, &up.rx);
    CHECK(memcmp(a, b, 32) == 0);
    SHA256_Final(a, &down.tx), SHA256_Final(b, &down.rx);
    CHECK(memcmp(a, b, 32) == 0);

    /* close_notify both ways */
    CHECK_EQ(ztm_tls_shutdown(c), 0);
    CHECK_EQ(ztm_tls_shutdown(c), 0);
    CHECK_EQ(ztm_tls_write(c, "x", 1), ZTM_TLS_E_CLOSED);
    move(c, s, 0);
    char buf[32];
    CHECK_EQ(ztm_tls_read(s, buf, sizeof(buf)), 0);
    CHECK_EQ(ztm_tls_read(s, buf, sizeof(buf)), 0);
    CHECK_EQ(ztm_tls_write(s, "late", 4), 4); /* half-closed: s may still send */
    CHECK_EQ(ztm_tls_shutdown(s), 0);
    move(s, c, 0);
    CHECK_EQ(ztm_tls_read(c, buf, sizeof(buf)), 4);
    CHECK_EQ(ztm_tls_read(c, buf, sizeof(buf)), 0);
    ztm_tls_conn_free(c);
    ztm_tls_conn_free(s);
}

static void test_truncation_and_lengths(void)
{
    ztm_tls_conn_t *c, *s;
    open_pair(&c, &s, 0);
    /* in_commit can't account more than it lent */
    size_t room;
    ztm_tls_in_space(s, &room);
    CHECK(room > 0);
    CHECK_EQ(ztm_tls_in_commit(s, room + 1), -EINVAL);
    CHECK_EQ(ztm_tls_in_commit(s, 0), 0);
    /* feed takes what fits and says so */
    static uint8_t junk[200000];
    CHECK_EQ(ztm_tls_write(c, "abc", 3), 3);
    move(c, s, 0);
    char buf[8];
    CHECK_EQ(ztm_tls_read(s, buf, sizeof(buf)), 3);
    size_t took = ztm_tls_feed(s, junk, sizeof(junk));
    CHECK(took > 0 && took < sizeof(junk));
    CHECK_EQ(ztm_tls_feed(s, junk, sizeof(junk)), 0);
    /* ... and junk is a protocol error, with an alert to send */
    ssize_t r = ztm_tls_read(s, buf, sizeof(buf));
    CHECK_EQ(r, ZTM_TLS_E_PROTOCOL);
    CHECK_EQ(ztm_tls_read(s, buf, sizeof(buf)), ZTM_TLS_E_CLOSED);
    const uint8_t *d;
    CHECK(ztm_tls_out_pending(s, &d) > 0);
    /* EOF without close_notify */
    ztm_tls_feed_eof(c);
    CHECK_EQ(ztm_tls_read(c, buf, sizeof(buf)), ZTM_TLS_E_TRUNCATED);
    ztm_tls_conn_free(c);
    ztm_tls_conn_free(s);
}

static void test_timeout(void)
{
    ztm_tls_config_t cfg = {
        .role = ZTM_TLS_SERVER,
        .cert_file = path("server.pem"),
        .key_file = path("server.key"),
        .ca_file = path("ca.pem"),
        .handshake_timeout_ms = 1,
    };
    ztm_tls_ctx_t *ctx;
    CHECK_EQ(ztm_tls_ctx_new(&ctx, &cfg), 0);
    ztm_tls_conn_t *s;
    CHECK_EQ(ztm_tls_conn_new(&s, ctx, NULL), 0);
    int r = ztm_tls_handshake(s); /* inside the deadline, unless this machine is slow */
    CHECK(r == -EAGAIN || r == -ETIMEDOUT);
    nanosleep(&(struct timespec){0, 20 * 1000000}, NULL);
    if (r == -EAGAIN)
        CHECK_EQ(ztm_tls_handshake(s), -ETIMEDOUT);
    CHECK_EQ(ztm_tls_handshake(s), ZTM_TLS_E_CLOSED);
    ztm_tls_conn_free(s);
    ztm_tls_ctx_free(ctx);
}

static void test_config_errors(void)
{
    ztm_tls_config_t cfg = {
        .role = ZTM_TLS_SERVER,
        .cert_file = path("server.pem"),
        .key_file = path("client.key"), /* not the cert's key */
        .ca_file = path("ca.pem"),
    };
    ztm_tls_ctx_t *ctx = NULL;
    CHECK_EQ(ztm_tls_ctx_new(&ctx, &cfg), ZTM_TLS_E_CONFIG);
    CHECK(ctx == NULL);
    cfg.key_file = path("server.key");
    cfg.ca_file = path("no-such-file.pem");
    CHECK_EQ(ztm_tls_ctx_new(&ctx, &cfg), ZTM_TLS_E_CONFIG);
    cfg.ca_file = path("ca.pem");
    cfg.out_buf_size = 100; /* smaller than one record */
    CHECK_EQ(ztm_tls_ctx_new(&ctx, &cfg), -EINVAL);
    cfg.out_buf_size = 0;
    CHECK_EQ(ztm_tls_ctx_new(&ctx, &cfg), 0);
    ztm_tls_conn_t *c;
    CHECK_EQ(ztm_tls_conn_new(&c, ctx, "sni-on-a-server"), -EINVAL);
    ztm_tls_ctx_free(ctx);
    ztm_ktls_mode_t m;
    CHECK(ztm_ktls_parse_mode("auto", &m) && m == ZTM_KTLS_AUTO);
    CHECK(!ztm_ktls_parse_mode("maybe", &m));
    CHECK_STR(ztm_tls_strerror(ZTM_TLS_E_REKEY_NEEDED),
              "peer updated its keys; kernel TLS cannot rekey: close and reconnect");
    CHECK_STR(ztm_tls_strerror(-EAGAIN), strerror(EAGAIN));
}

static void test_keylog(void)
{
    char file[] = "/tmp/ztm-keylog-XXXXXX";
    int fd = mkstemp(file);
    CHECK(fd >= 0);
    close(fd);
    setenv("SSLKEYLOGFILE", file, 1);
    ztm_tls_conn_t *c, *s;
    open_pair(&c, &s, 0);
    unsetenv("SSLKEYLOGFILE");
    ztm_tls_conn_free(c);
    ztm_tls_conn_free(s);
    FILE *f = fopen(file, "r");
    CHECK(f != NULL);
    char line[512];
    int traffic = 0, lines = 0;
    while (fgets(line, sizeof(line), f)) {
        lines++;
        if (strncmp(line, "CLIENT_TRAFFIC_SECRET_0 ", 24) == 0 ||
            strncmp(line, "SERVER_TRAFFIC_SECRET_0 ", 24) == 0)
            traffic++;
    }
    fclose(f);
    unlink(file);
    CHECK_EQ(traffic, 4); /* two per side, both sides logged */
    CHECK(lines >= 8);
    /* unset: nothing written (the file is gone and stays gone) */
    open_pair(&c, &s, 0);
    ztm_tls_conn_free(c);
    ztm_tls_conn_free(s);
    CHECK(access(file, F_OK) != 0);
}

/* kTLS decisions against this host's kernel, on a real loopback TCP pair
 * (the TLS bytes still travel in memory: only the switch uses the fd). */
static void test_ktls_modes(void)
{
    int avail = ztm_ktls_available();
    CHECK(avail == 0 || avail == -ENOENT || avail == -EOPNOTSUPP);
    printf("kTLS on this kernel: %s\n", avail == 0 ? "available" : ztm_tls_strerror(avail));

    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof(a);
    CHECK(bind(lfd, (struct sockaddr *)&a, sizeof(a)) == 0 && listen(lfd, 4) == 0);
    getsockname(lfd, (struct sockaddr *)&a, &alen);
    for (int mode = ZTM_KTLS_AUTO; mode <= ZTM_KTLS_ON; mode++) {
        int cfd = socket(AF_INET, SOCK_STREAM, 0);
        CHECK(connect(cfd, (struct sockaddr *)&a, sizeof(a)) == 0);
        int afd = accept(lfd, NULL, NULL);
        ztm_tls_config_t scfg = {.role = ZTM_TLS_SERVER,
                                 .cert_file = path("server.pem"),
                                 .key_file = path("server.key"),
                                 .ca_file = path("ca.pem"),
                                 .ktls = (ztm_ktls_mode_t)mode};
        ztm_tls_config_t ccfg = {.role = ZTM_TLS_CLIENT,
                                 .cert_file = path("client.pem"),
                                 .key_file = path("client.key"),
                                 .ca_file = path("ca.pem"),
                                 .ktls = (ztm_ktls_mode_t)mode};
        ztm_tls_ctx_t *sctx, *cctx;
        CHECK_EQ(ztm_tls_ctx_new(&sctx, &scfg), 0);
        CHECK_EQ(ztm_tls_ctx_new(&cctx, &ccfg), 0);
        ztm_tls_conn_t *s, *c;
        CHECK_EQ(ztm_tls_conn_new(&s, sctx, NULL), 0);
        CHECK_EQ(ztm_tls_conn_new(&c, cctx, NULL), 0);
        CHECK(ztm_ktls_pending(c));
        CHECK_EQ(ztm_tls_recv_limit(s), 5); /* a record header, no further */
        CHECK_EQ(ztm_ktls_enable(c, cfd), -ENOTCONN);
        int rc, rs;
        handshake(c, s, &rc, &rs);
        CHECK_EQ(rc, 0);
        CHECK_EQ(rs, 0);
        CHECK(ztm_ktls_pending(c));
        CHECK_EQ(ztm_tls_recv_limit(s), 0); /* settle the switch first */
        if (avail != 0 && mode == ZTM_KTLS_AUTO) {
            /* Bytes fed past the boundary (a caller that ignored the recv
             * limit) only postpone the switch until they have been read. */
            const uint8_t *d;
            CHECK_EQ(ztm_ktls_enable(c, cfd), 0);
            CHECK_EQ(ztm_tls_write(c, "early", 5), 5);
            size_t n = ztm_tls_out_pending(c, &d);
            CHECK_EQ(ztm_tls_feed(s, d, n), n); /* past recv_limit 0 */
            ztm_tls_out_consume(c, n);
            CHECK_EQ(ztm_ktls_enable(s, afd), -EAGAIN);
            char early[8];
            CHECK_EQ(ztm_tls_read(s, early, sizeof(early)), 5);
            CHECK_EQ(ztm_tls_read(s, early, sizeof(early)), -EAGAIN);
        }
        int ec = ztm_ktls_enable(c, cfd), es = ztm_ktls_enable(s, afd);
        if (avail != 0 && mode == ZTM_KTLS_AUTO) {
            CHECK_EQ(ec, 0);
            CHECK_EQ(es, 0);
            CHECK_EQ(ztm_ktls_state(c), 0);
            CHECK(!ztm_ktls_pending(c));
            CHECK_EQ(ztm_tls_recv_limit(s), SIZE_MAX);
            /* still fine in user space */
            CHECK_EQ(ztm_tls_write(c, "ok", 2), 2);
            move(c, s, 0);
            char buf[4];
            CHECK_EQ(ztm_tls_read(s, buf, sizeof(buf)), 2);
        } else if (avail != 0) {
            CHECK_EQ(ec, ZTM_TLS_E_KTLS_UNAVAILABLE);
            CHECK_EQ(es, ZTM_TLS_E_KTLS_UNAVAILABLE);
            CHECK_EQ(ztm_tls_write(c, "ok", 2), ZTM_TLS_E_CLOSED);
        } else {
            CHECK_EQ(ec, 0);
            CHECK_EQ(ztm_ktls_state(c), ZTM_KTLS_TX | ZTM_KTLS_RX);
        }
        ztm_tls_conn_free(c);
        ztm_tls_conn_free(s);
        ztm_tls_ctx_free(sctx);
        ztm_tls_ctx_free(cctx);
        close(cfd);
        close(afd);
    }
    close(lfd);
    ztm_tls_stats_t st;
    ztm_tls_stats_get(&st);
    CHECK(st.handshakes_ok >= 4);
}

static const struct {
    const char *name;
    void (*fn)(void);
} tests[] = {
    {"handshake_ok", test_handshake_ok},
    {"refusals", test_refusals},
    {"transfer", test_transfer},
    {"truncation_and_lengths", test_truncation_and_lengths},
    {"timeout", test_timeout},
    {"config_errors", test_config_errors},
    {"keylog", test_keylog},
    {"ktls_modes", test_ktls_modes},
};

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: test_tls CERTDIR [test]\n");
        return 2;
    }
    certdir = argv[1];
    unsetenv("SSLKEYLOGFILE");
    ztm_log_set_level(ZTM_LOG_WARN);
    int ran = 0;
    for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); i++) {
        if (argc > 2 && strcmp(argv[2], tests[i].name) != 0)
            continue;
        int before = failures;
        tests[i].fn();
        printf("%s %s\n", failures == before ? "PASS" : "FAIL", tests[i].name);
        ran++;
    }
    if (!ran) {
        fprintf(stderr, "no test named %s\n", argv[2]);
        return 2;
    }
    return failures ? 1 : 0;
}
