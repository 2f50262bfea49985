//! The controlled workload that `latency`, `compare` and `demo` run under the node agent
//! (`yonder-bench workload ...`). It maps one region, fills every page with incompressible data
//! (each first touch is a zero-fill fault), lets the agent settle to its budget, then touches
//! pages in a pattern and times every touch from its own side: the time around the access, so
//! the figure includes everything the workload waits for (fault delivery, fetch, install,
//! wake-up). A touch is classed by `mincore` just before it: a page that is not resident is a
//! remote fault, a resident one a hit. Every word read is checked.
//!
//! Output on stdout: `progress PHASE DONE TOTAL` lines while it runs, and one final line
//! `result {json}` ([`Report`]). Exit status 1 if any word read back was wrong.

use std::{
    io::Write,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use yonder_common::size::ByteSize;

use crate::{
    mem::{Region, PAGE},
    pattern::{Pages, Pattern},
    stats::{histogram, Summary},
};

/// What the fill writes into each page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Fill {
    /// Distinct pseudo-random words: incompressible (the honest case for the network, the hard
    /// case for zram).
    Random,
    /// Random words in the first half of each page, one repeated word in the second half: about
    /// 2:1 for a compressor, closer to typical heap data.
    Compressible,
}

/// Arguments of `yonder-bench workload`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Memory the workload maps and fills.
    #[arg(long, default_value = "64MiB")]
    pub size: ByteSize,
    /// Access pattern of the timed phase.
    #[arg(long, value_enum, default_value = "random")]
    pub pattern: Pattern,
    /// Zipfian skew (0 = uniform; YCSB uses 0.99).
    #[arg(long, default_value_t = 0.99)]
    pub theta: f64,
    /// Stride in pages of the strided pattern.
    #[arg(long, default_value_t = 16)]
    pub stride: usize,
    /// Threads; each owns an equal slice of the region and runs the pattern over it.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Timed touches in all (default: as many as there are pages).
    #[arg(long)]
    pub touches: Option<u64>,
    /// Percentage of touches that also write the page (read-modify-write).
    #[arg(long, default_value_t = 0)]
    pub write_pct: u8,
    /// What each page is filled with.
    #[arg(long, value_enum, default_value = "random")]
    pub fill: Fill,
    /// Longest wait for the resident set to settle after the fill, in milliseconds.
    #[arg(long, default_value_t = 3000)]
    pub settle_ms: u64,
}

/// What the workload measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Pattern of the timed phase.
    pub pattern: Pattern,
    /// What the pages hold.
    #[serde(default = "default_fill")]
    pub fill: Fill,
    /// Threads.
    pub threads: usize,
    /// Pages in the region.
    pub pages: usize,
    /// Seconds the fill took.
    pub fill_s: f64,
    /// Resident pages when the timed phase began.
    pub resident_at_start: usize,
    /// Seconds the timed phase took.
    pub touch_s: f64,
    /// Touches in the timed phase.
    pub touches: u64,
    /// Touches per second in the timed phase.
    pub touches_per_s: f64,
    /// Remote faults per second in the timed phase.
    pub remote_faults_per_s: f64,
    /// First touches during the fill (zero-fill faults).
    pub zero_fill: Summary,
    /// Timed touches of pages that were not resident.
    pub remote: Summary,
    /// Timed touches of resident pages.
    pub hit: Summary,
    /// Words read back wrong (must be 0).
    pub bad: u64,
}

fn default_fill() -> Fill {
    Fill::Random
}

/// A 64-bit mixer (murmur3's finaliser): the fill pattern of the touch workloads.
pub(crate) fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// The value of word `w` of page `p` with incompressible data.
fn word(p: usize, w: usize) -> u64 {
    mix(((p as u64) << 9) | w as u64)
}

/// The value of word `w` of page `p` under `fill`.
/// Says on stderr what a wrong word looks like: where it is, what it read, and what the rest of
/// its page holds now (right words, zero words, and whether it reads as another page's
/// content), so that a lost write or a page swapped with another can be told apart.
fn describe_wrong_word(region: &Region, fill: Fill, p: usize, w: usize, got: u64) {
    let words = PAGE / 8;
    let now: Vec<u64> = (0..words).map(|i| region.read(p, i)).collect();
    let right = (0..words)
        .filter(|&i| now[i] == expected(fill, p, i))
        .count();
    let zeros = now.iter().filter(|&&v| v == 0).count();
    // A neighbour's content (a page moved or installed at the wrong address)?
    let other = (p.saturating_sub(64)..(p + 64).min(region.pages()))
        .find(|&q| q != p && now[0] == expected(fill, q, 0) && now[1] == expected(fill, q, 1));
    eprintln!(
        "workload: wrong word: page {p} ({:#x}) word {w}: read {got:#018x}, expected {:#018x}; \
         the page now has {right} of {words} words right, {zeros} zero{}",
        region.base() as usize + p * PAGE,
        expected(fill, p, w),
        other.map_or(String::new(), |q| format!(
            ", and starts with page {q}'s content"
        )),
    );
}

fn expected(fill: Fill, p: usize, w: usize) -> u64 {
    match fill {
        Fill::Compressible if w >= PAGE / 16 => mix(p as u64 ^ 0xc0ffee),
        _ => word(p, w),
    }
}

struct Shared {
    region: Region,
    args: Args,
    done: AtomicU64,
    stop_progress: AtomicBool,
}

struct Part {
    zero_fill: Histogram<u64>,
    remote: Histogram<u64>,
    hit: Histogram<u64>,
    bad: u64,
}

/// Runs the workload and prints its report.
pub fn run(args: Args) -> anyhow::Result<()> {
    let pages = (args.size.0 as usize / PAGE).max(args.threads.max(1));
    let threads = args.threads.clamp(1, pages);
    let touches = args.touches.unwrap_or(pages as u64);
    let region = Region::map(pages)?;
    let shared = Arc::new(Shared {
        region,
        args: args.clone(),
        done: AtomicU64::new(0),
        stop_progress: AtomicBool::new(false),
    });
    let slice = pages / threads;
    let bounds: Vec<(usize, usize)> = (0..threads)
        .map(|t| {
            let end = if t + 1 == threads {
                pages
            } else {
                (t + 1) * slice
            };
            (t * slice, end)
        })
        .collect();

    // Fill.
    let progress = progress_printer(shared.clone(), "fill", pages as u64);
    let t = Instant::now();
    let fills: Vec<Histogram<u64>> = run_threads(&bounds, |(lo, hi)| {
        let mut h = histogram();
        for p in lo..hi {
            let start = Instant::now();
            let fill = shared.args.fill;
            shared.region.write(p, 0, expected(fill, p, 0));
            let _ = h.record(start.elapsed().as_nanos() as u64);
            for w in 1..PAGE / 8 {
                shared.region.write(p, w, expected(fill, p, w));
            }
            shared.done.fetch_add(1, Ordering::Relaxed);
        }
        h
    });
    let fill_s = t.elapsed().as_secs_f64();
    finish_progress(&shared, progress);

    let resident_at_start = settle(&shared.region, Duration::from_millis(args.settle_ms));

    // Timed touches.
    shared.done.store(0, Ordering::Relaxed);
    let progress = progress_printer(shared.clone(), "touch", touches);
    let t = Instant::now();
    let per_thread = touches / threads as u64;
    let parts: Vec<Part> = run_threads(&bounds, |(lo, hi)| {
        let seed = 0x5eed ^ lo as u64;
        let mut order = Pages::new(
            shared.args.pattern,
            hi - lo,
            seed,
            shared.args.theta,
            shared.args.stride,
        );
        let mut part = Part {
            zero_fill: histogram(),
            remote: histogram(),
            hit: histogram(),
            bad: 0,
        };
        let write_every = if shared.args.write_pct == 0 {
            u64::MAX
        } else {
            (100 / u64::from(shared.args.write_pct.min(100))).max(1)
        };
        for k in 0..per_thread {
            let p = lo + order.next().unwrap_or(0);
            let w = (mix(k ^ seed) % (PAGE as u64 / 8)) as usize;
            let resident = shared.region.resident(p);
            let start = Instant::now();
            let v = shared.region.read(p, w);
            if k % write_every == 0 {
                // Rewrite the same value: a write fault on a clean page, content unchanged.
                shared.region.write(p, w, v);
            }
            let ns = start.elapsed().as_nanos() as u64;
            let _ = if resident {
                part.hit.record(ns)
            } else {
                part.remote.record(ns)
            };
            if v != expected(shared.args.fill, p, w) {
                part.bad += 1;
                if part.bad <= 4 {
                    describe_wrong_word(&shared.region, shared.args.fill, p, w, v);
                }
            }
            if k % 64 == 0 {
                shared.done.fetch_add(64, Ordering::Relaxed);
            }
        }
        part
    });
    let touch_s = t.elapsed().as_secs_f64();
    finish_progress(&shared, progress);

    let mut total = Part {
        zero_fill: histogram(),
        remote: histogram(),
        hit: histogram(),
        bad: 0,
    };
    for h in &fills {
        total.zero_fill.add(h)?;
    }
    for p in &parts {
        total.remote.add(&p.remote)?;
        total.hit.add(&p.hit)?;
        total.bad += p.bad;
    }
    let timed = per_thread * threads as u64;
    let report = Report {
        pattern: args.pattern,
        fill: args.fill,
        threads,
        pages,
        fill_s,
        resident_at_start,
        touch_s,
        touches: timed,
        touches_per_s: timed as f64 / touch_s,
        remote_faults_per_s: total.remote.len() as f64 / touch_s,
        zero_fill: Summary::of(&total.zero_fill),
        remote: Summary::of(&total.remote),
        hit: Summary::of(&total.hit),
        bad: total.bad,
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "result {}", serde_json::to_string(&report)?)?;
    out.flush()?;
    if report.bad > 0 {
        eprintln!("workload: {} words read back wrong", report.bad);
        std::process::exit(1);
    }
    Ok(())
}

/// Runs `f` on one scoped thread per slice and collects the results in slice order.
fn run_threads<T: Send>(
    bounds: &[(usize, usize)],
    f: impl Fn((usize, usize)) -> T + Sync,
) -> Vec<T> {
    std::thread::scope(|s| {
        let handles: Vec<_> = bounds.iter().map(|b| s.spawn(|| f(*b))).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("workload thread panicked"))
            .collect()
    })
}

/// Waits until the resident set stops shrinking (the agent has evicted down to its budget), at
/// most `max`; returns the resident pages then.
fn settle(region: &Region, max: Duration) -> usize {
    let deadline = Instant::now() + max;
    let mut last = region.resident_pages();
    let mut stable = 0;
    while Instant::now() < deadline && stable < 3 {
        std::thread::sleep(Duration::from_millis(50));
        let now = region.resident_pages();
        stable = if now >= last { stable + 1 } else { 0 };
        last = now;
    }
    last
}

fn progress_printer(
    shared: Arc<Shared>,
    phase: &'static str,
    total: u64,
) -> std::thread::JoinHandle<()> {
    shared.stop_progress.store(false, Ordering::Relaxed);
    std::thread::spawn(move || {
        while !shared.stop_progress.load(Ordering::Relaxed) {
            let done = shared.done.load(Ordering::Relaxed).min(total);
            println!("progress {phase} {done} {total}");
            std::thread::sleep(Duration::from_millis(100));
        }
        println!("progress {phase} {total} {total}");
    })
}

fn finish_progress(shared: &Shared, handle: std::thread::JoinHandle<()>) {
    shared.stop_progress.store(true, Ordering::Relaxed);
    let _ = handle.join();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_without_an_agent_and_reads_back_every_word() {
        // Plain memory: every touch is a hit and nothing is wrong.
        let region = Region::map(8).unwrap();
        for p in 0..8 {
            for w in 0..PAGE / 8 {
                region.write(p, w, word(p, w));
            }
        }
        assert_eq!(region.resident_pages(), 8);
        assert!((0..8).all(|p| region.resident(p) && region.read(p, 5) == word(p, 5)));
    }

    #[test]
    fn compressible_pages_repeat_one_word_in_their_second_half() {
        let words: Vec<u64> = (0..PAGE / 8)
            .map(|w| expected(Fill::Compressible, 3, w))
            .collect();
        let half = PAGE / 16;
        assert!(words[half..].iter().all(|v| *v == words[half]));
        let distinct: std::collections::BTreeSet<u64> = words[..half].iter().copied().collect();
        assert_eq!(distinct.len(), half);
        assert_eq!(expected(Fill::Random, 3, 400), word(3, 400));
    }
}
