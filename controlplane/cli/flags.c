/* Strict value parsers for the command line; see flags.h. */
#include "controlplane/cli/flags.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>

bool ztm_flag_ulong(const char *s, unsigned long min, unsigned long max, unsigned long *out)
{
    if (!s || *s < '0' || *s > '9')
        return false;
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || *end || v < min || v > max)
        return false;
    *out = v;
    return true;
}

bool ztm_flag_seconds(const char *s, bool allow_zero, uint64_t *out_ns)
{
    if (!s || ((*s < '0' || *s > '9') && *s != '.'))
        return false;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || !isfinite(v) || v < 0 || v > 365.0 * 86400)
        return false;
    if (v == 0 && !allow_zero)
        return false;
    *out_ns = (uint64_t)(v * 1e9);
    return true;
}
