/* Multishot accept with retry and a clean stop; see acceptor.h. */
#include "dataplane/runtime/acceptor.h"

#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "dataplane/runtime/log.h"

static void arm(ztm_acceptor_t *a)
{
    /* No address buffer: a multishot accept would write every peer's
     * address into the same one; callers ask getpeername. */
    struct io_uring_sqe *sqe = ztm_worker_sqe(a->w, &a->op);
    io_uring_prep_multishot_accept(sqe, a->fd, NULL, NULL, SOCK_CLOEXEC);
}

static void close_listener(ztm_acceptor_t *a)
{
    if (a->fd >= 0) {
        close(a->fd);
        a->fd = -1;
    }
    if (a->stopped && a->on_closed)
        a->on_closed(a); /* the last thing: it may free A */
}

static void on_retry(ztm_timer_t *t)
{
    ztm_acceptor_t *a = (ztm_acceptor_t *)((char *)t - offsetof(ztm_acceptor_t, retry));
    if (!a->stopped && !a->op.inflight)
        arm(a);
}

static void on_accept(ztm_worker_t *w, ztm_op_t *op, int res, uint32_t flags)
{
    ztm_acceptor_t *a = (ztm_acceptor_t *)((char *)op - offsetof(ztm_acceptor_t, op));
    if (res >= 0) {
        if (a->stopped)
            close(res);
        else
            a->on_accept(a, res);
    } else if (res != -ECANCELED) {
        ztm_log(ZTM_LOG_WARN, "accept.error", "error=\"%s\"", strerror(-res));
    }
    if (flags & IORING_CQE_F_MORE)
        return;
    if (a->stopped) {
        close_listener(a);
        return;
    }
    bool pause = res == -EMFILE || res == -ENFILE || res == -ENOMEM || res == -ENOBUFS;
    if (pause)
        ztm_timer_arm(ztm_worker_timers(w), &a->retry, ztm_worker_now(w) + 100 * ZTM_NS_PER_MS);
    else
        arm(a);
}

void ztm_acceptor_start(ztm_acceptor_t *a, ztm_worker_t *w, int fd, ztm_accept_cb cb, void *user)
{
    a->w = w;
    a->fd = fd;
    a->stopped = false;
    a->on_accept = cb;
    a->user = user;
    a->on_closed = NULL;
    ztm_op_init(&a->op, on_accept, NULL);
    ztm_timer_init(&a->retry, on_retry);
    arm(a);
}

void ztm_acceptor_stop(ztm_acceptor_t *a)
{
    if (a->stopped)
        return;
    a->stopped = true;
    ztm_timer_cancel(ztm_worker_timers(a->w), &a->retry);
    /* Refuse new connections now, not when the cancelled accept completes:
     * a shut-down listener answers SYNs with RST and ends pending accepts. */
    if (a->fd >= 0)
        (void)shutdown(a->fd, SHUT_RDWR);
    if (a->op.inflight)
        ztm_worker_cancel_op(a->w, &a->op);
    else
        close_listener(a);
}

bool ztm_acceptor_closed(const ztm_acceptor_t *a)
{
    return a->stopped && a->fd < 0;
}
