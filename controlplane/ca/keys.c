/* Keys and CSRs of the process that holds them; see keys.h. */
#include "controlplane/ca/keys.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/obj.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "controlplane/ca/identity.h"
#include "controlplane/ca/internal.h"
#include "controlplane/store/file.h"

#define MAX_KEY_FILE (16 * 1024)

int ztm_key_generate(EVP_PKEY **out)
{
    EVP_PKEY *key = NULL;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_id(EVP_PKEY_EC, NULL);
    int ok = ctx && EVP_PKEY_keygen_init(ctx) &&
             EVP_PKEY_CTX_set_ec_paramgen_curve_nid(ctx, NID_X9_62_prime256v1) &&
             EVP_PKEY_keygen(ctx, &key);
    EVP_PKEY_CTX_free(ctx);
    if (!ok) {
        EVP_PKEY_free(key);
        ERR_clear_error();
        return ZTM_CA_E_CRYPTO;
    }
    *out = key;
    return 0;
}

int ztm_key_to_pem(EVP_PKEY *key, char **pem, size_t *len)
{
    /* BoringSSL's memory BIO frees (and wipes) its buffer with OPENSSL_free */
    BIO *bio = BIO_new(BIO_s_mem());
    int ret = bio && PEM_write_bio_PKCS8PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL)
                  ? ztm_ca_bio_to_buf(bio, pem, len)
                  : ZTM_CA_E_CRYPTO;
    BIO_free(bio);
    return ret;
}

/* Encrypted PEM keys are not ours: refuse instead of prompting. */
static int no_password(char *buf, int size, int rwflag, void *arg)
{
    return 0;
}

int ztm_key_from_pem(const char *pem, size_t len, EVP_PKEY **out)
{
    if (len > INT_MAX)
        return ZTM_CA_E_PARSE;
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    EVP_PKEY *key = bio ? PEM_read_bio_PrivateKey(bio, NULL, no_password, NULL) : NULL;
    BIO_free(bio);
    ERR_clear_error();
    if (!key)
        return ZTM_CA_E_PARSE;
    if (!ztm_ca_key_is_p256(key)) {
        EVP_PKEY_free(key);
        return ZTM_CA_E_KEY_TYPE;
    }
    *out = key;
    return 0;
}

int ztm_key_save_file(EVP_PKEY *key, const char *path)
{
    char *pem;
    size_t len;
    int ret = ztm_key_to_pem(key, &pem, &len);
    if (ret < 0)
        return ret;
    ret = ztm_file_write_atomic(path, pem, len, 0600);
    ztm_file_free_secret(pem, len);
    return ret;
}

int ztm_key_load_file(const char *path, EVP_PKEY **out)
{
    struct stat st;
    if (stat(path, &st) < 0)
        return -errno;
    if (st.st_mode & 077)
        return -EPERM;
    void *pem = NULL;
    size_t len = 0;
    int ret = ztm_file_read(path, MAX_KEY_FILE, &pem, &len);
    if (ret < 0)
        return ret;
    ret = ztm_key_from_pem(pem, len, out);
    ztm_file_free_secret(pem, len);
    return ret;
}

int ztm_csr_create(EVP_PKEY *key, const char *name, char **pem, size_t *len)
{
    if (name && !ztm_name_valid(name))
        return ZTM_CA_E_BAD_NAME;
    int ret = ZTM_CA_E_CRYPTO;
    BIO *bio = NULL;
    X509_NAME *subject = NULL;
    X509_REQ *req = X509_REQ_new();
    if (!req || !X509_REQ_set_version(req, 0) || !X509_REQ_set_pubkey(req, key))
        goto out;
    if (name) {
        if (!(subject = X509_NAME_new()) ||
            !X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_UTF8, (const uint8_t *)name, -1,
                                        -1, 0) ||
            !X509_REQ_set_subject_name(req, subject))
            goto out;
    }
    if (!X509_REQ_sign(req, key, EVP_sha256()) || !(bio = BIO_new(BIO_s_mem())) ||
        !PEM_write_bio_X509_REQ(bio, req))
        goto out;
    ret = ztm_ca_bio_to_buf(bio, pem, len);
out:
    if (ret < 0)
        ERR_clear_error();
    BIO_free(bio);
    X509_NAME_free(subject);
    X509_REQ_free(req);
    return ret;
}

int ztm_pem_save_file(const char *path, const char *pem, size_t len)
{
    return ztm_file_write_atomic(path, pem, len, 0644);
}
