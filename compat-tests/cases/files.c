/* Path calls: open/open64/openat/creat, stdio fopen/fopen64/fdopen/fclose,
 * the stat family (incl. 64-bit and glibc __xstat forms), unlink/unlinkat,
 * rename/renameat, mkdir/rmdir, opendir/readdir/closedir, access. All paths
 * are relative to the per-run temp directory. */
#include "common.h"

#include <sys/socket.h>

/* The pre-2.33 glibc stat ABI: still exported, no longer declared. */
extern int __xstat(int ver, const char *path, struct stat *st);
extern int __lxstat(int ver, const char *path, struct stat *st);
extern int __fxstat(int ver, int fd, struct stat *st);
extern int __fxstatat(int ver, int dirfd, const char *path, struct stat *st, int flags);
extern int __xstat64(int ver, const char *path, struct stat64 *st);
extern int __lxstat64(int ver, const char *path, struct stat64 *st);
extern int __fxstat64(int ver, int fd, struct stat64 *st);
extern int __fxstatat64(int ver, int dirfd, const char *path, struct stat64 *st, int flags);
#define STAT_VER 1 /* _STAT_VER_LINUX on x86_64 */

static void put(const char *name, const char *data)
{
    int fd = (int)MUST(open(name, O_CREAT | O_WRONLY | O_TRUNC, 0644));
    MUST(write(fd, data, strlen(data)));
    close(fd);
}

static const char *ftype(mode_t m)
{
    return S_ISREG(m)    ? "REG"
           : S_ISDIR(m)  ? "DIR"
           : S_ISLNK(m)  ? "LNK"
           : S_ISFIFO(m) ? "FIFO"
           : S_ISSOCK(m) ? "SOCK"
           : S_ISCHR(m)  ? "CHR"
                         : "OTHER";
}

static void show_stat(const struct stat *st)
{
    O("type=%s perm=%04o size=%lld nlink=%lu", ftype(st->st_mode), st->st_mode & 07777,
      S_ISREG(st->st_mode) || S_ISLNK(st->st_mode) ? (long long)st->st_size : -1LL,
      S_ISDIR(st->st_mode) ? 0UL : (unsigned long)st->st_nlink);
}

static void show_stat64(const struct stat64 *st)
{
    O("type=%s perm=%04o size=%lld", ftype(st->st_mode), st->st_mode & 07777,
      S_ISREG(st->st_mode) || S_ISLNK(st->st_mode) ? (long long)st->st_size : -1LL);
}

static void open_cases(void)
{
    int fd, fd2;
    struct stat st;

    CASE("open_creat_excl");
    fd = (int)T(open("a.txt", O_CREAT | O_EXCL | O_WRONLY, 0644));
    O("flags=%s fd=%s", flflags(fd), fdflags(fd));
    T(open("a.txt", O_CREAT | O_EXCL | O_WRONLY, 0644));
    T(close(fd));
    fd = (int)T(open("a.txt", O_CREAT | O_WRONLY, 0600)); /* exists: mode untouched */
    fstat(fd, &st);
    show_stat(&st);
    close(fd);

    CASE("open_enoent");
    T(open("missing.txt", O_RDONLY));
    T(open("missing-dir/x", O_RDONLY));
    T(open("missing-dir/x", O_CREAT | O_WRONLY, 0644));
    T(open("", O_RDONLY));

    CASE("open_enotdir");
    T(open("a.txt/x", O_RDONLY));
    T(open("a.txt", O_RDONLY | O_DIRECTORY));

    CASE("open_eisdir");
    MUST(mkdir("dir1", 0755));
    T(open("dir1", O_WRONLY));
    T(open("dir1", O_RDWR));
    fd = (int)T(open("dir1", O_RDONLY));
    close(fd);
    fd = (int)T(open("dir1", O_RDONLY | O_DIRECTORY));
    close(fd);

    CASE("open_einval");
    T(open("a.txt", O_RDONLY | O_CREAT | O_DIRECTORY, 0644));
    T(open(".", O_TMPFILE | O_RDONLY, 0600));
    T(open("a.txt", O_RDONLY, 0600) >= 0);
    T(open((const char *)1, O_RDONLY));

    CASE("open_flags");
    fd = (int)T(open("a.txt", O_RDONLY));
    O("%s %s", flflags(fd), fdflags(fd));
    fd2 = (int)T(open("a.txt", O_WRONLY | O_APPEND | O_CLOEXEC));
    O("%s %s", flflags(fd2), fdflags(fd2));
    close(fd);
    close(fd2);
    fd = (int)T(open("a.txt", O_RDWR | O_NONBLOCK));
    O("%s %s", flflags(fd), fdflags(fd));
    close(fd);

    CASE("open_trunc");
    put("t.txt", "0123456789");
    fd = (int)T(open("t.txt", O_RDWR | O_TRUNC));
    fstat(fd, &st);
    O("size=%lld", (long long)st.st_size);
    close(fd);

    CASE("open_mode_umask");
    fd = (int)T(open("m777", O_CREAT | O_WRONLY, 0777));
    fstat(fd, &st);
    show_stat(&st);
    close(fd);
    fd = (int)T(open("m600", O_CREAT | O_WRONLY, 0600));
    fstat(fd, &st);
    show_stat(&st);
    close(fd);

    CASE("open64");
    fd = (int)T(open64("a.txt", O_RDONLY));
    O("%s", flflags(fd));
    close(fd);
    T(open64("missing.txt", O_RDONLY));
    fd = (int)T(open64("o64.txt", O_CREAT | O_EXCL | O_RDWR, 0640));
    fstat(fd, &st);
    show_stat(&st);
    close(fd);

    CASE("openat");
    int dfd = (int)T(open("dir1", O_RDONLY | O_DIRECTORY));
    fd = (int)T(openat(dfd, "inner.txt", O_CREAT | O_RDWR, 0644));
    T(write(fd, "inner", 5));
    close(fd);
    fd = (int)T(openat(AT_FDCWD, "dir1/inner.txt", O_RDONLY));
    char buf[32];
    long n = T(read(fd, buf, sizeof buf));
    show("data", buf, n);
    close(fd);
    T(openat(-1, "inner.txt", O_RDONLY));
    T(openat(99, "inner.txt", O_RDONLY));
    fd = (int)T(openat(-1, "/dev/null", O_RDONLY)); /* absolute: dirfd ignored */
    close(fd);
    int ffd = (int)MUST(open("a.txt", O_RDONLY));
    T(openat(ffd, "x", O_RDONLY));
    close(ffd);
    T(openat(dfd, "nope", O_RDONLY));
    T(openat64(dfd, "inner.txt", O_RDONLY) >= 0);
    close(dfd);

    CASE("creat");
    fd = (int)T(creat("c.txt", 0640));
    O("%s", flflags(fd));
    T(write(fd, "xyz", 3));
    T(read(fd, buf, 1));
    close(fd);
    fd = (int)T(creat("c.txt", 0600)); /* truncates */
    fstat(fd, &st);
    show_stat(&st);
    close(fd);
    T(creat("dir1", 0644));
    T(creat("missing-dir/c", 0644));
    T(creat64("c64.txt", 0644) >= 0);
}

static void stdio_cases(void)
{
    FILE *f;
    char buf[128];

    CASE("fopen_write_read");
    f = TP(fopen("s.txt", "w"));
    T(fprintf(f, "line one\nline two\n"));
    O("fileno flags=%s", flflags(fileno(f)));
    T(fclose(f));
    f = TP(fopen("s.txt", "r"));
    for (int i = 0; i < 3; i++) {
        char *r = fgets(buf, sizeof buf, f);
        if (r)
            show("fgets", buf, (long)strlen(buf));
        else
            O("fgets=NULL eof=%d", feof(f));
    }
    T(fclose(f));

    CASE("fopen_append_rplus");
    f = TP(fopen("s.txt", "a"));
    O("flags=%s", flflags(fileno(f)));
    fputs("line three\n", f);
    fclose(f);
    f = TP(fopen("s.txt", "r+"));
    O("flags=%s", flflags(fileno(f)));
    fputs("LINE", f);
    T(fflush(f));
    T(fseek(f, 0, SEEK_END));
    T(ftell(f));
    rewind(f);
    size_t got = fread(buf, 1, sizeof buf, f);
    show("content", buf, (long)got);
    fclose(f);

    CASE("fopen_errors");
    TP(fopen("missing.txt", "r"));
    TP(fopen("missing-dir/x", "w"));
    TP(fopen("dir1", "w"));
    TP(fopen("s.txt", "z"));

    CASE("fopen_cloexec_mode");
    f = TP(fopen("s.txt", "re"));
    O("fd=%s", fdflags(fileno(f)));
    fclose(f);
    f = TP(fopen("x.txt", "wx"));
    fclose(f);
    TP(fopen("x.txt", "wx"));

    CASE("fopen64");
    f = TP(fopen64("s.txt", "r"));
    got = fread(buf, 1, 4, f);
    show("head", buf, (long)got);
    fclose(f);
    TP(fopen64("missing.txt", "r"));

    CASE("fdopen");
    int fd = (int)MUST(open("s.txt", O_RDONLY));
    f = TP(fdopen(fd, "r"));
    got = fread(buf, 1, 5, f);
    show("head", buf, (long)got);
    T(fileno(f) == fd);
    T(fclose(f));
    T(fcntl(fd, F_GETFD)); /* fclose closed the fd */
    TP(fdopen(-1, "r"));
    fd = (int)MUST(open("s.txt", O_RDONLY));
    TP(fdopen(fd, "w"));
    TP(fdopen(fd, "q"));
    close(fd);
    int p[2];
    MUST(pipe(p));
    f = TP(fdopen(p[1], "w"));
    fputs("through-stdio", f);
    fflush(f);
    long n = T(read(p[0], buf, sizeof buf));
    show("pipe", buf, n);
    fclose(f);
    T(read(p[0], buf, sizeof buf));
    close(p[0]);

    CASE("stdio_save_pattern");
    /* Redis RDB: fwrite via stdio, fflush, fsync(fileno), fclose, rename. */
    f = TP(fopen("temp-save.rdb", "w"));
    static char big[200000];
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (char)('a' + i % 26);
    T(fwrite(big, 1, sizeof big, f));
    T(fflush(f));
    T(fsync(fileno(f)));
    T(fclose(f));
    T(rename("temp-save.rdb", "dump.rdb"));
    struct stat st;
    T(stat("dump.rdb", &st));
    O("size=%lld", (long long)st.st_size);
    f = fopen("dump.rdb", "r");
    uint32_t h = FNV_INIT;
    while ((got = fread(buf, 1, sizeof buf, f)) > 0)
        h = fnv(buf, got, h);
    O("fnv match=%d", h == fnv(big, sizeof big, FNV_INIT));
    fclose(f);

    CASE("stdio_getline_ungetc");
    put("g.txt", "alpha\nbeta\n");
    f = fopen("g.txt", "r");
    char *lp = NULL;
    size_t cap = 0;
    T(getline(&lp, &cap, f));
    int c = fgetc(f);
    T(ungetc(c, f));
    T(getline(&lp, &cap, f));
    show("line", lp, (long)strlen(lp));
    T(getline(&lp, &cap, f));
    free(lp);
    fclose(f);
}

static void stat_cases(void)
{
    struct stat st;
    struct stat64 st64;
    int fd;

    put("f.txt", "12345");
    MUST(symlink("f.txt", "link"));
    MUST(symlink("nowhere", "dangling"));

    CASE("stat_file");
    T(stat("f.txt", &st));
    show_stat(&st);
    T(stat("dir1", &st));
    show_stat(&st);
    T(stat("/dev/null", &st));
    show_stat(&st);

    CASE("stat_errors");
    T(stat("missing", &st));
    T(stat("f.txt/x", &st));
    T(stat("", &st));
    T(stat("f.txt", (struct stat *)1));
    T(stat("dangling", &st));

    CASE("lstat_symlink");
    T(lstat("link", &st));
    show_stat(&st);
    T(stat("link", &st));
    show_stat(&st);
    T(lstat("dangling", &st));
    show_stat(&st);
    T(lstat("missing", &st));

    CASE("fstat_kinds");
    fd = (int)MUST(open("f.txt", O_RDONLY));
    T(fstat(fd, &st));
    show_stat(&st);
    close(fd);
    int p[2], sv[2];
    MUST(pipe(p));
    T(fstat(p[0], &st));
    show_stat(&st);
    MUST(socketpair(AF_UNIX, SOCK_STREAM, 0, sv));
    T(fstat(sv[0], &st));
    O("type=%s", ftype(st.st_mode));
    T(fstat(-1, &st));
    T(fstat(p[1] + 10, &st));
    close(p[0]);
    close(p[1]);
    close(sv[0]);
    close(sv[1]);

    CASE("fstatat");
    int dfd = (int)MUST(open(".", O_RDONLY | O_DIRECTORY));
    T(fstatat(dfd, "link", &st, 0));
    show_stat(&st);
    T(fstatat(dfd, "link", &st, AT_SYMLINK_NOFOLLOW));
    show_stat(&st);
    T(fstatat(AT_FDCWD, "f.txt", &st, 0));
    show_stat(&st);
    fd = (int)MUST(open("f.txt", O_RDONLY));
    T(fstatat(fd, "", &st, AT_EMPTY_PATH));
    show_stat(&st);
    T(fstatat(fd, "", &st, 0));
    T(fstatat(fd, "x", &st, 0));
    T(fstatat(dfd, "f.txt", &st, 0x12340000));
    T(fstatat(-1, "f.txt", &st, 0));
    close(fd);

    CASE("statx");
    struct statx sx;
    T(statx(AT_FDCWD, "f.txt", 0, STATX_TYPE | STATX_MODE | STATX_SIZE, &sx));
    O("mask_has_size=%d type=%s perm=%04o size=%llu", !!(sx.stx_mask & STATX_SIZE),
      ftype(sx.stx_mode), sx.stx_mode & 07777, (unsigned long long)sx.stx_size);
    T(statx(dfd, "link", AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS, &sx));
    O("type=%s size=%llu", ftype(sx.stx_mode), (unsigned long long)sx.stx_size);
    fd = (int)MUST(open("f.txt", O_RDONLY));
    T(statx(fd, "", AT_EMPTY_PATH, STATX_SIZE, &sx));
    O("size=%llu", (unsigned long long)sx.stx_size);
    close(fd);
    T(statx(AT_FDCWD, "missing", 0, STATX_SIZE, &sx));
    T(statx(AT_FDCWD, "f.txt", 0, STATX__RESERVED, &sx));
    T(statx(AT_FDCWD, "f.txt", 0x7f000000, STATX_SIZE, &sx));
    close(dfd);

    CASE("stat64_family");
    T(stat64("f.txt", &st64));
    show_stat64(&st64);
    T(lstat64("link", &st64));
    show_stat64(&st64);
    fd = (int)MUST(open("f.txt", O_RDONLY));
    T(fstat64(fd, &st64));
    show_stat64(&st64);
    T(fstatat64(AT_FDCWD, "link", &st64, AT_SYMLINK_NOFOLLOW));
    show_stat64(&st64);
    T(stat64("missing", &st64));
    T(fstat64(-1, &st64));
    close(fd);

    CASE("xstat_glibc_abi");
    T(__xstat(STAT_VER, "f.txt", &st));
    show_stat(&st);
    T(__lxstat(STAT_VER, "link", &st));
    show_stat(&st);
    fd = (int)MUST(open("f.txt", O_RDONLY));
    T(__fxstat(STAT_VER, fd, &st));
    show_stat(&st);
    T(__fxstatat(STAT_VER, AT_FDCWD, "link", &st, 0));
    show_stat(&st);
    T(__xstat(STAT_VER, "missing", &st));
    T(__fxstat(STAT_VER, -1, &st));
    T(__xstat(77, "f.txt", &st));

    CASE("xstat64_glibc_abi");
    T(__xstat64(STAT_VER, "f.txt", &st64));
    show_stat64(&st64);
    T(__lxstat64(STAT_VER, "link", &st64));
    show_stat64(&st64);
    T(__fxstat64(STAT_VER, fd, &st64));
    show_stat64(&st64);
    T(__fxstatat64(STAT_VER, AT_FDCWD, "link", &st64, AT_SYMLINK_NOFOLLOW));
    show_stat64(&st64);
    T(__lxstat64(STAT_VER, "missing", &st64));
    close(fd);
}

static void namespace_cases(void)
{
    struct stat st;

    CASE("unlink");
    put("u.txt", "u");
    T(unlink("u.txt"));
    T(unlink("u.txt"));
    T(unlink("dir1"));
    T(unlink("f.txt/x"));
    T(unlink(""));
    T(unlink("dangling"));
    T(lstat("dangling", &st));

    CASE("unlink_open_file");
    put("open-unlinked.txt", "still readable");
    int fd = (int)MUST(open("open-unlinked.txt", O_RDONLY));
    T(unlink("open-unlinked.txt"));
    char buf[64];
    long n = T(read(fd, buf, sizeof buf));
    show("data", buf, n);
    T(fstat(fd, &st));
    O("nlink=%lu", (unsigned long)st.st_nlink);
    close(fd);

    CASE("unlinkat");
    int dfd = (int)MUST(open("dir1", O_RDONLY | O_DIRECTORY));
    T(unlinkat(dfd, "inner.txt", 0));
    T(unlinkat(dfd, "inner.txt", 0));
    MUST(mkdir("dir1/sub", 0755));
    T(unlinkat(dfd, "sub", 0));
    T(unlinkat(dfd, "sub", AT_REMOVEDIR));
    T(unlinkat(dfd, "x", 0x4000));
    T(unlinkat(-1, "x", 0));
    put("ua.txt", "x");
    T(unlinkat(AT_FDCWD, "ua.txt", AT_REMOVEDIR));
    T(unlinkat(AT_FDCWD, "ua.txt", 0));
    close(dfd);

    CASE("rename");
    put("r1.txt", "r1");
    put("r2.txt", "r2");
    T(rename("r1.txt", "r2.txt")); /* replaces */
    T(stat("r1.txt", &st));
    T(stat("r2.txt", &st));
    O("size=%lld", (long long)st.st_size);
    T(rename("r1.txt", "r3.txt"));
    MUST(mkdir("rd", 0755));
    MUST(mkdir("rd2", 0755));
    put("rd2/child", "c");
    T(rename("r2.txt", "rd"));
    T(rename("rd", "r2.txt"));
    T(rename("rd", "rd2"));
    T(rename("rd", "rd/inside"));
    T(rename("r2.txt", "missing-dir/r"));
    T(rename("r2.txt", "r2.txt"));
    T(rename("rd", "rd-moved"));
    T(stat("rd-moved", &st));

    CASE("renameat");
    int d1 = (int)MUST(open("rd-moved", O_RDONLY | O_DIRECTORY));
    int d2 = (int)MUST(open("rd2", O_RDONLY | O_DIRECTORY));
    T(renameat(d2, "child", d1, "moved-child"));
    T(stat("rd-moved/moved-child", &st));
    T(renameat(d2, "child", d1, "again"));
    T(renameat(-1, "x", AT_FDCWD, "y"));
    T(renameat(AT_FDCWD, "r2.txt", d1, "r2-in-dir"));
    T(renameat2(d1, "r2-in-dir", d1, "moved-child", RENAME_NOREPLACE));
    close(d1);
    close(d2);

    CASE("mkdir");
    T(mkdir("nd", 0777));
    T(stat("nd", &st));
    show_stat(&st);
    T(mkdir("nd", 0755));
    T(mkdir("missing-dir/nd", 0755));
    T(mkdir("f.txt/nd", 0755));
    T(mkdir("f.txt", 0755));
    T(mkdir("", 0755));
    T(mkdirat(AT_FDCWD, "nd2", 0700));
    T(stat("nd2", &st));
    show_stat(&st);

    CASE("rmdir");
    MUST(mkdir("full", 0755));
    put("full/file", "x");
    T(rmdir("full"));
    T(rmdir("f.txt"));
    T(rmdir("missing"));
    T(rmdir("."));
    T(rmdir("nd/.."));
    T(rmdir("nd"));
    T(rmdir("nd"));
    T(rmdir("link"));
}

static int cmp_cstr(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void list_dir(const char *label, DIR *d)
{
    char *names[256];
    int n = 0;
    struct dirent *de;
    errno = 0;
    while ((de = readdir(d)) && n < 256)
        names[n++] = strdup(de->d_name);
    int e = errno;
    qsort(names, (size_t)n, sizeof names[0], cmp_cstr);
    char b[4096];
    size_t k = 0;
    b[0] = 0;
    for (int i = 0; i < n; i++) {
        k += (size_t)snprintf(b + k, sizeof b - k, "%s%s", i ? "," : "", names[i]);
        free(names[i]);
    }
    O("%s=[%s] end_errno=%s", label, b, en(e));
}

static void dir_cases(void)
{
    DIR *d;

    CASE("opendir_readdir");
    MUST(mkdir("ls", 0755));
    put("ls/b", "b");
    put("ls/a", "a");
    MUST(mkdir("ls/c", 0755));
    MUST(symlink("a", "ls/d"));
    d = TP(opendir("ls"));
    list_dir("entries", d);
    T(closedir(d));

    CASE("readdir_types");
    d = opendir("ls");
    struct dirent *de;
    char types[256] = "";
    const char *tn[4][2] = {{"a", 0}, {"b", 0}, {"c", 0}, {"d", 0}};
    while ((de = readdir(d)))
        for (int i = 0; i < 4; i++)
            if (strcmp(de->d_name, tn[i][0]) == 0)
                tn[i][1] = de->d_type == DT_REG   ? "REG"
                           : de->d_type == DT_DIR ? "DIR"
                           : de->d_type == DT_LNK ? "LNK"
                                                  : "OTHER";
    for (int i = 0; i < 4; i++)
        snprintf(types + strlen(types), sizeof types - strlen(types), "%s=%s ", tn[i][0],
                 tn[i][1] ? tn[i][1] : "?");
    O("%s", types);
    closedir(d);

    CASE("opendir_errors");
    TP(opendir("missing"));
    TP(opendir("f.txt"));
    TP(opendir(""));

    CASE("fdopendir_rewinddir");
    int fd = (int)MUST(open("ls", O_RDONLY | O_DIRECTORY));
    d = TP(fdopendir(fd));
    T(dirfd(d) == fd);
    list_dir("first", d);
    rewinddir(d);
    list_dir("again", d);
    T(closedir(d));
    T(fcntl(fd, F_GETFD));
    fd = (int)MUST(open("f.txt", O_RDONLY));
    TP(fdopendir(fd));
    close(fd);
    TP(fdopendir(-1));

    CASE("readdir_sees_changes");
    d = opendir("ls");
    put("ls/e", "e");
    unlink("ls/b");
    list_dir("after", d);
    closedir(d);
}

static void access_cases(void)
{
    CASE("access");
    T(access("f.txt", F_OK));
    T(access("f.txt", R_OK | W_OK));
    T(access("missing", F_OK));
    T(access("f.txt/x", F_OK));
    T(access("f.txt", 0x40));
    T(access("dir1", X_OK));
    T(access("dangling", F_OK));
    T(access("link", R_OK));

    CASE("faccessat");
    T(faccessat(AT_FDCWD, "f.txt", R_OK, 0));
    T(faccessat(AT_FDCWD, "link", F_OK, AT_SYMLINK_NOFOLLOW));
    T(faccessat(-1, "f.txt", F_OK, 0));
    T(faccessat(AT_FDCWD, "f.txt", F_OK, 0x1));
}

int main(void)
{
    umask(022);
    open_cases();
    stdio_cases();
    stat_cases();
    namespace_cases();
    dir_cases();
    access_cases();
    return 0;
}
