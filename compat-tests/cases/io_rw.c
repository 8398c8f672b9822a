/* Data calls on files and pipes: read/write, readv/writev, pread/pwrite (and
 * 64), preadv/pwritev (and 2), sendfile, lseek, fsync/fdatasync, ftruncate,
 * and the EFAULT/EBADF/EINVAL/ESPIPE/EISDIR error paths. */
#include "common.h"

#include <limits.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/uio.h>

static int fresh(const char *name)
{
    return (int)MUST(open(name, O_CREAT | O_RDWR | O_TRUNC, 0644));
}

static void rw_cases(void)
{
    char buf[256];
    long n;
    int fd, p[2];

    CASE("file_write_read");
    fd = fresh("rw.dat");
    T(write(fd, "hello world", 11));
    T(lseek(fd, 0, SEEK_CUR));
    T(read(fd, buf, sizeof buf)); /* at EOF */
    T(lseek(fd, 0, SEEK_SET));
    n = T(read(fd, buf, sizeof buf));
    show("data", buf, n);
    T(read(fd, buf, 0));
    T(write(fd, buf, 0));
    close(fd);

    CASE("read_write_ebadf");
    T(read(-1, buf, 1));
    T(write(-1, "x", 1));
    T(read(123, buf, 1));
    fd = (int)MUST(open("rw.dat", O_RDONLY));
    T(write(fd, "x", 1));
    close(fd);
    fd = (int)MUST(open("rw.dat", O_WRONLY));
    T(read(fd, buf, 1));
    close(fd);
    T(read(fd, buf, 1));

    CASE("read_efault_pipe");
    MUST(pipe(p));
    MUST(write(p[1], "abc", 3));
    T(read(p[0], (void *)1, 3));
    n = T(read(p[0], buf, sizeof buf));
    show("still_there", buf, n);

    CASE("write_efault_pipe");
    T(write(p[1], (void *)1, 3));
    T(write(p[1], NULL, 3));
    close(p[0]);
    close(p[1]);

    CASE("file_efault");
    fd = fresh("fault.dat");
    T(write(fd, (void *)8, 16));
    MUST(write(fd, "data", 4));
    MUST(lseek(fd, 0, SEEK_SET));
    T(read(fd, (void *)8, 4));
    T(lseek(fd, 0, SEEK_CUR));
    close(fd);

    CASE("read_eisdir");
    fd = (int)MUST(open(".", O_RDONLY | O_DIRECTORY));
    T(read(fd, buf, sizeof buf));
    T(write(fd, "x", 1));
    close(fd);

    CASE("write_append");
    fd = (int)MUST(open("app.dat", O_CREAT | O_RDWR | O_TRUNC | O_APPEND, 0644));
    T(write(fd, "aaa", 3));
    T(lseek(fd, 0, SEEK_SET));
    T(write(fd, "bbb", 3));
    T(lseek(fd, 0, SEEK_CUR));
    T(pwrite(fd, "ccc", 3, 0)); /* Linux: appends anyway */
    MUST(lseek(fd, 0, SEEK_SET));
    n = T(read(fd, buf, sizeof buf));
    show("content", buf, n);
    close(fd);

    CASE("dev_null_zero");
    fd = (int)MUST(open("/dev/zero", O_RDONLY));
    memset(buf, 'x', 8);
    n = T(read(fd, buf, 8));
    show("zero", buf, n);
    close(fd);
    fd = (int)MUST(open("/dev/null", O_RDWR));
    T(write(fd, "gone", 4));
    T(read(fd, buf, 8));
    close(fd);

    CASE("large_file_roundtrip");
    {
        static char big[300000];
        for (size_t i = 0; i < sizeof big; i++)
            big[i] = (char)(i * 7 + i / 251);
        fd = fresh("big.dat");
        long total = 0;
        while (total < (long)sizeof big) {
            long w = write(fd, big + total, sizeof big - (size_t)total);
            if (w <= 0)
                break;
            total += w;
        }
        O("written=%ld", total);
        MUST(lseek(fd, 0, SEEK_SET));
        uint32_t h = FNV_INIT;
        long got = 0, r;
        char chunk[4096];
        while ((r = read(fd, chunk, sizeof chunk)) > 0) {
            h = fnv(chunk, (size_t)r, h);
            got += r;
        }
        O("read=%ld fnv=%08x expect=%08x", got, h, fnv(big, sizeof big, FNV_INIT));
        close(fd);
        unlink("big.dat");
    }
}

static void vec_cases(void)
{
    char a[4], b[100], buf[64];
    int fd, p[2];
    long n;

    CASE("writev_readv_file");
    fd = fresh("vec.dat");
    struct iovec wv[3] = {{"one ", 4}, {"two ", 4}, {"three", 5}};
    T(writev(fd, wv, 3));
    MUST(lseek(fd, 0, SEEK_SET));
    struct iovec rv[2] = {{a, sizeof a}, {b, sizeof b}};
    n = T(readv(fd, rv, 2));
    show("a", a, sizeof a);
    show("b", b, n - (long)sizeof a);
    close(fd);

    CASE("writev_readv_pipe");
    MUST(pipe(p));
    T(writev(p[1], wv, 3));
    struct iovec rv2[3] = {{a, 2}, {b, 3}, {buf, 64}};
    n = T(readv(p[0], rv2, 3));
    show("a", a, 2);
    show("b", b, 3);
    show("rest", buf, n - 5);

    CASE("vec_errors");
    T(writev(p[1], wv, -1));
    T(writev(p[1], wv, IOV_MAX + 1));
    T(readv(p[0], rv, -1));
    T(writev(-1, wv, 1));
    T(readv(-1, rv, 1));
    T(writev(p[1], (struct iovec *)1, 1));
    T(writev(p[1], wv, 0));
    struct iovec badv[1] = {{(void *)1, 5}};
    T(writev(p[1], badv, 1));
    close(p[0]);
    close(p[1]);
}

static void pos_cases(void)
{
    char buf[64];
    long n;
    int fd, p[2];

    CASE("pread_pwrite");
    fd = fresh("pos.dat");
    T(pwrite(fd, "XYZ", 3, 100));
    T(lseek(fd, 0, SEEK_CUR));
    T(lseek(fd, 0, SEEK_END));
    memset(buf, '#', sizeof buf);
    n = T(pread(fd, buf, 10, 98));
    show("data", buf, n);
    T(pread(fd, buf, 10, 1000));
    T(pread(fd, buf, 10, -1));
    T(pwrite(fd, "x", 1, -5));

    CASE("pread64_pwrite64");
    T(pwrite64(fd, "64", 2, 200));
    n = T(pread64(fd, buf, 5, 199));
    show("data", buf, n);
    T(pread64(fd, buf, 5, -1));
    T(pread64(-1, buf, 5, 0));

    CASE("pread_espipe");
    MUST(pipe(p));
    T(pread(p[0], buf, 1, 0));
    T(pwrite(p[1], "x", 1, 0));
    T(pread64(p[0], buf, 1, 0));
    T(pwrite64(p[1], "x", 1, 0));

    CASE("preadv_pwritev");
    struct iovec wv[2] = {{"ab", 2}, {"cd", 2}};
    T(pwritev(fd, wv, 2, 10));
    char x[3], y[3];
    struct iovec rv[2] = {{x, 3}, {y, 3}};
    n = T(preadv(fd, rv, 2, 9));
    show("x", x, 3);
    show("y", y, 3);
    T(lseek(fd, 0, SEEK_CUR));
    T(preadv(p[0], rv, 2, 0));
    T(pwritev(fd, wv, 2, -3));
    T(preadv64(fd, rv, 1, 10));
    T(pwritev64(fd, wv, 1, 12));

    CASE("preadv2_pwritev2");
    MUST(lseek(fd, 0, SEEK_SET));
    T(pwritev2(fd, wv, 2, -1, 0)); /* uses and advances the file offset */
    T(lseek(fd, 0, SEEK_CUR));
    T(pwritev2(fd, wv, 1, 0, RWF_APPEND));
    T(lseek(fd, 0, SEEK_END));
    n = T(preadv2(fd, rv, 2, 0, 0));
    show("x", x, 3);
    T(preadv2(fd, rv, 2, -1, 0));
    T(lseek(fd, 0, SEEK_CUR));
    T(preadv2(fd, rv, 2, 0, 0x40000000));
    T(pwritev2(fd, wv, 2, 0, 0x40000000));
    T(preadv2(-1, rv, 2, 0, 0));
    T(pwritev64v2(fd, wv, 2, 20, 0));
    n = T(preadv64v2(fd, rv, 2, 19, 0));
    show("x", x, 3);
    T(preadv64v2(fd, rv, 2, -7, 0));
    close(p[0]);
    close(p[1]);

    CASE("lseek_variants");
    T(lseek(fd, 5, SEEK_SET));
    T(lseek(fd, 5, SEEK_CUR));
    T(lseek(fd, -3, SEEK_CUR));
    T(lseek(fd, 0, SEEK_END));
    T(lseek(fd, 50, SEEK_END));
    T(lseek(fd, -1, SEEK_SET));
    T(lseek(fd, 0, 42));
    T(lseek64(fd, 7, SEEK_SET));
    T(lseek(-1, 0, SEEK_SET));
    MUST(pipe(p));
    T(lseek(p[0], 0, SEEK_CUR));
    close(p[0]);
    close(p[1]);
    close(fd);
}

static void sync_trunc_cases(void)
{
    int fd, p[2];
    struct stat st;

    CASE("fsync_fdatasync");
    fd = fresh("sync.dat");
    MUST(write(fd, "durable", 7));
    T(fsync(fd));
    T(fdatasync(fd));
    MUST(pipe(p));
    T(fsync(p[0]));
    T(fdatasync(p[1]));
    T(fsync(-1));
    T(fdatasync(99));
    close(p[0]);
    close(p[1]);

    CASE("ftruncate");
    T(ftruncate(fd, 3));
    fstat(fd, &st);
    O("size=%lld", (long long)st.st_size);
    T(ftruncate(fd, 4096));
    fstat(fd, &st);
    O("size=%lld", (long long)st.st_size);
    char buf[8];
    long n = T(pread(fd, buf, 8, 0));
    show("head", buf, n);
    T(ftruncate(fd, -1));
    T(ftruncate64(fd, 10));
    T(ftruncate(-1, 0));
    close(fd);
    fd = (int)MUST(open("sync.dat", O_RDONLY));
    T(ftruncate(fd, 0));
    close(fd);
    MUST(pipe(p));
    T(ftruncate(p[1], 0));
    close(p[0]);
    close(p[1]);
}

static void sendfile_cases(void)
{
    char buf[64];
    long n;
    int in, outf, p[2], sv[2];
    off_t off;

    in = fresh("src.dat");
    MUST(write(in, "0123456789abcdef", 16));

    CASE("sendfile_file_to_file");
    outf = fresh("dst.dat");
    off = 4;
    T(sendfile(outf, in, &off, 6));
    O("off=%lld", (long long)off);
    T(lseek(in, 0, SEEK_CUR)); /* unchanged by an explicit offset */
    MUST(lseek(in, 10, SEEK_SET));
    T(sendfile(outf, in, NULL, 100));
    T(lseek(in, 0, SEEK_CUR));
    n = T(pread(outf, buf, sizeof buf, 0));
    show("dst", buf, n);
    close(outf);

    CASE("sendfile_to_pipe");
    MUST(pipe(p));
    off = 0;
    T(sendfile(p[1], in, &off, 5));
    n = T(read(p[0], buf, sizeof buf));
    show("pipe", buf, n);

    CASE("sendfile_to_socket");
    MUST(socketpair(AF_UNIX, SOCK_STREAM, 0, sv));
    off = 8;
    T(sendfile(sv[0], in, &off, 8));
    n = T(read(sv[1], buf, sizeof buf));
    show("sock", buf, n);
    close(sv[0]);
    close(sv[1]);

    CASE("sendfile_errors");
    off = 0;
    T(sendfile(-1, in, &off, 1));
    T(sendfile(p[1], -1, &off, 1));
    off = -1;
    T(sendfile(p[1], in, &off, 1));
    off = 0;
    T(sendfile(p[1], in, (off_t *)1, 1));
    outf = (int)MUST(open("dst.dat", O_RDONLY));
    T(sendfile(outf, in, &off, 1));
    close(outf);
    off = 100;
    T(sendfile(p[1], in, &off, 5)); /* past EOF */
    T(sendfile64(p[1], in, NULL, 0));
    close(p[0]);
    close(p[1]);
    close(in);
}

int main(void)
{
    rw_cases();
    vec_cases();
    pos_cases();
    sync_trunc_cases();
    sendfile_cases();
    return 0;
}
