/* controlplane/ca: the mesh CA, issuing from CSRs, identities read back
 * from certificates, pins (checked against the openssl CLI when present),
 * key and CA files, and every refusal: bad names, roles, keys, signatures,
 * foreign CAs, malformed identities. */
#include "controlplane/ca/ca.h"
#include "controlplane/ca/identity.h"
#include "controlplane/ca/keys.h"
#include "controlplane/store/file.h"

#include <errno.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/ec_key.h>
#include <openssl/evp.h>
#include <openssl/obj.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "test.h"

static const int64_t T0 = 1750000000; /* a fixed "now" for reproducible validity */

static char tmpdir[] = "/tmp/ztm-test-ca-XXXXXX";

static void path_in_tmp(char *out, size_t cap, const char *name)
{
    snprintf(out, cap, "%s/%s", tmpdir, name);
}

static ztm_csr_t *make_csr(EVP_PKEY **key_out, const char *cn)
{
    EVP_PKEY *key;
    REQUIRE(ztm_key_generate(&key) == 0);
    char *pem;
    size_t len;
    REQUIRE(ztm_csr_create(key, cn, &pem, &len) == 0);
    ztm_csr_t *csr;
    REQUIRE(ztm_csr_parse(pem, len, &csr) == 0);
    free(pem);
    if (key_out)
        *key_out = key;
    else
        EVP_PKEY_free(key);
    return csr;
}

static void test_names(void)
{
    CHECK(ztm_mesh_valid("m1"));
    CHECK(ztm_mesh_valid("my-mesh-01"));
    CHECK(!ztm_mesh_valid(""));
    CHECK(!ztm_mesh_valid("-m"));
    CHECK(!ztm_mesh_valid("m-"));
    CHECK(!ztm_mesh_valid("Mesh"));
    CHECK(!ztm_mesh_valid("a/b"));
    CHECK(!ztm_mesh_valid("a.b"));
    char long_mesh[70];
    memset(long_mesh, 'a', 63);
    long_mesh[63] = 0;
    CHECK(ztm_mesh_valid(long_mesh));
    long_mesh[63] = 'a';
    long_mesh[64] = 0;
    CHECK(!ztm_mesh_valid(long_mesh));

    CHECK(ztm_name_valid("laptop"));
    CHECK(ztm_name_valid("Web-01.prod_eu"));
    CHECK(!ztm_name_valid(""));
    CHECK(!ztm_name_valid(".hidden"));
    CHECK(!ztm_name_valid("a b"));
    CHECK(!ztm_name_valid("a/b"));
    CHECK(!ztm_name_valid("caf\xc3\xa9"));

    char id[33];
    ztm_id_generate(id);
    CHECK_INT(strlen(id), 32);
    CHECK(ztm_id_valid(id));
    char id2[33];
    ztm_id_generate(id2);
    CHECK(strcmp(id, id2) != 0);
    CHECK(!ztm_id_valid("ABC"));
    CHECK(!ztm_id_valid("-a"));
    CHECK(!ztm_id_valid(""));

    static const char *const roles[] = {"agent", "hub", "admin", "gateway"};
    for (int r = 1; r <= 4; r++) {
        CHECK_STR(ztm_role_name((ztm_role_t)r), roles[r - 1]);
        ztm_role_t back;
        CHECK(ztm_role_parse(roles[r - 1], strlen(roles[r - 1]), &back));
        CHECK_INT(back, r);
    }
    ztm_role_t back;
    CHECK(ztm_role_name(ZTM_ROLE_NONE) == NULL);
    CHECK(ztm_role_name((ztm_role_t)5) == NULL);
    CHECK(!ztm_role_parse("root", 4, &back));
    CHECK(!ztm_role_parse("Agent", 5, &back));
    CHECK(!ztm_role_parse("agen", 4, &back));

    char uri[200];
    CHECK_INT(ztm_identity_uri("m1", ZTM_ROLE_HUB, "abc", uri, sizeof(uri)), 16);
    CHECK_STR(uri, "ztm://m1/hub/abc");
    CHECK_INT(ztm_identity_uri("m1", ZTM_ROLE_NONE, "abc", uri, sizeof(uri)), ZTM_CA_E_BAD_NAME);
    CHECK_INT(ztm_identity_uri("M1", ZTM_ROLE_HUB, "abc", uri, sizeof(uri)), ZTM_CA_E_BAD_NAME);
    CHECK_INT(ztm_identity_uri("m1", ZTM_ROLE_HUB, "abc", uri, 10), -ENAMETOOLONG);
}

static void test_create_and_pin(void)
{
    ztm_ca_t *ca;
    CHECK_INT(ztm_ca_create("Bad Mesh", 0, T0, &ca), ZTM_CA_E_BAD_NAME);
    REQUIRE(ztm_ca_create("m1", 0, T0, &ca) == 0);
    CHECK_STR(ztm_ca_mesh(ca), "m1");
    CHECK(ztm_ca_not_after(ca) == T0 + ZTM_CA_DEFAULT_LIFETIME);
    X509 *x = ztm_ca_cert(ca);
    CHECK(X509_check_ca(x) >= 1);
    /* the name carries the mesh ID */
    char cn[128];
    X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn, sizeof(cn));
    CHECK_STR(cn, "ztm mesh CA m1");
    /* P-256 */
    EVP_PKEY *pub = X509_get_pubkey(x);
    CHECK(EVP_PKEY_id(pub) == EVP_PKEY_EC);
    CHECK(EC_GROUP_get_curve_name(EC_KEY_get0_group(EVP_PKEY_get0_EC_KEY(pub))) ==
          NID_X9_62_prime256v1);

    /* the pin is SHA-256 of the DER SubjectPublicKeyInfo */
    uint8_t *der = NULL;
    int n = i2d_PUBKEY(pub, &der);
    uint8_t want[32], pin[32];
    SHA256(der, (size_t)n, want);
    OPENSSL_free(der);
    EVP_PKEY_free(pub);
    ztm_ca_pin(ca, pin);
    CHECK_MEM(pin, want, 32);

    char hex[65];
    ztm_pin_to_hex(pin, hex);
    CHECK_INT(strlen(hex), 64);
    uint8_t back[32];
    CHECK_INT(ztm_pin_from_hex(hex, 64, back), 0);
    CHECK(ztm_pin_equal(back, pin));
    char prefixed[80];
    snprintf(prefixed, sizeof(prefixed), "sha256:%s", hex);
    CHECK_INT(ztm_pin_from_hex(prefixed, strlen(prefixed), back), 0);
    CHECK(ztm_pin_equal(back, pin));
    CHECK_INT(ztm_pin_from_hex(hex, 63, back), -EINVAL);
    hex[10] = 'g';
    CHECK_INT(ztm_pin_from_hex(hex, 64, back), -EINVAL);
    back[31] ^= 1;
    CHECK(!ztm_pin_equal(back, pin));

    /* the pin as kubeadm computes it, with the openssl CLI, when it exists */
    char *cert_pem;
    size_t cert_len;
    REQUIRE(ztm_ca_export(ca, &cert_pem, &cert_len, NULL, NULL) == 0);
    uint8_t pem_pin[32];
    CHECK_INT(ztm_pin_of_pem(cert_pem, cert_len, pem_pin), 0);
    CHECK_MEM(pem_pin, pin, 32);
    if (access("/usr/bin/openssl", X_OK) == 0) {
        char path[512], cmd[1200], line[200] = "";
        path_in_tmp(path, sizeof(path), "pin.crt");
        REQUIRE(ztm_pem_save_file(path, cert_pem, cert_len) == 0);
        snprintf(cmd, sizeof(cmd),
                 "/usr/bin/openssl x509 -in %s -pubkey -noout | /usr/bin/openssl pkey -pubin "
                 "-outform der | sha256sum",
                 path);
        FILE *f = popen(cmd, "r");
        if (f) {
            if (!fgets(line, sizeof(line), f))
                line[0] = 0;
            pclose(f);
        }
        ztm_pin_to_hex(pin, hex);
        CHECK(strncmp(line, hex, 64) == 0);
        unlink(path);
    }
    free(cert_pem);
    ztm_ca_free(ca);
}

static void test_load_export(void)
{
    ztm_ca_t *ca, *other, *back;
    REQUIRE(ztm_ca_create("m1", 0, T0, &ca) == 0);
    REQUIRE(ztm_ca_create("m1", 0, T0, &other) == 0);
    char *cert, *key, *ocert, *okey;
    size_t cert_len, key_len, ocert_len, okey_len;
    REQUIRE(ztm_ca_export(ca, &cert, &cert_len, &key, &key_len) == 0);
    REQUIRE(ztm_ca_export(other, &ocert, &ocert_len, &okey, &okey_len) == 0);
    CHECK(strstr(key, "BEGIN PRIVATE KEY") != NULL);

    CHECK_INT(ztm_ca_load(cert, cert_len, key, key_len, &back), 0);
    uint8_t p1[32], p2[32];
    ztm_ca_pin(ca, p1);
    ztm_ca_pin(back, p2);
    CHECK_MEM(p1, p2, 32);
    CHECK_STR(ztm_ca_mesh(back), "m1");
    ztm_ca_free(back);

    CHECK_INT(ztm_ca_load(cert, cert_len, okey, okey_len, &back), ZTM_CA_E_KEY_MISMATCH);
    CHECK_INT(ztm_ca_load("junk", 4, key, key_len, &back), ZTM_CA_E_PARSE);
    CHECK_INT(ztm_ca_load(cert, cert_len, "junk", 4, &back), ZTM_CA_E_PARSE);

    /* a leaf is not a CA */
    EVP_PKEY *lkey;
    ztm_csr_t *csr = make_csr(&lkey, "n1");
    ztm_ca_leaf_t leaf = {.role = ZTM_ROLE_AGENT, .id = "abc", .name = "n1", .now = T0};
    ztm_ca_issued_t is;
    REQUIRE(ztm_ca_issue(ca, csr, &leaf, &is) == 0);
    char *lkey_pem;
    size_t lkey_len;
    REQUIRE(ztm_key_to_pem(lkey, &lkey_pem, &lkey_len) == 0);
    CHECK_INT(ztm_ca_load(is.pem, is.pem_len, lkey_pem, lkey_len, &back), ZTM_CA_E_NOT_CA);
    ztm_file_free_secret(lkey_pem, lkey_len);
    ztm_ca_issued_clear(&is);
    ztm_csr_free(csr);
    EVP_PKEY_free(lkey);

    /* files: modes, round trip */
    char dir[512], kpath[600], cpath[600];
    path_in_tmp(dir, sizeof(dir), "state/ca");
    REQUIRE(ztm_file_mkdirs(dir, 0700) == 0);
    CHECK_INT(ztm_ca_save_files(ca, dir), 0);
    snprintf(kpath, sizeof(kpath), "%s/ca.key", dir);
    snprintf(cpath, sizeof(cpath), "%s/ca.crt", dir);
    struct stat st;
    CHECK(stat(kpath, &st) == 0 && (st.st_mode & 0777) == 0600);
    CHECK(stat(cpath, &st) == 0 && (st.st_mode & 0777) == 0644);
    CHECK_INT(ztm_ca_load_files(dir, &back), 0);
    ztm_ca_pin(back, p2);
    CHECK_MEM(p1, p2, 32);
    ztm_ca_free(back);
    unlink(kpath);
    CHECK_INT(ztm_ca_load_files(dir, &back), -ENOENT);
    unlink(cpath);
    rmdir(dir);
    path_in_tmp(dir, sizeof(dir), "state");
    rmdir(dir);

    free(cert);
    free(ocert);
    ztm_file_free_secret(key, key_len);
    ztm_file_free_secret(okey, okey_len);
    ztm_ca_free(ca);
    ztm_ca_free(other);
}

static bool has_eku(X509 *x, uint32_t flag)
{
    return (X509_get_extended_key_usage(x) & flag) != 0;
}

static void test_issue(void)
{
    ztm_ca_t *ca, *foreign, *samename;
    REQUIRE(ztm_ca_create("m1", 0, T0, &ca) == 0);
    REQUIRE(ztm_ca_create("m2", 0, T0, &foreign) == 0);
    REQUIRE(ztm_ca_create("m1", 0, T0, &samename) == 0);
    ztm_csr_t *csr = make_csr(NULL, "laptop");
    char cn[80];
    CHECK_INT(ztm_csr_common_name(csr, cn, sizeof(cn)), 0);
    CHECK_STR(cn, "laptop");
    CHECK_INT(ztm_csr_common_name(csr, cn, 3), -ENAMETOOLONG);

    char id[33];
    ztm_id_generate(id);
    ztm_ca_leaf_t leaf = {.role = ZTM_ROLE_AGENT, .id = id, .name = "laptop", .now = T0};
    ztm_ca_issued_t is;
    REQUIRE(ztm_ca_issue(ca, csr, &leaf, &is) == 0);
    CHECK(is.not_after == T0 + ZTM_CA_DEFAULT_LEAF_LIFETIME);
    CHECK(is.not_before == T0 - ZTM_CA_CLOCK_SKEW);
    CHECK(strlen(is.serial) >= 31 && strlen(is.serial) <= 32);

    ztm_identity_t ident;
    CHECK_INT(ztm_identity_from_pem(is.pem, is.pem_len, &ident), 0);
    CHECK_STR(ident.mesh, "m1");
    CHECK_INT(ident.role, ZTM_ROLE_AGENT);
    CHECK_STR(ident.id, id);
    CHECK_STR(ident.name, "laptop");
    CHECK_STR(ident.serial, is.serial);
    CHECK(ident.not_after == is.not_after);
    CHECK(ident.not_before == is.not_before);

    /* verification: ok now, not after expiry, not before issue, not by others */
    memset(&ident, 0, sizeof(ident));
    CHECK_INT(ztm_cert_verify_pem(ztm_ca_cert(ca), is.pem, is.pem_len, T0 + 60, &ident), 0);
    CHECK_STR(ident.id, id);
    CHECK_INT(ztm_cert_verify_pem(ztm_ca_cert(ca), is.pem, is.pem_len,
                                  T0 + ZTM_CA_DEFAULT_LEAF_LIFETIME + 1, NULL),
              ZTM_CA_E_VERIFY);
    CHECK_INT(ztm_cert_verify_pem(ztm_ca_cert(ca), is.pem, is.pem_len, T0 - 3600, NULL),
              ZTM_CA_E_VERIFY);
    CHECK_INT(ztm_cert_verify_pem(ztm_ca_cert(foreign), is.pem, is.pem_len, T0, NULL),
              ZTM_CA_E_VERIFY);
    CHECK_INT(ztm_cert_verify_pem(ztm_ca_cert(samename), is.pem, is.pem_len, T0, NULL),
              ZTM_CA_E_VERIFY);
    CHECK_INT(ztm_cert_verify_pem(ztm_ca_cert(ca), "junk", 4, T0, NULL), ZTM_CA_E_PARSE);

    /* EKUs by role */
    X509 *x;
    REQUIRE(ztm_cert_from_pem(is.pem, is.pem_len, &x) == 0);
    CHECK(has_eku(x, XKU_SSL_CLIENT) && has_eku(x, XKU_SSL_SERVER));
    CHECK(X509_check_ca(x) == 0);
    CHECK(X509_check_host(x, "laptop", 6, 0, NULL) != 1); /* no DNS SANs on agents */
    X509_free(x);
    ztm_ca_issued_clear(&is);

    leaf.role = ZTM_ROLE_ADMIN;
    leaf.name = "alice";
    REQUIRE(ztm_ca_issue(ca, csr, &leaf, &is) == 0);
    REQUIRE(ztm_cert_from_pem(is.pem, is.pem_len, &x) == 0);
    CHECK(has_eku(x, XKU_SSL_CLIENT) && !has_eku(x, XKU_SSL_SERVER));
    CHECK_INT(ztm_identity_from_cert(x, &ident), 0);
    CHECK_INT(ident.role, ZTM_ROLE_ADMIN);
    CHECK_STR(ident.name, "alice"); /* the CA decides, not the CSR ("laptop") */
    X509_free(x);
    ztm_ca_issued_clear(&is);

    /* hubs: DNS and IP SANs */
    static const char *const dns[] = {"hub.example.com", "localhost"};
    static const char *const ips[] = {"127.0.0.1", "::1"};
    ztm_ca_leaf_t hub = {.role = ZTM_ROLE_HUB, .id = id, .name = "hub1", .dns = dns, .n_dns = 2,
                         .ips = ips, .n_ips = 2, .lifetime = 3600, .now = T0};
    REQUIRE(ztm_ca_issue(ca, csr, &hub, &is) == 0);
    CHECK(is.not_after == T0 + 3600);
    REQUIRE(ztm_cert_from_pem(is.pem, is.pem_len, &x) == 0);
    CHECK(X509_check_host(x, "hub.example.com", 15, 0, NULL) == 1);
    CHECK(X509_check_host(x, "localhost", 9, 0, NULL) == 1);
    CHECK(X509_check_host(x, "evil.example.com", 16, 0, NULL) != 1);
    CHECK(X509_check_ip_asc(x, "127.0.0.1", 0) == 1);
    CHECK(X509_check_ip_asc(x, "::1", 0) == 1);
    CHECK(X509_check_ip_asc(x, "10.0.0.1", 0) != 1);
    CHECK(has_eku(x, XKU_SSL_SERVER) && has_eku(x, XKU_SSL_CLIENT));
    CHECK_INT(ztm_identity_from_cert(x, &ident), 0);
    CHECK_INT(ident.role, ZTM_ROLE_HUB);
    X509_free(x);
    ztm_ca_issued_clear(&is);

    /* refusals */
    ztm_ca_leaf_t bad = hub;
    bad.role = ZTM_ROLE_AGENT;
    CHECK_INT(ztm_ca_issue(ca, csr, &bad, &is), ZTM_CA_E_ROLE); /* SANs on a non-hub */
    bad = leaf;
    bad.role = ZTM_ROLE_NONE;
    CHECK_INT(ztm_ca_issue(ca, csr, &bad, &is), ZTM_CA_E_ROLE);
    bad.role = (ztm_role_t)9;
    CHECK_INT(ztm_ca_issue(ca, csr, &bad, &is), ZTM_CA_E_ROLE);
    bad = leaf;
    bad.name = "two words";
    CHECK_INT(ztm_ca_issue(ca, csr, &bad, &is), ZTM_CA_E_BAD_NAME);
    bad.name = NULL;
    CHECK_INT(ztm_ca_issue(ca, csr, &bad, &is), ZTM_CA_E_BAD_NAME);
    bad = leaf;
    bad.id = "UPPER";
    CHECK_INT(ztm_ca_issue(ca, csr, &bad, &is), ZTM_CA_E_BAD_NAME);
    bad.id = NULL;
    CHECK_INT(ztm_ca_issue(ca, csr, &bad, &is), ZTM_CA_E_BAD_NAME);
    static const char *const bad_dns[] = {"a..b", "-a.com", "a-.com", "a_b.com", "", "a b",
                                          "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx.com"};
    for (size_t i = 0; i < sizeof(bad_dns) / sizeof(bad_dns[0]); i++) {
        ztm_ca_leaf_t h = hub;
        h.dns = &bad_dns[i];
        h.n_dns = 1;
        h.n_ips = 0;
        CHECK_INT(ztm_ca_issue(ca, csr, &h, &is), ZTM_CA_E_BAD_NAME);
    }
    static const char *const bad_ip[] = {"127.0.0.256", "1.2.3", "::g", "localhost"};
    for (size_t i = 0; i < sizeof(bad_ip) / sizeof(bad_ip[0]); i++) {
        ztm_ca_leaf_t h = hub;
        h.ips = &bad_ip[i];
        h.n_ips = 1;
        h.n_dns = 0;
        CHECK_INT(ztm_ca_issue(ca, csr, &h, &is), ZTM_CA_E_BAD_NAME);
    }

    /* lifetimes never outlive the CA; an expired CA issues nothing */
    ztm_ca_t *short_ca;
    REQUIRE(ztm_ca_create("m1", 86400, T0, &short_ca) == 0);
    REQUIRE(ztm_ca_issue(short_ca, csr, &leaf, &is) == 0);
    CHECK(is.not_after == T0 + 86400);
    ztm_ca_issued_clear(&is);
    ztm_ca_leaf_t late = leaf;
    late.now = T0 + 2 * 86400;
    CHECK_INT(ztm_ca_issue(short_ca, csr, &late, &is), ZTM_CA_E_VERIFY);
    ztm_ca_free(short_ca);

    /* serials differ */
    char seen[20][ZTM_SERIAL_MAX + 1];
    for (int i = 0; i < 20; i++) {
        REQUIRE(ztm_ca_issue(ca, csr, &leaf, &is) == 0);
        strcpy(seen[i], is.serial);
        for (int j = 0; j < i; j++)
            CHECK(strcmp(seen[i], seen[j]) != 0);
        ztm_ca_issued_clear(&is);
    }

    /* a certificate from a foreign mesh CA names that mesh */
    ztm_ca_leaf_t f = leaf;
    REQUIRE(ztm_ca_issue(foreign, csr, &f, &is) == 0);
    CHECK_INT(ztm_identity_from_pem(is.pem, is.pem_len, &ident), 0);
    CHECK_STR(ident.mesh, "m2");
    ztm_ca_issued_clear(&is);

    ztm_csr_free(csr);
    ztm_ca_free(ca);
    ztm_ca_free(foreign);
    ztm_ca_free(samename);
}

static void test_csr_refusals(void)
{
    EVP_PKEY *key;
    REQUIRE(ztm_key_generate(&key) == 0);
    char *pem;
    size_t len;
    CHECK_INT(ztm_csr_create(key, "bad name", &pem, &len), ZTM_CA_E_BAD_NAME);
    REQUIRE(ztm_csr_create(key, NULL, &pem, &len) == 0);
    ztm_csr_t *csr;
    REQUIRE(ztm_csr_parse(pem, len, &csr) == 0);
    char cn[80];
    CHECK_INT(ztm_csr_common_name(csr, cn, sizeof(cn)), 0);
    CHECK_STR(cn, "");
    uint8_t kp[32];
    CHECK_INT(ztm_csr_key_pin(csr, kp), 0);
    ztm_csr_free(csr);
    free(pem);

    /* DER, and a tampered signature */
    REQUIRE(ztm_csr_create(key, "tamper-me", &pem, &len) == 0);
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    X509_REQ *req = PEM_read_bio_X509_REQ(bio, NULL, NULL, NULL);
    BIO_free(bio);
    REQUIRE(req);
    uint8_t *der = NULL;
    int dlen = i2d_X509_REQ(req, &der);
    X509_REQ_free(req);
    REQUIRE(dlen > 0);
    CHECK_INT(ztm_csr_parse(der, (size_t)dlen, &csr), 0);
    ztm_csr_free(csr);
    CHECK_INT(ztm_csr_parse(der, (size_t)dlen - 1, &csr), ZTM_CA_E_PARSE);
    uint8_t *longer = malloc((size_t)dlen + 1);
    memcpy(longer, der, (size_t)dlen);
    longer[dlen] = 0;
    CHECK_INT(ztm_csr_parse(longer, (size_t)dlen + 1, &csr), ZTM_CA_E_PARSE); /* trailing */
    free(longer);
    /* the signature is the last bytes (an ECDSA INTEGER): change its last */
    der[dlen - 1] ^= 0x01;
    CHECK_INT(ztm_csr_parse(der, (size_t)dlen, &csr), ZTM_CA_E_CSR_SIGNATURE);
    der[dlen - 1] ^= 0x01;
    /* change the subject (inside the signed part): the signature no longer matches */
    uint8_t *n = memmem(der, (size_t)dlen, "tamper-me", 9);
    REQUIRE(n);
    *n = 'T';
    CHECK_INT(ztm_csr_parse(der, (size_t)dlen, &csr), ZTM_CA_E_CSR_SIGNATURE);
    OPENSSL_free(der);
    free(pem);
    CHECK_INT(ztm_csr_parse("", 0, &csr), ZTM_CA_E_PARSE);
    CHECK_INT(ztm_csr_parse("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n", 41, &csr),
              ZTM_CA_E_PARSE);

    /* another curve: refused */
    EVP_PKEY_CTX *kc = EVP_PKEY_CTX_new_id(EVP_PKEY_EC, NULL);
    EVP_PKEY *p384 = NULL;
    REQUIRE(kc && EVP_PKEY_keygen_init(kc) &&
            EVP_PKEY_CTX_set_ec_paramgen_curve_nid(kc, NID_secp384r1) &&
            EVP_PKEY_keygen(kc, &p384));
    EVP_PKEY_CTX_free(kc);
    req = X509_REQ_new();
    REQUIRE(X509_REQ_set_pubkey(req, p384) && X509_REQ_sign(req, p384, EVP_sha256()));
    der = NULL;
    dlen = i2d_X509_REQ(req, &der);
    CHECK_INT(ztm_csr_parse(der, (size_t)dlen, &csr), ZTM_CA_E_KEY_TYPE);
    char *kpem;
    size_t klen;
    REQUIRE(ztm_key_to_pem(p384, &kpem, &klen) == 0);
    EVP_PKEY *k2;
    CHECK_INT(ztm_key_from_pem(kpem, klen, &k2), ZTM_CA_E_KEY_TYPE);
    ztm_file_free_secret(kpem, klen);
    OPENSSL_free(der);
    X509_REQ_free(req);
    EVP_PKEY_free(p384);
    EVP_PKEY_free(key);
}

static void test_key_files(void)
{
    EVP_PKEY *key, *back;
    REQUIRE(ztm_key_generate(&key) == 0);
    char path[512];
    path_in_tmp(path, sizeof(path), "agent.key");
    CHECK_INT(ztm_key_save_file(key, path), 0);
    struct stat st;
    CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600);
    CHECK_INT(ztm_key_load_file(path, &back), 0);
    CHECK(EVP_PKEY_cmp(key, back) == 1);
    EVP_PKEY_free(back);
    chmod(path, 0640);
    CHECK_INT(ztm_key_load_file(path, &back), -EPERM);
    unlink(path);
    CHECK_INT(ztm_key_load_file(path, &back), -ENOENT);

    char *pem;
    size_t len;
    REQUIRE(ztm_key_to_pem(key, &pem, &len) == 0);
    CHECK_INT(ztm_key_from_pem(pem, len, &back), 0);
    EVP_PKEY_free(back);
    CHECK_INT(ztm_key_from_pem(pem, len / 2, &back), ZTM_CA_E_PARSE);
    ztm_file_free_secret(pem, len);
    /* an encrypted key is refused, not prompted for */
    BIO *bio = BIO_new(BIO_s_mem());
    REQUIRE(PEM_write_bio_PKCS8PrivateKey(bio, key, EVP_aes_128_cbc(), "pw", 2, NULL, NULL));
    const uint8_t *data;
    size_t dlen;
    BIO_mem_contents(bio, &data, &dlen);
    CHECK_INT(ztm_key_from_pem((const char *)data, dlen, &back), ZTM_CA_E_PARSE);
    BIO_free(bio);
    EVP_PKEY_free(key);
}

/* A certificate signed by CA's key with arbitrary SAN and CN, to check
 * that ztm_identity_from_cert refuses what our CA would never issue. */
static X509 *forge(EVP_PKEY *ca_key, const char *cn, const char *san, bool is_ca)
{
    EVP_PKEY *key;
    REQUIRE(ztm_key_generate(&key) == 0);
    X509 *x = X509_new();
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 12345);
    X509_NAME *name = X509_NAME_new();
    if (cn)
        X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const uint8_t *)cn, -1, -1, 0);
    X509_set_subject_name(x, name);
    X509_set_issuer_name(x, name);
    X509_NAME_free(name);
    ASN1_TIME_set(X509_getm_notBefore(x), T0);
    ASN1_TIME_set(X509_getm_notAfter(x), T0 + 3600);
    X509_set_pubkey(x, key);
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
    if (san) {
        X509_EXTENSION *e = X509V3_EXT_nconf_nid(NULL, &ctx, NID_subject_alt_name, san);
        REQUIRE(e);
        X509_add_ext(x, e, -1);
        X509_EXTENSION_free(e);
    }
    X509_EXTENSION *bc = X509V3_EXT_nconf_nid(NULL, &ctx, NID_basic_constraints,
                                              is_ca ? "critical,CA:TRUE" : "critical,CA:FALSE");
    X509_add_ext(x, bc, -1);
    X509_EXTENSION_free(bc);
    X509_sign(x, ca_key, EVP_sha256());
    EVP_PKEY_free(key);
    return x;
}

static void test_identity_refusals(void)
{
    EVP_PKEY *k;
    REQUIRE(ztm_key_generate(&k) == 0);
    static const struct {
        const char *cn, *san;
        bool is_ca;
        bool ok;
    } cases[] = {
        {"n1", "URI:ztm://m1/agent/abc", false, true},
        {"n1", "URI:ztm://m1/agent/abc,DNS:x.example,URI:https://example.com", false, true},
        {"n1", NULL, false, false},                                          /* no SAN */
        {"n1", "DNS:x.example", false, false},                               /* no URI */
        {"n1", "URI:ztm://m1/agent/abc,URI:ztm://m1/admin/abc", false, false}, /* two */
        {"n1", "URI:ztm://m1/root/abc", false, false},                       /* role */
        {"n1", "URI:ztm://M1/agent/abc", false, false},                      /* mesh */
        {"n1", "URI:ztm://m1/agent/ABC", false, false},                      /* id */
        {"n1", "URI:ztm://m1/agent/a/b", false, false},
        {"n1", "URI:ztm://m1/agent", false, false},
        {"n1", "URI:ztm://m1/agent/", false, false},
        {"n1", "URI:ztm:///agent/abc", false, false},
        {"n1", "URI:ZTM://m1/agent/abc", false, false},                      /* scheme case */
        {NULL, "URI:ztm://m1/agent/abc", false, false},                      /* no CN */
        {"bad name", "URI:ztm://m1/agent/abc", false, false},
        {"n1", "URI:ztm://m1/agent/abc", true, false},                       /* a CA */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        X509 *x = forge(k, cases[i].cn, cases[i].san, cases[i].is_ca);
        ztm_identity_t id;
        int r = ztm_identity_from_cert(x, &id);
        if ((r == 0) != cases[i].ok)
            fprintf(stderr, "identity case %zu (%s / %s): %d\n", i, cases[i].cn ? cases[i].cn : "-",
                    cases[i].san ? cases[i].san : "-", r);
        CHECK((r == 0) == cases[i].ok);
        if (!cases[i].ok)
            CHECK_INT(r, ZTM_CA_E_NOT_IDENTITY);
        else
            CHECK_STR(id.serial, "3039");
        /* the DER path agrees */
        uint8_t *der = NULL;
        int n = i2d_X509(x, &der);
        CHECK_INT(ztm_identity_from_der(der, (size_t)n, &id), r);
        if (n > 10)
            CHECK_INT(ztm_identity_from_der(der, (size_t)n - 1, &id), ZTM_CA_E_PARSE);
        OPENSSL_free(der);
        X509_free(x);
    }
    ztm_identity_t id;
    CHECK_INT(ztm_identity_from_cert(NULL, &id), ZTM_CA_E_NOT_IDENTITY);
    CHECK_INT(ztm_identity_from_pem("nope", 4, &id), ZTM_CA_E_PARSE);
    CHECK(strlen(ztm_ca_strerror(ZTM_CA_E_CSR_SIGNATURE)) > 0);
    EVP_PKEY_free(k);
}

int main(void)
{
    REQUIRE(mkdtemp(tmpdir));
    test_names();
    test_create_and_pin();
    test_load_export();
    test_issue();
    test_csr_refusals();
    test_key_files();
    test_identity_refusals();
    rmdir(tmpdir);
    TEST_END();
}
