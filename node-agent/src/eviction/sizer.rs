//! Sizing the grace window by what it costs (docs/eviction.md, "The window shrinks while it
//! parks the working set").
//!
//! The grace window parks pages the policy chose as victims, so that a page still in use shows
//! itself by a rescue (a local fault) before it is saved. When a program nearly fits its budget
//! (xz at 80 % or 100 %), the pages about to leave are its working set: the window parks them
//! again and again, and the program takes several rescues for each remote fault (xz at 80 %:
//! 14,000 rescues for 4,600 remote faults, 0.79 s against 0.58 s with no window). Each rescue
//! costs a round trip through the agent; at two or more per remote fault, the window costs
//! about what the remote faults it could at best prevent cost.
//!
//! So over each interval the sizer compares rescues with remote faults: at [`SHRINK_AT`] or
//! more rescues per remote fault it halves the window (down to an eighth of the configured
//! share, so that it keeps probing), at [`GROW_AT`] or fewer it doubles it back (up to the
//! configured share). Programs that need the window to keep their hot pages (Redis at 25 %:
//! without it 120,000–175,000 remote faults instead of 64,000) take far fewer rescues than
//! remote faults and keep it whole. Pure logic: the evictor feeds it counts.
//!
//! Tried first and not kept: comparing touches per parked page with touches per page out (a
//! window that learns nothing, as with uniform touches, has both alike). It shrank the window
//! of Python and Redis too, which then took 17–55 % more remote faults (docs/eviction.md).

use std::time::{Duration, Instant};

/// The scale of the configured share in these units: [`FULL`] is the whole share.
const FULL: u32 = 8;
/// The smallest scale: an eighth of the configured share.
const LEAST: u32 = 1;
/// Shortest interval over which rescues and remote faults are compared.
const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// Rescues and remote faults an interval needs before it is read.
const MIN_EVENTS: u64 = 128;
/// Rescues per remote fault at or above which the window shrinks.
pub const SHRINK_AT: f64 = 2.0;
/// Rescues per remote fault at or below which the window grows back.
pub const GROW_AT: f64 = 0.5;

/// What the sizer is told at each look: running totals.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// When.
    pub at: Instant,
    /// Rescues so far (parked pages faulted back).
    pub rescues: u64,
    /// Remote faults so far.
    pub remote_faults: u64,
}

/// What one interval showed, kept for logs and tests.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reading {
    /// Rescues per remote fault over the interval (infinite with rescues and no remote fault).
    pub ratio: f64,
    /// The scale after the reading, as a percentage of the configured share.
    pub percent: u32,
}

/// Scales the grace window's share by rescues per remote fault.
#[derive(Debug)]
pub struct GraceSizer {
    scale: u32,
    /// The sample the current interval began with.
    start: Option<Sample>,
    /// Readings taken.
    readings: u64,
}

impl Default for GraceSizer {
    fn default() -> Self {
        Self {
            scale: FULL,
            start: None,
            readings: 0,
        }
    }
}

impl GraceSizer {
    /// The window's size for a configured size of `full` pages.
    pub fn size(&self, full: usize) -> usize {
        full * self.scale as usize / FULL as usize
    }

    /// The current scale as a percentage of the configured share.
    pub fn percent(&self) -> u32 {
        self.scale * 100 / FULL
    }

    /// Readings taken so far.
    pub fn readings(&self) -> u64 {
        self.readings
    }

    /// Takes a sample; at the end of an interval with enough evidence, rescales the window and
    /// returns the reading.
    pub fn observe(&mut self, s: Sample) -> Option<Reading> {
        let Some(start) = self.start else {
            self.start = Some(s);
            return None;
        };
        if s.rescues < start.rescues || s.remote_faults < start.remote_faults {
            // Counters that went back: start over.
            self.start = Some(s);
            return None;
        }
        let rescues = s.rescues - start.rescues;
        let faults = s.remote_faults - start.remote_faults;
        if s.at.saturating_duration_since(start.at) < MIN_INTERVAL || rescues + faults < MIN_EVENTS
        {
            return None;
        }
        self.start = Some(s);
        let ratio = if faults > 0 {
            rescues as f64 / faults as f64
        } else {
            f64::INFINITY
        };
        if ratio >= SHRINK_AT {
            self.scale = (self.scale / 2).max(LEAST);
        } else if ratio <= GROW_AT {
            self.scale = (self.scale * 2).min(FULL);
        }
        self.readings += 1;
        Some(Reading {
            ratio,
            percent: self.percent(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `n` intervals of 200 ms with `rescues` and `faults` each; returns the last reading.
    fn run(z: &mut GraceSizer, t0: Instant, n: u32, rescues: u64, faults: u64) -> Option<Reading> {
        let mut last = None;
        let (mut r, mut f) = (0, 0);
        z.observe(Sample {
            at: t0,
            rescues: r,
            remote_faults: f,
        });
        for i in 1..=n {
            r += rescues;
            f += faults;
            let got = z.observe(Sample {
                at: t0 + Duration::from_millis(200 * u64::from(i)),
                rescues: r,
                remote_faults: f,
            });
            last = got.or(last);
        }
        last
    }

    #[test]
    fn a_window_taking_many_rescues_per_remote_fault_shrinks_to_an_eighth() {
        let mut z = GraceSizer::default();
        assert_eq!(z.size(800), 800);
        let r = run(&mut z, Instant::now(), 5, 600, 200).expect("a reading");
        assert_eq!(r.ratio, 3.0);
        assert_eq!(z.size(800), 100, "an eighth, and no less");
        assert_eq!((r.percent, z.readings()), (12, 5));
    }

    #[test]
    fn a_window_taking_few_rescues_grows_back_and_in_between_holds() {
        let mut z = GraceSizer::default();
        let t0 = Instant::now();
        run(&mut z, t0, 2, 600, 200);
        assert_eq!(z.size(800), 200);
        // One rescue per remote fault: neither.
        run(&mut z, t0 + Duration::from_secs(10), 3, 200, 200);
        assert_eq!(z.size(800), 200);
        // A fifth: back up, one doubling per interval.
        run(&mut z, t0 + Duration::from_secs(20), 1, 40, 200);
        assert_eq!(z.size(800), 400);
        run(&mut z, t0 + Duration::from_secs(30), 3, 40, 200);
        assert_eq!(z.size(800), 800, "no more than the configured share");
    }

    #[test]
    fn too_little_evidence_reads_nothing() {
        let mut z = GraceSizer::default();
        // 20 events per 200 ms: five intervals are not enough.
        assert!(run(&mut z, Instant::now(), 5, 15, 5).is_none());
        assert_eq!((z.size(800), z.readings()), (800, 0));
        // Nor is a burst shorter than the interval.
        let t0 = Instant::now();
        let mut y = GraceSizer::default();
        y.observe(Sample {
            at: t0,
            rescues: 0,
            remote_faults: 0,
        });
        let burst = Sample {
            at: t0 + Duration::from_millis(50),
            rescues: 1000,
            remote_faults: 0,
        };
        assert!(y.observe(burst).is_none());
    }

    #[test]
    fn rescues_without_remote_faults_shrink_it() {
        let mut z = GraceSizer::default();
        let r = run(&mut z, Instant::now(), 1, 200, 0).expect("a reading");
        assert!(r.ratio.is_infinite());
        assert_eq!(z.size(800), 400);
    }

    #[test]
    fn counters_that_go_back_start_the_interval_over() {
        let mut z = GraceSizer::default();
        let t0 = Instant::now();
        run(&mut z, t0, 1, 600, 200);
        assert_eq!(z.readings(), 1);
        // `run` starts its counters at 0 again: that sample only starts a new interval.
        run(&mut z, t0 + Duration::from_secs(10), 0, 0, 0);
        assert_eq!(z.readings(), 1);
    }
}
