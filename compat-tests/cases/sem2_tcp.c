/* TCP semantics, second series, over 127.0.0.1 and ::1 (suffix _v4/_v6):
 * a connect that stays in progress (full accept queue) and what the socket
 * reports meanwhile, shutdown while connecting, select on non-blocking
 * connects (refused: readable and writable), connecting again after
 * ECONNREFUSED, connect(AF_UNSPEC) aborting a connection (RST), writing after
 * the peer closed (its RST arrives in CLOSE-WAIT: EPIPE, not ECONNRESET), a
 * reset after FIN, names after FIN and reset, SHUT_RD with queued data,
 * SO_LINGER{1,0} leaving no TIME-WAIT, the client's TIME-WAIT port and
 * SO_REUSEADDR, SO_REUSEPORT after one member closed (TCP and UDP), backlog
 * N admitting N+1, keep-alive values and TCP_CORK/TCP_NODELAY, SO_RCVBUF/
 * SO_SNDBUF doubling and clamping, SIOCOUTQ/SIOCOUTQNSD, ephemeral ports
 * against ip_local_port_range, many iovecs and IOV_MAX, MSG_TRUNC and
 * MSG_PEEK|MSG_WAITALL on a stream. */
#include "sem2_common.h"

#include <linux/sockios.h>
#include <sys/sendfile.h>

static volatile sig_atomic_t pipes;
static void on_pipe(int sig)
{
    (void)sig;
    pipes++;
}

static void in_progress(int fam)
{
    addr_t a, la, pa;
    char buf[16];
    int q, err;
    socklen_t el;

    CASE(nm("nb_connect_in_progress_state", fam));
    int l = full_listener(fam, &a, &q);
    int c = (int)MUST(socket(fam, SOCK_STREAM | SOCK_NONBLOCK, 0));
    T(connect(c, SA(&a), a.len));
    poll1("IN|OUT 10ms", c, POLLIN | POLLOUT | POLLRDHUP, 10);
    err = -1;
    el = sizeof err;
    T(getsockopt(c, SOL_SOCKET, SO_ERROR, &err, &el));
    O("SO_ERROR=%s", en(err));
    pa.len = sizeof pa.ss;
    T(getpeername(c, SA(&pa), &pa.len));
    local_of(c, &la);
    O("local %s", addr_desc(&la));
    T(send(c, "x", 1, MSG_NOSIGNAL));
    T(recv(c, buf, sizeof buf, 0));
    int v = -1;
    T(ioctl(c, FIONREAD, &v));
    O("FIONREAD=%d", v);
    T(connect(c, SA(&a), a.len));
    T(listen(c, 1));
    close(c);

    CASE(nm("shutdown_while_connecting", fam));
    c = (int)MUST(socket(fam, SOCK_STREAM | SOCK_NONBLOCK, 0));
    T(connect(c, SA(&a), a.len));
    T(shutdown(c, SHUT_RDWR)); /* aborts the attempt: back to unconnected */
    poll1("IN|OUT", c, POLLIN | POLLOUT | POLLRDHUP, 0);
    err = -1;
    el = sizeof err;
    T(getsockopt(c, SOL_SOCKET, SO_ERROR, &err, &el));
    O("SO_ERROR=%s", en(err));
    T(recv(c, buf, sizeof buf, 0));
    addr_t live;
    int l2 = listener(fam, SOCK_STREAM, &live);
    T(connect(c, SA(&live), live.len)); /* usable again */
    wait_ev(c, POLLOUT);
    T(connect(c, SA(&live), live.len));
    int s = (int)MUST(accept(l2, NULL, NULL));
    T(send(c, "again", 5, 0));
    wait_readable(s);
    long n = T(recv(s, buf, sizeof buf, 0));
    show("got", buf, n);
    close(s);
    close(c);
    close(l2);
    close(q);
    close(l);
}

static void selects(int fam)
{
    addr_t a, dead;
    fd_set r, w, x;
    struct timeval tv;
    int err;
    socklen_t el;

    CASE(nm("nb_connect_select", fam));
    int l = listener(fam, SOCK_STREAM, &a);
    int c = (int)MUST(socket(fam, SOCK_STREAM, 0));
    int on = 1;
    T(ioctl(c, FIONBIO, &on));
    T(connect(c, SA(&a), a.len));
    FD_ZERO(&r);
    FD_ZERO(&w);
    FD_ZERO(&x);
    FD_SET(c, &r);
    FD_SET(c, &w);
    FD_SET(c, &x);
    tv = (struct timeval){5, 0};
    T(select(c + 1, &r, &w, &x, &tv));
    O("readable=%d writable=%d except=%d", FD_ISSET(c, &r) != 0, FD_ISSET(c, &w) != 0,
      FD_ISSET(c, &x) != 0);
    err = -1;
    el = sizeof err;
    T(getsockopt(c, SOL_SOCKET, SO_ERROR, &err, &el));
    O("SO_ERROR=%s", en(err));
    int s = (int)MUST(accept(l, NULL, NULL));
    close(s);
    close(c);
    close(l);

    CASE(nm("nb_connect_refused_select", fam));
    int d = dead_tcp_port(fam, &dead);
    c = (int)MUST(socket(fam, SOCK_STREAM | SOCK_NONBLOCK, 0));
    T(connect(c, SA(&dead), dead.len));
    wait_err(c);
    FD_ZERO(&r);
    FD_ZERO(&w);
    FD_ZERO(&x);
    FD_SET(c, &r);
    FD_SET(c, &w);
    FD_SET(c, &x);
    tv = (struct timeval){5, 0};
    T(select(c + 1, &r, &w, &x, &tv));
    O("readable=%d writable=%d except=%d", FD_ISSET(c, &r) != 0, FD_ISSET(c, &w) != 0,
      FD_ISSET(c, &x) != 0);
    err = -1;
    el = sizeof err;
    T(getsockopt(c, SOL_SOCKET, SO_ERROR, &err, &el));
    O("SO_ERROR=%s", en(err));
    FD_ZERO(&r);
    FD_SET(c, &r);
    tv = (struct timeval){0, 0};
    T(select(c + 1, &r, NULL, NULL, &tv)); /* still readable (HUP) after the error was read */
    close(c);

    CASE(nm("connect_again_after_refused", fam));
    c = (int)MUST(socket(fam, SOCK_STREAM, 0));
    T(connect(c, SA(&dead), dead.len));
    T(connect(c, SA(&dead), dead.len));
    l = listener(fam, SOCK_STREAM, &a);
    T(connect(c, SA(&a), a.len)); /* the same socket connects elsewhere */
    addr_t pa;
    peer_of(c, &pa);
    O("peer == listener: %d", same_addr(&pa, &a));
    s = (int)MUST(accept(l, NULL, NULL));
    T(send(s, "ok", 2, 0));
    char buf[8];
    long n = T(recv(c, buf, sizeof buf, 0));
    show("got", buf, n);
    close(s);
    close(c);
    close(l);
    close(d);
}

static void resets(int fam)
{
    int c, s, l;
    addr_t a, pa, la;
    char buf[32];
    long n;
    int err;
    socklen_t el;

    CASE(nm("connect_af_unspec_disconnects_tcp", fam));
    tcp_pair_l(fam, &c, &s, &l, &a);
    T(send(s, "pending", 7, 0));
    wait_bytes(c, 7);
    struct sockaddr unspec = {.sa_family = AF_UNSPEC};
    T(connect(c, &unspec, sizeof unspec));
    pa.len = sizeof pa.ss;
    T(getpeername(c, SA(&pa), &pa.len));
    int v = -1;
    T(ioctl(c, FIONREAD, &v));
    O("FIONREAD after disconnect=%d", v);
    T(recv(c, buf, sizeof buf, MSG_DONTWAIT));
    O("peer sees error: %d", wait_err(s));
    T(recv(s, buf, sizeof buf, 0));
    T(recv(s, buf, sizeof buf, 0));
    close(s);
    T(connect(c, SA(&a), a.len)); /* reusable */
    s = (int)MUST(accept(l, NULL, NULL));
    T(send(c, "re", 2, 0));
    wait_readable(s);
    n = T(recv(s, buf, sizeof buf, 0));
    show("got", buf, n);
    close(s);
    close(c);
    close(l);

    CASE(nm("write_after_peer_closed", fam));
    tcp_pair(fam, &c, &s);
    T(close(s)); /* nothing unread: FIN, the peer is gone */
    wait_ev(c, POLLRDHUP);
    poll1("IN|OUT|RDHUP", c, POLLIN | POLLOUT | POLLRDHUP, 0);
    pipes = 0;
    on_signal(SIGPIPE, on_pipe, 0);
    T(send(c, "x", 1, 0)); /* accepted locally; the closed peer answers with RST */
    O("error visible: %d", wait_err(c));
    poll1("IN|OUT|RDHUP", c, POLLIN | POLLOUT | POLLRDHUP, 0);
    O("SIGPIPE so far: %d", (int)pipes);
    T(send(c, "y", 1, 0)); /* the RST came in CLOSE-WAIT: EPIPE, not ECONNRESET */
    O("SIGPIPE so far: %d", (int)pipes);
    T(send(c, "z", 1, MSG_NOSIGNAL));
    O("SIGPIPE so far: %d", (int)pipes);
    signal(SIGPIPE, SIG_IGN);
    T(recv(c, buf, sizeof buf, 0));
    close(c);

    CASE(nm("reset_after_fin_gives_epipe", fam));
    tcp_pair(fam, &c, &s);
    T(shutdown(c, SHUT_WR));
    wait_ev(s, POLLRDHUP);
    struct linger lg = {1, 0};
    T(setsockopt(c, SOL_SOCKET, SO_LINGER, &lg, sizeof lg));
    T(close(c)); /* RST on top of the FIN */
    O("error visible: %d", wait_err(s));
    poll1("IN|OUT|RDHUP", s, POLLIN | POLLOUT | POLLRDHUP, 0);
    err = -1;
    el = sizeof err;
    T(getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &el));
    O("SO_ERROR=%s", en(err));
    T(recv(s, buf, sizeof buf, 0));
    T(send(s, "x", 1, 0));
    close(s);

    CASE(nm("names_after_reset", fam));
    tcp_pair(fam, &c, &s);
    addr_t before;
    local_of(c, &before);
    T(setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof lg));
    T(close(s));
    wait_err(c);
    pa.len = sizeof pa.ss;
    T(getpeername(c, SA(&pa), &pa.len));
    local_of(c, &la);
    O("getsockname %s same as before: %d", addr_desc(&la), same_addr(&la, &before));
    T(recv(c, buf, sizeof buf, 0));
    pa.len = sizeof pa.ss;
    T(getpeername(c, SA(&pa), &pa.len));
    close(c);

    CASE(nm("names_after_fin", fam));
    tcp_pair(fam, &c, &s);
    T(shutdown(s, SHUT_WR));
    wait_ev(c, POLLRDHUP);
    T(recv(c, buf, sizeof buf, 0));
    peer_of(c, &pa);
    O("peer after FIN %s", addr_desc(&pa));
    T(shutdown(c, SHUT_RDWR)); /* LAST-ACK, then CLOSE once acked */
    int gone = 0;
    for (int i = 0; i < 500 && !gone; i++) {
        pa.len = sizeof pa.ss;
        if (getpeername(c, SA(&pa), &pa.len) < 0 && errno == ENOTCONN)
            gone = 1;
        else
            usleep(1000);
    }
    O("getpeername becomes ENOTCONN once closed: %d", gone);
    gone = 0;
    for (int i = 0; i < 500 && !gone; i++) {
        pa.len = sizeof pa.ss;
        if (getpeername(s, SA(&pa), &pa.len) < 0 && errno == ENOTCONN)
            gone = 1;
        else
            usleep(1000);
    }
    O("also on the side that closed first: %d", gone);
    close(c);
    close(s);
}

static void shutdowns(int fam)
{
    int c, s;
    char buf[32];
    long n;

    CASE(nm("shut_rd_with_queued_data", fam));
    tcp_pair(fam, &c, &s);
    T(send(s, "queued", 6, 0));
    wait_bytes(c, 6);
    T(shutdown(c, SHUT_RD));
    int v = -1;
    T(ioctl(c, FIONREAD, &v));
    O("FIONREAD=%d", v);
    poll1("IN|RDHUP", c, POLLIN | POLLRDHUP, 0);
    n = T(recv(c, buf, sizeof buf, 0));
    show("got", buf, n);
    T(recv(c, buf, sizeof buf, 0));
    T(send(s, "after", 5, 0)); /* the peer may still send */
    wait_bytes(c, 5);
    v = -1;
    T(ioctl(c, FIONREAD, &v));
    O("FIONREAD=%d", v);
    n = T(recv(c, buf, sizeof buf, MSG_DONTWAIT));
    show("got", buf, n);
    T(recv(c, buf, sizeof buf, MSG_DONTWAIT));
    close(c);
    close(s);

    CASE(nm("shut_wr_then_peer_closes", fam));
    tcp_pair(fam, &c, &s);
    T(shutdown(c, SHUT_WR));
    wait_ev(s, POLLRDHUP);
    T(send(s, "last-words", 10, 0));
    T(close(s));
    wait_ev(c, POLLRDHUP);
    poll1("IN|OUT|RDHUP", c, POLLIN | POLLOUT | POLLRDHUP, 0);
    n = T(recv(c, buf, sizeof buf, 0));
    show("got", buf, n);
    T(recv(c, buf, sizeof buf, 0));
    T(send(c, "x", 1, MSG_NOSIGNAL));
    close(c);
}

static void linger_tw(int fam)
{
    addr_t a, ca, b;
    int one = 1;
    char buf[8];

    CASE(nm("linger0_leaves_no_time_wait", fam));
    int l = (int)MUST(socket(fam, SOCK_STREAM, 0));
    loop_addr(fam, &a, 0);
    MUST(bind(l, SA(&a), a.len));
    MUST(listen(l, 4));
    local_of(l, &a);
    int c = (int)MUST(socket(fam, SOCK_STREAM, 0));
    MUST(connect(c, SA(&a), a.len));
    int s = (int)MUST(accept(l, NULL, NULL));
    struct linger lg = {1, 0};
    T(setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof lg));
    T(close(s)); /* abortive: RST, no TIME-WAIT */
    O("client sees error: %d", wait_err(c));
    T(recv(c, buf, sizeof buf, 0));
    close(c);
    close(l);
    int x = (int)MUST(socket(fam, SOCK_STREAM, 0));
    T(bind(x, SA(&a), a.len)); /* no SO_REUSEADDR needed */
    T(listen(x, 4));
    close(x);

    CASE(nm("client_time_wait_port", fam));
    l = listener(fam, SOCK_STREAM, &a);
    c = (int)MUST(socket(fam, SOCK_STREAM, 0));
    MUST(connect(c, SA(&a), a.len));
    s = (int)MUST(accept(l, NULL, NULL));
    local_of(c, &ca);
    T(close(c)); /* the client closes first: its port goes to TIME-WAIT */
    wait_ev(s, POLLRDHUP);
    T(recv(s, buf, sizeof buf, 0));
    T(close(s));
    usleep(10000);
    x = (int)MUST(socket(fam, SOCK_STREAM, 0));
    T(bind(x, SA(&ca), ca.len));
    close(x);
    x = (int)MUST(socket(fam, SOCK_STREAM, 0));
    T(setsockopt(x, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one));
    T(bind(x, SA(&ca), ca.len)); /* the TIME-WAIT socket lacks SO_REUSEADDR */
    close(x);
    /* This time the client binds first: a port picked by connect() may be
     * shared with other connections (other programs' TIME-WAITs included). */
    c = (int)MUST(socket(fam, SOCK_STREAM, 0));
    T(setsockopt(c, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one));
    loop_addr(fam, &ca, 0);
    MUST(bind(c, SA(&ca), ca.len));
    MUST(connect(c, SA(&a), a.len));
    s = (int)MUST(accept(l, NULL, NULL));
    local_of(c, &ca);
    T(close(c));
    wait_ev(s, POLLRDHUP);
    T(close(s));
    usleep(10000);
    x = (int)MUST(socket(fam, SOCK_STREAM, 0));
    T(bind(x, SA(&ca), ca.len));
    close(x);
    x = (int)MUST(socket(fam, SOCK_STREAM, 0));
    T(setsockopt(x, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one));
    T(bind(x, SA(&ca), ca.len)); /* both have SO_REUSEADDR */
    local_of(x, &b);
    O("same port: %d", port_of(&b) == port_of(&ca));
    close(x);
    close(l);
}

static void reuseport(int fam)
{
    addr_t a, b;
    int one = 1;

    CASE(nm("reuseport_one_listener_closed", fam));
    int l1 = (int)MUST(socket(fam, SOCK_STREAM, 0));
    int l2 = (int)MUST(socket(fam, SOCK_STREAM, 0));
    MUST(setsockopt(l1, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one));
    MUST(setsockopt(l2, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one));
    loop_addr(fam, &a, 0);
    T(bind(l1, SA(&a), a.len));
    local_of(l1, &a);
    T(bind(l2, SA(&a), a.len));
    T(listen(l1, 16));
    T(listen(l2, 16));
    T(close(l1));
    int cs[8], acc = 0;
    for (int i = 0; i < 8; i++) {
        cs[i] = (int)MUST(socket(fam, SOCK_STREAM, 0));
        if (connect(cs[i], SA(&a), a.len) < 0)
            O("connect %d: %s", i, en(errno));
    }
    MUST(fcntl(l2, F_SETFL, O_NONBLOCK));
    for (int i = 0; i < 8; i++) {
        wait_readable(l2);
        int y = accept(l2, NULL, NULL);
        if (y >= 0) {
            acc++;
            close(y);
        }
    }
    O("the remaining listener accepted %d of 8", acc);
    int l3 = (int)MUST(socket(fam, SOCK_STREAM, 0));
    MUST(setsockopt(l3, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one));
    T(bind(l3, SA(&a), a.len)); /* joins the group again */
    T(listen(l3, 4));
    local_of(l3, &b);
    O("same port: %d", port_of(&a) == port_of(&b));
    for (int i = 0; i < 8; i++)
        close(cs[i]);
    close(l3);
    close(l2);

    CASE(nm("reuseport_udp_group", fam));
    int u1 = (int)MUST(socket(fam, SOCK_DGRAM, 0));
    int u2 = (int)MUST(socket(fam, SOCK_DGRAM, 0));
    int u3 = (int)MUST(socket(fam, SOCK_DGRAM, 0));
    MUST(setsockopt(u1, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one));
    MUST(setsockopt(u2, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one));
    loop_addr(fam, &a, 0);
    T(bind(u1, SA(&a), a.len));
    local_of(u1, &a);
    T(bind(u2, SA(&a), a.len));
    T(bind(u3, SA(&a), a.len)); /* without the option */
    T(close(u1));
    /* the one left gets everything */
    int sx = (int)MUST(socket(fam, SOCK_DGRAM, 0));
    for (int i = 0; i < 4; i++)
        MUST(sendto(sx, "r", 1, 0, SA(&a), a.len));
    int got = 0;
    char buf[4];
    struct timeval tv = {5, 0};
    MUST(setsockopt(u2, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv));
    for (int i = 0; i < 4; i++)
        if (recv(u2, buf, sizeof buf, 0) == 1)
            got++;
    O("remaining socket got %d of 4", got);
    close(sx);
    close(u2);
    close(u3);
}

static void backlog(int fam)
{
    addr_t a;

    CASE(nm("backlog_limit_plus_one", fam));
    for (int bl = 0; bl <= 2; bl++) {
        int l = (int)MUST(socket(fam, SOCK_STREAM, 0));
        loop_addr(fam, &a, 0);
        MUST(bind(l, SA(&a), a.len));
        MUST(listen(l, bl));
        local_of(l, &a);
        int c[5];
        char res[6] = {0};
        for (int i = 0; i < 5; i++) {
            c[i] = (int)MUST(socket(fam, SOCK_STREAM | SOCK_NONBLOCK, 0));
            connect(c[i], SA(&a), a.len);
            /* Those expected to connect get 5 s, the others 20 ms: a dropped
             * SYN is retried after 1 s, to a queue that is still full. */
            struct pollfd p = {c[i], POLLOUT, 0};
            res[i] = poll(&p, 1, i <= bl ? 5000 : 20) == 1 ? 'c' : '.';
        }
        O("backlog %d: connected: %s", bl, res);
        for (int i = 0; i < 5; i++)
            close(c[i]);
        close(l);
    }
}

static void keepalive(int fam)
{
    CASE(nm("keepalive_values_independent_of_switch", fam));
    int c, s;
    tcp_pair(fam, &c, &s);
    int v;
#define SETI(level, opt, val) (v = (val), setsockopt(c, level, opt, &v, sizeof v))
#define SHOW(what)                                                                                 \
    O("%s: keepalive=%d idle=%d intvl=%d cnt=%d", what, sockopt_int(c, SOL_SOCKET, SO_KEEPALIVE), \
      sockopt_int(c, IPPROTO_TCP, TCP_KEEPIDLE), sockopt_int(c, IPPROTO_TCP, TCP_KEEPINTVL),      \
      sockopt_int(c, IPPROTO_TCP, TCP_KEEPCNT))
    SHOW("connected");
    T(SETI(IPPROTO_TCP, TCP_KEEPIDLE, 11));
    T(SETI(IPPROTO_TCP, TCP_KEEPINTVL, 3));
    T(SETI(IPPROTO_TCP, TCP_KEEPCNT, 4));
    SHOW("values set");
    T(SETI(SOL_SOCKET, SO_KEEPALIVE, 1));
    SHOW("switched on");
    T(SETI(SOL_SOCKET, SO_KEEPALIVE, 0));
    SHOW("switched off");
    T(SETI(IPPROTO_TCP, TCP_KEEPINTVL, 32768));
    T(SETI(IPPROTO_TCP, TCP_KEEPCNT, -1));
    T(SETI(IPPROTO_TCP, TCP_KEEPIDLE, -5));
    T(shutdown(c, SHUT_RDWR));
    T(SETI(SOL_SOCKET, SO_KEEPALIVE, 1)); /* still settable after shutdown */
    SHOW("after shutdown");
#undef SETI
#undef SHOW
    close(c);
    close(s);

    CASE(nm("tcp_nodelay_cork_independent", fam));
    tcp_pair(fam, &c, &s);
    int one = 1, zero = 0;
    T(setsockopt(c, IPPROTO_TCP, TCP_CORK, &one, sizeof one));
    T(setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one));
    O("cork=%d nodelay=%d", sockopt_int(c, IPPROTO_TCP, TCP_CORK), sockopt_int(c, IPPROTO_TCP, TCP_NODELAY));
    T(send(c, "corked", 6, 0));
    T(setsockopt(c, IPPROTO_TCP, TCP_CORK, &zero, sizeof zero)); /* uncorking pushes */
    char buf[8];
    wait_bytes(s, 6);
    long n = T(recv(s, buf, sizeof buf, 0));
    show("got", buf, n);
    O("cork=%d nodelay=%d", sockopt_int(c, IPPROTO_TCP, TCP_CORK), sockopt_int(c, IPPROTO_TCP, TCP_NODELAY));
    close(c);
    close(s);
}

static void bufs(int fam)
{
    CASE(nm("so_rcvbuf_sndbuf_doubled", fam));
    long rmax = proc_long("/proc/sys/net/core/rmem_max");
    long wmax = proc_long("/proc/sys/net/core/wmem_max");
    int types[2] = {SOCK_STREAM, SOCK_DGRAM};
    for (int t = 0; t < 2; t++) {
        int s = (int)MUST(socket(fam, types[t], 0));
        const char *tn = t == 0 ? "tcp" : "udp";
        int sizes[3] = {4096, 65536, 100000};
        for (int i = 0; i < 3; i++) {
            int v = sizes[i];
            MUST(setsockopt(s, SOL_SOCKET, SO_RCVBUF, &v, sizeof v));
            MUST(setsockopt(s, SOL_SOCKET, SO_SNDBUF, &v, sizeof v));
            O("%s set %d: rcvbuf doubled: %d sndbuf doubled: %d", tn, v,
              sockopt_int(s, SOL_SOCKET, SO_RCVBUF) == 2 * v,
              sockopt_int(s, SOL_SOCKET, SO_SNDBUF) == 2 * v);
        }
        int v = INT_MAX / 4;
        MUST(setsockopt(s, SOL_SOCKET, SO_RCVBUF, &v, sizeof v));
        MUST(setsockopt(s, SOL_SOCKET, SO_SNDBUF, &v, sizeof v));
        O("%s huge: rcvbuf == 2*rmem_max: %d sndbuf == 2*wmem_max: %d", tn,
          sockopt_int(s, SOL_SOCKET, SO_RCVBUF) == 2 * rmax,
          sockopt_int(s, SOL_SOCKET, SO_SNDBUF) == 2 * wmax);
        v = 1;
        MUST(setsockopt(s, SOL_SOCKET, SO_RCVBUF, &v, sizeof v));
        MUST(setsockopt(s, SOL_SOCKET, SO_SNDBUF, &v, sizeof v));
        int rmin = sockopt_int(s, SOL_SOCKET, SO_RCVBUF), smin = sockopt_int(s, SOL_SOCKET, SO_SNDBUF);
        v = 0;
        MUST(setsockopt(s, SOL_SOCKET, SO_RCVBUF, &v, sizeof v));
        MUST(setsockopt(s, SOL_SOCKET, SO_SNDBUF, &v, sizeof v));
        O("%s tiny: clamped to a minimum > 1000: rcv %d snd %d; 0 gives the same: %d", tn,
          rmin > 1000, smin > 1000,
          sockopt_int(s, SOL_SOCKET, SO_RCVBUF) == rmin && sockopt_int(s, SOL_SOCKET, SO_SNDBUF) == smin);
        close(s);
    }
}

static void outq(int fam)
{
    int c, s, v;
    char buf[16];

    CASE(nm("siocoutq_siocoutqnsd", fam));
    tcp_pair_small(fam, &c, &s);
    v = -1;
    T(ioctl(c, SIOCOUTQ, &v));
    O("fresh SIOCOUTQ=%d", v);
    v = -1;
    T(ioctl(c, SIOCOUTQNSD, &v));
    O("fresh SIOCOUTQNSD=%d", v);
    T(send(c, "abc", 3, 0));
    wait_bytes(s, 3);
    for (int i = 0; i < 500; i++) {
        v = -1;
        ioctl(c, SIOCOUTQ, &v);
        if (v == 0)
            break;
        usleep(1000);
    }
    O("SIOCOUTQ once the peer acked=%d", v);
    long sent = fill_settled(c);
    int oq = -1, nsd = -1;
    T(ioctl(c, SIOCOUTQ, &oq));
    T(ioctl(c, SIOCOUTQNSD, &nsd));
    int inq = -1;
    ioctl(s, FIONREAD, &inq);
    O("stuck: SIOCOUTQ > 0: %d, SIOCOUTQNSD <= SIOCOUTQ: %d, peer FIONREAD + 3 + SIOCOUTQ == sent + 3: %d",
      oq > 0, nsd <= oq, (long)inq + oq == sent + 3);
    long got = drain(s, sent + 3);
    O("peer got everything: %d", got == sent + 3);
    for (int i = 0; i < 500; i++) {
        v = -1;
        ioctl(c, SIOCOUTQ, &v);
        if (v == 0)
            break;
        usleep(1000);
    }
    O("SIOCOUTQ after drain=%d", v);
    close(c);
    close(s);

    CASE(nm("siocoutq_other_sockets", fam));
    addr_t a, b;
    int l = listener(fam, SOCK_STREAM, &a);
    T(ioctl(l, SIOCOUTQ, &v));
    T(ioctl(l, SIOCOUTQNSD, &v));
    close(l);
    int u = (int)MUST(socket(fam, SOCK_STREAM, 0));
    v = -1;
    T(ioctl(u, SIOCOUTQ, &v));
    O("unconnected=%d", v);
    close(u);
    int x = udp_sock(fam, &a);
    int y = udp_sock(fam, &b);
    v = -1;
    T(ioctl(y, SIOCOUTQ, &v));
    O("udp fresh=%d", v);
    T(sendto(y, "dgram", 5, 0, SA(&a), a.len));
    wait_readable(x);
    v = -1;
    T(ioctl(y, SIOCOUTQ, &v));
    O("udp after the datagram was delivered=%d", v);
    v = -1;
    T(ioctl(x, SIOCINQ, &v));
    O("udp receiver SIOCINQ=%d", v);
    recv(x, buf, sizeof buf, 0);
    close(x);
    close(y);
}

static void ephemeral(int fam)
{
    addr_t a, la;
    int lo, hi;
    port_range(&lo, &hi);

    CASE(nm("ephemeral_ports_in_proc_range", fam));
    int l = listener(fam, SOCK_STREAM, &a);
    enum { N = 24 };
    int c[N], ports[N], inr = 0, distinct = 1;
    for (int i = 0; i < N; i++) {
        c[i] = (int)MUST(socket(fam, SOCK_STREAM, 0));
        MUST(connect(c[i], SA(&a), a.len));
        close((int)MUST(accept(l, NULL, NULL)));
        local_of(c[i], &la);
        ports[i] = port_of(&la);
        inr += ports[i] >= lo && ports[i] <= hi;
        for (int j = 0; j < i; j++)
            if (ports[j] == ports[i])
                distinct = 0;
    }
    O("tcp connect: %d of %d in range, distinct: %d", inr, N, distinct);
    for (int i = 0; i < N; i++)
        close(c[i]);
    close(l);
    inr = 0;
    distinct = 1;
    for (int i = 0; i < N; i++) {
        c[i] = (int)MUST(socket(fam, SOCK_DGRAM, 0));
        loop_addr(fam, &la, 9);
        MUST(connect(c[i], SA(&la), la.len));
        local_of(c[i], &la);
        ports[i] = port_of(&la);
        inr += ports[i] >= lo && ports[i] <= hi;
        for (int j = 0; j < i; j++)
            if (ports[j] == ports[i])
                distinct = 0;
    }
    O("udp connect: %d of %d in range, distinct: %d", inr, N, distinct);
    for (int i = 0; i < N; i++)
        close(c[i]);
    inr = 0;
    distinct = 1;
    for (int i = 0; i < N; i++) {
        c[i] = (int)MUST(socket(fam, i % 2 ? SOCK_DGRAM : SOCK_STREAM, 0));
        loop_addr(fam, &la, 0);
        MUST(bind(c[i], SA(&la), la.len));
        local_of(c[i], &la);
        ports[i] = port_of(&la);
        inr += ports[i] >= lo && ports[i] <= hi;
    }
    O("bind port 0 (tcp and udp): %d of %d in range", inr, N);
    for (int i = 0; i < N; i++)
        close(c[i]);

    CASE(nm("bound_port_kept_by_connect", fam));
    l = listener(fam, SOCK_STREAM, &a);
    int x = (int)MUST(socket(fam, SOCK_STREAM, 0));
    loop_addr(fam, &la, 0);
    MUST(bind(x, SA(&la), la.len));
    addr_t before;
    local_of(x, &before);
    T(connect(x, SA(&a), a.len));
    local_of(x, &la);
    O("same local address after connect: %d", same_addr(&la, &before));
    int s = (int)MUST(accept(l, NULL, NULL));
    addr_t pa;
    peer_of(s, &pa);
    O("server sees that port: %d", port_of(&pa) == port_of(&before));
    close(s);
    close(x);
    close(l);
}

static void iovecs(int fam)
{
    int c, s;
    long n;

    CASE(nm("writev_readv_many_iovecs", fam));
    tcp_pair(fam, &c, &s);
    static char src[300], dst[300];
    for (int i = 0; i < 300; i++)
        src[i] = (char)('a' + i % 26);
    struct iovec wv[100];
    for (int i = 0; i < 100; i++)
        wv[i] = (struct iovec){src + 3 * i, 3};
    T(writev(c, wv, 100));
    wait_bytes(s, 300);
    static struct iovec rv[300];
    memset(dst, 0, sizeof dst);
    for (int i = 0; i < 300; i++)
        rv[i] = (struct iovec){dst + (299 - i), 1}; /* backwards, one byte each */
    n = T(readv(s, rv, 300));
    int rev_ok = 1;
    for (int i = 0; i < 300; i++)
        if (dst[299 - i] != src[i])
            rev_ok = 0;
    O("bytes landed in iovec order: %d", n == 300 && rev_ok);
    close(c);
    close(s);

    CASE(nm("sendmsg_recvmsg_many_iovecs", fam));
    tcp_pair(fam, &c, &s);
    struct iovec sv[64];
    char parts[64][4];
    size_t total = 0;
    for (int i = 0; i < 64; i++) {
        int len = 1 + i % 3;
        for (int k = 0; k < len; k++)
            parts[i][k] = (char)('A' + (i + k) % 26);
        sv[i] = (struct iovec){parts[i], (size_t)len};
        total += (size_t)len;
    }
    struct msghdr sm = {.msg_iov = sv, .msg_iovlen = 64};
    n = T(sendmsg(c, &sm, 0));
    O("total=%zu", total);
    wait_bytes(s, (int)total);
    char rb[64][5];
    struct iovec qv[64];
    for (int i = 0; i < 64; i++)
        qv[i] = (struct iovec){rb[i], 2};
    struct msghdr rm = {.msg_iov = qv, .msg_iovlen = 64};
    n = T(recvmsg(s, &rm, 0));
    O("msg_flags=0x%x", rm.msg_flags);
    uint32_t h1 = FNV_INIT, h2 = FNV_INIT;
    for (int i = 0; i < 64; i++)
        h1 = fnv(parts[i], sv[i].iov_len, h1);
    for (int i = 0; i < 64 && i * 2 < n; i++)
        h2 = fnv(rb[i], n - i * 2 < 2 ? 1 : 2, h2);
    O("same bytes: %d", (size_t)n == total && h1 == h2);
    close(c);
    close(s);

    CASE(nm("iov_max_limits", fam));
    tcp_pair(fam, &c, &s);
    static struct iovec big[1025];
    static char one[1025];
    memset(one, 'i', sizeof one);
    for (int i = 0; i < 1025; i++)
        big[i] = (struct iovec){one + i, 1};
    T(writev(c, big, 1024));
    T(writev(c, big, 1025));
    struct msghdr bm = {.msg_iov = big, .msg_iovlen = 1024};
    T(sendmsg(c, &bm, 0));
    bm.msg_iovlen = 1025;
    T(sendmsg(c, &bm, 0));
    wait_bytes(s, 2048);
    static char rbig[1025];
    for (int i = 0; i < 1025; i++)
        big[i] = (struct iovec){rbig + i, 1};
    T(readv(s, big, 1025));
    struct msghdr rbm = {.msg_iov = big, .msg_iovlen = 1025};
    T(recvmsg(s, &rbm, 0));
    T(readv(s, big, 1024));
    rbm.msg_iovlen = 1024;
    T(recvmsg(s, &rbm, MSG_DONTWAIT));
    close(c);
    close(s);
}

struct two_pieces {
    int fd;
    pid_t tid;
};

static void *two_pieces_writer(void *arg)
{
    struct two_pieces *p = arg;
    wait_sleeping(p->tid);
    send(p->fd, "abcd", 4, 0);
    usleep(5000);
    wait_sleeping(p->tid);
    send(p->fd, "efghij", 6, 0);
    return NULL;
}

static void trunc_peek(int fam)
{
    int c, s;
    char buf[32];
    long n;
    pthread_t th;

    CASE(nm("msg_trunc_tcp_null_buffer_and_peek", fam));
    tcp_pair(fam, &c, &s);
    T(send(c, "0123456789", 10, 0));
    wait_bytes(s, 10);
    T(recv(s, NULL, 3, MSG_TRUNC)); /* discarded, nothing copied */
    memset(buf, '.', sizeof buf);
    T(recv(s, buf, 4, MSG_TRUNC | MSG_PEEK));
    show("buffer", buf, 4);
    int v = -1;
    ioctl(s, FIONREAD, &v);
    O("FIONREAD=%d", v);
    n = T(recv(s, buf, sizeof buf, 0));
    show("rest", buf, n);
    close(c);
    close(s);

    CASE(nm("msg_peek_waitall_blocks_for_all", fam));
    tcp_pair(fam, &c, &s);
    /* the main thread peeks; a helper sends in two pieces while it sleeps */
    struct two_pieces w = {c, gettid()};
    pthread_create(&th, NULL, two_pieces_writer, &w);
    n = T(recv(s, buf, 10, MSG_PEEK | MSG_WAITALL));
    pthread_join(th, NULL);
    show("peeked", buf, n);
    v = -1;
    ioctl(s, FIONREAD, &v);
    O("FIONREAD=%d", v);
    close(c);
    close(s);
}

/* sendfile from a file to a TCP socket: with an offset (the file position stays), from
 * the position (it moves), past the end, and the socket as the input (refused). */
static void sendfiles(int fam)
{
    int c, s;
    char buf[256];
    long n;

    CASE(nm("sendfile_file_to_tcp", fam));
    tcp_pair(fam, &c, &s);
    char path[] = "/tmp/arrakis-sendfile-XXXXXX";
    int f = (int)MUST(mkstemp(path));
    unlink(path);
    for (int i = 0; i < 100; i++)
        dprintf(f, "line %02d\n", i);
    MUST(lseek(f, 8, SEEK_SET));
    off_t o = 16;
    T(sendfile(c, f, &o, 24));
    O("offset now %ld, file position %ld", (long)o, (long)lseek(f, 0, SEEK_CUR));
    T(sendfile(c, f, NULL, 8));
    O("file position %ld", (long)lseek(f, 0, SEEK_CUR));
    n = 0;
    while (n < 32) {
        long k = recv(s, buf + n, sizeof buf - n, 0);
        if (k <= 0)
            break;
        n += k;
    }
    show("got", buf, n);
    o = 790;
    T(sendfile(c, f, &o, 100)); /* 10 bytes left in the file */
    O("offset now %ld", (long)o);
    o = 800;
    T(sendfile(c, f, &o, 100));
    wait_bytes(s, 10);
    n = T(recv(s, buf, sizeof buf, 0));
    show("tail", buf, n);
    o = 0;
    T(sendfile(f, s, &o, 10));
    T(sendfile(f, s, NULL, 10));
    o = -1;
    T(sendfile(c, f, &o, 10));
    close(f);
    close(c);
    close(s);
}

/* After an AF_UNSPEC disconnect an automatically chosen port is given back, yet
 * getsockname still shows it (inet_sport) with the address reset; a bound one stays. */
static void disconnect_names(int fam)
{
    addr_t a, b, la;
    CASE(nm("names_after_af_unspec_disconnect", fam));
    int l = listener(fam, SOCK_STREAM, &a);
    struct sockaddr unspec = {.sa_family = AF_UNSPEC};
    int c = (int)MUST(socket(fam, SOCK_STREAM, 0));
    MUST(connect(c, SA(&a), a.len));
    local_of(c, &b);
    int s = (int)MUST(accept(l, NULL, NULL));
    T(connect(c, &unspec, sizeof unspec));
    local_of(c, &la);
    O("auto port: same port %d, wildcard address %d", port_of(&la) == port_of(&b),
      strcmp(addr_desc(&la), addr_desc(&b)) != 0);
    T(listen(c, 1)); /* the port was given back: listen picks a port again */
    close(c);
    close(s);
    c = (int)MUST(socket(fam, SOCK_STREAM, 0));
    loop_addr(fam, &b, 0);
    MUST(bind(c, SA(&b), b.len));
    local_of(c, &b);
    MUST(connect(c, SA(&a), a.len));
    s = (int)MUST(accept(l, NULL, NULL));
    T(connect(c, &unspec, sizeof unspec));
    local_of(c, &la);
    O("bound: same address and port %d", strcmp(addr_desc(&la), addr_desc(&b)) == 0 && port_of(&la) == port_of(&b));
    close(c);
    close(s);
    close(l);
}

/* 127.0.0.2 is a loopback address the library OS does not serve: sockets addressed there
 * must behave as on Linux (under the shim they are handed to the kernel). */
static void unserved_address(void)
{
    CASE("other_loopback_address_v4");
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = inet_addr("127.0.0.2")};
    socklen_t al = sizeof a;
    int one = 1, v = 0;
    socklen_t vl = sizeof v;
    int l = (int)MUST(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    T(setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one));
    T(bind(l, (struct sockaddr *)&a, sizeof a));
    MUST(getsockname(l, (struct sockaddr *)&a, &al));
    O("bound to %s", inet_ntoa(a.sin_addr));
    T(listen(l, 4));
    T(getsockopt(l, SOL_SOCKET, SO_REUSEADDR, &v, &vl));
    O("SO_REUSEADDR=%d FD_CLOEXEC=%d", v, fcntl(l, F_GETFD) & FD_CLOEXEC);
    int c = (int)MUST(socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0));
    T(connect(c, (struct sockaddr *)&a, sizeof a));
    wait_ev(c, POLLOUT);
    T(connect(c, (struct sockaddr *)&a, sizeof a));
    O("O_NONBLOCK kept: %d", (fcntl(c, F_GETFL) & O_NONBLOCK) != 0);
    int s = (int)MUST(accept(l, NULL, NULL));
    T(send(c, "far", 3, 0));
    wait_readable(s);
    char buf[8];
    long n = T(recv(s, buf, sizeof buf, 0));
    show("got", buf, n);
    int u = (int)MUST(socket(AF_INET, SOCK_DGRAM, 0));
    int w = (int)MUST(socket(AF_INET, SOCK_DGRAM, 0));
    struct sockaddr_in ua = {.sin_family = AF_INET, .sin_addr.s_addr = inet_addr("127.0.0.2")};
    al = sizeof ua;
    T(bind(u, (struct sockaddr *)&ua, sizeof ua));
    MUST(getsockname(u, (struct sockaddr *)&ua, &al));
    T(sendto(w, "dg", 2, 0, (struct sockaddr *)&ua, sizeof ua));
    wait_readable(u);
    n = T(recv(u, buf, sizeof buf, 0));
    show("datagram", buf, n);
    close(u);
    close(w);
    close(s);
    close(c);
    close(l);
}

int main(void)
{
    watchdog(25);
    signal(SIGPIPE, SIG_IGN);
    int fams[2] = {AF_INET, AF_INET6};
    for (int i = 0; i < 2; i++) {
        in_progress(fams[i]);
        selects(fams[i]);
        resets(fams[i]);
        shutdowns(fams[i]);
        linger_tw(fams[i]);
        reuseport(fams[i]);
        backlog(fams[i]);
        keepalive(fams[i]);
        bufs(fams[i]);
        outq(fams[i]);
        ephemeral(fams[i]);
        iovecs(fams[i]);
        trunc_peek(fams[i]);
        sendfiles(fams[i]);
        disconnect_names(fams[i]);
    }
    unserved_address();
    return 0;
}
