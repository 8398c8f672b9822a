/* Processes: fork (child I/O, shared offsets, fd table copy, waitpid),
 * vfork+_exit, vfork+execve, every exec variant (execve, execv, execvp,
 * execvpe, execl, execlp, execle, fexecve) re-running this program in child
 * mode, O_CLOEXEC across exec, and exec errors.
 *
 * Child mode: `procs child CASE MODE ARGS...`. The constructor in common.h
 * prints the `#shim=` meta line in the child too, so the harness sees
 * whether the preload survived each exec. */
#include "common.h"

#include <libgen.h>
#include <spawn.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

extern char **environ;
static char self[4096];
static char selfdir[4096];

/* ---- child mode ---------------------------------------------------------- */

static int child_main(int argc, char **argv)
{
    if (argc < 4)
        return 2;
    CASE(strdup(argv[2]));
    const char *mode = argv[3];
    if (strcmp(mode, "env") == 0) {
        O("child argc=%d", argc);
        for (int i = 4; i < argc; i++)
            O("child argv[%d]=\"%s\"", i, argv[i]);
        print_env("child env");
        list_fds("child fds");
        return 0;
    }
    if (strcmp(mode, "fds") == 0) {
        list_fds("child fds");
        for (int i = 4; i < argc; i++) {
            int fd = atoi(argv[i]);
            errno = 0;
            int r = fcntl(fd, F_GETFD);
            O("child fcntl(%d, F_GETFD) = %d %s", fd, r, r < 0 ? en(errno) : "");
        }
        return 0;
    }
    if (strcmp(mode, "write") == 0 && argc >= 6) {
        int fd = atoi(argv[4]);
        long n = write(fd, argv[5], strlen(argv[5]));
        O("child write(%d) = %ld %s", fd, n, n < 0 ? en(errno) : "");
        return 0;
    }
    if (strcmp(mode, "exit") == 0 && argc >= 5)
        return atoi(argv[4]);
    return 3;
}

/* ---- helpers ---------------------------------------------------------------- */

static void wait_child(pid_t pid)
{
    int st = 0;
    errno = 0;
    pid_t r = waitpid(pid, &st, 0);
    if (r != pid) {
        O("waitpid failed: %s", en(errno));
        return;
    }
    show_status("child status", st);
}

static char *explicit_env[] = {"COMPAT_MARK=explicit", "LC_ALL=C", NULL};

/* ---- fork ------------------------------------------------------------------- */

static void fork_cases(void)
{
    int p[2];
    char buf[64];
    long n;

    CASE("fork_basic");
    MUST(pipe(p));
    pid_t pid = fork();
    if (pid == 0) {
        close(p[0]);
        write(p[1], "from-child", 10);
        _exit(7);
    }
    O("fork returned child: %d", pid > 0);
    close(p[1]);
    n = T(read(p[0], buf, sizeof buf));
    show("data", buf, n);
    T(read(p[0], buf, sizeof buf));
    close(p[0]);
    wait_child(pid);

    CASE("fork_child_prints");
    pid = fork();
    if (pid == 0) {
        O("child: getppid is parent: %d", getppid() != getpid());
        int q[2];
        T(pipe(q));
        O("child: pipe fds %d,%d", q[0], q[1]);
        list_fds("child fds");
        _exit(0);
    }
    wait_child(pid);

    CASE("fork_fd_table_copy");
    int fd = (int)MUST(open("forkfile", O_CREAT | O_RDWR | O_TRUNC, 0644));
    pid = fork();
    if (pid == 0) {
        close(fd);
        int f2 = open("/dev/null", O_RDONLY);
        _exit(f2 == fd ? 10 : 11); /* the freed number is reused in the child */
    }
    wait_child(pid);
    T(fcntl(fd, F_GETFD)); /* still open in the parent */

    CASE("fork_shared_offset");
    T(write(fd, "parent1-", 8));
    pid = fork();
    if (pid == 0) {
        write(fd, "child-", 6);
        _exit(0);
    }
    wait_child(pid);
    T(write(fd, "parent2", 7));
    T(lseek(fd, 0, SEEK_CUR));
    n = T(pread(fd, buf, sizeof buf, 0));
    show("content", buf, n);
    close(fd);

    CASE("fork_socketpair_echo");
    int sv[2];
    MUST(socketpair(AF_UNIX, SOCK_STREAM, 0, sv));
    pid = fork();
    if (pid == 0) {
        close(sv[0]);
        char b[64];
        long r;
        while ((r = read(sv[1], b, sizeof b)) > 0) {
            for (long i = 0; i < r; i++)
                if (b[i] >= 'a' && b[i] <= 'z')
                    b[i] = (char)(b[i] - 32);
            write(sv[1], b, (size_t)r);
        }
        _exit(0);
    }
    close(sv[1]);
    T(write(sv[0], "shout", 5));
    n = T(read(sv[0], buf, sizeof buf));
    show("echo", buf, n);
    T(shutdown(sv[0], SHUT_WR));
    T(read(sv[0], buf, sizeof buf));
    close(sv[0]);
    wait_child(pid);

    CASE("fork_wait_variants");
    MUST(pipe(p));
    pid = fork();
    if (pid == 0) {
        close(p[1]);
        char c;
        read(p[0], &c, 1); /* wait for the parent's go */
        _exit(c);
    }
    close(p[0]);
    int st = 0;
    T(waitpid(pid, &st, WNOHANG));
    T(write(p[1], "\x05", 1));
    close(p[1]);
    T(waitpid(pid, &st, 0) == pid);
    show_status("child status", st);
    T(waitpid(pid, &st, 0));
    T(waitpid(-1, &st, WNOHANG));
    T(wait(&st));

    CASE("fork_child_killed");
    pid = fork();
    if (pid == 0) {
        pause();
        _exit(0);
    }
    kill(pid, SIGKILL);
    wait_child(pid);

    CASE("fork_child_inherits_pending_data");
    MUST(pipe(p));
    MUST(write(p[1], "buffered", 8));
    pid = fork();
    if (pid == 0) {
        char b[16];
        long r = read(p[0], b, sizeof b);
        _exit(r == 8 && memcmp(b, "buffered", 8) == 0 ? 20 : 21);
    }
    wait_child(pid);
    T(read(p[0], buf, 0));
    T(fcntl(p[0], F_SETFL, O_NONBLOCK));
    T(read(p[0], buf, sizeof buf)); /* consumed by the child */
    close(p[0]);
    close(p[1]);
}

/* ---- vfork ------------------------------------------------------------------ */

static void vfork_cases(void)
{
    CASE("vfork_exit");
    pid_t pid = vfork();
    if (pid == 0)
        _exit(3);
    wait_child(pid);

    CASE("vfork_execve");
    char *av[] = {self, "child", "vfork_execve", "env", "via-vfork", NULL};
    pid = vfork();
    if (pid == 0) {
        execve(self, av, explicit_env);
        _exit(127);
    }
    wait_child(pid);

    CASE("vfork_execve_empty_env");
    char *av2[] = {self, "child", "vfork_execve_empty_env", "env", NULL};
    char *none[] = {NULL};
    pid = vfork();
    if (pid == 0) {
        execve(self, av2, none);
        _exit(127);
    }
    wait_child(pid);

    CASE("vfork_execve_fails");
    char *av3[] = {"nope", NULL};
    pid = vfork();
    if (pid == 0) {
        execve("./does-not-exist", av3, explicit_env);
        _exit(errno == ENOENT ? 44 : 45);
    }
    wait_child(pid);
}

/* ---- exec family -------------------------------------------------------- */

enum variant { V_EXECVE, V_EXECV, V_EXECVP, V_EXECVPE, V_EXECL, V_EXECLP, V_EXECLE, V_FEXECVE };

static void run_variant(const char *name, enum variant v)
{
    CASE(name);
    char *base = basename(strdup(self));
    pid_t pid = fork();
    if (pid == 0) {
        /* deterministic inherited environment */
        setenv("COMPAT_MARK", "inherited", 1);
        setenv("PATH", selfdir, 1);
        char *av[] = {self, "child", (char *)name, "env", "arg one", "", NULL};
        char *avp[] = {base, "child", (char *)name, "env", "arg one", "", NULL};
        switch (v) {
        case V_EXECVE:
            execve(self, av, explicit_env);
            break;
        case V_EXECV:
            execv(self, av);
            break;
        case V_EXECVP:
            execvp(base, avp);
            break;
        case V_EXECVPE:
            execvpe(base, avp, explicit_env);
            break;
        case V_EXECL:
            execl(self, self, "child", name, "env", "arg one", "", (char *)NULL);
            break;
        case V_EXECLP:
            execlp(base, base, "child", name, "env", "arg one", "", (char *)NULL);
            break;
        case V_EXECLE:
            execle(self, self, "child", name, "env", "arg one", "", (char *)NULL, explicit_env);
            break;
        case V_FEXECVE: {
            int fd = open(self, O_RDONLY | O_CLOEXEC);
            fexecve(fd, av, explicit_env);
            break;
        }
        }
        line("%s: exec failed: %s", name, en(errno));
        _exit(127);
    }
    wait_child(pid);
}

static void exec_cases(void)
{
    run_variant("exec_execve", V_EXECVE);
    run_variant("exec_execv", V_EXECV);
    run_variant("exec_execvp", V_EXECVP);
    run_variant("exec_execvpe", V_EXECVPE);
    run_variant("exec_execl", V_EXECL);
    run_variant("exec_execlp", V_EXECLP);
    run_variant("exec_execle", V_EXECLE);
    run_variant("exec_fexecve", V_FEXECVE);

    CASE("exec_cloexec");
    pid_t pid = fork();
    if (pid == 0) {
        int a = open("/dev/null", O_RDONLY | O_CLOEXEC);
        int b = open("/dev/null", O_RDONLY);
        dup3(a, 10, O_CLOEXEC);
        dup2(b, 11);
        close(a);
        close(b);
        int p[2];
        pipe2(p, O_CLOEXEC);
        dup2(p[0], 12);         /* dup2 clears FD_CLOEXEC */
        dup3(p[1], 13, O_CLOEXEC);
        close(p[0]);
        close(p[1]);
        int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        dup3(s, 14, O_CLOEXEC);
        close(s);
        int ep = epoll_create1(EPOLL_CLOEXEC);
        dup3(ep, 15, O_CLOEXEC);
        close(ep);
        int ev = eventfd(0, 0);
        dup2(ev, 16);
        close(ev);
        fcntl(16, F_SETFD, FD_CLOEXEC); /* set after the fact */
        int f = open("/dev/null", O_RDONLY);
        dup2(f, 17);
        close(f);
        fcntl(17, F_SETFD, 0);
        execl(self, self, "child", "exec_cloexec", "fds", "10", "11", "12", "13", "14", "15",
              "16", "17", (char *)NULL);
        _exit(127);
    }
    wait_child(pid);

    CASE("exec_inherited_pipe");
    int p[2];
    MUST(pipe(p));
    pid = fork();
    if (pid == 0) {
        dup2(p[1], 9);
        char *av[] = {self, "child", "exec_inherited_pipe", "write", "9", "hello-through-exec", NULL};
        execv(self, av);
        _exit(127);
    }
    close(p[1]);
    wait_child(pid);
    char buf[128];
    long n = T(read(p[0], buf, sizeof buf));
    show("parent read", buf, n);
    T(read(p[0], buf, sizeof buf));
    close(p[0]);

    CASE("exec_stdout_redirected");
    MUST(pipe(p));
    pid = fork();
    if (pid == 0) {
        dup2(p[1], 1);
        close(p[0]);
        close(p[1]);
        char *av[] = {self, "child", "exec_stdout_redirected", "env", "captured", NULL};
        execve(self, av, explicit_env);
        _exit(127);
    }
    close(p[1]);
    char cap[8192];
    long have = 0;
    while (have < (long)sizeof cap - 1 && (n = read(p[0], cap + have, sizeof cap - 1 - (size_t)have)) > 0)
        have += n;
    cap[have] = 0;
    close(p[0]);
    wait_child(pid);
    for (char *l = strtok(cap, "\n"); l; l = strtok(NULL, "\n")) {
        if (l[0] == '#')
            line("%s", l); /* meta lines pass through for the harness */
        else
            O("captured| %s", l);
    }

    CASE("exec_errors");
    char *av[] = {"x", NULL};
    T(execve("./does-not-exist", av, explicit_env));
    T(execve(".", av, explicit_env));
    int fd = (int)MUST(open("not-exec", O_CREAT | O_WRONLY | O_TRUNC, 0644));
    MUST(write(fd, "junk\n", 5));
    close(fd);
    T(execve("./not-exec", av, explicit_env));
    fd = (int)MUST(open("garbage-exec", O_CREAT | O_WRONLY | O_TRUNC, 0755));
    MUST(write(fd, "\x7f\x45\x4c\x46junk", 8));
    close(fd);
    T(execve("./garbage-exec", av, explicit_env));
    T(execv("", av));
    T(execvp("no-such-command-arrakis-compat", av));
    T(execlp("no-such-command-arrakis-compat", "x", (char *)NULL));
    T(fexecve(-1, av, explicit_env));
    fd = (int)MUST(open("not-exec", O_RDONLY));
    T(fexecve(fd, av, explicit_env));
    close(fd);
    list_fds("fds after failed execs");

    /* A bad envp pointer: EFAULT from the kernel. Run in a child so that a
     * crash shows up as this case's status, not as the loss of the rest. */
    CASE("exec_efault_envp");
    pid = fork();
    if (pid == 0) {
        long r = execve(self, av, (char **)1);
        line("exec_efault_envp: execve(self, av, (char **)1) = %ld %s", r, en(errno));
        _exit(0);
    }
    wait_child(pid);

    CASE("exec_efault_argv");
    pid = fork();
    if (pid == 0) {
        long r = execve(self, (char **)1, explicit_env);
        line("exec_efault_argv: execve(self, (char **)1, env) = %ld %s", r, en(errno));
        _exit(0);
    }
    wait_child(pid);

    /* envp == NULL: Linux runs the program with an empty environment; the
     * preload must still be carried. */
    CASE("exec_execve_null_envp");
    pid = fork();
    if (pid == 0) {
        char *nav[] = {self, "child", "exec_execve_null_envp", "env", NULL};
        execve(self, nav, NULL);
        _exit(127);
    }
    wait_child(pid);

    CASE("posix_spawn_explicit_env");
    char *sav[] = {self, "child", "posix_spawn_explicit_env", "env", "spawned", NULL};
    pid_t spid = 0;
    int st = 0;
    int rc = posix_spawn(&spid, self, NULL, NULL, sav, explicit_env);
    if (rc == 0)
        waitpid(spid, &st, 0); /* before printing: the child prints too */
    O("posix_spawn = %d", rc);
    show_status("child status", st);

    CASE("posix_spawnp_inherited_env");
    char *base = basename(strdup(self));
    char *pav[] = {base, "child", "posix_spawnp_inherited_env", "env", NULL};
    setenv("PATH", selfdir, 1);
    rc = posix_spawnp(&spid, base, NULL, NULL, pav, environ);
    setenv("PATH", "/usr/bin:/bin", 1);
    if (rc == 0)
        waitpid(spid, &st, 0);
    O("posix_spawnp = %d", rc);
    show_status("child status", st);
    O("missing program: %d", posix_spawn(&spid, "./does-not-exist", NULL, NULL, pav, environ));
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "child") == 0)
        return child_main(argc, argv);
    long n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0)
        return 4;
    self[n] = 0;
    strcpy(selfdir, self);
    strcpy(selfdir, dirname(selfdir));
    fork_cases();
    vfork_cases();
    exec_cases();
    return 0;
}
