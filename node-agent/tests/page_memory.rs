//! Heap bytes the agent keeps per managed page (page table, policy, slots, versions and digests
//! together), in a steady state like the one of a workload over its budget: a quarter of the
//! pages resident (some fetched back, so with a remote copy and its digest), the rest evicted
//! (each with a slot and a version), the ghost list at its cap (a quarter of the budget, as the agent's).
//!
//! `cargo test --release -p yonder-agent --test page_memory -- --ignored --nocapture` prints the
//! figures at 512k and 4M pages (docs/page-table.md).

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::{
        atomic::{AtomicIsize, Ordering},
        Mutex,
    },
};

use yonder_agent::{
    eviction::{EvictionPolicy, Policy},
    pages::{digest, Decision, Digest, PageTable, State, PAGE},
};

/// The system allocator, counting the bytes live on the heap.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
/// One measurement at a time: the count is global.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

// SAFETY: every method forwards to the system allocator with the caller's arguments, which the
// caller guarantees valid; the counter is only arithmetic beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `layout` comes from our caller, who guarantees it is valid for `alloc`.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `System` with `layout` (every allocation goes there).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: `ptr` was allocated by `System` with `layout`; the caller guarantees
        // `new_size` is valid for it.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Where the simulated workload's memory starts.
const BASE: u64 = 0x7f00_0000_0000;
/// Where its parking area is.
const PARK: u64 = 0x7e00_0000_0000;

/// A cheap pseudo-random sequence (the figures must not depend on a seed from the environment).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// The digest of `page`'s content in a round.
fn content_digest(page: u64, content: u64) -> Digest {
    digest(&[page.to_le_bytes(), content.to_le_bytes()].concat())
}

/// Evicts (by parking) until the table is within `budget`, as the evictor does in batches.
fn evict_to(t: &mut PageTable<Box<dyn EvictionPolicy>>, budget: usize, round: u64) {
    while t.resident() > budget {
        let victims = t.start_eviction((t.resident() - budget).min(256));
        assert!(!victims.is_empty(), "nothing to evict");
        for page in victims {
            t.parked(page, PARK);
            // Content changes every round for half the pages: both clean and written evictions.
            let content = if page.is_multiple_of(2 * PAGE) {
                round
            } else {
                0
            };
            match t.decide(page, content_digest(page, content)) {
                Decision::Write(r) | Decision::Clean(r) => {
                    t.finish_parked(page, r);
                }
                Decision::Gone => unreachable!("no page leaves meanwhile"),
            }
        }
    }
}

/// Heap bytes per page of a table of `n` managed pages with a quarter of them resident.
fn bytes_per_page(policy: Policy, n: u64) -> f64 {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let before = LIVE.load(Ordering::Relaxed);
    let budget = (n / 4) as usize;
    let mut t = PageTable::new(policy.build());
    t.set_ghost_capacity(budget * yonder_agent::workload::GHOST_PERCENT / 100);
    for i in 0..n {
        t.zero_filled(BASE + i * PAGE);
        evict_to(&mut t, budget, 0);
    }
    // Some evicted pages come back (clean) and push others out.
    let mut rng = Lcg(1);
    for round in 1..=(n / 8) {
        let page = BASE + rng.below(n) * PAGE;
        if let Some(State::Evicted { remote }) = t.state(page) {
            assert!(t.start_fetch(page));
            // The agent records the digest of what it read back: an odd page's content never
            // changes; an even page's was that of an earlier round, any of which differs from
            // this round's, as `u64::MAX`'s does.
            let content = if page.is_multiple_of(2 * PAGE) {
                u64::MAX
            } else {
                0
            };
            t.fetched(page, remote, Some(content_digest(page, content)));
            evict_to(&mut t, budget, round);
        }
    }
    assert_eq!(t.resident(), budget);
    let after = LIVE.load(Ordering::Relaxed);
    let per_page = (after - before) as f64 / n as f64;
    drop(t);
    per_page
}

/// The target of issue 14: at most this many bytes per managed page.
const TARGET: f64 = 32.0;

#[test]
#[ignore = "a measurement (minutes in a debug build): run with --release -- --ignored"]
fn bytes_per_managed_page_at_512k_and_4m() {
    for n in [512 << 10, 4 << 20] {
        for policy in [Policy::S3Fifo, Policy::Clock] {
            let b = bytes_per_page(policy, n);
            println!("{n} pages, {policy}: {b:.1} bytes per managed page");
            assert!(b <= TARGET, "{b:.1} bytes per page with {policy}");
        }
    }
}

#[test]
fn a_smaller_table_stays_within_the_target() {
    for policy in [Policy::S3Fifo, Policy::Clock] {
        let b = bytes_per_page(policy, 64 << 10);
        assert!(b <= TARGET, "{b:.1} bytes per page with {policy}");
    }
}
