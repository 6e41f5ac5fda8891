/* Peer sessions end to end on a one-worker engine: two sessions (importer
 * and exporter) joined back to back by an in-memory carrier with a small
 * window, real mesh certificates made by the CA code, real sockets on
 * 127.0.0.1 on both sides (a TCP echo target, a UDP echo target, the
 * importer's accepted connections).
 *
 * Checked: 8 MiB of random bytes each way, exact; a writer that does not
 * read is stopped by flow control, then gets every byte; 40 tunnels at
 * once through one session; a stream opened before
 * the handshake; half-close (FIN after the request, the reply still
 * arrives, then EOF); an RST from the local client reaches the target as
 * an RST, and one from the target the local client; a target that
 * refuses, and RESOLVE refusing (403) or not knowing (404) the service:
 * the local socket is closed and tunnel.refused logged; the wrong peer
 * (expect_name) ends the session "verify: wrong_peer"; UDP datagrams of
 * many sizes both ways, oversize refused, the flow's idle timeout, a
 * refused flow; the session's idle timeout and a graceful close (both ends
 * see a clean end).
 *
 * The test thread drives; everything that touches a session runs on the
 * worker (call_on_worker). */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "controlplane/ca/ca.h"
#include "controlplane/ca/keys.h"
#include "controlplane/store/file.h"
#include "dataplane/peer/peer.h"
#include "dataplane/runtime/log.h"
#include "tests/unit/check.h"

#define WINDOW     40000 /* carrier window per direction: not a multiple of a record */
#define BIG        (8u << 20)
#define MESH       "m1"
#define SECRET_WHY "endpoint alice is not in the allow list of service secret"

/* ---- the mesh: a CA and two agents, files in a temp dir -------------------- */
static char dir[] = "/tmp/ztm-test-peer-XXXXXX";
static char ca_path[256], alice_crt[256], alice_key[256], bob_crt[256], bob_key[256];

static void issue(ztm_ca_t *ca, const char *name, char *crt, char *key)
{
    EVP_PKEY *k;
    char *csr_pem;
    size_t csr_len;
    ztm_csr_t *csr;
    char id[33];
    ztm_id_generate(id);
    if (ztm_key_generate(&k) || ztm_csr_create(k, name, &csr_pem, &csr_len) ||
        ztm_csr_parse(csr_pem, csr_len, &csr)) {
        fprintf(stderr, "cannot make a key and CSR for %s\n", name);
        exit(1);
    }
    ztm_ca_leaf_t leaf = {.role = ZTM_ROLE_AGENT, .id = id, .name = name};
    ztm_ca_issued_t out;
    snprintf(crt, 256, "%s/%s.crt", dir, name);
    snprintf(key, 256, "%s/%s.key", dir, name);
    if (ztm_ca_issue(ca, csr, &leaf, &out) || ztm_pem_save_file(crt, out.pem, out.pem_len) ||
        ztm_key_save_file(k, key)) {
        fprintf(stderr, "cannot issue %s\n", name);
        exit(1);
    }
    ztm_ca_issued_clear(&out);
    ztm_csr_free(csr);
    free(csr_pem);
    EVP_PKEY_free(k);
}

static void make_mesh(void)
{
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        exit(1);
    }
    ztm_ca_t *ca;
    char *pem;
    size_t len;
    if (ztm_ca_create(MESH, 0, 0, &ca) || ztm_ca_export(ca, &pem, &len, NULL, NULL)) {
        fprintf(stderr, "cannot make the CA\n");
        exit(1);
    }
    snprintf(ca_path, sizeof(ca_path), "%s/ca.crt", dir);
    if (ztm_pem_save_file(ca_path, pem, len)) {
        fprintf(stderr, "cannot write %s\n", ca_path);
        exit(1);
    }
    free(pem);
    issue(ca, "alice", alice_crt, alice_key);
    issue(ca, "bob", bob_crt, bob_key);
    ztm_ca_free(ca);
}

static void remove_mesh(void)
{
    const char *files[] = {ca_path, alice_crt, alice_key, bob_crt, bob_key};
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++)
        unlink(files[i]);
    rmdir(dir);
}

static ztm_tls_ctx_t *make_ctx(ztm_tls_role_t role, const char *crt, const char *key)
{
    ztm_tls_config_t cfg = {.role = role, .cert_file = crt, .key_file = key, .ca_file = ca_path};
    ztm_tls_ctx_t *ctx;
    if (ztm_tls_ctx_new(&ctx, &cfg)) {
        fprintf(stderr, "cannot make a TLS context from %s\n", crt);
        exit(1);
    }
    return ctx;
}

/* ---- targets: TCP echo (counting resets seen) and UDP echo ----------------- */
static int echo_lfd, pair_lfd, udp_fd;
static ztm_addr_t echo_addr, udp_addr, closed_addr;
static struct sockaddr_in pair_addr;
static atomic_int echo_resets, stop_udp;
static pthread_t echo_threads[128];
static atomic_int n_echo_threads;

static int listener(struct sockaddr_in *a)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    memset(a, 0, sizeof(*a));
    a->sin_family = AF_INET;
    a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(*a);
    if (fd < 0 || bind(fd, (struct sockaddr *)a, len) || listen(fd, 64) ||
        getsockname(fd, (struct sockaddr *)a, &len)) {
        perror("listen");
        exit(1);
    }
    return fd;
}

static void to_addr(const struct sockaddr_in *a, ztm_addr_t *out)
{
    memset(out, 0, sizeof(*out));
    memcpy(&out->ss, a, sizeof(*a));
    out->len = sizeof(*a);
}

/* Small fixed socket buffers (no autotuning), so what the kernel holds
 * does not hide what the sessions hold. */
static void small_buffers(int fd)
{
    int n = 64 * 1024;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &n, sizeof(n));
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &n, sizeof(n));
}

static void *echo_conn(void *arg)
{
    int fd = (int)(intptr_t)arg;
    small_buffers(fd);
    static __thread uint8_t buf[65536];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            if (errno == ECONNRESET)
                atomic_fetch_add(&echo_resets, 1);
            break;
        }
        if (n == 0) {
            shutdown(fd, SHUT_WR);
            break;
        }
        if (n >= 4 && !memcmp(buf, "RST!", 4)) { /* asked to reset */
            ztm_sock_abortive(fd);
            break;
        }
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(fd, buf + off, (size_t)(n - off));
            if (w <= 0)
                goto out;
            off += w;
        }
    }
out:
    close(fd);
    return NULL;
}

static void *echo_accept(void *arg)
{
    for (;;) {
        int fd = accept4(echo_lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            return NULL; /* the listener was shut down */
        int i = atomic_fetch_add(&n_echo_threads, 1);
        if (i >= 128 || pthread_create(&echo_threads[i], NULL, echo_conn, (void *)(intptr_t)fd)) {
            fprintf(stderr, "too many echo connections\n");
            exit(1);
        }
    }
}

static void *udp_echo(void *arg)
{
    static uint8_t buf[65536];
    while (!atomic_load(&stop_udp)) {
        struct pollfd pfd = {.fd = udp_fd, .events = POLLIN};
        if (poll(&pfd, 1, 50) <= 0)
            continue;
        struct sockaddr_storage from;
        socklen_t flen = sizeof(from);
        ssize_t n = recvfrom(udp_fd, buf, sizeof(buf), 0, (struct sockaddr *)&from, &flen);
        if (n >= 0)
            sendto(udp_fd, buf, (size_t)n, 0, (struct sockaddr *)&from, flen);
    }
    return NULL;
}

static void start_targets(pthread_t *acc, pthread_t *uecho)
{
    struct sockaddr_in a;
    echo_lfd = listener(&a);
    to_addr(&a, &echo_addr);
    pair_lfd = listener(&pair_addr);
    int dead = listener(&a); /* a port nobody listens on once closed */
    close(dead);
    to_addr(&a, &closed_addr);
    udp_fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(a);
    if (udp_fd < 0 || bind(udp_fd, (struct sockaddr *)&a, len) ||
        getsockname(udp_fd, (struct sockaddr *)&a, &len)) {
        perror("udp");
        exit(1);
    }
    int big = 4 << 20;
    setsockopt(udp_fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
    to_addr(&a, &udp_addr);
    pthread_create(acc, NULL, echo_accept, NULL);
    pthread_create(uecho, NULL, udp_echo, NULL);
}

/* A connected TCP pair on 127.0.0.1: [0] the test's end (the local client),
 * [1] the accepted end the importer takes. */
static void tcp_pair(int sv[2])
{
    sv[0] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sv[0] < 0 || connect(sv[0], (struct sockaddr *)&pair_addr, sizeof(pair_addr))) {
        perror("connect");
        exit(1);
    }
    sv[1] = accept4(pair_lfd, NULL, NULL, SOCK_CLOEXEC);
    if (sv[1] < 0) {
        perror("accept");
        exit(1);
    }
    small_buffers(sv[0]);
    small_buffers(sv[1]);
}

/* ---- the engine, and calls onto its worker ---------------------------------- */
static ztm_engine_t *engine;
static ztm_worker_t *W;

typedef struct {
    void (*fn)(void *);
    void *arg;
    sem_t done;
} call_t;

static void call_on_worker(void (*fn)(void *), void *arg)
{
    call_t c = {fn, arg};
    sem_init(&c.done, 0, 0);
    ztm_msg_t m = {.type = ZTM_MSG_SERVICE, .ptr = &c};
    while (!ztm_engine_post(engine, -1, 0, &m))
        usleep(100);
    while (sem_wait(&c.done) < 0 && errno == EINTR)
        ;
    sem_destroy(&c.done);
}

typedef bool (*pred_fn)(void *arg);
typedef struct {
    pred_fn pred;
    void *arg;
    bool result;
} pred_call_t;

static void run_pred(void *arg)
{
    pred_call_t *pc = arg;
    pc->result = pc->pred(pc->arg);
}

/* Polls PRED on the worker until it holds or MS pass. */
static bool wait_for(pred_fn pred, void *arg, int ms)
{
    for (int t = 0; t <= ms; t += 10) {
        pred_call_t pc = {pred, arg, false};
        call_on_worker(run_pred, &pc);
        if (pc.result)
            return true;
        usleep(10000);
    }
    return false;
}

/* ---- the in-memory carrier ---------------------------------------------------- */
typedef struct end end_t;
struct end {
    ztm_peer_t *p; /* NULL once closed or gone */
    end_t *other;
    size_t credit; /* bytes we may still send to the other end */
    bool eof_out;
    bool closed, closed_error, gone_pending, gone;
    char reason[128];
    ztm_op_t op;
};

typedef struct {
    end_t a, b; /* a: the importer (client), b: the exporter (server) */
} pair_t;

static void pump(ztm_worker_t *w, ztm_op_t *op, int res, uint32_t flags)
{
    end_t *e = (end_t *)((char *)op - offsetof(end_t, op));
    static uint8_t buf[WINDOW];
    if (e->gone_pending && e->p) {
        ztm_peer_carrier_gone(e->p, "the far end reset the carrier");
        e->p = NULL;
        e->gone = true;
    }
    while (e->p && e->credit && !e->eof_out) {
        bool eof;
        size_t n =
            ztm_peer_produce(e->p, buf, e->credit < sizeof(buf) ? e->credit : sizeof(buf), &eof);
        e->credit -= n;
        if (n && e->other->p)
            ztm_peer_feed(e->other->p, buf, n);
        if (eof) {
            e->eof_out = true;
            if (e->other->p)
                ztm_peer_feed_eof(e->other->p);
        }
        if (!n)
            break;
    }
}

static void schedule(end_t *e)
{
    if (!e->op.inflight)
        io_uring_prep_nop(ztm_worker_sqe(W, &e->op));
}

static void c_want_write(void *arg)
{
    schedule(arg);
}

static void c_consumed(void *arg, size_t n)
{
    end_t *e = arg;
    e->other->credit += n;
    schedule(e->other);
}

static void c_closed(void *arg, const char *reason, bool error)
{
    end_t *e = arg;
    e->closed = true;
    e->closed_error = error;
    snprintf(e->reason, sizeof(e->reason), "%s", reason);
    e->p = NULL;
    if (error) {
        e->other->gone_pending = true;
        schedule(e->other);
    }
}

static const ztm_peer_carrier_t carrier = {c_want_write, c_consumed, c_closed};

static ztm_tls_ctx_t *client_ctx, *server_ctx;
static char resolve_caller[160];

static const char *resolve(void *arg, const ztm_identity_t *caller, const char *service, bool udp,
                           ztm_addr_t *to)
{
    snprintf(resolve_caller, sizeof(resolve_caller), "%s/%s", caller->mesh, caller->name);
    if (!strcmp(service, "echo") && !udp)
        *to = echo_addr;
    else if (!strcmp(service, "down") && !udp)
        *to = closed_addr;
    else if (!strcmp(service, "uecho") && udp)
        *to = udp_addr;
    else if (!strcmp(service, "secret"))
        return SECRET_WHY;
    else
        return "unknown service";
    return NULL;
}

typedef struct {
    pair_t *pr;
    const char *expect;
    uint64_t idle_ns, udp_idle_ns;
    int early_fd; /* connect_tcp("echo") before the handshake, or -1 */
    int early_ret;
} new_pair_t;

static void w_new_pair(void *arg)
{
    new_pair_t *np = arg;
    pair_t *pr = np->pr;
    memset(pr, 0, sizeof(*pr));
    pr->a.other = &pr->b;
    pr->b.other = &pr->a;
    pr->a.credit = pr->b.credit = WINDOW;
    ztm_op_init(&pr->a.op, pump, NULL);
    ztm_op_init(&pr->b.op, pump, NULL);
    ztm_peer_config_t cc = {.tls = client_ctx,
                            .mesh = MESH,
                            .expect_name = np->expect,
                            .idle_timeout_ns = np->idle_ns,
                            .udp_idle_timeout_ns = np->udp_idle_ns};
    ztm_peer_config_t sc = {.tls = server_ctx,
                            .mesh = MESH,
                            .resolve = resolve,
                            .idle_timeout_ns = np->idle_ns,
                            /* longer: the importer's flow timer is the one tested */
                            .udp_idle_timeout_ns = 3 * np->udp_idle_ns,
                            .connect_timeout_ns = 2 * ZTM_NS_PER_SEC};
    CHECK_EQ(ztm_peer_new(W, &cc, &carrier, &pr->a, &pr->a.p), 0);
    CHECK_EQ(ztm_peer_new(W, &sc, &carrier, &pr->b, &pr->b.p), 0);
    CHECK(!ztm_peer_ready(pr->a.p));
    if (np->early_fd >= 0)
        np->early_ret = ztm_peer_connect_tcp(pr->a.p, "echo", np->early_fd);
}

static pair_t *new_pair(pair_t *pr, const char *expect, uint64_t idle_ns, uint64_t udp_idle_ns,
                        int early_fd)
{
    new_pair_t np = {pr, expect, idle_ns, udp_idle_ns, early_fd, 0};
    call_on_worker(w_new_pair, &np);
    CHECK_EQ(np.early_ret, 0);
    return pr;
}

static bool both_ready(void *arg)
{
    pair_t *pr = arg;
    return pr->a.p && pr->b.p && ztm_peer_ready(pr->a.p) && ztm_peer_ready(pr->b.p);
}

static bool both_closed(void *arg)
{
    pair_t *pr = arg;
    return pr->a.closed && pr->b.closed;
}

static bool a_closed_b_gone(void *arg)
{
    pair_t *pr = arg;
    return pr->a.closed && pr->b.gone;
}

static bool no_streams(void *arg)
{
    pair_t *pr = arg;
    return pr->a.p && pr->b.p && ztm_peer_streams(pr->a.p) == 0 && ztm_peer_streams(pr->b.p) == 0;
}

typedef struct {
    pair_t *pr;
    const char *service;
    int fd, ret;
} connect_call_t;

static void w_connect(void *arg)
{
    connect_call_t *c = arg;
    c->ret = ztm_peer_connect_tcp(c->pr->a.p, c->service, c->fd);
}

/* A new local connection through PR to SERVICE; returns the test's end. */
static int open_tunnel(pair_t *pr, const char *service)
{
    int sv[2];
    tcp_pair(sv);
    connect_call_t c = {pr, service, sv[1], 0};
    call_on_worker(w_connect, &c);
    CHECK_EQ(c.ret, 0);
    return sv[0];
}

static bool write_all(int fd, const uint8_t *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return false;
        p += w;
        n -= (size_t)w;
    }
    return true;
}

/* Reads until EOF (or an error, or 10 s of silence) into BUF (CAP). */
static ssize_t read_to_eof(int fd, uint8_t *buf, size_t cap, bool *reset)
{
    size_t n = 0;
    *reset = false;
    for (;;) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (poll(&pfd, 1, 10000) <= 0)
            return -1;
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            *reset = errno == ECONNRESET;
            return (ssize_t)n;
        }
        if (r == 0)
            return (ssize_t)n;
        n += (size_t)r;
        if (n == cap)
            return (ssize_t)n;
    }
}

/* ---- TCP -------------------------------------------------------------------- */
typedef struct {
    int fd;
    const uint8_t *data;
    size_t len;
    bool ok;
} writer_t;

static void *writer(void *arg)
{
    writer_t *wr = arg;
    wr->ok = write_all(wr->fd, wr->data, wr->len);
    shutdown(wr->fd, SHUT_WR);
    return NULL;
}

static void test_big(pair_t *pr)
{
    uint8_t *out = malloc(BIG), *in = malloc(BIG + 1);
    int rnd = open("/dev/urandom", O_RDONLY);
    size_t got = 0;
    while (got < BIG) {
        ssize_t r = read(rnd, out + got, BIG - got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(rnd);
    CHECK_EQ(got, BIG);
    int fd = open_tunnel(pr, "echo");
    writer_t wr = {fd, out, BIG, false};
    pthread_t t;
    pthread_create(&t, NULL, writer, &wr);
    bool reset;
    ssize_t n = read_to_eof(fd, in, BIG + 1, &reset);
    pthread_join(t, NULL);
    CHECK(wr.ok);
    CHECK(!reset);
    CHECK_EQ(n, BIG);
    CHECK(n == BIG && memcmp(in, out, BIG) == 0);
    close(fd);
    free(out);
    free(in);
}

static uint8_t pattern(size_t i)
{
    return (uint8_t)((i * 2654435761u) >> 13);
}

/* A local client that writes and does not read: flow control stops it
 * (every buffer on the way is bounded), then everything arrives, exact. */
static void test_backpressure(pair_t *pr)
{
    int fd = open_tunnel(pr, "echo");
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    static uint8_t chunk[65536];
    size_t written = 0;
    for (int idle_ms = 0; written < (64u << 20) && idle_ms < 500;) {
        for (size_t j = 0; j < sizeof(chunk); j++)
            chunk[j] = pattern(written + j);
        ssize_t w = write(fd, chunk, sizeof(chunk));
        if (w > 0) {
            written += (size_t)w;
            idle_ms = 0;
        } else if (w < 0 && errno == EAGAIN) {
            usleep(10000);
            idle_ms += 10;
        } else {
            break;
        }
    }
    /* Stopped, not buffered without bound: the sessions hold a few ring
     * buffers; the target's socket (kernel-tuned) holds the most. */
    if (written >= (16u << 20))
        fprintf(stderr, "the writer got %zu bytes in without reading\n", written);
    CHECK(written < (16u << 20));
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    CHECK_EQ(shutdown(fd, SHUT_WR), 0);
    size_t got = 0, bad = 0;
    for (;;) {
        ssize_t n = read(fd, chunk, sizeof(chunk));
        if (n <= 0)
            break;
        for (ssize_t j = 0; j < n; j++)
            bad += chunk[j] != pattern(got + (size_t)j);
        got += (size_t)n;
    }
    CHECK_EQ(got, written);
    CHECK_EQ(bad, 0);
    close(fd);
}

/* Many tunnels at once, each its own bytes, through one session. */
#define NCONC      40
#define CONC_BYTES (256u * 1024)
static void test_concurrent(pair_t *pr)
{
    int fds[NCONC];
    size_t sent[NCONC] = {0}, got[NCONC] = {0}, bad = 0;
    bool eof[NCONC] = {0};
    for (int i = 0; i < NCONC; i++) {
        fds[i] = open_tunnel(pr, "echo");
        fcntl(fds[i], F_SETFL, fcntl(fds[i], F_GETFL) | O_NONBLOCK);
    }
    static uint8_t buf[16384];
    int open = NCONC;
    for (int quiet = 0; open && quiet < 10;) {
        struct pollfd pf[NCONC];
        for (int i = 0; i < NCONC; i++)
            pf[i] = (struct pollfd){eof[i] ? -1 : fds[i], /* no POLLHUP from the done */
                                    (short)(POLLIN | (sent[i] < CONC_BYTES ? POLLOUT : 0))};
        int r = poll(pf, NCONC, 1000);
        quiet = r > 0 ? 0 : quiet + 1;
        for (int i = 0; i < NCONC && r > 0; i++) {
            size_t base = (size_t)i * 1000003u;
            if ((pf[i].revents & POLLOUT) && sent[i] < CONC_BYTES) {
                size_t n = CONC_BYTES - sent[i] < sizeof(buf) ? CONC_BYTES - sent[i] : sizeof(buf);
                for (size_t j = 0; j < n; j++)
                    buf[j] = pattern(base + sent[i] + j);
                ssize_t w = write(fds[i], buf, n);
                if (w > 0 && (sent[i] += (size_t)w) == CONC_BYTES)
                    shutdown(fds[i], SHUT_WR);
            }
            if (pf[i].revents & (POLLIN | POLLHUP | POLLERR)) {
                ssize_t n = read(fds[i], buf, sizeof(buf));
                if (n > 0) {
                    for (ssize_t j = 0; j < n; j++)
                        bad += buf[j] != pattern(base + got[i] + (size_t)j);
                    got[i] += (size_t)n;
                } else if (n == 0 || errno != EAGAIN) {
                    eof[i] = true;
                    open--;
                }
            }
        }
    }
    CHECK_EQ(open, 0);
    CHECK_EQ(bad, 0);
    for (int i = 0; i < NCONC; i++) {
        CHECK_EQ(got[i], CONC_BYTES);
        close(fds[i]);
    }
}

/* FIN after the request: the reply still arrives, then EOF. */
static void check_half_close(int fd, const char *msg)
{
    uint8_t buf[256];
    bool reset;
    CHECK(write_all(fd, (const uint8_t *)msg, strlen(msg)));
    CHECK_EQ(shutdown(fd, SHUT_WR), 0);
    ssize_t n = read_to_eof(fd, buf, sizeof(buf), &reset);
    CHECK(!reset);
    CHECK_EQ(n, strlen(msg));
    CHECK(n == (ssize_t)strlen(msg) && memcmp(buf, msg, (size_t)n) == 0);
    close(fd);
}

/* The tunnel is refused: the local socket closes without a byte. */
static void check_refused(pair_t *pr, const char *service)
{
    int fd = open_tunnel(pr, service);
    uint8_t buf[16];
    bool reset;
    ssize_t n = read_to_eof(fd, buf, sizeof(buf), &reset);
    CHECK_EQ(n, 0);
    close(fd);
}

/* An RST from the local client reaches the target as an RST. */
static void test_reset(pair_t *pr)
{
    int before = atomic_load(&echo_resets);
    int fd = open_tunnel(pr, "echo");
    uint8_t b = 'x';
    CHECK(write_all(fd, &b, 1));
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    CHECK_EQ(poll(&pfd, 1, 10000), 1);
    CHECK_EQ(read(fd, &b, 1), 1); /* the echo: the target's side is up */
    ztm_sock_abortive(fd);
    close(fd);
    for (int i = 0; i < 500 && atomic_load(&echo_resets) == before; i++)
        usleep(10000);
    CHECK_EQ(atomic_load(&echo_resets), before + 1);
}

/* An RST from the target reaches the local client as an RST. */
static void test_target_reset(pair_t *pr)
{
    int fd = open_tunnel(pr, "echo");
    CHECK(write_all(fd, (const uint8_t *)"RST!", 4));
    uint8_t buf[16];
    bool reset;
    CHECK_EQ(read_to_eof(fd, buf, sizeof(buf), &reset), 0);
    CHECK(reset);
    close(fd);
}

/* ---- UDP -------------------------------------------------------------------- */
typedef struct {
    pair_t *pr;
    const char *service;
    uint32_t flow;
    int ret;
    int replies;
    size_t last_len;
    uint8_t last[65536];
    bool ended;
    char end_reason[160];
    const uint8_t *send;
    size_t send_len;
} flow_t;

static void on_reply(void *arg, const uint8_t *d, size_t len)
{
    flow_t *f = arg;
    f->replies++;
    f->last_len = len;
    memcpy(f->last, d, len);
}

static void on_end(void *arg, const char *reason)
{
    flow_t *f = arg;
    f->ended = true;
    snprintf(f->end_reason, sizeof(f->end_reason), "%s", reason);
}

static const ztm_peer_udp_cb_t udp_cb = {on_reply, on_end};

static void w_udp_open(void *arg)
{
    flow_t *f = arg;
    f->ret = ztm_peer_udp_open(f->pr->a.p, f->service, &udp_cb, f, &f->flow);
}

static void w_udp_send(void *arg)
{
    flow_t *f = arg;
    f->ret = ztm_peer_udp_send(f->pr->a.p, f->flow, f->send, f->send_len);
}

static void w_udp_close(void *arg)
{
    flow_t *f = arg;
    ztm_peer_udp_close(f->pr->a.p, f->flow);
}

static int want_replies;
static bool got_reply(void *arg)
{
    return ((flow_t *)arg)->replies >= want_replies;
}

static bool flow_ended(void *arg)
{
    return ((flow_t *)arg)->ended;
}

static void udp_roundtrip(flow_t *f, size_t len, uint8_t seed)
{
    static uint8_t d[65536];
    for (size_t i = 0; i < len; i++)
        d[i] = (uint8_t)(seed + i * 7);
    f->send = d;
    f->send_len = len;
    want_replies = f->replies + 1; /* before: the reply may beat the call's return */
    call_on_worker(w_udp_send, f);
    CHECK_EQ(f->ret, 0);
    bool got = wait_for(got_reply, f, 5000);
    CHECK(got);
    if (!got)
        fprintf(stderr, "no reply to a datagram of %zu bytes\n", len);
    CHECK_EQ(f->last_len, len);
    CHECK(f->last_len == len && memcmp(f->last, d, len) == 0);
}

static void test_udp(pair_t *pr)
{
    static flow_t f;
    memset(&f, 0, sizeof(f));
    f.pr = pr;
    f.service = "uecho";
    call_on_worker(w_udp_open, &f);
    CHECK_EQ(f.ret, 0);
    /* Sizes that fill and wrap the 128 KiB rings several times. */
    static const size_t sizes[] = {1, 0, 100, 1400, 9000, 65000, 3, 60001, 65507, 2, 40000, 777};
    for (int round = 0; round < 3; round++)
        for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
            udp_roundtrip(&f, sizes[i], (uint8_t)(i + round));
    f.send_len = 65536;
    call_on_worker(w_udp_send, &f);
    CHECK_EQ(f.ret, -EMSGSIZE);
    call_on_worker(w_udp_close, &f);
    f.send_len = 1;
    call_on_worker(w_udp_send, &f);
    CHECK_EQ(f.ret, -ENOENT);
    CHECK(!f.ended); /* closed by us: no on_end */

    /* A refused flow ends at once, with the reason. */
    static flow_t r;
    memset(&r, 0, sizeof(r));
    r.pr = pr;
    r.service = "secret";
    call_on_worker(w_udp_open, &r);
    CHECK_EQ(r.ret, 0);
    CHECK(wait_for(flow_ended, &r, 5000));
    CHECK(strstr(r.end_reason, "refused: 403") != NULL);
}

/* ---- the service ------------------------------------------------------------ */
static pair_t main_pair, wrong_pair, idle_pair;
static pthread_t driver;

static void w_close(void *arg)
{
    ztm_peer_close(((end_t *)arg)->p);
}

static void w_shutdown(void *arg)
{
    ztm_engine_shutdown(engine, 0);
}

typedef struct {
    pair_t *pr;
    ztm_peer_stats_t a, b;
    char peer_of_a[200], peer_of_b[200];
} stats_call_t;

static void w_stats(void *arg)
{
    stats_call_t *s = arg;
    ztm_peer_stats(s->pr->a.p, &s->a);
    ztm_peer_stats(s->pr->b.p, &s->b);
    const ztm_identity_t *ia = ztm_peer_identity(s->pr->a.p), *ib = ztm_peer_identity(s->pr->b.p);
    snprintf(s->peer_of_a, sizeof(s->peer_of_a), "%s/%s/%s", ia ? ia->mesh : "-",
             ia ? ia->name : "-", ia ? ztm_role_name(ia->role) : "-");
    snprintf(s->peer_of_b, sizeof(s->peer_of_b), "%s/%s/%s", ib ? ib->mesh : "-",
             ib ? ib->name : "-", ib ? ztm_role_name(ib->role) : "-");
}

static void *drive(void *arg)
{
    /* The main pair, with a stream opened before the handshake. */
    int early[2];
    tcp_pair(early);
    pair_t *pr = new_pair(&main_pair, "bob", 0, 0, early[1]);
    check_half_close(early[0], "hello before the handshake");
    CHECK(wait_for(both_ready, pr, 5000));
    stats_call_t st = {pr};
    call_on_worker(w_stats, &st);
    CHECK(!strcmp(st.peer_of_a, MESH "/bob/agent"));
    CHECK(!strcmp(st.peer_of_b, MESH "/alice/agent"));
    CHECK(!strcmp(resolve_caller, MESH "/alice"));

    test_big(pr);
    test_backpressure(pr);
    test_concurrent(pr);
    check_half_close(open_tunnel(pr, "echo"), "half-closed, still answered");
    check_refused(pr, "down");   /* the target refuses: 502 */
    check_refused(pr, "secret"); /* RESOLVE refuses: 403 */
    check_refused(pr, "nosuch"); /* unknown: 404 */
    test_reset(pr);
    test_target_reset(pr);
    test_udp(pr);
    CHECK(wait_for(no_streams, pr, 5000));
    call_on_worker(w_stats, &st);
    CHECK(st.a.bytes_out >= BIG && st.a.bytes_in >= BIG);
    CHECK(st.b.bytes_out >= BIG && st.b.bytes_in >= BIG);
    CHECK_EQ(st.a.streams_refused, 4); /* down, secret, nosuch, the UDP flow */
    CHECK_EQ(st.b.streams_refused, 4);
    CHECK_EQ(st.a.streams_total, st.b.streams_total);

    /* Graceful close from the importer: both ends end cleanly. */
    call_on_worker(w_close, &pr->a);
    CHECK(wait_for(both_closed, pr, 5000));
    CHECK(!pr->a.closed_error && !pr->b.closed_error);
    CHECK(!strcmp(pr->a.reason, "closed"));
    CHECK(!strcmp(pr->b.reason, "closed"));

    /* The wrong peer: the importer meant "mallory" and reached bob. */
    pr = new_pair(&wrong_pair, "mallory", 0, 0, -1);
    CHECK(wait_for(a_closed_b_gone, pr, 5000));
    CHECK(pr->a.closed_error);
    CHECK(!strcmp(pr->a.reason, "verify: wrong_peer"));
    CHECK(!pr->b.closed); /* the exporter heard carrier_gone, not closed */

    /* Idle timeouts: a UDP flow's, then the session's. */
    pr = new_pair(&idle_pair, "bob", 400 * ZTM_NS_PER_MS, 200 * ZTM_NS_PER_MS, -1);
    static flow_t f;
    f.pr = pr;
    f.service = "uecho";
    call_on_worker(w_udp_open, &f);
    CHECK_EQ(f.ret, 0);
    udp_roundtrip(&f, 10, 1);
    CHECK(wait_for(flow_ended, &f, 5000));
    CHECK(!strcmp(f.end_reason, "idle"));
    CHECK(wait_for(both_closed, pr, 5000));
    CHECK(!pr->a.closed_error && !pr->b.closed_error);
    CHECK(!strcmp(pr->a.reason, "idle") || !strcmp(pr->b.reason, "idle"));

    call_on_worker(w_shutdown, NULL);
    return NULL;
}

static int svc_start(ztm_worker_t *w, void *arg)
{
    W = w;
    engine = ztm_worker_engine(w);
    return 0;
}

static void svc_message(ztm_worker_t *w, const ztm_msg_t *m, void *arg)
{
    call_t *c = m->ptr;
    c->fn(c->arg);
    sem_post(&c->done);
}

static void on_ready(void *arg, unsigned n)
{
    pthread_create(&driver, NULL, drive, NULL);
}

static const ztm_service_t svc = {.name = "test-peer", .start = svc_start, .message = svc_message};

int main(void)
{
    alarm(120); /* a hang is a failure */
    /* The log goes to a file, checked (and shown) at the end. */
    char log_path[] = "/tmp/ztm-test-peer-log-XXXXXX";
    int log_fd = mkstemp(log_path);
    int saved_stderr = dup(2);
    if (log_fd < 0 || saved_stderr < 0 || dup2(log_fd, 2) < 0) {
        perror("log");
        return 1;
    }
    ztm_log_set_level(ZTM_LOG_DEBUG); /* every log line's formatting runs too */
    make_mesh();
    client_ctx = make_ctx(ZTM_TLS_CLIENT, alice_crt, alice_key);
    server_ctx = make_ctx(ZTM_TLS_SERVER, bob_crt, bob_key);
    pthread_t acc, uecho;
    start_targets(&acc, &uecho);

    ztm_engine_config_t ec = {
        .workers = 1, .buf_count = 64, .buf_size = 4096, .drain_timeout_ns = 5 * ZTM_NS_PER_SEC};
    CHECK_EQ(ztm_engine_run(&ec, &svc, NULL, on_ready), 0);
    pthread_join(driver, NULL);

    shutdown(echo_lfd, SHUT_RDWR);
    pthread_join(acc, NULL);
    for (int i = 0; i < atomic_load(&n_echo_threads); i++)
        pthread_join(echo_threads[i], NULL);
    atomic_store(&stop_udp, 1);
    pthread_join(uecho, NULL);
    close(echo_lfd);
    close(pair_lfd);
    close(udp_fd);
    ztm_tls_ctx_free(client_ctx);
    ztm_tls_ctx_free(server_ctx);
    remove_mesh();

    /* The importer logged each refusal with the exporter's reason. */
    fflush(stderr);
    dup2(saved_stderr, 2);
    close(saved_stderr);
    size_t len = 0;
    char *log = NULL;
    CHECK_EQ(ztm_file_read(log_path, 16 << 20, (void **)&log, &len), 0);
    unlink(log_path);
    close(log_fd);
    if (log) {
        fwrite(log, 1, len, stderr);
        CHECK(strstr(log, "tunnel.refused") &&
              strstr(log, "service=down status=502 error=\"target: "));
        CHECK(strstr(log, "service=secret status=403 error=\"" SECRET_WHY "\""));
        CHECK(strstr(log, "service=nosuch status=404 error=\"unknown service\""));
        free(log);
    }
    return check_done("test_peer");
}
