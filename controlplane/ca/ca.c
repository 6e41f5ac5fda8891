/* The mesh CA: creation, loading, issuing leaf certificates from CSRs,
 * pins and verification; see ca.h. Extensions are built from structures,
 * never from OpenSSL config strings, so that no name can smuggle syntax. */
#include "controlplane/ca/ca.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/digest.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/mem.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "controlplane/ca/internal.h"
#include "controlplane/ca/keys.h"
#include "controlplane/store/file.h"

struct ztm_ca {
    X509 *cert;
    EVP_PKEY *key;
    char mesh[ZTM_MESH_MAX + 1];
    int64_t not_after;
};

struct ztm_csr {
    X509_REQ *req;
    EVP_PKEY *key;
};

#define MAX_PEM (64 * 1024)
#define X509_V3 2 /* the version field counts from 0 */
/* "ztm://" MESH "/" ROLE "/" ID */
#define URI_MAX_LEN (6 + ZTM_MESH_MAX + 1 + 8 + 1 + ZTM_ID_MAX + 1)

static int64_t now_or(int64_t now)
{
    return now ? now : (int64_t)time(NULL);
}

/* ---- extensions -------------------------------------------------------------- */

static int add_basic_constraints(X509 *x, bool ca)
{
    BASIC_CONSTRAINTS *bc = BASIC_CONSTRAINTS_new();
    int ok = bc != NULL;
    if (ok && ca) {
        bc->ca = 0xff;
        ok = (bc->pathlen = ASN1_INTEGER_new()) && ASN1_INTEGER_set(bc->pathlen, 0);
    }
    ok = ok && X509_add1_ext_i2d(x, NID_basic_constraints, bc, 1, X509V3_ADD_DEFAULT) == 1;
    BASIC_CONSTRAINTS_free(bc);
    return ok ? 0 : ZTM_CA_E_CRYPTO;
}

static int add_key_usage(X509 *x, bool ca)
{
    ASN1_BIT_STRING *ku = ASN1_BIT_STRING_new();
    int ok = ku && ASN1_BIT_STRING_set_bit(ku, 0, 1); /* digitalSignature */
    if (ok && ca)
        ok = ASN1_BIT_STRING_set_bit(ku, 5, 1) && /* keyCertSign */
             ASN1_BIT_STRING_set_bit(ku, 6, 1);   /* cRLSign */
    ok = ok && X509_add1_ext_i2d(x, NID_key_usage, ku, 1, X509V3_ADD_DEFAULT) == 1;
    ASN1_BIT_STRING_free(ku);
    return ok ? 0 : ZTM_CA_E_CRYPTO;
}

static int add_ext_key_usage(X509 *x, bool server, bool client)
{
    EXTENDED_KEY_USAGE *eku = sk_ASN1_OBJECT_new_null();
    int ok = eku != NULL;
    if (ok && server)
        ok = sk_ASN1_OBJECT_push(eku, OBJ_nid2obj(NID_server_auth)) > 0;
    if (ok && client)
        ok = sk_ASN1_OBJECT_push(eku, OBJ_nid2obj(NID_client_auth)) > 0;
    ok = ok && X509_add1_ext_i2d(x, NID_ext_key_usage, eku, 0, X509V3_ADD_DEFAULT) == 1;
    sk_ASN1_OBJECT_free(eku); /* the objects are static */
    return ok ? 0 : ZTM_CA_E_CRYPTO;
}

/* Appends a GEN_URI or GEN_DNS name, or a GEN_IPADD from raw bytes. */
static int push_name(GENERAL_NAMES *gens, int type, const void *data, size_t len)
{
    GENERAL_NAME *g = GENERAL_NAME_new();
    ASN1_STRING *s = type == GEN_IPADD ? ASN1_OCTET_STRING_new() : ASN1_IA5STRING_new();
    if (!g || !s || len > INT_MAX || !ASN1_STRING_set(s, data, (int)len))
        goto fail;
    GENERAL_NAME_set0_value(g, type, s);
    s = NULL;
    if (!sk_GENERAL_NAME_push(gens, g))
        goto fail;
    return 0;
fail:
    ASN1_STRING_free(s);
    GENERAL_NAME_free(g);
    return ZTM_CA_E_CRYPTO;
}

/* An LDH host name: labels of [A-Za-z0-9-], 1-63 long, no '-' at either
 * end, 253 characters at most. */
static bool dns_name_valid(const char *s)
{
    size_t n = strlen(s), label = 0;
    if (n == 0 || n > 253)
        return false;
    for (size_t i = 0; i <= n; i++) {
        char c = s[i];
        if (c == '.' || c == 0) {
            if (label == 0 || s[i - 1] == '-')
                return false;
            label = 0;
            continue;
        }
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  (c == '-' && label > 0);
        if (!ok || ++label > 63)
            return false;
    }
    return true;
}

static int add_subject_alt_names(X509 *x, const char *uri, const ztm_ca_leaf_t *leaf)
{
    GENERAL_NAMES *gens = sk_GENERAL_NAME_new_null();
    int ret = gens ? push_name(gens, GEN_URI, uri, strlen(uri)) : ZTM_CA_E_CRYPTO;
    for (size_t i = 0; ret == 0 && leaf && i < leaf->n_dns; i++)
        ret = dns_name_valid(leaf->dns[i]) ? push_name(gens, GEN_DNS, leaf->dns[i], strlen(leaf->dns[i]))
                                           : ZTM_CA_E_BAD_NAME;
    for (size_t i = 0; ret == 0 && leaf && i < leaf->n_ips; i++) {
        uint8_t ip[16];
        if (inet_pton(AF_INET, leaf->ips[i], ip) == 1)
            ret = push_name(gens, GEN_IPADD, ip, 4);
        else if (inet_pton(AF_INET6, leaf->ips[i], ip) == 1)
            ret = push_name(gens, GEN_IPADD, ip, 16);
        else
            ret = ZTM_CA_E_BAD_NAME;
    }
    if (ret == 0 && X509_add1_ext_i2d(x, NID_subject_alt_name, gens, 0, X509V3_ADD_DEFAULT) != 1)
        ret = ZTM_CA_E_CRYPTO;
    GENERAL_NAMES_free(gens);
    return ret;
}

/* Subject and authority key identifiers: no user input, so the config
 * syntax is safe here and keeps the hashing rule standard. */
static int add_key_ids(X509 *x, X509 *issuer)
{
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, issuer, x, NULL, NULL, 0);
    X509_EXTENSION *ski = X509V3_EXT_nconf_nid(NULL, &ctx, NID_subject_key_identifier, "hash");
    int ok = ski && X509_add_ext(x, ski, -1);
    X509_EXTENSION_free(ski);
    if (ok && issuer != x) {
        X509_EXTENSION *aki =
            X509V3_EXT_nconf_nid(NULL, &ctx, NID_authority_key_identifier, "keyid:always");
        ok = aki && X509_add_ext(x, aki, -1);
        X509_EXTENSION_free(aki);
    }
    return ok ? 0 : ZTM_CA_E_CRYPTO;
}

/* ---- certificates -------------------------------------------------------------- */

/* A random positive serial of 128 bits (RFC 5280 allows up to 20 octets). */
static int set_random_serial(X509 *x)
{
    uint8_t r[16];
    do
        RAND_bytes(r, sizeof(r));
    while (r[0] == 0); /* keep the full 128 bits: no leading zero octet */
    BIGNUM *bn = BN_bin2bn(r, sizeof(r), NULL);
    ASN1_INTEGER *ai = bn ? BN_to_ASN1_INTEGER(bn, NULL) : NULL;
    int ok = ai && X509_set_serialNumber(x, ai);
    ASN1_INTEGER_free(ai);
    BN_free(bn);
    return ok ? 0 : ZTM_CA_E_CRYPTO;
}

static int set_validity(X509 *x, int64_t not_before, int64_t not_after)
{
    if (!ASN1_TIME_set(X509_getm_notBefore(x), (time_t)not_before) ||
        !ASN1_TIME_set(X509_getm_notAfter(x), (time_t)not_after))
        return ZTM_CA_E_CRYPTO;
    return 0;
}

static X509_NAME *make_name(const char *org, const char *cn)
{
    X509_NAME *name = X509_NAME_new();
    if (!name)
        return NULL;
    if ((org && !X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8, (const uint8_t *)org, -1, -1, 0)) ||
        !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const uint8_t *)cn, -1, -1, 0)) {
        X509_NAME_free(name);
        return NULL;
    }
    return name;
}

static int cert_to_pem(X509 *x, char **pem, size_t *len)
{
    BIO *bio = BIO_new(BIO_s_mem());
    int ret = bio && PEM_write_bio_X509(bio, x) ? ztm_ca_bio_to_buf(bio, pem, len) : ZTM_CA_E_CRYPTO;
    BIO_free(bio);
    return ret;
}

int ztm_cert_from_pem(const char *pem, size_t len, X509 **out)
{
    if (len > INT_MAX)
        return ZTM_CA_E_PARSE;
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    X509 *x = bio ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    if (!x)
        return ZTM_CA_E_PARSE;
    *out = x;
    return 0;
}

/* ---- the CA ---------------------------------------------------------------------- */

int ztm_ca_create(const char *mesh, int64_t lifetime, int64_t now, ztm_ca_t **out)
{
    if (!ztm_mesh_valid(mesh))
        return ZTM_CA_E_BAD_NAME;
    now = now_or(now);
    if (lifetime <= 0)
        lifetime = ZTM_CA_DEFAULT_LIFETIME;

    int ret;
    char cn[ZTM_MESH_MAX + 32], uri[ZTM_MESH_MAX + 8];
    snprintf(cn, sizeof(cn), "ztm mesh CA %s", mesh);
    snprintf(uri, sizeof(uri), "ztm://%s", mesh);

    ztm_ca_t *ca = calloc(1, sizeof(*ca));
    X509_NAME *name = make_name("ztm", cn);
    if (!ca || !name) {
        ret = -ENOMEM;
        goto fail;
    }
    if ((ret = ztm_key_generate(&ca->key)) < 0)
        goto fail;
    ret = ZTM_CA_E_CRYPTO;
    if (!(ca->cert = X509_new()) || !X509_set_version(ca->cert, X509_V3) ||
        !X509_set_subject_name(ca->cert, name) || !X509_set_issuer_name(ca->cert, name) ||
        !X509_set_pubkey(ca->cert, ca->key))
        goto fail;
    if ((ret = set_random_serial(ca->cert)) < 0 ||
        (ret = set_validity(ca->cert, now - ZTM_CA_CLOCK_SKEW, now + lifetime)) < 0 ||
        (ret = add_basic_constraints(ca->cert, true)) < 0 ||
        (ret = add_key_usage(ca->cert, true)) < 0 ||
        (ret = add_subject_alt_names(ca->cert, uri, NULL)) < 0 ||
        (ret = add_key_ids(ca->cert, ca->cert)) < 0)
        goto fail;
    if (!X509_sign(ca->cert, ca->key, EVP_sha256())) {
        ret = ZTM_CA_E_CRYPTO;
        goto fail;
    }
    strcpy(ca->mesh, mesh);
    ca->not_after = now + lifetime;
    X509_NAME_free(name);
    *out = ca;
    return 0;

fail:
    X509_NAME_free(name);
    ztm_ca_free(ca);
    return ret;
}

int ztm_ca_load(const char *cert_pem, size_t cert_len, const char *key_pem, size_t key_len,
                ztm_ca_t **out)
{
    int ret;
    ztm_ca_t *ca = calloc(1, sizeof(*ca));
    if (!ca)
        return -ENOMEM;
    if ((ret = ztm_cert_from_pem(cert_pem, cert_len, &ca->cert)) < 0 ||
        (ret = ztm_key_from_pem(key_pem, key_len, &ca->key)) < 0)
        goto fail;
    ret = ZTM_CA_E_KEY_MISMATCH;
    if (X509_check_private_key(ca->cert, ca->key) != 1)
        goto fail;
    if ((ret = ztm_ca_mesh_of_cert(ca->cert, ca->mesh, sizeof(ca->mesh))) < 0 ||
        (ret = ztm_ca_time_to_unix(X509_get0_notAfter(ca->cert), &ca->not_after)) < 0)
        goto fail;
    *out = ca;
    return 0;
fail:
    ERR_clear_error();
    ztm_ca_free(ca);
    return ret;
}

static int join_path(char *out, size_t cap, const char *dir, const char *file)
{
    int n = snprintf(out, cap, "%s/%s", dir, file);
    return n < 0 || (size_t)n >= cap ? -ENAMETOOLONG : 0;
}

int ztm_ca_load_files(const char *dir, ztm_ca_t **out)
{
    char cpath[PATH_MAX], kpath[PATH_MAX];
    void *cert = NULL, *key = NULL;
    size_t cert_len = 0, key_len = 0;
    int ret;
    if ((ret = join_path(cpath, sizeof(cpath), dir, "ca.crt")) < 0 ||
        (ret = join_path(kpath, sizeof(kpath), dir, "ca.key")) < 0)
        return ret;
    if ((ret = ztm_file_read(cpath, MAX_PEM, &cert, &cert_len)) < 0 ||
        (ret = ztm_file_read(kpath, MAX_PEM, &key, &key_len)) < 0)
        goto out;
    ret = ztm_ca_load(cert, cert_len, key, key_len, out);
out:
    free(cert);
    ztm_file_free_secret(key, key_len);
    return ret;
}

int ztm_ca_export(const ztm_ca_t *ca, char **cert_pem, size_t *cert_len, char **key_pem,
                  size_t *key_len)
{
    char *cert = NULL;
    int ret;
    if (cert_pem && (ret = cert_to_pem(ca->cert, &cert, cert_len)) < 0)
        return ret;
    if (key_pem && (ret = ztm_key_to_pem(ca->key, key_pem, key_len)) < 0) {
        free(cert);
        return ret;
    }
    if (cert_pem)
        *cert_pem = cert;
    return 0;
}

int ztm_ca_save_files(const ztm_ca_t *ca, const char *dir)
{
    char cpath[PATH_MAX], kpath[PATH_MAX];
    char *cert = NULL, *key = NULL;
    size_t cert_len = 0, key_len = 0;
    int ret;
    if ((ret = join_path(cpath, sizeof(cpath), dir, "ca.crt")) < 0 ||
        (ret = join_path(kpath, sizeof(kpath), dir, "ca.key")) < 0 ||
        (ret = ztm_ca_export(ca, &cert, &cert_len, &key, &key_len)) < 0)
        return ret;
    if ((ret = ztm_file_write_atomic(kpath, key, key_len, 0600)) == 0)
        ret = ztm_file_write_atomic(cpath, cert, cert_len, 0644);
    free(cert);
    ztm_file_free_secret(key, key_len);
    return ret;
}

void ztm_ca_free(ztm_ca_t *ca)
{
    if (!ca)
        return;
    X509_free(ca->cert);
    EVP_PKEY_free(ca->key); /* BoringSSL wipes key material as it frees it */
    OPENSSL_cleanse(ca, sizeof(*ca));
    free(ca);
}

const char *ztm_ca_mesh(const ztm_ca_t *ca)
{
    return ca->mesh;
}

X509 *ztm_ca_cert(const ztm_ca_t *ca)
{
    return ca->cert;
}

int64_t ztm_ca_not_after(const ztm_ca_t *ca)
{
    return ca->not_after;
}

void ztm_ca_pin(const ztm_ca_t *ca, uint8_t out[ZTM_PIN_LEN])
{
    if (ztm_pin_of_cert(ca->cert, out) < 0)
        abort(); /* the CA's own key always encodes */
}

/* ---- pins --------------------------------------------------------------------------- */

int ztm_pin_of_cert(X509 *cert, uint8_t out[ZTM_PIN_LEN])
{
    uint8_t *der = NULL;
    EVP_PKEY *pub = X509_get_pubkey(cert);
    int n = pub ? i2d_PUBKEY(pub, &der) : -1;
    EVP_PKEY_free(pub);
    if (n <= 0)
        return ZTM_CA_E_CRYPTO;
    SHA256(der, (size_t)n, out);
    OPENSSL_free(der);
    return 0;
}

int ztm_pin_of_pem(const char *pem, size_t len, uint8_t out[ZTM_PIN_LEN])
{
    X509 *x;
    int ret = ztm_cert_from_pem(pem, len, &x);
    if (ret < 0)
        return ret;
    ret = ztm_pin_of_cert(x, out);
    X509_free(x);
    return ret;
}

void ztm_pin_to_hex(const uint8_t pin[ZTM_PIN_LEN], char out[ZTM_PIN_HEX_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < ZTM_PIN_LEN; i++) {
        out[2 * i] = hex[pin[i] >> 4];
        out[2 * i + 1] = hex[pin[i] & 15];
    }
    out[ZTM_PIN_HEX_LEN] = 0;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int ztm_pin_from_hex(const char *s, size_t len, uint8_t out[ZTM_PIN_LEN])
{
    if (len > 7 && memcmp(s, "sha256:", 7) == 0) {
        s += 7;
        len -= 7;
    }
    if (len != ZTM_PIN_HEX_LEN)
        return -EINVAL;
    uint8_t pin[ZTM_PIN_LEN];
    for (int i = 0; i < ZTM_PIN_LEN; i++) {
        int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -EINVAL;
        pin[i] = (uint8_t)(hi << 4 | lo);
    }
    memcpy(out, pin, ZTM_PIN_LEN);
    return 0;
}

bool ztm_pin_equal(const uint8_t a[ZTM_PIN_LEN], const uint8_t b[ZTM_PIN_LEN])
{
    return CRYPTO_memcmp(a, b, ZTM_PIN_LEN) == 0;
}

/* ---- certificate requests ------------------------------------------------------------- */

int ztm_csr_parse(const void *data, size_t len, ztm_csr_t **out)
{
    static const char pem_begin[] = "-----BEGIN";
    if (len > INT_MAX)
        return ZTM_CA_E_PARSE;
    X509_REQ *req = NULL;
    if (len >= sizeof(pem_begin) - 1 && memmem(data, len, pem_begin, sizeof(pem_begin) - 1)) {
        BIO *bio = BIO_new_mem_buf(data, (int)len);
        req = bio ? PEM_read_bio_X509_REQ(bio, NULL, NULL, NULL) : NULL;
        BIO_free(bio);
    } else {
        const uint8_t *p = data;
        req = d2i_X509_REQ(NULL, &p, (long)len);
        if (req && p != (const uint8_t *)data + len) {
            X509_REQ_free(req);
            req = NULL;
        }
    }
    if (!req) {
        ERR_clear_error();
        return ZTM_CA_E_PARSE;
    }
    int ret;
    EVP_PKEY *key = X509_REQ_get_pubkey(req);
    if (!key) {
        ret = ZTM_CA_E_PARSE;
        goto fail;
    }
    if (!ztm_ca_key_is_p256(key)) {
        ret = ZTM_CA_E_KEY_TYPE;
        goto fail;
    }
    if (X509_REQ_verify(req, key) != 1) {
        ret = ZTM_CA_E_CSR_SIGNATURE;
        goto fail;
    }
    ztm_csr_t *csr = malloc(sizeof(*csr));
    if (!csr) {
        ret = -ENOMEM;
        goto fail;
    }
    csr->req = req;
    csr->key = key;
    *out = csr;
    return 0;
fail:
    ERR_clear_error();
    EVP_PKEY_free(key);
    X509_REQ_free(req);
    return ret;
}

int ztm_csr_common_name(const ztm_csr_t *csr, char *out, size_t cap)
{
    X509_NAME *subject = X509_REQ_get_subject_name(csr->req);
    int idx = subject ? X509_NAME_get_index_by_NID(subject, NID_commonName, -1) : -1;
    if (cap == 0)
        return -ENAMETOOLONG;
    out[0] = 0;
    if (idx < 0)
        return 0;
    const ASN1_STRING *cn = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, idx));
    size_t n = (size_t)ASN1_STRING_length(cn);
    if (n >= cap)
        return -ENAMETOOLONG;
    memcpy(out, ASN1_STRING_get0_data(cn), n);
    out[n] = 0;
    if (strlen(out) != n)
        out[0] = 0; /* an embedded NUL: treat as no usable CN */
    return 0;
}

int ztm_csr_requested_role(const ztm_csr_t *csr, ztm_role_t *role)
{
    *role = ZTM_ROLE_NONE;
    STACK_OF(X509_EXTENSION) *exts = X509_REQ_get_extensions(csr->req);
    if (!exts)
        return 0;
    int rc = 0;
    for (size_t i = 0; i < sk_X509_EXTENSION_num(exts) && rc == 0; i++) {
        X509_EXTENSION *ext = sk_X509_EXTENSION_value(exts, i);
        if (OBJ_obj2nid(X509_EXTENSION_get_object(ext)) != NID_subject_alt_name)
            continue;
        GENERAL_NAMES *names = X509V3_EXT_d2i(ext);
        if (!names) {
            rc = ZTM_CA_E_PARSE;
            break;
        }
        for (size_t j = 0; j < sk_GENERAL_NAME_num(names); j++) {
            const GENERAL_NAME *gn = sk_GENERAL_NAME_value(names, j);
            if (gn->type != GEN_URI)
                continue;
            const char *u = (const char *)ASN1_STRING_get0_data(gn->d.uniformResourceIdentifier);
            size_t n = (size_t)ASN1_STRING_length(gn->d.uniformResourceIdentifier);
            if (n < 6 || memcmp(u, "ztm://", 6) != 0)
                continue;
            /* ztm://MESH/ROLE/ID: the role is between the 1st and 2nd '/'. */
            const char *p = memchr(u + 6, '/', n - 6);
            const char *q = p ? memchr(p + 1, '/', n - (size_t)(p + 1 - u)) : NULL;
            size_t rl = p ? (size_t)((q ? q : u + n) - (p + 1)) : 0;
            ztm_role_t r = ZTM_ROLE_NONE;
            if (!p || !ztm_role_parse(p + 1, rl, &r)) {
                rc = ZTM_CA_E_ROLE;
                break;
            }
            if (*role != ZTM_ROLE_NONE && *role != r) {
                rc = ZTM_CA_E_ROLE; /* two different roles asked for */
                break;
            }
            *role = r;
        }
        GENERAL_NAMES_free(names);
    }
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    return rc;
}

int ztm_csr_key_pin(const ztm_csr_t *csr, uint8_t out[ZTM_PIN_LEN])
{
    uint8_t *der = NULL;
    int n = i2d_PUBKEY(csr->key, &der);
    if (n <= 0)
        return ZTM_CA_E_CRYPTO;
    SHA256(der, (size_t)n, out);
    OPENSSL_free(der);
    return 0;
}

void ztm_csr_free(ztm_csr_t *csr)
{
    if (!csr)
        return;
    EVP_PKEY_free(csr->key);
    X509_REQ_free(csr->req);
    free(csr);
}

/* ---- issuing -------------------------------------------------------------------------- */

int ztm_ca_issue(ztm_ca_t *ca, const ztm_csr_t *csr, const ztm_ca_leaf_t *leaf,
                 ztm_ca_issued_t *out)
{
    char uri[URI_MAX_LEN];
    int ret = ztm_identity_uri(ca->mesh, leaf->role, leaf->id ? leaf->id : "", uri, sizeof(uri));
    if (ret < 0)
        return ret == ZTM_CA_E_BAD_NAME && !ztm_role_name(leaf->role) ? ZTM_CA_E_ROLE : ret;
    if (!leaf->name || !ztm_name_valid(leaf->name))
        return ZTM_CA_E_BAD_NAME;
    if (leaf->role != ZTM_ROLE_HUB && (leaf->n_dns || leaf->n_ips))
        return ZTM_CA_E_ROLE;

    int64_t now = now_or(leaf->now);
    int64_t lifetime = leaf->lifetime > 0 ? leaf->lifetime : ZTM_CA_DEFAULT_LEAF_LIFETIME;
    int64_t not_before = now - ZTM_CA_CLOCK_SKEW, not_after = now + lifetime;
    if (not_after > ca->not_after)
        not_after = ca->not_after;
    if (not_after <= now)
        return ZTM_CA_E_VERIFY; /* the CA itself has expired */

    X509 *x = X509_new();
    X509_NAME *subject = make_name(NULL, leaf->name);
    memset(out, 0, sizeof(*out));
    ret = ZTM_CA_E_CRYPTO;
    if (!x || !subject || !X509_set_version(x, X509_V3) ||
        !X509_set_subject_name(x, subject) ||
        !X509_set_issuer_name(x, X509_get_subject_name(ca->cert)) ||
        !X509_set_pubkey(x, csr->key))
        goto out;
    bool server = leaf->role != ZTM_ROLE_ADMIN;
    if ((ret = set_random_serial(x)) < 0 || (ret = set_validity(x, not_before, not_after)) < 0 ||
        (ret = add_basic_constraints(x, false)) < 0 || (ret = add_key_usage(x, false)) < 0 ||
        (ret = add_ext_key_usage(x, server, true)) < 0 ||
        (ret = add_subject_alt_names(x, uri, leaf)) < 0 || (ret = add_key_ids(x, ca->cert)) < 0)
        goto out;
    ret = ZTM_CA_E_CRYPTO;
    if (!X509_sign(x, ca->key, EVP_sha256()))
        goto out;
    if ((ret = ztm_ca_serial_hex(X509_get0_serialNumber(x), out->serial, sizeof(out->serial))) < 0 ||
        (ret = cert_to_pem(x, &out->pem, &out->pem_len)) < 0)
        goto out;
    out->not_before = not_before;
    out->not_after = not_after;
out:
    if (ret < 0)
        ERR_clear_error();
    X509_NAME_free(subject);
    X509_free(x);
    return ret;
}

void ztm_ca_issued_clear(ztm_ca_issued_t *issued)
{
    free(issued->pem);
    memset(issued, 0, sizeof(*issued));
}

int ztm_cert_verify_pem(X509 *ca_cert, const char *cert_pem, size_t len, int64_t now,
                        ztm_identity_t *id)
{
    X509 *leaf = NULL;
    X509_STORE *store = NULL;
    X509_STORE_CTX *ctx = NULL;
    char mesh[ZTM_MESH_MAX + 1];
    ztm_identity_t ident;
    int ret = ztm_cert_from_pem(cert_pem, len, &leaf);
    if (ret < 0)
        return ret;
    ret = ZTM_CA_E_CRYPTO;
    if (!(store = X509_STORE_new()) || !X509_STORE_add_cert(store, ca_cert) ||
        !(ctx = X509_STORE_CTX_new()) || !X509_STORE_CTX_init(ctx, store, leaf, NULL) ||
        !X509_STORE_CTX_set_purpose(ctx, X509_PURPOSE_SSL_CLIENT))
        goto out;
    X509_STORE_CTX_set_time(ctx, 0, (time_t)now_or(now));
    ret = ZTM_CA_E_VERIFY;
    if (X509_verify_cert(ctx) != 1)
        goto out;
    if ((ret = ztm_ca_mesh_of_cert(ca_cert, mesh, sizeof(mesh))) < 0 ||
        (ret = ztm_identity_from_cert(leaf, &ident)) < 0)
        goto out;
    if (strcmp(ident.mesh, mesh) != 0) {
        ret = ZTM_CA_E_NOT_IDENTITY;
        goto out;
    }
    if (id)
        *id = ident;
out:
    ERR_clear_error();
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(store);
    X509_free(leaf);
    return ret;
}
