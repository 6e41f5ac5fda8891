/* UDP imports; see udp_import.h. */
#include <errno.h>

#include "dataplane/agent/udp_import.h"

int udp_import_start(tunnel_t *t, const ztm_addr_t *la, ztm_addr_t *bound)
{
    (void)t;
    (void)la;
    (void)bound;
    return -EPROTONOSUPPORT;
}

void udp_import_stop(tunnel_t *t)
{
    (void)t;
}
