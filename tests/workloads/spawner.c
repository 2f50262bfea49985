/* posix_spawn and vfork under the pager: the child runs in the parent's address space until it
 * execs (no fork event, the parent's faults and evictions go on), while a thread of the parent
 * reads its memory back.
 *
 * usage: spawner MIB SPAWNS
 * Fills MIB MiB, starts a thread that checks it six times, and meanwhile runs /bin/true SPAWNS
 * times with posix_spawn and SPAWNS times with vfork + exec. Prints OK and exits 0, or names
 * what went wrong and exits 1.
 */
#include <pthread.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;
static uint64_t *m;
static size_t words;

static void *checker(void *arg) {
    (void)arg;
    for (int r = 0; r < 6; r++)
        for (size_t i = 0; i < words; i += 512)
            if (m[i] != i * 5 + 1) {
                fprintf(stderr, "word %zu is %llx\n", i, (unsigned long long)m[i]);
                exit(1);
            }
    return NULL;
}

static int ran(pid_t pid, const char *how) {
    int st;
    if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "%s child ended with status %#x\n", how, st);
        return 0;
    }
    return 1;
}

int main(int argc, char **argv) {
    size_t bytes = (size_t)atol(argc > 1 ? argv[1] : "32") << 20;
    int spawns = atoi(argc > 2 ? argv[2] : "100");
    words = bytes / 8;
    m = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) { perror("mmap"); return 2; }
    for (size_t i = 0; i < words; i++) m[i] = i * 5 + 1;
    pthread_t t;
    if (pthread_create(&t, NULL, checker, NULL) != 0) { perror("pthread_create"); return 2; }
    char *args[] = {"/bin/true", NULL};
    for (int k = 0; k < spawns; k++) {
        pid_t pid;
        if (posix_spawn(&pid, "/bin/true", NULL, NULL, args, environ) != 0) { perror("posix_spawn"); return 2; }
        if (!ran(pid, "posix_spawn")) return 1;
        pid = vfork();
        if (pid == 0) {
            execv("/bin/true", args);
            _exit(127);
        }
        if (pid < 0) { perror("vfork"); return 2; }
        if (!ran(pid, "vfork")) return 1;
    }
    pthread_join(t, NULL);
    printf("OK\n");
    return 0;
}
