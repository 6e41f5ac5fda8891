/* TLS framing parsed by ztm itself; see record.h. Pure functions: every input
 * byte is untrusted and every length is checked before it is used. */
#include "dataplane/tls/record.h"

#include <errno.h>
#include <linux/tls.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>

#ifndef SOL_TLS
#define SOL_TLS 282
#endif

int ztm_tls_rec_scan(ztm_tls_rec_scan_t *s, const uint8_t *p, size_t len)
{
    if (s->broken)
        return -EPROTO;
    while (len > 0) {
        if (s->body_left > 0) {
            size_t n = len < s->body_left ? len : s->body_left;
            s->body_left -= (uint32_t)n;
            p += n;
            len -= n;
            if (s->body_left == 0)
                s->records++;
            continue;
        }
        s->hdr[s->hdr_have++] = *p++;
        len--;
        if (s->hdr_have < ZTM_TLS_REC_HEADER)
            continue;
        s->hdr_have = 0;
        uint8_t type = s->hdr[0];
        uint32_t body = (uint32_t)s->hdr[3] << 8 | s->hdr[4];
        if (type < ZTM_TLS_CT_CHANGE_CIPHER_SPEC || type > ZTM_TLS_CT_APPLICATION_DATA ||
            s->hdr[1] != 3 || body > ZTM_TLS_REC_MAX_BODY) {
            s->broken = true;
            return -EPROTO;
        }
        s->body_left = body;
        if (body == 0)
            s->records++;
    }
    return 0;
}

int ztm_ktls_cmsg_record_type(const void *control, size_t len, uint8_t *type)
{
    const uint8_t *base = control;
    size_t off = 0;
    const size_t hdr = CMSG_ALIGN(sizeof(struct cmsghdr));

    if (len > 0 && !control)
        return -EINVAL;
    while (len - off >= sizeof(struct cmsghdr)) {
        struct cmsghdr c;
        memcpy(&c, base + off, sizeof(c));
        if (c.cmsg_len < sizeof(struct cmsghdr) || c.cmsg_len > len - off)
            return -EINVAL;
        if (c.cmsg_level == SOL_TLS && c.cmsg_type == TLS_GET_RECORD_TYPE) {
            if (c.cmsg_len < hdr + 1)
                return -EINVAL;
            *type = base[off + hdr];
            return 0;
        }
        size_t step = CMSG_ALIGN(c.cmsg_len);
        if (step > len - off)
            break; /* the last message: no room for another after its padding */
        off += step;
    }
    return -ENOENT;
}

int ztm_ktls_cmsg_put_record_type(void *control, size_t cap, uint8_t type)
{
    size_t need = CMSG_SPACE(sizeof(type));
    if (!control || cap < need)
        return -ENOBUFS;
    memset(control, 0, need);
    struct cmsghdr c = {
        .cmsg_len = CMSG_LEN(sizeof(type)),
        .cmsg_level = SOL_TLS,
        .cmsg_type = TLS_SET_RECORD_TYPE,
    };
    memcpy(control, &c, sizeof(c));
    ((uint8_t *)control)[CMSG_ALIGN(sizeof(struct cmsghdr))] = type;
    return (int)need;
}

static ztm_ktls_rec_kind_t bad(ztm_ktls_rec_t *out, const char *why)
{
    out->kind = ZTM_KTLS_REC_BAD;
    out->why = why;
    return out->kind;
}

/* Post-handshake messages (RFC 8446 §4.6): we accept NewSessionTicket (and
 * skip it: we never resume) and KeyUpdate (which the caller must act on). */
static ztm_ktls_rec_kind_t classify_handshake(ztm_ktls_hs_t *hs, const uint8_t *p, size_t len,
                                              ztm_ktls_rec_t *out)
{
    if (len == 0)
        return bad(out, "empty handshake record");
    while (len > 0) {
        if (hs->body_left > 0) {
            if (hs->type == ZTM_TLS_HS_KEY_UPDATE) {
                /* body is one byte: update_not_requested(0) / update_requested(1) */
                if (*p > 1)
                    return bad(out, "bad KeyUpdate request value");
                out->key_update_req = *p;
                hs->body_left = 0;
                if (len > 1)
                    return bad(out, "data after KeyUpdate in the same record");
                out->kind = ZTM_KTLS_REC_KEY_UPDATE;
                return out->kind;
            }
            size_t n = len < hs->body_left ? len : hs->body_left;
            hs->body_left -= (uint32_t)n;
            p += n;
            len -= n;
            continue;
        }
        hs->hdr[hs->hdr_have++] = *p++;
        len--;
        if (hs->hdr_have < 4)
            continue;
        hs->hdr_have = 0;
        hs->type = hs->hdr[0];
        hs->body_left = (uint32_t)hs->hdr[1] << 16 | (uint32_t)hs->hdr[2] << 8 | hs->hdr[3];
        out->hs_type = hs->type;
        switch (hs->type) {
        case ZTM_TLS_HS_NEW_SESSION_TICKET:
            if (hs->body_left == 0)
                return bad(out, "empty NewSessionTicket");
            break;
        case ZTM_TLS_HS_KEY_UPDATE:
            if (hs->body_left != 1)
                return bad(out, "KeyUpdate body is not one byte");
            break;
        default:
            return bad(out, "handshake message not allowed after the handshake");
        }
    }
    out->hs_type = hs->type;
    out->kind = ZTM_KTLS_REC_IGNORE;
    return out->kind;
}

ztm_ktls_rec_kind_t ztm_ktls_classify(ztm_ktls_hs_t *hs, uint8_t type, const uint8_t *body,
                                      size_t len, ztm_ktls_rec_t *out)
{
    memset(out, 0, sizeof(*out));
    if (len > 0 && !body)
        return bad(out, "no record body");
    if (type != ZTM_TLS_CT_HANDSHAKE && (hs->hdr_have > 0 || hs->body_left > 0))
        return bad(out, "handshake message interrupted by another record type");
    switch (type) {
    case ZTM_TLS_CT_APPLICATION_DATA:
        out->kind = ZTM_KTLS_REC_DATA;
        return out->kind;
    case ZTM_TLS_CT_ALERT:
        /* RFC 8446 §6: exactly one alert per record, never fragmented */
        if (len != 2)
            return bad(out, "alert record is not two bytes");
        out->alert = body[1];
        if (body[1] == 0) { /* close_notify */
            out->kind = ZTM_KTLS_REC_CLOSE_NOTIFY;
        } else if (body[1] == 90) { /* user_canceled: a close_notify follows */
            out->kind = ZTM_KTLS_REC_IGNORE;
        } else {
            out->kind = ZTM_KTLS_REC_ALERT;
        }
        return out->kind;
    case ZTM_TLS_CT_HANDSHAKE:
        return classify_handshake(hs, body, len, out);
    default:
        return bad(out, "record type not allowed after the handshake");
    }
}
