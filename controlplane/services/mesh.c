/* ztm.v1.Mesh: invites, joining, renewal, revocation, the endpoint
 * registry. Every change is one store commit that also carries its watch
 * events, so what Watch shows is exactly what was stored. */
#include "controlplane/services/internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "controlplane/ca/invite.h"
#include "controlplane/store/file.h"
#include "dataplane/runtime/log.h"
#include "ztm/v1/mesh.pb-c.h"

#define LIST_DEFAULT 100
#define LIST_MAX 1000
#define VERSION_TEXT_MAX 64

/* ---- helpers ---------------------------------------------------------------------- */

static char *name_key(arena_t *a, const char *name)
{
    return arena_printf(a, "name/%s", name);
}

/* The endpoint ID holding NAME into OUT; false when none. */
static bool lookup_name(ztm_api_t *api, arena_t *a, const char *name, char *out, size_t cap)
{
    void *v;
    size_t len;
    if (!ztm_name_valid(name) ||
        ztm_store_get(api->store, ZTM_STORE_META, name_key(a, name), &v, &len) < 0)
        return false;
    bool ok = len < cap;
    if (ok)
        memcpy(out, v, len + 1);
    free(v);
    return ok;
}

Ztm__V1__Endpoint *api_load_endpoint(ztm_api_t *api, arena_t *a, const char *id)
{
    void *v;
    size_t len;
    if (!ztm_id_valid(id) || ztm_store_get(api->store, ZTM_STORE_ENDPOINT, id, &v, &len) < 0)
        return NULL;
    Ztm__V1__Endpoint *ep = arena_unpack(a, &ztm__v1__endpoint__descriptor, v, len);
    free(v);
    if (!ep)
        return NULL;
    void *hub;
    size_t hub_len;
    if (ztm_store_soft_get(api->store, ZTM_SOFT_PRESENCE, id, &hub, &hub_len, NULL) == 0) {
        ep->online = 1;
        ep->hub_id = arena_strdup(a, hub);
        free(hub);
    }
    return ep;
}

/* The endpoint as stored: without what presence says. */
static void *stored_endpoint(arena_t *a, Ztm__V1__Endpoint *ep, size_t *len)
{
    protobuf_c_boolean online = ep->online;
    char *hub = ep->hub_id;
    ep->online = 0;
    ep->hub_id = (char *)protobuf_c_empty_string;
    void *p = api_pack(a, &ep->base, len);
    ep->online = online;
    ep->hub_id = hub;
    return p;
}

static bool labels_match(const Ztm__V1__Endpoint *ep, Ztm__V1__ListEndpointsRequest__LabelsEntry **want,
                         size_t n_want)
{
    for (size_t i = 0; i < n_want; i++) {
        bool found = false;
        for (size_t j = 0; j < ep->n_labels && !found; j++)
            found = strcmp(ep->labels[j]->key, want[i]->key) == 0 &&
                    strcmp(ep->labels[j]->value, want[i]->value) == 0;
        if (!found)
            return false;
    }
    return true;
}

/* A printable version string of at most VERSION_TEXT_MAX characters. */
static char *clean_text(arena_t *a, const char *s)
{
    size_t n = strlen(s);
    if (n > VERSION_TEXT_MAX)
        n = VERSION_TEXT_MAX;
    char *out = arena_alloc(a, n + 1);
    for (size_t i = 0; i < n; i++)
        out[i] = s[i] >= 0x20 && s[i] < 0x7f ? s[i] : '?';
    return out;
}

static Ztm__V1__Role proto_role(ztm_role_t r)
{
    return (Ztm__V1__Role)r;
}

/* ---- Invite ------------------------------------------------------------------------- */

void mesh_invite(ztm_api_t *api, arena_t *a, const ztm_identity_t *caller,
                 const ProtobufCMessage *reqm, ztm_api_reply_t *reply)
{
    const Ztm__V1__InviteRequest *req = (const void *)reqm;
    ztm_role_t role = req->role ? (ztm_role_t)req->role : ZTM_ROLE_AGENT;
    if (!ztm_name_valid(req->name)) {
        api_fail(reply, ZTM_GRPC_INVALID_ARGUMENT,
                 "invalid endpoint name \"%.64s\": use 1-64 letters, digits, '.', '_' or '-'",
                 req->name);
        return;
    }
    if (role != ZTM_ROLE_AGENT && role != ZTM_ROLE_ADMIN && role != ZTM_ROLE_GATEWAY) {
        api_fail(reply, ZTM_GRPC_INVALID_ARGUMENT,
                 "an invite's role is agent, admin or gateway (hubs get their certificate "
                 "from the CA they run with)");
        return;
    }
    if (req->ttl_seconds < 0 || req->ttl_seconds > ZTM_INVITE_MAX_TTL) {
        api_fail(reply, ZTM_GRPC_INVALID_ARGUMENT, "ttl_seconds must be 0..%d",
                 ZTM_INVITE_MAX_TTL);
        return;
    }
    const char *const *hubs = req->n_hubs ? (const char *const *)req->hubs
                                          : (const char *const *)api->hubs;
    size_t n_hubs = req->n_hubs ? req->n_hubs : api->n_hubs;
    if (n_hubs == 0) {
        api_fail(reply, ZTM_GRPC_FAILED_PRECONDITION,
                 "no hub address to put in the token: name hubs in the request or start the "
                 "server with its public address");
        return;
    }
    if (n_hubs > ZTM_TOKEN_MAX_HUBS) {
        api_fail(reply, ZTM_GRPC_INVALID_ARGUMENT, "at most %d hubs", ZTM_TOKEN_MAX_HUBS);
        return;
    }
    for (size_t i = 0; i < n_hubs; i++) {
        if (!ztm_token_hub_valid(hubs[i])) {
            api_fail(reply, ZTM_GRPC_INVALID_ARGUMENT, "invalid hub address \"%.100s\" (want host:port)",
                     hubs[i]);
            return;
        }
    }
    char holder[ZTM_ID_MAX + 1];
    if (lookup_name(api, a, req->name, holder, sizeof(holder))) {
        Ztm__V1__Endpoint *ep = api_load_endpoint(api, a, holder);
        if (ep && !ep->revoked) {
            api_fail(reply, ZTM_GRPC_ALREADY_EXISTS,
                     "endpoint name %s is taken (by %s); revoke it first or pick another name",
                     req->name, holder);
            return;
        }
    }

    if (req->n_labels > ZTM_INVITE_MAX_LABELS) {
        api_fail(reply, ZTM_GRPC_INVALID_ARGUMENT, "at most %d labels", ZTM_INVITE_MAX_LABELS);
        return;
    }
    const char **keys = arena_alloc(a, (req->n_labels + 1) * sizeof(char *));
    const char **values = arena_alloc(a, (req->n_labels + 1) * sizeof(char *));
    for (size_t i = 0; i < req->n_labels; i++) {
        keys[i] = req->labels[i]->key;
        values[i] = req->labels[i]->value;
        if (!ztm_invite_label_valid(keys[i], values[i])) {
            api_fail(reply, ZTM_GRPC_INVALID_ARGUMENT,
                     "invalid label \"%.64s\": keys are 1-63 of [A-Za-z0-9._/-], values "
                     "printable, at most 255",
                     keys[i]);
            return;
        }
    }
    ztm_invite_params_t p = {.name = req->name, .role = role, .ttl = req->ttl_seconds,
                             .hubs = hubs, .n_hubs = n_hubs, .created_by = caller->id,
                             .label_keys = keys, .label_values = values,
                             .n_labels = req->n_labels, .now = api_now(api)};
    char *token;
    size_t token_len;
    int64_t expires;
    int r = ztm_invite_create(api->store, api->ca, &p, &token, &token_len, &expires);
    if (r < 0) {
        if (r == ZTM_TOKEN_E_FIELD)
            api_fail(reply, ZTM_GRPC_INVALID_ARGUMENT, "%s", ztm_token_strerror(r));
        else
            api_store_fail(reply, r, "invite");
        return;
    }
    Ztm__V1__InviteResponse resp = ZTM__V1__INVITE_RESPONSE__INIT;
    resp.token = token;
    resp.expires_time = expires;
    resp.name = req->name;
    resp.role = proto_role(role);
    api_ok(reply, &resp.base);
    ztm_file_free_secret(token, token_len);
    ztm_log(ZTM_LOG_INFO, "invite.created", "name=%s role=%s expires=%lld by=%s", req->name,
            ztm_role_name(role), (long long)expires, caller->id);
}

/* ---- Join ---------------------------------------------------------------------------- */

typedef struct {
    arena_t *a;
    Ztm__V1__Hub **hubs;
    size_t n, cap;
} hub_list_t;

static int on_hub(void *arg, const char *key, const void *value, size_t len)
{
    hub_list_t *l = arg;
    Ztm__V1__Hub *h = arena_unpack(l->a, &ztm__v1__hub__descriptor, value, len);
    if (!h || l->n == l->cap)
        return 0;
    l->hubs[l->n++] = h;
    return 0;
}

/* The hubs a joiner is told about: the registered ones, else its token's. */
static void join_hubs(ztm_api_t *api, arena_t *a, const ztm_token_t *tok,
                      Ztm__V1__JoinResponse *resp)
{
    hub_list_t l = {.a = a, .cap = 64};
    l.hubs = arena_alloc(a, l.cap * sizeof(*l.hubs));
    ztm_store_list(api->store, ZTM_STORE_HUB, NULL, NULL, l.cap, on_hub, &l);
    if (l.n == 0) {
        Ztm__V1__Hub *h = arena_alloc(a, sizeof(*h));
        ztm__v1__hub__init(h);
        h->n_addresses = tok->n_hubs;
        h->addresses = arena_alloc(a, tok->n_hubs * sizeof(char *));
        for (size_t i = 0; i < tok->n_hubs; i++)
            h->addresses[i] = arena_strdup(a, tok->hubs[i]);
        l.hubs[l.n++] = h;
    }
    resp->hubs = l.hubs;
    resp->n_hubs = l.n;
}

/* Creates endpoint NAME with ROLE for CSR: a certificate, the endpoint
 * record, its name, its certificate record and its watch event, in one
 * commit that also carries EXTRA (the invite being used) when given. The
 * name may be taken over only from a revoked endpoint. Fills *EP (strings
 * in the arena or in *CERT) and *CERT. ID is the new endpoint's (made by
 * the caller, who may need it first). Returns 0, -EEXIST,
 * ZTM_STORE_E_CONFLICT (a race), ZTM_CA_E_* or a store error. */
static int create_endpoint(ztm_api_t *api, arena_t *a, const char *name, ztm_role_t role,
                           const ztm_csr_t *csr, const char *const *dns, size_t n_dns,
                           const char *const *ips, size_t n_ips, const ztm_store_op_t *extra,
                           const char *agent_version, Ztm__V1__Endpoint__LabelsEntry **labels,
                           size_t n_labels, Ztm__V1__Endpoint *ep, ztm_ca_issued_t *cert,
                           const char *id)
{
    int64_t now = api_now(api);
    char holder[ZTM_ID_MAX + 1] = "";
    ztm_store_cond_t name_cond = ZTM_STORE_IF_ABSENT;
    if (lookup_name(api, a, name, holder, sizeof(holder))) {
        Ztm__V1__Endpoint *old = api_load_endpoint(api, a, holder);
        if (old && !old->revoked)
            return -EEXIST;
        name_cond = ZTM_STORE_IF_EQUAL;
    }
    ztm_ca_leaf_t leaf = {.role = role, .id = id, .name = name, .dns = dns, .n_dns = n_dns,
                          .ips = ips, .n_ips = n_ips, .lifetime = api->leaf_lifetime, .now = now};
    int r = ztm_ca_issue(api->ca, csr, &leaf, cert);
    if (r < 0)
        return r;

    ztm__v1__endpoint__init(ep);
    ep->id = arena_strdup(a, id);
    ep->name = arena_strdup(a, name);
    ep->mesh = (char *)ztm_ca_mesh(api->ca);
    ep->role = proto_role(role);
    ep->cert_serial = cert->serial;
    ep->cert_not_after = cert->not_after;
    ep->joined_time = now;
    ep->agent_version = clean_text(a, agent_version ? agent_version : "");
    ep->labels = labels;
    ep->n_labels = n_labels;
    Ztm__V1__IssuedCertificate ic = ZTM__V1__ISSUED_CERTIFICATE__INIT;
    ic.serial = cert->serial;
    ic.endpoint_id = ep->id;
    ic.endpoint_name = ep->name;
    ic.role = ep->role;
    ic.not_before = cert->not_before;
    ic.not_after = cert->not_after;
    ic.issued_time = now;
    ic.dns_names = (char **)dns;
    ic.n_dns_names = n_dns;
    ic.ip_addresses = (char **)ips;
    ic.n_ip_addresses = n_ips;

    ztm_store_op_t ops[4];
    size_t n = 0, ep_len, ic_len;
    if (extra)
        ops[n++] = *extra;
    void *ep_bytes = stored_endpoint(a, ep, &ep_len);
    void *ic_bytes = api_pack(a, &ic.base, &ic_len);
    ops[n++] = (ztm_store_op_t){.type = ZTM_STORE_PUT, .kind = ZTM_STORE_ENDPOINT, .key = ep->id,
                                .value = ep_bytes, .len = ep_len, .cond = ZTM_STORE_IF_ABSENT};
    ops[n++] = (ztm_store_op_t){.type = ZTM_STORE_PUT, .kind = ZTM_STORE_META,
                                .key = name_key(a, name), .value = ep->id, .len = strlen(id),
                                .cond = name_cond, .expect = arena_strdup(a, holder),
                                .expect_len = strlen(holder)};
    ops[n++] = (ztm_store_op_t){.type = ZTM_STORE_PUT, .kind = ZTM_STORE_SERIAL,
                                .key = cert->serial, .value = ic_bytes, .len = ic_len,
                                .cond = ZTM_STORE_IF_ABSENT};
    ztm_store_event_t ev;
    api_event(a, &ev, ZTM__V1__WATCH_EVENT__TYPE__TYPE_PUT, ZTM__V1__TOPIC__TOPIC_ENDPOINTS,
              ZTM__V1__WATCH_EVENT__OBJECT_ENDPOINT, ep);
    r = ztm_store_commit(api->store, ops, n, &ev, 1, NULL);
    if (r < 0)
        ztm_ca_issued_clear(cert);
    return r;
}

int ztm_api_enroll(ztm_api_t *api, const char *name, ztm_role_t role, const char *csr_pem,
                   const char *const *dns, size_t n_dns, const char *const *ips, size_t n_ips,
                   ztm_ca_issued_t *issued, char endpoint_id[ZTM_ID_MAX + 1])
{
    if (!name || !ztm_name_valid(name))
        return ZTM_CA_E_BAD_NAME;
    ztm_csr_t *csr;
    int r = ztm_csr_parse(csr_pem, strlen(csr_pem), &csr);
    if (r < 0)
        return r;
    arena_t a;
    arena_init(&a);
    Ztm__V1__Endpoint ep;
    char id[33];
    ztm_id_generate(id);
    memset(issued, 0, sizeof(*issued));
    r = create_endpoint(api, &a, name, role, csr, dns, n_dns, ips, n_ips, NULL, ZTM_VERSION, NULL,
                        0, &ep, issued, id);
    if (r == 0) {
        strcpy(endpoint_id, id);
        ztm_log(ZTM_LOG_INFO, "endpoint.enrolled", "id=%s name=%s role=%s serial=%s", id, name,
                ztm_role_name(role), issued->serial);
    }
    arena_free(&a);
    ztm_csr_free(csr);
    return r;
}

void mesh_join(ztm_api_t *api, arena_t *a, const ztm_identity_t *caller,
               const ProtobufCMessage *reqm, ztm_api_reply_t *reply)
{
    const Ztm__V1__JoinRequest *req = (const void *)reqm;
    int64_t now = api_now(api);
    ztm_token_t tok;
    ztm_invite_t inv = {0};
    ztm_csr_t *csr = NULL;
    ztm_ca_issued_t cert = {0};
    int r = ztm_token_decode(req->token, strlen(req->token), &tok);
    if (r < 0) {
        api_fail(reply, ZTM_GRPC_INVALID_ARGUMENT, "invite token: %s", ztm_token_strerror(r));
        goto out;
    }
    if ((r = ztm_invite_check(api->store, api->ca, &tok, now, &inv)) < 0) {
        if (r <= ZTM_TOKEN_E_PREFIX && r >= ZTM_TOKEN_E_UNKNOWN)
            api_fail(reply, ZTM_GRPC_UNAUTHENTICATED, "%s", ztm_token_strerror(r));
        else
            api_store_fail(reply, r, "invite");
        goto out;
    }
    if ((r = ztm_csr_parse(req->csr_pem, strlen(req->csr_pem), &csr)) < 0) {
        api_fail(reply, ZTM_GRPC_INVALID_ARGUMENT, "certificate request: %s", ztm_ca_strerror(r));
        goto out;
    }
    char cn[ZTM_NAME_MAX + 2];
    if (ztm_csr_common_name(csr, cn, sizeof(cn)) < 0 || (cn[0] && strcmp(cn, inv.name) != 0)) {
        api_fail(reply, ZTM_GRPC_PERMISSION_DENIED,
                 "the certificate request names \"%.64s\", the invite is for %s", cn, inv.name);
        goto out;
    }
    ztm_role_t asked;
    if (ztm_csr_requested_role(csr, &asked) < 0 ||
        (asked != ZTM_ROLE_NONE && asked != (ztm_role_t)inv.role)) {
        api_fail(reply, ZTM_GRPC_PERMISSION_DENIED,
                 "the certificate request asks for role %s, the invite is for %s",
                 ztm_role_name(asked), ztm_role_name((ztm_role_t)inv.role));
        goto out;
    }
    ztm_store_op_t use;
    char id[33];
    Ztm__V1__Endpoint ep;
    ztm_id_generate(id);
    if ((r = ztm_invite_use_op(&inv, id, now, &use)) < 0) {
        api_store_fail(reply, r, "invite");
        goto out;
    }
    /* the labels the invite was made with */
    Ztm__V1__InviteRecord *rec =
        arena_unpack(a, &ztm__v1__invite_record__descriptor, inv.record, inv.record_len);
    size_t n_labels = rec ? rec->n_labels : 0;
    Ztm__V1__Endpoint__LabelsEntry **labels = arena_alloc(a, (n_labels + 1) * sizeof(*labels));
    for (size_t i = 0; i < n_labels; i++) {
        labels[i] = arena_alloc(a, sizeof(**labels));
        ztm__v1__endpoint__labels_entry__init(labels[i]);
        labels[i]->key = rec->labels[i]->key;
        labels[i]->value = rec->labels[i]->value;
    }
    r = create_endpoint(api, a, inv.name, inv.role, csr, NULL, 0, NULL, 0, &use,
                        req->agent_version, labels, n_labels, &ep, &cert, id);
    if (r == -EEXIST) {
        api_fail(reply, ZTM_GRPC_ALREADY_EXISTS, "endpoint name %s is taken", inv.name);
        goto out;
    }
    if (r == ZTM_STORE_E_CONFLICT) {
        /* Who won the race: another join with this token, or with this name? */
        ztm_invite_t again;
        if (ztm_invite_check(api->store, api->ca, &tok, now, &again) == ZTM_TOKEN_E_USED)
            api_fail(reply, ZTM_GRPC_UNAUTHENTICATED, "%s", ztm_token_strerror(ZTM_TOKEN_E_USED));
        else
            api_fail(reply, ZTM_GRPC_ALREADY_EXISTS, "endpoint name %s was just taken", inv.name);
        ztm_invite_clear(&again);
        goto out;
    }
    if (r < 0) {
        if (r <= ZTM_CA_E_PARSE && r >= ZTM_CA_E_VERIFY)
            api_fail(reply, ZTM_GRPC_INTERNAL, "issuing the certificate: %s", ztm_ca_strerror(r));
        else
            api_store_fail(reply, r, "join");
        goto out;
    }
    Ztm__V1__JoinResponse resp = ZTM__V1__JOIN_RESPONSE__INIT;
    resp.endpoint = &ep;
    resp.certificate_pem = cert.pem;
    resp.ca_certificate_pem = api->ca_pem;
    join_hubs(api, a, &tok, &resp);
    api_ok(reply, &resp.base);
    ztm_log(ZTM_LOG_INFO, "endpoint.joined", "id=%s name=%s role=%s serial=%s", id, inv.name,
            ztm_role_name(inv.role), cert.serial);
out:
    ztm_token_wipe(&tok);
    ztm_invite_clear(&inv);
    ztm_csr_free(csr);
    ztm_ca_issued_clear(&cert);
}

/* ---- Renew ---------------------------------------------------------------------------- */

void mesh_renew(ztm_api_t *api, arena_t *a, const ztm_identity_t *caller,
                const ProtobufCMessage *reqm, ztm_api_reply_t *reply)
{
    const Ztm__V1__RenewRequest *req = (const void *)reqm;
    int64_t now = api_now(api);
    ztm_csr_t *csr = NULL;
    ztm_ca_issued_t cert = {0};
    void *old_ep = NULL, *old_ic = NULL;
    size_t old_ep_len, old_ic_len;
    int r;

    if (ztm_store_get(api->store, ZTM_STORE_ENDPOINT, caller->id, &old_ep, &old_ep_len) < 0) {
        api_fail(reply, ZTM_GRPC_NOT_FOUND, "endpoint %s is no longer in the mesh", caller->id);
        goto out;
    }
    Ztm__V1__Endpoint *ep = arena_unpack(a, &ztm__v1__endpoint__descriptor, old_ep, old_ep_len);
    if (!ep) {
        api_fail(reply, ZTM_GRPC_DATA_LOSS, "endpoint record %s is damaged", caller->id);
        goto out;
    }
    if (ep->revoked) {
        api_fail(reply, ZTM_GRPC_UNAUTHENTICATED, "endpoint %s was revoked", caller->name);
        goto out;
    }
    if ((r = ztm_csr_parse(req->csr_pem, strlen(req->csr_pem), &csr)) < 0) {
        api_fail(reply, ZTM_GRPC_INVALID_ARGUMENT, "certificate request: %s", ztm_ca_strerror(r));
        goto out;
    }
    char cn[ZTM_NAME_MAX + 2];
    if (ztm_csr_common_name(csr, cn, sizeof(cn)) < 0 || (cn[0] && strcmp(cn, caller->name) != 0)) {
        api_fail(reply, ZTM_GRPC_PERMISSION_DENIED,
                 "the certificate request names \"%.64s\", the caller is %s", cn, caller->name);
        goto out;
    }
    ztm_role_t asked;
    if (ztm_csr_requested_role(csr, &asked) < 0 || (asked != ZTM_ROLE_NONE && asked != caller->role)) {
        api_fail(reply, ZTM_GRPC_PERMISSION_DENIED,
                 "the certificate request asks for role %s, the caller is %s",
                 ztm_role_name(asked), ztm_role_name(caller->role));
        goto out;
    }
    /* A hub keeps its DNS and IP names. */
    ztm_ca_leaf_t leaf = {.role = caller->role, .id = caller->id, .name = caller->name,
                          .lifetime = api->leaf_lifetime, .now = now};
    if (ztm_store_get(api->store, ZTM_STORE_SERIAL, caller->serial, &old_ic, &old_ic_len) == 0) {
        Ztm__V1__IssuedCertificate *prev =
            arena_unpack(a, &ztm__v1__issued_certificate__descriptor, old_ic, old_ic_len);
        if (prev && caller->role == ZTM_ROLE_HUB) {
            leaf.dns = (const char *const *)prev->dns_names;
            leaf.n_dns = prev->n_dns_names;
            leaf.ips = (const char *const *)prev->ip_addresses;
            leaf.n_ips = prev->n_ip_addresses;
        }
    }
    if ((r = ztm_ca_issue(api->ca, csr, &leaf, &cert)) < 0) {
        api_fail(reply, ZTM_GRPC_INTERNAL, "issuing the certificate: %s", ztm_ca_strerror(r));
        goto out;
    }
    ep->cert_serial = cert.serial;
    ep->cert_not_after = cert.not_after;
    Ztm__V1__IssuedCertificate ic = ZTM__V1__ISSUED_CERTIFICATE__INIT;
    ic.serial = cert.serial;
    ic.endpoint_id = ep->id;
    ic.endpoint_name = ep->name;
    ic.role = proto_role(caller->role);
    ic.not_before = cert.not_before;
    ic.not_after = cert.not_after;
    ic.issued_time = now;
    ic.dns_names = (char **)leaf.dns;
    ic.n_dns_names = leaf.n_dns;
    ic.ip_addresses = (char **)leaf.ips;
    ic.n_ip_addresses = leaf.n_ips;
    size_t ep_len, ic_len;
    void *ep_bytes = stored_endpoint(a, ep, &ep_len);
    void *ic_bytes = api_pack(a, &ic.base, &ic_len);
    ztm_store_op_t ops[2] = {
        {.type = ZTM_STORE_PUT, .kind = ZTM_STORE_ENDPOINT, .key = caller->id, .value = ep_bytes,
         .len = ep_len, .cond = ZTM_STORE_IF_EQUAL, .expect = old_ep, .expect_len = old_ep_len},
        {.type = ZTM_STORE_PUT, .kind = ZTM_STORE_SERIAL, .key = cert.serial, .value = ic_bytes,
         .len = ic_len, .cond = ZTM_STORE_IF_ABSENT},
    };
    ztm_store_event_t ev;
    api_event(a, &ev, ZTM__V1__WATCH_EVENT__TYPE__TYPE_PUT, ZTM__V1__TOPIC__TOPIC_ENDPOINTS,
              ZTM__V1__WATCH_EVENT__OBJECT_ENDPOINT, ep);
    if ((r = ztm_store_commit(api->store, ops, 2, &ev, 1, NULL)) < 0) {
        api_store_fail(reply, r, "endpoint");
        goto out;
    }
    Ztm__V1__RenewResponse resp = ZTM__V1__RENEW_RESPONSE__INIT;
    resp.certificate_pem = cert.pem;
    resp.ca_certificate_pem = api->ca_pem;
    resp.not_after = cert.not_after;
    api_ok(reply, &resp.base);
    ztm_log(ZTM_LOG_INFO, "cert.renewed", "id=%s name=%s serial=%s previous=%s", caller->id,
            caller->name, cert.serial, caller->serial);
out:
    free(old_ep);
    free(old_ic);
    ztm_csr_free(csr);
    ztm_ca_issued_clear(&cert);
}

/* ---- Revoke ------------------------------------------------------------------------------ */

typedef struct {
    arena_t *a;
    const char *endpoint_id;
    int64_t now;
    Ztm__V1__IssuedCertificate **certs;
    size_t n, cap;
} serial_scan_t;

static int on_serial(void *arg, const char *key, const void *value, size_t len)
{
    serial_scan_t *s = arg;
    Ztm__V1__IssuedCertificate *ic =
        arena_unpack(s->a, &ztm__v1__issued_certificate__descriptor, value, len);
    if (!ic || strcmp(ic->endpoint_id, s->endpoint_id) != 0 || ic->not_after <= s->now)
        return 0;
    s->certs = arena_grow(s->a, s->certs, s->n, &s->cap, 8, sizeof(*s->certs));
    s->certs[s->n++] = ic;
    return 0;
}

void mesh_revoke(ztm_api_t *api, arena_t *a, const ztm_identity_t *caller,
                 const ProtobufCMessage *reqm, ztm_api_reply_t *reply)
{
    const Ztm__V1__RevokeRequest *req = (const void *)reqm;
    int64_t now = api_now(api);
    serial_scan_t scan = {.a = a, .now = now};
    char id[ZTM_ID_MAX + 1] = "";
    const char *target = "";
    bool whole_endpoint = true;

    switch (req->target_case) {
    case ZTM__V1__REVOKE_REQUEST__TARGET_SERIAL: {
        void *v;
        size_t len;
        target = req->serial;
        if (strlen(req->serial) > ZTM_SERIAL_MAX || !req->serial[0] ||
            ztm_store_get(api->store, ZTM_STORE_SERIAL, req->serial, &v, &len) < 0) {
            api_fail(reply, ZTM_GRPC_NOT_FOUND, "no certificate with serial %.64s", req->serial);
            return;
        }
        Ztm__V1__IssuedCertificate *ic =
            arena_unpack(a, &ztm__v1__issued_certificate__descriptor, v, len);
        free(v);
        if (!ic) {
            api_fail(reply, ZTM_GRPC_DATA_LOSS, "certificate record %s is damaged", req->serial);
            return;
        }
        scan.certs = arena_alloc(a, sizeof(*scan.certs));
        scan.certs[0] = ic;
        scan.n = 1;
        snprintf(id, sizeof(id), "%s", ic->endpoint_id);
        whole_endpoint = false;
        break;
    }
    case ZTM__V1__REVOKE_REQUEST__TARGET_ENDPOINT_NAME:
        target = req->endpoint_name;
        if (!lookup_name(api, a, req->endpoint_name, id, sizeof(id))) {
            api_fail(reply, ZTM_GRPC_NOT_FOUND, "no endpoint named %.64s", req->endpoint_name);
            return;
        }
        break;
    case ZTM__V1__REVOKE_REQUEST__TARGET_ENDPOINT_ID:
        target = req->endpoint_id;
        if (!ztm_id_valid(req->endpoint_id) || strlen(req->endpoint_id) >= sizeof(id)) {
            api_fail(reply, ZTM_GRPC_NOT_FOUND, "no endpoint %.64s", req->endpoint_id);
            return;
        }
        strcpy(id, req->endpoint_id);
        break;
    default:
        api_fail(reply, ZTM_GRPC_INVALID_ARGUMENT, "name an endpoint_id, endpoint_name or serial");
        return;
    }

    Ztm__V1__Endpoint *ep = api_load_endpoint(api, a, id);
    if (whole_endpoint) {
        if (!ep) {
            api_fail(reply, ZTM_GRPC_NOT_FOUND, "no endpoint %s", target);
            return;
        }
        scan.endpoint_id = id;
        int r = ztm_store_list(api->store, ZTM_STORE_SERIAL, NULL, NULL, 0, on_serial, &scan);
        if (r < 0) {
            api_store_fail(reply, r, "certificates");
            return;
        }
    }

    /* New revocations, the endpoint marked revoked, one event each. */
    size_t n_ops = 0, n_ev = 0;
    ztm_store_op_t *ops = arena_alloc(a, (scan.n + 1) * sizeof(*ops));
    ztm_store_event_t *evs = arena_alloc(a, (scan.n + 1) * sizeof(*evs));
    Ztm__V1__Revocation **revs = arena_alloc(a, (scan.n ? scan.n : 1) * sizeof(*revs));
    size_t n_revs = 0, n_new = 0;
    for (size_t i = 0; i < scan.n; i++) {
        Ztm__V1__IssuedCertificate *ic = scan.certs[i];
        void *v;
        size_t len;
        if (ztm_store_get(api->store, ZTM_STORE_REVOCATION, ic->serial, &v, &len) == 0) {
            Ztm__V1__Revocation *old = arena_unpack(a, &ztm__v1__revocation__descriptor, v, len);
            free(v);
            if (old)
                revs[n_revs++] = old; /* already revoked: reported, not repeated */
            continue;
        }
        Ztm__V1__Revocation *rv = arena_alloc(a, sizeof(*rv));
        ztm__v1__revocation__init(rv);
        rv->serial = ic->serial;
        rv->endpoint_id = ic->endpoint_id;
        rv->endpoint_name = ic->endpoint_name;
        rv->revoked_time = now;
        rv->not_after = ic->not_after;
        rv->reason = clean_text(a, req->reason);
        revs[n_revs++] = rv;
        n_new++;
        size_t len2;
        void *bytes = api_pack(a, &rv->base, &len2);
        ops[n_ops++] = (ztm_store_op_t){.type = ZTM_STORE_PUT, .kind = ZTM_STORE_REVOCATION,
                                        .key = ic->serial, .value = bytes, .len = len2,
                                        .cond = ZTM_STORE_IF_ABSENT};
        api_event(a, &evs[n_ev++], ZTM__V1__WATCH_EVENT__TYPE__TYPE_PUT,
                  ZTM__V1__TOPIC__TOPIC_REVOCATIONS, ZTM__V1__WATCH_EVENT__OBJECT_REVOCATION, rv);
    }
    bool current =
        ep && scan.n && !whole_endpoint && strcmp(ep->cert_serial, scan.certs[0]->serial) == 0;
    if (ep && !ep->revoked && (whole_endpoint || current)) {
        ep->revoked = 1;
        size_t len;
        void *bytes = stored_endpoint(a, ep, &len);
        ops[n_ops++] = (ztm_store_op_t){.type = ZTM_STORE_PUT, .kind = ZTM_STORE_ENDPOINT,
                                        .key = id, .value = bytes, .len = len,
                                        .cond = ZTM_STORE_IF_EXISTS};
        api_event(a, &evs[n_ev++], ZTM__V1__WATCH_EVENT__TYPE__TYPE_PUT,
                  ZTM__V1__TOPIC__TOPIC_ENDPOINTS, ZTM__V1__WATCH_EVENT__OBJECT_ENDPOINT, ep);
    }
    uint64_t version = ztm_store_version(api->store);
    if (n_ops) {
        int r = ztm_store_commit(api->store, ops, n_ops, evs, n_ev, &version);
        if (r < 0) {
            api_store_fail(reply, r, "revocation");
            return;
        }
        ztm_log(ZTM_LOG_INFO, "cert.revoked", "target=%s endpoint=%s certificates=%zu by=%s",
                target, id, n_new, caller->id);
    }
    Ztm__V1__RevokeResponse resp = ZTM__V1__REVOKE_RESPONSE__INIT;
    resp.revocations = revs;
    resp.n_revocations = n_revs;
    resp.version = version;
    api_ok(reply, &resp.base);
}

/* ---- ListEndpoints and GetEndpoint -------------------------------------------------------- */

typedef struct {
    ztm_api_t *api;
    arena_t *a;
    const Ztm__V1__ListEndpointsRequest *req;
    Ztm__V1__Endpoint **eps;
    size_t n, want;
} list_t;

static int on_endpoint(void *arg, const char *key, const void *value, size_t len)
{
    list_t *l = arg;
    const Ztm__V1__ListEndpointsRequest *req = l->req;
    Ztm__V1__Endpoint *ep = api_load_endpoint(l->api, l->a, key);
    if (!ep)
        return 0;
    if ((req->name_prefix[0] && strncmp(ep->name, req->name_prefix, strlen(req->name_prefix)) != 0) ||
        (req->role && ep->role != req->role) || (req->online_only && !ep->online) ||
        !labels_match(ep, req->labels, req->n_labels))
        return 0;
    l->eps[l->n++] = ep;
    return l->n == l->want; /* one past the page: stop */
}

void mesh_list_endpoints(ztm_api_t *api, arena_t *a, const ztm_identity_t *caller,
                         const ProtobufCMessage *reqm, ztm_api_reply_t *reply)
{
    const Ztm__V1__ListEndpointsRequest *req = (const void *)reqm;
    size_t page = req->page_size ? req->page_size : LIST_DEFAULT;
    if (page > LIST_MAX)
        page = LIST_MAX;
    if (req->page_token[0] && !ztm_id_valid(req->page_token)) {
        api_fail(reply, ZTM_GRPC_INVALID_ARGUMENT, "invalid page_token");
        return;
    }
    list_t l = {.api = api, .a = a, .req = req, .want = page + 1};
    l.eps = arena_alloc(a, l.want * sizeof(*l.eps));
    uint64_t version = ztm_store_version(api->store);
    int r = ztm_store_list(api->store, ZTM_STORE_ENDPOINT, NULL, req->page_token, 0, on_endpoint, &l);
    if (r < 0) {
        api_store_fail(reply, r, "endpoints");
        return;
    }
    Ztm__V1__ListEndpointsResponse resp = ZTM__V1__LIST_ENDPOINTS_RESPONSE__INIT;
    if (l.n > page) {
        l.n = page;
        resp.next_page_token = l.eps[page - 1]->id;
    }
    resp.endpoints = l.eps;
    resp.n_endpoints = l.n;
    resp.version = version;
    api_ok(reply, &resp.base);
}

void mesh_get_endpoint(ztm_api_t *api, arena_t *a, const ztm_identity_t *caller,
                       const ProtobufCMessage *reqm, ztm_api_reply_t *reply)
{
    const Ztm__V1__GetEndpointRequest *req = (const void *)reqm;
    char id[ZTM_ID_MAX + 1];
    Ztm__V1__Endpoint *ep = NULL;
    if (req->key_case == ZTM__V1__GET_ENDPOINT_REQUEST__KEY_ID) {
        ep = api_load_endpoint(api, a, req->id);
    } else if (req->key_case == ZTM__V1__GET_ENDPOINT_REQUEST__KEY_NAME) {
        if (lookup_name(api, a, req->name, id, sizeof(id)))
            ep = api_load_endpoint(api, a, id);
    } else {
        api_fail(reply, ZTM_GRPC_INVALID_ARGUMENT, "give an endpoint id or name");
        return;
    }
    if (!ep) {
        api_fail(reply, ZTM_GRPC_NOT_FOUND, "no endpoint %.64s",
                 req->key_case == ZTM__V1__GET_ENDPOINT_REQUEST__KEY_ID ? req->id : req->name);
        return;
    }
    api_ok(reply, &ep->base);
}

/* ---- upkeep --------------------------------------------------------------------------- */

typedef struct {
    arena_t *a;
    int64_t now;
    const ProtobufCMessageDescriptor *desc;
    char **keys;
    size_t n, cap;
} expired_t;

static int on_maybe_expired(void *arg, const char *key, const void *value, size_t len)
{
    expired_t *x = arg;
    ProtobufCMessage *m = arena_unpack(x->a, x->desc, value, len);
    int64_t not_after = 0;
    if (m && x->desc == &ztm__v1__issued_certificate__descriptor)
        not_after = ((Ztm__V1__IssuedCertificate *)m)->not_after;
    else if (m)
        not_after = ((Ztm__V1__Revocation *)m)->not_after;
    if (m && not_after > x->now)
        return 0; /* an undecodable record goes too: nothing can use it */
    x->keys = arena_grow(x->a, x->keys, x->n, &x->cap, 64, sizeof(*x->keys));
    x->keys[x->n++] = arena_strdup(x->a, key);
    return 0;
}

int ztm_api_sweep(ztm_api_t *api)
{
    arena_t a;
    arena_init(&a);
    int64_t now = api_now(api);
    expired_t certs = {.a = &a, .now = now, .desc = &ztm__v1__issued_certificate__descriptor};
    expired_t revs = {.a = &a, .now = now, .desc = &ztm__v1__revocation__descriptor};
    int r = ztm_store_list(api->store, ZTM_STORE_SERIAL, NULL, NULL, 0, on_maybe_expired, &certs);
    if (r == 0)
        r = ztm_store_list(api->store, ZTM_STORE_REVOCATION, NULL, NULL, 0, on_maybe_expired, &revs);
    size_t n = certs.n + revs.n;
    if (r == 0 && n) {
        ztm_store_op_t *ops = arena_alloc(&a, n * sizeof(*ops));
        ztm_store_event_t *evs = arena_alloc(&a, (revs.n ? revs.n : 1) * sizeof(*evs));
        for (size_t i = 0; i < certs.n; i++)
            ops[i] = (ztm_store_op_t){.type = ZTM_STORE_DEL, .kind = ZTM_STORE_SERIAL,
                                      .key = certs.keys[i]};
        for (size_t i = 0; i < revs.n; i++) {
            ops[certs.n + i] = (ztm_store_op_t){.type = ZTM_STORE_DEL,
                                                .kind = ZTM_STORE_REVOCATION, .key = revs.keys[i]};
            Ztm__V1__Revocation *k = arena_alloc(&a, sizeof(*k));
            ztm__v1__revocation__init(k);
            k->serial = revs.keys[i];
            api_event(&a, &evs[i], ZTM__V1__WATCH_EVENT__TYPE__TYPE_DELETE,
                      ZTM__V1__TOPIC__TOPIC_REVOCATIONS, ZTM__V1__WATCH_EVENT__OBJECT_REVOCATION, k);
        }
        r = ztm_store_commit(api->store, ops, n, evs, revs.n, NULL);
    }
    arena_free(&a);
    if (r < 0)
        return r;
    int inv = ztm_invite_sweep(api->store, now);
    if (inv < 0)
        return inv;
    if (n || inv)
        ztm_log(ZTM_LOG_INFO, "store.swept", "certificates=%zu revocations=%zu invites=%d",
                certs.n, revs.n, inv);
    return (int)n + inv;
}
