/* A peer session: TLS 1.3 between two endpoints' own certificates, carried
 * over a byte pipe (a relayed HTTP/2 stream through a hub: the *carrier*),
 * with HTTP/2 inside. Each tunnelled TCP connection or UDP flow is one
 * stream of that inner HTTP/2 session, so one handshake serves many
 * connections and the hub carries only ciphertext.
 *
 *   local socket <-> inner stream <-> inner h2 <-> TLS <-> carrier (hub stream)
 *
 * The dialling end (the importer) is the TLS and HTTP/2 client; it checks
 * that the peer's verified certificate names the endpoint it meant
 * (EXPECT_NAME, in this mesh, role agent or gateway). The accepting end
 * (the exporter) is the server; it reads the caller's identity from the
 * caller's verified certificate and asks RESOLVE whether that caller may
 * reach the service, and where the service is.
 *
 * Inner streams: a TCP connection is `CONNECT` with :authority
 * "SERVICE.tcp" (a UDP flow "SERVICE.udp", each datagram framed by a 2-byte
 * big-endian length). The exporter answers 200 once its connection to the
 * target is up; 403 with a `ztm-error` header when RESOLVE refuses; 404 for
 * an unknown service; 502 when the target refused or did not answer. The
 * importer closes the local connection on any refusal and logs the reason
 * (tunnel.refused service=... status=... error="...").
 *
 * Flow control is end to end and bounded: bytes from a local socket are
 * read only as far as the inner stream's window allows; bytes for a local
 * socket are consumed on the inner stream (WINDOW_UPDATE) only once the
 * socket took them; the carrier's bytes are reported consumed (so the hub
 * may send more) only once TLS and the inner HTTP/2 session took them.
 * Half-close passes both ways (a FIN becomes END_STREAM and back); an RST
 * becomes RST_STREAM(CANCEL) and back.
 *
 * Lifetime: a session frees itself once it has ended (after `closed`, or
 * after ztm_peer_carrier_gone) and its sockets' last completions are in.
 *
 * One session, one worker; nothing here is thread-safe. */
#ifndef ZTM_PEER_PEER_H
#define ZTM_PEER_PEER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "controlplane/ca/identity.h"
#include "dataplane/runtime/net.h"
#include "dataplane/runtime/worker.h"
#include "dataplane/tls/tls.h"

typedef struct ztm_peer ztm_peer_t;

/* The carrier's side of the contract (a relayed stream on the hub link). */
typedef struct {
    /* The session has ciphertext to send: call ztm_peer_produce when the
     * carrier can send (now or later). */
    void (*want_write)(void *carrier);
    /* N bytes given to ztm_peer_feed were taken by TLS: the carrier may let
     * the far end send N more (HTTP/2: ztm_h2_consume on the outer stream). */
    void (*consumed)(void *carrier, size_t n);
    /* The session has ended (REASON: "idle", "verify: wrong_peer", "closed",
     * ...). ERROR false: after the last bytes ztm_peer_produce gives (EOF),
     * end the carrier cleanly; true: reset it. Called once; the session
     * calls nothing of the carrier after it, and the carrier must not call
     * ztm_peer_* with P afterwards. */
    void (*closed)(void *carrier, const char *reason, bool error);
} ztm_peer_carrier_t;

/* The exporter's policy. CALLER is the verified identity of the far end.
 * Fill *TO and return NULL to let the stream through, or return a short
 * reason: "unknown service" (sent as 404) or anything else (403, e.g.
 * "endpoint bob is not in the allow list of service web"). */
typedef const char *(*ztm_peer_resolve_fn)(void *arg, const ztm_identity_t *caller,
                                           const char *service, bool udp, ztm_addr_t *to);

typedef struct {
    ztm_tls_ctx_t *tls;      /* ZTM_TLS_CLIENT for the dialling end, SERVER for the
                                accepting end: our certificate, the mesh CA */
    const char *mesh;        /* the mesh both ends must be in */
    const char *expect_name; /* client: the endpoint name the peer must have */
    ztm_peer_resolve_fn resolve; /* server: required */
    void *resolve_arg;
    /* client, optional: the far end refused a stream to SERVICE (STATUS
     * 403, 404 or 502; WHY its reason). Also logged as tunnel.refused. */
    void (*on_refused)(void *arg, const char *service, bool udp, int status, const char *why);
    void *refused_arg;
    uint64_t idle_timeout_ns;    /* no inner streams this long: close (0: 300 s) */
    uint64_t udp_idle_timeout_ns; /* a UDP flow with no datagram this long ends (0: 60 s) */
    uint64_t connect_timeout_ns;  /* exporter: target connect deadline (0: 10 s) */
} ztm_peer_config_t;

/* A session on worker W over CARRIER (CARRIER_ARG passed to its calls).
 * The TLS handshake starts at once (the client's first flight is ready to
 * produce). Strings in CFG are copied. Returns 0 and *OUT, -ENOMEM, -EINVAL. */
int ztm_peer_new(ztm_worker_t *w, const ztm_peer_config_t *cfg, const ztm_peer_carrier_t *carrier,
                 void *carrier_arg, ztm_peer_t **out);

/* Ciphertext from the carrier: all LEN bytes are taken (copied; the copy is
 * bounded because the carrier's window bounds what may arrive before
 * `consumed` reports room). */
void ztm_peer_feed(ztm_peer_t *p, const uint8_t *data, size_t len);
/* The carrier will send no more bytes (the far end ended its side). */
void ztm_peer_feed_eof(ztm_peer_t *p);
/* Ciphertext for the carrier: up to CAP bytes into BUF; returns the count.
 * *EOF is set once everything is out after the session ended cleanly. */
size_t ztm_peer_produce(ztm_peer_t *p, uint8_t *buf, size_t cap, bool *eof);
/* The carrier failed or was reset under the session: everything ends now.
 * `closed` is not called after this. */
void ztm_peer_carrier_gone(ztm_peer_t *p, const char *reason);

/* Importer: carries the accepted TCP socket FD to SERVICE on the peer (may
 * be called before the handshake is done: the stream waits for it). Takes
 * FD in every case. Returns 0 or -errno. */
int ztm_peer_connect_tcp(ztm_peer_t *p, const char *service, int fd);
/* Importer, UDP: datagrams of one flow (from the local client at FROM) are
 * sent with ztm_peer_udp_send on the stream this returns an id for; replies
 * are given to ON_REPLY (which sends them from the import socket to FROM).
 * The flow ends after the idle timeout (ON_END then). */
typedef struct {
    void (*on_reply)(void *arg, const uint8_t *dgram, size_t len);
    void (*on_end)(void *arg, const char *reason);
} ztm_peer_udp_cb_t;
int ztm_peer_udp_open(ztm_peer_t *p, const char *service, const ztm_peer_udp_cb_t *cb, void *arg,
                      uint32_t *flow_id);
/* Queues one datagram on FLOW_ID (dropped, as UDP may, when the flow's
 * bounded queue is full). Returns 0, -ENOENT (flow gone), -EMSGSIZE (> 65535). */
int ztm_peer_udp_send(ztm_peer_t *p, uint32_t flow_id, const uint8_t *dgram, size_t len);
void ztm_peer_udp_close(ztm_peer_t *p, uint32_t flow_id);

/* Ends the session gracefully (GOAWAY, close_notify, carrier EOF) once its
 * streams are done; new streams are refused. */
void ztm_peer_close(ztm_peer_t *p);

/* True once the handshake is done and the peer checked. */
bool ztm_peer_ready(const ztm_peer_t *p);
/* The far end's verified identity (NULL before ready). */
const ztm_identity_t *ztm_peer_identity(const ztm_peer_t *p);
/* Live inner streams. */
unsigned ztm_peer_streams(const ztm_peer_t *p);

typedef struct {
    uint64_t bytes_in, bytes_out; /* tunnelled plaintext, both directions */
    uint64_t streams_total, streams_refused;
} ztm_peer_stats_t;
void ztm_peer_stats(const ztm_peer_t *p, ztm_peer_stats_t *out);

#endif
