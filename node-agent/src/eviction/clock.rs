//! CLOCK (second chance, with counts): a ring of resident pages, each with a small use count set
//! on use; the hand evicts the first page whose count is zero, decrementing counts as it passes.
//! A new page starts at 1 (one more pass), a page that came back after being picked (rescued from
//! parking, or refaulted) at [`MAX_COUNT`], so it outlives pages seen once.

use std::collections::VecDeque;

use super::EvictionPolicy;
use crate::pages::PageMap;

/// Highest use count: passes of the hand a page survives untouched.
const MAX_COUNT: u8 = 3;
/// Meta bit: the page is tracked.
const LIVE: u8 = 1;
/// Meta bits: its use count.
const COUNT_SHIFT: u8 = 1;
const COUNT: u8 = 0b11 << COUNT_SHIFT;
/// Meta bit: the ring holds an entry for the page (current, or stale once it is untracked).
const IN_RING: u8 = 1 << 3;

/// Second-chance CLOCK over the resident set.
#[derive(Default)]
pub struct Clock {
    /// Ring of pages, at most one entry each; the entry of a page no longer tracked is dropped
    /// when the hand reaches it (which keeps removal O(1)), or taken again if the page comes
    /// back first.
    ring: VecDeque<u64>,
    /// Per page: [`LIVE`], the count, [`IN_RING`].
    meta: PageMap<u8>,
    live: usize,
}

fn count(m: u8) -> u8 {
    (m & COUNT) >> COUNT_SHIFT
}

fn with_count(m: u8, c: u8) -> u8 {
    (m & !COUNT) | (c << COUNT_SHIFT)
}

impl Clock {
    fn compact(&mut self) {
        if self.ring.len() > 2 * self.live + 1024 {
            let meta = &mut self.meta;
            self.ring.retain(|&p| {
                let m = meta.get(p);
                let keep = m & LIVE != 0;
                if !keep {
                    meta.set(p, m & !IN_RING);
                }
                keep
            });
        }
    }

    /// Tracks `page` (once) with at least `count`.
    fn track(&mut self, page: u64, c: u8) {
        let m = self.meta.get(page);
        if m & LIVE != 0 {
            self.meta.set(page, with_count(m, count(m).max(c)));
            return;
        }
        self.live += 1;
        if m & IN_RING == 0 {
            self.ring.push_back(page);
        }
        self.meta.set(page, with_count(LIVE | IN_RING, c));
    }
}

impl EvictionPolicy for Clock {
    fn inserted(&mut self, page: u64) {
        // New pages start referenced: they were just used by the fault that brought them in.
        self.track(page, 1);
    }

    fn touched(&mut self, page: u64) {
        let m = self.meta.get(page);
        if m & LIVE != 0 {
            self.meta
                .set(page, with_count(m, (count(m) + 1).min(MAX_COUNT)));
        }
    }

    fn refaulted(&mut self, page: u64) {
        self.track(page, MAX_COUNT);
    }

    fn rescued(&mut self, page: u64) {
        self.track(page, MAX_COUNT);
    }

    fn removed(&mut self, page: u64) {
        let m = self.meta.get(page);
        if m & LIVE != 0 {
            self.live -= 1;
            self.meta.set(page, m & IN_RING);
        }
        self.compact();
    }

    fn pick(&mut self, n: usize, eligible: &mut dyn FnMut(u64) -> bool) -> Vec<u64> {
        let mut out = Vec::new();
        // Enough sweeps to bring every count to zero and then find victims; ineligible pages
        // are passed.
        let mut budget = (MAX_COUNT as usize + 1) * self.ring.len() + 1;
        while out.len() < n && budget > 0 {
            budget -= 1;
            let Some(page) = self.ring.pop_front() else {
                break;
            };
            let m = self.meta.get(page);
            if m & LIVE == 0 {
                self.meta.set(page, 0);
                continue;
            }
            if count(m) > 0 {
                self.meta.set(page, with_count(m, count(m) - 1));
                self.ring.push_back(page);
            } else if eligible(page) {
                self.meta.set(page, 0);
                self.live -= 1;
                out.push(page);
            } else {
                self.ring.push_back(page);
            }
        }
        if n == 0 {
            // A pick of nothing still moves the hand once around: every bit gets cleared.
            for _ in 0..self.ring.len() {
                if let Some(page) = self.ring.pop_front() {
                    let m = self.meta.get(page);
                    if m & LIVE != 0 {
                        self.meta
                            .set(page, with_count(m, count(m).saturating_sub(1)));
                        self.ring.push_back(page);
                    } else {
                        self.meta.set(page, 0);
                    }
                }
            }
        }
        out
    }

    fn len(&self) -> usize {
        self.live
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
