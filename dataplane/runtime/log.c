/* Logging for every thread of the process; see log.h. */
#include "dataplane/runtime/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

ztm_log_level_t ztm_log_level_ = ZTM_LOG_INFO;
static bool log_json;
static __thread int log_worker = -1;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void ztm_log_set_level(ztm_log_level_t level)
{
    ztm_log_level_ = level;
}

bool ztm_log_parse_level(const char *s, ztm_log_level_t *out)
{
    for (unsigned i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *out = (ztm_log_level_t)i;
            return true;
        }
    }
    return false;
}

bool ztm_log_set_format(const char *s)
{
    if (strcmp(s, "logfmt") == 0)
        log_json = false;
    else if (strcmp(s, "json") == 0)
        log_json = true;
    else
        return false;
    return true;
}

void ztm_log_set_worker(int id)
{
    log_worker = id;
}

/* Appends the logfmt pairs in SRC to DST as JSON members. Values are either
 * bare tokens or double-quoted strings (as the callers write them). */
static size_t pairs_to_json(char *dst, size_t cap, const char *src)
{
    size_t n = 0;
    const char *p = src;
#define PUT(c)                                                                     \
    do {                                                                           \
        if (n + 1 < cap)                                                           \
            dst[n++] = (c);                                                        \
    } while (0)
    while (*p) {
        while (*p == ' ')
            p++;
        if (!*p)
            break;
        const char *k = p;
        while (*p && *p != '=' && *p != ' ')
            p++;
        PUT(',');
        PUT('"');
        for (const char *q = k; q < p; q++)
            PUT(*q);
        PUT('"');
        PUT(':');
        if (*p != '=') {
            PUT('t');
            PUT('r');
            PUT('u');
            PUT('e');
            continue;
        }
        p++;
        PUT('"');
        if (*p == '"') {
            p++;
            while (*p && *p != '"') {
                if (*p == '\\' && p[1])
                    PUT(*p++);
                PUT(*p++);
            }
            if (*p == '"')
                p++;
        } else {
            while (*p && *p != ' ')
                PUT(*p++);
        }
        PUT('"');
    }
#undef PUT
    dst[n] = 0;
    return n;
}

void ztm_log_(ztm_log_level_t level, const char *event, const char *fmt, ...)
{
    char pairs[1536];
    char line[2048];
    struct timespec ts;
    struct tm tm;
    char when[64];

    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pairs, sizeof(pairs), fmt, ap);
    va_end(ap);

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    snprintf(when, sizeof(when), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ts.tv_nsec / 1000000));

    char who[16];
    if (log_worker >= 0)
        snprintf(who, sizeof(who), "%d", log_worker);
    else
        snprintf(who, sizeof(who), "main");

    int n;
    if (log_json) {
        char members[1700];
        pairs_to_json(members, sizeof(members), pairs);
        n = snprintf(line, sizeof(line), "{\"ts\":\"%s\",\"level\":\"%s\",\"worker\":\"%s\",\"event\":\"%s\"%s}\n",
                     when, level_names[level], who, event, members);
    } else {
        n = snprintf(line, sizeof(line), "ts=%s level=%s worker=%s event=%s%s%s\n", when,
                     level_names[level], who, event, pairs[0] ? " " : "", pairs);
    }
    if (n < 0)
        return;
    if ((size_t)n >= sizeof(line)) {
        n = sizeof(line) - 1;
        line[n - 1] = '\n';
    }
    ssize_t r = write(STDERR_FILENO, line, (size_t)n);
    (void)r;
}
