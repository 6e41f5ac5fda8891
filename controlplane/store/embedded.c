/* The embedded store backend: durable records and the recent change feed in
 * one file, DIR/store.db, rewritten whole and atomically on every commit
 * (temporary file, fsync, rename, fsync of the directory); soft state in
 * memory. An exclusive flock on DIR/store.lock keeps a second process out.
 *
 * Commits are applied to memory first with an undo log, then the new file
 * is written; if writing fails the undo log restores memory, so memory and
 * file never disagree. A crash at any instant leaves either the previous
 * file or the new one (rename is atomic), and a commit is acknowledged only
 * after the directory fsync, so nothing acknowledged is ever lost.
 *
 * File format (integers little-endian):
 *   header   "ZTMSTORE" u32 format(1) u32 flags(0) u64 version
 *            u32 record count  u32 event count
 *   records  u8 kind  u8 key length  u32 value length  key  value
 *            (sorted by kind, then key bytes; no duplicates)
 *   events   u64 version  u32 topic  u32 length  data
 *            (consecutive versions ending at the header's version)
 *   trailer  u32 CRC-32C of everything before it
 * A file that fails any check is reported as corrupt, never read as empty.
 *
 * The whole-file rewrite costs O(state) per commit; the control plane
 * batches concurrent writes into one commit where it can. Hub clusters with
 * large states use the Redis backend. */
#include "controlplane/store/store_backend.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

#include "controlplane/store/file.h"
#include "dataplane/runtime/log.h"

#define STORE_FILE "store.db"
#define LOCK_FILE "store.lock"
#define TMP_PREFIX "store.db.tmp."
#define MAGIC "ZTMSTORE"
#define FORMAT 1
#define HEADER_LEN 32
#define MAX_FILE (1ull << 30)

/* One record, durable or soft: key and value live in the same allocation. */
typedef struct {
    uint8_t kind;
    uint8_t key_len;
    uint32_t len;
    int64_t expires; /* soft: monotonic ms, 0 = never */
    uint8_t *value;  /* points into data, after the key's NUL; NUL-terminated too */
    char key[];      /* NUL-terminated */
} rec_t;

/* Records sorted by (kind, key bytes). */
typedef struct {
    rec_t **v;
    size_t n, cap;
} table_t;

typedef struct {
    uint64_t version;
    uint32_t topic;
    uint32_t len;
    uint8_t data[];
} ev_t;

/* What one applied op did: enough to undo it, and to free what it replaced
 * once durable. Records carry their own key, so no op is needed. */
typedef struct {
    rec_t *old; /* the record it replaced or deleted (NULL: none) */
    rec_t *new; /* the record it put (NULL: a delete) */
} undo_t;

typedef struct {
    ztm_store_t base;
    char *dir;
    char *path;
    int lock_fd;
    table_t recs;
    table_t soft;
    ev_t **evs; /* retained events, oldest first, consecutive versions */
    size_t n_evs, cap_evs;
    uint64_t version;
    size_t retention;
    int64_t (*clock_ms)(void *arg);
    void *clock_arg;
    uint8_t *buf; /* serialisation buffer, kept between commits */
    size_t buf_cap;
    undo_t *undo; /* applied ops not yet durable (one commit, or a group) */
    size_t n_undo, cap_undo;
    bool group;           /* inside ztm_store_group_begin/end */
    size_t group_evs;     /* n_evs when the group began */
    uint64_t group_version;
} emb_t;

static emb_t *emb(ztm_store_t *s)
{
    return (emb_t *)s;
}

/* ---- CRC-32C (Castagnoli) ----------------------------------------------------
 * The whole file is checksummed on every commit, so this is on the write
 * path: the SSE4.2 instruction where the CPU has it (8 bytes a step), a
 * table otherwise. Both give the same value. */

static uint32_t crc_table[256];
static bool crc_hw;

static void crc_init(void)
{
    if (crc_table[1])
        return;
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
        crc_table[i] = c;
    }
#if defined(__x86_64__)
    crc_hw = __builtin_cpu_supports("sse4.2");
#endif
}

static uint32_t crc32c_sw(uint32_t c, const uint8_t *p, size_t n)
{
    while (n--)
        c = crc_table[(c ^ *p++) & 0xff] ^ (c >> 8);
    return c;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t crc32c_hw(uint32_t c, const uint8_t *p, size_t n)
{
    uint64_t c64 = c;
    for (; n >= 8; n -= 8, p += 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c64 = __builtin_ia32_crc32di(c64, v);
    }
    c = (uint32_t)c64;
    for (; n; n--)
        c = __builtin_ia32_crc32qi(c, *p++);
    return c;
}
#endif

static uint32_t crc32c(const uint8_t *p, size_t n)
{
    uint32_t c = 0xffffffffu;
#if defined(__x86_64__)
    if (crc_hw)
        return crc32c_hw(c, p, n) ^ 0xffffffffu;
#endif
    return crc32c_sw(c, p, n) ^ 0xffffffffu;
}

/* ---- records and tables ------------------------------------------------------ */

static rec_t *rec_new(uint8_t kind, const char *key, const void *value, size_t len)
{
    size_t klen = strlen(key);
    rec_t *r = malloc(sizeof(*r) + klen + 1 + len + 1);
    if (!r)
        return NULL;
    r->kind = kind;
    r->key_len = (uint8_t)klen;
    r->len = (uint32_t)len;
    r->expires = 0;
    memcpy(r->key, key, klen + 1);
    r->value = (uint8_t *)r->key + klen + 1;
    if (len)
        memcpy(r->value, value, len);
    r->value[len] = 0;
    return r;
}

static void rec_free(rec_t *r)
{
    if (!r)
        return;
    if (r->kind == ZTM_STORE_CA) /* the CA's key: wipe it */
        explicit_bzero(r->value, r->len);
    free(r);
}

static int rec_cmp(uint8_t kind, const char *key, size_t klen, const rec_t *r)
{
    if (kind != r->kind)
        return kind < r->kind ? -1 : 1;
    size_t n = klen < r->key_len ? klen : r->key_len;
    int c = memcmp(key, r->key, n);
    if (c)
        return c;
    return klen < r->key_len ? -1 : klen > r->key_len;
}

/* The index of the first record >= (kind, key); *FOUND when equal. */
static size_t table_find(const table_t *t, uint8_t kind, const char *key, bool *found)
{
    size_t klen = strlen(key), lo = 0, hi = t->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (rec_cmp(kind, key, klen, t->v[mid]) > 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = lo < t->n && rec_cmp(kind, key, klen, t->v[lo]) == 0;
    return lo;
}

static int table_reserve(table_t *t, size_t extra)
{
    if (t->n + extra <= t->cap)
        return 0;
    size_t cap = t->cap ? t->cap * 2 : 64;
    while (cap < t->n + extra)
        cap *= 2;
    rec_t **v = realloc(t->v, cap * sizeof(*v));
    if (!v)
        return -ENOMEM;
    t->v = v;
    t->cap = cap;
    return 0;
}

/* Needs room (table_reserve) beforehand: cannot fail. */
static void table_insert(table_t *t, size_t idx, rec_t *r)
{
    memmove(t->v + idx + 1, t->v + idx, (t->n - idx) * sizeof(*t->v));
    t->v[idx] = r;
    t->n++;
}

static void table_remove(table_t *t, size_t idx)
{
    memmove(t->v + idx, t->v + idx + 1, (t->n - idx - 1) * sizeof(*t->v));
    t->n--;
}

static void table_free(table_t *t)
{
    for (size_t i = 0; i < t->n; i++)
        rec_free(t->v[i]);
    free(t->v);
    memset(t, 0, sizeof(*t));
}

static int copy_out(const rec_t *r, void **value, size_t *len)
{
    uint8_t *buf = malloc(r->len + 1);
    if (!buf)
        return -ENOMEM;
    memcpy(buf, r->value, r->len + 1);
    *value = buf;
    if (len)
        *len = r->len;
    return 0;
}

/* Walks TABLE's records of KIND whose key starts with PREFIX and is > AFTER. */
static int table_walk(const table_t *t, uint8_t kind, const char *prefix, const char *after,
                      size_t limit, int64_t now, ztm_store_record_cb cb, void *arg)
{
    bool found;
    size_t plen = strlen(prefix);
    size_t i = table_find(t, kind, strcmp(after, prefix) > 0 ? after : prefix, &found);
    if (found && after[0] && strcmp(t->v[i]->key, after) == 0)
        i++;
    for (size_t seen = 0; i < t->n; i++) {
        const rec_t *r = t->v[i];
        if (r->kind != kind || strncmp(r->key, prefix, plen) != 0)
            break;
        if (r->expires && r->expires <= now)
            continue;
        int ret = cb(arg, r->key, r->value, r->len);
        if (ret)
            return ret;
        if (limit && ++seen == limit)
            break;
    }
    return 0;
}

/* ---- serialisation ------------------------------------------------------------ */

static void put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static void put_u64(uint8_t *p, uint64_t v)
{
    put_u32(p, (uint32_t)v);
    put_u32(p + 4, (uint32_t)(v >> 32));
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get_u64(const uint8_t *p)
{
    return (uint64_t)get_u32(p) | (uint64_t)get_u32(p + 4) << 32;
}

/* Writes the state (skipping the first SKIP events) to the store's file. */
static int save(emb_t *e, uint64_t version, size_t skip)
{
    size_t size = HEADER_LEN + 4;
    for (size_t i = 0; i < e->recs.n; i++)
        size += 6 + e->recs.v[i]->key_len + e->recs.v[i]->len;
    for (size_t i = skip; i < e->n_evs; i++)
        size += 16 + e->evs[i]->len;
    if (size > MAX_FILE)
        return -EFBIG;
    if (size > e->buf_cap) {
        free(e->buf);
        e->buf_cap = 0;
        size_t cap = size + size / 4 + 4096;
        if (!(e->buf = malloc(cap)))
            return -ENOMEM;
        e->buf_cap = cap;
    }
    uint8_t *p = e->buf;
    memcpy(p, MAGIC, 8);
    put_u32(p + 8, FORMAT);
    put_u32(p + 12, 0);
    put_u64(p + 16, version);
    put_u32(p + 24, (uint32_t)e->recs.n);
    put_u32(p + 28, (uint32_t)(e->n_evs - skip));
    p += HEADER_LEN;
    size_t secret_from = 0, secret_to = 0; /* the CA records (sorted first: kind 1) */
    for (size_t i = 0; i < e->recs.n; i++) {
        const rec_t *r = e->recs.v[i];
        if (r->kind == ZTM_STORE_CA)
            secret_to = (size_t)(p - e->buf) + 6 + r->key_len + r->len;
        p[0] = r->kind;
        p[1] = r->key_len;
        put_u32(p + 2, r->len);
        memcpy(p + 6, r->key, r->key_len);
        memcpy(p + 6 + r->key_len, r->value, r->len);
        p += 6 + r->key_len + r->len;
    }
    for (size_t i = skip; i < e->n_evs; i++) {
        const ev_t *ev = e->evs[i];
        put_u64(p, ev->version);
        put_u32(p + 8, ev->topic);
        put_u32(p + 12, ev->len);
        memcpy(p + 16, ev->data, ev->len);
        p += 16 + ev->len;
    }
    put_u32(p, crc32c(e->buf, (size_t)(p - e->buf)));
    int ret = ztm_file_write_atomic(e->path, e->buf, size, 0600);
    /* The buffer held the CA key: do not leave it lying around. */
    if (secret_to)
        explicit_bzero(e->buf + secret_from, secret_to - secret_from);
    return ret;
}

static int corrupt(const emb_t *e, const char *why, size_t offset)
{
    ztm_log(ZTM_LOG_ERROR, "store.corrupt", "path=\"%s\" reason=\"%s\" offset=%zu", e->path, why,
            offset);
    return ZTM_STORE_E_CORRUPT;
}

static bool key_bytes_ok(const uint8_t *k, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if (k[i] < 0x21 || k[i] > 0x7e)
            return false;
    return true;
}

/* Parses a whole file into E (empty before). */
static int load(emb_t *e, const uint8_t *buf, size_t size)
{
    if (size < HEADER_LEN + 4)
        return corrupt(e, "shorter than a header", size);
    if (memcmp(buf, MAGIC, 8) != 0)
        return corrupt(e, "not a ztm store file", 0);
    uint32_t format = get_u32(buf + 8);
    if (format > FORMAT) {
        ztm_log(ZTM_LOG_ERROR, "store.format", "path=\"%s\" format=%u supported=%d", e->path,
                format, FORMAT);
        return ZTM_STORE_E_FORMAT;
    }
    if (format != FORMAT || get_u32(buf + 12) != 0)
        return corrupt(e, "bad header", 8);
    if (crc32c(buf, size - 4) != get_u32(buf + size - 4))
        return corrupt(e, "checksum mismatch", size - 4);
    uint64_t version = get_u64(buf + 16);
    uint32_t n_recs = get_u32(buf + 24), n_evs = get_u32(buf + 28);
    const uint8_t *p = buf + HEADER_LEN, *end = buf + size - 4;
    int ret;

#define NEED(n, what)                                                                  \
    do {                                                                               \
        if ((size_t)(end - p) < (size_t)(n))                                           \
            return corrupt(e, what, (size_t)(p - buf));                                \
    } while (0)

    /* The counts are bounded by the bytes present, so these never explode. */
    if (n_recs > (size_t)(end - p) / 6 || n_evs > (size_t)(end - p) / 16)
        return corrupt(e, "counts exceed the file", 24);
    if ((ret = table_reserve(&e->recs, n_recs)) < 0)
        return ret;
    for (uint32_t i = 0; i < n_recs; i++) {
        NEED(6, "record header cut");
        uint8_t kind = p[0], klen = p[1];
        uint32_t len = get_u32(p + 2);
        p += 6;
        NEED((size_t)klen + len, "record cut");
        if (kind < 1 || kind > ZTM_STORE_KIND_MAX || !key_bytes_ok(p, klen) ||
            len > ZTM_STORE_VALUE_MAX)
            return corrupt(e, "bad record", (size_t)(p - buf));
        char key[ZTM_STORE_KEY_MAX + 1];
        memcpy(key, p, klen);
        key[klen] = 0;
        if (e->recs.n && rec_cmp(kind, key, klen, e->recs.v[e->recs.n - 1]) <= 0)
            return corrupt(e, "records out of order", (size_t)(p - buf));
        rec_t *r = rec_new(kind, key, p + klen, len);
        if (!r)
            return -ENOMEM;
        e->recs.v[e->recs.n++] = r;
        p += klen + len;
    }
    if (n_evs) {
        e->evs = malloc(n_evs * sizeof(*e->evs));
        if (!e->evs)
            return -ENOMEM;
        e->cap_evs = n_evs;
    }
    for (uint32_t i = 0; i < n_evs; i++) {
        NEED(16, "event header cut");
        uint64_t v = get_u64(p);
        uint32_t topic = get_u32(p + 8), len = get_u32(p + 12);
        p += 16;
        NEED(len, "event cut");
        if (len > ZTM_STORE_VALUE_MAX || v != version - (n_evs - 1 - i) || v == 0)
            return corrupt(e, "bad event", (size_t)(p - buf));
        ev_t *ev = malloc(sizeof(*ev) + len);
        if (!ev)
            return -ENOMEM;
        ev->version = v;
        ev->topic = topic;
        ev->len = len;
        memcpy(ev->data, p, len);
        e->evs[e->n_evs++] = ev;
        p += len;
    }
#undef NEED
    if (p != end)
        return corrupt(e, "trailing bytes", (size_t)(p - buf));
    e->version = version;
    return 0;
}

/* ---- the backend ------------------------------------------------------------------ */

static int64_t mono_ms(void *arg)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t now_ms(emb_t *e)
{
    return e->clock_ms(e->clock_arg);
}

static void free_events(emb_t *e, size_t from, size_t to)
{
    for (size_t i = from; i < to; i++)
        free(e->evs[i]);
}

static void rollback(emb_t *e, size_t mark);

static void emb_close(ztm_store_t *s)
{
    emb_t *e = emb(s);
    ztm_store_base_fini(s);
    rollback(e, 0); /* a group never ended: its changes were never durable */
    table_free(&e->recs);
    table_free(&e->soft);
    free_events(e, 0, e->n_evs);
    free(e->evs);
    free(e->buf);
    free(e->undo);
    if (e->lock_fd >= 0)
        close(e->lock_fd); /* releases the flock */
    free(e->dir);
    free(e->path);
    free(e);
}

static int undo_reserve(emb_t *e, size_t extra)
{
    if (e->n_undo + extra <= e->cap_undo)
        return 0;
    size_t cap = e->cap_undo ? e->cap_undo * 2 : 64;
    while (cap < e->n_undo + extra)
        cap *= 2;
    undo_t *u = realloc(e->undo, cap * sizeof(*u));
    if (!u)
        return -ENOMEM;
    e->undo = u;
    e->cap_undo = cap;
    return 0;
}

/* Undoes the applied ops from the newest back to index MARK, freeing the
 * records they put. */
static void rollback(emb_t *e, size_t mark)
{
    while (e->n_undo > mark) {
        undo_t *u = &e->undo[--e->n_undo];
        const rec_t *k = u->new ? u->new : u->old;
        if (!k)
            continue;
        bool found;
        size_t idx = table_find(&e->recs, k->kind, k->key, &found);
        if (u->new && u->old)
            e->recs.v[idx] = u->old;
        else if (u->new)
            table_remove(&e->recs, idx);
        else
            table_insert(&e->recs, idx, u->old); /* room: the delete made it */
        rec_free(u->new);
    }
}

/* Forgets the undo entries from MARK on, freeing what they replaced. */
static void settle(emb_t *e, size_t mark)
{
    for (size_t i = mark; i < e->n_undo; i++)
        rec_free(e->undo[i].old);
    e->n_undo = mark;
}

/* Writes the file for the current state; on success drops the events past
 * the retention and settles undo entries from MARK; on failure rolls back
 * to MARK and drops the events after EVS_MARK, restoring VERSION_MARK. */
static int make_durable(emb_t *e, size_t mark, size_t evs_mark, uint64_t version_mark)
{
    size_t drop = e->n_evs > e->retention ? e->n_evs - e->retention : 0;
    int ret = save(e, e->version, drop);
    if (ret < 0) {
        ztm_log(ZTM_LOG_ERROR, "store.commit_failed", "path=\"%s\" error=\"%s\"", e->path,
                ztm_store_strerror(ret));
        rollback(e, mark);
        free_events(e, evs_mark, e->n_evs);
        e->n_evs = evs_mark;
        e->version = version_mark;
        return ret;
    }
    settle(e, mark);
    if (drop) {
        free_events(e, 0, drop);
        memmove(e->evs, e->evs + drop, (e->n_evs - drop) * sizeof(*e->evs));
        e->n_evs -= drop;
    }
    return 0;
}

static bool cond_holds(const ztm_store_op_t *op, const rec_t *cur)
{
    switch (op->cond) {
    case ZTM_STORE_IF_ANY:
        return true;
    case ZTM_STORE_IF_ABSENT:
        return cur == NULL;
    case ZTM_STORE_IF_EXISTS:
        return cur != NULL;
    case ZTM_STORE_IF_EQUAL:
        return cur && cur->len == op->expect_len &&
               (op->expect_len == 0 || memcmp(cur->value, op->expect, op->expect_len) == 0);
    }
    return false;
}

static int emb_commit(ztm_store_t *s, const ztm_store_op_t *ops, size_t n_ops,
                      const ztm_store_event_t *events, size_t n_events, uint64_t *version)
{
    emb_t *e = emb(s);
    int ret = 0;
    size_t n_new_evs = 0, mark = e->n_undo;

    /* 1. conditions, against the state before the commit */
    for (size_t i = 0; i < n_ops; i++) {
        bool found;
        size_t idx = table_find(&e->recs, (uint8_t)ops[i].kind, ops[i].key, &found);
        if (!cond_holds(&ops[i], found ? e->recs.v[idx] : NULL))
            return ZTM_STORE_E_CONFLICT;
    }
    if (n_ops == 0 && n_events == 0) {
        *version = e->version;
        return 0;
    }

    /* 2. everything that can fail to allocate, before any change */
    if ((ret = table_reserve(&e->recs, n_ops)) < 0 || (ret = undo_reserve(e, n_ops)) < 0)
        return ret;
    if (e->n_evs + n_events > e->cap_evs) {
        size_t cap = e->cap_evs ? e->cap_evs : 64;
        while (cap < e->n_evs + n_events)
            cap *= 2;
        ev_t **v = realloc(e->evs, cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        e->evs = v;
        e->cap_evs = cap;
    }
    undo_t *u = e->undo ? e->undo + mark : NULL; /* NULL: no ops so far, and none here */
    for (size_t i = 0; i < n_ops; i++) {
        u[i].old = NULL;
        u[i].new = NULL;
        if (ops[i].type == ZTM_STORE_PUT &&
            !(u[i].new = rec_new((uint8_t)ops[i].kind, ops[i].key, ops[i].value, ops[i].len))) {
            ret = -ENOMEM;
            goto fail;
        }
    }
    for (; n_new_evs < n_events; n_new_evs++) {
        const ztm_store_event_t *src = &events[n_new_evs];
        ev_t *ev = malloc(sizeof(*ev) + src->len);
        if (!ev) {
            ret = -ENOMEM;
            goto fail;
        }
        ev->version = e->version + 1 + n_new_evs;
        ev->topic = src->topic;
        ev->len = (uint32_t)src->len;
        if (src->len)
            memcpy(ev->data, src->data, src->len);
        e->evs[e->n_evs + n_new_evs] = ev;
    }

    /* 3. apply in memory, logging how to undo */
    for (size_t i = 0; i < n_ops; i++) {
        const ztm_store_op_t *op = &ops[i];
        bool found;
        size_t idx = table_find(&e->recs, (uint8_t)op->kind, op->key, &found);
        u[i].old = found ? e->recs.v[idx] : NULL;
        if (op->type == ZTM_STORE_PUT) {
            if (found)
                e->recs.v[idx] = u[i].new;
            else
                table_insert(&e->recs, idx, u[i].new);
        } else if (found) {
            table_remove(&e->recs, idx);
        }
    }
    e->n_undo = mark + n_ops;
    size_t evs_mark = e->n_evs;
    uint64_t version_mark = e->version;
    e->n_evs += n_events;
    e->version += n_events;
    *version = e->version;

    /* 4. durable now, or at the end of the group */
    if (e->group)
        return 0;
    return make_durable(e, mark, evs_mark, version_mark);

fail:
    for (size_t i = 0; i < n_ops; i++)
        rec_free(u[i].new);
    free_events(e, e->n_evs, e->n_evs + n_new_evs);
    return ret;
}

static int emb_group_begin(ztm_store_t *s)
{
    emb_t *e = emb(s);
    e->group = true;
    e->group_evs = e->n_evs;
    e->group_version = e->version;
    return 0;
}

static int emb_group_end(ztm_store_t *s)
{
    emb_t *e = emb(s);
    e->group = false;
    if (e->n_undo == 0 && e->n_evs == e->group_evs)
        return 0; /* nothing changed */
    return make_durable(e, 0, e->group_evs, e->group_version);
}

static int emb_get(ztm_store_t *s, ztm_store_kind_t kind, const char *key, void **value,
                   size_t *len)
{
    emb_t *e = emb(s);
    bool found;
    size_t idx = table_find(&e->recs, (uint8_t)kind, key, &found);
    return found ? copy_out(e->recs.v[idx], value, len) : -ENOENT;
}

static int emb_list(ztm_store_t *s, ztm_store_kind_t kind, const char *prefix, const char *after,
                    size_t limit, ztm_store_record_cb cb, void *arg)
{
    return table_walk(&emb(s)->recs, (uint8_t)kind, prefix, after, limit, 0, cb, arg);
}

static uint64_t emb_version(ztm_store_t *s)
{
    return emb(s)->version;
}

static int emb_read_events(ztm_store_t *s, uint64_t after, size_t max, ztm_store_event_cb cb,
                           void *arg)
{
    emb_t *e = emb(s);
    if (after >= e->version)
        return 0;
    if (e->n_evs == 0 || after + 1 < e->evs[0]->version)
        return ZTM_STORE_E_COMPACTED;
    size_t start = (size_t)(after + 1 - e->evs[0]->version);
    for (size_t i = start, n = 0; i < e->n_evs && (!max || n < max); i++, n++) {
        const ev_t *ev = e->evs[i];
        ztm_store_event_t out = {ev->version, ev->topic, ev->data, ev->len};
        int ret = cb(arg, &out);
        if (ret)
            return ret;
    }
    return 0;
}

/* The live soft entry for (KIND, KEY), dropping it if it expired. */
static rec_t *soft_find(emb_t *e, uint8_t kind, const char *key, size_t *idx_out)
{
    bool found;
    size_t idx = table_find(&e->soft, kind, key, &found);
    if (!found)
        return NULL;
    rec_t *r = e->soft.v[idx];
    if (r->expires && r->expires <= now_ms(e)) {
        table_remove(&e->soft, idx);
        rec_free(r);
        return NULL;
    }
    if (idx_out)
        *idx_out = idx;
    return r;
}

static int soft_put(emb_t *e, uint8_t kind, const char *key, const void *value, size_t len,
                    int64_t expires)
{
    rec_t *r = rec_new(kind, key, value, len);
    if (!r || table_reserve(&e->soft, 1) < 0) {
        free(r);
        return -ENOMEM;
    }
    r->expires = expires;
    bool found;
    size_t idx = table_find(&e->soft, kind, key, &found);
    if (found) {
        rec_free(e->soft.v[idx]);
        e->soft.v[idx] = r;
    } else {
        table_insert(&e->soft, idx, r);
    }
    return 0;
}

static int emb_soft_set(ztm_store_t *s, ztm_soft_kind_t kind, const char *key, const void *value,
                        size_t len, int64_t ttl_ms)
{
    emb_t *e = emb(s);
    return soft_put(e, (uint8_t)kind, key, value, len, ttl_ms ? now_ms(e) + ttl_ms : 0);
}

static int emb_soft_get(ztm_store_t *s, ztm_soft_kind_t kind, const char *key, void **value,
                        size_t *len, int64_t *ttl_ms)
{
    emb_t *e = emb(s);
    rec_t *r = soft_find(e, (uint8_t)kind, key, NULL);
    if (!r)
        return -ENOENT;
    if (ttl_ms)
        *ttl_ms = r->expires ? r->expires - now_ms(e) : -1;
    return copy_out(r, value, len);
}

static int emb_soft_del(ztm_store_t *s, ztm_soft_kind_t kind, const char *key)
{
    emb_t *e = emb(s);
    size_t idx;
    rec_t *r = soft_find(e, (uint8_t)kind, key, &idx);
    if (r) {
        table_remove(&e->soft, idx);
        rec_free(r);
    }
    return 0;
}

static int emb_soft_list(ztm_store_t *s, ztm_soft_kind_t kind, const char *prefix,
                         ztm_store_record_cb cb, void *arg)
{
    emb_t *e = emb(s);
    return table_walk(&e->soft, (uint8_t)kind, prefix, "", 0, now_ms(e), cb, arg);
}

/* Counters are decimal text, as Redis keeps INCRBY values. */
static int emb_counter_add(ztm_store_t *s, const char *key, int64_t delta, int64_t ttl_ms,
                           int64_t *value)
{
    emb_t *e = emb(s);
    rec_t *r = soft_find(e, ZTM_SOFT_COUNTER, key, NULL);
    int64_t cur = 0, expires = 0;
    if (r) {
        char *end;
        errno = 0;
        long long v = strtoll((const char *)r->value, &end, 10);
        if (errno || end == (const char *)r->value || *end)
            return -EINVAL; /* not a counter */
        cur = v;
        expires = r->expires;
    }
    if ((delta > 0 && cur > INT64_MAX - delta) || (delta < 0 && cur < INT64_MIN - delta))
        return -ERANGE;
    cur += delta;
    if (ttl_ms)
        expires = now_ms(e) + ttl_ms;
    char text[24];
    int n = snprintf(text, sizeof(text), "%lld", (long long)cur);
    int ret = soft_put(e, ZTM_SOFT_COUNTER, key, text, (size_t)n, expires);
    if (ret == 0 && value)
        *value = cur;
    return ret;
}

static int emb_fd(ztm_store_t *s)
{
    return -1;
}

static int emb_poll(ztm_store_t *s)
{
    emb_t *e = emb(s);
    int64_t now = now_ms(e);
    size_t w = 0;
    for (size_t i = 0; i < e->soft.n; i++) {
        rec_t *r = e->soft.v[i];
        if (r->expires && r->expires <= now)
            rec_free(r);
        else
            e->soft.v[w++] = r;
    }
    e->soft.n = w;
    return 0;
}

static const ztm_store_ops_t emb_ops = {
    .name = "embedded",
    .close = emb_close,
    .commit = emb_commit,
    .group_begin = emb_group_begin,
    .group_end = emb_group_end,
    .get = emb_get,
    .list = emb_list,
    .version = emb_version,
    .read_events = emb_read_events,
    .soft_set = emb_soft_set,
    .soft_get = emb_soft_get,
    .soft_del = emb_soft_del,
    .soft_list = emb_soft_list,
    .counter_add = emb_counter_add,
    .fd = emb_fd,
    .poll = emb_poll,
};

/* Removes temporary files a crash left between write and rename. */
static void remove_stale_temps(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (strncmp(de->d_name, TMP_PREFIX, sizeof(TMP_PREFIX) - 1) == 0 &&
            unlinkat(dirfd(d), de->d_name, 0) == 0)
            ztm_log(ZTM_LOG_INFO, "store.stale_temp_removed", "dir=\"%s\" file=%s", dir,
                    de->d_name);
    }
    closedir(d);
}

static char *path_join(const char *dir, const char *file)
{
    size_t n = strlen(dir) + 1 + strlen(file) + 1;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s", dir, file);
    return p;
}

int ztm_store_open_embedded(const ztm_store_options_t *opts, ztm_store_t **out)
{
    if (!opts || !opts->dir || !opts->dir[0])
        return -EINVAL;
    crc_init();
    int ret;
    char *lock_path = NULL;
    void *data = NULL;
    size_t size = 0;
    emb_t *e = calloc(1, sizeof(*e));
    if (!e)
        return -ENOMEM;
    ztm_store_base_init(&e->base, &emb_ops);
    e->lock_fd = -1;
    e->retention = opts->retention ? opts->retention : ZTM_STORE_DEFAULT_RETENTION;
    e->clock_ms = opts->clock_ms ? opts->clock_ms : mono_ms;
    e->clock_arg = opts->clock_arg;
    if (!(e->dir = strdup(opts->dir)) || !(e->path = path_join(opts->dir, STORE_FILE)) ||
        !(lock_path = path_join(opts->dir, LOCK_FILE))) {
        ret = -ENOMEM;
        goto fail;
    }
    if ((ret = ztm_file_mkdirs(opts->dir, 0700)) < 0)
        goto fail;
    e->lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (e->lock_fd < 0) {
        ret = -errno;
        goto fail;
    }
    if (flock(e->lock_fd, LOCK_EX | LOCK_NB) < 0) {
        ret = errno == EWOULDBLOCK ? -EBUSY : -errno;
        goto fail;
    }
    remove_stale_temps(opts->dir);
    ret = ztm_file_read(e->path, MAX_FILE, &data, &size);
    if (ret == -ENOENT) {
        ret = 0; /* a new store */
    } else if (ret == 0) {
        ret = load(e, data, size);
        explicit_bzero(data, size); /* it held the CA key */
    }
    if (ret < 0)
        goto fail;
    free(data);
    free(lock_path);
    *out = &e->base;
    return 0;

fail:
    if (ret == -EFBIG)
        ret = corrupt(e, "larger than any store file", MAX_FILE);
    free(data);
    free(lock_path);
    emb_close(&e->base);
    return ret;
}
