/* Keys and certificate requests of the process that will hold them: a
 * joining agent, a hub, the CLI's admin identity. The private key is made
 * here and stays here; only the CSR (public key + signature) travels.
 * Key material in memory is wiped when freed (BoringSSL frees EVP_PKEY
 * with cleansing; PEM buffers go through ztm_file_free_secret). */
#ifndef ZTM_CONTROLPLANE_CA_KEYS_H
#define ZTM_CONTROLPLANE_CA_KEYS_H

#include <stddef.h>
#include <sys/types.h>

#include <openssl/base.h>

/* A new ECDSA P-256 key. Returns 0 or ZTM_CA_E_CRYPTO. */
int ztm_key_generate(EVP_PKEY **out);

/* The key as unencrypted PKCS#8 PEM in a new NUL-terminated buffer; free it
 * with ztm_file_free_secret(pem, len). Returns 0 or ZTM_CA_E_CRYPTO. */
int ztm_key_to_pem(EVP_PKEY *key, char **pem, size_t *len);

/* Parses a PEM private key (PKCS#8 or SEC1 "EC PRIVATE KEY"); only P-256.
 * Returns 0, ZTM_CA_E_PARSE or ZTM_CA_E_KEY_TYPE. */
int ztm_key_from_pem(const char *pem, size_t len, EVP_PKEY **out);

/* Writes KEY to PATH atomically with mode 0600. Returns 0 or -errno. */
int ztm_key_save_file(EVP_PKEY *key, const char *path);

/* Reads a key written by ztm_key_save_file. Refuses (-EPERM) a key file that
 * group or others may read, as ssh does. */
int ztm_key_load_file(const char *path, EVP_PKEY **out);

/* A PKCS#10 request for KEY with subject CN=NAME (NAME may be NULL: no
 * subject), signed with KEY (ECDSA with SHA-256), as PEM in a new buffer
 * (free()). Returns 0, ZTM_CA_E_BAD_NAME or ZTM_CA_E_CRYPTO. */
int ztm_csr_create(EVP_PKEY *key, const char *name, char **pem, size_t *len);

/* Writes PEM text (a certificate) to PATH atomically with mode 0644. */
int ztm_pem_save_file(const char *path, const char *pem, size_t len);

#endif
