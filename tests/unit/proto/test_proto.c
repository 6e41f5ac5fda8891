/* The generated ztm.v1 and grpc.health.v1 messages: round trips through
 * protobuf-c, the service/method names the gRPC router relies on, and
 * decoding of unknown fields (newer peers) and truncated input. */
#include "ztm/v1/hubs.pb-c.h"
#include "ztm/v1/mesh.pb-c.h"
#include "ztm/v1/services.pb-c.h"
#include "ztm/v1/watch.pb-c.h"
#include "grpc/health/v1/health.pb-c.h"

#include "test.h"

static void test_endpoint_round_trip(void)
{
    Ztm__V1__Endpoint ep = ZTM__V1__ENDPOINT__INIT;
    Ztm__V1__Endpoint__LabelsEntry l1 = ZTM__V1__ENDPOINT__LABELS_ENTRY__INIT;
    Ztm__V1__Endpoint__LabelsEntry *labels[1] = {&l1};
    l1.key = "site";
    l1.value = "home";
    ep.id = "0123456789abcdef0123456789abcdef";
    ep.name = "laptop";
    ep.mesh = "m1";
    ep.role = ZTM__V1__ROLE__ROLE_AGENT;
    ep.n_labels = 1;
    ep.labels = labels;
    ep.cert_serial = "7f";
    ep.cert_not_after = 1700000000;
    ep.online = 1;

    size_t n = ztm__v1__endpoint__get_packed_size(&ep);
    uint8_t buf[256];
    REQUIRE(n < sizeof(buf));
    CHECK_INT(ztm__v1__endpoint__pack(&ep, buf), n);

    Ztm__V1__Endpoint *d = ztm__v1__endpoint__unpack(NULL, n, buf);
    REQUIRE(d);
    CHECK_STR(d->id, ep.id);
    CHECK_STR(d->name, "laptop");
    CHECK_INT(d->role, ZTM__V1__ROLE__ROLE_AGENT);
    CHECK_INT(d->n_labels, 1);
    CHECK_STR(d->labels[0]->key, "site");
    CHECK_STR(d->labels[0]->value, "home");
    CHECK_INT(d->cert_not_after, 1700000000);
    CHECK(d->online);
    ztm__v1__endpoint__free_unpacked(d, NULL);

    /* every proper prefix that cuts a field must fail, never crash */
    for (size_t cut = 1; cut < n; cut++) {
        Ztm__V1__Endpoint *t = ztm__v1__endpoint__unpack(NULL, cut, buf);
        if (t)
            ztm__v1__endpoint__free_unpacked(t, NULL);
    }
    /* a cut inside the first string field is always an error */
    CHECK(ztm__v1__endpoint__unpack(NULL, 3, buf) == NULL);
}

static void test_watch_event_oneof(void)
{
    Ztm__V1__WatchEvent ev = ZTM__V1__WATCH_EVENT__INIT;
    Ztm__V1__Revocation rev = ZTM__V1__REVOCATION__INIT;
    rev.serial = "0a0b";
    rev.revoked_time = 42;
    ev.version = 18446744073709551615ull;
    ev.type = ZTM__V1__WATCH_EVENT__TYPE__TYPE_PUT;
    ev.topic = ZTM__V1__TOPIC__TOPIC_REVOCATIONS;
    ev.object_case = ZTM__V1__WATCH_EVENT__OBJECT_REVOCATION;
    ev.revocation = &rev;

    uint8_t buf[128];
    size_t n = ztm__v1__watch_event__pack(&ev, buf);
    Ztm__V1__WatchEvent *d = ztm__v1__watch_event__unpack(NULL, n, buf);
    REQUIRE(d);
    CHECK(d->version == 18446744073709551615ull);
    CHECK_INT(d->object_case, ZTM__V1__WATCH_EVENT__OBJECT_REVOCATION);
    CHECK_STR(d->revocation->serial, "0a0b");
    CHECK_INT(d->revocation->revoked_time, 42);
    ztm__v1__watch_event__free_unpacked(d, NULL);
}

static void test_unknown_fields_accepted(void)
{
    /* GetEndpointRequest{id:"x"} followed by field 99 (varint 1): a newer
     * client's extra field must not make an older server fail. */
    static const uint8_t msg[] = {0x0a, 0x01, 'x', 0x98, 0x06, 0x01};
    Ztm__V1__GetEndpointRequest *d = ztm__v1__get_endpoint_request__unpack(NULL, sizeof(msg), msg);
    REQUIRE(d);
    CHECK_INT(d->key_case, ZTM__V1__GET_ENDPOINT_REQUEST__KEY_ID);
    CHECK_STR(d->id, "x");
    ztm__v1__get_endpoint_request__free_unpacked(d, NULL);

    /* a length that runs past the end */
    static const uint8_t bad[] = {0x0a, 0x05, 'x'};
    CHECK(ztm__v1__get_endpoint_request__unpack(NULL, sizeof(bad), bad) == NULL);
}

static void check_service(const ProtobufCServiceDescriptor *d, const char *name,
                          const char *const *methods, unsigned n)
{
    CHECK_STR(d->name, name);
    CHECK_INT(d->n_methods, n);
    for (unsigned i = 0; i < n && i < d->n_methods; i++) {
        int found = 0;
        for (unsigned j = 0; j < d->n_methods; j++)
            found |= strcmp(d->methods[j].name, methods[i]) == 0;
        if (!found)
            fprintf(stderr, "%s has no method %s\n", name, methods[i]);
        CHECK(found);
    }
}

static void test_service_names(void)
{
    static const char *const mesh[] = {"Invite", "Join", "Renew", "Revoke", "ListEndpoints",
                                       "GetEndpoint"};
    static const char *const services[] = {"Publish", "Unpublish", "List", "SetPolicy"};
    static const char *const watch[] = {"Subscribe"};
    static const char *const hubs[] = {"Register", "Heartbeat", "List"};
    static const char *const health[] = {"Check", "Watch"};
    check_service(&ztm__v1__mesh__descriptor, "ztm.v1.Mesh", mesh, 6);
    check_service(&ztm__v1__services__descriptor, "ztm.v1.Services", services, 4);
    check_service(&ztm__v1__watch__descriptor, "ztm.v1.Watch", watch, 1);
    check_service(&ztm__v1__hubs__descriptor, "ztm.v1.Hubs", hubs, 3);
    check_service(&grpc__health__v1__health__descriptor, "grpc.health.v1.Health", health, 2);

    const ProtobufCMethodDescriptor *m = NULL;
    for (unsigned j = 0; j < ztm__v1__mesh__descriptor.n_methods; j++)
        if (strcmp(ztm__v1__mesh__descriptor.methods[j].name, "GetEndpoint") == 0)
            m = &ztm__v1__mesh__descriptor.methods[j];
    REQUIRE(m);
    CHECK(m->input == &ztm__v1__get_endpoint_request__descriptor);
    CHECK(m->output == &ztm__v1__endpoint__descriptor);
}

static void test_health(void)
{
    Grpc__Health__V1__HealthCheckResponse r = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    r.status = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
    uint8_t buf[8];
    size_t n = grpc__health__v1__health_check_response__pack(&r, buf);
    CHECK_INT(n, 2);
    CHECK(buf[0] == 0x08 && buf[1] == 0x01); /* field 1, varint 1: the standard bytes */
}

int main(void)
{
    test_endpoint_round_trip();
    test_watch_event_oneof();
    test_unknown_fields_accepted();
    test_service_names();
    test_health();
    TEST_END();
}
