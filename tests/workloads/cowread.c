/* fork of a process using most of its budget, with a child that only reads: parent and child
 * share every page copy-on-write, so the workload's memory did not grow and nothing needs to be
 * evicted for the fork.
 *
 * usage: cowread MIB
 * Fills MIB MiB, forks; the child reads every page three times (about a second) and checks it;
 * the parent waits for it, checks its own copy, prints OK and exits 0, or names the mismatch.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static uint64_t *mem;
static size_t words;

static uint64_t value(size_t i) { return i * 0x9e3779b97f4a7c15ull + 1; }

static int check(const char *who) {
    for (size_t i = 0; i < words; i += 512) {
        if (mem[i] != value(i)) {
            fprintf(stderr, "%s: word %zu is %llx, expected %llx\n", who, i,
                    (unsigned long long)mem[i], (unsigned long long)value(i));
            return 0;
        }
    }
    return 1;
}

int main(int argc, char **argv) {
    size_t bytes = (size_t)atol(argc > 1 ? argv[1] : "16") << 20;
    words = bytes / 8;
    mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) { perror("mmap"); return 2; }
    for (size_t i = 0; i < words; i++) mem[i] = value(i);
    pid_t c = fork();
    if (c < 0) { perror("fork"); return 2; }
    if (c == 0) {
        for (int pass = 0; pass < 3; pass++) {
            if (!check("child")) _exit(1);
            struct timespec ts = {0, 300 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
        _exit(0);
    }
    int st;
    if (waitpid(c, &st, 0) != c) { perror("waitpid"); return 2; }
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "child ended with status %#x\n", st);
        return 1;
    }
    if (!check("parent")) return 1;
    printf("OK\n");
    return 0;
}
