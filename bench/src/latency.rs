//! `yonder-bench latency`: remote-fault latency measured from the workload's side.
//!
//! For each access pattern and thread count, the controlled workload (`workload.rs`) runs under
//! `yonder-agent run` with a fraction of its memory local; the memory servers are started on
//! loopback (default: two, R = 2) or given with `--servers`. Each timed touch is classed as a
//! remote fault (page not resident before the touch) or a hit; the fill's first touches are the
//! zero-fill faults. The machine's floors (`floor.rs`) are measured in the same run, and the
//! remote-fault figures are printed as ratios to them.

use std::{
    io::{BufRead, BufReader, Read},
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use yonder_common::size::ByteSize;

use crate::{
    cluster::Cluster,
    floor::{self, Floors},
    pattern::Pattern,
    stats::{human_ns, median, Summary},
    workload::Report,
};

/// Arguments of `yonder-bench latency`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Memory servers to use (comma-separated HOST:PORT); default: start `--embedded` on loopback.
    #[arg(long, value_delimiter = ',')]
    pub servers: Vec<String>,
    /// Certificate directory for `--servers`.
    #[arg(long, default_value = "/etc/yonder/tls")]
    pub tls_dir: PathBuf,
    /// Client certificate (tenant) for `--servers`.
    #[arg(long, default_value = "client")]
    pub cert_name: String,
    /// Fixed datagram size for `--servers` (the embedded servers use 4400 on loopback).
    #[arg(long)]
    pub mtu: Option<u16>,
    /// Memory servers to start on loopback when no `--servers` are given.
    #[arg(long, default_value_t = 2)]
    pub embedded: usize,
    /// Copies of each evicted page.
    #[arg(long, default_value_t = 2)]
    pub replicas: usize,
    /// Memory the workload maps and fills.
    #[arg(long, default_value = "64MiB")]
    pub size: ByteSize,
    /// Local memory as a percentage of `--size`.
    #[arg(long, default_value_t = 25)]
    pub local_pct: u32,
    /// Patterns to run (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub patterns: Vec<Pattern>,
    /// Thread counts to run each pattern with.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub threads: Vec<usize>,
    /// Zipfian skew.
    #[arg(long, default_value_t = 0.99)]
    pub theta: f64,
    /// Stride of the strided pattern, in pages.
    #[arg(long, default_value_t = 16)]
    pub stride: usize,
    /// Timed touches per run (default: one per page).
    #[arg(long)]
    pub touches: Option<u64>,
    /// Runs of each configuration; figures are medians over runs.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Samples per floor measurement.
    #[arg(long, default_value_t = 20_000)]
    pub floor_samples: usize,
    /// Skip the floors (no ratios).
    #[arg(long)]
    pub no_floor: bool,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// One configuration's runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// Pattern.
    pub pattern: Pattern,
    /// Threads.
    pub threads: usize,
    /// Each run's workload report.
    pub runs: Vec<Report>,
    /// Each run's remote-fault p50 as the agent measured it (fault read to page installed), ns.
    pub agent_remote_p50_ns: Vec<u64>,
    /// Median over runs of the workload-side remote-fault figures.
    pub remote: Summary,
    /// Median over runs of the zero-fill figures.
    pub zero_fill: Summary,
    /// Median over runs of the hit figures.
    pub hit: Summary,
    /// Median remote faults per second.
    pub remote_faults_per_s: f64,
    /// Median touches per second.
    pub touches_per_s: f64,
}

/// Everything `latency` measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatencyReport {
    /// Memory mapped by the workload, bytes.
    pub size_bytes: u64,
    /// Local memory, bytes.
    pub local_bytes: u64,
    /// Memory servers.
    pub servers: usize,
    /// Replicas.
    pub replicas: usize,
    /// Runs per configuration.
    pub runs: usize,
    /// The machine's floors, when measured.
    pub floors: Option<Floors>,
    /// One row per pattern and thread count.
    pub rows: Vec<Row>,
}

/// Runs `yonder-bench latency`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let report = measure(&args, &mut |line| eprintln!("{line}"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", text(&report));
    }
    Ok(())
}

/// Measures as `args` says; `log` gets a line per finished run.
pub fn measure(args: &Args, log: &mut dyn FnMut(String)) -> anyhow::Result<LatencyReport> {
    anyhow::ensure!(
        (1..=100).contains(&args.local_pct),
        "--local-pct must be 1..=100"
    );
    let floors = if args.no_floor {
        None
    } else {
        log("measuring the floors...".into());
        Some(floor::measure(args.floor_samples)?)
    };
    let cluster = if args.servers.is_empty() {
        Cluster::start(args.embedded.max(1), "1GiB")?
    } else {
        Cluster::external(
            args.servers.clone(),
            &args.tls_dir,
            &args.cert_name,
            args.mtu,
        )
    };
    let local_bytes = args.size.0 * u64::from(args.local_pct) / 100;
    let patterns = if args.patterns.is_empty() {
        Pattern::ALL.to_vec()
    } else {
        args.patterns.clone()
    };
    let mut rows = Vec::new();
    for &pattern in &patterns {
        for &threads in &args.threads {
            let mut runs = Vec::new();
            let mut agent_p50 = Vec::new();
            for i in 0..args.runs.max(1) {
                let w = WorkloadRun {
                    size: args.size,
                    pattern,
                    threads,
                    theta: args.theta,
                    stride: args.stride,
                    touches: args.touches,
                };
                let (report, summary) =
                    run_under_agent(&cluster, local_bytes, args.replicas, &w, &mut |_, _, _| {})?;
                log(format!(
                    "{} x{threads} run {}: {} remote faults, p50 {}, p99 {}",
                    pattern.name(),
                    i + 1,
                    report.remote.count,
                    human_ns(report.remote.p50_ns as f64),
                    human_ns(report.remote.p99_ns as f64)
                ));
                agent_p50.push(summary.remote_p50_ns);
                runs.push(report);
            }
            rows.push(row(pattern, threads, runs, agent_p50));
        }
    }
    Ok(LatencyReport {
        size_bytes: args.size.0,
        local_bytes,
        servers: cluster.addrs().len(),
        replicas: args.replicas.min(cluster.addrs().len()),
        runs: args.runs.max(1),
        floors,
        rows,
    })
}

fn median_summary(runs: &[Report], pick: impl Fn(&Report) -> Summary) -> Summary {
    let field = |f: &dyn Fn(&Summary) -> f64| -> f64 {
        let mut v: Vec<f64> = runs.iter().map(|r| f(&pick(r))).collect();
        median(&mut v)
    };
    Summary {
        count: field(&|s| s.count as f64) as u64,
        mean_ns: field(&|s| s.mean_ns),
        p50_ns: field(&|s| s.p50_ns as f64) as u64,
        p90_ns: field(&|s| s.p90_ns as f64) as u64,
        p99_ns: field(&|s| s.p99_ns as f64) as u64,
        p999_ns: field(&|s| s.p999_ns as f64) as u64,
        max_ns: field(&|s| s.max_ns as f64) as u64,
    }
}

fn row(pattern: Pattern, threads: usize, runs: Vec<Report>, agent: Vec<u64>) -> Row {
    let med = |f: &dyn Fn(&Report) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        median(&mut v)
    };
    Row {
        pattern,
        threads,
        remote: median_summary(&runs, |r| r.remote),
        zero_fill: median_summary(&runs, |r| r.zero_fill),
        hit: median_summary(&runs, |r| r.hit),
        remote_faults_per_s: med(&|r| r.remote_faults_per_s),
        touches_per_s: med(&|r| r.touches_per_s),
        agent_remote_p50_ns: agent,
        runs,
    }
}

/// The tables `latency` prints.
pub fn text(r: &LatencyReport) -> String {
    let mut s = format!(
        "Remote-fault latency measured by the workload: {} mapped, {} local ({} %), {} memory server(s), R = {}, median of {} run(s)\n\n",
        ByteSize(r.size_bytes),
        ByteSize(r.local_bytes),
        r.local_bytes * 100 / r.size_bytes.max(1),
        r.servers,
        r.replicas,
        r.runs,
    );
    s += "pattern     thr  remote faults      p50      p90      p99    p99.9      max  faults/s | zero-fill p50    p99 | hit p50\n";
    for row in &r.rows {
        let f = |ns: u64| human_ns(ns as f64);
        s += &format!(
            "{:<10} {:>4} {:>14} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9.0} | {:>13} {:>6} | {:>7}\n",
            row.pattern.name(),
            row.threads,
            row.remote.count,
            f(row.remote.p50_ns),
            f(row.remote.p90_ns),
            f(row.remote.p99_ns),
            f(row.remote.p999_ns),
            f(row.remote.max_ns),
            row.remote_faults_per_s,
            f(row.zero_fill.p50_ns),
            f(row.zero_fill.p99_ns),
            f(row.hit.p50_ns),
        );
    }
    if let Some(floors) = &r.floors {
        s += "\nThis machine's floors (same run):\n";
        s += &floor::table(floors);
        s += "\nRemote-fault p50 as a multiple of each floor's p50 (threads left to the scheduler):\n";
        s += "pattern     thr   x uffd local   x UDP 4 KiB   x QUIC 4 KiB   agent-side p50\n";
        for row in &r.rows {
            let x = |fl: floor::Floor| row.remote.p50_ns as f64 / fl.unpinned.p50_ns.max(1) as f64;
            let mut agent: Vec<f64> = row.agent_remote_p50_ns.iter().map(|v| *v as f64).collect();
            s += &format!(
                "{:<10} {:>4} {:>14.1} {:>13.1} {:>14.1} {:>16}\n",
                row.pattern.name(),
                row.threads,
                x(floors.uffd_local),
                x(floors.udp_4k),
                x(floors.quic_4k),
                human_ns(median(&mut agent)),
            );
        }
    }
    s
}

/// One run of the controlled workload.
pub struct WorkloadRun {
    /// Memory mapped.
    pub size: ByteSize,
    /// Pattern.
    pub pattern: Pattern,
    /// Threads.
    pub threads: usize,
    /// Zipfian skew.
    pub theta: f64,
    /// Stride in pages.
    pub stride: usize,
    /// Timed touches.
    pub touches: Option<u64>,
}

impl WorkloadRun {
    /// `yonder-bench workload` arguments (after the executable).
    pub fn args(&self) -> Vec<String> {
        let mut a = vec![
            "workload".to_string(),
            "--size".into(),
            format!("{}KiB", self.size.0 / 1024),
            "--pattern".into(),
            self.pattern.name().into(),
            "--threads".into(),
            self.threads.to_string(),
            "--theta".into(),
            self.theta.to_string(),
            "--stride".into(),
            self.stride.to_string(),
        ];
        if let Some(t) = self.touches {
            a.extend(["--touches".into(), t.to_string()]);
        }
        a
    }
}

/// What the agent's own summary said.
#[derive(Debug, Default, Clone)]
pub struct AgentSummary {
    /// Remote-fault p50 as the agent measures it, ns.
    pub remote_p50_ns: u64,
}

/// Runs `w` under `yonder-agent run` on `cluster` with `local_bytes` of local memory; calls
/// `progress(phase, done, total)` as the workload reports. Fails with the agent's output if the
/// workload fails or reads a wrong word.
pub fn run_under_agent(
    cluster: &Cluster,
    local_bytes: u64,
    replicas: usize,
    w: &WorkloadRun,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> anyhow::Result<(Report, AgentSummary)> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(yonder_tests::bin("yonder-agent"))
        .args(cluster.agent_args(&format!("{}KiB", local_bytes / 1024), replicas))
        .arg(&exe)
        .args(w.args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting yonder-agent")?;
    let mut stderr = child.stderr.take().context("stderr")?;
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut result = None;
    let stdout = child.stdout.take().context("stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if let Some(json) = line.strip_prefix("result ") {
            result = Some(serde_json::from_str::<Report>(json)?);
        } else if let Some(p) = line.strip_prefix("progress ") {
            let f: Vec<&str> = p.split_whitespace().collect();
            if let [phase, done, total] = f[..] {
                progress(phase, done.parse().unwrap_or(0), total.parse().unwrap_or(0));
            }
        }
    }
    let status = child.wait()?;
    let err = err_reader.join().unwrap_or_default();
    if !status.success() {
        bail!("the workload failed under the agent ({status}):\n{err}");
    }
    let report = result.with_context(|| format!("the workload printed no result:\n{err}"))?;
    let summary = AgentSummary {
        remote_p50_ns: err
            .lines()
            .find_map(|l| {
                let rest = l.split(" remote (p50 ").nth(1)?;
                rest.split_whitespace().next()?.parse::<f64>().ok()
            })
            .map(|us| (us * 1000.0) as u64)
            .unwrap_or(0),
    };
    Ok((report, summary))
}
