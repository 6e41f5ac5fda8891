/* An HTTP/2 session carried by a link: the few rules every user of the
 * pair follows, in one place. Feed what the link received; ask the link to
 * write when the session has output; close the link once the session has
 * ended (GOAWAY both ways, or a fatal error) and nothing is left to write. */
#ifndef ZTM_H2_H2LINK_H
#define ZTM_H2_H2LINK_H

#include "dataplane/h2/h2.h"
#include "dataplane/link/link.h"

/* Feeds LEN bytes to S, then settles. Returns ztm_h2_feed's result. */
int ztm_h2link_feed(ztm_h2_session_t *s, ztm_link_t *l, const uint8_t *data, size_t len);
/* After any call into S (ERR: its result, or 0): write or close as due. A
 * failure other than a normal end is logged once, naming the link. */
void ztm_h2link_settle(ztm_h2_session_t *s, ztm_link_t *l, int err);
/* The link's produce: flushes S into BUF (CAP bytes) and returns the count;
 * closes the link when S is done and drained. S may be NULL (nothing yet). */
size_t ztm_h2link_produce(ztm_h2_session_t *s, ztm_link_t *l, uint8_t *buf, size_t cap);

#endif
