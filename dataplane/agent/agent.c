/* The agent daemon: meshes, their hub links and peer sessions; see agent.h. */
#include <dirent.h>
#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "controlplane/ca/keys.h"
#include "controlplane/grpc/server.h"
#include "controlplane/store/file.h"
#include "dataplane/agent/agent_int.h"
#include "dataplane/runtime/log.h"
#include "ztm/v1/mesh.pb-c.h"

int ztm_agent_socket_path(const char *state_dir, char *out, size_t cap)
{
    int n = snprintf(out, cap, "%s/agent.sock", state_dir);
    return n < 0 || (size_t)n >= cap || (size_t)n >= 108 ? -ENAMETOOLONG : 0;
}

mesh_t *agent_mesh_find(agent_t *a, const char *name)
{
    for (mesh_t *m = a->meshes; m; m = m->next)
        if (strcmp(m->name, name) == 0)
            return m;
    return NULL;
}

/* ---- peer sessions: a peer (dataplane/peer) over a relay stream ---------- */
/* Adds the session's byte counts to the mesh's before the peer goes. */
static void psess_count(psess_t *ps)
{
    if (!ps->peer)
        return;
    ztm_peer_stats_t st;
    ztm_peer_stats(ps->peer, &st);
    ps->m->bytes_in_done += st.bytes_in;
    ps->m->bytes_out_done += st.bytes_out;
}

static void psess_free(psess_t *ps)
{
    mesh_t *m = ps->m;
    if (ps->prev)
        ps->prev->next = ps->next;
    else
        m->sessions = ps->next;
    if (ps->next)
        ps->next->prev = ps->prev;
    m->n_sessions--;
    free(ps);
}

/* The carrier side, called by the peer. */
static void car_want_write(void *arg)
{
    psess_t *ps = arg;
    if (ps->rs)
        ztm_relay_stream_resume(ps->rs);
}

static void car_consumed(void *arg, size_t n)
{
    psess_t *ps = arg;
    if (ps->rs)
        ztm_relay_stream_consume(ps->rs, n);
}

static void car_closed(void *arg, const char *reason, bool error)
{
    psess_t *ps = arg;
    ztm_log(error ? ZTM_LOG_INFO : ZTM_LOG_DEBUG, "agent.session_end", "mesh=%s peer=%s reason=\"%s\"",
            ps->m->name, ps->peer_name, reason);
    psess_count(ps);
    ps->peer = NULL;
    if (!ps->rs) {
        psess_free(ps);
        return;
    }
    if (error) {
        ztm_relay_stream_reset(ps->rs); /* no on_close after a reset */
        ps->rs = NULL;
        psess_free(ps);
        return;
    }
    ztm_relay_stream_resume(ps->rs); /* the last bytes and the EOF */
}

static const ztm_peer_carrier_t carrier = {
    .want_write = car_want_write,
    .consumed = car_consumed,
    .closed = car_closed,
};

/* The relay stream side, called by the hub link. */
static void rs_joined(void *arg)
{
    psess_t *ps = arg;
    ps->joined = true;
    ztm_log(ZTM_LOG_DEBUG, "agent.session_joined", "mesh=%s peer=%s", ps->m->name, ps->peer_name);
}

static void rs_data(void *arg, const uint8_t *data, size_t len)
{
    psess_t *ps = arg;
    if (ps->peer)
        ztm_peer_feed(ps->peer, data, len);
    else
        ztm_relay_stream_consume(ps->rs, len); /* the session is over: drop */
}

static void rs_eof(void *arg)
{
    psess_t *ps = arg;
    if (ps->peer)
        ztm_peer_feed_eof(ps->peer);
}

static size_t rs_produce(void *arg, uint8_t *buf, size_t cap, bool *eof)
{
    psess_t *ps = arg;
    if (!ps->peer) {
        *eof = true;
        return 0;
    }
    return ztm_peer_produce(ps->peer, buf, cap, eof);
}

static void rs_close(void *arg, const char *reason, bool error)
{
    psess_t *ps = arg;
    ps->rs = NULL;
    if (ps->peer) {
        if (error)
            ztm_log(ZTM_LOG_INFO, "agent.session_lost", "mesh=%s peer=%s reason=\"%s\"", ps->m->name,
                    ps->peer_name, reason);
        psess_count(ps);
        ztm_peer_t *p = ps->peer;
        ps->peer = NULL;
        ztm_peer_carrier_gone(p, reason);
    }
    psess_free(ps);
}

static const ztm_relay_cb_t relay_cbs = {
    .on_joined = rs_joined,
    .on_data = rs_data,
    .on_eof = rs_eof,
    .produce = rs_produce,
    .on_close = rs_close,
};

static psess_t *psess_new(mesh_t *m, const char *peer_name, bool outgoing)
{
    psess_t *ps = calloc(1, sizeof(*ps));
    if (!ps)
        return NULL;
    ps->m = m;
    ps->outgoing = outgoing;
    snprintf(ps->peer_name, sizeof(ps->peer_name), "%s", peer_name);
    ps->next = m->sessions;
    if (m->sessions)
        m->sessions->prev = ps;
    m->sessions = ps;
    m->n_sessions++;
    return ps;
}

/* Starts the peer on PS once its relay stream exists. */
static int psess_start_peer(psess_t *ps)
{
    mesh_t *m = ps->m;
    ztm_peer_config_t pc = {
        .tls = ps->outgoing ? m->peer_client_tls : m->peer_server_tls,
        .mesh = m->mesh_id,
        .expect_name = ps->outgoing ? ps->peer_name : NULL,
        .resolve = tunnels_resolve,
        .resolve_arg = m,
        .on_refused = tunnels_refused,
        .refused_arg = m,
    };
    return ztm_peer_new(m->a->w, &pc, &carrier, ps, &ps->peer);
}

psess_t *agent_session_to(mesh_t *m, const char *name)
{
    for (psess_t *ps = m->sessions; ps; ps = ps->next)
        if (ps->outgoing && ps->peer && ps->rs && strcmp(ps->peer_name, name) == 0)
            return ps;
    if (!m->hl || ztm_hublink_state(m->hl) != ZTM_HUBLINK_UP)
        return NULL;
    psess_t *ps = psess_new(m, name, true);
    if (!ps)
        return NULL;
    if (ztm_hublink_open(m->hl, name, &relay_cbs, ps, &ps->rs) < 0) {
        psess_free(ps);
        return NULL;
    }
    if (psess_start_peer(ps) < 0) {
        ztm_relay_stream_reset(ps->rs);
        psess_free(ps);
        return NULL;
    }
    ztm_log(ZTM_LOG_DEBUG, "agent.session_open", "mesh=%s peer=%s", m->name, name);
    return ps;
}

/* ---- the hub link's events ------------------------------------------------ */
static void on_incoming(void *arg, uint64_t session_id, const char *from_name, const char *from_id)
{
    mesh_t *m = arg;
    psess_t *ps = psess_new(m, from_name, false);
    if (!ps)
        return;
    if (ztm_hublink_accept(m->hl, session_id, &relay_cbs, ps, &ps->rs) < 0) {
        psess_free(ps);
        return;
    }
    if (psess_start_peer(ps) < 0) {
        ztm_relay_stream_reset(ps->rs);
        psess_free(ps);
        return;
    }
    ztm_log(ZTM_LOG_DEBUG, "agent.session_accept", "mesh=%s peer=%s id=%s session=%llu", m->name,
            from_name, from_id, (unsigned long long)session_id);
}

static void on_link_state(void *arg, ztm_hublink_state_t st, const char *hub, const char *why)
{
    mesh_t *m = arg;
    if (st == ZTM_HUBLINK_UP) {
        ztm_log(ZTM_LOG_INFO, "agent.hub_up", "mesh=%s hub=%s record_layer=%s", m->name, hub,
                ztm_hublink_record_layer(m->hl));
        tunnels_link_up(m);
    } else if (st != ZTM_HUBLINK_STOPPED) {
        for (tunnel_t *t = m->tunnels; t; t = t->next)
            t->published = t->publishing = false;
        if (why)
            ztm_log(ZTM_LOG_INFO, "agent.hub_down", "mesh=%s hub=%s state=%s reason=\"%s\"", m->name, hub,
                    ztm_hublink_state_name(st), why);
    }
}

/* ---- certificate renewal ----------------------------------------------- */
static void renew_arm(mesh_t *m);

static int read_file(const char *path, char **out, size_t *len)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -errno;
    char *buf = malloc(65536);
    size_t n = buf ? fread(buf, 1, 65535, f) : 0;
    fclose(f);
    if (!buf)
        return -ENOMEM;
    buf[n] = 0;
    *out = buf;
    *len = n;
    return 0;
}

static int load_identity(mesh_t *m, char *err, size_t cap)
{
    char path[AGENT_PATH_MAX + 32], *pem = NULL;
    size_t len = 0;
    snprintf(path, sizeof(path), "%s/cert.pem", m->dir);
    int r = read_file(path, &pem, &len);
    if (r < 0) {
        snprintf(err, cap, "cannot read %s: %s", path, strerror(-r));
        return r;
    }
    r = ztm_identity_from_pem(pem, len, &m->self);
    free(pem);
    if (r < 0)
        snprintf(err, cap, "%s is not a ztm certificate", path);
    return r;
}

static int make_tls(mesh_t *m, char *err, size_t cap)
{
    char cert[AGENT_PATH_MAX + 32], key[AGENT_PATH_MAX + 32], ca[AGENT_PATH_MAX + 32];
    snprintf(cert, sizeof(cert), "%s/cert.pem", m->dir);
    snprintf(key, sizeof(key), "%s/key.pem", m->dir);
    snprintf(ca, sizeof(ca), "%s/ca.pem", m->dir);
    ztm_tls_ctx_t *hub = NULL, *pc = NULL, *ps = NULL;
    ztm_tls_config_t tc = {.role = ZTM_TLS_CLIENT, .cert_file = cert, .key_file = key, .ca_file = ca,
                           .ktls = (ztm_ktls_mode_t)m->a->cfg.ktls};
    int r = ztm_tls_ctx_new(&hub, &tc);
    /* Peer sessions run TLS over a relayed stream: always in user space. */
    tc.ktls = ZTM_KTLS_OFF;
    if (r == 0)
        r = ztm_tls_ctx_new(&pc, &tc);
    tc.role = ZTM_TLS_SERVER;
    if (r == 0)
        r = ztm_tls_ctx_new(&ps, &tc);
    if (r < 0) {
        snprintf(err, cap, "TLS set-up from %s: %s", m->dir, ztm_tls_strerror(r));
        ztm_tls_ctx_free(hub);
        ztm_tls_ctx_free(pc);
        ztm_tls_ctx_free(ps);
        return r;
    }
    ztm_tls_ctx_free(m->hub_tls);
    ztm_tls_ctx_free(m->peer_client_tls);
    ztm_tls_ctx_free(m->peer_server_tls);
    m->hub_tls = hub;
    m->peer_client_tls = pc;
    m->peer_server_tls = ps;
    return 0;
}

static void on_renewed(void *arg, ztm_grpc_status_t st, const char *msg, const uint8_t *body, size_t len)
{
    mesh_t *m = arg;
    m->renewing = false;
    Ztm__V1__RenewResponse *resp = st == ZTM_GRPC_OK ? ztm__v1__renew_response__unpack(NULL, len, body) : NULL;
    ztm_identity_t id;
    char err[256] = "";
    if (!resp || !resp->certificate_pem ||
        ztm_identity_from_pem(resp->certificate_pem, strlen(resp->certificate_pem), &id) < 0 ||
        strcmp(id.id, m->self.id) != 0 || strcmp(id.mesh, m->self.mesh) != 0) {
        ztm_log(ZTM_LOG_WARN, "agent.renew_failed", "mesh=%s status=%s error=\"%s\"", m->name,
                ztm_grpc_status_name(st), st == ZTM_GRPC_OK ? "the answer does not parse" : msg);
        if (resp)
            ztm__v1__renew_response__free_unpacked(resp, NULL);
        /* Try again in a minute. */
        ztm_timer_arm(ztm_worker_timers(m->a->w), &m->renew_timer,
                      ztm_worker_now(m->a->w) + 60 * ZTM_NS_PER_SEC);
        return;
    }
    char path[AGENT_PATH_MAX + 32];
    snprintf(path, sizeof(path), "%s/cert.pem", m->dir);
    int r = ztm_pem_save_file(path, resp->certificate_pem, strlen(resp->certificate_pem));
    ztm__v1__renew_response__free_unpacked(resp, NULL);
    if (r < 0 || load_identity(m, err, sizeof(err)) < 0 || make_tls(m, err, sizeof(err)) < 0) {
        ztm_log(ZTM_LOG_WARN, "agent.renew_failed", "mesh=%s error=\"%s\"", m->name,
                *err ? err : "cannot write the certificate");
        return;
    }
    /* Live streams stay on the current connection; new ones use the new
     * certificate. */
    ztm_hublink_set_tls(m->hl, m->hub_tls);
    time_t exp = (time_t)m->self.not_after;
    char when[64];
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", gmtime(&exp));
    ztm_log(ZTM_LOG_INFO, "agent.renewed", "mesh=%s serial=%s not_after=%s", m->name, m->self.serial, when);
    renew_arm(m);
}

static void on_renew_timer(ztm_timer_t *t)
{
    mesh_t *m = (mesh_t *)((char *)t - offsetof(mesh_t, renew_timer));
    if (m->renewing)
        return;
    if (!m->hl || ztm_hublink_state(m->hl) != ZTM_HUBLINK_UP) {
        ztm_timer_arm(ztm_worker_timers(m->a->w), &m->renew_timer,
                      ztm_worker_now(m->a->w) + 10 * ZTM_NS_PER_SEC);
        return;
    }
    char path[AGENT_PATH_MAX + 32], *csr = NULL;
    size_t csr_len;
    EVP_PKEY *key = NULL;
    snprintf(path, sizeof(path), "%s/key.pem", m->dir);
    if (ztm_key_load_file(path, &key) < 0 || ztm_csr_create(key, m->self.name, &csr, &csr_len) < 0) {
        ztm_log(ZTM_LOG_WARN, "agent.renew_failed", "mesh=%s error=\"cannot read the key %s\"", m->name, path);
        EVP_PKEY_free(key);
        return;
    }
    EVP_PKEY_free(key);
    Ztm__V1__RenewRequest req = ZTM__V1__RENEW_REQUEST__INIT;
    req.csr_pem = csr;
    size_t len = protobuf_c_message_get_packed_size(&req.base);
    uint8_t *buf = malloc(len ? len : 1);
    if (buf) {
        protobuf_c_message_pack(&req.base, buf);
        if (ztm_hublink_call(m->hl, "/ztm.v1.Mesh/Renew", buf, len, 0, on_renewed, m) == 0)
            m->renewing = true;
    }
    free(buf);
    free(csr);
    if (!m->renewing)
        ztm_timer_arm(ztm_worker_timers(m->a->w), &m->renew_timer,
                      ztm_worker_now(m->a->w) + 10 * ZTM_NS_PER_SEC);
}

/* Renew at two thirds of the certificate's life (ZTM_RENEW_AT overrides,
 * in seconds from now: for tests). */
static void renew_arm(mesh_t *m)
{
    int64_t now = (int64_t)time(NULL);
    int64_t at = m->self.not_before + (m->self.not_after - m->self.not_before) * 2 / 3;
    int64_t in = at - now;
    const char *env = getenv("ZTM_RENEW_AT");
    if (env && *env)
        in = strtoll(env, NULL, 10);
    if (in < 1)
        in = 1;
    ztm_timer_arm(ztm_worker_timers(m->a->w), &m->renew_timer,
                  ztm_worker_now(m->a->w) + (uint64_t)in * ZTM_NS_PER_SEC);
}

/* ---- meshes ----------------------------------------------------------------- */
static int read_conf(mesh_t *m, char *err, size_t cap)
{
    char path[AGENT_PATH_MAX + 32];
    snprintf(path, sizeof(path), "%s/mesh.conf", m->dir);
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, cap, "cannot read %s: %s", path, strerror(errno));
        return -errno;
    }
    char line[512];
    while (fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\r\n")] = 0;
        size_t n = strlen(line);
        if (strncmp(line, "mesh=", 5) == 0 && n - 5 < sizeof(m->mesh_id))
            memcpy(m->mesh_id, line + 5, n - 5 + 1);
        else if (strncmp(line, "hub=", 4) == 0 && m->n_hubs < AGENT_MAX_HUBS && n - 4 < sizeof(m->hubs[0]))
            memcpy(m->hubs[m->n_hubs++], line + 4, n - 4 + 1);
    }
    fclose(f);
    if (!m->n_hubs || !ztm_mesh_valid(m->mesh_id)) {
        snprintf(err, cap, "%s names no mesh or no hub", path);
        return -EINVAL;
    }
    return 0;
}

static void mesh_free(mesh_t *m)
{
    tunnels_free_calls(m);
    ztm_tls_ctx_free(m->hub_tls);
    ztm_tls_ctx_free(m->peer_client_tls);
    ztm_tls_ctx_free(m->peer_server_tls);
    free(m);
}

int agent_mesh_add(agent_t *a, const char *name, char *err, size_t cap)
{
    if (agent_mesh_find(a, name))
        return -EEXIST;
    mesh_t *m = calloc(1, sizeof(*m));
    if (!m)
        return -ENOMEM;
    m->a = a;
    snprintf(m->name, sizeof(m->name), "%s", name);
    snprintf(m->dir, sizeof(m->dir), "%s/meshes/%s", a->cfg.state_dir, name);
    ztm_timer_init(&m->renew_timer, on_renew_timer);
    int r;
    if ((r = read_conf(m, err, cap)) < 0 || (r = load_identity(m, err, cap)) < 0 ||
        (r = make_tls(m, err, cap)) < 0) {
        mesh_free(m);
        return r;
    }
    if (strcmp(m->self.mesh, m->mesh_id) != 0) {
        snprintf(err, cap, "%s/cert.pem is for mesh %s, mesh.conf says %s", m->dir, m->self.mesh, m->mesh_id);
        mesh_free(m);
        return -EINVAL;
    }
    const char *hubs[AGENT_MAX_HUBS];
    for (unsigned i = 0; i < m->n_hubs; i++)
        hubs[i] = m->hubs[i];
    ztm_hublink_config_t hc = {.hubs = hubs, .n_hubs = m->n_hubs, .mesh = m->mesh_id, .tls = m->hub_tls,
                               .on_state = on_link_state, .on_incoming = on_incoming, .arg = m,
                               .resolver = a->resolver};
    if ((r = ztm_hublink_new(a->w, &hc, &m->hl)) < 0) {
        snprintf(err, cap, "hub link: %s", strerror(-r));
        mesh_free(m);
        return r;
    }
    m->next = a->meshes;
    a->meshes = m;
    tunnels_load(m);
    renew_arm(m);
    ztm_log(ZTM_LOG_INFO, "agent.mesh", "mesh=%s id=%s endpoint=%s hubs=%u", m->name, m->mesh_id,
            m->self.name, m->n_hubs);
    return 0;
}

static void mesh_stop(mesh_t *m)
{
    ztm_timer_cancel(ztm_worker_timers(m->a->w), &m->renew_timer);
    tunnels_stop_all(m);
    /* Stopping the link resets its streams: each session's carrier is gone. */
    for (psess_t *ps = m->sessions, *n; ps; ps = n) {
        n = ps->next;
        if (ps->rs) {
            ztm_relay_stream_reset(ps->rs);
            ps->rs = NULL;
        }
        if (ps->peer) {
            psess_count(ps);
            ztm_peer_t *p = ps->peer;
            ps->peer = NULL;
            ztm_peer_carrier_gone(p, "agent stopping");
        }
        psess_free(ps);
    }
    if (m->hl)
        ztm_hublink_stop(m->hl);
    m->hl = NULL;
}

static int rm_tree(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return -errno;
    struct dirent *e;
    char path[AGENT_PATH_MAX + 300];
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        unlink(path);
    }
    closedir(d);
    return rmdir(dir) < 0 ? -errno : 0;
}

void agent_mesh_leave(agent_t *a, mesh_t *m)
{
    mesh_stop(m);
    for (mesh_t **pp = &a->meshes; *pp; pp = &(*pp)->next)
        if (*pp == m) {
            *pp = m->next;
            break;
        }
    /* The key is wiped from disk with the rest: an endpoint that left is
     * gone (revoke it on the hub to make that final for the mesh too). */
    int r = rm_tree(m->dir);
    ztm_log(ZTM_LOG_INFO, "agent.left", "mesh=%s dir=%s%s", m->name, m->dir, r < 0 ? " error=\"cannot remove\"" : "");
    mesh_free(m);
}

unsigned agent_reload(agent_t *a, char added[][ZTM_MESH_MAX + 1], unsigned cap)
{
    char dir[AGENT_PATH_MAX + 16];
    snprintf(dir, sizeof(dir), "%s/meshes", a->cfg.state_dir);
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    unsigned n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || !ztm_mesh_valid(e->d_name) || agent_mesh_find(a, e->d_name))
            continue;
        char cert[AGENT_PATH_MAX + 600];
        struct stat st;
        snprintf(cert, sizeof(cert), "%s/%s/cert.pem", dir, e->d_name);
        if (stat(cert, &st) < 0)
            continue; /* a join in progress */
        char err[512];
        if (agent_mesh_add(a, e->d_name, err, sizeof(err)) < 0) {
            ztm_log(ZTM_LOG_WARN, "agent.mesh_skipped", "mesh=%s error=\"%s\"", e->d_name, err);
            continue;
        }
        if (added && n < cap)
            memcpy(added[n], e->d_name, strlen(e->d_name) + 1); /* a valid mesh name: short */
        n++;
    }
    closedir(d);
    return n;
}

/* ---- the service --------------------------------------------------------- */
static int svc_start(ztm_worker_t *w, void *arg)
{
    agent_t *a = arg;
    a->w = w;
    int r = ztm_resolver_new(w, &a->resolver);
    if (r < 0)
        return r;
    r = agent_api_start(a);
    if (r < 0)
        return r;
    agent_reload(a, NULL, 0);
    return 0;
}

static void svc_drain(ztm_worker_t *w, void *arg)
{
    agent_t *a = arg;
    agent_api_stop(a);
    for (mesh_t *m = a->meshes; m; m = m->next)
        mesh_stop(m);
}

static void svc_tick(ztm_worker_t *w, void *arg)
{
    agent_api_tick(arg);
}

static bool svc_idle(ztm_worker_t *w, void *arg)
{
    agent_t *a = arg;
    return !a->api || ztm_grpc_server_conns(a->api) == 0;
}

static void svc_finish(ztm_worker_t *w, void *arg)
{
    agent_t *a = arg;
    while (a->meshes) {
        mesh_t *m = a->meshes;
        a->meshes = m->next;
        mesh_free(m);
    }
    if (a->api && ztm_grpc_server_conns(a->api) == 0)
        ztm_grpc_server_free(a->api);
    a->api = NULL;
    ztm_resolver_free(a->resolver);
    a->resolver = NULL;
}

static const ztm_service_t agent_service = {
    .name = "agent",
    .start = svc_start,
    .tick = svc_tick,
    .drain = svc_drain,
    .stop = svc_drain,
    .idle = svc_idle,
    .finish = svc_finish,
};

static void on_ready(void *arg, unsigned workers)
{
    agent_t *a = arg;
    ztm_log_ready("agent.ready", "state=%s socket=%s meshes=%u", a->cfg.state_dir, a->sock_path, 0u);
}

int ztm_agent_run(const ztm_agent_config_t *cfg)
{
    agent_t a = {.cfg = *cfg, .api_fd = -1, .started = (int64_t)time(NULL)};
    int r = ztm_agent_socket_path(cfg->state_dir, a.sock_path, sizeof(a.sock_path));
    if (r < 0)
        return r;
    /* One agent per state directory: refused before anything starts, so the
     * caller's one line says it (svc_start checks again, for a race). */
    if (agent_api_in_use(a.sock_path))
        return -EADDRINUSE;
    ztm_engine_config_t ec = {.workers = 1, .pin = false, .drain_timeout_ns = cfg->drain_timeout_ns,
                              .buf_count = 256, .buf_size = 65536};
    return ztm_engine_run(&ec, &agent_service, &a, on_ready);
}
