/* The hub's relay: the hub side of proto/ztm/v1/relay.proto, as routes on
 * the control API's gRPC server (same TLS port, same connections).
 *
 *  - POST /ztm.v1.Relay/Events: an agent's control stream. Registers the
 *    caller's endpoint (from its verified certificate) as present here,
 *    sends Hello, then one Incoming per session opened to it. A second
 *    Events of the same endpoint replaces the first (ALREADY_EXISTS).
 *  - POST /ztm.relay/open (ztm-peer: NAME) and /ztm.relay/accept
 *    (ztm-session: ID): session streams, held until accepted and then
 *    spliced (each request body becomes the other's response body).
 *
 * Back-pressure is end to end: a stream's bytes are consumed (their window
 * credit returned to the sender) only once they have left the hub toward
 * the other side, so the hub holds at most one stream window per direction
 * of a session, and a slow reader slows its writer.
 *
 * Work that touches a connection other than the one whose callback is
 * running (a splice's other end, a timer, the store) is done from
 * ztm_hub_relay_run(), at the end of the loop turn: calling into another
 * connection from inside a callback could nest one session's flush inside
 * another's (or its own). One relay, one worker; nothing here is
 * thread-safe. */
#ifndef ZTM_HUB_RELAY_H
#define ZTM_HUB_RELAY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "controlplane/grpc/server.h"
#include "dataplane/runtime/worker.h"

typedef struct ztm_hub_relay ztm_hub_relay_t;

/* An endpoint came (an Events stream registered it) or went (its last
 * Events stream closed). */
typedef struct {
    const char *endpoint_id;
    const char *endpoint_name;
    bool present;
} ztm_hub_presence_t;

typedef struct {
    const char *hub_name;       /* Hello.hub_name: the hub's own endpoint name */
    const char *mesh;           /* only identities of this mesh may use the relay */
    uint64_t accept_timeout_ns; /* an open not accepted by then gets 504; 0: 10 s */
    size_t stream_window;       /* the server's per-stream receive window (what one
                                   direction may hold); 0: 1 MiB, the h2 default */
    /* The presence changes of one loop turn, in order (called from
     * ztm_hub_relay_run). Returns the store version after them, which the
     * Hellos of the endpoints that came carry. NULL: presence is not kept. */
    uint64_t (*on_presence)(void *arg, const ztm_hub_presence_t *changes, size_t n);
    void *arg;
} ztm_hub_relay_config_t;

/* Installs the routes "/ztm.v1.Relay/" and "/ztm.relay/" on SRV (which
 * runs on worker W). CFG is copied (strings too). Returns 0, -ENOMEM or
 * -EINVAL (no route slot left on SRV). */
int ztm_hub_relay_new(ztm_worker_t *w, ztm_grpc_server_t *srv, const ztm_hub_relay_config_t *cfg,
                      ztm_hub_relay_t **out);
/* Frees R. Call once SRV has no connection left (every stream closed). */
void ztm_hub_relay_free(ztm_hub_relay_t *r);

/* Does the work due at the end of a loop turn: presence changes and
 * Hellos, writes and resets due on connections changed from outside their
 * own callbacks. Call from the service's tick, after ztm_grpc_server_run. */
void ztm_hub_relay_run(ztm_hub_relay_t *r);

/* Graceful shutdown: every Events stream ends (UNAVAILABLE) and sessions
 * not yet accepted get 503; joined sessions run on until they end or the
 * connections close. Call with ztm_grpc_server_drain. */
void ztm_hub_relay_drain(ztm_hub_relay_t *r);

/* For tests and metrics: endpoints present, sessions waiting, sessions
 * joined. */
size_t ztm_hub_relay_endpoints(const ztm_hub_relay_t *r);
size_t ztm_hub_relay_waiting(const ztm_hub_relay_t *r);
size_t ztm_hub_relay_joined(const ztm_hub_relay_t *r);

#endif
