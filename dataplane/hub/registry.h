/* The hub's endpoint registry, on the control-plane worker: which endpoint
 * has its Events stream on which data-plane worker (and which stream).
 *
 * The relays of the data workers tell it by message when an Events stream
 * comes and goes, and ask it where an endpoint is when a session is opened
 * to it (dataplane/hub/hubmsg.h). It keeps the endpoints' presence through
 * a callback (the store belongs to this worker), all presence changes of a
 * loop turn in one call, and answers each new Events stream with the
 * store's version after the change (its Hello carries it). A second Events
 * stream of an endpoint replaces the first, which is told so. */
#ifndef ZTM_HUB_REGISTRY_H
#define ZTM_HUB_REGISTRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dataplane/runtime/outbox.h"
#include "dataplane/runtime/worker.h"

/* An endpoint came (an Events stream registered it) or went (its Events
 * stream closed, or was revoked). */
typedef struct {
    const char *endpoint_id;
    const char *endpoint_name;
    bool present;
} ztm_hub_presence_t;

typedef struct {
    ztm_outbox_t *ob; /* the answers go through it */
    /* The presence changes of one loop turn, in order (from
     * ztm_hub_registry_run). Returns the store version after them. NULL:
     * presence is not kept (Hellos carry version 0). */
    uint64_t (*on_presence)(void *arg, const ztm_hub_presence_t *changes, size_t n);
    void *arg;
} ztm_hub_registry_config_t;

typedef struct ztm_hub_registry ztm_hub_registry_t;

/* A registry on worker W. Returns 0 or -ENOMEM. */
int ztm_hub_registry_new(ztm_worker_t *w, const ztm_hub_registry_config_t *cfg,
                         ztm_hub_registry_t **out);
void ztm_hub_registry_free(ztm_hub_registry_t *g);

/* A message from a relay: true if M was ours. */
bool ztm_hub_registry_message(ztm_hub_registry_t *g, const ztm_msg_t *m);
/* Writes the presence changes of this loop turn and sends the Hellos'
 * versions. Call from the tick. */
void ztm_hub_registry_run(ztm_hub_registry_t *g);
/* Endpoints registered. */
size_t ztm_hub_registry_endpoints(const ztm_hub_registry_t *g);

#endif
