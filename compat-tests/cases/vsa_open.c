/* Files on a volume: open flags and modes, access checks, fcntl flags, permissions, stat
 * fields, trailing slashes, `.` and `..`, long names. Everything under mnt/ (see
 * vsa_common.h). */
#include "vsa_common.h"

static void open_cases(void)
{
    int fd, fd2;
    char buf[64];

    CASE("creat_excl");
    fd = (int)T(open("mnt/a", O_CREAT | O_EXCL | O_WRONLY, 0644));
    O("flags=%s fd=%s", flflags(fd), fdflags(fd));
    T(open("mnt/a", O_CREAT | O_EXCL | O_WRONLY, 0644));
    T(open("mnt/a", O_CREAT | O_EXCL | O_RDONLY, 0600));
    T(close(fd));
    st_path("mnt/a");

    CASE("creat_existing_keeps_mode");
    fd = (int)T(open("mnt/a", O_CREAT | O_WRONLY, 0600));
    st_fd("fd", fd);
    close(fd);

    CASE("excl_without_creat");
    fd = (int)T(open("mnt/a", O_EXCL | O_RDONLY));
    close(fd);

    CASE("enoent");
    T(open("mnt/missing", O_RDONLY));
    T(open("mnt/nodir/x", O_RDONLY));
    T(open("mnt/nodir/x", O_CREAT | O_WRONLY, 0644));
    T(open("mnt/missing", O_WRONLY));

    CASE("enotdir");
    T(open("mnt/a/x", O_RDONLY));
    T(open("mnt/a/x", O_CREAT | O_RDWR, 0644));
    T(open("mnt/a", O_RDONLY | O_DIRECTORY));

    CASE("dir_open_modes");
    MUST(mkdir("mnt/d", 0755));
    T(open("mnt/d", O_WRONLY));
    T(open("mnt/d", O_RDWR));
    T(open("mnt/d", O_CREAT | O_WRONLY, 0644));
    T(open("mnt/d", O_RDONLY | O_TRUNC));
    fd = (int)T(open("mnt/d", O_RDONLY));
    O("flags=%s", flflags(fd));
    close(fd);
    fd = (int)T(open("mnt/d", O_RDONLY | O_DIRECTORY));
    T(read(fd, buf, sizeof buf));
    T(write(fd, "x", 1));
    close(fd);

    CASE("creat_directory_einval");
    T(open("mnt/newdir", O_RDONLY | O_CREAT | O_DIRECTORY, 0755));
    T(access("mnt/newdir", F_OK));

    CASE("rdonly_write_ebadf");
    put("mnt/r", "readonly");
    fd = (int)T(open("mnt/r", O_RDONLY));
    T(write(fd, "x", 1));
    T(pwrite(fd, "x", 1, 0));
    T(ftruncate(fd, 0));
    T(read(fd, buf, 4));
    close(fd);

    CASE("wronly_read_ebadf");
    fd = (int)T(open("mnt/r", O_WRONLY));
    T(read(fd, buf, 4));
    T(pread(fd, buf, 4, 0));
    T(write(fd, "W", 1));
    close(fd);
    cat("content", "mnt/r");

    CASE("trunc");
    put("mnt/t", "0123456789");
    fd = (int)T(open("mnt/t", O_RDWR | O_TRUNC));
    st_fd("fd", fd);
    T(read(fd, buf, sizeof buf));
    close(fd);

    CASE("trunc_rdonly");
    put("mnt/t2", "0123456789");
    fd = (int)T(open("mnt/t2", O_RDONLY | O_TRUNC));
    st_fd("fd", fd);
    close(fd);

    CASE("append");
    put("mnt/ap", "abc");
    fd = (int)T(open("mnt/ap", O_WRONLY | O_APPEND));
    O("flags=%s", flflags(fd));
    T(lseek(fd, 0, SEEK_CUR));
    T(write(fd, "def", 3));
    T(lseek(fd, 0, SEEK_CUR));
    T(lseek(fd, 0, SEEK_SET));
    T(write(fd, "ghi", 3));
    T(lseek(fd, 0, SEEK_CUR));
    close(fd);
    cat("content", "mnt/ap");

    CASE("append_pwrite_appends");
    fd = (int)T(open("mnt/ap", O_RDWR | O_APPEND));
    T(pwrite(fd, "P", 1, 0));
    T(pread(fd, buf, 3, 0));
    close(fd);
    cat("content", "mnt/ap");

    CASE("setfl_append");
    put("mnt/sf", "12345");
    fd = (int)T(open("mnt/sf", O_WRONLY));
    T(write(fd, "a", 1));
    T(fcntl(fd, F_SETFL, O_APPEND));
    O("flags=%s", flflags(fd));
    T(write(fd, "b", 1));
    T(fcntl(fd, F_SETFL, 0));
    T(lseek(fd, 1, SEEK_SET));
    T(write(fd, "c", 1));
    close(fd);
    cat("content", "mnt/sf");

    CASE("cloexec");
    fd = (int)T(open("mnt/a", O_RDONLY | O_CLOEXEC));
    O("fd=%s", fdflags(fd));
    T(fcntl(fd, F_SETFD, 0));
    O("fd=%s", fdflags(fd));
    close(fd);
    fd = (int)MUST(open("mnt/a", O_RDONLY));
    O("plain fd=%s", fdflags(fd));
    fd2 = (int)fcntl(fd, F_DUPFD_CLOEXEC, 0);
    O("dupfd_cloexec fd=%s", fdflags(fd2));
    close(fd2);
    close(fd);

    CASE("nofollow_regular");
    fd = (int)T(open("mnt/a", O_RDONLY | O_NOFOLLOW));
    close(fd);
    fd = (int)T(open("mnt/d", O_RDONLY | O_NOFOLLOW | O_DIRECTORY));
    close(fd);

    CASE("nonblock_regular");
    fd = (int)T(open("mnt/r", O_RDWR | O_NONBLOCK));
    O("flags=%s", flflags(fd));
    T(read(fd, buf, 4));
    close(fd);

    CASE("dsync_sync_flags");
    fd = (int)T(open("mnt/sync", O_CREAT | O_WRONLY | O_DSYNC, 0644));
    O("dsync=%d", (fcntl(fd, F_GETFL) & O_DSYNC) == O_DSYNC);
    T(write(fd, "durable", 7));
    close(fd);
    fd = (int)T(open("mnt/sync", O_WRONLY | O_SYNC | O_APPEND));
    O("sync=%d", (fcntl(fd, F_GETFL) & O_SYNC) == O_SYNC);
    T(write(fd, "!", 1));
    close(fd);
    cat("content", "mnt/sync");

    CASE("creat_call");
    fd = (int)T(creat("mnt/c", 0640));
    O("flags=%s", flflags(fd));
    T(write(fd, "x", 1));
    T(read(fd, buf, 1));
    close(fd);
    fd = (int)T(creat("mnt/c", 0600));
    st_fd("fd", fd);
    close(fd);

    CASE("open64_openat64");
    fd = (int)T(open64("mnt/a", O_RDONLY) >= 0);
    fd = (int)T(openat64(AT_FDCWD, "mnt/o64", O_CREAT | O_RDWR, 0644) >= 0);
    st_path("mnt/o64");

    CASE("lowest_fd");
    fd = (int)MUST(open("mnt/a", O_RDONLY));
    fd2 = (int)MUST(open("mnt/r", O_RDONLY));
    O("consecutive=%d", fd2 == fd + 1);
    close(fd);
    int fd3 = (int)MUST(open("mnt/t", O_RDONLY));
    O("reused=%d", fd3 == fd);
    close(fd2);
    close(fd3);

    CASE("empty_path");
    T(open("", O_RDONLY));
    T(stat("", &(struct stat){0}));
    T(mkdir("", 0755));
}

static void mode_cases(void)
{
    int fd;

    CASE("umask_applied");
    fd = (int)T(open("mnt/m777", O_CREAT | O_WRONLY, 0777));
    st_fd("fd", fd);
    close(fd);
    mode_t old = umask(077);
    O("old umask=%03o", old);
    fd = (int)T(open("mnt/m077", O_CREAT | O_WRONLY, 0666));
    st_fd("fd", fd);
    close(fd);
    T(mkdir("mnt/dmask", 0777));
    st_path("mnt/dmask");
    umask(0);
    fd = (int)T(open("mnt/m000", O_CREAT | O_WRONLY, 0666));
    st_fd("fd", fd);
    close(fd);
    umask(022);

    CASE("chmod");
    put("mnt/ch", "x");
    T(chmod("mnt/ch", 0600));
    st_path("mnt/ch");
    T(chmod("mnt/ch", 04755));
    st_path("mnt/ch");
    T(chmod("mnt/ch", 0644));
    T(chmod("mnt/missing", 0644));
    T(chmod("mnt/ch/x", 0644));
    T(chmod("mnt/d", 0700));
    st_path("mnt/d");
    T(chmod("mnt/d", 0755));

    CASE("fchmod_fchmodat");
    fd = (int)MUST(open("mnt/ch", O_RDONLY));
    T(fchmod(fd, 0640));
    st_fd("fd", fd);
    close(fd);
    int dfd = (int)MUST(open("mnt", O_RDONLY | O_DIRECTORY));
    T(fchmodat(dfd, "ch", 0604, 0));
    st_path("mnt/ch");
    T(fchmodat(dfd, "nope", 0604, 0));
    close(dfd);

    CASE("access");
    put("mnt/acc", "x");
    T(chmod("mnt/acc", 0644));
    T(access("mnt/acc", F_OK));
    T(access("mnt/acc", R_OK));
    T(access("mnt/acc", R_OK | W_OK));
    T(access("mnt/acc", X_OK));
    T(chmod("mnt/acc", 0755));
    T(access("mnt/acc", X_OK));
    T(access("mnt/missing", F_OK));
    T(access("mnt/acc/x", F_OK));
    T(access("mnt/d", X_OK));
    T(access("mnt/acc", 0x40));

    CASE("faccessat");
    dfd = (int)MUST(open("mnt", O_RDONLY | O_DIRECTORY));
    T(faccessat(dfd, "acc", R_OK, 0));
    T(faccessat(dfd, "acc", W_OK, AT_EACCESS));
    T(faccessat(dfd, "missing", F_OK, 0));
    T(faccessat(dfd, "d", X_OK, 0));
    int ffd = (int)MUST(open("mnt/acc", O_RDONLY));
    T(faccessat(ffd, "x", F_OK, 0));
    close(ffd);
    close(dfd);

    CASE("stat_fields");
    put("mnt/sz", "hello, world");
    st_path("mnt/sz");
    st_path("mnt/d");
    struct stat a, b;
    MUST(stat("mnt/sz", &a));
    MUST(stat("mnt/d", &b));
    O("same dev=%d distinct ino=%d", a.st_dev == b.st_dev, a.st_ino != b.st_ino);
    fd = (int)MUST(open("mnt/sz", O_RDONLY));
    struct stat c;
    MUST(fstat(fd, &c));
    O("fstat matches stat: ino=%d dev=%d", a.st_ino == c.st_ino, a.st_dev == c.st_dev);
    close(fd);
    MUST(lstat("mnt/sz", &c));
    O("lstat matches stat: ino=%d", a.st_ino == c.st_ino);
    show_st("lstat", &c);

    CASE("stat_dir_nlink");
    MUST(mkdir("mnt/nl", 0755));
    st_path("mnt/nl");
    MUST(mkdir("mnt/nl/s1", 0755));
    MUST(mkdir("mnt/nl/s2", 0755));
    put("mnt/nl/f", "x");
    st_path("mnt/nl");
    MUST(rmdir("mnt/nl/s1"));
    st_path("mnt/nl");

    CASE("stat_errors");
    struct stat s;
    T(stat("mnt/missing", &s));
    T(stat("mnt/sz/x", &s));
    T(lstat("mnt/missing", &s));
    T(stat("mnt/nodir/x", &s));
    T(fstat(-1, &s));

    CASE("fstatat");
    dfd = (int)MUST(open("mnt", O_RDONLY | O_DIRECTORY));
    if (T(fstatat(dfd, "sz", &s, 0)) == 0)
        show_st("sz", &s);
    if (T(fstatat(dfd, "sz", &s, AT_SYMLINK_NOFOLLOW)) == 0)
        show_st("sz nofollow", &s);
    fd = (int)MUST(openat(dfd, "sz", O_RDONLY));
    if (T(fstatat(fd, "", &s, AT_EMPTY_PATH)) == 0)
        show_st("empty path", &s);
    T(fstatat(fd, "x", &s, 0));
    close(fd);
    if (T(fstatat(dfd, "", &s, AT_EMPTY_PATH)) == 0)
        show_st("dir empty path", &s);
    if (T(fstatat(dfd, ".", &s, 0)) == 0)
        show_st("dot", &s);
    T(fstatat(dfd, "missing", &s, 0));
    T(fstatat(dfd, "sz", &s, 0x1234));
    close(dfd);

    CASE("statx");
    struct statx sx;
    if (T(statx(AT_FDCWD, "mnt/sz", 0, STATX_BASIC_STATS, &sx)) == 0)
        O("type=%s perm=%04o size=%llu nlink=%u mask_has_size=%d", ftype(sx.stx_mode), sx.stx_mode & 07777,
          (unsigned long long)sx.stx_size, sx.stx_nlink, !!(sx.stx_mask & STATX_SIZE));
    T(statx(AT_FDCWD, "mnt/missing", 0, STATX_BASIC_STATS, &sx));

    CASE("readlink_regular");
    char lb[64];
    T(readlink("mnt/sz", lb, sizeof lb));
    T(readlink("mnt/missing", lb, sizeof lb));
}

static void path_cases(void)
{
    int fd;
    struct stat s;

    CASE("trailing_slash");
    put("mnt/ts", "x");
    MUST(mkdir("mnt/tsd", 0755));
    T(open("mnt/ts/", O_RDONLY));
    T(open("mnt/new/", O_CREAT | O_WRONLY, 0644));
    T(access("mnt/new", F_OK));
    T(stat("mnt/ts/", &s));
    if (T(stat("mnt/tsd/", &s)) == 0)
        show_st("tsd/", &s);
    fd = (int)T(open("mnt/tsd/", O_RDONLY));
    close(fd);
    T(unlink("mnt/ts/"));
    T(unlink("mnt/tsd/"));
    T(mkdir("mnt/tsn/", 0755));
    T(rmdir("mnt/tsn/"));
    T(rename("mnt/ts", "mnt/ts2/"));
    T(rename("mnt/ts/", "mnt/ts2"));
    T(rename("mnt/tsd/", "mnt/tsd2/"));
    T(access("mnt/tsd2", F_OK));

    CASE("dot_and_dotdot");
    put("mnt/tsd2/in", "inside");
    cat("via dot", "mnt/./tsd2/./in");
    cat("via dotdot", "mnt/tsd2/../tsd2/in");
    cat("via mnt dotdot", "mnt/../mnt/tsd2/in");
    cat("doubled slashes", "mnt//tsd2///in");
    T(stat("mnt/tsd2/in/..", &s));
    T(stat("mnt/missing/..", &s));
    if (T(stat("mnt/tsd2/..", &s)) == 0)
        show_st("tsd2/..", &s);
    T(mkdir("mnt/tsd2/.", 0755));
    T(mkdir("mnt/tsd2/..", 0755));
    T(rmdir("mnt/tsd2/."));
    T(rmdir("mnt/tsd2/.."));
    T(unlink("mnt/tsd2/."));
    T(rename("mnt/tsd2/.", "mnt/x"));
    T(rename("mnt/tsd2/in", "mnt/tsd2/."));
    T(open("mnt/tsd2/.", O_RDONLY | O_CREAT, 0644));

    CASE("long_names");
    char name[300], path[400];
    memset(name, 'n', 255);
    name[255] = 0;
    snprintf(path, sizeof path, "mnt/%s", name);
    fd = (int)T(open(path, O_CREAT | O_WRONLY, 0644) >= 0);
    T(access(path, F_OK));
    T(unlink(path));
    memset(name, 'n', 256);
    name[256] = 0;
    snprintf(path, sizeof path, "mnt/%s", name);
    T(open(path, O_CREAT | O_WRONLY, 0644));
    T(mkdir(path, 0755));
    T(stat(path, &s));
    T(access(path, F_OK));

    CASE("path_max");
    char *big = malloc(PATH_MAX + 16);
    strcpy(big, "mnt/");
    size_t k = 4;
    for (; k < PATH_MAX + 8; k++)
        big[k] = (k % 2) ? '/' : 'x';
    big[k] = 0;
    T(open(big, O_RDONLY));
    T(stat(big, &s));
    free(big);

    CASE("names_odd_bytes");
    const char *odd[] = {"mnt/sp ace", "mnt/tab\tname", "mnt/ütf-8", "mnt/-dash", "mnt/.hidden", "mnt/...", "mnt/nl\nname"};
    for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++) {
        fd = open(odd[i], O_CREAT | O_WRONLY, 0644);
        O("create #%zu: %d %s", i, fd >= 0, fd >= 0 ? "0" : en(errno));
        if (fd >= 0)
            close(fd);
        O("access #%zu: %d", i, access(odd[i], F_OK));
    }
}

static void lock_cases(void)
{
    CASE("locks_single_process");
    put("mnt/lk", "lock me");
    int fd = (int)MUST(open("mnt/lk", O_RDWR));
    T(flock(fd, LOCK_EX));
    T(flock(fd, LOCK_EX | LOCK_NB));
    T(flock(fd, LOCK_UN));
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
    T(fcntl(fd, F_SETLK, &fl));
    fl.l_type = F_WRLCK;
    T(fcntl(fd, F_GETLK, &fl));
    O("getlk type unlck=%d", fl.l_type == F_UNLCK);
    fl.l_type = F_UNLCK;
    T(fcntl(fd, F_SETLK, &fl));
    close(fd);
}

int main(void)
{
    vsa_start();
    open_cases();
    mode_cases();
    path_cases();
    lock_cases();
    return 0;
}
