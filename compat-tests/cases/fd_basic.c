/* Descriptor table: pipe/pipe2, dup/dup2/dup3, fcntl, close/close_range,
 * eventfd, ioctl, lowest-free-fd allocation, /proc/self/fd. */
#include "common.h"

#include <limits.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <termios.h>

extern int fcntl64(int fd, int cmd, ...);

static void pipe_cases(void)
{
    int p[2], q[2];
    char buf[64];

    CASE("pipe_basic");
    T(pipe(p));
    O("fds=%d,%d", p[0], p[1]);
    O("flags r=%s w=%s fd=%s,%s", flflags(p[0]), flflags(p[1]), fdflags(p[0]), fdflags(p[1]));
    T(write(p[1], "hello", 5));
    long n = T(read(p[0], buf, sizeof buf));
    show("data", buf, n);
    T(close(p[1]));
    T(read(p[0], buf, sizeof buf)); /* EOF */
    T(close(p[0]));

    CASE("pipe2_flags");
    T(pipe2(p, O_CLOEXEC | O_NONBLOCK));
    O("fds=%d,%d", p[0], p[1]);
    O("flags r=%s w=%s fd=%s,%s", flflags(p[0]), flflags(p[1]), fdflags(p[0]), fdflags(p[1]));
    T(read(p[0], buf, sizeof buf));
    T(close(p[0]));
    T(close(p[1]));

    CASE("pipe2_einval");
    T(pipe2(p, 0x7654321 & ~(O_CLOEXEC | O_NONBLOCK | O_DIRECT)));

    CASE("pipe_efault");
    T(pipe((int *)1));

    CASE("pipe_partial_reads");
    MUST(pipe(p));
    T(write(p[1], "0123456789", 10));
    n = T(read(p[0], buf, 4));
    show("first", buf, n);
    n = T(read(p[0], buf, sizeof buf));
    show("rest", buf, n);
    close(p[0]);
    close(p[1]);

    CASE("pipe_nonblock_fill");
    MUST(pipe2(p, O_NONBLOCK));
    T(fcntl(p[1], F_SETPIPE_SZ, 4096));
    {
        long total = 0, r;
        char blk[1000];
        memset(blk, 'z', sizeof blk);
        while ((r = write(p[1], blk, sizeof blk)) > 0)
            total += r;
        O("filled=%ld then errno=%s", total, en(errno));
        T(read(p[0], buf, 10));
        T(write(p[1], blk, 10));
    }
    close(p[0]);
    close(p[1]);

    CASE("pipe_write_ebadf_on_read_end");
    MUST(pipe(p));
    T(write(p[0], "x", 1));
    T(read(p[1], buf, 1));
    close(p[0]);
    close(p[1]);

    CASE("pipe_sz");
    MUST(pipe(q));
    T(fcntl(q[0], F_GETPIPE_SZ));
    T(fcntl(q[0], F_SETPIPE_SZ, 8192));
    T(fcntl(q[1], F_GETPIPE_SZ));
    T(fcntl(q[0], F_SETPIPE_SZ, 0x7fffffff));
    close(q[0]);
    close(q[1]);
}

static void dup_cases(void)
{
    int p[2], a[2], b[2], c[2];
    char buf[32];

    CASE("lowest_free_fd");
    MUST(pipe(a));
    MUST(pipe(b));
    MUST(pipe(c));
    O("fds %d %d %d %d %d %d", a[0], a[1], b[0], b[1], c[0], c[1]);
    T(close(b[0]));
    T(close(a[1]));
    T(dup(c[0])); /* takes a[1]'s number */
    T(dup(c[0])); /* takes b[0]'s number */
    T(dup(c[0])); /* next after the highest */
    list_fds("open");
    close_range(3, ~0U, 0);

    CASE("dup_basic");
    MUST(pipe(p));
    long d = T(dup(p[1]));
    O("dup flags=%s orig flags=%s", fdflags((int)d), fdflags(p[1]));
    T(write((int)d, "via-dup", 7));
    long n = T(read(p[0], buf, sizeof buf));
    show("data", buf, n);
    T(close((int)d));
    close(p[0]);
    close(p[1]);

    CASE("dup_cloexec_not_inherited");
    MUST(pipe2(p, O_CLOEXEC));
    d = T(dup(p[0]));
    O("orig=%s dup=%s", fdflags(p[0]), fdflags((int)d));
    close((int)d);
    close(p[0]);
    close(p[1]);

    CASE("dup_ebadf");
    T(dup(-1));
    T(dup(77));
    T(dup(INT_MAX));

    CASE("dup2_over_open_fd");
    MUST(pipe(a));
    MUST(pipe(b));
    /* make b[1] refer to a's write end; b's write end is closed, so b[0]
     * sees EOF */
    T(dup2(a[1], b[1]));
    T(write(b[1], "over", 4));
    n = T(read(a[0], buf, sizeof buf));
    show("a", buf, n);
    T(read(b[0], buf, sizeof buf));
    close_range(3, ~0U, 0);

    CASE("dup2_same_fd");
    MUST(pipe(p));
    T(dup2(p[0], p[0]));
    T(dup2(55, 55));
    T(dup2(p[0], -1));
    T(dup2(-1, p[0]));
    T(dup2(p[0], INT_MAX));
    close(p[0]);
    close(p[1]);

    CASE("dup2_high_fd");
    MUST(pipe(p));
    T(dup2(p[1], 100));
    T(write(100, "hi", 2));
    n = T(read(p[0], buf, sizeof buf));
    show("data", buf, n);
    O("flags100=%s", fdflags(100));
    T(close(100));
    T(close(100));
    close(p[0]);
    close(p[1]);

    CASE("dup2_clears_cloexec");
    MUST(pipe2(p, O_CLOEXEC));
    T(dup2(p[0], 20));
    O("20=%s", fdflags(20));
    close(20);
    close(p[0]);
    close(p[1]);

    CASE("dup3_flags");
    MUST(pipe(p));
    T(dup3(p[0], 30, O_CLOEXEC));
    O("30=%s", fdflags(30));
    T(dup3(p[0], 31, 0));
    O("31=%s", fdflags(31));
    T(dup3(p[0], p[0], 0));
    T(dup3(p[0], 32, 0x40));
    T(dup3(-1, 33, 0));
    close(30);
    close(31);
    close(p[0]);
    close(p[1]);
}

static void fcntl_cases(void)
{
    int p[2];

    CASE("fcntl_dupfd");
    MUST(pipe(p));
    T(fcntl(p[0], F_DUPFD, 10));
    O("10=%s", fdflags(10));
    T(fcntl(p[0], F_DUPFD, 10)); /* 10 taken -> 11 */
    T(fcntl(p[0], F_DUPFD_CLOEXEC, 20));
    O("20=%s", fdflags(20));
    T(fcntl(p[0], F_DUPFD, -1));
    T(fcntl(p[0], F_DUPFD, INT_MAX));
    close(10);
    close(11);
    close(20);

    CASE("fcntl_getset_fd");
    T(fcntl(p[0], F_GETFD));
    T(fcntl(p[0], F_SETFD, FD_CLOEXEC));
    T(fcntl(p[0], F_GETFD));
    T(fcntl(p[0], F_SETFD, 0));
    T(fcntl(p[0], F_GETFD));

    CASE("fcntl_getset_fl");
    O("before=%s", flflags(p[1]));
    T(fcntl(p[1], F_SETFL, O_NONBLOCK));
    O("after=%s", flflags(p[1]));
    T(fcntl(p[1], F_SETFL, 0));
    O("cleared=%s", flflags(p[1]));
    T(fcntl(p[1], F_GETFL) & (O_ACCMODE | O_NONBLOCK | O_APPEND));

    CASE("fcntl_errors");
    T(fcntl(-1, F_GETFD));
    T(fcntl(99, F_GETFL));
    T(fcntl(p[0], 0x7777));
    T(fcntl(p[0], F_SETPIPE_SZ, -1));

    CASE("fcntl64");
    T(fcntl64(p[0], F_GETFL) & O_ACCMODE);
    T(fcntl64(p[0], F_SETFD, FD_CLOEXEC));
    T(fcntl64(p[0], F_GETFD));
    T(fcntl64(p[0], F_DUPFD, 40));
    T(fcntl64(-1, F_GETFD));
    close(40);
    close(p[0]);
    close(p[1]);

    CASE("fcntl_locks");
    int fd = MUST(open("lockfile", O_CREAT | O_RDWR | O_TRUNC, 0644));
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = 0;
    fl.l_len = 10;
    T(fcntl(fd, F_SETLK, &fl));
    memset(&fl, 0, sizeof fl);
    fl.l_type = F_WRLCK;
    fl.l_len = 10;
    T(fcntl(fd, F_GETLK, &fl));
    O("getlk type=%s", fl.l_type == F_UNLCK ? "UNLCK" : "LOCKED");
    memset(&fl, 0, sizeof fl);
    fl.l_type = F_WRLCK;
    fl.l_len = 10;
    T(fcntl(fd, F_OFD_SETLK, &fl)); /* conflicts with our own POSIX lock */
    fl.l_type = F_UNLCK;
    T(fcntl(fd, F_SETLK, &fl));
    fl.l_type = F_WRLCK;
    fl.l_pid = 0;
    T(fcntl(fd, F_OFD_SETLK, &fl));
    fl.l_type = 99;
    T(fcntl(fd, F_SETLK, &fl));
    close(fd);
    unlink("lockfile");
}

static void close_cases(void)
{
    int p[2];

    CASE("close_basic");
    MUST(pipe(p));
    T(close(p[0]));
    T(close(p[0]));
    T(close(-1));
    T(close(p[1]));
    T(close(INT_MAX));

    CASE("close_range_basic");
    MUST(pipe(p));
    for (int i = 10; i <= 15; i++)
        MUST(dup2(p[0], i));
    T(close_range(10, 12, 0));
    T(fcntl(11, F_GETFD));
    T(close_range(13, ~0U, CLOSE_RANGE_CLOEXEC));
    O("13=%s 15=%s", fdflags(13), fdflags(15));
    T(close_range(5, 4, 0));
    T(close_range(3, 3, 0x40));
    T(close_range(13, 15, 0));
    list_fds("left");
    T(close_range(3, ~0U, 0));
    list_fds("after");
}

static void eventfd_cases(void)
{
    uint64_t v = 0;

    CASE("eventfd_counter");
    int e = (int)T(eventfd(3, 0));
    O("flags=%s fd=%s", flflags(e), fdflags(e));
    T(read(e, &v, sizeof v));
    O("value=%llu", (unsigned long long)v);
    v = 5;
    T(write(e, &v, sizeof v));
    v = 7;
    T(write(e, &v, sizeof v));
    T(read(e, &v, sizeof v));
    O("value=%llu", (unsigned long long)v);
    close(e);

    CASE("eventfd_nonblock");
    e = (int)T(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
    O("flags=%s fd=%s", flflags(e), fdflags(e));
    T(read(e, &v, sizeof v));
    v = 0xfffffffffffffffeULL;
    T(write(e, &v, sizeof v));
    v = 1;
    T(write(e, &v, sizeof v));
    close(e);

    CASE("eventfd_semaphore");
    e = (int)T(eventfd(2, EFD_SEMAPHORE | EFD_NONBLOCK));
    T(read(e, &v, sizeof v));
    O("v=%llu", (unsigned long long)v);
    T(read(e, &v, sizeof v));
    O("v=%llu", (unsigned long long)v);
    T(read(e, &v, sizeof v));
    close(e);

    CASE("eventfd_errors");
    e = (int)T(eventfd(0, 0));
    T(read(e, &v, 4));
    T(write(e, &v, 4));
    v = 0xffffffffffffffffULL;
    T(write(e, &v, sizeof v));
    T(eventfd(0, 0x1234));
    close(e);

    CASE("eventfd_glibc_wrappers");
    e = (int)eventfd(0, 0);
    T(eventfd_write(e, 42));
    eventfd_t ev = 0;
    T(eventfd_read(e, &ev));
    O("ev=%llu", (unsigned long long)ev);
    close(e);
}

static void ioctl_cases(void)
{
    int p[2], n = -1;

    CASE("ioctl_fionread");
    MUST(pipe(p));
    T(ioctl(p[0], FIONREAD, &n));
    O("n=%d", n);
    MUST(write(p[1], "1234567", 7));
    T(ioctl(p[0], FIONREAD, &n));
    O("n=%d", n);

    CASE("ioctl_fionbio");
    int on = 1;
    T(ioctl(p[0], FIONBIO, &on));
    O("flags=%s", flflags(p[0]));
    on = 0;
    T(ioctl(p[0], FIONBIO, &on));
    O("flags=%s", flflags(p[0]));

    CASE("ioctl_fioclex");
    T(ioctl(p[0], FIOCLEX));
    O("fd=%s", fdflags(p[0]));
    T(ioctl(p[0], FIONCLEX));
    O("fd=%s", fdflags(p[0]));

    CASE("ioctl_errors");
    struct termios tio;
    T(ioctl(p[0], TCGETS, &tio));
    T(ioctl(-1, FIONREAD, &n));
    T(ioctl(p[0], FIONREAD, (void *)1));
    T(ioctl(p[0], 0x12345678, 0));
    close(p[0]);
    close(p[1]);
}

static void proc_fd_cases(void)
{
    CASE("proc_self_fd_listing");
    list_fds("start");
    int p[2];
    MUST(pipe(p));
    MUST(dup2(p[0], 9));
    list_fds("with_pipe_and_9");
    char path[64], target[256];
    snprintf(path, sizeof path, "/proc/self/fd/%d", p[0]);
    long n = readlink(path, target, sizeof target - 1);
    if (n > 0) {
        target[n] = 0;
        char *br = strchr(target, '[');
        if (br)
            *br = 0;
        O("target prefix=%s", target);
    }
    close(9);
    close(p[0]);
    close(p[1]);
    list_fds("end");

    CASE("proc_self_fd_file_target");
    int fd = MUST(open("named.txt", O_CREAT | O_RDWR, 0600));
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    n = readlink(path, target, sizeof target - 1);
    O("readlink ok=%d", n > 0);
    if (n > 0) {
        target[n] = 0;
        const char *slash = strrchr(target, '/');
        O("basename=%s", slash ? slash + 1 : target);
    }
    close(fd);
    unlink("named.txt");

    CASE("proc_self_fdinfo");
    fd = MUST(open("info.txt", O_CREAT | O_RDWR | O_APPEND, 0600));
    MUST(write(fd, "abc", 3));
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
    int inf = (int)MUST(open(path, O_RDONLY));
    char buf[512];
    n = read(inf, buf, sizeof buf - 1);
    buf[n > 0 ? n : 0] = 0;
    /* pos and flags lines only (mnt_id / ino vary) */
    for (char *l = strtok(buf, "\n"); l; l = strtok(NULL, "\n"))
        if (strncmp(l, "pos:", 4) == 0 || strncmp(l, "flags:", 6) == 0)
            O("%s", l);
    close(inf);
    close(fd);
    unlink("info.txt");
}

int main(void)
{
    pipe_cases();
    dup_cases();
    fcntl_cases();
    close_cases();
    eventfd_cases();
    ioctl_cases();
    proc_fd_cases();
    return 0;
}
