/* ztm: one executable, dispatching to subcommands through a table. */
#include "controlplane/cli/cli.h"
#include "dataplane/runtime/log.h"

#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static int cmd_version(int argc, char **argv);
static int cmd_help(int argc, char **argv);

static const ztm_cli_command_t commands[] = {
    {"hub", ztm_cmd_hub, "run a hub: the control plane and the relay agents meet through", 0},
    {"controller", ztm_cmd_controller, "run the control plane alone (CA, invites, registry, API)", 0},
    {"ca", ztm_cmd_ca, "make the mesh CA and the first admin (init), or show it", 0},
    {"invite", ztm_cmd_invite, "print a one-time invite token for a new endpoint", 0},
    {"revoke", ztm_cmd_revoke, "revoke an endpoint's certificates", 0},
    {"get", ztm_cmd_get, "list endpoints or services", 0},
    {"join", ztm_cmd_join, "join a mesh with an invite token", 0},
    {"agent", ztm_cmd_agent, "run the endpoint agent (hub links, tunnels, local API)", 0},
    {"status", ztm_cmd_status, "show the agent's meshes, hub links and tunnels", 0},
    {"tunnel", ztm_cmd_tunnel, "export a local service, or import a mesh service to a local port", 0},
    {"leave", ztm_cmd_leave, "leave a mesh (delete its key, certificate and tunnels)", 0},
    {"watch", ztm_cmd_watch, "follow the mesh's changes as they happen", 0},
    {"relay", ztm_cmd_relay, "forward a TCP port to another address (L4 relay)", 0},
    {"h2-test", ztm_cmd_h2test, "HTTP/2 test service and client (tests, benchmarks)", 1},
    {"version", cmd_version, "print the version", 0},
    {"help", cmd_help, "show this help, or a command's help", 0},
};
#define N_COMMANDS (sizeof(commands) / sizeof(commands[0]))

int ztm_cli_usage_error(const char *cmd, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    fprintf(stderr, "ztm %s: error: %s\n", cmd, msg);
    return ZTM_EXIT_USAGE;
}

int ztm_cli_log_level(const char *cmd, const char *value)
{
    ztm_log_level_t lvl;
    if (!ztm_log_parse_level(value, &lvl))
        return ztm_cli_usage_error(cmd, "--log-level '%s': expected debug, info, warn or error", value);
    ztm_log_set_level(lvl);
    return 0;
}

int ztm_cli_bad_option(const char *cmd, int getopt_result, const char *opt)
{
    if (getopt_result == ':')
        return ztm_cli_usage_error(cmd, "%s needs a value (see 'ztm %s --help')", opt, cmd);
    /* An unknown letter inside a word ("-web"): getopt has not moved past
     * that word yet, so OPT is the word before it; name the letter. (For an
     * unknown long option getopt sets optopt to 0.) */
    if (optopt > 0 && optopt < 128 && (!opt || opt[0] != '-' || opt[1] != optopt))
        return ztm_cli_usage_error(cmd, "unknown option '-%c' (see 'ztm %s --help')", optopt, cmd);
    return ztm_cli_usage_error(cmd, "unknown option '%s' (see 'ztm %s --help')", opt, cmd);
}

int ztm_cli_log_format(const char *cmd, const char *value)
{
    if (!ztm_log_set_format(value))
        return ztm_cli_usage_error(cmd, "--log-format '%s': expected logfmt or json", value);
    return 0;
}

static void print_usage(FILE *f)
{
    fprintf(f, "ztm %s — a Zero Trust Mesh\n\nUsage: ztm <command> [options]\n\nCommands:\n",
            ZTM_VERSION);
    for (size_t i = 0; i < N_COMMANDS; i++)
        if (!commands[i].hidden)
            fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\nRun 'ztm <command> --help' for a command's options.\n");
}

static const ztm_cli_command_t *find_command(const char *name)
{
    for (size_t i = 0; i < N_COMMANDS; i++)
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    return NULL;
}

static int cmd_version(int argc, char **argv)
{
    if (argc > 1)
        return ztm_cli_usage_error("version", "unexpected argument '%s'", argv[1]);
    printf("ztm %s\n", ZTM_VERSION);
    return ZTM_EXIT_OK;
}

static int cmd_help(int argc, char **argv)
{
    if (argc > 1) {
        const ztm_cli_command_t *c = find_command(argv[1]);
        if (!c || c->run == cmd_help) {
            if (!c)
                return ztm_cli_usage_error("help", "unknown command '%s' (try 'ztm help')", argv[1]);
        } else {
            char *args[] = {argv[1], "--help", NULL};
            return c->run(2, args);
        }
    }
    print_usage(stdout);
    return ZTM_EXIT_OK;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        print_usage(stderr);
        return ZTM_EXIT_USAGE;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)
        return cmd_help(1, argv + 1);
    if (strcmp(argv[1], "--version") == 0)
        return cmd_version(1, argv + 1);
    const ztm_cli_command_t *c = find_command(argv[1]);
    if (!c) {
        fprintf(stderr, "ztm: error: unknown command '%s' (try 'ztm help')\n", argv[1]);
        return ZTM_EXIT_USAGE;
    }
    return c->run(argc - 1, argv + 1);
}
