/* ztm-pingpong: request/response latency over TCP, the latency half of bench/.
 *
 *   ztm-pingpong server --listen HOST:PORT
 *   ztm-pingpong client --connect HOST:PORT [--size 64] [--conns 1]
 *                       [--seconds 10] [--warmup 1] [--new-conn] [--json]
 *
 * The server echoes every byte back, one thread per connection. Each client
 * connection sends SIZE bytes, waits until all SIZE bytes came back, checks
 * them, and repeats; every round trip is timed with CLOCK_MONOTONIC and kept,
 * so the percentiles are exact rather than bucketed. Round trips that start
 * during the warm-up are not recorded. Both sides set TCP_NODELAY: the test
 * measures the path (kernel + whatever sits in the middle), not Nagle.
 *
 * With --new-conn every round trip runs on a connection of its own: connect,
 * send SIZE bytes, read the echo, close; the time covers all of it, so the
 * rate is new connections per second through whatever sits in the middle
 * (each of the --conns client threads keeps one such exchange going).
 *
 * Only libc (and its pthreads). Exit codes: 0 ok, 1 runtime failure (connect,
 * a peer that closes or corrupts data), 2 usage.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PROG          "ztm-pingpong"
#define MAX_SIZE      (16u << 20)
#define MAX_CONNS     4096
#define ECHO_BUF_SIZE (64u << 10)
#define SMALL_MESSAGE (64u << 10) /* see round_trip() */

static void usage(FILE *f)
{
    fprintf(f, "Usage:\n"
               "  " PROG " server --listen HOST:PORT\n"
               "  " PROG " client --connect HOST:PORT [--size 64] [--conns 1] [--seconds 10]\n"
               "                       [--warmup 1] [--new-conn] [--json]\n"
               "\n"
               "server: echo every byte back on each connection (port 0 = ephemeral; the\n"
               "        bound address is printed on stderr as 'listening on HOST:PORT').\n"
               "client: each connection sends SIZE bytes, waits for their echo, repeats for\n"
               "        SECONDS after a WARMUP; prints round trips/s and latency percentiles\n"
               "        in microseconds (one JSON object with --json). --new-conn: a new\n"
               "        connection per round trip (connect, send, echo, close), timed whole.\n");
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

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- addresses ------------------------------------------------------------ */

/* Splits "HOST:PORT" or "[V6]:PORT" (OPT names the option) and resolves it;
 * on failure prints why and returns false. */
static bool resolve(const char *opt, const char *spec, bool passive, struct addrinfo **out)
{
    char host[256];
    *out = NULL;
    const char *port;
    if (spec[0] == '[') {
        const char *end = strchr(spec, ']');
        if (!end || end[1] != ':' || (size_t)(end - spec - 1) >= sizeof(host))
            goto Malformed;
        memcpy(host, spec + 1, (size_t)(end - spec - 1));
        host[end - spec - 1] = '\0';
        port = end + 2;
    } else {
        const char *colon = strrchr(spec, ':');
        if (!colon || (size_t)(colon - spec) >= sizeof(host))
            goto Malformed;
        memcpy(host, spec, (size_t)(colon - spec));
        host[colon - spec] = '\0';
        port = colon + 1;
    }
    char *endp;
    long p = strtol(port, &endp, 10);
    if (*port == '\0' || *endp != '\0' || p < 0 || p > 65535 || host[0] == '\0')
        goto Malformed;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    if (passive)
        hints.ai_flags = AI_PASSIVE;
    int rc = getaddrinfo(host, port, &hints, out);
    if (rc != 0) {
        fprintf(stderr, PROG ": error: cannot resolve %s '%s': %s\n", opt, spec, gai_strerror(rc));
        *out = NULL;
        return false;
    }
    return true;
Malformed:
    usage_error("bad %s '%s': expected HOST:PORT or [IPV6]:PORT", opt, spec);
    return false;
}

static void format_addr(const struct sockaddr *sa, socklen_t len, char *buf, size_t size)
{
    char host[NI_MAXHOST], serv[NI_MAXSERV];
    if (getnameinfo(sa, len, host, sizeof(host), serv, sizeof(serv),
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
        snprintf(buf, size, "?");
        return;
    }
    snprintf(buf, size, sa->sa_family == AF_INET6 ? "[%s]:%s" : "%s:%s", host, serv);
}

static void set_nodelay(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* ---- server --------------------------------------------------------------- */

static void *echo_thread(void *arg)
{
    int fd = (int)(intptr_t)arg;
    char *buf = malloc(ECHO_BUF_SIZE);
    if (!buf)
        goto Exit;
    for (;;) {
        ssize_t n = recv(fd, buf, ECHO_BUF_SIZE, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        for (ssize_t off = 0; off < n;) {
            ssize_t w = send(fd, buf + off, (size_t)(n - off), MSG_NOSIGNAL);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                goto Exit;
            off += w;
        }
    }
Exit:
    free(buf);
    close(fd);
    return NULL;
}

static int run_server(const char *listen_spec)
{
    struct addrinfo *ai;
    if (!resolve("--listen", listen_spec, true, &ai))
        return 2;
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 1024) < 0) {
        fprintf(stderr, PROG ": error: cannot listen on %s: %s\n", listen_spec, strerror(errno));
        freeaddrinfo(ai);
        return 1;
    }
    freeaddrinfo(ai);

    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    char addr[NI_MAXHOST + NI_MAXSERV + 4];
    getsockname(fd, (struct sockaddr *)&ss, &len);
    format_addr((struct sockaddr *)&ss, len, addr, sizeof(addr));
    fprintf(stderr, PROG ": listening on %s\n", addr);

    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256u << 10);
    for (;;) {
        int c = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0) {
            if (errno == EINTR || errno == ECONNABORTED || errno == EMFILE || errno == ENFILE)
                continue;
            fprintf(stderr, PROG ": error: accept: %s\n", strerror(errno));
            return 1;
        }
        set_nodelay(c);
        pthread_t t;
        if (pthread_create(&t, &attr, echo_thread, (void *)(intptr_t)c) != 0)
            close(c);
    }
}

/* ---- client --------------------------------------------------------------- */

/* Holds the client threads until every connection is open and the deadlines
 * are set, so all connections measure the same period. */
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool open, abort;
    uint64_t warm_end, end; /* CLOCK_MONOTONIC ns */
} gate_t;

typedef struct {
    int fd;
    int index;
    size_t size;
    const struct addrinfo *ai; /* --new-conn: where each round trip connects */
    gate_t *gate;
    uint64_t warm_end, end;
    uint64_t *samples; /* round-trip times in ns, grown by doubling */
    size_t n, cap;
    uint64_t last_done;
    char error[160];
} conn_t;

static bool io_all(int fd, char *buf, size_t len, bool writing, const char **what)
{
    for (size_t off = 0; off < len;) {
        ssize_t r = writing ? send(fd, buf + off, len - off, MSG_NOSIGNAL)
                            : recv(fd, buf + off, len - off, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            *what = strerror(errno);
            return false;
        }
        if (r == 0) {
            *what = "peer closed the connection";
            return false;
        }
        off += (size_t)r;
    }
    return true;
}

/* Sends SIZE bytes and reads their echo. Small messages go out in one blocking
 * send and come back in one or a few blocking recvs: the fewest syscalls, so
 * the figure is the path's latency. A large message could deadlock that way
 * (both sides blocked in send once the buffers in between are full), so it
 * interleaves sending and receiving with poll. */
static bool round_trip(int fd, char *out, char *in, size_t size, const char **what)
{
    if (size <= SMALL_MESSAGE)
        return io_all(fd, out, size, true, what) && io_all(fd, in, size, false, what);
    size_t sent = 0, got = 0;
    while (got < size) {
        struct pollfd p = {.fd = fd, .events = (short)(POLLIN | (sent < size ? POLLOUT : 0))};
        if (poll(&p, 1, -1) < 0) {
            if (errno == EINTR)
                continue;
            *what = strerror(errno);
            return false;
        }
        if (sent < size && (p.revents & (POLLOUT | POLLERR | POLLHUP))) {
            ssize_t w = send(fd, out + sent, size - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (w < 0 && errno != EAGAIN && errno != EINTR) {
                *what = strerror(errno);
                return false;
            }
            if (w > 0)
                sent += (size_t)w;
        }
        if (p.revents & (POLLIN | POLLERR | POLLHUP)) {
            ssize_t r = recv(fd, in + got, size - got, MSG_DONTWAIT);
            if (r == 0) {
                *what = "peer closed the connection";
                return false;
            }
            if (r < 0 && errno != EAGAIN && errno != EINTR) {
                *what = strerror(errno);
                return false;
            }
            if (r > 0)
                got += (size_t)r;
        }
    }
    return true;
}

static int open_conn(const struct addrinfo *ai, const char **what);

static void *client_thread(void *arg)
{
    conn_t *c = arg;
    char *out = malloc(c->size), *in = malloc(c->size);
    if (!out || !in) {
        snprintf(c->error, sizeof(c->error), "out of memory");
        goto Exit;
    }
    for (size_t i = 0; i < c->size; i++)
        out[i] = (char)('a' + (i + (size_t)c->index) % 26);

    pthread_mutex_lock(&c->gate->mu);
    while (!c->gate->open)
        pthread_cond_wait(&c->gate->cv, &c->gate->mu);
    bool abort_run = c->gate->abort;
    c->warm_end = c->gate->warm_end;
    c->end = c->gate->end;
    pthread_mutex_unlock(&c->gate->mu);
    if (abort_run)
        goto Exit;

    for (uint64_t seq = 0;; seq++) {
        /* A sequence number in the payload so a stale or reordered echo shows. */
        memcpy(out, &seq, c->size < sizeof(seq) ? c->size : sizeof(seq));
        const char *what;
        uint64_t t0 = now_ns();
        if (c->ai && (c->fd = open_conn(c->ai, &what)) < 0) {
            snprintf(c->error, sizeof(c->error), "connect: %s after %" PRIu64 " connections", what, seq);
            break;
        }
        bool ok = round_trip(c->fd, out, in, c->size, &what);
        if (c->ai) {
            close(c->fd);
            c->fd = -1;
        }
        if (!ok) {
            snprintf(c->error, sizeof(c->error), "%s after %" PRIu64 " round trips", what, seq);
            break;
        }
        uint64_t t1 = now_ns();
        if (memcmp(in, out, c->size) != 0) {
            snprintf(c->error, sizeof(c->error),
                     "echo differs from what was sent (round trip %" PRIu64 ")", seq);
            break;
        }
        if (t0 >= c->warm_end) {
            if (c->n == c->cap) {
                size_t cap = c->cap ? c->cap * 2 : 65536;
                uint64_t *s = realloc(c->samples, cap * sizeof(*s));
                if (!s) {
                    snprintf(c->error, sizeof(c->error), "out of memory for samples");
                    break;
                }
                c->samples = s;
                c->cap = cap;
            }
            c->samples[c->n++] = t1 - t0;
            c->last_done = t1;
        }
        if (t1 >= c->end)
            break;
    }
Exit:
    free(out);
    free(in);
    return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile of sorted samples, in microseconds. */
static double pct_us(const uint64_t *s, size_t n, double p)
{
    size_t rank = (size_t)ceil(p / 100.0 * (double)n);
    if (rank < 1)
        rank = 1;
    return (double)s[rank - 1] / 1000.0;
}

/* A connected socket with TCP_NODELAY, or -1 with WHAT saying why. */
static int open_conn(const struct addrinfo *ai, const char **what)
{
    int last = 0;
    for (const struct addrinfo *a = ai; a; a = a->ai_next) {
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            last = errno;
            continue;
        }
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
            set_nodelay(fd);
            return fd;
        }
        last = errno;
        close(fd);
    }
    *what = strerror(last);
    return -1;
}

static int connect_to(const struct addrinfo *ai, const char *spec)
{
    const char *what;
    int fd = open_conn(ai, &what);
    if (fd < 0)
        fprintf(stderr, PROG ": error: cannot connect to %s: %s\n", spec, what);
    return fd;
}

typedef struct {
    const char *connect;
    size_t size;
    int conns;
    double seconds, warmup;
    bool new_conn;
    bool json;
} client_opts_t;

static int run_client(const client_opts_t *o)
{
    int rc = 1;
    struct addrinfo *ai;
    if (!resolve("--connect", o->connect, false, &ai))
        return 2;

    conn_t *conns = calloc((size_t)o->conns, sizeof(*conns));
    pthread_t *threads = calloc((size_t)o->conns, sizeof(*threads));
    gate_t gate = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
    int opened = 0, started = 0;
    uint64_t *all = NULL;
    if (!conns || !threads) {
        fprintf(stderr, PROG ": error: out of memory\n");
        goto Exit;
    }
    /* --new-conn: each round trip connects by itself; one probe first, so a
     * target that is not there fails here with a clear message. */
    if (o->new_conn) {
        int fd = connect_to(ai, o->connect);
        if (fd < 0)
            goto Exit;
        close(fd);
    }
    for (; opened < o->conns; opened++) {
        conns[opened].fd = o->new_conn ? -1 : connect_to(ai, o->connect);
        conns[opened].ai = o->new_conn ? ai : NULL;
        if (conns[opened].fd < 0 && !o->new_conn)
            goto Exit;
    }

    for (; started < o->conns; started++) {
        conn_t *c = &conns[started];
        c->index = started;
        c->size = o->size;
        c->gate = &gate;
        if (pthread_create(&threads[started], NULL, client_thread, c) != 0) {
            fprintf(stderr, PROG ": error: cannot start thread %d\n", started);
            gate.abort = true;
            break;
        }
    }
    uint64_t warm_end = now_ns() + (uint64_t)(o->warmup * 1e9);
    pthread_mutex_lock(&gate.mu);
    gate.warm_end = warm_end;
    gate.end = warm_end + (uint64_t)(o->seconds * 1e9);
    gate.open = true;
    pthread_cond_broadcast(&gate.cv);
    pthread_mutex_unlock(&gate.mu);
    for (int i = 0; i < started; i++)
        pthread_join(threads[i], NULL);
    if (gate.abort)
        goto Exit;

    size_t total = 0;
    uint64_t last_done = warm_end;
    for (int i = 0; i < o->conns; i++) {
        if (conns[i].error[0]) {
            fprintf(stderr, PROG ": error: connection %d to %s: %s\n", i, o->connect,
                    conns[i].error);
            goto Exit;
        }
        total += conns[i].n;
        if (conns[i].last_done > last_done)
            last_done = conns[i].last_done;
    }
    if (total == 0) {
        fprintf(stderr, PROG ": error: no round trip completed in the measured period\n");
        goto Exit;
    }
    all = malloc(total * sizeof(*all));
    if (!all) {
        fprintf(stderr, PROG ": error: out of memory\n");
        goto Exit;
    }
    size_t k = 0;
    double sum = 0;
    for (int i = 0; i < o->conns; i++)
        for (size_t j = 0; j < conns[i].n; j++) {
            all[k++] = conns[i].samples[j];
            sum += (double)conns[i].samples[j];
        }
    qsort(all, total, sizeof(*all), cmp_u64);

    double elapsed = (double)(last_done - warm_end) / 1e9;
    double rate = (double)total / elapsed;
    double mean = sum / (double)total / 1000.0;
    double p50 = pct_us(all, total, 50), p90 = pct_us(all, total, 90);
    double p99 = pct_us(all, total, 99), p999 = pct_us(all, total, 99.9);
    double min = (double)all[0] / 1000.0, max = (double)all[total - 1] / 1000.0;
    if (o->json) {
        printf("{\"connect\":\"%s\",\"size\":%zu,\"conns\":%d,\"new_conn\":%s,\"seconds\":%g,"
               "\"warmup\":%g,\"elapsed_s\":%.6f,\"round_trips\":%zu,\"rt_per_s\":%.1f,"
               "\"min_us\":%.2f,\"mean_us\":%.2f,\"p50_us\":%.2f,\"p90_us\":%.2f,"
               "\"p99_us\":%.2f,\"p99_9_us\":%.2f,\"max_us\":%.2f}\n",
               o->connect, o->size, o->conns, o->new_conn ? "true" : "false", o->seconds, o->warmup,
               elapsed, total, rate, min, mean, p50, p90, p99, p999, max);
    } else {
        printf("%s: %zu-byte messages, %d %s%s, %.3f s measured (after %g s warm-up)\n",
               o->connect, o->size, o->conns, o->new_conn ? "thread" : "connection",
               o->conns == 1 ? "" : "s", elapsed, o->warmup);
        if (o->new_conn)
            printf("a new connection per round trip (connect, send, echo, close)\n");
        printf("round trips  %zu (%.1f/s)\n", total, rate);
        printf("latency µs   min %.1f  mean %.1f  p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f  "
               "max %.1f\n",
               min, mean, p50, p90, p99, p999, max);
    }
    rc = 0;
Exit:
    for (int i = 0; conns && i < opened; i++) {
        if (conns[i].fd >= 0)
            close(conns[i].fd);
        free(conns[i].samples);
    }
    free(all);
    free(conns);
    free(threads);
    freeaddrinfo(ai);
    return rc;
}

/* ---- command line --------------------------------------------------------- */

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

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *mode = argv[1];
    if (strcmp(mode, "-h") == 0 || strcmp(mode, "--help") == 0) {
        usage(stdout);
        return 0;
    }
    bool server = strcmp(mode, "server") == 0;
    if (!server && strcmp(mode, "client") != 0)
        return usage_error("unknown mode '%s': expected 'server' or 'client'", mode);

    const char *listen_spec = NULL;
    client_opts_t o = {.size = 64, .conns = 1, .seconds = 10, .warmup = 1};
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return 0;
        }
        if (strcmp(a, "--json") == 0 && !server) {
            o.json = true;
            continue;
        }
        if (strcmp(a, "--new-conn") == 0 && !server) {
            o.new_conn = true;
            continue;
        }
        bool known = server ? strcmp(a, "--listen") == 0
                            : (strcmp(a, "--connect") == 0 || strcmp(a, "--size") == 0 ||
                               strcmp(a, "--conns") == 0 || strcmp(a, "--seconds") == 0 ||
                               strcmp(a, "--warmup") == 0);
        if (!known)
            return usage_error("unknown option '%s'", a);
        if (i + 1 >= argc)
            return usage_error("option '%s' needs a value", a);
        const char *v = argv[++i];
        double d;
        if (strcmp(a, "--listen") == 0) {
            listen_spec = v;
        } else if (strcmp(a, "--connect") == 0) {
            o.connect = v;
        } else if (strcmp(a, "--size") == 0) {
            if (!parse_double(v, 1, MAX_SIZE, &d) || d != floor(d))
                return usage_error("bad --size '%s': expected 1..16777216 bytes", v);
            o.size = (size_t)d;
        } else if (strcmp(a, "--conns") == 0) {
            if (!parse_double(v, 1, MAX_CONNS, &d) || d != floor(d))
                return usage_error("bad --conns '%s': expected 1..4096", v);
            o.conns = (int)d;
        } else if (strcmp(a, "--seconds") == 0) {
            if (!parse_double(v, 0.001, 86400, &d))
                return usage_error("bad --seconds '%s': expected a number of seconds > 0", v);
            o.seconds = d;
        } else {
            if (!parse_double(v, 0, 86400, &d))
                return usage_error("bad --warmup '%s': expected a number of seconds >= 0", v);
            o.warmup = d;
        }
    }
    if (server) {
        if (!listen_spec)
            return usage_error("%s needs --listen HOST:PORT", "server");
        return run_server(listen_spec);
    }
    if (!o.connect)
        return usage_error("%s needs --connect HOST:PORT", "client");
    return run_client(&o);
}
