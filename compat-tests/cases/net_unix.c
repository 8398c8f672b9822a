/* AF_UNIX sockets: socketpair (stream/dgram/seqpacket), path and abstract
 * names, SCM_RIGHTS fd passing (the received fd takes the lowest free
 * number), SO_PEERCRED, and EPIPE/SIGPIPE in its three flavours (ignored,
 * handled, MSG_NOSIGNAL) plus SIGPIPE's default action killing a child. */
#include "net_common.h"

#include <sys/ioctl.h>
#include <linux/sockios.h>

static volatile sig_atomic_t sigpipes;
static void on_sigpipe(int sig)
{
    (void)sig;
    sigpipes++;
}

static void pair_cases(void)
{
    int sv[2];
    char buf[64];
    long n;

    CASE("socketpair_stream");
    T(socketpair(AF_UNIX, SOCK_STREAM, 0, sv));
    O("fds=%d,%d %s %s", sv[0], sv[1], flflags(sv[0]), fdflags(sv[0]));
    T(send(sv[0], "a->b", 4, 0));
    T(write(sv[0], "more", 4));
    n = T(recv(sv[1], buf, sizeof buf, 0));
    show("b got", buf, n);
    T(write(sv[1], "b->a", 4));
    n = T(read(sv[0], buf, sizeof buf));
    show("a got", buf, n);
    int q = -1;
    T(write(sv[1], "xyz", 3));
    T(ioctl(sv[0], FIONREAD, &q));
    O("fionread=%d", q);
    T(ioctl(sv[1], SIOCOUTQ, &q));
    O("outq(after read side untouched)=%d", q);
    T(recv(sv[0], buf, sizeof buf, MSG_DONTWAIT));
    T(recv(sv[0], buf, sizeof buf, MSG_DONTWAIT));
    T(close(sv[1]));
    T(recv(sv[0], buf, sizeof buf, 0));
    close(sv[0]);

    CASE("socketpair_dgram_boundaries");
    T(socketpair(AF_UNIX, SOCK_DGRAM, 0, sv));
    T(send(sv[0], "one", 3, 0));
    T(send(sv[0], "three", 5, 0));
    T(send(sv[0], "", 0, 0));
    n = T(recv(sv[1], buf, 2, 0));
    show("trunc", buf, n);
    n = T(recv(sv[1], buf, sizeof buf, MSG_PEEK | MSG_TRUNC));
    n = T(recv(sv[1], buf, sizeof buf, 0));
    show("second", buf, n);
    T(recv(sv[1], buf, sizeof buf, 0));
    T(recv(sv[1], buf, sizeof buf, MSG_DONTWAIT));
    close(sv[0]);
    close(sv[1]);

    CASE("socketpair_seqpacket");
    T(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv));
    T(send(sv[0], "rec1", 4, 0));
    T(send(sv[0], "record2", 7, 0));
    n = T(recv(sv[1], buf, sizeof buf, 0));
    show("r", buf, n);
    struct iovec iov = {buf, 3};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    n = T(recvmsg(sv[1], &mh, 0));
    show("r", buf, n);
    O("MSG_TRUNC=%d MSG_EOR=%d", !!(mh.msg_flags & MSG_TRUNC), !!(mh.msg_flags & MSG_EOR));
    T(shutdown(sv[0], SHUT_WR));
    T(recv(sv[1], buf, sizeof buf, 0));
    close(sv[0]);
    close(sv[1]);

    CASE("socketpair_flags");
    T(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv));
    O("%s %s / %s %s", flflags(sv[0]), fdflags(sv[0]), flflags(sv[1]), fdflags(sv[1]));
    T(read(sv[0], buf, 1));
    close(sv[0]);
    close(sv[1]);

    CASE("socketpair_errors");
    T(socketpair(AF_INET, SOCK_STREAM, 0, sv));
    T(socketpair(AF_UNIX, 77, 0, sv));
    T(socketpair(AF_UNIX, SOCK_STREAM, 5, sv));
    T(socketpair(AF_UNIX, SOCK_STREAM, 0, (int *)1));
    T(socketpair(4242, SOCK_STREAM, 0, sv));

    CASE("socketpair_fill_eagain");
    MUST(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv));
    int small = 4096;
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    {
        char blk[512];
        memset(blk, 'q', sizeof blk);
        long total = 0, r;
        while ((r = send(sv[0], blk, sizeof blk, 0)) > 0)
            total += r;
        O("filled>0=%d then %s", total > 0, en(errno));
        long drained = 0;
        while ((r = recv(sv[1], buf, sizeof buf, 0)) > 0)
            drained += r;
        O("drained==filled: %d then %s", drained == total, en(errno));
    }
    close(sv[0]);
    close(sv[1]);

    CASE("socketpair_shutdown");
    MUST(socketpair(AF_UNIX, SOCK_STREAM, 0, sv));
    T(shutdown(sv[0], SHUT_WR));
    T(recv(sv[1], buf, sizeof buf, 0));
    T(send(sv[1], "still", 5, 0));
    n = T(recv(sv[0], buf, sizeof buf, 0));
    show("a got", buf, n);
    T(shutdown(sv[0], SHUT_RD));
    T(recv(sv[0], buf, sizeof buf, 0));
    close(sv[0]);
    close(sv[1]);
}

static void named_cases(void)
{
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    addr_t a;
    char buf[64];
    long n;

    CASE("unix_stream_path");
    strcpy(un.sun_path, "stream.sock");
    socklen_t ulen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(un.sun_path) + 1);
    int l = (int)T(socket(AF_UNIX, SOCK_STREAM, 0));
    T(bind(l, (struct sockaddr *)&un, ulen));
    T(listen(l, 4));
    local_of(l, &a);
    O("listener %s", addr_desc(&a));
    struct stat st;
    T(stat("stream.sock", &st));
    O("is socket file: %d", S_ISSOCK(st.st_mode));
    int c = (int)T(socket(AF_UNIX, SOCK_STREAM, 0));
    T(connect(c, (struct sockaddr *)&un, ulen));
    a.len = sizeof a.ss;
    int s = (int)T(accept(l, SA(&a), &a.len));
    O("accept peer %s", addr_desc(&a));
    peer_of(c, &a);
    O("client peer %s", addr_desc(&a));
    local_of(c, &a);
    O("client local %s", addr_desc(&a));
    local_of(s, &a);
    O("server local %s", addr_desc(&a));
    T(send(c, "over-path", 9, 0));
    n = T(recv(s, buf, sizeof buf, 0));
    show("got", buf, n);

    CASE("unix_peercred");
    struct ucred cr;
    socklen_t cl = sizeof cr;
    T(getsockopt(s, SOL_SOCKET, SO_PEERCRED, &cr, &cl));
    O("pid_is_self=%d uid_is_self=%d gid_is_self=%d", cr.pid == getpid(), cr.uid == getuid(),
      cr.gid == getgid());
    close(c);
    close(s);

    CASE("unix_bind_connect_errors");
    int x = (int)MUST(socket(AF_UNIX, SOCK_STREAM, 0));
    T(bind(x, (struct sockaddr *)&un, ulen));
    struct sockaddr_un missing = {.sun_family = AF_UNIX, .sun_path = "no-such.sock"};
    T(connect(x, (struct sockaddr *)&missing, sizeof missing));
    struct sockaddr_un notsock = {.sun_family = AF_UNIX, .sun_path = "plain-file"};
    close((int)MUST(open("plain-file", O_CREAT | O_WRONLY, 0644)));
    T(connect(x, (struct sockaddr *)&notsock, sizeof notsock));
    struct sockaddr_un nodir = {.sun_family = AF_UNIX, .sun_path = "no-dir/x.sock"};
    T(bind(x, (struct sockaddr *)&nodir, sizeof nodir));
    close(x);
    /* bound but not listening */
    int y = (int)MUST(socket(AF_UNIX, SOCK_STREAM, 0));
    struct sockaddr_un idle = {.sun_family = AF_UNIX, .sun_path = "idle.sock"};
    MUST(bind(y, (struct sockaddr *)&idle, sizeof idle));
    x = (int)MUST(socket(AF_UNIX, SOCK_STREAM, 0));
    T(connect(x, (struct sockaddr *)&idle, sizeof idle));
    close(x);
    close(y);
    /* listener closed, file remains */
    close(l);
    x = (int)MUST(socket(AF_UNIX, SOCK_STREAM, 0));
    T(connect(x, (struct sockaddr *)&un, ulen));
    close(x);

    CASE("unix_abstract");
    struct sockaddr_un ab = {.sun_family = AF_UNIX};
    const char *name = uniq("abstract");
    memcpy(ab.sun_path + 1, name, strlen(name));
    socklen_t alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(name));
    l = (int)MUST(socket(AF_UNIX, SOCK_STREAM, 0));
    T(bind(l, (struct sockaddr *)&ab, alen));
    T(listen(l, 4));
    local_of(l, &a);
    O("listener %s same=%d", addr_desc(&a),
      a.len == alen && memcmp(&a.ss, &ab, alen) == 0);
    c = (int)MUST(socket(AF_UNIX, SOCK_STREAM, 0));
    T(connect(c, (struct sockaddr *)&ab, alen));
    s = (int)T(accept4(l, NULL, NULL, SOCK_CLOEXEC));
    O("accepted %s", fdflags(s));
    T(write(c, "abs", 3));
    n = T(read(s, buf, sizeof buf));
    show("got", buf, n);
    x = (int)MUST(socket(AF_UNIX, SOCK_STREAM, 0));
    T(bind(x, (struct sockaddr *)&ab, alen));
    close(x);
    close(c);
    close(s);
    close(l);

    CASE("unix_autobind");
    x = (int)MUST(socket(AF_UNIX, SOCK_DGRAM, 0));
    T(bind(x, (struct sockaddr *)&ab, sizeof(sa_family_t)));
    local_of(x, &a);
    O("autobound %s", addr_desc(&a));
    close(x);

    CASE("unix_dgram_path");
    struct sockaddr_un d1 = {.sun_family = AF_UNIX, .sun_path = "d1.sock"};
    struct sockaddr_un d2 = {.sun_family = AF_UNIX, .sun_path = "d2.sock"};
    int u1 = (int)MUST(socket(AF_UNIX, SOCK_DGRAM, 0));
    int u2 = (int)MUST(socket(AF_UNIX, SOCK_DGRAM, 0));
    T(bind(u1, (struct sockaddr *)&d1, sizeof d1));
    T(bind(u2, (struct sockaddr *)&d2, sizeof d2));
    T(sendto(u2, "to-d1", 5, 0, (struct sockaddr *)&d1, sizeof d1));
    addr_t from;
    from.len = sizeof from.ss;
    n = T(recvfrom(u1, buf, sizeof buf, 0, SA(&from), &from.len));
    show("got", buf, n);
    O("from %s", addr_desc(&from));
    struct sockaddr_un nobody = {.sun_family = AF_UNIX, .sun_path = "nobody.sock"};
    T(sendto(u2, "x", 1, 0, (struct sockaddr *)&nobody, sizeof nobody));
    T(connect(u2, (struct sockaddr *)&d1, sizeof d1));
    T(send(u2, "conn", 4, 0));
    n = T(recv(u1, buf, sizeof buf, 0));
    show("got", buf, n);
    close(u1);
    T(send(u2, "x", 1, 0)); /* peer gone */
    T(send(u2, "x", 1, 0));
    close(u2);

    CASE("unix_dgram_emsgsize");
    int sv[2];
    MUST(socketpair(AF_UNIX, SOCK_DGRAM, 0, sv));
    static char big[300000];
    T(send(sv[0], big, sizeof big, 0));
    close(sv[0]);
    close(sv[1]);

    CASE("unix_recvmmsg_sendmmsg");
    MUST(socketpair(AF_UNIX, SOCK_DGRAM, 0, sv));
    struct mmsghdr mm[3];
    struct iovec mi[3];
    char bufs[3][16];
    const char *msgs[2] = {"mm-one", "mm-two"};
    memset(mm, 0, sizeof mm);
    for (int i = 0; i < 2; i++) {
        mi[i].iov_base = (void *)msgs[i];
        mi[i].iov_len = strlen(msgs[i]);
        mm[i].msg_hdr.msg_iov = &mi[i];
        mm[i].msg_hdr.msg_iovlen = 1;
    }
    T(sendmmsg(sv[0], mm, 2, 0));
    memset(mm, 0, sizeof mm);
    for (int i = 0; i < 3; i++) {
        mi[i].iov_base = bufs[i];
        mi[i].iov_len = sizeof bufs[i];
        mm[i].msg_hdr.msg_iov = &mi[i];
        mm[i].msg_hdr.msg_iovlen = 1;
    }
    n = T(recvmmsg(sv[1], mm, 3, MSG_DONTWAIT, NULL));
    for (int i = 0; i < n; i++)
        show("msg", bufs[i], mm[i].msg_len);
    T(recvmmsg(sv[1], mm, 3, MSG_DONTWAIT, NULL));
    close(sv[0]);
    close(sv[1]);
}

static int recv_fd(int sock, int flags, char *data, long *n)
{
    char cbuf[CMSG_SPACE(sizeof(int) * 2)];
    struct iovec iov = {data, 16};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf};
    *n = recvmsg(sock, &mh, flags);
    int fd = -1;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm))
        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS)
            memcpy(&fd, CMSG_DATA(cm), sizeof fd);
    return fd;
}

static void send_fd(int sock, int fd)
{
    char cbuf[CMSG_SPACE(sizeof(int))];
    memset(cbuf, 0, sizeof cbuf);
    struct iovec iov = {"F", 1};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &fd, sizeof fd);
    T(sendmsg(sock, &mh, 0));
}

static void scm_cases(void)
{
    int sv[2], p[2];
    char buf[32];
    long n;

    CASE("scm_rights_lowest_fd");
    MUST(socketpair(AF_UNIX, SOCK_STREAM, 0, sv)); /* 3,4 */
    MUST(pipe(p));                                   /* 5,6 */
    MUST(dup2(p[1], 20));
    close(p[1]);
    send_fd(sv[0], 20);
    int got = recv_fd(sv[1], 0, buf, &n);
    O("recvmsg=%ld data=%c received fd=%d flags=%s", n, n > 0 ? buf[0] : '?', got, fdflags(got));
    T(write(got, "via-passed-fd", 13));
    n = T(read(p[0], buf, sizeof buf));
    show("pipe got", buf, n);
    list_fds("fds");
    close(got);
    close(20);

    CASE("scm_rights_cloexec");
    MUST(pipe(p));
    send_fd(sv[0], p[0]);
    got = recv_fd(sv[1], MSG_CMSG_CLOEXEC, buf, &n);
    O("received fd=%d flags=%s", got, fdflags(got));
    close(got);
    close(p[0]);
    close(p[1]);

    CASE("scm_rights_closed_after_send");
    MUST(pipe(p));
    send_fd(sv[0], p[1]);
    close(p[1]); /* in flight: the reference keeps the pipe open */
    got = recv_fd(sv[1], 0, buf, &n);
    O("received fd=%d", got);
    T(write(got, "late", 4));
    n = T(read(p[0], buf, sizeof buf));
    show("pipe got", buf, n);
    close(got);
    T(read(p[0], buf, sizeof buf));
    close(p[0]);

    CASE("scm_rights_ebadf");
    char cbuf[CMSG_SPACE(sizeof(int))];
    memset(cbuf, 0, sizeof cbuf);
    struct iovec iov = {"F", 1};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    int bad = 99;
    memcpy(CMSG_DATA(cm), &bad, sizeof bad);
    T(sendmsg(sv[0], &mh, 0));
    cm->cmsg_type = 77;
    T(sendmsg(sv[0], &mh, 0));
    T(recv(sv[1], buf, sizeof buf, MSG_DONTWAIT));
    close(sv[0]);
    close(sv[1]);
}

static void sigpipe_cases(void)
{
    int sv[2], p[2];

    CASE("epipe_sigpipe_ignored");
    signal(SIGPIPE, SIG_IGN);
    MUST(socketpair(AF_UNIX, SOCK_STREAM, 0, sv));
    close(sv[1]);
    T(send(sv[0], "x", 1, 0));
    T(write(sv[0], "x", 1));
    close(sv[0]);
    MUST(pipe(p));
    close(p[0]);
    T(write(p[1], "x", 1));
    struct iovec v = {"x", 1};
    T(writev(p[1], &v, 1));
    close(p[1]);

    CASE("epipe_sigpipe_handled");
    on_signal(SIGPIPE, on_sigpipe, 0);
    sigpipes = 0;
    MUST(socketpair(AF_UNIX, SOCK_STREAM, 0, sv));
    close(sv[1]);
    T(send(sv[0], "x", 1, 0));
    O("sigpipes=%d", (int)sigpipes);
    T(write(sv[0], "x", 1));
    O("sigpipes=%d", (int)sigpipes);
    struct msghdr mh = {.msg_iov = &v, .msg_iovlen = 1};
    T(sendmsg(sv[0], &mh, 0));
    O("sigpipes=%d", (int)sigpipes);

    CASE("epipe_msg_nosignal");
    T(send(sv[0], "x", 1, MSG_NOSIGNAL));
    T(sendto(sv[0], "x", 1, MSG_NOSIGNAL, NULL, 0));
    T(sendmsg(sv[0], &mh, MSG_NOSIGNAL));
    O("sigpipes=%d", (int)sigpipes);
    close(sv[0]);
    MUST(pipe(p));
    close(p[0]);
    T(write(p[1], "x", 1));
    O("pipe sigpipes=%d", (int)sigpipes);
    close(p[1]);

    CASE("sigpipe_default_kills");
    signal(SIGPIPE, SIG_DFL);
    MUST(pipe(p));
    close(p[0]); /* before the fork: no reader anywhere */
    pid_t pid = fork();
    if (pid == 0) {
        write(p[1], "x", 1);
        _exit(0); /* not reached */
    }
    close(p[1]);
    int st = 0;
    T(waitpid(pid, &st, 0) == pid);
    show_status("child", st);

    CASE("sigpipe_default_socket_nosignal");
    MUST(socketpair(AF_UNIX, SOCK_STREAM, 0, sv));
    close(sv[1]);
    pid = fork();
    if (pid == 0) {
        long r = send(sv[0], "x", 1, MSG_NOSIGNAL);
        _exit(r == -1 && errno == EPIPE ? 42 : 1);
    }
    T(waitpid(pid, &st, 0) == pid);
    show_status("child", st);
    pid = fork();
    if (pid == 0) {
        send(sv[0], "x", 1, 0);
        _exit(0);
    }
    T(waitpid(pid, &st, 0) == pid);
    show_status("child", st);
    close(sv[0]);
}

int main(void)
{
    pair_cases();
    named_cases();
    scm_cases();
    sigpipe_cases();
    return 0;
}
