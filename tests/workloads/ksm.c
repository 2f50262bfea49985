/* Pages KSM merged, under the pager: MADV_MERGEABLE memory of few distinct contents, merged by
 * ksmd (which the caller turns on), then pushed out of a smaller budget, partly written again
 * (a write to a merged page copies it) and checked.
 *
 * usage: ksm MIB FRESH_MIB WAIT_S
 * Fills MIB MiB with four distinct page contents, marks it mergeable, waits up to WAIT_S
 * seconds for ksmd to merge pages and says how many it merged ("merged: N"), writes FRESH_MIB
 * MiB of new memory, rewrites one word of every third page with its own value, checks every
 * page, prints OK and exits 0, or names the mismatch.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static uint64_t val(size_t page, size_t w) { return (page % 4) * 1000003 + w * 7 + 1; }

static long merging_pages(void) {
    FILE *f = fopen("/proc/self/ksm_stat", "r");
    char line[128];
    long n = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "ksm_merging_pages %ld", &n) == 1) break;
    if (f) fclose(f);
    return n;
}

int main(int argc, char **argv) {
    size_t bytes = (size_t)atol(argc > 1 ? argv[1] : "8") << 20;
    size_t fresh = (size_t)atol(argc > 2 ? argv[2] : "16") << 20;
    int wait_s = atoi(argc > 3 ? argv[3] : "10");
    size_t pages = bytes / 4096;
    uint64_t *m = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) { perror("mmap"); return 2; }
    for (size_t p = 0; p < pages; p++)
        for (size_t w = 0; w < 512; w++) m[p * 512 + w] = val(p, w);
    if (madvise(m, bytes, MADV_MERGEABLE) != 0) { perror("madvise(MADV_MERGEABLE)"); return 2; }
    long merged = 0;
    for (int i = 0; i < wait_s * 10 && merged < (long)pages / 2; i++) {
        usleep(100 * 1000);
        merged = merging_pages();
    }
    fprintf(stderr, "merged: %ld\n", merged);
    char *more = mmap(NULL, fresh, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (more == MAP_FAILED) { perror("mmap"); return 2; }
    for (size_t i = 0; i < fresh; i += 4096) more[i] = 1;
    for (size_t p = 0; p < pages; p += 3) m[p * 512 + 5] = val(p, 5);
    for (size_t p = 0; p < pages; p++)
        for (size_t w = 0; w < 512; w += 5)
            if (m[p * 512 + w] != val(p, w)) {
                fprintf(stderr, "page %zu word %zu is %llx\n", p, w, (unsigned long long)m[p * 512 + w]);
                return 1;
            }
    printf("OK\n");
    return 0;
}
