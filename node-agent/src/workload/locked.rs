//! Memory the program locked (`mlock`, `mlockall`, `MAP_LOCKED`): it must stay in memory, so the
//! evictor never picks it. The kernel refuses to move a locked page to the unlocked parking area
//! and to drop it, so an eviction of one wrote it to the servers for nothing and put it back,
//! again and again, while faults waited for room that never came (session 20: a program that
//! locked 32 MiB under a 16 MiB budget hung).
//!
//! Locked managed memory comes on top of the budget: the budget bounds what Yonder can evict.
//! Counting it in would leave the rest of the program no room at all once it locked as much as
//! its budget (each new page evicted at once, a batch per page), and the kernel's own answer, a
//! memory cgroup's OOM killer, is not one Yonder gives. The user is told how much was locked.
//!
//! The scanner reads `VmLck` of /proc/PID/status (cheap) on each round and the locked ranges
//! from smaps (a page-table walk) only when that amount changed. `mlockall(MCL_CURRENT)` locks
//! the shim's parking area too; the shim unlocks it when the kernel refuses a move or a free
//! for that reason.

use std::{
    cell::{Cell, RefCell},
    collections::HashSet,
    time::{Duration, Instant},
};

use tracing::debug;

use super::{process::Proc, Group};
use crate::{pages::PAGE, procfs};

/// What is known of a process's locked memory.
#[derive(Default)]
pub(super) struct Locked {
    /// `VmLck` at the last look, bytes.
    bytes: Cell<u64>,
    /// Locked ranges `(start, end)`, sorted, as smaps listed them then.
    ranges: RefCell<Vec<(u64, u64)>>,
    /// Resident pages of the process in those ranges, at the last count.
    pages: Cell<usize>,
    /// When they were last counted.
    counted: Cell<Option<Instant>>,
    /// The most locked memory seen so far, bytes (0: the user was not told yet).
    reported: Cell<u64>,
}

impl Locked {
    /// Whether `page` lies in a locked range.
    pub(super) fn contains(&self, page: u64) -> bool {
        let ranges = self.ranges.borrow();
        let i = ranges.partition_point(|&(_, end)| end <= page);
        ranges.get(i).is_some_and(|&(start, _)| start <= page)
    }

    /// Resident pages in locked ranges, as last counted (at most [`RECOUNT`] ago, or when the
    /// locked amount changed).
    pub(super) fn pages(&self) -> usize {
        self.pages.get()
    }

    /// Whether no range is locked.
    pub(super) fn is_empty(&self) -> bool {
        self.ranges.borrow().is_empty()
    }

    /// `page` was just installed: if it is in a locked range, it counts as locked from now on
    /// (the recount would see it only up to [`RECOUNT`] later, and meanwhile it weighed on the
    /// budget, which the evictor cannot relieve from locked pages).
    pub(super) fn arrived(&self, page: u64) -> bool {
        let locked = !self.is_empty() && self.contains(page);
        if locked {
            self.pages.set(self.pages.get() + 1);
        }
        locked
    }
}

/// How often the resident pages of locked ranges are counted again (pages faulted into a
/// locked range count in the budget until then; they are never evicted all the same).
const RECOUNT: Duration = Duration::from_millis(250);

/// How long a page found pinned is left out of the evictor's choices before it is tried again.
const PINNED_HOLD: Duration = Duration::from_millis(250);

/// Pages found pinned (`UFFDIO_MOVE` refused one mapped once: the kernel holds it for I/O, as
/// O_DIRECT and io_uring do). Such a page must not be evicted by write protection either: the
/// I/O would write into a page the program no longer maps, and the program would read the old
/// content back from the servers (session 20: O_DIRECT reads into evicted buffers came back as
/// what the buffer held before). They are left out of the evictor's choices for
/// [`PINNED_HOLD`], then tried again: a pin for one I/O is short, and nothing says when a long
/// one (io_uring's registered buffers) ends.
#[derive(Default)]
pub(super) struct Pinned {
    pages: RefCell<HashSet<u64>>,
    since: Cell<Option<Instant>>,
}

impl Pinned {
    /// Holds `pages` back from eviction.
    pub(super) fn hold(&self, pages: &[u64]) {
        self.expire();
        self.pages.borrow_mut().extend(pages);
        // From the latest refusal: a page added late gets its whole hold (the others a little
        // more).
        self.since.set(Some(Instant::now()));
    }

    /// Whether `page` is held back.
    pub(super) fn contains(&self, page: u64) -> bool {
        self.expire();
        self.pages.borrow().contains(&page)
    }

    /// Whether no page is held back (a held page may have expired already: cheap, no clock).
    pub(super) fn is_empty(&self) -> bool {
        self.pages.borrow().is_empty()
    }

    /// Pages held back now.
    pub(super) fn len(&self) -> usize {
        self.expire();
        self.pages.borrow().len()
    }

    /// Lets every held page be tried again once [`PINNED_HOLD`] has passed.
    fn expire(&self) {
        if self.since.get().is_some_and(|t| t.elapsed() >= PINNED_HOLD) {
            self.pages.borrow_mut().clear();
            self.since.set(None);
        }
    }
}

impl Proc {
    /// Whether `page` may be picked for eviction as far as the program's own hold on it goes:
    /// not locked, and not found pinned a moment ago.
    pub(super) fn may_evict(&self, page: u64) -> bool {
        (self.locked.is_empty() || !self.locked.contains(page))
            && (self.pinned.is_empty() || !self.pinned.contains(page))
    }

    /// Resident pages the program holds in memory (locked, or pinned a moment ago): none of them
    /// can be evicted now.
    pub(super) fn held_back(&self) -> usize {
        self.locked.pages() + self.pinned.len()
    }

    /// Re-reads the locked ranges if `VmLck` (from `probe`) changed since the last look, and
    /// counts their managed pages again (ranges registered since count too).
    pub(super) fn refresh_locked(&self, probe: &procfs::LockProbe) {
        let Ok(bytes) = probe.read() else {
            return;
        };
        let l = &self.locked;
        if bytes != l.bytes.get() {
            let ranges = if bytes == 0 {
                Vec::new()
            } else {
                match procfs::locked_ranges(self.pid.get()) {
                    Ok(r) => r,
                    Err(e) => {
                        debug!("cannot read the locked ranges: {e}");
                        return;
                    }
                }
            };
            debug!(
                pid = self.pid.get(),
                bytes,
                ranges = ranges.len(),
                "locked memory"
            );
            l.bytes.set(bytes);
            *l.ranges.borrow_mut() = ranges;
        } else if l.ranges.borrow().is_empty()
            || l.counted.get().is_some_and(|t| t.elapsed() < RECOUNT)
        {
            return;
        }
        // Resident pages, not the ranges' size: a range locked on fault (`MCL_ONFAULT`, which
        // the shim adds to `mlockall`) is mostly not in memory, and counting it whole would
        // hide as much of the program's other memory from the budget.
        let pages = {
            let t = self.table.borrow();
            l.ranges
                .borrow()
                .iter()
                .map(|&(s, e)| t.resident_in(s, e))
                .sum()
        };
        l.counted.set(Some(Instant::now()));
        let changed = pages != l.pages.get();
        l.pages.set(pages);
        let managed = pages as u64 * PAGE;
        // Said once per process (the summary gives the peak).
        if managed > 0 && l.reported.replace(managed.max(l.reported.get())) == 0 {
            eprintln!(
                "yonder: process {} has {:.1} MiB of managed memory locked (mlock): locked pages are never evicted, and come on top of the budget",
                self.pid.get(),
                managed as f64 / (1 << 20) as f64,
            );
        }
        self.g.note_locked();
        if changed {
            // Locked pages leave the count of what can be evicted: let waiting faults see it.
            self.g.after_resident_change();
        }
    }
}

impl Group {
    /// Records how much managed memory the workload's processes have locked now (for the
    /// summary's peak and the metric).
    pub(super) fn note_locked(&self) {
        let total: usize = self.procs.borrow().iter().map(|p| p.locked.pages()).sum();
        self.stats.borrow_mut().locked(total);
    }
}
