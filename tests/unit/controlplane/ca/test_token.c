/* controlplane/ca/token: invite tokens round trip; every truncation,
 * extension and bit flip is refused with the error a user can act on;
 * crafted bodies with valid check bytes still meet strict field checks. */
#include "controlplane/ca/token.h"
#include "controlplane/store/file.h"

#include <openssl/sha.h>

#include "test.h"

static void fill(ztm_token_t *t, size_t hubs)
{
    memset(t, 0, sizeof(*t));
    t->role = ZTM_ROLE_AGENT;
    t->expires = 1750003600;
    for (int i = 0; i < 32; i++)
        t->pin[i] = (uint8_t)(0xa0 + i);
    ztm_token_new_secret(t);
    strcpy(t->mesh, "m1");
    strcpy(t->name, "laptop");
    t->n_hubs = hubs;
    for (size_t i = 0; i < hubs; i++)
        snprintf(t->hubs[i], sizeof(t->hubs[i]), "hub%zu.example.com:%zu", i, 8000 + i);
}

static bool same(const ztm_token_t *a, const ztm_token_t *b)
{
    if (a->role != b->role || a->expires != b->expires || memcmp(a->pin, b->pin, 32) ||
        memcmp(a->secret, b->secret, 32) || strcmp(a->mesh, b->mesh) ||
        strcmp(a->name, b->name) || a->n_hubs != b->n_hubs)
        return false;
    for (size_t i = 0; i < a->n_hubs; i++)
        if (strcmp(a->hubs[i], b->hubs[i]))
            return false;
    return true;
}

/* Our own base64url, to craft bodies the encoder would refuse to make. */
static size_t b64url(const uint8_t *in, size_t len, char *out)
{
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t n = 0;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < len)
            v |= in[i + 2];
        out[n++] = a[v >> 18];
        out[n++] = a[(v >> 12) & 63];
        if (i + 1 < len)
            out[n++] = a[(v >> 6) & 63];
        if (i + 2 < len)
            out[n++] = a[v & 63];
    }
    out[n] = 0;
    return n;
}

static int decode_str(const char *s, ztm_token_t *t)
{
    return ztm_token_decode(s, strlen(s), t);
}

/* Builds "ztm1." + base64url(body + check) where check is computed right. */
static int decode_body(const uint8_t *body, size_t n, ztm_token_t *t)
{
    uint8_t buf[4096];
    memcpy(buf, body, n);
    uint8_t d[32];
    SHA256(body, n, d);
    memcpy(buf + n, d, 4);
    char s[6000] = "ztm1.";
    b64url(buf, n + 4, s + 5);
    return decode_str(s, t);
}

static size_t good_body(uint8_t *b, uint8_t role, const char *mesh, const char *name,
                        const char *hub)
{
    size_t n = 0;
    b[n++] = 1;
    b[n++] = role;
    memset(b + n, 0, 8);
    b[n + 7] = 100;
    n += 8;
    memset(b + n, 7, 64); /* pin and secret */
    n += 64;
    b[n++] = (uint8_t)strlen(mesh);
    memcpy(b + n, mesh, strlen(mesh));
    n += strlen(mesh);
    b[n++] = (uint8_t)strlen(name);
    memcpy(b + n, name, strlen(name));
    n += strlen(name);
    b[n++] = 1;
    b[n++] = (uint8_t)strlen(hub);
    memcpy(b + n, hub, strlen(hub));
    n += strlen(hub);
    return n;
}

static void test_round_trip(void)
{
    for (size_t hubs = 1; hubs <= ZTM_TOKEN_MAX_HUBS; hubs += 7) {
        ztm_token_t t, back;
        fill(&t, hubs);
        char *s;
        size_t len;
        REQUIRE(ztm_token_encode(&t, &s, &len) == 0);
        CHECK_INT(strlen(s), len);
        CHECK(strncmp(s, "ztm1.", 5) == 0);
        CHECK(len <= ZTM_TOKEN_MAX_LEN);
        for (size_t i = 5; i < len; i++)
            CHECK(strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", s[i]));
        CHECK_INT(ztm_token_decode(s, len, &back), 0);
        CHECK(same(&t, &back));
        /* a pasted line: spaces and a newline around it */
        char pasted[4000];
        snprintf(pasted, sizeof(pasted), "  %s\r\n", s);
        CHECK_INT(decode_str(pasted, &back), 0);
        CHECK(same(&t, &back));
        ztm_file_free_secret(s, len);
    }

    /* the longest possible token fits the advertised bound */
    ztm_token_t t, back;
    fill(&t, ZTM_TOKEN_MAX_HUBS);
    memset(t.mesh, 'm', ZTM_MESH_MAX);
    memset(t.name, 'n', ZTM_NAME_MAX);
    for (int i = 0; i < ZTM_TOKEN_MAX_HUBS; i++) {
        /* 4 labels of 61 + ':65535' = 255 */
        char *h = t.hubs[i];
        memset(h, 'a', 249);
        h[61] = h[123] = h[185] = '.';
        strcpy(h + 249, ":65535");
        CHECK(ztm_token_hub_valid(h));
    }
    char *s;
    size_t len;
    REQUIRE(ztm_token_encode(&t, &s, &len) == 0);
    CHECK(len <= ZTM_TOKEN_MAX_LEN);
    CHECK_INT(ztm_token_decode(s, len, &back), 0);
    CHECK(same(&t, &back));
    ztm_file_free_secret(s, len);

    /* IPv6 and IPv4 hubs */
    fill(&t, 2);
    strcpy(t.hubs[0], "[2001:db8::1]:443");
    strcpy(t.hubs[1], "192.0.2.7:8443");
    t.role = ZTM_ROLE_ADMIN;
    REQUIRE(ztm_token_encode(&t, &s, &len) == 0);
    CHECK_INT(ztm_token_decode(s, len, &back), 0);
    CHECK(same(&t, &back));
    ztm_token_wipe(&back);
    CHECK(back.n_hubs == 0 && back.secret[0] == 0);
    ztm_file_free_secret(s, len);
}

static void test_encode_refusals(void)
{
    ztm_token_t t;
    char *s;
    size_t len;
    fill(&t, 0);
    CHECK_INT(ztm_token_encode(&t, &s, &len), ZTM_TOKEN_E_FIELD);
    fill(&t, 1);
    t.n_hubs = ZTM_TOKEN_MAX_HUBS + 1;
    CHECK_INT(ztm_token_encode(&t, &s, &len), ZTM_TOKEN_E_FIELD);
    fill(&t, 1);
    strcpy(t.hubs[0], "no-port");
    CHECK_INT(ztm_token_encode(&t, &s, &len), ZTM_TOKEN_E_FIELD);
    fill(&t, 1);
    t.role = ZTM_ROLE_NONE;
    CHECK_INT(ztm_token_encode(&t, &s, &len), ZTM_TOKEN_E_FIELD);
    fill(&t, 1);
    t.expires = 0;
    CHECK_INT(ztm_token_encode(&t, &s, &len), ZTM_TOKEN_E_FIELD);
    fill(&t, 1);
    strcpy(t.mesh, "Bad");
    CHECK_INT(ztm_token_encode(&t, &s, &len), ZTM_TOKEN_E_FIELD);
    fill(&t, 1);
    strcpy(t.name, "");
    CHECK_INT(ztm_token_encode(&t, &s, &len), ZTM_TOKEN_E_FIELD);
}

static void test_hub_valid(void)
{
    static const char *const good[] = {"h:1", "hub.example.com:443", "127.0.0.1:65535",
                                       "[::1]:8443", "[2001:db8::1]:1", "a-b.c:80"};
    static const char *const bad[] = {"", "h", "h:", ":80", "h:0", "h:65536", "h:080",
                                      "h:123456", "h:8a", "h :80", "-h:80", "h-:80", "a..b:80",
                                      "[::1:80", "[zz]:80", "::1:80", "h_x:80", "[]:80",
                                      "h:80 ", "h/x:80"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        if (!ztm_token_hub_valid(good[i]))
            fprintf(stderr, "refused hub \"%s\"\n", good[i]);
        CHECK(ztm_token_hub_valid(good[i]));
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (ztm_token_hub_valid(bad[i]))
            fprintf(stderr, "accepted hub \"%s\"\n", bad[i]);
        CHECK(!ztm_token_hub_valid(bad[i]));
    }
    char longest[300];
    memset(longest, 'a', 250);
    longest[61] = longest[123] = longest[185] = '.';
    strcpy(longest + 250, ":65535"); /* 256 characters */
    CHECK(!ztm_token_hub_valid(longest));
}

static void test_damage(void)
{
    ztm_token_t t, back;
    fill(&t, 2);
    char *s;
    size_t len;
    REQUIRE(ztm_token_encode(&t, &s, &len) == 0);

    /* every truncation is refused: as incomplete, or as not base64url when
     * the length cannot be one */
    for (size_t cut = 0; cut < len; cut++) {
        int r = ztm_token_decode(s, cut, &back);
        if (cut < 5)
            CHECK_INT(r, ZTM_TOKEN_E_PREFIX);
        else if ((cut - 5) % 4 == 1)
            CHECK_INT(r, ZTM_TOKEN_E_ENCODING);
        else if (r != ZTM_TOKEN_E_TRUNCATED && r != ZTM_TOKEN_E_ENCODING) {
            fprintf(stderr, "cut at %zu: %d\n", cut, r);
            test_failures++;
        }
    }
    /* every appended character is refused */
    char *longer = malloc(len + 8);
    for (const char *c = "AQgw-_"; *c; c++) {
        memcpy(longer, s, len);
        for (size_t extra = 1; extra <= 4; extra++) {
            memset(longer + len, *c, extra);
            int r = ztm_token_decode(longer, len + extra, &back);
            CHECK(r == ZTM_TOKEN_E_TRAILING || r == ZTM_TOKEN_E_ENCODING);
        }
    }
    free(longer);
    /* every single-character change of the base64 text is refused */
    char *alt = malloc(len + 1);
    int checks = 0;
    for (size_t i = 5; i < len; i++) {
        memcpy(alt, s, len + 1);
        alt[i] = alt[i] == 'A' ? 'B' : 'A';
        int r = ztm_token_decode(alt, len, &back);
        if (r == 0) {
            fprintf(stderr, "change at %zu accepted\n", i);
            test_failures++;
        }
        checks += r == ZTM_TOKEN_E_CHECK;
    }
    CHECK(checks > (int)(len - 5) / 2); /* most damage is caught by the check bytes */
    free(alt);

    static const char *const bad[] = {"", "ztm1.", "ztm2.AAAA", "ZTM1.AAAA", "ztm1",
                                      "ztm1.AAAA=", "ztm1.AA+A", "ztm1.AA/A", "ztm1.A",
                                      "ztm1.AAA AAA", "xztm1.AAAA"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CHECK(decode_str(bad[i], &back) < 0);
    CHECK_INT(decode_str("ztm2.AAAA", &back), ZTM_TOKEN_E_PREFIX);
    CHECK_INT(decode_str("ztm1.AA=A", &back), ZTM_TOKEN_E_ENCODING);
    CHECK_INT(decode_str("ztm1.AB", &back), ZTM_TOKEN_E_ENCODING); /* non-zero unused bits */
    CHECK_INT(decode_str("ztm1.AQ", &back), ZTM_TOKEN_E_TRUNCATED); /* version 1, then nothing */
    CHECK_INT(decode_str("ztm1.Ag", &back), ZTM_TOKEN_E_VERSION);   /* version 2 */
    /* far too long */
    char *huge = malloc(ZTM_TOKEN_MAX_LEN + 100);
    memcpy(huge, "ztm1.", 5);
    memset(huge + 5, 'A', ZTM_TOKEN_MAX_LEN + 90);
    CHECK_INT(ztm_token_decode(huge, ZTM_TOKEN_MAX_LEN + 95, &back), ZTM_TOKEN_E_TRAILING);
    free(huge);
    /* failed decodes leave nothing behind */
    CHECK(back.secret[0] == 0 && back.n_hubs == 0);
    ztm_file_free_secret(s, len);
}

static void test_crafted(void)
{
    uint8_t b[1024];
    ztm_token_t t;
    size_t n = good_body(b, ZTM_ROLE_AGENT, "m1", "n1", "h:1");
    CHECK_INT(decode_body(b, n, &t), 0);
    CHECK_INT(t.expires, 100);
    CHECK_STR(t.hubs[0], "h:1");

    n = good_body(b, 9, "m1", "n1", "h:1");
    CHECK_INT(decode_body(b, n, &t), ZTM_TOKEN_E_FIELD); /* role */
    n = good_body(b, 0, "m1", "n1", "h:1");
    CHECK_INT(decode_body(b, n, &t), ZTM_TOKEN_E_FIELD);
    n = good_body(b, 1, "M1", "n1", "h:1");
    CHECK_INT(decode_body(b, n, &t), ZTM_TOKEN_E_FIELD); /* mesh */
    n = good_body(b, 1, "m1", "n 1", "h:1");
    CHECK_INT(decode_body(b, n, &t), ZTM_TOKEN_E_FIELD); /* name */
    n = good_body(b, 1, "m1", "n1", "h");
    CHECK_INT(decode_body(b, n, &t), ZTM_TOKEN_E_FIELD); /* hub */
    n = good_body(b, 1, "m1", "n1", "h:1");
    b[n - 5] = 0; /* hub count 0, hub bytes become trailing */
    CHECK(decode_body(b, n, &t) < 0);
    /* NUL inside a string */
    n = good_body(b, 1, "m1", "n1", "h:1");
    b[75] = 0; /* 'm' of the mesh */
    CHECK_INT(decode_body(b, n, &t), ZTM_TOKEN_E_FIELD);
    /* empty mesh */
    n = good_body(b, 1, "", "n1", "h:1");
    CHECK_INT(decode_body(b, n, &t), ZTM_TOKEN_E_FIELD);
    /* too many hubs */
    n = good_body(b, 1, "m1", "n1", "h:1");
    b[n - 5] = 9;
    CHECK(decode_body(b, n, &t) < 0);
    /* a mesh length past the limit */
    n = good_body(b, 1, "m1", "n1", "h:1");
    b[74] = 64;
    CHECK(decode_body(b, n, &t) < 0);
    /* expires beyond INT64_MAX is clamped, not negative */
    n = good_body(b, 1, "m1", "n1", "h:1");
    memset(b + 2, 0xff, 8);
    CHECK_INT(decode_body(b, n, &t), 0);
    CHECK(t.expires == INT64_MAX);
    /* expires 0 */
    n = good_body(b, 1, "m1", "n1", "h:1");
    memset(b + 2, 0, 8);
    CHECK_INT(decode_body(b, n, &t), ZTM_TOKEN_E_FIELD);
}

static void test_expiry_and_hash(void)
{
    ztm_token_t t;
    fill(&t, 1);
    CHECK_INT(ztm_token_check_expiry(&t, t.expires - 1), 0);
    CHECK_INT(ztm_token_check_expiry(&t, t.expires), ZTM_TOKEN_E_EXPIRED);
    uint8_t h[32], want[32];
    ztm_token_secret_hash(t.secret, h);
    SHA256(t.secret, 32, want);
    CHECK_MEM(h, want, 32);
    for (int e = ZTM_TOKEN_E_UNKNOWN; e <= ZTM_TOKEN_E_PREFIX; e++)
        CHECK(strlen(ztm_token_strerror(e)) > 10);
}

int main(void)
{
    test_round_trip();
    test_encode_refusals();
    test_hub_valid();
    test_damage();
    test_crafted();
    test_expiry_and_hash();
    TEST_END();
}
