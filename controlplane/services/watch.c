/* ztm.v1.Watch.Subscribe: a cursor over the store's change feed.
 *
 * A subscriber resuming from a version still in the feed gets every later
 * event once, in order. Otherwise (version 0, compacted away, or ahead of
 * this store) it gets RESET, the current objects as PUTs carrying the
 * snapshot's version V, SYNCED at V, and then the events after V. The
 * snapshot is read lazily, one object per call, so a changing store may
 * show some objects newer than V; the events after V then re-apply every
 * change, which are whole-object PUTs and DELETEs, so the subscriber ends
 * exactly at the store's state.
 *
 * Messages are assembled from stored bytes without decoding them: a
 * protobuf message may be extended by appending fields, so an event is the
 * stored WatchEvent plus its version field, a snapshot entry is the stored
 * object wrapped in a WatchEvent field (with presence appended to
 * endpoints). */
#include "controlplane/services/internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define READ_BATCH 64

enum { W_RESET, W_SNAPSHOT, W_SYNCED, W_LIVE };

/* The snapshot walks these, in this order. */
static const struct {
    ztm_store_kind_t kind;
    Ztm__V1__Topic topic;
    uint32_t field; /* WatchEvent's field for the object */
} snapshot_parts[] = {
    {ZTM_STORE_ENDPOINT, ZTM__V1__TOPIC__TOPIC_ENDPOINTS, 10},
    {ZTM_STORE_SERVICE, ZTM__V1__TOPIC__TOPIC_SERVICES, 11},
    {ZTM_STORE_REVOCATION, ZTM__V1__TOPIC__TOPIC_REVOCATIONS, 12},
    {ZTM_STORE_HUB, ZTM__V1__TOPIC__TOPIC_HUBS, 13},
};
#define N_PARTS (sizeof(snapshot_parts) / sizeof(snapshot_parts[0]))

struct ztm_api_watch {
    ztm_api_t *api;
    bool has_caller;
    ztm_identity_t caller;
    uint32_t topics; /* bit per ztm.v1.Topic */
    int state;
    uint64_t snapshot_version;
    uint64_t last; /* the last version delivered (live) */
    size_t part;
    char after[ZTM_STORE_KEY_MAX + 1];
};

/* ---- a minimal protobuf writer ------------------------------------------------------ */

typedef struct {
    uint8_t *p;
    size_t len, cap;
    bool failed;
} wbuf_t;

static void w_bytes(wbuf_t *w, const void *data, size_t n)
{
    if (w->failed)
        return;
    if (w->len + n > w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 256;
        while (cap < w->len + n)
            cap *= 2;
        uint8_t *p = realloc(w->p, cap);
        if (!p) {
            w->failed = true;
            return;
        }
        w->p = p;
        w->cap = cap;
    }
    memcpy(w->p + w->len, data, n);
    w->len += n;
}

static void w_varint(wbuf_t *w, uint64_t v)
{
    uint8_t b[10];
    size_t n = 0;
    do {
        b[n] = (uint8_t)(v & 0x7f);
        v >>= 7;
        if (v)
            b[n] |= 0x80;
        n++;
    } while (v);
    w_bytes(w, b, n);
}

static void w_field_varint(wbuf_t *w, uint32_t field, uint64_t v)
{
    w_varint(w, (uint64_t)field << 3);
    w_varint(w, v);
}

static void w_field_bytes(wbuf_t *w, uint32_t field, const void *data, size_t n)
{
    w_varint(w, (uint64_t)field << 3 | 2);
    w_varint(w, n);
    w_bytes(w, data, n);
}

static int w_take(wbuf_t *w, uint8_t **body, size_t *len)
{
    if (w->failed) {
        free(w->p);
        return -ENOMEM;
    }
    *body = w->p;
    *len = w->len;
    return 1;
}

/* ---- opening ------------------------------------------------------------------------ */

static int probe(void *arg, const ztm_store_event_t *ev)
{
    return 1;
}

ztm_api_watch_t *ztm_api_watch_open(ztm_api_t *api, const ztm_api_method_t *m,
                                    const ztm_identity_t *caller, const uint8_t *req, size_t len,
                                    ztm_api_reply_t *reply)
{
    memset(reply, 0, sizeof(*reply));
    if (!m || m->unary) {
        api_fail(reply, ZTM_GRPC_UNIMPLEMENTED, "not a streaming method");
        return NULL;
    }
    if (api_authorize(api, m->access, caller, reply) < 0)
        return NULL;
    arena_t a;
    arena_init(&a);
    ztm_api_watch_t *w = NULL;
    Ztm__V1__SubscribeRequest *sr = arena_unpack(&a, m->input, req, len);
    if (!sr) {
        api_fail(reply, ZTM_GRPC_INVALID_ARGUMENT, "malformed %s request", m->input->name);
        goto out;
    }
    uint32_t topics = 0;
    for (size_t i = 0; i < sr->n_topics; i++) {
        if (sr->topics[i] < ZTM__V1__TOPIC__TOPIC_ENDPOINTS ||
            sr->topics[i] > ZTM__V1__TOPIC__TOPIC_HUBS) {
            api_fail(reply, ZTM_GRPC_INVALID_ARGUMENT, "unknown topic %d", sr->topics[i]);
            goto out;
        }
        topics |= 1u << sr->topics[i];
    }
    if (!(w = calloc(1, sizeof(*w)))) {
        api_fail(reply, ZTM_GRPC_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    w->api = api;
    if (caller) {
        w->has_caller = true;
        w->caller = *caller;
    }
    w->topics = topics ? topics : ~0u;
    uint64_t after = sr->after_version, now = ztm_store_version(api->store);
    /* resumable: the feed still holds everything after AFTER */
    if (after && after <= now &&
        (after == now || ztm_store_read_events(api->store, after, 1, probe, NULL) >= 0)) {
        w->state = W_LIVE;
        w->last = after;
    } else {
        w->state = W_RESET;
    }
    reply->status = ZTM_GRPC_OK;
out:
    arena_free(&a);
    return w;
}

void ztm_api_watch_close(ztm_api_watch_t *w)
{
    free(w);
}

/* ---- the stream ---------------------------------------------------------------------- */

static int control_event(ztm_api_watch_t *w, Ztm__V1__WatchEvent__Type type, uint64_t version,
                         uint8_t **body, size_t *len)
{
    wbuf_t b = {0};
    w_field_varint(&b, 1, version);
    w_field_varint(&b, 2, (uint64_t)type);
    return w_take(&b, body, len);
}

typedef struct {
    ztm_api_watch_t *w;
    uint8_t **body;
    size_t *len;
    int ret;
} next_t;

static int on_snapshot_record(void *arg, const char *key, const void *value, size_t len)
{
    next_t *n = arg;
    ztm_api_watch_t *w = n->w;
    snprintf(w->after, sizeof(w->after), "%s", key);
    wbuf_t obj = {0};
    w_bytes(&obj, value, len);
    if (snapshot_parts[w->part].kind == ZTM_STORE_ENDPOINT) {
        void *hub;
        size_t hub_len;
        if (ztm_store_soft_get(w->api->store, ZTM_SOFT_PRESENCE, key, &hub, &hub_len, NULL) == 0) {
            w_field_varint(&obj, 8, 1);           /* online */
            w_field_bytes(&obj, 9, hub, hub_len); /* hub_id */
            free(hub);
        }
    }
    wbuf_t b = {0};
    w_field_varint(&b, 1, w->snapshot_version);
    w_field_varint(&b, 2, ZTM__V1__WATCH_EVENT__TYPE__TYPE_PUT);
    w_field_varint(&b, 3, snapshot_parts[w->part].topic);
    w_field_bytes(&b, snapshot_parts[w->part].field, obj.p, obj.len);
    b.failed |= obj.failed;
    free(obj.p);
    n->ret = w_take(&b, n->body, n->len);
    return 1;
}

static int on_live_event(void *arg, const ztm_store_event_t *ev)
{
    next_t *n = arg;
    ztm_api_watch_t *w = n->w;
    w->last = ev->version;
    if (ev->topic >= 32 || !(w->topics & (1u << ev->topic)))
        return 0; /* not followed: skip, but count it as seen */
    wbuf_t b = {0};
    w_bytes(&b, ev->data, ev->len);
    w_field_varint(&b, 1, ev->version);
    n->ret = w_take(&b, n->body, n->len);
    return 1;
}

int ztm_api_watch_next(ztm_api_watch_t *w, uint8_t **body, size_t *len, ztm_api_reply_t *reply)
{
    memset(reply, 0, sizeof(*reply));
    /* A subscriber whose certificate was revoked meanwhile is cut off. */
    if (w->has_caller && api_authorize(w->api, ACCESS_MEMBER, &w->caller, reply) < 0)
        return -EACCES;
    ztm_store_t *st = w->api->store;
    next_t n = {.w = w, .body = body, .len = len};
    int r;
    for (;;) {
        switch (w->state) {
        case W_RESET:
            w->snapshot_version = ztm_store_version(st);
            w->part = 0;
            w->after[0] = 0;
            w->state = W_SNAPSHOT;
            return control_event(w, ZTM__V1__WATCH_EVENT__TYPE__TYPE_RESET, w->snapshot_version,
                                 body, len);
        case W_SNAPSHOT:
            if (w->part == N_PARTS) {
                w->state = W_SYNCED;
                break;
            }
            if (!(w->topics & (1u << snapshot_parts[w->part].topic))) {
                w->part++;
                w->after[0] = 0;
                break;
            }
            n.ret = 0;
            r = ztm_store_list(st, snapshot_parts[w->part].kind, NULL, w->after, 1,
                                   on_snapshot_record, &n);
            if (r < 0) {
                api_store_fail(reply, r, "snapshot");
                return r;
            }
            if (n.ret)
                return n.ret;
            w->part++;
            w->after[0] = 0;
            break;
        case W_SYNCED:
            w->state = W_LIVE;
            w->last = w->snapshot_version;
            return control_event(w, ZTM__V1__WATCH_EVENT__TYPE__TYPE_SYNCED, w->snapshot_version,
                                 body, len);
        case W_LIVE:
            if (w->last >= ztm_store_version(st))
                return 0;
            n.ret = 0;
            r = ztm_store_read_events(st, w->last, READ_BATCH, on_live_event, &n);
            if (r == ZTM_STORE_E_COMPACTED) {
                w->state = W_RESET; /* fell behind the feed's retention */
                break;
            }
            if (r < 0) {
                api_store_fail(reply, r, "change feed");
                return r;
            }
            if (n.ret)
                return n.ret;
            break; /* a batch of unfollowed topics: read on */
        }
    }
}

/* ---- events from outside the API ------------------------------------------------------ */

int ztm_api_publish_endpoint(ztm_api_t *api, const char *endpoint_id)
{
    arena_t a;
    arena_init(&a);
    Ztm__V1__Endpoint *ep = api_load_endpoint(api, &a, endpoint_id);
    Ztm__V1__Endpoint key = ZTM__V1__ENDPOINT__INIT;
    ztm_store_event_t ev;
    if (ep) {
        api_event(&a, &ev, ZTM__V1__WATCH_EVENT__TYPE__TYPE_PUT, ZTM__V1__TOPIC__TOPIC_ENDPOINTS,
                  ZTM__V1__WATCH_EVENT__OBJECT_ENDPOINT, ep);
    } else {
        key.id = arena_strdup(&a, endpoint_id);
        api_event(&a, &ev, ZTM__V1__WATCH_EVENT__TYPE__TYPE_DELETE,
                  ZTM__V1__TOPIC__TOPIC_ENDPOINTS, ZTM__V1__WATCH_EVENT__OBJECT_ENDPOINT, &key);
    }
    int r = ztm_store_commit(api->store, NULL, 0, &ev, 1, NULL);
    arena_free(&a);
    return r;
}
