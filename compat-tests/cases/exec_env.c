/* exec in hard places: from threads with small stacks (the shim rebuilds the environment
 * on the stack of whoever calls exec), via vfork from such a thread, and under a seccomp
 * filter that kills the process on process_vm_readv (which the shim must then not use).
 *
 * Child mode: `exec_env child CASE` prints the case's environment (minus LD_PRELOAD and
 * ARRAKIS_*, which the shim adds by design) and, through common.h, `#shim=`.
 */
#include "common.h"

#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

static char self[4096];

static void wait_child(pid_t pid)
{
    int st = 0;
    if (waitpid(pid, &st, 0) < 0) {
        O("waitpid failed: %s", en(errno));
        return;
    }
    show_status("child status", st);
}

struct job {
    const char *name;
    char *const *envp; /* NULL: the process environment */
    int use_vfork;
};

static void *exec_from_thread(void *arg)
{
    struct job *j = arg;
    char *av[] = {self, "child", (char *)j->name, NULL};
    extern char **environ;
    if (j->use_vfork) {
        pid_t p = vfork();
        if (p == 0) {
            execve(self, av, j->envp ? j->envp : environ);
            _exit(127);
        }
        wait_child(p);
        return NULL;
    }
    execve(self, av, j->envp ? j->envp : environ);
    line("%s: execve failed: %s", j->name, en(errno));
    _exit(127);
}

/* Runs `j` on a thread with a `stack`-byte stack: in a forked child (execve replaces the
 * process) or directly (vfork + execve from the thread). */
static void small_stack_case(struct job *j, size_t stack)
{
    CASE(j->name);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, stack);
    pthread_t t;
    if (j->use_vfork) {
        int r = pthread_create(&t, &attr, exec_from_thread, j);
        O("pthread_create = %d", r);
        if (r == 0)
            pthread_join(t, NULL);
        return;
    }
    pid_t pid = fork();
    if (pid == 0) {
        if (pthread_create(&t, &attr, exec_from_thread, j) == 0)
            pthread_join(t, NULL);
        _exit(126);
    }
    wait_child(pid);
}

static void seccomp_case(const char *name, char *const *envp)
{
    CASE(name);
    pid_t pid = fork();
    if (pid == 0) {
        struct sock_filter f[] = {
            BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_process_vm_readv, 0, 1),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        };
        struct sock_fprog prog = {.len = sizeof f / sizeof f[0], .filter = f};
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) {
            line("%s: cannot install the filter: %s", name, en(errno));
            _exit(125);
        }
        char *av[] = {self, "child", (char *)name, NULL};
        extern char **environ;
        execve(self, av, envp ? envp : environ);
        line("%s: execve failed: %s", name, en(errno));
        _exit(127);
    }
    wait_child(pid);
}

int main(int argc, char **argv)
{
    if (argc >= 3 && strcmp(argv[1], "child") == 0) {
        CASE(argv[2]);
        print_env("child env");
        return 0;
    }
    long n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0)
        return 4;
    self[n] = 0;

    /* An explicit environment lacks LD_PRELOAD: under the shim it is rebuilt. */
    static char *const explicit_env[] = {"EXEC_ENV_MARK=1", "PATH=/usr/bin:/bin", NULL};
    struct job jobs[] = {
        {"small_stack_execve_inherited_env", NULL, 0},
        {"small_stack_execve_explicit_env", explicit_env, 0},
        {"small_stack_vfork_execve_inherited_env", NULL, 1},
        {"small_stack_vfork_execve_explicit_env", explicit_env, 1},
    };
    for (size_t i = 0; i < sizeof jobs / sizeof jobs[0]; i++)
        small_stack_case(&jobs[i], 32 * 1024);
    seccomp_case("seccomp_kill_vm_readv_inherited_env", NULL);
    seccomp_case("seccomp_kill_vm_readv_explicit_env", explicit_env);
    return 0;
}
