/* Identities of the mesh: who a peer is, read from its verified certificate.
 *
 * The mesh CA writes an identity into every certificate it issues: the CN is
 * the endpoint's name and exactly one SAN URI reads ztm://MESH/ROLE/ID.
 * ztm_identity_from_cert() is the one and only way the system learns who a
 * peer is: callers pass a certificate that TLS has already verified against
 * the mesh CA, and never take a name, role or ID from a request instead.
 * The names and limits below are shared with the API (proto Role has the
 * same numbers) and the invite tokens. */
#ifndef ZTM_CONTROLPLANE_CA_IDENTITY_H
#define ZTM_CONTROLPLANE_CA_IDENTITY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/base.h>

/* Same numbers as ztm.v1.Role. */
typedef enum {
    ZTM_ROLE_NONE = 0,
    ZTM_ROLE_AGENT = 1,
    ZTM_ROLE_HUB = 2,
    ZTM_ROLE_ADMIN = 3,
    ZTM_ROLE_GATEWAY = 4,
} ztm_role_t;

#define ZTM_MESH_MAX 63   /* a DNS label: [a-z0-9-], no leading/trailing '-' */
#define ZTM_ID_MAX 64     /* [a-z0-9-]; generated IDs are 32 hex digits */
#define ZTM_NAME_MAX 64   /* [A-Za-z0-9._-], starting with a letter or digit */
#define ZTM_SERIAL_MAX 40 /* hex digits of a serial (20 bytes at most) */

/* "agent", "hub", "admin", "gateway"; NULL for anything else. */
const char *ztm_role_name(ztm_role_t role);
/* The inverse of ztm_role_name (exact, lower case); false if unknown. */
bool ztm_role_parse(const char *s, size_t len, ztm_role_t *out);

bool ztm_mesh_valid(const char *mesh);
bool ztm_id_valid(const char *id);
bool ztm_name_valid(const char *name);

/* Writes a new random endpoint ID: 32 lowercase hex digits (128 bits). */
void ztm_id_generate(char out[33]);

/* Who a certificate names. */
typedef struct {
    char mesh[ZTM_MESH_MAX + 1];
    ztm_role_t role;
    char id[ZTM_ID_MAX + 1];
    char name[ZTM_NAME_MAX + 1];
    char serial[ZTM_SERIAL_MAX + 1]; /* lowercase hex, no leading zeros */
    int64_t not_before;              /* Unix seconds */
    int64_t not_after;
} ztm_identity_t;

/* Errors of the ca module (below -4095, see STYLE.md). */
enum {
    ZTM_CA_E_PARSE = -5101,       /* not a PEM/DER certificate, key or CSR */
    ZTM_CA_E_NOT_IDENTITY = -5102, /* no (or more than one) valid ztm:// URI, bad CN, a CA */
    ZTM_CA_E_CSR_SIGNATURE = -5103, /* the CSR's signature does not verify */
    ZTM_CA_E_KEY_TYPE = -5104,    /* a key other than ECDSA P-256 */
    ZTM_CA_E_BAD_NAME = -5105,    /* an invalid mesh, name, ID, DNS name or IP */
    ZTM_CA_E_KEY_MISMATCH = -5106, /* the CA key does not match the CA certificate */
    ZTM_CA_E_NOT_CA = -5107,      /* the certificate is not a ztm mesh CA */
    ZTM_CA_E_CRYPTO = -5108,      /* BoringSSL failed (out of memory, internal) */
    ZTM_CA_E_ROLE = -5109,        /* no such role, or not allowed here */
    ZTM_CA_E_VERIFY = -5110,      /* the certificate does not verify against the CA */
};

/* A short English description of ERR (this module's codes or -errno). */
const char *ztm_ca_strerror(int err);

/* Reads the identity of CERT (a certificate TLS verified). Requires: not a
 * CA; a CN that is a valid name; exactly one SAN URI with the ztm scheme,
 * ztm://MESH/ROLE/ID with a valid mesh, a known role and a valid ID.
 * Returns 0, or ZTM_CA_E_NOT_IDENTITY. The caller still checks that
 * identity.mesh is the mesh it serves. */
int ztm_identity_from_cert(X509 *cert, ztm_identity_t *out);

/* The same, from a DER or PEM encoding. ZTM_CA_E_PARSE when it is neither. */
int ztm_identity_from_der(const uint8_t *der, size_t len, ztm_identity_t *out);
int ztm_identity_from_pem(const char *pem, size_t len, ztm_identity_t *out);

/* Formats "ztm://MESH/ROLE/ID" into OUT; returns its length, or -ENAMETOOLONG
 * / ZTM_CA_E_BAD_NAME. */
int ztm_identity_uri(const char *mesh, ztm_role_t role, const char *id, char *out, size_t cap);

#endif
