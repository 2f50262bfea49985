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

use std::collections::VecDeque;

use super::EvictionPolicy;
use crate::pages::PageMap;

/// Share of tracked pages the probation queue may hold before it is drained first (percent).
/// The paper's 10 % assumes hits are seen; here a page on probation can only prove itself by a
/// rescue or a refault, so a larger queue only delays evicting pages nobody vouched for: 2 %
/// took 3-13 % fewer remote faults on xz and Redis and no more elsewhere (docs/eviction.md,
/// "Session 18").
const SMALL_PERCENT: usize = 2;
/// Highest use count of a page in the main queue.
const MAX_FREQ: u8 = 3;

/// Meta bit: the page is tracked.
const LIVE: u8 = 1;
/// Meta bit: it is tracked in the main queue (else in probation).
const MAIN: u8 = 1 << 1;
/// Meta bits: its use count.
const FREQ_SHIFT: u8 = 2;
const FREQ: u8 = 0b11 << FREQ_SHIFT;
/// Meta bit: the probation queue holds an entry for the page (current, or stale).
const IN_SMALL: u8 = 1 << 4;
/// Meta bit: the main queue holds an entry for the page (current, or stale).
const IN_MAIN: u8 = 1 << 5;

/// Which queue an entry is in.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Queue {
    Small,
    Main,
}

fn freq(m: u8) -> u8 {
    (m & FREQ) >> FREQ_SHIFT
}

fn with_freq(m: u8, f: u8) -> u8 {
    (m & !FREQ) | (f << FREQ_SHIFT)
}

/// S3-FIFO over the resident set.
#[derive(Default)]
pub struct S3Fifo {
    /// Probation queue, at most one entry per page; an entry whose page left probation is
    /// dropped when it reaches the head, or taken again if the page comes back first.
    small: VecDeque<u64>,
    /// Main queue, likewise.
    main: VecDeque<u64>,
    /// Per page: [`LIVE`], [`MAIN`], the use count, [`IN_SMALL`], [`IN_MAIN`].
    meta: PageMap<u8>,
    /// Tracked pages.
    live: usize,
    /// Tracked pages on probation.
    small_len: usize,
}

impl S3Fifo {
    fn track(&mut self, page: u64, queue: Queue, f: u8) {
        let m = self.meta.get(page);
        if m & LIVE != 0 {
            let mut m = with_freq(m, freq(m).max(f));
            if m & MAIN == 0 && queue == Queue::Main {
                // Promote: to the back of main; its probation entry goes stale.
                self.small_len -= 1;
                m |= MAIN;
                if m & IN_MAIN == 0 {
                    self.main.push_back(page);
                    m |= IN_MAIN;
                }
            }
            self.meta.set(page, m);
            return;
        }
        self.live += 1;
        let mut m = with_freq(m | LIVE, f);
        match queue {
            Queue::Small => {
                self.small_len += 1;
                if m & IN_SMALL == 0 {
                    self.small.push_back(page);
                    m |= IN_SMALL;
                }
            }
            Queue::Main => {
                m |= MAIN;
                if m & IN_MAIN == 0 {
                    self.main.push_back(page);
                    m |= IN_MAIN;
                }
            }
        }
        self.meta.set(page, m);
    }

    fn compact(&mut self) {
        let meta = &mut self.meta;
        if self.small.len() > 2 * self.small_len + 1024 {
            self.small.retain(|&p| {
                let m = meta.get(p);
                let keep = m & (LIVE | MAIN) == LIVE;
                if !keep {
                    meta.set(p, m & !IN_SMALL);
                }
                keep
            });
        }
        let main_len = self.live - self.small_len;
        if self.main.len() > 2 * main_len + 1024 {
            self.main.retain(|&p| {
                let m = meta.get(p);
                let keep = m & (LIVE | MAIN) == LIVE | MAIN;
                if !keep {
                    meta.set(p, m & !IN_MAIN);
                }
                keep
            });
        }
    }

    /// Untracks `page`, whose meta is `m` (tracked), keeping the marks of its queue entries.
    fn untrack(&mut self, page: u64, m: u8) {
        self.live -= 1;
        if m & MAIN == 0 {
            self.small_len -= 1;
        }
        self.meta.set(page, m & (IN_SMALL | IN_MAIN));
    }

    /// One step of the probation queue: the head leaves (returned as a victim when eligible and
    /// unused), moves to main (used), or goes to the back (ineligible).
    fn step_small(&mut self, eligible: &mut dyn FnMut(u64) -> bool) -> Option<u64> {
        let page = self.small.pop_front()?;
        let m = self.meta.get(page) & !IN_SMALL;
        if m & (LIVE | MAIN) != LIVE {
            // Stale: the page left probation.
            self.meta.set(page, m);
            return None;
        }
        if freq(m) > 0 {
            self.meta.set(page, m);
            self.track(page, Queue::Main, 0);
            None
        } else if eligible(page) {
            self.untrack(page, m);
            Some(page)
        } else {
            self.small.push_back(page);
            self.meta.set(page, m | IN_SMALL);
            None
        }
    }

    /// One step of the main queue, CLOCK-like.
    fn step_main(&mut self, eligible: &mut dyn FnMut(u64) -> bool) -> Option<u64> {
        let page = self.main.pop_front()?;
        let m = self.meta.get(page) & !IN_MAIN;
        if m & (LIVE | MAIN) != LIVE | MAIN {
            self.meta.set(page, m);
            return None;
        }
        if freq(m) > 0 {
            self.main.push_back(page);
            self.meta.set(page, with_freq(m, freq(m) - 1) | IN_MAIN);
            None
        } else if eligible(page) {
            self.untrack(page, m);
            Some(page)
        } else {
            self.main.push_back(page);
            self.meta.set(page, m | IN_MAIN);
            None
        }
    }
}

impl EvictionPolicy for S3Fifo {
    fn inserted(&mut self, page: u64) {
        self.track(page, Queue::Small, 0);
    }

    fn touched(&mut self, page: u64) {
        let m = self.meta.get(page);
        if m & LIVE != 0 {
            self.meta
                .set(page, with_freq(m, (freq(m) + 1).min(MAX_FREQ)));
        }
    }

    fn refaulted(&mut self, page: u64) {
        self.track(page, Queue::Main, 1);
    }

    fn rescued(&mut self, page: u64) {
        self.track(page, Queue::Main, MAX_FREQ);
    }

    fn removed(&mut self, page: u64) {
        let m = self.meta.get(page);
        if m & LIVE != 0 {
            self.untrack(page, m);
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
        while out.len() < n && steps > 0 && self.live > 0 {
            steps -= 1;
            let small_target = self.live * SMALL_PERCENT / 100;
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
                if let Some(page) = self.main.pop_front() {
                    let m = self.meta.get(page) & !IN_MAIN;
                    if m & (LIVE | MAIN) == LIVE | MAIN {
                        self.main.push_back(page);
                        self.meta
                            .set(page, with_freq(m, freq(m).saturating_sub(1)) | IN_MAIN);
                    } else {
                        self.meta.set(page, m);
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
