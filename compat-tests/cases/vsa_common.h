/*
 * Helpers of the vsa_*.c programs: file cases that work only inside the relative directory
 * `mnt/` of their run directory. The harness runs them natively (`mnt/` is a kernel
 * directory) and under the shim with `mnt/` mounted as a volume
 * (`ARRAKIS_VOLUMES=vsa:<run dir>/mnt`); the observations must be the same.
 *
 * Every program calls vsa_start() first: it fixes the umask, remembers the run directory
 * (paths are printed relative to it) and prints the meta line `#fstype=<hex>` (f_type of
 * statfs("mnt")), which the harness checks: never 4152524b natively, always under the VSA
 * run, so a case cannot pass by silently running on the kernel.
 *
 * Deterministic only: no inode numbers, absolute paths or times other than those a case sets
 * itself (a time is printed as "changed: 1/0" against an earlier value).
 */
#ifndef VSA_COMMON_H
#define VSA_COMMON_H

#include "common.h"

#include <limits.h>
#include <sys/file.h>
#include <sys/statfs.h>
#include <time.h>

/* f_type the library OS reports for a path on a volume ("ARRK"). */
#define ARRAKIS_FS_MAGIC 0x4152524BL

static char run_dir[PATH_MAX];

/* Print `#fstype=<hex>` for `path` (a meta line, not compared). */
static __attribute__((unused)) void fstype_meta(const char *path)
{
    struct statfs sf;
    if (statfs(path, &sf) == 0)
        line("#fstype=%lx", (unsigned long)sf.f_type);
    else
        line("#fstype=error-%s", en(errno));
}

static __attribute__((unused)) void vsa_start(void)
{
    umask(022);
    if (!getcwd(run_dir, sizeof run_dir)) {
        line("setup: getcwd failed %s", en(errno));
        _exit(97);
    }
    fstype_meta("mnt");
}

/* A path as the program may print it: relative to the run directory ("<run>/mnt/a" ->
 * "mnt/a", "<run>" -> "."), anything else as "(outside)". */
static __attribute__((unused)) const char *rel(const char *p)
{
    static char b[4][PATH_MAX];
    static int k;
    char *s = b[k++ & 3];
    size_t n = strlen(run_dir);
    if (!p)
        return "(null)";
    if (strcmp(p, run_dir) == 0)
        return ".";
    if (strncmp(p, run_dir, n) == 0 && p[n] == '/') {
        snprintf(s, PATH_MAX, "%s", p + n + 1);
        return s;
    }
    return "(outside)";
}

/* getcwd, printed relative to the run directory. */
static __attribute__((unused)) void show_cwd(void)
{
    char b[PATH_MAX];
    if (getcwd(b, sizeof b))
        O("cwd=%s", rel(b));
    else
        O("getcwd = NULL %s", en(errno));
}

/* Create (or replace) `name` holding `data`. */
static __attribute__((unused)) void put(const char *name, const char *data)
{
    int fd = (int)MUST(open(name, O_CREAT | O_WRONLY | O_TRUNC, 0644));
    if (*data)
        MUST(write(fd, data, strlen(data)));
    close(fd);
}

/* Print the whole content of `name` (or the error). */
static __attribute__((unused)) void cat(const char *label, const char *name)
{
    char buf[1024];
    int fd = open(name, O_RDONLY);
    if (fd < 0) {
        O("%s: open = -1 %s", label, en(errno));
        return;
    }
    long n = 0, r;
    while (n < (long)sizeof buf && (r = read(fd, buf + n, sizeof buf - (size_t)n)) > 0)
        n += r;
    close(fd);
    show(label, buf, n);
}

static __attribute__((unused)) const char *ftype(mode_t m)
{
    return S_ISREG(m)    ? "REG"
           : S_ISDIR(m)  ? "DIR"
           : S_ISLNK(m)  ? "LNK"
           : S_ISFIFO(m) ? "FIFO"
           : S_ISSOCK(m) ? "SOCK"
           : S_ISCHR(m)  ? "CHR"
                         : "OTHER";
}

/* The deterministic fields of a stat: type, permissions, size (files), links, block size,
 * owner is the caller. */
static __attribute__((unused)) void show_st(const char *label, const struct stat *st)
{
    O("%s: type=%s perm=%04o size=%lld nlink=%lu blksize=%ld own=%d", label, ftype(st->st_mode),
      st->st_mode & 07777, S_ISDIR(st->st_mode) ? -1LL : (long long)st->st_size,
      (unsigned long)st->st_nlink, (long)st->st_blksize,
      st->st_uid == getuid() && st->st_gid == getgid());
}

/* stat(path) and print it (or the error). */
static __attribute__((unused)) void st_path(const char *path)
{
    struct stat st;
    if (stat(path, &st) == 0)
        show_st(path, &st);
    else
        O("stat(%s) = -1 %s", path, en(errno));
}

static __attribute__((unused)) void st_fd(const char *label, int fd)
{
    struct stat st;
    if (fstat(fd, &st) == 0)
        show_st(label, &st);
    else
        O("%s: fstat = -1 %s", label, en(errno));
}

static int cmp_cstr(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Print the entries of an open DIR stream sorted by name, each with its d_type; `.` and `..`
 * included. Consumes the stream (does not close it). */
static __attribute__((unused)) void list_stream(const char *label, DIR *d)
{
    char *names[64];
    int n = 0, total = 0;
    struct dirent *de;
    errno = 0;
    while ((de = readdir(d))) {
        total++;
        if (n < 64) {
            char t = de->d_type == DT_REG ? 'f' : de->d_type == DT_DIR ? 'd' : de->d_type == DT_UNKNOWN ? '?' : 'o';
            names[n] = malloc(strlen(de->d_name) + 3);
            sprintf(names[n], "%s:%c", de->d_name, t);
            n++;
        }
    }
    int e = errno;
    qsort(names, (size_t)n, sizeof names[0], cmp_cstr);
    char b[4096];
    size_t k = 0;
    b[0] = 0;
    for (int i = 0; i < n && k < sizeof b - 300; i++) {
        k += (size_t)snprintf(b + k, sizeof b - k, "%s%s", i ? " " : "", names[i]);
        free(names[i]);
    }
    O("%s: %d entries [%s]%s%s", label, total, b, e ? " errno=" : "", e ? en(e) : "");
}

/* List directory `path` sorted (opendir/readdir/closedir). */
static __attribute__((unused)) void ls(const char *path)
{
    DIR *d = opendir(path);
    if (!d) {
        O("opendir(%s) = NULL %s", path, en(errno));
        return;
    }
    list_stream(path, d);
    closedir(d);
}

static __attribute__((unused)) void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
        ;
}

/* a > b for timespecs. */
static __attribute__((unused)) int ts_after(struct timespec a, struct timespec b)
{
    return a.tv_sec > b.tv_sec || (a.tv_sec == b.tv_sec && a.tv_nsec > b.tv_nsec);
}

/* Deterministic pseudo-random bytes (xorshift), for bulk data. */
static __attribute__((unused)) void fill_pattern(unsigned char *buf, size_t n, uint32_t *state)
{
    uint32_t x = *state;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        buf[i] = (unsigned char)x;
    }
    *state = x;
}

#endif
