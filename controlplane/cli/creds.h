/* Credentials on disk: the CLI's own (the admin identity under the user's
 * config directory) and a server's (its certificate in its state
 * directory). Keys are made here, never leave the machine, and are written
 * atomically with mode 0600. */
#ifndef ZTM_CLI_CREDS_H
#define ZTM_CLI_CREDS_H

#include <stddef.h>

#include "controlplane/ca/identity.h"
#include "controlplane/services/api.h"

#define ZTM_PATH_MAX 4096

/* The CLI's config directory: $ZTM_CONFIG_DIR, else $XDG_CONFIG_HOME/ztm,
 * else $HOME/.config/ztm. Returns 0 or -ENOENT (no HOME). */
int ztm_creds_cli_dir(char out[ZTM_PATH_MAX]);

/* Makes a key and a CSR, has API enrol NAME with ROLE (hubs: DNS and IP
 * names), and writes PREFIX.pem (certificate, 0644), PREFIX.key (0600) and
 * DIR/ca.pem. Returns 0, -EEXIST (NAME taken), or an error of the CA, store
 * or file layer; *WHY names the step that failed. */
int ztm_creds_enroll(ztm_api_t *api, ztm_ca_t *ca, const char *dir, const char *prefix,
                     const char *name, ztm_role_t role, const char *const *dns, size_t n_dns,
                     const char *const *ips, size_t n_ips, const char **why);

/* Writes DIR/cli.conf: where the CLI finds the control API. */
int ztm_creds_write_cli_conf(const char *dir, const char *controller);
/* Reads the controller address from DIR/cli.conf into OUT. */
int ztm_creds_read_cli_conf(const char *dir, char *out, size_t cap);

/* mkdir -p with MODE for the last component. Returns 0 or -errno. */
int ztm_mkdirs(const char *path, mode_t mode);

#endif
