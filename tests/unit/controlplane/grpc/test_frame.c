/* controlplane/grpc/frame: status codes, the message decoder fed in every
 * possible chunking, limits and flags, grpc-timeout, grpc-message
 * percent-encoding, content-type and :path. */
#include "controlplane/grpc/frame.h"

#include <errno.h>

#include "test.h"

static void test_status(void)
{
    static const char *const names[] = {
        "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
        "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
        "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
        "UNAUTHENTICATED"};
    CHECK_INT(sizeof(names) / sizeof(names[0]), ZTM_GRPC_STATUS_COUNT);
    for (int i = 0; i < ZTM_GRPC_STATUS_COUNT; i++) {
        CHECK_STR(ztm_grpc_status_name(i), names[i]);
        ztm_grpc_status_t s = ZTM_GRPC_OK;
        CHECK(ztm_grpc_status_from_name(names[i], strlen(names[i]), &s));
        CHECK_INT(s, i);
    }
    CHECK(ztm_grpc_status_name(-1) == NULL);
    CHECK(ztm_grpc_status_name(17) == NULL);
    CHECK_INT(ZTM_GRPC_UNAUTHENTICATED, 16);
    CHECK_INT(ZTM_GRPC_RESOURCE_EXHAUSTED, 8);
    CHECK_INT(ZTM_GRPC_UNIMPLEMENTED, 12);
    ztm_grpc_status_t s;
    CHECK(!ztm_grpc_status_from_name("ok", 2, &s));
    CHECK(!ztm_grpc_status_from_name("OKAY", 4, &s));
    CHECK(!ztm_grpc_status_from_name("O", 1, &s));

    CHECK_INT(ztm_grpc_status_parse("0", 1, &s), 0);
    CHECK_INT(s, ZTM_GRPC_OK);
    CHECK_INT(ztm_grpc_status_parse("16", 2, &s), 0);
    CHECK_INT(s, ZTM_GRPC_UNAUTHENTICATED);
    CHECK_INT(ztm_grpc_status_parse("17", 2, &s), 0);
    CHECK_INT(s, ZTM_GRPC_UNKNOWN);
    CHECK_INT(ztm_grpc_status_parse("999", 3, &s), 0);
    CHECK_INT(s, ZTM_GRPC_UNKNOWN);
    CHECK_INT(ztm_grpc_status_parse("", 0, &s), -EINVAL);
    CHECK_INT(ztm_grpc_status_parse("1000", 4, &s), -EINVAL);
    CHECK_INT(ztm_grpc_status_parse("-1", 2, &s), -EINVAL);
    CHECK_INT(ztm_grpc_status_parse(" 1", 2, &s), -EINVAL);
    CHECK_INT(ztm_grpc_status_parse("1a", 2, &s), -EINVAL);

    CHECK_INT(ztm_grpc_error_status(ZTM_GRPC_E_TOO_LARGE), ZTM_GRPC_RESOURCE_EXHAUSTED);
    CHECK_INT(ztm_grpc_error_status(-ENOMEM), ZTM_GRPC_RESOURCE_EXHAUSTED);
    CHECK_INT(ztm_grpc_error_status(ZTM_GRPC_E_COMPRESSED), ZTM_GRPC_UNIMPLEMENTED);
    CHECK_INT(ztm_grpc_error_status(ZTM_GRPC_E_BAD_FLAGS), ZTM_GRPC_INTERNAL);
    CHECK_INT(ztm_grpc_error_status(ZTM_GRPC_E_TRUNCATED), ZTM_GRPC_INTERNAL);
    CHECK_INT(ztm_grpc_error_status(0), ZTM_GRPC_OK);
    CHECK(strstr(ztm_grpc_strerror(ZTM_GRPC_E_TOO_LARGE), "maximum") != NULL);
    CHECK(strlen(ztm_grpc_strerror(-EINVAL)) > 0);
    CHECK_STR(ztm_grpc_strerror(-99999), "unknown error");
}

static void test_prefix(void)
{
    uint8_t p[5];
    ztm_grpc_prefix_encode(p, false, 0x01020304);
    CHECK_MEM(p, "\x00\x01\x02\x03\x04", 5);
    ztm_grpc_prefix_encode(p, true, 0xffffffffu);
    CHECK_MEM(p, "\x01\xff\xff\xff\xff", 5);
    ztm_grpc_prefix_encode(p, false, 0);
    CHECK_MEM(p, "\x00\x00\x00\x00\x00", 5);
}

/* Builds a stream of messages: message i has length lens[i] and bytes
 * (i * 31 + k) & 0xff. Returns the stream's length. */
static size_t build_stream(uint8_t *out, const size_t *lens, size_t n)
{
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        ztm_grpc_prefix_encode(out + off, false, (uint32_t)lens[i]);
        off += 5;
        for (size_t k = 0; k < lens[i]; k++)
            out[off++] = (uint8_t)(i * 31 + k);
    }
    return off;
}

static bool body_ok(const ztm_grpc_message_t *m, size_t i, size_t len)
{
    if (m->len != len || m->data == NULL)
        return false;
    for (size_t k = 0; k < len; k++)
        if (m->data[k] != (uint8_t)(i * 31 + k))
            return false;
    return true;
}

/* Feeds STREAM in chunks whose sizes come from NEXT_CHUNK; checks every
 * message. Returns the number of messages seen, or a negative error. */
static long feed_chunked(const uint8_t *stream, size_t len, const size_t *lens, size_t n,
                         size_t (*next_chunk)(void *), void *arg)
{
    ztm_grpc_decoder_t d;
    ztm_grpc_decoder_init(&d, 0, false);
    size_t off = 0, seen = 0;
    long ret = 0;
    while (off < len) {
        size_t c = next_chunk(arg);
        if (c > len - off)
            c = len - off;
        /* copy to a heap chunk of exactly C bytes so ASan catches over-reads */
        uint8_t *chunk = malloc(c ? c : 1);
        memcpy(chunk, stream + off, c);
        size_t used = 0;
        do {
            ztm_grpc_message_t m;
            bool ready;
            ssize_t r = ztm_grpc_decoder_feed(&d, chunk + used, c - used, &m, &ready);
            if (r < 0) {
                ret = r;
                free(chunk);
                goto out;
            }
            used += (size_t)r;
            if (ready) {
                if (seen >= n || !body_ok(&m, seen, lens[seen])) {
                    fprintf(stderr, "message %zu wrong\n", seen);
                    test_failures++;
                }
                seen++;
            }
        } while (used < c);
        free(chunk);
        off += c;
    }
    ret = ztm_grpc_decoder_finish(&d) == 0 ? (long)seen : ZTM_GRPC_E_TRUNCATED;
out:
    ztm_grpc_decoder_free(&d);
    return ret;
}

static size_t chunk_fixed(void *arg)
{
    return *(size_t *)arg;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static size_t chunk_random(void *arg)
{
    size_t max = *(size_t *)arg;
    return (size_t)(rng() % max);
}

static void test_decoder_chunking(void)
{
    static const size_t lens[] = {0, 1, 4, 5, 0, 0, 300, 17, 4096, 2, 0, 70000, 3};
    size_t n = sizeof(lens) / sizeof(lens[0]);
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += 5 + lens[i];
    uint8_t *stream = malloc(total);
    CHECK_INT(build_stream(stream, lens, n), total);

    /* every fixed chunk size from 1 to 12, and larger ones */
    static const size_t sizes[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 100, 4101, 65536, 1 << 20};
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        size_t c = sizes[i];
        CHECK_INT(feed_chunked(stream, total, lens, n, chunk_fixed, &c), (long)n);
    }
    /* random chunkings, including empty chunks */
    for (int round = 0; round < 200; round++) {
        size_t max = 1 + (size_t)(rng() % 9000);
        CHECK_INT(feed_chunked(stream, total, lens, n, chunk_random, &max), (long)n);
    }
    /* truncated at every point inside the last two messages */
    for (size_t cut = total - (5 + 3) - (5 + 70000) + 1; cut < total; cut += 997) {
        size_t c = 4096;
        CHECK_INT(feed_chunked(stream, cut, lens, n, chunk_fixed, &c), ZTM_GRPC_E_TRUNCATED);
    }
    for (size_t cut = total - 8 + 1; cut < total; cut++) {
        size_t c = 4096;
        CHECK_INT(feed_chunked(stream, cut, lens, n, chunk_fixed, &c), ZTM_GRPC_E_TRUNCATED);
    }
    free(stream);
}

static void test_decoder_zero_copy(void)
{
    uint8_t buf[5 + 3 + 5 + 0];
    ztm_grpc_prefix_encode(buf, false, 3);
    memcpy(buf + 5, "abc", 3);
    ztm_grpc_prefix_encode(buf + 8, false, 0);
    ztm_grpc_decoder_t d;
    ztm_grpc_decoder_init(&d, 0, false);
    ztm_grpc_message_t m;
    bool ready;
    CHECK_INT(ztm_grpc_decoder_feed(&d, buf, sizeof(buf), &m, &ready), 8);
    CHECK(ready);
    CHECK(m.data == buf + 5); /* no copy for a message that arrived whole */
    CHECK_INT(m.len, 3);
    CHECK(!m.compressed);
    CHECK_INT(ztm_grpc_decoder_feed(&d, buf + 8, 5, &m, &ready), 5);
    CHECK(ready);
    CHECK(m.data != NULL);
    CHECK_INT(m.len, 0);
    CHECK_INT(ztm_grpc_decoder_feed(&d, buf, 0, &m, &ready), 0);
    CHECK(!ready);
    CHECK(d.buf == NULL); /* nothing was buffered */
    CHECK_INT(ztm_grpc_decoder_finish(&d), 0);
    ztm_grpc_decoder_free(&d);
}

static ssize_t feed_all(ztm_grpc_decoder_t *d, const uint8_t *p, size_t len, int *messages)
{
    size_t used = 0;
    while (used < len) {
        ztm_grpc_message_t m;
        bool ready;
        ssize_t r = ztm_grpc_decoder_feed(d, p + used, len - used, &m, &ready);
        if (r < 0)
            return r;
        used += (size_t)r;
        *messages += ready;
    }
    return (ssize_t)used;
}

static void test_decoder_limits(void)
{
    ztm_grpc_decoder_t d;
    uint8_t p[5];
    int msgs = 0;

    /* exactly at the limit: fine; one over: refused at the prefix */
    ztm_grpc_decoder_init(&d, 10, false);
    uint8_t ok[15];
    ztm_grpc_prefix_encode(ok, false, 10);
    memset(ok + 5, 'x', 10);
    CHECK_INT(feed_all(&d, ok, sizeof(ok), &msgs), 15);
    CHECK_INT(msgs, 1);
    ztm_grpc_prefix_encode(p, false, 11);
    CHECK_INT(feed_all(&d, p, 5, &msgs), ZTM_GRPC_E_TOO_LARGE);
    /* the error sticks, even for good input */
    CHECK_INT(feed_all(&d, ok, sizeof(ok), &msgs), ZTM_GRPC_E_TOO_LARGE);
    CHECK_INT(ztm_grpc_decoder_finish(&d), ZTM_GRPC_E_TOO_LARGE);
    ztm_grpc_decoder_free(&d);

    /* the prefix alone, byte by byte, is enough to refuse */
    ztm_grpc_decoder_init(&d, 10, false);
    ztm_grpc_prefix_encode(p, false, 0xffffffffu);
    ztm_grpc_message_t m;
    bool ready;
    for (int i = 0; i < 4; i++)
        CHECK_INT(ztm_grpc_decoder_feed(&d, p + i, 1, &m, &ready), 1);
    CHECK_INT(ztm_grpc_decoder_feed(&d, p + 4, 1, &m, &ready), ZTM_GRPC_E_TOO_LARGE);
    ztm_grpc_decoder_free(&d);

    /* the default limit is 4 MiB: 4 MiB passes, 4 MiB + 1 does not */
    ztm_grpc_decoder_init(&d, 0, false);
    size_t big = 4u << 20;
    uint8_t *b = calloc(1, big + 5);
    ztm_grpc_prefix_encode(b, false, (uint32_t)big);
    msgs = 0;
    for (size_t off = 0; off < big + 5; off += 16384) { /* as DATA frames */
        size_t c = big + 5 - off < 16384 ? big + 5 - off : 16384;
        CHECK_INT(feed_all(&d, b + off, c, &msgs), (ssize_t)c);
    }
    CHECK_INT(msgs, 1);
    ztm_grpc_prefix_encode(b, false, (uint32_t)big + 1);
    CHECK_INT(feed_all(&d, b, 5, &msgs), ZTM_GRPC_E_TOO_LARGE);
    CHECK(d.buf == NULL); /* freed on error */
    ztm_grpc_decoder_free(&d);
    free(b);
}

static void test_decoder_flags(void)
{
    ztm_grpc_decoder_t d;
    uint8_t msg[8];
    int msgs = 0;
    ztm_grpc_prefix_encode(msg, true, 3);
    memcpy(msg + 5, "zzz", 3);

    /* compressed, no grpc-encoding we can decode */
    ztm_grpc_decoder_init(&d, 0, false);
    CHECK_INT(feed_all(&d, msg, sizeof(msg), &msgs), ZTM_GRPC_E_COMPRESSED);
    CHECK_INT(ztm_grpc_error_status(ZTM_GRPC_E_COMPRESSED), ZTM_GRPC_UNIMPLEMENTED);
    ztm_grpc_decoder_free(&d);

    /* compressed, and the caller decompresses */
    ztm_grpc_decoder_init(&d, 0, true);
    ztm_grpc_message_t m;
    bool ready;
    CHECK_INT(ztm_grpc_decoder_feed(&d, msg, sizeof(msg), &m, &ready), 8);
    CHECK(ready && m.compressed && m.len == 3);
    ztm_grpc_decoder_free(&d);

    /* flags other than 0/1 */
    for (int f = 2; f < 256; f += 37) {
        msg[0] = (uint8_t)f;
        ztm_grpc_decoder_init(&d, 0, true);
        CHECK_INT(feed_all(&d, msg, sizeof(msg), &msgs), ZTM_GRPC_E_BAD_FLAGS);
        ztm_grpc_decoder_free(&d);
    }
}

static void test_decoder_finish(void)
{
    ztm_grpc_decoder_t d;
    ztm_grpc_message_t m;
    bool ready;
    uint8_t p[7];
    ztm_grpc_prefix_encode(p, false, 2);
    p[5] = 'a';
    p[6] = 'b';
    for (size_t cut = 0; cut <= sizeof(p); cut++) {
        ztm_grpc_decoder_init(&d, 0, false);
        if (cut)
            CHECK_INT(ztm_grpc_decoder_feed(&d, p, cut, &m, &ready), (ssize_t)cut);
        CHECK_INT(ztm_grpc_decoder_finish(&d),
                  cut == 0 || cut == sizeof(p) ? 0 : ZTM_GRPC_E_TRUNCATED);
        ztm_grpc_decoder_free(&d);
    }
}

static void check_timeout(const char *v, int ret, uint64_t ns)
{
    uint64_t got = 12345;
    int r = ztm_grpc_timeout_parse(v, strlen(v), &got);
    if (r != ret || (ret == 0 && got != ns)) {
        fprintf(stderr, "timeout \"%s\": ret %d ns %" PRIu64 ", expected %d %" PRIu64 "\n", v, r,
                got, ret, ns);
        test_failures++;
    }
}

static void test_timeout(void)
{
    check_timeout("100m", 0, 100000000ull);
    check_timeout("5S", 0, 5000000000ull);
    check_timeout("1H", 0, 3600000000000ull);
    check_timeout("2M", 0, 120000000000ull);
    check_timeout("7u", 0, 7000ull);
    check_timeout("9n", 0, 9ull);
    check_timeout("0n", 0, 0);
    check_timeout("00000001S", 0, 1000000000ull);  /* 8 digits */
    check_timeout("99999999H", 0, UINT64_MAX);     /* saturates */
    check_timeout("99999999n", 0, 99999999ull);
    check_timeout("5124095H", 0, 5124095ull * 3600000000000ull);
    check_timeout("5124096H", 0, UINT64_MAX);
    check_timeout("123456789S", -EINVAL, 0); /* 9 digits */
    check_timeout("", -EINVAL, 0);
    check_timeout("S", -EINVAL, 0);
    check_timeout("10", -EINVAL, 0);
    check_timeout("10s", -EINVAL, 0);
    check_timeout("10h", -EINVAL, 0);
    check_timeout("10x", -EINVAL, 0);
    check_timeout(" 1S", -EINVAL, 0);
    check_timeout("1S ", -EINVAL, 0);
    check_timeout("-1S", -EINVAL, 0);
    check_timeout("+1S", -EINVAL, 0);
    check_timeout("1.5S", -EINVAL, 0);
    check_timeout("1SS", -EINVAL, 0);
    /* the value is not NUL-terminated: only LEN bytes count */
    uint64_t ns;
    CHECK_INT(ztm_grpc_timeout_parse("15Sxyz", 3, &ns), 0);
    CHECK(ns == 15000000000ull);

    char out[ZTM_GRPC_TIMEOUT_MAX];
    CHECK_INT(ztm_grpc_timeout_format(0, out), 2);
    CHECK_STR(out, "0n");
    ztm_grpc_timeout_format(1500, out);
    CHECK_STR(out, "1500n");
    ztm_grpc_timeout_format(99999999, out);
    CHECK_STR(out, "99999999n");
    ztm_grpc_timeout_format(100000000, out);
    CHECK_STR(out, "100000u");
    ztm_grpc_timeout_format(100000001, out);
    CHECK_STR(out, "100001u"); /* rounded up */
    ztm_grpc_timeout_format(UINT64_MAX, out);
    CHECK_STR(out, "5124096H");
    /* round trips never shorten the deadline and stay within one unit */
    for (int i = 0; i < 1000; i++) {
        uint64_t v = rng() >> (rng() % 64);
        size_t len = ztm_grpc_timeout_format(v, out);
        CHECK(len < ZTM_GRPC_TIMEOUT_MAX);
        uint64_t back;
        CHECK_INT(ztm_grpc_timeout_parse(out, len, &back), 0);
        CHECK(back >= v);
    }
}

static void check_encode(const char *in, size_t len, const char *want)
{
    char out[256];
    size_t n = ztm_grpc_message_encode(in, len, out, sizeof(out));
    CHECK_INT(n, strlen(want));
    CHECK_STR(out, want);
}

static void check_decode(const char *in, const char *want, size_t want_len)
{
    char out[256];
    size_t n = ztm_grpc_message_decode(in, strlen(in), out, sizeof(out));
    CHECK_INT(n, want_len);
    CHECK_MEM(out, want, want_len);
    CHECK(out[n] == 0);
}

static void test_message_encoding(void)
{
    check_encode("hello world", 11, "hello world");
    check_encode("50%", 3, "50%25");
    check_encode("a\nb\r\t", 5, "a%0Ab%0D%09");
    check_encode("caf\xc3\xa9", 5, "caf%C3%A9");
    check_encode("\x7f\x7e\x20\x1f", 4, "%7F~ %1F");
    check_encode("nul\0x", 5, "nul%00x");
    check_encode("", 0, "");

    check_decode("hello world", "hello world", 11);
    check_decode("50%25", "50%", 3);
    check_decode("caf%C3%A9", "caf\xc3\xa9", 5);
    check_decode("caf%c3%a9", "caf\xc3\xa9", 5);   /* lower-case hex */
    check_decode("%G1", "%G1", 3);                 /* invalid: kept */
    check_decode("ab%4", "ab%4", 4);               /* cut short: kept */
    check_decode("%", "%", 1);
    check_decode("%%41", "%A", 2);
    check_decode("nul%00x", "nul\0x", 5);

    /* snprintf-style truncation */
    char small[6];
    CHECK_INT(ztm_grpc_message_encode("a%b%c", 5, small, sizeof(small)), 9);
    CHECK_STR(small, "a%25b");
    CHECK_INT(ztm_grpc_message_encode("abc", 3, NULL, 0), 3);
    char one[1] = {'x'};
    CHECK_INT(ztm_grpc_message_encode("abc", 3, one, 1), 3);
    CHECK(one[0] == 0);
    CHECK_INT(ztm_grpc_message_decode("abc%41", 6, small, 3), 4);
    CHECK_STR(small, "ab");

    /* every byte value survives a round trip */
    char all[256], enc[3 * 256 + 1], dec[257];
    for (int i = 0; i < 256; i++)
        all[i] = (char)i;
    size_t n = ztm_grpc_message_encode(all, 256, enc, sizeof(enc));
    CHECK(n < sizeof(enc));
    for (size_t i = 0; i < n; i++)
        CHECK(enc[i] >= 0x20 && enc[i] <= 0x7e);
    CHECK_INT(ztm_grpc_message_decode(enc, n, dec, sizeof(dec)), 256);
    CHECK_MEM(dec, all, 256);
}

static void test_content_type(void)
{
    static const char *const good[] = {"application/grpc", "application/grpc+proto",
                                       "APPLICATION/GRPC", "Application/Grpc+Proto",
                                       "application/grpc;charset=utf-8",
                                       "application/grpc+proto; x=y"};
    static const char *const bad[] = {"application/grpc+json", "application/grpcx",
                                      "application/grpc+protox", "application/json",
                                      "application/grp", "", "application/grpc+",
                                      " application/grpc", "text/plain"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        CHECK(ztm_grpc_content_type_ok(good[i], strlen(good[i])));
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (ztm_grpc_content_type_ok(bad[i], strlen(bad[i])))
            fprintf(stderr, "accepted content-type \"%s\"\n", bad[i]);
        CHECK(!ztm_grpc_content_type_ok(bad[i], strlen(bad[i])));
    }
}

static void test_path(void)
{
    ztm_grpc_path_t p;
    const char *s = "/ztm.v1.Mesh/GetEndpoint";
    CHECK_INT(ztm_grpc_path_parse(s, strlen(s), &p), 0);
    CHECK(p.service_len == 11 && memcmp(p.service, "ztm.v1.Mesh", 11) == 0);
    CHECK(p.method_len == 11 && memcmp(p.method, "GetEndpoint", 11) == 0);
    CHECK_INT(ztm_grpc_path_parse("/a/b", 4, &p), 0);
    static const char *const bad[] = {"", "/", "//", "/a/", "//b", "/a", "a/b", "/a/b/c",
                                      "/a/b?x=1", "/a/b#f", "/ a/b", "/a/\x01", "/a/\xc3\xa9"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CHECK_INT(ztm_grpc_path_parse(bad[i], strlen(bad[i]), &p), -EINVAL);
    /* only LEN bytes count */
    CHECK_INT(ztm_grpc_path_parse("/a/bc/d", 5, &p), 0);
    CHECK(p.method_len == 2);
}

int main(void)
{
    test_status();
    test_prefix();
    test_decoder_chunking();
    test_decoder_zero_copy();
    test_decoder_limits();
    test_decoder_flags();
    test_decoder_finish();
    test_timeout();
    test_message_encoding();
    test_content_type();
    test_path();
    TEST_END();
}
