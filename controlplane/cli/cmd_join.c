/* `ztm join TOKEN`: become an endpoint of a mesh. The key is made here and
 * never leaves this machine. We connect with server-only TLS, trust the CA
 * only if its key matches the invite's pin (so the one-time secret goes
 * nowhere else), send a CSR with the token, and keep the certificate and
 * the CA in the agent's state directory. */
#include <errno.h>
#include <getopt.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "controlplane/ca/ca.h"
#include "controlplane/ca/keys.h"
#include "controlplane/ca/token.h"
#include "controlplane/cli/cli.h"
#include "controlplane/cli/creds.h"
#include "controlplane/grpc/client.h"
#include "controlplane/store/file.h"
#include "dataplane/runtime/log.h"
#include "dataplane/tls/tls.h"
#include "ztm/v1/mesh.pb-c.h"

static const char usage[] =
    "Usage: ztm join TOKEN [--mesh NAME] [--as ENDPOINT] [--state DIR]\n"
    "\n"
    "Joins the mesh an invite token (from 'ztm invite') names: makes a key on this\n"
    "machine, checks that the hub's CA matches the token's pin, sends a signing\n"
    "request with the token and keeps the certificate. A token works once.\n"
    "\n"
    "  --mesh NAME    local name for this mesh (default: the mesh's ID)\n"
    "  --as ENDPOINT  the endpoint name; must be the one the invite was made for\n"
    "  --state DIR    the agent's state directory ($ZTM_STATE_DIR, else\n"
    "                 $XDG_STATE_HOME/ztm, else ~/.local/state/ztm)\n";

int ztm_agent_state_dir(char out[ZTM_PATH_MAX]);
int ztm_agent_state_dir(char out[ZTM_PATH_MAX])
{
    const char *d = getenv("ZTM_STATE_DIR");
    if (d && *d) {
        snprintf(out, ZTM_PATH_MAX, "%s", d);
        return 0;
    }
    d = getenv("XDG_STATE_HOME");
    if (d && *d) {
        snprintf(out, ZTM_PATH_MAX, "%s/ztm", d);
        return 0;
    }
    d = getenv("HOME");
    if (!d || !*d)
        return -ENOENT;
    snprintf(out, ZTM_PATH_MAX, "%s/.local/state/ztm", d);
    return 0;
}

static int read_text(const char *pem, size_t len, ztm_identity_t *id)
{
    return ztm_identity_from_pem(pem, len, id);
}

int ztm_cmd_join(int argc, char **argv)
{
    const char *cmd = "join";
    static const struct option opts[] = {{"mesh", required_argument, NULL, 'm'},
                                         {"as", required_argument, NULL, 'a'},
                                         {"state", required_argument, NULL, 's'},
                                         {"help", no_argument, NULL, 'h'},
                                         {0}};
    const char *mesh_name = NULL, *as = NULL, *state = NULL;
    opterr = 0;
    optind = 1;
    int o;
    while ((o = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (o) {
        case 'm':
            mesh_name = optarg;
            break;
        case 'a':
            as = optarg;
            break;
        case 's':
            state = optarg;
            break;
        case 'h':
            fputs(usage, stdout);
            return ZTM_EXIT_OK;
        default:
            return ztm_cli_bad_option(cmd, o, argv[optind - 1]);
        }
    }
    if (optind != argc - 1)
        return ztm_cli_usage_error(cmd, "expected one TOKEN (from 'ztm invite NAME')");
    const char *text = argv[optind];
    ztm_log_level_t lvl = ZTM_LOG_WARN;
    const char *env = getenv("ZTM_LOG_LEVEL");
    if (env)
        ztm_log_parse_level(env, &lvl);
    ztm_log_set_level(lvl);

    ztm_token_t tok;
    int r = ztm_token_decode(text, strlen(text), &tok);
    if (r < 0)
        return ztm_cli_usage_error(cmd, "the token is not usable: %s", ztm_token_strerror(r));
    if (ztm_token_check_expiry(&tok, (int64_t)time(NULL)) < 0)
        return ztm_cli_usage_error(cmd, "the token expired; ask for a new invite ('ztm invite %s')", tok.name);
    if (as && strcmp(as, tok.name) != 0)
        return ztm_cli_usage_error(cmd, "--as '%s': the invite is for '%s' (ask for an invite for '%s')", as,
                                   tok.name, as);
    if (!mesh_name)
        mesh_name = tok.mesh;
    if (!ztm_mesh_valid(mesh_name))
        return ztm_cli_usage_error(cmd, "--mesh '%s': use lower-case letters, digits and '-'", mesh_name);
    char base[ZTM_PATH_MAX], dir[ZTM_PATH_MAX + 128], path[ZTM_PATH_MAX + 192];
    if (state)
        snprintf(base, sizeof(base), "%s", state);
    else if (ztm_agent_state_dir(base) < 0)
        return ztm_cli_usage_error(cmd, "no HOME: pass --state DIR");
    snprintf(dir, sizeof(dir), "%s/meshes/%s", base, mesh_name);
    snprintf(path, sizeof(path), "%s/cert.pem", dir);
    struct stat st;
    if (stat(path, &st) == 0)
        return ztm_cli_usage_error(cmd, "already joined a mesh called '%s' (in %s); pick another --mesh NAME", mesh_name,
                                   dir);

    /* Our key, made here. */
    EVP_PKEY *key = NULL;
    char *csr = NULL;
    size_t csr_len = 0;
    int ret = ZTM_EXIT_FAIL;
    Ztm__V1__JoinResponse *resp = NULL;
    ztm_grpc_result_t res = {0};
    if (ztm_key_generate(&key) < 0 || ztm_csr_create(key, tok.name, &csr, &csr_len) < 0) {
        fprintf(stderr, "ztm join: error: cannot make a key\n");
        goto out;
    }
    Ztm__V1__JoinRequest req = ZTM__V1__JOIN_REQUEST__INIT;
    req.token = (char *)text;
    req.csr_pem = csr;
    req.agent_version = (char *)ZTM_VERSION;
    size_t len = protobuf_c_message_get_packed_size(&req.base);
    uint8_t *buf = malloc(len);
    if (!buf)
        goto out;
    protobuf_c_message_pack(&req.base, buf);
    /* Each hub of the token in turn, until one answers. */
    for (size_t i = 0; i < tok.n_hubs; i++) {
        ztm_grpc_target_t t = {.ca_pin = tok.pin, .timeout_ns = 15000000000ull};
        char host[ZTM_TOKEN_HUB_MAX + 1];
        const char *why;
        if (ztm_addr_parse(tok.hubs[i], &t.addr, &why) < 0) {
            fprintf(stderr, "ztm join: hub %s: %s\n", tok.hubs[i], why);
            continue;
        }
        snprintf(host, sizeof(host), "%s", tok.hubs[i]);
        char *colon = strrchr(host, ':');
        if (colon)
            *colon = 0;
        t.sni = host[0] == '[' ? NULL : host;
        ztm_grpc_result_clear(&res);
        r = ztm_grpc_call(&t, "/ztm.v1.Mesh/Join", buf, len, &res);
        if (r == 0 && res.status == ZTM_GRPC_OK)
            break;
        fprintf(stderr, "ztm join: hub %s: %s: %s\n", tok.hubs[i],
                r < 0 ? "error" : ztm_grpc_status_name(res.status), r < 0 ? ztm_tls_strerror(r) : res.message);
        if (r == 0 && res.status != ZTM_GRPC_UNAVAILABLE && res.status != ZTM_GRPC_DEADLINE_EXCEEDED)
            break; /* the hub answered: another would answer the same */
    }
    free(buf);
    if (res.status != ZTM_GRPC_OK || !res.body) {
        fprintf(stderr, "ztm join: error: not joined%s\n",
                res.status == ZTM_GRPC_UNAVAILABLE
                    ? " (no hub of the token could be reached, or its CA does not match the token's pin)"
                    : "");
        goto out;
    }
    resp = ztm__v1__join_response__unpack(NULL, res.len, res.body);
    if (!resp || !resp->certificate_pem || !resp->ca_certificate_pem || !resp->endpoint) {
        fprintf(stderr, "ztm join: error: the hub's answer does not parse\n");
        goto out;
    }
    /* Trust nothing the answer says that the pin does not vouch for. */
    uint8_t pin[ZTM_PIN_LEN];
    ztm_identity_t id;
    if (ztm_pin_of_pem(resp->ca_certificate_pem, strlen(resp->ca_certificate_pem), pin) < 0 ||
        !ztm_pin_equal(pin, tok.pin) ||
        read_text(resp->certificate_pem, strlen(resp->certificate_pem), &id) < 0 ||
        strcmp(id.name, tok.name) != 0 || strcmp(id.mesh, tok.mesh) != 0) {
        fprintf(stderr, "ztm join: error: the certificate or CA returned does not match the token\n");
        goto out;
    }
    /* The state directory itself is private too (the agent's socket and
     * every mesh's key live under it), not only the mesh's folder. */
    if ((r = ztm_mkdirs(base, 0700)) < 0 || (r = ztm_mkdirs(dir, 0700)) < 0) {
        fprintf(stderr, "ztm join: error: cannot create %s: %s\n", dir, strerror(-r));
        goto out;
    }
    char conf[2048];
    int cl = snprintf(conf, sizeof(conf), "# written by ztm join\nmesh=%s\nname=%s\nid=%s\nrole=%s\n", tok.mesh,
                      id.name, id.id, ztm_role_name(id.role));
    for (size_t i = 0; i < tok.n_hubs && cl > 0 && (size_t)cl < sizeof(conf); i++)
        cl += snprintf(conf + cl, sizeof(conf) - (size_t)cl, "hub=%s\n", tok.hubs[i]);
    snprintf(path, sizeof(path), "%s/key.pem", dir);
    if ((r = ztm_key_save_file(key, path)) < 0)
        goto write_failed;
    snprintf(path, sizeof(path), "%s/ca.pem", dir);
    if ((r = ztm_pem_save_file(path, resp->ca_certificate_pem, strlen(resp->ca_certificate_pem))) < 0)
        goto write_failed;
    snprintf(path, sizeof(path), "%s/mesh.conf", dir);
    if ((r = ztm_file_write_atomic(path, conf, (size_t)cl, 0600)) < 0)
        goto write_failed;
    /* The certificate last: its presence means "joined". */
    snprintf(path, sizeof(path), "%s/cert.pem", dir);
    if ((r = ztm_pem_save_file(path, resp->certificate_pem, strlen(resp->certificate_pem))) < 0)
        goto write_failed;
    time_t exp = (time_t)id.not_after;
    char when[64];
    strftime(when, sizeof(when), "%Y-%m-%d %H:%M UTC", gmtime(&exp));
    printf("joined mesh %s as %s (%s, endpoint %s); certificate valid until %s\ncredentials: %s\n",
           tok.mesh, id.name, ztm_role_name(id.role), id.id, when, dir);
    if (ztm_agentcli_reload(state) == 0)
        printf("the running agent has picked the mesh up (ztm status)\n");
    else
        printf("start the agent to connect: ztm agent%s%s\n", state ? " --state " : "", state ? state : "");
    ret = ZTM_EXIT_OK;
    goto out;
write_failed:
    fprintf(stderr, "ztm join: error: cannot write %s: %s\n", path, r < -4095 ? "I/O error" : strerror(-r));
out:
    if (resp)
        ztm__v1__join_response__free_unpacked(resp, NULL);
    ztm_grpc_result_clear(&res);
    free(csr);
    EVP_PKEY_free(key);
    return ret;
}
