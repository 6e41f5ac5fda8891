/* Identities read from verified certificates; see identity.h. */
#include "controlplane/ca/identity.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/bytestring.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/mem.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "controlplane/ca/internal.h"

static const char *const role_names[] = {NULL, "agent", "hub", "admin", "gateway"};
#define N_ROLES (sizeof(role_names) / sizeof(role_names[0]))

const char *ztm_role_name(ztm_role_t role)
{
    if ((unsigned)role >= N_ROLES)
        return NULL;
    return role_names[role];
}

bool ztm_role_parse(const char *s, size_t len, ztm_role_t *out)
{
    for (unsigned i = 1; i < N_ROLES; i++) {
        if (strlen(role_names[i]) == len && memcmp(role_names[i], s, len) == 0) {
            *out = (ztm_role_t)i;
            return true;
        }
    }
    return false;
}

static bool is_lower_alnum(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

static bool is_alnum(char c)
{
    return is_lower_alnum(c) || (c >= 'A' && c <= 'Z');
}

bool ztm_mesh_valid(const char *mesh)
{
    size_t n = strlen(mesh);
    if (n == 0 || n > ZTM_MESH_MAX || mesh[0] == '-' || mesh[n - 1] == '-')
        return false;
    for (size_t i = 0; i < n; i++)
        if (!is_lower_alnum(mesh[i]) && mesh[i] != '-')
            return false;
    return true;
}

bool ztm_id_valid(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n > ZTM_ID_MAX || !is_lower_alnum(id[0]))
        return false;
    for (size_t i = 0; i < n; i++)
        if (!is_lower_alnum(id[i]) && id[i] != '-')
            return false;
    return true;
}

bool ztm_name_valid(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > ZTM_NAME_MAX || !is_alnum(name[0]))
        return false;
    for (size_t i = 0; i < n; i++)
        if (!is_alnum(name[i]) && name[i] != '.' && name[i] != '_' && name[i] != '-')
            return false;
    return true;
}

void ztm_id_generate(char out[33])
{
    static const char hex[] = "0123456789abcdef";
    uint8_t r[16];
    RAND_bytes(r, sizeof(r));
    for (int i = 0; i < 16; i++) {
        out[2 * i] = hex[r[i] >> 4];
        out[2 * i + 1] = hex[r[i] & 15];
    }
    out[32] = 0;
}

const char *ztm_ca_strerror(int err)
{
    switch (err) {
    case ZTM_CA_E_PARSE:
        return "not a valid PEM or DER certificate, key or certificate request";
    case ZTM_CA_E_NOT_IDENTITY:
        return "certificate does not carry a valid ztm identity (CN and one ztm:// URI)";
    case ZTM_CA_E_CSR_SIGNATURE:
        return "certificate request signature does not verify";
    case ZTM_CA_E_KEY_TYPE:
        return "key is not an ECDSA P-256 key";
    case ZTM_CA_E_BAD_NAME:
        return "invalid mesh ID, endpoint name, endpoint ID, DNS name or IP address";
    case ZTM_CA_E_KEY_MISMATCH:
        return "CA key does not match the CA certificate";
    case ZTM_CA_E_NOT_CA:
        return "certificate is not a ztm mesh CA";
    case ZTM_CA_E_CRYPTO:
        return "cryptographic operation failed";
    case ZTM_CA_E_ROLE:
        return "role unknown or not allowed here";
    case ZTM_CA_E_VERIFY:
        return "certificate does not verify against the mesh CA";
    default:
        return err < 0 && err > -4096 ? strerror(-err) : "unknown error";
    }
}

/* ---- helpers shared within the module (internal.h) ------------------------ */

int ztm_ca_time_to_unix(const ASN1_TIME *t, int64_t *out)
{
    ASN1_TIME *epoch = ASN1_TIME_set(NULL, 0);
    int days, secs, ok = epoch && ASN1_TIME_diff(&days, &secs, epoch, t);
    ASN1_TIME_free(epoch);
    if (!ok)
        return ZTM_CA_E_CRYPTO;
    *out = (int64_t)days * 86400 + secs;
    return 0;
}

int ztm_ca_serial_hex(const ASN1_INTEGER *serial, char *out, size_t cap)
{
    int ret = ZTM_CA_E_NOT_IDENTITY;
    BIGNUM *bn = ASN1_INTEGER_to_BN(serial, NULL);
    char *hex = bn && !BN_is_negative(bn) && !BN_is_zero(bn) ? BN_bn2hex(bn) : NULL;
    if (hex && strlen(hex) < cap) {
        for (size_t i = 0; hex[i]; i++)
            out[i] = (char)(hex[i] >= 'A' && hex[i] <= 'F' ? hex[i] - 'A' + 'a' : hex[i]);
        out[strlen(hex)] = 0;
        ret = 0;
    }
    OPENSSL_free(hex);
    BN_free(bn);
    return ret;
}

bool ztm_ca_key_is_p256(const EVP_PKEY *key)
{
    if (EVP_PKEY_id(key) != EVP_PKEY_EC)
        return false;
    const EC_KEY *ec = EVP_PKEY_get0_EC_KEY(key);
    const EC_GROUP *g = ec ? EC_KEY_get0_group(ec) : NULL;
    return g && EC_GROUP_get_curve_name(g) == NID_X9_62_prime256v1;
}

int ztm_ca_bio_to_buf(BIO *bio, char **out, size_t *len)
{
    const uint8_t *data;
    size_t n;
    if (!BIO_mem_contents(bio, &data, &n))
        return ZTM_CA_E_CRYPTO;
    char *buf = malloc(n + 1);
    if (!buf)
        return -ENOMEM;
    memcpy(buf, data, n);
    buf[n] = 0;
    *out = buf;
    if (len)
        *len = n;
    return 0;
}

static const char uri_scheme[] = "ztm://";
#define URI_SCHEME_LEN (sizeof(uri_scheme) - 1)

/* Calls FN on the contents of each ztm:// SAN URI of CERT; returns how many
 * there were, or -1 when the SAN extension is malformed or repeated. */
static int each_ztm_uri(X509 *cert, void (*fn)(const char *, size_t, void *), void *arg)
{
    int crit = -1;
    GENERAL_NAMES *gens = X509_get_ext_d2i(cert, NID_subject_alt_name, &crit, NULL);
    if (!gens)
        return crit == -1 ? 0 : -1; /* -1: absent; else repeated or undecodable */
    int count = 0;
    for (size_t i = 0; i < sk_GENERAL_NAME_num(gens); i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
        if (g->type != GEN_URI)
            continue;
        const char *s = (const char *)ASN1_STRING_get0_data(g->d.uniformResourceIdentifier);
        size_t n = (size_t)ASN1_STRING_length(g->d.uniformResourceIdentifier);
        if (n < URI_SCHEME_LEN || memcmp(s, uri_scheme, URI_SCHEME_LEN) != 0)
            continue;
        count++;
        fn(s + URI_SCHEME_LEN, n - URI_SCHEME_LEN, arg);
    }
    GENERAL_NAMES_free(gens);
    return count;
}

/* Copies [S, S+N) into OUT as a string if it has no NUL and fits. */
static bool copy_part(const char *s, size_t n, char *out, size_t cap)
{
    if (n >= cap || memchr(s, 0, n))
        return false;
    memcpy(out, s, n);
    out[n] = 0;
    return true;
}

typedef struct {
    char text[URI_SCHEME_LEN + ZTM_MESH_MAX + ZTM_ID_MAX + 16];
    bool ok;
} uri_copy_t;

static void take_uri(const char *s, size_t n, void *arg)
{
    uri_copy_t *u = arg;
    u->ok = copy_part(s, n, u->text, sizeof(u->text));
}

int ztm_ca_mesh_of_cert(X509 *cert, char *out, size_t cap)
{
    uri_copy_t u = {.ok = false};
    if (X509_check_ca(cert) < 1 || each_ztm_uri(cert, take_uri, &u) != 1 || !u.ok)
        return ZTM_CA_E_NOT_CA;
    if (!ztm_mesh_valid(u.text) || strlen(u.text) >= cap)
        return ZTM_CA_E_NOT_CA;
    strcpy(out, u.text);
    return 0;
}

/* ---- identities ------------------------------------------------------------ */

int ztm_identity_uri(const char *mesh, ztm_role_t role, const char *id, char *out, size_t cap)
{
    const char *r = ztm_role_name(role);
    if (!r || !ztm_mesh_valid(mesh) || !ztm_id_valid(id))
        return ZTM_CA_E_BAD_NAME;
    int n = snprintf(out, cap, "%s%s/%s/%s", uri_scheme, mesh, r, id);
    if (n < 0 || (size_t)n >= cap)
        return -ENAMETOOLONG;
    return n;
}

/* Splits "MESH/ROLE/ID" into OUT. */
static bool parse_uri(const char *s, ztm_identity_t *out)
{
    const char *a = strchr(s, '/');
    const char *b = a ? strchr(a + 1, '/') : NULL;
    if (!a || !b)
        return false;
    if (!copy_part(s, (size_t)(a - s), out->mesh, sizeof(out->mesh)) ||
        !ztm_role_parse(a + 1, (size_t)(b - a - 1), &out->role) ||
        !copy_part(b + 1, strlen(b + 1), out->id, sizeof(out->id)))
        return false;
    return ztm_mesh_valid(out->mesh) && ztm_id_valid(out->id);
}

/* The subject's only CN, if it is a valid name. */
static bool common_name(X509_NAME *subject, char *out, size_t cap)
{
    int idx = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
    if (idx < 0 || X509_NAME_get_index_by_NID(subject, NID_commonName, idx) >= 0)
        return false;
    const ASN1_STRING *cn = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, idx));
    int type = ASN1_STRING_type(cn);
    if (type != V_ASN1_UTF8STRING && type != V_ASN1_PRINTABLESTRING && type != V_ASN1_IA5STRING)
        return false;
    if (!copy_part((const char *)ASN1_STRING_get0_data(cn), (size_t)ASN1_STRING_length(cn), out,
                   cap))
        return false;
    return ztm_name_valid(out);
}

int ztm_identity_from_cert(X509 *cert, ztm_identity_t *out)
{
    ztm_identity_t id;
    memset(&id, 0, sizeof(id));
    uri_copy_t u = {.ok = false};
    if (!cert || X509_check_ca(cert) != 0)
        return ZTM_CA_E_NOT_IDENTITY;
    if (each_ztm_uri(cert, take_uri, &u) != 1 || !u.ok || !parse_uri(u.text, &id))
        return ZTM_CA_E_NOT_IDENTITY;
    if (!common_name(X509_get_subject_name(cert), id.name, sizeof(id.name)))
        return ZTM_CA_E_NOT_IDENTITY;
    if (ztm_ca_serial_hex(X509_get0_serialNumber(cert), id.serial, sizeof(id.serial)) < 0)
        return ZTM_CA_E_NOT_IDENTITY;
    if (ztm_ca_time_to_unix(X509_get0_notBefore(cert), &id.not_before) < 0 ||
        ztm_ca_time_to_unix(X509_get0_notAfter(cert), &id.not_after) < 0)
        return ZTM_CA_E_NOT_IDENTITY;
    *out = id;
    return 0;
}

int ztm_identity_from_der(const uint8_t *der, size_t len, ztm_identity_t *out)
{
    const uint8_t *p = der;
    if (len > LONG_MAX)
        return ZTM_CA_E_PARSE;
    X509 *cert = d2i_X509(NULL, &p, (long)len);
    if (!cert || p != der + len) {
        X509_free(cert);
        return ZTM_CA_E_PARSE;
    }
    int ret = ztm_identity_from_cert(cert, out);
    X509_free(cert);
    return ret;
}

int ztm_identity_from_pem(const char *pem, size_t len, ztm_identity_t *out)
{
    if (len > INT_MAX)
        return ZTM_CA_E_PARSE;
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    X509 *cert = bio ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    if (!cert)
        return ZTM_CA_E_PARSE;
    int ret = ztm_identity_from_cert(cert, out);
    X509_free(cert);
    return ret;
}
