/* The agent's parts, shared by agent.c (the daemon and its meshes),
 * tunnels.c (exports, imports, their file) and api.c (the local API). All
 * of it runs on the agent's one worker: nothing here is locked. */
#ifndef ZTM_AGENT_AGENT_INT_H
#define ZTM_AGENT_AGENT_INT_H

#include <stdbool.h>
#include <stdint.h>

#include "controlplane/ca/identity.h"
#include "dataplane/agent/agent.h"
#include "dataplane/agent/hublink.h"
#include "dataplane/peer/peer.h"
#include "dataplane/runtime/acceptor.h"
#include "dataplane/runtime/net.h"
#include "dataplane/runtime/resolver.h"
#include "dataplane/runtime/worker.h"

#define AGENT_PATH_MAX 4096
#define AGENT_MAX_HUBS 8
#define AGENT_MAX_ALLOW 16
#define AGENT_SVC_MAX 63

typedef struct agent agent_t;
typedef struct mesh mesh_t;
typedef struct tunnel tunnel_t;
typedef struct psess psess_t;

/* One export or import of a mesh. */
struct tunnel {
    mesh_t *m;
    uint64_t id; /* unique in its mesh: calls in flight find their tunnel by it */
    bool export_;
    bool udp;
    char name[AGENT_SVC_MAX + 1];
    /* export */
    char target[300];
    ztm_resolve_job_t *lookup; /* the target's name, looked up when added */
    char allow[AGENT_MAX_ALLOW][ZTM_NAME_MAX + 1];
    unsigned n_allow;
    bool published; /* the hub has it (since the link last came up) */
    bool publishing;
    /* import */
    char listen[300];
    char via[ZTM_NAME_MAX + 1];
    char route[ZTM_NAME_MAX + 1]; /* UDP imports: the exporter new flows go to */
    char bound[ZTM_ADDRSTRLEN];
    int lfd;
    ztm_acceptor_t *acceptor; /* freed by itself once closed */
    struct udp_import *udp_imp; /* UDP imports: the socket and its flows */
    /* lookups in flight / connections waiting for a route */
    int *pending_fds;
    unsigned n_pending, cap_pending;
    bool looking_up;
    unsigned rr; /* round-robin over exporters */
    char error[160];
    /* counters */
    uint64_t conns_active, conns_total, conns_refused, bytes_in, bytes_out;
    tunnel_t *next;
};

/* A peer session and its carrier (a relay stream on the mesh's hub link). */
struct psess {
    mesh_t *m;
    ztm_peer_t *peer;        /* NULL once the session said closed */
    ztm_relay_stream_t *rs;  /* NULL once the stream is gone */
    bool outgoing;
    bool joined;
    char peer_name[ZTM_NAME_MAX + 1];
    psess_t *prev, *next;
};

struct mesh {
    agent_t *a;
    char name[ZTM_MESH_MAX + 1]; /* local name (the folder under meshes/) */
    char dir[AGENT_PATH_MAX];
    char mesh_id[ZTM_MESH_MAX + 1];
    ztm_identity_t self;
    char hubs[AGENT_MAX_HUBS][300];
    unsigned n_hubs;
    ztm_tls_ctx_t *hub_tls, *peer_client_tls, *peer_server_tls;
    ztm_hublink_t *hl;
    tunnel_t *tunnels;
    psess_t *sessions;
    unsigned n_sessions;
    ztm_timer_t renew_timer;
    bool renewing;
    uint64_t next_tunnel_id;
    struct tcall *calls; /* control API calls in flight for tunnels */
    uint64_t bytes_in_done, bytes_out_done; /* of sessions that ended */
    mesh_t *next;
};

struct agent {
    ztm_agent_config_t cfg;
    ztm_worker_t *w;
    mesh_t *meshes;
    int api_fd;
    char sock_path[AGENT_PATH_MAX];
    struct ztm_grpc_server *api;
    ztm_acceptor_t api_acceptor;
    int64_t started;
    ztm_resolver_t *resolver; /* hub and target names, looked up off the worker */
};

/* ---- agent.c ------------------------------------------------------------- */
mesh_t *agent_mesh_find(agent_t *a, const char *name);
/* Loads meshes/NAME from the state directory and starts its hub link. */
int agent_mesh_add(agent_t *a, const char *name, char *err, size_t cap);
/* Stops a mesh and deletes its state (ztm leave). */
void agent_mesh_leave(agent_t *a, mesh_t *m);
/* Rescans meshes/ for new ones; names of those added go to ADDED. */
unsigned agent_reload(agent_t *a, char added[][ZTM_MESH_MAX + 1], unsigned cap);
/* The peer session to endpoint NAME (made if there is none), for importers. */
psess_t *agent_session_to(mesh_t *m, const char *name);

/* ---- tunnels.c ----------------------------------------------------------- */
/* Loads DIR/tunnels.conf into M and starts them. Logs and skips bad lines. */
void tunnels_load(mesh_t *m);
/* Writes M's tunnels to DIR/tunnels.conf atomically (0600). */
int tunnels_save(mesh_t *m);
tunnel_t *tunnel_find(mesh_t *m, bool export_, const char *name, bool udp);
/* The exporter refused a connection of our import of SERVICE: count it. */
void tunnels_refused(void *arg, const char *service, bool udp, int status, const char *why);
/* Adds and starts a tunnel; on failure writes why into ERR and returns < 0. */
int tunnel_add(mesh_t *m, const tunnel_t *spec, tunnel_t **out, char *err, size_t cap);
void tunnel_remove(tunnel_t *t);
void tunnels_stop_all(mesh_t *m);
/* Frees what tunnels' calls in flight hold (the hub link is stopped). */
void tunnels_free_calls(mesh_t *m);
/* The hub link came up: publish the exports again. */
void tunnels_link_up(mesh_t *m);
/* The exporter's policy for a peer session (ztm_peer_resolve_fn). */
const char *tunnels_resolve(void *arg, const ztm_identity_t *caller, const char *service, bool udp,
                            ztm_addr_t *to);
bool tunnel_name_valid(const char *name);
/* Asks the control plane which endpoints export T's service (once at a
 * time); the answer routes what waits (TCP connections, UDP flows). */
void tunnels_look_up(tunnel_t *t);

/* ---- api.c --------------------------------------------------------------- */
/* True when an agent answers on the Unix socket PATH. */
bool agent_api_in_use(const char *path);
int agent_api_start(agent_t *a);
void agent_api_stop(agent_t *a);
/* Runs the API calls that came in this loop turn (from the service's tick). */
void agent_api_tick(agent_t *a);

#endif
