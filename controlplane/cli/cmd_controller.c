/* `ztm controller`: the control-plane service alone (split deployments;
 * `ztm hub` embeds the same). One worker thread owns the store and serves
 * the gRPC API over mutual TLS with a certificate from the mesh CA. */
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
#include "controlplane/grpc/server.h"
#include "controlplane/services/api.h"
#include "controlplane/store/store.h"
#include "dataplane/runtime/acceptor.h"
#include "dataplane/runtime/log.h"
#include "dataplane/runtime/net.h"
#include "dataplane/runtime/worker.h"

static const char usage[] =
    "Usage: ztm controller --state DIR [--listen ADDR] [--name HOST] [--mesh ID]\n"
    "\n"
    "Runs the control plane alone: the mesh CA, invites and joins, the\n"
    "endpoint and service registry and the watch stream, as a gRPC API over\n"
    "mutual TLS. At first start it makes the mesh CA in DIR and writes the\n"
    "first admin's credentials to the CLI's config directory, so that\n"
    "`ztm invite` and `ztm get` work on this machine at once.\n"
    "\n"
    "Options:\n"
    "  --state DIR        state directory (created 0700; one process at a time)\n"
    "  --listen ADDR      where to serve (default 127.0.0.1:7443)\n"
    "  --name HOST        name (or address) clients use to reach us; our certificate\n"
    "                     is valid for it and for localhost/127.0.0.1 (default localhost)\n"
    "  --mesh ID          the mesh's ID when the CA is made (default: mesh)\n"
    "  --drain-timeout SECS  --log-level LEVEL  --log-format FORMAT\n";

typedef struct {
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
        ztm_log(ZTM_LOG_WARN, "controller.accept", "error=\"%s\"", strerror(-r));
}

static int svc_start(ztm_worker_t *w, void *arg)
{
    ctl_t *c = arg;
    c->w = w;
    int r = ztm_grpc_server_new(w, c->api, c->store, NULL, &c->srv);
    if (r < 0)
        return r;
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
}

static void svc_drain(ztm_worker_t *w, void *arg)
{
    ctl_t *c = arg;
    ztm_acceptor_stop(&c->acceptor);
    ztm_timer_cancel(ztm_worker_timers(w), &c->poll);
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
    ztm_grpc_server_free(c->srv);
    c->srv = NULL;
}

static void svc_draining(void *arg, uint64_t timeout_ns)
{
    ztm_log(ZTM_LOG_INFO, "controller.drain", "timeout_ms=%llu",
            (unsigned long long)(timeout_ns / ZTM_NS_PER_MS));
}

static void on_ready(void *arg, unsigned workers)
{
    ctl_t *c = arg;
    ztm_log_ready("controller.listen", "addr=%s advertise=%s mesh=%s ca_pin=sha256:%s store=%s",
                  c->addr, c->advertise, ztm_ca_mesh(c->ca), c->pin, ztm_store_backend(c->store));
}

static const ztm_service_t controller_service = {
    .name = "controller",
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

/* Our server certificate in the state directory: kept while valid for at
 * least a day, else made anew. */
static int server_cert(ctl_t *c, const char *state, const char *name, const char **why)
{
    char cert[ZTM_PATH_MAX], key[ZTM_PATH_MAX];
    snprintf(cert, sizeof(cert), "%s/controller.pem", state);
    snprintf(key, sizeof(key), "%s/controller.key", state);
    if (file_exists(cert) && file_exists(key)) {
        FILE *f = fopen(cert, "r");
        char buf[8192];
        size_t n = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
        if (f)
            fclose(f);
        buf[n] = 0;
        ztm_identity_t id;
        if (n && ztm_identity_from_pem(buf, n, &id) == 0 && id.not_after > time(NULL) + 86400 &&
            strcmp(id.mesh, ztm_ca_mesh(c->ca)) == 0)
            return 0;
    }
    bool name_is_ip = strspn(name, "0123456789.:") == strlen(name);
    const char *dns[2] = {"localhost", name};
    const char *ips[2] = {"127.0.0.1", name};
    char ename[ZTM_NAME_MAX + 1];
    snprintf(ename, sizeof(ename), "controller");
    int r = ztm_creds_enroll(c->api, c->ca, state, "controller", ename, ZTM_ROLE_HUB, dns,
                             name_is_ip ? 1 : 2, ips, name_is_ip ? 2 : 1, why);
    if (r == -EEXIST) {
        snprintf(ename, sizeof(ename), "controller-%lld", (long long)time(NULL));
        r = ztm_creds_enroll(c->api, c->ca, state, "controller", ename, ZTM_ROLE_HUB, dns,
                             name_is_ip ? 1 : 2, ips, name_is_ip ? 2 : 1, why);
    }
    return r;
}

/* The first admin, for the CLI on this machine: written when the CLI has
 * no credentials yet (never overwritten). */
static void first_admin(ctl_t *c)
{
    char dir[ZTM_PATH_MAX], path[ZTM_PATH_MAX + 64];
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
            ztm_log(ZTM_LOG_WARN, "controller.admin", "dir=%s msg=\"the CLI's credentials there are for "
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
        ztm_log(ZTM_LOG_WARN, "controller.admin", "error=\"%s while %s\"", strerror(r > -4096 ? -r : EIO), why);
        return;
    }
    ztm_creds_write_cli_conf(dir, c->advertise);
    ztm_log(ZTM_LOG_INFO, "controller.admin", "name=%s dir=%s msg=\"first admin credentials written; "
            "try: ztm invite NAME\"", name, dir);
}

int ztm_cmd_controller(int argc, char **argv)
{
    enum { O_STATE = 256, O_LISTEN, O_NAME, O_MESH, O_DRAIN, O_LEVEL, O_FORMAT };
    static const struct option opts[] = {
        {"state", required_argument, NULL, O_STATE},
        {"listen", required_argument, NULL, O_LISTEN},
        {"name", required_argument, NULL, O_NAME},
        {"mesh", required_argument, NULL, O_MESH},
        {"drain-timeout", required_argument, NULL, O_DRAIN},
        {"log-level", required_argument, NULL, O_LEVEL},
        {"log-format", required_argument, NULL, O_FORMAT},
        {"help", no_argument, NULL, 'h'},
        {0},
    };
    const char *cmd = "controller";
    const char *state = NULL, *listen_s = "127.0.0.1:7443", *name = "localhost", *mesh = "mesh";
    uint64_t drain_ns = 10 * ZTM_NS_PER_SEC_CLI;
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
            name = optarg;
            break;
        case O_MESH:
            mesh = optarg;
            break;
        case O_DRAIN:
            if (!ztm_flag_seconds(optarg, true, &drain_ns))
                return ztm_cli_usage_error(cmd, "--drain-timeout '%s': expected seconds >= 0", optarg);
            break;
        case O_LEVEL:
        case O_FORMAT: {
            int e = o == O_LEVEL ? ztm_cli_log_level(cmd, optarg) : ztm_cli_log_format(cmd, optarg);
            if (e)
                return e;
            break;
        }
        case 'h':
            fputs(usage, stdout);
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
    if (strlen(name) > 253 || strpbrk(name, " /:"))
        return ztm_cli_usage_error(cmd, "--name '%s': expected a host name or an IPv4 address", name);

    ctl_t c = {.listen_fd = -1};
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
        fprintf(stderr, "ztm controller: error: the mesh CA in '%s': %s\n", state,
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
    snprintf(c.advertise, sizeof(c.advertise), "%s:%s", name, strrchr(c.addr, ':') + 1);
    const char *hubs[1] = {c.advertise};
    ztm_api_config_t ac = {.hubs = hubs, .n_hubs = 1};
    if ((r = ztm_api_new(&ac, c.store, c.ca, &c.api)) < 0) {
        fprintf(stderr, "ztm controller: error: %s\n", strerror(-r));
        goto out;
    }
    if (created)
        ztm_log(ZTM_LOG_INFO, "controller.ca_created", "mesh=%s ca_pin=sha256:%s state=%s",
                ztm_ca_mesh(c.ca), c.pin, state);
    if ((r = server_cert(&c, state, name, &why)) < 0) {
        fprintf(stderr, "ztm controller: error: our certificate: %s while %s\n",
                r < -4095 ? ztm_ca_strerror(r) : strerror(-r), why);
        goto out;
    }
    first_admin(&c);
    char cert[ZTM_PATH_MAX], key[ZTM_PATH_MAX], ca[ZTM_PATH_MAX];
    snprintf(cert, sizeof(cert), "%s/controller.pem", state);
    snprintf(key, sizeof(key), "%s/controller.key", state);
    snprintf(ca, sizeof(ca), "%s/ca.pem", state);
    /* Join callers have no certificate yet: the API lets them reach Join
     * and Health only; every other method needs a verified identity. */
    ztm_tls_config_t tc = {.role = ZTM_TLS_SERVER, .cert_file = cert, .key_file = key,
                           .ca_file = ca, .client_cert_optional = true,
                           .on_verify = verify_peer, .on_verify_arg = &c};
    if ((r = ztm_tls_ctx_new(&c.tls, &tc)) < 0) {
        fprintf(stderr, "ztm controller: error: TLS set-up: %s\n", ztm_tls_strerror(r));
        goto out;
    }
    ztm_engine_config_t ec = {.workers = 1, .pin = false, .drain_timeout_ns = drain_ns,
                              .buf_count = 64, .buf_size = 16384};
    r = ztm_engine_run(&ec, &controller_service, &c, on_ready);
    ret = r < 0 ? ZTM_EXIT_FAIL : ZTM_EXIT_OK;
    if (r < 0)
        fprintf(stderr, "ztm controller: error: %s\n", strerror(-r));
    ztm_log(ZTM_LOG_INFO, "controller.stop", "status=%s", r < 0 ? "error" : "ok");
out:
    if (c.listen_fd >= 0)
        close(c.listen_fd);
    ztm_tls_ctx_free(c.tls);
    ztm_api_free(c.api);
    ztm_ca_free(c.ca);
    ztm_store_close(c.store);
    return ret;
}
