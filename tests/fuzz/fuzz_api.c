/* Fuzz target: the control API's request handling (controlplane/services)
 * on arbitrary request bytes — every method's decoder and handler, called
 * as nobody, an admin, an agent and a hub. The first byte picks the method,
 * the second the caller. Replies must be well-formed: OK with a body that
 * decodes as the method's response, or an error with a message. The store
 * lives under /dev/shm when it exists (the handlers commit, and fsync). */
#include "controlplane/ca/keys.h"
#include "controlplane/services/api.h"
#include "dataplane/runtime/log.h"

#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "fuzz.h"

static const char *const paths[] = {
    "/ztm.v1.Mesh/Invite",          "/ztm.v1.Mesh/Join",          "/ztm.v1.Mesh/Renew",
    "/ztm.v1.Mesh/Revoke",          "/ztm.v1.Mesh/ListEndpoints", "/ztm.v1.Mesh/GetEndpoint",
    "/ztm.v1.Services/Publish",     "/ztm.v1.Services/Unpublish", "/ztm.v1.Services/List",
    "/ztm.v1.Services/SetPolicy",   "/ztm.v1.Hubs/Register",      "/ztm.v1.Hubs/Heartbeat",
    "/ztm.v1.Hubs/List",            "/ztm.v1.Watch/Subscribe",    "/grpc.health.v1.Health/Check",
};
#define N_PATHS (sizeof(paths) / sizeof(paths[0]))

static ztm_api_t *api;
static ztm_identity_t callers[3]; /* admin, agent, hub */

static void enroll(const char *name, ztm_role_t role, ztm_identity_t *out)
{
    EVP_PKEY *key;
    char *csr;
    size_t len;
    FUZZ_ASSERT(ztm_key_generate(&key) == 0 && ztm_csr_create(key, name, &csr, &len) == 0);
    ztm_ca_issued_t is;
    char id[ZTM_ID_MAX + 1];
    static const char *const dns[] = {"localhost"};
    FUZZ_ASSERT(ztm_api_enroll(api, name, role, csr, role == ZTM_ROLE_HUB ? dns : NULL,
                               role == ZTM_ROLE_HUB, NULL, 0, &is, id) == 0);
    FUZZ_ASSERT(ztm_identity_from_pem(is.pem, is.pem_len, out) == 0);
    ztm_ca_issued_clear(&is);
    free(csr);
    EVP_PKEY_free(key);
}

static void setup(void)
{
    char dir[64];
    snprintf(dir, sizeof(dir), "%s/ztm-fuzz-api-XXXXXX",
             access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
    FUZZ_ASSERT(mkdtemp(dir) != NULL);
    ztm_log_set_level(ZTM_LOG_ERROR);
    ztm_store_options_t o = {.dir = dir, .retention = 64};
    ztm_store_t *st;
    ztm_ca_t *ca;
    static const char *const hubs[] = {"127.0.0.1:7443"};
    ztm_api_config_t cfg = {.hubs = hubs, .n_hubs = 1};
    FUZZ_ASSERT(ztm_store_open(&o, &st) == 0 && ztm_api_ca_open(st, "fuzz", &ca, NULL) == 0 &&
                ztm_api_new(&cfg, st, ca, &api) == 0);
    enroll("admin", ZTM_ROLE_ADMIN, &callers[0]);
    enroll("agent", ZTM_ROLE_AGENT, &callers[1]);
    enroll("hub", ZTM_ROLE_HUB, &callers[2]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!api)
        setup();
    if (size < 2)
        return 0;
    const ztm_api_method_t *m = ztm_api_find(paths[data[0] % N_PATHS], strlen(paths[data[0] % N_PATHS]));
    FUZZ_ASSERT(m);
    const ztm_identity_t *caller = data[1] % 4 == 3 ? NULL : &callers[data[1] % 4];
    ztm_api_reply_t r;
    if (ztm_api_streaming(m)) {
        ztm_api_watch_t *w = ztm_api_watch_open(api, m, caller, data + 2, size - 2, &r);
        FUZZ_ASSERT((w != NULL) == (r.status == ZTM_GRPC_OK));
        for (int i = 0; w && i < 8; i++) {
            uint8_t *body;
            size_t len;
            int n = ztm_api_watch_next(w, &body, &len, &r);
            if (n <= 0)
                break;
            free(body);
        }
        ztm_api_watch_close(w);
        ztm_api_reply_clear(&r);
        return 0;
    }
    ztm_api_unary(api, m, caller, data + 2, size - 2, &r);
    FUZZ_ASSERT(r.status < ZTM_GRPC_STATUS_COUNT);
    if (r.status == ZTM_GRPC_OK)
        FUZZ_ASSERT(r.body != NULL);
    else
        FUZZ_ASSERT(r.message[0] != 0 && r.body == NULL);
    ztm_api_reply_clear(&r);
    return 0;
}
