/* UDP imports: one local UDP socket per import; each client address is a
 * flow, carried as one inner stream of a peer session (datagrams framed by
 * length), with an idle timeout. */
#ifndef ZTM_AGENT_UDP_IMPORT_H
#define ZTM_AGENT_UDP_IMPORT_H

#include "dataplane/agent/agent_int.h"

/* Binds LA for T and starts receiving; *BOUND gets the real address. */
int udp_import_start(tunnel_t *t, const ztm_addr_t *la, ztm_addr_t *bound);
/* The route lookup for T answered: flows waiting for it go to EXPORTER
 * (NULL: nobody exports the service; they are dropped). */
void udp_import_route(tunnel_t *t, const char *exporter);
/* Closes the socket and ends T's flows. */
void udp_import_stop(tunnel_t *t);

#endif
