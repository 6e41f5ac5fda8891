/* An acceptor: one worker's multishot accept on its own SO_REUSEPORT
 * listener. It re-arms itself when the kernel ends the multishot (after a
 * short pause on EMFILE/ENFILE/ENOMEM, never in a hot loop) and, once
 * stopped, closes the listener when its last completion is in. Embedded in
 * the service's per-worker state. */
#ifndef ZTM_RUNTIME_ACCEPTOR_H
#define ZTM_RUNTIME_ACCEPTOR_H

#include <stdbool.h>

#include "dataplane/runtime/worker.h"

typedef struct ztm_acceptor ztm_acceptor_t;
/* FD is a new connection, owned by the callee from now on. */
typedef void (*ztm_accept_cb)(ztm_acceptor_t *a, int fd);

struct ztm_acceptor {
    ztm_worker_t *w;
    int fd;
    bool stopped;
    ztm_op_t op;
    ztm_timer_t retry;
    ztm_accept_cb on_accept;
    void *user;
    /* Optional, set after start: called once the stopped acceptor has
     * closed its socket and nothing of it is in flight (it may free A). */
    void (*on_closed)(ztm_acceptor_t *a);
};

/* Starts accepting on listening socket FD (owned by the acceptor now). */
void ztm_acceptor_start(ztm_acceptor_t *a, ztm_worker_t *w, int fd, ztm_accept_cb cb, void *user);
/* Stops accepting at once (the listener is shut down: new connections are
 * refused from this call on); the fd closes once the accept op has ended. */
void ztm_acceptor_stop(ztm_acceptor_t *a);
/* True once stopped and the listener is closed. */
bool ztm_acceptor_closed(const ztm_acceptor_t *a);

#endif
