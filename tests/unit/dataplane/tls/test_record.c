/* Unit tests of dataplane/tls/record.c: record boundaries, the kTLS cmsg
 * walk, and the classification of control records. */
#include "dataplane/tls/record.h"

#include <errno.h>
#include <linux/tls.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

static int failures;
#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);               \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

static void test_scan(void)
{
    /* two records (3-byte and 0-byte bodies) then half a header */
    const uint8_t s[] = {23, 3, 3, 0, 3, 'a', 'b', 'c', 21, 3, 3, 0, 0, 22, 3};
    ztm_tls_rec_scan_t sc = {0};
    CHECK(ztm_tls_rec_scan_at_boundary(&sc));
    CHECK(ztm_tls_rec_scan_need(&sc) == 5);
    /* byte by byte gives the same answer as all at once */
    for (size_t i = 0; i < 7; i++)
        CHECK(ztm_tls_rec_scan(&sc, s + i, 1) == 0);
    CHECK(!ztm_tls_rec_scan_at_boundary(&sc));
    CHECK(ztm_tls_rec_scan_need(&sc) == 1);
    CHECK(ztm_tls_rec_scan(&sc, s + 7, 1) == 0);
    CHECK(ztm_tls_rec_scan_at_boundary(&sc) && sc.records == 1);
    CHECK(ztm_tls_rec_scan(&sc, s + 8, sizeof(s) - 8) == 0);
    CHECK(sc.records == 2);
    CHECK(ztm_tls_rec_scan_need(&sc) == 3);

    ztm_tls_rec_scan_t all = {0};
    CHECK(ztm_tls_rec_scan(&all, s, sizeof(s)) == 0);
    CHECK(all.records == 2 && all.hdr_have == 2);

    /* garbage: unknown type, bad version, oversize length */
    const uint8_t bad1[] = {99, 3, 3, 0, 1};
    const uint8_t bad2[] = {23, 2, 3, 0, 1};
    const uint8_t bad3[] = {23, 3, 3, 0x41, 0x01};
    const uint8_t *bads[] = {bad1, bad2, bad3};
    for (int i = 0; i < 3; i++) {
        ztm_tls_rec_scan_t b = {0};
        CHECK(ztm_tls_rec_scan(&b, bads[i], 5) == -EPROTO);
        CHECK(b.broken && !ztm_tls_rec_scan_at_boundary(&b));
        CHECK(ztm_tls_rec_scan(&b, s, 5) == -EPROTO);
    }
    /* the largest legal body */
    const uint8_t big[] = {23, 3, 3, (16384 + 256) >> 8, (16384 + 256) & 0xff};
    ztm_tls_rec_scan_t b = {0};
    CHECK(ztm_tls_rec_scan(&b, big, 5) == 0 && ztm_tls_rec_scan_need(&b) == 16384 + 256);
}

static void test_cmsg(void)
{
    union {
        struct cmsghdr align;
        uint8_t buf[64];
    } u;
    uint8_t type = 0;
    int n = ztm_ktls_cmsg_put_record_type(u.buf, sizeof(u.buf), 21);
    CHECK(n == (int)CMSG_SPACE(1));
    CHECK(ztm_ktls_cmsg_put_record_type(u.buf, 8, 21) == -ENOBUFS);

    /* what sendmsg gets is what the kernel returns, but for the type */
    struct cmsghdr *c = (struct cmsghdr *)u.buf;
    CHECK(c->cmsg_level == SOL_TLS && c->cmsg_type == TLS_SET_RECORD_TYPE);
    c->cmsg_type = TLS_GET_RECORD_TYPE;
    CHECK(ztm_ktls_cmsg_record_type(u.buf, (size_t)n, &type) == 0 && type == 21);
    /* also with the exact (unpadded) length */
    CHECK(ztm_ktls_cmsg_record_type(u.buf, CMSG_LEN(1), &type) == 0 && type == 21);

    /* none */
    CHECK(ztm_ktls_cmsg_record_type(NULL, 0, &type) == -ENOENT);
    CHECK(ztm_ktls_cmsg_record_type(u.buf, 4, &type) == -ENOENT);
    /* another message first, then ours */
    memset(u.buf, 0, sizeof(u.buf));
    struct msghdr m = {.msg_control = u.buf, .msg_controllen = 2 * CMSG_SPACE(1)};
    struct cmsghdr *first = CMSG_FIRSTHDR(&m);
    first->cmsg_len = CMSG_LEN(1);
    first->cmsg_level = SOL_SOCKET;
    first->cmsg_type = 99;
    struct cmsghdr *second = CMSG_NXTHDR(&m, first);
    CHECK(second != NULL);
    second->cmsg_len = CMSG_LEN(1);
    second->cmsg_level = SOL_TLS;
    second->cmsg_type = TLS_GET_RECORD_TYPE;
    *CMSG_DATA(second) = 22;
    CHECK(ztm_ktls_cmsg_record_type(u.buf, m.msg_controllen, &type) == 0 && type == 22);
    /* a length that overruns the buffer, or is too short */
    first->cmsg_len = 1000;
    CHECK(ztm_ktls_cmsg_record_type(u.buf, m.msg_controllen, &type) == -EINVAL);
    first->cmsg_len = 3;
    CHECK(ztm_ktls_cmsg_record_type(u.buf, m.msg_controllen, &type) == -EINVAL);
    /* our message but with no data byte */
    first->cmsg_len = sizeof(struct cmsghdr);
    first->cmsg_level = SOL_TLS;
    first->cmsg_type = TLS_GET_RECORD_TYPE;
    CHECK(ztm_ktls_cmsg_record_type(u.buf, sizeof(struct cmsghdr), &type) == -EINVAL);
}

static void test_classify(void)
{
    ztm_ktls_hs_t hs = {0};
    ztm_ktls_rec_t r;
    CHECK(ztm_ktls_classify(&hs, 23, (const uint8_t *)"x", 1, &r) == ZTM_KTLS_REC_DATA);
    CHECK(ztm_ktls_classify(&hs, 21, (const uint8_t[]){1, 0}, 2, &r) == ZTM_KTLS_REC_CLOSE_NOTIFY);
    CHECK(ztm_ktls_classify(&hs, 21, (const uint8_t[]){2, 40}, 2, &r) == ZTM_KTLS_REC_ALERT &&
          r.alert == 40);
    CHECK(ztm_ktls_classify(&hs, 21, (const uint8_t[]){1, 90}, 2, &r) == ZTM_KTLS_REC_IGNORE);
    CHECK(ztm_ktls_classify(&hs, 21, (const uint8_t[]){1}, 1, &r) == ZTM_KTLS_REC_BAD);
    CHECK(ztm_ktls_classify(&hs, 21, (const uint8_t[]){1, 0, 1, 0}, 4, &r) == ZTM_KTLS_REC_BAD);
    CHECK(ztm_ktls_classify(&hs, 20, (const uint8_t[]){1}, 1, &r) == ZTM_KTLS_REC_BAD);
    CHECK(ztm_ktls_classify(&hs, 24, (const uint8_t[]){1}, 1, &r) == ZTM_KTLS_REC_BAD);

    /* two NewSessionTickets in one record, then a KeyUpdate asking for ours */
    const uint8_t tickets[] = {4, 0, 0, 3, 1, 2, 3, 4, 0, 0, 1, 9};
    CHECK(ztm_ktls_classify(&hs, 22, tickets, sizeof(tickets), &r) == ZTM_KTLS_REC_IGNORE);
    CHECK(r.hs_type == 4 && hs.body_left == 0 && hs.hdr_have == 0);
    CHECK(ztm_ktls_classify(&hs, 22, (const uint8_t[]){24, 0, 0, 1, 1}, 5, &r) ==
          ZTM_KTLS_REC_KEY_UPDATE);
    CHECK(r.key_update_req == 1);

    /* a ticket split over three records, a KeyUpdate split over two */
    ztm_ktls_hs_t h2 = {0};
    CHECK(ztm_ktls_classify(&h2, 22, (const uint8_t[]){4, 0}, 2, &r) == ZTM_KTLS_REC_IGNORE);
    CHECK(ztm_ktls_classify(&h2, 22, (const uint8_t[]){0, 2, 7}, 3, &r) == ZTM_KTLS_REC_IGNORE);
    /* a data record in the middle of a handshake message is an error */
    ztm_ktls_hs_t h3 = h2;
    CHECK(ztm_ktls_classify(&h3, 23, (const uint8_t[]){0}, 1, &r) == ZTM_KTLS_REC_BAD);
    CHECK(ztm_ktls_classify(&h2, 22, (const uint8_t[]){7, 24, 0, 0, 1}, 5, &r) ==
          ZTM_KTLS_REC_IGNORE);
    CHECK(ztm_ktls_classify(&h2, 22, (const uint8_t[]){0}, 1, &r) == ZTM_KTLS_REC_KEY_UPDATE);
    CHECK(r.key_update_req == 0);

    /* not allowed after the handshake, malformed KeyUpdates */
    ztm_ktls_hs_t h4 = {0};
    CHECK(ztm_ktls_classify(&h4, 22, (const uint8_t[]){13, 0, 0, 1, 0}, 5, &r) == ZTM_KTLS_REC_BAD);
    h4 = (ztm_ktls_hs_t){0};
    CHECK(ztm_ktls_classify(&h4, 22, (const uint8_t[]){24, 0, 0, 2, 0, 0}, 6, &r) ==
          ZTM_KTLS_REC_BAD);
    h4 = (ztm_ktls_hs_t){0};
    CHECK(ztm_ktls_classify(&h4, 22, (const uint8_t[]){24, 0, 0, 1, 2}, 5, &r) == ZTM_KTLS_REC_BAD);
    h4 = (ztm_ktls_hs_t){0};
    CHECK(ztm_ktls_classify(&h4, 22, (const uint8_t[]){24, 0, 0, 1, 0, 23}, 6, &r) ==
          ZTM_KTLS_REC_BAD);
    h4 = (ztm_ktls_hs_t){0};
    CHECK(ztm_ktls_classify(&h4, 22, NULL, 0, &r) == ZTM_KTLS_REC_BAD);
    CHECK(r.why != NULL);
}

int main(void)
{
    test_scan();
    test_cmsg();
    test_classify();
    printf("%s\n", failures ? "FAIL" : "PASS");
    return failures ? 1 : 0;
}
