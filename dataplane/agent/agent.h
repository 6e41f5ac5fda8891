/* `ztm agent`: the endpoint daemon.
 *
 * It keeps, for every mesh joined under STATE/meshes/NAME (written by
 * `ztm join`): the mesh's key and certificate, one link to the mesh's hub
 * (dataplane/agent/hublink.h), its peer sessions (dataplane/peer/peer.h)
 * and its tunnels (exports and imports, kept in STATE/meshes/NAME/
 * tunnels.conf so that a restarted agent comes back with them). The CLI
 * talks to it over a Unix socket, STATE/agent.sock (mode 0600), with the
 * ztm.v1.Agent gRPC API (proto/ztm/v1/agent.proto).
 *
 * Everything runs on one worker thread: an endpoint moves the traffic of
 * its own tunnels only, and one core's worth of TLS is far more than that. */
#ifndef ZTM_AGENT_AGENT_H
#define ZTM_AGENT_AGENT_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    const char *state_dir;    /* holds meshes/ and agent.sock */
    uint64_t drain_timeout_ns;
    int ktls;                 /* ztm_ktls_mode_t for hub links and peer sessions */
} ztm_agent_config_t;

/* The Unix socket path of the agent whose state directory is STATE. */
int ztm_agent_socket_path(const char *state_dir, char *out, size_t cap);

/* Runs the agent until SIGINT/SIGTERM. Returns 0, or -errno when it could
 * not start (the cause logged: socket in use by another agent, ...). */
int ztm_agent_run(const ztm_agent_config_t *cfg);

#endif
