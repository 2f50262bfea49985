/*
 * cooperative.c - a program that tells the Yonder agent how it uses its memory.
 *
 * It keeps a 64 MiB table in four 16 MiB regions:
 *   region 0  hot:   scanned over and over; unregistered, so it stays local (pinned);
 *   region 1  warm:  left to the agent;
 *   region 2  warm:  a malloc block (an mmap inside the C library), registered at once so the
 *                    agent manages it from the first byte instead of at its next scan;
 *   region 3  cold:  written once, flushed right away to make room, prefetched just before it
 *                    is scanned again.
 * Every region carries a checksum that is verified after each move. Without the agent the
 * program runs the same: every call returns -ENOSYS and is ignored.
 *
 * Build (from the workspace root, after `cargo build --workspace`):
 *
 *   cc -O2 -o cooperative node-agent/api/examples/cooperative.c \
 *      -I node-agent/api/include -L target/debug -lyonder -Wl,-rpath,$PWD/target/debug
 *
 * Run under the agent, with less local memory than the table:
 *
 *   target/debug/yonder-agent run --local-mem 24MiB -- ./cooperative
 *
 * and without it (`./cooperative`) for comparison. The agent's summary on stderr counts the
 * pages evicted (the flush) and fetched back (the prefetch and the faults).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "yonder.h"

#define REGION (16UL << 20)
#define WORDS (REGION / sizeof(uint64_t))

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static uint64_t fill(uint64_t *r, uint64_t seed) {
  uint64_t sum = 0;
  for (size_t i = 0; i < WORDS; i++) {
    r[i] = (i ^ seed) * 0x9e3779b97f4a7c15ULL;
    sum = ((sum << 5) | (sum >> 59)) ^ (r[i] + sum);
  }
  return sum;
}

static uint64_t checksum(const uint64_t *r) {
  uint64_t sum = 0;
  for (size_t i = 0; i < WORDS; i++)
    sum = ((sum << 5) | (sum >> 59)) ^ (r[i] + sum);
  return sum;
}

/* Resident pages of a range (mincore): shows what flush, prefetch and unregister did. */
static size_t resident_pages(const void *p, size_t len) {
  long page = sysconf(_SC_PAGESIZE);
  size_t n = len / page, count = 0;
  unsigned char *vec = malloc(n);
  if (!vec || mincore((void *)p, len, vec) != 0) {
    free(vec);
    return 0;
  }
  for (size_t i = 0; i < n; i++)
    count += vec[i] & 1;
  free(vec);
  return count;
}

/* Runs one call, prints its result and time; a failure is reported, never fatal. */
#define HINT(what, call)                                                                 \
  do {                                                                                   \
    double t0 = now_ms();                                                                \
    int rc = (call);                                                                     \
    if (rc == 0)                                                                         \
      printf("%-32s ok in %.1f ms\n", what, now_ms() - t0);                              \
    else                                                                                 \
      printf("%-32s %s\n", what, strerror(-rc));                                         \
  } while (0)

int main(void) {
  int managed = yonder_available();
  printf("under the Yonder agent: %s\n", managed ? "yes" : "no (the calls return -ENOSYS)");

  uint64_t *region[4];
  for (int i = 0; i < 4; i++) {
    if (i == 2) {
      region[i] = malloc(REGION); /* glibc serves this with an mmap of its own */
    } else {
      void *p = mmap(NULL, REGION, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      region[i] = p == MAP_FAILED ? NULL : p;
    }
    if (!region[i]) {
      perror("allocating a region");
      return 2;
    }
  }
  /* malloc's block is not page-aligned: the library rounds the range outward to whole pages. */
  HINT("register region 2 (malloc)", yonder_register(region[2], REGION));

  uint64_t sum[4];
  for (int i = 0; i < 4; i++)
    sum[i] = fill(region[i], i);
  int bad = 0;

  /* The cold region will not be touched for a while: evict it now. */
  HINT("flush cold region 3", yonder_flush(region[3], REGION));
  printf("  region 3 resident: %zu of %lu pages\n", resident_pages(region[3], REGION),
         REGION / sysconf(_SC_PAGESIZE));

  /* The hot region is scanned over and over: keep it local. */
  HINT("unregister (pin) hot region 0", yonder_unregister(region[0], REGION));
  printf("  region 0 resident: %zu of %lu pages\n", resident_pages(region[0], REGION),
         REGION / sysconf(_SC_PAGESIZE));
  double t0 = now_ms();
  for (int pass = 0; pass < 4; pass++)
    bad |= checksum(region[0]) != sum[0];
  printf("4 scans of the pinned region:    %.1f ms\n", now_ms() - t0);

  /* Time to scan the cold region: ask for it back a moment before. */
  HINT("prefetch cold region 3", yonder_prefetch(region[3], REGION));
  t0 = now_ms();
  bad |= checksum(region[3]) != sum[3];
  printf("scan of the cold region:         %.1f ms\n", now_ms() - t0);

  for (int i = 0; i < 4; i++) {
    int ok = checksum(region[i]) == sum[i];
    printf("region %d: checksum %s\n", i, ok ? "ok" : "BAD");
    bad |= !ok;
  }
  if (bad) {
    fprintf(stderr, "cooperative: data corrupted\n");
    return 1;
  }
  printf("cooperative: all checksums ok\n");
  return 0;
}
