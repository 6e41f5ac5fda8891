/* Invite tokens: the one line `ztm invite` prints and `ztm join` takes.
 *
 *   ztm1.<base64url, no padding, of the body>
 *
 * Body (all integers big-endian):
 *   u8  version (1)        u8  role (ztm_role_t: what the invitee will be)
 *   u64 expires (Unix s)   32  CA pin (SHA-256 of the CA's SPKI)
 *   32  secret (random, one-time)
 *   u8 len + mesh ID       u8 len + endpoint name
 *   u8  hub count (1..8), each: u8 len + "host:port"
 *   4   check: the first 4 bytes of SHA-256 of everything before
 *
 * Who relies on what: the joiner trusts a hub only if the CA it presents
 * matches the pin; the control plane finds the invite by SHA-256(secret)
 * and keeps nothing else of the secret, so a stolen store cannot mint
 * joins. Role, name, expiry and mesh in the token are for the joiner's
 * information (the server's invite record is what counts), and the check
 * bytes catch damaged copies (a clear "token damaged" instead of a failed
 * join); a forged token fails at the pin or at the secret. Reuse and expiry
 * are enforced by the store (invite.h). The parser is strict: exact
 * lengths, no trailing bytes, canonical base64url only. */
#ifndef ZTM_CONTROLPLANE_CA_TOKEN_H
#define ZTM_CONTROLPLANE_CA_TOKEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "controlplane/ca/identity.h"

#define ZTM_TOKEN_PREFIX "ztm1."
#define ZTM_TOKEN_VERSION 1
#define ZTM_TOKEN_SECRET_LEN 32
#define ZTM_TOKEN_MAX_HUBS 8
#define ZTM_TOKEN_HUB_MAX 255 /* "host:port" */
/* The longest token: prefix + base64url of the longest body. */
#define ZTM_TOKEN_MAX_LEN 3100

typedef struct {
    ztm_role_t role;
    int64_t expires;
    uint8_t pin[32];
    uint8_t secret[ZTM_TOKEN_SECRET_LEN];
    char mesh[ZTM_MESH_MAX + 1];
    char name[ZTM_NAME_MAX + 1];
    size_t n_hubs;
    char hubs[ZTM_TOKEN_MAX_HUBS][ZTM_TOKEN_HUB_MAX + 1];
} ztm_token_t;

/* Errors of token parsing (below -4095). Each names what to tell the user. */
enum {
    ZTM_TOKEN_E_PREFIX = -5201,    /* does not start with "ztm1." (not a token, or a newer one) */
    ZTM_TOKEN_E_ENCODING = -5202,  /* not canonical base64url */
    ZTM_TOKEN_E_TRUNCATED = -5203, /* the body ends early: copied incompletely */
    ZTM_TOKEN_E_TRAILING = -5204,  /* bytes after the body */
    ZTM_TOKEN_E_CHECK = -5205,     /* check bytes differ: damaged or altered */
    ZTM_TOKEN_E_VERSION = -5206,   /* body version not supported */
    ZTM_TOKEN_E_FIELD = -5207,     /* a field out of range (role, mesh, name, hub, count) */
    ZTM_TOKEN_E_EXPIRED = -5208,   /* past its expiry (ztm_token_check_expiry, invites) */
    ZTM_TOKEN_E_USED = -5209,      /* already used (invites) */
    ZTM_TOKEN_E_UNKNOWN = -5210,   /* no such invite: wrong secret, revoked or forged */
};

const char *ztm_token_strerror(int err);

/* True for "host:port": a DNS name, IPv4 address or [IPv6] address, and a
 * port 1..65535, at most ZTM_TOKEN_HUB_MAX characters. */
bool ztm_token_hub_valid(const char *hub);

/* Fills T->secret with fresh random bytes. */
void ztm_token_new_secret(ztm_token_t *t);

/* Encodes T into a new NUL-terminated string (*OUT, length *LEN). The string
 * holds the secret: free it with ztm_file_free_secret(out, len). Returns 0,
 * ZTM_TOKEN_E_FIELD (an invalid field) or -ENOMEM. */
int ztm_token_encode(const ztm_token_t *t, char **out, size_t *len);

/* Decodes S (LEN bytes; surrounding spaces and newlines are ignored, as in
 * a pasted line) into *T. Returns 0 or one of the errors above; *T is wiped
 * on error. Wipe *T with ztm_token_wipe once done with it. */
int ztm_token_decode(const char *s, size_t len, ztm_token_t *t);

/* ZTM_TOKEN_E_EXPIRED when NOW >= T->expires, else 0. */
int ztm_token_check_expiry(const ztm_token_t *t, int64_t now);

/* SHA-256 of the secret: the only form in which the store keeps it. */
void ztm_token_secret_hash(const uint8_t secret[ZTM_TOKEN_SECRET_LEN], uint8_t out[32]);

void ztm_token_wipe(ztm_token_t *t);

#endif
