/* Fuzz target: arbitrary bytes from a client into a ztm_h2 server session
 * running the test application (tests/unit/dataplane/h2/h2_testapp.h), so
 * the responses, echo, trailers, windows and limits all run on what the
 * fuzzer sends.
 *
 * Input: byte 0 picks the feed chunk and flush buffer sizes, byte 1 a set
 * of application actions, the rest is the client's byte stream. */
#include <stddef.h>
#include <stdint.h>

#include "dataplane/h2/h2.h"
#include "dataplane/runtime/log.h"
#include "tests/unit/dataplane/h2/h2_testapp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint64_t fuzz_now;
static uint64_t fuzz_clock(void *user)
{
    return fuzz_now += 1000000; /* 1 ms per look: buckets refill, PINGs age */
}

enum {
    A_RELEASE = 1 << 0,  /* consume held /hold bytes after each chunk */
    A_LATE = 1 << 1,     /* send pending late trailers after each chunk */
    A_SHUTDOWN = 1 << 2, /* start a graceful shutdown halfway */
    A_PING = 1 << 3,     /* ping and tick after each chunk */
    A_SMALL = 1 << 4,    /* small windows and limits */
    A_MUTE = 1 << 5,     /* never flush (a peer that does not read) */
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const size_t chunks[8] = {1, 3, 9, 17, 100, 1024, 16384, 1 << 20};
    static const size_t caps[8] = {1, 7, 10, 64, 1000, 4096, 16384, 65536};
    static uint8_t out[65536];
    if (size < 2)
        return 0;
    ztm_log_set_level(ZTM_LOG_ERROR);
    size_t chunk = chunks[data[0] & 7], cap = caps[(data[0] >> 3) & 7];
    unsigned act = data[1];
    data += 2;
    size -= 2;

    tapp_t app = {0};
    ztm_h2_config_t cfg = {.clock = fuzz_clock};
    if (act & A_SMALL) {
        cfg.conn_window = 65535;
        cfg.stream_window = 1000;
        cfg.max_concurrent_streams = 4;
        cfg.max_header_list = 300;
        cfg.reset_burst = 5;
        cfg.flood_burst = 20;
        cfg.max_outbound_ack = 10;
    }
    ztm_h2_session_t *s;
    if (ztm_h2_new(&s, ZTM_H2_SERVER, &tapp_callbacks, &app, &cfg) != 0)
        return 0;
    bool closing = false;
    for (size_t off = 0; off < size && !closing; off += chunk) {
        size_t n = size - off < chunk ? size - off : chunk;
        closing = ztm_h2_feed(s, data + off, n) < 0;
        if (act & A_RELEASE)
            tapp_release(&app, s);
        if (act & A_LATE)
            tapp_send_late_trailers(&app, s);
        if ((act & A_SHUTDOWN) && off >= size / 2)
            ztm_h2_shutdown(s);
        if (act & A_PING) {
            ztm_h2_ping(s);
            ztm_h2_tick(s);
        }
        for (int i = 0; i < 8 && !(act & A_MUTE) && ztm_h2_want_write(s); i++) {
            size_t len;
            if (ztm_h2_flush(s, out, cap, &len) < 0 || !len)
                break;
        }
    }
    for (int i = 0; i < 64 && ztm_h2_want_write(s); i++) {
        size_t len;
        if (ztm_h2_flush(s, out, cap, &len) < 0 || !len)
            break;
    }
    (void)ztm_h2_idle(s);
    ztm_h2_free(s);
    return 0;
}
