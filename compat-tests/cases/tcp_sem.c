/* TCP semantics over 127.0.0.1 and ::1 (every case runs for both, suffix
 * _v4/_v6): blocking vs non-blocking modes (fcntl, SOCK_NONBLOCK, FIONBIO,
 * MSG_DONTWAIT), EAGAIN on empty receive and full send buffer, non-blocking
 * connect, ECONNREFUSED, EISCONN/EALREADY, ECONNRESET, EPIPE with SIGPIPE
 * handled/ignored/default, MSG_NOSIGNAL, half-close and ENOTCONN; stdio streams
 * over a socket (fdopen, fileno, fclose). */
#include "sem_common.h"

static volatile sig_atomic_t pipes;
static void on_pipe(int sig)
{
    (void)sig;
    pipes++;
}

static void modes(int fam)
{
    int c, s;
    char buf[64];

    CASE(nm("nb_fcntl_eagain", fam));
    tcp_pair(fam, &c, &s);
    O("before %s", flflags(c));
    int fl = (int)T(fcntl(c, F_GETFL));
    T(fcntl(c, F_SETFL, fl | O_NONBLOCK));
    O("after %s", flflags(c));
    T(recv(c, buf, sizeof buf, 0));
    T(read(c, buf, sizeof buf));
    struct iovec iov = {buf, sizeof buf};
    T(readv(c, &iov, 1));
    T(recvfrom(c, buf, sizeof buf, 0, NULL, NULL));
    T(send(s, "data", 4, 0));
    wait_readable(c);
    long n = T(read(c, buf, sizeof buf));
    show("got", buf, n);
    T(read(c, buf, sizeof buf));
    T(fcntl(c, F_SETFL, fl));
    O("cleared %s", flflags(c));
    close(c);
    close(s);

    CASE(nm("nb_sock_nonblock", fam));
    addr_t a;
    int l = listener(fam, SOCK_STREAM, &a);
    c = (int)T(socket(fam, SOCK_STREAM | SOCK_NONBLOCK, 0));
    O("flags %s", flflags(c));
    T(connect(c, SA(&a), a.len));
    wait_ev(c, POLLOUT);
    s = (int)MUST(accept(l, NULL, NULL));
    O("accepted %s", flflags(s));
    T(recv(c, buf, sizeof buf, 0));
    T(send(s, "xy", 2, 0));
    wait_readable(c);
    n = T(recv(c, buf, sizeof buf, 0));
    show("got", buf, n);
    T(recv(c, buf, sizeof buf, 0));
    close(c);
    close(s);
    close(l);

    CASE(nm("nb_fionbio", fam));
    tcp_pair(fam, &c, &s);
    int on = 1;
    T(ioctl(c, FIONBIO, &on));
    O("on %s", flflags(c));
    T(recv(c, buf, sizeof buf, 0));
    on = 0;
    T(ioctl(c, FIONBIO, &on));
    O("off %s", flflags(c));
    T(send(s, "z", 1, 0));
    n = T(recv(c, buf, sizeof buf, 0)); /* blocking, data is on its way */
    show("got", buf, n);
    close(c);
    close(s);

    CASE(nm("msg_dontwait", fam));
    tcp_pair(fam, &c, &s);
    T(recv(c, buf, sizeof buf, MSG_DONTWAIT));
    O("flags still %s", flflags(c));
    T(recvfrom(c, buf, sizeof buf, MSG_DONTWAIT, NULL, NULL));
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    T(recvmsg(c, &mh, MSG_DONTWAIT));
    T(send(s, "dw", 2, MSG_DONTWAIT));
    wait_readable(c);
    n = T(recv(c, buf, sizeof buf, MSG_DONTWAIT));
    show("got", buf, n);
    close(c);
    close(s);

    CASE(nm("nb_full_send_buffer_send", fam));
    tcp_pair(fam, &c, &s);
    int eagain;
    long sent = fill_until_eagain(c, 0, &eagain);
    O("ended with EAGAIN: %d, sent > 0: %d", eagain, sent > 0);
    T(send(c, "x", 1, MSG_DONTWAIT));
    long got = drain(s, sent);
    O("peer received everything sent: %d", got == sent);
    O("writable again: %s", evname((uint16_t)wait_ev(c, POLLOUT)));
    T(send(c, "y", 1, MSG_DONTWAIT));
    close(c);
    close(s);

    CASE(nm("nb_full_send_buffer_write", fam));
    tcp_pair(fam, &c, &s);
    int sb = 4096;
    T(setsockopt(c, SOL_SOCKET, SO_SNDBUF, &sb, sizeof sb));
    MUST(fcntl(c, F_SETFL, O_NONBLOCK));
    sent = fill_until_eagain(c, 1, &eagain);
    O("ended with EAGAIN: %d, sent > 0: %d", eagain, sent > 0);
    T(write(c, "x", 1));
    struct iovec wv[2] = {{"a", 1}, {"b", 1}};
    T(writev(c, wv, 2));
    got = drain(s, sent);
    O("peer received everything sent: %d", got == sent);
    close(c);
    close(s);
}

static void connects(int fam)
{
    addr_t a, dead;
    char buf[16];
    int err;
    socklen_t el;

    CASE(nm("nb_connect_einprogress", fam));
    int l = listener(fam, SOCK_STREAM, &a);
    int c = (int)MUST(socket(fam, SOCK_STREAM | SOCK_NONBLOCK, 0));
    T(connect(c, SA(&a), a.len));
    poll1("POLLOUT", c, POLLOUT, 5000);
    err = -1;
    el = sizeof err;
    T(getsockopt(c, SOL_SOCKET, SO_ERROR, &err, &el));
    O("SO_ERROR=%s", en(err));
    T(connect(c, SA(&a), a.len)); /* completes the connect in the socket layer */
    T(connect(c, SA(&a), a.len));
    addr_t pa;
    peer_of(c, &pa);
    O("peer == listener: %d", same_addr(&pa, &a));
    int s = (int)MUST(accept(l, NULL, NULL));
    T(send(c, "nb", 2, 0));
    wait_readable(s);
    long n = T(recv(s, buf, sizeof buf, 0));
    show("srv got", buf, n);
    close(c);
    close(s);

    CASE(nm("connect_eisconn_blocking", fam));
    c = (int)MUST(socket(fam, SOCK_STREAM, 0));
    T(connect(c, SA(&a), a.len));
    T(connect(c, SA(&a), a.len));
    s = (int)MUST(accept(l, NULL, NULL));
    int c2 = (int)MUST(socket(fam, SOCK_STREAM, 0));
    addr_t other;
    int l2 = listener(fam, SOCK_STREAM, &other);
    T(connect(c, SA(&other), other.len)); /* connected elsewhere: still EISCONN */
    T(connect(c2, SA(&other), other.len));
    close(c2);
    close(l2);
    close(c);
    close(s);
    close(l);

    CASE(nm("connect_refused_blocking", fam));
    int d = dead_tcp_port(fam, &dead);
    c = (int)MUST(socket(fam, SOCK_STREAM, 0));
    T(connect(c, SA(&dead), dead.len));
    err = -1;
    el = sizeof err;
    T(getsockopt(c, SOL_SOCKET, SO_ERROR, &err, &el));
    O("SO_ERROR after=%s", en(err));
    T(connect(c, SA(&dead), dead.len)); /* may be retried */
    T(recv(c, buf, sizeof buf, 0));
    close(c);

    CASE(nm("connect_refused_nonblocking", fam));
    c = (int)MUST(socket(fam, SOCK_STREAM | SOCK_NONBLOCK, 0));
    T(connect(c, SA(&dead), dead.len));
    wait_err(c);
    poll1("IN|OUT", c, POLLIN | POLLOUT, 0);
    err = -1;
    el = sizeof err;
    T(getsockopt(c, SOL_SOCKET, SO_ERROR, &err, &el));
    O("SO_ERROR=%s", en(err));
    err = -1;
    T(getsockopt(c, SOL_SOCKET, SO_ERROR, &err, &el));
    O("SO_ERROR again=%s", en(err));
    close(c);

    CASE(nm("connect_refused_nonblocking_recv", fam));
    c = (int)MUST(socket(fam, SOCK_STREAM | SOCK_NONBLOCK, 0));
    T(connect(c, SA(&dead), dead.len));
    wait_err(c);
    T(recv(c, buf, sizeof buf, 0)); /* the pending error is reported once */
    err = -1;
    el = sizeof err;
    T(getsockopt(c, SOL_SOCKET, SO_ERROR, &err, &el));
    O("SO_ERROR=%s", en(err));
    close(c);

    CASE(nm("connect_refused_nonblocking_send", fam));
    c = (int)MUST(socket(fam, SOCK_STREAM | SOCK_NONBLOCK, 0));
    T(connect(c, SA(&dead), dead.len));
    wait_err(c);
    T(send(c, "x", 1, MSG_NOSIGNAL));
    T(send(c, "x", 1, MSG_NOSIGNAL));
    close(c);
    close(d);

    CASE(nm("connect_ealready", fam));
    /* A listener with backlog 0 holds one queued connection; a further SYN is
     * dropped, so the next non-blocking connect stays in progress. */
    int full = (int)MUST(socket(fam, SOCK_STREAM, 0));
    loop_addr(fam, &a, 0);
    MUST(bind(full, SA(&a), a.len));
    MUST(listen(full, 0));
    local_of(full, &a);
    int q1 = (int)MUST(socket(fam, SOCK_STREAM, 0));
    T(connect(q1, SA(&a), a.len));
    c = (int)MUST(socket(fam, SOCK_STREAM | SOCK_NONBLOCK, 0));
    T(connect(c, SA(&a), a.len));
    T(connect(c, SA(&a), a.len));
    poll1("POLLOUT 10ms", c, POLLOUT, 10);
    err = -1;
    el = sizeof err;
    T(getsockopt(c, SOL_SOCKET, SO_ERROR, &err, &el));
    O("SO_ERROR=%s", en(err));
    T(recv(c, buf, sizeof buf, 0));
    close(c);
    close(q1);
    close(full);
}

static void resets(int fam)
{
    int c, s;
    char buf[64];
    long n;

    CASE(nm("reset_close_with_unread_data", fam));
    tcp_pair(fam, &c, &s);
    T(send(c, "unread", 6, 0));
    wait_bytes(s, 6);
    T(close(s)); /* unread data: RST instead of FIN */
    O("client sees error: %d", wait_err(c));
    poll1("IN|OUT", c, POLLIN | POLLOUT | POLLRDHUP, 0);
    T(recv(c, buf, sizeof buf, 0));
    T(recv(c, buf, sizeof buf, 0));
    T(send(c, "x", 1, MSG_NOSIGNAL));
    close(c);

    CASE(nm("reset_linger0_abort", fam));
    tcp_pair(fam, &c, &s);
    struct linger lg = {1, 0};
    T(setsockopt(c, SOL_SOCKET, SO_LINGER, &lg, sizeof lg));
    T(close(c));
    O("server sees error: %d", wait_err(s));
    int err = -1;
    socklen_t el = sizeof err;
    T(getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &el));
    O("SO_ERROR=%s", en(err));
    T(recv(s, buf, sizeof buf, 0));
    T(send(s, "x", 1, MSG_NOSIGNAL));
    close(s);

    CASE(nm("reset_after_data_received", fam));
    tcp_pair(fam, &c, &s);
    T(send(s, "before-rst", 10, 0));
    wait_bytes(c, 10);
    T(setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof lg));
    T(close(s));
    O("client sees error: %d", wait_err(c));
    n = T(recv(c, buf, sizeof buf, 0));
    if (n > 0)
        show("got", buf, n);
    T(recv(c, buf, sizeof buf, 0));
    T(recv(c, buf, sizeof buf, 0));
    close(c);

    CASE(nm("reset_then_send_econnreset_then_epipe", fam));
    tcp_pair(fam, &c, &s);
    T(setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof lg));
    T(close(s));
    wait_err(c);
    pipes = 0;
    on_signal(SIGPIPE, on_pipe, 0);
    T(send(c, "x", 1, 0));
    O("SIGPIPE after first send: %d", (int)pipes);
    T(send(c, "x", 1, 0));
    O("SIGPIPE after second send: %d", (int)pipes);
    signal(SIGPIPE, SIG_IGN);
    close(c);

    CASE(nm("reset_listener_pending_connection", fam));
    addr_t a;
    int l = listener(fam, SOCK_STREAM, &a);
    c = (int)MUST(socket(fam, SOCK_STREAM, 0));
    T(connect(c, SA(&a), a.len));
    T(close(l)); /* queued, never accepted: reset */
    O("client sees error: %d", wait_err(c));
    T(recv(c, buf, sizeof buf, 0));
    close(c);
}

static void pipes_cases(int fam)
{
    int c, s;

    CASE(nm("epipe_sigpipe_handler", fam));
    tcp_pair(fam, &c, &s);
    T(shutdown(c, SHUT_WR));
    pipes = 0;
    on_signal(SIGPIPE, on_pipe, 0);
    T(send(c, "x", 1, 0));
    O("handler ran %d time(s)", (int)pipes);
    T(write(c, "x", 1));
    O("handler ran %d time(s)", (int)pipes);
    struct iovec iov = {"v", 1};
    T(writev(c, &iov, 1));
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    T(sendmsg(c, &mh, 0));
    O("handler ran %d time(s)", (int)pipes);
    signal(SIGPIPE, SIG_IGN);
    close(c);
    close(s);

    CASE(nm("epipe_sigpipe_ignored", fam));
    tcp_pair(fam, &c, &s);
    signal(SIGPIPE, SIG_IGN);
    T(close(s));
    T(shutdown(c, SHUT_WR));
    T(send(c, "x", 1, 0));
    T(write(c, "x", 1));
    O("still alive");
    close(c);

    CASE(nm("msg_nosignal", fam));
    tcp_pair(fam, &c, &s);
    T(shutdown(c, SHUT_WR));
    pipes = 0;
    on_signal(SIGPIPE, on_pipe, 0);
    T(send(c, "x", 1, MSG_NOSIGNAL));
    T(sendto(c, "x", 1, MSG_NOSIGNAL, NULL, 0));
    T(sendmsg(c, &mh, MSG_NOSIGNAL));
    O("handler ran %d time(s)", (int)pipes);
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    sigprocmask(SIG_BLOCK, &set, &old);
    T(send(c, "x", 1, 0)); /* blocked: stays pending */
    sigset_t pend;
    sigpending(&pend);
    O("SIGPIPE pending while blocked: %d", sigismember(&pend, SIGPIPE));
    O("handler ran %d time(s) before unblock", (int)pipes);
    sigprocmask(SIG_SETMASK, &old, NULL);
    O("handler ran %d time(s) after unblock", (int)pipes);
    signal(SIGPIPE, SIG_IGN);
    close(c);
    close(s);

    CASE(nm("sigpipe_default_kills", fam));
    tcp_pair(fam, &c, &s);
    T(shutdown(c, SHUT_WR));
    pid_t pid = fork();
    if (pid == 0) {
        signal(SIGPIPE, SIG_DFL);
        send(c, "x", 1, 0);
        _exit(7);
    }
    int st;
    waitpid(pid, &st, 0);
    show_status("child", st);
    pid = fork();
    if (pid == 0) {
        signal(SIGPIPE, SIG_DFL);
        send(c, "x", 1, MSG_NOSIGNAL);
        _exit(errno == EPIPE ? 8 : 9);
    }
    waitpid(pid, &st, 0);
    show_status("child with MSG_NOSIGNAL", st);
    close(c);
    close(s);
}

static void halfclose(int fam)
{
    int c, s;
    char buf[64];
    long n;

    CASE(nm("shut_wr_eof", fam));
    tcp_pair(fam, &c, &s);
    T(send(c, "last", 4, 0));
    T(shutdown(c, SHUT_WR));
    n = T(recv(s, buf, sizeof buf, MSG_WAITALL));
    show("srv got", buf, n);
    T(recv(s, buf, sizeof buf, 0));
    T(read(s, buf, sizeof buf));
    T(send(s, "reply", 5, 0));
    n = T(recv(c, buf, sizeof buf, 0));
    show("cli got", buf, n);
    T(send(c, "x", 1, MSG_NOSIGNAL));
    T(shutdown(s, SHUT_WR));
    T(recv(c, buf, sizeof buf, 0));
    close(c);
    close(s);

    CASE(nm("shut_rd", fam));
    tcp_pair(fam, &c, &s);
    T(shutdown(c, SHUT_RD));
    T(recv(c, buf, sizeof buf, 0));
    T(recv(c, buf, sizeof buf, MSG_DONTWAIT));
    poll1("IN", c, POLLIN | POLLRDHUP, 0);
    T(send(c, "still-writes", 12, 0));
    n = T(recv(s, buf, sizeof buf, 0));
    show("srv got", buf, n);
    close(c);
    close(s);

    CASE(nm("shut_rdwr", fam));
    tcp_pair(fam, &c, &s);
    T(shutdown(c, SHUT_RDWR));
    T(recv(c, buf, sizeof buf, 0));
    T(send(c, "x", 1, MSG_NOSIGNAL));
    T(recv(s, buf, sizeof buf, 0));
    poll1("peer IN|OUT|RDHUP", s, POLLIN | POLLOUT | POLLRDHUP, 0);
    poll1("self IN|OUT|RDHUP", c, POLLIN | POLLOUT | POLLRDHUP, 0);
    T(shutdown(c, SHUT_RDWR));
    close(c);
    close(s);

    CASE(nm("shutdown_twice_and_bad_how", fam));
    tcp_pair(fam, &c, &s);
    T(shutdown(c, SHUT_WR));
    T(shutdown(c, SHUT_WR));
    T(shutdown(c, SHUT_RD));
    T(shutdown(c, -1));
    T(shutdown(c, 3));
    close(c);
    close(s);

    CASE(nm("pollrdhup_peer_shut_wr", fam));
    tcp_pair(fam, &c, &s);
    poll1("before", s, POLLIN | POLLRDHUP, 0);
    T(shutdown(c, SHUT_WR));
    wait_ev(s, POLLRDHUP);
    poll1("after", s, POLLIN | POLLRDHUP, 0);
    poll1("IN only", s, POLLIN, 0);
    T(recv(s, buf, sizeof buf, 0));
    poll1("after read", s, POLLIN | POLLRDHUP | POLLOUT, 0);
    close(c);
    close(s);

    CASE(nm("eof_after_data_then_close", fam));
    tcp_pair(fam, &c, &s);
    T(send(c, "abc", 3, 0));
    T(send(c, "def", 3, 0));
    T(close(c));
    wait_ev(s, POLLRDHUP);
    n = T(recv(s, buf, 4, 0));
    show("got", buf, n);
    n = T(recv(s, buf, sizeof buf, 0));
    show("got", buf, n);
    T(recv(s, buf, sizeof buf, 0));
    T(recv(s, buf, sizeof buf, MSG_DONTWAIT));
    close(s);

    CASE(nm("enotconn", fam));
    int u = (int)MUST(socket(fam, SOCK_STREAM, 0));
    T(recv(u, buf, sizeof buf, 0));
    T(recv(u, buf, sizeof buf, MSG_DONTWAIT));
    T(read(u, buf, sizeof buf));
    T(send(u, "x", 1, MSG_NOSIGNAL));
    addr_t pa;
    pa.len = sizeof pa.ss;
    T(getpeername(u, SA(&pa), &pa.len));
    addr_t la;
    loop_addr(fam, &la, 0);
    MUST(bind(u, SA(&la), la.len));
    T(recv(u, buf, sizeof buf, 0));
    T(shutdown(u, SHUT_RDWR));
    close(u);
    int l = listener(fam, SOCK_STREAM, &la);
    T(recv(l, buf, sizeof buf, 0));
    T(send(l, "x", 1, MSG_NOSIGNAL));
    pa.len = sizeof pa.ss;
    T(getpeername(l, SA(&pa), &pa.len));
    close(l);

    CASE(nm("shutdown_unconnected_still_marks", fam));
    /* ENOTCONN, yet the shutdown flags are recorded: recv then sees EOF. */
    u = (int)MUST(socket(fam, SOCK_STREAM, 0));
    T(recv(u, buf, sizeof buf, MSG_DONTWAIT));
    T(shutdown(u, SHUT_RD));
    T(recv(u, buf, sizeof buf, MSG_DONTWAIT));
    T(recv(u, buf, sizeof buf, 0));
    poll1("IN|OUT", u, POLLIN | POLLOUT | POLLRDHUP, 0);
    close(u);

    CASE(nm("shutdown_listener_stops_accept", fam));
    l = listener(fam, SOCK_STREAM, &la);
    T(shutdown(l, SHUT_WR));
    O("SO_ACCEPTCONN=%d", sockopt_int(l, SOL_SOCKET, SO_ACCEPTCONN));
    T(shutdown(l, SHUT_RD));
    O("SO_ACCEPTCONN=%d", sockopt_int(l, SOL_SOCKET, SO_ACCEPTCONN));
    T(accept(l, NULL, NULL));
    u = (int)MUST(socket(fam, SOCK_STREAM, 0));
    T(connect(u, SA(&la), la.len));
    close(u);
    T(listen(l, 4));
    O("SO_ACCEPTCONN=%d", sockopt_int(l, SOL_SOCKET, SO_ACCEPTCONN));
    close(l);
}

/* stdio over a connected socket: fdopen, line I/O both ways, fileno, ftell's ESPIPE,
 * fclose closing the fd, a bad mode. */
static void streams(int fam)
{
    int c, s;
    char buf[64];

    CASE(nm("fdopen_lines", fam));
    tcp_pair(fam, &c, &s);
    FILE *w = fdopen(c, "w");
    FILE *r = fdopen(s, "r");
    O("fdopen w %s r %s", w ? "ok" : en(errno), r ? "ok" : en(errno));
    if (w && r) {
        O("fileno %d %d", fileno(w) == c, fileno(r) == s);
        O("fprintf %d", fprintf(w, "line one\nline two %d\n", 42));
        O("fflush %d", fflush(w));
        for (int i = 0; i < 2; i++) {
            char *g = fgets(buf, sizeof buf, r);
            buf[strcspn(buf, "\n")] = 0;
            O("fgets %s", g ? buf : "NULL");
        }
        errno = 0;
        long t = ftell(r);
        O("ftell %ld %s", t, en(errno));
        O("fclose w %d", fclose(w));
        errno = 0;
        int rc = fcntl(c, F_GETFD);
        O("fcntl after fclose %d %s", rc, en(errno));
        char *g = fgets(buf, sizeof buf, r);
        O("fgets at eof %s feof %d ferror %d", g ? buf : "NULL", feof(r) != 0, ferror(r) != 0);
        O("fclose r %d", fclose(r));
    } else {
        close(c);
        close(s);
    }

    CASE(nm("fdopen_rplus_echo", fam));
    tcp_pair(fam, &c, &s);
    FILE *f = fdopen(c, "r+");
    O("fdopen %s", f ? "ok" : en(errno));
    if (f) {
        O("fputs %d", fputs("ping\n", f) >= 0);
        O("fflush %d", fflush(f));
        long n = T(read(s, buf, sizeof buf));
        show("peer got", buf, n);
        T(write(s, "pong\n", 5));
        char *g = fgets(buf, sizeof buf, f);
        buf[strcspn(buf, "\n")] = 0;
        O("fgets %s", g ? buf : "NULL");
        T(shutdown(s, SHUT_WR));
        int ch = fgetc(f);
        O("fgetc at eof %d feof %d", ch, feof(f) != 0);
        O("fclose %d", fclose(f));
    } else {
        close(c);
    }
    close(s);

    CASE(nm("fdopen_bad_mode", fam));
    tcp_pair(fam, &c, &s);
    errno = 0;
    f = fdopen(c, "z");
    O("fdopen %s %s", f ? "stream" : "NULL", en(errno));
    if (f)
        fclose(f);
    else
        close(c);
    close(s);
}

int main(void)
{
    watchdog(25);
    signal(SIGPIPE, SIG_IGN);
    int fams[2] = {AF_INET, AF_INET6};
    for (int i = 0; i < 2; i++) {
        modes(fams[i]);
        connects(fams[i]);
        resets(fams[i]);
        pipes_cases(fams[i]);
        halfclose(fams[i]);
        streams(fams[i]);
    }
    return 0;
}
