/* execve from a thread whose stack is small but ample natively (argv[1] bytes, default
 * 32 KiB): glibc's execve needs a few hundred bytes of it; the shim's needs ~31 KiB. */

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <limits.h>
extern char **environ;
static void *run(void *a) {
  char *argv[] = {"/bin/echo", "exec from small-stack thread ok", NULL};
  execve(argv[0], argv, environ);
  perror("execve");
  return NULL;
}
int main(int argc, char **argv) {
  size_t sz = argc > 1 ? strtoul(argv[1], 0, 0) : 32768;
  pthread_attr_t a; pthread_attr_init(&a);
  if (pthread_attr_setstacksize(&a, sz)) { puts("bad size"); return 2; }
  pthread_t t; pthread_create(&t, &a, run, NULL); pthread_join(t, NULL);
  return 1;
}
