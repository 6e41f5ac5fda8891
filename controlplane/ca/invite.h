/* Invites: the control plane's side of invite tokens (token.h).
 *
 * Creating an invite draws a one-time secret, stores an InviteRecord under
 * the hex SHA-256 of the secret (never the secret), and returns the token
 * text to show once. Joining looks the record up by the hash of the token's
 * secret and refuses a token that is unknown (wrong secret, forged, another
 * mesh), expired, already used, or whose name/role/pin disagree with the
 * record. Marking the invite used is a compare-and-swap on the record, made
 * in the same store commit as the endpoint and certificate it creates
 * (ztm_invite_use_op), so two joins racing with one token cannot both win
 * and a crash cannot leave a used invite without its endpoint. */
#ifndef ZTM_CONTROLPLANE_CA_INVITE_H
#define ZTM_CONTROLPLANE_CA_INVITE_H

#include <stddef.h>
#include <stdint.h>

#include "controlplane/ca/ca.h"
#include "controlplane/ca/token.h"
#include "controlplane/store/store.h"

#define ZTM_INVITE_DEFAULT_TTL 3600      /* seconds */
#define ZTM_INVITE_MAX_TTL (30 * 86400)  /* a month */

#define ZTM_INVITE_MAX_LABELS 32

/* A label key is 1-63 of [A-Za-z0-9._/-]; a value at most 255 printable
 * ASCII characters. */
bool ztm_invite_label_valid(const char *key, const char *value);

typedef struct {
    const char *name;   /* endpoint name of the invitee */
    ztm_role_t role;    /* ZTM_ROLE_NONE: agent */
    int64_t ttl;        /* seconds; 0: ZTM_INVITE_DEFAULT_TTL */
    const char *const *hubs; /* "host:port", 1..ZTM_TOKEN_MAX_HUBS */
    size_t n_hubs;
    const char *created_by; /* admin endpoint ID, for the record (may be NULL) */
    /* Labels the endpoint gets at Join (ztm_invite_label_valid), at most
     * ZTM_INVITE_MAX_LABELS. */
    const char *const *label_keys;
    const char *const *label_values;
    size_t n_labels;
    int64_t now;            /* 0: the current time */
} ztm_invite_params_t;

/* Creates an invite for CA's mesh. *TOKEN receives the token text (free it
 * with ztm_file_free_secret(token, len): it holds the secret), *EXPIRES
 * its expiry. Returns 0, ZTM_TOKEN_E_FIELD (bad name, role, hub, label or TTL),
 * or a store error. */
int ztm_invite_create(ztm_store_t *store, const ztm_ca_t *ca, const ztm_invite_params_t *p,
                      char **token, size_t *len, int64_t *expires);

/* A checked, unused invite. The record bytes are kept for the
 * compare-and-swap that marks it used. */
typedef struct {
    char key[65]; /* hex SHA-256 of the secret: the record's key */
    char name[ZTM_NAME_MAX + 1];
    ztm_role_t role;
    int64_t expires;
    uint8_t *record; /* the stored record, as read */
    size_t record_len;
    uint8_t *used; /* the record marked used (filled by ztm_invite_use_op) */
    size_t used_len;
} ztm_invite_t;

/* Checks TOKEN (already decoded) against the store and CA at NOW (0: now):
 * ZTM_TOKEN_E_UNKNOWN (no record for its secret, or its name, role, mesh or
 * pin disagree with the record and CA), ZTM_TOKEN_E_USED, ZTM_TOKEN_E_EXPIRED,
 * or 0 with *OUT filled (release with ztm_invite_clear). */
int ztm_invite_check(ztm_store_t *store, const ztm_ca_t *ca, const ztm_token_t *token,
                     int64_t now, ztm_invite_t *out);

/* Fills *OP with the store operation that marks INV used by ENDPOINT_ID at
 * NOW: a put conditioned on the record being unchanged. Commit it together
 * with the endpoint it creates; ZTM_STORE_E_CONFLICT from that commit means
 * another join used the invite first (report ZTM_TOKEN_E_USED). OP points
 * into INV: keep INV until the commit returns. Returns 0 or -ENOMEM. */
int ztm_invite_use_op(ztm_invite_t *inv, const char *endpoint_id, int64_t now,
                      ztm_store_op_t *op);

void ztm_invite_clear(ztm_invite_t *inv);

/* Check and mark used in one commit, for callers with nothing else to
 * commit (and tests). Returns as ztm_invite_check, or ZTM_TOKEN_E_USED when
 * another use won the race. */
int ztm_invite_redeem(ztm_store_t *store, const ztm_ca_t *ca, const ztm_token_t *token,
                      const char *endpoint_id, int64_t now, ztm_invite_t *out);

/* Deletes invites that expired before NOW (used or not). Returns how many,
 * or a store error. Run now and then (e.g. hourly). */
int ztm_invite_sweep(ztm_store_t *store, int64_t now);

#endif
