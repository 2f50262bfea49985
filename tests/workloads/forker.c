/* Fork under the pager: parent and child must each see their own copy-on-write memory, also for
 * pages that were evicted before the fork and pages evicted by either side after it.
 *
 * usage: forker MIB
 * Fills MIB MiB with generation 1, then:
 *  1. fork; the child checks generation 1 everywhere (twice, so that pages evicted after the fork
 *     come back) while the parent rewrites everything with generation 2;
 *  2. fork; the child rewrites with generation 3 and checks it while the parent checks 2;
 *  3. fork; the child forks a grandchild that checks 2; then a fork that execs `sh -c 'exit 3'`;
 *  4. prints CHILDREN_DONE, waits for a line on stdin (the test counts server pages meanwhile),
 *     checks 2 again.
 * Prints OK and exits 0 when every check passed; exits non-zero naming the first mismatch.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static uint64_t *mem;
static size_t words;

static uint64_t value(size_t i, uint64_t gen) { return (i * 0x9e3779b97f4a7c15ull) ^ (gen << 56) ^ gen; }

static void fill(uint64_t gen) {
    for (size_t i = 0; i < words; i += 8) mem[i] = value(i, gen);
}

static int check(uint64_t gen, const char *who) {
    for (size_t i = 0; i < words; i += 8) {
        if (mem[i] != value(i, gen)) {
            fprintf(stderr, "%s: word %zu is %llx, expected generation %llu (%llx)\n", who, i,
                    (unsigned long long)mem[i], (unsigned long long)gen,
                    (unsigned long long)value(i, gen));
            return 0;
        }
    }
    return 1;
}

static int wait_ok(pid_t pid, int want) {
    int st;
    if (waitpid(pid, &st, 0) != pid) { perror("waitpid"); return 0; }
    if (!WIFEXITED(st) || WEXITSTATUS(st) != want) {
        fprintf(stderr, "child %d ended with status %#x, expected exit %d\n", pid, st, want);
        return 0;
    }
    return 1;
}

int main(int argc, char **argv) {
    size_t bytes = (size_t)atol(argc > 1 ? argv[1] : "32") << 20;
    words = bytes / 8;
    mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) { perror("mmap"); return 2; }
    fill(1);
    if (!check(1, "parent before fork")) return 1;

    /* 1: the child checks the snapshot while the parent rewrites. */
    pid_t c = fork();
    if (c < 0) { perror("fork"); return 2; }
    if (c == 0) _exit(check(1, "child 1") && check(1, "child 1, second pass") ? 0 : 1);
    fill(2);
    if (!wait_ok(c, 0)) return 1;
    if (!check(2, "parent after child 1")) return 1;

    /* 2: the child rewrites while the parent checks its own copy. */
    c = fork();
    if (c < 0) { perror("fork"); return 2; }
    if (c == 0) {
        fill(3);
        _exit(check(3, "child 2") && check(3, "child 2, second pass") ? 0 : 1);
    }
    int ok = check(2, "parent during child 2") && check(2, "parent during child 2, second pass");
    if (!wait_ok(c, 0) || !ok) return 1;

    /* 3: a fork of a fork, and a fork that execs. */
    c = fork();
    if (c < 0) { perror("fork"); return 2; }
    if (c == 0) {
        pid_t g = fork();
        if (g < 0) _exit(2);
        if (g == 0) _exit(check(2, "grandchild") ? 0 : 1);
        fill(4);
        _exit(wait_ok(g, 0) && check(4, "child 3") ? 0 : 1);
    }
    if (!wait_ok(c, 0)) return 1;
    c = fork();
    if (c < 0) { perror("fork"); return 2; }
    if (c == 0) {
        execl("/bin/sh", "sh", "-c", "exit 3", (char *)NULL);
        _exit(127);
    }
    if (!wait_ok(c, 3)) return 1;

    printf("CHILDREN_DONE\n");
    fflush(stdout);
    /* The test counts the server's pages now, then lets us go on with a line on stdin. */
    if (getchar() == EOF) { fprintf(stderr, "stdin closed before the go-ahead\n"); return 2; }
    if (!check(2, "parent at the end")) return 1;
    printf("OK\n");
    return 0;
}
