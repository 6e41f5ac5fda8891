/* What `ztm controller` and `ztm hub` share: one worker thread owns the
 * store and serves the gRPC API over mutual TLS with a certificate (role
 * hub) from the mesh CA; the hub adds the relay's routes (dataplane/hub)
 * on the same connections, and keeps the presence of the endpoints whose
 * Events streams it holds. See serve.h. */
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
#include "controlplane/grpc/server.h"
#include "controlplane/services/api.h"
#include "controlplane/store/store.h"
#include "dataplane/hub/relay.h"
#include "dataplane/runtime/acceptor.h"
#include "dataplane/runtime/log.h"
#include "dataplane/runtime/net.h"
#include "dataplane/runtime/worker.h"

typedef struct {
    const ztm_serve_kind_t *k;
    uint64_t accept_timeout_ns;
    ztm_identity_t self; /* our certificate's identity */
    ztm_store_t *store;
    ztm_ca_t *ca;
    ztm_api_t *api;
    ztm_tls_ctx_t *tls;
    int listen_fd;
    char addr[ZTM_ADDRSTRLEN];
    char advertise[300];
    char pin[ZTM_PIN_HEX_LEN + 1];
    /* on the worker */
    ztm_worker_t *w;
    ztm_grpc_server_t *srv;
    ztm_hub_relay_t *relay;
    ztm_acceptor_t acceptor;
    ztm_timer_t poll;
} ctl_t;

static ctl_t *ctl_of_timer(ztm_timer_t *t)
{
    return (ctl_t *)((char *)t - offsetof(ctl_t, poll));
}

static void on_poll(ztm_timer_t *t)
{
    ctl_t *c = ctl_of_timer(t);
    (void)ztm_store_poll(c->store); /* soft-state expiry */
    ztm_timer_arm(ztm_worker_timers(c->w), &c->poll, ztm_worker_now(c->w) + ZTM_NS_PER_SEC);
}

/* TLS verify hook: revoked certificates are refused at the handshake. */
static const char *verify_peer(void *arg, ztm_tls_conn_t *conn, X509 *peer)
{
    ctl_t *c = arg;
    return c->srv ? ztm_grpc_server_verify(c->srv, conn, peer) : "starting";
}

static void on_accept(ztm_acceptor_t *a, int fd)
{
    ctl_t *c = a->user;
    int r = ztm_grpc_server_accept(c->srv, fd, c->tls);
    if (r < 0)
        ztm_log(ZTM_LOG_WARN, "serve.accept", "error=\"%s\"", strerror(-r));
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

static int svc_start(ztm_worker_t *w, void *arg)
{
    ctl_t *c = arg;
    c->w = w;
    int r = ztm_grpc_server_new(w, c->api, c->store, NULL, &c->srv);
    if (r < 0)
        return r;
    if (c->k->relay) {
        ztm_hub_relay_config_t rc = {.hub_name = c->self.name, .mesh = ztm_ca_mesh(c->ca),
                                     .accept_timeout_ns = c->accept_timeout_ns,
                                     .on_presence = on_presence, .arg = c};
        if ((r = ztm_hub_relay_new(w, c->srv, &rc, &c->relay)) < 0) {
            ztm_grpc_server_free(c->srv);
            c->srv = NULL;
            return r;
        }
    }
    ztm_timer_init(&c->poll, on_poll);
    ztm_timer_arm(ztm_worker_timers(w), &c->poll, ztm_worker_now(w) + ZTM_NS_PER_SEC);
    ztm_acceptor_start(&c->acceptor, w, c->listen_fd, on_accept, c);
    c->listen_fd = -1;
    return 0;
}

static void svc_tick(ztm_worker_t *w, void *arg)
{
    ctl_t *c = arg;
    if (c->srv)
        ztm_grpc_server_run(c->srv);
    if (c->relay)
        ztm_hub_relay_run(c->relay);
}

static void svc_drain(ztm_worker_t *w, void *arg)
{
    ctl_t *c = arg;
    ztm_acceptor_stop(&c->acceptor);
    ztm_timer_cancel(ztm_worker_timers(w), &c->poll);
    if (c->relay)
        ztm_hub_relay_drain(c->relay);
    ztm_grpc_server_drain(c->srv);
}

static void svc_stop(ztm_worker_t *w, void *arg)
{
    ctl_t *c = arg;
    ztm_grpc_server_stop(c->srv);
}

static bool svc_idle(ztm_worker_t *w, void *arg)
{
    ctl_t *c = arg;
    return !c->srv || (ztm_grpc_server_conns(c->srv) == 0 && ztm_acceptor_closed(&c->acceptor));
}

static void svc_finish(ztm_worker_t *w, void *arg)
{
    ctl_t *c = arg;
    ztm_timer_cancel(ztm_worker_timers(w), &c->poll);
    if (c->acceptor.fd >= 0)
        close(c->acceptor.fd);
    ztm_hub_relay_free(c->relay);
    c->relay = NULL;
    ztm_grpc_server_free(c->srv);
    c->srv = NULL;
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
    ztm_log_ready(ev, "addr=%s advertise=%s mesh=%s ca_pin=sha256:%s store=%s name=%s", c->addr,
                  c->advertise, ztm_ca_mesh(c->ca), c->pin, ztm_store_backend(c->store),
                  c->self.name);
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
    .draining = svc_draining,
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
    enum { O_STATE = 256, O_LISTEN, O_NAME, O_MESH, O_DRAIN, O_LEVEL, O_FORMAT, O_ACCEPT };
    static const struct option opts[] = {
        {"state", required_argument, NULL, O_STATE},
        {"listen", required_argument, NULL, O_LISTEN},
        {"name", required_argument, NULL, O_NAME},
        {"mesh", required_argument, NULL, O_MESH},
        {"drain-timeout", required_argument, NULL, O_DRAIN},
        {"log-level", required_argument, NULL, O_LEVEL},
        {"log-format", required_argument, NULL, O_FORMAT},
        {"accept-timeout", required_argument, NULL, O_ACCEPT},
        {"help", no_argument, NULL, 'h'},
        {0},
    };
    const char *cmd = k->cmd;
    const char *state = NULL, *listen_s = k->listen, *name_s = "localhost", *mesh = "mesh";
    uint64_t drain_ns = 10 * ZTM_NS_PER_SEC_CLI, accept_ns = 0;
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

    ctl_t c = {.k = k, .listen_fd = -1, .accept_timeout_ns = accept_ns};
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
    if ((r = ztm_listen_group(&la, 1, 1024, &c.listen_fd, &bound)) < 0) {
        ret = r == -EADDRINUSE ? ztm_cli_usage_error(cmd, "--listen '%s': address already in use", listen_s)
                               : ztm_cli_usage_error(cmd, "--listen '%s': %s", listen_s, strerror(-r));
        goto out;
    }
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
                           .ca_file = ca, .client_cert_optional = true,
                           .on_verify = verify_peer, .on_verify_arg = &c};
    if ((r = ztm_tls_ctx_new(&c.tls, &tc)) < 0) {
        fprintf(stderr, "ztm %s: error: TLS set-up: %s\n", cmd, ztm_tls_strerror(r));
        goto out;
    }
    ztm_engine_config_t ec = {.workers = 1, .pin = false, .drain_timeout_ns = drain_ns,
                              .buf_count = 64, .buf_size = 16384};
    r = ztm_engine_run(&ec, &serve_service, &c, on_ready);
    ret = r < 0 ? ZTM_EXIT_FAIL : ZTM_EXIT_OK;
    if (r < 0)
        fprintf(stderr, "ztm %s: error: %s\n", cmd, strerror(-r));
    char ev[32];
    snprintf(ev, sizeof(ev), "%s.stop", cmd);
    ztm_log(ZTM_LOG_INFO, ev, "status=%s", r < 0 ? "error" : "ok");
out:
    if (c.listen_fd >= 0)
        close(c.listen_fd);
    ztm_tls_ctx_free(c.tls);
    ztm_api_free(c.api);
    ztm_ca_free(c.ca);
    ztm_store_close(c.store);
    return ret;
}
