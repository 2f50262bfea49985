/* Reads with O_DIRECT into managed memory: the kernel pins the buffer's pages and the device
 * writes into them, with no fault the agent could see. A buffer page evicted while pinned would
 * never see the data: the program would read back what the buffer held before.
 *
 * usage: odirect FILE FILE_MIB READ_KIB ROUNDS
 * Writes FILE (FILE_MIB MiB of known words), then ROUNDS times: fills one of 8 buffers of
 * READ_KIB KiB with 0xab, reads a random READ_KIB KiB of the file into it with O_DIRECT, and
 * checks every page of it. Prints OK and exits 0, or names what is wrong and exits 1; exits 3
 * if the file system refuses O_DIRECT.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static uint64_t word(size_t w) { return w * 0x9e3779b97f4a7c15ull + 5; }

int main(int argc, char **argv) {
    if (argc < 5) { fprintf(stderr, "usage: odirect FILE FILE_MIB READ_KIB ROUNDS\n"); return 2; }
    const char *path = argv[1];
    size_t fsize = (size_t)atol(argv[2]) << 20, rsize = (size_t)atol(argv[3]) << 10;
    int rounds = atoi(argv[4]);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) { perror("open"); return 2; }
    uint64_t *w = malloc(1 << 20);
    for (size_t off = 0; off < fsize; off += 1 << 20) {
        for (size_t i = 0; i < (1 << 17); i++) w[i] = word(off / 8 + i);
        if (pwrite(fd, w, 1 << 20, off) != 1 << 20) { perror("pwrite"); return 2; }
    }
    free(w);
    if (fsync(fd) != 0) { perror("fsync"); return 2; }
    close(fd);
    fd = open(path, O_RDONLY | O_DIRECT);
    if (fd < 0) {
        perror("open O_DIRECT");
        return errno == EINVAL ? 3 : 2;
    }
    const size_t nbuf = 8;
    uint64_t *buf = mmap(NULL, nbuf * rsize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED) { perror("mmap"); return 2; }
    long bad = 0;
    srand(7);
    for (int r = 0; r < rounds; r++) {
        size_t b = (size_t)rand() % nbuf;
        size_t off = (size_t)(rand() % (int)(fsize / rsize)) * rsize;
        uint64_t *dst = buf + b * rsize / 8;
        memset(dst, 0xab, rsize);
        ssize_t n = pread(fd, dst, rsize, (off_t)off);
        if (n != (ssize_t)rsize) { perror("pread"); return 2; }
        for (size_t i = 0; i < rsize / 8; i += 512)
            if (dst[i] != word(off / 8 + i) && bad++ < 4)
                fprintf(stderr, "round %d: page %zu of the read holds %llx\n", r, i / 512,
                        (unsigned long long)dst[i]);
    }
    close(fd);
    unlink(path);
    if (bad) { fprintf(stderr, "%ld pages read wrong\n", bad); return 1; }
    printf("OK\n");
    return 0;
}
