/* compat-cflags: -O2 -D_FORTIFY_SOURCE=2
 *
 * The fortified entry points. Built with -O2 -D_FORTIFY_SOURCE=2 so gcc
 * turns read/recv/recvfrom/poll/pread/ppoll on fixed-size buffers with
 * non-constant lengths into __read_chk, __recv_chk, ... (the harness checks
 * the binary references them), and also calls each __*_chk explicitly. */
#include "net_common.h"

#include <sys/socket.h>

ssize_t __read_chk(int fd, void *buf, size_t nbytes, size_t buflen);
ssize_t __recv_chk(int fd, void *buf, size_t n, size_t buflen, int flags);
ssize_t __recvfrom_chk(int fd, void *buf, size_t n, size_t buflen, int flags,
                       struct sockaddr *addr, socklen_t *addr_len);
int __poll_chk(struct pollfd *fds, nfds_t nfds, int timeout, size_t fdslen);
int __ppoll_chk(struct pollfd *fds, nfds_t nfds, const struct timespec *timeout,
                const sigset_t *ss, size_t fdslen);
ssize_t __pread_chk(int fd, void *buf, size_t nbytes, off_t offset, size_t buflen);
ssize_t __pread64_chk(int fd, void *buf, size_t nbytes, off64_t offset, size_t buflen);

/* Lengths the compiler cannot see through, so the _chk forms are used. */
static volatile size_t vlen = 16;
static volatile nfds_t vn = 2;

static void implicit_cases(void)
{
    char buf[16];
    int p[2], sv[2];
    long n;

    CASE("fortified_read");
    MUST(pipe(p));
    MUST(write(p[1], "fortified-read", 14));
    n = T(read(p[0], buf, vlen));
    show("data", buf, n);
    MUST(fcntl(p[0], F_SETFL, O_NONBLOCK));
    T(read(p[0], buf, vlen));
    T(read(-1, buf, vlen));

    CASE("fortified_recv_recvfrom");
    MUST(socketpair(AF_UNIX, SOCK_DGRAM, 0, sv));
    MUST(send(sv[0], "dgram-A", 7, 0));
    MUST(send(sv[0], "dgram-B", 7, 0));
    n = T(recv(sv[1], buf, vlen, 0));
    show("a", buf, n);
    n = T(recvfrom(sv[1], buf, vlen, 0, NULL, NULL));
    show("b", buf, n);
    T(recv(sv[1], buf, vlen, MSG_DONTWAIT));
    T(recvfrom(sv[1], buf, vlen, MSG_DONTWAIT, NULL, NULL));

    CASE("fortified_poll_ppoll");
    struct pollfd fds[2] = {{.fd = p[0], .events = POLLIN}, {.fd = sv[1], .events = POLLIN}};
    T(poll(fds, vn, 0));
    MUST(send(sv[0], "x", 1, 0));
    T(poll(fds, vn, 0));
    O("revents=0x%x,0x%x", fds[0].revents, fds[1].revents);
    struct timespec ts = {0, 10000000};
    T(ppoll(fds, vn, &ts, NULL));
    recv(sv[1], buf, sizeof buf, 0);
    T(ppoll(fds, vn, &ts, NULL));
    T(poll(fds, vn, 10));

    CASE("fortified_pread");
    int fd = (int)MUST(open("fort.dat", O_CREAT | O_RDWR | O_TRUNC, 0644));
    MUST(write(fd, "0123456789abcdefghij", 20));
    n = T(pread(fd, buf, vlen, 4));
    show("data", buf, n);
    T(pread(fd, buf, vlen, -1));
    T(pread(p[0], buf, vlen, 0));
    n = T(pread64(fd, buf, vlen, 10));
    show("data64", buf, n);
    close(fd);
    close(p[0]);
    close(p[1]);
    close(sv[0]);
    close(sv[1]);
}

static void explicit_cases(void)
{
    char buf[16];
    int p[2], sv[2];
    long n;

    CASE("explicit_read_chk");
    MUST(pipe(p));
    MUST(write(p[1], "chk", 3));
    n = T(__read_chk(p[0], buf, 8, sizeof buf));
    show("data", buf, n);
    T(__read_chk(-1, buf, 8, sizeof buf));
    MUST(fcntl(p[0], F_SETFL, O_NONBLOCK));
    T(__read_chk(p[0], buf, 8, sizeof buf));
    MUST(write(p[1], "x", 1));
    T(__read_chk(p[0], (void *)1, 1, 1));

    CASE("explicit_recv_chk");
    MUST(socketpair(AF_UNIX, SOCK_STREAM, 0, sv));
    MUST(send(sv[0], "recv-chk", 8, 0));
    n = T(__recv_chk(sv[1], buf, 4, sizeof buf, 0));
    show("data", buf, n);
    n = T(__recv_chk(sv[1], buf, 8, sizeof buf, MSG_PEEK));
    show("peek", buf, n);
    n = T(__recv_chk(sv[1], buf, 8, sizeof buf, 0));
    T(__recv_chk(sv[1], buf, 8, sizeof buf, MSG_DONTWAIT));
    T(__recv_chk(p[0], buf, 8, sizeof buf, 0));

    CASE("explicit_recvfrom_chk");
    int u[2];
    MUST(socketpair(AF_UNIX, SOCK_DGRAM, 0, u));
    MUST(send(u[0], "from-chk", 8, 0));
    addr_t from;
    from.len = sizeof from.ss;
    n = T(__recvfrom_chk(u[1], buf, 16, sizeof buf, 0, SA(&from), &from.len));
    show("data", buf, n);
    O("from %s", addr_desc(&from));
    T(__recvfrom_chk(u[1], buf, 16, sizeof buf, MSG_DONTWAIT, NULL, NULL));
    T(__recvfrom_chk(-1, buf, 16, sizeof buf, 0, NULL, NULL));

    CASE("explicit_poll_chk");
    struct pollfd fds[2] = {{.fd = sv[1], .events = POLLIN}, {.fd = u[1], .events = POLLIN}};
    T(__poll_chk(fds, 2, 0, sizeof fds));
    MUST(send(u[0], "x", 1, 0));
    T(__poll_chk(fds, 2, 10, sizeof fds));
    O("revents=0x%x,0x%x", fds[0].revents, fds[1].revents);
    T(__poll_chk((struct pollfd *)1, 1, 0, sizeof(struct pollfd)));

    CASE("explicit_ppoll_chk");
    struct timespec ts = {0, 10000000};
    T(__ppoll_chk(fds, 2, &ts, NULL, sizeof fds));
    recv(u[1], buf, sizeof buf, 0);
    T(__ppoll_chk(fds, 2, &ts, NULL, sizeof fds));

    CASE("explicit_pread_chk");
    int fd = (int)MUST(open("fort2.dat", O_CREAT | O_RDWR | O_TRUNC, 0644));
    MUST(write(fd, "abcdefghijklmnop", 16));
    n = T(__pread_chk(fd, buf, 5, 3, sizeof buf));
    show("data", buf, n);
    n = T(__pread64_chk(fd, buf, 5, 11, sizeof buf));
    show("data64", buf, n);
    T(__pread_chk(fd, buf, 5, -2, sizeof buf));
    T(__pread_chk(p[0], buf, 5, 0, sizeof buf));
    T(__pread64_chk(-1, buf, 5, 0, sizeof buf));
    close(fd);
    close(u[0]);
    close(u[1]);
    close(sv[0]);
    close(sv[1]);
    close(p[0]);
    close(p[1]);
}

int main(void)
{
    implicit_cases();
    explicit_cases();
    return 0;
}
