/* A worker's outgoing messages to the other workers, never dropped and
 * never blocking.
 *
 * The mailboxes between workers are bounded (worker.h): a post may find the
 * queue full. Protocols between workers (forwarded calls, spliced streams,
 * snapshots) must not lose a message, and a worker must not wait for
 * another, so a message that does not fit waits here, in order behind the
 * others for the same destination, and goes at the next flush (each loop
 * turn, and on a short timer while anything waits). Destinations are woken
 * once per flush, not once per message.
 *
 * A message for a worker whose loop has ended can never be read: it is
 * handed to the discard callback (which frees what it carries). One outbox
 * per worker; used only on that worker's thread. */
#ifndef ZTM_RUNTIME_OUTBOX_H
#define ZTM_RUNTIME_OUTBOX_H

#include <stddef.h>

#include "dataplane/runtime/worker.h"

typedef struct ztm_outbox ztm_outbox_t;

/* An outbox for worker W. DISCARD(ARG, M) frees what an undeliverable
 * message carries. Returns 0 or -ENOMEM. */
int ztm_outbox_new(ztm_worker_t *w, void (*discard)(void *arg, const ztm_msg_t *m), void *arg,
                   ztm_outbox_t **out);
/* Frees OB; messages still waiting are discarded. NULL is fine. */
void ztm_outbox_free(ztm_outbox_t *ob);

/* Sends M to worker TO (this worker included), after what waits for TO.
 * Never fails: out of memory for the waiting list aborts the process, as
 * losing a message would break the protocol that sent it. */
void ztm_outbox_post(ztm_outbox_t *ob, unsigned to, const ztm_msg_t *m);

/* Delivers what waits, as far as the mailboxes take it, and wakes the
 * destinations posted to since the last flush. Call at the end of every
 * loop turn (the service's tick), after the modules have posted. */
void ztm_outbox_flush(ztm_outbox_t *ob);

/* Messages waiting for room (the worker is not idle while any wait). */
size_t ztm_outbox_waiting(const ztm_outbox_t *ob);

#endif
