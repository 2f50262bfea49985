/*
 * yonder.h - client API of Yonder, the far-memory pager (libyonder.so).
 *
 * A program that runs under `yonder-agent run --local-mem SIZE -- PROGRAM` has its anonymous
 * memory paged to memory servers automatically. With these calls it can steer that paging for
 * ranges of its own memory, because it knows its access pattern better than the agent can
 * guess it. See docs/client-api.md.
 *
 * Ranges: `addr` and `len` give a byte range of the caller's own memory; it is rounded outward
 * to whole pages (an unaligned start or length is fine). A zero `len` does nothing and succeeds
 * (once the agent is reachable).
 *
 * Return values: 0 on success, a negative errno on failure:
 *   -ENOSYS   the program does not run under the agent (YONDER_AGENT_SOCK is not set), or the
 *             agent does not manage this process; the program can carry on without the calls:
 *             they are optimisations, never needed for correctness.
 *   -EINVAL   the range wraps around the end of the address space.
 *   other     the agent refused the request with that errno (e.g. -ENOMEM or -EINVAL for a range
 *             that is not the caller's memory of the right kind, see each function), or the
 *             connection to the agent failed (-ECONNRESET, -EPROTO, -ETIMEDOUT, ...).
 *
 * Threads: every function may be called from any thread; requests are sent one at a time over
 * one connection per process, opened on first use. Fork: a child opens its own connection on
 * its first call (the parent's is never used by the child). The calls are not async-signal-safe.
 *
 * Build: cc prog.c -I node-agent/api/include -L target/debug -lyonder -Wl,-rpath,$PWD/target/debug
 */
#ifndef YONDER_H
#define YONDER_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * 1 if the program runs under the agent and the agent accepted its client connection, else 0.
 * Connects on first use (later calls are cheap). When it returns 0 the other calls fail (with
 * -ENOSYS when the program is not under the agent at all).
 */
int yonder_available(void);

/*
 * Manage the range from now on (missing and write-protect faults, eviction under the budget).
 * It must lie in private, anonymous, writable mappings (else -EINVAL). The agent manages such
 * memory anyway and finds new mappings within about 10 ms; this matters for memory that mmap
 * calls inside the C library hand out (large malloc blocks), which the program may fill before
 * the next scan, and for a range unregistered earlier. Registering a managed range again
 * succeeds.
 */
int yonder_register(void *addr, size_t len);

/*
 * Stop managing the range: its evicted pages are fetched back first, then it stays local (pinned)
 * and the agent's scanner does not take it again, until yonder_register. Returns when the range
 * is resident (-EINVAL for a range that is not mapped). Use it for hot data whose latency
 * matters. Pinned memory does not count against the agent's budget: the program is responsible
 * for its size.
 */
int yonder_unregister(void *addr, size_t len);

/*
 * Fetch the range's evicted pages ahead of use, as many as the budget has room for. A hint:
 * returns once the fetches are issued, not when the pages are installed; a touch before they
 * arrive simply waits for them. Resident or never-touched pages are left alone. Call it a little
 * before a scan of memory that was evicted.
 */
int yonder_prefetch(void *addr, size_t len);

/*
 * Evict the range's resident pages now: written to the memory servers (unless already there and
 * not written since), then dropped locally. Returns when that is done. The contents stay intact:
 * the next touch fetches them back. Use it for data that will not be touched for a while, to make
 * room for the rest of the program without waiting for the agent to notice. Pinned (unregistered)
 * parts of the range are left alone. -EAGAIN: the agent cannot evict from this process yet (its
 * helper thread is still starting, just after a fork or at program start); retry a little later.
 */
int yonder_flush(void *addr, size_t len);

#ifdef __cplusplus
}
#endif

#endif /* YONDER_H */
