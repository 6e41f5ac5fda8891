/* A worker's outgoing messages; see outbox.h. */
#include "dataplane/runtime/outbox.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "dataplane/runtime/log.h"

#define RETRY_NS (ZTM_NS_PER_MS / 2) /* a full mailbox is retried this soon */

typedef struct {
    ztm_msg_t *q; /* a ring of waiting messages */
    size_t head, len, cap;
    bool wake; /* posted to since the last flush */
} dest_t;

struct ztm_outbox {
    ztm_worker_t *w;
    ztm_engine_t *e;
    int self;
    unsigned n;
    dest_t *to;
    size_t waiting;
    ztm_timer_t retry;
    void (*discard)(void *arg, const ztm_msg_t *m);
    void *arg;
};

static void on_retry(ztm_timer_t *t)
{
    ztm_outbox_flush((ztm_outbox_t *)((char *)t - offsetof(ztm_outbox_t, retry)));
}

int ztm_outbox_new(ztm_worker_t *w, void (*discard)(void *arg, const ztm_msg_t *m), void *arg,
                   ztm_outbox_t **out)
{
    ztm_outbox_t *ob = calloc(1, sizeof(*ob));
    if (!ob)
        return -ENOMEM;
    ob->w = w;
    ob->e = ztm_worker_engine(w);
    ob->self = ztm_worker_id(w);
    ob->n = ztm_engine_workers(ob->e);
    ob->to = calloc(ob->n, sizeof(*ob->to));
    if (!ob->to) {
        free(ob);
        return -ENOMEM;
    }
    ob->discard = discard;
    ob->arg = arg;
    ztm_timer_init(&ob->retry, on_retry);
    *out = ob;
    return 0;
}

static ztm_msg_t *dest_front(dest_t *d)
{
    return &d->q[d->head];
}

static void dest_pop(dest_t *d)
{
    d->head = (d->head + 1) % d->cap;
    d->len--;
}

void ztm_outbox_free(ztm_outbox_t *ob)
{
    if (!ob)
        return;
    ztm_timer_cancel(ztm_worker_timers(ob->w), &ob->retry);
    for (unsigned i = 0; i < ob->n; i++) {
        dest_t *d = &ob->to[i];
        while (d->len) {
            ob->discard(ob->arg, dest_front(d));
            dest_pop(d);
        }
        free(d->q);
    }
    free(ob->to);
    free(ob);
}

static void dest_append(dest_t *d, const ztm_msg_t *m)
{
    if (d->len == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 64;
        ztm_msg_t *q = malloc(cap * sizeof(*q));
        if (!q) {
            ztm_log(ZTM_LOG_ERROR, "outbox.oom", "waiting=%zu msg=\"out of memory\"", d->len);
            abort();
        }
        for (size_t i = 0; i < d->len; i++)
            q[i] = d->q[(d->head + i) % d->cap];
        free(d->q);
        d->q = q;
        d->cap = cap;
        d->head = 0;
    }
    d->q[(d->head + d->len) % d->cap] = *m;
    d->len++;
}

void ztm_outbox_post(ztm_outbox_t *ob, unsigned to, const ztm_msg_t *m)
{
    dest_t *d = &ob->to[to];
    if (d->len == 0 && ztm_engine_push(ob->e, ob->self, to, m)) {
        d->wake = true;
        return;
    }
    if (ztm_engine_worker_ended(ob->e, to)) {
        ob->discard(ob->arg, m);
        return;
    }
    dest_append(d, m);
    ob->waiting++;
    if (!ztm_timer_armed(&ob->retry))
        ztm_timer_arm(ztm_worker_timers(ob->w), &ob->retry, ztm_worker_now(ob->w) + RETRY_NS);
}

void ztm_outbox_flush(ztm_outbox_t *ob)
{
    for (unsigned i = 0; i < ob->n; i++) {
        dest_t *d = &ob->to[i];
        while (d->len) {
            if (ztm_engine_push(ob->e, ob->self, i, dest_front(d))) {
                d->wake = true;
            } else if (ztm_engine_worker_ended(ob->e, i)) {
                ob->discard(ob->arg, dest_front(d));
            } else {
                /* Full: wake it now so that it makes room. */
                d->wake = true;
                break;
            }
            dest_pop(d);
            ob->waiting--;
        }
        if (d->wake) {
            d->wake = false;
            ztm_engine_wake(ob->e, i); /* our own mailbox too: read on the next turn */
        }
    }
    if (ob->waiting && !ztm_timer_armed(&ob->retry))
        ztm_timer_arm(ztm_worker_timers(ob->w), &ob->retry, ztm_worker_now(ob->w) + RETRY_NS);
}

size_t ztm_outbox_waiting(const ztm_outbox_t *ob)
{
    return ob->waiting;
}
