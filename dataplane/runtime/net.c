/* Addresses and listener groups; see net.h. */
#include "dataplane/runtime/net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stddef.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/un.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int parse_port(const char *p, unsigned *port)
{
    if (!*p)
        return -1;
    unsigned long v = 0;
    for (const char *c = p; *c; c++) {
        if (*c < '0' || *c > '9')
            return -1;
        v = v * 10 + (unsigned long)(*c - '0');
        if (v > 65535)
            return -2;
    }
    *port = (unsigned)v;
    return 0;
}

int ztm_addr_split(const char *s, char host[ZTM_HOST_MAX + 1], unsigned *port, const char **why)
{
    const char *port_s;
    *why = "invalid address";
    if (!s || !*s) {
        *why = "empty address";
        return -EINVAL;
    }
    if (s[0] == '[') {
        const char *end = strchr(s, ']');
        if (!end || end[1] != ':') {
            *why = end ? "missing port (use [IPV6]:PORT)" : "missing ']'";
            return -EINVAL;
        }
        size_t hl = (size_t)(end - s - 1);
        if (hl == 0 || hl > ZTM_HOST_MAX)
            return -EINVAL;
        memcpy(host, s + 1, hl);
        host[hl] = 0;
        port_s = end + 2;
    } else {
        const char *colon = strrchr(s, ':');
        if (!colon) {
            *why = "missing port (use HOST:PORT)";
            return -EINVAL;
        }
        if (memchr(s, ':', (size_t)(colon - s))) {
            *why = "IPv6 addresses need brackets: [IPV6]:PORT";
            return -EINVAL;
        }
        size_t hl = (size_t)(colon - s);
        if (hl > ZTM_HOST_MAX) {
            *why = "host name too long";
            return -EINVAL;
        }
        memcpy(host, s, hl);
        host[hl] = 0;
        port_s = colon + 1;
    }
    int pr = parse_port(port_s, port);
    if (pr == -1) {
        *why = *port_s ? "port is not a number" : "missing port (use HOST:PORT)";
        return -EINVAL;
    }
    if (pr == -2) {
        *why = "port out of range (0-65535)";
        return -EINVAL;
    }
    return 0;
}

void ztm_addr_set_port(ztm_addr_t *a, unsigned port)
{
    if (a->ss.ss_family == AF_INET)
        ((struct sockaddr_in *)&a->ss)->sin_port = htons((uint16_t)port);
    else if (a->ss.ss_family == AF_INET6)
        ((struct sockaddr_in6 *)&a->ss)->sin6_port = htons((uint16_t)port);
}

int ztm_addr_literal(const char *host, unsigned port, ztm_addr_t *out, const char **why)
{
    memset(out, 0, sizeof(*out));
    struct sockaddr_in *in = (struct sockaddr_in *)&out->ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&out->ss;
    if (!host[0] || strcmp(host, "*") == 0) {
        in->sin_family = AF_INET;
        in->sin_addr.s_addr = htonl(INADDR_ANY);
        out->len = sizeof(*in);
    } else if (inet_pton(AF_INET, host, &in->sin_addr) == 1) {
        in->sin_family = AF_INET;
        out->len = sizeof(*in);
    } else if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        out->len = sizeof(*in6);
    } else if (strspn(host, "0123456789.") == strlen(host)) {
        /* A dotted string that is not an IPv4 address is a typo, not a name. */
        *why = "invalid IPv4 address";
        return -EINVAL;
    } else {
        return 0;
    }
    ztm_addr_set_port(out, port);
    return 1;
}

int ztm_addr_lookup(const char *host, ztm_addr_t *out, const char **why)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    if (getaddrinfo(host, NULL, &hints, &res) != 0 || !res) {
        *why = "cannot resolve host name";
        return -EINVAL;
    }
    memset(out, 0, sizeof(*out));
    size_t n = res->ai_addrlen <= sizeof(out->ss) ? res->ai_addrlen : sizeof(out->ss);
    memcpy(&out->ss, res->ai_addr, n);
    out->len = (socklen_t)n;
    freeaddrinfo(res);
    return 0;
}

int ztm_addr_parse(const char *s, ztm_addr_t *out, const char **why)
{
    char host[ZTM_HOST_MAX + 1];
    unsigned port;
    int r = ztm_addr_split(s, host, &port, why);
    if (r < 0)
        return r;
    r = ztm_addr_literal(host, port, out, why);
    if (r != 0)
        return r < 0 ? r : 0;
    if ((r = ztm_addr_lookup(host, out, why)) < 0)
        return r;
    ztm_addr_set_port(out, port);
    return 0;
}

void ztm_addr_format(const struct sockaddr *sa, char *buf, size_t cap)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &in->sin_addr, ip, sizeof(ip));
        snprintf(buf, cap, "%s:%u", ip, ntohs(in->sin_port));
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof(ip));
        snprintf(buf, cap, "[%s]:%u", ip, ntohs(in6->sin6_port));
    } else if (sa->sa_family == AF_UNIX) {
        snprintf(buf, cap, "unix");
    } else {
        snprintf(buf, cap, "unknown");
    }
}

int ztm_addr_unix(const char *path, ztm_addr_t *out)
{
    struct sockaddr_un *un = (struct sockaddr_un *)&out->ss;
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof(un->sun_path))
        return -ENAMETOOLONG;
    memset(out, 0, sizeof(*out));
    un->sun_family = AF_UNIX;
    memcpy(un->sun_path, path, n + 1);
    out->len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
    return 0;
}

int ztm_listen_group(const ztm_addr_t *addr, unsigned n, int backlog, int *fds, ztm_addr_t *bound)
{
    ztm_addr_t a = *addr;
    unsigned i;
    int ret = 0;
    for (i = 0; i < n; i++) {
        int fd = socket(a.ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            ret = -errno;
            break;
        }
        int one = 1;
        if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
            setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 ||
            bind(fd, (struct sockaddr *)&a.ss, a.len) < 0 || listen(fd, backlog) < 0) {
            ret = -errno;
            close(fd);
            break;
        }
        fds[i] = fd;
        if (i == 0) {
            a.len = sizeof(a.ss);
            if (getsockname(fd, (struct sockaddr *)&a.ss, &a.len) < 0) {
                ret = -errno;
                i++;
                break;
            }
            *bound = a;
        }
    }
    if (ret < 0)
        while (i > 0)
            close(fds[--i]);
    return ret;
}

void ztm_sock_nodelay(int fd)
{
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

void ztm_sock_abortive(int fd)
{
    struct linger l = {.l_onoff = 1, .l_linger = 0};
    (void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
}
