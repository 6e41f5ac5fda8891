/* gRPC's wire format, the parts that do not need HTTP/2: the status codes,
 * the 5-byte message prefix and an incremental decoder for it, grpc-timeout,
 * the percent-encoding of grpc-message, the content-type and :path checks.
 *
 * The server and client glue (controlplane/grpc over dataplane/h2) feeds
 * DATA frame payloads to a ztm_grpc_decoder_t per stream and maps decoder
 * errors to statuses with ztm_grpc_error_status(). Nothing here allocates
 * except the decoder's buffer for a message split across DATA frames; no
 * function here does I/O. Header values are (pointer, length) pairs, as
 * nghttp2 hands them over: never assumed to be NUL-terminated.
 *
 * Reference: grpc/doc/PROTOCOL-HTTP2.md and grpc/doc/statuscodes.md. */
#ifndef ZTM_CONTROLPLANE_GRPC_FRAME_H
#define ZTM_CONTROLPLANE_GRPC_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* The status codes, numbered as on the wire (grpc-status). */
typedef enum {
    ZTM_GRPC_OK = 0,
    ZTM_GRPC_CANCELLED = 1,
    ZTM_GRPC_UNKNOWN = 2,
    ZTM_GRPC_INVALID_ARGUMENT = 3,
    ZTM_GRPC_DEADLINE_EXCEEDED = 4,
    ZTM_GRPC_NOT_FOUND = 5,
    ZTM_GRPC_ALREADY_EXISTS = 6,
    ZTM_GRPC_PERMISSION_DENIED = 7,
    ZTM_GRPC_RESOURCE_EXHAUSTED = 8,
    ZTM_GRPC_FAILED_PRECONDITION = 9,
    ZTM_GRPC_ABORTED = 10,
    ZTM_GRPC_OUT_OF_RANGE = 11,
    ZTM_GRPC_UNIMPLEMENTED = 12,
    ZTM_GRPC_INTERNAL = 13,
    ZTM_GRPC_UNAVAILABLE = 14,
    ZTM_GRPC_DATA_LOSS = 15,
    ZTM_GRPC_UNAUTHENTICATED = 16,
} ztm_grpc_status_t;

#define ZTM_GRPC_STATUS_COUNT 17

/* "OK", "CANCELLED", … "UNAUTHENTICATED" (the canonical upper-case names);
 * NULL for a number outside 0..16. */
const char *ztm_grpc_status_name(int code);

/* Parses a canonical name (exact, upper case) into *OUT; false if unknown. */
bool ztm_grpc_status_from_name(const char *name, size_t len, ztm_grpc_status_t *out);

/* Parses a grpc-status header value: 1-3 decimal digits with no sign or
 * spaces. A well-formed number outside 0..16 reads as UNKNOWN, as the spec
 * asks of clients. Returns 0, or -EINVAL for anything else. */
int ztm_grpc_status_parse(const char *v, size_t len, ztm_grpc_status_t *out);

/* Errors of this module (below -4095, see STYLE.md). */
enum {
    ZTM_GRPC_E_TOO_LARGE = -5001,  /* message longer than the limit → RESOURCE_EXHAUSTED */
    ZTM_GRPC_E_COMPRESSED = -5002, /* compressed flag without a usable grpc-encoding → UNIMPLEMENTED */
    ZTM_GRPC_E_BAD_FLAGS = -5003,  /* flags byte other than 0 or 1 → INTERNAL */
    ZTM_GRPC_E_TRUNCATED = -5004,  /* the stream ended inside a message → INTERNAL */
};

/* The status a peer should get for ERR (one of the above, or -ENOMEM →
 * RESOURCE_EXHAUSTED); INTERNAL for anything else. */
ztm_grpc_status_t ztm_grpc_error_status(int err);

/* A short English description of ERR (this module's codes or -errno). */
const char *ztm_grpc_strerror(int err);

/* ---- length-prefixed messages ---------------------------------------------- */

#define ZTM_GRPC_PREFIX_LEN 5
#define ZTM_GRPC_DEFAULT_MAX_MESSAGE (4u << 20) /* 4 MiB, gRPC's default */

/* Writes the prefix of a message of LEN bytes: the compressed flag (0/1)
 * then LEN as a 32-bit big-endian number. */
void ztm_grpc_prefix_encode(uint8_t out[ZTM_GRPC_PREFIX_LEN], bool compressed, uint32_t len);

/* A message found by the decoder. DATA points either into the bytes just fed
 * (a message that arrived whole) or into the decoder's buffer; it stays valid
 * until the next call on the decoder. An empty message has LEN 0 and a
 * non-NULL DATA. */
typedef struct {
    const uint8_t *data;
    size_t len;
    bool compressed; /* only with accept_compressed: the caller decompresses */
} ztm_grpc_message_t;

/* Incremental decoder of length-prefixed messages, one per stream and
 * direction. The struct is open so that a stream can embed it; its fields
 * are private to frame.c. */
typedef struct {
    uint32_t max_message;
    bool accept_compressed;
    uint8_t state;
    uint8_t prefix_have;
    uint8_t prefix[ZTM_GRPC_PREFIX_LEN];
    uint32_t msg_len;
    uint8_t *buf;
    size_t buf_len;
    size_t buf_cap;
    int error;
} ztm_grpc_decoder_t;

/* Prepares D. MAX_MESSAGE limits a message's length (its prefix's number,
 * so the compressed length for a compressed message); 0 means the default
 * (4 MiB). ACCEPT_COMPRESSED: the request's grpc-encoding names a codec the
 * caller can decompress; when false a compressed message is an error. */
void ztm_grpc_decoder_init(ztm_grpc_decoder_t *d, uint32_t max_message, bool accept_compressed);

/* Frees D's buffer. D may be initialised again afterwards. */
void ztm_grpc_decoder_free(ztm_grpc_decoder_t *d);

/* Feeds up to LEN bytes of the stream's DATA. Consumes bytes until one
 * message is complete or the input runs out; returns how many were consumed
 * (0..LEN). When a message is complete *MSG describes it and *READY is set
 * true, else *READY is false. Call again with the rest of the input until
 * all of it is consumed: one chunk may hold many messages, and a message may
 * span many chunks.
 *
 * Errors (negative returns): ZTM_GRPC_E_TOO_LARGE as soon as a prefix names
 * a length over the limit (nothing of the body is buffered),
 * ZTM_GRPC_E_COMPRESSED, ZTM_GRPC_E_BAD_FLAGS, -ENOMEM. An error is final:
 * every later call returns it again; reset with _free + _init. */
ssize_t ztm_grpc_decoder_feed(ztm_grpc_decoder_t *d, const uint8_t *data, size_t len,
                              ztm_grpc_message_t *msg, bool *ready);

/* At the end of the stream: 0 when the decoder stands between messages,
 * ZTM_GRPC_E_TRUNCATED when a prefix or body is incomplete, or the earlier
 * error. */
int ztm_grpc_decoder_finish(const ztm_grpc_decoder_t *d);

/* ---- headers ----------------------------------------------------------------- */

/* Parses a grpc-timeout value: 1-8 ASCII digits and one unit of H (hours),
 * M (minutes), S (seconds), m (milliseconds), u (microseconds),
 * n (nanoseconds). Stores nanoseconds in *NS, saturating at UINT64_MAX (the
 * largest value, 99999999H, exceeds 2^64 ns). Returns 0, or -EINVAL. */
int ztm_grpc_timeout_parse(const char *v, size_t len, uint64_t *ns);

/* Formats NS as a grpc-timeout value in the finest unit whose number fits
 * in 8 digits, rounding up (a deadline may grow by less than one unit, never
 * shrink). OUT receives a NUL-terminated string; returns its length. */
#define ZTM_GRPC_TIMEOUT_MAX 10
size_t ztm_grpc_timeout_format(uint64_t ns, char out[ZTM_GRPC_TIMEOUT_MAX]);

/* Percent-encodes a grpc-message value: bytes outside 0x20..0x7E and '%'
 * become "%XX". Writes at most CAP bytes including a terminating NUL (when
 * CAP > 0) and returns the length the whole encoding needs (excluding the
 * NUL), like snprintf: the output was complete iff the return is < CAP.
 * The encoding of LEN bytes needs at most 3*LEN. */
size_t ztm_grpc_message_encode(const char *in, size_t len, char *out, size_t cap);

/* Decodes a percent-encoded grpc-message value. A '%' not followed by two
 * hex digits is kept as is (the spec forbids failing on a bad encoding).
 * Same CAP and return contract as _encode; the result is never longer than
 * the input. The output may contain NUL bytes when the sender encoded them. */
size_t ztm_grpc_message_decode(const char *in, size_t len, char *out, size_t cap);

/* True for content-type "application/grpc" or "application/grpc+proto",
 * compared case-insensitively and with ";parameters" allowed after it.
 * Anything else (including application/grpc+json) is not served: the server
 * answers HTTP 415. */
bool ztm_grpc_content_type_ok(const char *v, size_t len);

/* A :path of the form "/package.Service/Method", split in place. */
typedef struct {
    const char *service; /* "package.Service" */
    size_t service_len;
    const char *method; /* "Method" */
    size_t method_len;
} ztm_grpc_path_t;

/* Splits PATH into service and method: both non-empty, no further '/', no
 * '?' or '#', printable ASCII only. Returns 0, or -EINVAL (the server
 * answers UNIMPLEMENTED, as for an unknown method). */
int ztm_grpc_path_parse(const char *path, size_t len, ztm_grpc_path_t *out);

#endif
