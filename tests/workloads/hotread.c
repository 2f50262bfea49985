// A workload for the agent's tests: a hot region it only reads, over and over, and a cold region
// it streams writes through. Reads are invisible to the agent (no accessed bits), so only the
// grace window (pages parked as an access probe, docs/eviction.md) shows it that the hot pages
// are in use. Verifies every word it reads; prints "hotread: OK" when every byte was right.
// Usage: hotread HOT_MB COLD_MB ROUNDS
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static uint64_t mix(uint64_t x) {
    x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ULL; x ^= x >> 33;
    return x;
}

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: hotread HOT_MB COLD_MB ROUNDS\n"); return 2; }
    size_t hot_words = strtoul(argv[1], 0, 10) << 17, cold_words = strtoul(argv[2], 0, 10) << 17;
    size_t rounds = strtoul(argv[3], 0, 10);
    uint64_t *hot = malloc(hot_words * 8), *cold = malloc(cold_words * 8);
    if (!hot || !cold) { perror("malloc"); return 1; }
    for (size_t i = 0; i < hot_words; i++) hot[i] = mix(i);
    for (size_t i = 0; i < cold_words; i++) cold[i] = mix(~i);
    long bad = 0;
    size_t slice = cold_words / rounds, at = 0;
    for (size_t r = 0; r < rounds; r++) {
        // Read the whole hot region a page at a time in a scattered order (no sequential run
        // for the agent's prefetching to follow), every word checked.
        size_t pages = hot_words / 512;
        for (size_t j = 0; j < pages; j++) {
            size_t pg = (j * 40503 + r * 7) % pages;  // 40503 is prime: a permutation
            for (size_t i = pg * 512; i < (pg + 1) * 512; i++) if (hot[i] != mix(i)) bad++;
        }
        // Rewrite a slice of the cold region (round r's generation).
        for (size_t k = 0; k < slice; k++, at = (at + 1) % cold_words) cold[at] = mix(~at) ^ (r + 1);
    }
    // Every cold word holds the generation of the round that last wrote it.
    for (size_t i = 0; i < cold_words; i++) {
        size_t r = i / slice < rounds ? i / slice : rounds;  // the last slice may be unwritten
        uint64_t want = i < slice * rounds ? (mix(~i) ^ (r + 1)) : mix(~i);
        if (cold[i] != want) bad++;
    }
    for (size_t i = 0; i < hot_words; i++) if (hot[i] != mix(i)) bad++;
    printf("hotread: %s (%ld bad words)\n", bad ? "FAILED" : "OK", bad);
    return bad != 0;
}
