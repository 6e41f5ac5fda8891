/* The hub's relay: the hub side of proto/ztm/v1/relay.proto, as routes on
 * the control API's gRPC server (same TLS port, same connections), one
 * relay per data-plane worker.
 *
 *  - POST /ztm.v1.Relay/Events: an agent's control stream. Registers the
 *    caller's endpoint (from its verified certificate) as present here,
 *    sends Hello, then one Incoming per session opened to it. A second
 *    Events of the same endpoint replaces the first (ALREADY_EXISTS).
 *  - POST /ztm.relay/open (ztm-peer: NAME) and /ztm.relay/accept
 *    (ztm-session: ID): session streams, held until accepted and then
 *    spliced (each request body becomes the other's response body).
 *
 * Across workers: which endpoint's Events stream is on which worker is
 * known to the registry on the control-plane worker (registry.h), told by
 * message when a stream comes and goes and asked when a session is opened;
 * the opener's worker then has the peer's worker push Incoming. A session
 * belongs to the opener's worker until joined (its ID names that worker,
 * so an accept, wherever it arrives, goes there); once joined, its two
 * streams are spliced by message (xsplice.h), on one worker or two.
 *
 * Back-pressure is end to end: a stream's bytes are consumed (their window
 * credit returned to the sender) only once they have left the hub toward
 * the other side, so the hub holds at most one stream window per direction
 * of a session, and a slow reader slows its writer.
 *
 * Work that touches a stream other than the one whose callback is running
 * (the other end of a splice, a timer, a message) writes from
 * ztm_hub_relay_run(), at the end of the loop turn: calling into another
 * connection from inside a callback could nest one session's flush inside
 * another's (or its own). A relay belongs to its worker; nothing here is
 * thread-safe. */
#ifndef ZTM_HUB_RELAY_H
#define ZTM_HUB_RELAY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "controlplane/grpc/server.h"
#include "dataplane/runtime/outbox.h"
#include "dataplane/runtime/worker.h"

/* The message types of the relay and the registry: [FIRST, FIRST + COUNT)
 * (dataplane/hub/hubmsg.h), and those of the splice (xsplice.h). */
#define ZTM_HUB_MSG_FIRST (ZTM_MSG_SERVICE + 32)
#define ZTM_HUB_MSG_COUNT 16

typedef struct ztm_hub_relay ztm_hub_relay_t;

typedef struct {
    const char *hub_name;       /* Hello.hub_name: the hub's own endpoint name */
    const char *mesh;           /* only identities of this mesh may use the relay */
    uint64_t accept_timeout_ns; /* an open not accepted by then gets 504; 0: 10 s */
    size_t stream_window;       /* the server's per-stream receive window (what one
                                   direction may hold); 0: 1 MiB, the h2 default */
    ztm_outbox_t *ob;           /* messages to the other workers go through it */
    unsigned registry;          /* the worker of the registry (the control plane) */
} ztm_hub_relay_config_t;

/* Installs the routes "/ztm.v1.Relay/" and "/ztm.relay/" on SRV (which
 * runs on worker W). CFG is copied (strings too). Returns 0, -ENOMEM or
 * -EINVAL (no route slot left on SRV). */
int ztm_hub_relay_new(ztm_worker_t *w, ztm_grpc_server_t *srv, const ztm_hub_relay_config_t *cfg,
                      ztm_hub_relay_t **out);
/* Frees R. Call once SRV has no connection left and ztm_hub_relay_idle(). */
void ztm_hub_relay_free(ztm_hub_relay_t *r);

/* A message of the relay, the registry's answers, or spliced bytes: true
 * if M was ours. */
bool ztm_hub_relay_message(ztm_hub_relay_t *r, const ztm_msg_t *m);
/* Frees what an unread message of the hub (relay, registry, splice)
 * carries. False if M is not one. */
bool ztm_hub_discard(const ztm_msg_t *m);

/* Does the work due at the end of a loop turn: writes and resets due on
 * streams changed from outside their own callbacks, then what the splices
 * owe the other workers. Call from the tick, before flushing the outbox. */
void ztm_hub_relay_run(ztm_hub_relay_t *r);

/* Graceful shutdown: every Events stream ends (UNAVAILABLE) and sessions
 * not yet accepted get 503; joined sessions run on until they end or the
 * connections close. Call with ztm_grpc_server_drain. */
void ztm_hub_relay_drain(ztm_hub_relay_t *r);
/* True when no session of ours waits for another worker (the worker may
 * end once its connections are gone too). */
bool ztm_hub_relay_idle(const ztm_hub_relay_t *r);

/* For tests and metrics: Events streams here, sessions waiting for an
 * accept, session streams spliced. */
size_t ztm_hub_relay_endpoints(const ztm_hub_relay_t *r);
size_t ztm_hub_relay_waiting(const ztm_hub_relay_t *r);
size_t ztm_hub_relay_joined(const ztm_hub_relay_t *r);

#endif
