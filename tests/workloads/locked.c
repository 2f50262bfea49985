/* Memory the program locks (mlock, mlockall) under a budget smaller than what it locks: locked
 * pages must stay, the rest must still be paged, and the program must neither hang nor lose a
 * byte.
 *
 * usage: locked MIB MODE
 * MODE "part": maps MIB MiB, locks its first half with mlock, then writes all of it.
 * MODE "all": mlockall(MCL_CURRENT | MCL_FUTURE) first, then maps and writes MIB MiB.
 * Then reads every page back twice, prints OK and exits 0, or names the mismatch.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

int main(int argc, char **argv) {
    size_t bytes = (size_t)atol(argc > 1 ? argv[1] : "64") << 20;
    const char *mode = argc > 2 ? argv[2] : "part";
    int all = strcmp(mode, "all") == 0;
    if (all && mlockall(MCL_CURRENT | MCL_FUTURE) != 0) { perror("mlockall"); return 2; }
    uint64_t *m = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) { perror("mmap"); return 2; }
    if (!all && mlock(m, bytes / 2) != 0) { perror("mlock"); return 2; }
    for (size_t i = 0; i < bytes / 8; i++) m[i] = i * 0x9e3779b97f4a7c15ull + 1;
    for (int r = 0; r < 2; r++)
        for (size_t i = 0; i < bytes / 8; i += 64)
            if (m[i] != i * 0x9e3779b97f4a7c15ull + 1) {
                fprintf(stderr, "word %zu (page %zu) is %llx\n", i, i / 512, (unsigned long long)m[i]);
                return 1;
            }
    printf("OK\n");
    return 0;
}
