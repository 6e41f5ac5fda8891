/* The revoked certificates, as an immutable snapshot for the data plane.
 *
 * The store belongs to the control-plane thread; data-plane workers check
 * handshakes and live connections against a snapshot instead: the control
 * plane builds one from the store after each change that touches
 * revocations and posts a reference to every worker, which keeps it until
 * the next one arrives. A snapshot never changes once built, so any thread
 * may read it without a lock; its reference count is atomic. */
#ifndef ZTM_CONTROLPLANE_SERVICES_REVSET_H
#define ZTM_CONTROLPLANE_SERVICES_REVSET_H

#include <stdbool.h>
#include <stddef.h>

#include "controlplane/store/store.h"

typedef struct ztm_revset ztm_revset_t;

/* A snapshot of the revocations in STORE (on the store's thread), with one
 * reference. Returns 0, -ENOMEM or the store's error. */
int ztm_revset_build(ztm_store_t *store, ztm_revset_t **out);
/* One more reference (R returned); from any thread. */
ztm_revset_t *ztm_revset_get(ztm_revset_t *r);
/* Drops a reference; the last frees R. NULL is fine. From any thread. */
void ztm_revset_put(ztm_revset_t *r);

/* True when certificate SERIAL (lowercase hex) is revoked. R NULL: none is. */
bool ztm_revset_has(const ztm_revset_t *r, const char *serial);
/* True when A and B hold the same serials (NULL holds none). */
bool ztm_revset_equal(const ztm_revset_t *a, const ztm_revset_t *b);
size_t ztm_revset_count(const ztm_revset_t *r);

#endif
