/* Kernel TLS: after a TLS 1.3 handshake in BoringSSL, hand the record layer
 * of a connection to the kernel (TCP_ULP "tls", TLS_TX, TLS_RX), so that the
 * worker sends and receives plaintext on the socket and the kernel seals and
 * opens records (AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305).
 *
 * Whether it is attempted is the context's ztm_ktls_mode_t. Before the
 * switch the worker must honour ztm_tls_recv_limit (so that no ciphertext
 * past the handshake is read into user space) and flush ztm_tls_out_pending.
 * After it, BoringSSL is never called for records again: data goes through
 * the socket, control records through the helpers below.
 *
 * Facts for kernel 6.1 (see ../shared/KTLS.md): a non-data record makes
 * recv() fail with EIO, so receive with recvmsg and a control buffer
 * (ztm_ktls_recv does); the kernel cannot follow a TLS 1.3 KeyUpdate, so
 * one ends the connection (ZTM_TLS_E_REKEY_NEEDED: send close_notify and
 * close; reconnecting is the caller's job).
 *
 * Closing well after such an error: send close_notify, shutdown(SHUT_WR),
 * and close() only once the kernel's send queue has drained (SIOCOUTQ 0) or
 * the peer hung up. A close() with unread bytes in the receive queue resets
 * the connection and discards what is still queued for sending, the
 * close_notify included; and the peer's FIN may never arrive, stuck behind
 * data that can no longer be read. */
#ifndef ZTM_TLS_KTLS_H
#define ZTM_TLS_KTLS_H

#include "dataplane/tls/tls.h"

#include <stddef.h>
#include <sys/socket.h>
#include <sys/types.h>

#define ZTM_KTLS_TX 1u
#define ZTM_KTLS_RX 2u

/* Does this kernel offer kTLS? 0 yes; -ENOENT when the "tls" ULP is absent
 * (the build machines' own kernel); -EOPNOTSUPP when built without
 * ZTM_WITH_KTLS; another -errno if the probe itself failed. Cached. */
int ztm_ktls_available(void);

/* True while CONN may still move into the kernel (mode auto/on, not yet
 * decided): the caller should call ztm_ktls_enable once the handshake is
 * done. */
bool ztm_ktls_pending(const ztm_tls_conn_t *conn);

/* Moves CONN's record layer onto socket FD, after ztm_tls_handshake
 * returned 0. Returns:
 *  0          settled: check ztm_ktls_state (TX|RX in the kernel, or 0 when
 *             the mode is off or auto fell back to user space);
 *  -EAGAIN    not at a clean point yet: send ztm_tls_out_pending, read
 *             (ztm_tls_read) what was already received, then call again;
 *  -ENOTCONN  the handshake is not complete;
 *  ZTM_TLS_E_KTLS_UNAVAILABLE  mode on and the kernel refused, or the
 *             kernel took TX but refused RX: the connection has failed.
 * Logs tls.established with the record layer chosen. Wipes the traffic
 * secrets and frees the user-space staging buffers once in the kernel. */
int ztm_ktls_enable(ztm_tls_conn_t *conn, int fd);

/* ZTM_KTLS_TX | ZTM_KTLS_RX when the kernel carries the records, else 0. */
unsigned ztm_ktls_state(const ztm_tls_conn_t *conn);

/* Sends close_notify as a kTLS alert record (sendmsg, TLS_SET_RECORD_TYPE
 * 21). 0, or -errno from sendmsg (-EAGAIN: retry when writable). */
int ztm_ktls_send_close_notify(ztm_tls_conn_t *conn, int fd);

/* Receives plaintext from kTLS socket FD into BUF (recvmsg with a control
 * buffer; NewSessionTicket records are skipped). Returns >0 bytes; 0 after
 * the peer's close_notify; -EAGAIN nothing to read now;
 * ZTM_TLS_E_REKEY_NEEDED; ZTM_TLS_E_PEER_ALERT; ZTM_TLS_E_TRUNCATED (EOF
 * without close_notify); ZTM_TLS_E_PROTOCOL (bad record); -errno. */
ssize_t ztm_ktls_recv(ztm_tls_conn_t *conn, int fd, void *buf, size_t cap);

/* For callers that run their own recvmsg (io_uring RECVMSG): interprets
 * one completed recvmsg MSG whose result was RES (bytes or -errno). Same
 * returns as ztm_ktls_recv, and -EAGAIN also when a control record was
 * consumed (receive again). MSG's control buffer must have room for
 * CMSG_SPACE(1). */
ssize_t ztm_ktls_on_recvmsg(ztm_tls_conn_t *conn, const struct msghdr *msg, ssize_t res);

/* Accounts BYTES of plaintext sent under kTLS in one send call. Returns 0,
 * or ZTM_TLS_E_RECORD_LIMIT when the AES-GCM key has sealed nearly as many
 * records as it safely may (the context's aes_gcm_record_limit): stop
 * sending, send close_notify, reconnect. Asks the kernel for the exact
 * record sequence (getsockopt TLS_TX) only now and then. */
int ztm_ktls_note_sent(ztm_tls_conn_t *conn, int fd, size_t bytes);

#endif
