/* TCP data-path semantics over 127.0.0.1 and ::1 (suffix _v4/_v6): MSG_PEEK,
 * MSG_WAITALL with a writer thread sending in pieces, MSG_TRUNC on TCP,
 * scatter/gather with readv/writev/sendmsg/recvmsg (msg_flags checked),
 * FIONREAD/SIOCINQ after the data arrived, zero-length I/O, stream
 * (non-)boundaries. */
#include "sem_common.h"

struct pieces {
    int fd;
    const char *parts[4];
    int shut; /* shutdown(SHUT_WR) after the last piece */
};

static void *piece_writer(void *arg)
{
    struct pieces *p = arg;
    for (int i = 0; i < 4 && p->parts[i]; i++) {
        usleep(5000);
        send(p->fd, p->parts[i], strlen(p->parts[i]), MSG_NOSIGNAL);
    }
    if (p->shut)
        shutdown(p->fd, SHUT_WR);
    return NULL;
}

static void peek(int fam)
{
    int c, s;
    char buf[64];
    long n;

    CASE(nm("msg_peek", fam));
    tcp_pair(fam, &c, &s);
    T(recv(s, buf, sizeof buf, MSG_PEEK | MSG_DONTWAIT));
    T(send(c, "peekaboo", 8, 0));
    wait_bytes(s, 8);
    n = T(recv(s, buf, 4, MSG_PEEK));
    show("peek4", buf, n);
    n = T(recv(s, buf, sizeof buf, MSG_PEEK));
    show("peek-all", buf, n);
    n = T(recv(s, buf, 3, 0));
    show("read3", buf, n);
    n = T(recv(s, buf, sizeof buf, MSG_PEEK | MSG_DONTWAIT));
    show("peek-rest", buf, n);
    n = T(recv(s, buf, sizeof buf, 0));
    show("read-rest", buf, n);
    T(recv(s, buf, sizeof buf, MSG_PEEK | MSG_DONTWAIT));
    T(close(c));
    wait_ev(s, POLLRDHUP);
    T(recv(s, buf, sizeof buf, MSG_PEEK));
    T(recv(s, buf, sizeof buf, 0));
    close(s);

    CASE(nm("msg_peek_waitall_combination", fam));
    tcp_pair(fam, &c, &s);
    T(send(c, "abcdef", 6, 0));
    wait_bytes(s, 6);
    n = T(recv(s, buf, 6, MSG_PEEK | MSG_WAITALL));
    show("peek", buf, n);
    int v = -1;
    T(ioctl(s, FIONREAD, &v));
    O("FIONREAD after peek=%d", v);
    close(c);
    close(s);
}

static void waitall(int fam)
{
    int c, s;
    char buf[64];
    long n;
    pthread_t th;

    CASE(nm("msg_waitall_pieces", fam));
    tcp_pair(fam, &c, &s);
    struct pieces p = {c, {"one-", "two-", "three-", "four"}, 0};
    pthread_create(&th, NULL, piece_writer, &p);
    n = T(recv(s, buf, 18, MSG_WAITALL));
    pthread_join(th, NULL);
    show("got", buf, n);
    close(c);
    close(s);

    CASE(nm("msg_waitall_cut_by_eof", fam));
    tcp_pair(fam, &c, &s);
    struct pieces q = {c, {"ab", "cd", NULL, NULL}, 1};
    pthread_create(&th, NULL, piece_writer, &q);
    n = T(recv(s, buf, 10, MSG_WAITALL));
    pthread_join(th, NULL);
    show("got", buf, n);
    T(recv(s, buf, 10, MSG_WAITALL));
    close(c);
    close(s);

    CASE(nm("msg_waitall_recvmsg_iov", fam));
    tcp_pair(fam, &c, &s);
    struct pieces r = {c, {"12345", "67", "890", NULL}, 0};
    pthread_create(&th, NULL, piece_writer, &r);
    char a1[4], a2[6];
    struct iovec iov[2] = {{a1, 4}, {a2, 6}};
    struct msghdr mh = {.msg_iov = iov, .msg_iovlen = 2};
    n = T(recvmsg(s, &mh, MSG_WAITALL));
    pthread_join(th, NULL);
    show("iov0", a1, 4);
    show("iov1", a2, n - 4);
    O("msg_flags=0x%x", mh.msg_flags);
    close(c);
    close(s);

    CASE(nm("msg_waitall_nonblocking_returns_available", fam));
    tcp_pair(fam, &c, &s);
    T(send(c, "xyz", 3, 0));
    wait_bytes(s, 3);
    n = T(recv(s, buf, 10, MSG_WAITALL | MSG_DONTWAIT));
    show("got", buf, n);
    T(recv(s, buf, 10, MSG_WAITALL | MSG_DONTWAIT));
    close(c);
    close(s);
}

static void trunc_tcp(int fam)
{
    int c, s;
    char buf[64];
    long n;

    CASE(nm("msg_trunc_tcp_discards", fam));
    tcp_pair(fam, &c, &s);
    T(send(c, "0123456789", 10, 0));
    wait_bytes(s, 10);
    memset(buf, '.', sizeof buf);
    T(recv(s, buf, 4, MSG_TRUNC));
    show("buffer untouched", buf, 4);
    n = T(recv(s, buf, sizeof buf, 0));
    show("rest", buf, n);
    close(c);
    close(s);
}

static void sg(int fam)
{
    int c, s;
    char buf[64];
    long n;

    CASE(nm("writev_readv_scatter_gather", fam));
    tcp_pair(fam, &c, &s);
    struct iovec w[4] = {{"Hello", 5}, {", ", 2}, {"", 0}, {"world!", 6}};
    T(writev(c, w, 4));
    wait_bytes(s, 13);
    char r1[3], r2[4], r3[20];
    struct iovec rv[3] = {{r1, 3}, {r2, 4}, {r3, 20}};
    n = T(readv(s, rv, 3));
    show("r1", r1, 3);
    show("r2", r2, 4);
    show("r3", r3, n - 7);
    T(writev(c, w, 0));
    T(readv(s, rv, 0));
    struct iovec big[1] = {{buf, 0}};
    T(writev(c, big, -1));
    close(c);
    close(s);

    CASE(nm("sendmsg_recvmsg_flags", fam));
    tcp_pair(fam, &c, &s);
    struct iovec sv[3] = {{"abc", 3}, {"de", 2}, {"fgh", 3}};
    struct msghdr sm = {.msg_iov = sv, .msg_iovlen = 3};
    T(sendmsg(c, &sm, 0));
    wait_bytes(s, 8);
    char q1[5], q2[10];
    struct iovec qv[2] = {{q1, 5}, {q2, 10}};
    char namebuf[64];
    struct msghdr rm = {.msg_name = namebuf, .msg_namelen = sizeof namebuf, .msg_iov = qv,
                        .msg_iovlen = 2, .msg_flags = 0x7fff};
    n = T(recvmsg(s, &rm, 0));
    show("q1", q1, 5);
    show("q2", q2, n - 5);
    O("msg_flags=0x%x msg_namelen=%u controllen=%u", rm.msg_flags, (unsigned)rm.msg_namelen,
      (unsigned)rm.msg_controllen);
    T(send(c, "0123456789", 10, 0));
    wait_bytes(s, 10);
    qv[0].iov_len = 2;
    rm.msg_iovlen = 1;
    n = T(recvmsg(s, &rm, 0)); /* short buffer: no MSG_TRUNC on a stream */
    show("part", q1, n);
    O("msg_flags=0x%x", rm.msg_flags);
    n = T(recvmsg(s, &rm, MSG_PEEK));
    O("msg_flags=0x%x", rm.msg_flags);
    close(c);
    close(s);

    CASE(nm("sendmsg_with_name_on_connected_tcp", fam));
    tcp_pair(fam, &c, &s);
    addr_t any;
    loop_addr(fam, &any, 9);
    sm = (struct msghdr){.msg_name = SA(&any), .msg_namelen = any.len, .msg_iov = sv, .msg_iovlen = 1};
    T(sendmsg(c, &sm, 0)); /* the address is ignored on a connected stream */
    T(sendto(c, "Z", 1, 0, SA(&any), any.len));
    wait_bytes(s, 4);
    n = T(recv(s, buf, sizeof buf, 0));
    show("got", buf, n);
    close(c);
    close(s);

    CASE(nm("stream_no_boundaries", fam));
    tcp_pair(fam, &c, &s);
    T(send(c, "aa", 2, 0));
    T(send(c, "bbb", 3, 0));
    T(send(c, "c", 1, 0));
    wait_bytes(s, 6);
    n = T(recv(s, buf, sizeof buf, 0));
    show("one read", buf, n);
    close(c);
    close(s);
}

static void fionread(int fam)
{
    int c, s, v;
    char buf[64];

    CASE(nm("fionread_siocinq", fam));
    tcp_pair(fam, &c, &s);
    v = -1;
    T(ioctl(s, FIONREAD, &v));
    O("empty=%d", v);
    T(send(c, "12345", 5, 0));
    wait_bytes(s, 5);
    v = -1;
    T(ioctl(s, FIONREAD, &v));
    O("after 5=%d", v);
    v = -1;
    T(ioctl(s, SIOCINQ, &v));
    O("SIOCINQ=%d", v);
    T(recv(s, buf, 2, 0));
    v = -1;
    T(ioctl(s, FIONREAD, &v));
    O("after reading 2=%d", v);
    T(send(c, "678", 3, 0));
    wait_bytes(s, 6);
    v = -1;
    T(ioctl(s, FIONREAD, &v));
    O("after 3 more=%d", v);
    T(shutdown(c, SHUT_WR));
    wait_ev(s, POLLRDHUP);
    v = -1;
    T(ioctl(s, FIONREAD, &v));
    O("after FIN=%d", v);
    close(c);
    close(s);

    CASE(nm("fionread_listener_and_unconnected", fam));
    addr_t a;
    int l = listener(fam, SOCK_STREAM, &a);
    v = -1;
    T(ioctl(l, FIONREAD, &v));
    int u = (int)MUST(socket(fam, SOCK_STREAM, 0));
    v = -1;
    T(ioctl(u, FIONREAD, &v));
    O("unconnected=%d", v);
    T(ioctl(u, SIOCOUTQ, &v));
    close(u);
    close(l);
}

static void zero(int fam)
{
    int c, s;
    char buf[8];

    CASE(nm("zero_length_tcp", fam));
    tcp_pair(fam, &c, &s);
    T(send(c, "", 0, 0));
    T(write(c, buf, 0));
    poll1("peer IN after empty sends", s, POLLIN, 10);
    T(recv(s, buf, 0, MSG_DONTWAIT)); /* (a blocking one would wait for data) */
    T(read(s, buf, 0));
    T(send(c, "q", 1, 0));
    wait_bytes(s, 1);
    T(recv(s, buf, 0, 0));
    T(recv(s, buf, sizeof buf, 0));
    close(c);
    close(s);
}

int main(void)
{
    watchdog(25);
    signal(SIGPIPE, SIG_IGN);
    int fams[2] = {AF_INET, AF_INET6};
    for (int i = 0; i < 2; i++) {
        peek(fams[i]);
        waitall(fams[i]);
        trunc_tcp(fams[i]);
        sg(fams[i]);
        fionread(fams[i]);
        zero(fams[i]);
    }
    return 0;
}
