//! Choice of victim pages when a workload is over its local-memory budget.
//!
//! No accessed bits are readable on this platform, so a policy learns only from what the agent
//! sees: a page becoming resident (a fault), a write to a clean page (a write-protect fault), and
//! a page leaving. Policies sit behind [`EvictionPolicy`] and share one test suite.

mod clock;

pub use clock::Clock;

/// A policy that tracks resident pages and picks victims among them.
pub trait EvictionPolicy {
    /// A page became resident.
    fn inserted(&mut self, page: u64);
    /// A resident page was used (for example written).
    fn touched(&mut self, page: u64);
    /// A page is no longer resident or no longer a candidate.
    fn removed(&mut self, page: u64);
    /// Picks up to `n` victims among tracked pages for which `eligible` holds; picked pages stop
    /// being tracked (the caller re-inserts the ones it does not evict).
    fn pick(&mut self, n: usize, eligible: &mut dyn FnMut(u64) -> bool) -> Vec<u64>;
    /// Number of tracked pages.
    fn len(&self) -> usize;
    /// Whether no page is tracked.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
pub(crate) mod suite {
    //! Tests every policy must pass.
    use std::collections::HashSet;

    use super::EvictionPolicy;

    pub fn picks_only_tracked_pages(p: &mut dyn EvictionPolicy) {
        for page in 0..100 {
            p.inserted(page * 4096);
        }
        for page in 0..50 {
            p.removed(page * 4096);
        }
        let picked = p.pick(1000, &mut |_| true);
        let set: HashSet<u64> = picked.iter().copied().collect();
        assert_eq!(set.len(), picked.len(), "no page picked twice");
        assert_eq!(
            set,
            (50..100).map(|p| p * 4096).collect(),
            "every remaining page, nothing else"
        );
        assert!(p.is_empty());
    }

    pub fn respects_eligibility_and_count(p: &mut dyn EvictionPolicy) {
        for page in 0..64 {
            p.inserted(page);
        }
        let picked = p.pick(10, &mut |page| page % 2 == 0);
        assert_eq!(picked.len(), 10);
        assert!(picked.iter().all(|p| p % 2 == 0));
        assert_eq!(p.len(), 54, "ineligible pages stay tracked");
    }

    pub fn prefers_pages_not_recently_touched(p: &mut dyn EvictionPolicy) {
        for page in 0..8 {
            p.inserted(page);
        }
        // Scan once so that every page has had its chance, then touch half of them.
        let first = p.pick(0, &mut |_| true);
        assert!(first.is_empty());
        for page in [0, 1, 2, 3] {
            p.touched(page);
        }
        let picked = p.pick(4, &mut |_| true);
        let mut picked_sorted = picked.clone();
        picked_sorted.sort();
        assert_eq!(
            picked_sorted,
            vec![4, 5, 6, 7],
            "touched pages get a second chance"
        );
    }

    pub fn reinsertion_is_tracked_once(p: &mut dyn EvictionPolicy) {
        p.inserted(1);
        p.inserted(1);
        p.removed(1);
        p.inserted(1);
        assert_eq!(p.len(), 1);
        assert_eq!(p.pick(5, &mut |_| true), vec![1]);
    }
}
