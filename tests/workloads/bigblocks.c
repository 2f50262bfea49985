// A workload for the node agent's tests: N threads each malloc and fill four fresh 32 MiB blocks
// (glibc maps each with its own mmap, which the shim's interposed mmap never sees), keeping them
// all, then check them and print the process's peak RSS (VmHWM). Exits 0 when every byte is right.
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BLOCKS 4
#define BLOCK (32u << 20)

static void *run(void *arg) {
    long id = (long)arg;
    char **blocks = malloc(BLOCKS * sizeof *blocks);
    for (int i = 0; i < BLOCKS; i++) {
        blocks[i] = malloc(BLOCK);
        memset(blocks[i], (int)(id * BLOCKS + i + 1), BLOCK);
    }
    long bad = 0;
    for (int i = 0; i < BLOCKS; i++)
        for (size_t k = 0; k < BLOCK; k += 4096)
            if (blocks[i][k] != (char)(id * BLOCKS + i + 1)) bad++;
    return (void *)bad;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 4;
    if (n < 1 || n > 16) return 2;
    pthread_t t[16];
    for (long i = 0; i < n; i++) pthread_create(&t[i], 0, run, (void *)i);
    long bad = 0;
    for (int i = 0; i < n; i++) {
        void *r;
        pthread_join(t[i], &r);
        bad += (long)r;
    }
    printf("bigblocks: %d threads, %ld bad pages\n", n, bad);
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmHWM:", 6)) fputs(line, stdout);
    return bad != 0;
}
