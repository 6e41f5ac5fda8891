/* Fuzz target for the framing ztm parses itself on the TLS path
 * (dataplane/tls/record.c, #included so the fuzzer sees every branch):
 * the record-boundary scanner, the kTLS cmsg walk, and the classifier of
 * control records. Built as a libFuzzer target with -DZTM_FUZZ=ON (clang),
 * and with replay.c as a plain program any compiler builds.
 *
 * Input: the first byte picks the parser, the rest is its input.
 *   0: cmsg buffer (as recvmsg filled it)
 *   1: ciphertext stream, scanned whole and in pieces (must agree)
 *   2: a sequence of control records [type][len:2][body] fed to one
 *      classifier state, as a kTLS socket would hand them over */
#include "dataplane/tls/record.c"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fuzz_cmsg(const uint8_t *p, size_t n)
{
    uint8_t type = 0;
    int r = ztm_ktls_cmsg_record_type(n ? p : NULL, n, &type);
    if (r != 0 && r != -ENOENT && r != -EINVAL)
        abort();
    /* what we build for sendmsg, read back as the kernel would return it */
    union {
        struct cmsghdr align;
        uint8_t buf[64];
    } u;
    uint8_t want = n ? p[0] : 23;
    int len = ztm_ktls_cmsg_put_record_type(u.buf, sizeof(u.buf), want);
    if (len <= 0)
        abort();
    ((struct cmsghdr *)u.buf)->cmsg_type = TLS_GET_RECORD_TYPE;
    if (ztm_ktls_cmsg_record_type(u.buf, (size_t)len, &type) != 0 || type != want)
        abort();
}

static void fuzz_scan(const uint8_t *p, size_t n)
{
    ztm_tls_rec_scan_t whole = {0}, pieces = {0};
    int rw = ztm_tls_rec_scan(&whole, p, n);
    int rp = 0;
    size_t off = 0, step = 1;
    while (off < n && rp == 0) {
        size_t k = step < n - off ? step : n - off;
        size_t need = ztm_tls_rec_scan_need(&pieces);
        if (need == 0 || need > ZTM_TLS_REC_MAX_BODY)
            abort();
        rp = ztm_tls_rec_scan(&pieces, p + off, k);
        off += k;
        step = step * 3 % 17 + 1;
    }
    if ((rw == 0) != (rp == 0))
        abort();
    if (rw == 0 && (whole.records != pieces.records || whole.body_left != pieces.body_left ||
                    whole.hdr_have != pieces.hdr_have))
        abort();
}

static void fuzz_classify(const uint8_t *p, size_t n)
{
    ztm_ktls_hs_t hs = {0};
    while (n >= 3) {
        uint8_t type = p[0];
        size_t len = (size_t)p[1] << 8 | p[2];
        p += 3;
        n -= 3;
        if (len > n)
            len = n;
        /* an exact-size heap copy, so ASan sees any read past the record */
        uint8_t *body = len ? malloc(len) : NULL;
        if (len && !body)
            return;
        if (len)
            memcpy(body, p, len);
        ztm_ktls_rec_t rec;
        ztm_ktls_rec_kind_t k = ztm_ktls_classify(&hs, type, body, len, &rec);
        free(body);
        if (k != rec.kind || k > ZTM_KTLS_REC_BAD || (k == ZTM_KTLS_REC_BAD && !rec.why))
            abort();
        if (k == ZTM_KTLS_REC_DATA && type != ZTM_TLS_CT_APPLICATION_DATA)
            abort();
        p += len;
        n -= len;
        if (k == ZTM_KTLS_REC_BAD || k == ZTM_KTLS_REC_KEY_UPDATE || k == ZTM_KTLS_REC_ALERT ||
            k == ZTM_KTLS_REC_CLOSE_NOTIFY)
            break; /* the connection ends there */
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    /* copy so that reads past the end are caught on a heap block */
    uint8_t *p = malloc(size - 1 ? size - 1 : 1);
    if (!p)
        return 0;
    memcpy(p, data + 1, size - 1);
    switch (data[0] % 3) {
    case 0:
        fuzz_cmsg(p, size - 1);
        break;
    case 1:
        fuzz_scan(p, size - 1);
        break;
    default:
        fuzz_classify(p, size - 1);
        break;
    }
    free(p);
    return 0;
}
