/* The server side of the CLI: `ztm controller` and `ztm hub` are one
 * program with two faces. Both keep the store and the mesh CA in --state,
 * certify themselves (role hub), write the first admin's CLI credentials,
 * and serve the control API over mutual TLS; the hub also serves the relay
 * (dataplane/hub/relay.h) on the same port.
 *
 * Threads: --workers data-plane workers (1..N), each with its own
 * SO_REUSEPORT listener and TLS context, serving every connection it takes;
 * and the control-plane worker (0), which owns the store, the CA and the
 * API (and the hub's endpoint registry) and accepts nothing. They meet only
 * by message: calls forwarded to worker 0 (controlplane/grpc/forward.h),
 * revocation snapshots posted back (controlplane/services/revset.h). */
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
