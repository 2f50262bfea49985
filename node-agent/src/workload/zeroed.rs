//! Pages the agent mapped to the kernel's shared zero page around a scattered first touch and
//! has not counted against the budget (docs/node-agent.md, "Zero pages outside the budget").
//!
//! Such a page costs no memory until the program writes it, and a write is not seen: the kernel
//! gives the page its own frame without a fault reaching the agent. So these pages are kept out
//! of the page table and out of the budget, and looked at again by `PAGEMAP_SCAN`
//! ([`Proc::reconcile_zeroed`]): a page found with a frame of its own is counted from then on
//! (dirty, new to the policy), one found gone is forgotten, the others stay here. Until the next
//! look, the program can be over its budget by the pages it wrote meanwhile.

use std::collections::BTreeMap;

use crate::{
    pages::PAGE,
    procfs::{self, Mapped},
};

use super::{process::Proc, ZERO_AROUND};

/// Most pages a process keeps mapped to the zero page uncounted (64 MiB): bounds the looking
/// again, which walks the page tables between the first and the last of them.
pub(super) const MAX_ZEROED: usize = 16_384;

/// The evictor's idle wait after pages were mapped to the zero page or found written.
pub(super) const LOOK_SOON: std::time::Duration = std::time::Duration::from_millis(5);

/// Longest between two looks at a process's uncounted zero pages while its faults map more
/// (the evictor also looks at every round: [`LOOK_SOON`] after pages were mapped or found
/// written, backing off to its idle interval while nothing changes).
pub(super) const RECONCILE_EVERY: std::time::Duration = std::time::Duration::from_millis(2);

/// Uncounted zero-page mappings of one process: per aligned block of [`ZERO_AROUND`] pages, a
/// bit per page.
#[derive(Default, Clone)]
pub(super) struct Zeroed {
    blocks: BTreeMap<u64, u16>,
    pages: usize,
}

impl Zeroed {
    /// Pages held.
    pub(super) fn len(&self) -> usize {
        self.pages
    }

    /// Whether it holds no page.
    pub(super) fn is_empty(&self) -> bool {
        self.pages == 0
    }

    /// Whether `page` is held.
    pub(super) fn contains(&self, page: u64) -> bool {
        let block = page & !(ZERO_AROUND * PAGE - 1);
        self.blocks
            .get(&block)
            .is_some_and(|bits| bits & (1 << ((page - block) / PAGE)) != 0)
    }

    /// Adds the `n` pages from `start`, all inside one aligned block.
    pub(super) fn add(&mut self, start: u64, n: u64) {
        let block = start & !(ZERO_AROUND * PAGE - 1);
        let first = (start - block) / PAGE;
        debug_assert!(first + n <= ZERO_AROUND, "a run crossing its block");
        let bits = self.blocks.entry(block).or_default();
        for i in first..first + n {
            if *bits & (1 << i) == 0 {
                *bits |= 1 << i;
                self.pages += 1;
            }
        }
    }

    /// Forgets the pages of `[start, end)`.
    pub(super) fn remove_range(&mut self, start: u64, end: u64) {
        let _ = self.take_range(start, end);
    }

    /// Removes and returns the pages of `[start, end)`.
    fn take_range(&mut self, start: u64, end: u64) -> Vec<u64> {
        let from = start & !(ZERO_AROUND * PAGE - 1);
        let keys: Vec<u64> = self.blocks.range(from..end).map(|(&b, _)| b).collect();
        let mut out = Vec::new();
        for b in keys {
            let bits = self.blocks.get_mut(&b).expect("a key just listed");
            for i in 0..ZERO_AROUND {
                let page = b + i * PAGE;
                if *bits & (1 << i) != 0 && page >= start && page < end {
                    *bits &= !(1 << i);
                    self.pages -= 1;
                    out.push(page);
                }
            }
            if *bits == 0 {
                self.blocks.remove(&b);
            }
        }
        out
    }

    /// The program moved `[from, from + len)` to `to` (mremap): its pages went with it.
    pub(super) fn remapped(&mut self, from: u64, to: u64, len: u64) {
        for page in self.take_range(from, from + len) {
            self.add(page - from + to, 1);
        }
    }

    /// Every page held, ascending.
    pub(super) fn pages(&self) -> Vec<u64> {
        let mut out = Vec::with_capacity(self.pages);
        for (&b, &bits) in &self.blocks {
            out.extend(
                (0..ZERO_AROUND)
                    .filter(|i| bits & (1 << i) != 0)
                    .map(|i| b + i * PAGE),
            );
        }
        out
    }

    /// Empties it.
    pub(super) fn clear(&mut self) {
        self.blocks.clear();
        self.pages = 0;
    }
}

impl Proc {
    /// Looks again at the pages mapped to the zero page uncounted: those the program wrote since
    /// (a frame of their own) are counted from now on as dirty, new pages; those gone (dropped,
    /// unmapped) are forgotten; the others stay uncounted. Says how many it counted.
    ///
    /// Pages the table knows meanwhile (a fault installed one after a drop) are the table's; they
    /// leave once written or gone. The scan walks one registered range at a time, from its first
    /// such page to its last.
    pub(super) fn reconcile_zeroed(&self) -> usize {
        if self.zeroed.borrow().is_empty() {
            return 0;
        }
        self.zeroed_checked.set(Some(std::time::Instant::now()));
        let pid = self.pid.get();
        let span = ZERO_AROUND * PAGE;
        // One scan per registered range holding such pages, from its first block to its last.
        let mut scans: Vec<(u64, u64, Option<Vec<(u64, u64, bool)>>)> = Vec::new();
        {
            let z = self.zeroed.borrow();
            for (&rs, &re) in self.registered.borrow().iter() {
                let from = rs & !(span - 1);
                let mut inside = z.blocks.range(from..re);
                let (Some((&first, _)), last) = (inside.next(), inside.next_back()) else {
                    continue;
                };
                let last = last.map_or(first, |(&b, _)| b);
                let (a, b) = (first.max(rs), (last + span).min(re));
                scans.push((rs, re, procfs::present_runs(pid, a, b).ok()));
            }
        }
        let mut written = Vec::new();
        {
            let mut z = self.zeroed.borrow_mut();
            let mut k = 0;
            let mut at = 0;
            for (&b, bits) in z.blocks.iter_mut() {
                let mut keep = 0u16;
                for i in 0..ZERO_AROUND {
                    if *bits & (1 << i) == 0 {
                        continue;
                    }
                    let page = b + i * PAGE;
                    while k < scans.len() && scans[k].1 <= page {
                        k += 1;
                        at = 0;
                    }
                    let Some((rs, _, runs)) = scans.get(k) else {
                        break; // past every registered range: unmapped, forgotten
                    };
                    if page < *rs {
                        continue; // outside every registered range: forgotten
                    }
                    let Some(runs) = runs else {
                        keep |= 1 << i; // could not look (the process is going): as it was
                        continue;
                    };
                    match procfs::mapped_at(runs, &mut at, page) {
                        Mapped::ZeroPage => keep |= 1 << i,
                        Mapped::Own => written.push(page),
                        Mapped::Other => {}
                    }
                }
                *bits = keep;
            }
            z.blocks.retain(|_, bits| *bits != 0);
            z.pages = z.blocks.values().map(|b| b.count_ones() as usize).sum();
        }
        let mut counted = 0;
        {
            let mut t = self.table.borrow_mut();
            for &p in &written {
                // A page the table knows (a fault installed it after a drop) is its own.
                if t.state(p).is_some() {
                    continue;
                }
                let garbage = t.zero_filled(p);
                debug_assert!(
                    garbage.is_none(),
                    "an uncounted zero page had a remote copy"
                );
                if self.locked.arrived(p) {
                    self.g.note_locked();
                }
                counted += 1;
            }
        }
        if counted > 0 {
            self.g.stats.borrow_mut().zero_pages_written(counted as u64);
            self.g.after_resident_change();
        }
        counted
    }

    /// Counts every uncounted zero-page mapping now, written or not, as the agent did before
    /// (before a fork: the child's copy of the table then knows them too).
    pub(super) fn count_all_zeroed(&self) {
        self.reconcile_zeroed();
        let pages = self.zeroed.borrow().pages();
        self.zeroed.borrow_mut().clear();
        let mut t = self.table.borrow_mut();
        for p in pages {
            if t.state(p).is_none() {
                t.zero_filled(p);
                if self.locked.arrived(p) {
                    self.g.note_locked();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_added_removed_and_moved_with_a_remap() {
        let b = 0x10_0000u64;
        let mut z = Zeroed::default();
        z.add(b + PAGE, 3);
        z.add(b + 2 * PAGE, 2); // overlaps: counted once
        z.add(b + 16 * PAGE, 1);
        assert_eq!(z.len(), 5);
        assert_eq!(
            z.pages(),
            [
                b + PAGE,
                b + 2 * PAGE,
                b + 3 * PAGE,
                b + 4 * PAGE,
                b + 16 * PAGE
            ]
        );
        z.remove_range(b + 2 * PAGE, b + 4 * PAGE);
        assert_eq!(z.pages(), [b + PAGE, b + 4 * PAGE, b + 16 * PAGE]);
        let to = 0x40_0000u64;
        z.remapped(b, to, 8 * PAGE);
        assert_eq!(z.pages(), [b + 16 * PAGE, to + PAGE, to + 4 * PAGE]);
        assert_eq!(z.len(), 3);
        z.clear();
        assert!(z.is_empty());
    }
}
