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
#include "controlplane/store/store.h"
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
 * ours or are revoked. Runs on the worker that owns the store. */
const char *ztm_grpc_server_verify(void *arg, ztm_tls_conn_t *conn, X509 *peer);

#endif
