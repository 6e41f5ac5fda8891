/* controlplane/services: the control API without a transport — the CA made
 * at first start, the first admin enrolled, then every Mesh method through
 * ztm_api_unary with admin, agent, anonymous, revoked, expired and foreign
 * identities: success paths, each refusal with its status, and the store
 * left unchanged by refusals; Health.Check; Watch.Subscribe from scratch,
 * live, resumed, and after compaction; a revoked watcher cut off. */
#include "controlplane/ca/keys.h"
#include "controlplane/services/api.h"
#include "controlplane/store/file.h"
#include "grpc/health/v1/health.pb-c.h"
#include "ztm/v1/hubs.pb-c.h"
#include "ztm/v1/mesh.pb-c.h"
#include "ztm/v1/services.pb-c.h"
#include "ztm/v1/watch.pb-c.h"

#include <errno.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/x509v3.h>

#include "test.h"

static char top[] = "/tmp/ztm-test-api-XXXXXX";
static char dir[600];
static int64_t now;
static ztm_store_t *st;
static ztm_ca_t *ca;
static ztm_api_t *api;

static int64_t clk(void *arg)
{
    return now;
}

typedef struct {
    ztm_identity_t id;
    char *pem;
} cred_t;

static void call_on(ztm_api_t *on, const char *path, const ztm_identity_t *who,
                    const ProtobufCMessage *req, ztm_api_reply_t *r)
{
    const ztm_api_method_t *m = ztm_api_find(path, strlen(path));
    REQUIRE(m);
    size_t n = protobuf_c_message_get_packed_size(req);
    uint8_t *buf = malloc(n + 1);
    protobuf_c_message_pack(req, buf);
    ztm_api_unary(on, m, who, buf, n, r);
    free(buf);
}

static void call(const char *path, const ztm_identity_t *who, const ProtobufCMessage *req,
                 ztm_api_reply_t *r)
{
    call_on(api, path, who, req, r);
}

#define CHECK_STATUS(r, want)                                                          \
    do {                                                                               \
        if ((r).status != (want))                                                      \
            fprintf(stderr, "%s:%d: status %s (%s), expected %s\n", __FILE__, __LINE__,  \
                    ztm_grpc_status_name((r).status), (r).message,                     \
                    ztm_grpc_status_name(want));                                       \
        CHECK((r).status == (want));                                                   \
    } while (0)

static char *make_csr(const char *cn)
{
    EVP_PKEY *key;
    REQUIRE(ztm_key_generate(&key) == 0);
    char *pem;
    size_t len;
    REQUIRE(ztm_csr_create(key, cn, &pem, &len) == 0);
    EVP_PKEY_free(key);
    return pem;
}

static char *invite(const cred_t *admin, const char *name, Ztm__V1__Role role, int64_t ttl)
{
    Ztm__V1__InviteRequest req = ZTM__V1__INVITE_REQUEST__INIT;
    req.name = (char *)name;
    req.role = role;
    req.ttl_seconds = ttl;
    ztm_api_reply_t r;
    call("/ztm.v1.Mesh/Invite", &admin->id, &req.base, &r);
    CHECK_STATUS(r, ZTM_GRPC_OK);
    Ztm__V1__InviteResponse *resp = ztm__v1__invite_response__unpack(NULL, r.len, r.body);
    REQUIRE(resp);
    char *token = strdup(resp->token);
    ztm__v1__invite_response__free_unpacked(resp, NULL);
    ztm_api_reply_clear(&r);
    return token;
}

static void join_raw(const char *token, const char *csr, ztm_api_reply_t *r)
{
    Ztm__V1__JoinRequest req = ZTM__V1__JOIN_REQUEST__INIT;
    req.token = (char *)token;
    req.csr_pem = (char *)csr;
    req.agent_version = "test";
    call("/ztm.v1.Mesh/Join", NULL, &req.base, r);
}

static cred_t join(const char *token, const char *name)
{
    char *csr = make_csr(name);
    ztm_api_reply_t r;
    join_raw(token, csr, &r);
    free(csr);
    CHECK_STATUS(r, ZTM_GRPC_OK);
    cred_t c = {0};
    Ztm__V1__JoinResponse *resp = ztm__v1__join_response__unpack(NULL, r.len, r.body);
    REQUIRE(resp && resp->endpoint);
    CHECK_STR(resp->endpoint->name, name);
    CHECK(resp->n_hubs >= 1);
    CHECK_INT(ztm_cert_verify_pem(ztm_ca_cert(ca), resp->certificate_pem,
                                  strlen(resp->certificate_pem), now, &c.id),
              0);
    CHECK_STR(c.id.id, resp->endpoint->id);
    CHECK_STR(c.id.serial, resp->endpoint->cert_serial);
    uint8_t p1[32], p2[32];
    CHECK_INT(ztm_pin_of_pem(resp->ca_certificate_pem, strlen(resp->ca_certificate_pem), p1), 0);
    ztm_ca_pin(ca, p2);
    CHECK_MEM(p1, p2, 32);
    c.pem = strdup(resp->certificate_pem);
    ztm__v1__join_response__free_unpacked(resp, NULL);
    ztm_api_reply_clear(&r);
    return c;
}

static Ztm__V1__Endpoint *get_endpoint(const ztm_identity_t *who, const char *name,
                                       ztm_grpc_status_t want)
{
    Ztm__V1__GetEndpointRequest req = ZTM__V1__GET_ENDPOINT_REQUEST__INIT;
    req.key_case = ZTM__V1__GET_ENDPOINT_REQUEST__KEY_NAME;
    req.name = (char *)name;
    ztm_api_reply_t r;
    call("/ztm.v1.Mesh/GetEndpoint", who, &req.base, &r);
    CHECK_STATUS(r, want);
    Ztm__V1__Endpoint *ep = r.status == ZTM_GRPC_OK ? ztm__v1__endpoint__unpack(NULL, r.len, r.body)
                                                     : NULL;
    ztm_api_reply_clear(&r);
    return ep;
}

static cred_t enroll_admin(const char *name)
{
    char *csr = make_csr(name);
    ztm_ca_issued_t is;
    char id[ZTM_ID_MAX + 1];
    REQUIRE(ztm_api_enroll(api, name, ZTM_ROLE_ADMIN, csr, NULL, 0, NULL, 0, &is, id) == 0);
    cred_t c = {0};
    REQUIRE(ztm_identity_from_pem(is.pem, is.pem_len, &c.id) == 0);
    CHECK_STR(c.id.id, id);
    c.pem = strdup(is.pem);
    ztm_ca_issued_clear(&is);
    free(csr);
    return c;
}

static void test_setup_and_health(void)
{
    bool created;
    REQUIRE(ztm_api_ca_open(st, "m1", &ca, &created) == 0);
    CHECK(created);
    ztm_ca_t *again;
    bool created2;
    CHECK_INT(ztm_api_ca_open(st, "ignored", &again, &created2), 0);
    CHECK(!created2);
    CHECK_STR(ztm_ca_mesh(again), "m1");
    uint8_t p1[32], p2[32];
    ztm_ca_pin(ca, p1);
    ztm_ca_pin(again, p2);
    CHECK_MEM(p1, p2, 32);
    ztm_ca_free(again);

    static const char *const hubs[] = {"127.0.0.1:7443"};
    ztm_api_config_t cfg = {.hubs = hubs, .n_hubs = 1, .clock = clk};
    REQUIRE(ztm_api_new(&cfg, st, ca, &api) == 0);
    static const char *const bad_hubs[] = {"nope"};
    ztm_api_config_t bad = {.hubs = bad_hubs, .n_hubs = 1};
    ztm_api_t *x;
    CHECK_INT(ztm_api_new(&bad, st, ca, &x), -EINVAL);

    CHECK(ztm_api_find("/ztm.v1.Mesh/Nope", 17) == NULL);
    CHECK(ztm_api_find("/ztm.v1.Mesh/Join", 17) != NULL);
    const ztm_api_method_t *w = ztm_api_find("/ztm.v1.Watch/Subscribe", 23);
    CHECK(w && ztm_api_streaming(w));
    CHECK_STR(ztm_api_path(w), "/ztm.v1.Watch/Subscribe");

    Grpc__Health__V1__HealthCheckRequest hreq = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    ztm_api_reply_t r;
    call("/grpc.health.v1.Health/Check", NULL, &hreq.base, &r);
    CHECK_STATUS(r, ZTM_GRPC_OK);
    CHECK(r.len == 2 && r.body[0] == 0x08 && r.body[1] == 1); /* SERVING */
    ztm_api_reply_clear(&r);
    hreq.service = "ztm.v1.Mesh";
    call("/grpc.health.v1.Health/Check", NULL, &hreq.base, &r);
    CHECK_STATUS(r, ZTM_GRPC_OK);
    ztm_api_reply_clear(&r);
    hreq.service = "no.such.Service";
    call("/grpc.health.v1.Health/Check", NULL, &hreq.base, &r);
    CHECK_STATUS(r, ZTM_GRPC_NOT_FOUND);
    ztm_api_reply_clear(&r);
}

static void test_mesh(void)
{
    cred_t admin = enroll_admin("alice");
    char *csr = make_csr("alice");
    ztm_ca_issued_t is;
    char id[ZTM_ID_MAX + 1];
    CHECK_INT(ztm_api_enroll(api, "alice", ZTM_ROLE_ADMIN, csr, NULL, 0, NULL, 0, &is, id), -EEXIST);
    free(csr);

    /* Invite: who may, and what */
    Ztm__V1__InviteRequest ireq = ZTM__V1__INVITE_REQUEST__INIT;
    ireq.name = "laptop";
    ztm_api_reply_t r;
    call("/ztm.v1.Mesh/Invite", NULL, &ireq.base, &r);
    CHECK_STATUS(r, ZTM_GRPC_UNAUTHENTICATED);
    ztm_api_reply_clear(&r);
    ireq.name = "bad name";
    call("/ztm.v1.Mesh/Invite", &admin.id, &ireq.base, &r);
    CHECK_STATUS(r, ZTM_GRPC_INVALID_ARGUMENT);
    ztm_api_reply_clear(&r);
    ireq.name = "h1";
    ireq.role = ZTM__V1__ROLE__ROLE_HUB;
    call("/ztm.v1.Mesh/Invite", &admin.id, &ireq.base, &r);
    CHECK_STATUS(r, ZTM_GRPC_INVALID_ARGUMENT);
    ztm_api_reply_clear(&r);
    ireq.role = 0;
    ireq.name = "alice";
    call("/ztm.v1.Mesh/Invite", &admin.id, &ireq.base, &r);
    CHECK_STATUS(r, ZTM_GRPC_ALREADY_EXISTS); /* the name is held */
    ztm_api_reply_clear(&r);
    ireq.name = "x";
    char *hub_bad[] = {"no-port"};
    ireq.hubs = hub_bad;
    ireq.n_hubs = 1;
    call("/ztm.v1.Mesh/Invite", &admin.id, &ireq.base, &r);
    CHECK_STATUS(r, ZTM_GRPC_INVALID_ARGUMENT);
    ztm_api_reply_clear(&r);

    /* Join */
    char *token = invite(&admin, "laptop", 0, 0);
    uint64_t v0 = ztm_store_version(st);
    char *other = make_csr("server"); /* a CSR for another name */
    join_raw(token, other, &r);
    CHECK_STATUS(r, ZTM_GRPC_PERMISSION_DENIED);
    ztm_api_reply_clear(&r);
    free(other);
    char *junk = "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n";
    join_raw(token, junk, &r);
    CHECK_STATUS(r, ZTM_GRPC_INVALID_ARGUMENT);
    ztm_api_reply_clear(&r);
    join_raw("ztm1.garbage", junk, &r);
    CHECK_STATUS(r, ZTM_GRPC_INVALID_ARGUMENT);
    ztm_api_reply_clear(&r);
    CHECK(ztm_store_version(st) == v0); /* refusals change nothing */

    cred_t laptop = join(token, "laptop");
    CHECK_INT(laptop.id.role, ZTM_ROLE_AGENT);
    csr = make_csr("laptop");
    join_raw(token, csr, &r);
    CHECK_STATUS(r, ZTM_GRPC_UNAUTHENTICATED); /* reused */
    CHECK(strstr(r.message, "already used") != NULL);
    ztm_api_reply_clear(&r);
    free(csr);
    free(token);

    /* labels given at Invite are the endpoint's; bad ones are refused */
    Ztm__V1__InviteRequest__LabelsEntry le = ZTM__V1__INVITE_REQUEST__LABELS_ENTRY__INIT;
    Ztm__V1__InviteRequest__LabelsEntry *lp[1] = {&le};
    le.key = "site";
    le.value = "home";
    ireq.name = "desk";
    ireq.hubs = NULL;
    ireq.n_hubs = 0;
    ireq.labels = lp;
    ireq.n_labels = 1;
    call("/ztm.v1.Mesh/Invite", &admin.id, &ireq.base, &r);
    CHECK_STATUS(r, ZTM_GRPC_OK);
    Ztm__V1__InviteResponse *ir = ztm__v1__invite_response__unpack(NULL, r.len, r.body);
    REQUIRE(ir);
    token = strdup(ir->token);
    ztm__v1__invite_response__free_unpacked(ir, NULL);
    ztm_api_reply_clear(&r);
    le.key = "bad key";
    ireq.name = "desk2";
    call("/ztm.v1.Mesh/Invite", &admin.id, &ireq.base, &r);
    CHECK_STATUS(r, ZTM_GRPC_INVALID_ARGUMENT);
    ztm_api_reply_clear(&r);
    ireq.labels = NULL;
    ireq.n_labels = 0;

    /* a CSR without a CN is fine: the CA names it */
    csr = make_csr(NULL);
    join_raw(token, csr, &r);
    CHECK_STATUS(r, ZTM_GRPC_OK);
    Ztm__V1__JoinResponse *jr = ztm__v1__join_response__unpack(NULL, r.len, r.body);
    CHECK(jr && jr->endpoint->n_labels == 1 && strcmp(jr->endpoint->labels[0]->key, "site") == 0 &&
          strcmp(jr->endpoint->labels[0]->value, "home") == 0);
    ztm__v1__join_response__free_unpacked(jr, NULL);
    ztm_api_reply_clear(&r);
    free(csr);
    free(token);

    /* expired */
    token = invite(&admin, "late", 0, 60);
    now += 61;
    csr = make_csr("late");
    join_raw(token, csr, &r);
    CHECK_STATUS(r, ZTM_GRPC_UNAUTHENTICATED);
    CHECK(strstr(r.message, "expired") != NULL);
    ztm_api_reply_clear(&r);
    free(csr);
    free(token);

    /* an agent may not invite; a malformed request is INVALID_ARGUMENT */
    ireq.name = "y";
    ireq.hubs = NULL;
    ireq.n_hubs = 0;
    call("/ztm.v1.Mesh/Invite", &laptop.id, &ireq.base, &r);
    CHECK_STATUS(r, ZTM_GRPC_PERMISSION_DENIED);
    ztm_api_reply_clear(&r);
    const ztm_api_method_t *m = ztm_api_find("/ztm.v1.Mesh/GetEndpoint", 24);
    static const uint8_t bad_msg[] = {0x0a, 0x7f, 'x'};
    ztm_api_unary(api, m, &laptop.id, bad_msg, sizeof(bad_msg), &r);
    CHECK_STATUS(r, ZTM_GRPC_INVALID_ARGUMENT);
    ztm_api_reply_clear(&r);

    /* GetEndpoint and presence */
    Ztm__V1__Endpoint *ep = get_endpoint(&laptop.id, "laptop", ZTM_GRPC_OK);
    CHECK(ep && !ep->online && ep->role == ZTM__V1__ROLE__ROLE_AGENT);
    CHECK_STR(ep->agent_version, "test");
    ztm__v1__endpoint__free_unpacked(ep, NULL);
    REQUIRE(ztm_store_soft_set(st, ZTM_SOFT_PRESENCE, laptop.id.id, "hub-1", 5, 30000) == 0);
    ep = get_endpoint(&admin.id, "laptop", ZTM_GRPC_OK);
    CHECK(ep && ep->online);
    CHECK_STR(ep->hub_id, "hub-1");
    ztm__v1__endpoint__free_unpacked(ep, NULL);
    get_endpoint(&admin.id, "nobody", ZTM_GRPC_NOT_FOUND);
    get_endpoint(NULL, "laptop", ZTM_GRPC_UNAUTHENTICATED);

    /* ListEndpoints: paging and filters */
    for (int i = 0; i < 5; i++) {
        char name[16];
        snprintf(name, sizeof(name), "node%d", i);
        token = invite(&admin, name, 0, 0);
        cred_t c = join(token, name);
        free(c.pem);
        free(token);
    }
    Ztm__V1__ListEndpointsRequest lreq = ZTM__V1__LIST_ENDPOINTS_REQUEST__INIT;
    lreq.page_size = 3;
    int total = 0, pages = 0;
    char next[80] = "";
    do {
        lreq.page_token = next;
        call("/ztm.v1.Mesh/ListEndpoints", &laptop.id, &lreq.base, &r);
        CHECK_STATUS(r, ZTM_GRPC_OK);
        Ztm__V1__ListEndpointsResponse *lr = ztm__v1__list_endpoints_response__unpack(NULL, r.len, r.body);
        REQUIRE(lr);
        total += (int)lr->n_endpoints;
        pages++;
        CHECK(lr->n_endpoints <= 3);
        snprintf(next, sizeof(next), "%s", lr->next_page_token);
        ztm__v1__list_endpoints_response__free_unpacked(lr, NULL);
        ztm_api_reply_clear(&r);
    } while (next[0] && pages < 10);
    CHECK_INT(total, 8); /* alice, laptop, desk, node0..4 */
    CHECK_INT(pages, 3);
    lreq.page_size = 0;
    lreq.page_token = "";
    lreq.name_prefix = "node";
    call("/ztm.v1.Mesh/ListEndpoints", &laptop.id, &lreq.base, &r);
    Ztm__V1__ListEndpointsResponse *lr = ztm__v1__list_endpoints_response__unpack(NULL, r.len, r.body);
    CHECK(lr && lr->n_endpoints == 5 && lr->next_page_token[0] == 0);
    ztm__v1__list_endpoints_response__free_unpacked(lr, NULL);
    ztm_api_reply_clear(&r);
    lreq.name_prefix = "";
    lreq.online_only = 1;
    call("/ztm.v1.Mesh/ListEndpoints", &laptop.id, &lreq.base, &r);
    lr = ztm__v1__list_endpoints_response__unpack(NULL, r.len, r.body);
    CHECK(lr && lr->n_endpoints == 1);
    ztm__v1__list_endpoints_response__free_unpacked(lr, NULL);
    ztm_api_reply_clear(&r);
    lreq.online_only = 0;
    Ztm__V1__ListEndpointsRequest__LabelsEntry fl = ZTM__V1__LIST_ENDPOINTS_REQUEST__LABELS_ENTRY__INIT;
    Ztm__V1__ListEndpointsRequest__LabelsEntry *flp[1] = {&fl};
    fl.key = "site";
    fl.value = "home";
    lreq.labels = flp;
    lreq.n_labels = 1;
    call("/ztm.v1.Mesh/ListEndpoints", &laptop.id, &lreq.base, &r);
    lr = ztm__v1__list_endpoints_response__unpack(NULL, r.len, r.body);
    CHECK(lr && lr->n_endpoints == 1 && strcmp(lr->endpoints[0]->name, "desk") == 0);
    ztm__v1__list_endpoints_response__free_unpacked(lr, NULL);
    ztm_api_reply_clear(&r);
    lreq.labels = NULL;
    lreq.n_labels = 0;
    lreq.role = ZTM__V1__ROLE__ROLE_ADMIN;
    call("/ztm.v1.Mesh/ListEndpoints", &laptop.id, &lreq.base, &r);
    lr = ztm__v1__list_endpoints_response__unpack(NULL, r.len, r.body);
    CHECK(lr && lr->n_endpoints == 1 && strcmp(lr->endpoints[0]->name, "alice") == 0);
    ztm__v1__list_endpoints_response__free_unpacked(lr, NULL);
    ztm_api_reply_clear(&r);
    lreq.role = 0;
    lreq.page_token = "Not An Id";
    call("/ztm.v1.Mesh/ListEndpoints", &laptop.id, &lreq.base, &r);
    CHECK_STATUS(r, ZTM_GRPC_INVALID_ARGUMENT);
    ztm_api_reply_clear(&r);

    /* Renew: a new certificate, the endpoint record follows */
    Ztm__V1__RenewRequest rreq = ZTM__V1__RENEW_REQUEST__INIT;
    rreq.csr_pem = make_csr("someone-else");
    call("/ztm.v1.Mesh/Renew", &laptop.id, &rreq.base, &r);
    CHECK_STATUS(r, ZTM_GRPC_PERMISSION_DENIED);
    ztm_api_reply_clear(&r);
    free(rreq.csr_pem);
    rreq.csr_pem = make_csr("laptop");
    now += 3600;
    call("/ztm.v1.Mesh/Renew", &laptop.id, &rreq.base, &r);
    CHECK_STATUS(r, ZTM_GRPC_OK);
    Ztm__V1__RenewResponse *rr = ztm__v1__renew_response__unpack(NULL, r.len, r.body);
    REQUIRE(rr);
    ztm_identity_t renewed;
    CHECK_INT(ztm_cert_verify_pem(ztm_ca_cert(ca), rr->certificate_pem, strlen(rr->certificate_pem),
                                  now, &renewed), 0);
    CHECK_STR(renewed.id, laptop.id.id);
    CHECK(strcmp(renewed.serial, laptop.id.serial) != 0);
    CHECK(rr->not_after == now + ZTM_CA_DEFAULT_LEAF_LIFETIME);
    ztm__v1__renew_response__free_unpacked(rr, NULL);
    ztm_api_reply_clear(&r);
    free(rreq.csr_pem);
    ep = get_endpoint(&renewed, "laptop", ZTM_GRPC_OK);
    CHECK(ep && strcmp(ep->cert_serial, renewed.serial) == 0);
    ztm__v1__endpoint__free_unpacked(ep, NULL);

    /* Revoke: admin only; every live certificate of the endpoint */
    Ztm__V1__RevokeRequest vreq = ZTM__V1__REVOKE_REQUEST__INIT;
    vreq.target_case = ZTM__V1__REVOKE_REQUEST__TARGET_ENDPOINT_NAME;
    vreq.endpoint_name = "laptop";
    vreq.reason = "lost";
    call("/ztm.v1.Mesh/Revoke", &laptop.id, &vreq.base, &r);
    CHECK_STATUS(r, ZTM_GRPC_PERMISSION_DENIED);
    ztm_api_reply_clear(&r);
    call("/ztm.v1.Mesh/Revoke", &admin.id, &vreq.base, &r);
    CHECK_STATUS(r, ZTM_GRPC_OK);
    Ztm__V1__RevokeResponse *vr = ztm__v1__revoke_response__unpack(NULL, r.len, r.body);
    CHECK(vr && vr->n_revocations == 2);
    uint64_t rv_version = vr ? vr->version : 0;
    ztm__v1__revoke_response__free_unpacked(vr, NULL);
    ztm_api_reply_clear(&r);
    /* again: idempotent, no new change */
    call("/ztm.v1.Mesh/Revoke", &admin.id, &vreq.base, &r);
    vr = ztm__v1__revoke_response__unpack(NULL, r.len, r.body);
    CHECK(vr && vr->n_revocations == 2 && vr->version == rv_version);
    ztm__v1__revoke_response__free_unpacked(vr, NULL);
    ztm_api_reply_clear(&r);
    /* both certificates are now refused everywhere, even on anonymous methods */
    get_endpoint(&laptop.id, "desk", ZTM_GRPC_UNAUTHENTICATED);
    get_endpoint(&renewed, "desk", ZTM_GRPC_UNAUTHENTICATED);
    Grpc__Health__V1__HealthCheckRequest hreq = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    call("/grpc.health.v1.Health/Check", &renewed, &hreq.base, &r);
    CHECK_STATUS(r, ZTM_GRPC_UNAUTHENTICATED);
    ztm_api_reply_clear(&r);
    ep = get_endpoint(&admin.id, "laptop", ZTM_GRPC_OK);
    CHECK(ep && ep->revoked);
    ztm__v1__endpoint__free_unpacked(ep, NULL);
    vreq.target_case = ZTM__V1__REVOKE_REQUEST__TARGET_SERIAL;
    vreq.serial = "00";
    call("/ztm.v1.Mesh/Revoke", &admin.id, &vreq.base, &r);
    CHECK_STATUS(r, ZTM_GRPC_NOT_FOUND);
    ztm_api_reply_clear(&r);
    vreq.target_case = 0;
    call("/ztm.v1.Mesh/Revoke", &admin.id, &vreq.base, &r);
    CHECK_STATUS(r, ZTM_GRPC_INVALID_ARGUMENT);
    ztm_api_reply_clear(&r);

    /* the revoked name may be invited again; the new endpoint takes it over */
    token = invite(&admin, "laptop", 0, 0);
    cred_t laptop2 = join(token, "laptop");
    CHECK(strcmp(laptop2.id.id, laptop.id.id) != 0);
    ep = get_endpoint(&laptop2.id, "laptop", ZTM_GRPC_OK);
    CHECK(ep && !ep->revoked && strcmp(ep->id, laptop2.id.id) == 0);
    ztm__v1__endpoint__free_unpacked(ep, NULL);
    free(token);

    /* foreign, expired */
    ztm_identity_t foreign = laptop2.id;
    strcpy(foreign.mesh, "m2");
    get_endpoint(&foreign, "laptop", ZTM_GRPC_UNAUTHENTICATED);
    ztm_identity_t old = laptop2.id;
    old.not_after = now;
    get_endpoint(&old, "laptop", ZTM_GRPC_UNAUTHENTICATED);

    free(admin.pem);
    free(laptop.pem);
    free(laptop2.pem);
}

/* ---- Watch ---------------------------------------------------------------------- */

typedef struct {
    Ztm__V1__WatchEvent *ev[256];
    int n;
} seen_t;

static int drain(ztm_api_watch_t *w, seen_t *s)
{
    int got = 0;
    for (;;) {
        uint8_t *body;
        size_t len;
        ztm_api_reply_t r;
        int ret = ztm_api_watch_next(w, &body, &len, &r);
        if (ret < 0) {
            ztm_api_reply_clear(&r);
            return ret;
        }
        if (ret == 0)
            return got;
        Ztm__V1__WatchEvent *ev = ztm__v1__watch_event__unpack(NULL, len, body);
        REQUIRE(ev);
        free(body);
        if (s->n < 256)
            s->ev[s->n++] = ev;
        else
            ztm__v1__watch_event__free_unpacked(ev, NULL);
        got++;
    }
}

static void seen_free(seen_t *s)
{
    for (int i = 0; i < s->n; i++)
        ztm__v1__watch_event__free_unpacked(s->ev[i], NULL);
    s->n = 0;
}

static ztm_api_watch_t *subscribe_on(ztm_api_t *on, const ztm_identity_t *who, uint64_t after,
                                     Ztm__V1__Topic topic, ztm_api_reply_t *r)
{
    Ztm__V1__SubscribeRequest req = ZTM__V1__SUBSCRIBE_REQUEST__INIT;
    req.after_version = after;
    Ztm__V1__Topic topics[1] = {topic};
    if (topic) {
        req.topics = topics;
        req.n_topics = 1;
    }
    uint8_t buf[64];
    size_t n = ztm__v1__subscribe_request__pack(&req, buf);
    const ztm_api_method_t *m = ztm_api_find("/ztm.v1.Watch/Subscribe", 23);
    return ztm_api_watch_open(on, m, who, buf, n, r);
}

static void test_watch(void)
{
    cred_t admin = enroll_admin("watcher");
    ztm_api_reply_t r;

    /* from scratch: RESET, the state, SYNCED */
    ztm_api_watch_t *w = subscribe_on(api, &admin.id, 0, 0, &r);
    REQUIRE(w);
    CHECK_STATUS(r, ZTM_GRPC_OK);
    seen_t s = {0};
    int n = drain(w, &s);
    CHECK(n >= 3);
    uint64_t v = ztm_store_version(st);
    CHECK(s.ev[0]->type == ZTM__V1__WATCH_EVENT__TYPE__TYPE_RESET);
    CHECK(s.ev[n - 1]->type == ZTM__V1__WATCH_EVENT__TYPE__TYPE_SYNCED);
    CHECK(s.ev[n - 1]->version == v);
    int endpoints = 0, revocations = 0;
    for (int i = 1; i < n - 1; i++) {
        CHECK(s.ev[i]->type == ZTM__V1__WATCH_EVENT__TYPE__TYPE_PUT && s.ev[i]->version == v);
        endpoints += s.ev[i]->object_case == ZTM__V1__WATCH_EVENT__OBJECT_ENDPOINT;
        revocations += s.ev[i]->object_case == ZTM__V1__WATCH_EVENT__OBJECT_REVOCATION;
    }
    CHECK_INT(endpoints, 10); /* alice, laptop (revoked, kept), desk, node0-4, laptop, watcher */
    CHECK_INT(revocations, 2);
    seen_free(&s);
    CHECK_INT(drain(w, &s), 0); /* caught up */

    /* live: a join arrives as one event */
    char *token = invite(&admin, "live1", 0, 0);
    CHECK_INT(drain(w, &s), 0); /* nothing for the invite: invites are not watched */
    seen_free(&s);
    cred_t live = join(token, "live1");
    CHECK_INT(drain(w, &s), 1);
    CHECK(s.ev[0]->type == ZTM__V1__WATCH_EVENT__TYPE__TYPE_PUT);
    CHECK(s.ev[0]->object_case == ZTM__V1__WATCH_EVENT__OBJECT_ENDPOINT);
    CHECK_STR(s.ev[0]->endpoint->name, "live1");
    uint64_t after_join = s.ev[0]->version;
    CHECK(after_join == ztm_store_version(st));
    seen_free(&s);
    free(token);

    /* resume from a version: exactly the later events, in order */
    REQUIRE(ztm_store_soft_set(st, ZTM_SOFT_PRESENCE, live.id.id, "hub-9", 5, 0) == 0);
    CHECK_INT(ztm_api_publish_endpoint(api, live.id.id), 0);
    Ztm__V1__RevokeRequest vreq = ZTM__V1__REVOKE_REQUEST__INIT;
    vreq.target_case = ZTM__V1__REVOKE_REQUEST__TARGET_ENDPOINT_ID;
    vreq.endpoint_id = live.id.id;
    call("/ztm.v1.Mesh/Revoke", &admin.id, &vreq.base, &r);
    CHECK_STATUS(r, ZTM_GRPC_OK);
    ztm_api_reply_clear(&r);
    ztm_api_watch_close(w);
    w = subscribe_on(api, &admin.id, after_join, 0, &r);
    REQUIRE(w);
    CHECK_INT(drain(w, &s), 3); /* presence, revocation, endpoint revoked */
    CHECK(s.ev[0]->version == after_join + 1 && s.ev[2]->version == after_join + 3);
    CHECK(s.ev[0]->endpoint && s.ev[0]->endpoint->online);
    CHECK_STR(s.ev[0]->endpoint->hub_id, "hub-9");
    CHECK(s.ev[1]->object_case == ZTM__V1__WATCH_EVENT__OBJECT_REVOCATION);
    CHECK(s.ev[2]->endpoint && s.ev[2]->endpoint->revoked);
    seen_free(&s);
    ztm_api_watch_close(w);

    /* one topic only */
    w = subscribe_on(api, &admin.id, after_join, ZTM__V1__TOPIC__TOPIC_REVOCATIONS, &r);
    REQUIRE(w);
    CHECK_INT(drain(w, &s), 1);
    CHECK(s.ev[0]->object_case == ZTM__V1__WATCH_EVENT__OBJECT_REVOCATION);
    seen_free(&s);
    ztm_api_watch_close(w);

    /* a version ahead of the store: start over with a snapshot */
    w = subscribe_on(api, &admin.id, 1u << 30, ZTM__V1__TOPIC__TOPIC_HUBS, &r);
    REQUIRE(w);
    CHECK_INT(drain(w, &s), 2); /* RESET, no hubs, SYNCED */
    CHECK(s.ev[0]->type == ZTM__V1__WATCH_EVENT__TYPE__TYPE_RESET);
    seen_free(&s);
    ztm_api_watch_close(w);

    /* refusals: anonymous, bad topic, revoked */
    CHECK(subscribe_on(api, NULL, 0, 0, &r) == NULL);
    CHECK_STATUS(r, ZTM_GRPC_UNAUTHENTICATED);
    CHECK(subscribe_on(api, &admin.id, 0, 9, &r) == NULL);
    CHECK_STATUS(r, ZTM_GRPC_INVALID_ARGUMENT);
    CHECK(subscribe_on(api, &live.id, 0, 0, &r) == NULL);
    CHECK_STATUS(r, ZTM_GRPC_UNAUTHENTICATED);

    /* a watcher revoked while subscribed is cut off at its next read */
    token = invite(&admin, "doomed", 0, 0);
    cred_t doomed = join(token, "doomed");
    free(token);
    w = subscribe_on(api, &doomed.id, ztm_store_version(st), 0, &r);
    REQUIRE(w);
    vreq.endpoint_id = doomed.id.id;
    call("/ztm.v1.Mesh/Revoke", &admin.id, &vreq.base, &r);
    ztm_api_reply_clear(&r);
    uint8_t *body;
    size_t len;
    CHECK(ztm_api_watch_next(w, &body, &len, &r) < 0);
    CHECK_STATUS(r, ZTM_GRPC_UNAUTHENTICATED);
    ztm_api_reply_clear(&r);
    ztm_api_watch_close(w);

    free(admin.pem);
    free(live.pem);
    free(doomed.pem);
}

static Ztm__V1__Service *publish(const ztm_identity_t *who, const char *name, uint32_t weight,
                                 const char *for_id, ztm_grpc_status_t want)
{
    Ztm__V1__PublishRequest req = ZTM__V1__PUBLISH_REQUEST__INIT;
    req.name = (char *)name;
    req.weight = weight;
    req.endpoint_id = (char *)(for_id ? for_id : "");
    ztm_api_reply_t r;
    call("/ztm.v1.Services/Publish", who, &req.base, &r);
    CHECK_STATUS(r, want);
    Ztm__V1__Service *svc = NULL;
    if (r.status == ZTM_GRPC_OK) {
        Ztm__V1__PublishResponse *resp = ztm__v1__publish_response__unpack(NULL, r.len, r.body);
        REQUIRE(resp && resp->service);
        svc = resp->service;
        resp->service = NULL;
        ztm__v1__publish_response__free_unpacked(resp, NULL);
    }
    ztm_api_reply_clear(&r);
    return svc;
}

static size_t count_services(const ztm_identity_t *who, Ztm__V1__Protocol proto)
{
    Ztm__V1__ListServicesRequest req = ZTM__V1__LIST_SERVICES_REQUEST__INIT;
    req.protocol = proto;
    ztm_api_reply_t r;
    call("/ztm.v1.Services/List", who, &req.base, &r);
    CHECK_STATUS(r, ZTM_GRPC_OK);
    Ztm__V1__ListServicesResponse *resp = ztm__v1__list_services_response__unpack(NULL, r.len, r.body);
    size_t n = resp ? resp->n_services : 0;
    ztm__v1__list_services_response__free_unpacked(resp, NULL);
    ztm_api_reply_clear(&r);
    return n;
}

static void test_services_and_hubs(void)
{
    cred_t admin = enroll_admin("ops");
    char *token = invite(&admin, "svc-a", 0, 0);
    cred_t a = join(token, "svc-a");
    free(token);
    token = invite(&admin, "svc-b", 0, 0);
    cred_t b = join(token, "svc-b");
    free(token);
    uint64_t v_start = ztm_store_version(st);
    ztm_api_reply_t r;

    /* a hub, enrolled with its names */
    static const char *const dns[] = {"hub.example.com", "localhost"};
    static const char *const ips[] = {"127.0.0.1"};
    char *csr = make_csr("hub1");
    ztm_ca_issued_t is;
    char hub_id[ZTM_ID_MAX + 1];
    REQUIRE(ztm_api_enroll(api, "hub1", ZTM_ROLE_HUB, csr, dns, 2, ips, 1, &is, hub_id) == 0);
    ztm_identity_t hub;
    REQUIRE(ztm_identity_from_pem(is.pem, is.pem_len, &hub) == 0);
    ztm_ca_issued_clear(&is);
    free(csr);

    /* Hubs */
    Ztm__V1__HubHeartbeatRequest hb = ZTM__V1__HUB_HEARTBEAT_REQUEST__INIT;
    hb.agents = 2;
    hb.sessions = 5;
    call("/ztm.v1.Hubs/Heartbeat", &hub, &hb.base, &r);
    CHECK_STATUS(r, ZTM_GRPC_FAILED_PRECONDITION); /* not registered yet */
    ztm_api_reply_clear(&r);
    Ztm__V1__RegisterHubRequest reg = ZTM__V1__REGISTER_HUB_REQUEST__INIT;
    char *addrs[] = {"hub.example.com:7443"};
    reg.addresses = addrs;
    reg.n_addresses = 1;
    reg.version = "0.1.0";
    call("/ztm.v1.Hubs/Register", &a.id, &reg.base, &r);
    CHECK_STATUS(r, ZTM_GRPC_PERMISSION_DENIED); /* an agent is not a hub */
    ztm_api_reply_clear(&r);
    call("/ztm.v1.Hubs/Register", &hub, &reg.base, &r);
    CHECK_STATUS(r, ZTM_GRPC_OK);
    Ztm__V1__RegisterHubResponse *rr = ztm__v1__register_hub_response__unpack(NULL, r.len, r.body);
    CHECK(rr && rr->hub && strcmp(rr->hub->id, hub.id) == 0 && rr->ttl_seconds > 0);
    ztm__v1__register_hub_response__free_unpacked(rr, NULL);
    ztm_api_reply_clear(&r);
    char *bad_addrs[] = {"nope"};
    reg.addresses = bad_addrs;
    call("/ztm.v1.Hubs/Register", &hub, &reg.base, &r);
    CHECK_STATUS(r, ZTM_GRPC_INVALID_ARGUMENT);
    ztm_api_reply_clear(&r);
    call("/ztm.v1.Hubs/Heartbeat", &hub, &hb.base, &r);
    CHECK_STATUS(r, ZTM_GRPC_OK);
    ztm_api_reply_clear(&r);
    Ztm__V1__ListHubsRequest lh = ZTM__V1__LIST_HUBS_REQUEST__INIT;
    lh.online_only = 1;
    call("/ztm.v1.Hubs/List", &a.id, &lh.base, &r);
    CHECK_STATUS(r, ZTM_GRPC_OK);
    Ztm__V1__ListHubsResponse *hl = ztm__v1__list_hubs_response__unpack(NULL, r.len, r.body);
    CHECK(hl && hl->n_hubs == 1 && hl->hubs[0]->online && hl->hubs[0]->agents == 2 &&
          hl->hubs[0]->sessions == 5);
    ztm__v1__list_hubs_response__free_unpacked(hl, NULL);
    ztm_api_reply_clear(&r);

    /* a hub's renewal keeps its DNS and IP names */
    Ztm__V1__RenewRequest rreq = ZTM__V1__RENEW_REQUEST__INIT;
    rreq.csr_pem = make_csr("hub1");
    call("/ztm.v1.Mesh/Renew", &hub, &rreq.base, &r);
    CHECK_STATUS(r, ZTM_GRPC_OK);
    Ztm__V1__RenewResponse *rn = ztm__v1__renew_response__unpack(NULL, r.len, r.body);
    X509 *x = NULL;
    REQUIRE(rn && ztm_cert_from_pem(rn->certificate_pem, strlen(rn->certificate_pem), &x) == 0);
    CHECK(X509_check_host(x, "hub.example.com", 15, 0, NULL) == 1);
    CHECK(X509_check_ip_asc(x, "127.0.0.1", 0) == 1);
    X509_free(x);
    ztm__v1__renew_response__free_unpacked(rn, NULL);
    ztm_api_reply_clear(&r);
    free(rreq.csr_pem);

    /* Publish: own endpoint; admins for anyone; hubs export nothing */
    Ztm__V1__Service *svc = publish(&a.id, "web", 2, NULL, ZTM_GRPC_OK);
    CHECK(svc && svc->n_exporters == 1 && svc->exporters[0]->weight == 2 &&
          svc->protocol == ZTM__V1__PROTOCOL__PROTOCOL_TCP);
    ztm__v1__service__free_unpacked(svc, NULL);
    svc = publish(&b.id, "web", 0, NULL, ZTM_GRPC_OK);
    CHECK(svc && svc->n_exporters == 2 && svc->exporters[1]->weight == 1);
    ztm__v1__service__free_unpacked(svc, NULL);
    svc = publish(&a.id, "web", 3, NULL, ZTM_GRPC_OK); /* again: updated, not added */
    CHECK(svc && svc->n_exporters == 2 && svc->exporters[0]->weight == 3);
    ztm__v1__service__free_unpacked(svc, NULL);
    publish(&a.id, "web", 1, b.id.id, ZTM_GRPC_PERMISSION_DENIED);
    svc = publish(&admin.id, "db", 1, b.id.id, ZTM_GRPC_OK);
    CHECK(svc && strcmp(svc->exporters[0]->endpoint_id, b.id.id) == 0);
    ztm__v1__service__free_unpacked(svc, NULL);
    publish(&hub, "web", 1, NULL, ZTM_GRPC_PERMISSION_DENIED);
    publish(&a.id, "Bad Name", 1, NULL, ZTM_GRPC_INVALID_ARGUMENT);
    publish(NULL, "web", 1, NULL, ZTM_GRPC_UNAUTHENTICATED);
    CHECK_INT(count_services(&a.id, 0), 2);
    CHECK_INT(count_services(&a.id, ZTM__V1__PROTOCOL__PROTOCOL_UDP), 0);

    /* SetPolicy */
    Ztm__V1__SetPolicyRequest sp = ZTM__V1__SET_POLICY_REQUEST__INIT;
    Ztm__V1__Policy pol = ZTM__V1__POLICY__INIT;
    Ztm__V1__Role roles[] = {ZTM__V1__ROLE__ROLE_AGENT};
    pol.roles = roles;
    pol.n_roles = 1;
    sp.name = "web";
    sp.policy = &pol;
    sp.lb_policy = ZTM__V1__LB_POLICY__LB_POLICY_LEAST_CONNECTIONS;
    call("/ztm.v1.Services/SetPolicy", &a.id, &sp.base, &r);
    CHECK_STATUS(r, ZTM_GRPC_PERMISSION_DENIED); /* service-wide: admins only */
    ztm_api_reply_clear(&r);
    call("/ztm.v1.Services/SetPolicy", &admin.id, &sp.base, &r);
    CHECK_STATUS(r, ZTM_GRPC_OK);
    Ztm__V1__SetPolicyResponse *spr = ztm__v1__set_policy_response__unpack(NULL, r.len, r.body);
    CHECK(spr && spr->service->lb_policy == ZTM__V1__LB_POLICY__LB_POLICY_LEAST_CONNECTIONS &&
          spr->service->policy && spr->service->policy->n_roles == 1);
    ztm__v1__set_policy_response__free_unpacked(spr, NULL);
    ztm_api_reply_clear(&r);
    sp.lb_policy = 0;
    sp.endpoint_id = a.id.id;
    call("/ztm.v1.Services/SetPolicy", &a.id, &sp.base, &r);
    CHECK_STATUS(r, ZTM_GRPC_OK); /* its own export */
    ztm_api_reply_clear(&r);
    sp.endpoint_id = b.id.id;
    call("/ztm.v1.Services/SetPolicy", &a.id, &sp.base, &r);
    CHECK_STATUS(r, ZTM_GRPC_PERMISSION_DENIED);
    ztm_api_reply_clear(&r);
    sp.name = "nosuch";
    call("/ztm.v1.Services/SetPolicy", &admin.id, &sp.base, &r);
    CHECK_STATUS(r, ZTM_GRPC_NOT_FOUND);
    ztm_api_reply_clear(&r);
    Ztm__V1__Policy bad_pol = ZTM__V1__POLICY__INIT;
    char *bad_ids[] = {"NOT-AN-ID"};
    bad_pol.endpoint_ids = bad_ids;
    bad_pol.n_endpoint_ids = 1;
    sp.name = "web";
    sp.policy = &bad_pol;
    call("/ztm.v1.Services/SetPolicy", &admin.id, &sp.base, &r);
    CHECK_STATUS(r, ZTM_GRPC_INVALID_ARGUMENT);
    ztm_api_reply_clear(&r);

    /* Unpublish: the last exporter gone, the service goes */
    Ztm__V1__UnpublishRequest up = ZTM__V1__UNPUBLISH_REQUEST__INIT;
    up.name = "web";
    call("/ztm.v1.Services/Unpublish", &a.id, &up.base, &r);
    CHECK_STATUS(r, ZTM_GRPC_OK);
    ztm_api_reply_clear(&r);
    call("/ztm.v1.Services/Unpublish", &a.id, &up.base, &r);
    CHECK_STATUS(r, ZTM_GRPC_NOT_FOUND);
    ztm_api_reply_clear(&r);
    up.endpoint_id = b.id.id;
    call("/ztm.v1.Services/Unpublish", &a.id, &up.base, &r);
    CHECK_STATUS(r, ZTM_GRPC_PERMISSION_DENIED);
    ztm_api_reply_clear(&r);
    call("/ztm.v1.Services/Unpublish", &b.id, &up.base, &r);
    CHECK_STATUS(r, ZTM_GRPC_OK);
    ztm_api_reply_clear(&r);
    CHECK_INT(count_services(&a.id, 0), 1);

    /* what a watcher of services saw, in order */
    ztm_api_watch_t *w = subscribe_on(api, &b.id, v_start, ZTM__V1__TOPIC__TOPIC_SERVICES, &r);
    REQUIRE(w);
    seen_t seen = {0};
    int n = drain(w, &seen);
    CHECK_INT(n, 8); /* web x3, db, policy x2, web -a, web deleted */
    CHECK(seen.ev[n - 1]->type == ZTM__V1__WATCH_EVENT__TYPE__TYPE_DELETE);
    CHECK_STR(seen.ev[n - 1]->service->name, "web");
    for (int i = 1; i < n; i++)
        CHECK(seen.ev[i]->version > seen.ev[i - 1]->version);
    seen_free(&seen);
    ztm_api_watch_close(w);
    w = subscribe_on(api, &b.id, v_start, ZTM__V1__TOPIC__TOPIC_HUBS, &r);
    CHECK_INT(drain(w, &seen), 1); /* the registration */
    CHECK(seen.ev[0]->hub && strcmp(seen.ev[0]->hub->id, hub.id) == 0);
    seen_free(&seen);
    ztm_api_watch_close(w);

    free(admin.pem);
    free(a.pem);
    free(b.pem);
}

/* A store that keeps 4 events: a watcher further behind gets a snapshot. */
static void test_watch_compacted(void)
{
    char dir2[700];
    snprintf(dir2, sizeof(dir2), "%s/small", top);
    ztm_store_options_t o = {.dir = dir2, .retention = 4};
    ztm_store_t *st2;
    REQUIRE(ztm_store_open_embedded(&o, &st2) == 0);
    ztm_ca_t *ca2;
    REQUIRE(ztm_api_ca_open(st2, "m1", &ca2, NULL) == 0);
    static const char *const hubs[] = {"127.0.0.1:7443"};
    ztm_api_config_t cfg = {.hubs = hubs, .n_hubs = 1, .clock = clk};
    ztm_api_t *api2;
    REQUIRE(ztm_api_new(&cfg, st2, ca2, &api2) == 0);
    char *csr = make_csr("root");
    ztm_ca_issued_t is;
    char id[ZTM_ID_MAX + 1];
    REQUIRE(ztm_api_enroll(api2, "root", ZTM_ROLE_ADMIN, csr, NULL, 0, NULL, 0, &is, id) == 0);
    ztm_identity_t root;
    REQUIRE(ztm_identity_from_pem(is.pem, is.pem_len, &root) == 0);
    ztm_ca_issued_clear(&is);
    free(csr);
    for (int i = 0; i < 6; i++)
        CHECK_INT(ztm_api_publish_endpoint(api2, id), 0);
    ztm_api_reply_t r;
    ztm_api_watch_t *w = subscribe_on(api2, &root, 1, 0, &r);
    REQUIRE(w);
    seen_t s = {0};
    CHECK_INT(drain(w, &s), 3); /* RESET, root, SYNCED */
    CHECK(s.ev[0]->type == ZTM__V1__WATCH_EVENT__TYPE__TYPE_RESET);
    CHECK(s.ev[2]->version == 7);
    seen_free(&s);
    /* within the retention: resumed */
    ztm_api_watch_close(w);
    w = subscribe_on(api2, &root, 4, 0, &r);
    CHECK_INT(drain(w, &s), 3);
    CHECK(s.ev[0]->version == 5 && s.ev[0]->type == ZTM__V1__WATCH_EVENT__TYPE__TYPE_PUT);
    seen_free(&s);
    ztm_api_watch_close(w);
    ztm_api_free(api2);
    ztm_ca_free(ca2);
    ztm_store_close(st2);
}

typedef struct {
    int n;
} collect_none_t;

static int count_records(void *arg, const char *key, const void *value, size_t len)
{
    ((collect_none_t *)arg)->n++;
    return 0;
}

/* Last: far in the future, everything issued so far has expired. */
static void test_sweep(void)
{
    uint64_t v = ztm_store_version(st);
    CHECK(ztm_api_sweep(api) >= 1); /* the invites that expired as the clock moved */
    CHECK_INT(ztm_api_sweep(api), 0);
    now += 40 * 86400;
    int n = ztm_api_sweep(api);
    CHECK(n > 20);
    CHECK_INT(ztm_api_sweep(api), 0);
    void *p;
    size_t len;
    collect_none_t none = {0};
    CHECK_INT(ztm_store_list(st, ZTM_STORE_SERIAL, NULL, NULL, 0, count_records, &none), 0);
    CHECK_INT(none.n, 0);
    CHECK_INT(ztm_store_list(st, ZTM_STORE_INVITE, NULL, NULL, 0, count_records, &none), 0);
    CHECK_INT(none.n, 0);
    /* the revocations left with DELETE events */
    cred_t admin = enroll_admin("sweeper");
    ztm_api_reply_t r;
    ztm_api_watch_t *w = subscribe_on(api, &admin.id, v, ZTM__V1__TOPIC__TOPIC_REVOCATIONS, &r);
    REQUIRE(w);
    seen_t seen = {0};
    int got = drain(w, &seen);
    CHECK(got >= 4);
    for (int i = 0; i < seen.n; i++)
        CHECK(seen.ev[i]->type == ZTM__V1__WATCH_EVENT__TYPE__TYPE_DELETE && seen.ev[i]->revocation &&
              seen.ev[i]->revocation->serial[0]);
    seen_free(&seen);
    ztm_api_watch_close(w);
    CHECK_INT(ztm_store_get(st, ZTM_STORE_REVOCATION, "00", &p, &len), -ENOENT);
    free(admin.pem);
}

int main(void)
{
    REQUIRE(mkdtemp(top));
    snprintf(dir, sizeof(dir), "%s/state", top);
    now = (int64_t)time(NULL);
    ztm_store_options_t o = {.dir = dir};
    REQUIRE(ztm_store_open_embedded(&o, &st) == 0);
    test_setup_and_health();
    test_mesh();
    test_watch();
    test_services_and_hubs();
    test_watch_compacted();
    test_sweep();
    ztm_api_free(api);
    ztm_ca_free(ca);
    ztm_store_close(st);
    char cmd[700];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", top);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", top);
    TEST_END();
}
