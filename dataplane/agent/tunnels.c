/* Tunnels: a mesh's exports (published services and the policy the
 * exporter enforces) and imports (local listeners mapped to services),
 * kept in meshes/NAME/tunnels.conf, one per line:
 *   export NAME tcp|udp HOST:PORT [allow=A,B,...]
 *   import NAME tcp|udp LISTEN [via=ENDPOINT]
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "controlplane/store/file.h"
#include "dataplane/agent/agent_int.h"
#include "dataplane/agent/udp_import.h"
#include "dataplane/runtime/log.h"
#include "ztm/v1/services.pb-c.h"

#define MAX_PENDING 256
#define MAX_EXPORTERS 16

bool tunnel_name_valid(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > AGENT_SVC_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || (i > 0 && (c == '.' || c == '_' || c == '-'));
        if (!ok)
            return false;
    }
    return true;
}

tunnel_t *tunnel_find(mesh_t *m, bool export_, const char *name, bool udp)
{
    for (tunnel_t *t = m->tunnels; t; t = t->next)
        if (t->export_ == export_ && t->udp == udp && strcmp(t->name, name) == 0)
            return t;
    return NULL;
}

/* ---- the file ------------------------------------------------------------ */
int tunnels_save(mesh_t *m)
{
    char buf[65536];
    size_t n = (size_t)snprintf(buf, sizeof(buf), "# ztm tunnels of mesh %s (written by the agent)\n", m->name);
    for (tunnel_t *t = m->tunnels; t && n < sizeof(buf); t = t->next) {
        const char *proto = t->udp ? "udp" : "tcp";
        if (t->export_) {
            n += (size_t)snprintf(buf + n, sizeof(buf) - n, "export %s %s %s", t->name, proto, t->target);
            for (unsigned i = 0; i < t->n_allow && n < sizeof(buf); i++)
                n += (size_t)snprintf(buf + n, sizeof(buf) - n, "%s%s", i ? "," : " allow=", t->allow[i]);
        } else {
            n += (size_t)snprintf(buf + n, sizeof(buf) - n, "import %s %s %s", t->name, proto, t->listen);
            if (t->via[0] && n < sizeof(buf))
                n += (size_t)snprintf(buf + n, sizeof(buf) - n, " via=%s", t->via);
        }
        if (n < sizeof(buf))
            n += (size_t)snprintf(buf + n, sizeof(buf) - n, "\n");
    }
    if (n >= sizeof(buf))
        return -E2BIG;
    char path[AGENT_PATH_MAX + 32];
    snprintf(path, sizeof(path), "%s/tunnels.conf", m->dir);
    return ztm_file_write_atomic(path, buf, n, 0600);
}

static bool parse_allow(tunnel_t *t, const char *list, char *err, size_t cap)
{
    t->n_allow = 0;
    while (*list) {
        size_t n = strcspn(list, ",");
        if (n == 0 || n > ZTM_NAME_MAX || t->n_allow == AGENT_MAX_ALLOW) {
            snprintf(err, cap, "allow list: expected up to %d endpoint names or roles, comma-separated",
                     AGENT_MAX_ALLOW);
            return false;
        }
        memcpy(t->allow[t->n_allow], list, n);
        t->allow[t->n_allow][n] = 0;
        if (!ztm_name_valid(t->allow[t->n_allow])) {
            snprintf(err, cap, "allow list: '%s' is not an endpoint name or role", t->allow[t->n_allow]);
            return false;
        }
        t->n_allow++;
        list += n;
        if (*list == ',')
            list++;
    }
    return true;
}

/* One line of tunnels.conf into SPEC; false with ERR naming the bad part. */
static bool parse_line(const char *line, tunnel_t *spec, char *err, size_t cap)
{
    static const char form[] = "export NAME tcp|udp HOST:PORT [allow=A,B] or import NAME tcp|udp [HOST:]PORT [via=E]";
    char dir[16] = "", name[128] = "", proto[8] = "", where[300] = "", extra[1200] = "", more[2] = "";
    int k = sscanf(line, "%15s %127s %7s %299s %1199s %1s", dir, name, proto, where, extra, more);
    if (strcmp(dir, "export") != 0 && strcmp(dir, "import") != 0) {
        snprintf(err, cap, "'%.15s': expected export or import (%s)", dir, form);
        return false;
    }
    if (k < 2 || !tunnel_name_valid(name)) {
        snprintf(err, cap, "'%.80s' is not a service name (lower-case letters, digits, '.', '_', '-')", name);
        return false;
    }
    if (k < 3 || (strcmp(proto, "tcp") != 0 && strcmp(proto, "udp") != 0)) {
        snprintf(err, cap, "'%.7s': expected tcp or udp", proto);
        return false;
    }
    if (k < 4) {
        snprintf(err, cap, "no address after '%s %s %s' (%s)", dir, name, proto, form);
        return false;
    }
    if (k == 6) {
        snprintf(err, cap, "more than one option after the address ('%.60s ...')", extra);
        return false;
    }
    spec->export_ = dir[0] == 'e';
    spec->udp = proto[0] == 'u';
    snprintf(spec->name, sizeof(spec->name), "%s", name);
    if (spec->export_) {
        snprintf(spec->target, sizeof(spec->target), "%s", where);
        if (k == 5 && strncmp(extra, "allow=", 6) != 0) {
            snprintf(err, cap, "'%.60s': an export takes allow=A,B,... only", extra);
            return false;
        }
        return k < 5 || parse_allow(spec, extra + 6, err, cap);
    }
    snprintf(spec->listen, sizeof(spec->listen), "%s", where);
    if (k == 5) {
        if (strncmp(extra, "via=", 4) != 0 || !ztm_name_valid(extra + 4) || strlen(extra + 4) >= sizeof(spec->via)) {
            snprintf(err, cap, "'%.60s': an import takes via=ENDPOINT only", extra);
            return false;
        }
        memcpy(spec->via, extra + 4, strlen(extra + 4) + 1);
    }
    return true;
}

/* The file is the user's to edit: what we echo of it must not break the
 * log line's quoting. */
static void log_safe(char *s)
{
    for (; *s; s++)
        if (*s == '"' || *s == '\\' || (unsigned char)*s < 0x20 || (unsigned char)*s >= 0x7f)
            *s = '?';
}

void tunnels_load(mesh_t *m)
{
    char path[AGENT_PATH_MAX + 32];
    snprintf(path, sizeof(path), "%s/tunnels.conf", m->dir);
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    char line[2048];
    unsigned lineno = 0;
    while (fgets(line, sizeof(line), f)) {
        lineno++;
        size_t len = strlen(line);
        char err[256] = "";
        if (len == sizeof(line) - 1 && line[len - 1] != '\n' && !feof(f)) {
            /* Longer than any line we write: skip all of it, not just a
             * piece (the rest must not be read as lines of its own). */
            int c;
            while ((c = fgetc(f)) != EOF && c != '\n')
                ;
            ztm_log(ZTM_LOG_WARN, "agent.tunnel_skipped", "file=%s line=%u error=\"longer than %zu bytes\"", path,
                    lineno, sizeof(line) - 2);
            continue;
        }
        line[strcspn(line, "\r\n")] = 0;
        if (!line[strspn(line, " \t")] || line[strspn(line, " \t")] == '#')
            continue;
        tunnel_t spec = {0};
        if (parse_line(line, &spec, err, sizeof(err)) && tunnel_add(m, &spec, NULL, err, sizeof(err)) == 0)
            continue;
        log_safe(err);
        ztm_log(ZTM_LOG_WARN, "agent.tunnel_skipped", "file=%s line=%u error=\"%s\"", path, lineno, err);
    }
    fclose(f);
}

/* ---- calls in flight ------------------------------------------------------ */
/* A tunnel may go (ztm tunnel rm) while a call made for it is in flight: the
 * call carries the tunnel's ID, and its answer finds the tunnel again, or
 * nothing. The mesh frees what is left once its hub link is stopped. */
typedef struct tcall {
    mesh_t *m;
    uint64_t tid;
    struct tcall *prev, *next;
} tcall_t;

static tcall_t *tcall_new(tunnel_t *t)
{
    tcall_t *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->m = t->m;
    c->tid = t->id;
    c->next = t->m->calls;
    if (c->next)
        c->next->prev = c;
    t->m->calls = c;
    return c;
}

static void tcall_free(tcall_t *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        c->m->calls = c->next;
    if (c->next)
        c->next->prev = c->prev;
    free(c);
}

/* The tunnel the answer to C is for (NULL: gone); frees C. */
static tunnel_t *tcall_done(tcall_t *c)
{
    tunnel_t *t = c->m->tunnels;
    while (t && t->id != c->tid)
        t = t->next;
    tcall_free(c);
    return t;
}

static int tcall_start(tunnel_t *t, const char *path, const uint8_t *req, size_t len,
                       ztm_hublink_reply_fn cb)
{
    tcall_t *c = tcall_new(t);
    if (!c)
        return -ENOMEM;
    int r = ztm_hublink_call(t->m->hl, path, req, len, 0, cb, c);
    if (r < 0)
        tcall_free(c);
    return r;
}

void tunnels_free_calls(mesh_t *m)
{
    while (m->calls)
        tcall_free(m->calls);
}

/* ---- exports: publishing ------------------------------------------------- */
static void on_published(void *arg, ztm_grpc_status_t st, const char *msg, const uint8_t *body, size_t len)
{
    tunnel_t *t = tcall_done(arg);
    if (!t)
        return;
    t->publishing = false;
    if (st == ZTM_GRPC_OK) {
        t->published = true;
        t->error[0] = 0;
        ztm_log(ZTM_LOG_INFO, "agent.published", "mesh=%s service=%s proto=%s target=%s", t->m->name, t->name,
                t->udp ? "udp" : "tcp", t->target);
    } else {
        snprintf(t->error, sizeof(t->error), "publish: %s: %s", ztm_grpc_status_name(st), msg);
        ztm_log(ZTM_LOG_WARN, "agent.publish_failed", "mesh=%s service=%s status=%s error=\"%s\"", t->m->name,
                t->name, ztm_grpc_status_name(st), msg);
    }
}

static void publish(tunnel_t *t)
{
    mesh_t *m = t->m;
    if (!m->hl || ztm_hublink_state(m->hl) != ZTM_HUBLINK_UP || t->publishing)
        return;
    Ztm__V1__PublishRequest req = ZTM__V1__PUBLISH_REQUEST__INIT;
    Ztm__V1__Policy pol = ZTM__V1__POLICY__INIT;
    char *names[AGENT_MAX_ALLOW];
    Ztm__V1__Role roles[AGENT_MAX_ALLOW];
    req.name = t->name;
    req.protocol = t->udp ? ZTM__V1__PROTOCOL__PROTOCOL_UDP : ZTM__V1__PROTOCOL__PROTOCOL_TCP;
    if (t->n_allow) {
        for (unsigned i = 0; i < t->n_allow; i++) {
            ztm_role_t r;
            if (ztm_role_parse(t->allow[i], strlen(t->allow[i]), &r))
                roles[pol.n_roles++] = (Ztm__V1__Role)r;
            else
                names[pol.n_endpoint_names++] = t->allow[i];
        }
        pol.endpoint_names = names;
        pol.roles = roles;
        req.policy = &pol;
    }
    size_t len = protobuf_c_message_get_packed_size(&req.base);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf)
        return;
    protobuf_c_message_pack(&req.base, buf);
    if (tcall_start(t, "/ztm.v1.Services/Publish", buf, len, on_published) == 0)
        t->publishing = true;
    free(buf);
}

static void on_unpublished(void *arg, ztm_grpc_status_t st, const char *msg, const uint8_t *body, size_t len)
{
    if (st != ZTM_GRPC_OK)
        ztm_log(ZTM_LOG_WARN, "agent.unpublish_failed", "status=%s error=\"%s\"", ztm_grpc_status_name(st), msg);
}

static void unpublish(tunnel_t *t)
{
    mesh_t *m = t->m;
    if (!t->published || !m->hl || ztm_hublink_state(m->hl) != ZTM_HUBLINK_UP)
        return;
    Ztm__V1__UnpublishRequest req = ZTM__V1__UNPUBLISH_REQUEST__INIT;
    req.name = t->name;
    req.protocol = t->udp ? ZTM__V1__PROTOCOL__PROTOCOL_UDP : ZTM__V1__PROTOCOL__PROTOCOL_TCP;
    size_t len = protobuf_c_message_get_packed_size(&req.base);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf)
        return;
    protobuf_c_message_pack(&req.base, buf);
    ztm_hublink_call(m->hl, "/ztm.v1.Services/Unpublish", buf, len, 0, on_unpublished, NULL);
    free(buf);
}

void tunnels_link_up(mesh_t *m)
{
    for (tunnel_t *t = m->tunnels; t; t = t->next)
        if (t->export_)
            publish(t);
}

/* The exporter's check, on the caller's verified identity. */
const char *tunnels_resolve(void *arg, const ztm_identity_t *caller, const char *service, bool udp,
                            ztm_addr_t *to)
{
    mesh_t *m = arg;
    tunnel_t *t = tunnel_find(m, true, service, udp);
    if (!t)
        return "unknown service";
    bool allowed = t->n_allow == 0;
    const char *role = ztm_role_name(caller->role);
    for (unsigned i = 0; i < t->n_allow && !allowed; i++)
        allowed = strcmp(t->allow[i], caller->name) == 0 || strcmp(t->allow[i], caller->id) == 0 ||
                  (role && strcmp(t->allow[i], role) == 0);
    if (!allowed) {
        t->conns_refused++;
        ztm_log(ZTM_LOG_INFO, "tunnel.denied", "mesh=%s service=%s caller=%s", m->name, service, caller->name);
        return "not in the service's allow list";
    }
    /* A name is looked up again when its answer is 30 s old (runtime/
     * resolver): it may move. Never on this thread. */
    const char *why;
    int e = ztm_resolve(m->a->resolver, t->target, to, &why, NULL, NULL, NULL);
    if (e == -EINPROGRESS) {
        t->conns_refused++;
        return "the exporter is still looking up its target's name; try again";
    }
    if (e < 0) {
        t->conns_refused++;
        return "the exporter cannot resolve its target";
    }
    t->conns_total++;
    return NULL;
}

/* ---- imports: routes and connections ------------------------------------- */
void tunnels_refused(void *arg, const char *service, bool udp, int status, const char *why)
{
    tunnel_t *t = tunnel_find(arg, false, service, udp);
    if (t)
        t->conns_refused++;
}

static void close_pending(tunnel_t *t, const char *why)
{
    for (unsigned i = 0; i < t->n_pending; i++) {
        ztm_sock_abortive(t->pending_fds[i]);
        close(t->pending_fds[i]);
        t->conns_refused++;
    }
    if (t->n_pending)
        ztm_log(ZTM_LOG_WARN, "tunnel.no_route", "mesh=%s service=%s connections=%u error=\"%s\"", t->m->name,
                t->name, t->n_pending, why);
    t->n_pending = 0;
}

static void carry(tunnel_t *t, const char *exporter, int fd)
{
    psess_t *ps = agent_session_to(t->m, exporter);
    if (!ps) {
        ztm_log(ZTM_LOG_WARN, "tunnel.no_session", "mesh=%s service=%s exporter=%s error=\"hub link down\"",
                t->m->name, t->name, exporter);
        ztm_sock_abortive(fd);
        close(fd);
        t->conns_refused++;
        return;
    }
    t->conns_total++;
    ztm_peer_connect_tcp(ps->peer, t->name, fd);
}

static void on_route(void *arg, ztm_grpc_status_t st, const char *msg, const uint8_t *body, size_t len)
{
    tunnel_t *t = tcall_done(arg);
    if (!t)
        return;
    t->looking_up = false;
    if (st != ZTM_GRPC_OK) {
        snprintf(t->error, sizeof(t->error), "route lookup: %s", msg);
        close_pending(t, t->error);
        udp_import_route(t, NULL);
        return;
    }
    Ztm__V1__ListServicesResponse *resp = ztm__v1__list_services_response__unpack(NULL, len, body);
    const char *names[MAX_EXPORTERS];
    unsigned n = 0, n_online = 0;
    for (size_t i = 0; resp && i < resp->n_services; i++) {
        Ztm__V1__Service *s = resp->services[i];
        bool udp = s->protocol == ZTM__V1__PROTOCOL__PROTOCOL_UDP;
        if (strcmp(s->name, t->name) != 0 || udp != t->udp)
            continue;
        /* Online exporters first; if none is online, try them all. */
        for (int pass = 0; pass < 2; pass++)
            for (size_t j = 0; j < s->n_exporters && n < MAX_EXPORTERS; j++) {
                Ztm__V1__Exporter *e = s->exporters[j];
                if (e->online == (pass == 0) && e->endpoint_name && *e->endpoint_name &&
                    strcmp(e->endpoint_name, t->m->self.name) != 0) {
                    names[n++] = e->endpoint_name;
                    n_online += pass == 0;
                }
            }
    }
    if (n_online)
        n = n_online;
    if (n == 0) {
        snprintf(t->error, sizeof(t->error), "no endpoint exports %s/%s", t->name, t->udp ? "udp" : "tcp");
        close_pending(t, t->error);
        udp_import_route(t, NULL);
    } else {
        t->error[0] = 0;
        if (t->udp) {
            snprintf(t->route, sizeof(t->route), "%s", names[t->rr++ % n]);
            udp_import_route(t, t->route);
        }
        for (unsigned i = 0; i < t->n_pending; i++)
            carry(t, names[t->rr++ % n], t->pending_fds[i]);
        t->n_pending = 0;
    }
    if (resp)
        ztm__v1__list_services_response__free_unpacked(resp, NULL);
}

void tunnels_look_up(tunnel_t *t)
{
    mesh_t *m = t->m;
    if (t->looking_up)
        return;
    if (!m->hl || ztm_hublink_state(m->hl) != ZTM_HUBLINK_UP) {
        close_pending(t, "not connected to the hub");
        udp_import_route(t, NULL);
        return;
    }
    Ztm__V1__ListServicesRequest req = ZTM__V1__LIST_SERVICES_REQUEST__INIT;
    req.name_prefix = t->name;
    req.protocol = t->udp ? ZTM__V1__PROTOCOL__PROTOCOL_UDP : ZTM__V1__PROTOCOL__PROTOCOL_TCP;
    size_t len = protobuf_c_message_get_packed_size(&req.base);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf) {
        close_pending(t, "out of memory");
        return;
    }
    protobuf_c_message_pack(&req.base, buf);
    if (tcall_start(t, "/ztm.v1.Services/List", buf, len, on_route) == 0) {
        t->looking_up = true;
    } else {
        close_pending(t, "not connected to the hub");
        udp_import_route(t, NULL);
    }
    free(buf);
}

static void on_accept(ztm_acceptor_t *acc, int fd)
{
    tunnel_t *t = acc->user;
    ztm_sock_nodelay(fd);
    if (t->via[0]) {
        carry(t, t->via, fd);
        return;
    }
    if (t->n_pending == MAX_PENDING) {
        close(fd);
        t->conns_refused++;
        return;
    }
    if (t->n_pending == t->cap_pending) {
        unsigned cap = t->cap_pending ? t->cap_pending * 2 : 8;
        int *p = realloc(t->pending_fds, cap * sizeof(*p));
        if (!p) {
            close(fd);
            return;
        }
        t->pending_fds = p;
        t->cap_pending = cap;
    }
    t->pending_fds[t->n_pending++] = fd;
    tunnels_look_up(t);
}

/* "PORT" or "HOST:PORT" (HOST default 127.0.0.1: an import is local unless
 * told otherwise). */
static int parse_listen(const char *s, ztm_addr_t *out, const char **why)
{
    char buf[320];
    if (strspn(s, "0123456789") == strlen(s)) {
        snprintf(buf, sizeof(buf), "127.0.0.1:%s", s);
        s = buf;
    }
    return ztm_addr_parse(s, out, why);
}

static void free_acceptor(ztm_acceptor_t *a)
{
    free(a);
}

static int import_start(tunnel_t *t, char *err, size_t cap)
{
    ztm_addr_t la, bound;
    const char *why;
    if (parse_listen(t->listen, &la, &why) < 0) {
        snprintf(err, cap, "--listen '%s': %s", t->listen, why);
        return -EINVAL;
    }
    int r;
    if (t->udp) {
        r = udp_import_start(t, &la, &bound);
    } else {
        r = ztm_listen_group(&la, 1, 1024, &t->lfd, &bound);
        if (r == 0 && !(t->acceptor = calloc(1, sizeof(*t->acceptor)))) {
            close(t->lfd);
            r = -ENOMEM;
        }
        if (r == 0) {
            ztm_acceptor_start(t->acceptor, t->m->a->w, t->lfd, on_accept, t);
            t->acceptor->on_closed = free_acceptor;
        }
    }
    if (r < 0) {
        snprintf(err, cap, "cannot listen on %s: %s", t->listen, strerror(-r));
        return r;
    }
    ztm_addr_format((struct sockaddr *)&bound.ss, t->bound, sizeof(t->bound));
    ztm_log(ZTM_LOG_INFO, "agent.import", "mesh=%s service=%s proto=%s listen=%s%s%s", t->m->name, t->name,
            t->udp ? "udp" : "tcp", t->bound, t->via[0] ? " via=" : "", t->via);
    return 0;
}

static void on_target_resolved(void *arg, int err, const ztm_addr_t *addr, const char *why)
{
    tunnel_t *t = arg;
    t->lookup = NULL;
    if (err < 0)
        ztm_log(ZTM_LOG_WARN, "tunnel.target_unresolved", "mesh=%s service=%s target=\"%s\" error=\"%s\"",
                t->m->name, t->name, t->target, why);
}

int tunnel_add(mesh_t *m, const tunnel_t *spec, tunnel_t **out, char *err, size_t cap)
{
    if (!tunnel_name_valid(spec->name)) {
        snprintf(err, cap, "'%s' is not a service name (lower-case letters, digits, '.', '_', '-')", spec->name);
        return -EINVAL;
    }
    if (tunnel_find(m, spec->export_, spec->name, spec->udp)) {
        snprintf(err, cap, "the %s of %s/%s exists already (remove it first: ztm tunnel rm)",
                 spec->export_ ? "export" : "import", spec->name, spec->udp ? "udp" : "tcp");
        return -EEXIST;
    }
    tunnel_t *t = calloc(1, sizeof(*t));
    if (!t)
        return -ENOMEM;
    *t = *spec;
    t->m = m;
    t->id = ++m->next_tunnel_id;
    t->lfd = -1;
    t->next = NULL;
    t->udp_imp = NULL;
    t->pending_fds = NULL;
    t->n_pending = t->cap_pending = 0;
    t->lookup = NULL;
    if (t->export_) {
        /* A malformed target is refused now; a name is looked up now, off
         * this thread, so that the first connection finds it known. */
        const char *why;
        ztm_addr_t a;
        int r = ztm_resolve(m->a->resolver, t->target, &a, &why, on_target_resolved, t, &t->lookup);
        if (r < 0 && r != -EINPROGRESS) {
            snprintf(err, cap, "--to '%s': %s", t->target, why);
            free(t);
            return -EINVAL;
        }
    } else {
        int r = import_start(t, err, cap);
        if (r < 0) {
            free(t);
            return r;
        }
    }
    t->next = m->tunnels;
    m->tunnels = t;
    if (t->export_)
        publish(t);
    if (out)
        *out = t;
    return 0;
}

static void tunnel_stop(tunnel_t *t)
{
    ztm_resolve_cancel(t->lookup);
    t->lookup = NULL;
    if (t->acceptor) {
        ztm_acceptor_stop(t->acceptor); /* closes the socket, then frees itself */
        t->acceptor = NULL;
    }
    if (t->udp_imp)
        udp_import_stop(t);
    close_pending(t, "tunnel removed");
    free(t->pending_fds);
    t->pending_fds = NULL;
    t->cap_pending = 0;
}

void tunnel_remove(tunnel_t *t)
{
    mesh_t *m = t->m;
    if (t->export_)
        unpublish(t);
    tunnel_stop(t);
    for (tunnel_t **pp = &m->tunnels; *pp; pp = &(*pp)->next)
        if (*pp == t) {
            *pp = t->next;
            break;
        }
    free(t);
}

void tunnels_stop_all(mesh_t *m)
{
    while (m->tunnels) {
        tunnel_t *t = m->tunnels;
        m->tunnels = t->next;
        tunnel_stop(t);
        free(t);
    }
}
