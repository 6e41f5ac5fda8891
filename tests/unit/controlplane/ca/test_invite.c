/* controlplane/ca/invite: invites in the store — created, checked, used
 * once; reused, expired, forged, altered (name, role, secret), foreign-mesh
 * tokens refused; the store holds only the secret's hash; marking used is
 * atomic with the rest of a join; sweeping; persistence across restarts. */
#include "controlplane/ca/invite.h"
#include "controlplane/store/file.h"

#include <errno.h>

#include "test.h"

static const int64_t T0 = 1750000000;
static char top[] = "/tmp/ztm-test-invite-XXXXXX";
static char dir[600];
static const char *const hubs[] = {"127.0.0.1:7443", "hub.example.com:443"};

static ztm_store_t *open_store(void)
{
    ztm_store_options_t o = {.dir = dir};
    ztm_store_t *s;
    REQUIRE(ztm_store_open_embedded(&o, &s) == 0);
    return s;
}

static void make_invite(ztm_store_t *s, ztm_ca_t *ca, const char *name, ztm_role_t role,
                        int64_t ttl, ztm_token_t *tok)
{
    ztm_invite_params_t p = {.name = name, .role = role, .ttl = ttl, .hubs = hubs, .n_hubs = 2,
                             .created_by = "admin1", .now = T0};
    char *text;
    size_t len;
    int64_t expires;
    REQUIRE(ztm_invite_create(s, ca, &p, &text, &len, &expires) == 0);
    CHECK(expires == T0 + (ttl ? ttl : ZTM_INVITE_DEFAULT_TTL));
    REQUIRE(ztm_token_decode(text, len, tok) == 0);
    ztm_file_free_secret(text, len);
}

typedef struct {
    const uint8_t *secret;
    int found_secret;
    int n;
} scan_t;

static int scan(void *arg, const char *key, const void *value, size_t len)
{
    scan_t *sc = arg;
    sc->n++;
    if (len >= 32 && memmem(value, len, sc->secret, 32))
        sc->found_secret++;
    if (strlen(key) != 64)
        sc->found_secret++;
    return 0;
}

int main(void)
{
    REQUIRE(mkdtemp(top));
    snprintf(dir, sizeof(dir), "%s/state", top);
    ztm_store_t *s = open_store();
    ztm_ca_t *ca, *other;
    REQUIRE(ztm_ca_create("m1", 0, T0, &ca) == 0);
    REQUIRE(ztm_ca_create("m2", 0, T0, &other) == 0);

    /* create, check, use once */
    ztm_token_t tok;
    make_invite(s, ca, "laptop", ZTM_ROLE_NONE, 0, &tok);
    CHECK_INT(tok.role, ZTM_ROLE_AGENT);
    CHECK_STR(tok.mesh, "m1");
    CHECK_STR(tok.name, "laptop");
    CHECK_INT(tok.n_hubs, 2);
    uint8_t pin[32];
    ztm_ca_pin(ca, pin);
    CHECK(ztm_pin_equal(pin, tok.pin));

    scan_t sc = {.secret = tok.secret};
    CHECK_INT(ztm_store_list(s, ZTM_STORE_INVITE, NULL, NULL, 0, scan, &sc), 0);
    CHECK_INT(sc.n, 1);
    CHECK_INT(sc.found_secret, 0); /* only the hash is stored */

    ztm_invite_t inv;
    CHECK_INT(ztm_invite_check(s, ca, &tok, T0 + 10, &inv), 0);
    CHECK_STR(inv.name, "laptop");
    CHECK_INT(inv.role, ZTM_ROLE_AGENT);
    ztm_invite_clear(&inv);
    CHECK_INT(ztm_invite_redeem(s, ca, &tok, "ep1", T0 + 10, &inv), 0);
    ztm_invite_clear(&inv);
    CHECK_INT(ztm_invite_redeem(s, ca, &tok, "ep2", T0 + 11, &inv), ZTM_TOKEN_E_USED);
    CHECK_INT(ztm_invite_check(s, ca, &tok, T0 + 11, &inv), ZTM_TOKEN_E_USED);

    /* used stays used after a restart */
    ztm_store_close(s);
    s = open_store();
    CHECK_INT(ztm_invite_check(s, ca, &tok, T0 + 12, &inv), ZTM_TOKEN_E_USED);
    ztm_token_wipe(&tok);

    /* expiry */
    make_invite(s, ca, "short", ZTM_ROLE_AGENT, 60, &tok);
    CHECK_INT(ztm_invite_check(s, ca, &tok, T0 + 59, &inv), 0);
    ztm_invite_clear(&inv);
    CHECK_INT(ztm_invite_check(s, ca, &tok, T0 + 60, &inv), ZTM_TOKEN_E_EXPIRED);
    CHECK_INT(ztm_invite_redeem(s, ca, &tok, "ep3", T0 + 61, &inv), ZTM_TOKEN_E_EXPIRED);
    ztm_token_wipe(&tok);

    /* forged or altered tokens */
    make_invite(s, ca, "desk", ZTM_ROLE_AGENT, 0, &tok);
    ztm_token_t bad = tok;
    bad.secret[0] ^= 1;
    CHECK_INT(ztm_invite_check(s, ca, &bad, T0, &inv), ZTM_TOKEN_E_UNKNOWN);
    bad = tok;
    bad.role = ZTM_ROLE_ADMIN; /* escalation */
    CHECK_INT(ztm_invite_check(s, ca, &bad, T0, &inv), ZTM_TOKEN_E_UNKNOWN);
    bad = tok;
    strcpy(bad.name, "server"); /* another name */
    CHECK_INT(ztm_invite_check(s, ca, &bad, T0, &inv), ZTM_TOKEN_E_UNKNOWN);
    bad = tok;
    bad.pin[5] ^= 1;
    CHECK_INT(ztm_invite_check(s, ca, &bad, T0, &inv), ZTM_TOKEN_E_UNKNOWN);
    CHECK_INT(ztm_invite_check(s, other, &tok, T0, &inv), ZTM_TOKEN_E_UNKNOWN); /* other mesh */
    ztm_token_wipe(&bad);

    /* racing joins: both check, one wins the commit */
    ztm_invite_t a, b;
    CHECK_INT(ztm_invite_check(s, ca, &tok, T0, &a), 0);
    CHECK_INT(ztm_invite_check(s, ca, &tok, T0, &b), 0);
    ztm_store_op_t op;
    CHECK_INT(ztm_invite_use_op(&a, "epA", T0, &op), 0);
    CHECK_INT(ztm_store_commit(s, &op, 1, NULL, 0, NULL), 0);
    CHECK_INT(ztm_invite_use_op(&b, "epB", T0, &op), 0);
    CHECK_INT(ztm_store_commit(s, &op, 1, NULL, 0, NULL), ZTM_STORE_E_CONFLICT);
    ztm_invite_clear(&a);
    ztm_invite_clear(&b);
    ztm_token_wipe(&tok);

    /* using is atomic with the join's other writes */
    make_invite(s, ca, "nas", ZTM_ROLE_AGENT, 0, &tok);
    REQUIRE(ztm_store_put(s, ZTM_STORE_ENDPOINT, "taken", "x", 1) == 0);
    CHECK_INT(ztm_invite_check(s, ca, &tok, T0, &a), 0);
    ztm_store_op_t ops[2];
    CHECK_INT(ztm_invite_use_op(&a, "taken", T0, &ops[0]), 0);
    ops[1] = (ztm_store_op_t){.type = ZTM_STORE_PUT, .kind = ZTM_STORE_ENDPOINT, .key = "taken",
                              .value = "y", .len = 1, .cond = ZTM_STORE_IF_ABSENT};
    CHECK_INT(ztm_store_commit(s, ops, 2, NULL, 0, NULL), ZTM_STORE_E_CONFLICT);
    ztm_invite_clear(&a);
    CHECK_INT(ztm_invite_check(s, ca, &tok, T0, &a), 0); /* still unused */
    ztm_invite_clear(&a);
    ztm_token_wipe(&tok);

    /* admin and gateway invites */
    make_invite(s, ca, "ops", ZTM_ROLE_ADMIN, 0, &tok);
    CHECK_INT(tok.role, ZTM_ROLE_ADMIN);
    CHECK_INT(ztm_invite_redeem(s, ca, &tok, "adm", T0, &inv), 0);
    CHECK_INT(inv.role, ZTM_ROLE_ADMIN);
    ztm_invite_clear(&inv);
    ztm_token_wipe(&tok);

    /* refused parameters */
    char *text;
    size_t len;
    ztm_invite_params_t p = {.name = "x", .hubs = hubs, .n_hubs = 1, .now = T0};
    p.name = "bad name";
    CHECK_INT(ztm_invite_create(s, ca, &p, &text, &len, NULL), ZTM_TOKEN_E_FIELD);
    p.name = "ok";
    p.ttl = ZTM_INVITE_MAX_TTL + 1;
    CHECK_INT(ztm_invite_create(s, ca, &p, &text, &len, NULL), ZTM_TOKEN_E_FIELD);
    p.ttl = -5;
    CHECK_INT(ztm_invite_create(s, ca, &p, &text, &len, NULL), ZTM_TOKEN_E_FIELD);
    p.ttl = 0;
    p.n_hubs = 0;
    CHECK_INT(ztm_invite_create(s, ca, &p, &text, &len, NULL), ZTM_TOKEN_E_FIELD);
    static const char *const bad_hub[] = {"nohost"};
    p.hubs = bad_hub;
    p.n_hubs = 1;
    CHECK_INT(ztm_invite_create(s, ca, &p, &text, &len, NULL), ZTM_TOKEN_E_FIELD);
    p.hubs = hubs;
    p.role = (ztm_role_t)7;
    CHECK_INT(ztm_invite_create(s, ca, &p, &text, &len, NULL), ZTM_TOKEN_E_FIELD);

    /* sweeping: everything above expired an hour after T0 (the 60 s one first) */
    CHECK_INT(ztm_invite_sweep(s, T0 + 100), 1);
    CHECK_INT(ztm_invite_sweep(s, T0 + ZTM_INVITE_DEFAULT_TTL), 4);
    sc = (scan_t){.secret = (const uint8_t *)"................................"};
    CHECK_INT(ztm_store_list(s, ZTM_STORE_INVITE, NULL, NULL, 0, scan, &sc), 0);
    CHECK_INT(sc.n, 0);
    CHECK_INT(ztm_invite_sweep(s, T0 + 99999), 0);

    ztm_ca_free(ca);
    ztm_ca_free(other);
    ztm_store_close(s);
    char cmd[700];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", top);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", top);
    TEST_END();
}
