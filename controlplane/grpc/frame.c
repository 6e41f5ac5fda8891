/* gRPC wire-format pieces independent of HTTP/2; see frame.h. */
#include "controlplane/grpc/frame.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static const char *const status_names[ZTM_GRPC_STATUS_COUNT] = {
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
};

const char *ztm_grpc_status_name(int code)
{
    if (code < 0 || code >= ZTM_GRPC_STATUS_COUNT)
        return NULL;
    return status_names[code];
}

bool ztm_grpc_status_from_name(const char *name, size_t len, ztm_grpc_status_t *out)
{
    for (int i = 0; i < ZTM_GRPC_STATUS_COUNT; i++) {
        if (strlen(status_names[i]) == len && memcmp(status_names[i], name, len) == 0) {
            *out = (ztm_grpc_status_t)i;
            return true;
        }
    }
    return false;
}

int ztm_grpc_status_parse(const char *v, size_t len, ztm_grpc_status_t *out)
{
    if (len == 0 || len > 3)
        return -EINVAL;
    unsigned n = 0;
    for (size_t i = 0; i < len; i++) {
        if (v[i] < '0' || v[i] > '9')
            return -EINVAL;
        n = n * 10 + (unsigned)(v[i] - '0');
    }
    *out = n < ZTM_GRPC_STATUS_COUNT ? (ztm_grpc_status_t)n : ZTM_GRPC_UNKNOWN;
    return 0;
}

ztm_grpc_status_t ztm_grpc_error_status(int err)
{
    switch (err) {
    case 0:
        return ZTM_GRPC_OK;
    case ZTM_GRPC_E_TOO_LARGE:
    case -ENOMEM:
        return ZTM_GRPC_RESOURCE_EXHAUSTED;
    case ZTM_GRPC_E_COMPRESSED:
        return ZTM_GRPC_UNIMPLEMENTED;
    default:
        /* bad flags, truncation: the peer broke the framing (as grpc-core) */
        return ZTM_GRPC_INTERNAL;
    }
}

const char *ztm_grpc_strerror(int err)
{
    switch (err) {
    case ZTM_GRPC_E_TOO_LARGE:
        return "message larger than the maximum message size";
    case ZTM_GRPC_E_COMPRESSED:
        return "compressed message without a supported grpc-encoding";
    case ZTM_GRPC_E_BAD_FLAGS:
        return "invalid message flags (neither 0 nor 1)";
    case ZTM_GRPC_E_TRUNCATED:
        return "stream ended inside a message";
    default:
        return err < 0 && err > -4096 ? strerror(-err) : "unknown error";
    }
}

/* ---- length-prefixed messages ---------------------------------------------- */

void ztm_grpc_prefix_encode(uint8_t out[ZTM_GRPC_PREFIX_LEN], bool compressed, uint32_t len)
{
    out[0] = compressed ? 1 : 0;
    out[1] = (uint8_t)(len >> 24);
    out[2] = (uint8_t)(len >> 16);
    out[3] = (uint8_t)(len >> 8);
    out[4] = (uint8_t)len;
}

enum { DEC_PREFIX = 0, DEC_BODY = 1 };

/* A buffer kept between messages up to this size; a larger one (a big
 * message just passed) is freed so that an idle stream holds little. */
#define DEC_KEEP_CAP 16384

/* A byte that the message's body never points at, for empty messages. */
static const uint8_t empty_body[1];

void ztm_grpc_decoder_init(ztm_grpc_decoder_t *d, uint32_t max_message, bool accept_compressed)
{
    memset(d, 0, sizeof(*d));
    d->max_message = max_message ? max_message : ZTM_GRPC_DEFAULT_MAX_MESSAGE;
    d->accept_compressed = accept_compressed;
    d->state = DEC_PREFIX;
}

void ztm_grpc_decoder_free(ztm_grpc_decoder_t *d)
{
    free(d->buf);
    d->buf = NULL;
    d->buf_len = d->buf_cap = 0;
}

/* Checks a complete prefix; moves to DEC_BODY. */
static int take_prefix(ztm_grpc_decoder_t *d, const uint8_t *p)
{
    if (p[0] > 1)
        return ZTM_GRPC_E_BAD_FLAGS;
    if (p[0] == 1 && !d->accept_compressed)
        return ZTM_GRPC_E_COMPRESSED;
    uint32_t n = (uint32_t)p[1] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 8 | p[4];
    if (n > d->max_message)
        return ZTM_GRPC_E_TOO_LARGE;
    d->msg_len = n;
    d->prefix[0] = p[0];
    d->state = DEC_BODY;
    return 0;
}

/* Grows the buffer to hold at least NEED bytes, by doubling but never past
 * the message's length: memory follows the bytes that arrived, not the
 * length the prefix announced. */
static int reserve(ztm_grpc_decoder_t *d, size_t need)
{
    if (need <= d->buf_cap)
        return 0;
    size_t cap = d->buf_cap ? d->buf_cap * 2 : 256;
    if (cap < need)
        cap = need;
    if (cap > d->msg_len)
        cap = d->msg_len;
    uint8_t *b = realloc(d->buf, cap);
    if (!b)
        return -ENOMEM;
    d->buf = b;
    d->buf_cap = cap;
    return 0;
}

static void deliver(ztm_grpc_decoder_t *d, const uint8_t *data, ztm_grpc_message_t *msg, bool *ready)
{
    msg->data = d->msg_len ? data : empty_body;
    msg->len = d->msg_len;
    msg->compressed = d->prefix[0] == 1;
    *ready = true;
    d->state = DEC_PREFIX;
    d->prefix_have = 0;
}

ssize_t ztm_grpc_decoder_feed(ztm_grpc_decoder_t *d, const uint8_t *data, size_t len,
                              ztm_grpc_message_t *msg, bool *ready)
{
    *ready = false;
    if (d->error)
        return d->error;

    /* The previous message (if buffered) has been seen: drop it. */
    if (d->state == DEC_PREFIX && d->prefix_have == 0) {
        d->buf_len = 0;
        if (d->buf_cap > DEC_KEEP_CAP)
            ztm_grpc_decoder_free(d);
    }

    size_t used = 0;
    int err;
    if (d->state == DEC_PREFIX) {
        if (d->prefix_have == 0 && len >= ZTM_GRPC_PREFIX_LEN) {
            /* the common case: a prefix in one piece, maybe the whole message */
            if ((err = take_prefix(d, data)) < 0)
                goto fail;
            used = ZTM_GRPC_PREFIX_LEN;
            if (len - used >= d->msg_len) {
                deliver(d, data + used, msg, ready);
                return (ssize_t)(used + d->msg_len);
            }
        } else {
            size_t n = ZTM_GRPC_PREFIX_LEN - d->prefix_have;
            if (n > len)
                n = len;
            memcpy(d->prefix + d->prefix_have, data, n);
            d->prefix_have += (uint8_t)n;
            used = n;
            if (d->prefix_have < ZTM_GRPC_PREFIX_LEN)
                return (ssize_t)used;
            if ((err = take_prefix(d, d->prefix)) < 0)
                goto fail;
        }
        if (d->msg_len == 0) {
            deliver(d, NULL, msg, ready);
            return (ssize_t)used;
        }
    }

    /* DEC_BODY: buffer until the body is whole. */
    size_t n = d->msg_len - d->buf_len;
    if (n > len - used)
        n = len - used;
    if (n == 0)
        return (ssize_t)used;
    if ((err = reserve(d, d->buf_len + n)) < 0)
        goto fail;
    memcpy(d->buf + d->buf_len, data + used, n);
    d->buf_len += n;
    used += n;
    if (d->buf_len == d->msg_len)
        deliver(d, d->buf, msg, ready);
    return (ssize_t)used;

fail:
    d->error = err;
    ztm_grpc_decoder_free(d);
    return err;
}

int ztm_grpc_decoder_finish(const ztm_grpc_decoder_t *d)
{
    if (d->error)
        return d->error;
    if (d->state != DEC_PREFIX || d->prefix_have != 0)
        return ZTM_GRPC_E_TRUNCATED;
    return 0;
}

/* ---- grpc-timeout -------------------------------------------------------------- */

static const struct {
    char unit;
    uint64_t ns;
} timeout_units[] = {
    /* finest first: _format picks the first that fits */
    {'n', 1ull},
    {'u', 1000ull},
    {'m', 1000000ull},
    {'S', 1000000000ull},
    {'M', 60ull * 1000000000ull},
    {'H', 3600ull * 1000000000ull},
};
#define N_UNITS (sizeof(timeout_units) / sizeof(timeout_units[0]))

int ztm_grpc_timeout_parse(const char *v, size_t len, uint64_t *ns)
{
    if (len < 2 || len > 9)
        return -EINVAL;
    uint64_t n = 0;
    for (size_t i = 0; i + 1 < len; i++) {
        if (v[i] < '0' || v[i] > '9')
            return -EINVAL;
        n = n * 10 + (uint64_t)(v[i] - '0');
    }
    for (size_t u = 0; u < N_UNITS; u++) {
        if (v[len - 1] == timeout_units[u].unit) {
            uint64_t mul = timeout_units[u].ns;
            *ns = n > UINT64_MAX / mul ? UINT64_MAX : n * mul;
            return 0;
        }
    }
    return -EINVAL;
}

size_t ztm_grpc_timeout_format(uint64_t ns, char out[ZTM_GRPC_TIMEOUT_MAX])
{
    static const uint64_t max8 = 99999999ull;
    size_t u;
    uint64_t n = max8;
    for (u = 0; u < N_UNITS; u++) {
        uint64_t mul = timeout_units[u].ns;
        uint64_t q = ns / mul + (ns % mul != 0);
        if (q <= max8) {
            n = q;
            break;
        }
    }
    if (u == N_UNITS)
        u = N_UNITS - 1; /* beyond 99999999 hours: the largest we can say */
    char digits[ZTM_GRPC_TIMEOUT_MAX];
    size_t k = 0;
    do {
        digits[k++] = (char)('0' + n % 10);
        n /= 10;
    } while (n);
    size_t len = 0;
    while (k)
        out[len++] = digits[--k];
    out[len++] = timeout_units[u].unit;
    out[len] = 0;
    return len;
}

/* ---- grpc-message ------------------------------------------------------------- */

static const char hex_upper[] = "0123456789ABCDEF";

/* Appends to OUT while it has room, counting what the whole would need. */
#define PUT(c)                                                                         \
    do {                                                                               \
        if (n + 1 < cap)                                                               \
            out[n] = (c);                                                              \
        n++;                                                                           \
    } while (0)

size_t ztm_grpc_message_encode(const char *in, size_t len, char *out, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        uint8_t c = (uint8_t)in[i];
        if (c < 0x20 || c > 0x7e || c == '%') {
            PUT('%');
            PUT(hex_upper[c >> 4]);
            PUT(hex_upper[c & 15]);
        } else {
            PUT((char)c);
        }
    }
    if (cap)
        out[n < cap ? n : cap - 1] = 0;
    return n;
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

size_t ztm_grpc_message_decode(const char *in, size_t len, char *out, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        char c = in[i];
        if (c == '%' && i + 2 < len) {
            int hi = hex_value(in[i + 1]), lo = hex_value(in[i + 2]);
            if (hi >= 0 && lo >= 0) {
                c = (char)(hi << 4 | lo);
                i += 2;
            }
        }
        PUT(c);
    }
#undef PUT
    if (cap)
        out[n < cap ? n : cap - 1] = 0;
    return n;
}

/* ---- content-type and :path --------------------------------------------------- */

static bool prefix_ci(const char *v, size_t len, const char *lit, size_t lit_len)
{
    if (len < lit_len)
        return false;
    for (size_t i = 0; i < lit_len; i++) {
        char c = v[i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        if (c != lit[i])
            return false;
    }
    return true;
}

bool ztm_grpc_content_type_ok(const char *v, size_t len)
{
    static const char base[] = "application/grpc";
    static const char proto[] = "+proto";
    size_t n = sizeof(base) - 1;
    if (!prefix_ci(v, len, base, n))
        return false;
    if (prefix_ci(v + n, len - n, proto, sizeof(proto) - 1))
        n += sizeof(proto) - 1;
    return n == len || v[n] == ';';
}

int ztm_grpc_path_parse(const char *path, size_t len, ztm_grpc_path_t *out)
{
    if (len < 4 || path[0] != '/')
        return -EINVAL;
    size_t slash = 0;
    for (size_t i = 1; i < len; i++) {
        char c = path[i];
        if (c <= 0x20 || c >= 0x7f || c == '?' || c == '#')
            return -EINVAL;
        if (c == '/') {
            if (slash)
                return -EINVAL;
            slash = i;
        }
    }
    if (slash <= 1 || slash == len - 1)
        return -EINVAL;
    out->service = path + 1;
    out->service_len = slash - 1;
    out->method = path + slash + 1;
    out->method_len = len - slash - 1;
    return 0;
}
