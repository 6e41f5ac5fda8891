/* Revocation snapshots; see revset.h. One allocation for the index, one
 * for the serials' bytes; the store lists keys in bytewise order, so the
 * index is sorted as built and lookups are a binary search. */
#include "controlplane/services/revset.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct ztm_revset {
    _Atomic uint32_t refs;
    size_t n;
    char **serial; /* sorted (strcmp) */
    char *bytes;
};

typedef struct {
    char **serial;
    size_t n, cap;
    char *bytes;
    size_t len, bcap;
} builder_t;

static int on_record(void *arg, const char *key, const void *value, size_t len)
{
    builder_t *b = arg;
    size_t kl = strlen(key) + 1;
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 16;
        char **p = realloc(b->serial, cap * sizeof(*p));
        if (!p)
            return -ENOMEM;
        b->serial = p;
        b->cap = cap;
    }
    if (b->len + kl > b->bcap) {
        size_t cap = b->bcap ? b->bcap * 2 : 1024;
        while (cap < b->len + kl)
            cap *= 2;
        char *p = realloc(b->bytes, cap);
        if (!p)
            return -ENOMEM;
        b->bytes = p;
        b->bcap = cap;
    }
    memcpy(b->bytes + b->len, key, kl);
    /* An offset for now: the byte buffer may still move. */
    b->serial[b->n++] = (char *)(uintptr_t)b->len;
    b->len += kl;
    return 0;
}

int ztm_revset_build(ztm_store_t *store, ztm_revset_t **out)
{
    builder_t b = {0};
    ztm_revset_t *r = calloc(1, sizeof(*r));
    int e = r ? ztm_store_list(store, ZTM_STORE_REVOCATION, NULL, NULL, 0, on_record, &b) : -ENOMEM;
    if (e < 0) {
        free(b.serial);
        free(b.bytes);
        free(r);
        return e;
    }
    for (size_t i = 0; i < b.n; i++)
        b.serial[i] = b.bytes + (uintptr_t)b.serial[i];
    atomic_init(&r->refs, 1);
    r->n = b.n;
    r->serial = b.serial;
    r->bytes = b.bytes;
    *out = r;
    return 0;
}

ztm_revset_t *ztm_revset_get(ztm_revset_t *r)
{
    if (r)
        atomic_fetch_add_explicit(&r->refs, 1, memory_order_relaxed);
    return r;
}

void ztm_revset_put(ztm_revset_t *r)
{
    if (!r || atomic_fetch_sub_explicit(&r->refs, 1, memory_order_acq_rel) != 1)
        return;
    free(r->serial);
    free(r->bytes);
    free(r);
}

bool ztm_revset_has(const ztm_revset_t *r, const char *serial)
{
    if (!r)
        return false;
    size_t lo = 0, hi = r->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(r->serial[mid], serial);
        if (c == 0)
            return true;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return false;
}

bool ztm_revset_equal(const ztm_revset_t *a, const ztm_revset_t *b)
{
    size_t na = ztm_revset_count(a), nb = ztm_revset_count(b);
    if (na != nb)
        return false;
    for (size_t i = 0; i < na; i++)
        if (strcmp(a->serial[i], b->serial[i]) != 0)
            return false;
    return true;
}

size_t ztm_revset_count(const ztm_revset_t *r)
{
    return r ? r->n : 0;
}
