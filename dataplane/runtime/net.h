/* Socket addresses and listeners shared by every service on the engine. */
#ifndef ZTM_RUNTIME_NET_H
#define ZTM_RUNTIME_NET_H

#include <stddef.h>
#include <sys/socket.h>

typedef struct {
    struct sockaddr_storage ss;
    socklen_t len;
} ztm_addr_t;

#define ZTM_ADDRSTRLEN 64

/* Parses "HOST:PORT" or "[IPV6]:PORT"; HOST may be a name, resolved now
 * (first address returned). On error returns -EINVAL and points *why at a
 * static phrase naming what is wrong ("missing port", "port out of range",
 * "cannot resolve host", ...). */
int ztm_addr_parse(const char *s, ztm_addr_t *out, const char **why);

/* The parts of ztm_addr_parse, for callers that resolve names elsewhere
 * (runtime/resolver). */
#define ZTM_HOST_MAX 255
/* "HOST:PORT" or "[IPV6]:PORT" into HOST and *PORT; 0 or -EINVAL, *WHY. */
int ztm_addr_split(const char *s, char host[ZTM_HOST_MAX + 1], unsigned *port, const char **why);
/* HOST as a literal (an IP address; "" or "*" for any): 1 with *OUT set;
 * 0 when HOST is a name; -EINVAL (*WHY) for a malformed IPv4 address. */
int ztm_addr_literal(const char *host, unsigned port, ztm_addr_t *out, const char **why);
/* HOST's first address (port 0), by getaddrinfo: blocks. 0 or -EINVAL. */
int ztm_addr_lookup(const char *host, ztm_addr_t *out, const char **why);
void ztm_addr_set_port(ztm_addr_t *a, unsigned port);

/* A Unix socket address for PATH. 0 or -ENAMETOOLONG. */
int ztm_addr_unix(const char *path, ztm_addr_t *out);
/* "1.2.3.4:80" or "[::1]:80" into BUF (ZTM_ADDRSTRLEN is enough). */
void ztm_addr_format(const struct sockaddr *sa, char *buf, size_t cap);

/* Opens N listening sockets on ADDR with SO_REUSEPORT, one per worker, so
 * the kernel spreads new connections across workers with no shared accept
 * queue. Port 0 is resolved by the first bind and reused by the others.
 * Fills FDS[0..N) and BOUND (the real address). Returns 0 or -errno (all
 * sockets closed on error). */
int ztm_listen_group(const ztm_addr_t *addr, unsigned n, int backlog, int *fds, ztm_addr_t *bound);

/* TCP_NODELAY on; errors ignored (not every socket is TCP). */
void ztm_sock_nodelay(int fd);
/* SO_LINGER {1,0}: the next close sends an RST. */
void ztm_sock_abortive(int fd);

#endif
