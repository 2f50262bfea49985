//! `yonder-bench scale`: what the agent and a memory server cost per page, and whether the cost
//! of a remote fault grows with the workload's size. For each size (64 MiB to 16 GiB by default,
//! skipping with a note what does not fit the machine's free memory), one memory server on
//! loopback (R = 1) and the controlled workload (`workload.rs`) under `yonder-agent run` at
//! `--local-share` of its memory: fill, settle, then a fixed number of uniformly random touches
//! that the workload times itself. Measured: the agent's RSS at the end of the touches beyond its
//! RSS with a tiny workload in the same run, per managed page; the server's RSS growth per stored
//! page; remote-fault p50/p99 and faults/s; the agent's CPU time per remote fault; the time from
//! the start of the fill until the agent had evicted its first GiB (its metrics endpoint, polled).
//! Each size runs `--runs` times and the run with the median remote-fault p50 is the size's row
//! (the baseline: the run with the median agent RSS). docs/scale.md explains the definitions.

use std::{path::PathBuf, time::Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use yonder_common::size::ByteSize;

use crate::{
    mem::PAGE,
    procfs, run_info,
    stats::{human_ns, Summary},
};

mod render;
mod sampler;
mod size;

use size::measure_size;

pub use render::{markdown, text};

const GIB: u64 = 1 << 30;

/// Arguments of `yonder-bench scale`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Workload sizes, comma-separated. A size that does not fit the machine's free memory when
    /// its turn comes (the workload's local share, the server's copy of the rest, the agent) is
    /// skipped with a note.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "64MiB,256MiB,1GiB,2GiB,4GiB,8GiB,16GiB"
    )]
    pub sizes: Vec<ByteSize>,
    /// Local memory as a percentage of each size.
    #[arg(long, default_value_t = 25)]
    pub local_share: u32,
    /// Timed random touches at every size (the same count everywhere, so that sizes compare).
    #[arg(long, default_value_t = 100_000)]
    pub touches: u64,
    /// Runs of each size (and of the baseline); the row is the run with the median remote-fault
    /// p50 (the baseline's, the one with the median agent RSS). This VM's scheduling puts about
    /// one run in four in a slow mode (docs/fault-path.md), which one run per size cannot tell
    /// from the size.
    #[arg(long, default_value_t = 3)]
    pub runs: u32,
    /// The tiny workload whose agent RSS is the baseline.
    #[arg(long, default_value = "4MiB")]
    pub baseline: ByteSize,
    /// Free memory (MemAvailable) to leave to the rest of the machine when deciding what fits.
    #[arg(long, default_value = "2GiB")]
    pub reserve: ByteSize,
    /// Extra flags for the memory server (whitespace-separated, e.g.
    /// `--server-args=--prefault=0`), to compare its settings.
    #[arg(long, allow_hyphen_values = true)]
    pub server_args: Option<String>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON object to this file (e.g. bench/results/scale.json, which
    /// `yonder-bench report` renders).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// One size's figures.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SizeRow {
    /// Memory the workload maps and fills, bytes.
    pub size_bytes: u64,
    /// Pages the agent manages (the workload's region).
    pub pages: u64,
    /// Local memory, bytes.
    pub local_bytes: u64,
    /// Agent VmRSS at the end of the timed touches, bytes.
    pub agent_rss_bytes: u64,
    /// Agent VmHWM (peak RSS) last seen, bytes.
    pub agent_peak_rss_bytes: u64,
    /// (agent RSS − the baseline's) / (pages − the baseline's); 0 for the baseline itself.
    pub agent_bytes_per_page: f64,
    /// Server VmRSS once it listened, before the agent connected, bytes.
    pub server_rss_at_start_bytes: u64,
    /// Server VmRSS at the end of the timed touches, bytes.
    pub server_rss_bytes: u64,
    /// Pages the server stored then (with content, and zero pages).
    pub server_pages_stored: u64,
    /// Server RSS growth per stored page, bytes (4096 of them are the page's content).
    pub server_bytes_per_page: f64,
    /// Workload VmHWM (peak RSS) last seen, bytes.
    pub workload_peak_rss_bytes: u64,
    /// Timed touches.
    pub touches: u64,
    /// Remote faults of the timed touches, measured by the workload.
    pub remote: Summary,
    /// Remote faults per second of the timed touches.
    pub remote_faults_per_s: f64,
    /// The agent's own remote-fault p50 (fault read → page installed), ns.
    pub agent_remote_p50_ns: u64,
    /// Agent CPU time (all its threads, user and system) during the timed touches, per remote
    /// fault, µs.
    pub agent_cpu_us_per_fault: f64,
    /// Seconds the fill took.
    pub fill_s: f64,
    /// Seconds from the start of the fill until the agent had evicted 1 GiB; `None` when the
    /// size's remote share is less than 1 GiB.
    pub first_gib_evicted_s: Option<f64>,
    /// Pages the agent evicted by the end of the timed touches.
    pub evicted_pages: u64,
    /// Of the pages evicted during the timed touches, the share written to the server (the
    /// rest were dropped clean: fetched pages unchanged), percent. Near 100 % while the touches
    /// still push out pages resident since the fill, which have no remote copy; much lower once
    /// they evict pages they fetched. `None` in results written before it was measured.
    #[serde(default)]
    pub touch_evictions_written_pct: Option<f64>,
    /// The remote-fault p50 of every run of this size, in the order they ran (this row is the
    /// median one), ns; empty in results written before runs were repeated.
    #[serde(default)]
    pub remote_p50_runs_ns: Vec<u64>,
}

/// A size left out because it would not fit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Skipped {
    /// The size, bytes.
    pub size_bytes: u64,
    /// Memory it was estimated to need, bytes.
    pub needed_bytes: u64,
    /// MemAvailable minus `--reserve` when its turn came, bytes.
    pub available_bytes: u64,
}

/// A size whose run failed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Failed {
    /// The size, bytes.
    pub size_bytes: u64,
    /// What went wrong.
    pub error: String,
}

/// What `yonder-bench scale` measured: the JSON object it prints and writes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ScaleReport {
    /// The exact command.
    pub command: String,
    /// When it started (UTC).
    pub date: String,
    /// The commit it was built from.
    pub commit: String,
    /// The machine's kernel and CPU count.
    pub machine: String,
    /// MemTotal, bytes.
    pub memory_total_bytes: u64,
    /// MemAvailable when the run started, bytes.
    pub memory_available_bytes: u64,
    /// Local memory as a percentage of each size.
    pub local_share_pct: u32,
    /// Memory servers (one, on loopback).
    pub servers: usize,
    /// Copies of each evicted page (1).
    pub replicas: usize,
    /// Timed touches per size.
    pub touches: u64,
    /// Runs of each size; each row is the median one.
    #[serde(default = "one_run")]
    pub runs: u32,
    /// The tiny workload's run, whose agent RSS is the baseline.
    pub baseline: SizeRow,
    /// One row per size that ran, smallest first.
    pub rows: Vec<SizeRow>,
    /// Sizes left out because they would not fit.
    pub skipped: Vec<Skipped>,
    /// Sizes whose run failed.
    pub failed: Vec<Failed>,
    /// Seconds the whole run took.
    pub elapsed_s: f64,
}

/// Results written before runs were repeated had one.
fn one_run() -> u32 {
    1
}

/// Runs `one` `runs` times and keeps the run whose `key` is the median (the lower middle of an
/// even count), with the remote-fault p50 of every run; the first failure fails it.
fn median_run(
    runs: u32,
    mut one: impl FnMut(u32) -> anyhow::Result<SizeRow>,
    key: impl Fn(&SizeRow) -> u64,
) -> anyhow::Result<SizeRow> {
    let mut all = Vec::new();
    for i in 0..runs.max(1) {
        all.push(one(i)?);
    }
    let p50s: Vec<u64> = all.iter().map(|r| r.remote.p50_ns).collect();
    all.sort_by_key(|r| key(r));
    let mut kept = all.swap_remove((all.len() - 1) / 2);
    kept.remote_p50_runs_ns = p50s;
    Ok(kept)
}

/// Runs `yonder-bench scale`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let report = measure(&args, &mut |s| eprintln!("scale: {s}"))?;
    run_info::emit(&report, args.json, args.out.as_deref(), text)?;
    if !report.failed.is_empty() {
        bail!(
            "{} size(s) failed: {}",
            report.failed.len(),
            report
                .failed
                .iter()
                .map(|f| format!("{}: {}", size_name(f.size_bytes), f.error))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    Ok(())
}

/// Measures as `args` says; `log` gets a line per step.
pub fn measure(args: &Args, log: &mut dyn FnMut(String)) -> anyhow::Result<ScaleReport> {
    anyhow::ensure!(
        (1..100).contains(&args.local_share),
        "--local-share must be 1..=99 (at 100 nothing is remote)"
    );
    anyhow::ensure!(args.touches > 0, "--touches must be > 0");
    anyhow::ensure!(args.runs > 0, "--runs must be > 0");
    let started = Instant::now();
    let command = run_info::command();
    let date = run_info::utc_date();
    let commit = run_info::git_commit();
    let memory_available_bytes = procfs::meminfo_bytes("MemAvailable").unwrap_or(0);
    let mut sizes: Vec<u64> = args
        .sizes
        .iter()
        .map(|s| s.0 / PAGE as u64 * PAGE as u64)
        .collect();
    sizes.sort_unstable();
    sizes.dedup();
    anyhow::ensure!(
        sizes.iter().all(|s| *s > args.baseline.0),
        "every size must be larger than --baseline ({})",
        size_name(args.baseline.0)
    );

    log(format!(
        "baseline: the agent with a {} workload",
        size_name(args.baseline.0)
    ));
    let runs = args.runs;
    let baseline = median_run(
        runs,
        |i| {
            if runs > 1 {
                log(format!("baseline: run {} of {runs}", i + 1));
            }
            measure_size(args, args.baseline.0, None, log)
        },
        |r| r.agent_rss_bytes,
    )
    .context("the baseline run (a tiny workload) failed")?;
    let mut rows: Vec<SizeRow> = Vec::new();
    let mut skipped = Vec::new();
    let mut failed = Vec::new();
    for size in sizes {
        let needed = needed_bytes(size, args.local_share, rows.last());
        let available = procfs::meminfo_bytes("MemAvailable")
            .unwrap_or(0)
            .saturating_sub(args.reserve.0);
        if needed > available {
            log(format!(
                "SKIPPED {}: it needs about {} (workload's local share, the server's copy of the \
                 rest, the agent), and only {} is free beyond the --reserve of {}",
                size_name(size),
                size_name(needed),
                size_name(available),
                size_name(args.reserve.0)
            ));
            skipped.push(Skipped {
                size_bytes: size,
                needed_bytes: needed,
                available_bytes: available,
            });
            continue;
        }
        log(format!(
            "{}: needs about {}, {} free",
            size_name(size),
            size_name(needed),
            size_name(available)
        ));
        let measured = median_run(
            runs,
            |i| {
                if runs > 1 {
                    log(format!("{}: run {} of {runs}", size_name(size), i + 1));
                }
                measure_size(args, size, Some(&baseline), log)
            },
            |r| r.remote.p50_ns,
        );
        match measured {
            Ok(row) => {
                log(format!(
                    "{}: agent {:.1} B per page beyond its baseline, server {:.0} B per stored \
                     page; remote faults p50 {}, p99 {}, {:.0}/s; agent CPU {:.1} µs per fault; \
                     first GiB evicted {}",
                    size_name(size),
                    row.agent_bytes_per_page,
                    row.server_bytes_per_page,
                    human_ns(row.remote.p50_ns as f64),
                    human_ns(row.remote.p99_ns as f64),
                    row.remote_faults_per_s,
                    row.agent_cpu_us_per_fault,
                    row.first_gib_evicted_s
                        .map_or("—".into(), |s| format!("{s:.1} s after the fill began")),
                ));
                rows.push(row);
            }
            Err(e) => {
                log(format!("{} FAILED: {e:#}", size_name(size)));
                failed.push(Failed {
                    size_bytes: size,
                    error: format!("{e:#}"),
                });
            }
        }
    }
    Ok(ScaleReport {
        command,
        date,
        commit,
        machine: run_info::machine(),
        memory_total_bytes: procfs::meminfo_bytes("MemTotal").unwrap_or(0),
        memory_available_bytes,
        local_share_pct: args.local_share,
        servers: 1,
        replicas: 1,
        touches: args.touches,
        runs,
        baseline,
        rows,
        skipped,
        failed,
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}

/// Memory a size is estimated to need while it runs: the workload's peak (its local share, and
/// more for pages on their way out), the server's copy of the rest, the agent's tables, and
/// 256 MiB for the processes themselves. Until a size has been measured the figures are
/// generous guesses; then the previous size's measured ones, with a margin for tables that grow
/// by doubling.
fn needed_bytes(size: u64, share_pct: u32, previous: Option<&SizeRow>) -> u64 {
    let local = size * u64::from(share_pct) / 100;
    let stored = size - local;
    let pages = size / PAGE as u64;
    let (workload_factor, server_bpp, agent_bpp) = match previous {
        Some(r) if r.local_bytes > 0 && r.server_pages_stored > 0 => (
            (r.workload_peak_rss_bytes as f64 / r.local_bytes as f64).max(1.0),
            r.server_bytes_per_page * 1.05,
            (r.agent_bytes_per_page * 1.25).max(16.0),
        ),
        _ => (1.25, PAGE as f64 * 1.15, 512.0),
    };
    (local as f64 * workload_factor
        + stored as f64 / PAGE as f64 * server_bpp
        + pages as f64 * agent_bpp) as u64
        + (256 << 20)
}

/// A size as people write it: "64 MiB", "8 GiB" (to one decimal when not whole).
fn size_name(bytes: u64) -> String {
    let (unit, name) = if bytes >= GIB {
        (GIB, "GiB")
    } else {
        (1 << 20, "MiB")
    };
    let v = bytes as f64 / unit as f64;
    if bytes.is_multiple_of(unit) {
        format!("{v:.0} {name}")
    } else {
        format!("{v:.1} {name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn row(size: u64, p50: u64) -> SizeRow {
        SizeRow {
            size_bytes: size,
            pages: size / 4096,
            local_bytes: size / 4,
            agent_rss_bytes: 40 << 20,
            agent_peak_rss_bytes: 50 << 20,
            agent_bytes_per_page: 100.0,
            server_rss_at_start_bytes: 10 << 20,
            server_rss_bytes: 10 << 20,
            server_pages_stored: size / 4096 * 3 / 4,
            server_bytes_per_page: 4200.0,
            workload_peak_rss_bytes: size / 4 + size / 16,
            touches: 1000,
            remote: Summary {
                count: 700,
                p50_ns: p50,
                p99_ns: p50 * 3,
                ..Summary::default()
            },
            remote_faults_per_s: 9000.0,
            agent_remote_p50_ns: p50 / 2,
            agent_cpu_us_per_fault: 40.0,
            fill_s: 2.0,
            first_gib_evicted_s: (size >= 2 * GIB).then_some(3.5),
            evicted_pages: size / 4096,
            touch_evictions_written_pct: Some(100.0),
            remote_p50_runs_ns: Vec::new(),
        }
    }

    #[test]
    fn the_median_run_is_kept_with_every_runs_p50() {
        let p50s = [300, 100, 200];
        let kept = median_run(3, |i| Ok(row(GIB, p50s[i as usize])), |r| r.remote.p50_ns)
            .expect("three runs");
        assert_eq!(kept.remote.p50_ns, 200);
        assert_eq!(kept.remote_p50_runs_ns, vec![300, 100, 200]);
        let kept = median_run(2, |i| Ok(row(GIB, p50s[i as usize])), |r| r.remote.p50_ns)
            .expect("two runs");
        assert_eq!(kept.remote.p50_ns, 100, "the lower middle of two");
        let failed = median_run(
            3,
            |i| {
                if i == 1 {
                    anyhow::bail!("run 2 broke")
                }
                Ok(row(GIB, 1))
            },
            |r| r.remote.p50_ns,
        );
        assert!(failed.is_err());
    }

    #[test]
    fn the_estimate_learns_from_the_previous_size() {
        let guess = needed_bytes(8 * GIB, 25, None);
        // 2 GiB local × 1.25, 6 GiB × 1.15, 2M pages × 512 B, 256 MiB.
        assert!(guess > 10 * GIB && guess < 11 * GIB, "{guess}");
        let measured = needed_bytes(8 * GIB, 25, Some(&row(GIB, 100_000)));
        assert!(measured < guess, "{measured} >= {guess}");
        assert!(measured > 8 * GIB, "{measured}");
    }
}
