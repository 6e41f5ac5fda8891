/* ztm-tlsprobe: drives dataplane/tls over real TCP sockets with a plain
 * poll loop (a test driver: the io_uring engine integration comes later).
 * It runs a TLS 1.3 server and/or client with mutual authentication, moves
 * N bytes each way, hashes both directions with SHA-256, checks every
 * received byte against the peer's deterministic stream, and prints one
 * result line per side saying whether kTLS carried TX and RX.
 *
 *   ztm-tlsprobe pair   --certs DIR [options]       both sides, two processes
 *   ztm-tlsprobe server --certs DIR --listen HOST:PORT [--port-file F] [--count N] [options]
 *   ztm-tlsprobe client --certs DIR --connect HOST:PORT [options]
 *   ztm-tlsprobe gen server|client BYTES    write that side's stream to stdout
 *   ztm-tlsprobe sha256                     SHA-256 of stdin, in hex (fast in the VM)
 *
 * Options (in pair mode, --server-OPT / --client-OPT apply to one side):
 *   --ktls off|auto|on      record layer after the handshake (default auto)
 *   --bytes N               bytes to send (K/M suffixes; default 1M)
 *   --expect N              bytes to receive (default: --bytes)
 *   --cert NAME             use DIR/NAME.pem and DIR/NAME.key (default server/client)
 *   --echo                  send back what is received instead of a stream
 *   --peer-echo             the peer echoes: expect our own stream back
 *   --close-after-recv      send close_notify only once all expected bytes arrived
 *   --key-update-at N       user space: send a KeyUpdate after N bytes sent
 *   --record-limit N        AES-GCM records per key before closing (kTLS)
 *   --expect-close R        the ending that counts as success (default close_notify;
 *                           others: peer_closed_early rekey_needed record_limit
 *                           verify peer_alert ktls_unavailable truncated any)
 *   --noaes                 (client, pair mode) hide AES-NI from BoringSSL so that
 *                           it prefers ChaCha20-Poly1305
 *   --timeout SECONDS       give up after this long (default 60)
 *
 * Exit status: 0 when every side ended as expected (and, in pair mode, each
 * side's sent SHA-256 equals the other's received one), 1 otherwise, 2 on
 * usage errors. */
#include "dataplane/runtime/log.h"
#include "dataplane/tls/ktls.h"
#include "dataplane/tls/tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/sha.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SEED_SERVER 0x5e5e5e5e12345678ull
#define SEED_CLIENT 0xc1c1c1c187654321ull
#define IO_CHUNK    65536

typedef struct {
    bool server;
    const char *certs;
    const char *cert;
    ztm_ktls_mode_t ktls;
    uint64_t bytes;
    uint64_t expect;
    bool expect_set;
    bool echo;
    bool peer_echo;
    bool close_after_recv;
    uint64_t key_update_at;
    uint64_t record_limit;
    const char *expect_close;
    bool noaes;
    int timeout_s;
} opts_t;

typedef struct {
    const opts_t *o;
    int fd;
    ztm_tls_conn_t *tls;
    bool hs_done, settled;
    uint64_t sent, recvd;
    uint64_t gen_tx, gen_rx;
    SHA256_CTX sha_tx, sha_rx;
    bool recv_exact;
    uint8_t tx[IO_CHUNK]; /* data generated (or to echo) not yet sent */
    size_t tx_len, tx_off;
    uint64_t generated;
    bool close_sent, peer_closed, eof, send_dead, key_updated;
    const char *ending;
    int err;
    long ms, linger_ms; /* time to the end; of it, spent closing after a failure */
} ep_t;

static uint64_t parse_size(const char *s)
{
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end == 'K' || *end == 'k')
        v <<= 10, end++;
    else if (*end == 'M' || *end == 'm')
        v <<= 20, end++;
    else if (*end == 'G' || *end == 'g')
        v <<= 30, end++;
    if (*end || end == s) {
        fprintf(stderr, "ztm-tlsprobe: bad size '%s' (a number, optionally K/M/G)\n", s);
        exit(2);
    }
    return v;
}

/* The byte stream a side sends: byte i depends on (seed, i) only, so any
 * chunking on either side yields the same bytes. */
static void gen(uint64_t seed, uint64_t pos, uint8_t *p, size_t n)
{
    while (n > 0) {
        uint64_t x = seed + (pos >> 3) * 0x9E3779B97F4A7C15ull; /* splitmix64 */
        x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
        x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
        x ^= x >> 31;
        size_t skip = pos & 7, k = 8 - skip < n ? 8 - skip : n;
        memcpy(p, (uint8_t *)&x + skip, k);
        p += k;
        pos += k;
        n -= k;
    }
}

static void hex(const uint8_t *d, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02x", d[i]);
}

/* ---- one endpoint ---------------------------------------------------------- */

static const char *ending_of(int err)
{
    switch (err) {
    case ZTM_TLS_E_VERIFY:
        return "verify";
    case ZTM_TLS_E_PEER_ALERT:
        return "peer_alert";
    case ZTM_TLS_E_KTLS_UNAVAILABLE:
        return "ktls_unavailable";
    case ZTM_TLS_E_REKEY_NEEDED:
        return "rekey_needed";
    case ZTM_TLS_E_RECORD_LIMIT:
        return "record_limit";
    case ZTM_TLS_E_TRUNCATED:
        return "truncated";
    case ZTM_TLS_E_ALPN:
        return "alpn";
    case -ETIMEDOUT:
        return "timeout";
    }
    return "error";
}

/* Sends what the TLS layer has sealed. */
static void flush_out(ep_t *e, bool *want_write)
{
    const uint8_t *d;
    size_t n;
    while ((n = ztm_tls_out_pending(e->tls, &d)) > 0) {
        if (e->send_dead) {
            ztm_tls_out_consume(e->tls, n);
            continue;
        }
        ssize_t w = send(e->fd, d, n, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w > 0) {
            ztm_tls_out_consume(e->tls, (size_t)w);
        } else if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
            *want_write = true;
            return;
        } else {
            e->send_dead = true; /* the peer went away; keep reading what it sent */
        }
    }
}

/* Receives ciphertext into the TLS layer's buffer (zero copy), within the
 * record-boundary limit while a kTLS switch is pending. */
static int recv_cipher(ep_t *e)
{
    while (!e->eof) {
        size_t room;
        uint8_t *p = ztm_tls_in_space(e->tls, &room);
        if (room == 0) {
            ztm_tls_in_commit(e->tls, 0);
            return 0;
        }
        ssize_t n = recv(e->fd, p, room, MSG_DONTWAIT);
        if (n > 0) {
            ztm_tls_in_commit(e->tls, (size_t)n);
            continue;
        }
        ztm_tls_in_commit(e->tls, 0);
        if (n == 0) {
            e->eof = true;
            ztm_tls_feed_eof(e->tls);
            return 0;
        }
        if (errno == EAGAIN || errno == EINTR)
            return 0;
        if (errno == ECONNRESET) {
            e->eof = true;
            ztm_tls_feed_eof(e->tls);
            return 0;
        }
        return -errno;
    }
    return 0;
}

static size_t tx_room(const ep_t *e)
{
    return sizeof(e->tx) - e->tx_len;
}

/* Plaintext arrived. */
static void on_plain(ep_t *e, const uint8_t *p, size_t n)
{
    SHA256_Update(&e->sha_rx, p, n);
    if (e->o->echo) {
        if (e->tx_off > 0) {
            memmove(e->tx, e->tx + e->tx_off, e->tx_len - e->tx_off);
            e->tx_len -= e->tx_off;
            e->tx_off = 0;
        }
        memcpy(e->tx + e->tx_len, p, n); /* callers read at most tx_room() */
        e->tx_len += n;
    } else if (e->recv_exact) {
        uint8_t want[IO_CHUNK];
        for (size_t off = 0; off < n;) {
            size_t k = n - off < sizeof(want) ? n - off : sizeof(want);
            gen(e->gen_rx, e->recvd + off, want, k);
            if (memcmp(want, p + off, k) != 0)
                e->recv_exact = false;
            off += k;
        }
    }
    e->recvd += n;
}

static size_t read_cap(const ep_t *e)
{
    return e->o->echo ? tx_room(e) : IO_CHUNK;
}

/* Makes sure tx holds the next piece to send. */
static void refill(ep_t *e)
{
    if (e->o->echo || e->tx_off < e->tx_len || e->generated >= e->o->bytes)
        return;
    size_t k = e->o->bytes - e->generated < IO_CHUNK ? e->o->bytes - e->generated : IO_CHUNK;
    gen(e->gen_tx, e->generated, e->tx, k);
    e->tx_off = 0;
    e->tx_len = k;
    e->generated += k;
}

static bool all_sent(const ep_t *e)
{
    if (e->o->close_after_recv && e->recvd < e->o->expect)
        return false;
    if (e->o->echo)
        return (e->peer_closed || e->recvd >= e->o->expect) && e->tx_off == e->tx_len;
    return e->sent >= e->o->bytes;
}

static void sent_bytes(ep_t *e, size_t n)
{
    SHA256_Update(&e->sha_tx, e->tx + e->tx_off, n);
    e->tx_off += n;
    e->sent += n;
    if (e->tx_off == e->tx_len)
        e->tx_off = e->tx_len = 0;
}

/* The peer ended before sending all we expected: stop sending. */
static bool cut_short(const ep_t *e)
{
    return e->peer_closed && e->recvd < e->o->expect;
}

static int user_read(ep_t *e)
{
    int r = recv_cipher(e);
    if (r < 0)
        return r;
    uint8_t buf[IO_CHUNK];
    while (!e->peer_closed && read_cap(e) > 0) {
        ssize_t n = ztm_tls_read(e->tls, buf, read_cap(e));
        if (n > 0) {
            on_plain(e, buf, (size_t)n);
        } else if (n == 0) {
            e->peer_closed = true;
        } else if (n == -EAGAIN || n == -ENOBUFS) {
            break;
        } else {
            return (int)n;
        }
    }
    return 0;
}

static int step_user(ep_t *e, bool *want_write)
{
    int r = user_read(e);
    if (r < 0)
        return r;
    while (!e->close_sent && !e->send_dead && !cut_short(e)) {
        refill(e);
        if (e->tx_off == e->tx_len)
            break;
        if (e->o->key_update_at && !e->key_updated && e->sent >= e->o->key_update_at) {
            e->key_updated = true;
            r = ztm_tls_key_update(e->tls, false);
            if (r < 0)
                return r;
        }
        size_t want = e->tx_len - e->tx_off;
        if (e->o->key_update_at && !e->key_updated && e->o->key_update_at - e->sent < want)
            want = e->o->key_update_at - e->sent;
        ssize_t w = ztm_tls_write(e->tls, e->tx + e->tx_off, want);
        if (w > 0) {
            sent_bytes(e, (size_t)w);
            continue;
        }
        if (w != -ENOBUFS)
            return (int)w;
        flush_out(e, want_write);
        if (*want_write)
            break;
    }
    if ((all_sent(e) || cut_short(e)) && !e->close_sent) {
        r = ztm_tls_shutdown(e->tls);
        if (r == 0)
            e->close_sent = true;
        else if (r != -ENOBUFS)
            return r;
    }
    flush_out(e, want_write);
    return 0;
}

static int step_kernel(ep_t *e, bool *want_write)
{
    uint8_t buf[IO_CHUNK];
    while (!e->peer_closed && read_cap(e) > 0) {
        ssize_t n = ztm_ktls_recv(e->tls, e->fd, buf, read_cap(e));
        if (n > 0)
            on_plain(e, buf, (size_t)n);
        else if (n == 0)
            e->peer_closed = true;
        else if (n == -EAGAIN)
            break;
        else
            return (int)n;
    }
    while (!e->close_sent && !e->send_dead && !cut_short(e)) {
        refill(e);
        if (e->tx_off == e->tx_len)
            break;
        ssize_t w =
            send(e->fd, e->tx + e->tx_off, e->tx_len - e->tx_off, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN || errno == EINTR) {
                *want_write = true;
                break;
            }
            e->send_dead = true;
            break;
        }
        sent_bytes(e, (size_t)w);
        int r = ztm_ktls_note_sent(e->tls, e->fd, (size_t)w);
        if (r < 0)
            return r;
    }
    if ((all_sent(e) || cut_short(e)) && !e->close_sent && !e->send_dead) {
        int r = ztm_ktls_send_close_notify(e->tls, e->fd);
        if (r == 0)
            e->close_sent = true;
        else if (r == -EAGAIN)
            *want_write = true;
        else
            e->send_dead = true;
    }
    return 0;
}

/* Runs as far as possible without blocking. Returns 0 or an error. */
static int step(ep_t *e, bool *want_write)
{
    if (!e->hs_done) {
        int r = recv_cipher(e);
        if (r < 0)
            return r;
        r = ztm_tls_handshake(e->tls);
        flush_out(e, want_write);
        if (r == -EAGAIN || r == -ENOBUFS)
            return 0;
        if (r < 0)
            return r;
        e->hs_done = true;
    }
    if (!e->settled) {
        flush_out(e, want_write);
        int r = ztm_ktls_enable(e->tls, e->fd);
        if (r == -EAGAIN) {
            /* Not at a clean point: open what already came, in user space;
             * send nothing new until the record layer is settled. */
            return *want_write ? 0 : user_read(e);
        }
        if (r < 0)
            return r;
        e->settled = true;
    }
    return ztm_ktls_state(e->tls) ? step_kernel(e, want_write) : step_user(e, want_write);
}

static bool finished(ep_t *e)
{
    const uint8_t *d;
    if (e->peer_closed && e->send_dead && !all_sent(e)) {
        e->ending = "peer_closed_early"; /* and gone: we could not finish sending */
        return true;
    }
    if (cut_short(e)) {
        e->ending = "peer_closed_early";
        return e->close_sent || e->send_dead;
    }
    if (e->close_sent && e->peer_closed && ztm_tls_out_pending(e->tls, &d) == 0) {
        e->ending = "close_notify";
        return true;
    }
    return false;
}

static long ms_since(const struct timespec *t0)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (now.tv_sec - t0->tv_sec) * 1000L + (now.tv_nsec - t0->tv_nsec) / 1000000L;
}

/* After a failure: get the last word out (the pending alert, or
 * close_notify under kTLS after a rekey or the record limit), then wait
 * until the peer's TCP has acknowledged everything we sent. Closing with
 * unread data in the receive queue makes the kernel reset the connection
 * and drop whatever is still queued for sending, close_notify included;
 * and the peer's FIN may never come, stuck behind data we no longer read. */
static void close_well(ep_t *e, int err)
{
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    bool ktls = ztm_ktls_state(e->tls) != 0;
    bool notify = ktls && (err == ZTM_TLS_E_REKEY_NEEDED || err == ZTM_TLS_E_RECORD_LIMIT);
    while (ms_since(&t0) < 5000 && !e->send_dead) {
        bool want_write = false;
        if (notify && !e->close_sent) {
            int r = ztm_ktls_send_close_notify(e->tls, e->fd);
            if (r == 0)
                e->close_sent = true;
            else if (r == -EAGAIN)
                want_write = true;
            else
                break;
        } else if (!ktls) {
            flush_out(e, &want_write);
        }
        if (!want_write)
            break;
        struct pollfd p = {e->fd, POLLOUT, 0};
        poll(&p, 1, 100);
    }
    shutdown(e->fd, SHUT_WR);
    int unacked;
    while (ms_since(&t0) < 5000 && ioctl(e->fd, SIOCOUTQ, &unacked) == 0 && unacked > 0) {
        struct pollfd p = {e->fd, POLLRDHUP, 0};
        if (poll(&p, 1, 20) > 0 && (p.revents & (POLLHUP | POLLERR)))
            break;
    }
    e->linger_ms = ms_since(&t0);
}

static int run_endpoint(ep_t *e)
{
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        bool want_write = false;
        int r = step(e, &want_write);
        if (r < 0) {
            e->err = r;
            e->ending = ending_of(r);
            close_well(e, r);
            e->ms = ms_since(&t0);
            return r;
        }
        if (finished(e)) {
            e->ms = ms_since(&t0);
            return 0;
        }
        long left_ms = e->o->timeout_s * 1000L - ms_since(&t0);
        if (left_ms <= 0) {
            e->err = -ETIMEDOUT;
            e->ending = "timeout";
            return -ETIMEDOUT;
        }
        if (e->eof && !e->hs_done)
            continue; /* the handshake call reports the truncation */
        struct pollfd p = {e->fd, (short)((e->eof ? 0 : POLLIN) | (want_write ? POLLOUT : 0)), 0};
        int pr = poll(&p, 1, (int)(left_ms < 1000 ? left_ms : 1000));
        if (pr < 0 && errno != EINTR)
            return -errno;
    }
}

/* Prints the side's result line; returns true if it ended as expected. */
static bool report(ep_t *e, char *sent_hex, char *recv_hex)
{
    uint8_t d[32];
    SHA256_Final(d, &e->sha_tx);
    hex(d, 32, sent_hex);
    SHA256_Final(d, &e->sha_rx);
    hex(d, 32, recv_hex);
    unsigned k = e->tls ? ztm_ktls_state(e->tls) : 0;
    const char *ending = e->ending ? e->ending : "error";
    const char *want = e->o->expect_close;
    bool ok = strcmp(want, "any") == 0 || strcmp(want, ending) == 0;
    if (ok && strcmp(ending, "close_notify") == 0)
        ok = e->sent == (e->o->echo ? e->recvd : e->o->bytes) && e->recvd == e->o->expect &&
             (e->o->echo || e->recv_exact);
    const char *reason = e->tls ? ztm_tls_conn_verify_reason(e->tls) : NULL;
    printf("tlsprobe side=%s cipher=%s ktls_mode=%s ktls_tx=%d ktls_rx=%d sent=%llu recv=%llu "
           "sent_sha256=%s recv_sha256=%s recv_exact=%d close=%s verify_reason=%s alert=%d "
           "error=\"%s\" ms=%ld linger_ms=%ld result=%s\n",
           e->o->server ? "server" : "client", e->tls ? ztm_tls_conn_cipher(e->tls) : "",
           ztm_ktls_mode_name(e->o->ktls), !!(k & ZTM_KTLS_TX), !!(k & ZTM_KTLS_RX),
           (unsigned long long)e->sent, (unsigned long long)e->recvd, sent_hex, recv_hex,
           e->recv_exact && !e->o->echo, ending, reason ? reason : "-",
           e->tls ? ztm_tls_conn_alert(e->tls) : -1, e->err ? ztm_tls_strerror(e->err) : "-", e->ms,
           e->linger_ms, ok ? "ok" : "FAIL");
    fflush(stdout);
    return ok;
}

static ztm_tls_ctx_t *make_ctx(const opts_t *o)
{
    char cert[512], key[512], ca[512];
    const char *name = o->cert ? o->cert : (o->server ? "server" : "client");
    snprintf(cert, sizeof(cert), "%s/%s.pem", o->certs, name);
    snprintf(key, sizeof(key), "%s/%s.key", o->certs, name);
    snprintf(ca, sizeof(ca), "%s/ca.pem", o->certs);
    ztm_tls_config_t cfg = {
        .role = o->server ? ZTM_TLS_SERVER : ZTM_TLS_CLIENT,
        .cert_file = cert,
        .key_file = key,
        .ca_file = ca,
        .ktls = o->ktls,
        .aes_gcm_record_limit = o->record_limit,
        .handshake_timeout_ms = (uint32_t)o->timeout_s * 1000u,
    };
    ztm_tls_ctx_t *ctx;
    int r = ztm_tls_ctx_new(&ctx, &cfg);
    if (r != 0) {
        fprintf(stderr, "ztm-tlsprobe: TLS context: %s\n", ztm_tls_strerror(r));
        exit(1);
    }
    return ctx;
}

/* One connection on FD; returns true if it ended as expected. */
static bool serve_fd(const opts_t *o, ztm_tls_ctx_t *ctx, int fd, char *sent_hex, char *recv_hex)
{
    static ep_t e;
    memset(&e, 0, sizeof(e));
    e.o = o;
    e.fd = fd;
    e.recv_exact = true;
    e.gen_tx = o->server ? SEED_SERVER : SEED_CLIENT;
    e.gen_rx = (o->server != o->peer_echo) ? SEED_CLIENT : SEED_SERVER;
    SHA256_Init(&e.sha_tx);
    SHA256_Init(&e.sha_rx);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    int r = ztm_tls_conn_new(&e.tls, ctx, o->server ? NULL : "server.ztm.test");
    if (r != 0) {
        fprintf(stderr, "ztm-tlsprobe: connection: %s\n", ztm_tls_strerror(r));
        return false;
    }
    run_endpoint(&e);
    bool ok = report(&e, sent_hex, recv_hex);
    ztm_tls_conn_free(e.tls);
    return ok;
}

/* ---- command line ----------------------------------------------------------- */

typedef struct {
    const char *listen, *connect, *port_file;
    int fd, count;
    opts_t side;
} cmd_t;

static void usage(void)
{
    fprintf(stderr, "usage: ztm-tlsprobe pair|server|client --certs DIR [options] (see the "
                    "comment at the top of tlsprobe.c)\n");
    exit(2);
}

/* Parses ARGV for SIDE ("server"/"client"): plain options apply to it, and
 * --server-X / --client-X apply to the named side only. */
static void parse(int argc, char **argv, const char *side, cmd_t *c)
{
    opts_t *o = &c->side;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0)
            usage();
        a += 2;
        bool mine = true;
        if (strncmp(a, "server-", 7) == 0 || strncmp(a, "client-", 7) == 0) {
            mine = strncmp(a, side, 6) == 0;
            a += 7;
        }
        const char *v = NULL;
        bool flag = strcmp(a, "echo") == 0 || strcmp(a, "noaes") == 0 ||
                    strcmp(a, "peer-echo") == 0 || strcmp(a, "close-after-recv") == 0;
        if (!flag) {
            if (i + 1 >= argc)
                usage();
            v = argv[++i];
        }
        if (!mine)
            continue;
        if (strcmp(a, "certs") == 0)
            o->certs = v;
        else if (strcmp(a, "cert") == 0)
            o->cert = v;
        else if (strcmp(a, "ktls") == 0) {
            if (!ztm_ktls_parse_mode(v, &o->ktls)) {
                fprintf(stderr, "ztm-tlsprobe: --ktls '%s': use off, auto or on\n", v);
                exit(2);
            }
        } else if (strcmp(a, "bytes") == 0)
            o->bytes = parse_size(v);
        else if (strcmp(a, "expect") == 0)
            o->expect = parse_size(v), o->expect_set = true;
        else if (strcmp(a, "echo") == 0)
            o->echo = true;
        else if (strcmp(a, "close-after-recv") == 0)
            o->close_after_recv = true;
        else if (strcmp(a, "peer-echo") == 0)
            o->peer_echo = true;
        else if (strcmp(a, "noaes") == 0)
            o->noaes = true;
        else if (strcmp(a, "key-update-at") == 0)
            o->key_update_at = parse_size(v);
        else if (strcmp(a, "record-limit") == 0)
            o->record_limit = parse_size(v);
        else if (strcmp(a, "expect-close") == 0)
            o->expect_close = v;
        else if (strcmp(a, "timeout") == 0)
            o->timeout_s = atoi(v);
        else if (strcmp(a, "listen") == 0)
            c->listen = v;
        else if (strcmp(a, "connect") == 0)
            c->connect = v;
        else if (strcmp(a, "port-file") == 0)
            c->port_file = v;
        else if (strcmp(a, "count") == 0)
            c->count = atoi(v);
        else if (strcmp(a, "fd") == 0)
            c->fd = atoi(v);
        else {
            fprintf(stderr, "ztm-tlsprobe: unknown option --%s\n", a);
            exit(2);
        }
    }
    if (!o->certs) {
        fprintf(stderr, "ztm-tlsprobe: --certs DIR is required\n");
        exit(2);
    }
    if (!o->expect_set)
        o->expect = o->bytes;
    if (o->timeout_s <= 0)
        o->timeout_s = 60;
}

static void defaults(cmd_t *c, bool server)
{
    memset(c, 0, sizeof(*c));
    c->fd = -1;
    c->count = 1;
    c->side.server = server;
    c->side.ktls = ZTM_KTLS_AUTO;
    c->side.bytes = 1u << 20;
    c->side.expect_close = "close_notify";
}

static int split_addr(const char *s, struct sockaddr_in *a)
{
    char host[64];
    const char *colon = strrchr(s, ':');
    if (!colon || (size_t)(colon - s) >= sizeof(host))
        return -1;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = 0;
    memset(a, 0, sizeof(*a));
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)atoi(colon + 1));
    return inet_pton(AF_INET, strcmp(host, "localhost") == 0 ? "127.0.0.1" : host, &a->sin_addr) ==
                   1
               ? 0
               : -1;
}

static int listen_on(const char *addr, uint16_t *port)
{
    struct sockaddr_in a;
    if (split_addr(addr, &a) != 0) {
        fprintf(stderr, "ztm-tlsprobe: bad address '%s' (want IPv4:PORT)\n", addr);
        exit(2);
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(fd, 16) != 0) {
        fprintf(stderr, "ztm-tlsprobe: listen %s: %s\n", addr, strerror(errno));
        exit(1);
    }
    socklen_t len = sizeof(a);
    getsockname(fd, (struct sockaddr *)&a, &len);
    *port = ntohs(a.sin_port);
    return fd;
}

static int connect_to(const char *addr)
{
    struct sockaddr_in a;
    if (split_addr(addr, &a) != 0) {
        fprintf(stderr, "ztm-tlsprobe: bad address '%s' (want IPv4:PORT)\n", addr);
        exit(2);
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        fprintf(stderr, "ztm-tlsprobe: connect %s: %s\n", addr, strerror(errno));
        exit(1);
    }
    return fd;
}

static void nonblock(int fd)
{
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

static int cmd_server(int argc, char **argv)
{
    cmd_t c;
    defaults(&c, true);
    parse(argc, argv, "server", &c);
    if (!c.listen)
        usage();
    uint16_t port;
    int lfd = listen_on(c.listen, &port);
    if (c.port_file) {
        char tmp[512];
        snprintf(tmp, sizeof(tmp), "%s.tmp", c.port_file);
        FILE *f = fopen(tmp, "w");
        if (!f || fprintf(f, "%u\n", port) < 0 || fclose(f) != 0 || rename(tmp, c.port_file)) {
            fprintf(stderr, "ztm-tlsprobe: --port-file %s: %s\n", c.port_file, strerror(errno));
            return 1;
        }
    }
    ztm_tls_ctx_t *ctx = make_ctx(&c.side);
    bool all_ok = true;
    for (int i = 0; i < c.count; i++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0) {
            fprintf(stderr, "ztm-tlsprobe: accept: %s\n", strerror(errno));
            return 1;
        }
        char s[65], r[65];
        all_ok &= serve_fd(&c.side, ctx, fd, s, r);
        close(fd);
    }
    ztm_tls_ctx_free(ctx);
    close(lfd);
    return all_ok ? 0 : 1;
}

static int cmd_client(int argc, char **argv, const char *side)
{
    cmd_t c;
    defaults(&c, false);
    parse(argc, argv, side, &c);
    int fd = c.fd >= 0 ? c.fd : c.connect ? connect_to(c.connect) : -1;
    if (fd < 0)
        usage();
    nonblock(fd);
    ztm_tls_ctx_t *ctx = make_ctx(&c.side);
    char s[65], r[65];
    bool ok = serve_fd(&c.side, ctx, fd, s, r);
    close(fd);
    ztm_tls_ctx_free(ctx);
    return ok ? 0 : 1;
}

/* The value of KEY= in a result line, copied into OUT. */
static bool field(const char *line, const char *key, char *out, size_t cap)
{
    const char *p = strstr(line, key);
    if (!p)
        return false;
    p += strlen(key);
    size_t n = strcspn(p, " \n");
    if (n >= cap)
        return false;
    memcpy(out, p, n);
    out[n] = 0;
    return true;
}

static int cmd_pair(int argc, char **argv)
{
    cmd_t sc, cc;
    defaults(&sc, true);
    defaults(&cc, false);
    parse(argc, argv, "server", &sc);
    parse(argc, argv, "client", &cc);
    uint16_t port;
    int lfd = listen_on("127.0.0.1:0", &port);
    char addr[32];
    snprintf(addr, sizeof(addr), "127.0.0.1:%u", port);
    int cfd = connect_to(addr);
    int afd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    close(lfd);
    int out[2];
    if (afd < 0 || pipe(out) != 0)
        return 1;

    /* The client is a process of its own (exec'd afresh, so an environment
     * such as OPENSSL_ia32cap applies to its BoringSSL only). */
    pid_t pid = fork();
    if (pid == 0) {
        dup2(out[1], STDOUT_FILENO);
        close(out[0]);
        close(out[1]);
        close(afd);
        int fd = dup(cfd); /* without O_CLOEXEC */
        if (cc.side.noaes) /* BoringSSL: no AES-NI, no PCLMUL -> ChaCha20 first */
            setenv("OPENSSL_ia32cap", "~0x200000200000000", 1);
        char fdarg[16];
        snprintf(fdarg, sizeof(fdarg), "%d", fd);
        char **args = calloc((size_t)argc + 5, sizeof(char *));
        args[0] = "ztm-tlsprobe";
        args[1] = "pair-client";
        args[2] = "--fd";
        args[3] = fdarg;
        memcpy(args + 4, argv, (size_t)argc * sizeof(char *));
        execv("/proc/self/exe", args);
        _exit(127);
    }
    close(out[1]);
    close(cfd);
    ztm_tls_ctx_t *ctx = make_ctx(&sc.side);
    char s_sent[65], s_recv[65];
    bool ok = serve_fd(&sc.side, ctx, afd, s_sent, s_recv);
    close(afd);
    ztm_tls_ctx_free(ctx);

    char child[4096];
    size_t n = 0;
    ssize_t k;
    while (n < sizeof(child) - 1 && (k = read(out[0], child + n, sizeof(child) - 1 - n)) > 0)
        n += (size_t)k;
    child[n] = 0;
    close(out[0]);
    int status;
    waitpid(pid, &status, 0);
    fputs(child, stdout);
    ok &= WIFEXITED(status) && WEXITSTATUS(status) == 0;

    char c_sent[65], c_recv[65];
    bool full = strstr(child, "close=close_notify") && sc.side.expect_close &&
                strcmp(sc.side.expect_close, "close_notify") == 0;
    if (!field(child, "sent_sha256=", c_sent, sizeof(c_sent)) ||
        !field(child, "recv_sha256=", c_recv, sizeof(c_recv))) {
        ok = false;
    } else if (full && (strcmp(s_sent, c_recv) != 0 || strcmp(c_sent, s_recv) != 0)) {
        printf("tlsprobe pair: SHA-256 mismatch between the sides\n");
        ok = false;
    }
    printf("RESULT %s\n", ok ? "ok" : "FAIL");
    return ok ? 0 : 1;
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    const char *lvl = getenv("ZTM_LOG_LEVEL");
    ztm_log_level_t level;
    if (lvl && ztm_log_parse_level(lvl, &level))
        ztm_log_set_level(level);
    if (argc < 2)
        usage();
    if (strcmp(argv[1], "pair") == 0)
        return cmd_pair(argc - 2, argv + 2);
    if (strcmp(argv[1], "server") == 0)
        return cmd_server(argc - 2, argv + 2);
    if (strcmp(argv[1], "client") == 0)
        return cmd_client(argc - 2, argv + 2, "client");
    if (strcmp(argv[1], "gen") == 0 && argc == 4) {
        uint64_t seed = strcmp(argv[2], "server") == 0 ? SEED_SERVER : SEED_CLIENT;
        uint64_t total = parse_size(argv[3]);
        static uint8_t buf[IO_CHUNK];
        for (uint64_t pos = 0; pos < total;) {
            size_t k = total - pos < sizeof(buf) ? (size_t)(total - pos) : sizeof(buf);
            gen(seed, pos, buf, k);
            if (fwrite(buf, 1, k, stdout) != k)
                return 1;
            pos += k;
        }
        return fflush(stdout) == 0 ? 0 : 1;
    }
    if (strcmp(argv[1], "sha256") == 0 && argc == 2) {
        static uint8_t buf[IO_CHUNK];
        SHA256_CTX sha;
        SHA256_Init(&sha);
        ssize_t n;
        while ((n = read(STDIN_FILENO, buf, sizeof(buf))) > 0)
            SHA256_Update(&sha, buf, (size_t)n);
        uint8_t d[32];
        char h[65];
        SHA256_Final(d, &sha);
        hex(d, 32, h);
        printf("%s\n", h);
        return n == 0 ? 0 : 1;
    }
    if (strcmp(argv[1], "pair-client") == 0)
        return cmd_client(argc - 2, argv + 2, "client");
    usage();
}
