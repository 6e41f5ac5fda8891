/* `ztm hub`: the control plane and the relay in one process, on one port.
 * Agents dial it, keep their Events stream on it, and meet each other's
 * sessions through it. See serve.h and dataplane/hub/relay.h. */
#include "controlplane/cli/cli.h"
#include "controlplane/cli/serve.h"

static const char usage[] =
    "Usage: ztm hub --state DIR [--listen ADDR] [--name HOST[:PORT]] [--mesh ID] [--workers N]\n"
    "\n"
    "Runs a hub: the mesh's control plane (CA, invites and joins, registry,\n"
    "watch stream) and the relay that agents dial out to and meet each other\n"
    "through, on one mutual-TLS port. The relay sees ciphertext only: each\n"
    "pair of agents runs its own TLS session through it. At first start it\n"
    "makes the mesh CA in DIR and writes the first admin's credentials to the\n"
    "CLI's config directory; then `ztm invite NAME` prints a token that\n"
    "`ztm join TOKEN` uses on the new endpoint.\n"
    "\n"
    "Options:\n"
    "  --state DIR          state directory (created 0700; one process at a time)\n"
    "  --listen ADDR        where to serve (default 0.0.0.0:7443)\n"
    "  --name HOST[:PORT]   the public name (or IPv4 address) agents dial: invite\n"
    "                       tokens carry it and our certificate is valid for HOST\n"
    "                       (and localhost/127.0.0.1); PORT defaults to the bound\n"
    "                       port (default: localhost)\n"
    "  --mesh ID            the mesh's ID when the CA is made (default: mesh)\n"
    "  --accept-timeout SECS  how long an opened session waits for the peer's\n"
    "                       accept before 504 (default 10)\n"
    "  --workers N          data-plane worker threads, each with its own listener\n"
    "                       (default: CPUs available); the control plane runs on\n"
    "                       one more\n"
    "  --drain-timeout SECS  --log-level LEVEL  --log-format FORMAT\n";

static const ztm_serve_kind_t hub = {
    .cmd = "hub",
    .usage = usage,
    .listen = "0.0.0.0:7443",
    .relay = true,
};

int ztm_cmd_hub(int argc, char **argv)
{
    return ztm_serve_main(&hub, argc, argv);
}
