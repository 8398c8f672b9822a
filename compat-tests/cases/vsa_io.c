/* Files on a volume: read/write and their positioned and vectored forms, lseek (holes,
 * SEEK_DATA/SEEK_HOLE, errors), ftruncate/truncate, fsync/fdatasync/syncfs, dup'd offsets,
 * O_APPEND from two fds and two threads, multi-megabyte files, files unlinked or renamed
 * while open, and times (changed or not; explicit utimensat values). Everything under mnt/
 * (see vsa_common.h). */
#include "vsa_common.h"

#include <pthread.h>
#include <sys/time.h>

static void rw_cases(void)
{
    int fd;
    char buf[256];
    long n;

    CASE("write_read_back");
    fd = (int)T(open("mnt/rw", O_CREAT | O_RDWR, 0644));
    T(write(fd, "hello world", 11));
    T(lseek(fd, 0, SEEK_CUR));
    T(read(fd, buf, sizeof buf));
    T(lseek(fd, 0, SEEK_SET));
    n = T(read(fd, buf, 5));
    show("data", buf, n);
    n = T(read(fd, buf, sizeof buf));
    show("rest", buf, n);
    T(read(fd, buf, sizeof buf));
    T(write(fd, "", 0));
    T(read(fd, buf, 0));
    close(fd);

    CASE("overwrite_middle");
    fd = (int)MUST(open("mnt/rw", O_RDWR));
    T(lseek(fd, 6, SEEK_SET));
    T(write(fd, "WORLD!!", 7));
    close(fd);
    cat("content", "mnt/rw");
    st_path("mnt/rw");

    CASE("pread_pwrite");
    fd = (int)MUST(open("mnt/pp", O_CREAT | O_RDWR, 0644));
    T(pwrite(fd, "abcdef", 6, 0));
    T(lseek(fd, 0, SEEK_CUR));
    T(pwrite(fd, "XY", 2, 2));
    n = T(pread(fd, buf, 10, 1));
    show("data", buf, n);
    T(pread(fd, buf, 10, 6));
    T(pread(fd, buf, 10, 100));
    T(pread(fd, buf, 10, -1));
    T(pwrite(fd, "z", 1, -5));
    T(lseek(fd, 0, SEEK_CUR));
    T(pwrite(fd, "end", 3, 10));
    n = T(pread(fd, buf, 20, 0));
    show("with hole", buf, n);
    T(pread64(fd, buf, 3, 10));
    T(pwrite64(fd, "E", 1, 12));
    close(fd);

    CASE("readv_writev");
    fd = (int)MUST(open("mnt/vec", O_CREAT | O_RDWR | O_TRUNC, 0644));
    struct iovec w[3] = {{"one-", 4}, {"", 0}, {"two-three", 9}};
    T(writev(fd, w, 3));
    T(lseek(fd, 0, SEEK_SET));
    char a[3], b[5], c[20];
    struct iovec r[3] = {{a, 3}, {b, 5}, {c, 20}};
    T(readv(fd, r, 3));
    show("a", a, 3);
    show("b", b, 5);
    show("c", c, 5);
    T(readv(fd, r, 3));
    T(writev(fd, w, 0));
    T(writev(fd, w, -1));
    close(fd);

    CASE("preadv_pwritev");
    fd = (int)MUST(open("mnt/vec", O_RDWR));
    struct iovec w2[2] = {{"AB", 2}, {"CD", 2}};
    T(pwritev(fd, w2, 2, 4));
    T(lseek(fd, 0, SEEK_CUR));
    char d[4], e[4];
    struct iovec r2[2] = {{d, 4}, {e, 4}};
    T(preadv(fd, r2, 2, 2));
    show("d", d, 4);
    show("e", e, 4);
    T(pwritev2(fd, w2, 1, 0, 0));
    T(preadv2(fd, r2, 1, -1, 0));
    show("cur", d, 4);
    close(fd);
    cat("content", "mnt/vec");
}

static void seek_cases(void)
{
    int fd;
    char buf[64];
    long n;

    CASE("lseek_whence");
    fd = (int)MUST(open("mnt/sk", O_CREAT | O_RDWR, 0644));
    MUST(write(fd, "0123456789", 10));
    T(lseek(fd, 3, SEEK_SET));
    T(lseek(fd, 2, SEEK_CUR));
    T(lseek(fd, -2, SEEK_CUR));
    T(lseek(fd, 0, SEEK_END));
    T(lseek(fd, -4, SEEK_END));
    n = T(read(fd, buf, sizeof buf));
    show("tail", buf, n);
    T(lseek(fd, 5, SEEK_END));
    T(read(fd, buf, sizeof buf));

    CASE("lseek_errors");
    T(lseek(fd, -1, SEEK_SET));
    T(lseek(fd, -100, SEEK_CUR));
    T(lseek(fd, -11, SEEK_END));
    T(lseek(fd, 0, 42));
    T(lseek(fd, 0, SEEK_CUR));
    T(lseek(-1, 0, SEEK_SET));
    T(lseek64(fd, 7, SEEK_SET));

    CASE("hole_reads_zero");
    T(lseek(fd, 4096 * 3, SEEK_SET));
    T(write(fd, "tail", 4));
    st_fd("fd", fd);
    n = T(pread(fd, buf, 16, 4096));
    O("zeros=%d", n == 16 && memcmp(buf, "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", 16) == 0);
    n = T(pread(fd, buf, 8, 10));
    show("after data", buf, n);
    n = T(pread(fd, buf, 8, 4096 * 3 - 2));
    show("hole edge", buf, n);
    close(fd);

    CASE("seek_data_hole_dense");
    fd = (int)MUST(open("mnt/dense", O_CREAT | O_RDWR, 0644));
    MUST(write(fd, "dense data", 10));
    T(lseek(fd, 0, SEEK_DATA));
    T(lseek(fd, 3, SEEK_DATA));
    T(lseek(fd, 0, SEEK_HOLE));
    T(lseek(fd, 10, SEEK_DATA));
    T(lseek(fd, 10, SEEK_HOLE));
    T(lseek(fd, 11, SEEK_HOLE));
    close(fd);

    CASE("write_past_eof");
    fd = (int)MUST(open("mnt/pe", O_CREAT | O_RDWR, 0644));
    T(lseek(fd, 100, SEEK_SET));
    st_fd("before write", fd);
    T(write(fd, "X", 1));
    st_fd("after write", fd);
    n = T(pread(fd, buf, 4, 98));
    show("edge", buf, n);
    close(fd);
}

static void trunc_cases(void)
{
    int fd;
    char buf[64];
    long n;

    CASE("ftruncate_down_up");
    fd = (int)MUST(open("mnt/tr", O_CREAT | O_RDWR, 0644));
    MUST(write(fd, "0123456789", 10));
    T(ftruncate(fd, 4));
    st_fd("down", fd);
    T(lseek(fd, 0, SEEK_CUR));
    T(read(fd, buf, sizeof buf));
    T(ftruncate(fd, 8));
    st_fd("up", fd);
    n = T(pread(fd, buf, sizeof buf, 0));
    show("data", buf, n);
    T(write(fd, "Z", 1));
    n = T(pread(fd, buf, sizeof buf, 0));
    show("after write", buf, n);
    T(ftruncate(fd, 0));
    st_fd("zero", fd);
    T(ftruncate(fd, 1 << 20));
    st_fd("1MiB", fd);
    n = T(pread(fd, buf, 8, (1 << 20) - 4));
    O("zeros=%d", n == 4 && memcmp(buf, "\0\0\0\0", 4) == 0);
    T(ftruncate64(fd, 3));
    st_fd("3", fd);

    CASE("ftruncate_errors");
    T(ftruncate(fd, -1));
    close(fd);
    fd = (int)MUST(open("mnt/tr", O_RDONLY));
    T(ftruncate(fd, 0));
    close(fd);
    fd = (int)MUST(open("mnt", O_RDONLY | O_DIRECTORY));
    T(ftruncate(fd, 0));
    close(fd);
    T(ftruncate(-1, 0));

    CASE("truncate_path");
    put("mnt/tp", "abcdefgh");
    T(truncate("mnt/tp", 3));
    cat("down", "mnt/tp");
    T(truncate("mnt/tp", 6));
    cat("up", "mnt/tp");
    T(truncate("mnt/missing", 0));
    T(truncate("mnt", 0));
    T(truncate("mnt/tp/x", 0));
    T(truncate("mnt/tp", -1));
    T(truncate64("mnt/tp", 1));
    cat("64", "mnt/tp");

    CASE("truncate_while_open_other_fd");
    put("mnt/to", "0123456789");
    fd = (int)MUST(open("mnt/to", O_RDONLY));
    T(lseek(fd, 8, SEEK_SET));
    T(truncate("mnt/to", 5));
    T(read(fd, buf, sizeof buf));
    T(lseek(fd, 0, SEEK_CUR));
    n = T(pread(fd, buf, sizeof buf, 2));
    show("data", buf, n);
    close(fd);
}

static void sync_cases(void)
{
    int fd;

    CASE("fsync_fdatasync");
    fd = (int)MUST(open("mnt/sy", O_CREAT | O_RDWR, 0644));
    T(write(fd, "data", 4));
    T(fsync(fd));
    T(write(fd, "more", 4));
    T(fdatasync(fd));
    T(syncfs(fd));
    close(fd);
    fd = (int)MUST(open("mnt/sy", O_RDONLY));
    T(fsync(fd));
    T(fdatasync(fd));
    close(fd);
    fd = (int)MUST(open("mnt", O_RDONLY | O_DIRECTORY));
    T(fsync(fd));
    T(fdatasync(fd));
    close(fd);
    T(fsync(-1));
    T(sync_file_range(-1, 0, 0, 0));
    cat("content", "mnt/sy");

    CASE("fsync_file_in_subdir_then_dir");
    MUST(mkdir("mnt/sd", 0755));
    fd = (int)MUST(open("mnt/sd/f", O_CREAT | O_WRONLY, 0644));
    T(write(fd, "x", 1));
    T(fsync(fd));
    close(fd);
    fd = (int)MUST(open("mnt/sd", O_RDONLY));
    T(fsync(fd));
    close(fd);
}

static void dup_cases(void)
{
    int fd, fd2, fd3;
    char buf[64];
    long n;

    CASE("dup_shares_offset");
    fd = (int)MUST(open("mnt/du", O_CREAT | O_RDWR | O_TRUNC, 0644));
    fd2 = (int)MUST(dup(fd));
    T(write(fd, "abc", 3));
    T(lseek(fd2, 0, SEEK_CUR));
    T(write(fd2, "def", 3));
    T(lseek(fd, 0, SEEK_CUR));
    T(lseek(fd2, 1, SEEK_SET));
    n = T(read(fd, buf, 2));
    show("via fd", buf, n);
    O("flags fd=%s fd2=%s", flflags(fd), flflags(fd2));
    T(close(fd));
    n = T(pread(fd2, buf, sizeof buf, 0));
    show("after close", buf, n);

    CASE("dup2_dup3");
    fd3 = (int)MUST(open("mnt/rw", O_RDONLY));
    T(dup2(fd2, fd3) == fd3);
    T(lseek(fd3, 0, SEEK_CUR));
    n = T(read(fd3, buf, 2));
    show("dup2 target", buf, n);
    T(dup3(fd2, fd3, O_CLOEXEC) == fd3);
    O("cloexec=%s", fdflags(fd3));
    T(dup3(fd2, fd2, 0));
    T(dup2(fd2, fd2) == fd2);
    T(fcntl(fd2, F_DUPFD, 100));
    T(lseek(100, 0, SEEK_SET));
    n = T(read(fd3, buf, 3));
    show("shared", buf, n);
    close(100);
    close(fd3);
    close(fd2);

    CASE("separate_opens_separate_offsets");
    fd = (int)MUST(open("mnt/du", O_RDONLY));
    fd2 = (int)MUST(open("mnt/du", O_RDWR));
    n = T(read(fd, buf, 2));
    show("fd", buf, n);
    n = T(read(fd2, buf, 4));
    show("fd2", buf, n);
    T(write(fd2, "XY", 2));
    n = T(read(fd, buf, sizeof buf));
    show("fd sees write", buf, n);
    close(fd);
    close(fd2);

    CASE("append_two_fds");
    fd = (int)MUST(open("mnt/ap2", O_CREAT | O_WRONLY | O_APPEND, 0644));
    fd2 = (int)MUST(open("mnt/ap2", O_WRONLY | O_APPEND));
    fd3 = (int)MUST(open("mnt/ap2", O_WRONLY));
    for (int i = 0; i < 5; i++) {
        MUST(write(fd, "a1", 2));
        MUST(write(fd2, "b22", 3));
    }
    T(lseek(fd, 0, SEEK_CUR));
    T(lseek(fd2, 0, SEEK_CUR));
    T(write(fd3, "W", 1));
    close(fd);
    close(fd2);
    close(fd3);
    cat("content", "mnt/ap2");
}

/* Two threads appending fixed records through their own O_APPEND fds. */
struct appender {
    char tag;
    int fd;
};
static void *append_thread(void *arg)
{
    struct appender *a = arg;
    char rec[64];
    for (int i = 0; i < 300; i++) {
        int k = snprintf(rec, sizeof rec, "%c%04d%.*s\n", a->tag, i, 40, "........................................");
        if (write(a->fd, rec, (size_t)k) != k)
            return (void *)1;
    }
    return NULL;
}

static void append_threads_case(void)
{
    CASE("append_atomic_threads");
    struct appender a = {'A', (int)MUST(open("mnt/log", O_CREAT | O_WRONLY | O_APPEND, 0644))};
    struct appender b = {'B', (int)MUST(open("mnt/log", O_WRONLY | O_APPEND))};
    pthread_t ta, tb;
    void *ra, *rb;
    pthread_create(&ta, NULL, append_thread, &a);
    pthread_create(&tb, NULL, append_thread, &b);
    pthread_join(ta, &ra);
    pthread_join(tb, &rb);
    O("threads ok=%d", ra == NULL && rb == NULL);
    close(a.fd);
    close(b.fd);
    st_path("mnt/log");
    FILE *f = fopen("mnt/log", "r");
    char l[128];
    int na = 0, nb = 0, bad = 0, nexta = 0, nextb = 0;
    while (f && fgets(l, sizeof l, f)) {
        int i = atoi(l + 1);
        if (strlen(l) != 46)
            bad++;
        else if (l[0] == 'A' && i == nexta)
            na++, nexta++;
        else if (l[0] == 'B' && i == nextb)
            nb++, nextb++;
        else
            bad++;
    }
    if (f)
        fclose(f);
    O("records A=%d B=%d torn or out of order=%d", na, nb, bad);
}

static void big_cases(void)
{
    enum { CHUNK = 65536, TOTAL = 6 << 20 };
    unsigned char *buf = malloc(CHUNK), *back = malloc(CHUNK);
    uint32_t st = 12345, h = FNV_INIT;
    long n;

    CASE("big_file_sequential");
    int fd = (int)MUST(open("mnt/big", O_CREAT | O_RDWR | O_TRUNC, 0644));
    int bad = 0;
    for (long off = 0; off < TOTAL; off += CHUNK) {
        fill_pattern(buf, CHUNK, &st);
        h = fnv(buf, CHUNK, h);
        if (write(fd, buf, CHUNK) != CHUNK)
            bad++;
    }
    O("write errors=%d checksum=%08x", bad, h);
    T(fsync(fd));
    st_fd("fd", fd);
    T(lseek(fd, 0, SEEK_SET));
    uint32_t h2 = FNV_INIT;
    long total = 0;
    while ((n = read(fd, back, 4000)) > 0) {
        h2 = fnv(back, (size_t)n, h2);
        total += n;
    }
    O("read back %ld bytes checksum=%08x last=%ld", total, h2, n);

    CASE("big_file_random_pread");
    uint32_t x = 777, hr = FNV_INIT;
    for (int i = 0; i < 200; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        long off = (long)(x % (TOTAL + 1000));
        n = pread(fd, back, 3000, off);
        if (n > 0)
            hr = fnv(back, (size_t)n, hr);
        hr = fnv(&n, sizeof n, hr);
    }
    O("200 random preads checksum=%08x", hr);

    CASE("big_file_random_pwrite");
    x = 4242;
    for (int i = 0; i < 100; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        memset(buf, 'a' + i % 26, 5000);
        if (pwrite(fd, buf, 5000, (long)(x % TOTAL)) != 5000)
            bad++;
    }
    T(pwrite(fd, "end", 3, TOTAL + 4096 * 10 + 17));
    st_fd("fd", fd);
    T(lseek(fd, 0, SEEK_SET));
    h2 = FNV_INIT;
    total = 0;
    while ((n = read(fd, back, CHUNK)) > 0) {
        h2 = fnv(back, (size_t)n, h2);
        total += n;
    }
    O("errors=%d read back %ld bytes checksum=%08x", bad, total, h2);
    close(fd);

    CASE("big_file_reopen");
    fd = (int)MUST(open("mnt/big", O_RDONLY));
    h2 = FNV_INIT;
    while ((n = read(fd, back, 12345)) > 0)
        h2 = fnv(back, (size_t)n, h2);
    O("checksum=%08x", h2);
    T(ftruncate(fd, 0));
    close(fd);
    T(truncate("mnt/big", 4096));
    st_path("mnt/big");
    T(unlink("mnt/big"));
    free(buf);
    free(back);
}

static void open_lifetime_cases(void)
{
    int fd, fd2;
    char buf[64];
    long n;
    struct stat s;

    CASE("unlinked_open_file");
    put("mnt/ul", "still here");
    fd = (int)MUST(open("mnt/ul", O_RDWR));
    T(unlink("mnt/ul"));
    T(access("mnt/ul", F_OK));
    n = T(read(fd, buf, sizeof buf));
    show("data", buf, n);
    T(write(fd, "+more", 5));
    n = T(pread(fd, buf, sizeof buf, 0));
    show("after write", buf, n);
    MUST(fstat(fd, &s));
    O("nlink=%lu size=%lld", (unsigned long)s.st_nlink, (long long)s.st_size);
    T(fsync(fd));
    T(ftruncate(fd, 2));
    put("mnt/ul", "new file");
    n = T(pread(fd, buf, sizeof buf, 0));
    show("old fd", buf, n);
    cat("new", "mnt/ul");
    close(fd);
    cat("after close", "mnt/ul");

    CASE("renamed_open_file");
    put("mnt/rn", "renamed content");
    fd = (int)MUST(open("mnt/rn", O_RDONLY));
    T(rename("mnt/rn", "mnt/rn2"));
    n = T(read(fd, buf, 7));
    show("data", buf, n);
    close(fd);
    cat("new name", "mnt/rn2");

    CASE("replaced_open_file");
    put("mnt/old", "old bytes");
    put("mnt/new", "new bytes");
    fd = (int)MUST(open("mnt/old", O_RDONLY));
    T(rename("mnt/new", "mnt/old"));
    n = T(read(fd, buf, sizeof buf));
    show("old fd", buf, n);
    close(fd);
    cat("path", "mnt/old");
    T(access("mnt/new", F_OK));

    CASE("unlinked_dir_open");
    MUST(mkdir("mnt/gone", 0755));
    fd = (int)MUST(open("mnt/gone", O_RDONLY | O_DIRECTORY));
    T(rmdir("mnt/gone"));
    T(openat(fd, "x", O_CREAT | O_WRONLY, 0644));
    MUST(fstat(fd, &s));
    O("nlink=%lu", (unsigned long)s.st_nlink);
    close(fd);

    CASE("two_fds_one_file_truncated");
    put("mnt/tf", "0123456789");
    fd = (int)MUST(open("mnt/tf", O_RDWR));
    fd2 = (int)MUST(open("mnt/tf", O_RDWR | O_TRUNC));
    n = T(read(fd, buf, sizeof buf));
    T(write(fd2, "ab", 2));
    n = T(read(fd, buf, sizeof buf));
    n = T(pread(fd, buf, sizeof buf, 0));
    show("data", buf, n);
    close(fd);
    close(fd2);
}

static void time_cases(void)
{
    struct stat a, b;
    int fd;

    CASE("mtime_on_write");
    put("mnt/tm", "x");
    MUST(stat("mnt/tm", &a));
    sleep_ms(30);
    fd = (int)MUST(open("mnt/tm", O_RDWR));
    char c;
    MUST(read(fd, &c, 1));
    MUST(fstat(fd, &b));
    O("after read: mtime changed=%d ctime changed=%d", ts_after(b.st_mtim, a.st_mtim), ts_after(b.st_ctim, a.st_ctim));
    MUST(write(fd, "y", 1));
    MUST(fstat(fd, &b));
    O("after write: mtime changed=%d ctime changed=%d", ts_after(b.st_mtim, a.st_mtim), ts_after(b.st_ctim, a.st_ctim));
    a = b;
    sleep_ms(30);
    MUST(ftruncate(fd, 1));
    MUST(fstat(fd, &b));
    O("after ftruncate: mtime changed=%d", ts_after(b.st_mtim, a.st_mtim));
    close(fd);

    CASE("ctime_on_chmod");
    MUST(stat("mnt/tm", &a));
    sleep_ms(30);
    MUST(chmod("mnt/tm", 0600));
    MUST(stat("mnt/tm", &b));
    O("mtime changed=%d ctime changed=%d", ts_after(b.st_mtim, a.st_mtim), ts_after(b.st_ctim, a.st_ctim));

    CASE("dir_mtime_on_create_unlink");
    MUST(mkdir("mnt/td", 0755));
    MUST(stat("mnt/td", &a));
    sleep_ms(30);
    put("mnt/td/f", "x");
    MUST(stat("mnt/td", &b));
    O("create: dir mtime changed=%d", ts_after(b.st_mtim, a.st_mtim));
    a = b;
    sleep_ms(30);
    MUST(unlink("mnt/td/f"));
    MUST(stat("mnt/td", &b));
    O("unlink: dir mtime changed=%d", ts_after(b.st_mtim, a.st_mtim));

    CASE("utimensat_explicit");
    struct timespec ts[2] = {{1000000000, 123456789}, {1234567890, 987654321}};
    T(utimensat(AT_FDCWD, "mnt/tm", ts, 0));
    MUST(stat("mnt/tm", &a));
    O("atime=%lld.%09ld mtime=%lld.%09ld", (long long)a.st_atim.tv_sec, a.st_atim.tv_nsec,
      (long long)a.st_mtim.tv_sec, a.st_mtim.tv_nsec);
    struct timespec omit[2] = {{0, UTIME_OMIT}, {2000000000, 5}};
    T(utimensat(AT_FDCWD, "mnt/tm", omit, 0));
    MUST(stat("mnt/tm", &a));
    O("atime=%lld.%09ld mtime=%lld.%09ld", (long long)a.st_atim.tv_sec, a.st_atim.tv_nsec,
      (long long)a.st_mtim.tv_sec, a.st_mtim.tv_nsec);
    struct timespec now[2] = {{0, UTIME_NOW}, {0, UTIME_OMIT}};
    T(utimensat(AT_FDCWD, "mnt/tm", now, 0));
    MUST(stat("mnt/tm", &b));
    O("atime now > set=%d mtime kept=%d", b.st_atim.tv_sec > 1600000000, b.st_mtim.tv_sec == 2000000000);
    struct timespec bad[2] = {{0, 1000000000}, {0, 0}};
    T(utimensat(AT_FDCWD, "mnt/tm", bad, 0));
    T(utimensat(AT_FDCWD, "mnt/missing", ts, 0));

    CASE("futimens_utimes");
    fd = (int)MUST(open("mnt/tm", O_RDWR));
    struct timespec f2[2] = {{86400, 1}, {172800, 2}};
    T(futimens(fd, f2));
    MUST(fstat(fd, &a));
    O("atime=%lld.%09ld mtime=%lld.%09ld", (long long)a.st_atim.tv_sec, a.st_atim.tv_nsec,
      (long long)a.st_mtim.tv_sec, a.st_mtim.tv_nsec);
    close(fd);
    struct timeval tv[2] = {{300, 4}, {400, 5}};
    T(utimes("mnt/tm", tv));
    MUST(stat("mnt/tm", &a));
    O("atime=%lld.%09ld mtime=%lld.%09ld", (long long)a.st_atim.tv_sec, a.st_atim.tv_nsec,
      (long long)a.st_mtim.tv_sec, a.st_mtim.tv_nsec);
    int dfd = (int)MUST(open("mnt", O_RDONLY | O_DIRECTORY));
    T(utimensat(dfd, "tm", ts, 0));
    MUST(stat("mnt/tm", &a));
    O("at dirfd: mtime=%lld.%09ld", (long long)a.st_mtim.tv_sec, a.st_mtim.tv_nsec);
    close(dfd);
    T(utimensat(AT_FDCWD, "mnt/td", ts, 0));
    MUST(stat("mnt/td", &a));
    O("dir: mtime=%lld.%09ld", (long long)a.st_mtim.tv_sec, a.st_mtim.tv_nsec);
}

int main(void)
{
    vsa_start();
    rw_cases();
    seek_cases();
    trunc_cases();
    sync_cases();
    dup_cases();
    append_threads_case();
    big_cases();
    open_lifetime_cases();
    time_cases();
    return 0;
}
