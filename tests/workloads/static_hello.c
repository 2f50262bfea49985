// A statically linked program (built with -static) ignores LD_PRELOAD, so the node agent's shim
// never loads in it: it must run unmanaged, with its output and exit status passed through.
// Touches a little memory, prints a line, and exits at once with status 3.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void) {
    size_t len = 8 << 20;
    char *p = malloc(len);
    if (!p) return 2;
    memset(p, 7, len);
    long sum = 0;
    for (size_t i = 0; i < len; i += 4096) sum += p[i];
    printf("static program ran, sum %ld\n", sum);
    return 3;
}
