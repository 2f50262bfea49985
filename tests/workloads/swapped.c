/* Pages the kernel swapped out, under Yonder: a node that also has swap may page out a managed
 * page (memory pressure, or MADV_PAGEOUT as here). Its content is then in swap, not in RAM, and
 * /proc/PID/pagemap shows it "swapped", not "present"; it is still the program's data.
 *
 * usage: swapped MIB FRESH_MIB [fork]
 * Fills MIB MiB, pages out every other page with MADV_PAGEOUT, and says how many pagemap shows swapped; with
 * "fork", forks a child that keeps the swapped pages shared until told to check them. Then it
 * writes FRESH_MIB MiB of new memory (pushing the first region out of a small budget), checks the
 * first region, lets the child check its copy, prints OK and exits 0, or names the mismatch.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT 21
#endif

static uint64_t *mem;
static size_t words;

static uint64_t value(size_t i) { return i * 0x9e3779b97f4a7c15ull + 1; }

static int check(const char *who) {
    size_t bad = 0;
    for (size_t i = 0; i < words; i += 64) {
        if (mem[i] != value(i)) {
            if (bad++ < 4)
                fprintf(stderr, "%s: word %zu (page %zu) is %llx, expected %llx\n", who, i,
                        i / 512, (unsigned long long)mem[i], (unsigned long long)value(i));
        }
    }
    if (bad) fprintf(stderr, "%s: %zu words wrong\n", who, bad);
    return bad == 0;
}

static size_t swapped_pages(void) {
    int fd = open("/proc/self/pagemap", O_RDONLY);
    if (fd < 0) return 0;
    size_t n = 0, pages = words / 512;
    uint64_t e;
    for (size_t p = 0; p < pages; p++) {
        off_t off = (off_t)(((uintptr_t)mem / 4096 + p) * 8);
        if (pread(fd, &e, 8, off) == 8 && (e >> 62 & 1)) n++;
    }
    close(fd);
    return n;
}

int main(int argc, char **argv) {
    size_t bytes = (size_t)atol(argc > 1 ? argv[1] : "4") << 20;
    size_t fresh = (size_t)atol(argc > 2 ? argv[2] : "32") << 20;
    int do_fork = argc > 3 && strcmp(argv[3], "fork") == 0;
    words = bytes / 8;
    mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) { perror("mmap"); return 2; }
    for (size_t i = 0; i < words; i++) mem[i] = value(i);
    /* Every other page: a run of victims then mixes pages in RAM and pages in swap. */
    for (size_t off = 4096; off < bytes; off += 8192)
        if (madvise((char *)mem + off, 4096, MADV_PAGEOUT) != 0) {
            perror("madvise(MADV_PAGEOUT)");
            return 2;
        }
    fprintf(stderr, "swapped: %zu of %zu pages\n", swapped_pages(), words / 512);
    int go[2];
    if (pipe(go) != 0) { perror("pipe"); return 2; }
    pid_t c = -1;
    if (do_fork) {
        c = fork();
        if (c < 0) { perror("fork"); return 2; }
        if (c == 0) {
            char b;
            close(go[1]);
            if (read(go[0], &b, 1) != 1) _exit(2);
            _exit(check("child") ? 0 : 1);
        }
        close(go[0]);
    }
    char *more = fresh == 0 ? NULL : mmap(NULL, fresh, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (more == MAP_FAILED) { perror("mmap"); return 2; }
    for (size_t i = 0; i < fresh; i += 4096) more[i] = (char)(i >> 12 | 1);
    int ok = check("parent");
    if (do_fork) {
        int st;
        if (write(go[1], "x", 1) != 1) { perror("write"); return 2; }
        if (waitpid(c, &st, 0) != c) { perror("waitpid"); return 2; }
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            fprintf(stderr, "child ended with status %#x\n", st);
            ok = 0;
        }
    }
    if (!ok) return 1;
    printf("OK\n");
    return 0;
}
