/* Forks while the agent evicts: a buffer several times the budget is walked by a thread (so
 * pages are parked and saved all the time), and the main thread forks again and again. Each
 * child checks the whole buffer, rewrites a part of it (copy-on-write) and checks that part; the
 * parent rewrites another part meanwhile. At the end the parent checks everything it wrote.
 *
 * usage: forkstorm MIB FORKS
 * Prints OK and exits 0 when every check passed; exits non-zero naming the first mismatch.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static uint64_t *mem;
static size_t words;
static volatile int done;
static volatile uint64_t sink;

static uint64_t value(size_t i, uint64_t gen) { return (i * 0x9e3779b97f4a7c15ull) ^ (gen << 48) ^ gen; }

static void *walker(void *arg) {
    (void)arg;
    while (!done)
        for (size_t i = 0; i < words; i += 512) sink += mem[i];
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: forkstorm MIB FORKS\n"); return 2; }
    words = strtoul(argv[1], 0, 10) * 1024 * 1024 / 8;
    int forks = atoi(argv[2]);
    mem = mmap(0, words * 8, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) { perror("mmap"); return 2; }
    /* gen[k]: the generation of the k-th eighth of the buffer, as the parent wrote it. */
    uint64_t gen[8];
    for (int k = 0; k < 8; k++) gen[k] = 1;
    for (size_t i = 0; i < words; i++) mem[i] = value(i, 1);
    pthread_t t;
    pthread_create(&t, 0, walker, 0);
    size_t part = words / 8;
    for (int f = 0; f < forks; f++) {
        pid_t c = fork();
        if (c < 0) { perror("fork"); return 2; }
        if (c == 0) {
            for (size_t i = 0; i < words; i++) {
                uint64_t want = value(i, gen[i / part < 8 ? i / part : 7]);
                if (mem[i] != want) {
                    fprintf(stderr, "fork %d, child: word %zu is %llx, expected %llx\n", f, i,
                            (unsigned long long)mem[i], (unsigned long long)want);
                    _exit(1);
                }
            }
            size_t k = (f + 4) % 8;
            for (size_t i = k * part; i < (k + 1) * part; i++) mem[i] = value(i, 1000 + f);
            for (size_t i = 0; i < words; i += 256) sink += mem[i];
            for (size_t i = k * part; i < (k + 1) * part; i++)
                if (mem[i] != value(i, 1000 + f)) {
                    fprintf(stderr, "fork %d, child: own write at word %zu lost\n", f, i);
                    _exit(1);
                }
            _exit(0);
        }
        size_t k = f % 8;
        gen[k] = 2 + f;
        for (size_t i = k * part; i < (k + 1) * part; i++) mem[i] = value(i, gen[k]);
        int status;
        if (waitpid(c, &status, 0) != c || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "fork %d: the child failed (status %x)\n", f, status);
            return 1;
        }
    }
    done = 1;
    pthread_join(t, 0);
    for (size_t i = 0; i < words; i++) {
        uint64_t want = value(i, gen[i / part < 8 ? i / part : 7]);
        if (mem[i] != want) {
            fprintf(stderr, "parent: word %zu is %llx, expected %llx\n", i,
                    (unsigned long long)mem[i], (unsigned long long)want);
            return 1;
        }
    }
    printf("OK\n");
    return 0;
}
