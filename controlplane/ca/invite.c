/* Invites in the store; see invite.h. */
#include "controlplane/ca/invite.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>


#include "controlplane/store/file.h"
#include "ztm/v1/records.pb-c.h"

static int64_t now_or(int64_t now)
{
    return now ? now : (int64_t)time(NULL);
}

/* The record's key: the hex SHA-256 of the secret. */
static void hash_key(const uint8_t secret[ZTM_TOKEN_SECRET_LEN], char out[65])
{
    uint8_t h[32];
    ztm_token_secret_hash(secret, h);
    ztm_pin_to_hex(h, out);
}

static int pack(const ProtobufCMessage *m, uint8_t **out, size_t *len)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf)
        return -ENOMEM;
    protobuf_c_message_pack(m, buf);
    *out = buf;
    *len = n;
    return 0;
}

bool ztm_invite_label_valid(const char *key, const char *value)
{
    size_t k = strlen(key), v = strlen(value);
    if (k == 0 || k > 63 || v > 255)
        return false;
    for (size_t i = 0; i < k; i++) {
        char c = key[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '/' || c == '-'))
            return false;
    }
    for (size_t i = 0; i < v; i++)
        if (value[i] < 0x20 || value[i] > 0x7e)
            return false;
    return true;
}

int ztm_invite_create(ztm_store_t *store, const ztm_ca_t *ca, const ztm_invite_params_t *p,
                      char **token, size_t *len, int64_t *expires)
{
    int64_t now = now_or(p->now);
    int64_t ttl = p->ttl ? p->ttl : ZTM_INVITE_DEFAULT_TTL;
    ztm_role_t role = p->role ? p->role : ZTM_ROLE_AGENT;
    if (!p->name || !ztm_name_valid(p->name) || !ztm_role_name(role) || ttl < 0 ||
        ttl > ZTM_INVITE_MAX_TTL || p->n_hubs == 0 || p->n_hubs > ZTM_TOKEN_MAX_HUBS ||
        p->n_labels > ZTM_INVITE_MAX_LABELS)
        return ZTM_TOKEN_E_FIELD;
    for (size_t i = 0; i < p->n_labels; i++)
        if (!ztm_invite_label_valid(p->label_keys[i], p->label_values[i]))
            return ZTM_TOKEN_E_FIELD;

    ztm_token_t t;
    memset(&t, 0, sizeof(t));
    t.role = role;
    t.expires = now + ttl;
    ztm_ca_pin(ca, t.pin);
    ztm_token_new_secret(&t);
    strcpy(t.mesh, ztm_ca_mesh(ca));
    strcpy(t.name, p->name);
    t.n_hubs = p->n_hubs;
    for (size_t i = 0; i < p->n_hubs; i++) {
        if (strlen(p->hubs[i]) > ZTM_TOKEN_HUB_MAX) {
            ztm_token_wipe(&t);
            return ZTM_TOKEN_E_FIELD;
        }
        strcpy(t.hubs[i], p->hubs[i]);
    }

    char key[65], *text = NULL;
    size_t text_len = 0;
    uint8_t *rec = NULL;
    size_t rec_len = 0;
    int ret = ztm_token_encode(&t, &text, &text_len);
    if (ret < 0)
        goto out;
    hash_key(t.secret, key);

    Ztm__V1__InviteRecord r = ZTM__V1__INVITE_RECORD__INIT;
    r.name = (char *)p->name;
    r.role = (Ztm__V1__Role)role;
    r.created_time = now;
    r.expires_time = t.expires;
    r.created_by = (char *)(p->created_by ? p->created_by : "");
    Ztm__V1__InviteRecord__LabelsEntry entries[ZTM_INVITE_MAX_LABELS];
    Ztm__V1__InviteRecord__LabelsEntry *labels[ZTM_INVITE_MAX_LABELS];
    for (size_t i = 0; i < p->n_labels; i++) {
        ztm__v1__invite_record__labels_entry__init(&entries[i]);
        entries[i].key = (char *)p->label_keys[i];
        entries[i].value = (char *)p->label_values[i];
        labels[i] = &entries[i];
    }
    r.labels = labels;
    r.n_labels = p->n_labels;
    if ((ret = pack(&r.base, &rec, &rec_len)) < 0)
        goto out;
    ztm_store_op_t op = {.type = ZTM_STORE_PUT, .kind = ZTM_STORE_INVITE, .key = key,
                         .value = rec, .len = rec_len, .cond = ZTM_STORE_IF_ABSENT};
    if ((ret = ztm_store_commit(store, &op, 1, NULL, 0, NULL)) < 0)
        goto out;
    *token = text;
    *len = text_len;
    text = NULL;
    if (expires)
        *expires = t.expires;
out:
    ztm_token_wipe(&t);
    if (text)
        ztm_file_free_secret(text, text_len);
    free(rec);
    return ret;
}

void ztm_invite_clear(ztm_invite_t *inv)
{
    free(inv->record);
    free(inv->used);
    memset(inv, 0, sizeof(*inv));
}

int ztm_invite_check(ztm_store_t *store, const ztm_ca_t *ca, const ztm_token_t *token,
                     int64_t now, ztm_invite_t *out)
{
    memset(out, 0, sizeof(*out));
    now = now_or(now);
    hash_key(token->secret, out->key);
    void *raw = NULL;
    size_t raw_len = 0;
    int ret = ztm_store_get(store, ZTM_STORE_INVITE, out->key, &raw, &raw_len);
    if (ret == -ENOENT)
        return ZTM_TOKEN_E_UNKNOWN;
    if (ret < 0)
        return ret;
    Ztm__V1__InviteRecord *r = ztm__v1__invite_record__unpack(NULL, raw_len, raw);
    if (!r) {
        free(raw);
        return ZTM_STORE_E_CORRUPT;
    }
    uint8_t pin[ZTM_PIN_LEN];
    ztm_ca_pin(ca, pin);
    /* The record is the truth; a token that says otherwise was altered or
     * belongs elsewhere. */
    if (strcmp(r->name, token->name) != 0 || (ztm_role_t)r->role != token->role ||
        strcmp(token->mesh, ztm_ca_mesh(ca)) != 0 || !ztm_pin_equal(pin, token->pin) ||
        !ztm_name_valid(r->name))
        ret = ZTM_TOKEN_E_UNKNOWN;
    else if (r->used_time != 0)
        ret = ZTM_TOKEN_E_USED;
    else if (now >= r->expires_time)
        ret = ZTM_TOKEN_E_EXPIRED;
    if (ret == 0) {
        strcpy(out->name, r->name);
        out->role = (ztm_role_t)r->role;
        out->expires = r->expires_time;
        out->record = raw;
        out->record_len = raw_len;
        raw = NULL;
    }
    ztm__v1__invite_record__free_unpacked(r, NULL);
    free(raw);
    if (ret < 0)
        ztm_invite_clear(out);
    return ret;
}

int ztm_invite_use_op(ztm_invite_t *inv, const char *endpoint_id, int64_t now,
                      ztm_store_op_t *op)
{
    Ztm__V1__InviteRecord *r = ztm__v1__invite_record__unpack(NULL, inv->record_len, inv->record);
    if (!r)
        return ZTM_STORE_E_CORRUPT;
    r->used_time = now_or(now);
    char *prev = r->used_by;
    r->used_by = (char *)endpoint_id;
    free(inv->used);
    inv->used = NULL;
    int ret = pack(&r->base, &inv->used, &inv->used_len);
    r->used_by = prev; /* free_unpacked frees what it allocated */
    ztm__v1__invite_record__free_unpacked(r, NULL);
    if (ret < 0)
        return ret;
    *op = (ztm_store_op_t){.type = ZTM_STORE_PUT, .kind = ZTM_STORE_INVITE, .key = inv->key,
                           .value = inv->used, .len = inv->used_len,
                           .cond = ZTM_STORE_IF_EQUAL, .expect = inv->record,
                           .expect_len = inv->record_len};
    return 0;
}

int ztm_invite_redeem(ztm_store_t *store, const ztm_ca_t *ca, const ztm_token_t *token,
                      const char *endpoint_id, int64_t now, ztm_invite_t *out)
{
    int ret = ztm_invite_check(store, ca, token, now, out);
    if (ret < 0)
        return ret;
    ztm_store_op_t op;
    if ((ret = ztm_invite_use_op(out, endpoint_id, now, &op)) == 0)
        ret = ztm_store_commit(store, &op, 1, NULL, 0, NULL);
    if (ret == ZTM_STORE_E_CONFLICT)
        ret = ZTM_TOKEN_E_USED;
    if (ret < 0)
        ztm_invite_clear(out);
    return ret;
}

typedef struct {
    int64_t now;
    char (*keys)[65];
    size_t n, cap;
    int err;
} sweep_t;

static int on_invite(void *arg, const char *key, const void *value, size_t len)
{
    sweep_t *sw = arg;
    Ztm__V1__InviteRecord *r = ztm__v1__invite_record__unpack(NULL, len, value);
    bool expired = !r || sw->now >= r->expires_time; /* unreadable: drop it too */
    if (r)
        ztm__v1__invite_record__free_unpacked(r, NULL);
    if (!expired || strlen(key) != 64)
        return 0;
    if (sw->n == sw->cap) {
        size_t cap = sw->cap ? sw->cap * 2 : 16;
        char(*k)[65] = realloc(sw->keys, cap * sizeof(*k));
        if (!k) {
            sw->err = -ENOMEM;
            return 1;
        }
        sw->keys = k;
        sw->cap = cap;
    }
    memcpy(sw->keys[sw->n++], key, 65);
    return 0;
}

int ztm_invite_sweep(ztm_store_t *store, int64_t now)
{
    sweep_t sw = {.now = now_or(now)};
    int ret = ztm_store_list(store, ZTM_STORE_INVITE, NULL, NULL, 0, on_invite, &sw);
    if (sw.err)
        ret = sw.err;
    ztm_store_op_t *ops = NULL;
    if (ret == 0 && sw.n) {
        ops = calloc(sw.n, sizeof(*ops));
        if (!ops) {
            ret = -ENOMEM;
        } else {
            for (size_t i = 0; i < sw.n; i++)
                ops[i] = (ztm_store_op_t){.type = ZTM_STORE_DEL, .kind = ZTM_STORE_INVITE,
                                          .key = sw.keys[i]};
            ret = ztm_store_commit(store, ops, sw.n, NULL, 0, NULL);
        }
    }
    free(ops);
    free(sw.keys);
    return ret < 0 ? ret : (int)sw.n;
}
