/* The L4 relay: accepts TCP connections and splices each to a target
 * address, on the engine's workers. It is the engine's proof and the local
 * side of every tunnel: exact bytes, half-close and RST propagated, bounded
 * buffering per direction (a reader that does not read stops the writer),
 * idle and connect deadlines, a connection limit and a graceful drain. */
#ifndef ZTM_TUNNEL_RELAY_H
#define ZTM_TUNNEL_RELAY_H

#include <stdint.h>

#include "dataplane/runtime/net.h"

typedef struct {
    ztm_addr_t listen;
    ztm_addr_t target;
    const char *target_name; /* as the user wrote it, for logs */
    unsigned workers;        /* 0: one per CPU */
    unsigned max_conns;
    uint64_t idle_timeout_ns; /* 0: never */
    uint64_t connect_timeout_ns;
    uint64_t drain_timeout_ns;
    uint32_t buf_size;
} ztm_relay_config_t;

typedef struct ztm_relay ztm_relay_t;

/* Binds the listeners. Returns 0, or -errno (e.g. -EADDRINUSE) with
 * nothing left open; the caller reports it as bad input. */
int ztm_relay_open(const ztm_relay_config_t *cfg, ztm_relay_t **out);
/* Runs until SIGINT/SIGTERM and a drain. Returns 0 or -errno. */
int ztm_relay_run(ztm_relay_t *r);
void ztm_relay_free(ztm_relay_t *r);

#endif
