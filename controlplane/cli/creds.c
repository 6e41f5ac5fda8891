/* Credentials on disk; see creds.h. */
#include "controlplane/cli/creds.h"

#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "controlplane/ca/ca.h"
#include "controlplane/ca/keys.h"
#include "controlplane/store/file.h"

int ztm_mkdirs(const char *path, mode_t mode)
{
    char tmp[ZTM_PATH_MAX];
    if (snprintf(tmp, sizeof(tmp), "%s", path) >= (int)sizeof(tmp))
        return -ENAMETOOLONG;
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = 0;
        if (mkdir(tmp, 0755) < 0 && errno != EEXIST)
            return -errno;
        *p = '/';
    }
    if (mkdir(tmp, mode) < 0 && errno != EEXIST)
        return -errno;
    return 0;
}

int ztm_creds_cli_dir(char out[ZTM_PATH_MAX])
{
    const char *d = getenv("ZTM_CONFIG_DIR");
    if (d && *d) {
        snprintf(out, ZTM_PATH_MAX, "%s", d);
        return 0;
    }
    d = getenv("XDG_CONFIG_HOME");
    if (d && *d) {
        snprintf(out, ZTM_PATH_MAX, "%s/ztm", d);
        return 0;
    }
    d = getenv("HOME");
    if (!d || !*d)
        return -ENOENT;
    snprintf(out, ZTM_PATH_MAX, "%s/.config/ztm", d);
    return 0;
}

int ztm_creds_enroll(ztm_api_t *api, ztm_ca_t *ca, const char *dir, const char *prefix,
                     const char *name, ztm_role_t role, const char *const *dns, size_t n_dns,
                     const char *const *ips, size_t n_ips, const char **why)
{
    EVP_PKEY *key = NULL;
    char *csr = NULL, *ca_pem = NULL;
    size_t csr_len = 0, ca_len = 0;
    ztm_ca_issued_t issued = {0};
    char id[ZTM_ID_MAX + 1];
    char path[ZTM_PATH_MAX + 64];
    int r;

    *why = "making a key";
    if ((r = ztm_key_generate(&key)) < 0)
        goto Exit;
    *why = "making a certificate request";
    if ((r = ztm_csr_create(key, name, &csr, &csr_len)) < 0)
        goto Exit;
    *why = "enrolling";
    if ((r = ztm_api_enroll(api, name, role, csr, dns, n_dns, ips, n_ips, &issued, id)) < 0)
        goto Exit;
    *why = "creating the directory";
    if ((r = ztm_mkdirs(dir, 0700)) < 0)
        goto Exit;
    *why = "writing the key";
    snprintf(path, sizeof(path), "%s/%s.key", dir, prefix);
    if ((r = ztm_key_save_file(key, path)) < 0)
        goto Exit;
    *why = "writing the CA certificate";
    if ((r = ztm_ca_export(ca, &ca_pem, &ca_len, NULL, NULL)) < 0)
        goto Exit;
    *why = "writing the certificate";
    snprintf(path, sizeof(path), "%s/%s.pem", dir, prefix);
    if (role == ZTM_ROLE_HUB) {
        /* A server presents its chain with the CA: a joiner, which has no CA
         * yet, checks the CA's pin from its invite before sending the secret. */
        size_t n = issued.pem_len + ca_len;
        char *chain = malloc(n + 1);
        if (!chain) {
            r = -ENOMEM;
            goto Exit;
        }
        memcpy(chain, issued.pem, issued.pem_len);
        memcpy(chain + issued.pem_len, ca_pem, ca_len);
        chain[n] = 0;
        r = ztm_pem_save_file(path, chain, n);
        free(chain);
    } else {
        r = ztm_pem_save_file(path, issued.pem, issued.pem_len);
    }
    if (r < 0)
        goto Exit;
    snprintf(path, sizeof(path), "%s/ca.pem", dir);
    r = ztm_pem_save_file(path, ca_pem, ca_len);
Exit:
    free(ca_pem);
    free(csr);
    ztm_ca_issued_clear(&issued);
    EVP_PKEY_free(key);
    return r;
}

int ztm_creds_write_cli_conf(const char *dir, const char *controller)
{
    char path[ZTM_PATH_MAX + 64], body[512];
    int n = snprintf(body, sizeof(body), "# written by ztm; the control API the CLI talks to\ncontroller=%s\n",
                     controller);
    if (n < 0 || (size_t)n >= sizeof(body))
        return -ENAMETOOLONG;
    int r = ztm_mkdirs(dir, 0700);
    if (r < 0)
        return r;
    snprintf(path, sizeof(path), "%s/cli.conf", dir);
    return ztm_file_write_atomic(path, body, (size_t)n, 0600);
}

int ztm_creds_read_cli_conf(const char *dir, char *out, size_t cap)
{
    char path[ZTM_PATH_MAX + 64], line[512];
    snprintf(path, sizeof(path), "%s/cli.conf", dir);
    FILE *f = fopen(path, "r");
    if (!f)
        return -errno;
    int r = -ENOENT;
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, "controller=", 11) != 0)
            continue;
        line[strcspn(line, "\r\n")] = 0;
        snprintf(out, cap, "%s", line + 11);
        r = 0;
    }
    fclose(f);
    return r;
}
