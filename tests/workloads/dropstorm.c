/* The program drops pages with MADV_DONTNEED, one at a time, while the agent evicts them: each
 * round writes a region with the round's values, then drops every other page of it while a
 * second thread walks a larger buffer so that the agent keeps evicting (the region's pages
 * among them), and checks that every dropped page reads as zeros and every other page as
 * written. A drop of the program's that lands while the agent's own drop of the same page is
 * pending must not be taken for the agent's (docs/eviction.md, "Session 25").
 *
 * usage: dropstorm ROUNDS
 * Prints OK and exits 0 when every check passed; exits 1 naming the first mismatch.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>

#define REGION (4u << 20)
#define BIG (16u << 20)
#define PAGE 4096

static volatile int done;
static volatile uint64_t sink;

static uint64_t value(uint64_t round, size_t i) { return (round + 1) * 0x9e3779b97f4a7c15ull ^ i; }

static void *walker(void *arg) {
    uint64_t *big = arg;
    while (!done)
        for (size_t i = 0; i < BIG / 8; i += PAGE / 8) sink += big[i];
    return NULL;
}

int main(int argc, char **argv) {
    unsigned long rounds = argc > 1 ? strtoul(argv[1], 0, 10) : 20;
    uint64_t *big = mmap(0, BIG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint64_t *region = mmap(0, REGION, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (big == MAP_FAILED || region == MAP_FAILED) { perror("mmap"); return 2; }
    for (size_t i = 0; i < BIG / 8; i++) big[i] = i;
    pthread_t t;
    pthread_create(&t, 0, walker, big);
    const size_t words = REGION / 8, per_page = PAGE / 8;
    for (unsigned long r = 0; r < rounds; r++) {
        for (size_t i = 0; i < words; i++) region[i] = value(r, i);
        /* Every other page, alternating which half from round to round. */
        for (size_t pg = r % 2; pg < REGION / PAGE; pg += 2)
            madvise((char *)region + pg * PAGE, PAGE, MADV_DONTNEED);
        for (size_t i = 0; i < words; i += 13) {
            size_t pg = i / per_page;
            uint64_t want = pg % 2 == r % 2 ? 0 : value(r, i);
            if (region[i] != want) {
                fprintf(stderr, "round %lu: word %zu (page %zu) is %llx, expected %llx\n", r, i, pg,
                        (unsigned long long)region[i], (unsigned long long)want);
                return 1;
            }
        }
    }
    done = 1;
    pthread_join(t, 0);
    printf("OK\n");
    return 0;
}
