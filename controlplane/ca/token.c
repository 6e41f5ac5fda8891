/* Invite tokens: encoding and strict parsing; see token.h. */
#include "controlplane/ca/token.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/mem.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#define FIXED_LEN (1 + 1 + 8 + 32 + ZTM_TOKEN_SECRET_LEN) /* version..secret */
#define CHECK_LEN 4
#define MAX_BODY                                                                           \
    (FIXED_LEN + 1 + ZTM_MESH_MAX + 1 + ZTM_NAME_MAX + 1 +                                  \
     ZTM_TOKEN_MAX_HUBS * (1 + ZTM_TOKEN_HUB_MAX) + CHECK_LEN)
#define PREFIX_LEN (sizeof(ZTM_TOKEN_PREFIX) - 1)

_Static_assert(PREFIX_LEN + (MAX_BODY * 4 + 2) / 3 <= ZTM_TOKEN_MAX_LEN, "token length bound");

const char *ztm_token_strerror(int err)
{
    switch (err) {
    case ZTM_TOKEN_E_PREFIX:
        return "not a ztm invite token (it must start with \"ztm1.\")";
    case ZTM_TOKEN_E_ENCODING:
        return "token contains characters outside base64url: copy it again, whole";
    case ZTM_TOKEN_E_TRUNCATED:
        return "token is incomplete: copy it again, whole";
    case ZTM_TOKEN_E_TRAILING:
        return "token has extra data at its end: copy it again, exactly";
    case ZTM_TOKEN_E_CHECK:
        return "token is damaged or was altered: ask for a new invite";
    case ZTM_TOKEN_E_VERSION:
        return "token version not supported by this ztm: upgrade ztm";
    case ZTM_TOKEN_E_FIELD:
        return "token holds an invalid field";
    case ZTM_TOKEN_E_EXPIRED:
        return "invite has expired: ask for a new invite";
    case ZTM_TOKEN_E_USED:
        return "invite was already used: ask for a new invite";
    case ZTM_TOKEN_E_UNKNOWN:
        return "invite unknown to this mesh (wrong, revoked or forged token)";
    default:
        return err < 0 && err > -4096 ? strerror(-err) : "unknown error";
    }
}

bool ztm_token_hub_valid(const char *hub)
{
    size_t n = strlen(hub);
    const char *colon = strrchr(hub, ':');
    if (n == 0 || n > ZTM_TOKEN_HUB_MAX || !colon)
        return false;
    /* port: 1-5 digits, 1..65535, no leading zero */
    const char *p = colon + 1;
    size_t plen = n - (size_t)(p - hub);
    if (plen == 0 || plen > 5 || p[0] == '0')
        return false;
    unsigned port = 0;
    for (size_t i = 0; i < plen; i++) {
        if (p[i] < '0' || p[i] > '9')
            return false;
        port = port * 10 + (unsigned)(p[i] - '0');
    }
    if (port == 0 || port > 65535)
        return false;
    size_t hlen = (size_t)(colon - hub);
    if (hlen == 0)
        return false;
    char host[ZTM_TOKEN_HUB_MAX + 1];
    if (hub[0] == '[') {
        uint8_t a6[16];
        if (hlen < 3 || hub[hlen - 1] != ']')
            return false;
        memcpy(host, hub + 1, hlen - 2);
        host[hlen - 2] = 0;
        return inet_pton(AF_INET6, host, a6) == 1;
    }
    /* a DNS name or IPv4 address: LDH labels */
    size_t label = 0;
    for (size_t i = 0; i <= hlen; i++) {
        char c = i < hlen ? hub[i] : '.';
        if (c == '.') {
            if (label == 0 || hub[i - 1] == '-')
                return false;
            label = 0;
            continue;
        }
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  (c == '-' && label > 0);
        if (!ok || ++label > 63)
            return false;
    }
    return true;
}

void ztm_token_new_secret(ztm_token_t *t)
{
    RAND_bytes(t->secret, sizeof(t->secret));
}

void ztm_token_secret_hash(const uint8_t secret[ZTM_TOKEN_SECRET_LEN], uint8_t out[32])
{
    SHA256(secret, ZTM_TOKEN_SECRET_LEN, out);
}

void ztm_token_wipe(ztm_token_t *t)
{
    OPENSSL_cleanse(t, sizeof(*t));
}

int ztm_token_check_expiry(const ztm_token_t *t, int64_t now)
{
    return now >= t->expires ? ZTM_TOKEN_E_EXPIRED : 0;
}

/* ---- base64url (RFC 4648 §5), no padding, canonical only ------------------ */

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static size_t b64_encode(const uint8_t *in, size_t len, char *out)
{
    size_t n = 0, i = 0;
    for (; i + 3 <= len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[n++] = b64[v >> 18];
        out[n++] = b64[(v >> 12) & 63];
        out[n++] = b64[(v >> 6) & 63];
        out[n++] = b64[v & 63];
    }
    if (len - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[n++] = b64[v >> 18];
        out[n++] = b64[(v >> 12) & 63];
    } else if (len - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[n++] = b64[v >> 18];
        out[n++] = b64[(v >> 12) & 63];
        out[n++] = b64[(v >> 6) & 63];
    }
    return n;
}

static int b64_value(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

/* Decodes LEN characters into OUT (room for LEN * 3 / 4 bytes). Refuses
 * any character outside the alphabet (padding included), a length of 1
 * mod 4, and non-zero unused bits in the last character: one body, one
 * text. Returns the byte count or ZTM_TOKEN_E_ENCODING. */
static ssize_t b64_decode(const char *in, size_t len, uint8_t *out)
{
    if (len % 4 == 1)
        return ZTM_TOKEN_E_ENCODING;
    size_t n = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        int v = b64_value(in[i]);
        if (v < 0)
            return ZTM_TOKEN_E_ENCODING;
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[n++] = (uint8_t)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    if (acc != 0)
        return ZTM_TOKEN_E_ENCODING; /* leftover bits must be zero */
    return (ssize_t)n;
}

/* ---- body ------------------------------------------------------------------ */

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

static uint64_t get_u64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

static size_t put_str(uint8_t *p, const char *s)
{
    size_t n = strlen(s);
    p[0] = (uint8_t)n;
    memcpy(p + 1, s, n);
    return n + 1;
}

static bool fields_valid(const ztm_token_t *t)
{
    if (!ztm_role_name(t->role) || t->expires <= 0 || !ztm_mesh_valid(t->mesh) ||
        !ztm_name_valid(t->name) || t->n_hubs == 0 || t->n_hubs > ZTM_TOKEN_MAX_HUBS)
        return false;
    for (size_t i = 0; i < t->n_hubs; i++)
        if (!ztm_token_hub_valid(t->hubs[i]))
            return false;
    return true;
}

int ztm_token_encode(const ztm_token_t *t, char **out, size_t *len)
{
    if (!fields_valid(t))
        return ZTM_TOKEN_E_FIELD;
    uint8_t body[MAX_BODY];
    size_t n = 0;
    body[n++] = ZTM_TOKEN_VERSION;
    body[n++] = (uint8_t)t->role;
    put_u64(body + n, (uint64_t)t->expires);
    n += 8;
    memcpy(body + n, t->pin, 32);
    n += 32;
    memcpy(body + n, t->secret, ZTM_TOKEN_SECRET_LEN);
    n += ZTM_TOKEN_SECRET_LEN;
    n += put_str(body + n, t->mesh);
    n += put_str(body + n, t->name);
    body[n++] = (uint8_t)t->n_hubs;
    for (size_t i = 0; i < t->n_hubs; i++)
        n += put_str(body + n, t->hubs[i]);
    uint8_t digest[32];
    SHA256(body, n, digest);
    memcpy(body + n, digest, CHECK_LEN);
    n += CHECK_LEN;

    int ret = 0;
    char *s = malloc(PREFIX_LEN + (n * 4 + 2) / 3 + 1);
    if (!s) {
        ret = -ENOMEM;
        goto out;
    }
    memcpy(s, ZTM_TOKEN_PREFIX, PREFIX_LEN);
    size_t slen = PREFIX_LEN + b64_encode(body, n, s + PREFIX_LEN);
    s[slen] = 0;
    *out = s;
    *len = slen;
out:
    OPENSSL_cleanse(body, sizeof(body));
    return ret;
}

/* A reader over the body that fails with TRUNCATED when it runs out. */
typedef struct {
    const uint8_t *p;
    size_t left;
} reader_t;

static const uint8_t *take(reader_t *r, size_t n)
{
    if (r->left < n)
        return NULL;
    const uint8_t *p = r->p;
    r->p += n;
    r->left -= n;
    return p;
}

static int take_str(reader_t *r, char *out, size_t max)
{
    const uint8_t *lp = take(r, 1);
    if (!lp)
        return ZTM_TOKEN_E_TRUNCATED;
    const uint8_t *s = take(r, *lp);
    if (!s)
        return ZTM_TOKEN_E_TRUNCATED;
    if (*lp == 0 || *lp > max || memchr(s, 0, *lp))
        return ZTM_TOKEN_E_FIELD;
    memcpy(out, s, *lp);
    out[*lp] = 0;
    return 0;
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

int ztm_token_decode(const char *s, size_t len, ztm_token_t *t)
{
    while (len && is_space(*s)) {
        s++;
        len--;
    }
    while (len && is_space(s[len - 1]))
        len--;
    memset(t, 0, sizeof(*t));
    if (len < PREFIX_LEN || memcmp(s, ZTM_TOKEN_PREFIX, PREFIX_LEN) != 0)
        return ZTM_TOKEN_E_PREFIX;
    s += PREFIX_LEN;
    len -= PREFIX_LEN;
    if (len > ZTM_TOKEN_MAX_LEN)
        return ZTM_TOKEN_E_TRAILING;

    uint8_t body[ZTM_TOKEN_MAX_LEN * 3 / 4 + 3];
    int ret;
    ssize_t n = b64_decode(s, len, body);
    if (n < 0) {
        ret = (int)n;
        goto out;
    }
    reader_t r = {body, (size_t)n};
    const uint8_t *fixed = take(&r, FIXED_LEN);
    ret = ZTM_TOKEN_E_TRUNCATED;
    if (!fixed) {
        /* even a cut body carries its version first */
        if (n >= 1 && body[0] != ZTM_TOKEN_VERSION)
            ret = ZTM_TOKEN_E_VERSION;
        goto out;
    }
    if (fixed[0] != ZTM_TOKEN_VERSION) {
        ret = ZTM_TOKEN_E_VERSION;
        goto out;
    }
    t->role = (ztm_role_t)fixed[1];
    uint64_t expires = get_u64(fixed + 2);
    t->expires = expires > INT64_MAX ? INT64_MAX : (int64_t)expires;
    memcpy(t->pin, fixed + 10, 32);
    memcpy(t->secret, fixed + 42, ZTM_TOKEN_SECRET_LEN);
    if ((ret = take_str(&r, t->mesh, ZTM_MESH_MAX)) < 0 ||
        (ret = take_str(&r, t->name, ZTM_NAME_MAX)) < 0)
        goto out;
    const uint8_t *count = take(&r, 1);
    ret = ZTM_TOKEN_E_TRUNCATED;
    if (!count)
        goto out;
    ret = ZTM_TOKEN_E_FIELD;
    if (*count == 0 || *count > ZTM_TOKEN_MAX_HUBS)
        goto out;
    t->n_hubs = *count;
    for (size_t i = 0; i < t->n_hubs; i++)
        if ((ret = take_str(&r, t->hubs[i], ZTM_TOKEN_HUB_MAX)) < 0)
            goto out;
    size_t signed_len = (size_t)(r.p - body);
    const uint8_t *check = take(&r, CHECK_LEN);
    ret = ZTM_TOKEN_E_TRUNCATED;
    if (!check)
        goto out;
    ret = ZTM_TOKEN_E_TRAILING;
    if (r.left != 0)
        goto out;
    uint8_t digest[32];
    SHA256(body, signed_len, digest);
    ret = ZTM_TOKEN_E_CHECK;
    if (CRYPTO_memcmp(digest, check, CHECK_LEN) != 0)
        goto out;
    ret = fields_valid(t) ? 0 : ZTM_TOKEN_E_FIELD;
out:
    OPENSSL_cleanse(body, sizeof(body));
    if (ret < 0)
        ztm_token_wipe(t);
    return ret;
}
