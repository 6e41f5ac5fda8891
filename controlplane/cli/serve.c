/* What `ztm controller` and `ztm hub` share; see serve.h. Worker 0 is the
 * control plane, workers 1..N the data plane; the service's callbacks
 * dispatch on the worker's id. Data workers end together (the last to have
 * nothing left wakes the others), and the control worker ends last, since
 * until then it may owe a data worker an answer. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "controlplane/ca/ca.h"
#include "controlplane/cli/cli.h"
#include "controlplane/cli/creds.h"
#include "controlplane/cli/flags.h"
#include "controlplane/cli/serve.h"
#include "controlplane/grpc/forward.h"
#include "controlplane/grpc/server.h"
#include "controlplane/services/api.h"
#include "controlplane/store/store.h"
#include "dataplane/hub/registry.h"
#include "dataplane/hub/relay.h"
#include "dataplane/runtime/acceptor.h"
#include "dataplane/runtime/log.h"
#include "dataplane/runtime/net.h"
#include "dataplane/runtime/outbox.h"
#include "dataplane/runtime/worker.h"

typedef struct ctl ctl_t;

/* A data-plane worker (1..N): its own listener, TLS context and gRPC
 * server; the calls it takes are forwarded to the control-plane worker. */
typedef struct {
    ctl_t *c;
    ztm_worker_t *w;
    ztm_tls_ctx_t *tls;
    int listen_fd;
    ztm_acceptor_t acceptor;
    ztm_outbox_t *ob;
    ztm_grpc_server_t *srv;
    ztm_hub_relay_t *relay;
    bool done; /* counted in data_done */
} dw_t;

/* The control-plane worker (0): the store, the CA and the API are its
 * alone. It accepts no connection. */
typedef struct {
    ztm_worker_t *w;
    ztm_outbox_t *ob;
    ztm_grpc_exec_t *exec;
    ztm_hub_registry_t *registry; /* the hub: where each endpoint's Events stream is */
    ztm_store_sub_t *sub;
    ztm_revset_t *revoked; /* as last published to the data workers */
    bool store_changed;    /* since the last look at the revocations */
    ztm_timer_t poll;
} cw_t;

struct ctl {
    const ztm_serve_kind_t *k;
    uint64_t accept_timeout_ns;
    unsigned n_data;       /* data-plane workers */
    ztm_identity_t self;   /* our certificate's identity */
    ztm_store_t *store;
    ztm_ca_t *ca;
    ztm_api_t *api;
    ztm_revset_t *revoked; /* at start, before the workers run */
    char addr[ZTM_ADDRSTRLEN];
    char advertise[300];
    char pin[ZTM_PIN_HEX_LEN + 1];
    dw_t *dw; /* [1..n_data]: by worker id */
    cw_t cw;
    _Atomic unsigned data_done; /* data workers with nothing left to do (draining) */
};

/* Messages of serve.c itself. */
enum { SERVE_MSG_REVOKED = ZTM_MSG_SERVICE }; /* ptr: a ztm_revset_t reference */

#define CONTROL 0u /* the control-plane worker's id */
#define MAX_DATA_WORKERS 128

static void log_store_error(const char *ev, int r)
{
    ztm_log(ZTM_LOG_ERROR, ev, "error=\"%s\"", r < -4095 ? ztm_store_strerror(r) : strerror(-r));
}

/* ---- what runs on every worker --------------------------------------- */
static void discard(void *arg, const ztm_msg_t *m)
{
    if (m->type == SERVE_MSG_REVOKED)
        ztm_revset_put(m->ptr);
    else if (!ztm_grpc_fwd_discard(m) && !ztm_hub_discard(m))
        ztm_log(ZTM_LOG_ERROR, "serve.discard", "type=%u msg=\"unknown message\"", m->type);
}

static void svc_discard(const ztm_msg_t *m, void *arg)
{
    discard(arg, m);
}

/* ---- the control-plane worker ---------------------------------------- */
static void on_poll(ztm_timer_t *t)
{
    ctl_t *c = (ctl_t *)((char *)t - offsetof(ctl_t, cw.poll));
    (void)ztm_store_poll(c->store); /* soft-state expiry */
    ztm_timer_arm(ztm_worker_timers(c->cw.w), &c->cw.poll, ztm_worker_now(c->cw.w) + ZTM_NS_PER_SEC);
}

static void on_store_notify(void *arg, uint64_t version)
{
    ctl_t *c = arg;
    c->cw.store_changed = true;
}

/* After a change: if the revocations are not those the data workers have,
 * a new snapshot goes to each (after the replies of this turn, so that a
 * caller who revoked itself gets its answer before its connection is cut). */
static void publish_revoked(ctl_t *c)
{
    cw_t *cw = &c->cw;
    if (!cw->store_changed)
        return;
    cw->store_changed = false;
    ztm_revset_t *now;
    int r = ztm_revset_build(c->store, &now);
    if (r < 0) {
        log_store_error("serve.revocations", r);
        cw->store_changed = true; /* tried again on the next turn */
        return;
    }
    if (ztm_revset_equal(now, cw->revoked)) {
        ztm_revset_put(now);
        return;
    }
    ztm_revset_put(cw->revoked);
    cw->revoked = now;
    ztm_log(ZTM_LOG_INFO, "serve.revocations", "count=%zu workers=%u", ztm_revset_count(now),
            c->n_data);
    for (unsigned i = 1; i <= c->n_data; i++) {
        ztm_msg_t m = {.type = SERVE_MSG_REVOKED, .ptr = ztm_revset_get(now)};
        ztm_outbox_post(cw->ob, i, &m);
    }
}

/* The relay's endpoints came and went: presence (soft state: ours until
 * this process ends) and a watch event each, in one store group. */
static uint64_t on_presence(void *arg, const ztm_hub_presence_t *ch, size_t n)
{
    ctl_t *c = arg;
    int g = ztm_store_group_begin(c->store);
    for (size_t i = 0; i < n; i++) {
        int r = ch[i].present ? ztm_store_soft_set(c->store, ZTM_SOFT_PRESENCE, ch[i].endpoint_id,
                                                   c->self.id, strlen(c->self.id), 0)
                              : ztm_store_soft_del(c->store, ZTM_SOFT_PRESENCE, ch[i].endpoint_id);
        if (r == 0)
            r = ztm_api_publish_endpoint(c->api, ch[i].endpoint_id);
        if (r < 0)
            ztm_log(ZTM_LOG_WARN, "hub.presence", "endpoint=%s present=%d error=\"%s\"",
                    ch[i].endpoint_name, ch[i].present,
                    r < -4095 ? ztm_store_strerror(r) : strerror(-r));
    }
    if (g == 0 && (g = ztm_store_group_end(c->store)) < 0)
        ztm_log(ZTM_LOG_ERROR, "hub.presence", "changes=%zu error=\"%s\"", n,
                g < -4095 ? ztm_store_strerror(g) : strerror(-g));
    return ztm_store_version(c->store);
}

static int control_start(ctl_t *c, ztm_worker_t *w)
{
    cw_t *cw = &c->cw;
    cw->w = w;
    cw->revoked = ztm_revset_get(c->revoked);
    int r = ztm_outbox_new(w, discard, c, &cw->ob);
    if (r == 0)
        r = ztm_grpc_exec_new(w, c->api, c->store, cw->ob, &cw->exec);
    if (r == 0)
        r = ztm_store_subscribe(c->store, on_store_notify, c, &cw->sub);
    if (r == 0 && c->k->relay) {
        ztm_hub_registry_config_t gc = {.ob = cw->ob, .on_presence = on_presence, .arg = c};
        r = ztm_hub_registry_new(w, &gc, &cw->registry);
    }
    if (r < 0)
        return r;
    ztm_timer_init(&cw->poll, on_poll);
    ztm_timer_arm(ztm_worker_timers(w), &cw->poll, ztm_worker_now(w) + ZTM_NS_PER_SEC);
    return 0;
}

static void control_tick(ctl_t *c)
{
    cw_t *cw = &c->cw;
    if (cw->registry)
        ztm_hub_registry_run(cw->registry);
    ztm_grpc_exec_run(cw->exec);
    publish_revoked(c);
    ztm_outbox_flush(cw->ob);
}

static void control_message(ctl_t *c, const ztm_msg_t *m)
{
    if (!ztm_grpc_exec_message(c->cw.exec, m) &&
        !(c->cw.registry && ztm_hub_registry_message(c->cw.registry, m))) {
        ztm_log(ZTM_LOG_ERROR, "serve.message", "type=%u msg=\"unexpected on the control worker\"",
                m->type);
        discard(c, m);
    }
}

static void control_finish(ctl_t *c)
{
    cw_t *cw = &c->cw;
    ztm_timer_cancel(ztm_worker_timers(cw->w), &cw->poll);
    if (cw->sub)
        ztm_store_unsubscribe(c->store, cw->sub);
    ztm_grpc_exec_free(cw->exec);
    ztm_hub_registry_free(cw->registry);
    ztm_outbox_free(cw->ob);
    ztm_revset_put(cw->revoked);
    *cw = (cw_t){0};
}

/* ---- a data-plane worker --------------------------------------------- */
/* TLS verify hook: revoked certificates are refused at the handshake (the
 * worker's own snapshot of the revocations; never the store). */
static const char *verify_peer(void *arg, ztm_tls_conn_t *conn, X509 *peer)
{
    dw_t *d = arg;
    return d->srv ? ztm_grpc_server_verify(d->srv, conn, peer) : "starting";
}

static void on_accept(ztm_acceptor_t *a, int fd)
{
    dw_t *d = a->user;
    int r = ztm_grpc_server_accept(d->srv, fd, d->tls);
    if (r < 0)
        ztm_log(ZTM_LOG_WARN, "serve.accept", "error=\"%s\"", strerror(-r));
}

static int data_start(dw_t *d, ztm_worker_t *w)
{
    ctl_t *c = d->c;
    d->w = w;
    int r = ztm_outbox_new(w, discard, c, &d->ob);
    if (r == 0)
        r = ztm_grpc_server_new_forward(w, d->ob, CONTROL, NULL, &d->srv);
    if (r == 0 && c->k->relay) {
        ztm_hub_relay_config_t rc = {.hub_name = c->self.name, .mesh = ztm_ca_mesh(c->ca),
                                     .accept_timeout_ns = c->accept_timeout_ns, .ob = d->ob,
                                     .registry = CONTROL};
        r = ztm_hub_relay_new(w, d->srv, &rc, &d->relay);
    }
    if (r < 0)
        return r;
    ztm_grpc_server_set_revoked(d->srv, ztm_revset_get(c->revoked));
    ztm_acceptor_start(&d->acceptor, w, d->listen_fd, on_accept, d);
    d->listen_fd = -1;
    return 0;
}

static void data_message(dw_t *d, const ztm_msg_t *m)
{
    if (m->type == SERVE_MSG_REVOKED) {
        ztm_grpc_server_set_revoked(d->srv, m->ptr);
        return;
    }
    if (!ztm_grpc_server_message(d->srv, m) && !(d->relay && ztm_hub_relay_message(d->relay, m))) {
        ztm_log(ZTM_LOG_ERROR, "serve.message", "type=%u msg=\"unexpected on a data worker\"",
                m->type);
        discard(d->c, m);
    }
}

/* A data worker ends with the others: once every one of them has nothing
 * left, no message that needs an answer can be on its way (an accept for
 * a session here comes only over a live connection, and a worker without
 * connections takes no new ones while draining). */
static void data_set_done(dw_t *d)
{
    if (d->done)
        return;
    d->done = true;
    ctl_t *c = d->c;
    if (atomic_fetch_add(&c->data_done, 1) + 1 == c->n_data) {
        ztm_engine_t *e = ztm_worker_engine(d->w);
        for (unsigned i = 1; i <= c->n_data; i++)
            ztm_engine_wake(e, i); /* they may all end now */
    }
}

static bool data_idle(dw_t *d)
{
    bool idle = !d->srv || (ztm_grpc_server_conns(d->srv) == 0 &&
                            ztm_acceptor_closed(&d->acceptor) &&
                            (!d->relay || ztm_hub_relay_idle(d->relay)));
    if (!idle)
        return false;
    data_set_done(d);
    return ztm_outbox_waiting(d->ob) == 0 && atomic_load(&d->c->data_done) == d->c->n_data;
}

static void data_finish(dw_t *d)
{
    if (d->w)
        data_set_done(d); /* a worker that failed to start holds nobody up */
    if (d->acceptor.fd >= 0 && d->acceptor.w)
        close(d->acceptor.fd);
    ztm_hub_relay_free(d->relay);
    d->relay = NULL;
    ztm_grpc_server_free(d->srv);
    d->srv = NULL;
    ztm_outbox_free(d->ob);
    d->ob = NULL;
}

/* ---- the service: worker 0 is the control plane, the others data ------ */
static int svc_start(ztm_worker_t *w, void *arg)
{
    ctl_t *c = arg;
    unsigned id = (unsigned)ztm_worker_id(w);
    return id == CONTROL ? control_start(c, w) : data_start(&c->dw[id], w);
}

static void svc_tick(ztm_worker_t *w, void *arg)
{
    ctl_t *c = arg;
    unsigned id = (unsigned)ztm_worker_id(w);
    if (id == CONTROL) {
        control_tick(c);
        return;
    }
    dw_t *d = &c->dw[id];
    if (d->relay)
        ztm_hub_relay_run(d->relay);
    ztm_outbox_flush(d->ob);
}

static void svc_message(ztm_worker_t *w, const ztm_msg_t *m, void *arg)
{
    ctl_t *c = arg;
    unsigned id = (unsigned)ztm_worker_id(w);
    if (id == CONTROL)
        control_message(c, m);
    else
        data_message(&c->dw[id], m);
}

static void svc_drain(ztm_worker_t *w, void *arg)
{
    ctl_t *c = arg;
    unsigned id = (unsigned)ztm_worker_id(w);
    if (id == CONTROL) {
        ztm_timer_cancel(ztm_worker_timers(w), &c->cw.poll);
        return;
    }
    dw_t *d = &c->dw[id];
    ztm_acceptor_stop(&d->acceptor);
    if (d->relay)
        ztm_hub_relay_drain(d->relay);
    if (d->srv)
        ztm_grpc_server_drain(d->srv);
}

static void svc_stop(ztm_worker_t *w, void *arg)
{
    ctl_t *c = arg;
    unsigned id = (unsigned)ztm_worker_id(w);
    if (id != CONTROL && c->dw[id].srv)
        ztm_grpc_server_stop(c->dw[id].srv);
}

static bool svc_idle(ztm_worker_t *w, void *arg)
{
    ctl_t *c = arg;
    unsigned id = (unsigned)ztm_worker_id(w);
    if (id == CONTROL) /* last: the data workers' calls are ours to answer */
        return ztm_engine_running(ztm_worker_engine(w)) == 1;
    return data_idle(&c->dw[id]);
}

static void svc_finish(ztm_worker_t *w, void *arg)
{
    ctl_t *c = arg;
    unsigned id = (unsigned)ztm_worker_id(w);
    if (id == CONTROL)
        control_finish(c);
    else
        data_finish(&c->dw[id]);
}

static void svc_draining(void *arg, uint64_t timeout_ns)
{
    ctl_t *c = arg;
    char ev[32];
    snprintf(ev, sizeof(ev), "%s.drain", c->k->cmd);
    ztm_log(ZTM_LOG_INFO, ev, "timeout_ms=%llu", (unsigned long long)(timeout_ns / ZTM_NS_PER_MS));
}

static void on_ready(void *arg, unsigned workers)
{
    ctl_t *c = arg;
    char ev[32];
    snprintf(ev, sizeof(ev), "%s.listen", c->k->cmd);
    ztm_log_ready(ev, "addr=%s advertise=%s mesh=%s ca_pin=sha256:%s store=%s name=%s workers=%u",
                  c->addr, c->advertise, ztm_ca_mesh(c->ca), c->pin, ztm_store_backend(c->store),
                  c->self.name, c->n_data);
    if (c->k->relay)
        ztm_log_ready("hub.next", "msg=\"invite the first endpoint: ztm invite NAME; on it: "
                      "ztm join TOKEN\"");
}

static const ztm_service_t serve_service = {
    .name = "serve",
    .start = svc_start,
    .tick = svc_tick,
    .drain = svc_drain,
    .stop = svc_stop,
    .idle = svc_idle,
    .finish = svc_finish,
    .message = svc_message,
    .draining = svc_draining,
    .discard = svc_discard,
};

static bool file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* Our server certificate in the state directory (K->cmd.pem, .key): kept
 * while valid for at least a day, else made anew. Fills C->self. */
static int server_cert(ctl_t *c, const char *state, const char *name, const char **why)
{
    const char *base = c->k->cmd;
    char cert[ZTM_PATH_MAX], key[ZTM_PATH_MAX];
    snprintf(cert, sizeof(cert), "%s/%s.pem", state, base);
    snprintf(key, sizeof(key), "%s/%s.key", state, base);
    for (int attempt = 0;; attempt++) {
        if (file_exists(cert) && file_exists(key)) {
            FILE *f = fopen(cert, "r");
            char buf[8192];
            size_t n = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
            if (f)
                fclose(f);
            buf[n] = 0;
            if (n && ztm_identity_from_pem(buf, n, &c->self) == 0 &&
                c->self.not_after > time(NULL) + 86400 &&
                strcmp(c->self.mesh, ztm_ca_mesh(c->ca)) == 0)
                return 0;
        }
        if (attempt) {
            *why = "reading the certificate just written";
            return -EIO;
        }
        bool name_is_ip = strspn(name, "0123456789.") == strlen(name);
        const char *dns[2] = {"localhost", name};
        const char *ips[2] = {"127.0.0.1", name};
        char ename[ZTM_NAME_MAX + 1];
        snprintf(ename, sizeof(ename), "%s", base);
        int r = ztm_creds_enroll(c->api, c->ca, state, base, ename, ZTM_ROLE_HUB, dns,
                                 name_is_ip ? 1 : 2, ips, name_is_ip ? 2 : 1, why);
        if (r == -EEXIST) {
            snprintf(ename, sizeof(ename), "%s-%lld", base, (long long)time(NULL));
            r = ztm_creds_enroll(c->api, c->ca, state, base, ename, ZTM_ROLE_HUB, dns,
                                 name_is_ip ? 1 : 2, ips, name_is_ip ? 2 : 1, why);
        }
        if (r < 0)
            return r;
    }
}

/* The first admin, for the CLI on this machine: written when the CLI has
 * no credentials yet (never overwritten). */
static void first_admin(ctl_t *c)
{
    char dir[ZTM_PATH_MAX], path[ZTM_PATH_MAX + 64], ev[32];
    snprintf(ev, sizeof(ev), "%s.admin", c->k->cmd);
    if (ztm_creds_cli_dir(dir) < 0)
        return;
    snprintf(path, sizeof(path), "%s/admin.pem", dir);
    if (file_exists(path)) {
        /* Credentials of another mesh would make every CLI call fail with
         * a certificate error: say so now, once. */
        char ca_path[ZTM_PATH_MAX + 64], buf[8192];
        snprintf(ca_path, sizeof(ca_path), "%s/ca.pem", dir);
        FILE *f = fopen(ca_path, "r");
        size_t n = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
        if (f)
            fclose(f);
        buf[n] = 0;
        uint8_t pin[ZTM_PIN_LEN];
        char hex[ZTM_PIN_HEX_LEN + 1] = "";
        if (n && ztm_pin_of_pem(buf, n, pin) == 0)
            ztm_pin_to_hex(pin, hex);
        if (strcmp(hex, c->pin) != 0)
            ztm_log(ZTM_LOG_WARN, ev, "dir=%s msg=\"the CLI's credentials there are for "
                    "another mesh; move that directory away (or set ZTM_CONFIG_DIR) and restart to get "
                    "this mesh's first admin\"", dir);
        return;
    }
    const char *why;
    char name[ZTM_NAME_MAX + 1] = "admin";
    int r = ztm_creds_enroll(c->api, c->ca, dir, "admin", name, ZTM_ROLE_ADMIN, NULL, 0, NULL, 0, &why);
    if (r == -EEXIST) {
        snprintf(name, sizeof(name), "admin-%lld", (long long)time(NULL));
        r = ztm_creds_enroll(c->api, c->ca, dir, "admin", name, ZTM_ROLE_ADMIN, NULL, 0, NULL, 0, &why);
    }
    if (r < 0) {
        ztm_log(ZTM_LOG_WARN, ev, "error=\"%s while %s\"", strerror(r > -4096 ? -r : EIO), why);
        return;
    }
    ztm_creds_write_cli_conf(dir, c->advertise);
    ztm_log(ZTM_LOG_INFO, ev, "name=%s dir=%s msg=\"first admin credentials written; "
            "try: ztm invite NAME\"", name, dir);
}

/* --name HOST or, for the hub, HOST:PORT. */
static bool parse_name(const ztm_serve_kind_t *k, const char *arg, char *host, size_t cap,
                       unsigned long *port)
{
    const char *colon = strrchr(arg, ':');
    size_t hl = colon ? (size_t)(colon - arg) : strlen(arg);
    *port = 0;
    if (colon && (!k->relay || !ztm_flag_ulong(colon + 1, 1, 65535, port)))
        return false;
    if (hl == 0 || hl > 253 || hl >= cap)
        return false;
    memcpy(host, arg, hl);
    host[hl] = 0;
    return strcspn(host, " /:") == hl;
}

int ztm_serve_main(const ztm_serve_kind_t *k, int argc, char **argv)
{
    enum { O_STATE = 256, O_LISTEN, O_NAME, O_MESH, O_DRAIN, O_LEVEL, O_FORMAT, O_ACCEPT, O_WORKERS };
    static const struct option opts[] = {
        {"state", required_argument, NULL, O_STATE},
        {"listen", required_argument, NULL, O_LISTEN},
        {"name", required_argument, NULL, O_NAME},
        {"mesh", required_argument, NULL, O_MESH},
        {"drain-timeout", required_argument, NULL, O_DRAIN},
        {"log-level", required_argument, NULL, O_LEVEL},
        {"log-format", required_argument, NULL, O_FORMAT},
        {"accept-timeout", required_argument, NULL, O_ACCEPT},
        {"workers", required_argument, NULL, O_WORKERS},
        {"help", no_argument, NULL, 'h'},
        {0},
    };
    const char *cmd = k->cmd;
    const char *state = NULL, *listen_s = k->listen, *name_s = "localhost", *mesh = "mesh";
    uint64_t drain_ns = 10 * ZTM_NS_PER_SEC_CLI, accept_ns = 0;
    unsigned long workers = 0;
    opterr = 0;
    optind = 1;
    int o;
    while ((o = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (o) {
        case O_STATE:
            state = optarg;
            break;
        case O_LISTEN:
            listen_s = optarg;
            break;
        case O_NAME:
            name_s = optarg;
            break;
        case O_MESH:
            mesh = optarg;
            break;
        case O_DRAIN:
            if (!ztm_flag_seconds(optarg, true, &drain_ns))
                return ztm_cli_usage_error(cmd, "--drain-timeout '%s': expected seconds >= 0", optarg);
            break;
        case O_ACCEPT:
            if (!k->relay)
                return ztm_cli_usage_error(cmd, "unknown option '--accept-timeout' (see 'ztm %s --help')",
                                           cmd);
            if (!ztm_flag_seconds(optarg, false, &accept_ns))
                return ztm_cli_usage_error(cmd, "--accept-timeout '%s': expected seconds > 0", optarg);
            break;
        case O_WORKERS:
            if (!ztm_flag_ulong(optarg, 1, MAX_DATA_WORKERS, &workers))
                return ztm_cli_usage_error(cmd, "--workers '%s': expected a whole number from 1 to %d",
                                           optarg, MAX_DATA_WORKERS);
            break;
        case O_LEVEL:
        case O_FORMAT: {
            int e = o == O_LEVEL ? ztm_cli_log_level(cmd, optarg) : ztm_cli_log_format(cmd, optarg);
            if (e)
                return e;
            break;
        }
        case 'h':
            fputs(k->usage, stdout);
            return ZTM_EXIT_OK;
        default:
            return ztm_cli_bad_option(cmd, o, argv[optind - 1]);
        }
    }
    if (optind < argc)
        return ztm_cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
    if (!state)
        return ztm_cli_usage_error(cmd, "--state DIR is required (e.g. --state /var/lib/ztm)");
    if (!ztm_mesh_valid(mesh))
        return ztm_cli_usage_error(cmd, "--mesh '%s': use lower-case letters, digits and '-' (a DNS label)", mesh);
    char name[256];
    unsigned long name_port;
    if (!parse_name(k, name_s, name, sizeof(name), &name_port))
        return ztm_cli_usage_error(cmd, k->relay ? "--name '%s': expected HOST or HOST:PORT (a host name "
                                                   "or an IPv4 address, a port 1-65535)"
                                                 : "--name '%s': expected a host name or an IPv4 address",
                                   name_s);

    ctl_t c = {.k = k, .accept_timeout_ns = accept_ns};
    c.n_data = workers ? (unsigned)workers : ztm_engine_cpus();
    if (c.n_data > MAX_DATA_WORKERS)
        c.n_data = MAX_DATA_WORKERS;
    int *fds = NULL;
    ztm_addr_t la, bound;
    const char *why;
    if (ztm_addr_parse(listen_s, &la, &why) < 0)
        return ztm_cli_usage_error(cmd, "--listen '%s': %s", listen_s, why);

    int ret = ZTM_EXIT_FAIL, r;
    ztm_store_options_t so = {.dir = state};
    if ((r = ztm_store_open(&so, &c.store)) < 0) {
        if (r == -EBUSY)
            return ztm_cli_usage_error(cmd, "--state '%s': in use by another ztm process", state);
        return ztm_cli_usage_error(cmd, "--state '%s': %s", state,
                                   r < -4095 ? ztm_store_strerror(r) : strerror(-r));
    }
    bool created = false;
    if ((r = ztm_api_ca_open(c.store, mesh, &c.ca, &created)) < 0) {
        fprintf(stderr, "ztm %s: error: the mesh CA in '%s': %s\n", cmd, state,
                r < -4095 ? ztm_ca_strerror(r) : strerror(-r));
        goto out;
    }
    uint8_t pin[ZTM_PIN_LEN];
    ztm_ca_pin(c.ca, pin);
    ztm_pin_to_hex(pin, c.pin);
    c.dw = calloc(c.n_data + 1, sizeof(*c.dw));
    fds = malloc(c.n_data * sizeof(*fds));
    if (!c.dw || !fds) {
        fprintf(stderr, "ztm %s: error: out of memory\n", cmd);
        goto out;
    }
    for (unsigned i = 0; i <= c.n_data; i++)
        c.dw[i] = (dw_t){.c = &c, .listen_fd = -1, .acceptor = {.fd = -1}};
    /* One SO_REUSEPORT listener per data worker: the kernel spreads the
     * connections, no accept queue is shared. */
    if ((r = ztm_listen_group(&la, c.n_data, 1024, fds, &bound)) < 0) {
        ret = r == -EADDRINUSE ? ztm_cli_usage_error(cmd, "--listen '%s': address already in use", listen_s)
                               : ztm_cli_usage_error(cmd, "--listen '%s': %s", listen_s, strerror(-r));
        goto out;
    }
    for (unsigned i = 0; i < c.n_data; i++)
        c.dw[i + 1].listen_fd = fds[i];
    ztm_addr_format((struct sockaddr *)&bound.ss, c.addr, sizeof(c.addr));
    if (name_port)
        snprintf(c.advertise, sizeof(c.advertise), "%s:%lu", name, name_port);
    else
        snprintf(c.advertise, sizeof(c.advertise), "%s:%s", name, strrchr(c.addr, ':') + 1);
    const char *hubs[1] = {c.advertise};
    ztm_api_config_t ac = {.hubs = hubs, .n_hubs = 1};
    if ((r = ztm_api_new(&ac, c.store, c.ca, &c.api)) < 0) {
        fprintf(stderr, "ztm %s: error: %s\n", cmd, strerror(-r));
        goto out;
    }
    if (created) {
        char ev[32];
        snprintf(ev, sizeof(ev), "%s.ca_created", cmd);
        ztm_log(ZTM_LOG_INFO, ev, "mesh=%s ca_pin=sha256:%s state=%s", ztm_ca_mesh(c.ca), c.pin,
                state);
    }
    if ((r = server_cert(&c, state, name, &why)) < 0) {
        fprintf(stderr, "ztm %s: error: our certificate: %s while %s\n", cmd,
                r < -4095 ? ztm_ca_strerror(r) : strerror(-r), why);
        goto out;
    }
    first_admin(&c);
    char cert[ZTM_PATH_MAX], key[ZTM_PATH_MAX], ca[ZTM_PATH_MAX];
    snprintf(cert, sizeof(cert), "%s/%s.pem", state, k->cmd);
    snprintf(key, sizeof(key), "%s/%s.key", state, k->cmd);
    snprintf(ca, sizeof(ca), "%s/ca.pem", state);
    /* Join callers have no certificate yet: the API lets them reach Join
     * and Health only; every other method (and the relay) needs a verified
     * identity. */
    ztm_tls_config_t tc = {.role = ZTM_TLS_SERVER, .cert_file = cert, .key_file = key,
                           .ca_file = ca, .client_cert_optional = true};
    /* A TLS context per data worker: its verify hook reads that worker's
     * revocations, nobody else's. */
    for (unsigned i = 1; i <= c.n_data; i++) {
        tc.on_verify = verify_peer;
        tc.on_verify_arg = &c.dw[i];
        if ((r = ztm_tls_ctx_new(&c.dw[i].tls, &tc)) < 0) {
            fprintf(stderr, "ztm %s: error: TLS set-up: %s\n", cmd, ztm_tls_strerror(r));
            goto out;
        }
    }
    if ((r = ztm_revset_build(c.store, &c.revoked)) < 0) {
        fprintf(stderr, "ztm %s: error: reading the revocations: %s\n", cmd,
                r < -4095 ? ztm_store_strerror(r) : strerror(-r));
        goto out;
    }
    ztm_engine_config_t ec = {.workers = c.n_data + 1, .pin = false, .drain_timeout_ns = drain_ns,
                              .buf_count = 64, .buf_size = 16384};
    r = ztm_engine_run(&ec, &serve_service, &c, on_ready);
    ret = r < 0 ? ZTM_EXIT_FAIL : ZTM_EXIT_OK;
    if (r < 0)
        fprintf(stderr, "ztm %s: error: %s\n", cmd, strerror(-r));
    char ev[32];
    snprintf(ev, sizeof(ev), "%s.stop", cmd);
    ztm_log(ZTM_LOG_INFO, ev, "status=%s", r < 0 ? "error" : "ok");
out:
    if (c.dw) {
        for (unsigned i = 1; i <= c.n_data; i++) {
            if (c.dw[i].listen_fd >= 0)
                close(c.dw[i].listen_fd);
            ztm_tls_ctx_free(c.dw[i].tls);
        }
        free(c.dw);
    }
    free(fds);
    ztm_revset_put(c.revoked);
    ztm_api_free(c.api);
    ztm_ca_free(c.ca);
    ztm_store_close(c.store);
    return ret;
}
