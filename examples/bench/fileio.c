/* File I/O micro-benchmarks for examples/bench-storage.sh. Each mode prints `name value`
 * lines (latencies in microseconds, throughput in MiB/s or operations/s) and a meta line
 * `#vsa=1` when DIR is on an Arrakis volume (statfs f_type 0x4152524B), `#vsa=0` otherwise.
 *
 *   fileio floor FILE COUNT      the storage floor: COUNT x (4 KiB pwrite + fdatasync) into a
 *                                preallocated, zero-filled 1 MiB file (written and fsynced
 *                                first, so no allocation or size change is on the path)
 *   fileio fsync DIR COUNT       COUNT x (4 KiB append + fsync) to a new file in DIR
 *   fileio seq DIR MIB           write MIB MiB sequentially (1 MiB writes, then fsync; the time
 *                                includes the fsync), then read it back (1 MiB reads)
 *   fileio rand DIR MIB COUNT    on the file `seq` left: COUNT random 4 KiB preads, then COUNT
 *                                random 4 KiB pwrites and one fsync; removes the file
 *
 * 20 untimed operations precede the timed latency loops. Exit status 1 on any error. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <time.h>
#include <unistd.h>

#define BLK 4096
#define WARMUP 20
#define ARRAKIS_FS_MAGIC 0x4152524BL

static void fail(const char *what)
{
    fprintf(stderr, "fileio: %s: %s\n", what, strerror(errno));
    exit(1);
}

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* p50, p99 and mean of n samples (sorts them). */
static void report(const char *name, double *v, long n)
{
    double sum = 0;
    for (long i = 0; i < n; i++)
        sum += v[i];
    qsort(v, (size_t)n, sizeof v[0], cmp_d);
    long p99 = (long)((double)n * 0.99);
    if (p99 >= n)
        p99 = n - 1;
    printf("%s_us_p50 %.2f\n%s_us_p99 %.2f\n%s_us_mean %.2f\n", name, v[n / 2], name, v[p99], name, sum / (double)n);
}

static void vsa_meta(const char *dir)
{
    struct statfs sf;
    if (statfs(dir, &sf) != 0)
        fail("statfs");
    printf("#vsa=%d\n", sf.f_type == ARRAKIS_FS_MAGIC);
}

static void write_all(int fd, const char *buf, size_t n, const char *what)
{
    while (n > 0) {
        ssize_t w = write(fd, buf, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            fail(what);
        }
        buf += w;
        n -= (size_t)w;
    }
}

static uint64_t rng = 88172645463325252ULL;
static uint64_t next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void mode_floor(const char *file, long count)
{
    enum { SLOTS = 256 };
    static char zero[BLK * SLOTS];
    char *dir = strdup(file);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = 0;
    vsa_meta(slash ? dir : ".");
    int fd = open(file, O_CREAT | O_TRUNC | O_RDWR, 0644);
    if (fd < 0)
        fail("open");
    write_all(fd, zero, sizeof zero, "preallocate");
    if (fsync(fd) != 0)
        fail("fsync");
    char blk[BLK];
    memset(blk, 'f', sizeof blk);
    double *v = malloc(sizeof(double) * (size_t)count);
    for (long i = -WARMUP; i < count; i++) {
        off_t off = (off_t)((i + WARMUP) % SLOTS) * BLK;
        double t0 = now_us();
        if (pwrite(fd, blk, BLK, off) != BLK)
            fail("pwrite");
        if (fdatasync(fd) != 0)
            fail("fdatasync");
        if (i >= 0)
            v[i] = now_us() - t0;
    }
    report("floor", v, count);
    close(fd);
    unlink(file);
}

static void mode_fsync(const char *dir, long count)
{
    vsa_meta(dir);
    char path[4096];
    snprintf(path, sizeof path, "%s/fsync.dat", dir);
    int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY | O_APPEND, 0644);
    if (fd < 0)
        fail("open");
    char blk[BLK];
    memset(blk, 'w', sizeof blk);
    double *v = malloc(sizeof(double) * (size_t)count);
    for (long i = -WARMUP; i < count; i++) {
        double t0 = now_us();
        write_all(fd, blk, BLK, "write");
        if (fsync(fd) != 0)
            fail("fsync");
        if (i >= 0)
            v[i] = now_us() - t0;
    }
    report("write_fsync", v, count);
    close(fd);
    if (unlink(path) != 0)
        fail("unlink");
}

static void mode_seq(const char *dir, long mib)
{
    vsa_meta(dir);
    char path[4096];
    snprintf(path, sizeof path, "%s/seq.dat", dir);
    size_t chunk = 1 << 20;
    char *buf = malloc(chunk);
    for (size_t i = 0; i < chunk; i++)
        buf[i] = (char)(next_rand() & 0xff);
    int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0644);
    if (fd < 0)
        fail("open");
    double t0 = now_us();
    for (long i = 0; i < mib; i++)
        write_all(fd, buf, chunk, "write");
    if (fsync(fd) != 0)
        fail("fsync");
    double t1 = now_us();
    close(fd);
    printf("seq_write_mibps %.1f\n", (double)mib / ((t1 - t0) / 1e6));
    fd = open(path, O_RDONLY);
    if (fd < 0)
        fail("open");
    long total = 0;
    ssize_t r;
    t0 = now_us();
    while ((r = read(fd, buf, chunk)) > 0)
        total += r;
    t1 = now_us();
    if (r < 0)
        fail("read");
    close(fd);
    if (total != mib * (long)chunk) {
        fprintf(stderr, "fileio: read back %ld bytes, wrote %ld\n", total, mib * (long)chunk);
        exit(1);
    }
    printf("seq_read_mibps %.1f\n", (double)mib / ((t1 - t0) / 1e6));
}

static void mode_rand(const char *dir, long mib, long count)
{
    vsa_meta(dir);
    char path[4096];
    snprintf(path, sizeof path, "%s/seq.dat", dir);
    int fd = open(path, O_RDWR);
    if (fd < 0)
        fail("open (run seq first)");
    long blocks = mib * (1 << 20) / BLK;
    char blk[BLK];
    double t0 = now_us();
    for (long i = 0; i < count; i++)
        if (pread(fd, blk, BLK, (off_t)(next_rand() % (uint64_t)blocks) * BLK) != BLK)
            fail("pread");
    double t1 = now_us();
    printf("rand_read_iops %.0f\n", (double)count / ((t1 - t0) / 1e6));
    memset(blk, 'r', sizeof blk);
    t0 = now_us();
    for (long i = 0; i < count; i++)
        if (pwrite(fd, blk, BLK, (off_t)(next_rand() % (uint64_t)blocks) * BLK) != BLK)
            fail("pwrite");
    if (fsync(fd) != 0)
        fail("fsync");
    t1 = now_us();
    printf("rand_write_iops %.0f\n", (double)count / ((t1 - t0) / 1e6));
    close(fd);
    if (unlink(path) != 0)
        fail("unlink");
}

static long num(const char *s)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == 0 || *end != 0 || v < 1) {
        fprintf(stderr, "fileio: not a positive number: %s\n", s);
        exit(2);
    }
    return v;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 4 && strcmp(argv[1], "floor") == 0)
        mode_floor(argv[2], num(argv[3]));
    else if (argc == 4 && strcmp(argv[1], "fsync") == 0)
        mode_fsync(argv[2], num(argv[3]));
    else if (argc == 4 && strcmp(argv[1], "seq") == 0)
        mode_seq(argv[2], num(argv[3]));
    else if (argc == 5 && strcmp(argv[1], "rand") == 0)
        mode_rand(argv[2], num(argv[3]), num(argv[4]));
    else {
        fprintf(stderr, "usage: fileio floor FILE COUNT | fsync DIR COUNT | seq DIR MIB | rand DIR MIB COUNT\n");
        return 2;
    }
    return 0;
}
