/* The program changes its memory while the agent evicts it: a thread maps a region, fills it,
 * unmaps it and maps fresh memory at the same address again (through libc's mmap, which the shim
 * registers at once, and through the raw syscall, which it does not), drops half of it with
 * MADV_DONTNEED, and moves it with mremap, checking every time that fresh memory reads as zeros
 * and written memory reads back exactly. Meanwhile the main thread walks a larger buffer so the
 * agent keeps evicting (the region's pages among them).
 *
 * usage: remap ROUNDS
 * Prints OK and exits 0 when every check passed; exits 1 naming the first mismatch.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define REGION (4u << 20)
#define BIG (24u << 20)
#define PAGE 4096

static volatile int done;
static volatile uint64_t sink;

static uint64_t value(uint64_t round, size_t i) { return (round + 1) * 0x9e3779b97f4a7c15ull ^ i; }

static void fail(const char *what, unsigned long round, size_t i, uint64_t got, uint64_t want) {
    fprintf(stderr, "round %lu: %s: word %zu is %llx, expected %llx\n", round, what, i,
            (unsigned long long)got, (unsigned long long)want);
    exit(1);
}

/* Reads the whole big buffer, so the region's pages get evicted too. */
static void churn(uint64_t *big) {
    for (size_t i = 0; i < BIG / 8; i += PAGE / 8) sink += big[i];
}

static void *walker(void *arg) {
    uint64_t *big = arg;
    while (!done) churn(big);
    return NULL;
}

static void *map_at(void *at, int raw) {
    int flags = MAP_PRIVATE | MAP_ANONYMOUS | (at ? MAP_FIXED : 0);
    void *p = raw ? (void *)syscall(SYS_mmap, at, REGION, PROT_READ | PROT_WRITE, flags, -1, 0)
                  : mmap(at, REGION, PROT_READ | PROT_WRITE, flags, -1, 0);
    if (p == MAP_FAILED) { perror("mmap"); exit(2); }
    return p;
}

int main(int argc, char **argv) {
    unsigned long rounds = argc > 1 ? strtoul(argv[1], 0, 10) : 20;
    uint64_t *big = mmap(0, BIG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (big == MAP_FAILED) { perror("mmap"); return 2; }
    for (size_t i = 0; i < BIG / 8; i++) big[i] = i;
    pthread_t t;
    pthread_create(&t, 0, walker, big);
    uint64_t *region = map_at(0, 0);
    size_t words = REGION / 8;
    for (unsigned long r = 0; r < rounds; r++) {
        for (size_t i = 0; i < words; i += 64)
            if (region[i] != 0) fail("fresh memory", r, i, region[i], 0);
        for (size_t i = 0; i < words; i++) region[i] = value(r, i);
        churn(big);
        churn(big);
        for (size_t i = 0; i < words; i += 7)
            if (region[i] != value(r, i)) fail("written memory", r, i, region[i], value(r, i));
        /* Drop the first half: zeros there, the rest intact. */
        madvise(region, REGION / 2, MADV_DONTNEED);
        churn(big);
        for (size_t i = 0; i < words; i += 61) {
            uint64_t want = i < words / 2 ? 0 : value(r, i);
            if (region[i] != want) fail("after MADV_DONTNEED", r, i, region[i], want);
        }
        /* Move it elsewhere and back to the same address. */
        void *tmp = mmap(0, REGION, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        uint64_t *moved = mremap(region, REGION, REGION, MREMAP_MAYMOVE | MREMAP_FIXED, tmp);
        if (moved == MAP_FAILED) { perror("mremap"); return 2; }
        churn(big);
        for (size_t i = words / 2; i < words; i += 59)
            if (moved[i] != value(r, i)) fail("after mremap", r, i, moved[i], value(r, i));
        /* Unmap, and map fresh memory at the old address: it must read as zeros. */
        munmap(moved, REGION);
        region = map_at(region, r % 2);
    }
    done = 1;
    pthread_join(t, 0);
    for (size_t i = 0; i < BIG / 8; i += 17)
        if (big[i] != i) fail("big buffer", rounds, i, big[i], i);
    printf("OK\n");
    return 0;
}
