/* The resolver: names are looked up off the worker (its timers keep firing
 * while a lookup takes 300 ms), literals and cached names answer at once
 * with the caller's port, a failed name answers its error at once for a
 * while, a cancelled lookup calls nobody, and a resolver freed with a
 * lookup in flight leaves the helper thread to finish and clean up. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <unistd.h>

#include "dataplane/runtime/resolver.h"
#include "dataplane/runtime/worker.h"
#include "tests/unit/check.h"

#define SLOW_NS (300 * ZTM_NS_PER_MS)

static ztm_resolver_t *res;
static ztm_timer_t beat, step_timer;
static unsigned beats, beats_at_answer, calls, cancelled_calls, step;
static uint64_t started_at, answered_at;
static int last_err;
static char last_addr[ZTM_ADDRSTRLEN];

static int fake_lookup(const char *host, ztm_addr_t *out, const char **why)
{
    if (strncmp(host, "slow", 4) == 0)
        usleep(SLOW_NS / 1000);
    if (strstr(host, "bad")) {
        *why = "no such name (test)";
        return -EINVAL;
    }
    memset(out, 0, sizeof(*out));
    struct sockaddr_in *in = (struct sockaddr_in *)&out->ss;
    in->sin_family = AF_INET;
    inet_pton(AF_INET, "127.0.0.2", &in->sin_addr);
    out->len = sizeof(*in);
    return 0;
}

static ztm_worker_t *W;

static void on_beat_real(ztm_timer_t *t)
{
    beats++;
    ztm_timer_arm(ztm_worker_timers(W), t, ztm_worker_now(W) + 10 * ZTM_NS_PER_MS);
}

static void next_step(void)
{
    ztm_timer_arm(ztm_worker_timers(W), &step_timer, ztm_worker_now(W));
}

static void on_answer(void *arg, int err, const ztm_addr_t *addr, const char *why)
{
    calls++;
    last_err = err;
    answered_at = ztm_worker_now(W);
    beats_at_answer = beats;
    if (addr)
        ztm_addr_format((const struct sockaddr *)&addr->ss, last_addr, sizeof(last_addr));
    else
        snprintf(last_addr, sizeof(last_addr), "%s", why ? why : "?");
    next_step();
}

static void on_cancelled(void *arg, int err, const ztm_addr_t *addr, const char *why)
{
    cancelled_calls++;
}

static void on_step(ztm_timer_t *t)
{
    ztm_addr_t a;
    const char *why = NULL;
    char buf[ZTM_ADDRSTRLEN];
    ztm_resolve_job_t *job = NULL;
    switch (step++) {
    case 0: /* literals and malformed addresses: at once, no thread */
        CHECK_EQ(ztm_resolve(res, "10.1.2.3:80", &a, &why, on_answer, NULL, NULL), 0);
        ztm_addr_format((const struct sockaddr *)&a.ss, buf, sizeof(buf));
        CHECK(strcmp(buf, "10.1.2.3:80") == 0);
        CHECK_EQ(ztm_resolve(res, "[::1]:443", &a, &why, on_answer, NULL, NULL), 0);
        CHECK_EQ(ztm_resolve(res, "nohost", &a, &why, on_answer, NULL, NULL), -EINVAL);
        CHECK_EQ(ztm_resolve(res, "1.2.3:80", &a, &why, on_answer, NULL, NULL), -EINVAL);
        CHECK_EQ(ztm_resolver_pending(res), 0);
        /* a slow name: the worker goes on */
        started_at = ztm_worker_now(W);
        beats = 0;
        CHECK_EQ(ztm_resolve(res, "slow.test:8080", &a, &why, on_answer, NULL, &job), -EINPROGRESS);
        CHECK(job != NULL);
        CHECK_EQ(ztm_resolver_pending(res), 1);
        break;
    case 1:
        CHECK_EQ(last_err, 0);
        CHECK(strcmp(last_addr, "127.0.0.2:8080") == 0);
        CHECK(answered_at - started_at >= SLOW_NS);
        /* 10 ms beats kept firing during the 300 ms lookup */
        CHECK(beats_at_answer >= 10);
        /* cached: at once, with this call's port */
        CHECK_EQ(ztm_resolve(res, "slow.test:81", &a, &why, on_answer, NULL, NULL), 0);
        ztm_addr_format((const struct sockaddr *)&a.ss, buf, sizeof(buf));
        CHECK(strcmp(buf, "127.0.0.2:81") == 0);
        /* a name that fails */
        CHECK_EQ(ztm_resolve(res, "bad.test:1", &a, &why, on_answer, NULL, NULL), -EINPROGRESS);
        break;
    case 2:
        CHECK(last_err < 0);
        CHECK(strcmp(last_addr, "no such name (test)") == 0);
        /* remembered for a while: at once */
        why = NULL;
        CHECK_EQ(ztm_resolve(res, "bad.test:2", &a, &why, on_answer, NULL, NULL), -EINVAL);
        CHECK(why && strcmp(why, "no such name (test)") == 0);
        /* cancelled: nobody is called */
        CHECK_EQ(ztm_resolve(res, "slow2.test:1", &a, &why, on_cancelled, NULL, &job),
                 -EINPROGRESS);
        ztm_resolve_cancel(job);
        /* and one that is still running when the resolver goes */
        CHECK_EQ(ztm_resolve(res, "slow3.test:1", &a, &why, on_cancelled, NULL, &job),
                 -EINPROGRESS);
        ztm_timer_arm(ztm_worker_timers(W), &step_timer,
                      ztm_worker_now(W) + SLOW_NS + 100 * ZTM_NS_PER_MS);
        break;
    case 3:
        /* slow2 is done (nobody called), slow3 runs in the thread now */
        CHECK_EQ(cancelled_calls, 0);
        ztm_engine_shutdown(ztm_worker_engine(W), 0);
        break;
    }
}

static int svc_start(ztm_worker_t *w, void *arg)
{
    W = w;
    int r = ztm_resolver_new(w, &res);
    if (r < 0)
        return r;
    ztm_resolver_set_fn(res, fake_lookup);
    ztm_timer_init(&beat, on_beat_real);
    ztm_timer_init(&step_timer, on_step);
    ztm_timer_arm(ztm_worker_timers(w), &beat, ztm_worker_now(w));
    next_step();
    return 0;
}

static void svc_stop(ztm_worker_t *w, void *arg)
{
    ztm_timer_cancel(ztm_worker_timers(w), &beat);
}

static void svc_finish(ztm_worker_t *w, void *arg)
{
    ztm_timer_cancel(ztm_worker_timers(w), &beat);
    ztm_resolver_free(res);
}

static const ztm_service_t svc = {
    .name = "resolver",
    .start = svc_start,
    .drain = svc_stop,
    .stop = svc_stop,
    .finish = svc_finish,
};

int main(void)
{
    ztm_engine_config_t cfg = {
        .workers = 1, .buf_count = 8, .buf_size = 4096, .drain_timeout_ns = 5 * ZTM_NS_PER_SEC};
    alarm(30);
    CHECK_EQ(ztm_engine_run(&cfg, &svc, NULL, NULL), 0);
    CHECK_EQ(step, 4);
    CHECK_EQ(calls, 2);
    CHECK_EQ(cancelled_calls, 0);
    /* let the helper thread finish slow3 and free what is left */
    usleep(SLOW_NS / 1000 + 100000);
    return check_done("resolver");
}
