/* `ztm controller`: the control-plane service alone (split deployments;
 * `ztm hub` is the same plus the relay). See serve.h. */
#include "controlplane/cli/cli.h"
#include "controlplane/cli/serve.h"

static const char usage[] =
    "Usage: ztm controller --state DIR [--listen ADDR] [--name HOST] [--mesh ID] [--workers N]\n"
    "\n"
    "Runs the control plane alone: the mesh CA, invites and joins, the\n"
    "endpoint and service registry and the watch stream, as a gRPC API over\n"
    "mutual TLS. At first start it makes the mesh CA in DIR and writes the\n"
    "first admin's credentials to the CLI's config directory, so that\n"
    "`ztm invite` and `ztm get` work on this machine at once.\n"
    "\n"
    "Options:\n"
    "  --state DIR        state directory (created 0700; one process at a time)\n"
    "  --listen ADDR      where to serve (default 127.0.0.1:7443)\n"
    "  --name HOST        name (or address) clients use to reach us; our certificate\n"
    "                     is valid for it and for localhost/127.0.0.1 (default localhost)\n"
    "  --mesh ID          the mesh's ID when the CA is made (default: mesh)\n"
    "  --workers N        worker threads serving connections (default: CPUs\n"
    "                     available); the store's own thread runs the calls\n"
    "  --drain-timeout SECS  --log-level LEVEL  --log-format FORMAT\n";

static const ztm_serve_kind_t controller = {
    .cmd = "controller",
    .usage = usage,
    .listen = "127.0.0.1:7443",
    .relay = false,
};

int ztm_cmd_controller(int argc, char **argv)
{
    return ztm_serve_main(&controller, argc, argv);
}
