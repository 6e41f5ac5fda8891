/* Forwarded calls: the control API served on data-plane workers and run on
 * the control-plane worker, the one thread that owns the store.
 *
 * A data worker does the wire work of a call (TLS, HTTP/2, gRPC framing,
 * deadlines; controlplane/grpc/server.c) and hands its execution over by
 * message: {method, a copy of the caller's identity, the request bytes, a
 * handle}. The control worker runs every forwarded unary call that arrived
 * in one turn of its loop in one store group (one durable write) and posts
 * each reply back once the group is durable; the data worker sends it.
 *
 * Watch calls (server-streaming) are paced the same way: the data worker
 * asks for more when its stream has room, with at most one ask in flight per
 * stream; the control worker answers with the next messages (up to the room
 * asked for), or keeps the ask until the store says something changed, or
 * answers with the final status.
 *
 * A call is an object both workers point at, with an atomic reference count
 * (the data worker's call holds one, every message in flight one more) and
 * an atomic "cancelled" flag the data worker sets when the stream goes: no
 * callback runs for a cancelled call, and it is freed when the last
 * reference goes, wherever that is. Messages go through the workers'
 * outboxes (dataplane/runtime/outbox.h): none is dropped for a full
 * mailbox. */
#ifndef ZTM_CONTROLPLANE_GRPC_FORWARD_H
#define ZTM_CONTROLPLANE_GRPC_FORWARD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "controlplane/services/api.h"
#include "dataplane/runtime/outbox.h"
#include "dataplane/runtime/worker.h"

/* The message types of this module: [FIRST, FIRST + COUNT). */
#define ZTM_GRPC_FWD_MSG_FIRST (ZTM_MSG_SERVICE + 16)
#define ZTM_GRPC_FWD_MSG_COUNT 8

typedef struct ztm_grpc_fcall ztm_grpc_fcall_t;

/* Frees what a message of this module carries (the engine's discard, an
 * outbox's discard). False if M is not ours. */
bool ztm_grpc_fwd_discard(const ztm_msg_t *m);

/* ---- the data worker's side --------------------------------------------- */
typedef struct ztm_grpc_fwd ztm_grpc_fwd_t;

/* Where the answers go (the gRPC server of the data worker). CALL is the
 * pointer given when the call was forwarded. */
typedef struct {
    /* A unary call's reply, or a Watch refused before it began (no head
     * sent yet). REPLY is cleared by the caller afterwards. */
    void (*on_reply)(void *arg, void *call, ztm_api_reply_t *reply);
    /* A Watch: OPENED the first time (send the head), DATA (framed gRPC
     * messages, LEN bytes, taken over; NULL when none), END the final
     * status when the stream is over (NULL otherwise). */
    void (*on_watch)(void *arg, void *call, bool opened, uint8_t *data, size_t len,
                     ztm_api_reply_t *end);
    void *arg;
} ztm_grpc_fwd_sink_t;

/* Forwards to worker CONTROL through OB; answers go to SINK (copied).
 * Returns 0 or -ENOMEM. */
int ztm_grpc_fwd_new(ztm_worker_t *w, ztm_outbox_t *ob, unsigned control,
                     const ztm_grpc_fwd_sink_t *sink, ztm_grpc_fwd_t **out);
void ztm_grpc_fwd_free(ztm_grpc_fwd_t *f);

/* Forwards a call of M by CALLER (NULL: no certificate) with request REQ
 * (LEN bytes, taken over: freed here in every case). WATCH: M is
 * streaming. The answer comes through the sink with CALL. Returns the
 * handle, or NULL when out of memory (nothing was sent). */
ztm_grpc_fcall_t *ztm_grpc_fwd_call(ztm_grpc_fwd_t *f, const ztm_api_method_t *m,
                                    const ztm_identity_t *caller, uint8_t *req, size_t len,
                                    void *call);
/* A Watch whose stream has room for ROOM more bytes: asks for the next
 * messages unless an ask (or the open) is in flight. */
void ztm_grpc_fwd_more(ztm_grpc_fcall_t *fc, size_t room);
/* The call is over on this side (stream closed, answered, or ended): no
 * callback for it from now on; FC must not be used after. */
void ztm_grpc_fwd_release(ztm_grpc_fcall_t *fc);

/* An answer from the control worker: true if M was ours. */
bool ztm_grpc_fwd_message(ztm_grpc_fwd_t *f, const ztm_msg_t *m);

/* ---- the control worker's side ------------------------------------------ */
typedef struct ztm_grpc_exec ztm_grpc_exec_t;

/* Runs forwarded calls with API over STORE (subscribed to, for Watch) on
 * worker W (the store's thread), answering through OB. Returns 0, -ENOMEM
 * or the store's error. */
int ztm_grpc_exec_new(ztm_worker_t *w, ztm_api_t *api, ztm_store_t *store, ztm_outbox_t *ob,
                      ztm_grpc_exec_t **out);
/* Frees X, closing what is still open (the engine has stopped). */
void ztm_grpc_exec_free(ztm_grpc_exec_t *x);

/* A call, an ask or a close from a data worker: true if M was ours. */
bool ztm_grpc_exec_message(ztm_grpc_exec_t *x, const ztm_msg_t *m);

/* Runs the unary calls of this loop turn in one store group and posts
 * their replies once it is durable; then answers the Watch asks that were
 * waiting for a change, if the store changed. Call from the tick. */
void ztm_grpc_exec_run(ztm_grpc_exec_t *x);

#endif
