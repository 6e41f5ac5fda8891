/* ztm_h2 against real HTTP/2 clients: a small cleartext h2 server (prior
 * knowledge, plain TCP sockets and poll: only a test driver, the engine
 * glue is elsewhere) serving the test application, and the real nghttp and
 * h2load run against it, with exact bytes checked:
 *
 *   nghttp            GET /bytes/1000                   body == pattern
 *   nghttp -n -m 100  GET /bytes/1000                   exit 0, 100 clean streams
 *   nghttp -m 100     GET /bytes/1000                   100 bodies == pattern
 *   nghttp -d FILE    POST /echo (3 MiB)                body == FILE
 *   curl --http2-prior-knowledge  GET 1 MiB, POST /echo 3 MiB  exact bytes
 *   h2load -n 10000 -c 10 -m 100  GET /bytes/100        0 failed, 10000 2xx
 *   h2load -n 400 -c 4 -m 10 -d FILE(200 KiB)  /echo    0 failed
 *
 * Usage: test_h2_clients            run the clients, exit 0 if all pass
 *        test_h2_clients --serve P  serve on 127.0.0.1:P until killed */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "dataplane/h2/h2.h"
#include "dataplane/runtime/timer.h"
#include "tests/unit/check.h"
#include "tests/unit/dataplane/h2/h2_testapp.h"

extern char **environ;

#define MAX_CONNS 256
#define OUT_CAP   16384

typedef struct {
    int fd;
    ztm_h2_session_t *s;
    tapp_t app;
    uint8_t out[OUT_CAP];
    size_t out_len, out_off;
    bool eof, failed;
} conn_t;

static conn_t *conns[MAX_CONNS];
static int listen_fd;
static uint64_t total_ok, total_closed, total_conns, total_bad;

static void conn_free(int i)
{
    conn_t *c = conns[i];
    total_ok += c->app.n_closed_ok;
    ztm_h2_free(c->s); /* closes what is still open: counted below */
    total_closed += c->app.n_closed;
    close(c->fd);
    free(c);
    conns[i] = NULL;
}

static void accept_all(void)
{
    for (;;) {
        int fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        int slot = -1;
        for (int i = 0; i < MAX_CONNS && slot < 0; i++)
            if (!conns[i])
                slot = i;
        conn_t *c = slot >= 0 ? calloc(1, sizeof(*c)) : NULL;
        if (!c) {
            close(fd);
            continue;
        }
        c->fd = fd;
        ztm_h2_config_t cfg = {.conn_id = ++total_conns};
        if (ztm_h2_new(&c->s, ZTM_H2_SERVER, &tapp_callbacks, &c->app, &cfg) != 0) {
            close(fd);
            free(c);
            continue;
        }
        conns[slot] = c;
    }
}

/* Writes what is pending and flushes more while the socket takes it. */
static void conn_write(conn_t *c)
{
    for (;;) {
        while (c->out_off < c->out_len) {
            ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
            if (n < 0) {
                if (errno != EAGAIN && errno != EINTR)
                    c->failed = true;
                return;
            }
            c->out_off += (size_t)n;
        }
        c->out_off = c->out_len = 0;
        if (!ztm_h2_want_write(c->s))
            return;
        if (ztm_h2_flush(c->s, c->out, OUT_CAP, &c->out_len) < 0) {
            c->failed = true;
            return;
        }
        if (!c->out_len)
            return;
    }
}

static void conn_read(conn_t *c)
{
    static uint8_t in[65536];
    for (int rounds = 0; rounds < 16 && !c->eof && !c->failed; rounds++) {
        ssize_t n = recv(c->fd, in, sizeof(in), 0);
        if (n == 0)
            c->eof = true;
        if (n <= 0) {
            if (n < 0 && errno != EAGAIN && errno != EINTR)
                c->failed = true;
            return;
        }
        int rv = ztm_h2_feed(c->s, in, (size_t)n);
        if (rv < 0) {
            if (rv != ZTM_H2_E_CLOSED)
                total_bad++;
            c->eof = true; /* stop reading; flush the GOAWAY; close */
        }
        conn_write(c);
    }
}

/* One poll round: accept, read, write, tick, close what is done. */
static void serve_once(int timeout_ms)
{
    struct pollfd pfd[MAX_CONNS + 1];
    int idx[MAX_CONNS + 1], n = 0;
    pfd[n] = (struct pollfd){listen_fd, POLLIN, 0};
    idx[n++] = -1;
    for (int i = 0; i < MAX_CONNS; i++) {
        conn_t *c = conns[i];
        if (!c)
            continue;
        short ev = c->eof ? 0 : POLLIN;
        if (c->out_off < c->out_len)
            ev |= POLLOUT;
        pfd[n] = (struct pollfd){c->fd, ev, 0};
        idx[n++] = i;
    }
    if (poll(pfd, (nfds_t)n, timeout_ms) < 0 && errno != EINTR)
        return;
    for (int k = 0; k < n; k++) {
        if (idx[k] < 0) {
            if (pfd[k].revents & POLLIN)
                accept_all();
            continue;
        }
        conn_t *c = conns[idx[k]];
        if (pfd[k].revents & (POLLIN | POLLHUP | POLLERR))
            conn_read(c);
        conn_write(c);
        if (ztm_h2_tick(c->s) < 0)
            c->failed = true;
        bool drained = c->out_off == c->out_len && !ztm_h2_want_write(c->s);
        if (c->failed || (drained && (c->eof || ztm_h2_idle(c->s))))
            conn_free(idx[k]);
    }
}

static int listen_on(int port)
{
    listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(listen_fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(listen_fd, 512) < 0) {
        perror("bind/listen");
        exit(1);
    }
    socklen_t len = sizeof(a);
    getsockname(listen_fd, (struct sockaddr *)&a, &len);
    return ntohs(a.sin_port);
}

/* ---- the clients ---------------------------------------------------------- */
static char tmpdir[] = "/tmp/ztm-h2-clients-XXXXXX";

/* Runs ARGV with stdout to OUT_PATH while serving; returns its exit status
 * (or -1 on a timeout or spawn failure). */
static int run(char *const argv[], const char *out_path)
{
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, out_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    pid_t pid;
    int rv = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rv != 0) {
        fprintf(stderr, "cannot run %s: %s (apt: nghttp2-client)\n", argv[0], strerror(rv));
        return -1;
    }
    uint64_t deadline = ztm_now_ns() + 90 * ZTM_NS_PER_SEC;
    for (;;) {
        int status;
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid)
            return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
        if (ztm_now_ns() > deadline) {
            fprintf(stderr, "%s timed out\n", argv[0]);
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            return -1;
        }
        serve_once(5);
    }
}

static uint8_t *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 1 << 16, n = 0;
    uint8_t *b = malloc(cap);
    size_t got;
    while (b && (got = fread(b + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            uint8_t *p = realloc(b, cap *= 2);
            if (!p) {
                free(b);
                b = NULL;
            }
            b = p;
        }
    }
    fclose(f);
    *len = n;
    return b;
}

static bool body_is_pattern(const uint8_t *b, size_t len, size_t each, size_t copies)
{
    if (len != each * copies)
        return false;
    for (size_t c = 0; c < copies; c++)
        for (size_t i = 0; i < each; i++)
            if (b[c * each + i] != tapp_pattern(i))
                return false;
    return true;
}

static void write_file(const char *path, size_t len, uint32_t seed)
{
    FILE *f = fopen(path, "wb");
    for (size_t i = 0; f && i < len; i++) {
        seed = seed * 1103515245u + 12345u;
        fputc((int)(seed >> 16) & 0xff, f);
    }
    if (f)
        fclose(f);
}

static int h2load_check(const char *out, const char *what, unsigned n)
{
    size_t len;
    uint8_t *b = slurp(out, &len);
    if (!b)
        return 0;
    char *text = realloc(b, len + 1);
    text[len] = 0;
    char want[160], want2[64];
    snprintf(want, sizeof(want),
             "requests: %u total, %u started, %u done, %u succeeded, 0 failed, 0 errored", n, n, n,
             n);
    snprintf(want2, sizeof(want2), "status codes: %u 2xx", n);
    int ok = strstr(text, want) && strstr(text, want2);
    if (!ok)
        fprintf(stderr, "%s: h2load said:\n%s\n", what, text);
    free(text);
    return ok;
}

/* Serves until every connection has closed (or ~2 s). */
static void drain_conns(void)
{
    for (int i = 0; i < 400; i++) {
        bool any = false;
        for (int k = 0; k < MAX_CONNS; k++)
            any |= conns[k] != NULL;
        if (!any)
            return;
        serve_once(5);
    }
}

static void run_clients(int port)
{
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        exit(1);
    }
    char url[128], out[256], upload[256], small[256];
    snprintf(out, sizeof(out), "%s/out", tmpdir);
    snprintf(upload, sizeof(upload), "%s/upload", tmpdir);
    snprintf(small, sizeof(small), "%s/small", tmpdir);
    size_t len;
    uint8_t *b;

    /* one GET, exact bytes */
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/bytes/1000", port);
    CHECK_EQ(run((char *[]){"nghttp", url, NULL}, out), 0);
    b = slurp(out, &len);
    CHECK(b && body_is_pattern(b, len, 1000, 1));
    free(b);

    /* 100 concurrent streams, output discarded (as the issue states it) */
    drain_conns();
    uint64_t ok_before = total_ok;
    CHECK_EQ(run((char *[]){"nghttp", "-n", "-m", "100", url, NULL}, out), 0);
    drain_conns();
    CHECK_EQ(total_ok - ok_before, 100);

    /* 100 concurrent streams, every body checked */
    CHECK_EQ(run((char *[]){"nghttp", "-m", "100", url, NULL}, out), 0);
    b = slurp(out, &len);
    CHECK(b && body_is_pattern(b, len, 1000, 100));
    free(b);

    /* POST /echo of 3 MiB */
    write_file(upload, (3u << 20) + 17, 1);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/echo", port);
    CHECK_EQ(run((char *[]){"nghttp", "-d", upload, url, NULL}, out), 0);
    size_t ulen;
    uint8_t *u = slurp(upload, &ulen);
    b = slurp(out, &len);
    CHECK(u && b && len == ulen && !memcmp(u, b, len));
    free(u);
    free(b);

    /* curl, prior knowledge: GET and an echoed upload, exact bytes */
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/bytes/1048577", port);
    CHECK_EQ(run((char *[]){"curl", "-sS", "--http2-prior-knowledge", url, NULL}, out), 0);
    b = slurp(out, &len);
    CHECK(b && body_is_pattern(b, len, 1048577, 1));
    free(b);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/echo", port);
    char data_arg[300];
    snprintf(data_arg, sizeof(data_arg), "@%s", upload);
    CHECK_EQ(run((char *[]){"curl", "-sS", "--http2-prior-knowledge", "-H",
                            "Expect:", "--data-binary", data_arg, url, NULL},
                 out),
             0);
    u = slurp(upload, &ulen);
    b = slurp(out, &len);
    CHECK(u && b && len == ulen && !memcmp(u, b, len));
    free(u);
    free(b);

    /* h2load: 10 clients x 100 streams */
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/bytes/100", port);
    CHECK_EQ(run((char *[]){"h2load", "-n", "10000", "-c", "10", "-m", "100", url, NULL}, out), 0);
    CHECK(h2load_check(out, "GET /bytes/100", 10000));

    /* h2load uploads through the echo */
    write_file(small, 200 << 10, 2);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/echo", port);
    CHECK_EQ(
        run((char *[]){"h2load", "-n", "400", "-c", "4", "-m", "10", "-d", small, url, NULL}, out),
        0);
    CHECK(h2load_check(out, "POST /echo", 400));

    /* everything closes; no protocol error or flood was seen */
    drain_conns();
    for (int k = 0; k < MAX_CONNS; k++)
        CHECK(conns[k] == NULL);
    CHECK_EQ(total_bad, 0);
    unlink(out);
    unlink(upload);
    unlink(small);
    rmdir(tmpdir);
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    if (argc == 3 && !strcmp(argv[1], "--serve")) {
        int port = listen_on(atoi(argv[2]));
        printf("listening on 127.0.0.1:%d\n", port);
        fflush(stdout);
        for (;;)
            serve_once(1000);
    }
    run_clients(listen_on(0));
    printf("connections=%llu streams_ok=%llu\n", (unsigned long long)total_conns,
           (unsigned long long)total_ok);
    return check_done("h2.clients");
}
