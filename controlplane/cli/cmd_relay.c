/* `ztm relay`: parse and check the options, bind, run the relay. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "controlplane/cli/cli.h"
#include "controlplane/cli/flags.h"
#include "dataplane/runtime/log.h"
#include "dataplane/tunnel/relay.h"

static const char usage[] =
    "Usage: ztm relay --listen ADDR --to ADDR [options]\n"
    "\n"
    "Forwards every TCP connection accepted on --listen to --to, on per-core\n"
    "io_uring workers. ADDR is HOST:PORT or [IPV6]:PORT (port 0 on --listen\n"
    "picks a free port; the real address is logged as event=relay.listen).\n"
    "\n"
    "Options:\n"
    "  --listen ADDR           address to accept connections on (required)\n"
    "  --to ADDR               target address (required; names are resolved once)\n"
    "  --workers N             worker threads, one per core (default: CPUs available)\n"
    "  --max-conns N           concurrent connections; more are closed at once (default 10000)\n"
    "  --idle-timeout SECS     close a connection idle this long, 0 = never (default 300)\n"
    "  --connect-timeout SECS  deadline for connecting to the target (default 10)\n"
    "  --drain-timeout SECS    on SIGTERM/SIGINT, time live connections get (default 30)\n"
    "  --buffer-size BYTES     receive buffer size, 4096..1048576 (default 65536)\n"
    "  --log-level LEVEL       debug|info|warn|error (default info)\n"
    "  --log-format FORMAT     logfmt|json (default logfmt)\n"
    "  -h, --help              show this help\n"
    "\n"
    "Signals: SIGTERM/SIGINT stop accepting and drain; a second signal stops at once.\n";

int ztm_cmd_relay(int argc, char **argv)
{
    enum { O_LISTEN = 256, O_TO, O_WORKERS, O_MAX, O_IDLE, O_CONNECT, O_DRAIN, O_BUF, O_LEVEL, O_FORMAT };
    static const struct option opts[] = {
        {"listen", required_argument, NULL, O_LISTEN},
        {"to", required_argument, NULL, O_TO},
        {"workers", required_argument, NULL, O_WORKERS},
        {"max-conns", required_argument, NULL, O_MAX},
        {"idle-timeout", required_argument, NULL, O_IDLE},
        {"connect-timeout", required_argument, NULL, O_CONNECT},
        {"drain-timeout", required_argument, NULL, O_DRAIN},
        {"buffer-size", required_argument, NULL, O_BUF},
        {"log-level", required_argument, NULL, O_LEVEL},
        {"log-format", required_argument, NULL, O_FORMAT},
        {"help", no_argument, NULL, 'h'},
        {0},
    };
    const char *cmd = "relay";
    const char *listen_s = NULL, *to_s = NULL;
    ztm_relay_config_t cfg = {
        .max_conns = 10000,
        .idle_timeout_ns = 300 * ZTM_NS_PER_SEC_CLI,
        .connect_timeout_ns = 10 * ZTM_NS_PER_SEC_CLI,
        .drain_timeout_ns = 30 * ZTM_NS_PER_SEC_CLI,
        .buf_size = 65536,
    };
    unsigned long v;

    opterr = 0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case O_LISTEN:
            listen_s = optarg;
            break;
        case O_TO:
            to_s = optarg;
            break;
        case O_WORKERS:
            if (!ztm_flag_ulong(optarg, 1, 1024, &v))
                return ztm_cli_usage_error(cmd, "--workers '%s': expected a whole number from 1 to 1024", optarg);
            cfg.workers = (unsigned)v;
            break;
        case O_MAX:
            if (!ztm_flag_ulong(optarg, 1, 10000000, &v))
                return ztm_cli_usage_error(cmd, "--max-conns '%s': expected a whole number from 1 to 10000000", optarg);
            cfg.max_conns = (unsigned)v;
            break;
        case O_IDLE:
            if (!ztm_flag_seconds(optarg, true, &cfg.idle_timeout_ns))
                return ztm_cli_usage_error(cmd, "--idle-timeout '%s': expected seconds >= 0 (e.g. 300 or 0.5)", optarg);
            break;
        case O_CONNECT:
            if (!ztm_flag_seconds(optarg, false, &cfg.connect_timeout_ns))
                return ztm_cli_usage_error(cmd, "--connect-timeout '%s': expected seconds > 0", optarg);
            break;
        case O_DRAIN:
            if (!ztm_flag_seconds(optarg, true, &cfg.drain_timeout_ns))
                return ztm_cli_usage_error(cmd, "--drain-timeout '%s': expected seconds >= 0", optarg);
            break;
        case O_BUF:
            if (!ztm_flag_ulong(optarg, 4096, 1048576, &v))
                return ztm_cli_usage_error(cmd, "--buffer-size '%s': expected bytes from 4096 to 1048576", optarg);
            cfg.buf_size = (uint32_t)v;
            break;
        case O_LEVEL:
        case O_FORMAT: {
            int e = c == O_LEVEL ? ztm_cli_log_level(cmd, optarg) : ztm_cli_log_format(cmd, optarg);
            if (e)
                return e;
            break;
        }
        case 'h':
            fputs(usage, stdout);
            return ZTM_EXIT_OK;
        default:
            return ztm_cli_bad_option(cmd, c, argv[optind - 1]);
        }
    }
    if (optind < argc)
        return ztm_cli_usage_error(cmd, "unexpected argument '%s' (see 'ztm relay --help')", argv[optind]);
    if (!listen_s)
        return ztm_cli_usage_error(cmd, "--listen ADDR is required (e.g. --listen 127.0.0.1:8080)");
    if (!to_s)
        return ztm_cli_usage_error(cmd, "--to ADDR is required (e.g. --to 127.0.0.1:80)");

    const char *why;
    if (ztm_addr_parse(listen_s, &cfg.listen, &why) < 0)
        return ztm_cli_usage_error(cmd, "--listen '%s': %s", listen_s, why);
    if (ztm_addr_parse(to_s, &cfg.target, &why) < 0)
        return ztm_cli_usage_error(cmd, "--to '%s': %s", to_s, why);
    cfg.target_name = to_s;

    ztm_relay_t *r;
    int err = ztm_relay_open(&cfg, &r);
    if (err < 0) {
        if (err == -EADDRINUSE)
            return ztm_cli_usage_error(cmd, "--listen '%s': address already in use (is another program listening there?)", listen_s);
        if (err == -EACCES)
            return ztm_cli_usage_error(cmd, "--listen '%s': permission denied (ports below 1024 need privileges)", listen_s);
        if (err == -EADDRNOTAVAIL)
            return ztm_cli_usage_error(cmd, "--listen '%s': address not available on this machine", listen_s);
        return ztm_cli_usage_error(cmd, "--listen '%s': %s", listen_s, strerror(-err));
    }
    err = ztm_relay_run(r);
    ztm_relay_free(r);
    if (err < 0) {
        fprintf(stderr, "ztm relay: error: %s\n", strerror(-err));
        return ZTM_EXIT_FAIL;
    }
    return ZTM_EXIT_OK;
}
