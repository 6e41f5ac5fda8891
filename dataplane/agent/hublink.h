/* An agent's link to its mesh's hub: one mutual-TLS HTTP/2 connection,
 * dialled outbound, per mesh. It carries (proto/ztm/v1/relay.proto has the
 * protocol):
 *  - the control stream (Relay.Events): registration, pushed events
 *    (incoming sessions); HTTP/2 PINGs are the heartbeats;
 *  - unary gRPC calls of the control API (Services.Publish, Services.List,
 *    Mesh.Renew, ...) made by the agent;
 *  - relay streams: the carriers of peer sessions (open / accept).
 *
 * The hub must present a certificate of role hub in the agent's mesh,
 * verified against the mesh CA (anything else: the link is refused with
 * reason "not_a_hub" and retried later). When the connection drops or
 * cannot be made, the link retries with exponential backoff (0.5 s doubling
 * to 30 s, each delay jittered by +-50%), cycling through the hubs in the
 * order given (failover to the next on each failure). Calls made while the
 * link is down fail at once with UNAVAILABLE; relay streams end with an
 * error (their peer sessions end too; the importer's next connection opens
 * a new one).
 *
 * One link, one worker; nothing here is thread-safe. */
#ifndef ZTM_AGENT_HUBLINK_H
#define ZTM_AGENT_HUBLINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "controlplane/grpc/frame.h"
#include "dataplane/runtime/resolver.h"
#include "dataplane/runtime/worker.h"
#include "dataplane/tls/tls.h"

typedef struct ztm_hublink ztm_hublink_t;
typedef struct ztm_relay_stream ztm_relay_stream_t;

typedef enum {
    ZTM_HUBLINK_CONNECTING, /* dialling or handshaking */
    ZTM_HUBLINK_UP,         /* connected, Events stream open (Hello received) */
    ZTM_HUBLINK_BACKOFF,    /* waiting before the next attempt */
    ZTM_HUBLINK_STOPPED,    /* ztm_hublink_stop was called */
} ztm_hublink_state_t;

const char *ztm_hublink_state_name(ztm_hublink_state_t st); /* "connecting", "up", ... */

typedef struct {
    const char *const *hubs; /* "host:port", tried in this order */
    size_t n_hubs;
    const char *mesh;         /* the hub's certificate must be of this mesh */
    ztm_tls_ctx_t *tls;       /* client context: our certificate and key, the mesh CA
                                 (the link takes its own reference; swap it with
                                 ztm_hublink_set_tls after a renewal) */
    /* The link's state changed. HUB is the address in use; WHY says why it
     * went down (NULL when up). */
    void (*on_state)(void *arg, ztm_hublink_state_t st, const char *hub, const char *why);
    /* Another endpoint opened a session to us: accept it with
     * ztm_hublink_accept, or ignore it (the hub gives up after 10 s). */
    void (*on_incoming)(void *arg, uint64_t session_id, const char *from_name,
                        const char *from_endpoint_id);
    void *arg;
    uint64_t backoff_min_ns; /* 0: 500 ms */
    uint64_t backoff_max_ns; /* 0: 30 s */
    /* Hub names are looked up through it (not on the worker); NULL: the
     * link makes its own. */
    ztm_resolver_t *resolver;
} ztm_hublink_config_t;

/* Creates the link on worker W and starts connecting. Strings are copied. */
int ztm_hublink_new(ztm_worker_t *w, const ztm_hublink_config_t *cfg, ztm_hublink_t **out);
/* Closes the connection (GOAWAY; live relay streams are reset) and stops
 * retrying; the link frees itself once its connection is gone. No callback
 * runs after this returns. */
void ztm_hublink_stop(ztm_hublink_t *h);
/* The TLS context for the next connection (after a certificate renewal:
 * live streams stay on the current connection). Takes a reference. */
void ztm_hublink_set_tls(ztm_hublink_t *h, ztm_tls_ctx_t *tls);
/* For tests against a bare `ztm controller` (no Relay service): an Events
 * call answered UNIMPLEMENTED leaves the link up without pushed events,
 * instead of closing it and backing off. Call right after ztm_hublink_new. */
void ztm_hublink_allow_no_events(ztm_hublink_t *h, bool allow);

ztm_hublink_state_t ztm_hublink_state(const ztm_hublink_t *h);
const char *ztm_hublink_hub(const ztm_hublink_t *h); /* the address in use or last tried */
/* "kernel" or "user" while up (the record layer of the connection), else "-". */
const char *ztm_hublink_record_layer(const ztm_hublink_t *h);
const char *ztm_hublink_last_error(const ztm_hublink_t *h); /* NULL if none */

/* ---- unary calls of the control API over the link ----------------------- */
/* The result of a call: ST and MSG (grpc-message, or the local cause), and
 * the response BODY when ST is OK. Valid during the callback only. */
typedef void (*ztm_hublink_reply_fn)(void *arg, ztm_grpc_status_t st, const char *msg,
                                     const uint8_t *body, size_t len);
/* Calls PATH with REQ (copied). CB runs exactly once, later (never inside
 * this call), unless ztm_hublink_stop came first. TIMEOUT_NS 0: 15 s.
 * Returns 0, or -ENOTCONN (the link is not up: nothing will be called). */
int ztm_hublink_call(ztm_hublink_t *h, const char *path, const uint8_t *req, size_t len,
                     uint64_t timeout_ns, ztm_hublink_reply_fn cb, void *arg);

/* ---- relay streams (carriers of peer sessions) -------------------------- */
typedef struct {
    /* The hub joined the two ends: bytes flow from now on (bytes produced
     * before are already on their way; the hub holds them). */
    void (*on_joined)(void *arg);
    /* Bytes from the far end. Valid during the call; they stay counted
     * against the stream's window until ztm_relay_stream_consume. */
    void (*on_data)(void *arg, const uint8_t *data, size_t len);
    /* The far end ended its side (clean EOF). */
    void (*on_eof)(void *arg);
    /* Up to CAP bytes to send into BUF; return the count. 0 with *EOF
     * false: nothing now (call ztm_relay_stream_resume when there is); set
     * *EOF to end our side after these bytes. */
    size_t (*produce)(void *arg, uint8_t *buf, size_t cap, bool *eof);
    /* The stream is gone: REASON from the hub (its ztm-error, e.g.
     * "endpoint bob is not connected to this hub") or the transport
     * ("reset", "link down"). ERROR false after a clean end both ways. The
     * last callback; the stream is freed after it returns. */
    void (*on_close)(void *arg, const char *reason, bool error);
} ztm_relay_cb_t;

/* Opens a session stream to the endpoint named TO (POST /ztm.relay/open).
 * Returns 0 and *OUT (valid until on_close), or -ENOTCONN. */
int ztm_hublink_open(ztm_hublink_t *h, const char *to, const ztm_relay_cb_t *cb, void *arg,
                     ztm_relay_stream_t **out);
/* Accepts SESSION_ID (from on_incoming) (POST /ztm.relay/accept). */
int ztm_hublink_accept(ztm_hublink_t *h, uint64_t session_id, const ztm_relay_cb_t *cb, void *arg,
                       ztm_relay_stream_t **out);
/* N bytes handed to on_data are done with: let the far end send N more. */
void ztm_relay_stream_consume(ztm_relay_stream_t *s, size_t n);
/* The producer has bytes again. */
void ztm_relay_stream_resume(ztm_relay_stream_t *s);
/* Resets the stream (RST_STREAM CANCEL). on_close does not run. */
void ztm_relay_stream_reset(ztm_relay_stream_t *s);

typedef struct {
    uint64_t connects, disconnects;
    uint64_t bytes_in, bytes_out; /* relay stream bytes */
    unsigned relay_streams;
} ztm_hublink_stats_t;
void ztm_hublink_stats(const ztm_hublink_t *h, ztm_hublink_stats_t *out);

#endif
