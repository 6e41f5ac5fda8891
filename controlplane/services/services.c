/* ztm.v1.Services (named services and their routes: which endpoints export
 * them, with what weight, health and allow list) and ztm.v1.Hubs (hub
 * membership: a durable registration plus soft liveness with a TTL).
 *
 * Rights: an agent or gateway publishes, unpublishes and sets the policy of
 * its own exports only; an admin acts for any endpoint and alone sets a
 * service-wide policy or LB policy; hubs register and heartbeat as
 * themselves. Every change is a compare-and-swap on the service record with
 * its watch event in the same commit. */
#include "controlplane/services/internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "controlplane/ca/token.h"
#include "dataplane/runtime/log.h"
#include "ztm/v1/hubs.pb-c.h"
#include "ztm/v1/services.pb-c.h"

#define SERVICE_NAME_MAX 63
#define LIST_DEFAULT 100
#define LIST_MAX 1000
#define HUB_HEARTBEAT 10 /* seconds between a hub's heartbeats */
#define HUB_TTL 30       /* offline after this long without one */

static bool service_name_valid(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > SERVICE_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                  (i > 0 && (c == '.' || c == '_' || c == '-'));
        if (!ok)
            return false;
    }
    return true;
}

static const char *proto_name(Ztm__V1__Protocol p)
{
    return p == ZTM__V1__PROTOCOL__PROTOCOL_UDP ? "udp" : "tcp";
}

/* PROTOCOL_UNSPECIFIED reads as TCP; anything unknown is refused. */
static bool protocol_ok(Ztm__V1__Protocol *p)
{
    if (*p == ZTM__V1__PROTOCOL__PROTOCOL_UNSPECIFIED)
        *p = ZTM__V1__PROTOCOL__PROTOCOL_TCP;
    return *p == ZTM__V1__PROTOCOL__PROTOCOL_TCP || *p == ZTM__V1__PROTOCOL__PROTOCOL_UDP;
}

static bool policy_ok(const Ztm__V1__Policy *p)
{
    if (!p)
        return true;
    for (size_t i = 0; i < p->n_endpoint_ids; i++)
        if (!ztm_id_valid(p->endpoint_ids[i]))
            return false;
    for (size_t i = 0; i < p->n_endpoint_names; i++)
        if (!ztm_name_valid(p->endpoint_names[i]))
            return false;
    for (size_t i = 0; i < p->n_roles; i++)
        if (!ztm_role_name((ztm_role_t)p->roles[i]))
            return false;
    return true;
}

/* The endpoint a call acts for: REQUESTED when given (admins only), else
 * the caller; NULL with REPLY filled when not allowed or unknown. */
static Ztm__V1__Endpoint *acting_for(ztm_api_t *api, arena_t *a, const ztm_identity_t *caller,
                                     const char *requested, ztm_api_reply_t *reply)
{
    const char *id = caller->id;
    if (requested[0] && strcmp(requested, caller->id) != 0) {
        if (caller->role != ZTM_ROLE_ADMIN) {
            api_fail(reply, ZTM_GRPC_PERMISSION_DENIED,
                     "%s may act only for its own endpoint", caller->name);
            return NULL;
        }
        id = requested;
    } else if (caller->role != ZTM_ROLE_AGENT && caller->role != ZTM_ROLE_GATEWAY &&
               caller->role != ZTM_ROLE_ADMIN) {
        api_fail(reply, ZTM_GRPC_PERMISSION_DENIED, "a %s does not export services",
                 ztm_role_name(caller->role));
        return NULL;
    }
    Ztm__V1__Endpoint *ep = api_load_endpoint(api, a, id);
    if (!ep || ep->revoked) {
        api_fail(reply, ZTM_GRPC_NOT_FOUND, "no endpoint %.64s", id);
        return NULL;
    }
    return ep;
}

/* Loads a service; *RAW and *RAW_LEN keep the stored bytes for a CAS (NULL when
 * absent). */
static Ztm__V1__Service *load_service(ztm_api_t *api, arena_t *a, const char *key, void **raw,
                                      size_t *raw_len)
{
    *raw = NULL;
    *raw_len = 0;
    void *v;
    size_t len;
    if (ztm_store_get(api->store, ZTM_STORE_SERVICE, key, &v, &len) < 0)
        return NULL;
    Ztm__V1__Service *svc = arena_unpack(a, &ztm__v1__service__descriptor, v, len);
    if (!svc) {
        free(v);
        return NULL;
    }
    *raw = arena_alloc(a, len ? len : 1);
    memcpy(*raw, v, len);
    *raw_len = len;
    free(v);
    return svc;
}

/* Writes SVC (or deletes it when it has no exporter left) in place of RAW,
 * with its watch event; *VERSION receives the event's version. */
static int save_service(ztm_api_t *api, arena_t *a, const char *key, Ztm__V1__Service *svc,
                        const void *raw, size_t raw_len, uint64_t *version)
{
    ztm_store_op_t op = {.kind = ZTM_STORE_SERVICE, .key = key,
                         .cond = raw ? ZTM_STORE_IF_EQUAL : ZTM_STORE_IF_ABSENT,
                         .expect = raw, .expect_len = raw_len};
    ztm_store_event_t ev;
    svc->version = ztm_store_version(api->store) + 1;
    if (svc->n_exporters) {
        op.type = ZTM_STORE_PUT;
        op.value = api_pack(a, &svc->base, &op.len);
        api_event(a, &ev, ZTM__V1__WATCH_EVENT__TYPE__TYPE_PUT, ZTM__V1__TOPIC__TOPIC_SERVICES,
                  ZTM__V1__WATCH_EVENT__OBJECT_SERVICE, svc);
    } else {
        op.type = ZTM_STORE_DEL;
        Ztm__V1__Service *k = arena_alloc(a, sizeof(*k));
        ztm__v1__service__init(k);
        k->name = svc->name;
        k->protocol = svc->protocol;
        api_event(a, &ev, ZTM__V1__WATCH_EVENT__TYPE__TYPE_DELETE, ZTM__V1__TOPIC__TOPIC_SERVICES,
                  ZTM__V1__WATCH_EVENT__OBJECT_SERVICE, k);
    }
    return ztm_store_commit(api->store, &op, 1, &ev, 1, version);
}

/* ---- Publish / Unpublish ---------------------------------------------------------- */

void svc_publish(ztm_api_t *api, arena_t *a, const ztm_identity_t *caller,
                 const ProtobufCMessage *reqm, ztm_api_reply_t *reply)
{
    const Ztm__V1__PublishRequest *req = (const void *)reqm;
    Ztm__V1__Protocol proto = req->protocol;
    if (!service_name_valid(req->name) || !protocol_ok(&proto)) {
        api_fail(reply, ZTM_GRPC_INVALID_ARGUMENT,
                 "invalid service \"%.64s\": name [a-z0-9][a-z0-9._-]{0,62}, protocol tcp or udp",
                 req->name);
        return;
    }
    if (!policy_ok(req->policy) || req->health > ZTM__V1__HEALTH__HEALTH_DRAINING) {
        api_fail(reply, ZTM_GRPC_INVALID_ARGUMENT, "invalid policy or health");
        return;
    }
    Ztm__V1__Endpoint *ep = acting_for(api, a, caller, req->endpoint_id, reply);
    if (!ep)
        return;
    char *key = arena_printf(a, "%s/%s", proto_name(proto), req->name);
    void *raw;
    size_t raw_len;
    Ztm__V1__Service *svc = load_service(api, a, key, &raw, &raw_len);
    if (!svc) {
        svc = arena_alloc(a, sizeof(*svc));
        ztm__v1__service__init(svc);
        svc->name = req->name;
        svc->protocol = proto;
    }
    Ztm__V1__Exporter *x = NULL;
    for (size_t i = 0; i < svc->n_exporters && !x; i++)
        if (strcmp(svc->exporters[i]->endpoint_id, ep->id) == 0)
            x = svc->exporters[i];
    if (!x) {
        Ztm__V1__Exporter **v = arena_alloc(a, (svc->n_exporters + 1) * sizeof(*v));
        if (svc->n_exporters)
            memcpy(v, svc->exporters, svc->n_exporters * sizeof(*v));
        x = arena_alloc(a, sizeof(*x));
        ztm__v1__exporter__init(x);
        v[svc->n_exporters++] = x;
        svc->exporters = v;
    }
    x->endpoint_id = ep->id;
    x->endpoint_name = ep->name;
    x->weight = req->weight ? req->weight : 1;
    x->health = req->health;
    x->policy = req->policy;
    x->updated_time = api_now(api);
    x->online = ep->online;
    if (ep->online) {
        x->n_hub_ids = 1;
        x->hub_ids = arena_alloc(a, sizeof(char *));
        x->hub_ids[0] = ep->hub_id;
    } else {
        x->n_hub_ids = 0;
    }
    uint64_t version;
    int r = save_service(api, a, key, svc, raw, raw_len, &version);
    if (r < 0) {
        api_store_fail(reply, r, "service");
        return;
    }
    Ztm__V1__PublishResponse resp = ZTM__V1__PUBLISH_RESPONSE__INIT;
    resp.service = svc;
    resp.version = version;
    api_ok(reply, &resp.base);
    ztm_log(ZTM_LOG_INFO, "service.published", "service=%s endpoint=%s weight=%u", key, ep->id,
            x->weight);
}

void svc_unpublish(ztm_api_t *api, arena_t *a, const ztm_identity_t *caller,
                   const ProtobufCMessage *reqm, ztm_api_reply_t *reply)
{
    const Ztm__V1__UnpublishRequest *req = (const void *)reqm;
    Ztm__V1__Protocol proto = req->protocol;
    if (!service_name_valid(req->name) || !protocol_ok(&proto)) {
        api_fail(reply, ZTM_GRPC_INVALID_ARGUMENT, "invalid service \"%.64s\"", req->name);
        return;
    }
    const char *id = req->endpoint_id[0] ? req->endpoint_id : caller->id;
    if (strcmp(id, caller->id) != 0 && caller->role != ZTM_ROLE_ADMIN) {
        api_fail(reply, ZTM_GRPC_PERMISSION_DENIED, "%s may act only for its own endpoint",
                 caller->name);
        return;
    }
    char *key = arena_printf(a, "%s/%s", proto_name(proto), req->name);
    void *raw;
    size_t raw_len;
    Ztm__V1__Service *svc = load_service(api, a, key, &raw, &raw_len);
    size_t w = 0;
    bool found = false;
    for (size_t i = 0; svc && i < svc->n_exporters; i++) {
        if (strcmp(svc->exporters[i]->endpoint_id, id) == 0)
            found = true;
        else
            svc->exporters[w++] = svc->exporters[i];
    }
    if (!found) {
        api_fail(reply, ZTM_GRPC_NOT_FOUND, "%.64s does not export %s", id, key);
        return;
    }
    svc->n_exporters = w;
    uint64_t version;
    int r = save_service(api, a, key, svc, raw, raw_len, &version);
    if (r < 0) {
        api_store_fail(reply, r, "service");
        return;
    }
    Ztm__V1__UnpublishResponse resp = ZTM__V1__UNPUBLISH_RESPONSE__INIT;
    resp.version = version;
    api_ok(reply, &resp.base);
    ztm_log(ZTM_LOG_INFO, "service.unpublished", "service=%s endpoint=%s", key, id);
}

/* ---- List -------------------------------------------------------------------------- */

typedef struct {
    arena_t *a;
    const Ztm__V1__ListServicesRequest *req;
    Ztm__V1__Service **svcs;
    char **keys;
    size_t n, want;
} svc_list_t;

static int on_service(void *arg, const char *key, const void *value, size_t len)
{
    svc_list_t *l = arg;
    Ztm__V1__Service *svc = arena_unpack(l->a, &ztm__v1__service__descriptor, value, len);
    if (!svc)
        return 0;
    const Ztm__V1__ListServicesRequest *req = l->req;
    if ((req->name_prefix[0] && strncmp(svc->name, req->name_prefix, strlen(req->name_prefix))) ||
        (req->protocol && svc->protocol != req->protocol))
        return 0;
    l->keys[l->n] = arena_strdup(l->a, key);
    l->svcs[l->n++] = svc;
    return l->n == l->want;
}

void svc_list(ztm_api_t *api, arena_t *a, const ztm_identity_t *caller,
              const ProtobufCMessage *reqm, ztm_api_reply_t *reply)
{
    const Ztm__V1__ListServicesRequest *req = (const void *)reqm;
    size_t page = req->page_size ? req->page_size : LIST_DEFAULT;
    if (page > LIST_MAX)
        page = LIST_MAX;
    svc_list_t l = {.a = a, .req = req, .want = page + 1};
    l.svcs = arena_alloc(a, l.want * sizeof(*l.svcs));
    l.keys = arena_alloc(a, l.want * sizeof(*l.keys));
    uint64_t version = ztm_store_version(api->store);
    int r = ztm_store_list(api->store, ZTM_STORE_SERVICE, NULL, req->page_token, 0, on_service, &l);
    if (r == -EINVAL) {
        api_fail(reply, ZTM_GRPC_INVALID_ARGUMENT, "invalid page_token");
        return;
    }
    if (r < 0) {
        api_store_fail(reply, r, "services");
        return;
    }
    Ztm__V1__ListServicesResponse resp = ZTM__V1__LIST_SERVICES_RESPONSE__INIT;
    if (l.n > page) {
        l.n = page;
        resp.next_page_token = l.keys[page - 1];
    }
    resp.services = l.svcs;
    resp.n_services = l.n;
    resp.version = version;
    api_ok(reply, &resp.base);
}

/* ---- SetPolicy --------------------------------------------------------------------- */

void svc_set_policy(ztm_api_t *api, arena_t *a, const ztm_identity_t *caller,
                    const ProtobufCMessage *reqm, ztm_api_reply_t *reply)
{
    const Ztm__V1__SetPolicyRequest *req = (const void *)reqm;
    Ztm__V1__Protocol proto = req->protocol;
    if (!service_name_valid(req->name) || !protocol_ok(&proto) || !policy_ok(req->policy) ||
        req->lb_policy > ZTM__V1__LB_POLICY__LB_POLICY_RANDOM) {
        api_fail(reply, ZTM_GRPC_INVALID_ARGUMENT, "invalid service, policy or LB policy");
        return;
    }
    bool service_wide = !req->endpoint_id[0];
    if ((service_wide || req->lb_policy) && caller->role != ZTM_ROLE_ADMIN) {
        api_fail(reply, ZTM_GRPC_PERMISSION_DENIED,
                 "only an admin sets a service-wide policy or LB policy");
        return;
    }
    if (!service_wide && strcmp(req->endpoint_id, caller->id) != 0 &&
        caller->role != ZTM_ROLE_ADMIN) {
        api_fail(reply, ZTM_GRPC_PERMISSION_DENIED, "%s may set only its own exports' policy",
                 caller->name);
        return;
    }
    char *key = arena_printf(a, "%s/%s", proto_name(proto), req->name);
    void *raw;
    size_t raw_len;
    Ztm__V1__Service *svc = load_service(api, a, key, &raw, &raw_len);
    if (!svc) {
        api_fail(reply, ZTM_GRPC_NOT_FOUND, "no service %s", key);
        return;
    }
    if (service_wide) {
        svc->policy = req->policy;
    } else {
        Ztm__V1__Exporter *x = NULL;
        for (size_t i = 0; i < svc->n_exporters && !x; i++)
            if (strcmp(svc->exporters[i]->endpoint_id, req->endpoint_id) == 0)
                x = svc->exporters[i];
        if (!x) {
            api_fail(reply, ZTM_GRPC_NOT_FOUND, "%.64s does not export %s", req->endpoint_id, key);
            return;
        }
        x->policy = req->policy;
        x->updated_time = api_now(api);
    }
    if (req->lb_policy)
        svc->lb_policy = req->lb_policy;
    uint64_t version;
    int r = save_service(api, a, key, svc, raw, raw_len, &version);
    if (r < 0) {
        api_store_fail(reply, r, "service");
        return;
    }
    Ztm__V1__SetPolicyResponse resp = ZTM__V1__SET_POLICY_RESPONSE__INIT;
    resp.service = svc;
    resp.version = version;
    api_ok(reply, &resp.base);
}

/* ---- Hubs -------------------------------------------------------------------------- */

void hub_register(ztm_api_t *api, arena_t *a, const ztm_identity_t *caller,
                  const ProtobufCMessage *reqm, ztm_api_reply_t *reply)
{
    const Ztm__V1__RegisterHubRequest *req = (const void *)reqm;
    if (req->n_addresses == 0 || req->n_addresses > ZTM_TOKEN_MAX_HUBS) {
        api_fail(reply, ZTM_GRPC_INVALID_ARGUMENT, "give 1-%d addresses agents can dial",
                 ZTM_TOKEN_MAX_HUBS);
        return;
    }
    for (size_t i = 0; i < req->n_addresses; i++) {
        if (!ztm_token_hub_valid(req->addresses[i])) {
            api_fail(reply, ZTM_GRPC_INVALID_ARGUMENT, "invalid address \"%.100s\" (want host:port)",
                     req->addresses[i]);
            return;
        }
    }
    int64_t now = api_now(api);
    Ztm__V1__Hub hub = ZTM__V1__HUB__INIT;
    hub.id = (char *)caller->id;
    hub.name = (char *)caller->name;
    hub.addresses = req->addresses;
    hub.n_addresses = req->n_addresses;
    hub.zone = req->zone;
    hub.capacity = req->capacity;
    hub.version = req->version;
    hub.last_seen_time = now;
    size_t len;
    void *bytes = api_pack(a, &hub.base, &len);
    hub.online = 1;
    ztm_store_op_t op = {.type = ZTM_STORE_PUT, .kind = ZTM_STORE_HUB, .key = caller->id,
                         .value = bytes, .len = len};
    ztm_store_event_t ev;
    api_event(a, &ev, ZTM__V1__WATCH_EVENT__TYPE__TYPE_PUT, ZTM__V1__TOPIC__TOPIC_HUBS,
              ZTM__V1__WATCH_EVENT__OBJECT_HUB, &hub);
    uint64_t version;
    int r = ztm_store_commit(api->store, &op, 1, &ev, 1, &version);
    if (r == 0)
        r = ztm_store_soft_set(api->store, ZTM_SOFT_HUB, caller->id, "0 0", 3, HUB_TTL * 1000);
    if (r < 0) {
        api_store_fail(reply, r, "hub");
        return;
    }
    Ztm__V1__RegisterHubResponse resp = ZTM__V1__REGISTER_HUB_RESPONSE__INIT;
    resp.hub = &hub;
    resp.heartbeat_interval_seconds = HUB_HEARTBEAT;
    resp.ttl_seconds = HUB_TTL;
    resp.version = version;
    api_ok(reply, &resp.base);
    ztm_log(ZTM_LOG_INFO, "hub.registered", "id=%s name=%s addresses=%zu", caller->id,
            caller->name, req->n_addresses);
}

void hub_heartbeat(ztm_api_t *api, arena_t *a, const ztm_identity_t *caller,
                   const ProtobufCMessage *reqm, ztm_api_reply_t *reply)
{
    const Ztm__V1__HubHeartbeatRequest *req = (const void *)reqm;
    void *v;
    size_t len;
    if (ztm_store_get(api->store, ZTM_STORE_HUB, caller->id, &v, &len) < 0) {
        api_fail(reply, ZTM_GRPC_FAILED_PRECONDITION, "hub %s is not registered: call Register",
                 caller->name);
        return;
    }
    free(v);
    char *load = arena_printf(a, "%u %u", req->agents, req->sessions);
    int r = ztm_store_soft_set(api->store, ZTM_SOFT_HUB, caller->id, load, strlen(load),
                               HUB_TTL * 1000);
    if (r < 0) {
        api_store_fail(reply, r, "hub");
        return;
    }
    Ztm__V1__HubHeartbeatResponse resp = ZTM__V1__HUB_HEARTBEAT_RESPONSE__INIT;
    resp.ttl_seconds = HUB_TTL;
    resp.version = ztm_store_version(api->store);
    api_ok(reply, &resp.base);
}

typedef struct {
    ztm_api_t *api;
    arena_t *a;
    bool online_only;
    Ztm__V1__Hub **hubs;
    size_t n, cap;
} hubs_t;

static int on_hub_record(void *arg, const char *key, const void *value, size_t len)
{
    hubs_t *h = arg;
    Ztm__V1__Hub *hub = arena_unpack(h->a, &ztm__v1__hub__descriptor, value, len);
    if (!hub)
        return 0;
    void *load;
    size_t load_len;
    if (ztm_store_soft_get(h->api->store, ZTM_SOFT_HUB, key, &load, &load_len, NULL) == 0) {
        hub->online = 1;
        unsigned agents = 0, sessions = 0;
        if (sscanf(load, "%u %u", &agents, &sessions) == 2) {
            hub->agents = agents;
            hub->sessions = sessions;
        }
        free(load);
    }
    if (h->online_only && !hub->online)
        return 0;
    h->hubs = arena_grow(h->a, h->hubs, h->n, &h->cap, 16, sizeof(*h->hubs));
    h->hubs[h->n++] = hub;
    return 0;
}

void hub_list(ztm_api_t *api, arena_t *a, const ztm_identity_t *caller,
              const ProtobufCMessage *reqm, ztm_api_reply_t *reply)
{
    const Ztm__V1__ListHubsRequest *req = (const void *)reqm;
    hubs_t h = {.api = api, .a = a, .online_only = req->online_only};
    uint64_t version = ztm_store_version(api->store);
    int r = ztm_store_list(api->store, ZTM_STORE_HUB, NULL, NULL, 0, on_hub_record, &h);
    if (r < 0) {
        api_store_fail(reply, r, "hubs");
        return;
    }
    Ztm__V1__ListHubsResponse resp = ZTM__V1__LIST_HUBS_RESPONSE__INIT;
    resp.hubs = h.hubs;
    resp.n_hubs = h.n;
    resp.version = version;
    api_ok(reply, &resp.base);
}
