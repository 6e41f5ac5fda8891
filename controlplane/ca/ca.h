/* The mesh CA: an ECDSA P-256 key and a self-signed, long-lived certificate
 * that names the mesh. It issues every certificate of the mesh from a CSR,
 * and it alone decides what the certificate says: the CN is the endpoint's
 * name, the SAN URI ztm://MESH/ROLE/ID its identity (identity.h), the
 * extended key usages follow the role, the serial is random (128 bits), the
 * lifetime short. Nothing of the CSR but its public key is used, and only
 * after its signature verified.
 *
 * The CA's pin is the SHA-256 of its SubjectPublicKeyInfo (DER), as
 * kubeadm's discovery hash: invite tokens carry it, and joiners compare it
 * with the CA a hub presents before they trust anything it says.
 *
 * The private key never leaves a ztm_ca_t except through ztm_ca_export()
 * (for the store, mode 0600) and is wiped when freed. */
#ifndef ZTM_CONTROLPLANE_CA_CA_H
#define ZTM_CONTROLPLANE_CA_CA_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/base.h>

#include "controlplane/ca/identity.h"

typedef struct ztm_ca ztm_ca_t;

#define ZTM_CA_DEFAULT_LIFETIME (10ll * 365 * 86400) /* the CA: ten years */
#define ZTM_CA_DEFAULT_LEAF_LIFETIME (7ll * 86400)   /* a leaf: a week; renewed at 2/3 */
#define ZTM_CA_CLOCK_SKEW 300                        /* notBefore = now - 5 minutes */
#define ZTM_PIN_LEN 32
#define ZTM_PIN_HEX_LEN 64

/* Makes a new CA for MESH (a valid mesh ID): a fresh P-256 key and a
 * self-signed certificate, CN "ztm mesh CA MESH", SAN URI ztm://MESH,
 * basicConstraints CA:TRUE pathlen 0, valid from NOW - skew for LIFETIME
 * seconds (0: ZTM_CA_DEFAULT_LIFETIME). NOW 0 means the current time.
 * Returns 0, ZTM_CA_E_BAD_NAME or ZTM_CA_E_CRYPTO. */
int ztm_ca_create(const char *mesh, int64_t lifetime, int64_t now, ztm_ca_t **out);

/* Loads a CA from its certificate and key (PEM). Checks that the key is a
 * P-256 key matching the certificate and that the certificate is a ztm
 * mesh CA (CA:TRUE and a ztm://MESH URI). Returns 0, ZTM_CA_E_PARSE,
 * ZTM_CA_E_KEY_TYPE, ZTM_CA_E_KEY_MISMATCH or ZTM_CA_E_NOT_CA. */
int ztm_ca_load(const char *cert_pem, size_t cert_len, const char *key_pem, size_t key_len,
                ztm_ca_t **out);

/* Loads DIR/ca.crt and DIR/ca.key, as ztm_ca_load. -ENOENT when absent. */
int ztm_ca_load_files(const char *dir, ztm_ca_t **out);

/* Writes DIR/ca.crt (0644) and DIR/ca.key (0600), each atomically, the key
 * first (a crash between the two leaves no certificate without its key). */
int ztm_ca_save_files(const ztm_ca_t *ca, const char *dir);

/* The CA's certificate and key as PEM, in new NUL-terminated buffers: free
 * the certificate with free() and the key with ztm_file_free_secret(key,
 * key_len). Either output pointer may be NULL. Returns 0 or ZTM_CA_E_CRYPTO. */
int ztm_ca_export(const ztm_ca_t *ca, char **cert_pem, size_t *cert_len, char **key_pem,
                  size_t *key_len);

void ztm_ca_free(ztm_ca_t *ca);

const char *ztm_ca_mesh(const ztm_ca_t *ca);
/* The CA certificate (borrowed; for TLS trust stores). */
X509 *ztm_ca_cert(const ztm_ca_t *ca);
int64_t ztm_ca_not_after(const ztm_ca_t *ca);
/* The CA's pin. */
void ztm_ca_pin(const ztm_ca_t *ca, uint8_t out[ZTM_PIN_LEN]);

/* ---- pins ------------------------------------------------------------------ */

/* SHA-256 of CERT's SubjectPublicKeyInfo. Returns 0 or ZTM_CA_E_CRYPTO. */
int ztm_pin_of_cert(X509 *cert, uint8_t out[ZTM_PIN_LEN]);
/* The same from PEM; ZTM_CA_E_PARSE if it is not a certificate. */
int ztm_pin_of_pem(const char *pem, size_t len, uint8_t out[ZTM_PIN_LEN]);
/* "sha256:" is not added: 64 lowercase hex digits and a NUL. */
void ztm_pin_to_hex(const uint8_t pin[ZTM_PIN_LEN], char out[ZTM_PIN_HEX_LEN + 1]);
/* Parses 64 hex digits, with or without a "sha256:" prefix. -EINVAL if bad. */
int ztm_pin_from_hex(const char *s, size_t len, uint8_t out[ZTM_PIN_LEN]);
/* Constant-time comparison; true when equal. */
bool ztm_pin_equal(const uint8_t a[ZTM_PIN_LEN], const uint8_t b[ZTM_PIN_LEN]);

/* ---- certificate requests -------------------------------------------------- */

typedef struct ztm_csr ztm_csr_t;

/* Parses a PKCS#10 request (PEM, or DER), checks that its key is ECDSA
 * P-256 and that its signature verifies with that key. Returns 0,
 * ZTM_CA_E_PARSE, ZTM_CA_E_KEY_TYPE or ZTM_CA_E_CSR_SIGNATURE. */
int ztm_csr_parse(const void *data, size_t len, ztm_csr_t **out);

/* The CSR's subject CN into OUT (NUL-terminated); "" when it has none.
 * Returns 0, or -ENAMETOOLONG. Informational: the CA never copies it, but
 * Join refuses a CSR naming another endpoint, to catch mistakes early. */
int ztm_csr_common_name(const ztm_csr_t *csr, char *out, size_t cap);

/* SHA-256 of the CSR's SubjectPublicKeyInfo (e.g. to see a key change). */
int ztm_csr_key_pin(const ztm_csr_t *csr, uint8_t out[ZTM_PIN_LEN]);
/* The role a CSR asks for in a ztm:// SAN URI (ZTM_ROLE_NONE when it asks
 * for none: the CA decides the role anyway). A CSR that asks for a role is
 * refused by callers when it is not the one granted. Returns 0,
 * ZTM_CA_E_PARSE or ZTM_CA_E_ROLE (an unknown role, or two roles). */
int ztm_csr_requested_role(const ztm_csr_t *csr, ztm_role_t *role);

void ztm_csr_free(ztm_csr_t *csr);

/* ---- issuing --------------------------------------------------------------- */

/* What the CA puts in a leaf certificate. */
typedef struct {
    ztm_role_t role;
    const char *id;   /* endpoint ID (ztm_id_valid) */
    const char *name; /* endpoint name, the CN (ztm_name_valid) */
    /* Hubs only: DNS names and IP addresses (text) their certificate is
     * valid for, e.g. the public host name, "localhost", "127.0.0.1". */
    const char *const *dns;
    size_t n_dns;
    const char *const *ips;
    size_t n_ips;
    int64_t lifetime; /* seconds; 0: ZTM_CA_DEFAULT_LEAF_LIFETIME */
    int64_t now;      /* 0: the current time */
} ztm_ca_leaf_t;

/* An issued certificate. */
typedef struct {
    char *pem; /* NUL-terminated; free with ztm_ca_issued_clear */
    size_t pem_len;
    char serial[ZTM_SERIAL_MAX + 1];
    int64_t not_before;
    int64_t not_after;
} ztm_ca_issued_t;

/* Issues a certificate for CSR's key as LEAF says. Extended key usages:
 * admin → clientAuth; agent, gateway, hub → clientAuth and serverAuth (an
 * agent is the TLS server of half its peer sessions, a hub of hub peering).
 * DNS/IP SANs only for hubs (ZTM_CA_E_ROLE otherwise). The lifetime never
 * runs past the CA's own expiry. Returns 0, ZTM_CA_E_BAD_NAME,
 * ZTM_CA_E_ROLE, ZTM_CA_E_VERIFY (the CA itself has expired) or
 * ZTM_CA_E_CRYPTO. */
int ztm_ca_issue(ztm_ca_t *ca, const ztm_csr_t *csr, const ztm_ca_leaf_t *leaf,
                 ztm_ca_issued_t *out);

void ztm_ca_issued_clear(ztm_ca_issued_t *issued);

/* Parses one PEM certificate; returns 0 or ZTM_CA_E_PARSE. */
int ztm_cert_from_pem(const char *pem, size_t len, X509 **out);

/* Verifies CERT_PEM against the mesh CA certificate CA_CERT at time NOW
 * (0: now), and fills *ID (may be NULL) from it. Returns 0, ZTM_CA_E_PARSE,
 * ZTM_CA_E_VERIFY (signature, validity period, not issued by CA_CERT) or
 * ZTM_CA_E_NOT_IDENTITY (including a mesh other than the CA's). For checks
 * outside a TLS handshake: tools, tests, an agent reading its files. */
int ztm_cert_verify_pem(X509 *ca_cert, const char *cert_pem, size_t len, int64_t now,
                        ztm_identity_t *id);

#endif
