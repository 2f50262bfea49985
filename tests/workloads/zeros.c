// A workload for the node agent's tests: pages that are all zeros when they are evicted (the
// agent keeps no copy of those) beside pages that are almost zeros, under a budget that makes
// every page leave and come back several times. Usage: zeros MB ROUNDS. Exits 0 and prints
// "zeros: OK" when every byte read back is right.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define PAGE 4096

static uint64_t mix(uint64_t x) {
    x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ULL; x ^= x >> 33;
    return x;
}

// What page `p` holds in round `r`: in even rounds, every third page is all zeros and every
// third page has one non-zero byte (at a place that moves), the rest are full of words; in odd
// rounds the kinds move on by one, so zero pages get written again and full pages get zeroed.
static int kind(size_t p, int r) { return (int)((p + (size_t)r) % 3); }

static unsigned char byte_at(size_t p, int r, size_t i) {
    switch (kind(p, r)) {
    case 0: return 0;
    case 1: return i == (mix(p * 31 + (size_t)r) % PAGE) ? (unsigned char)(1 + p % 255) : 0;
    default: return (unsigned char)(mix(p * 4099 + (size_t)r * 7 + i / 8) >> (8 * (i % 8)));
    }
}

static void fill(unsigned char *page, size_t p, int r) {
    if (kind(p, r) == 0) {
        memset(page, 0, PAGE);
        return;
    }
    for (size_t i = 0; i < PAGE; i++) page[i] = byte_at(p, r, i);
}

static long check(const unsigned char *page, size_t p, int r) {
    long bad = 0;
    for (size_t i = 0; i < PAGE; i++) bad += page[i] != byte_at(p, r, i);
    return bad;
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: zeros MB ROUNDS\n"); return 2; }
    size_t pages = strtoul(argv[1], 0, 10) * (1 << 20) / PAGE;
    int rounds = atoi(argv[2]);
    unsigned char *mem = mmap(0, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) { perror("mmap"); return 1; }
    long bad = 0;
    for (int r = 0; r < rounds; r++) {
        for (size_t p = 0; p < pages; p++) fill(mem + p * PAGE, p, r);
        // Read every page back in a scattered order (each has been evicted by then), then in order.
        uint64_t x = (uint64_t)r + 1;
        for (size_t k = 0; k < pages; k++) {
            x = mix(x);
            size_t p = x % pages;
            bad += check(mem + p * PAGE, p, r);
        }
        for (size_t p = 0; p < pages; p++) bad += check(mem + p * PAGE, p, r);
    }
    printf("zeros: %ld bad bytes\n", bad);
    if (bad) return 1;
    printf("zeros: OK\n");
    return 0;
}
