//! The workload of `yonder-bench soak` (`yonder-bench soak-workload ...`, run under the agent):
//! it maps one region, writes every page with a deterministic pattern of generation 0, then for
//! `--seconds` visits random pages. Each visit reads and verifies all 512 words of the page
//! against the generation it last wrote there and, for `--write-pct` of the visits, rewrites the
//! page with the next generation. At the end (or on SIGTERM) it makes one last pass that verifies
//! every page. Each visit is timed from the workload's side (the pause it saw).
//!
//! Output on stdout: `filled` once the region is written, `progress {json}` every second and
//! `result {json}` at the end ([`SoakResult`] both), so that the counts so far survive a workload
//! that is killed. Exit status 1 if any byte read back was wrong.

use std::{
    io::Write,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use yonder_common::size::ByteSize;

use crate::{
    mem::{Region, PAGE},
    stats::{histogram, Summary},
    workload::mix,
};

/// Words in a page.
const WORDS: usize = PAGE / 8;

/// Mismatches kept for the report (the count goes on).
const KEEP_MISMATCHES: usize = 16;

/// Arguments of `yonder-bench soak-workload`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Memory the workload maps and writes.
    #[arg(long, default_value = "64MiB")]
    pub size: ByteSize,
    /// How long to visit random pages after the fill, in seconds.
    #[arg(long, default_value_t = 60.0)]
    pub seconds: f64,
    /// Percentage of visits that rewrite the page with its next generation.
    #[arg(long, default_value_t = 50)]
    pub write_pct: u8,
    /// Seed of the pattern and of the page choice.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// One word read back wrong, as found.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Mismatch {
    /// Page of the region.
    pub page: u64,
    /// Generation the workload wrote there last.
    pub want_generation: u32,
    /// Page and generation found in the page's first word (its tag).
    pub found_page: u64,
    /// Generation found in the first word.
    pub found_generation: u32,
    /// Words of the page that differ.
    pub words: u64,
    /// Seconds since the start of the random visits.
    pub at_s: f64,
}

/// What the soak workload saw, so far (`progress`) or in all (`result`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SoakResult {
    /// Pages in the region.
    pub pages: u64,
    /// Whether the whole run finished, including the final pass over every page.
    pub finished: bool,
    /// Seconds of random visits so far.
    pub seconds: f64,
    /// Random visits (page touches) so far.
    pub touches: u64,
    /// Visits that also rewrote the page.
    pub rewrites: u64,
    /// Visits of a page that was not resident just before (`mincore`): remote faults.
    pub remote_touches: u64,
    /// Pages read and checked word by word (every visit, plus the final pass).
    pub pages_verified: u64,
    /// Words read back different from what was written last.
    pub bad_words: u64,
    /// Bytes of those words that differ.
    pub bad_bytes: u64,
    /// The first mismatches found.
    pub mismatches: Vec<Mismatch>,
    /// Latency of every visit (random ones and the final pass), as the workload saw it.
    pub touch: Summary,
    /// Visits that took 1 ms or more.
    pub touches_over_1ms: u64,
    /// Visits that took 100 ms or more.
    pub touches_over_100ms: u64,
    /// Visits that took 1 s or more.
    pub touches_over_1s: u64,
}

/// Word `w` of page `p` at generation `g`: word 0 is a tag (page, generation) that tells what a
/// wrong page holds instead; the others are pseudo-random, different for every generation.
fn word(seed: u64, p: u64, g: u32, w: usize) -> u64 {
    if w == 0 {
        (p << 32) | u64::from(g)
    } else {
        mix(mix(seed ^ (p << 24) ^ u64::from(g)) ^ w as u64)
    }
}

/// Bytes that differ between two words.
fn differing_bytes(a: u64, b: u64) -> u64 {
    (a ^ b).to_ne_bytes().iter().filter(|b| **b != 0).count() as u64
}

struct Soak {
    region: Region,
    generation: Vec<u32>,
    seed: u64,
    result: SoakResult,
    hist: hdrhistogram::Histogram<u64>,
    started: Instant,
}

impl Soak {
    fn write_page(&self, p: usize, g: u32) {
        for w in 0..WORDS {
            self.region.write(p, w, word(self.seed, p as u64, g, w));
        }
    }

    /// Reads and checks page `p`; a wrong page is counted, then written anew with its next
    /// generation so that it is counted once.
    fn verify_page(&mut self, p: usize) -> bool {
        let g = self.generation[p];
        let mut words = 0;
        let mut bytes = 0;
        let first = self.region.read(p, 0);
        for w in 0..WORDS {
            let got = if w == 0 {
                first
            } else {
                self.region.read(p, w)
            };
            let want = word(self.seed, p as u64, g, w);
            if got != want {
                words += 1;
                bytes += differing_bytes(got, want);
            }
        }
        self.result.pages_verified += 1;
        if words == 0 {
            return true;
        }
        self.result.bad_words += words;
        self.result.bad_bytes += bytes;
        if self.result.mismatches.len() < KEEP_MISMATCHES {
            self.result.mismatches.push(Mismatch {
                page: p as u64,
                want_generation: g,
                found_page: first >> 32,
                found_generation: first as u32,
                words,
                at_s: self.started.elapsed().as_secs_f64(),
            });
        }
        self.generation[p] = g.wrapping_add(1);
        self.write_page(p, self.generation[p]);
        false
    }

    /// One timed visit of page `p`: verify it, and rewrite it with its next generation if `write`.
    fn visit(&mut self, p: usize, write: bool) {
        let remote = !self.region.resident(p);
        let t = Instant::now();
        let ok = self.verify_page(p);
        if write && ok {
            self.generation[p] = self.generation[p].wrapping_add(1);
            self.write_page(p, self.generation[p]);
        }
        let ns = t.elapsed().as_nanos() as u64;
        self.hist.saturating_record(ns.max(1));
        self.result.touches_over_1ms += u64::from(ns >= 1_000_000);
        self.result.touches_over_100ms += u64::from(ns >= 100_000_000);
        self.result.touches_over_1s += u64::from(ns >= 1_000_000_000);
        self.result.remote_touches += u64::from(remote);
    }

    fn snapshot(&mut self) -> &SoakResult {
        self.result.touch = Summary::of(&self.hist);
        &self.result
    }
}

fn emit(kind: &str, r: &SoakResult) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{kind} {}",
        serde_json::to_string(r).unwrap_or_default()
    );
    let _ = out.flush();
}

/// Runs the soak workload.
pub fn run(args: Args) -> anyhow::Result<()> {
    let pages = (args.size.0 as usize / PAGE).max(1);
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    let mut s = Soak {
        region: Region::map(pages)?,
        generation: vec![0; pages],
        seed: mix(args.seed),
        result: SoakResult {
            pages: pages as u64,
            ..SoakResult::default()
        },
        hist: histogram(),
        started: Instant::now(),
    };
    for p in 0..pages {
        s.write_page(p, 0);
    }
    println!("filled");
    std::io::stdout().flush()?;

    s.started = Instant::now();
    let duration = Duration::from_secs_f64(args.seconds.max(0.0));
    let mut rng = mix(args.seed ^ 0x50a6);
    let mut next_progress = Duration::from_secs(1);
    let write_pct = u64::from(args.write_pct.min(100));
    while !stop.load(Ordering::Relaxed) {
        let elapsed = s.started.elapsed();
        if elapsed >= duration {
            break;
        }
        if elapsed >= next_progress {
            next_progress = elapsed + Duration::from_secs(1);
            s.result.seconds = elapsed.as_secs_f64();
            emit("progress", s.snapshot());
        }
        // 64 visits per clock check.
        for _ in 0..64 {
            rng = mix(rng.wrapping_add(0x9e37_79b9_7f4a_7c15));
            let p = (rng % pages as u64) as usize;
            let write = (rng >> 32) % 100 < write_pct;
            s.visit(p, write);
            s.result.touches += 1;
            s.result.rewrites += u64::from(write);
        }
    }
    s.result.seconds = s.started.elapsed().as_secs_f64();
    // Every page once more, so that none goes unchecked.
    if !stop.load(Ordering::Relaxed) {
        for p in 0..pages {
            s.visit(p, false);
        }
        s.result.finished = true;
    }
    let bad = s.result.bad_words > 0;
    emit("result", s.snapshot());
    if bad {
        std::process::exit(1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_of_another_generation_is_told_apart_and_counted_once() {
        let mut s = Soak {
            region: Region::map(4).unwrap(),
            generation: vec![0; 4],
            seed: 7,
            result: SoakResult::default(),
            hist: histogram(),
            started: Instant::now(),
        };
        for p in 0..4 {
            s.write_page(p, 0);
        }
        s.visit(1, true);
        assert_eq!(s.generation[1], 1);
        assert!((0..4).all(|p| s.verify_page(p)));
        // Page 2 gets page 2's generation-1 content while the workload expects generation 0.
        s.write_page(2, 1);
        assert!(!s.verify_page(2));
        assert_eq!(s.result.mismatches[0].found_generation, 1);
        assert_eq!(s.result.mismatches[0].want_generation, 0);
        assert_eq!(s.result.bad_words, WORDS as u64);
        assert!(
            s.verify_page(2),
            "a wrong page is rewritten, so counted once"
        );
        assert_eq!(s.result.pages_verified, 1 + 4 + 1 + 1);
        assert_eq!(differing_bytes(0x00ff_0000, 0x0000_0000), 1);
    }
}
