/* An HTTP/2 session over a link; see h2link.h. */
#include "dataplane/h2/h2link.h"

#include "dataplane/runtime/log.h"

void ztm_h2link_settle(ztm_h2_session_t *s, ztm_link_t *l, int err)
{
    bool failed = err < 0 && err != ZTM_H2_E_CLOSED;
    if (ztm_h2_want_write(s))
        ztm_link_want_write(l);
    if (failed) {
        /* The link sends what is queued (the GOAWAY) before it closes. */
        ztm_log(ZTM_LOG_WARN, "h2.conn_error", "link=%llu peer=%s error=%s",
                (unsigned long long)ztm_link_id(l), ztm_link_peer_str(l), ztm_h2_strerror(err));
        ztm_link_close(l, ztm_h2_strerror(err));
    } else if (!ztm_h2_want_write(s) && ztm_h2_idle(s) && !ztm_h2_wait_peer_close(s)) {
        ztm_link_close(l, "done");
    }
}

int ztm_h2link_feed(ztm_h2_session_t *s, ztm_link_t *l, const uint8_t *data, size_t len)
{
    int r = ztm_h2_feed(s, data, len);
    ztm_h2link_settle(s, l, r);
    return r;
}

size_t ztm_h2link_produce(ztm_h2_session_t *s, ztm_link_t *l, uint8_t *buf, size_t cap)
{
    size_t n = 0;
    if (!s || ztm_h2_flush(s, buf, cap, &n) < 0)
        return 0;
    if (!n && ztm_h2_idle(s) && !ztm_h2_wait_peer_close(s))
        ztm_link_close(l, "done");
    return n;
}
