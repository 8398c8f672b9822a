/* TCP listen/accept/bind semantics over 127.0.0.1 and ::1 (suffix _v4/_v6):
 * backlog bursts, accept4 flags, accept errors, SO_REUSEADDR with TIME-WAIT,
 * SO_REUSEPORT, EADDRINUSE, getsockname/getpeername, ephemeral ports. Ports
 * are never printed: only "port>0", "== listener port" or "in 32768-60999". */
#include "sem_common.h"

#define BURST 64

static void backlog(int fam)
{
    addr_t a;
    CASE(nm("backlog_burst_64_nonblocking", fam));
    int l = (int)MUST(socket(fam, SOCK_STREAM, 0));
    loop_addr(fam, &a, 0);
    MUST(bind(l, SA(&a), a.len));
    T(listen(l, 128));
    local_of(l, &a);
    int c[BURST], s[BURST];
    int inprog = 0, other = 0;
    for (int i = 0; i < BURST; i++) {
        c[i] = (int)MUST(socket(fam, SOCK_STREAM | SOCK_NONBLOCK, 0));
        if (connect(c[i], SA(&a), a.len) == 0 || errno == EINPROGRESS)
            inprog++;
        else
            other++;
    }
    O("connects 0-or-EINPROGRESS: %d, other: %d", inprog, other);
    int connected = 0;
    for (int i = 0; i < BURST; i++) {
        int r = wait_ev(c[i], POLLOUT);
        int err = -1;
        socklen_t el = sizeof err;
        getsockopt(c[i], SOL_SOCKET, SO_ERROR, &err, &el);
        if ((r & POLLOUT) && err == 0)
            connected++;
    }
    O("connected without error: %d", connected);
    int acc = 0;
    MUST(fcntl(l, F_SETFL, O_NONBLOCK));
    while (acc < BURST) {
        int x = accept(l, NULL, NULL);
        if (x < 0) {
            if (errno == EAGAIN && (wait_ev(l, POLLIN) & POLLIN))
                continue;
            break;
        }
        s[acc++] = x;
    }
    O("accepted: %d", acc);
    T(accept(l, NULL, NULL));
    /* Every connection works both ways and none was reset. */
    int ok = 0;
    for (int i = 0; i < BURST; i++) {
        char b = (char)('A' + i % 26);
        if (send(c[i], &b, 1, MSG_NOSIGNAL) != 1)
            continue;
        ok++;
    }
    int echoed = 0;
    for (int i = 0; i < acc; i++) {
        char r;
        wait_readable(s[i]);
        if (recv(s[i], &r, 1, MSG_DONTWAIT) == 1 && send(s[i], &r, 1, MSG_NOSIGNAL) == 1)
            echoed++;
    }
    int back = 0, resets = 0;
    for (int i = 0; i < BURST; i++) {
        char r;
        wait_readable(c[i]);
        long n = recv(c[i], &r, 1, MSG_DONTWAIT);
        if (n == 1 && r == (char)('A' + i % 26))
            back++;
        else if (n < 0 && errno == ECONNRESET)
            resets++;
    }
    O("sent: %d echoed: %d own byte back: %d resets: %d", ok, echoed, back, resets);
    for (int i = 0; i < BURST; i++)
        close(c[i]);
    for (int i = 0; i < acc; i++)
        close(s[i]);
    close(l);

    CASE(nm("backlog_queue_before_accept", fam));
    l = listener(fam, SOCK_STREAM, &a);
    int cc[5];
    for (int i = 0; i < 5; i++) {
        cc[i] = (int)MUST(socket(fam, SOCK_STREAM, 0));
        T(connect(cc[i], SA(&a), a.len)); /* completes before accept */
        char b = (char)('0' + i);
        MUST(send(cc[i], &b, 1, 0));
    }
    /* accept returns them in arrival order */
    char order[6] = {0};
    for (int i = 0; i < 5; i++) {
        int x = (int)MUST(accept(l, NULL, NULL));
        wait_readable(x);
        if (recv(x, &order[i], 1, 0) != 1)
            order[i] = '?';
        close(x);
    }
    O("accept order: %s", order);
    for (int i = 0; i < 5; i++)
        close(cc[i]);
    close(l);
}

static void accepts(int fam)
{
    addr_t a;
    char buf[16];

    CASE(nm("accept4_sock_nonblock", fam));
    int l = listener(fam, SOCK_STREAM, &a);
    int c = (int)MUST(socket(fam, SOCK_STREAM, 0));
    MUST(connect(c, SA(&a), a.len));
    int s = (int)T(accept4(l, NULL, NULL, SOCK_NONBLOCK));
    O("%s %s", flflags(s), fdflags(s));
    T(recv(s, buf, sizeof buf, 0));
    close(s);
    close(c);

    CASE(nm("accept4_sock_cloexec", fam));
    c = (int)MUST(socket(fam, SOCK_STREAM, 0));
    MUST(connect(c, SA(&a), a.len));
    s = (int)T(accept4(l, NULL, NULL, SOCK_CLOEXEC));
    O("%s %s", flflags(s), fdflags(s));
    T(fcntl(s, F_GETFD));
    T(fcntl(s, F_SETFD, 0));
    O("%s", fdflags(s));
    close(s);
    close(c);

    CASE(nm("accept4_both_and_addr", fam));
    c = (int)MUST(socket(fam, SOCK_STREAM, 0));
    MUST(connect(c, SA(&a), a.len));
    addr_t pa, ca;
    pa.len = sizeof pa.ss;
    s = (int)T(accept4(l, SA(&pa), &pa.len, SOCK_NONBLOCK | SOCK_CLOEXEC));
    O("%s %s", flflags(s), fdflags(s));
    local_of(c, &ca);
    O("peer %s == client local: %d", addr_desc(&pa), same_addr(&pa, &ca));
    T(accept4(l, NULL, NULL, O_APPEND));
    close(s);
    close(c);

    CASE(nm("accept_does_not_inherit_nonblock", fam));
    MUST(fcntl(l, F_SETFL, O_NONBLOCK));
    c = (int)MUST(socket(fam, SOCK_STREAM, 0));
    MUST(connect(c, SA(&a), a.len));
    wait_readable(l);
    s = (int)T(accept(l, NULL, NULL));
    O("listener %s accepted %s %s", flflags(l), flflags(s), fdflags(s));
    close(s);
    close(c);

    CASE(nm("accept_nonblocking_empty", fam));
    T(accept(l, NULL, NULL));
    T(accept4(l, NULL, NULL, SOCK_CLOEXEC));
    poll1("listener IN", l, POLLIN, 0);
    MUST(fcntl(l, F_SETFL, 0));
    int sl = (int)MUST(socket(fam, SOCK_STREAM | SOCK_NONBLOCK, 0));
    addr_t b;
    loop_addr(fam, &b, 0);
    MUST(bind(sl, SA(&b), b.len));
    MUST(listen(sl, 4));
    T(accept(sl, NULL, NULL));
    close(sl);

    CASE(nm("accept_not_listening", fam));
    int u = (int)MUST(socket(fam, SOCK_STREAM, 0));
    T(accept(u, NULL, NULL));
    loop_addr(fam, &b, 0);
    MUST(bind(u, SA(&b), b.len));
    T(accept(u, NULL, NULL));
    T(accept4(u, NULL, NULL, SOCK_NONBLOCK));
    close(u);
    c = (int)MUST(socket(fam, SOCK_STREAM, 0));
    MUST(connect(c, SA(&a), a.len));
    s = (int)MUST(accept(l, NULL, NULL));
    T(accept(c, NULL, NULL));
    T(accept(s, NULL, NULL));
    T(listen(c, 4));
    close(s);
    close(c);

    CASE(nm("listen_again_and_after_close", fam));
    T(listen(l, 1));
    T(listen(l, 200));
    T(listen(l, -1));
    c = (int)MUST(socket(fam, SOCK_STREAM, 0));
    T(connect(c, SA(&a), a.len));
    s = (int)T(accept(l, NULL, NULL));
    close(s);
    close(c);
    close(l);
    c = (int)MUST(socket(fam, SOCK_STREAM, 0));
    T(connect(c, SA(&a), a.len));
    close(c);
}

static void reuse(int fam)
{
    addr_t a, b;
    char buf[8];
    int one = 1;

    CASE(nm("reuseaddr_time_wait_rebind", fam));
    int l = (int)MUST(socket(fam, SOCK_STREAM, 0));
    T(setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one));
    loop_addr(fam, &a, 0);
    MUST(bind(l, SA(&a), a.len));
    MUST(listen(l, 4));
    local_of(l, &a);
    int c = (int)MUST(socket(fam, SOCK_STREAM, 0));
    MUST(connect(c, SA(&a), a.len));
    int s = (int)MUST(accept(l, NULL, NULL));
    T(close(s)); /* server closes first: its side ends in TIME-WAIT */
    wait_ev(c, POLLRDHUP);
    T(recv(c, buf, sizeof buf, 0));
    T(close(c));
    T(close(l));
    int x = (int)MUST(socket(fam, SOCK_STREAM, 0));
    T(bind(x, SA(&a), a.len)); /* without SO_REUSEADDR: the TIME-WAIT holds it */
    close(x);
    x = (int)MUST(socket(fam, SOCK_STREAM, 0));
    T(setsockopt(x, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one));
    T(bind(x, SA(&a), a.len));
    T(listen(x, 4));
    local_of(x, &b);
    O("same port as before: %d", port_of(&a) == port_of(&b));
    c = (int)MUST(socket(fam, SOCK_STREAM, 0));
    T(connect(c, SA(&a), a.len));
    s = (int)T(accept(x, NULL, NULL));
    close(s);
    close(c);
    close(x);

    CASE(nm("eaddrinuse", fam));
    l = listener(fam, SOCK_STREAM, &a);
    x = (int)MUST(socket(fam, SOCK_STREAM, 0));
    T(bind(x, SA(&a), a.len));
    T(setsockopt(x, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one));
    T(bind(x, SA(&a), a.len)); /* a listener holds it even with SO_REUSEADDR */
    close(x);
    close(l);
    int p = (int)MUST(socket(fam, SOCK_STREAM, 0));
    loop_addr(fam, &a, 0);
    MUST(bind(p, SA(&a), a.len)); /* bound, not listening, no options */
    local_of(p, &a);
    x = (int)MUST(socket(fam, SOCK_STREAM, 0));
    T(bind(x, SA(&a), a.len));
    T(setsockopt(x, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one));
    T(bind(x, SA(&a), a.len)); /* the holder lacks SO_REUSEADDR */
    close(x);
    x = (int)MUST(socket(fam, SOCK_STREAM, 0));
    T(setsockopt(x, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one));
    T(bind(x, SA(&a), a.len)); /* SO_REUSEPORT on one side only */
    close(x);
    close(p);
    x = (int)MUST(socket(fam, SOCK_STREAM, 0));
    T(bind(x, SA(&a), a.len)); /* released by close */
    close(x);

    CASE(nm("reuseaddr_both_bound_not_listening", fam));
    p = (int)MUST(socket(fam, SOCK_STREAM, 0));
    T(setsockopt(p, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one));
    loop_addr(fam, &a, 0);
    MUST(bind(p, SA(&a), a.len));
    local_of(p, &a);
    x = (int)MUST(socket(fam, SOCK_STREAM, 0));
    T(setsockopt(x, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one));
    T(bind(x, SA(&a), a.len));
    T(listen(x, 4));
    T(listen(p, 4)); /* only one may listen */
    close(x);
    close(p);

    CASE(nm("reuseport_two_listeners", fam));
    int l1 = (int)MUST(socket(fam, SOCK_STREAM | SOCK_NONBLOCK, 0));
    int l2 = (int)MUST(socket(fam, SOCK_STREAM | SOCK_NONBLOCK, 0));
    T(setsockopt(l1, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one));
    T(setsockopt(l2, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one));
    O("SO_REUSEPORT=%d", sockopt_int(l1, SOL_SOCKET, SO_REUSEPORT));
    loop_addr(fam, &a, 0);
    T(bind(l1, SA(&a), a.len));
    local_of(l1, &a);
    T(bind(l2, SA(&a), a.len));
    T(listen(l1, 128));
    T(listen(l2, 128));
    local_of(l2, &b);
    O("same port: %d", port_of(&a) == port_of(&b));
    int cs[BURST];
    for (int i = 0; i < BURST; i++) {
        cs[i] = (int)MUST(socket(fam, SOCK_STREAM, 0));
        MUST(connect(cs[i], SA(&a), a.len));
    }
    int n1 = 0, n2 = 0;
    for (int k = 0; k < 1000 && n1 + n2 < BURST; k++) {
        struct pollfd pf[2] = {{.fd = l1, .events = POLLIN}, {.fd = l2, .events = POLLIN}};
        poll(pf, 2, 10);
        int y;
        while ((y = accept(l1, NULL, NULL)) >= 0) {
            n1++;
            close(y);
        }
        while ((y = accept(l2, NULL, NULL)) >= 0) {
            n2++;
            close(y);
        }
    }
    O("total accepted: %d, first accepted some: %d, second accepted some: %d", n1 + n2,
      n1 > 0, n2 > 0);
    for (int i = 0; i < BURST; i++)
        close(cs[i]);
    x = (int)MUST(socket(fam, SOCK_STREAM, 0));
    T(bind(x, SA(&a), a.len)); /* without SO_REUSEPORT */
    close(x);
    close(l1);
    close(l2);
}

static void names(int fam)
{
    addr_t a, la, ca, sa, pa, pc;

    CASE(nm("getsockname_getpeername", fam));
    int l = listener(fam, SOCK_STREAM, &a);
    O("listener %s", addr_desc(&a));
    int c = (int)MUST(socket(fam, SOCK_STREAM, 0));
    local_of(c, &ca);
    O("fresh client %s", addr_desc(&ca));
    pa.len = sizeof pa.ss;
    T(getpeername(c, SA(&pa), &pa.len));
    MUST(connect(c, SA(&a), a.len));
    int s = (int)MUST(accept(l, NULL, NULL));
    local_of(c, &ca);
    local_of(s, &sa);
    peer_of(c, &pc);
    peer_of(s, &pa);
    O("client local %s in ephemeral range: %d", addr_desc(&ca), in_ephemeral(&ca));
    O("client peer %s port == listener port: %d", addr_desc(&pc), port_of(&pc) == port_of(&a));
    O("server local %s port == listener port: %d", addr_desc(&sa), port_of(&sa) == port_of(&a));
    O("server peer == client local: %d", same_addr(&pa, &ca));
    O("client port != listener port: %d", port_of(&ca) != port_of(&a));
    close(c);
    close(s);

    CASE(nm("getsockname_short_buffer", fam));
    struct sockaddr_storage ss;
    socklen_t sl = 4;
    memset(&ss, 0x55, sizeof ss);
    T(getsockname(l, (struct sockaddr *)&ss, &sl));
    O("len=%u family intact: %d next byte untouched: %d", (unsigned)sl,
      ss.ss_family == fam, ((unsigned char *)&ss)[4] == 0x55);
    sl = 0;
    T(getsockname(l, (struct sockaddr *)&ss, &sl));
    O("len=%u", (unsigned)sl);
    sl = (socklen_t)-1;
    T(getsockname(l, (struct sockaddr *)&ss, &sl));
    close(l);

    CASE(nm("bind_port_zero", fam));
    int u = (int)MUST(socket(fam, SOCK_STREAM, 0));
    loop_addr(fam, &la, 0);
    T(bind(u, SA(&la), la.len));
    local_of(u, &la);
    O("%s port>0: %d in ephemeral range: %d", addr_desc(&la), port_of(&la) > 0, in_ephemeral(&la));
    int u2 = (int)MUST(socket(fam, SOCK_STREAM, 0));
    loop_addr(fam, &ca, 0);
    T(bind(u2, SA(&ca), ca.len));
    local_of(u2, &ca);
    O("two port-0 binds differ: %d", port_of(&la) != port_of(&ca));
    close(u);
    close(u2);

    CASE(nm("ephemeral_on_connect_and_listen", fam));
    l = listener(fam, SOCK_STREAM, &a);
    c = (int)MUST(socket(fam, SOCK_STREAM, 0));
    MUST(connect(c, SA(&a), a.len));
    local_of(c, &ca);
    O("autobound by connect: %s in range: %d", addr_desc(&ca), in_ephemeral(&ca));
    u = (int)MUST(socket(fam, SOCK_STREAM, 0));
    T(listen(u, 1));
    local_of(u, &la);
    O("autobound by listen: %s in range: %d", addr_desc(&la), in_ephemeral(&la));
    int ud = (int)MUST(socket(fam, SOCK_DGRAM, 0));
    T(sendto(ud, "x", 1, 0, SA(&a), a.len));
    local_of(ud, &la);
    O("udp autobound by sendto: %s in range: %d", addr_desc(&la), in_ephemeral(&la));
    s = (int)MUST(accept(l, NULL, NULL));
    close(s);
    close(c);
    close(u);
    close(ud);
    close(l);
}

int main(void)
{
    watchdog(25);
    signal(SIGPIPE, SIG_IGN);
    int fams[2] = {AF_INET, AF_INET6};
    for (int i = 0; i < 2; i++) {
        backlog(fams[i]);
        accepts(fams[i]);
        reuse(fams[i]);
        names(fams[i]);
    }
    return 0;
}
