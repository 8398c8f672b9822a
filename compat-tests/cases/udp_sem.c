/* UDP semantics over 127.0.0.1 and ::1 (suffix _v4/_v6): sendto/recvfrom
 * with addresses, datagram boundaries, zero-length datagrams, MSG_TRUNC,
 * MSG_PEEK, EMSGSIZE, connect (filtering, ECONNREFUSED after a send, via
 * recv and send), AF_UNSPEC disconnect, sendmmsg/recvmmsg, FIONREAD; then
 * IPv6 specifics: IPV6_V6ONLY and v4-mapped addresses on dual-stack
 * sockets. */
#include "sem_common.h"

static void basic(int fam)
{
    addr_t a, b, from;
    char buf[128];
    long n;

    CASE(nm("udp_sendto_recvfrom_addr", fam));
    int x = udp_sock(fam, &a);
    int y = udp_sock(fam, &b);
    T(sendto(y, "hello", 5, 0, SA(&a), a.len));
    wait_readable(x);
    from.len = sizeof from.ss;
    n = T(recvfrom(x, buf, sizeof buf, 0, SA(&from), &from.len));
    show("got", buf, n);
    O("from %s == sender: %d", addr_desc(&from), same_addr(&from, &b));
    T(sendto(x, "reply", 5, 0, SA(&from), from.len));
    wait_readable(y);
    n = T(recvfrom(y, buf, sizeof buf, 0, NULL, NULL));
    show("reply", buf, n);
    from.len = 2; /* truncated address */
    T(sendto(y, "t", 1, 0, SA(&a), a.len));
    wait_readable(x);
    T(recvfrom(x, buf, sizeof buf, 0, SA(&from), &from.len));
    O("addrlen now=%u", (unsigned)from.len);

    CASE(nm("udp_boundaries_preserved", fam));
    T(sendto(y, "a", 1, 0, SA(&a), a.len));
    T(sendto(y, "bbbbb", 5, 0, SA(&a), a.len));
    T(sendto(y, "ccc", 3, 0, SA(&a), a.len));
    wait_bytes(x, 1);
    for (int i = 0; i < 3; i++) {
        wait_readable(x);
        n = T(recv(x, buf, sizeof buf, 0));
        show("dgram", buf, n);
    }
    T(recv(x, buf, sizeof buf, MSG_DONTWAIT));

    CASE(nm("udp_zero_length", fam));
    T(sendto(y, "", 0, 0, SA(&a), a.len));
    O("readable: %s", evname((uint16_t)wait_readable(x)));
    int v = -1;
    T(ioctl(x, FIONREAD, &v));
    O("FIONREAD=%d", v);
    from.len = sizeof from.ss;
    T(recvfrom(x, buf, sizeof buf, 0, SA(&from), &from.len));
    O("from sender: %d", same_addr(&from, &b));
    T(recv(x, buf, sizeof buf, MSG_DONTWAIT));
    struct iovec iv = {buf, 0};
    struct msghdr mh = {.msg_name = SA(&a), .msg_namelen = a.len, .msg_iov = &iv, .msg_iovlen = 1};
    T(sendmsg(y, &mh, 0));
    wait_readable(x);
    struct msghdr rm = {.msg_iov = &iv, .msg_iovlen = 1};
    iv.iov_len = sizeof buf;
    T(recvmsg(x, &rm, 0));
    O("msg_flags=0x%x", rm.msg_flags);

    CASE(nm("udp_msg_trunc", fam));
    T(sendto(y, "0123456789", 10, 0, SA(&a), a.len));
    T(sendto(y, "next", 4, 0, SA(&a), a.len));
    wait_readable(x);
    n = T(recv(x, buf, 4, MSG_TRUNC));
    show("first 4", buf, 4);
    wait_readable(x);
    n = T(recv(x, buf, sizeof buf, 0)); /* the rest was discarded */
    show("next dgram", buf, n);
    T(sendto(y, "abcdefgh", 8, 0, SA(&a), a.len));
    wait_readable(x);
    char small[3];
    iv = (struct iovec){small, 3};
    rm = (struct msghdr){.msg_iov = &iv, .msg_iovlen = 1};
    n = T(recvmsg(x, &rm, 0));
    O("msg_flags has MSG_TRUNC: %d", (rm.msg_flags & MSG_TRUNC) != 0);
    show("kept", small, n);
    T(sendto(y, "abcdefgh", 8, 0, SA(&a), a.len));
    wait_readable(x);
    rm.msg_flags = 0;
    n = T(recvmsg(x, &rm, MSG_TRUNC));
    O("msg_flags has MSG_TRUNC: %d", (rm.msg_flags & MSG_TRUNC) != 0);

    CASE(nm("udp_peek", fam));
    T(sendto(y, "peek-me", 7, 0, SA(&a), a.len));
    T(sendto(y, "second", 6, 0, SA(&a), a.len));
    wait_readable(x);
    n = T(recv(x, buf, 4, MSG_PEEK));
    show("peek4", buf, n);
    n = T(recv(x, buf, sizeof buf, MSG_PEEK | MSG_TRUNC));
    n = T(recv(x, buf, sizeof buf, 0));
    show("read", buf, n);
    wait_readable(x);
    n = T(recv(x, buf, sizeof buf, 0));
    show("read", buf, n);

    CASE(nm("udp_fionread_first_datagram", fam));
    T(sendto(y, "12", 2, 0, SA(&a), a.len));
    T(sendto(y, "3456", 4, 0, SA(&a), a.len));
    wait_bytes(x, 2);
    usleep(1000);
    v = -1;
    T(ioctl(x, FIONREAD, &v));
    O("FIONREAD=%d (size of the first datagram)", v);
    recv(x, buf, sizeof buf, 0);
    wait_readable(x);
    v = -1;
    T(ioctl(x, FIONREAD, &v));
    O("FIONREAD=%d", v);
    recv(x, buf, sizeof buf, 0);
    v = -1;
    T(ioctl(x, FIONREAD, &v));
    O("FIONREAD empty=%d", v);

    CASE(nm("udp_nonblocking_eagain", fam));
    T(recv(x, buf, sizeof buf, MSG_DONTWAIT));
    MUST(fcntl(x, F_SETFL, O_NONBLOCK));
    T(recvfrom(x, buf, sizeof buf, 0, NULL, NULL));
    T(read(x, buf, sizeof buf));
    poll1("IN|OUT", x, POLLIN | POLLOUT, 0);
    close(x);
    close(y);
}

static void sizes(int fam)
{
    addr_t a, b;
    static char big[70000];

    CASE(nm("udp_emsgsize", fam));
    int x = udp_sock(fam, &a);
    int y = udp_sock(fam, &b);
    int max = fam == AF_INET ? 65507 : 65527;
    O("largest payload %d", max);
    T(sendto(y, big, (size_t)max + 1, 0, SA(&a), a.len));
    T(sendto(y, big, 70000, 0, SA(&a), a.len));
    memset(big, 'm', sizeof big);
    T(sendto(y, big, (size_t)max, 0, SA(&a), a.len));
    wait_readable(x);
    static char rb[70000];
    long n = T(recv(x, rb, sizeof rb, 0));
    O("payload intact: %d", n == max && memcmp(rb, big, (size_t)max) == 0);
    close(x);
    close(y);
}

static void connected(int fam)
{
    addr_t a, b, c3, dead, from;
    char buf[64];
    long n;

    CASE(nm("udp_connect_send_recv_filter", fam));
    int x = udp_sock(fam, &a);
    int y = udp_sock(fam, &b);
    int z = udp_sock(fam, &c3);
    T(connect(x, SA(&b), b.len));
    addr_t pa;
    peer_of(x, &pa);
    O("peer == y: %d", same_addr(&pa, &b));
    T(send(x, "to-y", 4, 0));
    wait_readable(y);
    n = T(recv(y, buf, sizeof buf, 0));
    show("y got", buf, n);
    T(sendto(z, "from-z", 6, 0, SA(&a), a.len)); /* filtered: not the peer */
    T(sendto(y, "from-y", 6, 0, SA(&a), a.len));
    wait_readable(x);
    n = T(recv(x, buf, sizeof buf, 0));
    show("x got", buf, n);
    T(recv(x, buf, sizeof buf, MSG_DONTWAIT));
    T(sendto(x, "other", 5, 0, SA(&c3), c3.len)); /* explicit address still allowed */
    wait_readable(z);
    n = T(recv(z, buf, sizeof buf, 0));
    show("z got", buf, n);
    T(write(x, "w", 1));
    wait_readable(y);
    T(read(y, buf, sizeof buf));

    CASE(nm("udp_connect_af_unspec_disconnect", fam));
    struct sockaddr unspec = {.sa_family = AF_UNSPEC};
    T(connect(x, &unspec, sizeof unspec));
    addr_t xl;
    local_of(x, &xl);
    /* bound with port 0: the disconnect releases the automatic port */
    O("after disconnect local %s", addr_desc(&xl));
    pa.len = sizeof pa.ss;
    T(getpeername(x, SA(&pa), &pa.len));
    T(send(x, "x", 1, 0));
    T(sendto(x, "x-again", 7, 0, SA(&c3), c3.len)); /* autobinds anew */
    wait_readable(z);
    from.len = sizeof from.ss;
    n = T(recvfrom(z, buf, sizeof buf, 0, SA(&from), &from.len));
    show("z got", buf, n);
    local_of(x, &xl);
    O("rebound %s; z saw it: %d", addr_desc(&xl), same_addr(&from, &xl));
    T(connect(x, &unspec, sizeof unspec));

    CASE(nm("udp_unconnected_send_edestaddrreq", fam));
    T(send(z, "x", 1, 0));
    T(write(z, "x", 1));
    pa.len = sizeof pa.ss;
    T(getpeername(z, SA(&pa), &pa.len));
    T(shutdown(z, SHUT_RD));
    close(x);
    close(y);
    close(z);

    CASE(nm("udp_connected_refused_via_recv", fam));
    int d = udp_sock(fam, &dead);
    close(d); /* nothing listens there now */
    x = (int)MUST(socket(fam, SOCK_DGRAM, 0));
    T(connect(x, SA(&dead), dead.len));
    T(send(x, "ping", 4, 0));
    O("error visible: %d", wait_err(x));
    poll1("IN|OUT", x, POLLIN | POLLOUT, 0);
    T(recv(x, buf, sizeof buf, 0));
    T(recv(x, buf, sizeof buf, MSG_DONTWAIT));
    close(x);

    CASE(nm("udp_connected_refused_via_send_and_so_error", fam));
    x = (int)MUST(socket(fam, SOCK_DGRAM, 0));
    T(connect(x, SA(&dead), dead.len));
    T(send(x, "ping", 4, 0));
    wait_err(x);
    T(send(x, "again", 5, 0));
    T(send(x, "again", 5, 0));
    wait_err(x);
    int err = -1;
    socklen_t el = sizeof err;
    T(getsockopt(x, SOL_SOCKET, SO_ERROR, &err, &el));
    O("SO_ERROR=%s", en(err));
    T(recv(x, buf, sizeof buf, MSG_DONTWAIT));
    close(x);

    CASE(nm("udp_unconnected_no_icmp_error", fam));
    x = (int)MUST(socket(fam, SOCK_DGRAM, 0));
    T(sendto(x, "ping", 4, 0, SA(&dead), dead.len));
    poll1("IN 10ms", x, POLLIN, 10);
    T(recv(x, buf, sizeof buf, MSG_DONTWAIT));
    err = -1;
    T(getsockopt(x, SOL_SOCKET, SO_ERROR, &err, &el));
    O("SO_ERROR=%s", en(err));
    close(x);
}

static void mmsg(int fam)
{
    addr_t a, b;

    CASE(nm("udp_sendmmsg_recvmmsg", fam));
    int x = udp_sock(fam, &a);
    int y = udp_sock(fam, &b);
    struct mmsghdr sm[3];
    struct iovec sv[3] = {{"first", 5}, {"2nd", 3}, {"third!", 6}};
    memset(sm, 0, sizeof sm);
    for (int i = 0; i < 3; i++) {
        sm[i].msg_hdr.msg_name = SA(&a);
        sm[i].msg_hdr.msg_namelen = a.len;
        sm[i].msg_hdr.msg_iov = &sv[i];
        sm[i].msg_hdr.msg_iovlen = 1;
    }
    T(sendmmsg(y, sm, 3, 0));
    O("msg_len=%u,%u,%u", sm[0].msg_len, sm[1].msg_len, sm[2].msg_len);
    wait_bytes(x, 5);
    usleep(2000);
    struct mmsghdr rmm[4];
    char bufs[4][16];
    struct iovec rv[4];
    addr_t froms[4];
    memset(rmm, 0, sizeof rmm);
    for (int i = 0; i < 4; i++) {
        rv[i] = (struct iovec){bufs[i], 4};
        froms[i].len = sizeof froms[i].ss;
        rmm[i].msg_hdr.msg_name = SA(&froms[i]);
        rmm[i].msg_hdr.msg_namelen = froms[i].len;
        rmm[i].msg_hdr.msg_iov = &rv[i];
        rmm[i].msg_hdr.msg_iovlen = 1;
    }
    struct timespec ts = {1, 0};
    long n = T(recvmmsg(x, rmm, 4, MSG_DONTWAIT, &ts));
    for (long i = 0; i < n; i++) {
        show("dgram", bufs[i], rmm[i].msg_len < 4 ? rmm[i].msg_len : 4);
        froms[i].len = rmm[i].msg_hdr.msg_namelen;
        O("  len=%u trunc=%d from sender=%d", rmm[i].msg_len,
          (rmm[i].msg_hdr.msg_flags & MSG_TRUNC) != 0, same_addr(&froms[i], &b));
    }
    T(recvmmsg(x, rmm, 4, MSG_DONTWAIT, NULL));

    CASE(nm("udp_recvmmsg_waitforone", fam));
    T(sendto(y, "solo", 4, 0, SA(&a), a.len));
    for (int i = 0; i < 4; i++)
        rv[i].iov_len = 16;
    n = T(recvmmsg(x, rmm, 4, MSG_WAITFORONE, NULL));
    if (n > 0)
        show("dgram", bufs[0], rmm[0].msg_len);
    T(sendmmsg(y, sm, 0, 0));
    close(x);
    close(y);
}

static void binds(int fam)
{
    addr_t a;
    int one = 1;

    CASE(nm("udp_bind_eaddrinuse_and_reuseaddr", fam));
    int x = udp_sock(fam, &a);
    int y = (int)MUST(socket(fam, SOCK_DGRAM, 0));
    T(bind(y, SA(&a), a.len));
    close(y);
    close(x);
    x = (int)MUST(socket(fam, SOCK_DGRAM, 0));
    y = (int)MUST(socket(fam, SOCK_DGRAM, 0));
    T(setsockopt(x, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one));
    T(setsockopt(y, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one));
    loop_addr(fam, &a, 0);
    T(bind(x, SA(&a), a.len));
    local_of(x, &a);
    T(bind(y, SA(&a), a.len));
    close(x);
    close(y);
}

/* ---- IPv6 specifics ---- */

static void mapped(struct sockaddr_in6 *s, int port)
{
    memset(s, 0, sizeof *s);
    s->sin6_family = AF_INET6;
    inet_pton(AF_INET6, "::ffff:127.0.0.1", &s->sin6_addr);
    s->sin6_port = htons((uint16_t)port);
}

static void ipv6(void)
{
    addr_t a, b, from;
    char buf[64];
    long n;
    int zero = 0, one = 1;
    struct sockaddr_in6 m;

    CASE("v6only_default_and_set");
    int s = (int)MUST(socket(AF_INET6, SOCK_STREAM, 0));
    O("IPV6_V6ONLY default=%d", sockopt_int(s, IPPROTO_IPV6, IPV6_V6ONLY));
    T(setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one));
    O("IPV6_V6ONLY=%d", sockopt_int(s, IPPROTO_IPV6, IPV6_V6ONLY));
    loop_addr(AF_INET6, &a, 0);
    MUST(bind(s, SA(&a), a.len));
    T(setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero)); /* too late */
    close(s);

    CASE("v6only_rejects_mapped");
    s = (int)MUST(socket(AF_INET6, SOCK_STREAM, 0));
    T(setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one));
    mapped(&m, 0);
    T(bind(s, (struct sockaddr *)&m, sizeof m));
    int l4 = listener(AF_INET, SOCK_STREAM, &b);
    mapped(&m, port_of(&b));
    T(connect(s, (struct sockaddr *)&m, sizeof m));
    close(s);
    int u = (int)MUST(socket(AF_INET6, SOCK_DGRAM, 0));
    T(setsockopt(u, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one));
    T(sendto(u, "x", 1, 0, (struct sockaddr *)&m, sizeof m));
    close(u);

    CASE("v4mapped_tcp_connect_to_v4_listener");
    s = (int)MUST(socket(AF_INET6, SOCK_STREAM, 0));
    T(connect(s, (struct sockaddr *)&m, sizeof m));
    addr_t sl, sp, al;
    local_of(s, &sl);
    peer_of(s, &sp);
    O("local %s", addr_desc(&sl));
    O("peer %s port == listener: %d", addr_desc(&sp), port_of(&sp) == port_of(&b));
    al.len = sizeof al.ss;
    int acc = (int)T(accept(l4, SA(&al), &al.len));
    O("v4 side sees %s port matches: %d", addr_desc(&al), port_of(&al) == port_of(&sl));
    T(send(s, "mapped", 6, 0));
    wait_readable(acc);
    n = T(recv(acc, buf, sizeof buf, 0));
    show("got", buf, n);
    close(acc);
    close(s);
    close(l4);

    CASE("v4mapped_dual_stack_listener");
    int l6 = (int)MUST(socket(AF_INET6, SOCK_STREAM, 0));
    T(setsockopt(l6, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero));
    mapped(&m, 0);
    T(bind(l6, (struct sockaddr *)&m, sizeof m));
    T(listen(l6, 4));
    local_of(l6, &a);
    O("listener %s", addr_desc(&a));
    int c4 = (int)MUST(socket(AF_INET, SOCK_STREAM, 0));
    loop_addr(AF_INET, &b, port_of(&a));
    T(connect(c4, SA(&b), b.len));
    al.len = sizeof al.ss;
    acc = (int)T(accept(l6, SA(&al), &al.len));
    O("accepted peer %s", addr_desc(&al));
    local_of(c4, &sl);
    O("peer port == v4 client port: %d", port_of(&al) == port_of(&sl));
    local_of(acc, &sl);
    O("accepted local %s", addr_desc(&sl));
    O("SO_DOMAIN of accepted=%s", sockopt_int(acc, SOL_SOCKET, SO_DOMAIN) == AF_INET6 ? "AF_INET6" : "other");
    int c6 = (int)MUST(socket(AF_INET6, SOCK_STREAM, 0));
    loop_addr(AF_INET6, &b, port_of(&a));
    T(connect(c6, SA(&b), b.len)); /* ::1 is not ::ffff:127.0.0.1 */
    close(c6);
    close(acc);
    close(c4);
    close(l6);

    CASE("v4mapped_udp_dual_stack");
    int u4 = udp_sock(AF_INET, &b);
    int u6 = (int)MUST(socket(AF_INET6, SOCK_DGRAM, 0));
    O("IPV6_V6ONLY=%d", sockopt_int(u6, IPPROTO_IPV6, IPV6_V6ONLY));
    mapped(&m, port_of(&b));
    T(sendto(u6, "to-v4", 5, 0, (struct sockaddr *)&m, sizeof m));
    wait_readable(u4);
    from.len = sizeof from.ss;
    n = T(recvfrom(u4, buf, sizeof buf, 0, SA(&from), &from.len));
    show("v4 got", buf, n);
    O("v4 sees %s", addr_desc(&from));
    local_of(u6, &a);
    O("dual-stack socket autobound to %s", addr_desc(&a));
    T(sendto(u4, "to-v6", 5, 0, SA(&from), from.len));
    wait_readable(u6);
    from.len = sizeof from.ss;
    n = T(recvfrom(u6, buf, sizeof buf, 0, SA(&from), &from.len));
    show("v6 got", buf, n);
    O("v6 sees %s port == v4 socket: %d", addr_desc(&from), port_of(&from) == port_of(&b));
    loop_addr(AF_INET6, &a, port_of(&b));
    T(sendto(u6, "x", 1, 0, SA(&a), a.len)); /* to ::1 after binding to a mapped address */
    close(u4);
    close(u6);

    CASE("v6_address_family_mismatch");
    int t4 = (int)MUST(socket(AF_INET, SOCK_STREAM, 0));
    loop_addr(AF_INET6, &a, 0);
    T(bind(t4, SA(&a), a.len));
    T(connect(t4, SA(&a), a.len));
    close(t4);
    int t6 = (int)MUST(socket(AF_INET6, SOCK_STREAM, 0));
    loop_addr(AF_INET, &b, 0);
    T(bind(t6, SA(&b), b.len));
    T(bind(t6, SA(&b), sizeof(struct sockaddr_in6)));
    T(connect(t6, SA(&b), b.len));
    close(t6);
    int d6 = (int)MUST(socket(AF_INET6, SOCK_DGRAM, 0));
    T(sendto(d6, "x", 1, 0, SA(&b), b.len));
    close(d6);

    CASE("v6_sockaddr_fields");
    int l = listener(AF_INET6, SOCK_STREAM, &a);
    struct sockaddr_in6 *p6 = (struct sockaddr_in6 *)&a.ss;
    O("flowinfo=%u scope_id=%u", (unsigned)p6->sin6_flowinfo, (unsigned)p6->sin6_scope_id);
    int c = (int)MUST(socket(AF_INET6, SOCK_STREAM, 0));
    struct sockaddr_in6 old = *p6;
    T(connect(c, (struct sockaddr *)&old, 24)); /* RFC 2133 length, no scope id */
    int sv = (int)MUST(accept(l, SA(&from), &(socklen_t){sizeof from.ss}));
    close(sv);
    close(c);
    close(l);
}

int main(void)
{
    watchdog(25);
    signal(SIGPIPE, SIG_IGN);
    int fams[2] = {AF_INET, AF_INET6};
    for (int i = 0; i < 2; i++) {
        basic(fams[i]);
        sizes(fams[i]);
        connected(fams[i]);
        mmsg(fams[i]);
        binds(fams[i]);
    }
    ipv6();
    return 0;
}
