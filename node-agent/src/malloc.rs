//! How the agent asks glibc's malloc to keep its memory.

/// Makes every thread of the agent allocate from the one main arena. Its threads are the fault
/// thread and Tokio's blocking pool (reads for the write-protect path, DNS): with an arena of
/// its own, memory a blocking thread allocated stayed in that arena once freed (2–3 MiB at a
/// 2 GiB workload, docs/scale.md). The lock the threads then share is almost never contended.
pub fn one_arena() {
    // SAFETY: mallopt only changes a malloc tunable; called before the agent starts threads.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
