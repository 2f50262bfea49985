/* fork with MADV_WIPEONFORK and MADV_DONTFORK ranges under the pager: the child must read zeros in
 * the wiped range and have no mapping at the don't-fork range, even for pages the agent evicted
 * before the fork; the parent keeps all three ranges intact.
 *
 * usage: wipeonfork MIB
 * Maps three ranges of MIB MiB each (wipe-on-fork, don't-fork, plain), fills them, then forks:
 *  - the child checks that every word of the wiped range is zero, that the don't-fork range is
 *    not mapped (mincore: ENOMEM), and that the plain range holds the parent's data; it then
 *    writes the wiped range and reads it back (its own pages now, evicted and fetched again);
 *  - the parent waits, then checks its three ranges.
 * Prints OK and exits 0 when every check passed; exits non-zero naming the first mismatch.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static size_t words;

static uint64_t value(size_t i, uint64_t gen) { return (i * 0x9e3779b97f4a7c15ull) ^ (gen << 56) ^ gen; }

static void fill(uint64_t *m, uint64_t gen) {
    for (size_t i = 0; i < words; i += 8) m[i] = value(i, gen);
}

/* gen 0 means zeros everywhere. */
static int check(const uint64_t *m, uint64_t gen, const char *who) {
    for (size_t i = 0; i < words; i += 8) {
        uint64_t want = gen ? value(i, gen) : 0;
        if (m[i] != want) {
            fprintf(stderr, "%s: word %zu is %llx, expected %llx\n", who, i,
                    (unsigned long long)m[i], (unsigned long long)want);
            return 0;
        }
    }
    return 1;
}

static uint64_t *map(size_t bytes, int advice, const char *name) {
    uint64_t *m = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) { perror("mmap"); exit(2); }
    if (advice >= 0 && madvise(m, bytes, advice) != 0) { perror(name); exit(2); }
    return m;
}

int main(int argc, char **argv) {
    size_t bytes = (size_t)atol(argc > 1 ? argv[1] : "8") << 20;
    words = bytes / 8;
    uint64_t *wiped = map(bytes, MADV_WIPEONFORK, "MADV_WIPEONFORK");
    uint64_t *unforked = map(bytes, MADV_DONTFORK, "MADV_DONTFORK");
    uint64_t *plain = map(bytes, -1, "plain");
    fill(wiped, 1);
    fill(unforked, 2);
    fill(plain, 3);
    /* Read everything back once: under a small budget, most pages are now evicted. */
    if (!check(wiped, 1, "parent, wiped range, before fork") ||
        !check(unforked, 2, "parent, don't-fork range, before fork") ||
        !check(plain, 3, "parent, plain range, before fork"))
        return 1;

    pid_t c = fork();
    if (c < 0) { perror("fork"); return 2; }
    if (c == 0) {
        unsigned char vec[1];
        if (!check(wiped, 0, "child, wiped range")) _exit(1);
        if (mincore(unforked, 4096, vec) == 0 || errno != ENOMEM) {
            fprintf(stderr, "child: the don't-fork range is mapped\n");
            _exit(1);
        }
        if (!check(plain, 3, "child, plain range")) _exit(1);
        fill(wiped, 4);
        if (!check(wiped, 4, "child, wiped range rewritten") ||
            !check(plain, 3, "child, plain range, second pass"))
            _exit(1);
        _exit(0);
    }
    int st;
    if (waitpid(c, &st, 0) != c) { perror("waitpid"); return 2; }
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "child ended with status %#x\n", st);
        return 1;
    }
    if (!check(wiped, 1, "parent, wiped range, after fork") ||
        !check(unforked, 2, "parent, don't-fork range, after fork") ||
        !check(plain, 3, "parent, plain range, after fork"))
        return 1;
    printf("OK\n");
    return 0;
}
