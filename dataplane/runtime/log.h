/* Logging: one line per event on stderr, logfmt (default) or JSON lines.
 *
 * Every line carries ts, level, the thread's tag (worker=N or main) and an
 * event name; the caller adds "key=value" pairs. A line is formatted into a
 * stack buffer and written with one write(2), so lines from several threads
 * never interleave. Calls below the current level cost one compare. */
#ifndef ZTM_RUNTIME_LOG_H
#define ZTM_RUNTIME_LOG_H

#include <stdbool.h>

typedef enum {
    ZTM_LOG_DEBUG = 0,
    ZTM_LOG_INFO = 1,
    ZTM_LOG_WARN = 2,
    ZTM_LOG_ERROR = 3,
} ztm_log_level_t;

extern ztm_log_level_t ztm_log_level_;

/* Sets the threshold. Thread-safe enough: set once before threads start. */
void ztm_log_set_level(ztm_log_level_t level);
/* "debug|info|warn|error" -> level; false (and *out untouched) if unknown. */
bool ztm_log_parse_level(const char *s, ztm_log_level_t *out);
/* "logfmt|json"; false if unknown. */
bool ztm_log_set_format(const char *s);
/* Tags every line this thread logs with worker=ID (-1: main). */
void ztm_log_set_worker(int id);

/* Logs EVENT at LEVEL. FMT formats the rest as space-separated key=value
 * pairs; values that may hold spaces must be quoted by the caller ("%s" in
 * quotes), e.g. ztm_log(ZTM_LOG_WARN, "conn.error", "fd=%d error=\"%s\"", fd,
 * strerror(e)). In JSON mode the pairs are converted to members. */
void ztm_log_(ztm_log_level_t level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define ztm_log(level, event, ...)                                                   \
    do {                                                                           \
        if ((level) >= ztm_log_level_)                                             \
            ztm_log_((level), (event), __VA_ARGS__);                               \
    } while (0)

/* The one startup line that scripts wait for (the bound address): printed
 * at info whatever the level, so `--log-level warn` still says where we are. */
#define ztm_log_ready(event, ...) ztm_log_(ZTM_LOG_INFO, (event), __VA_ARGS__)

#define ztm_log_enabled(level) ((level) >= ztm_log_level_)

#endif
