/* controlplane/store, embedded backend: records, conditional atomic
 * commits, listing and paging, the change feed (versions, resume,
 * retention), subscribers, persistence across reopen, the directory lock,
 * refusal of torn or damaged files, rollback when the disk write fails,
 * and soft state with TTLs and counters on a fake clock. */
#include "controlplane/store/file.h"
#include "controlplane/store/store.h"

#include <errno.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test.h"

static char top[] = "/tmp/ztm-test-store-XXXXXX";
static char dir[600];
static int64_t fake_now = 1000;

static int64_t fake_clock(void *arg)
{
    return fake_now;
}

static ztm_store_t *open_store(size_t retention)
{
    ztm_store_options_t o = {.dir = dir, .retention = retention, .clock_ms = fake_clock};
    ztm_store_t *s = NULL;
    int r = ztm_store_open_embedded(&o, &s);
    if (r < 0)
        fprintf(stderr, "open: %s\n", ztm_store_strerror(r));
    REQUIRE(r == 0);
    return s;
}

static int try_open(ztm_store_t **s)
{
    ztm_store_options_t o = {.dir = dir, .clock_ms = fake_clock};
    return ztm_store_open_embedded(&o, s);
}

static void rm_state(void)
{
    char cmd[700];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    REQUIRE(system(cmd) == 0);
}

static char *get_str(ztm_store_t *s, ztm_store_kind_t kind, const char *key)
{
    void *v = NULL;
    size_t len;
    if (ztm_store_get(s, kind, key, &v, &len) < 0)
        return NULL;
    return v;
}

static void db_path(char *out, size_t cap)
{
    snprintf(out, cap, "%s/store.db", dir);
}

static void test_records(void)
{
    rm_state();
    ztm_store_t *s = open_store(0);
    CHECK_STR(ztm_store_backend(s), "embedded");
    struct stat st;
    CHECK(stat(dir, &st) == 0 && (st.st_mode & 0777) == 0700);

    CHECK_INT(ztm_store_put(s, ZTM_STORE_ENDPOINT, "e1", "one", 3), 0);
    CHECK_INT(ztm_store_put(s, ZTM_STORE_ENDPOINT, "e2", "two", 3), 0);
    CHECK_INT(ztm_store_put(s, ZTM_STORE_SERVICE, "tcp/web", "", 0), 0);
    char *v = get_str(s, ZTM_STORE_ENDPOINT, "e1");
    CHECK_STR(v, "one");
    free(v);
    CHECK_INT(ztm_store_put(s, ZTM_STORE_ENDPOINT, "e1", "uno", 3), 0);
    v = get_str(s, ZTM_STORE_ENDPOINT, "e1");
    CHECK_STR(v, "uno");
    free(v);
    v = get_str(s, ZTM_STORE_SERVICE, "tcp/web");
    CHECK_STR(v, ""); /* empty values exist */
    free(v);
    void *p;
    size_t len;
    CHECK_INT(ztm_store_get(s, ZTM_STORE_ENDPOINT, "nope", &p, &len), -ENOENT);
    CHECK_INT(ztm_store_get(s, ZTM_STORE_SERVICE, "e1", &p, &len), -ENOENT); /* kinds apart */
    CHECK_INT(ztm_store_del(s, ZTM_STORE_ENDPOINT, "e2"), 0);
    CHECK_INT(ztm_store_get(s, ZTM_STORE_ENDPOINT, "e2", &p, &len), -ENOENT);
    CHECK_INT(ztm_store_del(s, ZTM_STORE_ENDPOINT, "e2"), 0); /* absent: fine */

    /* binary values survive */
    uint8_t bin[300];
    for (int i = 0; i < 300; i++)
        bin[i] = (uint8_t)i;
    CHECK_INT(ztm_store_put(s, ZTM_STORE_CA, "key", bin, sizeof(bin)), 0);

    /* argument checks */
    char long_key[300];
    memset(long_key, 'k', 256);
    long_key[256] = 0;
    CHECK_INT(ztm_store_put(s, ZTM_STORE_ENDPOINT, long_key, "x", 1), -EINVAL);
    long_key[255] = 0;
    CHECK_INT(ztm_store_put(s, ZTM_STORE_ENDPOINT, long_key, "x", 1), 0);
    CHECK_INT(ztm_store_put(s, ZTM_STORE_ENDPOINT, "", "x", 1), -EINVAL);
    CHECK_INT(ztm_store_put(s, ZTM_STORE_ENDPOINT, "a b", "x", 1), -EINVAL);
    CHECK_INT(ztm_store_put(s, ZTM_STORE_ENDPOINT, "a\n", "x", 1), -EINVAL);
    CHECK_INT(ztm_store_put(s, ZTM_STORE_ENDPOINT, NULL, "x", 1), -EINVAL);
    CHECK_INT(ztm_store_put(s, 0, "k", "x", 1), -EINVAL);
    CHECK_INT(ztm_store_put(s, 16, "k", "x", 1), -EINVAL);
    CHECK_INT(ztm_store_put(s, ZTM_STORE_ENDPOINT, "k", NULL, 1), -EINVAL);
    void *big = calloc(1, ZTM_STORE_VALUE_MAX + 1);
    CHECK_INT(ztm_store_put(s, ZTM_STORE_ENDPOINT, "k", big, ZTM_STORE_VALUE_MAX + 1), -EMSGSIZE);
    free(big);
    CHECK_INT(ztm_store_get(s, ZTM_STORE_ENDPOINT, "a b", &p, &len), -EINVAL);

    ztm_store_close(s);

    /* the generic opener: Redis is not built yet, the embedded store is */
    ztm_store_options_t ro = {.dir = dir, .redis_url = "redis://127.0.0.1:6379", .mesh = "m1"};
    CHECK_INT(ztm_store_open(&ro, &s), -ENOTSUP);
    CHECK_INT(ztm_store_open(NULL, &s), -EINVAL);
    ztm_store_options_t eo = {.dir = dir};
    CHECK_INT(ztm_store_open(&eo, &s), 0);
    ztm_store_close(s);

    /* reopen: everything is there; the file is private */
    s = open_store(0);
    v = get_str(s, ZTM_STORE_ENDPOINT, "e1");
    CHECK_STR(v, "uno");
    free(v);
    CHECK_INT(ztm_store_get(s, ZTM_STORE_ENDPOINT, "e2", &p, &len), -ENOENT);
    CHECK_INT(ztm_store_get(s, ZTM_STORE_CA, "key", &p, &len), 0);
    CHECK_INT(len, 300);
    CHECK_MEM(p, bin, 300);
    free(p);
    char path[700];
    db_path(path, sizeof(path));
    CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600);
    ztm_store_close(s);
}

typedef struct {
    char keys[32][64];
    int n;
    int stop_at;
} collect_t;

static int collect(void *arg, const char *key, const void *value, size_t len)
{
    collect_t *c = arg;
    if (c->n < 32)
        snprintf(c->keys[c->n], sizeof(c->keys[0]), "%s", key);
    c->n++;
    return c->stop_at && c->n == c->stop_at ? 42 : 0;
}

static void test_list(void)
{
    rm_state();
    ztm_store_t *s = open_store(0);
    static const char *const keys[] = {"b", "a", "ab", "aa", "c", "b1", "a~", "B"};
    for (size_t i = 0; i < 8; i++)
        CHECK_INT(ztm_store_put(s, ZTM_STORE_ENDPOINT, keys[i], keys[i], strlen(keys[i])), 0);
    CHECK_INT(ztm_store_put(s, ZTM_STORE_SERVICE, "a", "x", 1), 0);
    CHECK_INT(ztm_store_put(s, ZTM_STORE_SERIAL, "zz", "x", 1), 0);

    collect_t c = {0};
    CHECK_INT(ztm_store_list(s, ZTM_STORE_ENDPOINT, NULL, NULL, 0, collect, &c), 0);
    CHECK_INT(c.n, 8);
    static const char *const sorted[] = {"B", "a", "aa", "ab", "a~", "b", "b1", "c"};
    for (int i = 0; i < 8; i++)
        CHECK_STR(c.keys[i], sorted[i]);

    memset(&c, 0, sizeof(c));
    CHECK_INT(ztm_store_list(s, ZTM_STORE_ENDPOINT, "a", NULL, 0, collect, &c), 0);
    CHECK_INT(c.n, 4); /* a aa ab a~ */
    memset(&c, 0, sizeof(c));
    CHECK_INT(ztm_store_list(s, ZTM_STORE_ENDPOINT, "a", "aa", 0, collect, &c), 0);
    CHECK_INT(c.n, 2);
    CHECK_STR(c.keys[0], "ab");
    memset(&c, 0, sizeof(c));
    CHECK_INT(ztm_store_list(s, ZTM_STORE_ENDPOINT, "", "a~", 2, collect, &c), 0);
    CHECK_INT(c.n, 2);
    CHECK_STR(c.keys[0], "b");
    CHECK_STR(c.keys[1], "b1");
    /* paging through everything two at a time */
    char after[64] = "";
    int total = 0;
    for (;;) {
        memset(&c, 0, sizeof(c));
        CHECK_INT(ztm_store_list(s, ZTM_STORE_ENDPOINT, NULL, after, 2, collect, &c), 0);
        if (c.n == 0)
            break;
        total += c.n;
        strcpy(after, c.keys[c.n - 1]);
    }
    CHECK_INT(total, 8);
    memset(&c, 0, sizeof(c));
    CHECK_INT(ztm_store_list(s, ZTM_STORE_ENDPOINT, "zz", NULL, 0, collect, &c), 0);
    CHECK_INT(c.n, 0);
    memset(&c, 0, sizeof(c));
    CHECK_INT(ztm_store_list(s, ZTM_STORE_ENDPOINT, NULL, "zzz", 0, collect, &c), 0);
    CHECK_INT(c.n, 0);
    memset(&c, 0, sizeof(c));
    c.stop_at = 3;
    CHECK_INT(ztm_store_list(s, ZTM_STORE_ENDPOINT, NULL, NULL, 0, collect, &c), 42);
    CHECK_INT(c.n, 3);
    memset(&c, 0, sizeof(c));
    CHECK_INT(ztm_store_list(s, ZTM_STORE_POLICY, NULL, NULL, 0, collect, &c), 0);
    CHECK_INT(c.n, 0);
    CHECK_INT(ztm_store_list(s, ZTM_STORE_ENDPOINT, "a b", NULL, 0, collect, &c), -EINVAL);
    ztm_store_close(s);
}

static char *read_db(size_t *len)
{
    char path[700];
    db_path(path, sizeof(path));
    void *data = NULL;
    if (ztm_file_read(path, 1 << 30, &data, len) < 0)
        return NULL;
    return data;
}

static void test_conditions(void)
{
    rm_state();
    ztm_store_t *s = open_store(0);
    ztm_store_op_t create = {.type = ZTM_STORE_PUT, .kind = ZTM_STORE_INVITE, .key = "h1",
                             .value = "fresh", .len = 5, .cond = ZTM_STORE_IF_ABSENT};
    CHECK_INT(ztm_store_commit(s, &create, 1, NULL, 0, NULL), 0);
    CHECK_INT(ztm_store_commit(s, &create, 1, NULL, 0, NULL), ZTM_STORE_E_CONFLICT);

    ztm_store_op_t cas = {.type = ZTM_STORE_PUT, .kind = ZTM_STORE_INVITE, .key = "h1",
                          .value = "used", .len = 4, .cond = ZTM_STORE_IF_EQUAL,
                          .expect = "fresh", .expect_len = 5};
    CHECK_INT(ztm_store_commit(s, &cas, 1, NULL, 0, NULL), 0);
    CHECK_INT(ztm_store_commit(s, &cas, 1, NULL, 0, NULL), ZTM_STORE_E_CONFLICT); /* reuse */
    cas.expect = "fres";
    cas.expect_len = 4;
    CHECK_INT(ztm_store_commit(s, &cas, 1, NULL, 0, NULL), ZTM_STORE_E_CONFLICT);

    ztm_store_op_t need = {.type = ZTM_STORE_DEL, .kind = ZTM_STORE_INVITE, .key = "nope",
                           .cond = ZTM_STORE_IF_EXISTS};
    CHECK_INT(ztm_store_commit(s, &need, 1, NULL, 0, NULL), ZTM_STORE_E_CONFLICT);
    ztm_store_op_t eq_absent = {.type = ZTM_STORE_DEL, .kind = ZTM_STORE_INVITE, .key = "nope",
                                .cond = ZTM_STORE_IF_EQUAL, .expect = "", .expect_len = 0};
    CHECK_INT(ztm_store_commit(s, &eq_absent, 1, NULL, 0, NULL), ZTM_STORE_E_CONFLICT);

    /* all or nothing: the third op's condition fails, the first two and the
     * event do not happen, the file does not change */
    size_t before_len;
    char *before = read_db(&before_len);
    uint64_t v0 = ztm_store_version(s);
    ztm_store_op_t batch[3] = {
        {.type = ZTM_STORE_PUT, .kind = ZTM_STORE_ENDPOINT, .key = "e1", .value = "x", .len = 1},
        {.type = ZTM_STORE_DEL, .kind = ZTM_STORE_INVITE, .key = "h1"},
        {.type = ZTM_STORE_PUT, .kind = ZTM_STORE_SERIAL, .key = "s1", .value = "x", .len = 1,
         .cond = ZTM_STORE_IF_EXISTS},
    };
    ztm_store_event_t ev = {.topic = 1, .data = "ev", .len = 2};
    CHECK_INT(ztm_store_commit(s, batch, 3, &ev, 1, NULL), ZTM_STORE_E_CONFLICT);
    void *p;
    size_t len;
    CHECK_INT(ztm_store_get(s, ZTM_STORE_ENDPOINT, "e1", &p, &len), -ENOENT);
    CHECK_INT(ztm_store_get(s, ZTM_STORE_INVITE, "h1", &p, &len), 0);
    free(p);
    CHECK(ztm_store_version(s) == v0);
    size_t after_len;
    char *after = read_db(&after_len);
    CHECK(before && after && before_len == after_len && memcmp(before, after, before_len) == 0);
    free(before);
    free(after);

    /* the same batch with the condition met: all of it */
    batch[2].cond = ZTM_STORE_IF_ABSENT;
    uint64_t v;
    CHECK_INT(ztm_store_commit(s, batch, 3, &ev, 1, &v), 0);
    CHECK(v == v0 + 1);
    CHECK_INT(ztm_store_get(s, ZTM_STORE_INVITE, "h1", &p, &len), -ENOENT);
    CHECK_INT(ztm_store_get(s, ZTM_STORE_SERIAL, "s1", &p, &len), 0);
    free(p);

    /* one key twice in a batch: applied in order */
    ztm_store_op_t twice[3] = {
        {.type = ZTM_STORE_PUT, .kind = ZTM_STORE_META, .key = "k", .value = "1", .len = 1},
        {.type = ZTM_STORE_DEL, .kind = ZTM_STORE_META, .key = "k"},
        {.type = ZTM_STORE_PUT, .kind = ZTM_STORE_META, .key = "k", .value = "3", .len = 1},
    };
    CHECK_INT(ztm_store_commit(s, twice, 3, NULL, 0, NULL), 0);
    char *sv = get_str(s, ZTM_STORE_META, "k");
    CHECK_STR(sv, "3");
    free(sv);
    CHECK_INT(ztm_store_commit(s, twice, 2, NULL, 0, NULL), 0);
    CHECK_INT(ztm_store_get(s, ZTM_STORE_META, "k", &p, &len), -ENOENT);

    /* bad ops */
    ztm_store_op_t bad = {.type = 7, .kind = ZTM_STORE_META, .key = "k"};
    CHECK_INT(ztm_store_commit(s, &bad, 1, NULL, 0, NULL), -EINVAL);
    bad.type = ZTM_STORE_PUT;
    bad.cond = 9;
    CHECK_INT(ztm_store_commit(s, &bad, 1, NULL, 0, NULL), -EINVAL);
    CHECK_INT(ztm_store_commit(s, NULL, 1, NULL, 0, NULL), -EINVAL);
    CHECK_INT(ztm_store_commit(s, NULL, 0, NULL, 0, &v), 0); /* nothing: fine */
    ztm_store_close(s);
}

typedef struct {
    uint64_t versions[64];
    char data[64][16];
    int n;
} events_t;

static int on_event(void *arg, const ztm_store_event_t *ev)
{
    events_t *e = arg;
    if (e->n < 64) {
        e->versions[e->n] = ev->version;
        snprintf(e->data[e->n], 16, "%.*s", (int)ev->len, (const char *)ev->data);
    }
    e->n++;
    return 0;
}

static void commit_event(ztm_store_t *s, const char *text, uint64_t *v)
{
    ztm_store_event_t ev = {.topic = 2, .data = text, .len = strlen(text)};
    REQUIRE(ztm_store_commit(s, NULL, 0, &ev, 1, v) == 0);
}

static void test_feed(void)
{
    rm_state();
    ztm_store_t *s = open_store(5);
    CHECK(ztm_store_version(s) == 0);
    events_t got = {0};
    CHECK_INT(ztm_store_read_events(s, 0, 0, on_event, &got), 0);
    CHECK_INT(got.n, 0);

    uint64_t v;
    commit_event(s, "e1", &v);
    CHECK(v == 1);
    ztm_store_event_t two[2] = {{.topic = 1, .data = "e2", .len = 2},
                                {.topic = 3, .data = "e3", .len = 2}};
    ztm_store_op_t op = {.type = ZTM_STORE_PUT, .kind = ZTM_STORE_REVOCATION, .key = "s",
                         .value = "r", .len = 1};
    CHECK_INT(ztm_store_commit(s, &op, 1, two, 2, &v), 0);
    CHECK(v == 3); /* the last event's version */
    CHECK_INT(ztm_store_put(s, ZTM_STORE_META, "x", "y", 1), 0); /* no event: no version */
    CHECK(ztm_store_version(s) == 3);

    CHECK_INT(ztm_store_read_events(s, 0, 0, on_event, &got), 0);
    CHECK_INT(got.n, 3);
    CHECK(got.versions[0] == 1 && got.versions[2] == 3);
    CHECK_STR(got.data[1], "e2");
    memset(&got, 0, sizeof(got));
    CHECK_INT(ztm_store_read_events(s, 1, 1, on_event, &got), 0);
    CHECK_INT(got.n, 1);
    CHECK(got.versions[0] == 2);
    memset(&got, 0, sizeof(got));
    CHECK_INT(ztm_store_read_events(s, 3, 0, on_event, &got), 0);
    CHECK_INT(got.n, 0);
    CHECK_INT(ztm_store_read_events(s, 99, 0, on_event, &got), 0);
    CHECK_INT(got.n, 0);

    /* retention 5: after 8 events, versions 4..8 remain */
    for (int i = 4; i <= 8; i++) {
        char t[8];
        snprintf(t, sizeof(t), "e%d", i);
        commit_event(s, t, &v);
    }
    CHECK(v == 8);
    memset(&got, 0, sizeof(got));
    CHECK_INT(ztm_store_read_events(s, 0, 0, on_event, &got), ZTM_STORE_E_COMPACTED);
    CHECK_INT(got.n, 0);
    CHECK_INT(ztm_store_read_events(s, 2, 0, on_event, &got), ZTM_STORE_E_COMPACTED);
    CHECK_INT(ztm_store_read_events(s, 3, 0, on_event, &got), 0);
    CHECK_INT(got.n, 5);
    CHECK(got.versions[0] == 4 && got.versions[4] == 8);
    ztm_store_close(s);

    /* versions and retained events survive a restart, and go on from there */
    s = open_store(5);
    CHECK(ztm_store_version(s) == 8);
    memset(&got, 0, sizeof(got));
    CHECK_INT(ztm_store_read_events(s, 5, 0, on_event, &got), 0);
    CHECK_INT(got.n, 3);
    CHECK_STR(got.data[2], "e8");
    commit_event(s, "e9", &v);
    CHECK(v == 9);
    ztm_store_close(s);
}

typedef struct {
    ztm_store_t *s;
    ztm_store_sub_t *sub;
    uint64_t seen[16];
    int n;
    bool commit_once;
    bool unsubscribe;
} sub_t;

static void on_notify(void *arg, uint64_t version)
{
    sub_t *x = arg;
    if (x->n < 16)
        x->seen[x->n] = version;
    x->n++;
    if (x->commit_once) {
        x->commit_once = false;
        commit_event(x->s, "nested", NULL);
    }
    if (x->unsubscribe)
        ztm_store_unsubscribe(x->s, x->sub);
}

static void test_subscribers(void)
{
    rm_state();
    ztm_store_t *s = open_store(0);
    sub_t a = {.s = s}, b = {.s = s};
    CHECK_INT(ztm_store_subscribe(s, on_notify, &a, &a.sub), 0);
    CHECK_INT(ztm_store_subscribe(s, on_notify, &b, &b.sub), 0);
    commit_event(s, "1", NULL);
    CHECK_INT(a.n, 1);
    CHECK(a.seen[0] == 1);
    CHECK_INT(b.n, 1);
    CHECK_INT(ztm_store_put(s, ZTM_STORE_META, "k", "v", 1), 0); /* no event: no call */
    CHECK_INT(a.n, 1);

    /* a subscriber that commits: everyone hears of the nested version after */
    a.commit_once = true;
    commit_event(s, "2", NULL);
    CHECK_INT(a.n, 3);
    CHECK(a.seen[1] == 2 && a.seen[2] == 3);
    CHECK_INT(b.n, 3);
    CHECK(b.seen[1] == 2 && b.seen[2] == 3);

    /* unsubscribing from inside a notification */
    a.unsubscribe = true;
    commit_event(s, "4", NULL);
    CHECK_INT(a.n, 4);
    CHECK_INT(b.n, 4);
    commit_event(s, "5", NULL);
    CHECK_INT(a.n, 4);
    CHECK_INT(b.n, 5);
    ztm_store_unsubscribe(s, b.sub);
    commit_event(s, "6", NULL);
    CHECK_INT(b.n, 5);
    CHECK_INT(ztm_store_subscribe(s, NULL, NULL, NULL), -EINVAL);
    /* close with a live subscription frees it */
    CHECK_INT(ztm_store_subscribe(s, on_notify, &b, NULL), 0);
    ztm_store_close(s);
}

static void test_lock_and_temps(void)
{
    rm_state();
    ztm_store_t *s = open_store(0), *t;
    CHECK_INT(try_open(&t), -EBUSY);
    CHECK_INT(ztm_store_put(s, ZTM_STORE_META, "k", "v", 1), 0);
    ztm_store_close(s);

    /* a temporary file left by a crash is removed; the store is intact */
    char tmp[700];
    snprintf(tmp, sizeof(tmp), "%s/store.db.tmp.ABC123", dir);
    REQUIRE(ztm_file_write_atomic(tmp, "half", 4, 0600) == 0);
    s = open_store(0);
    CHECK(access(tmp, F_OK) != 0);
    char *v = get_str(s, ZTM_STORE_META, "k");
    CHECK_STR(v, "v");
    free(v);
    ztm_store_close(s);
}

static void write_db(const void *data, size_t len)
{
    char path[700];
    db_path(path, sizeof(path));
    REQUIRE(ztm_file_write_atomic(path, data, len, 0600) == 0);
}

/* CRC-32C bit by bit, independent of the store's (table or SSE4.2) one. */
static uint32_t crc32c_ref(const uint8_t *p, size_t n)
{
    uint32_t c = 0xffffffffu;
    while (n--) {
        c ^= *p++;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
    }
    return c ^ 0xffffffffu;
}

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* A file written by hand from the format in embedded.c loads. */
static void test_known_file(void)
{
    CHECK(crc32c_ref((const uint8_t *)"123456789", 9) == 0xe3069283u); /* the standard check */
    rm_state();
    REQUIRE(ztm_file_mkdirs(dir, 0700) == 0);
    uint8_t f[128];
    size_t n = 0;
    memcpy(f, "ZTMSTORE", 8);
    put32(f + 8, 1);
    put32(f + 12, 0);
    put32(f + 16, 7); /* version 7 */
    put32(f + 20, 0);
    put32(f + 24, 1); /* one record */
    put32(f + 28, 1); /* one event */
    n = 32;
    f[n++] = ZTM_STORE_ENDPOINT;
    f[n++] = 2;
    put32(f + n, 3);
    n += 4;
    memcpy(f + n, "e1abc", 5);
    n += 5;
    put32(f + n, 7);
    put32(f + n + 4, 0);
    n += 8;
    put32(f + n, 2);
    put32(f + n + 4, 2);
    n += 8;
    memcpy(f + n, "ev", 2);
    n += 2;
    /* a CRC over a length that is not a multiple of 8 exercises both loops */
    put32(f + n, crc32c_ref(f, n));
    n += 4;
    write_db(f, n);
    ztm_store_t *s;
    CHECK_INT(try_open(&s), 0);
    char *v = get_str(s, ZTM_STORE_ENDPOINT, "e1");
    CHECK_STR(v, "abc");
    free(v);
    CHECK(ztm_store_version(s) == 7);
    ztm_store_close(s);
}

static void test_corruption(void)
{
    rm_state();
    ztm_store_t *s = open_store(0), *t;
    for (int i = 0; i < 20; i++) {
        char k[16];
        snprintf(k, sizeof(k), "k%d", i);
        CHECK_INT(ztm_store_put(s, ZTM_STORE_ENDPOINT, k, "value", 5), 0);
    }
    commit_event(s, "ev", NULL);
    ztm_store_close(s);
    size_t len;
    char *good = read_db(&len);
    REQUIRE(good);

    /* every single-byte change is caught */
    for (size_t i = 0; i < len; i += 7) {
        good[i] ^= 0x20;
        write_db(good, len);
        int r = try_open(&t);
        if (r == 0)
            ztm_store_close(t);
        CHECK(r == ZTM_STORE_E_CORRUPT || r == ZTM_STORE_E_FORMAT);
        good[i] ^= 0x20;
    }
    /* every truncation is caught, including the empty file */
    for (size_t cut = 0; cut < len; cut += 5) {
        write_db(good, cut);
        CHECK_INT(try_open(&t), ZTM_STORE_E_CORRUPT);
    }
    /* extra bytes */
    char *longer = malloc(len + 1);
    memcpy(longer, good, len);
    longer[len] = 0;
    write_db(longer, len + 1);
    CHECK_INT(try_open(&t), ZTM_STORE_E_CORRUPT);
    free(longer);
    /* a newer format is named as such */
    good[8] = 2;
    write_db(good, len);
    CHECK_INT(try_open(&t), ZTM_STORE_E_FORMAT);
    good[8] = 1;
    /* the good file still loads */
    write_db(good, len);
    CHECK_INT(try_open(&t), 0);
    ztm_store_close(t);
    free(good);
    CHECK(strstr(ztm_store_strerror(ZTM_STORE_E_CORRUPT), "damaged") != NULL);
}

/* A disk that refuses to write: the commit fails and memory stays as the
 * file is. RLIMIT_FSIZE makes writes fail even for root. */
static void test_write_failure(void)
{
    rm_state();
    ztm_store_t *s = open_store(0);
    CHECK_INT(ztm_store_put(s, ZTM_STORE_ENDPOINT, "keep", "old", 3), 0);
    commit_event(s, "first", NULL);

    struct rlimit old;
    getrlimit(RLIMIT_FSIZE, &old);
    signal(SIGXFSZ, SIG_IGN);
    struct rlimit lim = {.rlim_cur = 4096, .rlim_max = old.rlim_max};
    REQUIRE(setrlimit(RLIMIT_FSIZE, &lim) == 0);
    char big[8000];
    memset(big, 'b', sizeof(big));
    ztm_store_op_t ops[2] = {
        {.type = ZTM_STORE_PUT, .kind = ZTM_STORE_ENDPOINT, .key = "keep", .value = "new", .len = 3},
        {.type = ZTM_STORE_PUT, .kind = ZTM_STORE_ENDPOINT, .key = "big", .value = big,
         .len = sizeof(big)},
    };
    ztm_store_event_t ev = {.topic = 1, .data = "lost", .len = 4};
    int r = ztm_store_commit(s, ops, 2, &ev, 1, NULL);
    CHECK(r == -EFBIG);
    setrlimit(RLIMIT_FSIZE, &old);

    char *v = get_str(s, ZTM_STORE_ENDPOINT, "keep");
    CHECK_STR(v, "old");
    free(v);
    void *p;
    size_t len;
    CHECK_INT(ztm_store_get(s, ZTM_STORE_ENDPOINT, "big", &p, &len), -ENOENT);
    CHECK(ztm_store_version(s) == 1);
    events_t got = {0};
    CHECK_INT(ztm_store_read_events(s, 0, 0, on_event, &got), 0);
    CHECK_INT(got.n, 1);
    char tmp_glob[800];
    snprintf(tmp_glob, sizeof(tmp_glob), "ls %s | grep -q tmp", dir);
    CHECK(system(tmp_glob) != 0); /* no temporary file left */

    /* and the store works again once the disk does */
    CHECK_INT(ztm_store_commit(s, ops, 2, &ev, 1, NULL), 0);
    CHECK(ztm_store_version(s) == 2);
    ztm_store_close(s);
    s = open_store(0);
    v = get_str(s, ZTM_STORE_ENDPOINT, "keep");
    CHECK_STR(v, "new");
    free(v);
    ztm_store_close(s);
}

static int notified;
static uint64_t notified_version;

static void count_notify(void *arg, uint64_t version)
{
    notified++;
    notified_version = version;
}

static void test_group(void)
{
    rm_state();
    ztm_store_t *s = open_store(0);
    CHECK_INT(ztm_store_put(s, ZTM_STORE_META, "before", "1", 1), 0);
    CHECK_INT(ztm_store_subscribe(s, count_notify, NULL, NULL), 0);
    size_t len0;
    char *file0 = read_db(&len0);

    CHECK_INT(ztm_store_group_begin(s), 0);
    CHECK_INT(ztm_store_group_begin(s), -EBUSY);
    ztm_store_op_t a = {.type = ZTM_STORE_PUT, .kind = ZTM_STORE_ENDPOINT, .key = "a",
                        .value = "A", .len = 1, .cond = ZTM_STORE_IF_ABSENT};
    ztm_store_event_t ev = {.topic = 1, .data = "x", .len = 1};
    uint64_t v;
    CHECK_INT(ztm_store_commit(s, &a, 1, &ev, 1, &v), 0);
    CHECK(v == 1);
    /* a later commit of the group sees the earlier one */
    CHECK_INT(ztm_store_commit(s, &a, 1, NULL, 0, NULL), ZTM_STORE_E_CONFLICT);
    char *got = get_str(s, ZTM_STORE_ENDPOINT, "a");
    CHECK_STR(got, "A");
    free(got);
    ztm_store_op_t b = {.type = ZTM_STORE_DEL, .kind = ZTM_STORE_META, .key = "before"};
    CHECK_INT(ztm_store_commit(s, &b, 1, &ev, 1, &v), 0);
    CHECK(v == 2);
    CHECK_INT(notified, 0);              /* not durable yet: nobody told */
    size_t len1;
    char *file1 = read_db(&len1);
    CHECK(len0 == len1 && memcmp(file0, file1, len0) == 0); /* nor written */
    free(file1);
    CHECK_INT(ztm_store_group_end(s), 0);
    CHECK_INT(notified, 1);
    CHECK(notified_version == 2);
    CHECK_INT(ztm_store_group_end(s), -EINVAL);
    ztm_store_close(s);
    s = open_store(0);
    got = get_str(s, ZTM_STORE_ENDPOINT, "a");
    CHECK_STR(got, "A");
    free(got);
    void *p;
    size_t len;
    CHECK_INT(ztm_store_get(s, ZTM_STORE_META, "before", &p, &len), -ENOENT);
    CHECK(ztm_store_version(s) == 2);

    /* a group whose write fails is undone as a whole */
    CHECK_INT(ztm_store_group_begin(s), 0);
    ztm_store_op_t c = {.type = ZTM_STORE_PUT, .kind = ZTM_STORE_ENDPOINT, .key = "a",
                        .value = "changed", .len = 7};
    char big[8000];
    memset(big, 'z', sizeof(big));
    ztm_store_op_t d = {.type = ZTM_STORE_PUT, .kind = ZTM_STORE_ENDPOINT, .key = "big",
                        .value = big, .len = sizeof(big)};
    ztm_store_op_t del = {.type = ZTM_STORE_DEL, .kind = ZTM_STORE_ENDPOINT, .key = "a"};
    CHECK_INT(ztm_store_commit(s, &c, 1, &ev, 1, NULL), 0);
    CHECK_INT(ztm_store_commit(s, &d, 1, &ev, 1, NULL), 0);
    CHECK_INT(ztm_store_commit(s, &del, 1, &ev, 1, NULL), 0);
    CHECK_INT(ztm_store_commit(s, &c, 1, NULL, 0, NULL), 0);
    CHECK(ztm_store_version(s) == 5);
    struct rlimit old;
    getrlimit(RLIMIT_FSIZE, &old);
    struct rlimit lim = {.rlim_cur = 4096, .rlim_max = old.rlim_max};
    REQUIRE(setrlimit(RLIMIT_FSIZE, &lim) == 0);
    CHECK_INT(ztm_store_group_end(s), -EFBIG);
    setrlimit(RLIMIT_FSIZE, &old);
    got = get_str(s, ZTM_STORE_ENDPOINT, "a");
    CHECK_STR(got, "A");
    free(got);
    CHECK_INT(ztm_store_get(s, ZTM_STORE_ENDPOINT, "big", &p, &len), -ENOENT);
    CHECK(ztm_store_version(s) == 2);
    events_t evs = {0};
    CHECK_INT(ztm_store_read_events(s, 0, 0, on_event, &evs), 0);
    CHECK_INT(evs.n, 2);

    /* closing inside a group: nothing of it was durable */
    CHECK_INT(ztm_store_group_begin(s), 0);
    CHECK_INT(ztm_store_commit(s, &c, 1, &ev, 1, NULL), 0);
    ztm_store_close(s);
    s = open_store(0);
    got = get_str(s, ZTM_STORE_ENDPOINT, "a");
    CHECK_STR(got, "A");
    free(got);
    CHECK(ztm_store_version(s) == 2);
    /* an empty group writes nothing */
    CHECK_INT(ztm_store_group_begin(s), 0);
    CHECK_INT(ztm_store_group_end(s), 0);
    ztm_store_close(s);
    free(file0);
}

static void test_soft(void)
{
    rm_state();
    ztm_store_t *s = open_store(0);
    fake_now = 1000;
    CHECK_INT(ztm_store_soft_set(s, ZTM_SOFT_PRESENCE, "e1", "hubA", 4, 500), 0);
    CHECK_INT(ztm_store_soft_set(s, ZTM_SOFT_PRESENCE, "e2", "hubB", 4, 0), 0);
    CHECK_INT(ztm_store_soft_set(s, ZTM_SOFT_LOCATION, "e1", "hubA", 4, 100), 0);
    void *v;
    size_t len;
    int64_t ttl;
    CHECK_INT(ztm_store_soft_get(s, ZTM_SOFT_PRESENCE, "e1", &v, &len, &ttl), 0);
    CHECK_STR(v, "hubA");
    CHECK(ttl == 500);
    free(v);
    CHECK_INT(ztm_store_soft_get(s, ZTM_SOFT_PRESENCE, "e2", &v, &len, &ttl), 0);
    CHECK(ttl == -1);
    free(v);

    fake_now = 1200;
    CHECK_INT(ztm_store_soft_get(s, ZTM_SOFT_LOCATION, "e1", &v, &len, NULL), -ENOENT);
    CHECK_INT(ztm_store_soft_get(s, ZTM_SOFT_PRESENCE, "e1", &v, &len, &ttl), 0);
    CHECK(ttl == 300);
    free(v);
    collect_t c = {0};
    CHECK_INT(ztm_store_soft_list(s, ZTM_SOFT_PRESENCE, NULL, collect, &c), 0);
    CHECK_INT(c.n, 2);

    fake_now = 1500; /* e1 expires exactly now */
    memset(&c, 0, sizeof(c));
    CHECK_INT(ztm_store_soft_list(s, ZTM_SOFT_PRESENCE, NULL, collect, &c), 0);
    CHECK_INT(c.n, 1);
    CHECK_STR(c.keys[0], "e2");
    CHECK_INT(ztm_store_soft_get(s, ZTM_SOFT_PRESENCE, "e1", &v, &len, NULL), -ENOENT);
    /* refresh keeps it alive */
    CHECK_INT(ztm_store_soft_set(s, ZTM_SOFT_PRESENCE, "e3", "x", 1, 100), 0);
    fake_now = 1590;
    CHECK_INT(ztm_store_soft_set(s, ZTM_SOFT_PRESENCE, "e3", "y", 1, 100), 0);
    fake_now = 1650;
    CHECK_INT(ztm_store_soft_get(s, ZTM_SOFT_PRESENCE, "e3", &v, &len, NULL), 0);
    CHECK_STR(v, "y");
    free(v);
    CHECK_INT(ztm_store_soft_del(s, ZTM_SOFT_PRESENCE, "e3"), 0);
    CHECK_INT(ztm_store_soft_get(s, ZTM_SOFT_PRESENCE, "e3", &v, &len, NULL), -ENOENT);
    CHECK_INT(ztm_store_soft_del(s, ZTM_SOFT_PRESENCE, "e3"), 0);

    /* counters */
    int64_t n;
    CHECK_INT(ztm_store_counter_add(s, "svc/web/e1", 1, 0, &n), 0);
    CHECK(n == 1);
    CHECK_INT(ztm_store_counter_add(s, "svc/web/e1", 5, 0, &n), 0);
    CHECK(n == 6);
    CHECK_INT(ztm_store_counter_add(s, "svc/web/e1", -7, 0, &n), 0);
    CHECK(n == -1);
    CHECK_INT(ztm_store_soft_get(s, ZTM_SOFT_COUNTER, "svc/web/e1", &v, &len, NULL), 0);
    CHECK_STR(v, "-1"); /* decimal text, as Redis keeps it */
    free(v);
    CHECK_INT(ztm_store_counter_add(s, "ttl", 1, 100, &n), 0);
    fake_now += 50;
    CHECK_INT(ztm_store_counter_add(s, "ttl", 1, 0, &n), 0); /* keeps its expiry */
    CHECK(n == 2);
    fake_now += 60;
    CHECK_INT(ztm_store_counter_add(s, "ttl", 1, 0, &n), 0); /* expired: starts over */
    CHECK(n == 1);
    CHECK_INT(ztm_store_soft_set(s, ZTM_SOFT_COUNTER, "text", "abc", 3, 0), 0);
    CHECK_INT(ztm_store_counter_add(s, "text", 1, 0, &n), -EINVAL);
    CHECK_INT(ztm_store_counter_add(s, "max", INT64_MAX, 0, &n), 0);
    CHECK_INT(ztm_store_counter_add(s, "max", 1, 0, &n), -ERANGE);
    CHECK_INT(ztm_store_counter_add(s, "bad key", 1, 0, &n), -EINVAL);

    /* poll sweeps expired entries */
    CHECK_INT(ztm_store_soft_set(s, ZTM_SOFT_HUB, "h1", "x", 1, 10), 0);
    CHECK_INT(ztm_store_soft_set(s, ZTM_SOFT_HUB, "h2", "x", 1, 1000), 0);
    fake_now += 20;
    CHECK_INT(ztm_store_poll(s), 0);
    memset(&c, 0, sizeof(c));
    CHECK_INT(ztm_store_soft_list(s, ZTM_SOFT_HUB, NULL, collect, &c), 0);
    CHECK_INT(c.n, 1);
    CHECK_INT(ztm_store_fd(s), -1);

    CHECK_INT(ztm_store_soft_set(s, 0, "k", "v", 1, 0), -EINVAL);
    CHECK_INT(ztm_store_soft_set(s, ZTM_SOFT_HUB, "k", "v", 1, -1), -EINVAL);
    ztm_store_close(s);

    /* soft state does not survive a restart, by design */
    s = open_store(0);
    CHECK_INT(ztm_store_soft_get(s, ZTM_SOFT_PRESENCE, "e2", &v, &len, NULL), -ENOENT);
    ztm_store_close(s);
}

int main(void)
{
    REQUIRE(mkdtemp(top));
    snprintf(dir, sizeof(dir), "%s/state", top);
    test_records();
    test_list();
    test_conditions();
    test_feed();
    test_subscribers();
    test_lock_and_temps();
    test_known_file();
    test_corruption();
    test_write_failure();
    test_group();
    test_soft();
    char cmd[700];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", top);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", top);
    TEST_END();
}
