/* Host names resolved off the worker thread; see resolver.h.
 *
 * The worker and the helper thread share only `shared_t`, under its mutex:
 * the jobs to do, the jobs done, and whether the worker has gone. A job
 * belongs to the queue it is on (the thread's while it runs it); the worker
 * frees the jobs it takes back, the last of the two to leave frees the rest.
 * The thread is detached: a lookup DNS keeps waiting on never holds up the
 * worker's end. */
#include "dataplane/runtime/resolver.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "dataplane/runtime/log.h"

#define CACHE_MAX     64
#define POLL_FIRST_NS (1 * ZTM_NS_PER_MS)
#define POLL_MAX_NS   (25 * ZTM_NS_PER_MS)

struct ztm_resolve_job {
    ztm_resolve_job_t *next;
    char host[ZTM_HOST_MAX + 1];
    unsigned port;
    /* the answer, written by the thread before the job moves to done */
    int err;
    const char *why;
    ztm_addr_t addr;
    /* the worker's */
    ztm_resolve_cb cb; /* NULL: nobody waits (cancelled, or a refresh) */
    void *arg;
};

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    ztm_resolve_job_t *todo_head, *todo_tail, *done_head, *done_tail;
    bool closing, thread_started;
    unsigned refs; /* the worker's, the thread's */
    ztm_resolve_fn fn;
} shared_t;

typedef struct {
    char host[ZTM_HOST_MAX + 1];
    int err;
    const char *why;
    ztm_addr_t addr; /* port 0 */
    uint64_t at;     /* when the answer came */
    bool refreshing;
    bool used;
} entry_t;

struct ztm_resolver {
    ztm_worker_t *w;
    shared_t *sh;
    unsigned pending;
    uint64_t poll_ns;
    ztm_timer_t poll;
    entry_t cache[CACHE_MAX];
};

/* ---- the helper thread --------------------------------------------------- */
static void jobs_free(ztm_resolve_job_t *j)
{
    for (ztm_resolve_job_t *next; j; j = next) {
        next = j->next;
        free(j);
    }
}

static void shared_put_locked(shared_t *sh)
{
    if (--sh->refs > 0) {
        pthread_mutex_unlock(&sh->mu);
        return;
    }
    jobs_free(sh->todo_head);
    jobs_free(sh->done_head);
    pthread_mutex_unlock(&sh->mu);
    pthread_mutex_destroy(&sh->mu);
    pthread_cond_destroy(&sh->cv);
    free(sh);
}

static void *resolver_main(void *p)
{
    shared_t *sh = p;
    pthread_mutex_lock(&sh->mu);
    for (;;) {
        while (!sh->closing && !sh->todo_head)
            pthread_cond_wait(&sh->cv, &sh->mu);
        if (sh->closing)
            break;
        ztm_resolve_job_t *j = sh->todo_head;
        sh->todo_head = j->next;
        if (!sh->todo_head)
            sh->todo_tail = NULL;
        ztm_resolve_fn fn = sh->fn;
        pthread_mutex_unlock(&sh->mu);

        j->why = NULL;
        j->err = fn(j->host, &j->addr, &j->why);
        if (j->err < 0 && !j->why)
            j->why = "cannot resolve host name";

        pthread_mutex_lock(&sh->mu);
        j->next = NULL;
        if (sh->done_tail)
            sh->done_tail->next = j;
        else
            sh->done_head = j;
        sh->done_tail = j;
    }
    shared_put_locked(sh); /* unlocks */
    return NULL;
}

/* ---- the cache ----------------------------------------------------------- */
static entry_t *cache_find(ztm_resolver_t *r, const char *host)
{
    for (unsigned i = 0; i < CACHE_MAX; i++)
        if (r->cache[i].used && strcmp(r->cache[i].host, host) == 0)
            return &r->cache[i];
    return NULL;
}

static entry_t *cache_slot(ztm_resolver_t *r, const char *host)
{
    entry_t *e = cache_find(r, host), *oldest = NULL;
    if (e)
        return e;
    for (unsigned i = 0; i < CACHE_MAX; i++) {
        e = &r->cache[i];
        if (!e->used)
            return e;
        if (!e->refreshing && (!oldest || e->at < oldest->at))
            oldest = e;
    }
    return oldest ? oldest : &r->cache[0];
}

/* ---- the worker's side --------------------------------------------------- */
static void deliver(ztm_resolver_t *r)
{
    shared_t *sh = r->sh;
    pthread_mutex_lock(&sh->mu);
    ztm_resolve_job_t *j = sh->done_head;
    sh->done_head = sh->done_tail = NULL;
    pthread_mutex_unlock(&sh->mu);
    uint64_t now = ztm_worker_now(r->w);
    for (ztm_resolve_job_t *next; j; j = next) {
        next = j->next;
        r->pending--;
        entry_t *e = cache_slot(r, j->host);
        bool keep_old = j->err < 0 && e->used && e->err == 0 && e->refreshing &&
                        now - e->at < ZTM_RESOLVE_STALE_NS;
        if (!keep_old) { /* a failed refresh keeps the address that worked */
            memset(e, 0, sizeof(*e));
            e->used = true;
            memcpy(e->host, j->host, sizeof(e->host));
            e->err = j->err;
            e->why = j->why;
            e->addr = j->addr;
            e->at = now;
        } else {
            ztm_log(ZTM_LOG_WARN, "resolve.refresh_failed",
                    "host=\"%s\" error=\"%s\" msg=\"keeping the last address\"", j->host, j->why);
        }
        e->refreshing = false;
        if (j->cb) {
            ztm_addr_t a = j->addr;
            ztm_addr_set_port(&a, j->port);
            j->cb(j->arg, j->err, j->err == 0 ? &a : NULL, j->err == 0 ? NULL : j->why);
        }
        free(j);
    }
}

static void on_poll(ztm_timer_t *t)
{
    ztm_resolver_t *r = (ztm_resolver_t *)((char *)t - offsetof(ztm_resolver_t, poll));
    deliver(r);
    if (r->pending) {
        r->poll_ns = r->poll_ns * 2 > POLL_MAX_NS ? POLL_MAX_NS : r->poll_ns * 2;
        ztm_timer_arm(ztm_worker_timers(r->w), &r->poll, ztm_worker_now(r->w) + r->poll_ns);
    }
}

int ztm_resolver_new(ztm_worker_t *w, ztm_resolver_t **out)
{
    ztm_resolver_t *r = calloc(1, sizeof(*r));
    shared_t *sh = calloc(1, sizeof(*sh));
    if (!r || !sh) {
        free(r);
        free(sh);
        return -ENOMEM;
    }
    pthread_mutex_init(&sh->mu, NULL);
    pthread_cond_init(&sh->cv, NULL);
    sh->refs = 1;
    sh->fn = ztm_addr_lookup;
    r->w = w;
    r->sh = sh;
    ztm_timer_init(&r->poll, on_poll);
    *out = r;
    return 0;
}

void ztm_resolver_set_fn(ztm_resolver_t *r, ztm_resolve_fn fn)
{
    pthread_mutex_lock(&r->sh->mu);
    r->sh->fn = fn ? fn : ztm_addr_lookup;
    pthread_mutex_unlock(&r->sh->mu);
}

void ztm_resolver_free(ztm_resolver_t *r)
{
    if (!r)
        return;
    ztm_timer_cancel(ztm_worker_timers(r->w), &r->poll);
    shared_t *sh = r->sh;
    pthread_mutex_lock(&sh->mu);
    sh->closing = true;
    pthread_cond_signal(&sh->cv);
    shared_put_locked(sh); /* unlocks; the thread frees what is left if it runs */
    free(r);
}

static int start_job(ztm_resolver_t *r, const char *host, unsigned port, ztm_resolve_cb cb,
                     void *arg, ztm_resolve_job_t **job)
{
    shared_t *sh = r->sh;
    ztm_resolve_job_t *j = calloc(1, sizeof(*j));
    if (!j)
        return -ENOMEM;
    memcpy(j->host, host, strlen(host) + 1);
    j->port = port;
    j->cb = cb;
    j->arg = arg;
    pthread_mutex_lock(&sh->mu);
    if (!sh->thread_started) {
        pthread_t t;
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&at, 256 * 1024); /* getaddrinfo needs more than a little */
        int e = pthread_create(&t, &at, resolver_main, sh);
        pthread_attr_destroy(&at);
        if (e) {
            pthread_mutex_unlock(&sh->mu);
            free(j);
            ztm_log(ZTM_LOG_ERROR, "resolve.thread", "error=\"%s\"", strerror(e));
            return -e;
        }
        sh->thread_started = true;
        sh->refs++;
    }
    if (sh->todo_tail)
        sh->todo_tail->next = j;
    else
        sh->todo_head = j;
    sh->todo_tail = j;
    pthread_cond_signal(&sh->cv);
    pthread_mutex_unlock(&sh->mu);
    if (r->pending++ == 0 || !ztm_timer_armed(&r->poll)) {
        r->poll_ns = POLL_FIRST_NS;
        ztm_timer_arm(ztm_worker_timers(r->w), &r->poll, ztm_worker_now(r->w) + r->poll_ns);
    }
    if (job)
        *job = j;
    return -EINPROGRESS;
}

int ztm_resolve(ztm_resolver_t *r, const char *hostport, ztm_addr_t *out, const char **why,
                ztm_resolve_cb cb, void *arg, ztm_resolve_job_t **job)
{
    char host[ZTM_HOST_MAX + 1];
    unsigned port;
    if (job)
        *job = NULL;
    int e = ztm_addr_split(hostport, host, &port, why);
    if (e < 0)
        return e;
    e = ztm_addr_literal(host, port, out, why);
    if (e != 0)
        return e < 0 ? e : 0;
    uint64_t now = ztm_worker_now(r->w);
    entry_t *c = cache_find(r, host);
    if (c && c->err == 0 && now - c->at < ZTM_RESOLVE_STALE_NS) {
        *out = c->addr;
        ztm_addr_set_port(out, port);
        if (now - c->at >= ZTM_RESOLVE_FRESH_NS && !c->refreshing &&
            start_job(r, host, port, NULL, NULL, NULL) == -EINPROGRESS)
            c->refreshing = true;
        return 0;
    }
    if (c && c->err < 0 && now - c->at < ZTM_RESOLVE_NEG_NS) {
        *why = c->why;
        return c->err;
    }
    e = start_job(r, host, port, cb, arg, job);
    if (e != -EINPROGRESS)
        *why = "cannot start a name lookup";
    return e;
}

void ztm_resolve_cancel(ztm_resolve_job_t *job)
{
    if (job)
        job->cb = NULL;
}

unsigned ztm_resolver_pending(const ztm_resolver_t *r)
{
    return r->pending;
}
