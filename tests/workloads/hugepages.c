/* Transparent huge pages in managed memory: a program may ask for them (MADV_HUGEPAGE) and the
 * kernel may collapse fully populated ranges into them (khugepaged, or MADV_COLLAPSE as here),
 * also inside a range the agent registered. Evicting and fetching 4 KiB pages must then split
 * them without losing a byte.
 *
 * usage: hugepages MIB FRESH_MIB
 * Fills MIB MiB (2 MiB aligned, MADV_HUGEPAGE), collapses it with MADV_COLLAPSE and says how
 * much of it smaps shows as AnonHugePages, writes FRESH_MIB MiB of new memory (pushing the first
 * region out of a smaller budget), rewrites every 7th page of the first region, checks it all,
 * prints OK and exits 0, or names the mismatch.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif

static uint64_t *mem;
static size_t words;

static uint64_t value(size_t i, int round) { return (i + round) * 0x9e3779b97f4a7c15ull + 1; }

static int round_of(size_t i) { return (i / 512) % 7 == 0 ? 1 : 0; }

static long huge_kib(void) {
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f) return -1;
    char line[256];
    unsigned long lo = 0, hi = 0;
    long kib = 0, in = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long a, b;
        if (sscanf(line, "%lx-%lx ", &a, &b) == 2 && strchr(line, '-') < strchr(line, ' ')) {
            lo = a;
            hi = b;
            in = (uintptr_t)mem >= lo && (uintptr_t)mem < hi;
            continue;
        }
        long k;
        if (in && sscanf(line, "AnonHugePages: %ld kB", &k) == 1) kib += k;
    }
    fclose(f);
    return kib;
}

int main(int argc, char **argv) {
    size_t bytes = (size_t)atol(argc > 1 ? argv[1] : "16") << 20;
    size_t fresh = (size_t)atol(argc > 2 ? argv[2] : "32") << 20;
    words = bytes / 8;
    const size_t huge = 2 << 20;
    char *raw = mmap(NULL, bytes + huge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) { perror("mmap"); return 2; }
    mem = (uint64_t *)(((uintptr_t)raw + huge - 1) & ~(huge - 1));
    if (madvise(mem, bytes, MADV_HUGEPAGE) != 0) perror("madvise(MADV_HUGEPAGE)");
    for (size_t i = 0; i < words; i++) mem[i] = value(i, 0);
    if (madvise(mem, bytes, MADV_COLLAPSE) != 0) perror("madvise(MADV_COLLAPSE)");
    fprintf(stderr, "huge: %ld of %zu KiB\n", huge_kib(), bytes >> 10);
    if (fresh) {
        char *more = mmap(NULL, fresh, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (more == MAP_FAILED) { perror("mmap"); return 2; }
        for (size_t i = 0; i < fresh; i += 4096) more[i] = (char)(i >> 12 | 1);
    }
    for (size_t i = 0; i < words; i += 512)
        if (round_of(i)) mem[i] = value(i, 1);
    size_t bad = 0;
    for (size_t i = 0; i < words; i++) {
        uint64_t want = value(i, (i % 512 == 0) ? round_of(i) : 0);
        if (mem[i] != want) {
            if (bad++ < 4)
                fprintf(stderr, "word %zu (page %zu) is %llx, expected %llx\n", i, i / 512,
                        (unsigned long long)mem[i], (unsigned long long)want);
        }
    }
    if (bad) {
        fprintf(stderr, "%zu words wrong\n", bad);
        return 1;
    }
    printf("OK\n");
    return 0;
}
