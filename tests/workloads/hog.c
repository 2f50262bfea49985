// A workload that never ends, for the failure tests: writes its pid to PIDFILE, allocates MB
// mebibytes, writes a pattern over them, then reads them in a loop forever, so that with a small
// budget pages are evicted and fetched back all the time. Prints "filled" once the memory is
// written and "BAD" (then exits 1) if it ever reads a wrong word.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: hog MB PIDFILE\n"); return 2; }
    size_t words = strtoul(argv[1], 0, 10) * 1024 * 1024 / 8;
    // Write the pid to a temporary name and rename it, so a reader never sees a partial file.
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", argv[2]);
    FILE *f = fopen(tmp, "w");
    if (!f || fprintf(f, "%d\n", (int)getpid()) < 0 || fclose(f) != 0 || rename(tmp, argv[2]) != 0) {
        perror("writing the pid file");
        return 2;
    }
    uint64_t *mem = malloc(words * 8);
    if (!mem) { perror("malloc"); return 2; }
    for (size_t i = 0; i < words; i++) mem[i] = i * 0x9E3779B97F4A7C15ULL + 1;
    printf("filled\n");
    fflush(stdout);
    for (;;) {
        for (size_t i = 0; i < words; i += 512) {
            if (mem[i] != i * 0x9E3779B97F4A7C15ULL + 1) {
                printf("BAD word %zu\n", i);
                return 1;
            }
        }
    }
}
