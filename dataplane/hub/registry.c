/* The hub's endpoint registry; see registry.h. */
#include "dataplane/hub/registry.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dataplane/hub/htab.h"
#include "dataplane/hub/hubmsg.h"
#include "dataplane/runtime/log.h"

typedef struct {
    hnode_t node; /* by name */
    char id[ZTM_ID_MAX + 1];
    char name[ZTM_NAME_MAX + 1];
    unsigned worker; /* where its Events stream is */
    uint64_t token;  /* which one */
} entry_t;

typedef struct {
    char id[ZTM_ID_MAX + 1];
    char name[ZTM_NAME_MAX + 1];
    bool present;
    unsigned worker; /* present: the Events stream waiting for its Hello */
    uint64_t token;
} change_t;

struct ztm_hub_registry {
    ztm_worker_t *w;
    ztm_hub_registry_config_t cfg;
    htab_t byname;
    change_t *pq; /* presence changes of this turn */
    size_t pq_n, pq_cap;
};

int ztm_hub_registry_new(ztm_worker_t *w, const ztm_hub_registry_config_t *cfg,
                         ztm_hub_registry_t **out)
{
    ztm_hub_registry_t *g = calloc(1, sizeof(*g));
    if (!g)
        return -ENOMEM;
    g->w = w;
    g->cfg = *cfg;
    *out = g;
    return 0;
}

void ztm_hub_registry_free(ztm_hub_registry_t *g)
{
    if (!g)
        return;
    for (size_t i = 0; i < g->byname.nb; i++) {
        for (hnode_t *n = g->byname.b[i], *next; n; n = next) {
            next = n->next;
            free((entry_t *)((char *)n - offsetof(entry_t, node)));
        }
    }
    htab_free(&g->byname);
    free(g->pq);
    free(g);
}

size_t ztm_hub_registry_endpoints(const ztm_hub_registry_t *g)
{
    return g->byname.n;
}

static entry_t *find(ztm_hub_registry_t *g, const char *name)
{
    uint64_t hash = htab_hash_str(name);
    for (hnode_t *n = htab_first(&g->byname, hash); n; n = n->next) {
        entry_t *e = (entry_t *)((char *)n - offsetof(entry_t, node));
        if (n->hash == hash && strcmp(e->name, name) == 0)
            return e;
    }
    return NULL;
}

static void answer(ztm_hub_registry_t *g, unsigned to, uint32_t type, hubmsg_t *p, uint64_t u64)
{
    ztm_msg_t m = {.type = type, .u64 = u64, .ptr = p};
    ztm_outbox_post(g->cfg.ob, to, &m);
}

static bool change(ztm_hub_registry_t *g, const hubmsg_t *p, bool present)
{
    if (g->pq_n == g->pq_cap) {
        size_t cap = g->pq_cap ? g->pq_cap * 2 : 16;
        change_t *pq = realloc(g->pq, cap * sizeof(*pq));
        if (!pq)
            return false;
        g->pq = pq;
        g->pq_cap = cap;
    }
    change_t *c = &g->pq[g->pq_n++];
    snprintf(c->id, sizeof(c->id), "%s", p->id);
    snprintf(c->name, sizeof(c->name), "%s", p->name);
    c->present = present;
    c->worker = p->worker;
    c->token = p->token;
    return true;
}

static void on_reg(ztm_hub_registry_t *g, hubmsg_t *p)
{
    entry_t *e = find(g, p->name);
    if (e) {
        /* The endpoint's new Events stream replaces the old one. */
        answer(g, e->worker, HUB_MSG_REPLACED, NULL, e->token);
    } else {
        e = calloc(1, sizeof(*e));
        if (e) {
            snprintf(e->name, sizeof(e->name), "%s", p->name);
            e->node.hash = htab_hash_str(e->name);
            if (htab_insert(&g->byname, &e->node) < 0) {
                free(e);
                e = NULL;
            }
        }
    }
    if (!e || !change(g, p, true)) {
        ztm_log(ZTM_LOG_ERROR, "relay.registry", "endpoint=%s error=\"out of memory\"", p->name);
        if (e)
            e->worker = 0, e->token = 0; /* unreachable until it registers again */
        free(p);
        return;
    }
    snprintf(e->id, sizeof(e->id), "%s", p->id);
    e->worker = p->worker;
    e->token = p->token;
    free(p);
}

static void on_unreg(ztm_hub_registry_t *g, hubmsg_t *p)
{
    entry_t *e = find(g, p->name);
    /* Only the current stream takes the endpoint away (a replaced one
     * was told, and unregisters nothing). */
    if (e && e->worker == p->worker && e->token == p->token) {
        htab_remove(&g->byname, &e->node);
        free(e);
        if (!change(g, p, false))
            ztm_log(ZTM_LOG_ERROR, "relay.presence", "endpoint=%s error=\"out of memory\"",
                    p->name);
    }
    free(p);
}

static void on_find(ztm_hub_registry_t *g, hubmsg_t *p)
{
    unsigned from = p->worker;
    entry_t *e = find(g, p->name);
    if (!e || !e->worker) {
        answer(g, from, HUB_MSG_NOTFOUND, p, p->sid);
        return;
    }
    p->worker = e->worker;
    p->token = e->token;
    snprintf(p->id, sizeof(p->id), "%s", e->id);
    answer(g, from, HUB_MSG_FOUND, p, p->sid);
}

bool ztm_hub_registry_message(ztm_hub_registry_t *g, const ztm_msg_t *m)
{
    switch (m->type) {
    case HUB_MSG_REG:
        on_reg(g, m->ptr);
        return true;
    case HUB_MSG_UNREG:
        on_unreg(g, m->ptr);
        return true;
    case HUB_MSG_FIND:
        on_find(g, m->ptr);
        return true;
    default:
        return false;
    }
}

void ztm_hub_registry_run(ztm_hub_registry_t *g)
{
    if (!g->pq_n)
        return;
    uint64_t version = 0;
    if (g->cfg.on_presence) {
        ztm_hub_presence_t ch[64];
        for (size_t i = 0; i < g->pq_n;) {
            size_t n = 0;
            for (; n < 64 && i + n < g->pq_n; n++)
                ch[n] = (ztm_hub_presence_t){g->pq[i + n].id, g->pq[i + n].name,
                                             g->pq[i + n].present};
            version = g->cfg.on_presence(g->cfg.arg, ch, n);
            i += n;
        }
    }
    for (size_t i = 0; i < g->pq_n; i++) {
        if (!g->pq[i].present)
            continue;
        hubmsg_t *p = calloc(1, sizeof(*p));
        if (!p) {
            ztm_log(ZTM_LOG_ERROR, "relay.hello", "endpoint=%s error=\"out of memory\"",
                    g->pq[i].name);
            continue;
        }
        p->token = g->pq[i].token;
        p->version = version;
        answer(g, g->pq[i].worker, HUB_MSG_HELLO, p, p->token);
    }
    g->pq_n = 0;
}
