/* The agent's local API (ztm.v1.Agent) on its Unix socket. The socket's
 * mode (0600, in a 0700 state directory) is the authentication: only the
 * agent's user reaches it. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "controlplane/grpc/server.h"
#include "dataplane/agent/agent_int.h"
#include "dataplane/runtime/log.h"
#include "ztm/v1/agent.pb-c.h"

#define MAX_MESHES 64

static void fail(ztm_api_reply_t *r, ztm_grpc_status_t st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fail(ztm_api_reply_t *r, ztm_grpc_status_t st, const char *fmt, ...)
{
    r->status = st;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->message, sizeof(r->message), fmt, ap);
    va_end(ap);
}

static void reply_with(ztm_api_reply_t *r, const ProtobufCMessage *msg)
{
    size_t len = protobuf_c_message_get_packed_size(msg);
    r->body = malloc(len ? len : 1);
    if (!r->body) {
        fail(r, ZTM_GRPC_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    protobuf_c_message_pack(msg, r->body);
    r->len = len;
    r->status = ZTM_GRPC_OK;
}

/* The mesh NAME, or the only one when NAME is empty. */
static mesh_t *pick_mesh(agent_t *a, const char *name, ztm_api_reply_t *r)
{
    if (name && *name) {
        mesh_t *m = agent_mesh_find(a, name);
        if (!m)
            fail(r, ZTM_GRPC_NOT_FOUND, "not joined to a mesh called '%s' (see: ztm status)", name);
        return m;
    }
    if (!a->meshes) {
        fail(r, ZTM_GRPC_FAILED_PRECONDITION, "not joined to any mesh yet (ztm join TOKEN)");
        return NULL;
    }
    if (a->meshes->next) {
        fail(r, ZTM_GRPC_INVALID_ARGUMENT, "joined to several meshes: say which with --mesh NAME");
        return NULL;
    }
    return a->meshes;
}

/* ---- tunnels as messages -------------------------------------------------- */
typedef struct {
    Ztm__V1__TunnelStatus st;
    Ztm__V1__TunnelSpec spec;
    char *allow[AGENT_MAX_ALLOW];
    char state[200];
} tstat_t;

static void fill_tunnel(tstat_t *o, tunnel_t *t)
{
    ztm__v1__tunnel_status__init(&o->st);
    ztm__v1__tunnel_spec__init(&o->spec);
    o->spec.mesh = t->m->name;
    o->spec.direction = t->export_ ? ZTM__V1__TUNNEL_DIRECTION__TUNNEL_EXPORT : ZTM__V1__TUNNEL_DIRECTION__TUNNEL_IMPORT;
    o->spec.name = t->name;
    o->spec.udp = t->udp;
    o->spec.target = t->target;
    o->spec.listen = t->listen;
    o->spec.via = t->via;
    for (unsigned i = 0; i < t->n_allow; i++)
        o->allow[i] = t->allow[i];
    o->spec.allow = o->allow;
    o->spec.n_allow = t->n_allow;
    bool up = t->m->hl && ztm_hublink_state(t->m->hl) == ZTM_HUBLINK_UP;
    if (t->error[0])
        snprintf(o->state, sizeof(o->state), "error: %s", t->error);
    else if (t->export_)
        snprintf(o->state, sizeof(o->state), "%s", t->published ? "published" : up ? "publishing" : "waiting for hub");
    else
        snprintf(o->state, sizeof(o->state), "%s", up ? "listening" : "listening (hub down)");
    o->st.spec = &o->spec;
    o->st.state = o->state;
    o->st.bound = t->bound;
    o->st.connections_active = t->conns_active;
    o->st.connections_total = t->conns_total;
    o->st.connections_refused = t->conns_refused;
    o->st.bytes_in = t->bytes_in;
    o->st.bytes_out = t->bytes_out;
}

static size_t count_tunnels(agent_t *a, mesh_t *only)
{
    size_t n = 0;
    for (mesh_t *m = a->meshes; m; m = m->next)
        if (!only || m == only)
            for (tunnel_t *t = m->tunnels; t; t = t->next)
                n++;
    return n;
}

/* ---- methods ------------------------------------------------------------- */
static void do_status(agent_t *a, const uint8_t *req, size_t len, ztm_api_reply_t *r)
{
    Ztm__V1__AgentStatusResponse resp = ZTM__V1__AGENT_STATUS_RESPONSE__INIT;
    size_t nm = 0, nt = count_tunnels(a, NULL);
    for (mesh_t *m = a->meshes; m; m = m->next)
        nm++;
    Ztm__V1__MeshStatus *ms = calloc(nm ? nm : 1, sizeof(*ms));
    Ztm__V1__MeshStatus **msp = calloc(nm ? nm : 1, sizeof(*msp));
    tstat_t *ts = calloc(nt ? nt : 1, sizeof(*ts));
    Ztm__V1__TunnelStatus **tsp = calloc(nt ? nt : 1, sizeof(*tsp));
    char *errs = calloc(nm ? nm : 1, 200);
    if (!ms || !msp || !ts || !tsp || !errs) {
        fail(r, ZTM_GRPC_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    char dir[AGENT_PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", a->cfg.state_dir);
    resp.version = (char *)ZTM_VERSION;
    resp.pid = getpid();
    resp.state_dir = dir;
    resp.started_time = a->started;
    size_t i = 0, k = 0;
    for (mesh_t *m = a->meshes; m; m = m->next, i++) {
        Ztm__V1__MeshStatus *s = &ms[i];
        ztm__v1__mesh_status__init(s);
        msp[i] = s;
        s->name = m->name;
        s->mesh_id = m->mesh_id;
        s->endpoint_name = m->self.name;
        s->endpoint_id = m->self.id;
        s->role = (char *)(ztm_role_name(m->self.role) ? ztm_role_name(m->self.role) : "");
        s->cert_not_after = m->self.not_after;
        s->peer_sessions = m->n_sessions;
        uint64_t bin = m->bytes_in_done, bout = m->bytes_out_done;
        for (psess_t *ps = m->sessions; ps; ps = ps->next)
            if (ps->peer) {
                ztm_peer_stats_t st;
                ztm_peer_stats(ps->peer, &st);
                bin += st.bytes_in;
                bout += st.bytes_out;
            }
        s->bytes_in = bin;
        s->bytes_out = bout;
        if (m->hl) {
            s->hub = (char *)ztm_hublink_hub(m->hl);
            s->hub_state = (char *)ztm_hublink_state_name(ztm_hublink_state(m->hl));
            s->record_layer = (char *)ztm_hublink_record_layer(m->hl);
            const char *e = ztm_hublink_last_error(m->hl);
            snprintf(errs + i * 200, 200, "%s", e ? e : "");
            s->last_error = errs + i * 200;
            ztm_hublink_stats_t hs;
            ztm_hublink_stats(m->hl, &hs);
            s->hub_connects = hs.connects;
        }
        s->tunnels = tsp + k;
        for (tunnel_t *t = m->tunnels; t; t = t->next, k++) {
            fill_tunnel(&ts[k], t);
            tsp[k] = &ts[k].st;
            s->n_tunnels++;
        }
    }
    resp.meshes = msp;
    resp.n_meshes = nm;
    reply_with(r, &resp.base);
out:
    free(ms);
    free(msp);
    free(ts);
    free(tsp);
    free(errs);
}

static void do_reload(agent_t *a, const uint8_t *req, size_t len, ztm_api_reply_t *r)
{
    char added[MAX_MESHES][ZTM_MESH_MAX + 1];
    char *ptrs[MAX_MESHES];
    unsigned n = agent_reload(a, added, MAX_MESHES);
    if (n > MAX_MESHES)
        n = MAX_MESHES;
    for (unsigned i = 0; i < n; i++)
        ptrs[i] = added[i];
    Ztm__V1__ReloadResponse resp = ZTM__V1__RELOAD_RESPONSE__INIT;
    resp.added = ptrs;
    resp.n_added = n;
    reply_with(r, &resp.base);
}

static void do_leave(agent_t *a, const uint8_t *req, size_t len, ztm_api_reply_t *r)
{
    Ztm__V1__LeaveRequest *q = ztm__v1__leave_request__unpack(NULL, len, req);
    if (!q) {
        fail(r, ZTM_GRPC_INVALID_ARGUMENT, "malformed LeaveRequest");
        return;
    }
    if (!q->mesh || !*q->mesh) {
        fail(r, ZTM_GRPC_INVALID_ARGUMENT, "say which mesh to leave");
    } else {
        mesh_t *m = pick_mesh(a, q->mesh, r);
        if (m) {
            agent_mesh_leave(a, m);
            Ztm__V1__LeaveResponse resp = ZTM__V1__LEAVE_RESPONSE__INIT;
            reply_with(r, &resp.base);
        }
    }
    ztm__v1__leave_request__free_unpacked(q, NULL);
}

static void do_add(agent_t *a, const uint8_t *req, size_t len, ztm_api_reply_t *r)
{
    Ztm__V1__AddTunnelRequest *q = ztm__v1__add_tunnel_request__unpack(NULL, len, req);
    if (!q || !q->spec) {
        fail(r, ZTM_GRPC_INVALID_ARGUMENT, "malformed AddTunnelRequest");
        goto out;
    }
    Ztm__V1__TunnelSpec *sp = q->spec;
    mesh_t *m = pick_mesh(a, sp->mesh, r);
    if (!m)
        goto out;
    tunnel_t spec = {0};
    bool exp = sp->direction == ZTM__V1__TUNNEL_DIRECTION__TUNNEL_EXPORT;
    if (!exp && sp->direction != ZTM__V1__TUNNEL_DIRECTION__TUNNEL_IMPORT) {
        fail(r, ZTM_GRPC_INVALID_ARGUMENT, "direction: export or import");
        goto out;
    }
    spec.export_ = exp;
    spec.udp = sp->udp;
    if (!sp->name || strlen(sp->name) > AGENT_SVC_MAX || !tunnel_name_valid(sp->name)) {
        fail(r, ZTM_GRPC_INVALID_ARGUMENT,
             "'%s' is not a service name (lower-case letters, digits, '.', '_', '-'; at most 63)", sp->name ? sp->name : "");
        goto out;
    }
    snprintf(spec.name, sizeof(spec.name), "%s", sp->name);
    if (exp) {
        if (!sp->target || !*sp->target || strlen(sp->target) >= sizeof(spec.target)) {
            fail(r, ZTM_GRPC_INVALID_ARGUMENT, "an export needs --to HOST:PORT");
            goto out;
        }
        snprintf(spec.target, sizeof(spec.target), "%s", sp->target);
        if (sp->n_allow > AGENT_MAX_ALLOW) {
            fail(r, ZTM_GRPC_INVALID_ARGUMENT, "--allow: at most 16 entries");
            goto out;
        }
        for (size_t i = 0; i < sp->n_allow; i++) {
            if (!ztm_name_valid(sp->allow[i])) {
                fail(r, ZTM_GRPC_INVALID_ARGUMENT, "--allow: '%s' is not an endpoint name or role", sp->allow[i]);
                goto out;
            }
            snprintf(spec.allow[spec.n_allow++], ZTM_NAME_MAX + 1, "%s", sp->allow[i]);
        }
    } else {
        if (!sp->listen || !*sp->listen || strlen(sp->listen) >= sizeof(spec.listen)) {
            fail(r, ZTM_GRPC_INVALID_ARGUMENT, "an import needs --listen [HOST:]PORT");
            goto out;
        }
        snprintf(spec.listen, sizeof(spec.listen), "%s", sp->listen);
        if (sp->via && *sp->via) {
            if (!ztm_name_valid(sp->via)) {
                fail(r, ZTM_GRPC_INVALID_ARGUMENT, "--via '%s': not an endpoint name", sp->via);
                goto out;
            }
            snprintf(spec.via, sizeof(spec.via), "%s", sp->via);
        }
    }
    char err[256];
    tunnel_t *t;
    int e = tunnel_add(m, &spec, &t, err, sizeof(err));
    if (e < 0) {
        fail(r, e == -EEXIST ? ZTM_GRPC_ALREADY_EXISTS : ZTM_GRPC_INVALID_ARGUMENT, "%s", err);
        goto out;
    }
    if ((e = tunnels_save(m)) < 0) {
        tunnel_remove(t);
        fail(r, ZTM_GRPC_INTERNAL, "cannot write %s/tunnels.conf: %s", m->dir, strerror(-e));
        goto out;
    }
    tstat_t ts;
    fill_tunnel(&ts, t);
    Ztm__V1__AddTunnelResponse resp = ZTM__V1__ADD_TUNNEL_RESPONSE__INIT;
    resp.tunnel = &ts.st;
    reply_with(r, &resp.base);
out:
    if (q)
        ztm__v1__add_tunnel_request__free_unpacked(q, NULL);
}

static void do_remove(agent_t *a, const uint8_t *req, size_t len, ztm_api_reply_t *r)
{
    Ztm__V1__RemoveTunnelRequest *q = ztm__v1__remove_tunnel_request__unpack(NULL, len, req);
    if (!q) {
        fail(r, ZTM_GRPC_INVALID_ARGUMENT, "malformed RemoveTunnelRequest");
        return;
    }
    mesh_t *m = pick_mesh(a, q->mesh, r);
    if (m) {
        bool exp = q->direction == ZTM__V1__TUNNEL_DIRECTION__TUNNEL_EXPORT;
        tunnel_t *t = q->name ? tunnel_find(m, exp, q->name, q->udp) : NULL;
        if (!t) {
            fail(r, ZTM_GRPC_NOT_FOUND, "no such tunnel: %s (see: ztm tunnel ls)", q->name ? q->name : "");
        } else {
            tunnel_remove(t);
            int e = tunnels_save(m);
            if (e < 0) {
                fail(r, ZTM_GRPC_INTERNAL, "removed, but cannot write %s/tunnels.conf", m->dir);
            } else {
                Ztm__V1__RemoveTunnelResponse resp = ZTM__V1__REMOVE_TUNNEL_RESPONSE__INIT;
                reply_with(r, &resp.base);
            }
        }
    }
    ztm__v1__remove_tunnel_request__free_unpacked(q, NULL);
}

static void do_list(agent_t *a, const uint8_t *req, size_t len, ztm_api_reply_t *r)
{
    Ztm__V1__ListTunnelsRequest *q = ztm__v1__list_tunnels_request__unpack(NULL, len, req);
    if (!q) {
        fail(r, ZTM_GRPC_INVALID_ARGUMENT, "malformed ListTunnelsRequest");
        return;
    }
    mesh_t *only = NULL;
    if (q->mesh && *q->mesh && !(only = pick_mesh(a, q->mesh, r))) {
        ztm__v1__list_tunnels_request__free_unpacked(q, NULL);
        return;
    }
    ztm__v1__list_tunnels_request__free_unpacked(q, NULL);
    size_t n = count_tunnels(a, only), k = 0;
    tstat_t *ts = calloc(n ? n : 1, sizeof(*ts));
    Ztm__V1__TunnelStatus **tsp = calloc(n ? n : 1, sizeof(*tsp));
    if (!ts || !tsp) {
        fail(r, ZTM_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    } else {
        for (mesh_t *m = a->meshes; m; m = m->next)
            if (!only || m == only)
                for (tunnel_t *t = m->tunnels; t; t = t->next, k++) {
                    fill_tunnel(&ts[k], t);
                    tsp[k] = &ts[k].st;
                }
        Ztm__V1__ListTunnelsResponse resp = ZTM__V1__LIST_TUNNELS_RESPONSE__INIT;
        resp.tunnels = tsp;
        resp.n_tunnels = n;
        reply_with(r, &resp.base);
    }
    free(ts);
    free(tsp);
}

static const struct {
    const char *path;
    void (*fn)(agent_t *a, const uint8_t *req, size_t len, ztm_api_reply_t *r);
} methods[] = {
    {"/ztm.v1.Agent/Status", do_status},
    {"/ztm.v1.Agent/Reload", do_reload},
    {"/ztm.v1.Agent/Leave", do_leave},
    {"/ztm.v1.Agent/AddTunnel", do_add},
    {"/ztm.v1.Agent/RemoveTunnel", do_remove},
    {"/ztm.v1.Agent/ListTunnels", do_list},
};

static void on_call(void *arg, const char *path, const ztm_identity_t *caller, const uint8_t *req, size_t len,
                    ztm_api_reply_t *reply)
{
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++)
        if (strcmp(path, methods[i].path) == 0) {
            methods[i].fn(arg, req, len, reply);
            return;
        }
    fail(reply, ZTM_GRPC_UNIMPLEMENTED, "unknown method %.120s", path);
}

/* ---- the socket ----------------------------------------------------------- */
static void on_api_accept(ztm_acceptor_t *acc, int fd)
{
    agent_t *a = acc->user;
    ztm_grpc_server_accept(a->api, fd, NULL);
}

/* A socket that answers belongs to a running agent; one that does not is
 * left over from a crash. */
bool agent_api_in_use(const char *path)
{
    ztm_addr_t ua;
    if (ztm_addr_unix(path, &ua) < 0)
        return false;
    int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (probe < 0)
        return false;
    bool answers = connect(probe, (struct sockaddr *)&ua.ss, ua.len) == 0;
    close(probe);
    return answers;
}

int agent_api_start(agent_t *a)
{
    ztm_addr_t ua;
    int r = ztm_addr_unix(a->sock_path, &ua);
    if (r < 0) {
        ztm_log(ZTM_LOG_ERROR, "agent.socket", "path=%s error=\"path too long for a Unix socket\"", a->sock_path);
        return r;
    }
    if (agent_api_in_use(a->sock_path)) {
        ztm_log(ZTM_LOG_ERROR, "agent.socket", "path=%s error=\"another agent is running with this state "
                "directory\"", a->sock_path);
        return -EADDRINUSE;
    }
    unlink(a->sock_path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    mode_t old = umask(0177);
    r = bind(fd, (struct sockaddr *)&ua.ss, ua.len) < 0 ? -errno : 0;
    umask(old);
    if (r == 0 && chmod(a->sock_path, 0600) < 0)
        r = -errno;
    if (r == 0 && listen(fd, 64) < 0)
        r = -errno;
    if (r == 0)
        r = ztm_grpc_server_new_local(a->w, on_call, a, NULL, &a->api);
    if (r < 0) {
        ztm_log(ZTM_LOG_ERROR, "agent.socket", "path=%s error=\"%s\"", a->sock_path, strerror(-r));
        close(fd);
        return r;
    }
    a->api_fd = fd;
    ztm_acceptor_start(&a->api_acceptor, a->w, fd, on_api_accept, a);
    return 0;
}

void agent_api_stop(agent_t *a)
{
    if (a->api_fd < 0)
        return;
    ztm_acceptor_stop(&a->api_acceptor);
    a->api_fd = -1;
    unlink(a->sock_path);
    ztm_grpc_server_drain(a->api);
}

void agent_api_tick(agent_t *a)
{
    if (a->api)
        ztm_grpc_server_run(a->api);
}
