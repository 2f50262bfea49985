//! CLOCK (second chance, with counts): a ring of resident pages, each with a small use count set
//! on use; the hand evicts the first page whose count is zero, decrementing counts as it passes.
//! A new page starts at 1 (one more pass), a page that came back after being picked (rescued from
//! parking, or refaulted) at [`MAX_COUNT`], so it outlives pages seen once.

use std::collections::{HashMap, VecDeque};

use super::EvictionPolicy;

/// Highest use count: passes of the hand a page survives untouched.
const MAX_COUNT: u8 = 3;

/// Second-chance CLOCK over the resident set.
#[derive(Default)]
pub struct Clock {
    /// Ring of (page, generation); entries whose generation is stale are skipped lazily, which
    /// keeps removal O(1).
    ring: VecDeque<(u64, u32)>,
    /// Tracked pages: current generation and use count.
    live: HashMap<u64, (u32, u8)>,
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

    /// Tracks `page` (once) with at least `count`.
    fn track(&mut self, page: u64, count: u8) {
        if let Some((_, c)) = self.live.get_mut(&page) {
            *c = (*c).max(count);
            return;
        }
        self.next_gen = self.next_gen.wrapping_add(1);
        self.live.insert(page, (self.next_gen, count));
        self.ring.push_back((page, self.next_gen));
    }
}

impl EvictionPolicy for Clock {
    fn inserted(&mut self, page: u64) {
        // New pages start referenced: they were just used by the fault that brought them in.
        self.track(page, 1);
    }

    fn touched(&mut self, page: u64) {
        if let Some((_, c)) = self.live.get_mut(&page) {
            *c = (*c + 1).min(MAX_COUNT);
        }
    }

    fn refaulted(&mut self, page: u64) {
        self.track(page, MAX_COUNT);
    }

    fn rescued(&mut self, page: u64) {
        self.track(page, MAX_COUNT);
    }

    fn removed(&mut self, page: u64) {
        self.live.remove(&page);
        self.compact();
    }

    fn pick(&mut self, n: usize, eligible: &mut dyn FnMut(u64) -> bool) -> Vec<u64> {
        let mut out = Vec::new();
        // Enough sweeps to bring every count to zero and then find victims; ineligible pages
        // are passed.
        let mut budget = (MAX_COUNT as usize + 1) * self.ring.len() + 1;
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
            if entry.1 > 0 {
                entry.1 -= 1;
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
                            entry.1 = entry.1.saturating_sub(1);
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
        suite::run_all(|| Box::new(Clock::default()));
    }
}
