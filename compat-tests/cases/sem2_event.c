/* Event semantics, second series: sockets on 127.0.0.1 and ::1 (suffix
 * _v4/_v6) mixed with eventfds and pipes in epoll, poll and select; edge
 * triggering that fires on every arrival (not only when the queue was
 * empty); EPOLLONESHOT on a listener and with EPOLLET; EPOLLEXCLUSIVE flag
 * rules; epoll fds inside select and poll and inside each other down to the
 * nesting limit; a closed fd's number reused while the old file is still
 * registered; ready-list rotation when maxevents is smaller than the ready
 * set; pipe HUP/ERR next to socket RDHUP; epoll_pwait2; timeouts -1 with
 * something ready; ppoll/pselect/epoll_pwait masks with two signals pending
 * (the one the mask blocks stays pending). */
#include "sem2_common.h"

#include <sys/syscall.h>

static volatile sig_atomic_t usr1, usr2;
static void on_usr1(int sig)
{
    (void)sig;
    usr1++;
}
static void on_usr2(int sig)
{
    (void)sig;
    usr2++;
}

static void mixed(int fam)
{
    int c, s, l, p[2];
    addr_t a, ua, ub;
    char buf[16];
    uint64_t one = 1, cnt;

    CASE(nm("epoll_mixed_kernel_fds_and_sockets", fam));
    tcp_pair_l(fam, &c, &s, &l, &a);
    int x = udp_sock(fam, &ua);
    int y = udp_sock(fam, &ub);
    MUST(pipe(p));
    int efd = (int)MUST(eventfd(0, EFD_NONBLOCK));
    int ep = (int)MUST(epoll_create1(0));
    T(ctl(ep, EPOLL_CTL_ADD, efd, EPOLLIN | EPOLLOUT, 1));
    T(ctl(ep, EPOLL_CTL_ADD, p[0], EPOLLIN, 2));
    T(ctl(ep, EPOLL_CTL_ADD, p[1], EPOLLOUT, 3));
    T(ctl(ep, EPOLL_CTL_ADD, s, EPOLLIN | EPOLLRDHUP, 4));
    T(ctl(ep, EPOLL_CTL_ADD, l, EPOLLIN, 5));
    T(ctl(ep, EPOLL_CTL_ADD, x, EPOLLIN, 6));
    ew(ep, 16, 0);
    T(write(efd, &one, sizeof one));
    T(write(p[1], "p", 1));
    T(send(c, "t", 1, 0));
    T(sendto(y, "u", 1, 0, SA(&ua), ua.len));
    int nc = (int)MUST(socket(fam, SOCK_STREAM, 0));
    MUST(connect(nc, SA(&a), a.len));
    wait_readable(s);
    wait_readable(x);
    wait_readable(l);
    ew(ep, 16, 0);
    T(read(efd, &cnt, sizeof cnt));
    T(read(p[0], buf, sizeof buf));
    T(recv(s, buf, sizeof buf, 0));
    T(recv(x, buf, sizeof buf, 0));
    int acc = (int)MUST(accept(l, NULL, NULL));
    ew(ep, 16, 0);
    T(shutdown(c, SHUT_WR));
    T(close(p[1])); /* the writer goes away: HUP on the read end */
    wait_ev(s, POLLRDHUP);
    ew(ep, 16, 0);
    close(acc);
    close(nc);

    CASE(nm("poll_mixed_eventfd_pipe_sockets", fam));
    MUST(pipe(p));
    int e2 = (int)MUST(eventfd(0, 0));
    struct pollfd pf[5] = {{e2, POLLIN | POLLOUT, 0}, {p[0], POLLIN, 0}, {x, POLLIN | POLLOUT, 0},
                           {l, POLLIN, 0}, {s, POLLIN | POLLRDHUP, 0}};
    T(poll(pf, 5, 0));
    O("eventfd=%s pipe=%s udp=%s listener=%s tcp=%s", evname((uint16_t)pf[0].revents),
      evname((uint16_t)pf[1].revents), evname((uint16_t)pf[2].revents), evname((uint16_t)pf[3].revents),
      evname((uint16_t)pf[4].revents));
    uint64_t big = 0xfffffffffffffffeULL;
    T(write(e2, &big, sizeof big)); /* counter at its maximum: not writable */
    T(write(p[1], "q", 1));
    T(sendto(y, "v", 1, 0, SA(&ua), ua.len));
    wait_readable(x);
    T(poll(pf, 5, 0));
    O("eventfd=%s pipe=%s udp=%s listener=%s tcp=%s", evname((uint16_t)pf[0].revents),
      evname((uint16_t)pf[1].revents), evname((uint16_t)pf[2].revents), evname((uint16_t)pf[3].revents),
      evname((uint16_t)pf[4].revents));

    CASE(nm("select_mixed_eventfd_pipe_sockets", fam));
    fd_set r, w;
    FD_ZERO(&r);
    FD_ZERO(&w);
    int fds[5] = {e2, p[0], x, l, s};
    int maxfd = 0;
    for (int i = 0; i < 5; i++) {
        FD_SET(fds[i], &r);
        FD_SET(fds[i], &w);
        if (fds[i] > maxfd)
            maxfd = fds[i];
    }
    struct timeval tv = {0, 0};
    T(select(maxfd + 1, &r, &w, NULL, &tv));
    O("read: eventfd=%d pipe=%d udp=%d listener=%d tcp=%d", FD_ISSET(e2, &r) != 0, FD_ISSET(p[0], &r) != 0,
      FD_ISSET(x, &r) != 0, FD_ISSET(l, &r) != 0, FD_ISSET(s, &r) != 0);
    O("write: eventfd=%d pipe-r=%d udp=%d listener=%d tcp=%d", FD_ISSET(e2, &w) != 0,
      FD_ISSET(p[0], &w) != 0, FD_ISSET(x, &w) != 0, FD_ISSET(l, &w) != 0, FD_ISSET(s, &w) != 0);
    T(read(e2, &cnt, sizeof cnt));
    T(read(p[0], buf, sizeof buf));
    T(recv(x, buf, sizeof buf, 0));
    T(recv(s, buf, sizeof buf, 0)); /* EOF */
    FD_ZERO(&r);
    for (int i = 0; i < 4; i++)
        FD_SET(fds[i], &r);
    tv = (struct timeval){0, 10000};
    long n = T(select(maxfd + 1, &r, NULL, NULL, &tv));
    O("timed out: %d", n == 0);

    close(ep);
    close(efd);
    close(e2);
    close(p[0]);
    close(p[1]);
    close(c);
    close(s);
    close(l);
    close(x);
    close(y);
}

static void edges(int fam)
{
    int c, s, p[2];
    addr_t ua, ub;
    uint64_t one = 1;

    CASE(nm("epoll_et_fires_per_arrival", fam));
    tcp_pair(fam, &c, &s);
    int x = udp_sock(fam, &ua);
    int y = udp_sock(fam, &ub);
    MUST(pipe(p));
    int efd = (int)MUST(eventfd(0, 0));
    int ep = (int)MUST(epoll_create1(0));
    ctl(ep, EPOLL_CTL_ADD, s, EPOLLIN | EPOLLET, 1);
    ctl(ep, EPOLL_CTL_ADD, x, EPOLLIN | EPOLLET, 2);
    ctl(ep, EPOLL_CTL_ADD, p[0], EPOLLIN | EPOLLET, 3);
    ctl(ep, EPOLL_CTL_ADD, efd, EPOLLIN | EPOLLET, 4);
    for (int round = 0; round < 3; round++) {
        /* nothing is read: each new arrival is an edge of its own */
        T(send(c, "t", 1, 0));
        T(sendto(y, "u", 1, 0, SA(&ua), ua.len));
        T(write(p[1], "p", 1));
        T(write(efd, &one, sizeof one));
        ew_collect(ep, 4);
        ew(ep, 16, 0);
    }
    int v = -1;
    ioctl(s, FIONREAD, &v);
    O("tcp bytes waiting=%d", v);
    close(ep);
    close(efd);
    close(p[0]);
    close(p[1]);
    close(x);
    close(y);
    close(c);
    close(s);

    CASE(nm("epoll_et_output_edges", fam));
    tcp_pair(fam, &c, &s);
    ep = (int)MUST(epoll_create1(0));
    T(ctl(ep, EPOLL_CTL_ADD, c, EPOLLOUT | EPOLLET, 7));
    ew(ep, 8, 0);
    ew(ep, 8, 0);
    T(send(c, "w", 1, 0)); /* writable all along: no new edge */
    char b;
    wait_bytes(s, 1);
    T(recv(s, &b, 1, 0));
    usleep(5000);
    long n = epoll_wait(ep, (struct epoll_event[1]){}, 1, 0);
    O("edge after a send that never filled the buffer: %s", n == 0 ? "none" : "some");
    close(ep);
    close(c);
    close(s);
}

static void oneshot(int fam)
{
    addr_t a;
    int c, s;
    char buf[8];

    CASE(nm("epoll_oneshot_listener", fam));
    int l = listener(fam, SOCK_STREAM, &a);
    int ep = (int)MUST(epoll_create1(0));
    T(ctl(ep, EPOLL_CTL_ADD, l, EPOLLIN | EPOLLONESHOT, 1));
    int c1 = (int)MUST(socket(fam, SOCK_STREAM, 0));
    MUST(connect(c1, SA(&a), a.len));
    ew(ep, 8, 2000);
    int c2 = (int)MUST(socket(fam, SOCK_STREAM, 0));
    MUST(connect(c2, SA(&a), a.len));
    ew(ep, 8, 10); /* disarmed */
    T(ctl(ep, EPOLL_CTL_MOD, l, EPOLLIN | EPOLLONESHOT, 2));
    ew(ep, 8, 0); /* two pending: one event */
    int s1 = accept(l, NULL, NULL);
    O("accepted one: %d", s1 >= 0);
    close(s1);
    T(ctl(ep, EPOLL_CTL_MOD, l, EPOLLIN, 3)); /* plain level-triggered now */
    ew(ep, 8, 0);
    ew(ep, 8, 0);
    MUST(fcntl(l, F_SETFL, O_NONBLOCK));
    int k;
    while ((k = accept(l, NULL, NULL)) >= 0)
        close(k);
    ew(ep, 8, 0);
    close(c1);
    close(c2);
    close(ep);
    close(l);

    CASE(nm("epoll_oneshot_et_socket", fam));
    tcp_pair(fam, &c, &s);
    ep = (int)MUST(epoll_create1(0));
    T(ctl(ep, EPOLL_CTL_ADD, s, EPOLLIN | EPOLLET | EPOLLONESHOT, 4));
    T(send(c, "1", 1, 0));
    ew(ep, 8, 2000);
    T(send(c, "2", 1, 0));
    wait_bytes(s, 2);
    ew(ep, 8, 0); /* disarmed: the new arrival is not reported */
    T(ctl(ep, EPOLL_CTL_MOD, s, EPOLLIN | EPOLLET | EPOLLONESHOT, 5));
    ew(ep, 8, 0); /* re-armed with data waiting: reported */
    ew(ep, 8, 0);
    T(recv(s, buf, sizeof buf, 0));
    T(epoll_ctl(ep, EPOLL_CTL_DEL, s, NULL)); /* DEL of a disarmed entry */
    T(epoll_ctl(ep, EPOLL_CTL_DEL, s, NULL));
    close(ep);
    close(c);
    close(s);
}

static void exclusive(int fam)
{
    int c, s;
    char buf[8];

    CASE(nm("epoll_exclusive_flag_rules", fam));
    tcp_pair(fam, &c, &s);
    int efd = (int)MUST(eventfd(0, 0));
    int ep = (int)MUST(epoll_create1(0));
    T(ctl(ep, EPOLL_CTL_ADD, s, EPOLLIN | EPOLLEXCLUSIVE | EPOLLRDHUP, 1));
    T(ctl(ep, EPOLL_CTL_ADD, s, EPOLLIN | EPOLLEXCLUSIVE | EPOLLPRI, 1));
    T(ctl(ep, EPOLL_CTL_ADD, s, EPOLLIN | EPOLLOUT | EPOLLEXCLUSIVE | EPOLLET, 1));
    T(ctl(ep, EPOLL_CTL_ADD, efd, EPOLLIN | EPOLLEXCLUSIVE | EPOLLERR | EPOLLHUP, 2));
    T(ctl(ep, EPOLL_CTL_MOD, s, EPOLLIN | EPOLLOUT | EPOLLET, 1));
    T(ctl(ep, EPOLL_CTL_MOD, efd, EPOLLIN | EPOLLEXCLUSIVE, 2));
    ew(ep, 8, 0);
    T(send(c, "x", 1, 0));
    uint64_t one = 1;
    T(write(efd, &one, sizeof one));
    wait_bytes(s, 1);
    ew(ep, 8, 0);
    T(epoll_ctl(ep, EPOLL_CTL_DEL, s, NULL));
    T(ctl(ep, EPOLL_CTL_ADD, s, EPOLLIN, 3)); /* back as an ordinary entry */
    T(ctl(ep, EPOLL_CTL_MOD, s, EPOLLIN | EPOLLRDHUP, 4));
    ew(ep, 8, 0);
    T(recv(s, buf, sizeof buf, 0));
    close(ep);
    close(efd);
    close(c);
    close(s);
}

static void nesting(int fam)
{
    addr_t ua, ub;
    char buf[8];

    CASE(nm("epoll_fd_in_select_and_poll", fam));
    int x = udp_sock(fam, &ua);
    int y = udp_sock(fam, &ub);
    int inner = (int)MUST(epoll_create1(0));
    int outer = (int)MUST(epoll_create1(0));
    T(ctl(inner, EPOLL_CTL_ADD, x, EPOLLIN, 1));
    T(ctl(outer, EPOLL_CTL_ADD, inner, EPOLLIN, 2));
    fd_set r, w;
    FD_ZERO(&r);
    FD_ZERO(&w);
    FD_SET(inner, &r);
    FD_SET(outer, &r);
    FD_SET(inner, &w);
    int maxfd = inner > outer ? inner : outer;
    struct timeval tv = {0, 0};
    T(select(maxfd + 1, &r, &w, NULL, &tv));
    struct pollfd pf[2] = {{inner, POLLIN | POLLOUT, 0}, {outer, POLLIN, 0}};
    T(poll(pf, 2, 0));
    T(sendto(y, "e", 1, 0, SA(&ua), ua.len));
    wait_readable(x);
    FD_ZERO(&r);
    FD_SET(inner, &r);
    FD_SET(outer, &r);
    FD_ZERO(&w);
    FD_SET(inner, &w);
    T(select(maxfd + 1, &r, &w, NULL, &tv));
    O("inner readable=%d outer readable=%d inner writable=%d", FD_ISSET(inner, &r) != 0,
      FD_ISSET(outer, &r) != 0, FD_ISSET(inner, &w) != 0);
    T(poll(pf, 2, 0));
    O("inner=%s outer=%s", evname((uint16_t)pf[0].revents), evname((uint16_t)pf[1].revents));
    T(recv(x, buf, sizeof buf, 0));
    T(poll(pf, 2, 0));
    close(outer);
    close(inner);
    close(x);
    close(y);

    CASE(nm("epoll_nesting_depth_limit", fam));
    int c, s;
    tcp_pair(fam, &c, &s);
    int eps[8];
    for (int i = 0; i < 8; i++)
        eps[i] = (int)MUST(epoll_create1(0));
    T(ctl(eps[0], EPOLL_CTL_ADD, s, EPOLLIN, 100));
    int top = 0, chain = 1;
    for (int i = 1; i < 8; i++) {
        errno = 0;
        int r2 = ctl(eps[i], EPOLL_CTL_ADD, eps[i - 1], EPOLLIN, (uint64_t)i);
        O("add level %d into level %d = %d %s", i - 1, i, r2, r2 < 0 ? en(errno) : "");
        if (r2 == 0 && chain)
            top = i;
        else
            chain = 0;
    }
    T(send(c, "deep", 4, 0));
    wait_readable(s);
    O("deepest accepted level %d reports:", top);
    ew(eps[top], 8, 2000);
    T(ctl(eps[0], EPOLL_CTL_ADD, eps[top], EPOLLIN, 200)); /* a cycle */
    for (int i = 0; i < 8; i++)
        close(eps[i]);
    close(c);
    close(s);
}

static void reuse(int fam)
{
    int c, s;
    char buf[8];

    CASE(nm("epoll_closed_fd_number_reused", fam));
    tcp_pair(fam, &c, &s);
    int ep = (int)MUST(epoll_create1(0));
    T(ctl(ep, EPOLL_CTL_ADD, s, EPOLLIN, 1));
    int num = s;
    T(close(s)); /* the last reference: the entry goes away */
    addr_t ua, ub;
    int fresh = udp_sock(fam, &ua);
    O("new socket took the number: %d", fresh == num);
    ew(ep, 8, 0);
    T(ctl(ep, EPOLL_CTL_ADD, fresh, EPOLLIN, 2)); /* no EEXIST */
    int y = udp_sock(fam, &ub);
    T(sendto(y, "n", 1, 0, SA(&ua), ua.len));
    ew(ep, 8, 2000);
    close(ep);
    close(c);
    close(fresh);
    close(y);

    CASE(nm("epoll_dup_alive_then_number_reused", fam));
    tcp_pair(fam, &c, &s);
    ep = (int)MUST(epoll_create1(0));
    T(ctl(ep, EPOLL_CTL_ADD, s, EPOLLIN, 10));
    int d = (int)MUST(dup(s));
    num = s;
    T(close(s)); /* the file lives on through the dup: still registered */
    T(epoll_ctl(ep, EPOLL_CTL_DEL, num, NULL)); /* that number is closed */
    int efd = (int)MUST(eventfd(0, 0));
    O("eventfd took the number: %d", efd == num);
    T(ctl(ep, EPOLL_CTL_ADD, efd, EPOLLIN, 11)); /* same number, other file */
    T(send(c, "d", 1, 0));
    uint64_t one = 1;
    T(write(efd, &one, sizeof one));
    wait_bytes(d, 1);
    ew(ep, 8, 2000);
    T(epoll_ctl(ep, EPOLL_CTL_DEL, efd, NULL)); /* removes the eventfd's entry */
    ew(ep, 8, 0);
    T(epoll_ctl(ep, EPOLL_CTL_DEL, d, NULL)); /* the socket's entry is keyed by the old number */
    T(recv(d, buf, sizeof buf, 0));
    close(d);
    ew(ep, 8, 0);
    close(efd);
    close(ep);
    close(c);
}

static void rotation(int fam)
{
    addr_t ua[3], ub;

    CASE(nm("epoll_maxevents_rotation", fam));
    int y = udp_sock(fam, &ub);
    int xs[3];
    int ep = (int)MUST(epoll_create1(0));
    for (int i = 0; i < 3; i++) {
        xs[i] = udp_sock(fam, &ua[i]);
        MUST(sendto(y, "r", 1, 0, SA(&ua[i]), ua[i].len));
        wait_readable(xs[i]);
    }
    for (int i = 0; i < 3; i++)
        T(ctl(ep, EPOLL_CTL_ADD, xs[i], EPOLLIN, (uint64_t)(i + 1)));
    char seq[64] = "";
    for (int k = 0; k < 7; k++) {
        struct epoll_event ev;
        if (epoll_wait(ep, &ev, 1, 0) == 1)
            snprintf(seq + strlen(seq), sizeof seq - strlen(seq), "%llu ", (unsigned long long)ev.data.u64);
        else
            strcat(seq, "- ");
    }
    O("max=1 seven times: %s", seq);
    struct epoll_event ev2[2];
    long n = epoll_wait(ep, ev2, 2, 0);
    O("max=2: %ld%s", n, evlist(ev2, n, 0));
    n = epoll_wait(ep, ev2, 2, 0);
    O("max=2: %ld%s", n, evlist(ev2, n, 0));
    for (int i = 0; i < 3; i++)
        close(xs[i]);
    close(y);
    close(ep);
}

static void waits(int fam)
{
    int c, s;

    CASE(nm("timeout_minus_one_with_ready_fd", fam));
    tcp_pair(fam, &c, &s);
    T(send(c, "r", 1, 0));
    wait_readable(s);
    struct pollfd p = {s, POLLIN, 0};
    T(poll(&p, 1, -1));
    T(ppoll(&p, 1, NULL, NULL));
    fd_set r;
    FD_ZERO(&r);
    FD_SET(s, &r);
    T(select(s + 1, &r, NULL, NULL, NULL));
    FD_ZERO(&r);
    FD_SET(s, &r);
    T(pselect(s + 1, &r, NULL, NULL, NULL, NULL));
    int ep = (int)MUST(epoll_create1(0));
    ctl(ep, EPOLL_CTL_ADD, s, EPOLLIN, 1);
    ew(ep, 4, -1);
    struct epoll_event ev;
    T(epoll_pwait(ep, &ev, 1, -1, NULL));
    T(epoll_pwait2(ep, &ev, 1, NULL, NULL));
    close(ep);
    close(c);
    close(s);

    CASE(nm("epoll_pwait2_timeouts_and_mask", fam));
    tcp_pair(fam, &c, &s);
    ep = (int)MUST(epoll_create1(0));
    ctl(ep, EPOLL_CTL_ADD, s, EPOLLIN, 2);
    struct timespec ts = {0, 10000000};
    long n = T(epoll_pwait2(ep, &ev, 1, &ts, NULL));
    O("timed out: %d", n == 0);
    ts = (struct timespec){0, 0};
    T(epoll_pwait2(ep, &ev, 1, &ts, NULL));
    ts = (struct timespec){0, 1000000000}; /* tv_nsec out of range */
    T(epoll_pwait2(ep, &ev, 1, &ts, NULL));
    ts = (struct timespec){-1, 0};
    T(epoll_pwait2(ep, &ev, 1, &ts, NULL));
    sigset_t block, empty, old;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR1);
    sigemptyset(&empty);
    on_signal(SIGUSR1, on_usr1, SA_RESTART);
    sigprocmask(SIG_BLOCK, &block, &old);
    usr1 = 0;
    raise(SIGUSR1);
    ts = (struct timespec){0, 10000000};
    n = T(epoll_pwait2(ep, &ev, 1, &ts, &block));
    O("timed out: %d handled: %d", n == 0, (int)usr1);
    ts = (struct timespec){5, 0};
    T(epoll_pwait2(ep, &ev, 1, &ts, &empty));
    O("handled: %d", (int)usr1);
    T(send(c, "q", 1, 0));
    n = T(epoll_pwait2(ep, &ev, 1, &ts, &empty));
    if (n == 1)
        O("data=%llu events=%s", (unsigned long long)ev.data.u64, evname(ev.events));
    sigprocmask(SIG_SETMASK, &old, NULL);
    signal(SIGUSR1, SIG_IGN);
    close(ep);
    close(c);
    close(s);
}

static void two_signals(int fam)
{
    int c, s, p[2];
    sigset_t both, only1, old, pend;
    sigemptyset(&both);
    sigaddset(&both, SIGUSR1);
    sigaddset(&both, SIGUSR2);
    sigemptyset(&only1);
    sigaddset(&only1, SIGUSR1);
    on_signal(SIGUSR1, on_usr1, SA_RESTART);
    on_signal(SIGUSR2, on_usr2, SA_RESTART);
    tcp_pair(fam, &c, &s);
    MUST(pipe(p));
    sigprocmask(SIG_BLOCK, &both, &old);

    CASE(nm("ppoll_mask_two_pending_signals", fam));
    usr1 = usr2 = 0;
    raise(SIGUSR1);
    raise(SIGUSR2);
    struct pollfd pf[2] = {{s, POLLIN, 0}, {p[0], POLLIN, 0}};
    struct timespec ts = {5, 0};
    T(ppoll(pf, 2, &ts, &only1)); /* USR2 is let through: EINTR */
    sigpending(&pend);
    O("handled usr1=%d usr2=%d; usr1 still pending: %d", (int)usr1, (int)usr2, sigismember(&pend, SIGUSR1));

    CASE(nm("pselect_mask_two_pending_signals", fam));
    raise(SIGUSR2);
    fd_set r;
    FD_ZERO(&r);
    FD_SET(s, &r);
    FD_SET(p[0], &r);
    int maxfd = s > p[0] ? s : p[0];
    T(pselect(maxfd + 1, &r, NULL, NULL, &ts, &only1));
    sigpending(&pend);
    O("handled usr1=%d usr2=%d; usr1 still pending: %d", (int)usr1, (int)usr2, sigismember(&pend, SIGUSR1));

    CASE(nm("epoll_pwait_mask_two_pending_signals", fam));
    raise(SIGUSR2);
    int ep = (int)MUST(epoll_create1(0));
    ctl(ep, EPOLL_CTL_ADD, s, EPOLLIN, 1);
    ctl(ep, EPOLL_CTL_ADD, p[0], EPOLLIN, 2);
    struct epoll_event ev[2];
    T(epoll_pwait(ep, ev, 2, 5000, &only1));
    sigpending(&pend);
    O("handled usr1=%d usr2=%d; usr1 still pending: %d", (int)usr1, (int)usr2, sigismember(&pend, SIGUSR1));
    T(epoll_pwait(ep, ev, 2, 10, &only1)); /* nothing let through: times out */
    sigprocmask(SIG_SETMASK, &old, NULL);
    O("after unblocking: usr1=%d", (int)usr1);
    signal(SIGUSR1, SIG_IGN);
    signal(SIGUSR2, SIG_IGN);
    close(ep);
    close(p[0]);
    close(p[1]);
    close(c);
    close(s);
}

static void errors(void)
{
    CASE("epoll_misc_errors");
    int ep = (int)MUST(epoll_create1(0));
    int f = (int)MUST(open("regular-file", O_CREAT | O_RDWR | O_TRUNC, 0600));
    T(ctl(ep, EPOLL_CTL_ADD, f, EPOLLIN, 1));
    close(f);
    unlink("regular-file");
    int dead = (int)MUST(eventfd(0, 0));
    close(dead);
    T(ctl(ep, EPOLL_CTL_ADD, dead, EPOLLIN, 2));
    T(ctl(dead, EPOLL_CTL_ADD, 0, EPOLLIN, 2));
    T(epoll_create(0));
    T(epoll_create(-1));
    T(epoll_create1(1));
    int e = (int)MUST(eventfd(0, 0));
    T(epoll_ctl(ep, EPOLL_CTL_ADD, e, NULL));
    T(epoll_wait(ep, NULL, 1, 0));
    struct epoll_event ev;
    T(epoll_wait(ep, &ev, INT_MAX, 0));
    int s = (int)MUST(socket(AF_INET, SOCK_STREAM, 0));
    T(ctl(ep, EPOLL_CTL_ADD, s, EPOLLIN | EPOLLOUT, 3));
    ew(ep, 4, 0); /* a fresh TCP socket */
    close(s);
    close(e);
    close(ep);
}

int main(void)
{
    watchdog(25);
    signal(SIGPIPE, SIG_IGN);
    int fams[2] = {AF_INET, AF_INET6};
    for (int i = 0; i < 2; i++) {
        mixed(fams[i]);
        edges(fams[i]);
        oneshot(fams[i]);
        exclusive(fams[i]);
        nesting(fams[i]);
        reuse(fams[i]);
        rotation(fams[i]);
        waits(fams[i]);
        two_signals(fams[i]);
    }
    errors();
    return 0;
}
