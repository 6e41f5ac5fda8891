/* The control API's front: the method table with each method's access
 * rule, authorization of the caller, request decoding, per-call memory,
 * and grpc.health.v1; see api.h. */
#include "controlplane/services/internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "controlplane/ca/token.h"
#include "grpc/health/v1/health.pb-c.h"
#include "ztm/v1/hubs.pb-c.h"
#include "ztm/v1/mesh.pb-c.h"
#include "ztm/v1/services.pb-c.h"

/* ---- per-call memory ----------------------------------------------------------- */

struct arena_chunk {
    arena_chunk_t *next;
    size_t used, cap;
    max_align_t data[];
};

#define ARENA_CHUNK 8192

static void *pb_alloc(void *data, size_t size)
{
    return arena_alloc(data, size);
}

static void pb_free(void *data, void *p)
{
    /* everything goes with the arena */
}

void arena_init(arena_t *a)
{
    a->chunks = NULL;
    a->pb.alloc = pb_alloc;
    a->pb.free = pb_free;
    a->pb.allocator_data = a;
}

void arena_free(arena_t *a)
{
    while (a->chunks) {
        arena_chunk_t *next = a->chunks->next;
        free(a->chunks);
        a->chunks = next;
    }
}

void *arena_alloc(arena_t *a, size_t n)
{
    n = (n + sizeof(max_align_t) - 1) / sizeof(max_align_t) * sizeof(max_align_t);
    arena_chunk_t *c = a->chunks;
    if (!c || c->cap - c->used < n) {
        size_t cap = n > ARENA_CHUNK ? n : ARENA_CHUNK;
        c = malloc(sizeof(*c) + cap);
        if (!c)
            abort(); /* no graceful path through protobuf-c's allocator */
        c->cap = cap;
        c->used = 0;
        c->next = a->chunks;
        a->chunks = c;
    }
    void *p = (char *)c->data + c->used;
    c->used += n;
    memset(p, 0, n);
    return p;
}

void *arena_grow(arena_t *a, void *items, size_t n, size_t *cap, size_t first, size_t elem)
{
    if (n < *cap)
        return items;
    size_t ncap = *cap ? *cap * 2 : first;
    void *p = arena_alloc(a, ncap * elem);
    if (n)
        memcpy(p, items, n * elem);
    *cap = ncap;
    return p;
}

char *arena_strdup(arena_t *a, const char *s)
{
    size_t n = strlen(s) + 1;
    return memcpy(arena_alloc(a, n), s, n);
}

char *arena_printf(arena_t *a, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *s = arena_alloc(a, (size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

void *arena_unpack(arena_t *a, const ProtobufCMessageDescriptor *d, const void *data, size_t len)
{
    return protobuf_c_message_unpack(d, &a->pb, len, data);
}

void *api_pack(arena_t *a, const ProtobufCMessage *m, size_t *len)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    void *buf = arena_alloc(a, n ? n : 1);
    protobuf_c_message_pack(m, buf);
    *len = n;
    return buf;
}

/* ---- replies ------------------------------------------------------------------------ */

void ztm_api_reply_clear(ztm_api_reply_t *r)
{
    free(r->body);
    memset(r, 0, sizeof(*r));
}

void api_fail(ztm_api_reply_t *r, ztm_grpc_status_t status, const char *fmt, ...)
{
    free(r->body);
    r->body = NULL;
    r->len = 0;
    r->status = status;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->message, sizeof(r->message), fmt, ap);
    va_end(ap);
}

void api_ok(ztm_api_reply_t *r, const ProtobufCMessage *resp)
{
    size_t n = protobuf_c_message_get_packed_size(resp);
    uint8_t *body = malloc(n ? n : 1);
    if (!body) {
        api_fail(r, ZTM_GRPC_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    protobuf_c_message_pack(resp, body);
    free(r->body);
    r->status = ZTM_GRPC_OK;
    r->message[0] = 0;
    r->body = body;
    r->len = n;
}

void api_store_fail(ztm_api_reply_t *r, int err, const char *what)
{
    if (err == ZTM_STORE_E_CONFLICT)
        api_fail(r, ZTM_GRPC_ABORTED, "%s changed concurrently; retry", what);
    else
        api_fail(r, ZTM_GRPC_INTERNAL, "store: %s: %s", what, ztm_store_strerror(err));
}

void api_event(arena_t *a, ztm_store_event_t *ev, Ztm__V1__WatchEvent__Type type,
               Ztm__V1__Topic topic, int object_case, void *object)
{
    Ztm__V1__WatchEvent we = ZTM__V1__WATCH_EVENT__INIT;
    we.type = type;
    we.topic = topic;
    we.object_case = (Ztm__V1__WatchEvent__ObjectCase)object_case;
    switch (object_case) {
    case ZTM__V1__WATCH_EVENT__OBJECT_ENDPOINT:
        we.endpoint = object;
        break;
    case ZTM__V1__WATCH_EVENT__OBJECT_SERVICE:
        we.service = object;
        break;
    case ZTM__V1__WATCH_EVENT__OBJECT_REVOCATION:
        we.revocation = object;
        break;
    case ZTM__V1__WATCH_EVENT__OBJECT_HUB:
        we.hub = object;
        break;
    }
    ev->version = 0;
    ev->topic = (uint32_t)topic;
    ev->data = api_pack(a, &we.base, &ev->len);
}

/* ---- context ------------------------------------------------------------------------- */

static int64_t wall_clock(void *arg)
{
    return (int64_t)time(NULL);
}

int64_t api_now(ztm_api_t *api)
{
    return api->clock(api->clock_arg);
}

int ztm_api_new(const ztm_api_config_t *config, ztm_store_t *store, ztm_ca_t *ca, ztm_api_t **out)
{
    if (!config || !store || !ca)
        return -EINVAL;
    ztm_api_t *api = calloc(1, sizeof(*api));
    if (!api)
        return -ENOMEM;
    api->store = store;
    api->ca = ca;
    if (ztm_ca_export(ca, &api->ca_pem, NULL, NULL, NULL) < 0)
        goto nomem;
    api->leaf_lifetime = config->leaf_lifetime;
    api->clock = config->clock ? config->clock : wall_clock;
    api->clock_arg = config->clock_arg;
    if (config->n_hubs) {
        if (!(api->hubs = calloc(config->n_hubs, sizeof(char *))))
            goto nomem;
        for (size_t i = 0; i < config->n_hubs; i++) {
            if (!ztm_token_hub_valid(config->hubs[i])) {
                ztm_api_free(api);
                return -EINVAL;
            }
            if (!(api->hubs[api->n_hubs++] = strdup(config->hubs[i])))
                goto nomem;
        }
    }
    *out = api;
    return 0;
nomem:
    ztm_api_free(api);
    return -ENOMEM;
}

void ztm_api_free(ztm_api_t *api)
{
    if (!api)
        return;
    for (size_t i = 0; i < api->n_hubs; i++)
        free(api->hubs[i]);
    free(api->hubs);
    free(api->ca_pem);
    free(api);
}

/* ---- authorization ---------------------------------------------------------------------- */

bool ztm_api_identity_revoked(ztm_api_t *api, const ztm_identity_t *id)
{
    void *v;
    size_t len;
    int r = ztm_store_get(api->store, ZTM_STORE_REVOCATION, id->serial, &v, &len);
    if (r == 0)
        free(v);
    return r != -ENOENT;
}

int api_authorize(ztm_api_t *api, access_t access, const ztm_identity_t *caller,
                  ztm_api_reply_t *reply)
{
    if (!caller) {
        if (access == ACCESS_ANYONE)
            return 0;
        api_fail(reply, ZTM_GRPC_UNAUTHENTICATED,
                 "this method needs a client certificate of mesh %s", ztm_ca_mesh(api->ca));
        return -1;
    }
    /* A certificate, even where none is needed, must be good: a revoked
     * identity gets nothing, not even what anonymous callers get. */
    if (strcmp(caller->mesh, ztm_ca_mesh(api->ca)) != 0) {
        api_fail(reply, ZTM_GRPC_UNAUTHENTICATED, "certificate is for mesh %s, not %s",
                 caller->mesh, ztm_ca_mesh(api->ca));
        return -1;
    }
    int64_t now = api_now(api);
    if (now >= caller->not_after) {
        api_fail(reply, ZTM_GRPC_UNAUTHENTICATED, "certificate %s has expired; join again",
                 caller->serial);
        return -1;
    }
    void *v;
    size_t len;
    int r = ztm_store_get(api->store, ZTM_STORE_REVOCATION, caller->serial, &v, &len);
    if (r == 0) {
        free(v);
        api_fail(reply, ZTM_GRPC_UNAUTHENTICATED, "certificate %s of %s was revoked",
                 caller->serial, caller->name);
        return -1;
    }
    if (r != -ENOENT) {
        api_store_fail(reply, r, "revocation check");
        return -1;
    }
    switch (access) {
    case ACCESS_ANYONE:
    case ACCESS_MEMBER:
        return 0;
    case ACCESS_ADMIN:
        if (caller->role == ZTM_ROLE_ADMIN)
            return 0;
        break;
    case ACCESS_HUB:
        if (caller->role == ZTM_ROLE_HUB)
            return 0;
        break;
    }
    api_fail(reply, ZTM_GRPC_PERMISSION_DENIED, "%s %s may not call this method (needs %s)",
             ztm_role_name(caller->role), caller->name,
             access == ACCESS_ADMIN ? "an admin certificate" : "a hub certificate");
    return -1;
}

/* ---- grpc.health.v1 ---------------------------------------------------------------------- */

static const char *const served[] = {"", "ztm.v1.Mesh", "ztm.v1.Services", "ztm.v1.Watch",
                                     "ztm.v1.Hubs", "grpc.health.v1.Health"};

static void health_check(ztm_api_t *api, arena_t *a, const ztm_identity_t *caller,
                         const ProtobufCMessage *reqm, ztm_api_reply_t *reply)
{
    const Grpc__Health__V1__HealthCheckRequest *req = (const void *)reqm;
    for (size_t i = 0; i < sizeof(served) / sizeof(served[0]); i++) {
        if (strcmp(req->service, served[i]) == 0) {
            Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
            resp.status = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
            api_ok(reply, &resp.base);
            return;
        }
    }
    api_fail(reply, ZTM_GRPC_NOT_FOUND, "unknown service \"%s\"", req->service);
}

/* ---- the method table --------------------------------------------------------------------- */

static const ztm_api_method_t methods[] = {
    {"/ztm.v1.Mesh/Invite", &ztm__v1__invite_request__descriptor, ACCESS_ADMIN, mesh_invite},
    {"/ztm.v1.Mesh/Join", &ztm__v1__join_request__descriptor, ACCESS_ANYONE, mesh_join},
    {"/ztm.v1.Mesh/Renew", &ztm__v1__renew_request__descriptor, ACCESS_MEMBER, mesh_renew},
    {"/ztm.v1.Mesh/Revoke", &ztm__v1__revoke_request__descriptor, ACCESS_ADMIN, mesh_revoke},
    {"/ztm.v1.Mesh/ListEndpoints", &ztm__v1__list_endpoints_request__descriptor, ACCESS_MEMBER,
     mesh_list_endpoints},
    {"/ztm.v1.Mesh/GetEndpoint", &ztm__v1__get_endpoint_request__descriptor, ACCESS_MEMBER,
     mesh_get_endpoint},
    {"/ztm.v1.Services/Publish", &ztm__v1__publish_request__descriptor, ACCESS_MEMBER,
     svc_publish},
    {"/ztm.v1.Services/Unpublish", &ztm__v1__unpublish_request__descriptor, ACCESS_MEMBER,
     svc_unpublish},
    {"/ztm.v1.Services/List", &ztm__v1__list_services_request__descriptor, ACCESS_MEMBER,
     svc_list},
    {"/ztm.v1.Services/SetPolicy", &ztm__v1__set_policy_request__descriptor, ACCESS_MEMBER,
     svc_set_policy},
    {"/ztm.v1.Hubs/Register", &ztm__v1__register_hub_request__descriptor, ACCESS_HUB,
     hub_register},
    {"/ztm.v1.Hubs/Heartbeat", &ztm__v1__hub_heartbeat_request__descriptor, ACCESS_HUB,
     hub_heartbeat},
    {"/ztm.v1.Hubs/List", &ztm__v1__list_hubs_request__descriptor, ACCESS_MEMBER, hub_list},
    {"/ztm.v1.Watch/Subscribe", &ztm__v1__subscribe_request__descriptor, ACCESS_MEMBER, NULL},
    {"/grpc.health.v1.Health/Check", &grpc__health__v1__health_check_request__descriptor,
     ACCESS_ANYONE, health_check},
};
#define N_METHODS (sizeof(methods) / sizeof(methods[0]))

const ztm_api_method_t *ztm_api_find(const char *path, size_t len)
{
    for (size_t i = 0; i < N_METHODS; i++)
        if (strlen(methods[i].path) == len && memcmp(methods[i].path, path, len) == 0)
            return &methods[i];
    return NULL;
}

bool ztm_api_streaming(const ztm_api_method_t *m)
{
    return m->unary == NULL;
}

const char *ztm_api_path(const ztm_api_method_t *m)
{
    return m->path;
}

void ztm_api_unary(ztm_api_t *api, const ztm_api_method_t *m, const ztm_identity_t *caller,
                   const uint8_t *req, size_t len, ztm_api_reply_t *reply)
{
    memset(reply, 0, sizeof(*reply));
    if (!m || !m->unary) {
        api_fail(reply, ZTM_GRPC_UNIMPLEMENTED, "not a unary method");
        return;
    }
    if (api_authorize(api, m->access, caller, reply) < 0)
        return;
    arena_t a;
    arena_init(&a);
    const ProtobufCMessage *msg = arena_unpack(&a, m->input, req, len);
    if (!msg)
        api_fail(reply, ZTM_GRPC_INVALID_ARGUMENT, "malformed %s request", m->input->name);
    else
        m->unary(api, &a, caller, msg, reply);
    arena_free(&a);
}
