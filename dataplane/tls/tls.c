/* TLS 1.3 with BoringSSL, fed through caller-owned buffers; see tls.h.
 *
 * BoringSSL reads and writes through one custom BIO whose two ends are the
 * connection's staging buffers, so the worker decides when and how bytes
 * reach the socket. Peer certificates are checked by our own callback
 * (SSL_CTX_set_custom_verify) so that a refusal carries a named reason, and
 * the verified leaf is kept as the connection's identity. */
#include "dataplane/tls/tls_int.h"

#include "dataplane/runtime/log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/err.h>
#include <openssl/mem.h>
#include <openssl/sha.h>
#include <openssl/pool.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_HS_TIMEOUT_MS 10000
/* Two and four full TLSCiphertext records (header + 2^14 + 256). */
#define DEFAULT_IN_CAP  (2 * (ZTM_TLS_REC_HEADER + ZTM_TLS_REC_MAX_BODY))
#define DEFAULT_OUT_CAP (4 * (ZTM_TLS_REC_HEADER + ZTM_TLS_REC_MAX_BODY))
#define MIN_BUF_CAP     (ZTM_TLS_REC_HEADER + ZTM_TLS_REC_MAX_BODY)
#define MAX_BUF_CAP     (64u << 20)
/* RFC 8446 §5.5: AES-GCM keys may seal ~2^24.5 records; stop far short. */
#define DEFAULT_GCM_LIMIT (UINT64_C(1) << 23)
/* TLS 1.3 record overhead with AEAD and no padding: header, inner type, tag. */
#define REC_OVERHEAD (ZTM_TLS_REC_HEADER + 1 + 16)
#define REC_PLAIN    16384
/* Room kept for handshake messages BoringSSL may flush before data
 * (a KeyUpdate reply). */
#define OUT_MARGIN 128

static const uint8_t alpn_h2[] = {2, 'h', '2'};

static ztm_tls_stats_t stats;

void ztm_tls_stat_add_(size_t offset)
{
    __atomic_fetch_add((uint64_t *)((char *)&stats + offset), 1, __ATOMIC_RELAXED);
}

void ztm_tls_stats_get(ztm_tls_stats_t *out)
{
    uint64_t *dst = (uint64_t *)out;
    uint64_t *src = (uint64_t *)&stats;
    for (size_t i = 0; i < sizeof(stats) / sizeof(uint64_t); i++)
        dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
}

const char *ztm_tls_strerror(int err)
{
    switch (err) {
    case 0:
        return "ok";
    case ZTM_TLS_E_PROTOCOL:
        return "TLS protocol error";
    case ZTM_TLS_E_VERIFY:
        return "peer certificate refused";
    case ZTM_TLS_E_PEER_ALERT:
        return "peer sent a fatal alert";
    case ZTM_TLS_E_ALPN:
        return "no common ALPN protocol (h2 required)";
    case ZTM_TLS_E_TRUNCATED:
        return "connection closed without close_notify";
    case ZTM_TLS_E_CLOSED:
        return "TLS connection already closed or failed";
    case ZTM_TLS_E_CONFIG:
        return "unusable TLS certificate, key or CA file";
    case ZTM_TLS_E_KTLS_UNAVAILABLE:
        return "kernel TLS required (--ktls on) but unavailable";
    case ZTM_TLS_E_REKEY_NEEDED:
        return "peer updated its keys; kernel TLS cannot rekey: close and reconnect";
    case ZTM_TLS_E_RECORD_LIMIT:
        return "record limit for this key reached: close and reconnect";
    }
    if (err < 0 && err > -4096)
        return strerror(-err);
    return "unknown error";
}

bool ztm_ktls_parse_mode(const char *s, ztm_ktls_mode_t *out)
{
    static const char *const names[] = {"off", "auto", "on"};
    for (int i = 0; i < 3; i++) {
        if (strcmp(s, names[i]) == 0) {
            *out = (ztm_ktls_mode_t)i;
            return true;
        }
    }
    return false;
}

const char *ztm_ktls_mode_name(ztm_ktls_mode_t m)
{
    switch (m) {
    case ZTM_KTLS_OFF:
        return "off";
    case ZTM_KTLS_AUTO:
        return "auto";
    case ZTM_KTLS_ON:
        return "on";
    }
    return "?";
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The first queued BoringSSL error as text, for a log line; clears the queue. */
static const char *ssl_error_text(char *buf, size_t cap)
{
    uint32_t e = ERR_peek_error();
    if (e == 0)
        snprintf(buf, cap, "none");
    else
        ERR_error_string_n(e, buf, cap);
    ERR_clear_error();
    for (char *p = buf; *p; p++)
        if (*p == '"' || *p == '\\')
            *p = '\'';
    return buf;
}

/* X509 subject as a log-safe string (no quotes or control bytes). */
static const char *subject_text(X509 *x, char *buf, size_t cap)
{
    if (!x) {
        snprintf(buf, cap, "-");
        return buf;
    }
    X509_NAME_oneline(X509_get_subject_name(x), buf, (int)cap);
    for (char *p = buf; *p; p++)
        if (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20)
            *p = '?';
    return buf;
}

static const char *role_name(ztm_tls_role_t r)
{
    return r == ZTM_TLS_SERVER ? "server" : "client";
}

/* ---- the BIO between BoringSSL and the staging buffers --------------------- */

static pthread_once_t once = PTHREAD_ONCE_INIT;
static BIO_METHOD *bio_method;
static int ex_index = -1;

static int bio_read(BIO *b, char *dst, int len)
{
    ztm_tls_conn_t *c = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (!c || len <= 0)
        return 0;
    size_t avail = c->in_w - c->in_r;
    if (avail == 0) {
        if (c->in_eof)
            return 0;
        BIO_set_retry_read(b);
        return -1;
    }
    size_t n = avail < (size_t)len ? avail : (size_t)len;
    memcpy(dst, c->in + c->in_r, n);
    c->in_r += n;
    if (c->in_r == c->in_w && c->in_lent == 0)
        c->in_r = c->in_w = 0;
    return (int)n;
}

static int bio_write(BIO *b, const char *src, int len)
{
    ztm_tls_conn_t *c = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (!c || len <= 0 || !c->out)
        return -1;
    size_t room = c->out_cap - c->out_w;
    if (room == 0) {
        BIO_set_retry_write(b);
        return -1;
    }
    size_t n = room < (size_t)len ? room : (size_t)len;
    memcpy(c->out + c->out_w, src, n);
    c->out_w += n;
    return (int)n;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)b, (void)num, (void)ptr;
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int bio_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

static int bio_destroy(BIO *b)
{
    BIO_set_data(b, NULL);
    return 1;
}

static void init_once(void)
{
    CRYPTO_library_init();
    bio_method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "ztm_tls");
    if (bio_method) {
        BIO_meth_set_read(bio_method, bio_read);
        BIO_meth_set_write(bio_method, bio_write);
        BIO_meth_set_ctrl(bio_method, bio_ctrl);
        BIO_meth_set_create(bio_method, bio_create);
        BIO_meth_set_destroy(bio_method, bio_destroy);
    }
    ex_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
}

static ztm_tls_conn_t *conn_of(const SSL *ssl)
{
    return SSL_get_ex_data(ssl, ex_index);
}

/* ---- certificate verification -------------------------------------------- */

typedef struct {
    const char *reason;
    uint8_t alert;
} verify_refusal_t;

static verify_refusal_t refusal_for(int x509_err)
{
    switch (x509_err) {
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_CERT_UNTRUSTED:
        return (verify_refusal_t){"unknown_ca", SSL_AD_UNKNOWN_CA};
    case X509_V_ERR_CERT_HAS_EXPIRED:
        return (verify_refusal_t){"expired", SSL_AD_CERTIFICATE_EXPIRED};
    case X509_V_ERR_CERT_NOT_YET_VALID:
        return (verify_refusal_t){"not_yet_valid", SSL_AD_BAD_CERTIFICATE};
    case X509_V_ERR_INVALID_PURPOSE:
    case X509_V_ERR_KEYUSAGE_NO_CERTSIGN:
    case X509_V_ERR_KEYUSAGE_NO_DIGITAL_SIGNATURE:
        return (verify_refusal_t){"wrong_key_usage", SSL_AD_UNSUPPORTED_CERTIFICATE};
    case X509_V_ERR_CERT_SIGNATURE_FAILURE:
    case X509_V_ERR_CRL_SIGNATURE_FAILURE:
        return (verify_refusal_t){"bad_signature", SSL_AD_DECRYPT_ERROR};
    case X509_V_ERR_HOSTNAME_MISMATCH:
    case X509_V_ERR_IP_ADDRESS_MISMATCH:
        return (verify_refusal_t){"wrong_name", SSL_AD_BAD_CERTIFICATE};
    }
    return (verify_refusal_t){"invalid", SSL_AD_BAD_CERTIFICATE};
}

static void log_refusal(ztm_tls_conn_t *c, const char *reason, int depth, X509 *cert,
                        const char *detail)
{
    char subj[256];
    ZTM_TLS_STAT(verify_refused);
    ztm_log(ZTM_LOG_WARN, "tls.verify_failed",
            "role=%s reason=%s depth=%d subject=\"%s\" error=\"%s\"", role_name(c->ctx->role),
            reason, depth, subject_text(cert, subj, sizeof(subj)), detail);
}

/* Verifies the peer's chain against the context's CAs for the peer's role
 * ("ssl_client" purpose when we are the server: EKU clientAuth, KU
 * digitalSignature; "ssl_server" when we are the client), then asks the
 * caller's hook. */
static enum ssl_verify_result_t on_custom_verify(SSL *ssl, uint8_t *out_alert)
{
    ztm_tls_conn_t *c = conn_of(ssl);
    if (!c)
        return ssl_verify_invalid;
    enum ssl_verify_result_t result = ssl_verify_invalid;
    X509 *leaf = NULL;
    STACK_OF(X509) *chain = NULL;
    X509_STORE_CTX *sctx = NULL;
    X509_STORE *pinned_store = NULL;

    const STACK_OF(CRYPTO_BUFFER) *certs = SSL_get0_peer_certificates(ssl);
    size_t n = certs ? sk_CRYPTO_BUFFER_num(certs) : 0;
    if (n == 0 && c->ctx->client_cert_optional) {
        result = ssl_verify_ok;
        goto Exit;
    }
    if (n == 0) {
        c->verify_reason = "no_certificate";
        *out_alert = SSL_AD_CERTIFICATE_REQUIRED;
        log_refusal(c, c->verify_reason, 0, NULL, "peer sent no certificate");
        goto Exit;
    }
    leaf = X509_parse_from_buffer(sk_CRYPTO_BUFFER_value(certs, 0));
    chain = sk_X509_new_null();
    if (!leaf || !chain)
        goto Malformed;
    for (size_t i = 1; i < n; i++) {
        X509 *x = X509_parse_from_buffer(sk_CRYPTO_BUFFER_value(certs, i));
        if (!x || !sk_X509_push(chain, x)) {
            X509_free(x);
            goto Malformed;
        }
    }
    X509_STORE *store = c->ctx->store;
    if (c->ctx->has_pin) {
        /* Trust exactly the CA in the chain whose key has the pin. */
        X509 *anchor = NULL;
        for (size_t i = 0; i < sk_X509_num(chain) && !anchor; i++) {
            X509 *x = sk_X509_value(chain, i);
            uint8_t *der = NULL;
            int dl = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(x), &der);
            uint8_t h[32];
            if (dl > 0 && SHA256(der, (size_t)dl, h) && CRYPTO_memcmp(h, c->ctx->pin, 32) == 0)
                anchor = x;
            OPENSSL_free(der);
        }
        if (!anchor) {
            c->verify_reason = "wrong_ca_pin";
            *out_alert = SSL_AD_UNKNOWN_CA;
            log_refusal(c, c->verify_reason, 0, leaf, "no certificate in the chain has the invite's CA pin");
            goto Exit;
        }
        pinned_store = X509_STORE_new();
        if (!pinned_store || !X509_STORE_add_cert(pinned_store, anchor))
            goto Malformed;
        store = pinned_store;
    }
    sctx = X509_STORE_CTX_new();
    if (!sctx || !X509_STORE_CTX_init(sctx, store, leaf, chain) ||
        !X509_STORE_CTX_set_default(sctx,
                                    c->ctx->role == ZTM_TLS_SERVER ? "ssl_client" : "ssl_server")) {
        *out_alert = SSL_AD_INTERNAL_ERROR;
        c->verify_reason = "internal_error";
        log_refusal(c, c->verify_reason, 0, leaf, "cannot set up verification");
        goto Exit;
    }
    /* A client that named a server checks that the certificate is for it
     * (a DNS name, or an IP address given as text). */
    const char *host = c->ctx->role == ZTM_TLS_CLIENT ? ztm_tls_conn_sni(c) : NULL;
    if (host && *host) {
        X509_VERIFY_PARAM *vp = X509_STORE_CTX_get0_param(sctx);
        struct in6_addr ip;
        bool is_ip = inet_pton(AF_INET, host, &ip) == 1 || inet_pton(AF_INET6, host, &ip) == 1;
        if (!(is_ip ? X509_VERIFY_PARAM_set1_ip_asc(vp, host)
                    : X509_VERIFY_PARAM_set1_host(vp, host, strlen(host)))) {
            *out_alert = SSL_AD_INTERNAL_ERROR;
            c->verify_reason = "internal_error";
            log_refusal(c, c->verify_reason, 0, leaf, "cannot set the expected server name");
            goto Exit;
        }
    }
    if (X509_verify_cert(sctx) != 1) {
        int err = X509_STORE_CTX_get_error(sctx);
        verify_refusal_t r = refusal_for(err);
        c->verify_reason = r.reason;
        *out_alert = r.alert;
        X509 *at = X509_STORE_CTX_get_current_cert(sctx);
        log_refusal(c, r.reason, X509_STORE_CTX_get_error_depth(sctx), at ? at : leaf,
                    X509_verify_cert_error_string(err));
        goto Exit;
    }
    if (c->ctx->on_verify) {
        const char *why = c->ctx->on_verify(c->ctx->on_verify_arg, c, leaf);
        if (why) {
            c->verify_reason = why;
            *out_alert = SSL_AD_ACCESS_DENIED;
            log_refusal(c, why, 0, leaf, "refused by policy");
            goto Exit;
        }
    }
    X509_free(c->peer);
    c->peer = leaf;
    leaf = NULL;
    result = ssl_verify_ok;
    goto Exit;

Malformed:
    c->verify_reason = "invalid";
    *out_alert = SSL_AD_BAD_CERTIFICATE;
    log_refusal(c, c->verify_reason, 0, NULL, "certificate does not parse");
Exit:
    X509_STORE_CTX_free(sctx);
    X509_STORE_free(pinned_store);
    sk_X509_pop_free(chain, X509_free);
    X509_free(leaf);
    return result;
}

static int on_alpn_select(SSL *ssl, const uint8_t **out, uint8_t *out_len, const uint8_t *in,
                          unsigned in_len, void *arg)
{
    (void)ssl, (void)arg;
    uint8_t *sel;
    uint8_t sel_len;
    if (SSL_select_next_proto(&sel, &sel_len, alpn_h2, sizeof(alpn_h2), in, in_len) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    *out = sel;
    *out_len = sel_len;
    return SSL_TLSEXT_ERR_OK;
}

/* ---- key log: SSLKEYLOGFILE and the kTLS secrets ----------------------------- */

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* "LABEL <client_random hex> <secret hex>": keeps the application traffic
 * secrets the kTLS switch needs. */
static void capture_secret(ztm_tls_conn_t *c, const char *line)
{
    static const char client[] = "CLIENT_TRAFFIC_SECRET_0 ";
    static const char server[] = "SERVER_TRAFFIC_SECRET_0 ";
    int slot;
    if (strncmp(line, client, sizeof(client) - 1) == 0)
        slot = SECRET_CLIENT;
    else if (strncmp(line, server, sizeof(server) - 1) == 0)
        slot = SECRET_SERVER;
    else
        return;
    const char *p = strchr(line + sizeof(client) - 1, ' ');
    if (!p)
        return;
    p++;
    size_t hexlen = strlen(p);
    if (hexlen % 2 != 0 || hexlen / 2 > ZTM_TLS_MAX_SECRET || hexlen == 0)
        return;
    for (size_t i = 0; i < hexlen / 2; i++) {
        int hi = hexval(p[2 * i]), lo = hexval(p[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            OPENSSL_cleanse(c->secret[slot], sizeof(c->secret[slot]));
            c->secret_len[slot] = 0;
            return;
        }
        c->secret[slot][i] = (uint8_t)(hi << 4 | lo);
    }
    c->secret_len[slot] = (uint8_t)(hexlen / 2);
}

static void on_keylog(const SSL *ssl, const char *line)
{
    ztm_tls_conn_t *c = conn_of(ssl);
    if (!c)
        return;
    if (c->ctx->keylog_fd >= 0) {
        struct iovec iov[2] = {{(void *)line, strlen(line)}, {"\n", 1}};
        ssize_t r = writev(c->ctx->keylog_fd, iov, 2); /* O_APPEND: one line, one write */
        (void)r;
    }
    if (!c->ktls_decided)
        capture_secret(c, line);
}

void ztm_tls_wipe_secrets_(ztm_tls_conn_t *c)
{
    OPENSSL_cleanse(c->secret, sizeof(c->secret));
    c->secret_len[0] = c->secret_len[1] = 0;
}

/* ---- context ------------------------------------------------------------------ */

static int config_error(const char *what, const char *file)
{
    char err[256];
    ztm_log(ZTM_LOG_ERROR, "tls.config_error", "what=\"%s\" file=\"%s\" error=\"%s\"", what,
            file ? file : "-", ssl_error_text(err, sizeof(err)));
    return ZTM_TLS_E_CONFIG;
}

static void ctx_unref(ztm_tls_ctx_t *ctx)
{
    if (__atomic_sub_fetch(&ctx->refs, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    SSL_CTX_free(ctx->ssl_ctx);
    X509_STORE_free(ctx->store);
    if (ctx->keylog_fd >= 0)
        close(ctx->keylog_fd);
    free(ctx);
}

static void open_keylog(ztm_tls_ctx_t *ctx)
{
    const char *path = secure_getenv("SSLKEYLOGFILE");
    if (!path || !*path)
        return;
    ctx->keylog_fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (ctx->keylog_fd < 0) {
        ztm_log(ZTM_LOG_WARN, "tls.keylog_failed", "path=\"%s\" error=\"%s\"", path,
                strerror(errno));
        return;
    }
    ztm_log(ZTM_LOG_WARN, "tls.keylog_enabled",
            "path=\"%s\" role=%s warning=\"SSLKEYLOGFILE is set: TLS secrets of every "
            "connection are written to this file; anyone who reads it can decrypt the "
            "traffic. Unset it outside debugging.\"",
            path, role_name(ctx->role));
}

int ztm_tls_ctx_new(ztm_tls_ctx_t **out, const ztm_tls_config_t *cfg)
{
    *out = NULL;
    /* A client may go without an identity (a joiner before it has one):
     * server-only TLS. A server always presents one. */
    bool anonymous = cfg && cfg->role == ZTM_TLS_CLIENT && !cfg->cert_file && !cfg->key_file;
    bool pinned = cfg && cfg->role == ZTM_TLS_CLIENT && cfg->ca_pin && !cfg->ca_file;
    if (!cfg || (!anonymous && (!cfg->cert_file || !cfg->key_file)) || (!cfg->ca_file && !pinned) ||
        (cfg->role != ZTM_TLS_SERVER && cfg->role != ZTM_TLS_CLIENT) ||
        (unsigned)cfg->ktls > ZTM_KTLS_ON)
        return -EINVAL;
    if ((cfg->in_buf_size && (cfg->in_buf_size < MIN_BUF_CAP || cfg->in_buf_size > MAX_BUF_CAP)) ||
        (cfg->out_buf_size && (cfg->out_buf_size < MIN_BUF_CAP || cfg->out_buf_size > MAX_BUF_CAP)))
        return -EINVAL;
    pthread_once(&once, init_once);
    if (!bio_method || ex_index < 0)
        return -ENOMEM;

    ztm_tls_ctx_t *ctx = calloc(1, sizeof(*ctx));
    if (!ctx)
        return -ENOMEM;
    ctx->refs = 1;
    ctx->keylog_fd = -1;
    ctx->role = cfg->role;
    ctx->ktls = cfg->ktls;
    ctx->client_cert_optional = cfg->role == ZTM_TLS_SERVER && cfg->client_cert_optional;
    if (pinned) {
        ctx->has_pin = true;
        memcpy(ctx->pin, cfg->ca_pin, sizeof(ctx->pin));
    }
    ctx->hs_timeout_ms =
        cfg->handshake_timeout_ms ? cfg->handshake_timeout_ms : DEFAULT_HS_TIMEOUT_MS;
    ctx->in_cap = cfg->in_buf_size ? cfg->in_buf_size : DEFAULT_IN_CAP;
    ctx->out_cap = cfg->out_buf_size ? cfg->out_buf_size : DEFAULT_OUT_CAP;
    ctx->gcm_limit = cfg->aes_gcm_record_limit ? cfg->aes_gcm_record_limit : DEFAULT_GCM_LIMIT;
    ctx->on_verify = cfg->on_verify;
    ctx->on_verify_arg = cfg->on_verify_arg;

    int rc = -ENOMEM;
    ERR_clear_error();
    SSL_CTX *sc = ctx->ssl_ctx = SSL_CTX_new(TLS_method());
    ctx->store = X509_STORE_new();
    if (!sc || !ctx->store)
        goto Fail;
    if (!SSL_CTX_set_min_proto_version(sc, TLS1_3_VERSION) ||
        !SSL_CTX_set_max_proto_version(sc, TLS1_3_VERSION))
        goto Fail;
    if (anonymous)
        goto NoIdentity;
    if (!SSL_CTX_use_certificate_chain_file(sc, cfg->cert_file)) {
        rc = config_error("certificate chain (PEM, leaf first)", cfg->cert_file);
        goto Fail;
    }
    if (!SSL_CTX_use_PrivateKey_file(sc, cfg->key_file, SSL_FILETYPE_PEM)) {
        rc = config_error("private key (PEM)", cfg->key_file);
        goto Fail;
    }
    if (!SSL_CTX_check_private_key(sc)) {
        rc = config_error("private key does not match the certificate", cfg->key_file);
        goto Fail;
    }
NoIdentity:
    if (pinned)
        goto NoCaFile;
    if (!X509_STORE_load_locations(ctx->store, cfg->ca_file, NULL)) {
        rc = config_error("CA bundle (PEM)", cfg->ca_file);
        goto Fail;
    }
NoCaFile:
    SSL_CTX_set_custom_verify(
        sc, SSL_VERIFY_PEER | (cfg->role == ZTM_TLS_SERVER && !ctx->client_cert_optional
                                   ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT
                                   : 0),
        on_custom_verify);
    if (cfg->role == ZTM_TLS_SERVER) {
        SSL_CTX_set_alpn_select_cb(sc, on_alpn_select, NULL);
        /* Name our CAs in CertificateRequest so clients pick the right cert. */
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(cfg->ca_file);
        if (names)
            SSL_CTX_set_client_CA_list(sc, names);
        ERR_clear_error();
    }
    /* No resumption inside the mesh; and a TLS 1.3 server that sends tickets
     * writes them at its first write, after a kTLS switch would have taken
     * the sequence numbers (see KTLS.md). */
    SSL_CTX_set_num_tickets(sc, 0);
    SSL_CTX_set_session_cache_mode(sc, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(sc, SSL_OP_NO_TICKET);
    SSL_CTX_set_mode(sc, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);

    open_keylog(ctx);
    if (ctx->keylog_fd >= 0 || ctx->ktls != ZTM_KTLS_OFF)
        SSL_CTX_set_keylog_callback(sc, on_keylog);
    *out = ctx;
    return 0;

Fail:
    ERR_clear_error();
    ctx_unref(ctx);
    return rc;
}

void ztm_tls_ctx_free(ztm_tls_ctx_t *ctx)
{
    if (ctx)
        ctx_unref(ctx);
}

void ztm_tls_ctx_ref(ztm_tls_ctx_t *ctx)
{
    __atomic_add_fetch(&ctx->refs, 1, __ATOMIC_RELAXED);
}

/* ---- connection ------------------------------------------------------------ */

int ztm_tls_conn_new(ztm_tls_conn_t **out, ztm_tls_ctx_t *ctx, const char *sni)
{
    *out = NULL;
    if (!ctx || (sni && ctx->role != ZTM_TLS_CLIENT))
        return -EINVAL;
    ztm_tls_conn_t *c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    __atomic_add_fetch(&ctx->refs, 1, __ATOMIC_RELAXED);
    c->ctx = ctx;
    c->alert = -1;
    c->state = CONN_HANDSHAKE;
    c->ktls_decided = ctx->ktls == ZTM_KTLS_OFF;
    c->deadline_ns = now_ns() + (uint64_t)ctx->hs_timeout_ms * 1000000u;
    c->in_cap = ctx->in_cap;
    c->out_cap = ctx->out_cap;
    c->in = malloc(c->in_cap);
    c->out = malloc(c->out_cap);
    c->ssl = SSL_new(ctx->ssl_ctx);
    BIO *bio = bio_method ? BIO_new(bio_method) : NULL;
    if (!c->in || !c->out || !c->ssl || !bio || !SSL_set_ex_data(c->ssl, ex_index, c)) {
        BIO_free(bio);
        goto Fail;
    }
    BIO_set_data(bio, c);
    SSL_set_bio(c->ssl, bio, bio); /* one reference, owned by the SSL */
    if (ctx->role == ZTM_TLS_CLIENT) {
        SSL_set_connect_state(c->ssl);
        if (SSL_set_alpn_protos(c->ssl, alpn_h2, sizeof(alpn_h2)) != 0)
            goto Fail;
        if (sni && !SSL_set_tlsext_host_name(c->ssl, sni))
            goto Fail;
    } else {
        SSL_set_accept_state(c->ssl);
    }
    *out = c;
    return 0;
Fail:
    ERR_clear_error();
    ztm_tls_conn_free(c);
    return -ENOMEM;
}

void ztm_tls_drop_buffers_(ztm_tls_conn_t *c)
{
    free(c->in);
    free(c->out);
    c->in = c->out = NULL;
    c->in_cap = c->in_r = c->in_w = c->in_lent = 0;
    c->out_cap = c->out_r = c->out_w = 0;
}

void ztm_tls_conn_free(ztm_tls_conn_t *c)
{
    if (!c)
        return;
    if (c->ssl) {
        SSL_set_ex_data(c->ssl, ex_index, NULL);
        SSL_free(c->ssl); /* BoringSSL wipes its own key schedule */
    }
    ztm_tls_wipe_secrets_(c);
    ztm_tls_drop_buffers_(c);
    X509_free(c->peer);
    ztm_tls_ctx_t *ctx = c->ctx;
    OPENSSL_cleanse(c, sizeof(*c));
    free(c);
    if (ctx)
        ctx_unref(ctx);
}

int ztm_tls_conn_fail_(ztm_tls_conn_t *c, int err)
{
    if (c->state == CONN_HANDSHAKE)
        ZTM_TLS_STAT(handshakes_failed);
    c->state = CONN_FAILED;
    ztm_tls_wipe_secrets_(c);
    return err;
}

/* ---- ciphertext in ---------------------------------------------------------- */

size_t ztm_tls_recv_limit(const ztm_tls_conn_t *c)
{
    if (c->ktls_decided || c->rx_scan.broken)
        return SIZE_MAX;
    /* Handshake done, at a boundary: take nothing more until the switch
     * (ztm_ktls_enable) has been tried. */
    if (c->state == CONN_OPEN && ztm_tls_rec_scan_at_boundary(&c->rx_scan))
        return 0;
    return ztm_tls_rec_scan_need(&c->rx_scan);
}

static uint8_t *in_space(ztm_tls_conn_t *c, size_t *len, size_t limit)
{
    *len = 0;
    if (!c->in)
        return NULL;
    if (c->in_r > 0 && c->in_r == c->in_w) {
        c->in_r = c->in_w = 0;
    } else if (c->in_r > 0 && c->in_cap - c->in_w < MIN_BUF_CAP / 2) {
        memmove(c->in, c->in + c->in_r, c->in_w - c->in_r);
        c->in_w -= c->in_r;
        c->in_r = 0;
    }
    size_t room = c->in_cap - c->in_w;
    if (room > limit)
        room = limit;
    c->in_lent = room;
    *len = room;
    return c->in + c->in_w;
}

uint8_t *ztm_tls_in_space(ztm_tls_conn_t *c, size_t *len)
{
    return in_space(c, len, ztm_tls_recv_limit(c));
}

int ztm_tls_in_commit(ztm_tls_conn_t *c, size_t n)
{
    if (n > c->in_lent)
        return -EINVAL;
    c->in_lent = 0;
    if (n == 0)
        return 0;
    if (!c->ktls_decided)
        ztm_tls_rec_scan(&c->rx_scan, c->in + c->in_w, n);
    c->in_w += n;
    return 0;
}

size_t ztm_tls_feed(ztm_tls_conn_t *c, const void *buf, size_t len)
{
    /* Bytes already off the socket must be taken whatever the recv limit:
     * past a record boundary they only delay the kTLS switch. */
    size_t room;
    uint8_t *dst = in_space(c, &room, SIZE_MAX);
    size_t n = len < room ? len : room;
    if (n > 0)
        memcpy(dst, buf, n);
    ztm_tls_in_commit(c, n);
    return n;
}

void ztm_tls_feed_eof(ztm_tls_conn_t *c)
{
    c->in_eof = true;
}

/* ---- errors from BoringSSL ------------------------------------------------------ */

/* Turns a failed SSL_* call into our code, logs it once, marks the
 * connection failed. WHERE names the operation for the log. */
static int ssl_failure(ztm_tls_conn_t *c, int ssl_err, const char *where)
{
    char err[256];
    uint32_t e = ERR_peek_error();
    int reason = ERR_GET_LIB(e) == ERR_LIB_SSL ? ERR_GET_REASON(e) : 0;
    const char *role = role_name(c->ctx->role);
    const char *event = c->state == CONN_HANDSHAKE ? "tls.handshake_failed" : "tls.conn_failed";

    if (c->verify_reason) { /* refused by on_custom_verify, already logged */
        ERR_clear_error();
        return ztm_tls_conn_fail_(c, ZTM_TLS_E_VERIFY);
    }
    if (reason >= SSL_AD_REASON_OFFSET && reason < SSL_AD_REASON_OFFSET + 256) {
        c->alert = reason - SSL_AD_REASON_OFFSET;
        ERR_clear_error();
        ztm_log(ZTM_LOG_WARN, event,
                "role=%s during=%s reason=peer_alert alert=%d alert_name=\"%s\"", role, where,
                c->alert, SSL_alert_desc_string_long(c->alert));
        return ztm_tls_conn_fail_(c, ZTM_TLS_E_PEER_ALERT);
    }
    if (reason == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE) {
        c->verify_reason = "no_certificate";
        ERR_clear_error();
        log_refusal(c, c->verify_reason, 0, NULL, "peer sent no certificate");
        return ztm_tls_conn_fail_(c, ZTM_TLS_E_VERIFY);
    }
    if (reason == SSL_R_NO_APPLICATION_PROTOCOL) {
        ztm_log(ZTM_LOG_WARN, event, "role=%s during=%s reason=alpn error=\"%s\"", role, where,
                ssl_error_text(err, sizeof(err)));
        return ztm_tls_conn_fail_(c, ZTM_TLS_E_ALPN);
    }
    if (reason == SSL_R_UNSUPPORTED_PROTOCOL) {
        ztm_log(ZTM_LOG_WARN, event,
                "role=%s during=%s reason=protocol_version error=\"peer does not speak TLS 1.3\"",
                role, where);
        ERR_clear_error();
        return ztm_tls_conn_fail_(c, ZTM_TLS_E_PROTOCOL);
    }
    if (ssl_err == SSL_ERROR_SYSCALL || (c->in_eof && e == 0)) {
        ERR_clear_error();
        ztm_log(ZTM_LOG_WARN, event,
                "role=%s during=%s reason=truncated error=\"transport closed without "
                "close_notify\"",
                role, where);
        return ztm_tls_conn_fail_(c, ZTM_TLS_E_TRUNCATED);
    }
    ztm_log(ZTM_LOG_WARN, event, "role=%s during=%s reason=protocol error=\"%s\"", role, where,
            ssl_error_text(err, sizeof(err)));
    return ztm_tls_conn_fail_(c, ZTM_TLS_E_PROTOCOL);
}

/* ---- handshake ---------------------------------------------------------------- */

void ztm_tls_log_established_(const ztm_tls_conn_t *c, const char *fallback)
{
    char subj[256];
    const char *sni = ztm_tls_conn_sni(c);
    ztm_log(ZTM_LOG_INFO, "tls.established",
            "role=%s version=TLSv1.3 cipher=%s alpn=h2 peer=\"%s\" sni=\"%s\" record_layer=%s "
            "ktls_mode=%s%s%s%s",
            role_name(c->ctx->role), ztm_tls_conn_cipher(c),
            subject_text(c->peer, subj, sizeof(subj)), sni ? sni : "", c->ktls ? "kernel" : "user",
            ztm_ktls_mode_name(c->ctx->ktls), fallback ? " fallback=\"" : "",
            fallback ? fallback : "", fallback ? "\"" : "");
}

uint64_t ztm_tls_handshake_deadline(const ztm_tls_conn_t *c)
{
    return c->deadline_ns;
}

bool ztm_tls_handshake_done(const ztm_tls_conn_t *c)
{
    return c->state == CONN_OPEN;
}

int ztm_tls_handshake(ztm_tls_conn_t *c)
{
    if (c->state == CONN_OPEN)
        return 0;
    if (c->state == CONN_FAILED)
        return ZTM_TLS_E_CLOSED;
    if (now_ns() >= c->deadline_ns) {
        ztm_log(ZTM_LOG_WARN, "tls.handshake_failed", "role=%s reason=timeout timeout_ms=%u",
                role_name(c->ctx->role), c->ctx->hs_timeout_ms);
        return ztm_tls_conn_fail_(c, -ETIMEDOUT);
    }
    ERR_clear_error();
    int r = SSL_do_handshake(c->ssl);
    if (r != 1) {
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ && !c->in_eof)
            return -EAGAIN;
        if (e == SSL_ERROR_WANT_WRITE)
            return -ENOBUFS;
        return ssl_failure(c, e, "handshake");
    }
    const uint8_t *alpn;
    unsigned alpn_len;
    SSL_get0_alpn_selected(c->ssl, &alpn, &alpn_len);
    if (alpn_len != 2 || memcmp(alpn, "h2", 2) != 0) {
        ztm_log(ZTM_LOG_WARN, "tls.handshake_failed",
                "role=%s reason=alpn error=\"peer did not negotiate ALPN h2\"",
                role_name(c->ctx->role));
        return ztm_tls_conn_fail_(c, ZTM_TLS_E_ALPN);
    }
    if (SSL_version(c->ssl) != TLS1_3_VERSION || (!c->peer && !c->ctx->client_cert_optional)) /* broken invariant */
        abort();
    c->state = CONN_OPEN;
    ZTM_TLS_STAT(handshakes_ok);
    if (c->ktls_decided) {
        ZTM_TLS_STAT(record_layer_user);
        ztm_tls_log_established_(c, NULL);
    }
    return 0;
}

/* ---- plaintext ---------------------------------------------------------------------- */

ssize_t ztm_tls_read(ztm_tls_conn_t *c, void *buf, size_t cap)
{
    if (c->state == CONN_HANDSHAKE)
        return -ENOTCONN;
    if (c->state == CONN_FAILED)
        return ZTM_TLS_E_CLOSED;
    if (c->ktls)
        return -EOPNOTSUPP;
    if (c->peer_closed)
        return 0;
    if (cap == 0 || !buf)
        return -EINVAL;
    ERR_clear_error();
    int r = SSL_read(c->ssl, buf, cap > INT_MAX ? INT_MAX : (int)cap);
    if (r > 0)
        return r;
    int e = SSL_get_error(c->ssl, r);
    switch (e) {
    case SSL_ERROR_ZERO_RETURN:
        c->peer_closed = true;
        return 0;
    case SSL_ERROR_WANT_READ:
        if (!c->in_eof)
            return -EAGAIN;
        ztm_log(ZTM_LOG_WARN, "tls.conn_failed",
                "role=%s reason=truncated error=\"transport closed without close_notify\"",
                role_name(c->ctx->role));
        return ztm_tls_conn_fail_(c, ZTM_TLS_E_TRUNCATED);
    case SSL_ERROR_WANT_WRITE:
        return -ENOBUFS;
    }
    return ssl_failure(c, e, "read");
}

/* Plaintext that fits in the out buffer's free room as whole sealed records,
 * so that BoringSSL never has to stop mid-flush in the common case. */
static size_t write_budget(const ztm_tls_conn_t *c)
{
    size_t room = c->out_cap - c->out_w;
    if (room < OUT_MARGIN + REC_OVERHEAD + 1)
        return 0;
    room -= OUT_MARGIN;
    size_t full = room / (REC_PLAIN + REC_OVERHEAD);
    size_t rest = room % (REC_PLAIN + REC_OVERHEAD);
    return full * REC_PLAIN + (rest > REC_OVERHEAD ? rest - REC_OVERHEAD : 0);
}

static bool cipher_is_aes_gcm(const SSL *ssl)
{
    const SSL_CIPHER *ci = SSL_get_current_cipher(ssl);
    uint16_t id = ci ? SSL_CIPHER_get_protocol_id(ci) : 0;
    return id == 0x1301 || id == 0x1302;
}

ssize_t ztm_tls_write(ztm_tls_conn_t *c, const void *buf, size_t len)
{
    if (c->state == CONN_HANDSHAKE)
        return -ENOTCONN;
    if (c->state == CONN_FAILED || c->shutdown_sent)
        return ZTM_TLS_E_CLOSED;
    if (c->ktls)
        return -EOPNOTSUPP;
    if (len == 0)
        return 0;
    if (!buf)
        return -EINVAL;
    size_t n = write_budget(c);
    if (c->write_retry) {
        /* BoringSSL holds a sealed record from the last call: it must see
         * at least the same bytes again. */
        if (len < c->write_retry)
            return -EINVAL;
        n = c->write_retry;
    }
    if (n == 0)
        return -ENOBUFS;
    if (n > len)
        n = len;
    if (n > INT_MAX)
        n = INT_MAX;
    if (SSL_get_write_sequence(c->ssl) >= c->ctx->gcm_limit && cipher_is_aes_gcm(c->ssl)) {
        ztm_log(ZTM_LOG_INFO, "tls.key_update", "role=%s reason=record_limit records=%llu",
                role_name(c->ctx->role), (unsigned long long)SSL_get_write_sequence(c->ssl));
        if (!SSL_key_update(c->ssl, SSL_KEY_UPDATE_NOT_REQUESTED))
            return ssl_failure(c, SSL_ERROR_SSL, "key_update");
    }
    ERR_clear_error();
    int r = SSL_write(c->ssl, buf, (int)n);
    if (r > 0) {
        c->write_retry = 0;
        return r;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_WRITE) {
        c->write_retry = n;
        return -ENOBUFS;
    }
    return ssl_failure(c, e, "write");
}

int ztm_tls_shutdown(ztm_tls_conn_t *c)
{
    if (c->shutdown_sent)
        return 0;
    if (c->state != CONN_OPEN)
        return c->state == CONN_HANDSHAKE ? -ENOTCONN : ZTM_TLS_E_CLOSED;
    if (c->ktls)
        return -EOPNOTSUPP;
    ERR_clear_error();
    int r = SSL_shutdown(c->ssl);
    if (r >= 0) {
        c->shutdown_sent = true;
        return 0;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_WRITE)
        return -ENOBUFS;
    return ssl_failure(c, e, "shutdown");
}

int ztm_tls_key_update(ztm_tls_conn_t *c, bool request_peer)
{
    if (c->state != CONN_OPEN)
        return c->state == CONN_HANDSHAKE ? -ENOTCONN : ZTM_TLS_E_CLOSED;
    if (c->ktls)
        return -EOPNOTSUPP;
    ERR_clear_error();
    if (!SSL_key_update(c->ssl,
                        request_peer ? SSL_KEY_UPDATE_REQUESTED : SSL_KEY_UPDATE_NOT_REQUESTED))
        return ssl_failure(c, SSL_ERROR_SSL, "key_update");
    return 0;
}

/* ---- ciphertext out ------------------------------------------------------------------ */

size_t ztm_tls_out_pending(const ztm_tls_conn_t *c, const uint8_t **data)
{
    *data = c->out ? c->out + c->out_r : NULL;
    return c->out_w - c->out_r;
}

void ztm_tls_out_consume(ztm_tls_conn_t *c, size_t n)
{
    size_t pending = c->out_w - c->out_r;
    if (n > pending)
        n = pending;
    c->out_r += n;
    if (c->out_r == c->out_w) {
        c->out_r = c->out_w = 0;
    } else if (c->out_r >= c->out_cap / 2) {
        memmove(c->out, c->out + c->out_r, c->out_w - c->out_r);
        c->out_w -= c->out_r;
        c->out_r = 0;
    }
}

/* ---- what was agreed ---------------------------------------------------------------- */

X509 *ztm_tls_conn_peer_cert(const ztm_tls_conn_t *c)
{
    return c->state == CONN_OPEN ? c->peer : NULL;
}

const char *ztm_tls_conn_verify_reason(const ztm_tls_conn_t *c)
{
    return c->verify_reason;
}

int ztm_tls_conn_alert(const ztm_tls_conn_t *c)
{
    return c->alert;
}

const char *ztm_tls_alert_name(int alert)
{
    return SSL_alert_desc_string_long(alert);
}

const char *ztm_tls_conn_cipher(const ztm_tls_conn_t *c)
{
    const SSL_CIPHER *ci = c->ssl ? SSL_get_current_cipher(c->ssl) : NULL;
    return ci ? SSL_CIPHER_standard_name(ci) : "";
}

const char *ztm_tls_conn_sni(const ztm_tls_conn_t *c)
{
    return c->ssl ? SSL_get_servername(c->ssl, TLSEXT_NAMETYPE_host_name) : NULL;
}

ztm_tls_role_t ztm_tls_conn_role(const ztm_tls_conn_t *c)
{
    return c->ctx->role;
}

void ztm_tls_conn_set_user(ztm_tls_conn_t *c, void *user)
{
    c->user = user;
}

void *ztm_tls_conn_user(const ztm_tls_conn_t *c)
{
    return c->user;
}
