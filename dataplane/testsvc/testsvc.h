/* The HTTP/2 test service and client: the secure transport (link + TLS or
 * kTLS + HTTP/2) exercised end to end on the engine, for tests and
 * benchmarks (`ztm h2-test server|client`, a hidden subcommand).
 *
 * Server: GET /bytes/N answers N bytes of a fixed pattern (byte i is
 * i % 251); POST (any path) echoes the request body as it streams in, under
 * HTTP/2 flow control; GET / answers "ok\n"; anything else 404.
 * Client: R requests over one connection, K streams at a time, each a GET
 * /bytes/N (checked byte for byte) or a POST of N pattern bytes whose echo
 * is checked; prints one result line with SHA-256 of everything received. */
#ifndef ZTM_TESTSVC_TESTSVC_H
#define ZTM_TESTSVC_TESTSVC_H

#include <stdbool.h>
#include <stdint.h>

#include "dataplane/runtime/net.h"
#include "dataplane/tls/tls.h"

/* The pattern byte at offset I of every test body. */
static inline uint8_t ztm_testsvc_pattern(uint64_t i)
{
    return (uint8_t)(i % 251);
}

typedef struct {
    ztm_addr_t addr;        /* server: listen; client: connect */
    unsigned workers;       /* server; the client uses one */
    const char *cert_file;  /* NULL: plaintext (h2c, prior knowledge) */
    const char *key_file;
    const char *ca_file;
    const char *sni;        /* client */
    ztm_ktls_mode_t ktls;
    bool client_cert_optional; /* server: for clients that have none (h2load) */
    uint64_t drain_timeout_ns;
    /* client */
    unsigned requests, streams;
    uint64_t size;
    bool post;
    uint64_t timeout_ns;
} ztm_testsvc_config_t;

/* Runs the server until SIGTERM/SIGINT. Returns 0, or -errno with the
 * cause logged; -EADDRINUSE etc. come before anything runs. */
int ztm_testsvc_server(const ztm_testsvc_config_t *cfg);
/* Runs the client to completion. Returns 0 when every response was exact,
 * 1 when one was not (logged), or -errno. */
int ztm_testsvc_client(const ztm_testsvc_config_t *cfg);

#endif
