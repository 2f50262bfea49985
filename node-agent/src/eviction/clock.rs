//! CLOCK (second chance): a ring of resident pages with a reference bit set on use; the hand
//! evicts the first page whose bit is clear, clearing bits as it passes.

use std::collections::{HashMap, VecDeque};

use super::EvictionPolicy;

/// Second-chance CLOCK over the resident set.
#[derive(Default)]
pub struct Clock {
    /// Ring of (page, generation); entries whose generation is stale are skipped lazily, which
    /// keeps removal O(1).
    ring: VecDeque<(u64, u32)>,
    /// Tracked pages: current generation and reference bit.
    live: HashMap<u64, (u32, bool)>,
    next_gen: u32,
}

impl Clock {
    fn compact(&mut self) {
        if self.ring.len() > 2 * self.live.len() + 1024 {
            let live = &self.live;
            self.ring
                .retain(|(p, g)| live.get(p).is_some_and(|(lg, _)| lg == g));
        }
    }
}

impl EvictionPolicy for Clock {
    fn inserted(&mut self, page: u64) {
        if self.live.contains_key(&page) {
            return;
        }
        self.next_gen = self.next_gen.wrapping_add(1);
        // New pages start referenced: they were just used by the fault that brought them in.
        self.live.insert(page, (self.next_gen, true));
        self.ring.push_back((page, self.next_gen));
    }

    fn touched(&mut self, page: u64) {
        if let Some((_, r)) = self.live.get_mut(&page) {
            *r = true;
        }
    }

    fn removed(&mut self, page: u64) {
        self.live.remove(&page);
        self.compact();
    }

    fn pick(&mut self, n: usize, eligible: &mut dyn FnMut(u64) -> bool) -> Vec<u64> {
        let mut out = Vec::new();
        // Two sweeps clear every bit once and then find victims; ineligible pages are passed.
        let mut budget = 2 * self.ring.len();
        while out.len() < n && budget > 0 {
            budget -= 1;
            let Some((page, gen)) = self.ring.pop_front() else {
                break;
            };
            let Some(entry) = self.live.get_mut(&page) else {
                continue;
            };
            if entry.0 != gen {
                continue;
            }
            if entry.1 {
                entry.1 = false;
                self.ring.push_back((page, gen));
            } else if eligible(page) {
                self.live.remove(&page);
                out.push(page);
            } else {
                self.ring.push_back((page, gen));
            }
        }
        if n == 0 {
            // A pick of nothing still moves the hand once around: every bit gets cleared.
            for _ in 0..self.ring.len() {
                if let Some((page, gen)) = self.ring.pop_front() {
                    if let Some(entry) = self.live.get_mut(&page) {
                        if entry.0 == gen {
                            entry.1 = false;
                            self.ring.push_back((page, gen));
                        }
                    }
                }
            }
        }
        out
    }

    fn len(&self) -> usize {
        self.live.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eviction::suite;

    #[test]
    fn shared_suite() {
        suite::picks_only_tracked_pages(&mut Clock::default());
        suite::respects_eligibility_and_count(&mut Clock::default());
        suite::prefers_pages_not_recently_touched(&mut Clock::default());
        suite::reinsertion_is_tracked_once(&mut Clock::default());
    }
}
