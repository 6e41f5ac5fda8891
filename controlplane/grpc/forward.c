/* Forwarded calls; see forward.h.
 *
 * Who touches what in a call object: the data worker writes the request
 * (method, caller, bytes, the room it asks for) before it posts a call or
 * an ask; the control worker writes the answer (reply, messages, opened,
 * ended) before it posts it back. A post and its pop are a release/acquire
 * pair (dataplane/runtime/spsc.c), and each side reads the other's fields
 * only after popping the message that handed them over. The fields named
 * d_* belong to the data worker alone, x_* to the control worker alone;
 * "cancelled" and the count are the only ones both may touch at any time. */
#include "controlplane/grpc/forward.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "controlplane/grpc/frame.h"
#include "dataplane/runtime/log.h"

enum {
    FW_CALL = ZTM_GRPC_FWD_MSG_FIRST, /* data -> control: run a unary call */
    FW_REPLY,                         /* control -> data: its reply */
    FW_WOPEN,                         /* data -> control: open a Watch (and fill) */
    FW_WMORE,                         /* data -> control: room for more */
    FW_WOUT,                          /* control -> data: opened / messages / end */
    FW_WCLOSE,                        /* data -> control: the stream is gone */
};
_Static_assert(FW_WCLOSE < ZTM_GRPC_FWD_MSG_FIRST + ZTM_GRPC_FWD_MSG_COUNT, "message types");

#define WATCH_ROOM_MAX (256u << 10) /* what one answer may carry, at most */
#define MAX_GROUP 256               /* unary calls per store group */

struct ztm_grpc_fcall {
    _Atomic uint32_t refs;
    _Atomic bool cancelled;
    unsigned from; /* the data worker */
    bool watch;
    const ztm_api_method_t *m;
    bool has_caller;
    ztm_identity_t caller;
    uint8_t *req;
    size_t req_len;
    size_t room; /* Watch: bytes the data worker has room for */
    /* the answer */
    ztm_api_reply_t reply; /* unary: the reply; Watch: the final status */
    bool opened, ended;
    uint8_t *out; /* Watch: framed messages */
    size_t out_len;
    /* the data worker's */
    ztm_grpc_fwd_t *d_fwd;
    void *d_call;
    bool d_asking; /* an ask (or the open) is in flight */
    bool d_opened; /* the head went (the stream ends with trailers) */
    bool d_ended;  /* the control worker closed its side */
    /* the control worker's */
    ztm_api_watch_t *x_cursor;
    bool x_parked; /* an ask waits for a store change (its message's reference kept) */
    ztm_grpc_fcall_t *x_prev, *x_next;
};

struct ztm_grpc_fwd {
    ztm_worker_t *w;
    ztm_outbox_t *ob;
    unsigned control;
    ztm_grpc_fwd_sink_t sink;
};

struct ztm_grpc_exec {
    ztm_worker_t *w;
    ztm_api_t *api;
    ztm_store_t *store;
    ztm_store_sub_t *sub;
    ztm_outbox_t *ob;
    ztm_grpc_fcall_t *ready_head, *ready_tail; /* unary calls of this turn */
    ztm_grpc_fcall_t *watches;                 /* open cursors (a reference each) */
    bool changed;                              /* the store notified since the last run */
};

/* ---- the call object ---------------------------------------------------- */
static ztm_grpc_fcall_t *fc_ref(ztm_grpc_fcall_t *fc)
{
    atomic_fetch_add_explicit(&fc->refs, 1, memory_order_relaxed);
    return fc;
}

static void fc_unref(ztm_grpc_fcall_t *fc)
{
    if (atomic_fetch_sub_explicit(&fc->refs, 1, memory_order_acq_rel) != 1)
        return;
    free(fc->req);
    free(fc->out);
    ztm_api_reply_clear(&fc->reply);
    free(fc);
}

static bool fc_cancelled(const ztm_grpc_fcall_t *fc)
{
    return atomic_load_explicit(&fc->cancelled, memory_order_acquire);
}

static bool ours(const ztm_msg_t *m)
{
    return m->type >= ZTM_GRPC_FWD_MSG_FIRST &&
           m->type < ZTM_GRPC_FWD_MSG_FIRST + ZTM_GRPC_FWD_MSG_COUNT;
}

bool ztm_grpc_fwd_discard(const ztm_msg_t *m)
{
    if (!ours(m))
        return false;
    fc_unref(m->ptr);
    return true;
}

static void post(ztm_outbox_t *ob, unsigned to, uint32_t type, ztm_grpc_fcall_t *fc)
{
    ztm_msg_t m = {.type = type, .ptr = fc};
    ztm_outbox_post(ob, to, &m);
}

/* ---- the data worker's side --------------------------------------------- */
int ztm_grpc_fwd_new(ztm_worker_t *w, ztm_outbox_t *ob, unsigned control,
                     const ztm_grpc_fwd_sink_t *sink, ztm_grpc_fwd_t **out)
{
    ztm_grpc_fwd_t *f = calloc(1, sizeof(*f));
    if (!f)
        return -ENOMEM;
    f->w = w;
    f->ob = ob;
    f->control = control;
    f->sink = *sink;
    *out = f;
    return 0;
}

void ztm_grpc_fwd_free(ztm_grpc_fwd_t *f)
{
    free(f);
}

ztm_grpc_fcall_t *ztm_grpc_fwd_call(ztm_grpc_fwd_t *f, const ztm_api_method_t *m,
                                    const ztm_identity_t *caller, uint8_t *req, size_t len,
                                    void *call)
{
    ztm_grpc_fcall_t *fc = calloc(1, sizeof(*fc));
    if (!fc) {
        free(req);
        return NULL;
    }
    atomic_init(&fc->refs, 1);
    atomic_init(&fc->cancelled, false);
    fc->watch = ztm_api_streaming(m);
    fc->m = m;
    if (caller) {
        fc->has_caller = true;
        fc->caller = *caller;
    }
    fc->req = req;
    fc->req_len = len;
    fc->d_fwd = f;
    fc->d_call = call;
    if (fc->watch) {
        fc->d_asking = true; /* the open fills too */
        fc->room = WATCH_ROOM_MAX / 4;
    }
    fc->from = (unsigned)ztm_worker_id(f->w);
    post(f->ob, f->control, fc->watch ? FW_WOPEN : FW_CALL, fc_ref(fc));
    return fc;
}

void ztm_grpc_fwd_more(ztm_grpc_fcall_t *fc, size_t room)
{
    if (!fc->watch || fc->d_asking || fc->d_ended)
        return;
    fc->d_asking = true;
    fc->room = room < WATCH_ROOM_MAX ? room : WATCH_ROOM_MAX;
    ztm_grpc_fwd_t *f = fc->d_fwd;
    post(f->ob, f->control, FW_WMORE, fc_ref(fc));
}

void ztm_grpc_fwd_release(ztm_grpc_fcall_t *fc)
{
    atomic_store_explicit(&fc->cancelled, true, memory_order_release);
    if (fc->watch && !fc->d_ended) {
        ztm_grpc_fwd_t *f = fc->d_fwd;
        fc->d_ended = true;
        post(f->ob, f->control, FW_WCLOSE, fc_ref(fc));
    }
    fc_unref(fc);
}

bool ztm_grpc_fwd_message(ztm_grpc_fwd_t *f, const ztm_msg_t *m)
{
    if (m->type != FW_REPLY && m->type != FW_WOUT)
        return false;
    ztm_grpc_fcall_t *fc = m->ptr;
    if (fc_cancelled(fc)) {
        fc_unref(fc);
        return true;
    }
    if (m->type == FW_REPLY) {
        fc->d_ended = true;
        f->sink.on_reply(f->sink.arg, fc->d_call, &fc->reply);
        ztm_api_reply_clear(&fc->reply);
        atomic_store_explicit(&fc->cancelled, true, memory_order_release);
        fc_unref(fc); /* the message's */
        fc_unref(fc); /* ours: the call is over */
        return true;
    }
    fc->d_asking = false;
    bool opened = fc->opened;
    fc->opened = false;
    if (opened)
        fc->d_opened = true;
    uint8_t *data = fc->out;
    size_t len = fc->out_len;
    fc->out = NULL;
    fc->out_len = 0;
    if (fc->ended) {
        fc->d_ended = true;
        if (fc->d_opened) {
            /* Ends a stream that had (or now gets) its head. */
            f->sink.on_watch(f->sink.arg, fc->d_call, opened, data, len, &fc->reply);
        } else {
            free(data);
            f->sink.on_reply(f->sink.arg, fc->d_call, &fc->reply); /* refused at the open */
        }
        ztm_api_reply_clear(&fc->reply);
        atomic_store_explicit(&fc->cancelled, true, memory_order_release);
        fc_unref(fc);
        fc_unref(fc);
        return true;
    }
    f->sink.on_watch(f->sink.arg, fc->d_call, opened, data, len, NULL);
    fc_unref(fc);
    return true;
}

/* ---- the control worker's side ------------------------------------------ */
static void watch_unlink(ztm_grpc_exec_t *x, ztm_grpc_fcall_t *fc)
{
    if (fc->x_prev)
        fc->x_prev->x_next = fc->x_next;
    else
        x->watches = fc->x_next;
    if (fc->x_next)
        fc->x_next->x_prev = fc->x_prev;
    fc->x_prev = fc->x_next = NULL;
}

/* The cursor is done: closed, off the list, the list's reference dropped
 * (the caller holds another: the message being answered). */
static void watch_close(ztm_grpc_exec_t *x, ztm_grpc_fcall_t *fc)
{
    if (!fc->x_cursor)
        return;
    ztm_api_watch_close(fc->x_cursor);
    fc->x_cursor = NULL;
    watch_unlink(x, fc);
    fc_unref(fc);
}

/* Pulls the next messages into FC's answer, up to the room asked for (one
 * at least). True when there is something to answer: messages, or the end. */
static bool watch_fill(ztm_grpc_exec_t *x, ztm_grpc_fcall_t *fc)
{
    size_t cap = 0;
    uint8_t *out = NULL;
    size_t len = 0;
    while (len < fc->room) {
        uint8_t *body = NULL;
        size_t blen = 0;
        ztm_api_reply_t reply = {0};
        int r = ztm_api_watch_next(fc->x_cursor, &body, &blen, &reply);
        if (r == 0)
            break;
        if (r < 0) {
            fc->ended = true;
            fc->reply = reply;
            watch_close(x, fc);
            break;
        }
        size_t need = len + ZTM_GRPC_PREFIX_LEN + blen;
        if (need > cap) {
            size_t ncap = cap ? cap * 2 : 4096;
            while (ncap < need)
                ncap *= 2;
            uint8_t *p = realloc(out, ncap);
            if (!p) {
                free(body);
                fc->ended = true;
                fc->reply.status = ZTM_GRPC_RESOURCE_EXHAUSTED;
                snprintf(fc->reply.message, sizeof(fc->reply.message), "out of memory");
                watch_close(x, fc);
                break;
            }
            out = p;
            cap = ncap;
        }
        ztm_grpc_prefix_encode(out + len, false, (uint32_t)blen);
        if (blen)
            memcpy(out + len + ZTM_GRPC_PREFIX_LEN, body, blen);
        len = need;
        free(body);
    }
    fc->out = out;
    fc->out_len = len;
    return len > 0 || fc->ended;
}

/* Hands FC back to its data worker (with the reference of the message
 * being answered). */
static void answer(ztm_grpc_exec_t *x, uint32_t type, ztm_grpc_fcall_t *fc)
{
    post(x->ob, fc->from, type, fc);
}

static void watch_open(ztm_grpc_exec_t *x, ztm_grpc_fcall_t *fc)
{
    if (fc_cancelled(fc)) {
        fc_unref(fc);
        return;
    }
    memset(&fc->reply, 0, sizeof(fc->reply));
    fc->x_cursor = ztm_api_watch_open(x->api, fc->m, fc->has_caller ? &fc->caller : NULL, fc->req,
                                      fc->req_len, &fc->reply);
    if (!fc->x_cursor) {
        fc->ended = true; /* refused: REPLY says why */
        answer(x, FW_WOUT, fc);
        return;
    }
    ztm_api_reply_clear(&fc->reply);
    fc->opened = true;
    fc->x_next = x->watches;
    if (x->watches)
        x->watches->x_prev = fc;
    x->watches = fc_ref(fc);
    watch_fill(x, fc);
    answer(x, FW_WOUT, fc);
}

static void watch_more(ztm_grpc_exec_t *x, ztm_grpc_fcall_t *fc)
{
    if (fc_cancelled(fc) || !fc->x_cursor) {
        fc_unref(fc); /* a close follows */
        return;
    }
    if (watch_fill(x, fc))
        answer(x, FW_WOUT, fc);
    else
        fc->x_parked = true; /* answered when the store changes */
}

static void on_store_notify(void *arg, uint64_t version)
{
    ztm_grpc_exec_t *x = arg;
    x->changed = true;
}

int ztm_grpc_exec_new(ztm_worker_t *w, ztm_api_t *api, ztm_store_t *store, ztm_outbox_t *ob,
                      ztm_grpc_exec_t **out)
{
    ztm_grpc_exec_t *x = calloc(1, sizeof(*x));
    if (!x)
        return -ENOMEM;
    x->w = w;
    x->api = api;
    x->store = store;
    x->ob = ob;
    int r = ztm_store_subscribe(store, on_store_notify, x, &x->sub);
    if (r < 0) {
        free(x);
        return r;
    }
    *out = x;
    return 0;
}

void ztm_grpc_exec_free(ztm_grpc_exec_t *x)
{
    if (!x)
        return;
    while (x->ready_head) {
        ztm_grpc_fcall_t *fc = x->ready_head;
        x->ready_head = fc->x_next;
        fc_unref(fc);
    }
    while (x->watches) {
        ztm_grpc_fcall_t *fc = x->watches;
        if (fc->x_parked) {
            fc->x_parked = false;
            fc_unref(fc);
        }
        watch_close(x, fc);
    }
    ztm_store_unsubscribe(x->store, x->sub);
    free(x);
}

bool ztm_grpc_exec_message(ztm_grpc_exec_t *x, const ztm_msg_t *m)
{
    if (!ours(m))
        return false;
    ztm_grpc_fcall_t *fc = m->ptr;
    switch (m->type) {
    case FW_CALL:
        fc->x_prev = x->ready_tail;
        fc->x_next = NULL;
        if (x->ready_tail)
            x->ready_tail->x_next = fc;
        else
            x->ready_head = fc;
        x->ready_tail = fc;
        break;
    case FW_WOPEN:
        watch_open(x, fc);
        break;
    case FW_WMORE:
        watch_more(x, fc);
        break;
    case FW_WCLOSE:
        if (fc->x_parked) {
            fc->x_parked = false;
            fc_unref(fc);
        }
        watch_close(x, fc);
        fc_unref(fc);
        break;
    default:
        ztm_log(ZTM_LOG_ERROR, "grpc.forward", "type=%u msg=\"unexpected message\"", m->type);
        fc_unref(fc);
        break;
    }
    return true;
}

void ztm_grpc_exec_run(ztm_grpc_exec_t *x)
{
    ztm_grpc_fcall_t *batch[MAX_GROUP];
    while (x->ready_head) {
        size_t n = 0;
        int g = ztm_store_group_begin(x->store);
        while (x->ready_head && n < MAX_GROUP) {
            ztm_grpc_fcall_t *fc = x->ready_head;
            x->ready_head = fc->x_next;
            if (!x->ready_head)
                x->ready_tail = NULL;
            fc->x_prev = fc->x_next = NULL;
            if (fc_cancelled(fc)) {
                fc_unref(fc); /* the stream went: not run, as before its turn */
                continue;
            }
            memset(&fc->reply, 0, sizeof(fc->reply));
            ztm_api_unary(x->api, fc->m, fc->has_caller ? &fc->caller : NULL, fc->req,
                          fc->req_len, &fc->reply);
            batch[n++] = fc;
        }
        int end = g < 0 ? g : ztm_store_group_end(x->store);
        if (end < 0)
            ztm_log(ZTM_LOG_ERROR, "grpc.store_write", "calls=%zu error=\"%s\"", n,
                    end < -4095 ? ztm_store_strerror(end) : strerror(-end));
        for (size_t i = 0; i < n; i++) {
            ztm_grpc_fcall_t *fc = batch[i];
            if (end < 0) {
                /* The group was undone: nothing of these calls happened. */
                ztm_api_reply_clear(&fc->reply);
                fc->reply.status = ZTM_GRPC_UNAVAILABLE;
                snprintf(fc->reply.message, sizeof(fc->reply.message),
                         "the store could not be written; nothing was changed, retry");
            }
            answer(x, FW_REPLY, fc);
        }
    }
    if (!x->changed)
        return;
    x->changed = false;
    for (ztm_grpc_fcall_t *fc = x->watches, *next; fc; fc = next) {
        next = fc->x_next; /* a fill that ends FC takes it off the list */
        if (!fc->x_parked)
            continue;
        if (fc_cancelled(fc)) {
            fc->x_parked = false;
            fc_unref(fc);
            continue;
        }
        if (watch_fill(x, fc)) {
            fc->x_parked = false;
            answer(x, FW_WOUT, fc);
        }
    }
}
