/* Spliced sessions across workers; see xsplice.h.
 *
 * A half's references: its stream's (from creation until the stream has
 * closed and, if joined, its CLOSED has been posted), its peer's (from the
 * join until the peer's CLOSED has arrived: after it nothing more comes),
 * and holds (an answer in flight that names it). Messages name their
 * destination half by pointer: it stays valid for every message its peer
 * sends, since CLOSED is the last of them. Nothing here is shared between
 * threads but the chunks, which change hands with their message. */
#include "dataplane/hub/xsplice.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dataplane/runtime/log.h"

enum {
    XS_DATA = ZTM_XS_MSG_FIRST, /* u64: the destination half; ptr: a chunk */
    XS_CREDIT,                  /* u64: the half; u32: bytes delivered of what it sent */
    XS_EOF,                     /* u64: the half; its peer's body has ended */
    XS_CLOSED,                  /* u64: the half; ptr: closed_t; the last message */
};
_Static_assert(XS_CLOSED < ZTM_XS_MSG_FIRST + ZTM_XS_MSG_COUNT, "message types");

#define CHUNK_MIN (16u << 10)

typedef struct chunk {
    struct chunk *next;
    size_t len, cap;
    uint8_t data[];
} chunk_t;

typedef struct {
    uint32_t code;     /* the stream's close code */
    bool first_reset;  /* it was reset before hearing of a reset on our side */
    uint64_t bytes_in; /* what it delivered to its stream */
} closed_t;

struct ztm_xs_half {
    ztm_xs_t *x;
    unsigned refs;
    void *side; /* NULL once the stream closed */
    int dir;
    bool stream_ref; /* the stream's reference is still held */
    bool bound;
    unsigned peer_worker;
    ztm_xs_half_t *peer;
    bool dropping; /* refused, or the peer went: credit back at once */
    /* stream -> peer */
    chunk_t *out_head, *out_tail; /* not posted yet */
    size_t held;                  /* received, not credited back */
    bool eof_out, eof_posted, closed_posted;
    /* peer -> stream */
    chunk_t *in_head, *in_tail;
    size_t in_off;
    size_t credit_due;
    uint64_t bytes_in;
    bool peer_eof, peer_closed;
    closed_t peer_end;
    /* our stream's end */
    bool stream_closed;
    uint32_t code;
    bool first_reset;
    /* the opener's: for the log */
    uint64_t id;
    char from[ZTM_NAME_MAX + 1], to[ZTM_NAME_MAX + 1];
    bool dirty;
    ztm_xs_half_t *dprev, *dnext;
};

struct ztm_xs {
    ztm_worker_t *w;
    ztm_outbox_t *ob;
    size_t window;
    ztm_xs_ops_t ops;
    size_t halves;
    ztm_xs_half_t *dirty_head, *dirty_tail;
};

/* ---- chunks and lists ----------------------------------------------------- */
static void chunks_free(chunk_t **head, chunk_t **tail)
{
    for (chunk_t *c = *head, *next; c; c = next) {
        next = c->next;
        free(c);
    }
    *head = *tail = NULL;
}

static void chunk_append(chunk_t **head, chunk_t **tail, chunk_t *c)
{
    c->next = NULL;
    if (*tail)
        (*tail)->next = c;
    else
        *head = c;
    *tail = c;
}

static void mark_dirty(ztm_xs_half_t *h)
{
    ztm_xs_t *x = h->x;
    if (h->dirty)
        return;
    h->dirty = true;
    h->dnext = NULL;
    h->dprev = x->dirty_tail;
    if (x->dirty_tail)
        x->dirty_tail->dnext = h;
    else
        x->dirty_head = h;
    x->dirty_tail = h;
}

static void unmark_dirty(ztm_xs_half_t *h)
{
    ztm_xs_t *x = h->x;
    if (!h->dirty)
        return;
    if (h->dprev)
        h->dprev->dnext = h->dnext;
    else
        x->dirty_head = h->dnext;
    if (h->dnext)
        h->dnext->dprev = h->dprev;
    else
        x->dirty_tail = h->dprev;
    h->dirty = false;
    h->dprev = h->dnext = NULL;
}

static void post(ztm_xs_half_t *h, uint32_t type, uint32_t u32, void *ptr)
{
    ztm_msg_t m = {.type = type, .u32 = u32, .u64 = (uint64_t)(uintptr_t)h->peer, .ptr = ptr};
    ztm_outbox_post(h->x->ob, h->peer_worker, &m);
}

/* ---- a half's life ---------------------------------------------------------- */
static void half_release(ztm_xs_half_t *h)
{
    ztm_xs_t *x = h->x;
    if (h->dir == 0 && h->bound && x->ops.on_end) {
        ztm_xs_end_t e = {.id = h->id, .from = h->from, .to = h->to,
                          .bytes_ab = h->peer_end.bytes_in, .bytes_ba = h->bytes_in};
        if (h->first_reset) {
            e.reason = "opener_reset";
            e.error = h->code;
        } else if (h->peer_end.first_reset) {
            e.reason = "acceptor_reset";
            e.error = h->peer_end.code;
        } else {
            e.reason = "done";
        }
        x->ops.on_end(x->ops.arg, &e);
    }
    unmark_dirty(h);
    chunks_free(&h->out_head, &h->out_tail);
    chunks_free(&h->in_head, &h->in_tail);
    x->halves--;
    free(h);
}

static void half_put(ztm_xs_half_t *h)
{
    if (--h->refs == 0)
        half_release(h);
}

ztm_xs_half_t *ztm_xs_half_new(ztm_xs_t *x, void *side, int dir)
{
    ztm_xs_half_t *h = calloc(1, sizeof(*h));
    if (!h)
        return NULL;
    h->x = x;
    h->refs = 1;
    h->stream_ref = true;
    h->side = side;
    h->dir = dir;
    x->halves++;
    return h;
}

void ztm_xs_half_hold(ztm_xs_half_t *h)
{
    h->refs++;
}

void ztm_xs_half_unhold(ztm_xs_half_t *h)
{
    half_put(h);
}

void ztm_xs_half_bind(ztm_xs_half_t *h, unsigned worker, ztm_xs_half_t *peer, uint64_t id,
                      const char *from, const char *to)
{
    h->bound = true;
    h->peer_worker = worker;
    h->peer = peer;
    h->refs++; /* until the peer's CLOSED */
    h->id = id;
    if (from)
        snprintf(h->from, sizeof(h->from), "%s", from);
    if (to)
        snprintf(h->to, sizeof(h->to), "%s", to);
    mark_dirty(h); /* what was held goes now (or our CLOSED, if the stream went) */
}

/* Credits back everything H holds: nobody will take it. */
static void give_back(ztm_xs_half_t *h)
{
    chunks_free(&h->out_head, &h->out_tail);
    if (h->held && h->side)
        h->x->ops.on_consumed(h->x->ops.arg, h->side, h->held);
    h->held = 0;
}

void ztm_xs_half_drop(ztm_xs_half_t *h)
{
    h->dropping = true;
    give_back(h);
}

int ztm_xs_half_data(ztm_xs_half_t *h, const uint8_t *data, size_t len)
{
    ztm_xs_t *x = h->x;
    if (len == 0)
        return 0;
    if (h->dropping || h->eof_out) {
        x->ops.on_consumed(x->ops.arg, h->side, len);
        return 0;
    }
    if (h->held + len > x->window)
        return -ENOBUFS;
    chunk_t *c = h->out_tail;
    if (!c || c->cap - c->len < len) {
        size_t cap = len > CHUNK_MIN ? len : CHUNK_MIN;
        if (!(c = malloc(sizeof(*c) + cap)))
            return -ENOMEM;
        c->len = 0;
        c->cap = cap;
        chunk_append(&h->out_head, &h->out_tail, c);
    }
    memcpy(c->data + c->len, data, len);
    c->len += len;
    h->held += len;
    mark_dirty(h);
    return 0;
}

void ztm_xs_half_eof(ztm_xs_half_t *h)
{
    h->eof_out = true;
    mark_dirty(h);
}

size_t ztm_xs_half_read(ztm_xs_half_t *h, uint8_t *dst, size_t max, bool *eof)
{
    size_t n = 0;
    while (n < max && h->in_head) {
        chunk_t *c = h->in_head;
        size_t k = c->len - h->in_off;
        if (k > max - n)
            k = max - n;
        memcpy(dst + n, c->data + h->in_off, k);
        n += k;
        h->in_off += k;
        if (h->in_off == c->len) {
            h->in_head = c->next;
            if (!h->in_head)
                h->in_tail = NULL;
            h->in_off = 0;
            free(c);
        }
    }
    if (n) {
        h->bytes_in += n;
        h->credit_due += n;
        mark_dirty(h);
    }
    *eof = h->peer_eof && !h->in_head;
    return n;
}

size_t ztm_xs_half_held(const ztm_xs_half_t *h)
{
    return h->held;
}

void ztm_xs_half_close(ztm_xs_half_t *h, uint32_t code)
{
    /* What it sent and is still here: credit now (the connection window
     * needs it back); in a clean end the other side still gets it. */
    if (h->held && h->side)
        h->x->ops.on_consumed(h->x->ops.arg, h->side, h->held);
    h->held = 0;
    h->side = NULL;
    h->stream_closed = true;
    h->code = code;
    h->first_reset = code != 0 && !(h->peer_closed && h->peer_end.code != 0);
    if (code || !h->bound)
        chunks_free(&h->out_head, &h->out_tail);
    chunks_free(&h->in_head, &h->in_tail); /* the peer lets go of its bytes at our CLOSED */
    h->credit_due = 0;
    if (h->bound) {
        mark_dirty(h); /* the rest of its bytes, then CLOSED, from run */
    } else {
        h->stream_ref = false;
        half_put(h);
    }
}

/* ---- messages ---------------------------------------------------------------- */
static void on_peer_closed(ztm_xs_half_t *h, closed_t *c)
{
    ztm_xs_t *x = h->x;
    h->peer_closed = true;
    h->peer_end = *c;
    free(c);
    /* Nothing of ours will reach it any more. */
    h->dropping = true;
    give_back(h);
    if (h->peer_end.code) {
        chunks_free(&h->in_head, &h->in_tail);
        if (h->side)
            x->ops.on_reset(x->ops.arg, h->side);
    }
    half_put(h); /* the peer's reference: it sends no more */
}

bool ztm_xs_message(ztm_xs_t *x, const ztm_msg_t *m)
{
    if (m->type < ZTM_XS_MSG_FIRST || m->type >= ZTM_XS_MSG_FIRST + ZTM_XS_MSG_COUNT)
        return false;
    ztm_xs_half_t *h = (ztm_xs_half_t *)(uintptr_t)m->u64;
    switch (m->type) {
    case XS_DATA: {
        chunk_t *c = m->ptr;
        if (!h->side || (h->peer_closed && h->peer_end.code)) {
            free(c); /* our CLOSED makes the peer credit it */
            break;
        }
        chunk_append(&h->in_head, &h->in_tail, c);
        x->ops.on_readable(x->ops.arg, h->side);
        break;
    }
    case XS_CREDIT:
        if (h->side && h->held) {
            size_t n = m->u32 < h->held ? m->u32 : h->held;
            h->held -= n;
            x->ops.on_consumed(x->ops.arg, h->side, n);
        }
        break;
    case XS_EOF:
        h->peer_eof = true;
        if (h->side)
            x->ops.on_readable(x->ops.arg, h->side);
        break;
    case XS_CLOSED:
        on_peer_closed(h, m->ptr);
        break;
    default:
        break;
    }
    return true;
}

bool ztm_xs_discard(const ztm_msg_t *m)
{
    if (m->type < ZTM_XS_MSG_FIRST || m->type >= ZTM_XS_MSG_FIRST + ZTM_XS_MSG_COUNT)
        return false;
    if (m->type == XS_DATA || m->type == XS_CLOSED)
        free(m->ptr);
    return true;
}

/* What H owes its peer: bytes, the end of them, credit, CLOSED. */
static void half_flush(ztm_xs_half_t *h)
{
    if (!h->bound || h->closed_posted)
        return;
    if (!h->peer_closed) {
        while (h->out_head) {
            chunk_t *c = h->out_head;
            h->out_head = c->next;
            if (!h->out_head)
                h->out_tail = NULL;
            post(h, XS_DATA, 0, c);
        }
        if (h->eof_out && !h->eof_posted) {
            h->eof_posted = true;
            post(h, XS_EOF, 0, NULL);
        }
        if (h->credit_due) {
            post(h, XS_CREDIT, (uint32_t)h->credit_due, NULL);
            h->credit_due = 0;
        }
    }
    if (!h->stream_closed)
        return;
    closed_t *c = malloc(sizeof(*c));
    if (!c) {
        mark_dirty(h); /* tried again next turn */
        return;
    }
    *c = (closed_t){.code = h->code, .first_reset = h->first_reset, .bytes_in = h->bytes_in};
    h->closed_posted = true;
    post(h, XS_CLOSED, 0, c); /* even to a peer that closed: it waits for this */
    if (h->stream_ref) {
        h->stream_ref = false;
        half_put(h);
    }
}

void ztm_xs_run(ztm_xs_t *x)
{
    while (x->dirty_head) {
        ztm_xs_half_t *h = x->dirty_head;
        unmark_dirty(h);
        half_flush(h); /* may free H */
    }
}

/* ---- the worker's halves ----------------------------------------------------- */
int ztm_xs_new(ztm_worker_t *w, ztm_outbox_t *ob, size_t window, const ztm_xs_ops_t *ops,
               ztm_xs_t **out)
{
    ztm_xs_t *x = calloc(1, sizeof(*x));
    if (!x)
        return -ENOMEM;
    x->w = w;
    x->ob = ob;
    x->window = window;
    x->ops = *ops;
    *out = x;
    return 0;
}

void ztm_xs_free(ztm_xs_t *x)
{
    if (!x)
        return;
    if (x->halves)
        ztm_log(ZTM_LOG_ERROR, "relay.halves_left", "halves=%zu", x->halves);
    free(x);
}

size_t ztm_xs_halves(const ztm_xs_t *x)
{
    return x->halves;
}
