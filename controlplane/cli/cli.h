/* The `ztm` command line: a table of subcommands, each a function taking the
 * arguments after its name. Exit codes: 0 ok, 1 runtime failure, 2 usage or
 * bad input (one line on stderr naming the input and what to do). */
#ifndef ZTM_CLI_CLI_H
#define ZTM_CLI_CLI_H

#define ZTM_EXIT_OK 0
#define ZTM_EXIT_FAIL 1
#define ZTM_EXIT_USAGE 2

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv); /* argv[0] is the subcommand's name */
    const char *summary;
    int hidden;
} ztm_cli_command_t;

/* Prints "ztm CMD: error: MESSAGE" on stderr; returns ZTM_EXIT_USAGE. */
int ztm_cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* --log-level VALUE / --log-format VALUE, shared by the long-running
 * commands: applies it, or returns the usage exit code with one line. */
int ztm_cli_log_level(const char *cmd, const char *value);
/* getopt_long's ':' (OPT lacks its value) or an unknown OPT, as the one
 * usage line each gets, pointing at 'ztm CMD --help'. Returns the exit code. */
int ztm_cli_bad_option(const char *cmd, int getopt_result, const char *opt);
int ztm_cli_log_format(const char *cmd, const char *value);

int ztm_cmd_relay(int argc, char **argv);
int ztm_cmd_h2test(int argc, char **argv);
int ztm_cmd_controller(int argc, char **argv);
int ztm_cmd_hub(int argc, char **argv);
int ztm_cmd_invite(int argc, char **argv);
int ztm_cmd_revoke(int argc, char **argv);
int ztm_cmd_get(int argc, char **argv);
int ztm_cmd_ca(int argc, char **argv);
int ztm_cmd_watch(int argc, char **argv);
int ztm_cmd_join(int argc, char **argv);
int ztm_cmd_agent(int argc, char **argv);
int ztm_cmd_status(int argc, char **argv);
int ztm_cmd_tunnel(int argc, char **argv);
int ztm_cmd_leave(int argc, char **argv);
/* `ztm get tunnels ...`: the agent's tunnels (ARGV[0] is "tunnels"). */
int ztm_agentcli_get_tunnels(int argc, char **argv);
/* Tells the agent of STATE (NULL: the default) to pick up new meshes; 0 if
 * one answered. */
int ztm_agentcli_reload(const char *state);

#endif
