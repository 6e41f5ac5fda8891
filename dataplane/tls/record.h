/* TLS framing that the TLS layer parses itself: no BoringSSL, no sockets, no
 * allocation, so fuzzers #include record.c directly.
 *
 * - A record-boundary scanner over a ciphertext byte stream. Before the
 *   record layer moves into the kernel, the worker must stop reading the
 *   socket exactly at a record boundary: bytes already pulled into user space
 *   can never be handed to kTLS.
 * - The cmsg walk that finds TLS_GET_RECORD_TYPE after recvmsg on a kTLS
 *   socket.
 * - The classifier for the plaintext of a non-data record that the kernel
 *   returns (alerts; post-handshake messages: NewSessionTicket, KeyUpdate). */
#ifndef ZTM_TLS_RECORD_H
#define ZTM_TLS_RECORD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ZTM_TLS_REC_HEADER 5
/* Largest TLSCiphertext body a peer may send (RFC 8446 §5.2: 2^14 + 256). */
#define ZTM_TLS_REC_MAX_BODY (16384 + 256)

enum {
    ZTM_TLS_CT_CHANGE_CIPHER_SPEC = 20,
    ZTM_TLS_CT_ALERT = 21,
    ZTM_TLS_CT_HANDSHAKE = 22,
    ZTM_TLS_CT_APPLICATION_DATA = 23,
};

enum {
    ZTM_TLS_HS_NEW_SESSION_TICKET = 4,
    ZTM_TLS_HS_KEY_UPDATE = 24,
};

/* ---- record boundaries in a ciphertext stream -------------------------- */

typedef struct {
    uint8_t hdr[ZTM_TLS_REC_HEADER];
    uint8_t hdr_have;   /* header bytes of the current record seen so far */
    bool broken;        /* a header was not a TLS record: boundaries unknown */
    uint32_t body_left; /* body bytes of the current record still to come */
    uint64_t records;   /* complete records seen */
} ztm_tls_rec_scan_t;

/* Advances S over LEN more bytes of the stream. Returns 0, or -EPROTO (and
 * sets s->broken for good) when a header names an unknown content type or a
 * length above ZTM_TLS_REC_MAX_BODY. */
int ztm_tls_rec_scan(ztm_tls_rec_scan_t *s, const uint8_t *p, size_t len);

/* True when the bytes seen so far end exactly at a record boundary. */
static inline bool ztm_tls_rec_scan_at_boundary(const ztm_tls_rec_scan_t *s)
{
    return !s->broken && s->hdr_have == 0 && s->body_left == 0;
}

/* How many more bytes complete the current header or body: the most a reader
 * may take without crossing the next boundary (never 0; 5 at a boundary). */
static inline size_t ztm_tls_rec_scan_need(const ztm_tls_rec_scan_t *s)
{
    if (s->body_left > 0)
        return s->body_left;
    return (size_t)(ZTM_TLS_REC_HEADER - s->hdr_have);
}

/* ---- kTLS control messages --------------------------------------------- */

/* Walks the control buffer of a recvmsg (CONTROL, LEN bytes, as the kernel
 * filled it: msg_controllen after the call) for a SOL_TLS/TLS_GET_RECORD_TYPE
 * message. Returns 0 and sets *TYPE; -ENOENT if there is none; -EINVAL if the
 * buffer is malformed (a length that overruns it). Reads unaligned input
 * safely: CONTROL may be any byte buffer. */
int ztm_ktls_cmsg_record_type(const void *control, size_t len, uint8_t *type);

/* Fills CONTROL (CAP bytes) with one SOL_TLS/TLS_SET_RECORD_TYPE message for
 * sendmsg. Returns its length (msg_controllen), or -ENOBUFS if CAP is short. */
int ztm_ktls_cmsg_put_record_type(void *control, size_t cap, uint8_t type);

/* ---- non-data records on a kTLS socket ---------------------------------- */

typedef enum {
    ZTM_KTLS_REC_DATA,         /* application data: hand to the caller */
    ZTM_KTLS_REC_IGNORE,       /* NewSessionTicket, or part of a message: read on */
    ZTM_KTLS_REC_CLOSE_NOTIFY, /* the peer closed cleanly */
    ZTM_KTLS_REC_ALERT,        /* a fatal alert: see .alert */
    ZTM_KTLS_REC_KEY_UPDATE,   /* the peer changed its keys: the kernel can't follow */
    ZTM_KTLS_REC_BAD,          /* malformed or not allowed after the handshake */
} ztm_ktls_rec_kind_t;

/* Handshake messages may span records: the classifier keeps this state. */
typedef struct {
    uint8_t hdr[4];
    uint8_t hdr_have;
    uint8_t type; /* type of the message whose body is being skipped */
    uint32_t body_left;
} ztm_ktls_hs_t;

typedef struct {
    ztm_ktls_rec_kind_t kind;
    uint8_t alert;          /* ALERT/CLOSE_NOTIFY: the description */
    uint8_t hs_type;        /* last handshake message type seen */
    uint8_t key_update_req; /* KEY_UPDATE: 1 if the peer asked us to update too */
    const char *why;        /* BAD: what was wrong (a static string) */
} ztm_ktls_rec_t;

/* Classifies one record the kernel returned: content TYPE (from the cmsg),
 * its plaintext BODY of LEN bytes. HS carries handshake-message state from
 * record to record (zero it once per connection). Returns out->kind. */
ztm_ktls_rec_kind_t ztm_ktls_classify(ztm_ktls_hs_t *hs, uint8_t type, const uint8_t *body,
                                      size_t len, ztm_ktls_rec_t *out);

#endif
