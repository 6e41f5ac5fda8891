/* The admin CLI: `ztm invite`, `ztm revoke`, `ztm get`, `ztm ca init|show`.
 * Each call goes to the control API over mutual TLS with the admin identity
 * kept in the CLI's config directory (written by `ztm controller` at first
 * start or by `ztm ca init`). */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "controlplane/ca/ca.h"
#include "controlplane/cli/cli.h"
#include "controlplane/cli/creds.h"
#include "controlplane/cli/flags.h"
#include "controlplane/grpc/client.h"
#include "controlplane/services/api.h"
#include "controlplane/store/store.h"
#include "dataplane/runtime/log.h"
#include "dataplane/tls/tls.h"
#include <openssl/x509.h>
#include "ztm/v1/mesh.pb-c.h"
#include "ztm/v1/services.pb-c.h"
#include "ztm/v1/watch.pb-c.h"

/* ---- talking to the controller ---------------------------------------- */
typedef struct {
    char dir[ZTM_PATH_MAX];
    char cert[ZTM_PATH_MAX + 16], key[ZTM_PATH_MAX + 16], ca[ZTM_PATH_MAX + 16];
    char controller[300];
    char host[300];
    ztm_grpc_target_t t;
} admin_t;

static int admin_open(const char *cmd, const char *controller, admin_t *a)
{
    memset(a, 0, sizeof(*a));
    /* A command's output is its answer: transport chatter only when asked. */
    ztm_log_level_t lvl = ZTM_LOG_WARN;
    const char *env = getenv("ZTM_LOG_LEVEL");
    if (env)
        ztm_log_parse_level(env, &lvl);
    ztm_log_set_level(lvl);
    if (ztm_creds_cli_dir(a->dir) < 0)
        return ztm_cli_usage_error(cmd, "no HOME: set ZTM_CONFIG_DIR to the CLI's config directory");
    snprintf(a->cert, sizeof(a->cert), "%s/admin.pem", a->dir);
    snprintf(a->key, sizeof(a->key), "%s/admin.key", a->dir);
    snprintf(a->ca, sizeof(a->ca), "%s/ca.pem", a->dir);
    struct stat st;
    if (stat(a->cert, &st) < 0 || stat(a->key, &st) < 0 || stat(a->ca, &st) < 0)
        return ztm_cli_usage_error(cmd, "no admin credentials in %s: run 'ztm controller' (or 'ztm ca init') "
                                   "on this machine first, or set ZTM_CONFIG_DIR", a->dir);
    if (!controller)
        controller = getenv("ZTM_CONTROLLER");
    if (controller)
        snprintf(a->controller, sizeof(a->controller), "%s", controller);
    else if (ztm_creds_read_cli_conf(a->dir, a->controller, sizeof(a->controller)) < 0)
        return ztm_cli_usage_error(cmd, "no controller address: pass --controller HOST:PORT (or write %s/cli.conf)",
                                   a->dir);
    const char *why;
    if (ztm_addr_parse(a->controller, &a->t.addr, &why) < 0)
        return ztm_cli_usage_error(cmd, "controller '%s': %s", a->controller, why);
    snprintf(a->host, sizeof(a->host), "%s", a->controller);
    char *colon = strrchr(a->host, ':');
    if (colon)
        *colon = 0;
    if (a->host[0] == '[') {
        memmove(a->host, a->host + 1, strlen(a->host));
        a->host[strcspn(a->host, "]")] = 0;
    }
    a->t.sni = a->host;
    a->t.cert_file = a->cert;
    a->t.key_file = a->key;
    a->t.ca_file = a->ca;
    a->t.timeout_ns = 20 * ZTM_NS_PER_SEC_CLI;
    return 0;
}

/* Runs one call; on a failure prints it and returns the exit code (1), on
 * success returns 0 with OUT filled. */
static int admin_call(const char *cmd, admin_t *a, const char *path, const ProtobufCMessage *req,
                      ztm_grpc_result_t *out)
{
    size_t len = protobuf_c_message_get_packed_size(req);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf)
        return ZTM_EXIT_FAIL;
    protobuf_c_message_pack(req, buf);
    int r = ztm_grpc_call(&a->t, path, buf, len, out);
    free(buf);
    if (r < 0) {
        fprintf(stderr, "ztm %s: error: cannot use the credentials in %s (%s)\n", cmd, a->dir,
                ztm_tls_strerror(r));
        return ZTM_EXIT_FAIL;
    }
    if (out->status != ZTM_GRPC_OK) {
        const char *hint = "";
        if (out->status == ZTM_GRPC_UNAVAILABLE)
            hint = " (is 'ztm controller' running there?)";
        else if (out->status == ZTM_GRPC_UNAUTHENTICATED || out->status == ZTM_GRPC_PERMISSION_DENIED)
            hint = " (the admin credentials may be revoked, expired or from another mesh)";
        fprintf(stderr, "ztm %s: error: %s: %s%s [controller %s]\n", cmd,
                ztm_grpc_status_name(out->status), out->message, hint, a->controller);
        return ZTM_EXIT_FAIL;
    }
    return 0;
}

static const char *role_str(Ztm__V1__Role r)
{
    switch (r) {
    case ZTM__V1__ROLE__ROLE_AGENT:
        return "agent";
    case ZTM__V1__ROLE__ROLE_HUB:
        return "hub";
    case ZTM__V1__ROLE__ROLE_ADMIN:
        return "admin";
    case ZTM__V1__ROLE__ROLE_GATEWAY:
        return "gateway";
    default:
        return "-";
    }
}

/* Durations: "3600", "90s", "30m", "1h", "7d". */
static bool parse_duration(const char *s, int64_t *secs)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || v <= 0)
        return false;
    long long mul = 1;
    if (*end == 's')
        end++;
    else if (*end == 'm')
        mul = 60, end++;
    else if (*end == 'h')
        mul = 3600, end++;
    else if (*end == 'd')
        mul = 86400, end++;
    if (*end || v > 365LL * 86400 / mul)
        return false;
    *secs = v * mul;
    return true;
}

/* ---- ztm invite --------------------------------------------------------- */
int ztm_cmd_invite(int argc, char **argv)
{
    const char *cmd = "invite";
    static const char usage[] =
        "Usage: ztm invite NAME [--role agent|admin|gateway] [--ttl DURATION] [--controller ADDR]\n"
        "\n"
        "Prints a one-time invite token for an endpoint called NAME. The token holds\n"
        "the hub addresses, the mesh CA's pin and a one-time secret; the invitee runs\n"
        "'ztm join TOKEN'. DURATION: 3600, 90s, 30m, 1h, 7d (default 1h).\n";
    static const struct option opts[] = {{"role", required_argument, NULL, 'r'},
                                         {"ttl", required_argument, NULL, 't'},
                                         {"controller", required_argument, NULL, 'c'},
                                         {"help", no_argument, NULL, 'h'},
                                         {0}};
    Ztm__V1__InviteRequest req = ZTM__V1__INVITE_REQUEST__INIT;
    req.role = ZTM__V1__ROLE__ROLE_AGENT;
    const char *controller = NULL;
    opterr = 0;
    optind = 1;
    int o;
    while ((o = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (o) {
        case 'r':
            if (strcmp(optarg, "agent") == 0)
                req.role = ZTM__V1__ROLE__ROLE_AGENT;
            else if (strcmp(optarg, "admin") == 0)
                req.role = ZTM__V1__ROLE__ROLE_ADMIN;
            else if (strcmp(optarg, "gateway") == 0)
                req.role = ZTM__V1__ROLE__ROLE_GATEWAY;
            else
                return ztm_cli_usage_error(cmd, "--role '%s': expected agent, admin or gateway", optarg);
            break;
        case 't':
            if (!parse_duration(optarg, &req.ttl_seconds))
                return ztm_cli_usage_error(cmd, "--ttl '%s': expected a duration like 3600, 30m, 1h or 7d", optarg);
            break;
        case 'c':
            controller = optarg;
            break;
        case 'h':
            fputs(usage, stdout);
            return ZTM_EXIT_OK;
        default:
            return ztm_cli_bad_option(cmd, o, argv[optind - 1]);
        }
    }
    if (optind != argc - 1)
        return ztm_cli_usage_error(cmd, "expected one endpoint NAME (see 'ztm invite --help')");
    req.name = argv[optind];
    if (!ztm_name_valid(req.name))
        return ztm_cli_usage_error(cmd, "NAME '%s': use letters, digits, '.', '_' and '-', starting with a letter or digit",
                                   req.name);
    admin_t a;
    int r = admin_open(cmd, controller, &a);
    if (r)
        return r;
    ztm_grpc_result_t res;
    if ((r = admin_call(cmd, &a, "/ztm.v1.Mesh/Invite", &req.base, &res)))
        return r;
    Ztm__V1__InviteResponse *resp = ztm__v1__invite_response__unpack(NULL, res.len, res.body);
    ztm_grpc_result_clear(&res);
    if (!resp) {
        fprintf(stderr, "ztm invite: error: the controller's answer does not parse\n");
        return ZTM_EXIT_FAIL;
    }
    printf("%s\n", resp->token);
    time_t exp = (time_t)resp->expires_time;
    char when[64];
    strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S UTC", gmtime(&exp));
    fprintf(stderr, "invite for '%s' (%s), valid once, until %s.\nOn the new endpoint: ztm join TOKEN\n",
            resp->name, role_str(resp->role), when);
    ztm__v1__invite_response__free_unpacked(resp, NULL);
    return ZTM_EXIT_OK;
}

/* ---- ztm revoke ---------------------------------------------------------- */
int ztm_cmd_revoke(int argc, char **argv)
{
    const char *cmd = "revoke";
    static const char usage[] =
        "Usage: ztm revoke NAME | --id ENDPOINT_ID | --serial SERIAL [--reason TEXT] [--controller ADDR]\n"
        "\n"
        "Revokes an endpoint's certificates (or one certificate). Hubs cut its live\n"
        "connections at once and refuse it from then on.\n";
    static const struct option opts[] = {{"id", required_argument, NULL, 'i'},
                                         {"serial", required_argument, NULL, 's'},
                                         {"reason", required_argument, NULL, 'r'},
                                         {"controller", required_argument, NULL, 'c'},
                                         {"help", no_argument, NULL, 'h'},
                                         {0}};
    Ztm__V1__RevokeRequest req = ZTM__V1__REVOKE_REQUEST__INIT;
    const char *controller = NULL, *id = NULL, *serial = NULL;
    opterr = 0;
    optind = 1;
    int o;
    while ((o = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (o) {
        case 'i':
            id = optarg;
            break;
        case 's':
            serial = optarg;
            break;
        case 'r':
            req.reason = optarg;
            break;
        case 'c':
            controller = optarg;
            break;
        case 'h':
            fputs(usage, stdout);
            return ZTM_EXIT_OK;
        default:
            return ztm_cli_bad_option(cmd, o, argv[optind - 1]);
        }
    }
    int targets = (id != NULL) + (serial != NULL) + (optind < argc);
    if (targets != 1 || optind < argc - 1)
        return ztm_cli_usage_error(cmd, "name exactly one of: NAME, --id ID, --serial SERIAL");
    if (id) {
        req.target_case = ZTM__V1__REVOKE_REQUEST__TARGET_ENDPOINT_ID;
        req.endpoint_id = (char *)id;
    } else if (serial) {
        req.target_case = ZTM__V1__REVOKE_REQUEST__TARGET_SERIAL;
        req.serial = (char *)serial;
    } else {
        req.target_case = ZTM__V1__REVOKE_REQUEST__TARGET_ENDPOINT_NAME;
        req.endpoint_name = argv[optind];
    }
    admin_t a;
    int r = admin_open(cmd, controller, &a);
    if (r)
        return r;
    ztm_grpc_result_t res;
    if ((r = admin_call(cmd, &a, "/ztm.v1.Mesh/Revoke", &req.base, &res)))
        return r;
    Ztm__V1__RevokeResponse *resp = ztm__v1__revoke_response__unpack(NULL, res.len, res.body);
    ztm_grpc_result_clear(&res);
    if (!resp) {
        fprintf(stderr, "ztm revoke: error: the controller's answer does not parse\n");
        return ZTM_EXIT_FAIL;
    }
    for (size_t i = 0; i < resp->n_revocations; i++)
        printf("revoked %s serial=%s\n", resp->revocations[i]->endpoint_name, resp->revocations[i]->serial);
    if (!resp->n_revocations)
        printf("nothing to revoke (already revoked or expired)\n");
    ztm__v1__revoke_response__free_unpacked(resp, NULL);
    return ZTM_EXIT_OK;
}

/* ---- ztm get -------------------------------------------------------------- */
static void json_str(const char *s)
{
    putchar('"');
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            printf("\\%c", *p);
        else if (*p < 0x20)
            printf("\\u%04x", *p);
        else
            putchar(*p);
    }
    putchar('"');
}

static void fmt_time(int64_t t, char *out, size_t cap)
{
    if (!t) {
        snprintf(out, cap, "-");
        return;
    }
    time_t tt = (time_t)t;
    strftime(out, cap, "%Y-%m-%dT%H:%M:%SZ", gmtime(&tt));
}

static int get_endpoints(const char *cmd, admin_t *a, bool json)
{
    Ztm__V1__ListEndpointsRequest req = ZTM__V1__LIST_ENDPOINTS_REQUEST__INIT;
    req.page_size = 1000;
    bool first = true, header = false;
    for (;;) {
        ztm_grpc_result_t res;
        int r = admin_call(cmd, a, "/ztm.v1.Mesh/ListEndpoints", &req.base, &res);
        if (r)
            return r;
        Ztm__V1__ListEndpointsResponse *resp = ztm__v1__list_endpoints_response__unpack(NULL, res.len, res.body);
        ztm_grpc_result_clear(&res);
        if (!resp) {
            fprintf(stderr, "ztm get: error: the controller's answer does not parse\n");
            return ZTM_EXIT_FAIL;
        }
        if (!header) {
            header = true;
            if (json)
                printf("[");
            else
                printf("%-24s %-8s %-7s %-34s %s\n", "NAME", "ROLE", "ONLINE", "ID", "CERT EXPIRES");
        }
        for (size_t i = 0; i < resp->n_endpoints; i++) {
            Ztm__V1__Endpoint *e = resp->endpoints[i];
            char exp[32];
            fmt_time(e->cert_not_after, exp, sizeof(exp));
            if (json) {
                printf("%s\n  {\"name\": ", first ? "" : ",");
                json_str(e->name);
                printf(", \"id\": ");
                json_str(e->id);
                printf(", \"mesh\": ");
                json_str(e->mesh);
                printf(", \"role\": \"%s\", \"online\": %s, \"revoked\": %s, \"cert_serial\": ",
                       role_str(e->role), e->online ? "true" : "false", e->revoked ? "true" : "false");
                json_str(e->cert_serial);
                printf(", \"cert_not_after\": %" PRId64 ", \"hub_id\": ", e->cert_not_after);
                json_str(e->hub_id);
                printf("}");
            } else {
                printf("%-24s %-8s %-7s %-34s %s%s\n", e->name, role_str(e->role),
                       e->online ? "yes" : "no", e->id, exp, e->revoked ? " (revoked)" : "");
            }
            first = false;
        }
        bool more = resp->next_page_token && *resp->next_page_token;
        static char token[512];
        if (more)
            snprintf(token, sizeof(token), "%s", resp->next_page_token);
        ztm__v1__list_endpoints_response__free_unpacked(resp, NULL);
        if (!more)
            break;
        req.page_token = token;
    }
    if (json)
        printf("%s]\n", first ? "" : "\n");
    return ZTM_EXIT_OK;
}

static int get_services(const char *cmd, admin_t *a, bool json)
{
    Ztm__V1__ListServicesRequest req = ZTM__V1__LIST_SERVICES_REQUEST__INIT;
    ztm_grpc_result_t res;
    int r = admin_call(cmd, a, "/ztm.v1.Services/List", &req.base, &res);
    if (r)
        return r;
    Ztm__V1__ListServicesResponse *resp = ztm__v1__list_services_response__unpack(NULL, res.len, res.body);
    ztm_grpc_result_clear(&res);
    if (!resp) {
        fprintf(stderr, "ztm get: error: the controller's answer does not parse\n");
        return ZTM_EXIT_FAIL;
    }
    if (json)
        printf("[");
    else
        printf("%-24s %-6s %s\n", "SERVICE", "PROTO", "EXPORTERS");
    for (size_t i = 0; i < resp->n_services; i++) {
        Ztm__V1__Service *s = resp->services[i];
        const char *proto = s->protocol == 2 ? "udp" : "tcp";
        if (json) {
            printf("%s\n  {\"name\": ", i ? "," : "");
            json_str(s->name);
            printf(", \"protocol\": \"%s\", \"exporters\": %zu}", proto, s->n_exporters);
        } else {
            printf("%-24s %-6s %zu\n", s->name, proto, s->n_exporters);
        }
    }
    if (json)
        printf("%s]\n", resp->n_services ? "\n" : "");
    ztm__v1__list_services_response__free_unpacked(resp, NULL);
    return ZTM_EXIT_OK;
}

int ztm_cmd_get(int argc, char **argv)
{
    const char *cmd = "get";
    static const char usage[] =
        "Usage: ztm get endpoints|services [-o table|json] [--controller ADDR]\n"
        "       ztm get tunnels [-o table|json] [--mesh M] [--state DIR]\n"
        "\n"
        "endpoints and services come from the mesh's control plane (admin\n"
        "credentials); tunnels from this machine's agent.\n";
    /* Tunnels are the agent's: its own options. */
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "tunnels") == 0 || strcmp(argv[i], "tunnel") == 0) {
            char *args[32];
            int n = 0;
            args[n++] = argv[i];
            for (int k = 1; k < argc && n < 31; k++)
                if (k != i)
                    args[n++] = argv[k];
            args[n] = NULL;
            return ztm_agentcli_get_tunnels(n, args);
        }
    static const struct option opts[] = {{"output", required_argument, NULL, 'o'},
                                         {"controller", required_argument, NULL, 'c'},
                                         {"help", no_argument, NULL, 'h'},
                                         {0}};
    bool json = false;
    const char *controller = NULL;
    opterr = 0;
    optind = 1;
    int o;
    while ((o = getopt_long(argc, argv, ":ho:", opts, NULL)) != -1) {
        switch (o) {
        case 'o':
            if (strcmp(optarg, "json") == 0)
                json = true;
            else if (strcmp(optarg, "table") != 0)
                return ztm_cli_usage_error(cmd, "-o '%s': expected table or json", optarg);
            break;
        case 'c':
            controller = optarg;
            break;
        case 'h':
            fputs(usage, stdout);
            return ZTM_EXIT_OK;
        default:
            return ztm_cli_bad_option(cmd, o, argv[optind - 1]);
        }
    }
    if (optind != argc - 1)
        return ztm_cli_usage_error(cmd, "expected what to get: endpoints, services or tunnels");
    const char *what = argv[optind];
    bool ep = strcmp(what, "endpoints") == 0 || strcmp(what, "ep") == 0;
    bool svc = strcmp(what, "services") == 0 || strcmp(what, "svc") == 0;
    if (!ep && !svc)
        return ztm_cli_usage_error(cmd, "unknown kind '%s': expected endpoints, services or tunnels", what);
    admin_t a;
    int r = admin_open(cmd, controller, &a);
    if (r)
        return r;
    return ep ? get_endpoints(cmd, &a, json) : get_services(cmd, &a, json);
}

/* ---- ztm watch ------------------------------------------------------------ */
typedef struct {
    bool json;
    unsigned long events;
} watch_out_t;

static const char *event_type(Ztm__V1__WatchEvent__Type t)
{
    switch (t) {
    case ZTM__V1__WATCH_EVENT__TYPE__TYPE_PUT:
        return "PUT";
    case ZTM__V1__WATCH_EVENT__TYPE__TYPE_DELETE:
        return "DELETE";
    case ZTM__V1__WATCH_EVENT__TYPE__TYPE_RESET:
        return "RESET";
    case ZTM__V1__WATCH_EVENT__TYPE__TYPE_SYNCED:
        return "SYNCED";
    case ZTM__V1__WATCH_EVENT__TYPE__TYPE_HEARTBEAT:
        return "HEARTBEAT";
    default:
        return "UNKNOWN";
    }
}

/* One line per event: what changed, with its version (the resume point). */
static int on_watch_event(void *arg, const uint8_t *msg, size_t len)
{
    watch_out_t *w = arg;
    Ztm__V1__WatchEvent *ev = ztm__v1__watch_event__unpack(NULL, len, msg);
    if (!ev) {
        fprintf(stderr, "ztm watch: error: an event does not parse\n");
        return 1;
    }
    const char *kind = "-", *name = "", *id = "";
    switch (ev->object_case) {
    case ZTM__V1__WATCH_EVENT__OBJECT_ENDPOINT:
        kind = "endpoint", name = ev->endpoint->name, id = ev->endpoint->id;
        break;
    case ZTM__V1__WATCH_EVENT__OBJECT_SERVICE:
        kind = "service", name = ev->service->name;
        break;
    case ZTM__V1__WATCH_EVENT__OBJECT_REVOCATION:
        kind = "revocation", name = ev->revocation->endpoint_name, id = ev->revocation->serial;
        break;
    case ZTM__V1__WATCH_EVENT__OBJECT_HUB:
        kind = "hub", name = ev->hub->name, id = ev->hub->id;
        break;
    default:
        break;
    }
    if (w->json) {
        printf("{\"version\": %" PRIu64 ", \"type\": \"%s\", \"kind\": \"%s\", \"name\": ",
               ev->version, event_type(ev->type), kind);
        json_str(name);
        printf(", \"id\": ");
        json_str(id);
        printf("}\n");
    } else {
        printf("%-8" PRIu64 " %-9s %-10s %s%s%s\n", ev->version, event_type(ev->type), kind, name,
               *id ? " " : "", id);
    }
    fflush(stdout);
    w->events++;
    ztm__v1__watch_event__free_unpacked(ev, NULL);
    return 0;
}

int ztm_cmd_watch(int argc, char **argv)
{
    const char *cmd = "watch";
    static const char usage[] =
        "Usage: ztm watch [--from VERSION] [--topic endpoints|services|revocations|hubs]...\n"
        "                 [-o text|json] [--controller ADDR]\n"
        "\n"
        "Follows the mesh's change stream: one line per change (version, PUT or\n"
        "DELETE, what changed), until Ctrl-C. Without --from it starts with a\n"
        "snapshot (RESET, the current objects, SYNCED); --from VERSION resumes after\n"
        "that version with nothing missed or repeated.\n";
    static const struct option opts[] = {{"from", required_argument, NULL, 'f'},
                                         {"topic", required_argument, NULL, 't'},
                                         {"output", required_argument, NULL, 'o'},
                                         {"controller", required_argument, NULL, 'c'},
                                         {"help", no_argument, NULL, 'h'},
                                         {0}};
    Ztm__V1__SubscribeRequest req = ZTM__V1__SUBSCRIBE_REQUEST__INIT;
    Ztm__V1__Topic topics[4];
    watch_out_t w = {0};
    const char *controller = NULL;
    unsigned long v;
    opterr = 0;
    optind = 1;
    int o;
    while ((o = getopt_long(argc, argv, ":ho:", opts, NULL)) != -1) {
        switch (o) {
        case 'f':
            if (!ztm_flag_ulong(optarg, 0, ULONG_MAX, &v))
                return ztm_cli_usage_error(cmd, "--from '%s': expected a version number", optarg);
            req.after_version = v;
            break;
        case 't': {
            Ztm__V1__Topic t;
            if (strcmp(optarg, "endpoints") == 0)
                t = ZTM__V1__TOPIC__TOPIC_ENDPOINTS;
            else if (strcmp(optarg, "services") == 0)
                t = ZTM__V1__TOPIC__TOPIC_SERVICES;
            else if (strcmp(optarg, "revocations") == 0)
                t = ZTM__V1__TOPIC__TOPIC_REVOCATIONS;
            else if (strcmp(optarg, "hubs") == 0)
                t = ZTM__V1__TOPIC__TOPIC_HUBS;
            else
                return ztm_cli_usage_error(cmd, "--topic '%s': expected endpoints, services, revocations or hubs",
                                           optarg);
            if (req.n_topics < 4)
                topics[req.n_topics++] = t;
            break;
        }
        case 'o':
            if (strcmp(optarg, "json") == 0)
                w.json = true;
            else if (strcmp(optarg, "text") != 0 && strcmp(optarg, "table") != 0)
                return ztm_cli_usage_error(cmd, "-o '%s': expected text or json", optarg);
            break;
        case 'c':
            controller = optarg;
            break;
        case 'h':
            fputs(usage, stdout);
            return ZTM_EXIT_OK;
        default:
            return ztm_cli_bad_option(cmd, o, argv[optind - 1]);
        }
    }
    if (optind < argc)
        return ztm_cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
    req.topics = topics;
    admin_t a;
    int r = admin_open(cmd, controller, &a);
    if (r)
        return r;
    a.t.timeout_ns = 0; /* a watch has no deadline */
    size_t len = protobuf_c_message_get_packed_size(&req.base);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf)
        return ZTM_EXIT_FAIL;
    protobuf_c_message_pack(&req.base, buf);
    ztm_grpc_result_t res;
    r = ztm_grpc_stream(&a.t, "/ztm.v1.Watch/Subscribe", buf, len, on_watch_event, &w, &res);
    free(buf);
    if (r < 0) {
        fprintf(stderr, "ztm watch: error: cannot use the credentials in %s (%s)\n", a.dir, ztm_tls_strerror(r));
        return ZTM_EXIT_FAIL;
    }
    if (res.status == ZTM_GRPC_CANCELLED && strcmp(res.message, "interrupted") == 0)
        return ZTM_EXIT_OK; /* Ctrl-C */
    fprintf(stderr, "ztm watch: the stream ended: %s: %s [controller %s]\n",
            ztm_grpc_status_name(res.status), res.message, a.controller);
    return res.status == ZTM_GRPC_OK ? ZTM_EXIT_OK : ZTM_EXIT_FAIL;
}

/* ---- ztm ca init|show ------------------------------------------------------ */
static int ca_show_pem(const char *cmd, const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return ztm_cli_usage_error(cmd, "cannot read %s: %s", path, strerror(errno));
    char buf[16384];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    X509 *x = NULL;
    if (ztm_cert_from_pem(buf, n, &x) < 0)
        return ztm_cli_usage_error(cmd, "%s is not a PEM certificate", path);
    uint8_t pin[ZTM_PIN_LEN];
    char hex[ZTM_PIN_HEX_LEN + 1];
    ztm_pin_of_cert(x, pin);
    ztm_pin_to_hex(pin, hex);
    char subj[256];
    X509_NAME_oneline(X509_get_subject_name(x), subj, sizeof(subj));
    printf("ca:      %s\nsubject: %s\npin:     sha256:%s\n", path, subj, hex);
    X509_free(x);
    return ZTM_EXIT_OK;
}

int ztm_cmd_ca(int argc, char **argv)
{
    const char *cmd = "ca";
    static const char usage[] =
        "Usage: ztm ca init --state DIR [--mesh ID] [--controller ADDR]\n"
        "       ztm ca show [--state DIR]\n"
        "\n"
        "init makes the mesh CA in the state directory (as 'ztm controller' does at\n"
        "first start) and writes the first admin's credentials to the CLI's config\n"
        "directory (mode 0600). show prints the CA's subject and pin (from DIR, or\n"
        "from the CLI's credentials).\n";
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        fputs(usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? ZTM_EXIT_USAGE : ZTM_EXIT_OK;
    }
    bool init = strcmp(argv[1], "init") == 0;
    if (!init && strcmp(argv[1], "show") != 0)
        return ztm_cli_usage_error(cmd, "unknown action '%s': expected init or show", argv[1]);
    static const struct option opts[] = {{"state", required_argument, NULL, 's'},
                                         {"mesh", required_argument, NULL, 'm'},
                                         {"controller", required_argument, NULL, 'c'},
                                         {0}};
    const char *state = NULL, *mesh = "mesh", *controller = NULL;
    opterr = 0;
    optind = 2;
    int o;
    while ((o = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
        if (o == 's')
            state = optarg;
        else if (o == 'm')
            mesh = optarg;
        else if (o == 'c')
            controller = optarg;
        else if (o == ':')
            return ztm_cli_usage_error(cmd, "%s needs a value", argv[optind - 1]);
        else
            return ztm_cli_usage_error(cmd, "unknown option '%s' (see 'ztm ca --help')", argv[optind - 1]);
    }
    if (optind < argc)
        return ztm_cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
    if (!init) {
        char path[ZTM_PATH_MAX + 16], dir[ZTM_PATH_MAX];
        if (state)
            snprintf(path, sizeof(path), "%s/ca.pem", state);
        else if (ztm_creds_cli_dir(dir) == 0)
            snprintf(path, sizeof(path), "%s/ca.pem", dir);
        else
            return ztm_cli_usage_error(cmd, "pass --state DIR");
        return ca_show_pem(cmd, path);
    }
    if (!state)
        return ztm_cli_usage_error(cmd, "--state DIR is required");
    if (!ztm_mesh_valid(mesh))
        return ztm_cli_usage_error(cmd, "--mesh '%s': use lower-case letters, digits and '-'", mesh);
    ztm_store_t *store;
    ztm_store_options_t so = {.dir = state};
    int r = ztm_store_open(&so, &store);
    if (r < 0)
        return ztm_cli_usage_error(cmd, "--state '%s': %s", state,
                                   r == -EBUSY ? "in use by a running ztm (it made the CA already)"
                                   : r < -4095 ? ztm_store_strerror(r) : strerror(-r));
    ztm_ca_t *ca = NULL;
    ztm_api_t *api = NULL;
    bool created = false;
    int ret = ZTM_EXIT_FAIL;
    if ((r = ztm_api_ca_open(store, mesh, &ca, &created)) < 0) {
        fprintf(stderr, "ztm ca: error: %s\n", r < -4095 ? ztm_ca_strerror(r) : strerror(-r));
        goto out;
    }
    ztm_api_config_t ac = {0};
    if ((r = ztm_api_new(&ac, store, ca, &api)) < 0)
        goto out;
    char dir[ZTM_PATH_MAX], name[ZTM_NAME_MAX + 1] = "admin";
    if (ztm_creds_cli_dir(dir) < 0) {
        fprintf(stderr, "ztm ca: error: no HOME: set ZTM_CONFIG_DIR\n");
        goto out;
    }
    char cert[ZTM_PATH_MAX + 16];
    snprintf(cert, sizeof(cert), "%s/admin.pem", dir);
    struct stat st;
    if (stat(cert, &st) == 0) {
        fprintf(stderr, "ztm ca: the CLI already has admin credentials in %s (left as they are)\n", dir);
    } else {
        const char *why;
        r = ztm_creds_enroll(api, ca, dir, "admin", name, ZTM_ROLE_ADMIN, NULL, 0, NULL, 0, &why);
        if (r == -EEXIST) {
            snprintf(name, sizeof(name), "admin-%lld", (long long)time(NULL));
            r = ztm_creds_enroll(api, ca, dir, "admin", name, ZTM_ROLE_ADMIN, NULL, 0, NULL, 0, &why);
        }
        if (r < 0) {
            fprintf(stderr, "ztm ca: error: %s while %s\n", r < -4095 ? ztm_ca_strerror(r) : strerror(-r), why);
            goto out;
        }
        if (controller)
            ztm_creds_write_cli_conf(dir, controller);
    }
    uint8_t pin[ZTM_PIN_LEN];
    char hex[ZTM_PIN_HEX_LEN + 1];
    ztm_ca_pin(ca, pin);
    ztm_pin_to_hex(pin, hex);
    printf("mesh:  %s (%s)\npin:   sha256:%s\nstate: %s\nadmin: %s/admin.pem\n", ztm_ca_mesh(ca),
           created ? "new CA" : "existing CA", hex, state, dir);
    ret = ZTM_EXIT_OK;
out:
    ztm_api_free(api);
    ztm_ca_free(ca);
    ztm_store_close(store);
    return ret;
}
