/* Spliced sessions across workers: the two streams of a joined relay
 * session may sit on two data-plane workers (each agent's connection is
 * where the kernel put it), or on one.
 *
 * Each stream has a half, owned by its stream's worker and touched by no
 * other thread. A half turns its stream's request body into chunks of bytes
 * that go to the other half by message; the other half serves them as its
 * stream's response body and, as they leave, posts back credit, which the
 * first half returns to its stream's sender (ztm_h2_consume). So the bytes
 * of one direction held anywhere in the hub (chunks being built, in flight,
 * queued for sending) never exceed one stream window: the sender's window
 * is not reopened before its bytes have left. END_STREAM follows the last
 * chunk; a stream's end (clean or reset) goes over as CLOSED, the last
 * message a half ever sends, after which the other half lets go of it: a
 * half is freed by its own worker once its stream has closed and the other
 * half's CLOSED has arrived (or it was never joined).
 *
 * Before the join a half holds its stream's bytes (within the window) and
 * sends them when bound to its peer. A half whose session was refused, or
 * whose peer has gone, returns credit for what it receives at once.
 *
 * One ztm_xs_t per worker; called on that worker only. */
#ifndef ZTM_HUB_XSPLICE_H
#define ZTM_HUB_XSPLICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "controlplane/ca/identity.h"
#include "dataplane/runtime/outbox.h"
#include "dataplane/runtime/worker.h"

/* The message types of this module: [FIRST, FIRST + COUNT). */
#define ZTM_XS_MSG_FIRST (ZTM_MSG_SERVICE + 48)
#define ZTM_XS_MSG_COUNT 8

typedef struct ztm_xs ztm_xs_t;
typedef struct ztm_xs_half ztm_xs_half_t;

/* A joined session is over (both streams closed): what its log line says. */
typedef struct {
    uint64_t id;
    const char *from, *to;       /* the opener's and the acceptor's names */
    uint64_t bytes_ab, bytes_ba; /* delivered opener -> acceptor, and back */
    const char *reason;          /* "done", "opener_reset", "acceptor_reset" */
    uint32_t error;              /* the first reset's HTTP/2 code */
} ztm_xs_end_t;

/* What a half asks of its stream (SIDE: the pointer given to half_new). */
typedef struct {
    /* Bytes or the end arrived: resume the stream's body. */
    void (*on_readable)(void *arg, void *side);
    /* The other stream was reset (or its connection went): reset this one. */
    void (*on_reset)(void *arg, void *side);
    /* N bytes the stream received have left the hub (or will never have
     * to): return their credit. May be called while the stream closes. */
    void (*on_consumed)(void *arg, void *side, size_t n);
    /* On the opener's worker: the session is over. */
    void (*on_end)(void *arg, const ztm_xs_end_t *end);
    void *arg;
} ztm_xs_ops_t;

/* The halves of worker W, posting through OB; WINDOW bounds what one
 * stream may have sent and not yet got credit for (the h2 stream window
 * the server announces). Returns 0 or -ENOMEM. */
int ztm_xs_new(ztm_worker_t *w, ztm_outbox_t *ob, size_t window, const ztm_xs_ops_t *ops,
               ztm_xs_t **out);
/* Frees X; call once ztm_xs_halves() is 0. */
void ztm_xs_free(ztm_xs_t *x);
/* Halves alive on this worker (the worker is not idle while any is). */
size_t ztm_xs_halves(const ztm_xs_t *x);

/* A message of this module: true if M was ours. */
bool ztm_xs_message(ztm_xs_t *x, const ztm_msg_t *m);
/* Frees what an unread message of ours carries. False if M is not ours. */
bool ztm_xs_discard(const ztm_msg_t *m);
/* Posts the chunks, ends and credit that came due in this loop turn. Call
 * from the tick, after the streams were written (their reads make credit). */
void ztm_xs_run(ztm_xs_t *x);

/* A half for the stream SIDE. DIR: 0 the opener, 1 the acceptor. */
ztm_xs_half_t *ztm_xs_half_new(ztm_xs_t *x, void *side, int dir);
/* Keeps H alive for an answer in flight that names it (an accept sent to
 * the opener's worker) / lets go of it. */
void ztm_xs_half_hold(ztm_xs_half_t *h);
void ztm_xs_half_unhold(ztm_xs_half_t *h);
/* Joins H to PEER, a half on worker WORKER: what H holds goes now. On the
 * opener's half, ID, FROM and TO are for the end's log line (NULL on the
 * acceptor's). */
void ztm_xs_half_bind(ztm_xs_half_t *h, unsigned worker, ztm_xs_half_t *peer, uint64_t id,
                      const char *from, const char *to);
/* The session will not be joined: credit back what H holds, and from now
 * on for whatever its stream sends. */
void ztm_xs_half_drop(ztm_xs_half_t *h);

/* The stream's request body: LEN bytes (not consumed yet). -ENOBUFS when
 * the stream sent more than the window (the peer broke flow control: reset
 * it), -ENOMEM. */
int ztm_xs_half_data(ztm_xs_half_t *h, const uint8_t *data, size_t len);
/* The stream's request body ended. */
void ztm_xs_half_eof(ztm_xs_half_t *h);
/* The stream's response body: up to MAX bytes from the other side; *EOF
 * at its end. 0 without *EOF: nothing yet (on_readable will say). */
size_t ztm_xs_half_read(ztm_xs_half_t *h, uint8_t *dst, size_t max, bool *eof);
/* Bytes H holds from its stream that have not left the hub. */
size_t ztm_xs_half_held(const ztm_xs_half_t *h);
/* The stream closed (CODE: its HTTP/2 error code, 0 for a clean end). H is
 * not used by the caller after this. */
void ztm_xs_half_close(ztm_xs_half_t *h, uint32_t code);

#endif
