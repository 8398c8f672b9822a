/* TCP and UDP over 127.0.0.1 and ::1: socket/bind/listen/accept/accept4/
 * connect/shutdown, getsockname/getpeername, get/setsockopt, the send/recv
 * family incl. sendmmsg/recvmmsg, and their error paths (ECONNREFUSED,
 * ENOTCONN, EPIPE, EADDRINUSE, EISCONN, EAGAIN, ...). */
#include "net_common.h"

#include <pthread.h>
#include <sys/ioctl.h>
#include <linux/sockios.h>

/* Case name with the family as suffix ("tcp_basic_v4"). */
static const char *nm(const char *base, int fam)
{
    char b[128];
    snprintf(b, sizeof b, "%s_%s", base, fam == AF_INET ? "v4" : "v6");
    return strdup(b);
}

static void tcp_basic(int fam)
{
    addr_t la, ca, sa, pa, pa2;
    char buf[64];
    long n;

    CASE(nm("tcp_basic", fam));
    int l = (int)T(socket(fam, SOCK_STREAM, 0));
    loop_addr(fam, &la, 0);
    T(bind(l, SA(&la), la.len));
    T(listen(l, 8));
    local_of(l, &la);
    O("listener %s", addr_desc(&la));
    int c = (int)T(socket(fam, SOCK_STREAM, 0));
    T(connect(c, SA(&la), la.len));
    pa.len = sizeof pa.ss;
    int s = (int)T(accept(l, SA(&pa), &pa.len));
    O("accept peer %s", addr_desc(&pa));
    local_of(c, &ca);
    local_of(s, &sa);
    peer_of(c, &pa2);
    O("client local %s", addr_desc(&ca));
    O("server local %s", addr_desc(&sa));
    O("accept addr == client local: %d", same_addr(&pa, &ca));
    O("client peer == listener addr: %d", same_addr(&pa2, &la));
    O("server local == listener addr: %d", same_addr(&sa, &la));
    T(send(c, "ping", 4, 0));
    n = T(recv(s, buf, sizeof buf, 0));
    show("srv got", buf, n);
    T(write(s, "pong!", 5));
    n = T(read(c, buf, sizeof buf));
    show("cli got", buf, n);
    O("flags c=%s s=%s fd c=%s s=%s", flflags(c), flflags(s), fdflags(c), fdflags(s));
    T(close(c));
    T(recv(s, buf, sizeof buf, 0)); /* EOF */
    T(close(s));
    T(close(l));
}

static void tcp_accept4(int fam)
{
    addr_t a;
    CASE(nm("tcp_accept4_flags", fam));
    int l = listener(fam, SOCK_STREAM, &a);
    int c1 = (int)MUST(socket(fam, SOCK_STREAM, 0));
    MUST(connect(c1, SA(&a), a.len));
    int c2 = (int)MUST(socket(fam, SOCK_STREAM, 0));
    MUST(connect(c2, SA(&a), a.len));
    int s1 = (int)T(accept4(l, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC));
    O("s1 %s %s", flflags(s1), fdflags(s1));
    int s2 = (int)T(accept4(l, NULL, NULL, 0));
    O("s2 %s %s", flflags(s2), fdflags(s2));
    char buf[8];
    T(recv(s1, buf, sizeof buf, 0));
    T(accept4(l, NULL, NULL, 0x1234));
    MUST(fcntl(l, F_SETFL, O_NONBLOCK));
    T(accept4(l, NULL, NULL, 0));
    T(accept(l, NULL, NULL));
    close(c1);
    close(c2);
    close(s1);
    close(s2);
    close(l);
}

static void tcp_shutdown(int fam)
{
    int c, s;
    char buf[32];
    long n;

    CASE(nm("tcp_shutdown_wr", fam));
    tcp_pair(fam, &c, &s);
    T(shutdown(c, SHUT_WR));
    T(recv(s, buf, sizeof buf, 0));
    T(send(s, "after", 5, 0));
    n = T(recv(c, buf, sizeof buf, 0));
    show("cli got", buf, n);
    T(send(c, "x", 1, MSG_NOSIGNAL));
    T(send(c, "x", 1, 0)); /* SIGPIPE is ignored in this program */
    T(write(c, "x", 1));
    T(shutdown(c, SHUT_RD));
    T(recv(c, buf, sizeof buf, 0));
    T(shutdown(c, 7));
    close(c);
    close(s);

    CASE(nm("tcp_shutdown_rdwr", fam));
    tcp_pair(fam, &c, &s);
    T(shutdown(s, SHUT_RDWR));
    T(recv(c, buf, sizeof buf, 0));
    T(recv(s, buf, sizeof buf, 0));
    T(send(s, "x", 1, MSG_NOSIGNAL));
    close(c);
    close(s);
}

static void tcp_errors(int fam)
{
    addr_t a, dead;
    char buf[8];

    CASE(nm("tcp_refused", fam));
    int d = dead_tcp_port(fam, &dead);
    int c = (int)T(socket(fam, SOCK_STREAM, 0));
    T(connect(c, SA(&dead), dead.len));
    T(connect(c, SA(&dead), dead.len));
    close(c);

    CASE(nm("tcp_nonblock_connect_refused", fam));
    c = (int)T(socket(fam, SOCK_STREAM | SOCK_NONBLOCK, 0));
    long r = connect(c, SA(&dead), dead.len);
    O("connect: %s", r == 0 ? "0" : (errno == EINPROGRESS || errno == ECONNREFUSED) ? "EINPROGRESS-or-ECONNREFUSED" : en(errno));
    if (r == -1 && errno == EINPROGRESS) {
        struct pollfd p = {.fd = c, .events = POLLOUT};
        poll(&p, 1, 5000);
    }
    int err = -1;
    socklen_t el = sizeof err;
    getsockopt(c, SOL_SOCKET, SO_ERROR, &err, &el);
    O("final error: %s", r == -1 && errno == ECONNREFUSED ? "ECONNREFUSED" : en(err));
    close(c);
    close(d);

    CASE(nm("tcp_nonblock_connect", fam));
    int l = listener(fam, SOCK_STREAM, &a);
    c = (int)MUST(socket(fam, SOCK_STREAM | SOCK_NONBLOCK, 0));
    r = connect(c, SA(&a), a.len);
    O("connect: %s", r == 0 || errno == EINPROGRESS ? "0-or-EINPROGRESS" : en(errno));
    struct pollfd p = {.fd = c, .events = POLLOUT};
    T(poll(&p, 1, 5000));
    O("revents=0x%x", p.revents);
    el = sizeof err;
    T(getsockopt(c, SOL_SOCKET, SO_ERROR, &err, &el));
    O("SO_ERROR=%s", en(err));
    T(connect(c, SA(&a), a.len));
    close(c);

    CASE(nm("tcp_enotconn", fam));
    c = (int)MUST(socket(fam, SOCK_STREAM, 0));
    T(recv(c, buf, sizeof buf, 0));
    T(read(c, buf, sizeof buf));
    T(send(c, "x", 1, MSG_NOSIGNAL));
    T(write(c, "x", 1));
    T(shutdown(c, SHUT_RDWR));
    addr_t pa;
    pa.len = sizeof pa.ss;
    T(getpeername(c, SA(&pa), &pa.len));
    T(sendto(c, "x", 1, MSG_NOSIGNAL, SA(&a), a.len));
    close(c);

    CASE(nm("tcp_eisconn", fam));
    c = (int)MUST(socket(fam, SOCK_STREAM, 0));
    T(connect(c, SA(&a), a.len));
    T(connect(c, SA(&a), a.len));
    int s = (int)MUST(accept(l, NULL, NULL));
    close(s);
    close(c);

    CASE(nm("tcp_bind_errors", fam));
    addr_t b;
    int x = (int)MUST(socket(fam, SOCK_STREAM, 0));
    T(bind(x, SA(&a), a.len)); /* listener holds the port */
    loop_addr(fam, &b, 0);
    T(bind(x, SA(&b), b.len));
    T(bind(x, SA(&b), b.len)); /* already bound */
    close(x);
    x = (int)MUST(socket(fam, SOCK_STREAM, 0));
    T(bind(x, SA(&b), 3));
    if (fam == AF_INET) {
        struct sockaddr_in far = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x0afffe01)};
        T(bind(x, (struct sockaddr *)&far, sizeof far));
    } else {
        struct sockaddr_in6 far = {.sin6_family = AF_INET6};
        inet_pton(AF_INET6, "2001:db8::77", &far.sin6_addr);
        T(bind(x, (struct sockaddr *)&far, sizeof far));
    }
    T(bind(x, (struct sockaddr *)1, b.len));
    T(bind(-1, SA(&b), b.len));
    close(x);

    CASE(nm("tcp_listen_accept_errors", fam));
    x = (int)MUST(socket(fam, SOCK_STREAM, 0));
    T(accept(x, NULL, NULL));
    T(listen(x, 4)); /* autobinds */
    addr_t xa;
    local_of(x, &xa);
    O("autobound %s", addr_desc(&xa));
    close(x);
    int u = (int)MUST(socket(fam, SOCK_DGRAM, 0));
    T(listen(u, 4));
    T(accept(u, NULL, NULL));
    close(u);
    T(listen(-1, 4));
    T(accept(-1, NULL, NULL));
    pa.len = 1;
    c = (int)MUST(socket(fam, SOCK_STREAM, 0));
    MUST(connect(c, SA(&a), a.len));
    s = (int)T(accept(l, SA(&pa), &pa.len));
    O("truncated addrlen now=%u", (unsigned)pa.len);
    close(s);
    close(c);
    close(l);

    CASE(nm("tcp_rst_on_linger0", fam));
    tcp_pair(fam, &c, &s);
    struct linger lg = {1, 0};
    T(setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof lg));
    T(close(s));
    O("revents=0x%x", wait_readable(c));
    T(recv(c, buf, sizeof buf, 0));
    T(recv(c, buf, sizeof buf, 0));
    T(send(c, "x", 1, MSG_NOSIGNAL));
    close(c);
}

static void socket_errors(void)
{
    int p[2];
    addr_t a;

    CASE("socket_create_errors");
    T(socket(12345, SOCK_STREAM, 0));
    T(socket(AF_INET, 999, 0));
    T(socket(AF_INET, SOCK_STREAM, IPPROTO_UDP));
    T(socket(AF_INET, SOCK_DGRAM, IPPROTO_TCP));
    T(socket(AF_INET, SOCK_STREAM | 0x1000000, 0));

    CASE("socket_flags");
    int s = (int)T(socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    O("%s %s", flflags(s), fdflags(s));
    close(s);
    s = (int)T(socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    O("%s %s", flflags(s), fdflags(s));
    close(s);

    CASE("enotsock_on_pipe");
    MUST(pipe(p));
    loop_addr(AF_INET, &a, 0);
    T(bind(p[0], SA(&a), a.len));
    T(listen(p[0], 1));
    T(accept(p[0], NULL, NULL));
    T(connect(p[0], SA(&a), a.len));
    T(shutdown(p[0], SHUT_RD));
    T(getsockname(p[0], SA(&a), &a.len));
    a.len = sizeof a.ss;
    T(getpeername(p[0], SA(&a), &a.len));
    int v;
    socklen_t vl = sizeof v;
    T(getsockopt(p[0], SOL_SOCKET, SO_TYPE, &v, &vl));
    T(setsockopt(p[0], SOL_SOCKET, SO_REUSEADDR, &v, sizeof v));
    char buf[4];
    T(recv(p[0], buf, 1, MSG_DONTWAIT));
    T(send(p[1], "x", 1, 0));
    T(sendto(p[1], "x", 1, 0, NULL, 0));
    T(recvfrom(p[0], buf, 1, 0, NULL, NULL));
    close(p[0]);
    close(p[1]);

    CASE("ebadf_socket_calls");
    T(getsockname(-1, SA(&a), &a.len));
    T(getpeername(77, SA(&a), &a.len));
    T(getsockopt(-1, SOL_SOCKET, SO_TYPE, &v, &vl));
    T(setsockopt(-1, SOL_SOCKET, SO_REUSEADDR, &v, sizeof v));
    T(send(-1, "x", 1, 0));
    T(recv(-1, buf, 1, 0));
    T(connect(-1, SA(&a), sizeof(struct sockaddr_in)));
    T(shutdown(-1, SHUT_RD));
    T(bind(-1, SA(&a), sizeof(struct sockaddr_in)));
}

static void sockopts(int fam)
{
    int v;
    socklen_t vl;
    addr_t a;

    CASE(nm("sockopt_basic", fam));
    int s = (int)MUST(socket(fam, SOCK_STREAM, 0));
#define GET(level, opt)                                                        \
    do {                                                                       \
        v = -1;                                                                \
        vl = sizeof v;                                                         \
        T(getsockopt(s, level, opt, &v, &vl));                                 \
        O("  " #opt "=%d len=%u", v, (unsigned)vl);                            \
    } while (0)
    GET(SOL_SOCKET, SO_TYPE);
    GET(SOL_SOCKET, SO_DOMAIN);
    GET(SOL_SOCKET, SO_PROTOCOL);
    GET(SOL_SOCKET, SO_ACCEPTCONN);
    GET(SOL_SOCKET, SO_ERROR);
    GET(SOL_SOCKET, SO_REUSEADDR);
    v = 1;
    T(setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &v, sizeof v));
    GET(SOL_SOCKET, SO_REUSEADDR);
    GET(SOL_SOCKET, SO_KEEPALIVE);
    v = 1;
    T(setsockopt(s, SOL_SOCKET, SO_KEEPALIVE, &v, sizeof v));
    GET(SOL_SOCKET, SO_KEEPALIVE);
    GET(IPPROTO_TCP, TCP_NODELAY);
    v = 1;
    T(setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &v, sizeof v));
    GET(IPPROTO_TCP, TCP_NODELAY);
    v = 65536;
    T(setsockopt(s, SOL_SOCKET, SO_RCVBUF, &v, sizeof v));
    GET(SOL_SOCKET, SO_RCVBUF);
    v = 32768;
    T(setsockopt(s, SOL_SOCKET, SO_SNDBUF, &v, sizeof v));
    GET(SOL_SOCKET, SO_SNDBUF);
    if (fam == AF_INET6) {
        GET(IPPROTO_IPV6, IPV6_V6ONLY);
        v = 1;
        T(setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &v, sizeof v));
        GET(IPPROTO_IPV6, IPV6_V6ONLY);
    } else {
        v = 0x10;
        T(setsockopt(s, IPPROTO_IP, IP_TOS, &v, sizeof v));
        GET(IPPROTO_IP, IP_TOS);
    }
    struct linger lg = {1, 3};
    T(setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof lg));
    memset(&lg, 0, sizeof lg);
    vl = sizeof lg;
    T(getsockopt(s, SOL_SOCKET, SO_LINGER, &lg, &vl));
    O("  linger=%d,%d len=%u", lg.l_onoff, lg.l_linger, (unsigned)vl);
    struct timeval tv = {0, 250000};
    T(setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv));
    memset(&tv, 0, sizeof tv);
    vl = sizeof tv;
    T(getsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, &vl));
    O("  rcvtimeo=%ld.%06ld", (long)tv.tv_sec, (long)tv.tv_usec);
    close(s);

    CASE(nm("sockopt_errors", fam));
    s = (int)MUST(socket(fam, SOCK_STREAM, 0));
    vl = sizeof v;
    T(getsockopt(s, SOL_SOCKET, 9999, &v, &vl));
    T(getsockopt(s, 9999, 1, &v, &vl));
    T(setsockopt(s, SOL_SOCKET, 9999, &v, sizeof v));
    T(setsockopt(s, SOL_SOCKET, SO_REUSEADDR, NULL, sizeof v));
    T(setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &v, 1));
    vl = 1;
    T(getsockopt(s, SOL_SOCKET, SO_TYPE, &v, &vl));
    O("  len after short getsockopt=%u", (unsigned)vl);
    vl = sizeof v;
    T(getsockopt(s, SOL_SOCKET, SO_TYPE, (void *)1, &vl));
    T(getsockopt(s, SOL_SOCKET, SO_TYPE, &v, (socklen_t *)1));
    vl = (socklen_t)-1;
    T(getsockopt(s, SOL_SOCKET, SO_TYPE, &v, &vl));
    close(s);

    CASE(nm("sockopt_acceptconn_listener", fam));
    s = listener(fam, SOCK_STREAM, &a);
    GET(SOL_SOCKET, SO_ACCEPTCONN);
    close(s);
#undef GET

    CASE(nm("so_rcvtimeo_expires", fam));
    int c, srv;
    tcp_pair(fam, &c, &srv);
    struct timeval t2 = {0, 30000};
    T(setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &t2, sizeof t2));
    char buf[4];
    T(recv(c, buf, sizeof buf, 0));
    T(read(c, buf, sizeof buf));
    close(c);
    close(srv);
}

static void tcp_msgs(int fam)
{
    int c, s;
    char buf[256];
    long n;

    CASE(nm("tcp_sendmsg_recvmsg", fam));
    tcp_pair(fam, &c, &s);
    struct iovec iov[3] = {{"abc", 3}, {"", 0}, {"defgh", 5}};
    struct msghdr mh = {.msg_iov = iov, .msg_iovlen = 3};
    T(sendmsg(c, &mh, 0));
    char r1[2], r2[16];
    struct iovec riov[2] = {{r1, 2}, {r2, 16}};
    struct msghdr rh = {.msg_iov = riov, .msg_iovlen = 2};
    wait_readable(s);
    n = T(recvmsg(s, &rh, 0));
    show("r1", r1, 2);
    show("r2", r2, n - 2);
    O("msg_flags=0x%x namelen=%u", rh.msg_flags, (unsigned)rh.msg_namelen);

    CASE(nm("tcp_recv_flags", fam));
    T(send(c, "peekaboo", 8, 0));
    wait_readable(s);
    n = T(recv(s, buf, 4, MSG_PEEK));
    show("peek", buf, n);
    n = T(recv(s, buf, 8, MSG_WAITALL));
    show("all", buf, n);
    T(recv(s, buf, sizeof buf, MSG_DONTWAIT));
    T(send(c, "trunc-me", 8, 0));
    wait_readable(s);
    T(recv(s, NULL, 5, MSG_TRUNC)); /* TCP: discards */
    n = T(recv(s, buf, sizeof buf, 0));
    show("rest", buf, n);

    CASE(nm("tcp_sendto_recvfrom", fam));
    T(sendto(c, "st", 2, 0, NULL, 0));
    addr_t from;
    from.len = sizeof from.ss;
    wait_readable(s);
    n = T(recvfrom(s, buf, sizeof buf, 0, SA(&from), &from.len));
    show("data", buf, n);
    O("fromlen=%u", (unsigned)from.len);

    CASE(nm("tcp_readv_writev", fam));
    struct iovec wv[2] = {{"vec", 3}, {"tor", 3}};
    T(writev(c, wv, 2));
    wait_readable(s);
    char a[2], b[10];
    struct iovec rv[2] = {{a, 2}, {b, 10}};
    n = T(readv(s, rv, 2));
    show("a", a, 2);
    show("b", b, n - 2);

    CASE(nm("tcp_fionread_outq", fam));
    T(send(c, "12345", 5, 0));
    wait_readable(s);
    int q = -1;
    T(ioctl(s, FIONREAD, &q));
    O("inq=%d", q);
    T(ioctl(s, SIOCINQ, &q));
    O("SIOCINQ=%d", q);
    T(recv(s, buf, sizeof buf, 0));
    T(ioctl(s, FIONREAD, &q));
    O("inq=%d", q);

    CASE(nm("tcp_sendmmsg", fam));
    struct mmsghdr mm[3];
    struct iovec mi[3] = {{"m1", 2}, {"m22", 3}, {"m333", 4}};
    memset(mm, 0, sizeof mm);
    for (int i = 0; i < 3; i++) {
        mm[i].msg_hdr.msg_iov = &mi[i];
        mm[i].msg_hdr.msg_iovlen = 1;
    }
    T(sendmmsg(c, mm, 3, 0));
    O("lens=%u,%u,%u", mm[0].msg_len, mm[1].msg_len, mm[2].msg_len);
    n = 0;
    while (n < 9) {
        wait_readable(s);
        long r = recv(s, buf + n, sizeof buf - (size_t)n, 0);
        if (r <= 0)
            break;
        n += r;
    }
    show("stream", buf, n);
    close(c);
    close(s);
}

struct bulk {
    int fd;
    size_t len;
    uint32_t h;
};

static void *bulk_writer(void *arg)
{
    struct bulk *b = arg;
    char chunk[8192];
    size_t sent = 0;
    uint32_t h = FNV_INIT;
    while (sent < b->len) {
        size_t k = b->len - sent < sizeof chunk ? b->len - sent : sizeof chunk;
        for (size_t i = 0; i < k; i++)
            chunk[i] = (char)((sent + i) * 31 + 7);
        long w = send(b->fd, chunk, k, 0);
        if (w <= 0)
            break;
        h = fnv(chunk, (size_t)w, h);
        sent += (size_t)w;
    }
    b->h = h;
    shutdown(b->fd, SHUT_WR);
    return NULL;
}

static void tcp_bulk(int fam)
{
    int c, s;
    CASE(nm("tcp_bulk_2MB", fam));
    tcp_pair(fam, &c, &s);
    struct bulk b = {.fd = c, .len = 2 * 1024 * 1024};
    pthread_t th;
    pthread_create(&th, NULL, bulk_writer, &b);
    char buf[16384];
    long total = 0, r;
    uint32_t h = FNV_INIT;
    while ((r = read(s, buf, sizeof buf)) > 0) {
        h = fnv(buf, (size_t)r, h);
        total += r;
    }
    pthread_join(th, NULL);
    O("received=%ld last=%ld match=%d", total, r, h == b.h);
    close(c);
    close(s);
}

static void udp_cases(int fam)
{
    addr_t a, b, from;
    char buf[256];
    long n;

    CASE(nm("udp_sendto_recvfrom", fam));
    int u1 = (int)T(socket(fam, SOCK_DGRAM, 0));
    int u2 = (int)T(socket(fam, SOCK_DGRAM, 0));
    loop_addr(fam, &a, 0);
    T(bind(u1, SA(&a), a.len));
    local_of(u1, &a);
    O("u1 %s", addr_desc(&a));
    T(sendto(u2, "dgram-1", 7, 0, SA(&a), a.len));
    T(sendto(u2, "dgram-22", 8, 0, SA(&a), a.len));
    local_of(u2, &b);
    O("u2 autobound %s", addr_desc(&b));
    from.len = sizeof from.ss;
    wait_readable(u1);
    n = T(recvfrom(u1, buf, sizeof buf, 0, SA(&from), &from.len));
    show("first", buf, n);
    O("from port == u2 port: %d", port_of(&from) == port_of(&b));
    O("from %s", addr_desc(&from));
    n = T(recvfrom(u1, buf, sizeof buf, 0, NULL, NULL));
    show("second", buf, n);
    T(recvfrom(u1, buf, sizeof buf, MSG_DONTWAIT, NULL, NULL));
    T(recv(u1, buf, sizeof buf, MSG_DONTWAIT));

    CASE(nm("udp_peek_trunc", fam));
    T(sendto(u2, "0123456789", 10, 0, SA(&a), a.len));
    wait_readable(u1);
    n = T(recv(u1, buf, 4, MSG_PEEK));
    show("peek", buf, n);
    n = T(recv(u1, buf, 4, MSG_TRUNC));
    show("trunc", buf, 4);
    T(recv(u1, buf, 4, MSG_DONTWAIT)); /* rest of datagram discarded */

    CASE(nm("udp_recvmsg_flags", fam));
    T(sendto(u2, "longer-than-buf", 15, 0, SA(&a), a.len));
    wait_readable(u1);
    char small[5];
    struct iovec iov = {small, sizeof small};
    struct msghdr mh = {.msg_name = &from.ss, .msg_namelen = sizeof from.ss, .msg_iov = &iov, .msg_iovlen = 1};
    n = T(recvmsg(u1, &mh, 0));
    show("data", small, n);
    O("MSG_TRUNC=%d namelen=%u", !!(mh.msg_flags & MSG_TRUNC), (unsigned)mh.msg_namelen);

    CASE(nm("udp_sendmsg_to", fam));
    struct iovec wv[2] = {{"sm-", 3}, {"to", 2}};
    struct msghdr wh = {.msg_name = &a.ss, .msg_namelen = a.len, .msg_iov = wv, .msg_iovlen = 2};
    T(sendmsg(u2, &wh, 0));
    wait_readable(u1);
    n = T(recv(u1, buf, sizeof buf, 0));
    show("data", buf, n);

    CASE(nm("udp_pktinfo", fam));
    int on = 1;
    if (fam == AF_INET)
        T(setsockopt(u1, IPPROTO_IP, IP_PKTINFO, &on, sizeof on));
    else
        T(setsockopt(u1, IPPROTO_IPV6, IPV6_RECVPKTINFO, &on, sizeof on));
    T(sendto(u2, "pi", 2, 0, SA(&a), a.len));
    wait_readable(u1);
    char cbuf[256];
    iov.iov_base = buf;
    iov.iov_len = sizeof buf;
    struct msghdr ph = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf};
    T(recvmsg(u1, &ph, 0));
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&ph); cm; cm = CMSG_NXTHDR(&ph, cm)) {
        char ip[INET6_ADDRSTRLEN] = "?";
        if (cm->cmsg_level == IPPROTO_IP && cm->cmsg_type == IP_PKTINFO)
            inet_ntop(AF_INET, &((struct in_pktinfo *)CMSG_DATA(cm))->ipi_addr, ip, sizeof ip);
        if (cm->cmsg_level == IPPROTO_IPV6 && cm->cmsg_type == IPV6_PKTINFO)
            inet_ntop(AF_INET6, &((struct in6_pktinfo *)CMSG_DATA(cm))->ipi6_addr, ip, sizeof ip);
        O("cmsg level=%d type=%d dst=%s", cm->cmsg_level, cm->cmsg_type, ip);
    }
    on = 0;
    setsockopt(u1, fam == AF_INET ? IPPROTO_IP : IPPROTO_IPV6,
               fam == AF_INET ? IP_PKTINFO : IPV6_RECVPKTINFO, &on, sizeof on);

    CASE(nm("udp_sendmmsg_recvmmsg", fam));
    struct mmsghdr mm[4];
    struct iovec mi[4];
    char bufs[4][32];
    const char *msgs[3] = {"first", "second!", "3"};
    memset(mm, 0, sizeof mm);
    for (int i = 0; i < 3; i++) {
        mi[i].iov_base = (void *)msgs[i];
        mi[i].iov_len = strlen(msgs[i]);
        mm[i].msg_hdr.msg_iov = &mi[i];
        mm[i].msg_hdr.msg_iovlen = 1;
        mm[i].msg_hdr.msg_name = &a.ss;
        mm[i].msg_hdr.msg_namelen = a.len;
    }
    T(sendmmsg(u2, mm, 3, 0));
    O("lens=%u,%u,%u", mm[0].msg_len, mm[1].msg_len, mm[2].msg_len);
    memset(mm, 0, sizeof mm);
    for (int i = 0; i < 4; i++) {
        mi[i].iov_base = bufs[i];
        mi[i].iov_len = sizeof bufs[i];
        mm[i].msg_hdr.msg_iov = &mi[i];
        mm[i].msg_hdr.msg_iovlen = 1;
    }
    wait_readable(u1);
    /* all three were queued synchronously on the loopback */
    n = T(recvmmsg(u1, mm, 4, MSG_DONTWAIT, NULL));
    for (int i = 0; i < n; i++)
        show("msg", bufs[i], mm[i].msg_len);
    T(recvmmsg(u1, mm, 4, MSG_DONTWAIT, NULL));
    T(recvmmsg(u1, mm, 4, MSG_WAITFORONE | MSG_DONTWAIT, NULL));
    T(recvmmsg(-1, mm, 4, 0, NULL));
    T(sendmmsg(-1, mm, 1, 0));

    CASE(nm("udp_connected", fam));
    T(connect(u2, SA(&a), a.len));
    addr_t pa;
    peer_of(u2, &pa);
    O("peer == u1: %d", same_addr(&pa, &a));
    T(send(u2, "conn", 4, 0));
    T(write(u2, "w", 1));
    wait_readable(u1);
    n = T(recv(u1, buf, sizeof buf, 0));
    show("data", buf, n);
    n = T(read(u1, buf, sizeof buf));
    show("data", buf, n);
    T(sendto(u1, "back", 4, 0, SA(&b), b.len));
    wait_readable(u2);
    n = T(recv(u2, buf, sizeof buf, 0));
    show("back", buf, n);
    struct sockaddr_storage uns;
    memset(&uns, 0, sizeof uns);
    uns.ss_family = AF_UNSPEC;
    T(connect(u2, (struct sockaddr *)&uns, sizeof uns)); /* disconnect */
    pa.len = sizeof pa.ss;
    T(getpeername(u2, SA(&pa), &pa.len));
    T(send(u2, "x", 1, 0));

    CASE(nm("udp_emsgsize", fam));
    static char huge[70000];
    T(sendto(u2, huge, sizeof huge, 0, SA(&a), a.len));
    T(sendto(u2, huge, 65507 - (fam == AF_INET6 ? 20 : 0), 0, SA(&a), a.len));
    wait_readable(u1);
    T(recv(u1, huge, sizeof huge, 0));

    CASE(nm("udp_refused", fam));
    int d = (int)MUST(socket(fam, SOCK_DGRAM, 0));
    addr_t da;
    loop_addr(fam, &da, 0);
    MUST(bind(d, SA(&da), da.len));
    local_of(d, &da);
    close(d); /* nothing listens on da any more */
    int u3 = (int)MUST(socket(fam, SOCK_DGRAM, 0));
    T(connect(u3, SA(&da), da.len));
    T(send(u3, "anyone?", 7, 0));
    struct pollfd pf = {.fd = u3, .events = POLLIN};
    T(poll(&pf, 1, 2000));
    O("revents=0x%x", pf.revents);
    T(recv(u3, buf, sizeof buf, 0));
    T(recv(u3, buf, sizeof buf, MSG_DONTWAIT));
    close(u3);
    close(u1);
    close(u2);

    CASE(nm("udp_errors", fam));
    int u = (int)MUST(socket(fam, SOCK_DGRAM, 0));
    T(send(u, "x", 1, 0));
    T(sendto(u, "x", 1, 0, SA(&a), 3));
    T(recv(u, buf, 1, MSG_DONTWAIT));
    T(shutdown(u, SHUT_RD));
    T(sendto(u, "x", 1, 0, (struct sockaddr *)1, a.len));
    close(u);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    int fams[2] = {AF_INET, AF_INET6};
    for (int i = 0; i < 2; i++) {
        int f = fams[i];
        tcp_basic(f);
        tcp_accept4(f);
        tcp_shutdown(f);
        tcp_errors(f);
        sockopts(f);
        tcp_msgs(f);
        tcp_bulk(f);
        udp_cases(f);
    }
    socket_errors();
    return 0;
}
