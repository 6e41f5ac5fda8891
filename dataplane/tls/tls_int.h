/* Inside the TLS module: the context and connection structs shared by tls.c
 * and ktls.c. Nothing outside dataplane/tls includes this. */
#ifndef ZTM_TLS_TLS_INT_H
#define ZTM_TLS_TLS_INT_H

#include "dataplane/tls/record.h"
#include "dataplane/tls/tls.h"

#include <openssl/ssl.h>

struct ztm_tls_ctx {
    SSL_CTX *ssl_ctx;
    X509_STORE *store; /* the CA bundle our own chain check uses */
    ztm_tls_role_t role;
    ztm_ktls_mode_t ktls;
    bool client_cert_optional;
    bool has_pin;     /* trust the CA with this pin from the peer's chain */
    uint8_t pin[32];
    uint32_t hs_timeout_ms;
    uint32_t in_cap, out_cap;
    uint64_t gcm_limit;
    ztm_tls_verify_fn on_verify;
    void *on_verify_arg;
    int keylog_fd; /* SSLKEYLOGFILE, or -1 */
    int refs;      /* atomic: the caller's + one per connection */
};

typedef enum {
    CONN_HANDSHAKE, /* -> OPEN | FAILED */
    CONN_OPEN,      /* -> FAILED; the record layer may move to the kernel */
    CONN_FAILED,    /* terminal */
} ztm_tls_conn_state_t;

/* Traffic secrets, captured from the keylog callback for the kTLS switch. */
enum { SECRET_CLIENT = 0, SECRET_SERVER = 1 };
#define ZTM_TLS_MAX_SECRET 48

struct ztm_tls_conn {
    ztm_tls_ctx_t *ctx;
    SSL *ssl;
    ztm_tls_conn_state_t state;

    /* ciphertext in: [in_r, in_w) unread; in_lent: room handed out by in_space */
    uint8_t *in;
    size_t in_cap, in_r, in_w, in_lent;
    bool in_eof;
    /* ciphertext out: [out_r, out_w) waiting for the socket */
    uint8_t *out;
    size_t out_cap, out_r, out_w;
    size_t write_retry; /* length of an SSL_write that must be retried */

    ztm_tls_rec_scan_t rx_scan; /* record boundaries of everything received */
    bool ktls_decided;          /* the record layer's home is settled */
    unsigned ktls;              /* ZTM_KTLS_TX | ZTM_KTLS_RX once in the kernel */
    bool peer_closed;           /* close_notify received */
    bool shutdown_sent;         /* close_notify sent */

    uint64_t deadline_ns;
    X509 *peer;                /* verified leaf, owned */
    const char *verify_reason; /* static string, or NULL */
    int alert;                 /* fatal alert from the peer, or -1 */
    void *user;

    uint8_t secret[2][ZTM_TLS_MAX_SECRET];
    uint8_t secret_len[2];

    /* kTLS bookkeeping */
    ztm_ktls_hs_t ktls_hs;
    uint64_t tx_records_est; /* upper bound on records sent under kTLS */
    uint64_t tx_check_at;    /* when the estimate crosses this, ask the kernel */
};

/* Marks CONN failed (once) and returns ERR. */
int ztm_tls_conn_fail_(ztm_tls_conn_t *conn, int err);
/* Logs tls.established with where the record layer runs. */
void ztm_tls_log_established_(const ztm_tls_conn_t *conn, const char *fallback);
/* Frees the staging buffers once the kernel carries the records. */
void ztm_tls_drop_buffers_(ztm_tls_conn_t *conn);
/* Wipes the captured traffic secrets. */
void ztm_tls_wipe_secrets_(ztm_tls_conn_t *conn);
void ztm_tls_stat_add_(size_t offset);
#define ZTM_TLS_STAT(field) ztm_tls_stat_add_(offsetof(ztm_tls_stats_t, field))

#endif
