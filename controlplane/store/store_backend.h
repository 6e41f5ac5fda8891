/* What a store backend implements: the vtable behind store.h, and the
 * common part of every store (subscribers). Only backends include this.
 * store.c validates every argument (kinds, keys, sizes) before a backend
 * sees it, so backends agree on what is accepted. */
#ifndef ZTM_CONTROLPLANE_STORE_STORE_BACKEND_H
#define ZTM_CONTROLPLANE_STORE_STORE_BACKEND_H

#include "controlplane/store/store.h"

typedef struct {
    const char *name;
    void (*close)(ztm_store_t *s);
    int (*commit)(ztm_store_t *s, const ztm_store_op_t *ops, size_t n_ops,
                  const ztm_store_event_t *events, size_t n_events, uint64_t *version);
    int (*group_begin)(ztm_store_t *s);
    int (*group_end)(ztm_store_t *s); /* on failure: every commit of the group undone */
    int (*get)(ztm_store_t *s, ztm_store_kind_t kind, const char *key, void **value, size_t *len);
    int (*list)(ztm_store_t *s, ztm_store_kind_t kind, const char *prefix, const char *after,
                size_t limit, ztm_store_record_cb cb, void *arg);
    uint64_t (*version)(ztm_store_t *s);
    int (*read_events)(ztm_store_t *s, uint64_t after, size_t max, ztm_store_event_cb cb,
                       void *arg);
    int (*soft_set)(ztm_store_t *s, ztm_soft_kind_t kind, const char *key, const void *value,
                    size_t len, int64_t ttl_ms);
    int (*soft_get)(ztm_store_t *s, ztm_soft_kind_t kind, const char *key, void **value,
                    size_t *len, int64_t *ttl_ms);
    int (*soft_del)(ztm_store_t *s, ztm_soft_kind_t kind, const char *key);
    int (*soft_list)(ztm_store_t *s, ztm_soft_kind_t kind, const char *prefix,
                     ztm_store_record_cb cb, void *arg);
    int (*counter_add)(ztm_store_t *s, const char *key, int64_t delta, int64_t ttl_ms,
                       int64_t *value);
    int (*fd)(ztm_store_t *s);
    int (*poll)(ztm_store_t *s);
} ztm_store_ops_t;

/* The common head of every backend's store struct (its first member). */
struct ztm_store {
    const ztm_store_ops_t *ops;
    ztm_store_sub_t *subs;
    int notifying;          /* depth of ztm_store_notify calls */
    uint64_t notify_target; /* highest version to announce */
    bool subs_removed;      /* some subscription died during a notification */
    bool in_group;          /* between ztm_store_group_begin and _end */
    uint64_t group_version; /* the version when the group began */
};

void ztm_store_base_init(ztm_store_t *s, const ztm_store_ops_t *ops);
/* Frees the subscriptions; the backend frees the rest. */
void ztm_store_base_fini(ztm_store_t *s);
/* Tells every subscriber that events up to VERSION can be read. Re-entrant:
 * a commit made by a subscriber is announced after the current round. */
void ztm_store_notify(ztm_store_t *s, uint64_t version);

#endif
