/* TLS 1.3 over BoringSSL, driven by the caller's buffers.
 *
 * This layer never touches a socket. The worker that owns a connection moves
 * ciphertext between the socket and the connection's two staging buffers,
 * and plaintext between the connection and its own buffers:
 *
 *   socket --recv--> ztm_tls_in_space/in_commit (or ztm_tls_feed, one copy)
 *          --BoringSSL--> ztm_tls_read(conn, your buffer)
 *   your buffer --ztm_tls_write--> ztm_tls_out_pending --send--> socket
 *          (then ztm_tls_out_consume with what the socket took)
 *
 * Receiving straight into in_space costs no copy of ours; sending straight
 * from out_pending neither; the one copy each way is BoringSSL's own (into
 * its record buffer, and the sealed record into our out buffer). Buffers are
 * allocated once per connection: nothing is allocated per byte or per record.
 *
 * After any call, the caller sends what ztm_tls_out_pending holds (handshake
 * flights, alerts, KeyUpdate replies appear there too).
 *
 * Mesh policy is fixed here: TLS 1.3 only, mutual authentication against the
 * context's CA bundle, ALPN "h2" required, no session resumption. After the
 * handshake the record layer may move into the kernel: see ktls.h.
 *
 * Errors: 0 or a positive count on success; -errno; or a ZTM_TLS_E_* code
 * (all below -4095). ztm_tls_strerror names any of them. */
#ifndef ZTM_TLS_TLS_H
#define ZTM_TLS_TLS_H

#include <openssl/base.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

enum {
    ZTM_TLS_E_PROTOCOL = -4096,         /* TLS protocol error (bad record, decrypt failure…) */
    ZTM_TLS_E_VERIFY = -4097,           /* we refused the peer's certificate: see verify_reason */
    ZTM_TLS_E_PEER_ALERT = -4098,       /* the peer sent a fatal alert: see ztm_tls_conn_alert */
    ZTM_TLS_E_ALPN = -4099,             /* the peer did not agree on ALPN "h2" */
    ZTM_TLS_E_TRUNCATED = -4100,        /* transport EOF without close_notify */
    ZTM_TLS_E_CLOSED = -4101,           /* the connection already failed or was shut down */
    ZTM_TLS_E_CONFIG = -4102,           /* unusable certificate, key or CA file (logged) */
    ZTM_TLS_E_KTLS_UNAVAILABLE = -4103, /* --ktls on, and the kernel cannot take this session */
    ZTM_TLS_E_REKEY_NEEDED = -4104,     /* kTLS: peer sent KeyUpdate, the kernel cannot rekey */
    ZTM_TLS_E_RECORD_LIMIT = -4105,     /* kTLS: near the AES-GCM record limit: close, reconnect */
};

/* Names an error code of this layer (or an -errno); never NULL. */
const char *ztm_tls_strerror(int err);

typedef enum { ZTM_TLS_SERVER, ZTM_TLS_CLIENT } ztm_tls_role_t;

/* Where the record layer runs after the handshake (ztm --ktls).
 * AUTO: kernel when it can, else user space; ON: kernel or the connection
 * fails; OFF: always user space. */
typedef enum { ZTM_KTLS_OFF, ZTM_KTLS_AUTO, ZTM_KTLS_ON } ztm_ktls_mode_t;

/* "off|auto|on" -> mode; false (and *out untouched) if unknown. */
bool ztm_ktls_parse_mode(const char *s, ztm_ktls_mode_t *out);
const char *ztm_ktls_mode_name(ztm_ktls_mode_t m);

typedef struct ztm_tls_ctx ztm_tls_ctx_t;
typedef struct ztm_tls_conn ztm_tls_conn_t;

/* Called once per handshake after the peer's chain verified against the CA
 * bundle (validity dates, key usage and EKU for the peer's role included).
 * PEER is the verified leaf: the connection's identity (borrowed; it stays
 * readable through ztm_tls_conn_peer_cert for the connection's life).
 * Return NULL to accept, or a short static reason ("revoked",
 * "unknown_endpoint"…) to refuse: it becomes the verify reason. */
typedef const char *(*ztm_tls_verify_fn)(void *arg, ztm_tls_conn_t *conn, X509 *peer);

typedef struct {
    ztm_tls_role_t role;
    const char *cert_file; /* PEM: our leaf, then any intermediates; a client may
                              leave cert and key NULL (server-only TLS: a joiner) */
    const char *key_file;  /* PEM: our private key */
    const char *ca_file;   /* PEM bundle: the CAs a peer's chain must end at */
    /* Client only, instead of ca_file: the SHA-256 of the CA's
     * SubjectPublicKeyInfo (an invite's pin). The server must present that
     * CA in its chain; the leaf is verified against it as against a file.
     * This is how a joiner, which has no CA yet, trusts the right one. */
    const uint8_t *ca_pin; /* 32 bytes, or NULL */
    ztm_ktls_mode_t ktls;  /* default (0) OFF */
    /* Server only: ask for a client certificate but accept a client without
     * one (its identity is then NULL). Never inside the mesh; for the public
     * side of a gateway and for benchmarks with clients that cannot present
     * one (h2load). A certificate that is presented is still verified. */
    bool client_cert_optional;
    /* 0 picks the default for each of these: */
    uint32_t handshake_timeout_ms; /* 10000 */
    uint32_t in_buf_size;          /* ciphertext in, 34 KiB (two full records) */
    uint32_t out_buf_size;         /* ciphertext out, 66 KiB (four full records) */
    uint64_t aes_gcm_record_limit; /* records per key before we rekey or close: 2^23 */
    ztm_tls_verify_fn on_verify;   /* optional */
    void *on_verify_arg;
} ztm_tls_config_t;

/* Builds a context from CFG (files are read now; CFG need not outlive the
 * call). If SSLKEYLOGFILE is set in the environment, every connection's
 * secrets are appended to that file (NSS key log format, as curl does) and a
 * warning is logged; unset, nothing is written. Returns 0 and *OUT, or
 * ZTM_TLS_E_CONFIG (the cause logged, naming the file), -EINVAL, -ENOMEM.
 * A context is immutable once built: any thread may create connections. */
int ztm_tls_ctx_new(ztm_tls_ctx_t **out, const ztm_tls_config_t *cfg);
/* Drops the caller's reference; the context lives on until its last
 * connection is freed. NULL is a no-op. */
void ztm_tls_ctx_free(ztm_tls_ctx_t *ctx);
/* Takes another reference on CTX (dropped with ztm_tls_ctx_free), for a
 * holder that outlives its creator's reference (an agent's hub link). */
void ztm_tls_ctx_ref(ztm_tls_ctx_t *ctx);

/* A new connection in CTX's role. SNI (client only, may be NULL) is sent as
 * server_name. The handshake deadline starts now. Returns 0, -EINVAL,
 * -ENOMEM. A connection belongs to one thread. */
int ztm_tls_conn_new(ztm_tls_conn_t **out, ztm_tls_ctx_t *ctx, const char *sni);
/* Frees the connection and wipes its key material. NULL is a no-op. */
void ztm_tls_conn_free(ztm_tls_conn_t *conn);

/* ---- ciphertext in ---------------------------------------------------- */

/* Space to receive ciphertext into: returns a pointer and sets *LEN to the
 * room (0 when full: read plaintext first). The caller may recv() into it
 * and then calls ztm_tls_in_commit with the count; one receive at a time,
 * and no ztm_tls_feed while it is in flight. The room is capped by
 * ztm_tls_recv_limit. */
uint8_t *ztm_tls_in_space(ztm_tls_conn_t *conn, size_t *len);
/* Accounts N bytes received into ztm_tls_in_space. 0, or -EINVAL if N is
 * more than the room that was given. */
int ztm_tls_in_commit(ztm_tls_conn_t *conn, size_t n);
/* Copies up to LEN bytes of ciphertext in; returns how many were taken
 * (less than LEN when the buffer is full: keep the rest and feed it after
 * reading plaintext). For a caller whose receives land in its own buffers
 * (provided-buffer rings). It takes bytes past ztm_tls_recv_limit too: they
 * can only delay a kTLS switch until the stream is at a record boundary
 * again with nothing left to read. */
size_t ztm_tls_feed(ztm_tls_conn_t *conn, const void *buf, size_t len);
/* The transport reached EOF: a read that needs more input then fails with
 * ZTM_TLS_E_TRUNCATED instead of -EAGAIN. */
void ztm_tls_feed_eof(ztm_tls_conn_t *conn);
/* The most bytes the caller may take off the socket now. SIZE_MAX normally.
 * While a kTLS switch is still possible (mode auto/on, before
 * ztm_ktls_enable settles it): only up to the end of the current TLS
 * record, so that no byte beyond the handshake leaves the kernel's receive
 * queue; and 0 once the handshake is done and a record boundary reached:
 * then read what is buffered (ztm_tls_read until -EAGAIN) and call
 * ztm_ktls_enable, which lifts the limit. */
size_t ztm_tls_recv_limit(const ztm_tls_conn_t *conn);

/* ---- handshake ---------------------------------------------------------- */

/* Advances the handshake with what has been fed. Returns 0 once it is
 * complete (the peer verified, TLS 1.3 and ALPN h2 agreed); -EAGAIN when it
 * needs more input (send ztm_tls_out_pending first); -ENOBUFS when the out
 * buffer is full (send, consume, call again); -ETIMEDOUT past the
 * deadline; ZTM_TLS_E_VERIFY, ZTM_TLS_E_PEER_ALERT, ZTM_TLS_E_ALPN,
 * ZTM_TLS_E_PROTOCOL, ZTM_TLS_E_TRUNCATED. Each failure is logged once
 * (tls.verify_failed / tls.handshake_failed) with its reason; send the
 * pending alert, then close. */
int ztm_tls_handshake(ztm_tls_conn_t *conn);
/* CLOCK_MONOTONIC nanoseconds at which the handshake times out: arm a timer
 * and call ztm_tls_handshake when it fires. */
uint64_t ztm_tls_handshake_deadline(const ztm_tls_conn_t *conn);
bool ztm_tls_handshake_done(const ztm_tls_conn_t *conn);

/* ---- plaintext (user-space record layer) ---------------------------------- */

/* Decrypts into BUF (CAP bytes). Returns >0 bytes; 0 once the peer's
 * close_notify arrived; -EAGAIN when more ciphertext is needed; -ENOBUFS
 * when the out buffer must drain first; -ENOTCONN before the handshake
 * completes; -EOPNOTSUPP once kTLS carries the records (read the socket);
 * ZTM_TLS_E_TRUNCATED, ZTM_TLS_E_PEER_ALERT, ZTM_TLS_E_PROTOCOL,
 * ZTM_TLS_E_CLOSED. */
ssize_t ztm_tls_read(ztm_tls_conn_t *conn, void *buf, size_t cap);
/* Encrypts up to LEN bytes from BUF into the out buffer. Returns how many
 * were taken (> 0; fewer than LEN when the out buffer is short), -ENOBUFS
 * when it is full (send, consume, then call again with the same bytes),
 * -ENOTCONN, -EOPNOTSUPP (kTLS: write the socket), ZTM_TLS_E_CLOSED. */
ssize_t ztm_tls_write(ztm_tls_conn_t *conn, const void *buf, size_t len);
/* Queues close_notify. 0, -ENOBUFS (drain and retry), -EOPNOTSUPP under kTLS
 * (use ztm_ktls_send_close_notify), ZTM_TLS_E_CLOSED. Idempotent. */
int ztm_tls_shutdown(ztm_tls_conn_t *conn);
/* Queues a TLS 1.3 KeyUpdate (asking the peer to update too if
 * REQUEST_PEER). A kTLS peer on a kernel that cannot rekey will close. 0,
 * -ENOTCONN, -EOPNOTSUPP under kTLS, ZTM_TLS_E_PROTOCOL. */
int ztm_tls_key_update(ztm_tls_conn_t *conn, bool request_peer);

/* ---- ciphertext out ------------------------------------------------------- */

/* Ciphertext waiting to be sent: sets *DATA and returns its length (0:
 * nothing). The bytes stay put until consumed; new output is appended. */
size_t ztm_tls_out_pending(const ztm_tls_conn_t *conn, const uint8_t **data);
/* Drops N sent bytes (N is clamped to what is pending). May move what is
 * left: call ztm_tls_out_pending again before the next send. */
void ztm_tls_out_consume(ztm_tls_conn_t *conn, size_t n);

/* ---- what was agreed -------------------------------------------------------- */

/* The verified peer leaf (the identity), borrowed; NULL before. */
X509 *ztm_tls_conn_peer_cert(const ztm_tls_conn_t *conn);
/* Why the peer's certificate was refused: "unknown_ca", "expired",
 * "not_yet_valid", "wrong_key_usage", "no_certificate", "bad_signature",
 * "invalid", or the verify hook's reason. NULL if it was not refused. */
const char *ztm_tls_conn_verify_reason(const ztm_tls_conn_t *conn);
/* The fatal alert the peer sent (RFC 8446 description), or -1. */
int ztm_tls_conn_alert(const ztm_tls_conn_t *conn);
/* An alert description's name ("access denied", "bad certificate", ...). */
const char *ztm_tls_alert_name(int alert);
/* Agreed cipher (IANA name, e.g. "TLS_AES_128_GCM_SHA256"), "" before. */
const char *ztm_tls_conn_cipher(const ztm_tls_conn_t *conn);
/* Server: the SNI the client sent (or NULL). Client: the SNI we sent. */
const char *ztm_tls_conn_sni(const ztm_tls_conn_t *conn);
ztm_tls_role_t ztm_tls_conn_role(const ztm_tls_conn_t *conn);

/* Caller's pointer, for hooks. */
void ztm_tls_conn_set_user(ztm_tls_conn_t *conn, void *user);
void *ztm_tls_conn_user(const ztm_tls_conn_t *conn);

/* Process-wide counters (relaxed atomics; for metrics). */
typedef struct {
    uint64_t handshakes_ok;
    uint64_t handshakes_failed;
    uint64_t verify_refused;
    uint64_t record_layer_user; /* connections that kept the record layer in BoringSSL */
    uint64_t record_layer_ktls; /* connections whose record layer moved into the kernel */
    uint64_t ktls_fallbacks;    /* --ktls auto, the kernel could not: user space instead */
} ztm_tls_stats_t;
void ztm_tls_stats_get(ztm_tls_stats_t *out);

#endif
