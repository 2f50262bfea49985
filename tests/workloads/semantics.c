// Memory semantics a workload must keep under the node agent. Each mode fills a region, pushes
// it out of local memory by touching more than the budget elsewhere, then:
//   drop:    madvise(DONTNEED) and munmap+mmap parts of it: they must read as zeros; the rest
//            must keep its content;
//   remap:   mremap it to a new, larger place: the content moves with it;
//   syscall: read() from a pipe into evicted memory, and write() evicted memory to a pipe.
// Exits 0 when every check passes.
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define MB (1024UL * 1024UL)
static size_t region_mb, push_mb;
static int failures;

static uint64_t val(uint64_t i) { return i * 0x9E3779B97F4A7C15ULL + 1; }

static void fill(uint64_t *p, size_t words, uint64_t base) {
    for (size_t i = 0; i < words; i++) p[i] = val(base + i);
}

static size_t check(const uint64_t *p, size_t words, uint64_t base) {
    size_t bad = 0;
    for (size_t i = 0; i < words; i++) if (p[i] != val(base + i)) bad++;
    return bad;
}

static size_t zeros(const uint64_t *p, size_t words) {
    size_t bad = 0;
    for (size_t i = 0; i < words; i++) if (p[i] != 0) bad++;
    return bad;
}

static void expect(const char *what, size_t bad) {
    printf("%-40s %s (%zu bad words)\n", what, bad ? "FAIL" : "ok", bad);
    if (bad) failures++;
}

// Touch more than the budget elsewhere so the region gets evicted.
static void push(void) {
    size_t len = push_mb * MB;
    char *p = mmap(0, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (size_t i = 0; i < len; i += 4096) p[i] = (char)i;
    usleep(200 * 1000);
    for (size_t i = 0; i < len; i += 4096) p[i] += 1;
    munmap(p, len);
}

static uint64_t *region(size_t len) {
    uint64_t *p = mmap(0, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { perror("mmap"); exit(3); }
    return p;
}

static void mode_drop(void) {
    size_t len = region_mb * MB, words = len / 8, q = words / 4;
    uint64_t *p = region(len);
    usleep(100 * 1000); // let the agent register it before it is touched
    fill(p, words, 0);
    push();
    // Quarter 1: dropped by the program -> zeros. Quarter 2: unmapped and mapped again -> zeros.
    madvise(p, q * 8, MADV_DONTNEED);
    munmap(p + q, q * 8);
    uint64_t *again = mmap(p + q, q * 8, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (again != p + q) { perror("mmap fixed"); exit(3); }
    usleep(100 * 1000);
    expect("madvise(DONTNEED) reads zeros", zeros(p, q));
    expect("munmap + mmap reads zeros", zeros(p + q, q));
    expect("untouched half keeps its content", check(p + 2 * q, 2 * q, 2 * q));
    // Written again after the drop, evicted again: the new content, not the old one.
    fill(p, q, 1000000);
    push();
    expect("rewritten after drop", check(p, q, 1000000));
    expect("still zeros after a second eviction", zeros(p + q, q));
}

static void mode_remap(void) {
    size_t len = region_mb * MB, words = len / 8;
    uint64_t *p = region(len);
    usleep(100 * 1000);
    fill(p, words, 7);
    push();
    uint64_t *moved = mremap(p, len, 2 * len, MREMAP_MAYMOVE);
    if (moved == MAP_FAILED) { perror("mremap"); exit(3); }
    // Force a move even if the kernel could grow in place.
    uint64_t *moved2 = mremap(moved, 2 * len, 2 * len, MREMAP_MAYMOVE | MREMAP_FIXED,
                              region(2 * len));
    if (moved2 == MAP_FAILED) { perror("mremap fixed"); exit(3); }
    expect("content moved by mremap", check(moved2, words, 7));
    expect("grown part reads zeros", zeros(moved2 + words, words));
    push();
    expect("content after eviction at the new place", check(moved2, words, 7));
}

static void mode_syscall(void) {
    size_t len = region_mb * MB, words = len / 8;
    uint64_t *p = region(len);
    usleep(100 * 1000);
    fill(p, words, 3);
    push();
    // write(): the kernel reads evicted pages of ours.
    int fds[2];
    if (pipe(fds)) { perror("pipe"); exit(3); }
    uint64_t *back = malloc(len);
    size_t chunk = 64 * 1024;
    size_t bad = 0;
    for (size_t off = 0; off < len; off += chunk) {
        if (write(fds[1], (char *)p + off, chunk) != (ssize_t)chunk) { perror("write"); exit(3); }
        if (read(fds[0], (char *)back + off, chunk) != (ssize_t)chunk) { perror("read"); exit(3); }
    }
    bad = check(back, words, 3);
    expect("write() from evicted memory", bad);
    // read(): the kernel writes into evicted pages of ours.
    fill(back, words, 99);
    push();
    for (size_t off = 0; off < len; off += chunk) {
        if (write(fds[1], (char *)back + off, chunk) != (ssize_t)chunk) { perror("write"); exit(3); }
        if (read(fds[0], (char *)p + off, chunk) != (ssize_t)chunk) { perror("read"); exit(3); }
    }
    expect("read() into evicted memory", check(p, words, 99));
    push();
    expect("after another eviction", check(p, words, 99));
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: semantics drop|remap|syscall REGION_MB PUSH_MB\n"); return 2; }
    region_mb = strtoul(argv[2], 0, 10);
    push_mb = strtoul(argv[3], 0, 10);
    if (!strcmp(argv[1], "drop")) mode_drop();
    else if (!strcmp(argv[1], "remap")) mode_remap();
    else if (!strcmp(argv[1], "syscall")) mode_syscall();
    else { fprintf(stderr, "unknown mode\n"); return 2; }
    return failures ? 1 : 0;
}
