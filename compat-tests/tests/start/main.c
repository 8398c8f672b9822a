#include <stdio.h>
#include <dlfcn.h>
int main(void) {
    const char *(*rep)(void) = (const char *(*)(void))dlsym(RTLD_DEFAULT, "early_report");
    printf("%s", rep ? rep() : "no early library\n");
    return 0;
}
