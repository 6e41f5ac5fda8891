/* Fuzz target: the gRPC framing (controlplane/grpc/frame.c). The first
 * byte picks the size limit and the chunking; the rest is fed to the
 * message decoder as a stream, and to every header parser. Invariants: no
 * message longer than the limit, progress on every call, sticky errors,
 * percent-encoding round trips, grpc-timeout format/parse never shortens. */
#include "controlplane/grpc/frame.h"

#include <string.h>

#include "fuzz.h"

static volatile uint8_t sink;

static void headers(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    uint64_t ns;
    if (ztm_grpc_timeout_parse(s, size, &ns) == 0) {
        char out[ZTM_GRPC_TIMEOUT_MAX];
        size_t n = ztm_grpc_timeout_format(ns, out);
        uint64_t back;
        FUZZ_ASSERT(ztm_grpc_timeout_parse(out, n, &back) == 0 && back >= ns);
    }
    ztm_grpc_status_t st;
    if (ztm_grpc_status_parse(s, size, &st) == 0)
        FUZZ_ASSERT(ztm_grpc_status_name(st) != NULL);
    (void)ztm_grpc_status_from_name(s, size, &st);
    (void)ztm_grpc_content_type_ok(s, size);
    ztm_grpc_path_t path;
    if (ztm_grpc_path_parse(s, size, &path) == 0)
        FUZZ_ASSERT(path.service_len + path.method_len + 2 == size);

    char *enc = malloc(3 * size + 1), *dec = malloc(size + 1);
    size_t n = ztm_grpc_message_encode(s, size, enc, 3 * size + 1);
    FUZZ_ASSERT(n <= 3 * size);
    FUZZ_ASSERT(ztm_grpc_message_decode(enc, n, dec, size + 1) == size);
    FUZZ_ASSERT(memcmp(dec, s, size) == 0);
    FUZZ_ASSERT(ztm_grpc_message_decode(s, size, dec, size + 1) <= size);
    free(enc);
    free(dec);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t mode = data[0];
    data++;
    size--;
    headers(data, size);

    uint32_t max = (mode & 0x80) ? ZTM_GRPC_DEFAULT_MAX_MESSAGE : (uint32_t)(mode & 0x3f) * 3;
    ztm_grpc_decoder_t d;
    ztm_grpc_decoder_init(&d, max, mode & 0x40);
    uint32_t rng = mode * 2654435761u + 1;
    size_t off = 0;
    int err = 0;
    while (off < size && !err) {
        rng = rng * 1103515245u + 12345u;
        size_t chunk = 1 + (rng >> 16) % 64;
        if (chunk > size - off)
            chunk = size - off;
        /* a heap copy of exactly this chunk: over-reads show */
        uint8_t *c = malloc(chunk);
        memcpy(c, data + off, chunk);
        size_t used = 0;
        while (used < chunk) {
            ztm_grpc_message_t m;
            bool ready;
            ssize_t r = ztm_grpc_decoder_feed(&d, c + used, chunk - used, &m, &ready);
            if (r < 0) {
                err = (int)r;
                FUZZ_ASSERT(ztm_grpc_decoder_feed(&d, c, chunk, &m, &ready) == r);
                FUZZ_ASSERT(ztm_grpc_decoder_finish(&d) == r);
                break;
            }
            FUZZ_ASSERT(r > 0); /* never called with nothing to feed */
            used += (size_t)r;
            if (ready) {
                FUZZ_ASSERT(m.len <= (max ? max : ZTM_GRPC_DEFAULT_MAX_MESSAGE));
                FUZZ_ASSERT(m.data != NULL);
                for (size_t k = 0; k < m.len; k++) /* touch every byte */
                    sink ^= m.data[k];
            }
        }
        free(c);
        off += chunk;
    }
    if (!err)
        (void)ztm_grpc_decoder_finish(&d);
    ztm_grpc_decoder_free(&d);
    return 0;
}
