/* Managed memory the program makes read-only or inaccessible (mprotect PROT_READ / PROT_NONE:
 * a heap or GC region decommitted, a guard) while it is pushed out of the budget: evicting it must
 * not need the program's access rights, and it must read back whole once accessible again.
 *
 * usage: mprotected MIB none|ro
 * Fills MIB MiB, mprotects its first half, writes 2 x MIB MiB of new memory, reads the first
 * half (ro only), makes it writable again, checks all of it, prints OK and exits 0, or names the
 * mismatch.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static uint64_t value(size_t i) { return i * 0x9e3779b97f4a7c15ull + 3; }

int main(int argc, char **argv) {
    size_t bytes = (size_t)atol(argc > 1 ? argv[1] : "16") << 20;
    int prot = argc > 2 && strcmp(argv[2], "none") == 0 ? PROT_NONE : PROT_READ;
    uint64_t *m = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) { perror("mmap"); return 2; }
    for (size_t i = 0; i < bytes / 8; i++) m[i] = value(i);
    if (mprotect(m, bytes / 2, prot) != 0) { perror("mprotect"); return 2; }
    char *f = mmap(NULL, 2 * bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (f == MAP_FAILED) { perror("mmap"); return 2; }
    for (size_t i = 0; i < 2 * bytes; i += 4096) f[i] = 1;
    if (prot == PROT_READ)
        for (size_t i = 0; i < bytes / 16; i += 64)
            if (m[i] != value(i)) { fprintf(stderr, "read-only word %zu is wrong\n", i); return 1; }
    if (mprotect(m, bytes / 2, PROT_READ | PROT_WRITE) != 0) { perror("mprotect"); return 2; }
    for (size_t i = 0; i < bytes / 8; i += 64)
        if (m[i] != value(i)) {
            fprintf(stderr, "word %zu (page %zu) is %llx\n", i, i / 512, (unsigned long long)m[i]);
            return 1;
        }
    printf("OK\n");
    return 0;
}
