/* Forks while the process is over its budget and its forking thread faults inside fork().
 *
 * The C library's fork takes every malloc arena's lock after the prepare handlers ran (the
 * shim's among them, which holds its fork lock until the parent handler) and releases them
 * before the parent handlers: a thread arena lives in memory the agent manages, so with it
 * evicted the forking thread takes a missing fault inside fork(), while the shim's helper
 * refuses to move pages for the eviction (the process is forking). Reader threads keep the
 * workload at its hard limit meanwhile (random reads of a buffer several times the budget), so
 * that fault has to wait for room.
 *
 * usage: forkfault MIB FORKS READERS ARENAS
 * Prints OK and exits 0 after FORKS forks whose children exited 0.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile unsigned char *buf;
static size_t pages;
static volatile int done;
static volatile uint64_t sink;

static void *reader(void *arg) {
    uint64_t x = 0x9e3779b97f4a7c15ull * ((uintptr_t)arg + 1);
    while (!done) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        sink += buf[(x % pages) * 4096];
    }
    return NULL;
}

static pthread_barrier_t made;

/* A thread's first malloc gives it an arena of its own, in memory the C library maps; threads
 * that run at the same time get different arenas (up to the C library's limit). */
static void *arena_maker(void *arg) {
    (void)arg;
    volatile char *p = malloc(64);
    p[0] = 1;
    pthread_barrier_wait(&made);
    return (void *)p;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: forkfault MIB FORKS READERS ARENAS\n");
        return 2;
    }
    size_t len = strtoul(argv[1], 0, 10) << 20;
    int forks = atoi(argv[2]);
    int readers = atoi(argv[3]);
    int arenas = atoi(argv[4]);
    pages = len / 4096;
    buf = mmap(0, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED) {
        perror("mmap");
        return 2;
    }
    for (size_t i = 0; i < len; i += 64) buf[i] = (unsigned char)(i >> 12 | 1);
    pthread_t t[64];
    void *blocks[64];
    if (readers > 64) readers = 64;
    if (arenas > 64) arenas = 64;
    pthread_barrier_init(&made, 0, arenas);
    for (int i = 0; i < arenas; i++) pthread_create(&t[i], 0, arena_maker, 0);
    for (int i = 0; i < arenas; i++) pthread_join(t[i], &blocks[i]);
    for (int i = 0; i < readers; i++) pthread_create(&t[i], 0, reader, (void *)(uintptr_t)i);
    for (int f = 0; f < forks; f++) {
        /* Give the evictor time to take the arena's page out again. */
        usleep(20000);
        pid_t c = fork();
        if (c < 0) {
            perror("fork");
            return 2;
        }
        if (c == 0) _exit(0);
        int status;
        if (waitpid(c, &status, 0) != c || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "fork %d: the child failed (status %x)\n", f, status);
            return 1;
        }
    }
    done = 1;
    for (int i = 0; i < readers; i++) pthread_join(t[i], 0);
    for (int i = 0; i < arenas; i++) free(blocks[i]);
    printf("OK\n");
    return 0;
}
