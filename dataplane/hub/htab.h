/* A small intrusive hash table (chained, power-of-two buckets, grows when
 * as full as it is wide), for the hub's tables: nodes embedded in their
 * owners, keyed by a 64-bit hash the caller computes. Internal to
 * dataplane/hub; one thread per table. */
#ifndef ZTM_HUB_HTAB_H
#define ZTM_HUB_HTAB_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

typedef struct hnode {
    struct hnode *next;
    uint64_t hash;
} hnode_t;

typedef struct {
    hnode_t **b;
    size_t nb, n;
} htab_t;

static inline int htab_insert(htab_t *t, hnode_t *n)
{
    if (t->n >= t->nb) {
        size_t nb = t->nb ? t->nb * 2 : 64;
        hnode_t **b = calloc(nb, sizeof(*b));
        if (!b)
            return -ENOMEM;
        for (size_t i = 0; i < t->nb; i++) {
            for (hnode_t *e = t->b[i], *next; e; e = next) {
                next = e->next;
                e->next = b[e->hash & (nb - 1)];
                b[e->hash & (nb - 1)] = e;
            }
        }
        free(t->b);
        t->b = b;
        t->nb = nb;
    }
    hnode_t **head = &t->b[n->hash & (t->nb - 1)];
    n->next = *head;
    *head = n;
    t->n++;
    return 0;
}

static inline void htab_remove(htab_t *t, hnode_t *n)
{
    if (!t->nb)
        return;
    for (hnode_t **p = &t->b[n->hash & (t->nb - 1)]; *p; p = &(*p)->next) {
        if (*p == n) {
            *p = n->next;
            n->next = NULL;
            t->n--;
            return;
        }
    }
}

/* The chain HASH falls in (compare each node's hash, then the key). */
static inline hnode_t *htab_first(const htab_t *t, uint64_t hash)
{
    return t->nb ? t->b[hash & (t->nb - 1)] : NULL;
}

static inline void htab_free(htab_t *t)
{
    free(t->b);
    *t = (htab_t){0};
}

static inline uint64_t htab_hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

/* Integer keys (tokens, session IDs that may share low bits) spread. */
static inline uint64_t htab_hash_u64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return x;
}

#endif
