/* Inside a peer session: the session (peer.c: carrier, TLS, the inner
 * HTTP/2 session, lifetime) and its streams (peer_stream.c: one local socket
 * or UDP flow per inner stream). Not for use outside dataplane/peer. */
#ifndef ZTM_PEER_PEER_INT_H
#define ZTM_PEER_PEER_INT_H

#include "dataplane/peer/peer.h"

#include "dataplane/h2/h2.h"

/* Each direction of a stream holds at most this much, and the inner
 * session's stream window is the same, so what the far end may send always
 * fits. 128 KiB: a whole 65535-byte datagram and its length fit with room
 * to spare, and a relayed path keeps some bytes in flight. */
#define PEER_STREAM_BUF  (128u * 1024)
#define PEER_DGRAM_MAX   65535u
#define PEER_SERVICE_MAX 128

typedef struct pstream pstream_t;

/* The session's life: HANDSHAKE -> OPEN -> CLOSING (GOAWAY, streams finish)
 * -> NOTIFY (close_notify queued; produce gives EOF once it is out) ->
 * DONE (ended: closed is delivered later, the release follows the last
 * completion). Any state may go to DONE at once on an error. */
typedef enum { P_HANDSHAKE, P_OPEN, P_CLOSING, P_NOTIFY, P_DONE } peer_state_t;

typedef struct in_chunk in_chunk_t;

struct ztm_peer {
    ztm_ref_t ref;
    ztm_worker_t *w;
    uint64_t id;
    peer_state_t state;
    bool client;
    bool ready;       /* handshake done, peer identity checked */
    bool gone;        /* the carrier went away: call nothing of it */
    bool closed_sent; /* `closed` delivered */
    bool end_error;
    bool want_write_sent; /* want_write called since the last produce */
    bool in_blocked;      /* TLS wanted its output drained before reading on */
    bool peer_closed;     /* the far end's close_notify arrived */
    bool settling;
    unsigned depth; /* entry points on the stack (no release, no carrier calls) */

    ztm_peer_carrier_t carrier;
    void *carrier_arg;
    char mesh[ZTM_MESH_MAX + 1];
    char expect_name[ZTM_NAME_MAX + 1];
    ztm_peer_resolve_fn resolve;
    void *resolve_arg;
    void (*on_refused)(void *arg, const char *service, bool udp, int status, const char *why);
    void *refused_arg;
    uint64_t idle_timeout_ns, udp_idle_timeout_ns, connect_timeout_ns;

    ztm_tls_conn_t *tls;
    ztm_h2_session_t *h2; /* NULL once the session ended */
    ztm_identity_t peer_id;

    /* ciphertext fed but not yet taken by TLS (bounded by the carrier's window) */
    in_chunk_t *in_head, *in_tail, *in_spare;
    size_t consumed_pending; /* taken by TLS, not yet reported to the carrier */

    /* plaintext staging: decrypted input, and h2 output TLS has not taken */
    uint8_t *rbuf, *obuf;
    uint32_t carry_off, carry_len;

    pstream_t *streams; /* every stream until its release */
    unsigned n_streams;
    uint64_t idle_since;
    uint64_t notify_at;       /* when close_notify was queued */
    const char *close_reason; /* why CLOSING was entered (static) */

    ztm_op_t defer_op; /* a NOP: delivers `closed` outside the caller's stack */
    ztm_timer_t timer;
    ztm_peer_stats_t stats;
    char reason[128];
};

/* peer.c */
void peer_enter(ztm_peer_t *p);
void peer_leave(ztm_peer_t *p);
/* A stream was released: the session may go idle. */
void peer_stream_gone(ztm_peer_t *p);

/* peer_stream.c */
extern const ztm_h2_callbacks_t peer_h2_callbacks;
/* Every stream ends at once (abortively) because the session ended. */
void pstream_abort_all(ztm_peer_t *p);
int pstream_connect_tcp(ztm_peer_t *p, const char *service, int fd);
int pstream_udp_open(ztm_peer_t *p, const char *service, const ztm_peer_udp_cb_t *cb, void *arg,
                     uint32_t *flow_id);
int pstream_udp_send(ztm_peer_t *p, uint32_t flow_id, const uint8_t *dgram, size_t len);
void pstream_udp_close(ztm_peer_t *p, uint32_t flow_id);

#endif
