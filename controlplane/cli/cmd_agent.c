/* `ztm agent` (the endpoint daemon) and the commands that talk to it over
 * its Unix socket: `ztm status`, `ztm tunnel export|import|ls|rm`,
 * `ztm leave`, `ztm get tunnels`. */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "controlplane/cli/cli.h"
#include "controlplane/cli/creds.h"
#include "controlplane/cli/flags.h"
#include "controlplane/grpc/client.h"
#include "dataplane/agent/agent.h"
#include "dataplane/runtime/log.h"
#include "dataplane/runtime/net.h"
#include "dataplane/tls/tls.h"
#include "ztm/v1/agent.pb-c.h"

int ztm_agent_state_dir(char out[ZTM_PATH_MAX]);

/* ---- talking to the agent ------------------------------------------------ */
/* The CLI's own connection is not news, and its failures become the one
 * "ztm CMD: error: ..." line: errors only (a refused connect to a dead
 * agent's socket is a warning of the link, printed from its thread, at
 * times before the error line and at times not), unless ZTM_LOG_LEVEL asks
 * for more. */
static void quiet_logs(void)
{
    ztm_log_level_t lvl = ZTM_LOG_ERROR;
    const char *env = getenv("ZTM_LOG_LEVEL");
    if (env)
        ztm_log_parse_level(env, &lvl);
    ztm_log_set_level(lvl);
}

/* Calls the agent whose state directory is STATE (NULL: the default) and
 * returns its answer in *RES; prints the error and returns an exit code
 * when there is none. */
static int agent_call(const char *cmd, const char *state, const char *method, const ProtobufCMessage *req,
                      ztm_grpc_result_t *res)
{
    char dir[ZTM_PATH_MAX], sock[ZTM_PATH_MAX + 16];
    if (state)
        snprintf(dir, sizeof(dir), "%s", state);
    else if (ztm_agent_state_dir(dir) < 0)
        return ztm_cli_usage_error(cmd, "no HOME: pass --state DIR");
    if (ztm_agent_socket_path(dir, sock, sizeof(sock)) < 0)
        return ztm_cli_usage_error(cmd, "the state directory's path is too long for a Unix socket");
    ztm_grpc_target_t t = {.timeout_ns = 15ull * 1000000000ull};
    ztm_addr_unix(sock, &t.addr);
    quiet_logs();
    size_t len = protobuf_c_message_get_packed_size(req);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf)
        return ZTM_EXIT_FAIL;
    protobuf_c_message_pack(req, buf);
    char path[128];
    snprintf(path, sizeof(path), "/ztm.v1.Agent/%s", method);
    struct stat st;
    if (stat(sock, &st) < 0) {
        free(buf);
        fprintf(stderr, "ztm %s: error: no agent is running for %s (start one: ztm agent%s%s)\n", cmd, dir,
                state ? " --state " : "", state ? state : "");
        return ZTM_EXIT_FAIL;
    }
    int r = ztm_grpc_call(&t, path, buf, len, res);
    free(buf);
    if (r < 0 || res->status != ZTM_GRPC_OK) {
        if (res->status == ZTM_GRPC_UNAVAILABLE)
            fprintf(stderr, "ztm %s: error: the agent does not answer on %s (is it running? start it: ztm agent)\n",
                    cmd, sock);
        else
            fprintf(stderr, "ztm %s: error: %s\n", cmd, r < 0 ? strerror(-r) : res->message);
        ztm_grpc_result_clear(res);
        return res->status == ZTM_GRPC_INVALID_ARGUMENT || res->status == ZTM_GRPC_NOT_FOUND ||
                       res->status == ZTM_GRPC_ALREADY_EXISTS || res->status == ZTM_GRPC_FAILED_PRECONDITION
                   ? ZTM_EXIT_USAGE
                   : ZTM_EXIT_FAIL;
    }
    return ZTM_EXIT_OK;
}

/* ---- ztm agent ------------------------------------------------------------- */
static const char agent_usage[] =
    "Usage: ztm agent [--state DIR] [--ktls off|auto|on] [--log-level LEVEL] [--log-format FORMAT]\n"
    "\n"
    "Runs the endpoint agent: for every mesh joined with 'ztm join', it keeps a\n"
    "link to the mesh's hub, runs the tunnels ('ztm tunnel'), and answers the\n"
    "CLI on a Unix socket in the state directory (mode 0600). Tunnels persist:\n"
    "a restarted agent comes back with them.\n"
    "\n"
    "  --state DIR   state directory ($ZTM_STATE_DIR, else $XDG_STATE_HOME/ztm,\n"
    "                else ~/.local/state/ztm)\n"
    "  --ktls MODE   TLS record layer of hub links: kernel when it can (auto, the\n"
    "                default), never (off), or required (on)\n"
    "  --drain-timeout SECS  --log-level LEVEL  --log-format FORMAT\n";

int ztm_cmd_agent(int argc, char **argv)
{
    const char *cmd = "agent";
    enum { O_STATE = 256, O_KTLS, O_DRAIN, O_LEVEL, O_FORMAT };
    static const struct option opts[] = {
        {"state", required_argument, NULL, O_STATE},     {"ktls", required_argument, NULL, O_KTLS},
        {"drain-timeout", required_argument, NULL, O_DRAIN}, {"log-level", required_argument, NULL, O_LEVEL},
        {"log-format", required_argument, NULL, O_FORMAT}, {"help", no_argument, NULL, 'h'},
        {0},
    };
    const char *state = NULL;
    ztm_ktls_mode_t ktls = ZTM_KTLS_AUTO;
    uint64_t drain_ns = 5 * ZTM_NS_PER_SEC_CLI;
    opterr = 0;
    optind = 1;
    int o;
    while ((o = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (o) {
        case O_STATE:
            state = optarg;
            break;
        case O_KTLS:
            if (!ztm_ktls_parse_mode(optarg, &ktls))
                return ztm_cli_usage_error(cmd, "--ktls '%s': expected off, auto or on", optarg);
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
            fputs(agent_usage, stdout);
            return ZTM_EXIT_OK;
        default:
            return ztm_cli_bad_option(cmd, o, argv[optind - 1]);
        }
    }
    if (optind < argc)
        return ztm_cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
    char dir[ZTM_PATH_MAX];
    if (state)
        snprintf(dir, sizeof(dir), "%s", state);
    else if (ztm_agent_state_dir(dir) < 0)
        return ztm_cli_usage_error(cmd, "no HOME: pass --state DIR");
    int r = ztm_mkdirs(dir, 0700);
    if (r < 0)
        return ztm_cli_usage_error(cmd, "--state '%s': %s", dir, strerror(-r));
    char sock[ZTM_PATH_MAX + 16];
    if (ztm_agent_socket_path(dir, sock, sizeof(sock)) < 0)
        return ztm_cli_usage_error(cmd, "--state '%s': too long a path for the agent's Unix socket", dir);
    ztm_agent_config_t cfg = {.state_dir = dir, .drain_timeout_ns = drain_ns, .ktls = (int)ktls};
    r = ztm_agent_run(&cfg);
    if (r == -EADDRINUSE)
        return ztm_cli_usage_error(cmd, "another agent is running with %s (ztm status shows it)", dir);
    if (r < 0) {
        fprintf(stderr, "ztm agent: error: %s\n", strerror(-r));
        return ZTM_EXIT_FAIL;
    }
    return ZTM_EXIT_OK;
}

/* ---- printing ------------------------------------------------------------ */
static void json_str(const char *s)
{
    putchar('"');
    for (; s && *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
    putchar('"');
}

static const char *dir_name(const Ztm__V1__TunnelSpec *s)
{
    return s->direction == ZTM__V1__TUNNEL_DIRECTION__TUNNEL_EXPORT ? "export" : "import";
}

static void tunnel_json(const Ztm__V1__TunnelStatus *t)
{
    const Ztm__V1__TunnelSpec *s = t->spec;
    printf("{\"mesh\":");
    json_str(s->mesh);
    printf(",\"direction\":\"%s\",\"name\":", dir_name(s));
    json_str(s->name);
    printf(",\"protocol\":\"%s\",", s->udp ? "udp" : "tcp");
    if (s->direction == ZTM__V1__TUNNEL_DIRECTION__TUNNEL_EXPORT) {
        printf("\"to\":");
        json_str(s->target);
        printf(",\"allow\":[");
        for (size_t i = 0; i < s->n_allow; i++) {
            printf(i ? "," : "");
            json_str(s->allow[i]);
        }
        printf("],");
    } else {
        printf("\"listen\":");
        json_str(t->bound && *t->bound ? t->bound : s->listen);
        printf(",\"via\":");
        json_str(s->via);
        printf(",");
    }
    printf("\"state\":");
    json_str(t->state);
    printf(",\"connections_total\":%llu,\"connections_refused\":%llu}",
           (unsigned long long)t->connections_total, (unsigned long long)t->connections_refused);
}

static void tunnel_row(const Ztm__V1__TunnelStatus *t)
{
    const Ztm__V1__TunnelSpec *s = t->spec;
    char where[400];
    if (s->direction == ZTM__V1__TUNNEL_DIRECTION__TUNNEL_EXPORT) {
        int n = snprintf(where, sizeof(where), "-> %s", s->target);
        for (size_t i = 0; i < s->n_allow && n > 0 && (size_t)n < sizeof(where); i++)
            n += snprintf(where + n, sizeof(where) - (size_t)n, "%s%s", i ? "," : " allow=", s->allow[i]);
    } else {
        snprintf(where, sizeof(where), "%s%s%s", t->bound && *t->bound ? t->bound : s->listen,
                 *s->via ? " via=" : "", s->via);
    }
    printf("%-10s %-7s %-20s %-4s %-40s %-18s %llu/%llu\n", s->mesh, dir_name(s), s->name, s->udp ? "udp" : "tcp",
           where, t->state, (unsigned long long)t->connections_total, (unsigned long long)t->connections_refused);
}

static void tunnel_header(void)
{
    printf("%-10s %-7s %-20s %-4s %-40s %-18s %s\n", "MESH", "DIR", "SERVICE", "PROT", "WHERE", "STATE",
           "CONNS/REFUSED");
}

/* ---- ztm status ------------------------------------------------------------ */
/* Meshes joined under STATE/meshes/ (cert.pem present) that the agent did
 * not load (a damaged or swapped file): printed so that the user is not
 * told to join again; the agent's log says why. Returns how many. */
static unsigned print_not_loaded(const Ztm__V1__AgentStatusResponse *r)
{
    char dir[ZTM_PATH_MAX + 16];
    snprintf(dir, sizeof(dir), "%s/meshes", r->state_dir ? r->state_dir : "");
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    unsigned n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        bool loaded = false;
        for (size_t i = 0; i < r->n_meshes && !loaded; i++)
            loaded = strcmp(r->meshes[i]->name, e->d_name) == 0;
        char cert[ZTM_PATH_MAX + 300];
        struct stat st;
        snprintf(cert, sizeof(cert), "%s/%s/cert.pem", dir, e->d_name);
        if (loaded || stat(cert, &st) < 0)
            continue;
        printf("\nmesh %s: joined (%s/%s) but not loaded by the agent: its log says why "
               "(event=agent.mesh_skipped); fix the files or join again with another --mesh\n",
               e->d_name, dir, e->d_name);
        n++;
    }
    closedir(d);
    return n;
}

static int common_opts(const char *cmd, const char *usage, int argc, char **argv, const char **state,
                       const char **mesh, bool *json)
{
    static const struct option opts[] = {{"state", required_argument, NULL, 's'},
                                         {"mesh", required_argument, NULL, 'm'},
                                         {"output", required_argument, NULL, 'o'},
                                         {"help", no_argument, NULL, 'h'},
                                         {0}};
    opterr = 0;
    optind = 1;
    int o;
    while ((o = getopt_long(argc, argv, ":ho:", opts, NULL)) != -1) {
        switch (o) {
        case 's':
            *state = optarg;
            break;
        case 'm':
            if (!mesh)
                return ztm_cli_bad_option(cmd, '?', argv[optind - 1]);
            *mesh = optarg;
            break;
        case 'o':
            if (!json)
                return ztm_cli_bad_option(cmd, '?', argv[optind - 1]);
            if (strcmp(optarg, "json") == 0)
                *json = true;
            else if (strcmp(optarg, "table") != 0)
                return ztm_cli_usage_error(cmd, "-o '%s': expected table or json", optarg);
            break;
        case 'h':
            fputs(usage, stdout);
            return -1;
        default:
            return ztm_cli_bad_option(cmd, o, argv[optind - 1]);
        }
    }
    return 0;
}

static const char status_usage[] =
    "Usage: ztm status [-o table|json] [--state DIR]\n"
    "\n"
    "Shows the running agent: each mesh it is in, its hub link (state, hub,\n"
    "TLS record layer: kernel or user), peer sessions, tunnels and bytes.\n";

int ztm_cmd_status(int argc, char **argv)
{
    const char *cmd = "status", *state = NULL;
    bool json = false;
    int e = common_opts(cmd, status_usage, argc, argv, &state, NULL, &json);
    if (e)
        return e < 0 ? ZTM_EXIT_OK : e;
    if (optind < argc)
        return ztm_cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
    Ztm__V1__AgentStatusRequest req = ZTM__V1__AGENT_STATUS_REQUEST__INIT;
    ztm_grpc_result_t res = {0};
    if ((e = agent_call(cmd, state, "Status", &req.base, &res)) != 0)
        return e;
    Ztm__V1__AgentStatusResponse *r = ztm__v1__agent_status_response__unpack(NULL, res.len, res.body);
    ztm_grpc_result_clear(&res);
    if (!r) {
        fprintf(stderr, "ztm status: error: the agent's answer does not parse\n");
        return ZTM_EXIT_FAIL;
    }
    if (json) {
        printf("{\"version\":");
        json_str(r->version);
        printf(",\"pid\":%lld,\"state_dir\":", (long long)r->pid);
        json_str(r->state_dir);
        printf(",\"meshes\":[");
        for (size_t i = 0; i < r->n_meshes; i++) {
            Ztm__V1__MeshStatus *m = r->meshes[i];
            printf("%s{\"name\":", i ? "," : "");
            json_str(m->name);
            printf(",\"mesh_id\":");
            json_str(m->mesh_id);
            printf(",\"endpoint\":");
            json_str(m->endpoint_name);
            printf(",\"endpoint_id\":");
            json_str(m->endpoint_id);
            printf(",\"role\":");
            json_str(m->role);
            printf(",\"hub\":");
            json_str(m->hub);
            printf(",\"hub_state\":");
            json_str(m->hub_state);
            printf(",\"record_layer\":");
            json_str(m->record_layer);
            printf(",\"last_error\":");
            json_str(m->last_error);
            printf(",\"cert_not_after\":%lld,\"peer_sessions\":%u,\"hub_connects\":%llu,\"bytes_in\":%llu,"
                   "\"bytes_out\":%llu,\"tunnels\":[",
                   (long long)m->cert_not_after, m->peer_sessions, (unsigned long long)m->hub_connects,
                   (unsigned long long)m->bytes_in, (unsigned long long)m->bytes_out);
            for (size_t k = 0; k < m->n_tunnels; k++) {
                printf(k ? "," : "");
                tunnel_json(m->tunnels[k]);
            }
            printf("]}");
        }
        printf("]}\n");
    } else {
        printf("agent %s (pid %lld), state %s\n", r->version, (long long)r->pid, r->state_dir);
        if (!print_not_loaded(r) && !r->n_meshes)
            printf("not in any mesh yet: ask an admin for an invite, then 'ztm join TOKEN'\n");
        for (size_t i = 0; i < r->n_meshes; i++) {
            Ztm__V1__MeshStatus *m = r->meshes[i];
            time_t exp = (time_t)m->cert_not_after;
            char when[64];
            strftime(when, sizeof(when), "%Y-%m-%d %H:%M UTC", gmtime(&exp));
            printf("\nmesh %s (id %s) as %s (%s, endpoint %s)\n", m->name, m->mesh_id, m->endpoint_name, m->role,
                   m->endpoint_id);
            printf("  hub        %s %s", m->hub ? m->hub : "-", m->hub_state ? m->hub_state : "-");
            if (m->hub_state && strcmp(m->hub_state, "up") == 0)
                printf(" (TLS record layer: %s)", m->record_layer);
            else if (m->last_error && *m->last_error)
                printf(" (last error: %s)", m->last_error);
            printf("\n  cert       valid until %s\n", when);
            printf("  sessions   %u peer sessions; %llu bytes in, %llu bytes out\n", m->peer_sessions,
                   (unsigned long long)m->bytes_in, (unsigned long long)m->bytes_out);
            if (m->n_tunnels) {
                printf("  tunnels\n");
                for (size_t k = 0; k < m->n_tunnels; k++) {
                    printf("    ");
                    tunnel_row(m->tunnels[k]);
                }
            }
        }
    }
    ztm__v1__agent_status_response__free_unpacked(r, NULL);
    return ZTM_EXIT_OK;
}

/* ---- ztm tunnel --------------------------------------------------------------- */
static const char tunnel_usage[] =
    "Usage: ztm tunnel export NAME --to HOST:PORT [--udp] [--allow ENDPOINT|ROLE,...] [--mesh M]\n"
    "       ztm tunnel import NAME --listen [HOST:]PORT [--udp] [--via ENDPOINT] [--mesh M]\n"
    "       ztm tunnel ls [-o table|json] [--mesh M]\n"
    "       ztm tunnel rm export|import NAME [--udp] [--mesh M]\n"
    "\n"
    "export  publishes the service NAME of this endpoint, reached at HOST:PORT\n"
    "        from here; only the endpoints (or roles: agent, gateway) listed in\n"
    "        --allow may use it (default: every endpoint of the mesh).\n"
    "import  maps the service NAME of the mesh to a local port (127.0.0.1 unless\n"
    "        a HOST is given); --via picks the exporting endpoint.\n"
    "ls, rm  list or remove this agent's tunnels. Tunnels persist across restarts.\n"
    "\n"
    "Every form takes --state DIR (the agent's state directory) and --mesh M\n"
    "(needed when the agent is in several meshes).\n";

int ztm_cmd_tunnel(int argc, char **argv)
{
    const char *cmd = "tunnel";
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
        if (argc < 2)
            return ztm_cli_usage_error(cmd, "expected export, import, ls or rm (see 'ztm tunnel --help')");
        fputs(tunnel_usage, stdout);
        return ZTM_EXIT_OK;
    }
    const char *verb = argv[1];
    bool is_export = strcmp(verb, "export") == 0, is_import = strcmp(verb, "import") == 0;
    bool is_ls = strcmp(verb, "ls") == 0 || strcmp(verb, "list") == 0, is_rm = strcmp(verb, "rm") == 0;
    if (!is_export && !is_import && !is_ls && !is_rm)
        return ztm_cli_usage_error(cmd, "unknown action '%s': expected export, import, ls or rm", verb);
    static const struct option opts[] = {
        {"to", required_argument, NULL, 't'},     {"listen", required_argument, NULL, 'l'},
        {"udp", no_argument, NULL, 'u'},          {"allow", required_argument, NULL, 'a'},
        {"via", required_argument, NULL, 'v'},    {"mesh", required_argument, NULL, 'm'},
        {"state", required_argument, NULL, 's'},  {"output", required_argument, NULL, 'o'},
        {"help", no_argument, NULL, 'h'},         {0},
    };
    const char *to = NULL, *listen_s = NULL, *via = NULL, *mesh = NULL, *state = NULL, *allow = NULL;
    bool udp = false, json = false;
    opterr = 0;
    optind = 2;
    int o;
    while ((o = getopt_long(argc, argv, ":ho:", opts, NULL)) != -1) {
        switch (o) {
        case 't':
            to = optarg;
            break;
        case 'l':
            listen_s = optarg;
            break;
        case 'u':
            udp = true;
            break;
        case 'a':
            allow = optarg;
            break;
        case 'v':
            via = optarg;
            break;
        case 'm':
            mesh = optarg;
            break;
        case 's':
            state = optarg;
            break;
        case 'o':
            if (strcmp(optarg, "json") == 0)
                json = true;
            else if (strcmp(optarg, "table") != 0)
                return ztm_cli_usage_error(cmd, "-o '%s': expected table or json", optarg);
            break;
        case 'h':
            fputs(tunnel_usage, stdout);
            return ZTM_EXIT_OK;
        default:
            return ztm_cli_bad_option(cmd, o, argv[optind - 1]);
        }
    }
    ztm_grpc_result_t res = {0};
    int e;
    if (is_ls) {
        if (optind < argc)
            return ztm_cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
        Ztm__V1__ListTunnelsRequest req = ZTM__V1__LIST_TUNNELS_REQUEST__INIT;
        req.mesh = (char *)(mesh ? mesh : "");
        if ((e = agent_call(cmd, state, "ListTunnels", &req.base, &res)) != 0)
            return e;
        Ztm__V1__ListTunnelsResponse *r = ztm__v1__list_tunnels_response__unpack(NULL, res.len, res.body);
        ztm_grpc_result_clear(&res);
        if (!r) {
            fprintf(stderr, "ztm tunnel: error: the agent's answer does not parse\n");
            return ZTM_EXIT_FAIL;
        }
        if (json) {
            printf("[");
            for (size_t i = 0; i < r->n_tunnels; i++) {
                printf(i ? "," : "");
                tunnel_json(r->tunnels[i]);
            }
            printf("]\n");
        } else {
            tunnel_header();
            for (size_t i = 0; i < r->n_tunnels; i++)
                tunnel_row(r->tunnels[i]);
        }
        ztm__v1__list_tunnels_response__free_unpacked(r, NULL);
        return ZTM_EXIT_OK;
    }
    if (is_rm) {
        if (argc - optind != 2 || (strcmp(argv[optind], "export") != 0 && strcmp(argv[optind], "import") != 0))
            return ztm_cli_usage_error(cmd, "expected: ztm tunnel rm export|import NAME");
        Ztm__V1__RemoveTunnelRequest req = ZTM__V1__REMOVE_TUNNEL_REQUEST__INIT;
        req.mesh = (char *)(mesh ? mesh : "");
        req.direction = argv[optind][0] == 'e' ? ZTM__V1__TUNNEL_DIRECTION__TUNNEL_EXPORT
                                               : ZTM__V1__TUNNEL_DIRECTION__TUNNEL_IMPORT;
        req.name = argv[optind + 1];
        req.udp = udp;
        if ((e = agent_call(cmd, state, "RemoveTunnel", &req.base, &res)) != 0)
            return e;
        ztm_grpc_result_clear(&res);
        printf("removed %s %s/%s\n", argv[optind], argv[optind + 1], udp ? "udp" : "tcp");
        return ZTM_EXIT_OK;
    }
    if (argc - optind != 1)
        return ztm_cli_usage_error(cmd, "expected one service NAME (ztm tunnel %s NAME ...)", verb);
    const char *name = argv[optind];
    Ztm__V1__TunnelSpec spec = ZTM__V1__TUNNEL_SPEC__INIT;
    char *allow_v[16];
    char allow_buf[1200];
    spec.mesh = (char *)(mesh ? mesh : "");
    spec.name = (char *)name;
    spec.udp = udp;
    if (is_export) {
        if (!to)
            return ztm_cli_usage_error(cmd, "export needs --to HOST:PORT (where the service is, from here)");
        if (listen_s || via)
            return ztm_cli_usage_error(cmd, "--listen and --via are for imports");
        /* Checked here, names looked up too (the agent looks them up off
         * its worker, later): a typo is an error now, not a log line. */
        ztm_addr_t to_addr;
        const char *why;
        if (ztm_addr_parse(to, &to_addr, &why) < 0)
            return ztm_cli_usage_error(cmd, "--to '%s': %s", to, why);
        spec.direction = ZTM__V1__TUNNEL_DIRECTION__TUNNEL_EXPORT;
        spec.target = (char *)to;
        if (allow) {
            if (strlen(allow) >= sizeof(allow_buf))
                return ztm_cli_usage_error(cmd, "--allow: too long");
            snprintf(allow_buf, sizeof(allow_buf), "%s", allow);
            for (char *save = NULL, *tok = strtok_r(allow_buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
                if (spec.n_allow == 16)
                    return ztm_cli_usage_error(cmd, "--allow: at most 16 entries");
                allow_v[spec.n_allow++] = tok;
            }
            if (!spec.n_allow)
                return ztm_cli_usage_error(cmd, "--allow: expected endpoint names or roles, comma-separated");
            spec.allow = allow_v;
        }
    } else {
        if (!listen_s)
            return ztm_cli_usage_error(cmd, "import needs --listen [HOST:]PORT (the local port to map it to)");
        if (to || allow)
            return ztm_cli_usage_error(cmd, "--to and --allow are for exports");
        spec.direction = ZTM__V1__TUNNEL_DIRECTION__TUNNEL_IMPORT;
        spec.listen = (char *)listen_s;
        spec.via = (char *)(via ? via : "");
    }
    Ztm__V1__AddTunnelRequest req = ZTM__V1__ADD_TUNNEL_REQUEST__INIT;
    req.spec = &spec;
    if ((e = agent_call(cmd, state, "AddTunnel", &req.base, &res)) != 0)
        return e;
    Ztm__V1__AddTunnelResponse *r = ztm__v1__add_tunnel_response__unpack(NULL, res.len, res.body);
    ztm_grpc_result_clear(&res);
    if (r && r->tunnel && r->tunnel->spec) {
        const Ztm__V1__TunnelStatus *t = r->tunnel;
        if (is_export)
            printf("exported %s/%s -> %s in mesh %s (%s)\n", name, udp ? "udp" : "tcp", to, t->spec->mesh,
                   t->state);
        else
            printf("imported %s/%s on %s in mesh %s\n", name, udp ? "udp" : "tcp", t->bound, t->spec->mesh);
    }
    if (r)
        ztm__v1__add_tunnel_response__free_unpacked(r, NULL);
    return ZTM_EXIT_OK;
}

/* ---- ztm leave, ztm get tunnels -------------------------------------------- */
static const char leave_usage[] =
    "Usage: ztm leave MESH [--state DIR]\n"
    "\n"
    "Leaves the mesh MESH: the agent closes its hub link and tunnels and deletes\n"
    "the mesh's key, certificate and tunnels from the state directory.\n";

int ztm_cmd_leave(int argc, char **argv)
{
    const char *cmd = "leave", *state = NULL;
    int e = common_opts(cmd, leave_usage, argc, argv, &state, NULL, NULL);
    if (e)
        return e < 0 ? ZTM_EXIT_OK : e;
    if (argc - optind != 1)
        return ztm_cli_usage_error(cmd, "expected one MESH name (see: ztm status)");
    Ztm__V1__LeaveRequest req = ZTM__V1__LEAVE_REQUEST__INIT;
    req.mesh = argv[optind];
    ztm_grpc_result_t res = {0};
    if ((e = agent_call(cmd, state, "Leave", &req.base, &res)) != 0)
        return e;
    ztm_grpc_result_clear(&res);
    printf("left mesh %s\n", argv[optind]);
    return ZTM_EXIT_OK;
}

int ztm_agentcli_get_tunnels(int argc, char **argv);
int ztm_agentcli_get_tunnels(int argc, char **argv)
{
    char *args[16];
    int n = 0;
    args[n++] = (char *)"tunnel";
    args[n++] = (char *)"ls";
    for (int i = 1; i < argc && n < 15; i++)
        args[n++] = argv[i];
    args[n] = NULL;
    return ztm_cmd_tunnel(n, args);
}

/* Tells a running agent about a mesh just joined (best effort). */
int ztm_agentcli_reload(const char *state);
int ztm_agentcli_reload(const char *state)
{
    char dir[ZTM_PATH_MAX], sock[ZTM_PATH_MAX + 16];
    struct stat st;
    if (state)
        snprintf(dir, sizeof(dir), "%s", state);
    else if (ztm_agent_state_dir(dir) < 0)
        return -1;
    if (ztm_agent_socket_path(dir, sock, sizeof(sock)) < 0 || stat(sock, &st) < 0)
        return -1;
    Ztm__V1__ReloadRequest req = ZTM__V1__RELOAD_REQUEST__INIT;
    ztm_grpc_target_t t = {.timeout_ns = 5ull * 1000000000ull};
    ztm_addr_unix(sock, &t.addr);
    quiet_logs();
    uint8_t buf[8];
    size_t len = protobuf_c_message_pack(&req.base, buf);
    ztm_grpc_result_t res = {0};
    int r = ztm_grpc_call(&t, "/ztm.v1.Agent/Reload", buf, len, &res);
    bool ok = r == 0 && res.status == ZTM_GRPC_OK;
    ztm_grpc_result_clear(&res);
    return ok ? 0 : -1;
}
