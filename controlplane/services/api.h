/* The control API's methods, independent of any transport.
 *
 * The gRPC server glue (controlplane/grpc over dataplane/h2) does the wire
 * work — :path, content-type, de-framing, grpc-timeout, trailers — and hands
 * each call here as: the path, the caller's identity read from its verified
 * client certificate (NULL when it presented none), and the request
 * message's bytes. This module finds the method, applies the method's
 * access rule, refuses revoked, expired or foreign identities, decodes the
 * request (INVALID_ARGUMENT when malformed), runs the handler against the
 * store and the CA, and returns a status, a message for people and the
 * encoded response. Unary methods answer in one call; Watch.Subscribe
 * returns a cursor the transport pulls events from as its flow-control
 * window allows (nothing is buffered here).
 *
 * Who may call what (the access rule in the method table):
 *   anyone, even without a certificate   Mesh.Join (needs a valid invite token),
 *                                        grpc.health.v1.Health.Check
 *   admin                                Mesh.Invite, Mesh.Revoke
 *   hub                                  Hubs.Register, Hubs.Heartbeat
 *   any member of the mesh               everything else; handlers narrow it
 *                                        further (an agent acts only on its
 *                                        own endpoint and services)
 *
 * Everything runs on the control-plane thread that owns the store.
 *
 * Batching: a server may run every call that is ready in one turn of its
 * loop inside ztm_store_group_begin/_end, and send the replies only after
 * _end returned 0 (one fsync for the lot); if _end fails, every call of the
 * group must be answered UNAVAILABLE instead, since its changes were undone. */
#ifndef ZTM_CONTROLPLANE_SERVICES_API_H
#define ZTM_CONTROLPLANE_SERVICES_API_H

#include <stddef.h>
#include <stdint.h>

#include "controlplane/ca/ca.h"
#include "controlplane/ca/identity.h"
#include "controlplane/grpc/frame.h"
#include "controlplane/store/store.h"

typedef struct ztm_api ztm_api_t;

typedef struct {
    /* Hub addresses ("host:port") invite tokens carry when the request names
     * none. */
    const char *const *hubs;
    size_t n_hubs;
    int64_t leaf_lifetime; /* seconds; 0: ZTM_CA_DEFAULT_LEAF_LIFETIME */
    /* Wall-clock Unix seconds; NULL: time(). For tests. */
    int64_t (*clock)(void *arg);
    void *clock_arg;
} ztm_api_config_t;

/* A context over STORE and CA (both borrowed: they outlive it). CONFIG is
 * copied, the hub strings too. Returns 0 or -ENOMEM / -EINVAL. */
int ztm_api_new(const ztm_api_config_t *config, ztm_store_t *store, ztm_ca_t *ca, ztm_api_t **out);
void ztm_api_free(ztm_api_t *api);

/* ---- methods ------------------------------------------------------------------- */

typedef struct ztm_api_method ztm_api_method_t;

/* The method PATH ("/ztm.v1.Mesh/Join") names, or NULL (UNIMPLEMENTED). */
const ztm_api_method_t *ztm_api_find(const char *path, size_t len);
/* True for server-streaming methods (Watch.Subscribe): use ztm_api_watch_*. */
bool ztm_api_streaming(const ztm_api_method_t *m);
/* "/package.Service/Method". */
const char *ztm_api_path(const ztm_api_method_t *m);

/* The outcome of a call. */
typedef struct {
    ztm_grpc_status_t status;
    char message[256]; /* for grpc-message (plain text; the transport percent-encodes) */
    uint8_t *body;     /* the encoded response when status is OK (malloc'd) */
    size_t len;
} ztm_api_reply_t;

void ztm_api_reply_clear(ztm_api_reply_t *r);

/* Runs one unary call of M with CALLER (NULL: no client certificate) and
 * the request REQ. Always fills *REPLY (clear it after sending). */
void ztm_api_unary(ztm_api_t *api, const ztm_api_method_t *m, const ztm_identity_t *caller,
                   const uint8_t *req, size_t len, ztm_api_reply_t *reply);

/* True when ID's certificate is revoked (or the store cannot tell: fail
 * closed). For transports that hold live connections: they close those of
 * a revoked identity at once, and refuse it at the handshake. */
bool ztm_api_identity_revoked(ztm_api_t *api, const ztm_identity_t *id);

/* ---- Watch.Subscribe -------------------------------------------------------------- */

typedef struct ztm_api_watch ztm_api_watch_t;

/* Starts a subscription (method M must be streaming). On refusal returns
 * NULL with *REPLY holding the status (a trailers-only response); else
 * *REPLY is OK and empty. */
ztm_api_watch_t *ztm_api_watch_open(ztm_api_t *api, const ztm_api_method_t *m,
                                    const ztm_identity_t *caller, const uint8_t *req, size_t len,
                                    ztm_api_reply_t *reply);

/* The next message to send: returns 1 with *BODY (malloc'd; free it) and
 * *LEN filled, 0 when the subscriber is caught up (wait for a store
 * notification, ztm_store_subscribe, then call again), or a negative error
 * after which the stream ends with *REPLY's status (e.g. the caller's
 * certificate was revoked: UNAUTHENTICATED). */
int ztm_api_watch_next(ztm_api_watch_t *w, uint8_t **body, size_t *len, ztm_api_reply_t *reply);

void ztm_api_watch_close(ztm_api_watch_t *w);

/* ---- set-up: the CA and the first identities ------------------------------------------ */

/* The mesh CA kept in STORE (records "cert" and "key" of kind CA): loaded,
 * or, when the store has none, made for MESH and stored ("made at first
 * start"); *CREATED (may be NULL) tells which. A store holding only one of
 * the two is refused (ZTM_STORE_E_CORRUPT) rather than silently replaced.
 * Returns 0, ZTM_CA_E_*, or a store error. */
int ztm_api_ca_open(ztm_store_t *store, const char *mesh, ztm_ca_t **out, bool *created);

/* Enrols an endpoint without an invite, for callers the process trusts
 * already: `ztm ca init` making the first admin, a hub certifying itself.
 * Issues a certificate for CSR_PEM with NAME and ROLE (hubs: DNS and IP
 * names too), records the endpoint, its name and its certificate in one
 * commit with its watch event. *ISSUED receives the certificate (clear it
 * with ztm_ca_issued_clear), ENDPOINT_ID its new ID. Returns 0, -EEXIST
 * (the name is held by a live endpoint), ZTM_CA_E_* or a store error. */
int ztm_api_enroll(ztm_api_t *api, const char *name, ztm_role_t role, const char *csr_pem,
                   const char *const *dns, size_t n_dns, const char *const *ips, size_t n_ips,
                   ztm_ca_issued_t *issued, char endpoint_id[ZTM_ID_MAX + 1]);

/* ---- upkeep -------------------------------------------------------------------------- */

/* Drops what has expired: invites past their expiry, records of
 * certificates past their notAfter, and revocations of such certificates
 * (moot once the certificate has expired; watchers get a DELETE). Run now
 * and then (hourly is plenty). Returns how many records went, or a store
 * error. */
int ztm_api_sweep(ztm_api_t *api);

/* ---- what other parts of the control plane write ----------------------------------- */

/* Appends to the change feed the event that ENDPOINT_ID was put (its current
 * record) or, when absent, deleted; for callers that change presence or
 * labels outside the API (the hub, on connect and disconnect). Returns the
 * store's result. */
int ztm_api_publish_endpoint(ztm_api_t *api, const char *endpoint_id);

#endif
