/* Socket options over 127.0.0.1 and ::1 (suffix _v4/_v6): SO_KEEPALIVE and
 * TCP_KEEPIDLE/KEEPINTVL/KEEPCNT, TCP_NODELAY, SO_RCVBUF/SO_SNDBUF (only
 * "get >= set", Linux doubles), SO_LINGER, SO_TYPE/SO_DOMAIN/SO_PROTOCOL,
 * SO_ACCEPTCONN, SO_REUSEADDR/SO_REUSEPORT, timeouts, SO_RCVLOWAT, options
 * inherited by accepted sockets, and the errors of get/setsockopt. */
#include "sem_common.h"

#define G(fd, level, opt) O(#opt "=%d", sockopt_int(fd, level, opt))

static void seti(int fd, int level, int opt, int v, const char *name)
{
    errno = 0;
    int r = setsockopt(fd, level, opt, &v, sizeof v);
    if (r < 0)
        O("set %s=%d -> -1 %s", name, v, en(errno));
    else
        O("set %s=%d -> 0, get %d", name, v, sockopt_int(fd, level, opt));
}
#define S(fd, level, opt, v) seti(fd, level, opt, v, #opt)

static void keepalive(int fam)
{
    CASE(nm("so_keepalive_get_set", fam));
    int s = (int)MUST(socket(fam, SOCK_STREAM, 0));
    G(s, SOL_SOCKET, SO_KEEPALIVE);
    S(s, SOL_SOCKET, SO_KEEPALIVE, 1);
    S(s, SOL_SOCKET, SO_KEEPALIVE, 5); /* any non-zero: reads back 1 */
    S(s, SOL_SOCKET, SO_KEEPALIVE, 0);
    close(s);

    CASE(nm("tcp_keepidle_intvl_cnt", fam));
    s = (int)MUST(socket(fam, SOCK_STREAM, 0));
    G(s, IPPROTO_TCP, TCP_KEEPIDLE);
    G(s, IPPROTO_TCP, TCP_KEEPINTVL);
    G(s, IPPROTO_TCP, TCP_KEEPCNT);
    S(s, IPPROTO_TCP, TCP_KEEPIDLE, 30);
    S(s, IPPROTO_TCP, TCP_KEEPINTVL, 5);
    S(s, IPPROTO_TCP, TCP_KEEPCNT, 3);
    S(s, IPPROTO_TCP, TCP_KEEPIDLE, 0);
    S(s, IPPROTO_TCP, TCP_KEEPIDLE, 32767);
    S(s, IPPROTO_TCP, TCP_KEEPIDLE, 32768);
    S(s, IPPROTO_TCP, TCP_KEEPINTVL, 0);
    S(s, IPPROTO_TCP, TCP_KEEPCNT, 0);
    S(s, IPPROTO_TCP, TCP_KEEPCNT, 128);
    O("keepidle still %d", sockopt_int(s, IPPROTO_TCP, TCP_KEEPIDLE));
    close(s);

    CASE(nm("tcp_keepalive_on_connected", fam));
    int c, sv;
    tcp_pair(fam, &c, &sv);
    S(c, SOL_SOCKET, SO_KEEPALIVE, 1);
    S(c, IPPROTO_TCP, TCP_KEEPIDLE, 1);
    G(c, SOL_SOCKET, SO_KEEPALIVE);
    T(send(c, "k", 1, 0));
    char b;
    T(recv(sv, &b, 1, 0));
    close(c);
    close(sv);
}

static void nodelay_bufs(int fam)
{
    CASE(nm("tcp_nodelay_get_set", fam));
    int s = (int)MUST(socket(fam, SOCK_STREAM, 0));
    G(s, IPPROTO_TCP, TCP_NODELAY);
    S(s, IPPROTO_TCP, TCP_NODELAY, 1);
    S(s, IPPROTO_TCP, TCP_NODELAY, 0);
    S(s, IPPROTO_TCP, TCP_NODELAY, 42);
    int c, sv;
    tcp_pair(fam, &c, &sv);
    S(c, IPPROTO_TCP, TCP_NODELAY, 1);
    T(send(c, "n", 1, 0));
    char b;
    T(recv(sv, &b, 1, 0));
    S(c, IPPROTO_TCP, TCP_NODELAY, 0);
    close(c);
    close(sv);
    close(s);

    CASE(nm("so_rcvbuf_sndbuf", fam));
    s = (int)MUST(socket(fam, SOCK_STREAM, 0));
    O("defaults > 0: rcv %d snd %d", sockopt_int(s, SOL_SOCKET, SO_RCVBUF) > 0,
      sockopt_int(s, SOL_SOCKET, SO_SNDBUF) > 0);
    int v = 65536;
    T(setsockopt(s, SOL_SOCKET, SO_RCVBUF, &v, sizeof v));
    O("rcvbuf get >= 65536: %d", sockopt_int(s, SOL_SOCKET, SO_RCVBUF) >= 65536);
    v = 32768;
    T(setsockopt(s, SOL_SOCKET, SO_SNDBUF, &v, sizeof v));
    O("sndbuf get >= 32768: %d", sockopt_int(s, SOL_SOCKET, SO_SNDBUF) >= 32768);
    v = 1;
    T(setsockopt(s, SOL_SOCKET, SO_RCVBUF, &v, sizeof v));
    O("tiny rcvbuf get > 1: %d", sockopt_int(s, SOL_SOCKET, SO_RCVBUF) > 1);
    v = 0;
    T(setsockopt(s, SOL_SOCKET, SO_SNDBUF, &v, sizeof v));
    O("zero sndbuf get > 0: %d", sockopt_int(s, SOL_SOCKET, SO_SNDBUF) > 0);
    v = -5;
    T(setsockopt(s, SOL_SOCKET, SO_RCVBUF, &v, sizeof v));
    O("negative rcvbuf get > 0: %d", sockopt_int(s, SOL_SOCKET, SO_RCVBUF) > 0);
    close(s);
    int u = (int)MUST(socket(fam, SOCK_DGRAM, 0));
    v = 100000;
    T(setsockopt(u, SOL_SOCKET, SO_RCVBUF, &v, sizeof v));
    O("udp rcvbuf get >= 100000: %d", sockopt_int(u, SOL_SOCKET, SO_RCVBUF) >= 100000);
    T(setsockopt(u, SOL_SOCKET, SO_SNDBUF, &v, sizeof v));
    O("udp sndbuf get >= 100000: %d", sockopt_int(u, SOL_SOCKET, SO_SNDBUF) >= 100000);
    close(u);
}

static void linger(int fam)
{
    struct linger lg;
    socklen_t l;

    CASE(nm("so_linger_get_set", fam));
    int s = (int)MUST(socket(fam, SOCK_STREAM, 0));
#define GL()                                                                   \
    do {                                                                       \
        memset(&lg, 0x7f, sizeof lg);                                          \
        l = sizeof lg;                                                         \
        T(getsockopt(s, SOL_SOCKET, SO_LINGER, &lg, &l));                      \
        O("linger={%d,%d} len=%u", lg.l_onoff, lg.l_linger, (unsigned)l);      \
    } while (0)
    GL();
    lg = (struct linger){1, 5};
    T(setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof lg));
    GL();
    lg = (struct linger){0, 9};
    T(setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof lg));
    GL();
    lg = (struct linger){1, 0};
    T(setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof lg));
    GL();
    T(setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof lg - 1));
    l = sizeof(int);
    T(getsockopt(s, SOL_SOCKET, SO_LINGER, &lg, &l));
    O("short get len=%u", (unsigned)l);
#undef GL
    close(s);

    CASE(nm("so_linger_close_with_timeout_delivers", fam));
    int c, sv;
    tcp_pair(fam, &c, &sv);
    lg = (struct linger){1, 2};
    T(setsockopt(c, SOL_SOCKET, SO_LINGER, &lg, sizeof lg));
    T(send(c, "linger-data", 11, 0));
    T(close(c)); /* the peer is alive and acks: returns once delivered */
    char buf[32];
    long n = T(recv(sv, buf, sizeof buf, MSG_WAITALL));
    show("got", buf, n);
    T(recv(sv, buf, sizeof buf, 0));
    close(sv);
}

static void identity(int fam)
{
    CASE(nm("so_type_domain_protocol", fam));
    int t = (int)MUST(socket(fam, SOCK_STREAM, 0));
    int t0 = (int)MUST(socket(fam, SOCK_STREAM, IPPROTO_TCP));
    int u = (int)MUST(socket(fam, SOCK_DGRAM, 0));
    int u0 = (int)MUST(socket(fam, SOCK_DGRAM | SOCK_NONBLOCK, IPPROTO_UDP));
    int fds[4] = {t, t0, u, u0};
    for (int i = 0; i < 4; i++)
        O("fd#%d type=%d domain=%s protocol=%d", i, sockopt_int(fds[i], SOL_SOCKET, SO_TYPE),
          sockopt_int(fds[i], SOL_SOCKET, SO_DOMAIN) == AF_INET    ? "AF_INET"
          : sockopt_int(fds[i], SOL_SOCKET, SO_DOMAIN) == AF_INET6 ? "AF_INET6"
                                                                   : "other",
          sockopt_int(fds[i], SOL_SOCKET, SO_PROTOCOL));
    int v = 1;
    T(setsockopt(t, SOL_SOCKET, SO_TYPE, &v, sizeof v));
    T(setsockopt(t, SOL_SOCKET, SO_DOMAIN, &v, sizeof v));
    T(setsockopt(t, SOL_SOCKET, SO_PROTOCOL, &v, sizeof v));
    T(setsockopt(t, SOL_SOCKET, SO_ACCEPTCONN, &v, sizeof v));
    for (int i = 0; i < 4; i++)
        close(fds[i]);

    CASE(nm("so_acceptconn_states", fam));
    addr_t a;
    int s = (int)MUST(socket(fam, SOCK_STREAM, 0));
    G(s, SOL_SOCKET, SO_ACCEPTCONN);
    loop_addr(fam, &a, 0);
    MUST(bind(s, SA(&a), a.len));
    G(s, SOL_SOCKET, SO_ACCEPTCONN);
    MUST(listen(s, 4));
    G(s, SOL_SOCKET, SO_ACCEPTCONN);
    local_of(s, &a);
    int c = (int)MUST(socket(fam, SOCK_STREAM, 0));
    MUST(connect(c, SA(&a), a.len));
    int sv = (int)MUST(accept(s, NULL, NULL));
    O("client:");
    G(c, SOL_SOCKET, SO_ACCEPTCONN);
    O("accepted:");
    G(sv, SOL_SOCKET, SO_ACCEPTCONN);
    u = (int)MUST(socket(fam, SOCK_DGRAM, 0));
    O("udp:");
    G(u, SOL_SOCKET, SO_ACCEPTCONN);
    close(u);
    close(c);
    close(sv);
    close(s);

    CASE(nm("so_reuse_flags", fam));
    s = (int)MUST(socket(fam, SOCK_STREAM, 0));
    G(s, SOL_SOCKET, SO_REUSEADDR);
    G(s, SOL_SOCKET, SO_REUSEPORT);
    S(s, SOL_SOCKET, SO_REUSEADDR, 1);
    S(s, SOL_SOCKET, SO_REUSEPORT, 1);
    S(s, SOL_SOCKET, SO_REUSEADDR, 0);
    S(s, SOL_SOCKET, SO_REUSEPORT, 0);
    close(s);

    CASE(nm("so_error_fresh_and_set", fam));
    s = (int)MUST(socket(fam, SOCK_STREAM, 0));
    G(s, SOL_SOCKET, SO_ERROR);
    v = 0;
    T(setsockopt(s, SOL_SOCKET, SO_ERROR, &v, sizeof v));
    close(s);
}

static void timeouts_lowat(int fam)
{
    struct timeval tv;
    socklen_t l;

    CASE(nm("so_rcvtimeo_sndtimeo_roundtrip", fam));
    int s = (int)MUST(socket(fam, SOCK_STREAM, 0));
    l = sizeof tv;
    T(getsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, &l));
    O("default rcvtimeo=%ld.%06ld len=%u", (long)tv.tv_sec, (long)tv.tv_usec, (unsigned)l);
    tv = (struct timeval){2, 500000};
    T(setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv));
    memset(&tv, 0, sizeof tv);
    l = sizeof tv;
    T(getsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, &l));
    O("sndtimeo=%ld.%06ld", (long)tv.tv_sec, (long)tv.tv_usec);
    tv = (struct timeval){0, 2000000};
    T(setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv));
    tv = (struct timeval){0, -1};
    T(setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv));
    T(setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, 4));
    close(s);

    CASE(nm("so_rcvtimeo_blocking_recv", fam));
    int c, sv;
    tcp_pair(fam, &c, &sv);
    tv = (struct timeval){0, 20000};
    T(setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv));
    char buf[16];
    T(recv(c, buf, sizeof buf, 0));
    T(accept(c, NULL, NULL));
    T(send(sv, "in-time", 7, 0));
    long n = T(recv(c, buf, sizeof buf, 0));
    show("got", buf, n);
    close(c);
    close(sv);

    CASE(nm("so_rcvlowat", fam));
    tcp_pair(fam, &c, &sv);
    G(c, SOL_SOCKET, SO_RCVLOWAT);
    S(c, SOL_SOCKET, SO_RCVLOWAT, 4);
    T(send(sv, "ab", 2, 0));
    wait_bytes(c, 2);
    poll1("IN below lowat", c, POLLIN, 10);
    T(send(sv, "cd", 2, 0));
    wait_bytes(c, 4);
    poll1("IN at lowat", c, POLLIN, 1000);
    n = T(recv(c, buf, sizeof buf, 0));
    show("got", buf, n);
    S(c, SOL_SOCKET, SO_RCVLOWAT, 0);
    close(c);
    close(sv);
}

static void inherit(int fam)
{
    CASE(nm("accepted_socket_inherits", fam));
    addr_t a;
    int l = (int)MUST(socket(fam, SOCK_STREAM, 0));
    int one = 1;
    setsockopt(l, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(l, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    int idle = 77;
    setsockopt(l, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    struct linger lg = {1, 4};
    setsockopt(l, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    int rb = 100000;
    setsockopt(l, SOL_SOCKET, SO_RCVBUF, &rb, sizeof rb);
    loop_addr(fam, &a, 0);
    MUST(bind(l, SA(&a), a.len));
    MUST(listen(l, 4));
    local_of(l, &a);
    int c = (int)MUST(socket(fam, SOCK_STREAM, 0));
    MUST(connect(c, SA(&a), a.len));
    int s = (int)MUST(accept(l, NULL, NULL));
    G(s, IPPROTO_TCP, TCP_NODELAY);
    G(s, SOL_SOCKET, SO_KEEPALIVE);
    G(s, IPPROTO_TCP, TCP_KEEPIDLE);
    struct linger g;
    socklen_t gl = sizeof g;
    getsockopt(s, SOL_SOCKET, SO_LINGER, &g, &gl);
    O("linger={%d,%d}", g.l_onoff, g.l_linger);
    O("rcvbuf >= 100000: %d", sockopt_int(s, SOL_SOCKET, SO_RCVBUF) >= 100000);
    O("client (not inherited): nodelay=%d keepalive=%d", sockopt_int(c, IPPROTO_TCP, TCP_NODELAY),
      sockopt_int(c, SOL_SOCKET, SO_KEEPALIVE));
    lg = (struct linger){0, 0};
    setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(c);
    close(s);
    close(l);
}

static void errors(int fam)
{
    CASE(nm("sockopt_level_mismatch", fam));
    int u = (int)MUST(socket(fam, SOCK_DGRAM, 0));
    int t = (int)MUST(socket(fam, SOCK_STREAM, 0));
    int v = 1;
    socklen_t l = sizeof v;
    T(getsockopt(u, IPPROTO_TCP, TCP_NODELAY, &v, &l));
    T(setsockopt(u, IPPROTO_TCP, TCP_NODELAY, &v, sizeof v));
    T(getsockopt(t, IPPROTO_UDP, 1 /* UDP_CORK */, &v, &l));
    T(getsockopt(t, IPPROTO_TCP, 9999, &v, &l));
    T(setsockopt(t, IPPROTO_TCP, 9999, &v, sizeof v));
    if (fam == AF_INET) {
        T(getsockopt(t, IPPROTO_IPV6, IPV6_V6ONLY, &v, &l));
        T(setsockopt(t, IPPROTO_IPV6, IPV6_V6ONLY, &v, sizeof v));
    } else {
        l = sizeof v;
        T(getsockopt(t, IPPROTO_IP, IP_TTL, &v, &l));
        O("IP_TTL on v6 socket=%d", v);
    }
    T(setsockopt(t, IPPROTO_TCP, TCP_NODELAY, &v, 2));
    v = 1;
    T(setsockopt(t, IPPROTO_TCP, TCP_NODELAY, (void *)8, sizeof v));
    l = 0;
    T(getsockopt(t, IPPROTO_TCP, TCP_NODELAY, &v, &l));
    O("len after zero-length get=%u", (unsigned)l);
    l = 1;
    v = 0;
    T(getsockopt(t, SOL_SOCKET, SO_KEEPALIVE, &v, &l));
    O("len=%u", (unsigned)l);
    close(u);
    close(t);

    CASE(nm("udp_socket_options", fam));
    u = (int)MUST(socket(fam, SOCK_DGRAM, 0));
    G(u, SOL_SOCKET, SO_BROADCAST);
    S(u, SOL_SOCKET, SO_BROADCAST, 1);
    G(u, SOL_SOCKET, SO_KEEPALIVE);
    S(u, SOL_SOCKET, SO_KEEPALIVE, 1);
    S(u, SOL_SOCKET, SO_REUSEADDR, 1);
    if (fam == AF_INET6)
        S(u, IPPROTO_IPV6, IPV6_V6ONLY, 1);
    close(u);
}

int main(void)
{
    watchdog(25);
    signal(SIGPIPE, SIG_IGN);
    int fams[2] = {AF_INET, AF_INET6};
    for (int i = 0; i < 2; i++) {
        keepalive(fams[i]);
        nodelay_bufs(fams[i]);
        linger(fams[i]);
        identity(fams[i]);
        timeouts_lowat(fams[i]);
        inherit(fams[i]);
        errors(fams[i]);
    }
    return 0;
}
