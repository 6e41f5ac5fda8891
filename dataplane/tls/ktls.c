/* The switch of a finished TLS 1.3 session from BoringSSL to the kernel, and
 * the control-record handling that follows; see ktls.h and KTLS.md.
 *
 * Keys: the application traffic secrets come from BoringSSL's keylog
 * callback (tls.c captures them); key and IV are HKDF-Expand-Label(secret,
 * "key"/"iv"), the record sequence numbers are BoringSSL's. */
#include "dataplane/tls/ktls.h"

#include "dataplane/runtime/log.h"
#include "dataplane/tls/tls_int.h"

#include <errno.h>
#include <linux/tls.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/digest.h>
#include <openssl/hkdf.h>
#include <openssl/mem.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef SOL_TLS
#define SOL_TLS 282
#endif
#ifndef TCP_ULP
#define TCP_ULP 31
#endif

#define ALERT_LEVEL_WARNING 1
#define ALERT_CLOSE_NOTIFY  0

union crypto_info {
    struct tls_crypto_info info;
    struct tls12_crypto_info_aes_gcm_128 aes128;
    struct tls12_crypto_info_aes_gcm_256 aes256;
    struct tls12_crypto_info_chacha20_poly1305 chacha;
};

static const char *role_name(const ztm_tls_conn_t *c)
{
    return c->ctx->role == ZTM_TLS_SERVER ? "server" : "client";
}

int ztm_ktls_available(void)
{
#ifndef ZTM_WITH_KTLS
    return -EOPNOTSUPP;
#else
    static int cached = 1; /* 1: not probed yet */
    int r = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (r != 1)
        return r;
    /* The ULP attaches only to an established socket: on an unconnected one
     * a kernel that has it answers ENOTCONN, one that lacks it ENOENT. */
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (setsockopt(fd, SOL_TCP, TCP_ULP, "tls", sizeof("tls")) == 0 || errno == ENOTCONN)
        r = 0;
    else
        r = -errno;
    close(fd);
    __atomic_store_n(&cached, r, __ATOMIC_RELAXED);
    return r;
#endif
}

bool ztm_ktls_pending(const ztm_tls_conn_t *c)
{
    return !c->ktls_decided && c->state != CONN_FAILED;
}

unsigned ztm_ktls_state(const ztm_tls_conn_t *c)
{
    return c->ktls;
}

/* RFC 8446 §7.1 HKDF-Expand-Label(secret, label, "", out_len). */
static int hkdf_expand_label(uint8_t *out, size_t out_len, const EVP_MD *md, const uint8_t *secret,
                             size_t secret_len, const char *label)
{
    uint8_t info[2 + 1 + 255 + 1];
    size_t label_len = strlen(label);
    if (label_len + 6 > 255 || out_len > 0xffff)
        return -EINVAL;
    size_t n = 0;
    info[n++] = (uint8_t)(out_len >> 8);
    info[n++] = (uint8_t)out_len;
    info[n++] = (uint8_t)(6 + label_len);
    memcpy(info + n, "tls13 ", 6);
    n += 6;
    memcpy(info + n, label, label_len);
    n += label_len;
    info[n++] = 0; /* empty context */
    return HKDF_expand(out, out_len, md, secret, secret_len, info, n) ? 0 : -EINVAL;
}

/* Fills CI for one direction from its traffic SECRET and next record
 * sequence SEQ. Returns the struct's size, or -EOPNOTSUPP for a cipher
 * the kernel API has no struct for. */
static int build_crypto_info(union crypto_info *ci, uint16_t cipher, const EVP_MD *md,
                             const uint8_t *secret, size_t secret_len, uint64_t seq)
{
    uint8_t key[32], iv[12], rec_seq[8];
    size_t key_len;
    int size;

    memset(ci, 0, sizeof(*ci));
    switch (cipher) {
    case 0x1301:
        key_len = TLS_CIPHER_AES_GCM_128_KEY_SIZE;
        break;
    case 0x1302:
        key_len = TLS_CIPHER_AES_GCM_256_KEY_SIZE;
        break;
    case 0x1303:
        key_len = TLS_CIPHER_CHACHA20_POLY1305_KEY_SIZE;
        break;
    default:
        return -EOPNOTSUPP;
    }
    if (hkdf_expand_label(key, key_len, md, secret, secret_len, "key") != 0 ||
        hkdf_expand_label(iv, sizeof(iv), md, secret, secret_len, "iv") != 0) {
        size = -EINVAL;
        goto Exit;
    }
    for (int i = 0; i < 8; i++)
        rec_seq[i] = (uint8_t)(seq >> (56 - 8 * i));

    ci->info.version = TLS_1_3_VERSION;
    switch (cipher) {
    case 0x1301:
        ci->info.cipher_type = TLS_CIPHER_AES_GCM_128;
        memcpy(ci->aes128.key, key, TLS_CIPHER_AES_GCM_128_KEY_SIZE);
        memcpy(ci->aes128.salt, iv, TLS_CIPHER_AES_GCM_128_SALT_SIZE);
        memcpy(ci->aes128.iv, iv + 4, TLS_CIPHER_AES_GCM_128_IV_SIZE);
        memcpy(ci->aes128.rec_seq, rec_seq, sizeof(rec_seq));
        size = sizeof(ci->aes128);
        break;
    case 0x1302:
        ci->info.cipher_type = TLS_CIPHER_AES_GCM_256;
        memcpy(ci->aes256.key, key, TLS_CIPHER_AES_GCM_256_KEY_SIZE);
        memcpy(ci->aes256.salt, iv, TLS_CIPHER_AES_GCM_256_SALT_SIZE);
        memcpy(ci->aes256.iv, iv + 4, TLS_CIPHER_AES_GCM_256_IV_SIZE);
        memcpy(ci->aes256.rec_seq, rec_seq, sizeof(rec_seq));
        size = sizeof(ci->aes256);
        break;
    default:
        ci->info.cipher_type = TLS_CIPHER_CHACHA20_POLY1305;
        memcpy(ci->chacha.key, key, TLS_CIPHER_CHACHA20_POLY1305_KEY_SIZE);
        memcpy(ci->chacha.iv, iv, TLS_CIPHER_CHACHA20_POLY1305_IV_SIZE);
        memcpy(ci->chacha.rec_seq, rec_seq, sizeof(rec_seq));
        size = sizeof(ci->chacha);
        break;
    }
Exit:
    OPENSSL_cleanse(key, sizeof(key));
    OPENSSL_cleanse(iv, sizeof(iv));
    return size;
}

/* Settles on user space (auto) or fails the connection (on). */
static int not_in_kernel(ztm_tls_conn_t *c, const char *why, int err)
{
    ztm_tls_wipe_secrets_(c);
    c->ktls_decided = true;
    if (c->ctx->ktls == ZTM_KTLS_AUTO) {
        ZTM_TLS_STAT(ktls_fallbacks);
        ZTM_TLS_STAT(record_layer_user);
        char reason[160];
        snprintf(reason, sizeof(reason), "%s: %s", why, err ? strerror(-err) : "-");
        ztm_tls_log_established_(c, reason);
        return 0;
    }
    ztm_log(ZTM_LOG_ERROR, "tls.ktls_failed",
            "role=%s ktls_mode=on reason=\"%s\" error=\"%s\" hint=\"the kernel needs the tls "
            "module (modprobe tls) or use --ktls auto\"",
            role_name(c), why, err ? strerror(-err) : "-");
    return ztm_tls_conn_fail_(c, ZTM_TLS_E_KTLS_UNAVAILABLE);
}

int ztm_ktls_enable(ztm_tls_conn_t *c, int fd)
{
    if (c->state == CONN_FAILED)
        return ZTM_TLS_E_CLOSED;
    if (c->state != CONN_OPEN)
        return -ENOTCONN;
    if (c->ktls_decided)
        return 0;
    /* A clean point: everything we sealed has left, everything received
     * has been opened, and the socket is at a record boundary. */
    if (c->out_w != c->out_r || c->in_w != c->in_r || c->in_lent ||
        !ztm_tls_rec_scan_at_boundary(&c->rx_scan) || SSL_has_pending(c->ssl))
        return -EAGAIN;
    int avail = ztm_ktls_available();
    if (avail != 0)
        return not_in_kernel(c, "kernel has no TLS ULP", avail);

    const SSL_CIPHER *cipher = SSL_get_current_cipher(c->ssl);
    uint16_t id = SSL_CIPHER_get_protocol_id(cipher);
    const EVP_MD *md = EVP_get_digestbynid(SSL_CIPHER_get_prf_nid(cipher));
    size_t hash_len = md ? EVP_MD_size(md) : 0;
    if (!md || c->secret_len[SECRET_CLIENT] != hash_len || c->secret_len[SECRET_SERVER] != hash_len)
        return not_in_kernel(c, "traffic secrets not captured", 0);

    int tx_slot = c->ctx->role == ZTM_TLS_CLIENT ? SECRET_CLIENT : SECRET_SERVER;
    union crypto_info tx, rx;
    int tx_len = build_crypto_info(&tx, id, md, c->secret[tx_slot], hash_len,
                                   SSL_get_write_sequence(c->ssl));
    int rx_len = build_crypto_info(&rx, id, md, c->secret[1 - tx_slot], hash_len,
                                   SSL_get_read_sequence(c->ssl));
    int rc;
    if (tx_len < 0 || rx_len < 0) {
        rc = not_in_kernel(c, "cipher not supported by kTLS", tx_len < 0 ? tx_len : rx_len);
        goto Exit;
    }
    if (setsockopt(fd, SOL_TCP, TCP_ULP, "tls", sizeof("tls")) != 0) {
        rc = not_in_kernel(c, "setsockopt TCP_ULP tls", -errno);
        goto Exit;
    }
    /* With the ULP attached but no keys, the socket still passes bytes
     * through untouched: failing here can fall back to user space. */
    if (setsockopt(fd, SOL_TLS, TLS_TX, &tx, (socklen_t)tx_len) != 0) {
        rc = not_in_kernel(c, "setsockopt TLS_TX", -errno);
        goto Exit;
    }
    if (setsockopt(fd, SOL_TLS, TLS_RX, &rx, (socklen_t)rx_len) != 0) {
        int e = errno;
        ztm_log(ZTM_LOG_ERROR, "tls.ktls_failed",
                "role=%s reason=\"kernel took TLS_TX but refused TLS_RX\" error=\"%s\"",
                role_name(c), strerror(e));
        ztm_tls_wipe_secrets_(c);
        c->ktls_decided = true;
        rc = ztm_tls_conn_fail_(c, ZTM_TLS_E_KTLS_UNAVAILABLE);
        goto Exit;
    }
#ifdef TLS_RX_EXPECT_NO_PAD
    /* Our peers never pad records: let the kernel decrypt in place. A
     * padding peer only costs a retry; an older kernel just says no. */
    int one = 1;
    (void)setsockopt(fd, SOL_TLS, TLS_RX_EXPECT_NO_PAD, &one, sizeof(one));
#endif
    c->ktls = ZTM_KTLS_TX | ZTM_KTLS_RX;
    c->ktls_decided = true;
    c->tx_records_est = SSL_get_write_sequence(c->ssl);
    c->tx_check_at = c->ctx->gcm_limit / 2;
    ztm_tls_wipe_secrets_(c);
    ztm_tls_drop_buffers_(c);
    ZTM_TLS_STAT(record_layer_ktls);
    ztm_tls_log_established_(c, NULL);
    rc = 0;
Exit:
    OPENSSL_cleanse(&tx, sizeof(tx));
    OPENSSL_cleanse(&rx, sizeof(rx));
    return rc;
}

int ztm_ktls_send_close_notify(ztm_tls_conn_t *c, int fd)
{
    if (!(c->ktls & ZTM_KTLS_TX))
        return -EOPNOTSUPP;
    if (c->shutdown_sent)
        return 0;
    uint8_t alert[2] = {ALERT_LEVEL_WARNING, ALERT_CLOSE_NOTIFY};
    union {
        struct cmsghdr align;
        uint8_t buf[CMSG_SPACE(1)];
    } control;
    int clen = ztm_ktls_cmsg_put_record_type(control.buf, sizeof(control.buf), ZTM_TLS_CT_ALERT);
    if (clen < 0)
        return clen;
    struct iovec iov = {alert, sizeof(alert)};
    struct msghdr msg = {
        .msg_iov = &iov,
        .msg_iovlen = 1,
        .msg_control = control.buf,
        .msg_controllen = (size_t)clen,
    };
    ssize_t n = sendmsg(fd, &msg, MSG_NOSIGNAL);
    if (n < 0)
        return -errno;
    if (n != sizeof(alert))
        return -EIO;
    c->shutdown_sent = true;
    return 0;
}

/* Copies bytes [OFF, OFF+CAP) of the first LEN bytes spread over MSG's
 * iovecs into DST; returns how many. */
static size_t gather(const struct msghdr *msg, size_t len, size_t off, uint8_t *dst, size_t cap)
{
    size_t n = 0, pos = 0;
    if (off >= len)
        return 0;
    if (cap > len - off)
        cap = len - off;
    for (size_t i = 0; i < (size_t)msg->msg_iovlen && n < cap && pos < len; i++) {
        const uint8_t *base = msg->msg_iov[i].iov_base;
        size_t l = msg->msg_iov[i].iov_len;
        if (pos + l > off) {
            size_t skip = off > pos ? off - pos : 0;
            size_t take = l - skip;
            if (take > cap - n)
                take = cap - n;
            memcpy(dst + n, base + skip, take);
            n += take;
            off += take;
        }
        pos += l;
    }
    return n;
}

static ssize_t record_failed(ztm_tls_conn_t *c, const char *reason, const char *detail, int err)
{
    ztm_log(ZTM_LOG_WARN, "tls.conn_failed", "role=%s record_layer=kernel reason=%s error=\"%s\"",
            role_name(c), reason, detail);
    return ztm_tls_conn_fail_(c, err);
}

ssize_t ztm_ktls_on_recvmsg(ztm_tls_conn_t *c, const struct msghdr *msg, ssize_t res)
{
    if (c->state == CONN_FAILED)
        return ZTM_TLS_E_CLOSED;
    if (!(c->ktls & ZTM_KTLS_RX))
        return -EOPNOTSUPP;
    if (res < 0) {
        switch (-res) {
        case EAGAIN:
        case EINTR:
            return -EAGAIN;
        case EBADMSG:
            return record_failed(c, "bad_record", "record failed to decrypt (EBADMSG)",
                                 ZTM_TLS_E_PROTOCOL);
        case EMSGSIZE:
            return record_failed(c, "bad_record", "record too large (EMSGSIZE)",
                                 ZTM_TLS_E_PROTOCOL);
        case EKEYEXPIRED: /* kernels with TLS 1.3 rekey support pause here */
            return record_failed(c, "rekey_needed", "peer sent KeyUpdate", ZTM_TLS_E_REKEY_NEEDED);
        }
        return res;
    }
    if (res == 0) {
        if (c->peer_closed)
            return 0;
        return record_failed(c, "truncated", "transport closed without close_notify",
                             ZTM_TLS_E_TRUNCATED);
    }
    if (msg->msg_flags & MSG_CTRUNC)
        return record_failed(c, "bad_record", "control buffer too small", ZTM_TLS_E_PROTOCOL);
    uint8_t type = ZTM_TLS_CT_APPLICATION_DATA;
    int r = ztm_ktls_cmsg_record_type(msg->msg_control, msg->msg_controllen, &type);
    if (r == -EINVAL)
        return record_failed(c, "bad_record", "malformed control message", ZTM_TLS_E_PROTOCOL);
    if (type == ZTM_TLS_CT_APPLICATION_DATA)
        return res;

    /* A control record. Alerts are two bytes; handshake messages are
     * classified as a stream, a slice of the record at a time. */
    ztm_ktls_rec_t rec;
    uint8_t chunk[256];
    size_t done = 0;
    do {
        size_t n = gather(msg, (size_t)res, done, chunk, sizeof(chunk));
        ztm_ktls_classify(&c->ktls_hs, type, chunk, n, &rec);
        done += n;
        if (rec.kind != ZTM_KTLS_REC_IGNORE || n == 0)
            break;
    } while (done < (size_t)res && type == ZTM_TLS_CT_HANDSHAKE);
    OPENSSL_cleanse(chunk, sizeof(chunk));

    switch (rec.kind) {
    case ZTM_KTLS_REC_DATA:
    case ZTM_KTLS_REC_IGNORE:
        ztm_log(ZTM_LOG_DEBUG, "tls.ktls_control", "role=%s type=%u hs_type=%u action=ignored",
                role_name(c), type, rec.hs_type);
        return -EAGAIN;
    case ZTM_KTLS_REC_CLOSE_NOTIFY:
        c->peer_closed = true;
        return 0;
    case ZTM_KTLS_REC_ALERT: {
        c->alert = rec.alert;
        char detail[96];
        snprintf(detail, sizeof(detail), "peer alert %u (%s)", rec.alert,
                 SSL_alert_desc_string_long(rec.alert));
        return record_failed(c, "peer_alert", detail, ZTM_TLS_E_PEER_ALERT);
    }
    case ZTM_KTLS_REC_KEY_UPDATE:
        ztm_log(ZTM_LOG_WARN, "tls.ktls_rekey_needed",
                "role=%s update_requested=%u action=\"send close_notify and close; the peer "
                "reconnects\" reason=\"peer sent TLS 1.3 KeyUpdate; this kernel's TLS cannot "
                "rekey\"",
                role_name(c), rec.key_update_req);
        return ztm_tls_conn_fail_(c, ZTM_TLS_E_REKEY_NEEDED);
    case ZTM_KTLS_REC_BAD:
        break;
    }
    return record_failed(c, "bad_record", rec.why ? rec.why : "unexpected record",
                         ZTM_TLS_E_PROTOCOL);
}

ssize_t ztm_ktls_recv(ztm_tls_conn_t *c, int fd, void *buf, size_t cap)
{
    if (!buf || cap == 0)
        return -EINVAL;
    for (;;) {
        union {
            struct cmsghdr align;
            uint8_t buf[CMSG_SPACE(1)];
        } control;
        struct iovec iov = {buf, cap};
        struct msghdr msg = {
            .msg_iov = &iov,
            .msg_iovlen = 1,
            .msg_control = control.buf,
            .msg_controllen = sizeof(control.buf),
        };
        ssize_t n = recvmsg(fd, &msg, MSG_DONTWAIT);
        ssize_t r = ztm_ktls_on_recvmsg(c, &msg, n < 0 ? -errno : n);
        if (r == -EAGAIN && n > 0)
            continue; /* a control record was consumed */
        return r;
    }
}

int ztm_ktls_note_sent(ztm_tls_conn_t *c, int fd, size_t bytes)
{
    if (!(c->ktls & ZTM_KTLS_TX) || !bytes)
        return 0;
    const SSL_CIPHER *ci = SSL_get_current_cipher(c->ssl);
    uint16_t id = ci ? SSL_CIPHER_get_protocol_id(ci) : 0;
    if (id != 0x1301 && id != 0x1302)
        return 0; /* ChaCha20-Poly1305's limit is the 2^64 sequence space */
    /* Each send ends a record at the latest; full records hold 2^14 bytes. */
    c->tx_records_est += (bytes + 16383) / 16384;
    if (c->tx_records_est < c->tx_check_at)
        return 0;
    union crypto_info ci_now;
    /* the kernel wants the exact struct size for the cipher */
    socklen_t len = id == 0x1301 ? sizeof(ci_now.aes128) : sizeof(ci_now.aes256);
    int rc = 0;
    if (getsockopt(fd, SOL_TLS, TLS_TX, &ci_now, &len) != 0) {
        rc = -errno;
        goto Exit;
    }
    const uint8_t *seq_be = id == 0x1301 ? ci_now.aes128.rec_seq : ci_now.aes256.rec_seq;
    uint64_t seq = 0;
    for (int i = 0; i < 8; i++)
        seq = seq << 8 | seq_be[i];
    uint64_t limit = c->ctx->gcm_limit;
    c->tx_records_est = seq;
    if (seq >= limit) {
        ztm_log(ZTM_LOG_WARN, "tls.record_limit",
                "role=%s records=%llu limit=%llu action=\"send close_notify and reconnect: "
                "the kernel cannot rekey\"",
                role_name(c), (unsigned long long)seq, (unsigned long long)limit);
        rc = ZTM_TLS_E_RECORD_LIMIT;
        goto Exit;
    }
    c->tx_check_at = seq + (limit - seq + 1) / 2;
Exit:
    OPENSSL_cleanse(&ci_now, sizeof(ci_now));
    return rc;
}
