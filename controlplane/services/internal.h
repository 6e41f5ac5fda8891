/* Shared by the files of controlplane/services: the context, the method
 * table's entry, per-call memory, reply helpers, and the store layout.
 *
 * Store layout (keys by record kind; values are encoded protobuf):
 *   ENDPOINT    ID                 ztm.v1.Endpoint (online/hub_id not stored:
 *                                  they come from presence)
 *   META        "name/" NAME       the endpoint ID holding NAME (names are unique)
 *   SERIAL      serial (hex)       ztm.v1.IssuedCertificate
 *   REVOCATION  serial (hex)       ztm.v1.Revocation
 *   INVITE      hex SHA-256        ztm.v1.InviteRecord (invite.c)
 *   SERVICE     "tcp/" or "udp/" NAME   ztm.v1.Service
 *   HUB         hub ID             ztm.v1.Hub
 *   CA          "cert", "key"      PEM (ca_store.c)
 *   soft PRESENCE  endpoint ID     the ID of the hub it is attached to
 * Change-feed events: topic = ztm.v1.Topic, data = an encoded
 * ztm.v1.WatchEvent without its version (added when sent). */
#ifndef ZTM_CONTROLPLANE_SERVICES_INTERNAL_H
#define ZTM_CONTROLPLANE_SERVICES_INTERNAL_H

#include <stdarg.h>

#include <protobuf-c/protobuf-c.h>

#include "controlplane/services/api.h"
#include "ztm/v1/records.pb-c.h"
#include "ztm/v1/types.pb-c.h"
#include "ztm/v1/watch.pb-c.h"

struct ztm_api {
    ztm_store_t *store;
    ztm_ca_t *ca;
    char *ca_pem; /* the CA certificate, encoded once */
    char **hubs;
    size_t n_hubs;
    int64_t leaf_lifetime;
    int64_t (*clock)(void *arg);
    void *clock_arg;
};

/* Memory for one call: every decoded message and every string a handler
 * builds comes from here and goes at once when the call ends. */
typedef struct arena_chunk arena_chunk_t;
typedef struct {
    arena_chunk_t *chunks;
    ProtobufCAllocator pb; /* protobuf-c allocating from this arena */
} arena_t;

void arena_init(arena_t *a);
void arena_free(arena_t *a);
/* Zeroed memory; aborts on exhaustion (a broken invariant on this thread). */
void *arena_alloc(arena_t *a, size_t n);
/* For an array of N elements of ELEM bytes at ITEMS with room for *CAP: when
 * it is full, a copy with twice the room (FIRST the first time) in the arena,
 * *CAP updated; else ITEMS itself. Never NULL (the arena aborts on OOM). */
void *arena_grow(arena_t *a, void *items, size_t n, size_t *cap, size_t first, size_t elem);
char *arena_strdup(arena_t *a, const char *s);
char *arena_printf(arena_t *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Decodes a stored value; NULL when it does not decode (a damaged record). */
void *arena_unpack(arena_t *a, const ProtobufCMessageDescriptor *d, const void *data, size_t len);

typedef enum {
    ACCESS_ANYONE = 0, /* no certificate needed */
    ACCESS_MEMBER = 1, /* any identity of this mesh */
    ACCESS_ADMIN = 2,
    ACCESS_HUB = 3,
} access_t;

/* A unary handler: REQ is decoded; fills REPLY (api_ok or api_fail). */
typedef void (*unary_fn)(ztm_api_t *api, arena_t *a, const ztm_identity_t *caller,
                         const ProtobufCMessage *req, ztm_api_reply_t *reply);

struct ztm_api_method {
    const char *path;
    const ProtobufCMessageDescriptor *input;
    access_t access;
    unary_fn unary; /* NULL: server-streaming */
};

int64_t api_now(ztm_api_t *api);
void api_fail(ztm_api_reply_t *r, ztm_grpc_status_t status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Status OK with RESP encoded as the body. */
void api_ok(ztm_api_reply_t *r, const ProtobufCMessage *resp);
/* A store error as a status: conflict → ABORTED, else INTERNAL. */
void api_store_fail(ztm_api_reply_t *r, int err, const char *what);

/* Encodes a WatchEvent (version left out) into the arena, for a commit. */
void api_event(arena_t *a, ztm_store_event_t *ev, Ztm__V1__WatchEvent__Type type,
               Ztm__V1__Topic topic, int object_case, void *object);

/* Encodes M into the arena. */
void *api_pack(arena_t *a, const ProtobufCMessage *m, size_t *len);

/* The handlers. */
void mesh_invite(ztm_api_t *, arena_t *, const ztm_identity_t *, const ProtobufCMessage *,
                 ztm_api_reply_t *);
void mesh_join(ztm_api_t *, arena_t *, const ztm_identity_t *, const ProtobufCMessage *,
               ztm_api_reply_t *);
void mesh_renew(ztm_api_t *, arena_t *, const ztm_identity_t *, const ProtobufCMessage *,
                ztm_api_reply_t *);
void mesh_revoke(ztm_api_t *, arena_t *, const ztm_identity_t *, const ProtobufCMessage *,
                 ztm_api_reply_t *);
void mesh_list_endpoints(ztm_api_t *, arena_t *, const ztm_identity_t *,
                         const ProtobufCMessage *, ztm_api_reply_t *);
void mesh_get_endpoint(ztm_api_t *, arena_t *, const ztm_identity_t *, const ProtobufCMessage *,
                       ztm_api_reply_t *);

#define HANDLER(name)                                                                  \
    void name(ztm_api_t *, arena_t *, const ztm_identity_t *, const ProtobufCMessage *,     \
              ztm_api_reply_t *)
HANDLER(svc_publish);
HANDLER(svc_unpublish);
HANDLER(svc_list);
HANDLER(svc_set_policy);
HANDLER(hub_register);
HANDLER(hub_heartbeat);
HANDLER(hub_list);
#undef HANDLER

/* Reads endpoint ID (with its presence) into the arena; NULL if absent. */
Ztm__V1__Endpoint *api_load_endpoint(ztm_api_t *api, arena_t *a, const char *id);

/* Checks CALLER against the method's rule and the store (revocation,
 * mesh, expiry); 0 or fills REPLY and returns -1. */
int api_authorize(ztm_api_t *api, access_t access, const ztm_identity_t *caller,
                  ztm_api_reply_t *reply);

#endif
