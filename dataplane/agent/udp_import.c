/* UDP imports; see udp_import.h.
 *
 * One datagram socket per import, with one receive in flight. A client
 * address seen for the first time starts a flow: an inner stream of the
 * peer session to the exporter, which the peer layer frames and times out.
 * Until the route is known, a new flow keeps its first datagram (one; UDP
 * may drop the rest). Replies go back with sendto() on the import socket:
 * a datagram socket never blocks for long, and a full buffer drops, as UDP
 * does. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "dataplane/agent/udp_import.h"
#include "dataplane/runtime/log.h"

#define MAX_FLOWS 1024
#define DGRAM_MAX 65535

typedef struct uflow uflow_t;

typedef struct udp_import {
    tunnel_t *t; /* NULL once stopped */
    ztm_worker_t *w;
    int fd;
    ztm_ref_t ref;
    ztm_op_t op;
    struct msghdr mh;
    struct iovec iov;
    struct sockaddr_storage from;
    uflow_t *flows;
    unsigned n_flows;
    uint8_t buf[DGRAM_MAX];
} udp_import_t;

struct uflow {
    udp_import_t *ui;
    ztm_addr_t from;
    ztm_peer_t *peer; /* NULL until routed */
    uint32_t id;
    uint8_t *pending; /* the first datagram, until routed */
    size_t pending_len;
    uflow_t *prev, *next;
};

static void flow_free(uflow_t *f)
{
    udp_import_t *ui = f->ui;
    if (f->prev)
        f->prev->next = f->next;
    else
        ui->flows = f->next;
    if (f->next)
        f->next->prev = f->prev;
    ui->n_flows--;
    free(f->pending);
    free(f);
}

static void on_reply(void *arg, const uint8_t *dgram, size_t len)
{
    uflow_t *f = arg;
    udp_import_t *ui = f->ui;
    if (ui->fd < 0)
        return;
    ssize_t n = sendto(ui->fd, dgram, len, MSG_DONTWAIT, (struct sockaddr *)&f->from.ss, f->from.len);
    if (n >= 0 && ui->t)
        ui->t->bytes_in += (uint64_t)n;
}

static void on_end(void *arg, const char *reason)
{
    uflow_t *f = arg;
    if (f->ui->t)
        f->ui->t->conns_active--;
    ztm_log(ZTM_LOG_DEBUG, "tunnel.udp_flow_end", "reason=\"%s\"", reason);
    flow_free(f);
}

static const ztm_peer_udp_cb_t flow_cb = {.on_reply = on_reply, .on_end = on_end};

/* Opens F's stream to EXPORTER and sends what F kept. False: F is freed. */
static bool flow_route(uflow_t *f, const char *exporter)
{
    tunnel_t *t = f->ui->t;
    psess_t *ps = agent_session_to(t->m, exporter);
    if (!ps || ztm_peer_udp_open(ps->peer, t->name, &flow_cb, f, &f->id) < 0) {
        t->conns_refused++;
        t->route[0] = 0; /* look again for the next flow */
        flow_free(f);
        return false;
    }
    f->peer = ps->peer;
    t->conns_total++;
    t->conns_active++;
    if (f->pending) {
        ztm_peer_udp_send(f->peer, f->id, f->pending, f->pending_len);
        t->bytes_out += f->pending_len;
        free(f->pending);
        f->pending = NULL;
    }
    return true;
}

void udp_import_route(tunnel_t *t, const char *exporter)
{
    udp_import_t *ui = t->udp_imp;
    if (!ui)
        return;
    for (uflow_t *f = ui->flows, *n; f; f = n) {
        n = f->next;
        if (!f->peer) {
            if (exporter)
                flow_route(f, exporter);
            else
                flow_free(f);
        }
    }
}

static void on_datagram(udp_import_t *ui, size_t len)
{
    tunnel_t *t = ui->t;
    ztm_addr_t from = {.len = ui->mh.msg_namelen};
    memcpy(&from.ss, &ui->from, sizeof(from.ss));
    uflow_t *f = ui->flows;
    while (f && !(f->from.len == from.len && memcmp(&f->from.ss, &from.ss, from.len) == 0))
        f = f->next;
    if (f && f->peer) {
        if (ztm_peer_udp_send(f->peer, f->id, ui->buf, len) == 0)
            t->bytes_out += len;
        return;
    }
    if (f)
        return; /* still routing: this one is dropped */
    if (ui->n_flows == MAX_FLOWS) {
        t->conns_refused++;
        return;
    }
    f = calloc(1, sizeof(*f));
    if (!f)
        return;
    f->ui = ui;
    f->from = from;
    f->next = ui->flows;
    if (f->next)
        f->next->prev = f;
    ui->flows = f;
    ui->n_flows++;
    const char *exporter = t->via[0] ? t->via : t->route[0] ? t->route : NULL;
    if (exporter) {
        f->pending = malloc(len ? len : 1);
        if (f->pending) {
            memcpy(f->pending, ui->buf, len);
            f->pending_len = len;
        }
        flow_route(f, exporter);
        return;
    }
    f->pending = malloc(len ? len : 1);
    if (f->pending) {
        memcpy(f->pending, ui->buf, len);
        f->pending_len = len;
    }
    tunnels_look_up(t);
}

static void arm(udp_import_t *ui);

static void on_recv(ztm_worker_t *w, ztm_op_t *op, int res, uint32_t flags)
{
    udp_import_t *ui = (udp_import_t *)((char *)op - offsetof(udp_import_t, op));
    if (!ui->t)
        return; /* stopped */
    if (res >= 0)
        on_datagram(ui, (size_t)res);
    else if (res != -EAGAIN && res != -EINTR && res != -ECONNREFUSED && res != -ECANCELED)
        ztm_log(ZTM_LOG_WARN, "tunnel.udp_recv", "service=%s error=\"%s\"", ui->t->name, strerror(-res));
    if (ui->t && res != -ECANCELED)
        arm(ui);
}

static void arm(udp_import_t *ui)
{
    ui->iov.iov_base = ui->buf;
    ui->iov.iov_len = sizeof(ui->buf);
    memset(&ui->mh, 0, sizeof(ui->mh));
    ui->mh.msg_name = &ui->from;
    ui->mh.msg_namelen = sizeof(ui->from);
    ui->mh.msg_iov = &ui->iov;
    ui->mh.msg_iovlen = 1;
    struct io_uring_sqe *sqe = ztm_worker_sqe(ui->w, &ui->op);
    io_uring_prep_recvmsg(sqe, ui->fd, &ui->mh, 0);
}

static void ui_release(ztm_ref_t *r)
{
    udp_import_t *ui = (udp_import_t *)((char *)r - offsetof(udp_import_t, ref));
    if (ui->fd >= 0)
        close(ui->fd);
    free(ui);
}

int udp_import_start(tunnel_t *t, const ztm_addr_t *la, ztm_addr_t *bound)
{
    udp_import_t *ui = calloc(1, sizeof(*ui));
    if (!ui)
        return -ENOMEM;
    ui->fd = socket(la->ss.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (ui->fd < 0 || bind(ui->fd, (const struct sockaddr *)&la->ss, la->len) < 0) {
        int e = -errno;
        if (ui->fd >= 0)
            close(ui->fd);
        free(ui);
        return e;
    }
    bound->len = sizeof(bound->ss);
    getsockname(ui->fd, (struct sockaddr *)&bound->ss, &bound->len);
    ui->t = t;
    ui->w = t->m->a->w;
    ztm_ref_init(&ui->ref, ui_release);
    ztm_op_init(&ui->op, on_recv, &ui->ref);
    t->udp_imp = ui;
    arm(ui);
    return 0;
}

void udp_import_stop(tunnel_t *t)
{
    udp_import_t *ui = t->udp_imp;
    if (!ui)
        return;
    t->udp_imp = NULL;
    while (ui->flows) {
        uflow_t *f = ui->flows;
        if (f->peer)
            ztm_peer_udp_close(f->peer, f->id);
        flow_free(f);
    }
    ui->t = NULL;
    ztm_worker_cancel_op(ui->w, &ui->op);
    ztm_ref_put(&ui->ref); /* freed when the receive is back */
}
