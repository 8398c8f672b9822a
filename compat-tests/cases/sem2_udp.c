/* UDP semantics, second series, over 127.0.0.1 and ::1 (suffix _v4/_v6):
 * non-blocking modes, connect keeping already queued datagrams, connecting
 * to another peer, AF_UNSPEC disconnect of an explicitly bound socket,
 * sendto errors and AF_UNSPEC destinations, shutdown of connected and
 * unconnected sockets, gather/scatter with many iovecs, sendmmsg stopping at
 * a failing message, recvmmsg details, the MSG_TRUNC size probe, MSG_WAITALL
 * and MSG_PEEK on datagrams, which of several sockets on one port receives
 * (SO_REUSEADDR: the last bound; SO_REUSEPORT: one per flow, a connected
 * member for its peer), a full receive buffer, edge-triggered wake-ups on
 * every arrival, control messages on recvmsg (TTL/hop limit, TOS/
 * traffic class, packet info, timestamps; MSG_CTRUNC truncation) and on
 * sendmsg (per-datagram TTL/TOS, bad messages); then IPv6 specifics: v4-mapped connects
 * (non-blocking, refused, UDP), IPV6_V6ONLY inherited, v4 and v6 sockets on
 * one port number. */
#include "sem2_common.h"

static volatile sig_atomic_t pipes;
static void on_pipe(int sig)
{
    (void)sig;
    pipes++;
}

static void modes(int fam)
{
    addr_t a, b;
    char buf[32];
    long n;

    CASE(nm("udp_nonblocking_modes", fam));
    int x = (int)MUST(socket(fam, SOCK_DGRAM | SOCK_NONBLOCK, 0));
    loop_addr(fam, &a, 0);
    MUST(bind(x, SA(&a), a.len));
    local_of(x, &a);
    int y = udp_sock(fam, &b);
    O("flags %s", flflags(x));
    T(recvfrom(x, buf, sizeof buf, 0, NULL, NULL));
    struct iovec iv = {buf, sizeof buf};
    struct msghdr mh = {.msg_iov = &iv, .msg_iovlen = 1};
    T(recvmsg(x, &mh, 0));
    struct mmsghdr mm = {.msg_hdr = mh};
    T(recvmmsg(x, &mm, 1, 0, NULL));
    T(read(x, buf, sizeof buf));
    int off = 0;
    T(ioctl(x, FIONBIO, &off));
    O("flags %s", flflags(x));
    T(recv(x, buf, sizeof buf, MSG_DONTWAIT));
    poll1("IN|OUT", x, POLLIN | POLLOUT, 0);
    T(sendto(y, "nb", 2, MSG_DONTWAIT, SA(&a), a.len));
    wait_readable(x);
    poll1("IN|OUT", x, POLLIN | POLLOUT, 0);
    n = T(recv(x, buf, sizeof buf, MSG_DONTWAIT));
    show("got", buf, n);
    T(recv(x, buf, sizeof buf, MSG_DONTWAIT));
    close(x);
    close(y);
}

static void connects(int fam)
{
    addr_t a, b, c3, from, pa;
    char buf[32];
    long n;

    CASE(nm("udp_connect_keeps_queued_datagrams", fam));
    int x = udp_sock(fam, &a);
    int y = udp_sock(fam, &b);
    int z = udp_sock(fam, &c3);
    T(sendto(z, "early-z", 7, 0, SA(&a), a.len));
    wait_readable(x);
    T(connect(x, SA(&b), b.len)); /* filters arrivals, not what is queued */
    T(sendto(y, "from-y", 6, 0, SA(&a), a.len));
    from.len = sizeof from.ss;
    n = T(recvfrom(x, buf, sizeof buf, 0, SA(&from), &from.len));
    show("first", buf, n);
    O("from z: %d", same_addr(&from, &c3));
    wait_readable(x);
    from.len = sizeof from.ss;
    n = T(recvfrom(x, buf, sizeof buf, 0, SA(&from), &from.len));
    show("second", buf, n);
    O("from y: %d", same_addr(&from, &b));

    CASE(nm("udp_connect_to_another_peer", fam));
    T(connect(x, SA(&c3), c3.len));
    peer_of(x, &pa);
    O("peer == z: %d", same_addr(&pa, &c3));
    T(sendto(y, "from-y", 6, 0, SA(&a), a.len)); /* y is filtered now */
    T(sendto(z, "from-z", 6, 0, SA(&a), a.len));
    wait_readable(x);
    from.len = sizeof from.ss;
    n = T(recvfrom(x, buf, sizeof buf, 0, SA(&from), &from.len));
    show("got", buf, n);
    O("from z: %d", same_addr(&from, &c3));
    T(recv(x, buf, sizeof buf, MSG_DONTWAIT));
    T(send(x, "to-z", 4, 0));
    wait_readable(z);
    n = T(recv(z, buf, sizeof buf, 0));
    show("z got", buf, n);
    close(x);
    close(y);
    close(z);

    CASE(nm("udp_af_unspec_keeps_explicit_port", fam));
    int one = 1;
    /* A port of our own: the holder binds it without SO_REUSEADDR (nobody
     * else has it), then allows x to share it; x then drops the option. */
    int holder = udp_sock(fam, &a);
    MUST(setsockopt(holder, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one));
    x = (int)MUST(socket(fam, SOCK_DGRAM, 0));
    MUST(setsockopt(x, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one));
    T(bind(x, SA(&a), a.len)); /* an explicit port */
    int zero = 0;
    MUST(setsockopt(x, SOL_SOCKET, SO_REUSEADDR, &zero, sizeof zero));
    close(holder);
    y = udp_sock(fam, &b);
    T(connect(x, SA(&b), b.len));
    struct sockaddr unspec = {.sa_family = AF_UNSPEC};
    T(connect(x, &unspec, sizeof unspec));
    addr_t xl;
    local_of(x, &xl);
    O("after disconnect %s same as bound: %d", addr_desc(&xl), same_addr(&xl, &a));
    T(connect(x, &unspec, sizeof unspec)); /* again, while not connected */
    T(sendto(y, "still-here", 10, 0, SA(&a), a.len));
    wait_readable(x);
    n = T(recv(x, buf, sizeof buf, 0));
    show("got", buf, n);
    close(x);
    close(y);
}

static void sendto_errors(int fam)
{
    addr_t a, b, z0;
    char buf[32];
    long n;

    CASE(nm("udp_sendto_errors", fam));
    int x = udp_sock(fam, &a);
    int y = udp_sock(fam, &b);
    loop_addr(fam, &z0, 0);
    T(sendto(y, "p0", 2, 0, SA(&z0), z0.len)); /* port 0 */
    T(sendto(y, "sh", 2, 0, SA(&a), a.len - 1)); /* short address */
    T(sendto(y, "sh", 2, 0, SA(&a), 1));
    T(sendto(y, "nl", 2, 0, NULL, a.len));
    T(sendto(y, "ok", 2, 0, SA(&a), a.len + 4)); /* longer is fine */
    wait_readable(x);
    n = T(recv(x, buf, sizeof buf, 0));
    show("got", buf, n);
    close(x);
    close(y);

    CASE(nm("udp_sendto_af_unspec_destination", fam));
    x = udp_sock(fam, &a);
    y = udp_sock(fam, &b);
    addr_t u = a;
    u.ss.ss_family = AF_UNSPEC; /* the rest is the address of x */
    n = T(sendto(y, "unspec", 6, 0, SA(&u), u.len));
    poll1("x IN", x, POLLIN, n > 0 ? 1000 : 10);
    T(recv(x, buf, sizeof buf, MSG_DONTWAIT));
    T(connect(y, SA(&a), a.len));
    n = T(sendto(y, "unspec-connected", 16, 0, SA(&u), u.len));
    poll1("x IN", x, POLLIN, 1000);
    n = T(recv(x, buf, sizeof buf, MSG_DONTWAIT));
    show("got", buf, n);
    close(x);
    close(y);
}

static void shutdowns(int fam)
{
    addr_t a, b;
    char buf[32];
    long n;

    CASE(nm("udp_shutdown_connected", fam));
    int x = udp_sock(fam, &a);
    int y = udp_sock(fam, &b);
    T(connect(x, SA(&b), b.len));
    poll1("before IN|OUT|RDHUP", x, POLLIN | POLLOUT | POLLRDHUP, 0);
    T(shutdown(x, SHUT_WR));
    poll1("SHUT_WR IN|OUT|RDHUP", x, POLLIN | POLLOUT | POLLRDHUP, 0);
    pipes = 0;
    on_signal(SIGPIPE, on_pipe, 0);
    T(send(x, "x", 1, 0));
    T(sendto(x, "x", 1, 0, SA(&b), b.len));
    O("SIGPIPE handled %d time(s)", (int)pipes);
    signal(SIGPIPE, SIG_IGN);
    T(sendto(y, "in", 2, 0, SA(&a), a.len)); /* receiving still works */
    wait_readable(x);
    n = T(recv(x, buf, sizeof buf, 0));
    show("got", buf, n);
    T(sendto(y, "queued", 6, 0, SA(&a), a.len));
    wait_readable(x);
    T(shutdown(x, SHUT_RD));
    poll1("SHUT_RDWR IN|OUT|RDHUP", x, POLLIN | POLLOUT | POLLRDHUP, 0);
    n = T(recv(x, buf, sizeof buf, 0));
    show("got", buf, n);
    T(recv(x, buf, sizeof buf, 0));
    T(sendto(y, "late", 4, 0, SA(&a), a.len));
    wait_bytes(x, 1); /* (always readable now: wait for the datagram itself) */
    n = T(recv(x, buf, sizeof buf, MSG_DONTWAIT));
    if (n > 0)
        show("got", buf, n);
    close(x);
    close(y);

    CASE(nm("udp_shutdown_unconnected_still_marks", fam));
    x = udp_sock(fam, &a);
    y = udp_sock(fam, &b);
    T(shutdown(x, SHUT_RD));
    poll1("IN|OUT|RDHUP", x, POLLIN | POLLOUT | POLLRDHUP, 0);
    T(recv(x, buf, sizeof buf, 0));
    T(shutdown(y, SHUT_WR));
    T(sendto(y, "x", 1, MSG_NOSIGNAL, SA(&a), a.len));
    T(shutdown(y, SHUT_RDWR));
    poll1("IN|OUT|RDHUP", y, POLLIN | POLLOUT | POLLRDHUP, 0);
    close(x);
    close(y);
}

static void sg(int fam)
{
    addr_t a, b;
    long n;

    CASE(nm("udp_gather_scatter_many_iovecs", fam));
    int x = udp_sock(fam, &a);
    int y = udp_sock(fam, &b);
    struct iovec sv[16];
    char parts[16][4];
    for (int i = 0; i < 16; i++) {
        for (int k = 0; k < 3; k++)
            parts[i][k] = (char)('a' + (i + k) % 26);
        sv[i] = (struct iovec){parts[i], i % 4 == 3 ? 0 : 3};
    }
    struct msghdr sm = {.msg_name = SA(&a), .msg_namelen = a.len, .msg_iov = sv, .msg_iovlen = 16};
    T(sendmsg(y, &sm, 0)); /* one datagram */
    T(sendmsg(y, &sm, 0));
    wait_readable(x);
    char rb[8][2];
    struct iovec rv[8];
    for (int i = 0; i < 8; i++)
        rv[i] = (struct iovec){rb[i], 2};
    struct msghdr rm = {.msg_iov = rv, .msg_iovlen = 8};
    n = T(recvmsg(x, &rm, 0));
    O("msg_flags has MSG_TRUNC: %d", (rm.msg_flags & MSG_TRUNC) != 0);
    show("scattered", rb, 16);
    wait_readable(x);
    rm.msg_flags = 0;
    n = T(recvmsg(x, &rm, MSG_TRUNC)); /* the real length */
    O("msg_flags has MSG_TRUNC: %d", (rm.msg_flags & MSG_TRUNC) != 0);
    T(recv(x, rb, 1, MSG_DONTWAIT)); /* both were consumed */
    static struct iovec big[1025];
    static char one[1025];
    for (int i = 0; i < 1025; i++)
        big[i] = (struct iovec){one + i, 1};
    sm.msg_iov = big;
    sm.msg_iovlen = 1025;
    T(sendmsg(y, &sm, 0));
    sm.msg_iovlen = 1024;
    T(sendmsg(y, &sm, 0));
    wait_readable(x);
    static char rbig[2048];
    n = T(recv(x, rbig, sizeof rbig, 0));
    T(connect(y, SA(&a), a.len));
    T(writev(y, sv, 16));
    wait_readable(x);
    n = T(recv(x, rbig, sizeof rbig, 0));
    show("writev datagram", rbig, n);
    close(x);
    close(y);
}

static void mmsg(int fam)
{
    addr_t a, b, from[8];
    long n;
    static char big[70000];

    CASE(nm("udp_sendmmsg_stops_at_failing_message", fam));
    int x = udp_sock(fam, &a);
    int y = udp_sock(fam, &b);
    struct iovec sv[3] = {{"one", 3}, {big, sizeof big}, {"three", 5}};
    struct mmsghdr sm[3];
    memset(sm, 0, sizeof sm);
    for (int i = 0; i < 3; i++) {
        sm[i].msg_hdr.msg_name = SA(&a);
        sm[i].msg_hdr.msg_namelen = a.len;
        sm[i].msg_hdr.msg_iov = &sv[i];
        sm[i].msg_hdr.msg_iovlen = 1;
    }
    T(sendmmsg(y, sm, 3, 0));
    O("msg_len=%u,%u,%u", sm[0].msg_len, sm[1].msg_len, sm[2].msg_len);
    T(sendmmsg(y, sm + 1, 2, 0));
    T(sendmmsg(y, sm + 2, 1, 0));
    char buf[16];
    wait_readable(x);
    n = T(recv(x, buf, sizeof buf, 0));
    show("got", buf, n);
    wait_readable(x);
    n = T(recv(x, buf, sizeof buf, 0));
    show("got", buf, n);
    T(recv(x, buf, sizeof buf, MSG_DONTWAIT));

    CASE(nm("udp_mmsg_connected_many_iovecs", fam));
    T(connect(y, SA(&a), a.len));
    struct iovec cv[3][2] = {{{"ab", 2}, {"cd", 2}}, {{"", 0}, {"e", 1}}, {{"fgh", 3}, {"ijk", 3}}};
    memset(sm, 0, sizeof sm);
    for (int i = 0; i < 3; i++) {
        sm[i].msg_hdr.msg_iov = cv[i];
        sm[i].msg_hdr.msg_iovlen = 2;
    }
    T(sendmmsg(y, sm, 3, 0));
    O("msg_len=%u,%u,%u", sm[0].msg_len, sm[1].msg_len, sm[2].msg_len);
    struct mmsghdr rm[8];
    char rb[8][2][3];
    struct iovec rv[8][2];
    memset(rm, 0, sizeof rm);
    for (int i = 0; i < 8; i++) {
        rv[i][0] = (struct iovec){rb[i][0], 3};
        rv[i][1] = (struct iovec){rb[i][1], 1};
        from[i].len = sizeof from[i].ss;
        rm[i].msg_hdr.msg_name = SA(&from[i]);
        rm[i].msg_hdr.msg_namelen = from[i].len;
        rm[i].msg_hdr.msg_iov = rv[i];
        rm[i].msg_hdr.msg_iovlen = 2;
    }
    n = T(recvmmsg(x, rm, 3, 0, NULL)); /* blocking: waits for all three */
    for (long i = 0; i < n; i++) {
        from[i].len = rm[i].msg_hdr.msg_namelen;
        O("  #%ld len=%u flags: trunc=%d from y: %d", i, rm[i].msg_len,
          (rm[i].msg_hdr.msg_flags & MSG_TRUNC) != 0, same_addr(&from[i], &b));
        char joined[4];
        memcpy(joined, rb[i][0], 3);
        joined[3] = rb[i][1][0];
        show("  data", joined, rm[i].msg_len);
    }
    T(recvmmsg(x, rm, 8, MSG_DONTWAIT, NULL));
    T(recvmmsg(x, rm, 0, MSG_DONTWAIT, NULL));
    close(x);
    close(y);
}

static void probe(int fam)
{
    addr_t a, b, from;
    char buf[64];
    long n;

    CASE(nm("udp_msg_trunc_size_probe", fam));
    int x = udp_sock(fam, &a);
    int y = udp_sock(fam, &b);
    T(sendto(y, "twenty-bytes-payload", 20, 0, SA(&a), a.len));
    wait_readable(x);
    T(recv(x, NULL, 0, MSG_PEEK | MSG_TRUNC)); /* size without consuming */
    T(recv(x, buf, 0, MSG_PEEK));
    from.len = sizeof from.ss;
    T(recvfrom(x, buf, 0, MSG_TRUNC, SA(&from), &from.len)); /* consumes */
    O("from y: %d", same_addr(&from, &b));
    T(recv(x, buf, sizeof buf, MSG_DONTWAIT));

    CASE(nm("udp_msg_waitall_one_datagram", fam));
    T(sendto(y, "d1", 2, 0, SA(&a), a.len));
    T(sendto(y, "d2", 2, 0, SA(&a), a.len));
    n = T(recv(x, buf, sizeof buf, MSG_WAITALL));
    show("got", buf, n);
    n = T(recv(x, buf, sizeof buf, MSG_WAITALL));
    show("got", buf, n);

    CASE(nm("udp_msg_peek_with_address", fam));
    T(sendto(y, "peeked", 6, 0, SA(&a), a.len));
    wait_readable(x);
    from.len = sizeof from.ss;
    n = T(recvfrom(x, buf, 3, MSG_PEEK, SA(&from), &from.len));
    show("peek", buf, n);
    O("from y: %d", same_addr(&from, &b));
    struct iovec iv = {buf, 3};
    struct msghdr mh = {.msg_iov = &iv, .msg_iovlen = 1};
    n = T(recvmsg(x, &mh, MSG_PEEK));
    O("peek msg_flags has MSG_TRUNC: %d", (mh.msg_flags & MSG_TRUNC) != 0);
    from.len = sizeof from.ss;
    n = T(recvfrom(x, buf, sizeof buf, 0, SA(&from), &from.len));
    show("read", buf, n);
    O("from y: %d", same_addr(&from, &b));
    close(x);
    close(y);
}

/* Receives what is queued (the datagrams of sends that succeeded). */
static void n_drain(int fd)
{
    char buf[64];
    int n = 0;
    struct pollfd pf = {fd, POLLIN, 0};
    while (poll(&pf, 1, 100) > 0 && recv(fd, buf, sizeof buf, MSG_DONTWAIT) >= 0)
        n++;
    O("datagrams that arrived: %d", n);
}

/* Waits up to 1 s for `want` datagrams spread over `n` sockets; returns how
 * many each got in got[]. */
static int collect(int *fds, int n, int *got, int want)
{
    int total = 0;
    char buf[64];
    for (int i = 0; i < n; i++)
        got[i] = 0;
    for (int round = 0; round < 100 && total < want; round++) {
        struct pollfd pf[4];
        for (int i = 0; i < n; i++)
            pf[i] = (struct pollfd){fds[i], POLLIN, 0};
        if (poll(pf, (nfds_t)n, 10) <= 0)
            continue;
        for (int i = 0; i < n; i++)
            while (recv(fds[i], buf, sizeof buf, MSG_DONTWAIT) >= 0) {
                got[i]++;
                total++;
            }
    }
    return total;
}

static void reuse(int fam)
{
    addr_t a, b, c3, w;
    char buf[32];
    long n;
    int one = 1;

    CASE(nm("udp_reuseaddr_last_bound_receives", fam));
    int x = (int)MUST(socket(fam, SOCK_DGRAM, 0));
    int y = (int)MUST(socket(fam, SOCK_DGRAM, 0));
    MUST(setsockopt(x, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one));
    MUST(setsockopt(y, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one));
    loop_addr(fam, &a, 0);
    MUST(bind(x, SA(&a), a.len));
    local_of(x, &a);
    T(bind(y, SA(&a), a.len));
    int z = udp_sock(fam, &c3);
    T(sendto(z, "one", 3, 0, SA(&a), a.len));
    poll1("y IN", y, POLLIN, 1000);
    poll1("x IN", x, POLLIN, 0);
    n = T(recv(y, buf, sizeof buf, MSG_DONTWAIT));
    show("y got", buf, n);
    close(y);
    T(sendto(z, "two", 3, 0, SA(&a), a.len));
    poll1("x IN", x, POLLIN, 1000);
    n = T(recv(x, buf, sizeof buf, MSG_DONTWAIT));
    show("x got", buf, n);
    close(x);

    CASE(nm("udp_reuseport_one_socket_per_flow", fam));
    x = (int)MUST(socket(fam, SOCK_DGRAM, 0));
    y = (int)MUST(socket(fam, SOCK_DGRAM, 0));
    T(setsockopt(x, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one));
    T(setsockopt(y, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one));
    loop_addr(fam, &a, 0);
    MUST(bind(x, SA(&a), a.len));
    local_of(x, &a);
    T(bind(y, SA(&a), a.len));
    for (int i = 0; i < 6; i++)
        MUST(sendto(z, "flow", 4, 0, SA(&a), a.len));
    int fds[2] = {x, y}, got[2];
    int total = collect(fds, 2, got, 6);
    O("total=%d one socket got all: %d", total, got[0] == 6 || got[1] == 6);
    /* A member connected to z takes z's datagrams; the other takes the rest. */
    T(connect(y, SA(&c3), c3.len));
    int v = udp_sock(fam, &w);
    for (int i = 0; i < 3; i++) {
        MUST(sendto(z, "z", 1, 0, SA(&a), a.len));
        MUST(sendto(v, "v", 1, 0, SA(&a), a.len));
    }
    total = collect(fds, 2, got, 6);
    O("total=%d x=%d y=%d", total, got[0], got[1]);
    close(v);
    close(x);
    close(y);
    close(z);
    (void)b;
}

static void rcvbuf(int fam)
{
    addr_t a, b;
    long n;
    static char big[10000];

    CASE(nm("udp_rcvbuf_full_drops_empty_takes_any", fam));
    int x = udp_sock(fam, &a);
    int y = udp_sock(fam, &b);
    int tiny = 1;
    T(setsockopt(x, SOL_SOCKET, SO_RCVBUF, &tiny, sizeof tiny));
    O("SO_RCVBUF=%d", sockopt_int(x, SOL_SOCKET, SO_RCVBUF));
    T(sendto(y, big, sizeof big, 0, SA(&a), a.len)); /* bigger than the buffer: fits an empty queue */
    T(sendto(y, "x", 1, 0, SA(&a), a.len));         /* the queue is over its limit: dropped */
    wait_readable(x);
    int avail = -1;
    T(ioctl(x, FIONREAD, &avail));
    O("FIONREAD=%d", avail);
    n = T(recv(x, big, sizeof big, 0));
    T(recv(x, big, sizeof big, MSG_DONTWAIT));
    T(sendto(y, "again", 5, 0, SA(&a), a.len));     /* room again */
    wait_readable(x);
    n = T(recv(x, big, sizeof big, 0));
    show("got", big, n);
    close(x);
    close(y);
}

static void wakeups(int fam)
{
    addr_t a, b;
    char buf[16];

    CASE(nm("udp_every_arrival_is_an_edge", fam));
    int x = udp_sock(fam, &a);
    int y = udp_sock(fam, &b);
    int ep = (int)MUST(epoll_create1(0));
    T(ctl(ep, EPOLL_CTL_ADD, x, EPOLLIN | EPOLLET, 7));
    T(sendto(y, "d1", 2, 0, SA(&a), a.len));
    ew(ep, 4, 1000);
    ew(ep, 4, 0); /* edge-triggered: reported once */
    T(recv(x, buf, sizeof buf, 0));
    T(sendto(y, "d2", 2, 0, SA(&a), a.len));
    ew(ep, 4, 1000); /* a new arrival after the queue was read */
    T(sendto(y, "d3", 2, 0, SA(&a), a.len));
    ew(ep, 4, 1000); /* and while one is still queued */
    T(recv(x, buf, sizeof buf, 0));
    T(recv(x, buf, sizeof buf, 0));
    T(sendto(y, "d4", 2, 0, SA(&a), a.len));
    poll1("x IN", x, POLLIN, 1000);
    close(ep);
    close(x);
    close(y);
}

static void print_cmsgs(struct msghdr *mh)
{
    O("msg_controllen=%zu MSG_CTRUNC=%d", (size_t)mh->msg_controllen, (mh->msg_flags & MSG_CTRUNC) != 0);
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(mh); cm; cm = CMSG_NXTHDR(mh, cm)) {
        size_t dl = cm->cmsg_len >= CMSG_LEN(0) ? cm->cmsg_len - CMSG_LEN(0) : 0;
        char val[64] = "";
        int iv;
        if (cm->cmsg_level == SOL_SOCKET && (cm->cmsg_type == SO_TIMESTAMP || cm->cmsg_type == SO_TIMESTAMPNS)) {
            struct timespec now;
            clock_gettime(CLOCK_REALTIME, &now);
            long long sec;
            memcpy(&sec, CMSG_DATA(cm), sizeof sec);
            snprintf(val, sizeof val, "recent=%d", sec <= now.tv_sec && sec + 10 > now.tv_sec);
        } else if (cm->cmsg_level == IPPROTO_IP && cm->cmsg_type == IP_PKTINFO && dl >= sizeof(struct in_pktinfo)) {
            struct in_pktinfo pi;
            memcpy(&pi, CMSG_DATA(cm), sizeof pi);
            char s1[INET_ADDRSTRLEN], s2[INET_ADDRSTRLEN];
            inet_ntop(AF_INET, &pi.ipi_spec_dst, s1, sizeof s1);
            inet_ntop(AF_INET, &pi.ipi_addr, s2, sizeof s2);
            snprintf(val, sizeof val, "ifindex=%d spec_dst=%s addr=%s", pi.ipi_ifindex, s1, s2);
        } else if (cm->cmsg_level == IPPROTO_IPV6 && cm->cmsg_type == IPV6_PKTINFO && dl >= sizeof(struct in6_pktinfo)) {
            struct in6_pktinfo pi;
            memcpy(&pi, CMSG_DATA(cm), sizeof pi);
            char s1[INET6_ADDRSTRLEN];
            inet_ntop(AF_INET6, &pi.ipi6_addr, s1, sizeof s1);
            snprintf(val, sizeof val, "ifindex=%d addr=%s", pi.ipi6_ifindex, s1);
        } else if (dl == 1) {
            snprintf(val, sizeof val, "byte=%d", *CMSG_DATA(cm));
        } else if (dl == sizeof iv) {
            memcpy(&iv, CMSG_DATA(cm), sizeof iv);
            snprintf(val, sizeof val, "int=%d", iv);
        }
        O("  cmsg level=%d type=%d len=%zu %s", cm->cmsg_level, cm->cmsg_type, (size_t)cm->cmsg_len, val);
    }
}

/* sendmsg of "payload" with `n` (0, 1, 2) int control messages. */
static long send_with(int fd, addr_t *to, int n, int l1, int t1, int v1, int l2, int t2, int v2)
{
    union {
        char buf[2 * CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } u;
    memset(&u, 0, sizeof u);
    struct iovec iv = {"payload", 7};
    struct msghdr mh = {.msg_name = SA(to), .msg_namelen = to->len, .msg_iov = &iv, .msg_iovlen = 1};
    if (n > 0) {
        mh.msg_control = u.buf;
        mh.msg_controllen = n > 1 ? sizeof u.buf : CMSG_SPACE(sizeof(int));
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = l1;
        cm->cmsg_type = t1;
        cm->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cm), &v1, sizeof v1);
        if (n > 1) {
            cm = CMSG_NXTHDR(&mh, cm);
            cm->cmsg_level = l2;
            cm->cmsg_type = t2;
            cm->cmsg_len = CMSG_LEN(sizeof(int));
            memcpy(CMSG_DATA(cm), &v2, sizeof v2);
        }
    }
    return sendmsg(fd, &mh, 0);
}

/* recvmsg of one datagram with `room` bytes of control space (-1: none). */
static void recv_ctl(int fd, long room)
{
    union {
        char buf[256];
        struct cmsghdr align;
    } u;
    memset(&u, 0, sizeof u);
    char data[32];
    struct iovec iv = {data, sizeof data};
    struct msghdr mh = {.msg_iov = &iv, .msg_iovlen = 1};
    if (room >= 0) {
        mh.msg_control = u.buf;
        mh.msg_controllen = (size_t)room;
    }
    wait_readable(fd);
    T(recvmsg(fd, &mh, 0));
    print_cmsgs(&mh);
}

static void cmsgs(int fam)
{
    addr_t a, b;
    int one = 1, zero = 0;
    int v4 = fam == AF_INET;
    int lvl = v4 ? IPPROTO_IP : IPPROTO_IPV6;
    int hop = v4 ? IP_TTL : IPV6_HOPLIMIT, tos = v4 ? IP_TOS : IPV6_TCLASS;

    CASE(nm("udp_recv_hop_limit_and_tos_cmsgs", fam));
    int x = udp_sock(fam, &a);
    int y = udp_sock(fam, &b);
    T(setsockopt(x, lvl, v4 ? IP_RECVTTL : IPV6_RECVHOPLIMIT, &one, sizeof one));
    T(setsockopt(x, lvl, v4 ? IP_RECVTOS : IPV6_RECVTCLASS, &one, sizeof one));
    T(setsockopt(x, lvl, v4 ? IP_PKTINFO : IPV6_RECVPKTINFO, &one, sizeof one));
    T(send_with(y, &a, 0, 0, 0, 0, 0, 0, 0));
    recv_ctl(x, 256);
    T(send_with(y, &a, 2, lvl, hop, 33, lvl, tos, 0x20));
    recv_ctl(x, 256);
    int ttl = 7;
    T(setsockopt(y, lvl, v4 ? IP_TTL : IPV6_UNICAST_HOPS, &ttl, sizeof ttl));
    T(setsockopt(y, lvl, tos, &(int){0x10}, sizeof(int)));
    T(send_with(y, &a, 0, 0, 0, 0, 0, 0, 0));
    recv_ctl(x, 256);

    CASE(nm("udp_cmsg_truncation", fam));
    T(setsockopt(x, lvl, v4 ? IP_PKTINFO : IPV6_RECVPKTINFO, &zero, sizeof zero));
    T(send_with(y, &a, 0, 0, 0, 0, 0, 0, 0));
    recv_ctl(x, (long)(CMSG_SPACE(sizeof(int)) + CMSG_LEN(0) - 1)); /* no room for the 2nd header */
    T(send_with(y, &a, 0, 0, 0, 0, 0, 0, 0));
    recv_ctl(x, (long)(CMSG_SPACE(sizeof(int)) + CMSG_LEN(sizeof(int)) - 1)); /* 2nd cut in its data */
    T(send_with(y, &a, 0, 0, 0, 0, 0, 0, 0));
    recv_ctl(x, (long)CMSG_LEN(0) - 1); /* not even one header */
    T(send_with(y, &a, 0, 0, 0, 0, 0, 0, 0));
    recv_ctl(x, -1); /* no buffer at all */

    CASE(nm("udp_bad_send_cmsgs", fam));
    T(send_with(y, &a, 1, lvl, hop, v4 ? 0 : 256, 0, 0, 0));
    T(send_with(y, &a, 1, lvl, tos, 300, 0, 0, 0));
    T(send_with(y, &a, 1, lvl, 99, 1, 0, 0, 0));            /* unknown type */
    T(send_with(y, &a, 1, IPPROTO_TCP, 1, 1, 0, 0, 0));      /* another level: ignored */
    T(send_with(y, &a, 1, SOL_SOCKET, SO_TIMESTAMP, 1, 0, 0, 0));
    T(send_with(y, &a, 1, v4 ? IPPROTO_IPV6 : IPPROTO_IP, 1, 1, 0, 0, 0)); /* the other IP: ignored */
    struct iovec iv = {"x", 1};
    char cb[CMSG_SPACE(sizeof(int))];
    memset(cb, 0, sizeof cb);
    struct msghdr mh = {.msg_name = SA(&a), .msg_namelen = a.len, .msg_iov = &iv, .msg_iovlen = 1,
                        .msg_control = cb, .msg_controllen = sizeof cb};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
    cm->cmsg_level = lvl;
    cm->cmsg_type = hop;
    cm->cmsg_len = sizeof cb + 8; /* past the buffer */
    T(sendmsg(y, &mh, 0));
    cm->cmsg_len = CMSG_LEN(0) - 1; /* shorter than a header */
    T(sendmsg(y, &mh, 0));
    mh.msg_controllen = CMSG_LEN(0) - 1; /* no room for a header: no messages */
    T(sendmsg(y, &mh, 0));
    n_drain(x);

    CASE(nm("udp_timestamp_cmsgs", fam));
    T(setsockopt(x, lvl, v4 ? IP_RECVTTL : IPV6_RECVHOPLIMIT, &zero, sizeof zero));
    T(setsockopt(x, lvl, v4 ? IP_RECVTOS : IPV6_RECVTCLASS, &zero, sizeof zero));
    T(setsockopt(x, SOL_SOCKET, SO_TIMESTAMP, &one, sizeof one));
    O("SO_TIMESTAMP=%d SO_TIMESTAMPNS=%d", sockopt_int(x, SOL_SOCKET, SO_TIMESTAMP),
      sockopt_int(x, SOL_SOCKET, SO_TIMESTAMPNS));
    T(send_with(y, &a, 0, 0, 0, 0, 0, 0, 0));
    recv_ctl(x, 256);
    T(setsockopt(x, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one));
    O("SO_TIMESTAMP=%d SO_TIMESTAMPNS=%d", sockopt_int(x, SOL_SOCKET, SO_TIMESTAMP),
      sockopt_int(x, SOL_SOCKET, SO_TIMESTAMPNS));
    T(send_with(y, &a, 0, 0, 0, 0, 0, 0, 0));
    recv_ctl(x, 256);
    T(setsockopt(x, SOL_SOCKET, SO_TIMESTAMP, &zero, sizeof zero));
    O("SO_TIMESTAMP=%d SO_TIMESTAMPNS=%d", sockopt_int(x, SOL_SOCKET, SO_TIMESTAMP),
      sockopt_int(x, SOL_SOCKET, SO_TIMESTAMPNS));
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
    addr_t a, b, la, pa;
    struct sockaddr_in6 m;
    char buf[32];
    long n;
    int one = 1, err;
    socklen_t el;

    CASE("v4mapped_nonblocking_connect");
    int l4 = listener(AF_INET, SOCK_STREAM, &b);
    int c = (int)MUST(socket(AF_INET6, SOCK_STREAM | SOCK_NONBLOCK, 0));
    mapped(&m, port_of(&b));
    T(connect(c, (struct sockaddr *)&m, sizeof m));
    poll1("OUT", c, POLLOUT, 5000);
    err = -1;
    el = sizeof err;
    T(getsockopt(c, SOL_SOCKET, SO_ERROR, &err, &el));
    O("SO_ERROR=%s", en(err));
    T(connect(c, (struct sockaddr *)&m, sizeof m));
    local_of(c, &la);
    O("local %s", addr_desc(&la));
    int s = (int)MUST(accept(l4, NULL, NULL));
    close(s);
    close(c);

    CASE("v4mapped_connect_refused");
    addr_t dead;
    int d = dead_tcp_port(AF_INET, &dead);
    mapped(&m, port_of(&dead));
    c = (int)MUST(socket(AF_INET6, SOCK_STREAM, 0));
    T(connect(c, (struct sockaddr *)&m, sizeof m));
    close(c);
    c = (int)MUST(socket(AF_INET6, SOCK_STREAM | SOCK_NONBLOCK, 0));
    T(connect(c, (struct sockaddr *)&m, sizeof m));
    wait_err(c);
    err = -1;
    T(getsockopt(c, SOL_SOCKET, SO_ERROR, &err, &el));
    O("SO_ERROR=%s", en(err));
    close(c);
    close(d);

    CASE("v6only_inherited_by_accepted");
    int l6 = (int)MUST(socket(AF_INET6, SOCK_STREAM, 0));
    T(setsockopt(l6, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one));
    loop_addr(AF_INET6, &a, 0);
    MUST(bind(l6, SA(&a), a.len));
    MUST(listen(l6, 4));
    local_of(l6, &a);
    c = (int)MUST(socket(AF_INET6, SOCK_STREAM, 0));
    MUST(connect(c, SA(&a), a.len));
    s = (int)MUST(accept(l6, NULL, NULL));
    O("listener=%d accepted=%d client=%d", sockopt_int(l6, IPPROTO_IPV6, IPV6_V6ONLY),
      sockopt_int(s, IPPROTO_IPV6, IPV6_V6ONLY), sockopt_int(c, IPPROTO_IPV6, IPV6_V6ONLY));
    T(setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one)); /* bound: too late */
    close(s);
    close(c);
    close(l6);

    CASE("v4_and_v6_share_a_port_number");
    /* 127.0.0.1:p and ::1:p are different addresses; ::ffff:127.0.0.1:p is
     * not. Another program may hold ::1:p, so a few ports are tried. */
    close(l4);
    int x6 = -1, ok6 = 0;
    for (int tries = 0; tries < 50 && !ok6; tries++) {
        l4 = listener(AF_INET, SOCK_STREAM, &b);
        x6 = (int)MUST(socket(AF_INET6, SOCK_STREAM, 0));
        loop_addr(AF_INET6, &a, port_of(&b));
        if (bind(x6, SA(&a), a.len) == 0) {
            ok6 = 1;
        } else {
            close(x6);
            close(l4);
        }
    }
    O("bind ::1 to the port of a 127.0.0.1 listener: %s", ok6 ? "ok" : "always failed");
    if (ok6) {
        T(listen(x6, 4));
        int y6 = (int)MUST(socket(AF_INET6, SOCK_STREAM, 0));
        mapped(&m, port_of(&b));
        T(bind(y6, (struct sockaddr *)&m, sizeof m));
        close(y6);
        int c4 = (int)MUST(socket(AF_INET, SOCK_STREAM, 0));
        T(connect(c4, SA(&b), b.len));
        int c6 = (int)MUST(socket(AF_INET6, SOCK_STREAM, 0));
        T(connect(c6, SA(&a), a.len));
        MUST(fcntl(l4, F_SETFL, O_NONBLOCK));
        MUST(fcntl(x6, F_SETFL, O_NONBLOCK));
        wait_readable(l4);
        wait_readable(x6);
        s = accept(l4, NULL, NULL);
        int s6 = accept(x6, NULL, NULL);
        O("SO_DOMAIN v4 side=%s v6 side=%s",
          sockopt_int(s, SOL_SOCKET, SO_DOMAIN) == AF_INET ? "AF_INET" : "other",
          sockopt_int(s6, SOL_SOCKET, SO_DOMAIN) == AF_INET6 ? "AF_INET6" : "other");
        close(s);
        close(s6);
        close(c4);
        close(c6);
        close(x6);
        close(l4);
    }

    CASE("v4mapped_udp_connect");
    int u4 = udp_sock(AF_INET, &b);
    int u6 = (int)MUST(socket(AF_INET6, SOCK_DGRAM, 0));
    mapped(&m, port_of(&b));
    T(connect(u6, (struct sockaddr *)&m, sizeof m));
    peer_of(u6, &pa);
    O("peer %s", addr_desc(&pa));
    local_of(u6, &la);
    O("local %s", addr_desc(&la));
    T(send(u6, "via-mapped", 10, 0));
    wait_readable(u4);
    addr_t from;
    from.len = sizeof from.ss;
    n = T(recvfrom(u4, buf, sizeof buf, 0, SA(&from), &from.len));
    show("v4 got", buf, n);
    T(sendto(u4, "back", 4, 0, SA(&from), from.len));
    wait_readable(u6);
    n = T(recv(u6, buf, sizeof buf, 0));
    show("v6 got", buf, n);
    loop_addr(AF_INET6, &a, port_of(&b));
    T(connect(u6, SA(&a), a.len)); /* a v4-mapped local address cannot reach ::1 */
    struct sockaddr unspec = {.sa_family = AF_UNSPEC};
    T(connect(u6, &unspec, sizeof unspec));
    local_of(u6, &la);
    O("after disconnect %s", addr_desc(&la));
    close(u4);
    close(u6);
}

int main(void)
{
    watchdog(25);
    signal(SIGPIPE, SIG_IGN);
    int fams[2] = {AF_INET, AF_INET6};
    for (int i = 0; i < 2; i++) {
        modes(fams[i]);
        connects(fams[i]);
        sendto_errors(fams[i]);
        shutdowns(fams[i]);
        sg(fams[i]);
        mmsg(fams[i]);
        probe(fams[i]);
        reuse(fams[i]);
        rcvbuf(fams[i]);
        wakeups(fams[i]);
        cmsgs(fams[i]);
    }
    ipv6();
    return 0;
}
