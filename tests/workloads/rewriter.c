// A workload for the lossy-network tests: fills MB mebibytes with a pattern (generation 0), then
// makes PASSES passes (0: forever); pass g checks every word against generation g-1 and writes
// generation g, so each page is read, verified and rewritten (a new version to evict) every pass.
// Odd passes visit the pages in a strided order, even ones sequentially. After each MiB it prints
// "progress PASS MIB MS" (MS: CLOCK_MONOTONIC milliseconds), so a test can see pauses; at the end
// "done PASSES passes, 0 bad words". On the first wrong word it prints "BAD pass P word I" and
// exits 1.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define PAGE_WORDS 512

static uint64_t mix(uint64_t x) {
    x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ULL; x ^= x >> 33;
    return x;
}

static uint64_t want(uint64_t gen, size_t word) { return mix((gen << 40) ^ word ^ 0x5eedULL); }

static long long now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static size_t gcd(size_t a, size_t b) {
    while (b) { size_t t = a % b; a = b; b = t; }
    return a;
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: rewriter MB PASSES\n"); return 2; }
    size_t mb = strtoul(argv[1], 0, 10);
    unsigned long passes = strtoul(argv[2], 0, 10);
    size_t pages = mb * 256;
    if (pages == 0) { fprintf(stderr, "MB must be at least 1\n"); return 2; }
    uint64_t *mem = malloc(pages * PAGE_WORDS * 8);
    if (!mem) { perror("malloc"); return 2; }
    for (size_t i = 0; i < pages * PAGE_WORDS; i++) mem[i] = want(0, i);
    printf("filled\n");
    fflush(stdout);
    // A stride coprime to the page count visits every page once per pass.
    size_t stride = pages / 3 + 1;
    while (gcd(stride, pages) != 1) stride++;
    for (unsigned long g = 1; passes == 0 || g <= passes; g++) {
        for (size_t k = 0; k < pages; k++) {
            size_t p = g % 2 ? (k * stride) % pages : k;
            uint64_t *w = mem + p * PAGE_WORDS;
            for (size_t j = 0; j < PAGE_WORDS; j++) {
                size_t i = p * PAGE_WORDS + j;
                if (w[j] != want(g - 1, i)) {
                    printf("BAD pass %lu word %zu\n", g, i);
                    fflush(stdout);
                    return 1;
                }
                w[j] = want(g, i);
            }
            if ((k + 1) % 256 == 0) {
                printf("progress %lu %zu %lld\n", g, (k + 1) / 256, now_ms());
                fflush(stdout);
            }
        }
    }
    printf("done %lu passes, 0 bad words\n", passes);
    return 0;
}
