/* HTTP/2 sessions in memory: a ztm_h2 client and server joined by a pump
 * that moves bytes through bounded buffers (down to 1-byte flushes and
 * 1-byte feeds). Exact bytes for GET and echoed POST, 100 concurrent
 * streams, trailers, windows that hold an unconsuming server's peer,
 * resets, graceful GOAWAY, PING and the dead-peer deadline, and the abuse
 * limits: rapid reset, PING/SETTINGS/empty-DATA floods, oversized header
 * lists, protocol errors. A fake clock drives every time-based rule. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dataplane/h2/h2.h"
#include "dataplane/runtime/log.h"
#include "tests/unit/check.h"
#include "tests/unit/dataplane/h2/h2_testapp.h"

static uint64_t fake_now = 1000000000ull;
static uint64_t fake_clock(void *user)
{
    return fake_now;
}

/* ---- the client application --------------------------------------------- */
typedef struct {
    int32_t id;
    uint64_t send_len, sent; /* request body (pattern) */
    uint64_t got;
    bool bad_byte;
    int status;
    bool head_end, ended, closed, trailers, hold;
    bool park; /* read_body has nothing for now */
    uint32_t close_err;
    char grpc_status[8], grpc_message[16];
    uint64_t unconsumed;
} creq_t;

typedef struct {
    size_t closed, goaways;
    uint32_t goaway_err;
    int32_t goaway_last;
} capp_t;

static void copy_val(char *dst, size_t cap, const ztm_h2_header_t *h)
{
    size_t n = h->value_len < cap - 1 ? h->value_len : cap - 1;
    memcpy(dst, h->value, n);
    dst[n] = 0;
}

static void grpc_fields(creq_t *r, const ztm_h2_header_t *h, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!strcmp(h[i].name, "grpc-status"))
            copy_val(r->grpc_status, sizeof(r->grpc_status), &h[i]);
        else if (!strcmp(h[i].name, "grpc-message"))
            copy_val(r->grpc_message, sizeof(r->grpc_message), &h[i]);
    }
}

static void c_on_response(ztm_h2_session_t *s, void *user, int32_t id, void *sdata,
                          const ztm_h2_msg_t *m)
{
    creq_t *r = sdata;
    r->status = m->status;
    r->head_end = m->end_stream;
    grpc_fields(r, m->headers, m->n_headers);
}

static void c_on_data(ztm_h2_session_t *s, void *user, int32_t id, void *sdata, const uint8_t *data,
                      size_t len)
{
    creq_t *r = sdata;
    for (size_t i = 0; i < len; i++)
        if (data[i] != tapp_pattern(r->got + i))
            r->bad_byte = true;
    r->got += len;
    if (r->hold)
        r->unconsumed += len;
    else
        ztm_h2_consume(s, id, len);
}

static void c_on_trailers(ztm_h2_session_t *s, void *user, int32_t id, void *sdata,
                          const ztm_h2_header_t *h, size_t n)
{
    creq_t *r = sdata;
    r->trailers = true;
    grpc_fields(r, h, n);
}

static void c_on_end_stream(ztm_h2_session_t *s, void *user, int32_t id, void *sdata)
{
    ((creq_t *)sdata)->ended = true;
}

static void c_on_stream_close(ztm_h2_session_t *s, void *user, int32_t id, void *sdata,
                              uint32_t err)
{
    creq_t *r = sdata;
    capp_t *a = user;
    r->closed = true;
    r->close_err = err;
    a->closed++;
    if (r->unconsumed)
        ztm_h2_consume(s, id, r->unconsumed);
    r->unconsumed = 0;
}

static ssize_t c_read_body(ztm_h2_session_t *s, void *user, int32_t id, void *sdata, uint8_t *dst,
                           size_t max, bool *eof)
{
    creq_t *r = sdata;
    if (r->park)
        return 0;
    uint64_t left = r->send_len - r->sent;
    size_t n = left < max ? (size_t)left : max;
    for (size_t i = 0; i < n; i++)
        dst[i] = tapp_pattern(r->sent + i);
    r->sent += n;
    *eof = r->sent == r->send_len;
    return (ssize_t)n;
}

static void c_on_goaway(ztm_h2_session_t *s, void *user, uint32_t err, int32_t last)
{
    capp_t *a = user;
    a->goaways++;
    a->goaway_err = err;
    a->goaway_last = last;
}

static const ztm_h2_callbacks_t client_cb = {
    .on_response = c_on_response,
    .on_data = c_on_data,
    .on_trailers = c_on_trailers,
    .on_end_stream = c_on_end_stream,
    .on_stream_close = c_on_stream_close,
    .read_body = c_read_body,
    .on_goaway = c_on_goaway,
};

/* ---- a pair and its pump -------------------------------------------------- */
typedef struct {
    ztm_h2_session_t *c, *s;
    capp_t capp;
    tapp_t sapp;
    size_t c_cap, s_cap; /* flush buffer sizes */
    size_t chunk;        /* feed size */
    int c_err, s_err;    /* first error a feed returned */
    bool s_mute;         /* the server does not flush (does not "write") */
    uint64_t c2s, s2c;
    size_t max_flush; /* the largest single flush seen */
} pair_t;

static uint8_t pump_buf[1 << 17];

/* H2DUMP=1 prints every frame header the pump moves (debugging aid). */
typedef struct {
    uint8_t hd[9];
    size_t have, skip;
} dump_t;
static dump_t dump_c2s = {.skip = 24}, dump_s2c;
static void dump(dump_t *d, const char *dir, const uint8_t *b, size_t len)
{
    static int on = -1;
    if (on < 0)
        on = getenv("H2DUMP") != NULL;
    if (!on)
        return;
    for (size_t i = 0; i < len;) {
        if (d->skip) {
            size_t n = len - i < d->skip ? len - i : d->skip;
            d->skip -= n;
            i += n;
            continue;
        }
        d->hd[d->have++] = b[i++];
        if (d->have == 9) {
            size_t flen = (size_t)d->hd[0] << 16 | (size_t)d->hd[1] << 8 | d->hd[2];
            uint32_t sid = ((uint32_t)d->hd[5] << 24 | (uint32_t)d->hd[6] << 16 |
                            (uint32_t)d->hd[7] << 8 | d->hd[8]) &
                           0x7fffffff;
            fprintf(stderr, "%s type=%u flags=0x%x stream=%u len=%zu\n", dir, d->hd[3], d->hd[4],
                    sid, flen);
            d->have = 0;
            d->skip = flen;
        }
    }
}

/* The server's read_body, watched: where does the body land? */
static size_t dst_in_flush_buf, dst_elsewhere;
static ssize_t watched_read_body(ztm_h2_session_t *s, void *user, int32_t id, void *sdata,
                                 uint8_t *dst, size_t max, bool *eof)
{
    if (dst >= pump_buf && dst + max <= pump_buf + sizeof(pump_buf))
        dst_in_flush_buf++;
    else
        dst_elsewhere++;
    return tapp_read_body(s, user, id, sdata, dst, max, eof);
}

static void pair_open(pair_t *p, const ztm_h2_config_t *ccfg, const ztm_h2_config_t *scfg)
{
    memset(p, 0, sizeof(*p));
    ztm_h2_config_t cc = ccfg ? *ccfg : (ztm_h2_config_t){0};
    ztm_h2_config_t sc = scfg ? *scfg : (ztm_h2_config_t){0};
    cc.clock = sc.clock = fake_clock;
    CHECK_EQ(ztm_h2_new(&p->c, ZTM_H2_CLIENT, &client_cb, &p->capp, &cc), 0);
    static ztm_h2_callbacks_t server_cb;
    server_cb = tapp_callbacks;
    server_cb.read_body = watched_read_body;
    CHECK_EQ(ztm_h2_new(&p->s, ZTM_H2_SERVER, &server_cb, &p->sapp, &sc), 0);
    p->c_cap = p->s_cap = 16384;
    p->chunk = 1 << 17;
}

static void pair_close(pair_t *p)
{
    ztm_h2_free(p->c);
    ztm_h2_free(p->s);
}

/* Moves one flush from FROM to TO. True if bytes moved. */
static bool move(pair_t *p, ztm_h2_session_t *from, ztm_h2_session_t *to, size_t cap, int *to_err,
                 uint64_t *count)
{
    if (!ztm_h2_want_write(from))
        return false;
    size_t len = 0;
    CHECK_EQ(ztm_h2_flush(from, pump_buf, cap, &len), 0);
    CHECK(len <= cap);
    if (len > p->max_flush)
        p->max_flush = len;
    *count += len;
    dump(from == p->c ? &dump_c2s : &dump_s2c, from == p->c ? "c>s" : "s>c", pump_buf, len);
    for (size_t off = 0; off < len && !*to_err; off += p->chunk) {
        size_t n = len - off < p->chunk ? len - off : p->chunk;
        int rv = ztm_h2_feed(to, pump_buf + off, n);
        if (rv < 0)
            *to_err = rv;
    }
    return len > 0;
}

static bool pump_once(pair_t *p)
{
    bool a = move(p, p->c, p->s, p->c_cap, &p->s_err, &p->c2s);
    bool b = !p->s_mute && move(p, p->s, p->c, p->s_cap, &p->c_err, &p->s2c);
    return a || b;
}

static void pump(pair_t *p)
{
    for (long i = 0; i < 50000000 && pump_once(p); i++)
        ;
}

static int32_t get(pair_t *p, creq_t *r, const char *path)
{
    ztm_h2_msg_t m = {.method = "GET", .scheme = "http", .authority = "test", .path = path};
    r->id = ztm_h2_request(p->c, &m, 0, r);
    return r->id;
}

static int32_t post(pair_t *p, creq_t *r, const char *path, uint64_t len)
{
    ztm_h2_msg_t m = {.method = "POST", .scheme = "http", .authority = "test", .path = path};
    r->send_len = len;
    r->id = ztm_h2_request(p->c, &m, ZTM_H2_BODY, r);
    return r->id;
}

/* ---- tests --------------------------------------------------------------- */
static void test_get_sizes(void)
{
    static const uint64_t sizes[] = {0, 1, 100, 16375, 16384, 100000, 1 << 20};
    static const size_t caps[][3] = {
        /* client flush, server flush, feed chunk */
        {16384, 16384, 1 << 17}, {16384, 16384, 1},       {1, 1, 1}, {7, 9, 3}, {10, 10, 1000},
        {100, 333, 17},          {65536, 65536, 1 << 17},
    };
    for (size_t c = 0; c < sizeof(caps) / sizeof(caps[0]); c++) {
        for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
            if (caps[c][0] < 100 && sizes[i] > 100000)
                continue; /* tiny buffers: keep it quick */
            pair_t p;
            pair_open(&p, NULL, NULL);
            p.c_cap = caps[c][0];
            p.s_cap = caps[c][1];
            p.chunk = caps[c][2];
            char path[64];
            snprintf(path, sizeof(path), "/bytes/%llu", (unsigned long long)sizes[i]);
            creq_t r = {0};
            CHECK(get(&p, &r, path) == 1);
            pump(&p);
            CHECK_EQ(r.status, 200);
            CHECK_EQ(r.got, sizes[i]);
            CHECK(!r.bad_byte);
            CHECK(r.ended && r.closed);
            CHECK_EQ(r.close_err, 0);
            CHECK_EQ(p.c_err, 0);
            CHECK_EQ(p.s_err, 0);
            CHECK_EQ(ztm_h2_streams(p.c), 0);
            CHECK_EQ(ztm_h2_streams(p.s), 0);
            CHECK_EQ(p.sapp.live, 0);
            CHECK(p.max_flush <= (caps[c][0] > caps[c][1] ? caps[c][0] : caps[c][1]));
            pair_close(&p);
        }
    }
}

/* Flushes fill the caller's buffer: with 4 MB to send through 16 KiB
 * buffers, nearly every flush is a full 16 KiB. And the body is written
 * once, by read_body, straight into the caller's buffer. */
static void test_flush_fill(void)
{
    pair_t p;
    pair_open(&p, NULL, NULL);
    dst_in_flush_buf = dst_elsewhere = 0;
    creq_t r = {0};
    get(&p, &r, "/bytes/4000000");
    /* get the request across and the response started */
    for (int i = 0; i < 4; i++)
        pump_once(&p);
    size_t full = 0, flushes = 0;
    while (ztm_h2_want_write(p.s)) {
        size_t len = 0;
        CHECK_EQ(ztm_h2_flush(p.s, pump_buf, 16384, &len), 0);
        if (!len)
            break;
        flushes++;
        full += len == 16384;
        CHECK_EQ(ztm_h2_feed(p.c, pump_buf, len), 0);
        size_t clen = 0;
        if (ztm_h2_want_write(p.c)) {
            CHECK_EQ(ztm_h2_flush(p.c, pump_buf, 16384, &clen), 0);
            CHECK_EQ(ztm_h2_feed(p.s, pump_buf, clen), 0);
        }
    }
    pump(&p);
    CHECK_EQ(r.got, 4000000);
    CHECK(!r.bad_byte);
    CHECK(flushes > 200);
    CHECK(full * 100 >= flushes * 95);
    CHECK(dst_in_flush_buf > 200);
    CHECK_EQ(dst_elsewhere, 0);
    pair_close(&p);

    /* Under 10 bytes not even a 1-byte DATA frame fits: the spill buffer. */
    pair_open(&p, NULL, NULL);
    p.s_cap = 5;
    dst_in_flush_buf = dst_elsewhere = 0;
    creq_t r2 = {0};
    get(&p, &r2, "/bytes/50000");
    pump(&p);
    CHECK(r2.got == 50000 && !r2.bad_byte);
    CHECK(dst_elsewhere > 0 && dst_in_flush_buf == 0);
    pair_close(&p);
}

static void test_echo(void)
{
    static const size_t caps[][3] = {{16384, 16384, 1 << 17}, {4096, 1000, 777}, {16384, 65536, 1}};
    for (size_t c = 0; c < 3; c++) {
        pair_t p;
        pair_open(&p, NULL, NULL);
        p.c_cap = caps[c][0];
        p.s_cap = caps[c][1];
        p.chunk = caps[c][2];
        uint64_t len = c == 2 ? (1 << 20) + 3 : (3 << 20) + 12345;
        creq_t r = {0};
        CHECK(post(&p, &r, "/echo", len) > 0);
        pump(&p);
        CHECK_EQ(r.status, 200);
        CHECK_EQ(r.sent, len);
        CHECK_EQ(r.got, len);
        CHECK(!r.bad_byte);
        CHECK(r.ended && r.closed && r.close_err == 0);
        /* The echo never held more than the stream window. */
        CHECK(p.sapp.max_echo_buffered <= (1u << 20));
        CHECK_EQ(p.sapp.unconsumed_total, 0);
        CHECK_EQ(p.c_err, 0);
        CHECK_EQ(p.s_err, 0);
        pair_close(&p);
    }
}

static void test_concurrent(void)
{
    pair_t p;
    pair_open(&p, NULL, NULL);
    enum { N = 100 };
    static creq_t r[N];
    memset(r, 0, sizeof(r));
    for (int i = 0; i < N; i++) {
        char path[64];
        if (i % 3 == 0) {
            CHECK(post(&p, &r[i], "/echo", 1000 + (uint64_t)i * 2000) > 0);
        } else {
            snprintf(path, sizeof(path), "/bytes/%d", i * 3001);
            CHECK(get(&p, &r[i], path) > 0);
        }
    }
    pump(&p);
    size_t ok = 0;
    for (int i = 0; i < N; i++) {
        uint64_t expect = i % 3 == 0 ? 1000 + (uint64_t)i * 2000 : (uint64_t)i * 3001;
        ok += r[i].status == 200 && r[i].got == expect && !r[i].bad_byte && r[i].closed &&
              r[i].close_err == 0;
    }
    CHECK_EQ(ok, N);
    CHECK_EQ(p.sapp.n_requests, N);
    CHECK_EQ(p.sapp.n_closed_ok, N);
    CHECK_EQ(ztm_h2_streams(p.s), 0);
    pair_close(&p);

    /* More requests than the server's stream limit before its SETTINGS
     * arrived: the excess is refused (REFUSED_STREAM: safe to retry). */
    ztm_h2_config_t sc = {.max_concurrent_streams = 10};
    pair_open(&p, NULL, &sc);
    for (int i = 0; i < 50; i++) {
        memset(&r[i], 0, sizeof(r[i]));
        CHECK(get(&p, &r[i], "/bytes/5000") > 0);
    }
    pump(&p);
    size_t refused = 0;
    ok = 0;
    for (int i = 0; i < 50; i++) {
        ok += r[i].status == 200 && r[i].got == 5000 && r[i].close_err == 0;
        refused += r[i].status == 0 && r[i].close_err == ZTM_H2_REFUSED_STREAM;
    }
    CHECK_EQ(ok, 10);
    CHECK_EQ(refused, 40);
    pair_close(&p);

    /* After SETTINGS, the client queues what the limit does not allow. */
    pair_open(&p, NULL, &sc);
    pump(&p);
    for (int i = 0; i < 50; i++) {
        memset(&r[i], 0, sizeof(r[i]));
        CHECK(get(&p, &r[i], "/bytes/5000") > 0);
    }
    pump(&p);
    ok = 0;
    for (int i = 0; i < 50; i++)
        ok += r[i].status == 200 && r[i].got == 5000 && r[i].close_err == 0;
    CHECK_EQ(ok, 50);
    pair_close(&p);
}

static void test_trailers(void)
{
    pair_t p;
    pair_open(&p, NULL, NULL);
    creq_t a = {0}, b = {0}, c = {0}, d = {0};
    get(&p, &a, "/trailers/70000");
    get(&p, &b, "/trailers-only");
    get(&p, &c, "/trailers-late/5000");
    get(&p, &d, "/trailers/0");
    pump(&p);
    CHECK_EQ(a.status, 200);
    CHECK_EQ(a.got, 70000);
    CHECK(a.trailers && !strcmp(a.grpc_status, "0") && !strcmp(a.grpc_message, "ok"));
    CHECK(a.ended && a.closed && a.close_err == 0);
    /* trailers-only: one HEADERS with END_STREAM, grpc-status in the head */
    CHECK_EQ(b.status, 200);
    CHECK(b.head_end && !b.trailers && b.got == 0);
    CHECK(!strcmp(b.grpc_status, "7") && !strcmp(b.grpc_message, "denied"));
    CHECK(b.ended && b.closed && b.close_err == 0);
    CHECK(d.trailers && d.got == 0 && d.closed && d.close_err == 0);
    /* late trailers: the body is out, the stream waits for them */
    CHECK_EQ(c.got, 5000);
    CHECK(!c.trailers && !c.ended && !c.closed);
    CHECK(!ztm_h2_want_write(p.s));
    tapp_send_late_trailers(&p.sapp, p.s);
    CHECK(ztm_h2_want_write(p.s));
    pump(&p);
    CHECK(c.trailers && !strcmp(c.grpc_message, "late"));
    CHECK(c.ended && c.closed && c.close_err == 0);
    pair_close(&p);
}

/* An application that does not consume stops its peer at the windows. */
static void test_flow_control(void)
{
    ztm_h2_config_t sc = {.conn_window = 256 << 10, .stream_window = 64 << 10};
    pair_t p;
    pair_open(&p, NULL, &sc);
    enum { N = 8 };
    creq_t r[N] = {{0}};
    for (int i = 0; i < N; i++)
        CHECK(post(&p, &r[i], "/hold", 1 << 20) > 0);
    pump(&p);
    /* Nothing moves any more: bytes in flight are bounded by the windows. */
    CHECK(!ztm_h2_want_write(p.c));
    CHECK(p.sapp.received_total <= (256 << 10));
    CHECK(p.sapp.received_total >= (256 << 10) - 16384);
    uint64_t sent = 0;
    for (int i = 0; i < N; i++) {
        CHECK(r[i].sent - 0 <= (64 << 10));
        sent += r[i].sent;
        CHECK(!r[i].closed);
    }
    /* the client pulled from its source only what the windows allowed */
    CHECK(sent <= (256 << 10));
    CHECK_EQ(ztm_h2_send_window(p.c, 0), 0);
    CHECK_EQ(ztm_h2_recv_window(p.s, 0), (256 << 10) - (int32_t)p.sapp.received_total);
    /* Consuming lets the rest through; keep releasing until done. */
    for (int round = 0; round < 1000 && p.sapp.n_closed < N; round++) {
        tapp_release(&p.sapp, p.s);
        pump(&p);
        CHECK(p.sapp.max_unconsumed_total <= (256 << 10));
    }
    CHECK_EQ(p.sapp.received_total, (uint64_t)N << 20);
    for (int i = 0; i < N; i++)
        CHECK(r[i].status == 200 && r[i].sent == (1u << 20) && r[i].close_err == 0);
    pair_close(&p);

    /* The same the other way: a client that does not consume a download. */
    ztm_h2_config_t cc = {.conn_window = 128 << 10, .stream_window = 100 << 10};
    pair_open(&p, &cc, NULL);
    creq_t d = {.hold = true};
    get(&p, &d, "/bytes/3000000");
    pump(&p);
    CHECK_EQ(d.got, 100 << 10);
    CHECK(!ztm_h2_want_write(p.s));
    ztm_h2_consume(p.c, d.id, d.unconsumed);
    d.unconsumed = 0;
    d.hold = false;
    pump(&p);
    CHECK_EQ(d.got, 3000000);
    CHECK(!d.bad_byte && d.close_err == 0);
    pair_close(&p);
}

static void test_reset(void)
{
    pair_t p;
    pair_open(&p, NULL, NULL);
    /* the client cancels a download halfway */
    creq_t a = {.hold = true}, b = {0};
    get(&p, &a, "/bytes/10000000");
    pump(&p);
    CHECK(a.got > 0 && a.got < 10000000);
    CHECK_EQ(ztm_h2_reset(p.c, a.id, ZTM_H2_CANCEL), 0);
    pump(&p);
    CHECK(a.closed && a.close_err == ZTM_H2_CANCEL);
    CHECK_EQ(p.sapp.n_closed, 1);
    CHECK_EQ(p.sapp.last_close_error, ZTM_H2_CANCEL);
    CHECK_EQ(p.sapp.live, 0);
    /* the connection goes on, windows intact */
    get(&p, &b, "/bytes/300000");
    pump(&p);
    CHECK(b.got == 300000 && b.close_err == 0);
    /* the server resets a stream it has answered */
    creq_t c = {0};
    get(&p, &c, "/trailers-late/100");
    pump(&p);
    CHECK(!c.closed);
    CHECK_EQ(ztm_h2_reset(p.s, c.id, ZTM_H2_REFUSED_STREAM), 0);
    pump(&p);
    CHECK(c.closed && c.close_err == ZTM_H2_REFUSED_STREAM && c.got == 100);
    CHECK_EQ(p.sapp.n_late, 0);
    CHECK_EQ(ztm_h2_reset(p.s, 999, 0), ZTM_H2_E_STREAM);
    CHECK_EQ(p.c_err, 0);
    CHECK_EQ(p.s_err, 0);
    pair_close(&p);
}

static void test_goaway(void)
{
    pair_t p;
    pair_open(&p, NULL, NULL);
    creq_t a = {.hold = true}, b = {0}, late = {0};
    get(&p, &a, "/bytes/3000000");
    pump(&p);
    CHECK(a.got > 0 && !a.closed);
    /* server starts a graceful shutdown with a download in flight */
    CHECK_EQ(ztm_h2_shutdown(p.s), 0);
    CHECK(!ztm_h2_idle(p.s));
    /* a request the client sends before it sees the notice */
    get(&p, &b, "/bytes/1000");
    pump(&p);
    CHECK_EQ(p.capp.goaways, 2); /* notice, then final */
    CHECK_EQ(p.capp.goaway_err, ZTM_H2_NO_ERROR);
    CHECK_EQ(p.capp.goaway_last, b.id);
    CHECK(b.got == 1000 && b.close_err == 0);
    /* after the notice the client opens nothing new */
    CHECK_EQ(get(&p, &late, "/bytes/1"), ZTM_H2_E_CLOSED);
    CHECK(!ztm_h2_idle(p.s));
    /* the stream in flight finishes, then both ends are idle */
    a.hold = false;
    ztm_h2_consume(p.c, a.id, a.unconsumed);
    a.unconsumed = 0;
    pump(&p);
    CHECK(a.got == 3000000 && a.close_err == 0 && !a.bad_byte);
    CHECK(ztm_h2_idle(p.s));
    CHECK(ztm_h2_idle(p.c));
    CHECK_EQ(ztm_h2_feed(p.s, (const uint8_t *)"", 0), ZTM_H2_E_CLOSED);
    pair_close(&p);

    /* the shutdown PING is never answered: tick sends the final GOAWAY */
    pair_open(&p, NULL, NULL);
    creq_t c = {.hold = true};
    get(&p, &c, "/bytes/2000000");
    pump(&p);
    CHECK_EQ(ztm_h2_shutdown(p.s), 0);
    size_t len;
    CHECK_EQ(ztm_h2_flush(p.s, pump_buf, sizeof(pump_buf), &len), 0); /* notice + PING, lost */
    fake_now += 21000000000ull;
    CHECK_EQ(ztm_h2_tick(p.s), 0);
    pump(&p);
    CHECK_EQ(p.capp.goaways, 1);
    CHECK_EQ(p.capp.goaway_last, c.id);
    c.hold = false;
    ztm_h2_consume(p.c, c.id, c.unconsumed);
    c.unconsumed = 0;
    pump(&p);
    CHECK(c.got == 2000000 && c.close_err == 0);
    CHECK(ztm_h2_idle(p.s) && ztm_h2_idle(p.c));
    pair_close(&p);

    /* client-side shutdown */
    pair_open(&p, NULL, NULL);
    creq_t d = {0};
    get(&p, &d, "/bytes/10");
    pump(&p);
    CHECK_EQ(ztm_h2_shutdown(p.c), 0);
    pump(&p);
    CHECK(ztm_h2_idle(p.c) && ztm_h2_idle(p.s));
    pair_close(&p);
}

static void test_ping(void)
{
    pair_t p;
    pair_open(&p, NULL, NULL);
    pump(&p);
    uint64_t sent;
    CHECK(!ztm_h2_ping_outstanding(p.c, &sent));
    CHECK_EQ(ztm_h2_ping(p.c), 0);
    CHECK(ztm_h2_ping_outstanding(p.c, &sent) && sent == fake_now);
    fake_now += 5000000; /* 5 ms */
    pump(&p);
    CHECK(!ztm_h2_ping_outstanding(p.c, NULL));
    CHECK_EQ(ztm_h2_rtt(p.c), 5000000);
    CHECK_EQ(ztm_h2_last_recv(p.c), fake_now);

    /* keepalive: silence past the interval sends a PING; an answer keeps
     * the connection; no answer past the timeout is a dead peer */
    fake_now += 29000000000ull;
    CHECK_EQ(ztm_h2_tick(p.c), 0);
    CHECK(!ztm_h2_ping_outstanding(p.c, NULL));
    fake_now += 2000000000ull;
    CHECK_EQ(ztm_h2_tick(p.c), 0);
    CHECK(ztm_h2_ping_outstanding(p.c, NULL));
    pump(&p);
    CHECK(!ztm_h2_ping_outstanding(p.c, NULL));
    fake_now += 31000000000ull;
    CHECK_EQ(ztm_h2_tick(p.c), 0);
    CHECK(ztm_h2_ping_outstanding(p.c, NULL));
    size_t len;
    CHECK_EQ(ztm_h2_flush(p.c, pump_buf, sizeof(pump_buf), &len), 0); /* lost */
    fake_now += 19000000000ull;
    CHECK_EQ(ztm_h2_tick(p.c), 0);
    fake_now += 1000000000ull;
    CHECK_EQ(ztm_h2_tick(p.c), ZTM_H2_E_DEAD_PEER);
    pair_close(&p);
}

/* ---- raw frames, for the abuse tests ------------------------------------- */
static size_t frame(uint8_t *b, uint8_t type, uint8_t flags, uint32_t sid, const void *payload,
                    size_t len)
{
    b[0] = (uint8_t)(len >> 16);
    b[1] = (uint8_t)(len >> 8);
    b[2] = (uint8_t)len;
    b[3] = type;
    b[4] = flags;
    b[5] = (uint8_t)(sid >> 24);
    b[6] = (uint8_t)(sid >> 16);
    b[7] = (uint8_t)(sid >> 8);
    b[8] = (uint8_t)sid;
    if (len)
        memcpy(b + 9, payload, len);
    return 9 + len;
}

/* Reads GOAWAY error codes out of a byte stream of frames. */
static int find_goaway(const uint8_t *b, size_t len, uint32_t *code)
{
    size_t off = 0;
    int found = 0;
    while (off + 9 <= len) {
        size_t flen = (size_t)b[off] << 16 | (size_t)b[off + 1] << 8 | b[off + 2];
        if (b[off + 3] == 7 && off + 9 + 8 <= len) {
            const uint8_t *q = b + off + 9 + 4;
            *code = (uint32_t)q[0] << 24 | (uint32_t)q[1] << 16 | (uint32_t)q[2] << 8 | q[3];
            found++;
        }
        off += 9 + flen;
    }
    return found;
}

static void test_rapid_reset(void)
{
    ztm_h2_config_t sc = {.reset_burst = 50, .reset_rate = 10};
    pair_t p;
    pair_open(&p, NULL, &sc);
    pump(&p);
    /* open-and-cancel, as fast as possible, with no time passing */
    int i;
    static creq_t many[200];
    memset(many, 0, sizeof(many));
    for (i = 0; i < 200 && !p.s_err; i++) {
        creq_t *r = &many[i];
        r->hold = true;
        if (get(&p, r, "/bytes/1000000") < 0)
            break;
        pump_once(&p); /* HEADERS out */
        ztm_h2_reset(p.c, r->id, ZTM_H2_CANCEL);
        pump_once(&p); /* RST_STREAM out */
    }
    CHECK_EQ(p.s_err, ZTM_H2_E_CALM);
    CHECK(i > 40 && i <= 60);
    pump(&p);
    CHECK(p.capp.goaways >= 1);
    CHECK_EQ(p.capp.goaway_err, ZTM_H2_ENHANCE_YOUR_CALM);
    CHECK(ztm_h2_idle(p.s));
    pair_close(&p);

    /* the same number spread over time stays under the rate */
    pair_open(&p, NULL, &sc);
    pump(&p);
    static creq_t rr[300];
    memset(rr, 0, sizeof(rr));
    for (i = 0; i < 300; i++) {
        get(&p, &rr[i], "/bytes/10");
        pump_once(&p);
        ztm_h2_reset(p.c, rr[i].id, ZTM_H2_CANCEL);
        pump(&p);
        fake_now += 110000000; /* 110 ms: under 10/s */
    }
    CHECK_EQ(p.s_err, 0);
    CHECK_EQ(p.capp.goaways, 0);
    pair_close(&p);
}

static void test_floods(void)
{
    static uint8_t raw[1 << 20];
    uint8_t opaque[8] = {1, 2, 3, 4, 5, 6, 7, 8};

    /* PINGs past the control-frame budget */
    ztm_h2_config_t sc = {.flood_burst = 100, .flood_rate = 10};
    pair_t p;
    pair_open(&p, NULL, &sc);
    pump(&p);
    size_t n = 0;
    for (int i = 0; i < 200; i++)
        n += frame(raw + n, 6, 0, 0, opaque, 8);
    CHECK_EQ(ztm_h2_feed(p.s, raw, n), ZTM_H2_E_CALM);
    size_t len = 0;
    uint32_t code = 0;
    while (ztm_h2_want_write(p.s)) {
        size_t l;
        CHECK_EQ(ztm_h2_flush(p.s, pump_buf + len, sizeof(pump_buf) - len, &l), 0);
        if (!l)
            break;
        len += l;
    }
    CHECK_EQ(find_goaway(pump_buf, len, &code), 1);
    CHECK_EQ(code, ZTM_H2_ENHANCE_YOUR_CALM);
    CHECK(len < 200 * 17); /* not every ACK went out */
    CHECK(ztm_h2_idle(p.s));
    pair_close(&p);

    /* PINGs whose ACKs we cannot write (the peer does not read) */
    ztm_h2_config_t sc2 = {.flood_burst = UINT32_MAX, .max_outbound_ack = 100};
    pair_open(&p, NULL, &sc2);
    pump(&p);
    n = 0;
    for (int i = 0; i < 300; i++)
        n += frame(raw + n, 6, 0, 0, opaque, 8);
    CHECK_EQ(ztm_h2_feed(p.s, raw, n), ZTM_H2_E_CALM);
    len = 0;
    CHECK_EQ(ztm_h2_flush(p.s, pump_buf, sizeof(pump_buf), &len), 0);
    CHECK_EQ(find_goaway(pump_buf, len, &code), 1);
    CHECK_EQ(code, ZTM_H2_ENHANCE_YOUR_CALM);
    CHECK(!ztm_h2_want_write(p.s));
    pair_close(&p);

    /* SETTINGS flood */
    pair_open(&p, NULL, &sc);
    pump(&p);
    n = 0;
    for (int i = 0; i < 150; i++)
        n += frame(raw + n, 4, 0, 0, NULL, 0);
    CHECK_EQ(ztm_h2_feed(p.s, raw, n), ZTM_H2_E_CALM);
    pair_close(&p);

    /* empty DATA frames on an open stream */
    pair_open(&p, NULL, &sc);
    creq_t r = {.park = true};
    post(&p, &r, "/hold", 1 << 20);
    pump(&p);
    n = 0;
    for (int i = 0; i < 150; i++)
        n += frame(raw + n, 0, 0, (uint32_t)r.id, NULL, 0);
    CHECK_EQ(ztm_h2_feed(p.s, raw, n), ZTM_H2_E_CALM);
    pair_close(&p);

    /* requests whose answers pile up unsent (the peer does not read) */
    ztm_h2_config_t sc3 = {.max_outbound_queue = 50};
    pair_open(&p, NULL, &sc3);
    pump(&p);
    p.s_mute = true;
    static creq_t q[100];
    memset(q, 0, sizeof(q));
    for (int i = 0; i < 100; i++)
        get(&p, &q[i], "/trailers-only");
    pump(&p);
    CHECK_EQ(p.s_err, ZTM_H2_E_CALM);
    p.s_mute = false;
    pump(&p);
    CHECK_EQ(p.capp.goaway_err, ZTM_H2_ENHANCE_YOUR_CALM);
    pair_close(&p);

    /* a slow trickle of PINGs over time is fine */
    pair_open(&p, NULL, &sc);
    pump(&p);
    for (int i = 0; i < 500; i++) {
        n = frame(raw, 6, 0, 0, opaque, 8);
        CHECK_EQ(ztm_h2_feed(p.s, raw, n), 0);
        CHECK_EQ(ztm_h2_flush(p.s, pump_buf, sizeof(pump_buf), &len), 0);
        fake_now += 200000000; /* 5/s */
    }
    pair_close(&p);
}

static void test_header_limits(void)
{
    ztm_h2_config_t sc = {.max_header_list = 8192};
    pair_t p;
    pair_open(&p, NULL, &sc);
    static char big[20000];
    memset(big, 'a', sizeof(big));
    ztm_h2_header_t h = {"x-big", 5, big, 16000};
    ztm_h2_msg_t m = {.method = "POST",
                      .scheme = "http",
                      .authority = "test",
                      .path = "/echo",
                      .headers = &h,
                      .n_headers = 1};
    creq_t r = {.send_len = 100000}, ok = {0};
    r.id = ztm_h2_request(p.c, &m, ZTM_H2_BODY, &r);
    CHECK(r.id > 0);
    pump(&p);
    CHECK_EQ(r.status, 431);
    CHECK(r.closed);
    CHECK_EQ(p.sapp.n_requests, 0); /* the application never saw it */
    CHECK_EQ(p.s_err, 0);
    /* just under the limit passes */
    h.value_len = 8192 - 32 - 5 - 200;
    m.path = "/bytes/10";
    m.method = "GET";
    ok.id = ztm_h2_request(p.c, &m, 0, &ok);
    pump(&p);
    CHECK(ok.status == 200 && ok.got == 10 && ok.close_err == 0);
    pair_close(&p);

    /* the client refuses a response head over its limit */
    ztm_h2_config_t cc = {.max_header_list = 1024};
    pair_open(&p, &cc, NULL);
    creq_t b = {0}, c = {0};
    get(&p, &b, "/big-head/2000");
    get(&p, &c, "/big-head/500");
    pump(&p);
    CHECK(b.closed && b.close_err == ZTM_H2_ENHANCE_YOUR_CALM && b.status == 0);
    CHECK(c.closed && c.close_err == 0 && c.status == 200);
    CHECK_EQ(p.c_err, 0);
    pair_close(&p);
}

/* Extended CONNECT (RFC 8441), request trailers, terminate. */
static void test_misc(void)
{
    ztm_h2_config_t sc = {.enable_connect_protocol = true};
    pair_t p;
    pair_open(&p, NULL, &sc);
    pump(&p);
    ztm_h2_msg_t m = {.method = "CONNECT",
                      .scheme = "https",
                      .authority = "hub",
                      .path = "/session/b",
                      .protocol = "ztm-peer"};
    creq_t a = {0};
    a.id = ztm_h2_request(p.c, &m, 0, &a);
    pump(&p);
    CHECK(!strcmp(p.sapp.last_method, "CONNECT"));
    CHECK(!strcmp(p.sapp.last_protocol, "ztm-peer"));
    CHECK_EQ(a.status, 404);

    /* a client body that ends with trailers, given after the body is out */
    creq_t b = {.send_len = 40000};
    m = (ztm_h2_msg_t){.method = "POST", .scheme = "http", .authority = "t", .path = "/echo"};
    b.id = ztm_h2_request(p.c, &m, ZTM_H2_BODY | ZTM_H2_TRAILERS, &b);
    pump(&p);
    CHECK_EQ(b.sent, 40000);
    CHECK_EQ(p.sapp.n_trailers, 0);
    CHECK(!b.closed);
    ztm_h2_header_t t = {"x-checksum", 10, "abc", 3};
    CHECK_EQ(ztm_h2_trailers(p.c, b.id, &t, 1), 0);
    CHECK_EQ(ztm_h2_trailers(p.c, b.id, &t, 1), ZTM_H2_E_STREAM); /* once */
    pump(&p);
    CHECK_EQ(p.sapp.n_trailers, 1);
    CHECK(!strcmp(p.sapp.last_trailer, "x-checksum=abc"));
    CHECK(b.got == 40000 && !b.bad_byte && b.close_err == 0);

    /* terminate: GOAWAY with the code, nothing more read, idle once out */
    creq_t c = {.hold = true};
    get(&p, &c, "/bytes/5000000");
    pump(&p);
    CHECK_EQ(ztm_h2_terminate(p.s, ZTM_H2_INTERNAL_ERROR), 0);
    CHECK_EQ(ztm_h2_respond(p.s, c.id, 200, NULL, 0, 0), ZTM_H2_E_STREAM);
    pump(&p);
    CHECK_EQ(p.capp.goaway_err, ZTM_H2_INTERNAL_ERROR);
    CHECK(ztm_h2_idle(p.s));
    CHECK_EQ(ztm_h2_feed(p.s, (const uint8_t *)"x", 1), ZTM_H2_E_CLOSED);
    CHECK(c.closed || ztm_h2_idle(p.c) || !ztm_h2_want_write(p.c));
    pair_close(&p);
}

static void test_protocol_errors(void)
{
    /* not HTTP/2 at all */
    ztm_h2_session_t *s;
    tapp_t app = {0};
    CHECK_EQ(ztm_h2_new(&s, ZTM_H2_SERVER, &tapp_callbacks, &app, NULL), 0);
    const char *get = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    CHECK_EQ(ztm_h2_feed(s, (const uint8_t *)get, strlen(get)), ZTM_H2_E_PROTOCOL);
    CHECK_EQ(ztm_h2_feed(s, (const uint8_t *)get, strlen(get)), ZTM_H2_E_PROTOCOL);
    size_t len = 0, total = 0;
    uint32_t code = 0;
    while (ztm_h2_want_write(s)) {
        CHECK_EQ(ztm_h2_flush(s, pump_buf + total, 64, &len), 0);
        total += len;
        if (!len)
            break;
    }
    CHECK_EQ(find_goaway(pump_buf, total, &code), 1);
    CHECK_EQ(code, ZTM_H2_PROTOCOL_ERROR);
    CHECK(ztm_h2_idle(s));
    ztm_h2_free(s);

    /* a frame on stream 0 that must not be there */
    pair_t p;
    pair_open(&p, NULL, NULL);
    pump(&p);
    uint8_t raw[64];
    size_t n = frame(raw, 0, 0, 0, "x", 1); /* DATA on stream 0 */
    CHECK_EQ(ztm_h2_feed(p.s, raw, n), 0);  /* nghttp2 queues GOAWAY only */
    CHECK(ztm_h2_want_write(p.s) && !ztm_h2_idle(p.s));
    pump(&p);
    CHECK_EQ(ztm_h2_feed(p.s, raw, n), ZTM_H2_E_PROTOCOL);
    CHECK_EQ(p.capp.goaway_err, ZTM_H2_PROTOCOL_ERROR);
    CHECK(ztm_h2_idle(p.s));
    pair_close(&p);

    /* bad arguments */
    CHECK_EQ(ztm_h2_new(&s, (ztm_h2_role_t)7, &tapp_callbacks, NULL, NULL), -EINVAL);
    ztm_h2_config_t bad = {.conn_window = 100};
    CHECK_EQ(ztm_h2_new(&s, ZTM_H2_SERVER, &tapp_callbacks, NULL, &bad), -EINVAL);
    CHECK(!strcmp(ztm_h2_strerror(ZTM_H2_E_CALM), "calm"));
}

/* Runs every test, or the ones named on the command line. */
int main(int argc, char **argv)
{
    static const struct {
        const char *name;
        void (*fn)(void);
    } tests[] = {
        {"get_sizes", test_get_sizes}, {"flush_fill", test_flush_fill},
        {"echo", test_echo},           {"concurrent", test_concurrent},
        {"trailers", test_trailers},   {"flow_control", test_flow_control},
        {"reset", test_reset},         {"goaway", test_goaway},
        {"ping", test_ping},           {"rapid_reset", test_rapid_reset},
        {"floods", test_floods},       {"header_limits", test_header_limits},
        {"misc", test_misc},           {"protocol_errors", test_protocol_errors},
    };
    for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); i++) {
        bool run = argc < 2;
        for (int a = 1; a < argc; a++)
            run |= !strcmp(argv[a], tests[i].name);
        if (run)
            tests[i].fn();
    }
    return check_done("unit.h2");
}
