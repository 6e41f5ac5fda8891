/* HTTP/2 sessions: nghttp2 as a pure state machine for the engine.
 *
 * A session does no I/O and knows nothing of TLS or io_uring. The caller
 * (the worker's connection glue) hands it plaintext with ztm_h2_feed() and
 * takes frames out with ztm_h2_flush() into a buffer it owns; each flush
 * fills that buffer as far as it can (DATA frames are sized to the room
 * left), so a 16 KiB buffer makes one full TLS record per flush.
 *
 * Bodies go both ways without unbounded buffering:
 *  - receiving: on_data hands the application each chunk; the bytes count
 *    against the stream and connection windows until the application calls
 *    ztm_h2_consume(), so a consumer that stops consuming stops its peer;
 *  - sending: the session pulls body bytes with read_body() straight into
 *    the caller's flush buffer (one copy, from the application's source);
 *    a stream with nothing to send is parked until ztm_h2_resume().
 *
 * Protections: SETTINGS limits (concurrent streams, header list size), a
 * token bucket on stream resets (RST_STREAM received, or streams we had to
 * reset because of the peer: CVE-2023-44487 and its variants), a token
 * bucket on control frames that cost work but carry nothing (PING,
 * SETTINGS, PRIORITY, empty DATA), and bounds on frames queued while the
 * peer does not read. Past a limit the session sends GOAWAY
 * ENHANCE_YOUR_CALM and ztm_h2_feed() returns ZTM_H2_E_CALM.
 *
 * The caller's loop (tests/unit/dataplane/h2/test_h2_clients.c has one on
 * plain sockets): feed what arrives; while ztm_h2_want_write(), flush into
 * a free output buffer and send it; close when ztm_h2_idle() (or after a
 * feed error, once the output is written). Any call may make output
 * pending (a consume queues WINDOW_UPDATE, a resume DATA), so check
 * want_write after calling in from outside a callback too. Run
 * ztm_h2_tick() from a timer for keepalive and graceful shutdown.
 *
 * Callbacks run inside ztm_h2_feed(), ztm_h2_flush() and ztm_h2_tick(). They
 * may call every function here except ztm_h2_feed, ztm_h2_flush,
 * ztm_h2_tick and ztm_h2_free. Not thread-safe: one session, one worker. */
#ifndef ZTM_H2_H2_H
#define ZTM_H2_H2_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Errors: 0 or -errno (-ENOMEM, -EINVAL), or one of these (all < -4095). */
enum {
    ZTM_H2_E_PROTOCOL = -4200,  /* the peer broke HTTP/2; GOAWAY queued */
    ZTM_H2_E_CALM = -4201,      /* the peer flooded us (resets, control frames,
                                   unread output); GOAWAY ENHANCE_YOUR_CALM queued */
    ZTM_H2_E_CLOSED = -4202,    /* the session is closing or closed */
    ZTM_H2_E_DEAD_PEER = -4203, /* a keepalive PING went unanswered */
    ZTM_H2_E_STREAM = -4204,    /* no such stream, or not in a state for this */
    ZTM_H2_E_INTERNAL = -4205,  /* nghttp2 failed (a bug, or out of memory inside it) */
};

/* HTTP/2 error codes (RFC 9113 section 7) used with ztm_h2_reset and reported
 * by on_stream_close / on_goaway. */
enum {
    ZTM_H2_NO_ERROR = 0x0,
    ZTM_H2_PROTOCOL_ERROR = 0x1,
    ZTM_H2_INTERNAL_ERROR = 0x2,
    ZTM_H2_FLOW_CONTROL_ERROR = 0x3,
    ZTM_H2_REFUSED_STREAM = 0x7,
    ZTM_H2_CANCEL = 0x8,
    ZTM_H2_ENHANCE_YOUR_CALM = 0xb,
};

typedef enum { ZTM_H2_SERVER, ZTM_H2_CLIENT } ztm_h2_role_t;

typedef struct ztm_h2_session ztm_h2_session_t;

/* One header field. Names we send must be lowercase (RFC 9113 8.2.1; the
 * peer resets the stream otherwise). Received fields point into session
 * memory valid for the duration of the callback, and are NUL-terminated. */
typedef struct {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
} ztm_h2_header_t;

/* A request or response head. Pseudo-header fields are split out (NULL /
 * 0 when absent); HEADERS holds the regular fields only. */
typedef struct {
    const char *method, *scheme, *authority, *path;
    const char *protocol; /* extended CONNECT (RFC 8441) */
    int status;           /* responses */
    const ztm_h2_header_t *headers;
    size_t n_headers;
    bool end_stream; /* received: the peer sends no body */
} ztm_h2_msg_t;

/* Every callback gets the session, the user pointer given to ztm_h2_new,
 * the stream id and the stream's data pointer (ztm_h2_stream_set_data; for
 * client requests the one given to ztm_h2_request). Any may be NULL. */
typedef struct {
    /* Server: a request head arrived. Answer now or later with
     * ztm_h2_respond (or refuse with ztm_h2_reset). */
    void (*on_request)(ztm_h2_session_t *s, void *user, int32_t stream_id, void *sdata,
                       const ztm_h2_msg_t *req);
    /* Client: the final response head (1xx are skipped). END_STREAM set on
     * it means no body (e.g. a gRPC trailers-only response). */
    void (*on_response)(ztm_h2_session_t *s, void *user, int32_t stream_id, void *sdata,
                        const ztm_h2_msg_t *resp);
    /* Either role: body bytes. Valid during the call only. They stay
     * counted against the windows until ztm_h2_consume(). */
    void (*on_data)(ztm_h2_session_t *s, void *user, int32_t stream_id, void *sdata,
                    const uint8_t *data, size_t len);
    /* Either role: trailer fields (always followed by on_end_stream). */
    void (*on_trailers)(ztm_h2_session_t *s, void *user, int32_t stream_id, void *sdata,
                        const ztm_h2_header_t *h, size_t n);
    /* Either role: the peer finished sending (END_STREAM), once per stream. */
    void (*on_end_stream)(ztm_h2_session_t *s, void *user, int32_t stream_id, void *sdata);
    /* Either role: the stream is gone (ERROR_CODE 0 for a clean end). The
     * last callback for the stream; the application frees SDATA here. */
    void (*on_stream_close)(ztm_h2_session_t *s, void *user, int32_t stream_id, void *sdata,
                            uint32_t error_code);
    /* Pulls up to MAX body bytes into DST for a stream sent with
     * ZTM_H2_BODY. Returns the count (set *EOF at the end), or 0 without
     * *EOF to park the stream until ztm_h2_resume(), or a negative value to
     * reset the stream (INTERNAL_ERROR). */
    ssize_t (*read_body)(ztm_h2_session_t *s, void *user, int32_t stream_id, void *sdata,
                         uint8_t *dst, size_t max, bool *eof);
    /* Either role: the peer sent GOAWAY. Streams above LAST_STREAM_ID that
     * we opened are closed (REFUSED_STREAM); open no more. */
    void (*on_goaway)(ztm_h2_session_t *s, void *user, uint32_t error_code, int32_t last_stream_id);
} ztm_h2_callbacks_t;

/* Zero means "the default" for every field. */
typedef struct {
    uint32_t conn_window;            /* receive window, connection (16 MiB) */
    uint32_t stream_window;          /* receive window, each stream (1 MiB) */
    uint32_t max_concurrent_streams; /* server: streams the peer may open (1000) */
    uint32_t max_header_list;        /* bytes per received header list, RFC 9113
                                        accounting (64 KiB); larger: refused */
    uint32_t reset_burst;            /* stream resets tolerated at once (200) */
    uint32_t reset_rate;             /* ... refilled per second (50) */
    uint32_t flood_burst;            /* PING/SETTINGS/PRIORITY/empty DATA at once (1000) */
    uint32_t flood_rate;             /* ... refilled per second (100) */
    uint32_t max_outbound_ack;       /* PING/SETTINGS ACKs queued unsent (1000) */
    uint32_t max_outbound_queue;     /* frames queued unsent (2 * streams + 1000) */
    uint64_t ping_interval_ns;       /* ztm_h2_tick: PING after this much silence (30 s) */
    uint64_t ping_timeout_ns;        /* ... dead peer if unanswered this long (20 s) */
    bool enable_connect_protocol;    /* server: SETTINGS_ENABLE_CONNECT_PROTOCOL */
    uint64_t conn_id;                /* for log lines */
    /* Monotonic ns (NULL: CLOCK_MONOTONIC). The worker passes its loop time. */
    uint64_t (*clock)(void *user);
} ztm_h2_config_t;

/* Creates a session in ROLE with callbacks CB (copied), USER passed to
 * them, and CFG (NULL: defaults). The preface is queued at once: client
 * magic + SETTINGS for a client, SETTINGS for a server, then the
 * connection window update. Returns 0, -ENOMEM or -EINVAL. */
int ztm_h2_new(ztm_h2_session_t **out, ztm_h2_role_t role, const ztm_h2_callbacks_t *cb, void *user,
               const ztm_h2_config_t *cfg);
/* Frees S. Streams still open end with on_stream_close(ZTM_H2_CANCEL)
 * first (so the application frees their data in one place); those calls
 * must not call back into S but for ztm_h2_consume. NULL is fine. */
void ztm_h2_free(ztm_h2_session_t *s);

/* Consumes LEN plaintext bytes from the peer, all of them. Returns 0, or a
 * negative value that means "stop reading and close the connection": then
 * flush until ztm_h2_want_write() is false (a closing session writes at
 * most the frame in progress and a GOAWAY) and close.
 *   ZTM_H2_E_PROTOCOL  the peer broke the protocol
 *   ZTM_H2_E_CALM      the peer went past a flood / reset limit
 *   ZTM_H2_E_CLOSED    the session had ended (GOAWAY both ways, no streams)
 *   ZTM_H2_E_INTERNAL  nghttp2 failed; nothing more will be written
 * Most protocol errors nghttp2 finds it reports only by queueing a GOAWAY:
 * feed returns 0, the flush writes the GOAWAY, later feeds return
 * ZTM_H2_E_PROTOCOL and ztm_h2_idle() turns true. So after every feed and
 * flush the caller checks ztm_h2_want_write() and ztm_h2_idle(). */
int ztm_h2_feed(ztm_h2_session_t *s, const uint8_t *data, size_t len);

/* Writes pending frames into BUF (CAP bytes, any size >= 1) and sets
 * *OUT_LEN. A flush stops when the buffer is nearly full (what is left is
 * too small for a useful DATA frame), nothing is left to send, or all
 * streams wait for data or windows. Returns 0 or ZTM_H2_E_INTERNAL. */
int ztm_h2_flush(ztm_h2_session_t *s, uint8_t *buf, size_t cap, size_t *out_len);
/* True when a flush would write something. */
bool ztm_h2_want_write(const ztm_h2_session_t *s);
/* True when the connection can be closed: the session ended (GOAWAY sent or
 * received and no stream left, or a fatal error) and nothing is left to
 * write. */
bool ztm_h2_idle(const ztm_h2_session_t *s);
/* Server: the client ended the session with GOAWAY less than 2 s ago: let
 * it close the transport first (its close_notify is then read). */
bool ztm_h2_wait_peer_close(ztm_h2_session_t *s);

/* Flags for ztm_h2_request / ztm_h2_respond. Without either, the head ends
 * the stream. */
enum {
    ZTM_H2_BODY = 1 << 0,     /* a body follows, pulled with read_body */
    ZTM_H2_TRAILERS = 1 << 1, /* the stream ends with ztm_h2_trailers() */
};

/* Client: opens a stream for REQ (method, scheme, authority, path and
 * headers; end_stream ignored) with SDATA as its data. Requests over the
 * server's SETTINGS_MAX_CONCURRENT_STREAMS wait in the session, so the
 * application bounds how many it has open. A stream closed with
 * REFUSED_STREAM was not processed and may be retried. Returns the stream
 * id (> 0), ZTM_H2_E_CLOSED after a GOAWAY or shutdown, -EINVAL, -ENOMEM. */
int32_t ztm_h2_request(ztm_h2_session_t *s, const ztm_h2_msg_t *req, unsigned flags, void *sdata);
/* Server: answers STREAM_ID with STATUS and N headers H (copied). With
 * neither flag the head carries END_STREAM (a trailers-only gRPC response
 * is STATUS 200 with grpc-status in H). Returns 0, ZTM_H2_E_STREAM,
 * -EINVAL, -ENOMEM. */
int ztm_h2_respond(ztm_h2_session_t *s, int32_t stream_id, int status, const ztm_h2_header_t *h,
                   size_t n, unsigned flags);
/* Either role: sets the trailers of a stream sent with ZTM_H2_TRAILERS
 * (copied); they go out after the body's last byte and end the stream.
 * May be called before the body ends. Returns 0, ZTM_H2_E_STREAM, -ENOMEM. */
int ztm_h2_trailers(ztm_h2_session_t *s, int32_t stream_id, const ztm_h2_header_t *h, size_t n);
/* Either role: body data is available again for a parked stream. Returns 0
 * (also when the stream was not parked) or ZTM_H2_E_STREAM. */
int ztm_h2_resume(ztm_h2_session_t *s, int32_t stream_id);
/* Either role: the application is done with N bytes that on_data gave it;
 * window credit returns to the peer. Fine after the stream closed (the
 * connection window still needs it). Returns 0 or ZTM_H2_E_INTERNAL. */
int ztm_h2_consume(ztm_h2_session_t *s, int32_t stream_id, size_t n);
/* Either role: RST_STREAM with ERROR_CODE. on_stream_close follows.
 * Returns 0 or ZTM_H2_E_STREAM. */
int ztm_h2_reset(ztm_h2_session_t *s, int32_t stream_id, uint32_t error_code);
/* The application's pointer for a stream (NULL if unknown). */
int ztm_h2_stream_set_data(ztm_h2_session_t *s, int32_t stream_id, void *sdata);
void *ztm_h2_stream_data(ztm_h2_session_t *s, int32_t stream_id);

/* Keepalive. ztm_h2_ping sends a PING unless one is outstanding (0 or a
 * negative error). ztm_h2_tick runs the keepalive and the graceful-shutdown
 * steps at the clock's now; the caller calls it from a timer (about once a
 * second). It returns ZTM_H2_E_DEAD_PEER when a PING went unanswered for
 * ping_timeout_ns: close the connection. */
int ztm_h2_ping(ztm_h2_session_t *s);
int ztm_h2_tick(ztm_h2_session_t *s);
/* Clock time of the last frame header received (creation time before). */
uint64_t ztm_h2_last_recv(const ztm_h2_session_t *s);
/* True while a keepalive PING is unanswered; *SENT_NS (if set) when sent. */
bool ztm_h2_ping_outstanding(const ztm_h2_session_t *s, uint64_t *sent_ns);
/* Round-trip time of the last answered PING (0 before one). */
uint64_t ztm_h2_rtt(const ztm_h2_session_t *s);

/* Graceful close. Server: GOAWAY(2^31-1) now, a PING behind it, and when the
 * PING returns (or after ping_timeout_ns, on tick) the final GOAWAY naming
 * the last stream we took; streams in flight finish. Client: GOAWAY at
 * once. New streams are refused; ztm_h2_idle() tells when to close.
 * Returns 0 (also when already closing) or -ENOMEM. */
int ztm_h2_shutdown(ztm_h2_session_t *s);
/* Immediate close: GOAWAY with ERROR_CODE, nothing more is read. Flush
 * until !want_write and close. */
int ztm_h2_terminate(ztm_h2_session_t *s, uint32_t error_code);

/* Streams the session holds: open ones, and client requests still queued. */
size_t ztm_h2_streams(const ztm_h2_session_t *s);
/* For tests and metrics: how much the peer may still send us on STREAM_ID
 * (0: the connection), and how much we may still send it; -1 if unknown.
 * The receive side grows back only when consumed bytes reach a WINDOW_UPDATE
 * (half a window), not on every ztm_h2_consume. */
int32_t ztm_h2_recv_window(ztm_h2_session_t *s, int32_t stream_id);
int32_t ztm_h2_send_window(ztm_h2_session_t *s, int32_t stream_id);

/* A short name for an error code returned here ("calm", "protocol", ...). */
const char *ztm_h2_strerror(int err);

#endif
