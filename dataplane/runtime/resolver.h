/* Host names resolved off the worker thread.
 *
 * getaddrinfo() blocks for as long as DNS takes (seconds when a server does
 * not answer); called on a worker it would stall every connection of that
 * worker. A resolver gives a worker a helper thread that does the lookups
 * and a cache that answers repeated names at once:
 *   - literal addresses ("10.0.0.1:80", "[::1]:80") answer at once, as
 *     ztm_addr_parse does, with no thread;
 *   - a name looked up in the last ZTM_RESOLVE_FRESH_NS answers at once;
 *     one looked up longer ago, up to ZTM_RESOLVE_STALE_NS, still answers
 *     at once while a new lookup refreshes it (a DNS outage does not cut a
 *     name that worked a moment ago); a failed name answers its error at
 *     once for ZTM_RESOLVE_NEG_NS;
 *   - otherwise a lookup starts and the caller hears of it by callback, on
 *     the worker, from a timer that looks for finished lookups while any is
 *     in flight.
 * One resolver per worker; every call on that worker. The helper thread is
 * started at the first lookup; it touches only its job queue. */
#ifndef ZTM_RUNTIME_RESOLVER_H
#define ZTM_RUNTIME_RESOLVER_H

#include <stdint.h>

#include "dataplane/runtime/net.h"
#include "dataplane/runtime/worker.h"

#define ZTM_RESOLVE_FRESH_NS (30ull * ZTM_NS_PER_SEC)
#define ZTM_RESOLVE_STALE_NS (600ull * ZTM_NS_PER_SEC)
#define ZTM_RESOLVE_NEG_NS   (5ull * ZTM_NS_PER_SEC)

typedef struct ztm_resolver ztm_resolver_t;
typedef struct ztm_resolve_job ztm_resolve_job_t;

/* A lookup ended: ERR 0 and ADDR (port set), or ERR < 0 and WHY. */
typedef void (*ztm_resolve_cb)(void *arg, int err, const ztm_addr_t *addr, const char *why);

/* The lookup function (getaddrinfo by default): HOST to its first address
 * (port 0). Returns 0 or -EINVAL with *WHY. Tests replace it. */
typedef int (*ztm_resolve_fn)(const char *host, ztm_addr_t *out, const char **why);

int ztm_resolver_new(ztm_worker_t *w, ztm_resolver_t **out);
/* Cancels what is in flight (no callback comes); a lookup running in the
 * helper thread finishes there and is thrown away. */
void ztm_resolver_free(ztm_resolver_t *r);
void ztm_resolver_set_fn(ztm_resolver_t *r, ztm_resolve_fn fn);

/* Resolves "HOST:PORT" (the syntax of ztm_addr_parse).
 * Returns 0 with *OUT set (a literal, or the cache); -EINVAL with *WHY (a
 * malformed address, or a name that failed within ZTM_RESOLVE_NEG_NS); or
 * -EINPROGRESS: a lookup runs and, unless cancelled, CB (if not NULL) is
 * called when it ends, with *JOB (if not NULL) naming it until then. */
int ztm_resolve(ztm_resolver_t *r, const char *hostport, ztm_addr_t *out, const char **why,
                ztm_resolve_cb cb, void *arg, ztm_resolve_job_t **job);
/* No callback for JOB: call before ARG goes away. */
void ztm_resolve_cancel(ztm_resolve_job_t *job);

/* Lookups in flight (for status and tests). */
unsigned ztm_resolver_pending(const ztm_resolver_t *r);

#endif
