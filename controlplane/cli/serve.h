/* The server side of the CLI: `ztm controller` and `ztm hub` are one
 * program with two faces. Both keep the store and the mesh CA in --state,
 * certify themselves (role hub), write the first admin's CLI credentials,
 * and serve the control API over mutual TLS on one worker; the hub also
 * serves the relay (dataplane/hub/relay.h) on the same port. */
#ifndef ZTM_CLI_SERVE_H
#define ZTM_CLI_SERVE_H

#include <stdbool.h>

typedef struct {
    const char *cmd;    /* "controller" | "hub": messages, log events ("hub.listen"),
                           our certificate's files (STATE/CMD.pem) and endpoint name */
    const char *usage;  /* --help */
    const char *listen; /* --listen's default */
    bool relay;         /* the relay's routes; --name may carry a port; --accept-timeout */
} ztm_serve_kind_t;

/* Parses ARGV (argv[0] is the subcommand) and runs until SIGTERM/SIGINT.
 * Returns the exit code (ZTM_EXIT_*). */
int ztm_serve_main(const ztm_serve_kind_t *k, int argc, char **argv);

#endif
