/* In-process cost of control-API calls, without a transport: what the
 * server adds per call on top of TLS and HTTP/2. Prints one line per case
 * with the median of 3 runs:
 *   get_endpoint   GetEndpoint through ztm_api_unary (auth, decode, store read, encode)
 *   join           Join (token check, CSR verify, certificate signing, one
 *                  durable store commit with fsync each)
 *   join_grouped   the same, 32 joins per store group (one fsync per group),
 *                  as a server answering all requests of a loop turn does
 * Usage: api_bench [STATE_DIR] — the store's directory decides what an
 * fsync costs (try a tmpfs path to see the CPU side alone). */
#include "controlplane/ca/keys.h"
#include "controlplane/services/api.h"
#include "controlplane/store/file.h"
#include "dataplane/runtime/log.h"
#include "ztm/v1/mesh.pb-c.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    char tmpl[] = "/tmp/ztm-bench-api-XXXXXX";
    const char *dir = argc > 1 ? argv[1] : mkdtemp(tmpl);
    ztm_log_set_level(ZTM_LOG_WARN);
    ztm_store_options_t o = {.dir = dir};
    ztm_store_t *st;
    ztm_ca_t *ca;
    ztm_api_t *api;
    static const char *const hubs[] = {"127.0.0.1:7443"};
    ztm_api_config_t cfg = {.hubs = hubs, .n_hubs = 1};
    if (ztm_store_open(&o, &st) || ztm_api_ca_open(st, "bench", &ca, NULL) ||
        ztm_api_new(&cfg, st, ca, &api)) {
        fprintf(stderr, "api_bench: cannot set up in %s\n", dir);
        return 1;
    }
    EVP_PKEY *key;
    char *csr;
    size_t csr_len;
    ztm_key_generate(&key);
    ztm_csr_create(key, NULL, &csr, &csr_len);
    ztm_ca_issued_t is;
    char id[ZTM_ID_MAX + 1];
    ztm_identity_t admin;
    char name[32];
    snprintf(name, sizeof(name), "admin-%d", getpid());
    if (ztm_api_enroll(api, name, ZTM_ROLE_ADMIN, csr, NULL, 0, NULL, 0, &is, id) ||
        ztm_identity_from_pem(is.pem, is.pem_len, &admin)) {
        fprintf(stderr, "api_bench: enrol failed\n");
        return 1;
    }

    /* GetEndpoint */
    Ztm__V1__GetEndpointRequest g = ZTM__V1__GET_ENDPOINT_REQUEST__INIT;
    g.key_case = ZTM__V1__GET_ENDPOINT_REQUEST__KEY_ID;
    g.id = id;
    uint8_t greq[128];
    size_t glen = ztm__v1__get_endpoint_request__pack(&g, greq);
    const ztm_api_method_t *get = ztm_api_find("/ztm.v1.Mesh/GetEndpoint", 24);
    double rates[3];
    for (int run = 0; run < 3; run++) {
        int n = 200000;
        double t0 = now_s();
        for (int i = 0; i < n; i++) {
            ztm_api_reply_t r;
            ztm_api_unary(api, get, &admin, greq, glen, &r);
            if (r.status != ZTM_GRPC_OK)
                return 1;
            ztm_api_reply_clear(&r);
        }
        rates[run] = n / (now_s() - t0);
    }
    qsort(rates, 3, sizeof(double), cmp_double);
    printf("get_endpoint %.0f calls/s (median of 3)\n", rates[1]);

    /* Join: invites and CSRs made beforehand (the joiner's side) */
    const ztm_api_method_t *inv = ztm_api_find("/ztm.v1.Mesh/Invite", 19);
    const ztm_api_method_t *join = ztm_api_find("/ztm.v1.Mesh/Join", 17);
    enum { N_JOIN = 400, GROUP = 32 };
    for (int grouped = 0; grouped < 2; grouped++) {
    for (int run = 0; run < 3; run++) {
        static uint8_t *reqs[N_JOIN];
        static size_t lens[N_JOIN];
        for (int i = 0; i < N_JOIN; i++) {
            Ztm__V1__InviteRequest ir = ZTM__V1__INVITE_REQUEST__INIT;
            char nm[48];
            snprintf(nm, sizeof(nm), "n%d-%d-%d-%d", getpid(), grouped, run, i);
            ir.name = nm;
            uint8_t buf[256];
            size_t n = ztm__v1__invite_request__pack(&ir, buf);
            ztm_api_reply_t r;
            ztm_api_unary(api, inv, &admin, buf, n, &r);
            Ztm__V1__InviteResponse *resp = ztm__v1__invite_response__unpack(NULL, r.len, r.body);
            Ztm__V1__JoinRequest jr = ZTM__V1__JOIN_REQUEST__INIT;
            jr.token = resp->token;
            jr.csr_pem = csr;
            lens[i] = ztm__v1__join_request__get_packed_size(&jr);
            reqs[i] = malloc(lens[i]);
            ztm__v1__join_request__pack(&jr, reqs[i]);
            ztm__v1__invite_response__free_unpacked(resp, NULL);
            ztm_api_reply_clear(&r);
        }
        double t0 = now_s();
        for (int i = 0; i < N_JOIN; i++) {
            if (grouped && i % GROUP == 0)
                ztm_store_group_begin(st);
            ztm_api_reply_t r;
            ztm_api_unary(api, join, NULL, reqs[i], lens[i], &r);
            if (r.status != ZTM_GRPC_OK) {
                fprintf(stderr, "join: %s\n", r.message);
                return 1;
            }
            ztm_api_reply_clear(&r);
            free(reqs[i]);
            if (grouped && (i % GROUP == GROUP - 1 || i == N_JOIN - 1) && ztm_store_group_end(st))
                return 1;
        }
        rates[run] = N_JOIN / (now_s() - t0);
    }
    qsort(rates, 3, sizeof(double), cmp_double);
    printf("%s %.0f joins/s (median of 3; store in %s)\n", grouped ? "join_grouped" : "join",
           rates[1], dir);
    }

    ztm_ca_issued_clear(&is);
    free(csr);
    EVP_PKEY_free(key);
    ztm_api_free(api);
    ztm_ca_free(ca);
    ztm_store_close(st);
    if (argc <= 1) {
        char cmd[256];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
        if (system(cmd) != 0)
            return 1;
    }
    return 0;
}
