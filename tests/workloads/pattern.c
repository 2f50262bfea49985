// A workload for the node agent's tests: allocates with malloc (many small objects and large
// blocks), writes a deterministic pattern over the requested size, then verifies it in a
// sequential and a random pass, with N threads. Exits 0 when every byte is right.
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static size_t total_mb, threads, small_objs;

static uint64_t mix(uint64_t x) {
    x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ULL; x ^= x >> 33;
    return x;
}

struct part { uint64_t *mem; size_t words; uint64_t seed; char **small; size_t nsmall; long bad; };

static void *work(void *arg) {
    struct part *p = arg;
    for (size_t i = 0; i < p->words; i++) p->mem[i] = mix(p->seed + i);
    for (size_t i = 0; i < p->nsmall; i++) {
        p->small[i] = malloc(40 + (i % 200));
        memset(p->small[i], (int)(mix(p->seed ^ i) & 0xff), 40 + (i % 200));
    }
    // Sequential verification.
    for (size_t i = 0; i < p->words; i++) if (p->mem[i] != mix(p->seed + i)) p->bad++;
    // Random verification (covers every page with high probability several times).
    uint64_t r = p->seed;
    for (size_t k = 0; k < p->words / 64; k++) {
        r = mix(r);
        size_t i = r % p->words;
        if (p->mem[i] != mix(p->seed + i)) p->bad++;
    }
    for (size_t i = 0; i < p->nsmall; i++) {
        unsigned char want = (unsigned char)(mix(p->seed ^ i) & 0xff);
        for (size_t j = 0; j < 40 + (i % 200); j++) if ((unsigned char)p->small[i][j] != want) { p->bad++; break; }
    }
    // Sequential again, after the random pass moved things around.
    for (size_t i = 0; i < p->words; i++) if (p->mem[i] != mix(p->seed + i)) p->bad++;
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: pattern MB THREADS [SMALL_OBJECTS]\n"); return 2; }
    total_mb = strtoul(argv[1], 0, 10);
    threads = strtoul(argv[2], 0, 10);
    small_objs = argc > 3 ? strtoul(argv[3], 0, 10) : 20000;
    pthread_t tid[64];
    struct part parts[64];
    size_t words = total_mb * 1024 * 1024 / 8 / threads;
    for (size_t t = 0; t < threads; t++) {
        parts[t].mem = malloc(words * 8);
        parts[t].words = words;
        parts[t].seed = 0x1234567ULL * (t + 1);
        parts[t].small = malloc(small_objs * sizeof(char *));
        parts[t].nsmall = small_objs;
        parts[t].bad = 0;
        if (!parts[t].mem || !parts[t].small) { perror("malloc"); return 3; }
        pthread_create(&tid[t], 0, work, &parts[t]);
    }
    long bad = 0;
    for (size_t t = 0; t < threads; t++) { pthread_join(tid[t], 0); bad += parts[t].bad; }
    printf("pattern: %zu MiB, %zu threads: %ld bad words\n", total_mb, threads, bad);
    return bad ? 1 : 0;
}
