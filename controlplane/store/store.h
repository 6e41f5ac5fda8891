/* The control plane's store: one interface, several backends.
 *
 * Three kinds of state, with different promises:
 *
 *  - Durable records (key → bytes, grouped by kind): the CA, issued
 *    serials, revocations, invites, endpoints, services, policies, hubs.
 *    Written only through ztm_store_commit(): a batch of puts and deletes,
 *    each optionally conditional (create-only or compare-and-swap), applied
 *    all or nothing, durable when the call returns 0.
 *  - A versioned change feed: a commit may append events; each gets the next
 *    version (uint64, strictly increasing, never reused, persisted with the
 *    records in the same atomic write, so an acknowledged change and its
 *    event never part). Watchers read the events after a version and are
 *    told when new ones arrive; the feed keeps the last N events (the
 *    retention) and older resumes get ZTM_STORE_E_COMPACTED (the Watch
 *    service then sends a snapshot).
 *  - Soft state with TTLs (presence, locations, counters): fast, lost on
 *    restart by design, expires on its own.
 *
 * Backends: "embedded" (embedded.c: one file under the state directory,
 * rewritten atomically on every commit; soft state in memory) and, for hub
 * clusters, Redis (to come, on hiredis; it implements store_backend.h):
 * records as keys ztm:MESH:r:KIND:KEY with a sorted-set index per kind for
 * ordered listing, soft state as keys with PEXPIRE, counters with INCRBY,
 * the change feed as a Stream ztm:MESH:feed whose entry IDs are 0-VERSION;
 * a commit is one Lua script (check the conditions, apply, INCR the version,
 * XADD the events, XTRIM to the retention), notifications come from XREAD
 * BLOCK on a second connection whose fd ztm_store_fd() returns. Callers see
 * none of this.
 *
 * Threading: a store belongs to one thread (the control-plane thread);
 * subscribers are called on it. The data plane never calls the store: it
 * receives snapshots built from it.
 *
 * Keys are 1..255 printable ASCII bytes (0x21..0x7e); values at most
 * ZTM_STORE_VALUE_MAX bytes (encoded protobuf messages, usually). */
#ifndef ZTM_CONTROLPLANE_STORE_STORE_H
#define ZTM_CONTROLPLANE_STORE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ztm_store ztm_store_t;

/* Durable record kinds. Numbers are persisted: never renumber. */
typedef enum {
    ZTM_STORE_CA = 1,         /* the mesh CA ("cert", "key"); values wiped when dropped */
    ZTM_STORE_SERIAL = 2,     /* issued certificates, by serial */
    ZTM_STORE_REVOCATION = 3, /* revoked certificates, by serial */
    ZTM_STORE_INVITE = 4,     /* invites, by hex SHA-256 of their secret */
    ZTM_STORE_ENDPOINT = 5,   /* endpoints, by ID */
    ZTM_STORE_SERVICE = 6,    /* services and their exporters, by "PROTO/NAME" */
    ZTM_STORE_POLICY = 7,     /* access and LB policies */
    ZTM_STORE_HUB = 8,        /* hub registrations, by hub ID */
    ZTM_STORE_META = 9,       /* the store's own settings, name indexes */
} ztm_store_kind_t;
#define ZTM_STORE_KIND_MAX 15

/* Soft-state kinds. */
typedef enum {
    ZTM_SOFT_PRESENCE = 1, /* endpoint → its hub and last heartbeat */
    ZTM_SOFT_LOCATION = 2, /* endpoint → hub(s) it is reachable through */
    ZTM_SOFT_COUNTER = 3,  /* LB counters (active connections); ztm_store_counter_add */
    ZTM_SOFT_HUB = 4,      /* hub liveness */
} ztm_soft_kind_t;
#define ZTM_SOFT_KIND_MAX 15

#define ZTM_STORE_KEY_MAX 255
#define ZTM_STORE_VALUE_MAX (1u << 20)
#define ZTM_STORE_DEFAULT_RETENTION 1024 /* events kept for resuming watchers */

/* Errors of this module (below -4095). Others are -errno: -ENOENT (no such
 * record), -EINVAL (bad kind or key), -EMSGSIZE (value too big), -EBUSY
 * (state directory in use by another process), -EIO and friends. */
enum {
    ZTM_STORE_E_CORRUPT = -5301,   /* the state file is torn or damaged: never read as empty */
    ZTM_STORE_E_CONFLICT = -5302,  /* a commit's condition failed; nothing was written */
    ZTM_STORE_E_COMPACTED = -5303, /* events after that version are no longer kept */
    ZTM_STORE_E_FORMAT = -5304,    /* the state file is from a newer ztm */
};

const char *ztm_store_strerror(int err);

/* ---- opening ------------------------------------------------------------------ */

typedef struct {
    const char *dir;        /* embedded: the state directory (created 0700) */
    const char *redis_url;  /* redis://HOST:PORT[/DB]: the Redis backend; NULL: embedded */
    const char *mesh;       /* Redis: the mesh ID, the prefix of every key */
    size_t retention;       /* events kept; 0: ZTM_STORE_DEFAULT_RETENTION */
    /* Monotonic milliseconds for TTLs; NULL: CLOCK_MONOTONIC. For tests. */
    int64_t (*clock_ms)(void *arg);
    void *clock_arg;
} ztm_store_options_t;

/* Opens the store OPTS describe: Redis when redis_url is set (not built
 * yet: -ENOTSUP), else the embedded store in OPTS->dir. What callers use, so
 * that a deployment picks its backend by configuration alone. */
int ztm_store_open(const ztm_store_options_t *opts, ztm_store_t **out);

/* Opens (or creates) the embedded store in OPTS->dir: takes an exclusive
 * lock on the directory (-EBUSY if another process holds it), removes
 * temporary files a crash left, and loads DIR/store.db, checking its
 * structure and checksum: ZTM_STORE_E_CORRUPT for a torn or damaged file
 * (the message names the file; the store refuses to start rather than
 * start empty). A missing file is a new, empty store. */
int ztm_store_open_embedded(const ztm_store_options_t *opts, ztm_store_t **out);

/* Closes the store (nothing is pending: commits are durable on return). */
void ztm_store_close(ztm_store_t *s);

/* "embedded", "redis". */
const char *ztm_store_backend(const ztm_store_t *s);

/* ---- durable records ------------------------------------------------------------ */

typedef enum {
    ZTM_STORE_PUT = 1,
    ZTM_STORE_DEL = 2, /* deleting an absent record is not an error (unless conditioned) */
} ztm_store_op_type_t;

typedef enum {
    ZTM_STORE_IF_ANY = 0,    /* no condition */
    ZTM_STORE_IF_ABSENT = 1, /* the record must not exist (create) */
    ZTM_STORE_IF_EQUAL = 2,  /* the record must exist and equal EXPECT (compare-and-swap) */
    ZTM_STORE_IF_EXISTS = 3, /* the record must exist */
} ztm_store_cond_t;

typedef struct {
    ztm_store_op_type_t type;
    ztm_store_kind_t kind;
    const char *key;
    const void *value; /* PUT */
    size_t len;
    ztm_store_cond_t cond;
    const void *expect; /* IF_EQUAL */
    size_t expect_len;
} ztm_store_op_t;

/* A change-feed event. On commit VERSION is ignored (assigned); read back,
 * it holds the event's version. TOPIC and DATA are the caller's (the Watch
 * service stores ztm.v1.Topic and an encoded ztm.v1.WatchEvent). */
typedef struct {
    uint64_t version;
    uint32_t topic;
    const void *data;
    size_t len;
} ztm_store_event_t;

/* Applies OPS in order and appends EVENTS, all or nothing. Every condition
 * is checked against the state before the commit; if one fails, nothing is
 * written and ZTM_STORE_E_CONFLICT returned. On success the changes are
 * durable, visible to readers, and *VERSION (may be NULL) is the version of
 * the last event appended (the current version when there were none);
 * subscribers are then notified. Returns 0, ZTM_STORE_E_CONFLICT, -EINVAL,
 * -EMSGSIZE, -ENOMEM or an I/O -errno (the store is unchanged then).
 * Inside a group (below) "durable" waits for the group's end. */
int ztm_store_commit(ztm_store_t *s, const ztm_store_op_t *ops, size_t n_ops,
                     const ztm_store_event_t *events, size_t n_events, uint64_t *version);

/* Group commit. Between _begin and _end, commits are checked and applied
 * at once (later commits and reads see them) but made durable together by
 * one write at the end, and subscribers hear of their events only then.
 * For a server that handles every request ready in one turn of its loop and
 * answers them once the group is durable: one fsync for many commits.
 * Groups do not nest (-EBUSY). _end returns 0, or an error after which
 * every commit of the group is undone: answer each of its requests with an
 * error. */
int ztm_store_group_begin(ztm_store_t *s);
int ztm_store_group_end(ztm_store_t *s);

/* Convenience: an unconditional one-record put or delete, no event. */
int ztm_store_put(ztm_store_t *s, ztm_store_kind_t kind, const char *key, const void *value,
                  size_t len);
int ztm_store_del(ztm_store_t *s, ztm_store_kind_t kind, const char *key);

/* Copies a record's value into a new buffer (*VALUE, with a NUL after the
 * last byte; free()). Returns 0, -ENOENT or -ENOMEM. */
int ztm_store_get(ztm_store_t *s, ztm_store_kind_t kind, const char *key, void **value,
                  size_t *len);

/* Calls CB for the records of KIND in key order (bytewise) whose key starts
 * with PREFIX (NULL or "": all) and sorts after AFTER (NULL or "": from the
 * first; for paging), at most LIMIT of them (0: no limit). The pointers are
 * valid during the call only; CB must not modify the store. A non-zero
 * return from CB stops the walk and is returned. Returns 0 otherwise. */
typedef int (*ztm_store_record_cb)(void *arg, const char *key, const void *value, size_t len);
int ztm_store_list(ztm_store_t *s, ztm_store_kind_t kind, const char *prefix, const char *after,
                   size_t limit, ztm_store_record_cb cb, void *arg);

/* ---- the change feed ---------------------------------------------------------------- */

/* The version of the last event (0 before the first). */
uint64_t ztm_store_version(ztm_store_t *s);

/* Calls CB for each event with version > AFTER, in order, at most MAX (0: no
 * limit). ZTM_STORE_E_COMPACTED when some event after AFTER is no longer
 * kept (then nothing is delivered); a non-zero return from CB stops and is
 * returned; 0 otherwise. AFTER beyond the current version delivers nothing. */
typedef int (*ztm_store_event_cb)(void *arg, const ztm_store_event_t *ev);
int ztm_store_read_events(ztm_store_t *s, uint64_t after, size_t max, ztm_store_event_cb cb,
                          void *arg);

/* Subscribers learn that events up to VERSION can be read. Called after
 * each commit that appended events (and, with Redis, when another node's
 * commit arrives, from ztm_store_poll). A subscriber may commit from its
 * callback; notifications for that commit then follow once it returns. */
typedef struct ztm_store_sub ztm_store_sub_t;
typedef void (*ztm_store_notify_cb)(void *arg, uint64_t version);
int ztm_store_subscribe(ztm_store_t *s, ztm_store_notify_cb cb, void *arg, ztm_store_sub_t **out);
/* Removes SUB; safe from inside a notification (its own or another's). */
void ztm_store_unsubscribe(ztm_store_t *s, ztm_store_sub_t *sub);

/* ---- soft state -------------------------------------------------------------------- */

/* Sets a soft entry that disappears TTL_MS milliseconds from now (0: only
 * when deleted or the process ends). Returns 0, -EINVAL, -EMSGSIZE,
 * -ENOMEM. */
int ztm_store_soft_set(ztm_store_t *s, ztm_soft_kind_t kind, const char *key, const void *value,
                       size_t len, int64_t ttl_ms);
/* As ztm_store_get, for a live soft entry; *TTL_MS (may be NULL) receives
 * the milliseconds left (-1: no expiry). */
int ztm_store_soft_get(ztm_store_t *s, ztm_soft_kind_t kind, const char *key, void **value,
                       size_t *len, int64_t *ttl_ms);
int ztm_store_soft_del(ztm_store_t *s, ztm_soft_kind_t kind, const char *key);
/* As ztm_store_list, over live soft entries. */
int ztm_store_soft_list(ztm_store_t *s, ztm_soft_kind_t kind, const char *prefix,
                        ztm_store_record_cb cb, void *arg);

/* Adds DELTA to the counter KEY (created at 0) in ZTM_SOFT_COUNTER and
 * stores the result in *VALUE (may be NULL); TTL_MS > 0 resets its expiry,
 * 0 leaves it. Returns 0, -EINVAL or -ENOMEM. */
int ztm_store_counter_add(ztm_store_t *s, const char *key, int64_t delta, int64_t ttl_ms,
                          int64_t *value);

/* ---- driving ------------------------------------------------------------------------- */

/* A file descriptor the control loop should watch for readability and then
 * call ztm_store_poll(), or -1 when the backend needs none (embedded). */
int ztm_store_fd(ztm_store_t *s);

/* Expires soft state and, for networked backends, takes in changes made by
 * other nodes and notifies subscribers. Call when ztm_store_fd() is
 * readable and on a timer (a second is fine). Returns 0 or -errno. */
int ztm_store_poll(ztm_store_t *s);

#endif
