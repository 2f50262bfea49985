//! `yonder-bench scale`: what the agent and a memory server cost per page, and whether the cost
//! of a remote fault grows with the workload's size. For each size (64 MiB to 16 GiB by default,
//! skipping with a note what does not fit the machine's free memory), one memory server on
//! loopback (R = 1) and the controlled workload (`workload.rs`) under `yonder-agent run` at
//! `--local-share` of its memory: fill, settle, then a fixed number of uniformly random touches
//! that the workload times itself. Measured: the agent's RSS at the end of the touches beyond its
//! RSS with a tiny workload in the same run, per managed page; the server's RSS growth per stored
//! page; remote-fault p50/p99 and faults/s; the agent's CPU time per remote fault; the time from
//! the start of the fill until the agent had evicted its first GiB (its metrics endpoint, polled).
//! docs/scale.md explains the definitions.

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use yonder_common::size::ByteSize;
use yonder_tests::{children, free_tcp_port};

use crate::{
    cluster::Cluster,
    latency::{run_under_agent, Event, WorkloadRun},
    mem::PAGE,
    pattern::Pattern,
    procfs, run_info, scrape,
    stats::{human_ns, Summary},
};

const GIB: u64 = 1 << 30;

/// How often the sampler reads the processes and the metrics endpoints.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Longest wait for the workload's resident set to settle after the fill (a large fill can end
/// well before the agent has evicted down to its budget).
const SETTLE_MS: u64 = 60_000;

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
    /// The tiny workload whose agent RSS is the baseline.
    #[arg(long, default_value = "4MiB")]
    pub baseline: ByteSize,
    /// Free memory (MemAvailable) to leave to the rest of the machine when deciding what fits.
    #[arg(long, default_value = "2GiB")]
    pub reserve: ByteSize,
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
    let baseline = measure_size(args, args.baseline.0, None, log)
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
        match measure_size(args, size, Some(&baseline), log) {
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

/// The processes of one size's run and their metrics endpoints.
#[derive(Clone, Copy)]
struct Watched {
    agent: u32,
    agent_port: u16,
    server: u32,
    server_port: u16,
}

/// One reading of the processes and their metrics; 0 for what could not be read (a process
/// that has ended).
#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Instant,
    agent_rss: u64,
    agent_hwm: u64,
    agent_cpu_s: f64,
    evicted_pages: u64,
    server_rss: u64,
    server_stored: u64,
    workload_hwm: u64,
}

impl Watched {
    fn sample(&self) -> Sample {
        let metric = |port: u16, names: &[&str]| -> u64 {
            scrape::get(port).map_or(0, |body| {
                names
                    .iter()
                    .filter_map(|n| scrape::sum(&body, n))
                    .sum::<f64>() as u64
            })
        };
        let workload = children(self.agent).first().copied();
        Sample {
            at: Instant::now(),
            agent_rss: procfs::status_bytes(self.agent, "VmRSS").unwrap_or(0),
            agent_hwm: procfs::status_bytes(self.agent, "VmHWM").unwrap_or(0),
            agent_cpu_s: procfs::cpu_seconds(self.agent).unwrap_or(0.0),
            evicted_pages: metric(self.agent_port, &["yonder_agent_evicted_pages_total"]),
            server_rss: procfs::status_bytes(self.server, "VmRSS").unwrap_or(0),
            server_stored: metric(
                self.server_port,
                &[
                    "yonder_server_pages_stored",
                    "yonder_server_zero_pages_stored",
                ],
            ),
            workload_hwm: workload
                .and_then(|w| procfs::status_bytes(w, "VmHWM"))
                .unwrap_or(0),
        }
    }
}

/// A thread that samples the watched processes every [`SAMPLE_EVERY`] until stopped or dropped.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Sample>>>,
}

impl Sampler {
    fn start(w: Watched) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                samples.push(w.sample());
                std::thread::sleep(SAMPLE_EVERY);
            }
            samples
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the thread and returns its samples.
    fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// When a rising series first reached `target`: linear between the two points around it.
/// `points` are (seconds, value) in time order.
fn time_to_reach(points: &[(f64, f64)], target: f64) -> Option<f64> {
    let i = points.iter().position(|(_, v)| *v >= target)?;
    let (t1, v1) = points[i];
    match i.checked_sub(1).map(|j| points[j]) {
        Some((t0, v0)) if v1 > v0 => Some(t0 + (target - v0) / (v1 - v0) * (t1 - t0)),
        _ => Some(t1),
    }
}

/// Runs one size: a fresh server, the workload under the agent, the sampler beside it.
fn measure_size(
    args: &Args,
    size: u64,
    baseline: Option<&SizeRow>,
    log: &mut dyn FnMut(String),
) -> anyhow::Result<SizeRow> {
    let pages = size / PAGE as u64;
    let local_bytes = size * u64::from(args.local_share) / 100 / PAGE as u64 * PAGE as u64;
    let server_port = free_tcp_port();
    // Room for every page, and more, so that the store never refuses one.
    let capacity = format!("{}KiB", (size + size / 8 + (64 << 20)) / 1024);
    let cluster = Cluster::start_with(
        1,
        &capacity,
        &["--metrics".into(), format!("127.0.0.1:{server_port}")],
    )?;
    let server = *cluster.pids().first().context("no server process")?;
    let server_rss_at_start =
        procfs::status_bytes(server, "VmRSS").context("reading the server's VmRSS")?;
    let agent_port = free_tcp_port();
    let extra = ["--metrics".to_string(), format!("127.0.0.1:{agent_port}")];
    let w = WorkloadRun {
        size: ByteSize(size),
        pattern: Pattern::Random,
        threads: 1,
        theta: 0.99,
        stride: 16,
        touches: Some(args.touches),
        settle_ms: Some(SETTLE_MS),
    };
    let mut watched = None;
    let mut sampler = None;
    let mut fill_start = None;
    let mut touch_start = None;
    let mut touch_end = None;
    let (report, summary) =
        run_under_agent(&cluster, local_bytes, 1, &extra, &w, &mut |e| match e {
            Event::Started(agent) => {
                let wt = Watched {
                    agent,
                    agent_port,
                    server,
                    server_port,
                };
                watched = Some(wt);
                sampler = Some(Sampler::start(wt));
            }
            Event::Progress { phase, done, total } => {
                let Some(wt) = watched else { return };
                if phase == "fill" && fill_start.is_none() {
                    fill_start = Some(Instant::now());
                } else if phase == "touch" && touch_start.is_none() {
                    log(format!("{}: filled; touching", size_name(size)));
                    touch_start = Some(wt.sample());
                }
                if phase == "touch" && done >= total && touch_end.is_none() {
                    touch_end = Some(wt.sample());
                }
            }
        })?;
    let samples = sampler.map(Sampler::finish).unwrap_or_default();
    let (Some(fill_start), Some(touch_start), Some(end)) = (fill_start, touch_start, touch_end)
    else {
        bail!("the workload ended without reporting its fill and its touches");
    };
    anyhow::ensure!(
        end.agent_rss > 0 && end.server_rss > 0,
        "the agent or the server had ended before the touches did"
    );
    let live = samples.iter().filter(|s| s.agent_rss > 0);
    let peak = |f: fn(&Sample) -> u64| live.clone().map(f).chain([f(&end)]).max().unwrap_or(0);
    let evicted: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.at >= fill_start && s.agent_rss > 0)
        .map(|s| {
            (
                s.at.duration_since(fill_start).as_secs_f64(),
                s.evicted_pages as f64,
            )
        })
        .collect();
    let first_gib_evicted_s = (size - local_bytes >= GIB)
        .then(|| time_to_reach(&evicted, (GIB / PAGE as u64) as f64))
        .flatten();
    let server_pages_stored = end.server_stored;
    Ok(SizeRow {
        size_bytes: size,
        pages,
        local_bytes,
        agent_rss_bytes: end.agent_rss,
        agent_peak_rss_bytes: peak(|s| s.agent_hwm),
        agent_bytes_per_page: baseline.map_or(0.0, |b| {
            (end.agent_rss as f64 - b.agent_rss_bytes as f64) / (pages - b.pages).max(1) as f64
        }),
        server_rss_at_start_bytes: server_rss_at_start,
        server_rss_bytes: end.server_rss,
        server_pages_stored,
        server_bytes_per_page: end.server_rss.saturating_sub(server_rss_at_start) as f64
            / server_pages_stored.max(1) as f64,
        workload_peak_rss_bytes: peak(|s| s.workload_hwm),
        touches: report.touches,
        remote: report.remote,
        remote_faults_per_s: report.remote_faults_per_s,
        agent_remote_p50_ns: summary.remote_p50_ns,
        agent_cpu_us_per_fault: (end.agent_cpu_s - touch_start.agent_cpu_s).max(0.0) * 1e6
            / report.remote.count.max(1) as f64,
        fill_s: report.fill_s,
        first_gib_evicted_s,
        evicted_pages: end.evicted_pages,
    })
}

/// Column headers of the table (text and Markdown).
const HEADERS: [&str; 14] = [
    "size",
    "pages",
    "agent RSS",
    "agent B/page beyond baseline",
    "agent B/page vs previous size",
    "server B/stored page",
    "remote faults",
    "remote p50",
    "remote p99",
    "p50 vs smallest",
    "remote faults/s",
    "agent CPU/fault",
    "first GiB evicted",
    "fill",
];

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

/// One table row: `r`, with the row of the next smaller size (`previous`) for the agent's
/// marginal cost per page, and the smallest size's p50 for the flatness.
fn cells(r: &SizeRow, previous: Option<&SizeRow>, smallest_p50: u64) -> [String; 14] {
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1 << 20) as f64);
    let marginal = previous
        .filter(|p| p.pages < r.pages)
        .map_or("—".into(), |p| {
            let bytes = r.agent_rss_bytes as f64 - p.agent_rss_bytes as f64;
            format!("{:.1}", bytes / (r.pages - p.pages) as f64)
        });
    [
        size_name(r.size_bytes),
        r.pages.to_string(),
        mib(r.agent_rss_bytes),
        format!("{:.1}", r.agent_bytes_per_page),
        marginal,
        format!("{:.0}", r.server_bytes_per_page),
        r.remote.count.to_string(),
        human_ns(r.remote.p50_ns as f64),
        human_ns(r.remote.p99_ns as f64),
        format!(
            "{:+.0} %",
            (r.remote.p50_ns as f64 / smallest_p50.max(1) as f64 - 1.0) * 100.0
        ),
        format!("{:.0}", r.remote_faults_per_s),
        format!("{:.1} µs", r.agent_cpu_us_per_fault),
        r.first_gib_evicted_s
            .map_or("—".into(), |s| format!("{s:.1} s")),
        format!("{:.1} s", r.fill_s),
    ]
}

/// The table's rows for `rows` (smallest first).
fn table_rows<'a>(rows: impl IntoIterator<Item = &'a SizeRow>) -> Vec<[String; 14]> {
    let rows: Vec<&SizeRow> = rows.into_iter().collect();
    let first = rows.first().map_or(0, |r| r.remote.p50_ns);
    rows.iter()
        .enumerate()
        .map(|(i, r)| cells(r, i.checked_sub(1).map(|j| rows[j]), first))
        .collect()
}

/// What was left out or failed, one line each.
fn notes(r: &ScaleReport) -> Vec<String> {
    let skipped = r.skipped.iter().map(|s| {
        format!(
            "SKIPPED {}: needs about {}, {} was free beyond the reserve",
            size_name(s.size_bytes),
            size_name(s.needed_bytes),
            size_name(s.available_bytes)
        )
    });
    let failed = r
        .failed
        .iter()
        .map(|f| format!("FAILED {}: {}", size_name(f.size_bytes), f.error));
    skipped.chain(failed).collect()
}

/// The human table.
pub fn text(r: &ScaleReport) -> String {
    let mut s = format!(
        "Scale: one memory server on loopback (R = 1), {} % local, {} random touches per size; \
         agent baseline {:.1} MiB with a {} workload\n\n",
        r.local_share_pct,
        r.touches,
        r.baseline.agent_rss_bytes as f64 / (1 << 20) as f64,
        size_name(r.baseline.size_bytes),
    );
    let rows = table_rows(&r.rows);
    let width = |i: usize| {
        rows.iter()
            .map(|c| c[i].chars().count())
            .chain([HEADERS[i].chars().count()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..HEADERS.len()).map(width).collect();
    let line = |c: &[String]| {
        c.iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:>w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            + "\n"
    };
    s += &line(&HEADERS.map(String::from));
    for c in &rows {
        s += &line(c);
    }
    for n in notes(r) {
        s += &format!("{n}\n");
    }
    s
}

/// The "## Scale" section of bench/RESULTS.md, from the JSON files scale runs wrote to `paths`
/// (one table, all their sizes, each row naming its run).
pub fn markdown(paths: &[PathBuf]) -> String {
    let heading = "## Scale\n\n";
    let how =
        "`yonder-bench scale --json --out bench/results/scale.json` (minutes to an hour, and \
               most of the machine's memory, so not part of `bench/regenerate`; docs/scale.md)";
    let mut runs = Vec::new();
    let mut unread = Vec::new();
    for path in paths {
        match run_info::section_result::<ScaleReport>("", "scale", path, how) {
            Ok(r) => runs.push((path, r)),
            Err(line) => unread.push(line),
        }
    }
    runs.sort_by(|a, b| a.1.date.cmp(&b.1.date));
    let mut s = String::from(heading);
    if runs.is_empty() {
        return s + &unread.concat();
    }
    s += &format!(
        "Rendered from the result files of separate runs of {how}, listed below with their exact \
         commands. One memory server on loopback (R = 1), the controlled workload under the agent \
         at {} % local memory: fill, then uniformly random one-word touches (the same count at \
         every size of a run), timed by the workload. Agent bytes per page beyond baseline: its \
         RSS at the end of the touches minus its RSS with a tiny workload in the same run, \
         divided by the difference in managed pages; vs previous size: the same against the \
         row above. Server bytes per stored page: its RSS growth since it started, divided by \
         the pages it stored (4096 of them are the page). p50 vs smallest: the remote-fault p50 \
         against the first row's. Agent CPU per fault: all its threads during the touches \
         (evictions included), divided by the remote faults. First GiB evicted: seconds from the \
         start of the fill.\n\n",
        runs[0].1.local_share_pct,
    );
    for (i, (path, r)) in runs.iter().enumerate() {
        s += &format!(
            "- run {}: {}, `{}`, on {}, commit {}, {}; {} touches per size; agent baseline \
             {:.1} MiB with a {} workload\n",
            i + 1,
            path.display(),
            r.command,
            r.date,
            r.commit,
            r.machine,
            r.touches,
            r.baseline.agent_rss_bytes as f64 / (1 << 20) as f64,
            size_name(r.baseline.size_bytes),
        );
        for n in notes(r) {
            s += &format!("  - {n}\n");
        }
    }
    for line in unread {
        s += &format!("- {}", line.trim_end());
        s += "\n";
    }
    let mut rows: Vec<(usize, &SizeRow)> = runs
        .iter()
        .enumerate()
        .flat_map(|(i, (_, r))| r.rows.iter().map(move |row| (i + 1, row)))
        .collect();
    rows.sort_by_key(|(_, row)| row.size_bytes);
    s += &format!("\n| run | {} |\n", HEADERS.join(" | "));
    s += &format!("|---:|---|{}\n", "---:|".repeat(HEADERS.len() - 1));
    let cells = table_rows(rows.iter().map(|(_, row)| *row));
    for ((run, _), c) in rows.iter().zip(cells) {
        s += &format!("| {run} | {} |\n", c.join(" | "));
    }
    s + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(size: u64, p50: u64) -> SizeRow {
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
        }
    }

    #[test]
    fn time_to_reach_interpolates() {
        let p = [(0.0, 0.0), (1.0, 100.0), (2.0, 300.0)];
        assert_eq!(time_to_reach(&p, 200.0), Some(1.5));
        assert_eq!(time_to_reach(&p, 0.0), Some(0.0));
        assert_eq!(time_to_reach(&p, 301.0), None);
        assert_eq!(time_to_reach(&[], 1.0), None);
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

    #[test]
    fn a_written_report_is_rendered() {
        let r = ScaleReport {
            command: "yonder-bench scale --json --out x.json".into(),
            date: "2026-01-01 00:00 UTC".into(),
            commit: "abc1234".into(),
            machine: "Linux 6.x, 2 CPUs".into(),
            memory_total_bytes: 24 * GIB,
            memory_available_bytes: 22 * GIB,
            local_share_pct: 25,
            servers: 1,
            replicas: 1,
            touches: 1000,
            baseline: row(4 << 20, 90_000),
            rows: vec![row(64 << 20, 100_000), row(8 * GIB, 110_000)],
            skipped: vec![Skipped {
                size_bytes: 16 * GIB,
                needed_bytes: 20 * GIB,
                available_bytes: 19 * GIB,
            }],
            failed: vec![],
            elapsed_s: 100.0,
        };
        let mut big = r.clone();
        big.command = "yonder-bench scale --sizes 16GiB".into();
        let mut row16 = row(16 * GIB, 120_000);
        row16.agent_rss_bytes = 240 << 20;
        big.rows = vec![row16];
        big.skipped.clear();
        let dir = tempfile::tempdir().unwrap();
        let (path, path16) = (
            dir.path().join("scale.json"),
            dir.path().join("scale-16.json"),
        );
        std::fs::write(&path, serde_json::to_string(&r).unwrap()).unwrap();
        std::fs::write(&path16, serde_json::to_string(&big).unwrap()).unwrap();
        let md = markdown(&[path, path16, dir.path().join("gone.json")]);
        for want in [
            "## Scale\n",
            "- run 1: ",
            "`yonder-bench scale --json --out x.json`",
            "commit abc1234",
            "  - SKIPPED 16 GiB",
            "- run 2: ",
            "`yonder-bench scale --sizes 16GiB`",
            "- No scale result: ",
            "| run | size | pages | agent RSS |",
            "| 1 | 64 MiB | 16384 | 40.0 MiB | 100.0 | — | 4200 | 700 | 100 µs | 300 µs | +0 % |",
            "| 1 | 8 GiB | 2097152 | 40.0 MiB | 100.0 | 0.0 |",
            "| +10 % |",
            "| 3.5 s |",
            // 16 GiB against 8 GiB: 200 MiB more over 2M more pages.
            "| 2 | 16 GiB | 4194304 | 240.0 MiB | 100.0 | 100.0 |",
        ] {
            assert!(md.contains(want), "{want:?} missing:\n{md}");
        }
        let t = text(&r);
        assert!(
            t.contains("SKIPPED 16 GiB") && t.contains("agent B/page"),
            "{t}"
        );
        let missing = markdown(&[dir.path().join("gone.json")]);
        assert!(
            missing.starts_with("## Scale\n\nNo scale result"),
            "{missing}"
        );
    }
}
