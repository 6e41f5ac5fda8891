/* Strict parsers for command-line values: the whole string must parse and
 * lie in range, or the parser returns false and the caller names the value. */
#ifndef ZTM_CLI_FLAGS_H
#define ZTM_CLI_FLAGS_H

#include <stdbool.h>
#include <stdint.h>

#define ZTM_NS_PER_SEC_CLI 1000000000ull

/* Decimal whole number in [MIN, MAX]. */
bool ztm_flag_ulong(const char *s, unsigned long min, unsigned long max, unsigned long *out);
/* Seconds, decimals allowed ("0.5"), at most a year; 0 only if ALLOW_ZERO. */
bool ztm_flag_seconds(const char *s, bool allow_zero, uint64_t *out_ns);

#endif
