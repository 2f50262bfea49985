/* A program that uses the client API (libyonder.so, node-agent/api/include/yonder.h).
 *
 * usage: api_user MODE
 *   absent       not under the agent: yonder_available() is 0 and every call returns -ENOSYS;
 *   unreachable  YONDER_AGENT_SOCK names no socket: unavailable, every call fails (< 0);
 *   managed      under the agent: flush, prefetch, unregister (pin), register of a fresh
 *                mapping and of a malloc block, four threads at once; checksums of every region
 *                verified after every move;
 *   fork         under the agent: a forked child uses the API on its own copy of the memory;
 *   bad          under the agent: each call on a range that is not mapped, and register of a
 *                read-only mapping; prints `bad NAME rc=RC` for each.
 * Prints `check NAME: ok` or `FAIL NAME: ...` per check, then `api_user: all ok` (exit 0) or
 * `api_user: N failures` (exit 1).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "yonder.h"

#define MIB (1UL << 20)

static int failures;
static long page;

#define CHECK(name, cond, ...)                                                                   \
    do {                                                                                         \
        if (cond) {                                                                              \
            printf("check %s: ok\n", name);                                                      \
        } else {                                                                                 \
            printf("FAIL %s: ", name);                                                           \
            printf(__VA_ARGS__);                                                                 \
            printf("\n");                                                                        \
            __atomic_add_fetch(&failures, 1, __ATOMIC_SEQ_CST);                                  \
        }                                                                                        \
        fflush(stdout);                                                                          \
    } while (0)

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static uint64_t fill(void *p, size_t len, uint64_t seed) {
    uint64_t *w = p, sum = 0;
    for (size_t i = 0; i < len / 8; i++) {
        w[i] = (i ^ (seed << 40)) * 0x9e3779b97f4a7c15ULL + seed;
        sum = ((sum << 7) | (sum >> 57)) ^ (w[i] + sum);
    }
    return sum;
}

static uint64_t checksum(const void *p, size_t len) {
    const uint64_t *w = p;
    uint64_t sum = 0;
    for (size_t i = 0; i < len / 8; i++) sum = ((sum << 7) | (sum >> 57)) ^ (w[i] + sum);
    return sum;
}

static size_t resident(const void *p, size_t len) {
    size_t n = len / page, count = 0;
    unsigned char *vec = malloc(n);
    if (!vec) return 0;
    if (mincore((void *)p, len, vec) != 0) {
        perror("mincore");
        free(vec);
        return 0;
    }
    for (size_t i = 0; i < n; i++) count += vec[i] & 1;
    free(vec);
    return count;
}

static void *map(size_t len) {
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        exit(2);
    }
    return p;
}

/* An mmap the preload shim does not see (a raw system call, like the C library's own): the
 * agent's scanner would only find it at its next scan. */
static void *raw_map(size_t len) {
    void *p = (void *)syscall(SYS_mmap, NULL, len, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        exit(2);
    }
    return p;
}

static int finish(void) {
    if (failures) {
        printf("api_user: %d failures\n", failures);
        return 1;
    }
    printf("api_user: all ok\n");
    return 0;
}

static int absent(int want_enosys) {
    size_t len = 4 * MIB;
    void *p = map(len);
    uint64_t sum = fill(p, len, 1);
    CHECK("available is 0", yonder_available() == 0, "yonder_available() = %d",
          yonder_available());
    int rc[4] = {yonder_register(p, len), yonder_unregister(p, len), yonder_prefetch(p, len),
                 yonder_flush(p, len)};
    const char *names[4] = {"register", "unregister", "prefetch", "flush"};
    for (int i = 0; i < 4; i++) {
        char name[64];
        snprintf(name, sizeof name, "%s fails", names[i]);
        if (want_enosys)
            CHECK(name, rc[i] == -ENOSYS, "returned %d, expected -ENOSYS (%d)", rc[i], -ENOSYS);
        else
            CHECK(name, rc[i] < 0, "returned %d, expected a negative errno", rc[i]);
        printf("%s rc=%d\n", names[i], rc[i]);
    }
    CHECK("data intact", checksum(p, len) == sum, "checksum changed");
    return finish();
}

/* Four threads at once on the one connection, each with its own region. */
struct job {
    int id;
    int errors;
};

static void *worker(void *arg) {
    struct job *j = arg;
    size_t len = 2 * MIB;
    void *p = map(len);
    for (int round = 0; round < 2; round++) {
        uint64_t sum = fill(p, len, 100 + j->id * 10 + round);
        int rc = yonder_flush(p, len);
        if (rc != 0) {
            printf("thread %d: flush returned %d\n", j->id, rc);
            j->errors++;
        }
        if (checksum(p, len) != sum) {
            printf("thread %d: checksum after flush\n", j->id);
            j->errors++;
        }
        rc = yonder_flush(p, len);
        if (rc == 0) rc = yonder_prefetch(p, len);
        if (rc != 0) {
            printf("thread %d: flush+prefetch returned %d\n", j->id, rc);
            j->errors++;
        }
        if (checksum(p, len) != sum) {
            printf("thread %d: checksum after prefetch\n", j->id);
            j->errors++;
        }
    }
    munmap(p, len);
    return NULL;
}

static int managed(void) {
    double start = now_ms();
    CHECK("available is 1", yonder_available() == 1, "yonder_available() = %d",
          yonder_available());

    /* Flush: 16 MiB out now, contents intact. */
    size_t a_len = 16 * MIB;
    char *a = map(a_len);
    uint64_t a_sum = fill(a, a_len, 1);
    double t0 = now_ms();
    int rc = yonder_flush(a, a_len);
    printf("flush of 16 MiB: rc=%d in %.1f ms\n", rc, now_ms() - t0);
    CHECK("flush 16 MiB", rc == 0, "returned %d", rc);
    size_t left = resident(a, a_len);
    printf("resident after flush: %zu of %zu pages\n", left, a_len / page);
    CHECK("flush drops the pages", left <= 16, "%zu pages still resident", left);
    CHECK("data intact after flush", checksum(a, a_len) == a_sum, "checksum changed");

    printf("t=%.0f ms: flush done\n", now_ms() - start);
    /* Prefetch: after a flush, pages come back without being touched. */
    rc = yonder_flush(a, a_len);
    CHECK("flush again", rc == 0, "returned %d", rc);
    size_t before = resident(a, a_len);
    rc = yonder_prefetch(a, a_len);
    CHECK("prefetch 16 MiB", rc == 0, "returned %d", rc);
    size_t after = before;
    for (int i = 0; i < 1500 && after <= before; i++) { /* up to 30 s */
        usleep(20000);
        after = resident(a, a_len);
    }
    usleep(200000);
    after = resident(a, a_len);
    printf("resident after prefetch: %zu of %zu pages (before %zu)\n", after, a_len / page,
           before);
    CHECK("prefetch brings pages back", after > before, "%zu before, %zu after", before, after);
    CHECK("data intact after prefetch", checksum(a, a_len) == a_sum, "checksum changed");

    printf("t=%.0f ms: prefetch done\n", now_ms() - start);
    /* Unregister: evicted pages come back first, then the range stays local under pressure. */
    size_t b_len = 4 * MIB;
    char *b = map(b_len);
    uint64_t b_sum = fill(b, b_len, 2);
    rc = yonder_flush(b, b_len);
    CHECK("flush before unregister", rc == 0, "returned %d", rc);
    rc = yonder_unregister(b, b_len);
    CHECK("unregister 4 MiB", rc == 0, "returned %d", rc);
    size_t pinned = resident(b, b_len);
    CHECK("unregister brings the range back", pinned == b_len / page, "%zu of %zu resident",
          pinned, b_len / page);
    CHECK("data intact after unregister", checksum(b, b_len) == b_sum, "checksum changed");
    size_t c_len = 12 * MIB; /* pressure: one and a half times an 8 MiB budget */
    char *c = map(c_len);
    uint64_t c_sum = fill(c, c_len, 3);
    CHECK("data intact under pressure", checksum(c, c_len) == c_sum, "checksum changed");
    pinned = resident(b, b_len);
    CHECK("unregistered range stays resident", pinned == b_len / page, "%zu of %zu resident",
          pinned, b_len / page);
    b_sum = fill(b, b_len, 22);
    CHECK("pinned range writable", checksum(b, b_len) == b_sum, "checksum changed");
    rc = yonder_flush(b, b_len);
    CHECK("flush of a pinned range is harmless", rc == 0, "returned %d", rc);
    pinned = resident(b, b_len);
    CHECK("flush leaves a pinned range", pinned == b_len / page, "%zu of %zu resident", pinned,
          b_len / page);
    /* And back under management. */
    rc = yonder_register(b, b_len);
    CHECK("register the pinned range again", rc == 0, "returned %d", rc);
    rc = yonder_flush(b, b_len);
    CHECK("flush after register again", rc == 0, "returned %d", rc);
    left = resident(b, b_len);
    CHECK("registered again: flush drops it", left <= 16, "%zu pages still resident", left);
    CHECK("data intact after register again", checksum(b, b_len) == b_sum, "checksum changed");

    printf("t=%.0f ms: unregister done\n", now_ms() - start);
    /* Register of a fresh mapping the shim did not see, then of an unaligned sub-range. */
    size_t d_len = 4 * MIB;
    char *d = raw_map(d_len);
    rc = yonder_register(d, d_len);
    CHECK("register a fresh mapping", rc == 0, "returned %d", rc);
    rc = yonder_register(d + 100, 5000);
    CHECK("register an unaligned sub-range", rc == 0, "returned %d", rc);
    uint64_t d_sum = fill(d, d_len, 4);
    rc = yonder_flush(d, d_len);
    CHECK("flush the registered mapping", rc == 0, "returned %d", rc);
    left = resident(d, d_len);
    CHECK("registered mapping is managed", left <= 16, "%zu pages still resident", left);
    CHECK("data intact in the registered mapping", checksum(d, d_len) == d_sum,
          "checksum changed");
    rc = yonder_flush(d + 3 * page + 17, 2 * page);
    CHECK("flush an unaligned range", rc == 0, "returned %d", rc);

    /* A malloc block: an mmap inside the C library, not page-aligned. */
    size_t m_len = 4 * MIB;
    char *m = malloc(m_len);
    rc = yonder_register(m, m_len);
    CHECK("register a malloc block", rc == 0, "returned %d", rc);
    uint64_t m_sum = fill(m, m_len, 5);
    rc = yonder_flush(m, m_len);
    CHECK("flush a malloc block", rc == 0, "returned %d", rc);
    CHECK("data intact in the malloc block", checksum(m, m_len) == m_sum, "checksum changed");

    printf("t=%.0f ms: register done\n", now_ms() - start);
    /* Four threads at once. */
    pthread_t th[4];
    struct job jobs[4];
    for (int i = 0; i < 4; i++) {
        jobs[i] = (struct job){.id = i};
        pthread_create(&th[i], NULL, worker, &jobs[i]);
    }
    int errors = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        errors += jobs[i].errors;
    }
    CHECK("four threads flushing and prefetching", errors == 0, "%d errors", errors);

    printf("t=%.0f ms: threads done\n", now_ms() - start);
    CHECK("final: 16 MiB region", checksum(a, a_len) == a_sum, "checksum changed");
    CHECK("final: pinned region", checksum(b, b_len) == b_sum, "checksum changed");
    CHECK("final: pressure region", checksum(c, c_len) == c_sum, "checksum changed");
    CHECK("final: registered mapping", checksum(d, d_len) == d_sum, "checksum changed");
    CHECK("final: malloc block", checksum(m, m_len) == m_sum, "checksum changed");
    return finish();
}

/* A forked child opens its own connection (the parent had one before the fork) and has its own
 * copy of the memory. */
static int forked(void) {
    CHECK("available is 1", yonder_available() == 1, "yonder_available() = %d",
          yonder_available());
    size_t len = 4 * MIB;
    char *p = map(len);
    uint64_t sum = fill(p, len, 1);
    int rc = yonder_flush(p, len);
    CHECK("parent flush before the fork", rc == 0, "returned %d", rc);
    pid_t pid = fork();
    if (pid == 0) {
        int bad = 0, rc1, rc2;
        /* At once: the first call after the fork opens the child's connection. */
        if ((rc1 = yonder_flush(p, len)) != 0) bad |= 2;
        if (yonder_available() != 1) bad |= 1;
        if (checksum(p, len) != sum) bad |= 4;
        uint64_t s = fill(p, len, 9);
        if ((rc2 = yonder_flush(p, len)) != 0) bad |= 8;
        if (checksum(p, len) != s) bad |= 16;
        printf("child: flush rc=%d, flush after write rc=%d\n", rc1, rc2);
        fflush(stdout);
        _exit(bad);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    CHECK("forked child uses the API", WIFEXITED(st) && WEXITSTATUS(st) == 0,
          "child status %#x (bits: 1 unavailable, 2 flush, 4 data, 8 flush after write, "
          "16 data after write)",
          st);
    rc = yonder_flush(p, len);
    CHECK("parent's connection after the fork", rc == 0, "returned %d", rc);
    CHECK("parent's data intact", checksum(p, len) == sum, "checksum changed");
    return finish();
}

static int bad(void) {
    CHECK("available is 1", yonder_available() == 1, "yonder_available() = %d",
          yonder_available());
    size_t len = MIB;
    char *gone = map(len);
    munmap(gone, len);
    printf("bad register rc=%d\n", yonder_register(gone, len));
    printf("bad unregister rc=%d\n", yonder_unregister(gone, len));
    printf("bad prefetch rc=%d\n", yonder_prefetch(gone, len));
    printf("bad flush rc=%d\n", yonder_flush(gone, len));
    char *ro = mmap(NULL, len, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    printf("bad register-readonly rc=%d\n", yonder_register(ro, len));
    printf("bad register-wraps rc=%d\n", yonder_register((void *)-page, 2 * page));
    /* The connection still works after refused requests. */
    char *ok = map(len);
    uint64_t sum = fill(ok, len, 7);
    int rc = yonder_flush(ok, len);
    CHECK("flush after refused requests", rc == 0, "returned %d", rc);
    CHECK("data intact", checksum(ok, len) == sum, "checksum changed");
    return finish();
}

int main(int argc, char **argv) {
    page = sysconf(_SC_PAGESIZE);
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *mode = argc > 1 ? argv[1] : "";
    if (!strcmp(mode, "absent")) return absent(1);
    if (!strcmp(mode, "unreachable")) return absent(0);
    if (!strcmp(mode, "managed")) return managed();
    if (!strcmp(mode, "fork")) return forked();
    if (!strcmp(mode, "bad")) return bad();
    fprintf(stderr, "usage: api_user absent|unreachable|managed|fork|bad\n");
    return 2;
}
