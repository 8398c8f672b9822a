/* epoll over TCP/UDP sockets on 127.0.0.1 and ::1 (suffix _v4/_v6):
 * level- vs edge-triggered (one event until drained, re-arm after EAGAIN),
 * EPOLLONESHOT + MOD re-arm, EPOLLEXCLUSIVE (flags only, never wake counts),
 * EPOLLRDHUP, EPOLLHUP/EPOLLERR after reset, nested epoll, one fd in several
 * sets, close vs dup of a registered fd, EEXIST/ENOENT/EINVAL, epoll_pwait
 * with a signal mask. Waits that expect an event use a long timeout (the
 * event is already there or arrives at once); waits that expect none use 0
 * or 10 ms. */
#include "sem_common.h"

static volatile sig_atomic_t usr1;
static void on_usr1(int sig)
{
    (void)sig;
    usr1++;
}

/* epoll_wait; print events sorted by data.u64. */
static long ew(int ep, int max, int timeout)
{
    struct epoll_event ev[16];
    long n = epoll_wait(ep, ev, max, timeout);
    if (n < 0) {
        O("epoll_wait(max=%d) = -1 %s", max, en(errno));
        return n;
    }
    for (long i = 1; i < n; i++)
        for (long j = i; j > 0 && ev[j - 1].data.u64 > ev[j].data.u64; j--) {
            struct epoll_event t = ev[j];
            ev[j] = ev[j - 1];
            ev[j - 1] = t;
        }
    char b[600] = "";
    for (long i = 0; i < n; i++)
        snprintf(b + strlen(b), sizeof b - strlen(b), " {%llu:%s}",
                 (unsigned long long)ev[i].data.u64, evname(ev[i].events));
    O("epoll_wait(max=%d, %s) = %ld%s", max, timeout == 0 ? "0" : timeout <= 10 ? "10ms" : "long", n, b);
    return n;
}

static int ctl(int ep, int op, int fd, uint32_t events, uint64_t data)
{
    struct epoll_event e = {.events = events, .data.u64 = data};
    return epoll_ctl(ep, op, fd, &e);
}

static void lt_et(int fam)
{
    int c, s;
    char buf[64];

    CASE(nm("epoll_lt_socket", fam));
    tcp_pair(fam, &c, &s);
    int ep = (int)MUST(epoll_create1(EPOLL_CLOEXEC));
    T(ctl(ep, EPOLL_CTL_ADD, s, EPOLLIN, 1));
    ew(ep, 8, 0);
    T(send(c, "abcd", 4, 0));
    ew(ep, 8, 2000);
    ew(ep, 8, 0); /* still readable: again */
    T(recv(s, buf, 2, 0));
    ew(ep, 8, 0);
    T(recv(s, buf, sizeof buf, 0));
    ew(ep, 8, 0);
    close(ep);
    close(c);
    close(s);

    CASE(nm("epoll_et_socket_until_drained", fam));
    tcp_pair(fam, &c, &s);
    MUST(fcntl(s, F_SETFL, O_NONBLOCK));
    ep = (int)MUST(epoll_create1(0));
    T(ctl(ep, EPOLL_CTL_ADD, s, EPOLLIN | EPOLLET, 2));
    ew(ep, 8, 0);
    T(send(c, "abcdef", 6, 0));
    ew(ep, 8, 2000);
    ew(ep, 8, 0); /* one event per edge */
    T(recv(s, buf, 2, 0)); /* partial read: no new edge */
    ew(ep, 8, 0);
    T(recv(s, buf, sizeof buf, 0));
    T(recv(s, buf, sizeof buf, 0)); /* EAGAIN: drained */
    ew(ep, 8, 0);
    T(send(c, "g", 1, 0)); /* new data: new edge */
    ew(ep, 8, 2000);
    ew(ep, 8, 0);
    T(recv(s, buf, sizeof buf, 0));
    close(ep);
    close(c);
    close(s);

    CASE(nm("epoll_et_rearm_via_mod", fam));
    tcp_pair(fam, &c, &s);
    ep = (int)MUST(epoll_create1(0));
    T(ctl(ep, EPOLL_CTL_ADD, s, EPOLLIN | EPOLLET, 3));
    T(send(c, "xy", 2, 0));
    ew(ep, 8, 2000);
    ew(ep, 8, 0);
    T(ctl(ep, EPOLL_CTL_MOD, s, EPOLLIN | EPOLLET, 4)); /* MOD re-checks readiness */
    ew(ep, 8, 0);
    ew(ep, 8, 0);
    close(ep);
    close(c);
    close(s);

    CASE(nm("epoll_et_epollout", fam));
    tcp_pair(fam, &c, &s);
    ep = (int)MUST(epoll_create1(0));
    T(ctl(ep, EPOLL_CTL_ADD, c, EPOLLOUT | EPOLLET, 5));
    ew(ep, 8, 0);
    ew(ep, 8, 0);
    int eagain;
    long sent = fill_until_eagain(c, 0, &eagain);
    O("filled until EAGAIN: %d, sent > 0: %d", eagain, sent > 0);
    long got = drain(s, sent);
    O("drained all: %d", got == sent);
    ew(ep, 8, 2000); /* writable again: new edge */
    close(ep);
    close(c);
    close(s);

    CASE(nm("epoll_lt_vs_et_listener", fam));
    addr_t a;
    int l = listener(fam, SOCK_STREAM, &a);
    ep = (int)MUST(epoll_create1(0));
    int ep2 = (int)MUST(epoll_create1(0));
    ctl(ep, EPOLL_CTL_ADD, l, EPOLLIN, 6);
    ctl(ep2, EPOLL_CTL_ADD, l, EPOLLIN | EPOLLET, 7);
    c = (int)MUST(socket(fam, SOCK_STREAM, 0));
    MUST(connect(c, SA(&a), a.len));
    ew(ep, 8, 2000);
    ew(ep2, 8, 2000);
    ew(ep, 8, 0);
    ew(ep2, 8, 0);
    s = (int)MUST(accept(l, NULL, NULL));
    ew(ep, 8, 0);
    close(s);
    close(c);
    close(ep);
    close(ep2);
    close(l);
}

static void oneshot_excl(int fam)
{
    int c, s;
    char buf[16];

    CASE(nm("epoll_oneshot_socket_rearm", fam));
    tcp_pair(fam, &c, &s);
    int ep = (int)MUST(epoll_create1(0));
    T(ctl(ep, EPOLL_CTL_ADD, s, EPOLLIN | EPOLLONESHOT, 10));
    T(send(c, "1", 1, 0));
    ew(ep, 8, 2000);
    ew(ep, 8, 0); /* disabled */
    T(send(c, "2", 1, 0));
    ew(ep, 8, 10);
    T(ctl(ep, EPOLL_CTL_MOD, s, EPOLLIN | EPOLLONESHOT, 11));
    ew(ep, 8, 0);
    ew(ep, 8, 0);
    T(ctl(ep, EPOLL_CTL_ADD, s, EPOLLIN, 12)); /* still registered */
    T(epoll_ctl(ep, EPOLL_CTL_DEL, s, NULL));
    T(epoll_ctl(ep, EPOLL_CTL_DEL, s, NULL));
    close(ep);
    close(c);
    close(s);

    CASE(nm("epoll_exclusive_flags", fam));
    tcp_pair(fam, &c, &s);
    ep = (int)MUST(epoll_create1(0));
    int ep2 = (int)MUST(epoll_create1(0));
    T(ctl(ep, EPOLL_CTL_ADD, s, EPOLLIN | EPOLLEXCLUSIVE, 13));
    T(ctl(ep, EPOLL_CTL_MOD, s, EPOLLIN, 13)); /* MOD of an exclusive entry */
    T(ctl(ep2, EPOLL_CTL_ADD, s, EPOLLIN | EPOLLEXCLUSIVE | EPOLLONESHOT, 14));
    T(ctl(ep2, EPOLL_CTL_ADD, ep, EPOLLIN | EPOLLEXCLUSIVE, 15)); /* epoll target */
    T(ctl(ep2, EPOLL_CTL_ADD, s, EPOLLIN, 16));
    T(ctl(ep2, EPOLL_CTL_MOD, s, EPOLLIN | EPOLLEXCLUSIVE, 16));
    T(send(c, "e", 1, 0));
    ew(ep, 8, 2000); /* the only set with an exclusive entry */
    T(recv(s, buf, sizeof buf, 0));
    close(ep);
    close(ep2);
    close(c);
    close(s);
}

static void hup_err(int fam)
{
    int c, s;
    char buf[16];

    CASE(nm("epoll_rdhup_sequence", fam));
    tcp_pair(fam, &c, &s);
    int ep = (int)MUST(epoll_create1(0));
    T(ctl(ep, EPOLL_CTL_ADD, s, EPOLLIN | EPOLLOUT | EPOLLRDHUP, 20));
    ew(ep, 8, 0);
    T(shutdown(c, SHUT_WR));
    wait_ev(s, POLLRDHUP);
    ew(ep, 8, 0);
    T(recv(s, buf, sizeof buf, 0));
    ew(ep, 8, 0);
    T(shutdown(s, SHUT_WR));
    ew(ep, 8, 0);
    close(ep);
    close(c);
    close(s);

    CASE(nm("epoll_rdhup_not_requested", fam));
    tcp_pair(fam, &c, &s);
    ep = (int)MUST(epoll_create1(0));
    T(ctl(ep, EPOLL_CTL_ADD, s, EPOLLIN, 21));
    T(close(c));
    wait_ev(s, POLLRDHUP);
    ew(ep, 8, 0);
    close(ep);
    close(s);

    CASE(nm("epoll_hup_err_after_reset", fam));
    tcp_pair(fam, &c, &s);
    ep = (int)MUST(epoll_create1(0));
    T(ctl(ep, EPOLL_CTL_ADD, s, EPOLLIN | EPOLLOUT | EPOLLRDHUP, 22));
    T(ctl(ep, EPOLL_CTL_ADD, c, 0, 23)); /* no events asked: ERR/HUP still come */
    struct linger lg = {1, 0};
    T(setsockopt(c, SOL_SOCKET, SO_LINGER, &lg, sizeof lg));
    int d = (int)MUST(dup(c));
    T(close(c));
    T(close(d)); /* last reference: the abort */
    wait_err(s);
    ew(ep, 8, 0);
    T(recv(s, buf, sizeof buf, 0));
    ew(ep, 8, 0);
    close(ep);
    close(s);

    CASE(nm("epoll_err_hup_without_interest", fam));
    tcp_pair(fam, &c, &s);
    ep = (int)MUST(epoll_create1(0));
    T(ctl(ep, EPOLL_CTL_ADD, s, 0, 24));
    ew(ep, 8, 0);
    T(setsockopt(c, SOL_SOCKET, SO_LINGER, &lg, sizeof lg));
    T(close(c));
    wait_err(s);
    ew(ep, 8, 0);
    close(ep);
    close(s);

    CASE(nm("epoll_nonblocking_connect", fam));
    addr_t a, dead;
    int l = listener(fam, SOCK_STREAM, &a);
    ep = (int)MUST(epoll_create1(0));
    c = (int)MUST(socket(fam, SOCK_STREAM | SOCK_NONBLOCK, 0));
    T(connect(c, SA(&a), a.len));
    T(ctl(ep, EPOLL_CTL_ADD, c, EPOLLOUT | EPOLLIN, 25));
    ew(ep, 8, 2000);
    int dd = dead_tcp_port(fam, &dead);
    int r = (int)MUST(socket(fam, SOCK_STREAM | SOCK_NONBLOCK, 0));
    T(connect(r, SA(&dead), dead.len));
    wait_err(r);
    T(ctl(ep, EPOLL_CTL_ADD, r, EPOLLOUT | EPOLLIN | EPOLLRDHUP, 26));
    ew(ep, 8, 0);
    close(dd);
    close(r);
    close(c);
    close(l);
    close(ep);
}

static void sets(int fam)
{
    int c, s;
    char buf[16];

    CASE(nm("epoll_nested_socket", fam));
    tcp_pair(fam, &c, &s);
    int inner = (int)MUST(epoll_create1(0));
    int outer = (int)MUST(epoll_create1(0));
    T(ctl(inner, EPOLL_CTL_ADD, s, EPOLLIN, 30));
    T(ctl(outer, EPOLL_CTL_ADD, inner, EPOLLIN, 31));
    ew(outer, 8, 0);
    T(send(c, "n", 1, 0));
    ew(outer, 8, 2000);
    ew(inner, 8, 0);
    poll1("inner epoll fd", inner, POLLIN, 0);
    T(recv(s, buf, sizeof buf, 0));
    ew(outer, 8, 0);
    T(ctl(inner, EPOLL_CTL_ADD, outer, EPOLLIN, 32)); /* would loop */
    close(inner);
    close(outer);
    close(c);
    close(s);

    CASE(nm("epoll_one_fd_three_sets", fam));
    tcp_pair(fam, &c, &s);
    int e1 = (int)MUST(epoll_create1(0));
    int e2 = (int)MUST(epoll_create1(0));
    int e3 = (int)MUST(epoll_create1(0));
    ctl(e1, EPOLL_CTL_ADD, s, EPOLLIN, 33);
    ctl(e2, EPOLL_CTL_ADD, s, EPOLLIN | EPOLLET, 34);
    ctl(e3, EPOLL_CTL_ADD, s, EPOLLIN | EPOLLONESHOT, 35);
    T(send(c, "m", 1, 0));
    ew(e1, 8, 2000);
    ew(e2, 8, 2000);
    ew(e3, 8, 2000);
    ew(e1, 8, 0);
    ew(e2, 8, 0);
    ew(e3, 8, 0);
    T(epoll_ctl(e1, EPOLL_CTL_DEL, s, NULL));
    ew(e1, 8, 0);
    close(e1);
    close(e2);
    close(e3);
    close(c);
    close(s);

    CASE(nm("epoll_closed_fd_no_events", fam));
    tcp_pair(fam, &c, &s);
    int ep = (int)MUST(epoll_create1(0));
    ctl(ep, EPOLL_CTL_ADD, s, EPOLLIN, 36);
    T(send(c, "z", 1, 0));
    wait_bytes(s, 1);
    T(close(s)); /* the only reference: deregistered */
    ew(ep, 8, 0);
    close(c);
    close(ep);

    CASE(nm("epoll_dup_keeps_socket_registered", fam));
    tcp_pair(fam, &c, &s);
    ep = (int)MUST(epoll_create1(0));
    ctl(ep, EPOLL_CTL_ADD, s, EPOLLIN, 37);
    int d = (int)MUST(dup(s));
    T(close(s));
    T(send(c, "d", 1, 0));
    ew(ep, 8, 2000); /* still reported, under the closed fd's registration */
    T(epoll_ctl(ep, EPOLL_CTL_DEL, d, NULL)); /* keyed by the old fd number */
    T(ctl(ep, EPOLL_CTL_MOD, d, EPOLLIN, 38));
    T(recv(d, buf, sizeof buf, 0));
    close(d);
    ew(ep, 8, 0);
    close(c);
    close(ep);

    CASE(nm("epoll_ctl_errors_socket", fam));
    tcp_pair(fam, &c, &s);
    ep = (int)MUST(epoll_create1(0));
    T(ctl(ep, EPOLL_CTL_ADD, s, EPOLLIN, 40));
    T(ctl(ep, EPOLL_CTL_ADD, s, EPOLLIN, 40));
    T(ctl(ep, EPOLL_CTL_MOD, c, EPOLLIN, 41));
    T(ctl(ep, EPOLL_CTL_DEL, c, EPOLLIN, 41));
    T(ctl(ep, EPOLL_CTL_ADD, ep, EPOLLIN, 42));
    T(ctl(s, EPOLL_CTL_ADD, c, EPOLLIN, 43));
    T(ctl(ep, 17, c, EPOLLIN, 44));
    int u = (int)MUST(socket(fam, SOCK_DGRAM, 0));
    T(ctl(ep, EPOLL_CTL_ADD, u, EPOLLIN | EPOLLOUT, 45));
    struct epoll_event out[2];
    T(epoll_wait(ep, out, 0, 0));
    T(epoll_wait(ep, out, -3, 0));
    T(epoll_wait(s, out, 1, 0));
    ew(ep, 8, 0);
    close(u);
    close(ep);
    close(c);
    close(s);

    CASE(nm("epoll_udp", fam));
    addr_t a, b;
    int x = udp_sock(fam, &a);
    int y = udp_sock(fam, &b);
    ep = (int)MUST(epoll_create1(0));
    ctl(ep, EPOLL_CTL_ADD, x, EPOLLIN | EPOLLET, 46);
    ew(ep, 8, 0);
    T(sendto(y, "d1", 2, 0, SA(&a), a.len));
    ew(ep, 8, 2000);
    T(sendto(y, "d2", 2, 0, SA(&a), a.len));
    ew(ep, 8, 2000); /* each datagram is an edge */
    T(recv(x, buf, sizeof buf, 0));
    ew(ep, 8, 0);
    T(recv(x, buf, sizeof buf, 0));
    close(ep);
    close(x);
    close(y);
}

static void pwait(int fam)
{
    int c, s;
    CASE(nm("epoll_pwait_sigmask", fam));
    tcp_pair(fam, &c, &s);
    int ep = (int)MUST(epoll_create1(0));
    ctl(ep, EPOLL_CTL_ADD, s, EPOLLIN, 50);
    struct epoll_event out[2];
    sigset_t block, empty, old;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR1);
    sigemptyset(&empty);
    on_signal(SIGUSR1, on_usr1, SA_RESTART);
    sigprocmask(SIG_BLOCK, &block, &old);
    usr1 = 0;
    raise(SIGUSR1);
    T(epoll_pwait(ep, out, 2, 10, &block)); /* still blocked: times out */
    O("handled: %d", (int)usr1);
    T(epoll_pwait(ep, out, 2, 5000, &empty)); /* unblocked: EINTR */
    O("handled: %d", (int)usr1);
    T(epoll_pwait(ep, out, 2, 0, &empty));
    T(send(c, "p", 1, 0));
    long n = T(epoll_pwait(ep, out, 2, 2000, &empty));
    if (n > 0)
        O("data=%llu events=%s", (unsigned long long)out[0].data.u64, evname(out[0].events));
    sigset_t now;
    sigprocmask(SIG_SETMASK, &old, &now);
    O("mask restored after pwait: %d", sigismember(&now, SIGUSR1));
    close(ep);
    close(c);
    close(s);
}

int main(void)
{
    watchdog(25);
    signal(SIGPIPE, SIG_IGN);
    int fams[2] = {AF_INET, AF_INET6};
    for (int i = 0; i < 2; i++) {
        lt_et(fams[i]);
        oneshot_excl(fams[i]);
        hup_err(fams[i]);
        sets(fams[i]);
        pwait(fams[i]);
    }
    return 0;
}
