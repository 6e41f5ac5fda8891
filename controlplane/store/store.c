/* The store's front: argument checks shared by every backend, dispatch
 * through the backend's vtable, and subscriptions; see store.h. */
#include "controlplane/store/store.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "controlplane/store/store_backend.h"

struct ztm_store_sub {
    ztm_store_sub_t *next;
    ztm_store_notify_cb cb; /* NULL: unsubscribed, freed after the notification */
    void *arg;
};

const char *ztm_store_strerror(int err)
{
    switch (err) {
    case ZTM_STORE_E_CORRUPT:
        return "state file is damaged or torn (restore it from a backup; the store will not "
               "start empty over it)";
    case ZTM_STORE_E_CONFLICT:
        return "the record changed concurrently (condition failed); nothing was written";
    case ZTM_STORE_E_COMPACTED:
        return "changes after that version are no longer kept; resynchronise from a snapshot";
    case ZTM_STORE_E_FORMAT:
        return "state file written by a newer ztm";
    case -EBUSY:
        return "state directory is in use by another ztm process";
    default:
        return err < 0 && err > -4096 ? strerror(-err) : "unknown error";
    }
}

static bool key_ok(const char *key)
{
    if (!key)
        return false;
    size_t n = 0;
    for (; key[n]; n++) {
        if (n >= ZTM_STORE_KEY_MAX || key[n] < 0x21 || key[n] > 0x7e)
            return false;
    }
    return n > 0;
}

static bool kind_ok(int kind, int max)
{
    return kind >= 1 && kind <= max;
}

void ztm_store_base_init(ztm_store_t *s, const ztm_store_ops_t *ops)
{
    memset(s, 0, sizeof(*s));
    s->ops = ops;
}

void ztm_store_base_fini(ztm_store_t *s)
{
    while (s->subs) {
        ztm_store_sub_t *next = s->subs->next;
        free(s->subs);
        s->subs = next;
    }
}

int ztm_store_open(const ztm_store_options_t *opts, ztm_store_t **out)
{
    if (!opts)
        return -EINVAL;
    if (opts->redis_url)
        return -ENOTSUP; /* the Redis backend comes with hub clusters */
    return ztm_store_open_embedded(opts, out);
}

void ztm_store_close(ztm_store_t *s)
{
    if (s)
        s->ops->close(s);
}

const char *ztm_store_backend(const ztm_store_t *s)
{
    return s->ops->name;
}

int ztm_store_commit(ztm_store_t *s, const ztm_store_op_t *ops, size_t n_ops,
                     const ztm_store_event_t *events, size_t n_events, uint64_t *version)
{
    if ((n_ops && !ops) || (n_events && !events))
        return -EINVAL;
    for (size_t i = 0; i < n_ops; i++) {
        const ztm_store_op_t *op = &ops[i];
        if (!kind_ok(op->kind, ZTM_STORE_KIND_MAX) || !key_ok(op->key))
            return -EINVAL;
        if (op->type != ZTM_STORE_PUT && op->type != ZTM_STORE_DEL)
            return -EINVAL;
        if (op->type == ZTM_STORE_PUT && op->len && !op->value)
            return -EINVAL;
        if (op->len > ZTM_STORE_VALUE_MAX)
            return -EMSGSIZE;
        if (op->cond < ZTM_STORE_IF_ANY || op->cond > ZTM_STORE_IF_EXISTS ||
            (op->cond == ZTM_STORE_IF_EQUAL && op->expect_len && !op->expect))
            return -EINVAL;
    }
    for (size_t i = 0; i < n_events; i++) {
        if (events[i].len && !events[i].data)
            return -EINVAL;
        if (events[i].len > ZTM_STORE_VALUE_MAX)
            return -EMSGSIZE;
    }
    uint64_t v;
    int ret = s->ops->commit(s, ops, n_ops, events, n_events, &v);
    if (ret < 0)
        return ret;
    if (version)
        *version = v;
    if (n_events && !s->in_group)
        ztm_store_notify(s, v);
    return 0;
}

int ztm_store_group_begin(ztm_store_t *s)
{
    if (s->in_group)
        return -EBUSY;
    int ret = s->ops->group_begin(s);
    if (ret == 0) {
        s->in_group = true;
        s->group_version = s->ops->version(s);
    }
    return ret;
}

int ztm_store_group_end(ztm_store_t *s)
{
    if (!s->in_group)
        return -EINVAL;
    s->in_group = false;
    int ret = s->ops->group_end(s);
    uint64_t v = s->ops->version(s);
    if (ret == 0 && v > s->group_version)
        ztm_store_notify(s, v);
    return ret;
}

int ztm_store_put(ztm_store_t *s, ztm_store_kind_t kind, const char *key, const void *value,
                  size_t len)
{
    ztm_store_op_t op = {.type = ZTM_STORE_PUT, .kind = kind, .key = key, .value = value, .len = len};
    return ztm_store_commit(s, &op, 1, NULL, 0, NULL);
}

int ztm_store_del(ztm_store_t *s, ztm_store_kind_t kind, const char *key)
{
    ztm_store_op_t op = {.type = ZTM_STORE_DEL, .kind = kind, .key = key};
    return ztm_store_commit(s, &op, 1, NULL, 0, NULL);
}

int ztm_store_get(ztm_store_t *s, ztm_store_kind_t kind, const char *key, void **value,
                  size_t *len)
{
    if (!kind_ok(kind, ZTM_STORE_KIND_MAX) || !key_ok(key))
        return -EINVAL;
    return s->ops->get(s, kind, key, value, len);
}

/* A prefix or paging key may be empty; else it must be a valid key. */
static bool opt_key_ok(const char *key)
{
    return !key || !key[0] || key_ok(key);
}

int ztm_store_list(ztm_store_t *s, ztm_store_kind_t kind, const char *prefix, const char *after,
                   size_t limit, ztm_store_record_cb cb, void *arg)
{
    if (!kind_ok(kind, ZTM_STORE_KIND_MAX) || !opt_key_ok(prefix) || !opt_key_ok(after) || !cb)
        return -EINVAL;
    return s->ops->list(s, kind, prefix ? prefix : "", after ? after : "", limit, cb, arg);
}

uint64_t ztm_store_version(ztm_store_t *s)
{
    return s->ops->version(s);
}

int ztm_store_read_events(ztm_store_t *s, uint64_t after, size_t max, ztm_store_event_cb cb,
                          void *arg)
{
    if (!cb)
        return -EINVAL;
    return s->ops->read_events(s, after, max, cb, arg);
}

int ztm_store_subscribe(ztm_store_t *s, ztm_store_notify_cb cb, void *arg, ztm_store_sub_t **out)
{
    if (!cb)
        return -EINVAL;
    ztm_store_sub_t *sub = calloc(1, sizeof(*sub));
    if (!sub)
        return -ENOMEM;
    sub->cb = cb;
    sub->arg = arg;
    /* append: subscribers are told in the order they came */
    ztm_store_sub_t **p = &s->subs;
    while (*p)
        p = &(*p)->next;
    *p = sub;
    if (out)
        *out = sub;
    return 0;
}

static void reap_subs(ztm_store_t *s)
{
    for (ztm_store_sub_t **p = &s->subs; *p;) {
        if ((*p)->cb == NULL) {
            ztm_store_sub_t *dead = *p;
            *p = dead->next;
            free(dead);
        } else {
            p = &(*p)->next;
        }
    }
    s->subs_removed = false;
}

void ztm_store_unsubscribe(ztm_store_t *s, ztm_store_sub_t *sub)
{
    if (!sub)
        return;
    sub->cb = NULL;
    if (s->notifying)
        s->subs_removed = true; /* the walk in progress still holds it */
    else
        reap_subs(s);
}

void ztm_store_notify(ztm_store_t *s, uint64_t version)
{
    if (version > s->notify_target)
        s->notify_target = version;
    if (s->notifying)
        return; /* the outer call announces it once this round ends */
    s->notifying++;
    uint64_t done = 0;
    while (done < s->notify_target) {
        uint64_t v = s->notify_target;
        for (ztm_store_sub_t *sub = s->subs; sub; sub = sub->next)
            if (sub->cb)
                sub->cb(sub->arg, v);
        done = v;
    }
    s->notifying--;
    if (s->subs_removed)
        reap_subs(s);
}

int ztm_store_soft_set(ztm_store_t *s, ztm_soft_kind_t kind, const char *key, const void *value,
                       size_t len, int64_t ttl_ms)
{
    if (!kind_ok(kind, ZTM_SOFT_KIND_MAX) || !key_ok(key) || ttl_ms < 0 || (len && !value))
        return -EINVAL;
    if (len > ZTM_STORE_VALUE_MAX)
        return -EMSGSIZE;
    return s->ops->soft_set(s, kind, key, value, len, ttl_ms);
}

int ztm_store_soft_get(ztm_store_t *s, ztm_soft_kind_t kind, const char *key, void **value,
                       size_t *len, int64_t *ttl_ms)
{
    if (!kind_ok(kind, ZTM_SOFT_KIND_MAX) || !key_ok(key))
        return -EINVAL;
    return s->ops->soft_get(s, kind, key, value, len, ttl_ms);
}

int ztm_store_soft_del(ztm_store_t *s, ztm_soft_kind_t kind, const char *key)
{
    if (!kind_ok(kind, ZTM_SOFT_KIND_MAX) || !key_ok(key))
        return -EINVAL;
    return s->ops->soft_del(s, kind, key);
}

int ztm_store_soft_list(ztm_store_t *s, ztm_soft_kind_t kind, const char *prefix,
                        ztm_store_record_cb cb, void *arg)
{
    if (!kind_ok(kind, ZTM_SOFT_KIND_MAX) || !opt_key_ok(prefix) || !cb)
        return -EINVAL;
    return s->ops->soft_list(s, kind, prefix ? prefix : "", cb, arg);
}

int ztm_store_counter_add(ztm_store_t *s, const char *key, int64_t delta, int64_t ttl_ms,
                          int64_t *value)
{
    if (!key_ok(key) || ttl_ms < 0)
        return -EINVAL;
    return s->ops->counter_add(s, key, delta, ttl_ms, value);
}

int ztm_store_fd(ztm_store_t *s)
{
    return s->ops->fd(s);
}

int ztm_store_poll(ztm_store_t *s)
{
    return s->ops->poll(s);
}
