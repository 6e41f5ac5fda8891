/* A link: one TCP connection on a worker, with its record layer (TLS in
 * BoringSSL, TLS in the kernel, or plaintext) underneath and one upper
 * protocol (HTTP/2) above. Agent-hub, hub-hub and test connections are
 * links; the upper layer never sees a socket or a TLS record.
 *
 * The link owns the I/O: it receives (into the TLS staging buffer, or into
 * the worker's provided buffers when the kernel or nobody decrypts), hands
 * plaintext up with on_data, and pulls plaintext down with produce when it
 * can send. Upper layers consume every byte they are given (HTTP/2's own
 * windows bound what a peer may send), so a link holds at most one receive
 * and one send in flight.
 *
 * Lifetime: the link holds a reference on itself until it is closed; its
 * ops hold more. on_close runs once, from the release, when the last
 * completion is in: the upper layer frees its state there. */
#ifndef ZTM_LINK_LINK_H
#define ZTM_LINK_LINK_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "dataplane/runtime/net.h"
#include "dataplane/runtime/worker.h"
#include "dataplane/tls/tls.h"

typedef struct ztm_link ztm_link_t;

typedef struct {
    /* The transport is ready (handshake done and the peer verified). Return
     * 0, or -errno to close the link. */
    int (*on_open)(ztm_link_t *l, void *user);
    /* Plaintext received; consume all of it. Return 0, or < 0 to close. */
    int (*on_data)(ztm_link_t *l, void *user, const uint8_t *data, size_t len);
    /* Write up to CAP bytes of plaintext to send into BUF; return the count
     * (0: nothing now; call ztm_link_want_write when there is). */
    size_t (*produce)(ztm_link_t *l, void *user, uint8_t *buf, size_t cap);
    /* The link is gone; REASON says why ("done", "peer_closed", "reset",
     * "handshake: expired", ...). Free what refers to the link. */
    void (*on_close)(ztm_link_t *l, void *user, const char *reason);
} ztm_link_upper_t;

typedef struct {
    ztm_tls_ctx_t *tls;          /* NULL: plaintext (tests, benchmarks) */
    const char *sni;             /* client links: server name sent */
    uint64_t connect_timeout_ns; /* client links; 0: 10 s */
} ztm_link_config_t;

/* Takes FD (an accepted socket) as a server link. Returns 0 and *OUT (a
 * borrowed pointer, valid until on_close), or -errno (FD closed). */
int ztm_link_accept(ztm_worker_t *w, int fd, const ztm_link_config_t *cfg,
                    const ztm_link_upper_t *upper, void *user, ztm_link_t **out);
/* Dials TO as a client link. Same returns; connect failures and deadlines
 * arrive later as on_close. */
int ztm_link_connect(ztm_worker_t *w, const ztm_addr_t *to, const ztm_link_config_t *cfg,
                     const ztm_link_upper_t *upper, void *user, ztm_link_t **out);

/* The upper layer has output: the link calls produce when it can send. */
void ztm_link_want_write(ztm_link_t *l);
/* Sends what is pending (and close_notify under TLS), then closes. */
void ztm_link_close(ztm_link_t *l, const char *reason);
/* Closes at once with an RST. */
void ztm_link_abort(ztm_link_t *l, const char *reason);

ztm_worker_t *ztm_link_worker(const ztm_link_t *l);
/* The TLS connection (NULL for plaintext links): peer certificate, cipher. */
ztm_tls_conn_t *ztm_link_tls(const ztm_link_t *l);
/* "kernel", "user" (BoringSSL) or "none" (plaintext). */
const char *ztm_link_record_layer(const ztm_link_t *l);
const char *ztm_link_peer_str(const ztm_link_t *l);
uint64_t ztm_link_id(const ztm_link_t *l);

#endif
