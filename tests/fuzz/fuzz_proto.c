/* Fuzz target: every protobuf decode entry point of the API — each request
 * and response message of every ztm.v1 and grpc.health.v1 method, the watch
 * event and the stored records. The first byte picks the message; a message
 * that decodes must pass protobuf-c's checks and encode again. */
#include "grpc/health/v1/health.pb-c.h"
#include "ztm/v1/hubs.pb-c.h"
#include "ztm/v1/mesh.pb-c.h"
#include "ztm/v1/records.pb-c.h"
#include "ztm/v1/services.pb-c.h"
#include "ztm/v1/watch.pb-c.h"

#include <string.h>

#include "fuzz.h"

static const ProtobufCMessageDescriptor *msgs[64];
static size_t n_msgs;

static void add(const ProtobufCMessageDescriptor *d)
{
    for (size_t i = 0; i < n_msgs; i++)
        if (msgs[i] == d)
            return;
    FUZZ_ASSERT(n_msgs < sizeof(msgs) / sizeof(msgs[0]));
    msgs[n_msgs++] = d;
}

static void init(void)
{
    static const ProtobufCServiceDescriptor *const services[] = {
        &ztm__v1__mesh__descriptor, &ztm__v1__services__descriptor, &ztm__v1__watch__descriptor,
        &ztm__v1__hubs__descriptor, &grpc__health__v1__health__descriptor};
    for (size_t s = 0; s < sizeof(services) / sizeof(services[0]); s++) {
        for (unsigned m = 0; m < services[s]->n_methods; m++) {
            add(services[s]->methods[m].input);
            add(services[s]->methods[m].output);
        }
    }
    add(&ztm__v1__invite_record__descriptor);
    add(&ztm__v1__issued_certificate__descriptor);
    add(&ztm__v1__service__descriptor);
    add(&ztm__v1__revocation__descriptor);
    add(&ztm__v1__hub__descriptor);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!n_msgs)
        init();
    if (size < 1)
        return 0;
    const ProtobufCMessageDescriptor *d = msgs[data[0] % n_msgs];
    ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, size - 1, data + 1);
    if (!m)
        return 0;
    FUZZ_ASSERT(protobuf_c_message_check(m));
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = malloc(n ? n : 1);
    FUZZ_ASSERT(protobuf_c_message_pack(m, buf) == n);
    /* Decoding our own encoding is not asserted: protobuf-c 1.4 keeps an
     * over-long tag of field number 0 as an unknown field and re-emits it
     * in the short form, which it then refuses. Harmless (the server never
     * echoes unknown fields), but it would stop every run here. */
    ProtobufCMessage *again = protobuf_c_message_unpack(d, NULL, n, buf);
    if (again) {
        FUZZ_ASSERT(protobuf_c_message_get_packed_size(again) == n);
        protobuf_c_message_free_unpacked(again, NULL);
    }
    protobuf_c_message_free_unpacked(m, NULL);
    free(buf);
    return 0;
}
