/* controlplane/store, crash safety: a child commits in a loop and reports
 * each acknowledged commit through a pipe; the parent kills it with SIGKILL
 * at a random moment, then loads the store and checks that the file parses
 * and every acknowledged record is there with its value, that the
 * compare-and-swap counter matches the records, and that the change feed
 * has one event per commit. Repeated over many rounds, each round
 * continuing the same store. */
#include "controlplane/store/store.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "test.h"

#define ROUNDS 25

static char top[] = "/tmp/ztm-test-store-crash-XXXXXX";
static char dir[600];

static void value_of(uint32_t i, char *buf, size_t *len)
{
    /* sizes vary so that the file grows and shrinks unevenly */
    size_t n = 8 + (i * 7919u) % 1500;
    for (size_t k = 0; k < n; k++)
        buf[k] = (char)('a' + (i + k) % 26);
    *len = n;
}

static uint32_t read_counter(ztm_store_t *s)
{
    void *v;
    size_t len;
    if (ztm_store_get(s, ZTM_STORE_META, "count", &v, &len) < 0)
        return 0;
    uint32_t n = (uint32_t)strtoul(v, NULL, 10);
    free(v);
    return n;
}

/* The child: commit record i, the counter i+1 (CAS on i) and an event, in
 * one commit; then acknowledge i. Runs until killed. */
static void child(int ack_fd)
{
    ztm_store_options_t o = {.dir = dir, .retention = 64};
    ztm_store_t *s;
    int r;
    while ((r = ztm_store_open_embedded(&o, &s)) == -EBUSY)
        usleep(1000);
    if (r < 0)
        _exit(3);
    uint32_t i = read_counter(s);
    char value[2048], key[32], expect[16], next[16];
    for (;; i++) {
        size_t len;
        value_of(i, value, &len);
        snprintf(key, sizeof(key), "e%08u", i);
        snprintf(expect, sizeof(expect), "%u", i);
        snprintf(next, sizeof(next), "%u", i + 1);
        ztm_store_op_t ops[2] = {
            {.type = ZTM_STORE_PUT, .kind = ZTM_STORE_ENDPOINT, .key = key, .value = value,
             .len = len, .cond = ZTM_STORE_IF_ABSENT},
            {.type = ZTM_STORE_PUT, .kind = ZTM_STORE_META, .key = "count", .value = next,
             .len = strlen(next), .cond = i ? ZTM_STORE_IF_EQUAL : ZTM_STORE_IF_ABSENT,
             .expect = expect, .expect_len = strlen(expect)},
        };
        ztm_store_event_t ev = {.topic = 1, .data = key, .len = strlen(key)};
        if (ztm_store_commit(s, ops, 2, &ev, 1, NULL) < 0)
            _exit(4);
        if (write(ack_fd, &i, sizeof(i)) != sizeof(i))
            _exit(5);
    }
}

typedef struct {
    uint64_t expect;
    int bad;
} feed_check_t;

static int check_event(void *arg, const ztm_store_event_t *ev)
{
    feed_check_t *f = arg;
    char key[32];
    snprintf(key, sizeof(key), "e%08u", (uint32_t)(ev->version - 1));
    if (ev->version != f->expect || ev->len != strlen(key) || memcmp(ev->data, key, ev->len))
        f->bad++;
    f->expect++;
    return 0;
}

int main(void)
{
    REQUIRE(mkdtemp(top));
    snprintf(dir, sizeof(dir), "%s/state", top);
    srand((unsigned)time(NULL) ^ (unsigned)getpid());
    uint32_t acked_total = 0;
    int kills_mid_commit = 0;

    for (int round = 0; round < ROUNDS; round++) {
        int p[2];
        REQUIRE(pipe(p) == 0);
        pid_t pid = fork();
        REQUIRE(pid >= 0);
        if (pid == 0) {
            close(p[0]);
            child(p[1]);
        }
        close(p[1]);
        /* let it run 1-30 ms, then kill it wherever it is */
        usleep(1000 + (useconds_t)(rand() % 30000));
        kill(pid, SIGKILL);
        int status;
        waitpid(pid, &status, 0);
        if (!WIFSIGNALED(status)) {
            fprintf(stderr, "round %d: child exited with %d\n", round, WEXITSTATUS(status));
            test_failures++;
        }
        uint32_t i, max_ack = 0;
        bool any = false;
        while (read(p[0], &i, sizeof(i)) == sizeof(i)) {
            max_ack = i;
            any = true;
        }
        close(p[0]);

        ztm_store_options_t o = {.dir = dir, .retention = 64};
        ztm_store_t *s;
        int r = ztm_store_open_embedded(&o, &s);
        if (r < 0) {
            fprintf(stderr, "round %d: store does not load: %s\n", round, ztm_store_strerror(r));
            test_failures++;
            break;
        }
        uint32_t count = read_counter(s);
        /* every acknowledged commit is there; at most one more (done, not yet acked) */
        if (any && count < max_ack + 1) {
            fprintf(stderr, "round %d: acked %u but only %u records\n", round, max_ack + 1, count);
            test_failures++;
        }
        if (any && count > max_ack + 2) {
            fprintf(stderr, "round %d: %u records, acked %u\n", round, count, max_ack + 1);
            test_failures++;
        }
        kills_mid_commit += any && count == max_ack + 2;
        if (any)
            acked_total = max_ack + 1;
        for (uint32_t k = 0; k < count; k++) {
            char key[32], want[2048];
            size_t want_len, len;
            void *v;
            snprintf(key, sizeof(key), "e%08u", k);
            value_of(k, want, &want_len);
            if (ztm_store_get(s, ZTM_STORE_ENDPOINT, key, &v, &len) < 0 || len != want_len ||
                memcmp(v, want, len) != 0) {
                fprintf(stderr, "round %d: record %s missing or wrong\n", round, key);
                test_failures++;
            } else {
                free(v);
            }
        }
        /* the feed: one event per commit, versions = commits */
        CHECK(ztm_store_version(s) == count);
        uint64_t from = count > 64 ? count - 64 : 0;
        feed_check_t f = {.expect = from + 1};
        CHECK_INT(ztm_store_read_events(s, from, 0, check_event, &f), 0);
        CHECK_INT(f.bad, 0);
        CHECK(f.expect == (uint64_t)count + 1);
        ztm_store_close(s);
    }
    fprintf(stderr, "%d rounds, %u commits acknowledged, %d kills between commit and ack\n",
            ROUNDS, acked_total, kills_mid_commit);
    CHECK(acked_total > 0);
    char cmd[700];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", top);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", top);
    TEST_END();
}
