/* Helpers shared by the files of controlplane/ca; not for other modules. */
#ifndef ZTM_CONTROLPLANE_CA_INTERNAL_H
#define ZTM_CONTROLPLANE_CA_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/base.h>

/* ASN1_TIME → Unix seconds. Returns 0 or ZTM_CA_E_CRYPTO. */
int ztm_ca_time_to_unix(const ASN1_TIME *t, int64_t *out);
/* A positive serial as lowercase hex (no leading zeros). */
int ztm_ca_serial_hex(const ASN1_INTEGER *serial, char *out, size_t cap);
/* The mesh of a ztm CA certificate: its only SAN URI, "ztm://MESH".
 * Returns 0 or ZTM_CA_E_NOT_CA. */
int ztm_ca_mesh_of_cert(X509 *cert, char *out, size_t cap);
/* True for an ECDSA P-256 key. */
bool ztm_ca_key_is_p256(const EVP_PKEY *key);
/* Copies a memory BIO's contents into a new NUL-terminated buffer. */
int ztm_ca_bio_to_buf(BIO *bio, char **out, size_t *len);

#endif
