/* Address parsing (every bad form names its problem) and listener groups. */
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "dataplane/runtime/net.h"
#include "tests/unit/check.h"

static void good(const char *in, const char *formatted)
{
    ztm_addr_t a;
    const char *why = NULL;
    char buf[ZTM_ADDRSTRLEN];
    int r = ztm_addr_parse(in, &a, &why);
    CHECK_EQ(r, 0);
    if (r == 0) {
        ztm_addr_format((struct sockaddr *)&a.ss, buf, sizeof(buf));
        if (strcmp(buf, formatted) != 0)
            fprintf(stderr, "parse(%s) -> %s, want %s\n", in, buf, formatted);
        CHECK(strcmp(buf, formatted) == 0);
    }
}

static void bad(const char *in, const char *why_part)
{
    ztm_addr_t a;
    const char *why = NULL;
    CHECK_EQ(ztm_addr_parse(in, &a, &why), -EINVAL);
    if (!why || !strstr(why, why_part))
        fprintf(stderr, "parse(%s): why='%s', want '%s'\n", in, why ? why : "(null)", why_part);
    CHECK(why && strstr(why, why_part));
}

int main(void)
{
    good("127.0.0.1:80", "127.0.0.1:80");
    good("0.0.0.0:0", "0.0.0.0:0");
    good(":8080", "0.0.0.0:8080");
    good("[::1]:443", "[::1]:443");
    good("localhost:65535", "127.0.0.1:65535");
    bad("", "empty");
    bad("127.0.0.1", "missing port");
    bad("127.0.0.1:", "missing port");
    bad("127.0.0.1:99999", "out of range");
    bad("127.0.0.1:abc", "not a number");
    bad("127.0.0.1:-1", "not a number");
    bad("300.1.1.1:80", "invalid IPv4");
    bad("::1:80", "brackets");
    bad("[::1]80", "missing port");
    bad("[::1:80", "missing ']'");
    bad("nosuchhost.invalid:80", "cannot resolve");

    /* A group on port 0 shares one real port. */
    ztm_addr_t a, bound;
    const char *why;
    CHECK_EQ(ztm_addr_parse("127.0.0.1:0", &a, &why), 0);
    int fds[3];
    CHECK_EQ(ztm_listen_group(&a, 3, 16, fds, &bound), 0);
    unsigned port = ntohs(((struct sockaddr_in *)&bound.ss)->sin_port);
    CHECK(port != 0);
    for (int i = 0; i < 3; i++) {
        struct sockaddr_in sin;
        socklen_t len = sizeof(sin);
        getsockname(fds[i], (struct sockaddr *)&sin, &len);
        CHECK_EQ(ntohs(sin.sin_port), port);
        close(fds[i]);
    }

    /* A port held by a socket without SO_REUSEPORT is in use. */
    int plain = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bind(plain, (struct sockaddr *)&sin, sizeof(sin));
    listen(plain, 1);
    socklen_t len = sizeof(sin);
    getsockname(plain, (struct sockaddr *)&sin, &len);
    memcpy(&a.ss, &sin, sizeof(sin));
    a.len = sizeof(sin);
    CHECK_EQ(ztm_listen_group(&a, 2, 16, fds, &bound), -EADDRINUSE);
    close(plain);
    return check_done("net");
}
