/* `ztm h2-test server|client`: the HTTP/2 test service and client on the
 * secure transport (hidden: for tests and benchmarks). */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "controlplane/cli/cli.h"
#include "controlplane/cli/flags.h"
#include "dataplane/runtime/log.h"
#include "dataplane/testsvc/testsvc.h"

static const char usage[] =
    "Usage: ztm h2-test server --listen ADDR [TLS options] [--workers N]\n"
    "       ztm h2-test client --connect ADDR [TLS options] [--requests N] [--streams K]\n"
    "                          [--get-size BYTES | --post-size BYTES] [--timeout SECS]\n"
    "\n"
    "An HTTP/2 service and client on ztm's secure transport, for tests and\n"
    "benchmarks. The server answers GET /bytes/N with N pattern bytes (byte i\n"
    "is i % 251), echoes any POST body, and GET / with \"ok\". The client runs N\n"
    "requests, K at a time, checks every byte, and prints one result line.\n"
    "\n"
    "TLS options (without --cert: plaintext HTTP/2 with prior knowledge):\n"
    "  --cert FILE --key FILE --ca FILE   our certificate and key; the CA bundle\n"
    "                                     the peer's certificate must chain to\n"
    "  --sni NAME                         client: server name to send\n"
    "  --ktls auto|on|off                 record layer in the kernel (default off)\n"
    "  --client-cert required|optional    server: optional lets clients without a\n"
    "                                     certificate in (h2load); default required\n"
    "Other:\n"
    "  --workers N  --drain-timeout SECS  --log-level LEVEL  --log-format FORMAT\n";

int ztm_cmd_h2test(int argc, char **argv)
{
    const char *cmd = "h2-test";
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        fputs(usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? ZTM_EXIT_USAGE : ZTM_EXIT_OK;
    }
    bool server = strcmp(argv[1], "server") == 0;
    if (!server && strcmp(argv[1], "client") != 0)
        return ztm_cli_usage_error(cmd, "expected 'server' or 'client', not '%s'", argv[1]);

    enum { O_ADDR = 256, O_CERT, O_KEY, O_CA, O_SNI, O_KTLS, O_WORKERS, O_DRAIN, O_REQ, O_STREAMS,
           O_GET, O_POST, O_TIMEOUT, O_LEVEL, O_FORMAT, O_CLIENT_CERT };
    static const struct option opts[] = {
        {"listen", required_argument, NULL, O_ADDR},
        {"connect", required_argument, NULL, O_ADDR},
        {"cert", required_argument, NULL, O_CERT},
        {"key", required_argument, NULL, O_KEY},
        {"ca", required_argument, NULL, O_CA},
        {"sni", required_argument, NULL, O_SNI},
        {"ktls", required_argument, NULL, O_KTLS},
        {"workers", required_argument, NULL, O_WORKERS},
        {"drain-timeout", required_argument, NULL, O_DRAIN},
        {"requests", required_argument, NULL, O_REQ},
        {"streams", required_argument, NULL, O_STREAMS},
        {"get-size", required_argument, NULL, O_GET},
        {"post-size", required_argument, NULL, O_POST},
        {"timeout", required_argument, NULL, O_TIMEOUT},
        {"log-level", required_argument, NULL, O_LEVEL},
        {"log-format", required_argument, NULL, O_FORMAT},
        {"client-cert", required_argument, NULL, O_CLIENT_CERT},
        {"help", no_argument, NULL, 'h'},
        {0},
    };
    ztm_testsvc_config_t cfg = {
        .drain_timeout_ns = 10 * ZTM_NS_PER_SEC_CLI,
        .requests = 1,
        .streams = 1,
        .size = 1024,
        .timeout_ns = 60 * ZTM_NS_PER_SEC_CLI,
    };
    const char *addr = NULL;
    unsigned long v;
    opterr = 0;
    optind = 2;
    int c;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case O_ADDR:
            addr = optarg;
            break;
        case O_CERT:
            cfg.cert_file = optarg;
            break;
        case O_KEY:
            cfg.key_file = optarg;
            break;
        case O_CA:
            cfg.ca_file = optarg;
            break;
        case O_SNI:
            cfg.sni = optarg;
            break;
        case O_KTLS:
            if (!ztm_ktls_parse_mode(optarg, &cfg.ktls))
                return ztm_cli_usage_error(cmd, "--ktls '%s': expected auto, on or off", optarg);
            break;
        case O_WORKERS:
            if (!ztm_flag_ulong(optarg, 1, 1024, &v))
                return ztm_cli_usage_error(cmd, "--workers '%s': expected 1 to 1024", optarg);
            cfg.workers = (unsigned)v;
            break;
        case O_DRAIN:
            if (!ztm_flag_seconds(optarg, true, &cfg.drain_timeout_ns))
                return ztm_cli_usage_error(cmd, "--drain-timeout '%s': expected seconds >= 0", optarg);
            break;
        case O_REQ:
            if (!ztm_flag_ulong(optarg, 1, 100000000, &v))
                return ztm_cli_usage_error(cmd, "--requests '%s': expected 1 to 100000000", optarg);
            cfg.requests = (unsigned)v;
            break;
        case O_STREAMS:
            if (!ztm_flag_ulong(optarg, 1, 1000, &v))
                return ztm_cli_usage_error(cmd, "--streams '%s': expected 1 to 1000", optarg);
            cfg.streams = (unsigned)v;
            break;
        case O_GET:
        case O_POST:
            if (!ztm_flag_ulong(optarg, 0, 1ul << 40, &v))
                return ztm_cli_usage_error(cmd, "%s '%s': expected bytes", argv[optind - 1], optarg);
            cfg.size = v;
            cfg.post = c == O_POST;
            break;
        case O_TIMEOUT:
            if (!ztm_flag_seconds(optarg, false, &cfg.timeout_ns))
                return ztm_cli_usage_error(cmd, "--timeout '%s': expected seconds > 0", optarg);
            break;
        case O_LEVEL:
        case O_FORMAT: {
            int e = c == O_LEVEL ? ztm_cli_log_level(cmd, optarg) : ztm_cli_log_format(cmd, optarg);
            if (e)
                return e;
            break;
        }
        case O_CLIENT_CERT:
            if (strcmp(optarg, "required") != 0 && strcmp(optarg, "optional") != 0)
                return ztm_cli_usage_error(cmd, "--client-cert '%s': expected required or optional", optarg);
            cfg.client_cert_optional = strcmp(optarg, "optional") == 0;
            break;
        case 'h':
            fputs(usage, stdout);
            return ZTM_EXIT_OK;
        default:
            return ztm_cli_bad_option(cmd, c, argv[optind - 1]);
        }
    }
    if (optind < argc)
        return ztm_cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
    if (!addr)
        return ztm_cli_usage_error(cmd, server ? "--listen ADDR is required" : "--connect ADDR is required");
    if (cfg.cert_file && (!cfg.key_file || !cfg.ca_file))
        return ztm_cli_usage_error(cmd, "--cert needs --key and --ca too");
    if (!cfg.cert_file && (cfg.key_file || cfg.ca_file))
        return ztm_cli_usage_error(cmd, "--key and --ca need --cert");
    const char *why;
    if (ztm_addr_parse(addr, &cfg.addr, &why) < 0)
        return ztm_cli_usage_error(cmd, "%s '%s': %s", server ? "--listen" : "--connect", addr, why);

    int r = server ? ztm_testsvc_server(&cfg) : ztm_testsvc_client(&cfg);
    if (r == -EADDRINUSE)
        return ztm_cli_usage_error(cmd, "--listen '%s': address already in use", addr);
    if (r == ZTM_TLS_E_CONFIG)
        return ztm_cli_usage_error(cmd, "unusable certificate, key or CA file (see the log line above)");
    if (r < 0) {
        fprintf(stderr, "ztm h2-test: error: %s\n", ztm_tls_strerror(r));
        return ZTM_EXIT_FAIL;
    }
    return r ? ZTM_EXIT_FAIL : ZTM_EXIT_OK;
}
