#include "controlplane/cli/cli.h"
int ztm_cmd_relay(int argc, char **argv) { (void)argc; (void)argv; return ztm_cli_usage_error("relay", "not built yet"); }
