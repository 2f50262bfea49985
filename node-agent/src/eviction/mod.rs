//! Choice of victim pages when a workload is over its local-memory budget.
//!
//! No accessed bits are readable on this platform, so a policy learns only from what the agent
//! sees: a page becoming resident (a fault), a page faulted back while it was parked for its
//! eviction (a rescue: it was in use), a page fetched back soon after its eviction (a refault:
//! evicting it was a mistake), and a page leaving. Policies sit behind [`EvictionPolicy`] and
//! share one test suite; [`Policy`] names them for the command line.
//!
//! The page table names pages to a policy by page number (address / `PAGE`), so that a policy
//! can keep its per-page state in dense chunks ([`crate::pages::PageMap`]): about 1.5 bytes per
//! page plus 8 per queue entry (docs/page-table.md).

mod clock;
mod parking;
mod s3fifo;
mod sizer;

use std::{fmt, str::FromStr};

pub use clock::Clock;
pub use parking::Parking;
pub use s3fifo::S3Fifo;
pub use sizer::{GraceSizer, Reading, Sample};

/// The policies the agent can run, by name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// [`Clock`]: second chance over the resident set.
    Clock,
    /// [`S3Fifo`]: a small probation queue, and a main queue for pages that proved themselves
    /// (the default: see docs/eviction.md for the measurements that chose it).
    #[default]
    S3Fifo,
}

impl Policy {
    /// A new, empty policy of this kind.
    pub fn build(self) -> Box<dyn EvictionPolicy> {
        match self {
            Policy::Clock => Box::new(Clock::default()),
            Policy::S3Fifo => Box::new(S3Fifo::default()),
        }
    }
}

impl FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "clock" => Ok(Policy::Clock),
            "s3fifo" => Ok(Policy::S3Fifo),
            _ => Err(format!("unknown eviction policy {s:?} (clock, s3fifo)")),
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Policy::Clock => "clock",
            Policy::S3Fifo => "s3fifo",
        })
    }
}

/// A policy that tracks resident pages and picks victims among them.
pub trait EvictionPolicy {
    /// A page became resident.
    fn inserted(&mut self, page: u64);
    /// A resident page was used (for example written).
    fn touched(&mut self, page: u64);
    /// A page evicted a short while ago was fetched back: evicting it was a mistake.
    fn refaulted(&mut self, page: u64) {
        self.inserted(page);
        self.touched(page);
    }
    /// A picked page was faulted back while parked for its eviction: it is in use.
    fn rescued(&mut self, page: u64) {
        self.inserted(page);
        self.touched(page);
    }
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

impl EvictionPolicy for Box<dyn EvictionPolicy> {
    fn inserted(&mut self, page: u64) {
        (**self).inserted(page)
    }
    fn touched(&mut self, page: u64) {
        (**self).touched(page)
    }
    fn refaulted(&mut self, page: u64) {
        (**self).refaulted(page)
    }
    fn rescued(&mut self, page: u64) {
        (**self).rescued(page)
    }
    fn removed(&mut self, page: u64) {
        (**self).removed(page)
    }
    fn pick(&mut self, n: usize, eligible: &mut dyn FnMut(u64) -> bool) -> Vec<u64> {
        (**self).pick(n, eligible)
    }
    fn len(&self) -> usize {
        (**self).len()
    }
}

#[cfg(test)]
pub(crate) mod suite {
    //! Tests every policy must pass.
    use std::collections::HashSet;

    use super::EvictionPolicy;

    /// Runs every test of the suite, each on a fresh policy from `make`.
    pub fn run_all(make: impl Fn() -> Box<dyn EvictionPolicy>) {
        picks_only_tracked_pages(&mut *make());
        respects_eligibility_and_count(&mut *make());
        prefers_pages_not_recently_touched(&mut *make());
        reinsertion_is_tracked_once(&mut *make());
        pages_that_came_back_outlive_one_time_pages(&mut *make());
        came_back_pages_are_tracked_once(&mut *make());
        ineligible_new_pages_do_not_hide_eligible_old_ones(&mut *make());
    }

    /// New pages that cannot be taken now (in flight, or shared with a forked relative) do not
    /// keep the policy from finding the pages that can, wherever it keeps them.
    pub fn ineligible_new_pages_do_not_hide_eligible_old_ones(p: &mut dyn EvictionPolicy) {
        for page in 100..110 {
            p.rescued(page);
        }
        for page in 1000..2000 {
            p.inserted(page);
        }
        let mut picked = p.pick(5, &mut |page| (100..110).contains(&page));
        picked.sort();
        assert_eq!(picked.len(), 5, "picked {picked:?}");
    }

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

    /// A page that came back (rescued from parking, or refaulted after its eviction) outlives a
    /// page seen once and never again, when both are candidates.
    pub fn pages_that_came_back_outlive_one_time_pages(p: &mut dyn EvictionPolicy) {
        for page in 0..32 {
            p.inserted(page);
        }
        let first = p.pick(8, &mut |_| true);
        assert_eq!(first.len(), 8);
        for &page in &first {
            p.rescued(page);
        }
        // A scan of new pages passes by.
        for page in 100..164 {
            p.inserted(page);
        }
        let picked: HashSet<u64> = p.pick(40, &mut |_| true).into_iter().collect();
        for page in &first {
            assert!(
                !picked.contains(page),
                "rescued page {page} evicted before scan pages"
            );
        }
        assert_eq!(p.len(), 32 + 64 - 40);
    }

    /// Rescued and refaulted pages are tracked once, whatever came before.
    pub fn came_back_pages_are_tracked_once(p: &mut dyn EvictionPolicy) {
        p.inserted(1);
        p.rescued(1);
        p.refaulted(1);
        p.refaulted(2);
        p.rescued(2);
        assert_eq!(p.len(), 2);
        let mut all = p.pick(10, &mut |_| true);
        all.sort();
        assert_eq!(all, vec![1, 2]);
        assert!(p.is_empty());
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
