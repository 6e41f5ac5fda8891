/* gRPC over HTTP/2 over a link, serving the control API (controlplane/
 * services). The wire work is here: the POST /package.Service/Method
 * routing, content-type (HTTP 415 otherwise), length-prefixed messages
 * (controlplane/grpc/frame.h), grpc-timeout deadlines, grpc-status and
 * grpc-message trailers, trailers-only answers for early errors, and
 * server-streaming Watch calls paced by HTTP/2 flow control and resumed by
 * store notifications. The caller's identity is read from the link's
 * verified client certificate only (none: an anonymous caller, who may only
 * Join and check health).
 *
 * A server belongs to the control-plane thread: the worker that owns the
 * store. */
#ifndef ZTM_CONTROLPLANE_GRPC_SERVER_H
#define ZTM_CONTROLPLANE_GRPC_SERVER_H

#include "controlplane/services/api.h"
#include "controlplane/services/revset.h"
#include "controlplane/store/store.h"
#include "dataplane/h2/h2.h"
#include "dataplane/link/link.h"
#include "dataplane/runtime/outbox.h"
#include "dataplane/runtime/worker.h"
#include "dataplane/tls/tls.h"

typedef struct ztm_grpc_server ztm_grpc_server_t;

typedef struct {
    uint32_t max_message;    /* request size limit; 0: 4 MiB (RESOURCE_EXHAUSTED past it) */
    uint64_t watch_heartbeat_ns; /* reserved */
} ztm_grpc_server_config_t;

/* A server on worker W for API (over STORE, for Watch notifications). CFG
 * may be NULL. Returns 0, -ENOMEM, or the store's error. */
int ztm_grpc_server_new(ztm_worker_t *w, ztm_api_t *api, ztm_store_t *store,
                        const ztm_grpc_server_config_t *cfg, ztm_grpc_server_t **out);
/* A server on data-plane worker W whose calls run on the control-plane
 * worker CONTROL (controlplane/grpc/forward.h), posted through OB; the
 * worker hands the answers in with ztm_grpc_server_message(), and the
 * revocations with ztm_grpc_server_set_revoked(). */
int ztm_grpc_server_new_forward(ztm_worker_t *w, ztm_outbox_t *ob, unsigned control,
                                const ztm_grpc_server_config_t *cfg, ztm_grpc_server_t **out);
/* An answer from the control-plane worker: true if M was ours. */
bool ztm_grpc_server_message(ztm_grpc_server_t *s, const ztm_msg_t *m);
/* The revocations as of now (REVOKED's reference is taken over). The
 * connections of identities it names are cut at once: their watches end
 * with UNAUTHENTICATED, what is answered goes out, they close. The verify
 * hook checks handshakes against it. */
void ztm_grpc_server_set_revoked(ztm_grpc_server_t *s, ztm_revset_t *revoked);

/* Frees S; call once ztm_grpc_server_conns() is 0 (after stop and drain). */
void ztm_grpc_server_free(ztm_grpc_server_t *s);

/* Serves FD (an accepted socket) with TLS context TLS (NULL: plaintext, for
 * local sockets). Returns 0 or -errno (FD closed). */
int ztm_grpc_server_accept(ztm_grpc_server_t *s, int fd, ztm_tls_ctx_t *tls);

/* Runs the unary calls that became ready in this loop turn, together in one
 * store group (one durable write), and only then sends their replies. Call
 * from the service's tick (after each batch of completions). */
void ztm_grpc_server_run(ztm_grpc_server_t *s);

/* Graceful: GOAWAY on every connection; calls in flight finish. */
void ztm_grpc_server_drain(ztm_grpc_server_t *s);
/* At once: every connection closed. */
void ztm_grpc_server_stop(ztm_grpc_server_t *s);
unsigned ztm_grpc_server_conns(const ztm_grpc_server_t *s);

/* A TLS verify hook (ztm_tls_config_t.on_verify, arg = the server) that
 * refuses, during the handshake, certificates that are not identities of
 * ours or are revoked (by the store, or by the last revocations given to a
 * forwarding server). Runs on the server's worker. */
const char *ztm_grpc_server_verify(void *arg, ztm_tls_conn_t *conn, X509 *peer);

/* ---- local servers (an agent's API on its Unix socket) ----------------- */
/* Answers one unary call of PATH from CALLER (NULL: no certificate, as on
 * a local socket) with request REQ; fills *REPLY (the server frees it). */
typedef void (*ztm_grpc_local_fn)(void *arg, const char *path, const ztm_identity_t *caller,
                                  const uint8_t *req, size_t len, ztm_api_reply_t *reply);
/* A server whose every unary call goes to FN (no store, no Watch). */
int ztm_grpc_server_new_local(ztm_worker_t *w, ztm_grpc_local_fn fn, void *arg,
                              const ztm_grpc_server_config_t *cfg, ztm_grpc_server_t **out);

/* ---- other routes on the same connections (the hub's relay) ------------ */
typedef struct ztm_grpc_conn ztm_grpc_conn_t;
typedef struct ztm_grpc_route ztm_grpc_route_t;
/* A route's stream data must begin with this (set ROUTE to the route
 * given to on_request), so the server can tell its streams apart. */
typedef struct {
    const ztm_grpc_route_t *route;
} ztm_grpc_route_stream_t;
/* Requests whose :path starts with PREFIX go to these callbacks instead of
 * the API; they own the stream (ztm_h2_stream_set_data with an object that
 * begins with ztm_grpc_route_stream_t, or answer/reset at once). The other
 * callbacks have the meaning of ztm_h2_callbacks_t's; on_stream_close is
 * also how a route learns that the connection went (every stream of a
 * closing connection is closed first). A revoked connection's new requests
 * are reset before they reach the route. */
struct ztm_grpc_route {
    const char *prefix;
    void (*on_request)(void *arg, ztm_grpc_conn_t *c, ztm_h2_session_t *h, int32_t id,
                       const ztm_h2_msg_t *req);
    void (*on_data)(void *arg, ztm_h2_session_t *h, int32_t id, void *sdata, const uint8_t *data,
                    size_t len);
    void (*on_end_stream)(void *arg, ztm_h2_session_t *h, int32_t id, void *sdata);
    ssize_t (*read_body)(void *arg, ztm_h2_session_t *h, int32_t id, void *sdata, uint8_t *dst,
                         size_t max, bool *eof);
    void (*on_stream_close)(void *arg, ztm_h2_session_t *h, int32_t id, void *sdata,
                            uint32_t error_code);
    /* Optional: C's certificate was revoked and C is being closed (GOAWAY
     * sent, the link closing). Its streams close when the link is gone,
     * which may take a while (a peer that does not read); a route that
     * ties them to other connections can end them at once. Called outside
     * every session callback; do only bookkeeping here (the server flushes
     * C right after). */
    void (*on_conn_revoked)(void *arg, ztm_grpc_conn_t *c);
    void *arg;
};
/* Adds ROUTE (copied; at most 4). 0 or -EINVAL. */
int ztm_grpc_server_add_route(ztm_grpc_server_t *s, const ztm_grpc_route_t *route);
/* The connection's verified identity (NULL: no client certificate). */
const ztm_identity_t *ztm_grpc_conn_identity(const ztm_grpc_conn_t *c);
ztm_link_t *ztm_grpc_conn_link(const ztm_grpc_conn_t *c);
/* Call after changing C's session from outside its callbacks (another
 * connection's, a timer): writes what is due. */
void ztm_grpc_conn_kick(ztm_grpc_conn_t *c);

#endif
