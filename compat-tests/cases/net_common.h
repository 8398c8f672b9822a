/* Socket helpers for the network test programs. Ports are ephemeral and never
 * printed; addresses are printed without their port. */
#ifndef COMPAT_NET_COMMON_H
#define COMPAT_NET_COMMON_H

#include "common.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

typedef struct {
    struct sockaddr_storage ss;
    socklen_t len;
} addr_t;

#define SA(a) ((struct sockaddr *)&(a)->ss)

/* Loopback address of the family, port 0 unless given. */
static __attribute__((unused)) void loop_addr(int fam, addr_t *a, int port)
{
    memset(a, 0, sizeof *a);
    if (fam == AF_INET) {
        struct sockaddr_in *s = (struct sockaddr_in *)&a->ss;
        s->sin_family = AF_INET;
        s->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        s->sin_port = htons((uint16_t)port);
        a->len = sizeof *s;
    } else {
        struct sockaddr_in6 *s = (struct sockaddr_in6 *)&a->ss;
        s->sin6_family = AF_INET6;
        s->sin6_addr = in6addr_loopback;
        s->sin6_port = htons((uint16_t)port);
        a->len = sizeof *s;
    }
}

static __attribute__((unused)) int port_of(const addr_t *a)
{
    if (a->ss.ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)&a->ss)->sin_port);
    if (a->ss.ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)&a->ss)->sin6_port);
    return -1;
}

/* "AF_INET 127.0.0.1 port=set len=16" -- never the port number. */
static __attribute__((unused)) const char *addr_desc(const addr_t *a)
{
    static char bufs[4][200];
    static int k;
    char *b = bufs[k++ & 3];
    char ip[INET6_ADDRSTRLEN] = "?";
    int fam = a->ss.ss_family;
    if (fam == AF_INET) {
        inet_ntop(AF_INET, &((const struct sockaddr_in *)&a->ss)->sin_addr, ip, sizeof ip);
        snprintf(b, 200, "AF_INET %s port=%s len=%u", ip, port_of(a) ? "set" : "0",
                 (unsigned)a->len);
    } else if (fam == AF_INET6) {
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)&a->ss)->sin6_addr, ip, sizeof ip);
        snprintf(b, 200, "AF_INET6 %s port=%s len=%u", ip, port_of(a) ? "set" : "0",
                 (unsigned)a->len);
    } else if (fam == AF_UNIX) {
        const struct sockaddr_un *u = (const struct sockaddr_un *)&a->ss;
        size_t plen = a->len > offsetof(struct sockaddr_un, sun_path)
                          ? a->len - offsetof(struct sockaddr_un, sun_path)
                          : 0;
        if (plen == 0)
            snprintf(b, 200, "AF_UNIX unnamed len=%u", (unsigned)a->len);
        else if (u->sun_path[0] == 0)
            /* No length: names made unique with the pid change length with its digits; the
             * callers compare the whole address where it matters. */
            snprintf(b, 200, "AF_UNIX abstract");
        else
            snprintf(b, 200, "AF_UNIX path=%s len=%u", u->sun_path, (unsigned)a->len);
    } else {
        snprintf(b, 200, "family=%d len=%u", fam, (unsigned)a->len);
    }
    return b;
}

static __attribute__((unused)) int same_addr(const addr_t *x, const addr_t *y)
{
    return x->len == y->len && memcmp(&x->ss, &y->ss, x->len) == 0;
}

static __attribute__((unused)) void local_of(int fd, addr_t *a)
{
    a->len = sizeof a->ss;
    memset(&a->ss, 0, sizeof a->ss);
    getsockname(fd, SA(a), &a->len);
}

static __attribute__((unused)) void peer_of(int fd, addr_t *a)
{
    a->len = sizeof a->ss;
    memset(&a->ss, 0, sizeof a->ss);
    getpeername(fd, SA(a), &a->len);
}

/* Bound listening socket on the loopback; its address in *a. Silent. */
static __attribute__((unused)) int listener(int fam, int type, addr_t *a)
{
    int s = (int)MUST(socket(fam, type, 0));
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    loop_addr(fam, a, 0);
    MUST(bind(s, SA(a), a->len));
    if ((type & 0xf) == SOCK_STREAM)
        MUST(listen(s, 16));
    local_of(s, a);
    return s;
}

/* A connected TCP pair over the loopback (client, accepted server). */
static __attribute__((unused)) void tcp_pair(int fam, int *cli, int *srv)
{
    addr_t a;
    int l = listener(fam, SOCK_STREAM, &a);
    *cli = (int)MUST(socket(fam, SOCK_STREAM, 0));
    MUST(connect(*cli, SA(&a), a.len));
    *srv = (int)MUST(accept(l, NULL, NULL));
    close(l);
}

/* Wait until fd is readable (up to 5 s); returns revents. */
static __attribute__((unused)) int wait_readable(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 5000) <= 0)
        return 0;
    return p.revents;
}

/* A port on which nothing listens: a TCP socket bound but not listening.
 * Keep the socket open while using the address. */
static __attribute__((unused)) int dead_tcp_port(int fam, addr_t *a)
{
    int s = (int)MUST(socket(fam, SOCK_STREAM, 0));
    loop_addr(fam, a, 0);
    MUST(bind(s, SA(a), a->len));
    local_of(s, a);
    return s;
}

#endif
