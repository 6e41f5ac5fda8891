/* A gRPC client on ztm's own stack (link + TLS + HTTP/2): one unary call at
 * a time, run to completion on a private one-worker engine. For the CLI and
 * for tools; long-lived clients (agents) use the same pieces on their own
 * workers. */
#ifndef ZTM_CONTROLPLANE_GRPC_CLIENT_H
#define ZTM_CONTROLPLANE_GRPC_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "controlplane/grpc/frame.h"
#include "dataplane/runtime/net.h"

typedef struct {
    ztm_addr_t addr;
    const char *sni;       /* server name to send and to check */
    const char *cert_file; /* our identity */
    const char *key_file;
    const char *ca_file;   /* the CA the server's certificate must chain to */
    const uint8_t *ca_pin; /* or: trust the CA with this pin from the server's chain (32 bytes) */
    uint64_t timeout_ns;   /* sent as grpc-timeout and enforced locally; 0: 30 s */
} ztm_grpc_target_t;

typedef struct {
    ztm_grpc_status_t status;
    char message[512];   /* grpc-message, decoded; or why the call failed locally */
    uint8_t *body;       /* the response message (malloc'd) when status is OK */
    size_t len;
} ztm_grpc_result_t;

/* Calls PATH ("/pkg.Service/Method") with request REQ. Always fills *OUT:
 * a transport failure is UNAVAILABLE (or DEADLINE_EXCEEDED) with the cause
 * in message. Free OUT->body with ztm_grpc_result_clear. Returns 0, or
 * -errno when the call could not even start (bad TLS files: logged). */
int ztm_grpc_call(const ztm_grpc_target_t *t, const char *path, const uint8_t *req, size_t len,
                  ztm_grpc_result_t *out);
void ztm_grpc_result_clear(ztm_grpc_result_t *r);

/* A response message of a server-streaming call. Return 0 to go on, or
 * non-zero to end the call (it is cancelled; OUT says CANCELLED). */
typedef int (*ztm_grpc_message_cb)(void *arg, const uint8_t *msg, size_t len);

/* Server-streaming: calls PATH with REQ and hands each response message to
 * ON_MESSAGE, in order, until the server ends the stream, ON_MESSAGE asks
 * to stop, or SIGINT/SIGTERM (CANCELLED). T->timeout_ns 0 means no
 * deadline. *OUT gets the final status (no body). Returns as ztm_grpc_call. */
int ztm_grpc_stream(const ztm_grpc_target_t *t, const char *path, const uint8_t *req, size_t len,
                    ztm_grpc_message_cb on_message, void *arg, ztm_grpc_result_t *out);

#endif
