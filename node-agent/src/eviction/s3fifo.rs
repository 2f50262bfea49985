//! S3-FIFO (Yang et al., SOSP 2023), adapted to a pager without accessed bits: new pages enter a
//! small probation queue and are evicted from it first unless they were used meanwhile; pages that
//! proved themselves (used while on probation, faulted back while parked for eviction, or fetched
//! back soon after an eviction, which the page table reports as a refault) live in a main queue
//! that is swept CLOCK-like with a small use count.
//!
//! Here the only "use" the agent can see after a page arrived is a rescue, a refault, or a write
//! fault on the rare pages that are write-protected. So in practice: a scan of fresh pages passes
//! through probation and leaves first, and a page evicted by mistake comes back into main and is
//! protected there. The ghost list that S3-FIFO keeps lives in the page table (it is the refault
//! signal every policy gets), not here.

use std::collections::{HashMap, VecDeque};

use super::EvictionPolicy;

/// Share of tracked pages the probation queue may hold before it is drained first (percent).
const SMALL_PERCENT: usize = 10;
/// Highest use count of a page in the main queue.
const MAX_FREQ: u8 = 3;

/// Which queue an entry is in.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Queue {
    Small,
    Main,
}

/// S3-FIFO over the resident set.
#[derive(Default)]
pub struct S3Fifo {
    /// Probation queue of (page, generation); stale generations are skipped lazily.
    small: VecDeque<(u64, u32)>,
    /// Main queue of (page, generation).
    main: VecDeque<(u64, u32)>,
    /// Tracked pages: generation, queue, use count.
    live: HashMap<u64, (u32, Queue, u8)>,
    /// Live entries per queue.
    small_len: usize,
    next_gen: u32,
}

impl S3Fifo {
    fn track(&mut self, page: u64, queue: Queue, freq: u8) {
        if let Some(e) = self.live.get_mut(&page) {
            e.2 = e.2.max(freq);
            if e.1 == Queue::Small && queue == Queue::Main {
                // Promote: a fresh generation in main; the old small entry goes stale.
                self.small_len -= 1;
                self.next_gen = self.next_gen.wrapping_add(1);
                *e = (self.next_gen, Queue::Main, e.2);
                self.main.push_back((page, self.next_gen));
            }
            return;
        }
        self.next_gen = self.next_gen.wrapping_add(1);
        self.live.insert(page, (self.next_gen, queue, freq));
        match queue {
            Queue::Small => {
                self.small.push_back((page, self.next_gen));
                self.small_len += 1;
            }
            Queue::Main => self.main.push_back((page, self.next_gen)),
        }
    }

    fn compact(&mut self) {
        let live = &self.live;
        if self.small.len() > 2 * self.small_len + 1024 {
            self.small
                .retain(|(p, g)| live.get(p).is_some_and(|e| e.0 == *g));
        }
        let main_len = self.live.len() - self.small_len;
        if self.main.len() > 2 * main_len + 1024 {
            self.main
                .retain(|(p, g)| live.get(p).is_some_and(|e| e.0 == *g));
        }
    }

    /// One step of the probation queue: the head leaves (returned as a victim when eligible and
    /// unused), moves to main (used), or goes to the back (ineligible).
    fn step_small(&mut self, eligible: &mut dyn FnMut(u64) -> bool) -> Option<u64> {
        let (page, gen) = self.small.pop_front()?;
        let &(g, q, freq) = self.live.get(&page)?;
        if g != gen || q != Queue::Small {
            return None;
        }
        if freq > 0 {
            self.track(page, Queue::Main, 0);
            None
        } else if eligible(page) {
            self.live.remove(&page);
            self.small_len -= 1;
            Some(page)
        } else {
            self.small.push_back((page, gen));
            None
        }
    }

    /// One step of the main queue, CLOCK-like.
    fn step_main(&mut self, eligible: &mut dyn FnMut(u64) -> bool) -> Option<u64> {
        let (page, gen) = self.main.pop_front()?;
        let e = self.live.get_mut(&page)?;
        if e.0 != gen || e.1 != Queue::Main {
            return None;
        }
        if e.2 > 0 {
            e.2 -= 1;
            self.main.push_back((page, gen));
            None
        } else if eligible(page) {
            self.live.remove(&page);
            Some(page)
        } else {
            self.main.push_back((page, gen));
            None
        }
    }
}

impl EvictionPolicy for S3Fifo {
    fn inserted(&mut self, page: u64) {
        self.track(page, Queue::Small, 0);
    }

    fn touched(&mut self, page: u64) {
        if let Some(e) = self.live.get_mut(&page) {
            e.2 = (e.2 + 1).min(MAX_FREQ);
        }
    }

    fn refaulted(&mut self, page: u64) {
        self.track(page, Queue::Main, 1);
    }

    fn rescued(&mut self, page: u64) {
        self.track(page, Queue::Main, MAX_FREQ);
    }

    fn removed(&mut self, page: u64) {
        if let Some((_, q, _)) = self.live.remove(&page) {
            if q == Queue::Small {
                self.small_len -= 1;
            }
        }
        self.compact();
    }

    fn pick(&mut self, n: usize, eligible: &mut dyn FnMut(u64) -> bool) -> Vec<u64> {
        let mut out = Vec::new();
        // Every entry is visited at most MAX_FREQ + 2 times (a promotion, the count down, the
        // pick); ineligible ones are passed, so bound the steps.
        let mut steps = (MAX_FREQ as usize + 2) * (self.small.len() + self.main.len()) + 1;
        // Steps on the probation queue since it last gave a victim: once it has been round
        // without one (every page there in flight, or shared with a forked relative), the main
        // queue is next, however full probation is. Without this, ineligible pages on probation
        // hid every candidate in main, and the evictor found nothing, again and again.
        let mut small_fruitless = 0;
        while out.len() < n && steps > 0 && !self.live.is_empty() {
            steps -= 1;
            let small_target = self.live.len() * SMALL_PERCENT / 100;
            let from_small = !self.small.is_empty()
                && small_fruitless <= self.small.len()
                && (self.small_len > small_target || self.main.is_empty());
            let victim = if from_small {
                let v = self.step_small(eligible);
                small_fruitless = if v.is_some() { 0 } else { small_fruitless + 1 };
                v
            } else {
                self.step_main(eligible)
            };
            out.extend(victim);
        }
        if n == 0 {
            // A pick of nothing ages every main entry once (the hand goes around).
            for _ in 0..self.main.len() {
                if let Some((page, gen)) = self.main.pop_front() {
                    if let Some(e) = self.live.get_mut(&page) {
                        if e.0 == gen && e.1 == Queue::Main {
                            e.2 = e.2.saturating_sub(1);
                            self.main.push_back((page, gen));
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
        suite::run_all(|| Box::new(S3Fifo::default()));
    }

    #[test]
    fn a_refaulted_page_survives_a_scan_that_evicts_everything_else_it_can() {
        let mut p = S3Fifo::default();
        p.refaulted(7);
        for page in 100..200 {
            p.inserted(page);
        }
        let picked = p.pick(100, &mut |_| true);
        assert_eq!(picked.len(), 100);
        assert!(!picked.contains(&7));
        assert_eq!(p.pick(1, &mut |_| true), vec![7]);
    }
}
