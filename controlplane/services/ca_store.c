/* The mesh CA in the store: loaded at start, or made at first start. The
 * CA's key lives in the durable store (mode 0600 file, or Redis for hub
 * clusters, so that every hub of a cluster can sign); it is never logged. */
#include "controlplane/services/internal.h"

#include <errno.h>
#include <stdlib.h>

#include "controlplane/store/file.h"
#include "dataplane/runtime/log.h"

int ztm_api_ca_open(ztm_store_t *store, const char *mesh, ztm_ca_t **out, bool *created)
{
    void *cert = NULL, *key = NULL;
    size_t cert_len = 0, key_len = 0;
    int rc = ztm_store_get(store, ZTM_STORE_CA, "cert", &cert, &cert_len);
    int rk = ztm_store_get(store, ZTM_STORE_CA, "key", &key, &key_len);
    int ret;
    if (rc == 0 && rk == 0) {
        ret = ztm_ca_load(cert, cert_len, key, key_len, out);
        if (created && ret == 0)
            *created = false;
        goto out;
    }
    if (rc != -ENOENT || rk != -ENOENT) {
        ret = rc < 0 && rc != -ENOENT ? rc : rk < 0 && rk != -ENOENT ? rk : ZTM_STORE_E_CORRUPT;
        if (ret == ZTM_STORE_E_CORRUPT)
            ztm_log(ZTM_LOG_ERROR, "ca.incomplete", "have_cert=%d have_key=%d", rc == 0, rk == 0);
        goto out;
    }

    ztm_ca_t *ca;
    if ((ret = ztm_ca_create(mesh, 0, 0, &ca)) < 0)
        goto out;
    char *c = NULL, *k = NULL;
    size_t cl = 0, kl = 0;
    if ((ret = ztm_ca_export(ca, &c, &cl, &k, &kl)) == 0) {
        ztm_store_op_t ops[2] = {
            {.type = ZTM_STORE_PUT, .kind = ZTM_STORE_CA, .key = "cert", .value = c, .len = cl,
             .cond = ZTM_STORE_IF_ABSENT},
            {.type = ZTM_STORE_PUT, .kind = ZTM_STORE_CA, .key = "key", .value = k, .len = kl,
             .cond = ZTM_STORE_IF_ABSENT},
        };
        ret = ztm_store_commit(store, ops, 2, NULL, 0, NULL);
    }
    free(c);
    ztm_file_free_secret(k, kl);
    if (ret < 0) {
        ztm_ca_free(ca);
        goto out;
    }
    uint8_t pin[ZTM_PIN_LEN];
    char hex[ZTM_PIN_HEX_LEN + 1];
    ztm_ca_pin(ca, pin);
    ztm_pin_to_hex(pin, hex);
    ztm_log(ZTM_LOG_INFO, "ca.created", "mesh=%s pin=sha256:%s", mesh, hex);
    *out = ca;
    if (created)
        *created = true;
out:
    free(cert);
    ztm_file_free_secret(key, key_len);
    return ret;
}
