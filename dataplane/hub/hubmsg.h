/* The messages between the hub's workers (internal to dataplane/hub): the
 * relay on each data-plane worker, the registry on the control-plane
 * worker. Every message carries one hubmsg_t (malloc'd, freed by whoever
 * reads it, or by ztm_hub_discard when nobody will). The spliced bytes of
 * joined sessions have their own messages (xsplice.h). */
#ifndef ZTM_HUB_HUBMSG_H
#define ZTM_HUB_HUBMSG_H

#include <stdint.h>

#include "controlplane/ca/identity.h"
#include "dataplane/hub/relay.h"

enum {
    /* relay -> registry */
    HUB_MSG_REG = ZTM_HUB_MSG_FIRST, /* an Events stream: token, worker, id, name */
    HUB_MSG_UNREG,                   /* it no longer stands for its endpoint */
    HUB_MSG_FIND,                    /* an open on WORKER: sid, name (the peer) */
    /* registry -> relay */
    HUB_MSG_HELLO,    /* presence is written: token, version */
    HUB_MSG_REPLACED, /* another Events stream of the endpoint took over: token */
    HUB_MSG_FOUND,    /* sid; the peer's worker, token, id, name */
    HUB_MSG_NOTFOUND, /* sid: no such endpoint (or its Events stream went) */
    /* relay -> relay */
    HUB_MSG_INCOMING, /* to the peer's worker: token, sid, opener WORKER, from id, name */
    HUB_MSG_ACCEPT,   /* to the opener's worker: sid, half, acceptor WORKER, id, name */
    HUB_MSG_JOINED,   /* back: half (the acceptor's), peer (the opener's), sid */
    HUB_MSG_REFUSED,  /* back: half, sid, name (the acceptor) */
    HUB_MSG_END_
};
_Static_assert(HUB_MSG_END_ <= ZTM_HUB_MSG_FIRST + ZTM_HUB_MSG_COUNT, "hub message types");

typedef struct {
    uint64_t token;   /* an Events stream, unique on its worker */
    uint64_t sid;     /* a session */
    uint64_t version; /* HELLO: the store's version after the presence write */
    unsigned worker;
    void *half, *peer; /* xsplice halves (ztm_xs_half_t) */
    void *side;        /* the acceptor's stream, on its worker */
    char id[ZTM_ID_MAX + 1];
    char name[ZTM_NAME_MAX + 1];
} hubmsg_t;

#endif
