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
    /// Also print where a remote fault's time goes: the agent's stages (fault read → request
    /// sent → reply read → page installed), the rest (fault delivery and the workload's wake-up)
    /// and the agent thread's CPU per remote fault.
    #[arg(long)]
    pub breakdown: bool,
    /// Variants run side by side, runs interleaved: `NAME=ARGS` where ARGS are extra
    /// `yonder-agent run` flags, and flags prefixed `server:` go to the memory servers started for
    /// this variant, e.g. `--variant park=--spin-us=0 --variant spin=--spin-us=200` or
    /// `--variant both="--spin-us=200 server:--spin-us=200"`. Default: one variant, no extra flags.
    #[arg(long = "variant")]
    pub variants: Vec<String>,
}

/// One variant: a name, extra flags for `yonder-agent run` and for its memory servers.
#[derive(Debug, Clone)]
struct Variant {
    name: String,
    args: Vec<String>,
    server_args: Vec<String>,
}

fn variants(specs: &[String]) -> anyhow::Result<Vec<Variant>> {
    if specs.is_empty() {
        return Ok(vec![Variant {
            name: String::new(),
            args: Vec::new(),
            server_args: Vec::new(),
        }]);
    }
    specs
        .iter()
        .map(|v| {
            let (name, args) = v
                .split_once('=')
                .with_context(|| format!("--variant {v}: expected NAME=ARGS"))?;
            let (server, agent): (Vec<&str>, Vec<&str>) = args
                .split_whitespace()
                .partition(|a| a.starts_with("server:"));
            Ok(Variant {
                name: name.to_string(),
                args: agent.into_iter().map(String::from).collect(),
                server_args: server
                    .into_iter()
                    .map(|a| a.trim_start_matches("server:").to_string())
                    .collect(),
            })
        })
        .collect()
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
    /// The agent variant (`--variant`), empty for the default.
    #[serde(default)]
    pub variant: String,
    /// Each run's remote-fault p50 as the agent measured it (fault read to page installed), ns.
    pub agent_remote_p50_ns: Vec<u64>,
    /// Each run's agent-side stage p50s (send, wire, install), ns.
    #[serde(default)]
    pub agent_stages_p50_ns: Vec<[u64; 3]>,
    /// Each run's agent-thread CPU time per remote fault, µs.
    #[serde(default)]
    pub agent_cpu_us_per_fault: Vec<f64>,
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
        if args.breakdown {
            print!("{}", breakdown_text(&report));
        }
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
    let variants = variants(&args.variants)?;
    // One cluster per variant when any variant has server flags, else one for all.
    let own_clusters = variants.iter().any(|v| !v.server_args.is_empty());
    anyhow::ensure!(
        !own_clusters || args.servers.is_empty(),
        "server: flags in --variant need the embedded servers, not --servers"
    );
    let mut clusters = Vec::new();
    for v in variants
        .iter()
        .take(if own_clusters { variants.len() } else { 1 })
    {
        clusters.push(if args.servers.is_empty() {
            Cluster::start_with(args.embedded.max(1), "1GiB", &v.server_args)?
        } else {
            Cluster::external(
                args.servers.clone(),
                &args.tls_dir,
                &args.cert_name,
                args.mtu,
            )
        });
    }
    let cluster = &clusters[0];
    let local_bytes = args.size.0 * u64::from(args.local_pct) / 100;
    let patterns = if args.patterns.is_empty() {
        Pattern::ALL.to_vec()
    } else {
        args.patterns.clone()
    };
    let mut rows = Vec::new();
    for &pattern in &patterns {
        for &threads in &args.threads {
            let mut runs: Vec<Vec<(Report, AgentSummary)>> = vec![Vec::new(); variants.len()];
            for i in 0..args.runs.max(1) {
                // Variants take turns, so that the machine's drift hits them alike.
                for (v, variant) in variants.iter().enumerate() {
                    let w = WorkloadRun {
                        size: args.size,
                        pattern,
                        threads,
                        theta: args.theta,
                        stride: args.stride,
                        touches: args.touches,
                        settle_ms: None,
                    };
                    let (report, summary) = run_under_agent(
                        &clusters[if own_clusters { v } else { 0 }],
                        local_bytes,
                        args.replicas,
                        &variant.args,
                        &w,
                        &mut |_| {},
                    )?;
                    log(format!(
                        "{}{} x{threads} run {}: {} remote faults, p50 {}, p99 {}; agent p50 {}, {:.1} µs CPU per fault",
                        pattern.name(),
                        if variant.name.is_empty() { String::new() } else { format!(" [{}]", variant.name) },
                        i + 1,
                        report.remote.count,
                        human_ns(report.remote.p50_ns as f64),
                        human_ns(report.remote.p99_ns as f64),
                        human_ns(summary.remote_p50_ns as f64),
                        summary.cpu_us_per_fault,
                    ));
                    runs[v].push((report, summary));
                }
            }
            for (variant, runs) in variants.iter().zip(runs) {
                rows.push(row(pattern, threads, &variant.name, runs));
            }
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

fn row(pattern: Pattern, threads: usize, variant: &str, runs: Vec<(Report, AgentSummary)>) -> Row {
    let (runs, agent): (Vec<Report>, Vec<AgentSummary>) = runs.into_iter().unzip();
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
        variant: variant.to_string(),
        agent_remote_p50_ns: agent.iter().map(|a| a.remote_p50_ns).collect(),
        agent_stages_p50_ns: agent.iter().map(|a| a.stages_p50_ns).collect(),
        agent_cpu_us_per_fault: agent.iter().map(|a| a.cpu_us_per_fault).collect(),
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
            row.label(),
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
                row.label(),
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

/// Where a remote fault's time goes (medians over runs of each run's p50).
pub fn breakdown_text(r: &LatencyReport) -> String {
    let mut s = String::from(
        "\nWhere a remote fault's time goes (p50s, median over runs): agent stages (fault read → request handed to QUIC → reply read → page installed), and the rest of what the workload measured (fault delivery to the agent, the workload's wake-up); agent thread CPU per remote fault (evictions included)\n",
    );
    s += "pattern     thr  workload p50  agent p50     send     wire  install  delivery+wake  CPU/fault\n";
    for row in &r.rows {
        let med_stage = |k: usize| {
            let mut v: Vec<f64> = row
                .agent_stages_p50_ns
                .iter()
                .map(|a| a[k] as f64)
                .collect();
            median(&mut v)
        };
        let mut agent: Vec<f64> = row.agent_remote_p50_ns.iter().map(|v| *v as f64).collect();
        let agent = median(&mut agent);
        let mut cpu = row.agent_cpu_us_per_fault.clone();
        s += &format!(
            "{:<10} {:>4} {:>13} {:>10} {:>8} {:>8} {:>8} {:>14} {:>8.1} µs\n",
            row.label(),
            row.threads,
            human_ns(row.remote.p50_ns as f64),
            human_ns(agent),
            human_ns(med_stage(0)),
            human_ns(med_stage(1)),
            human_ns(med_stage(2)),
            human_ns((row.remote.p50_ns as f64 - agent).max(0.0)),
            median(&mut cpu),
        );
    }
    s
}

impl Row {
    /// The pattern's name, with the variant's when there is one.
    pub fn label(&self) -> String {
        if self.variant.is_empty() {
            self.pattern.name().to_string()
        } else {
            format!("{}/{}", self.pattern.name(), self.variant)
        }
    }
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
    /// Longest wait for the resident set to settle after the fill, ms (default: the workload's).
    pub settle_ms: Option<u64>,
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
        if let Some(ms) = self.settle_ms {
            a.extend(["--settle-ms".into(), ms.to_string()]);
        }
        a
    }
}

/// What the agent's own summary said.
#[derive(Debug, Default, Clone)]
pub struct AgentSummary {
    /// Remote-fault p50 as the agent measures it, ns.
    pub remote_p50_ns: u64,
    /// p50 of each agent-side stage (send, wire, install), ns.
    pub stages_p50_ns: [u64; 3],
    /// Agent thread CPU time per remote fault, µs.
    pub cpu_us_per_fault: f64,
    /// Pages re-replicated after memory-server failures (0 when the summary has no such line).
    pub repaired: u64,
    /// Pages still short of copies at the end.
    pub repair_deficit: u64,
}

impl AgentSummary {
    /// Reads the agent's summary lines.
    pub fn parse(err: &str) -> Self {
        let remote_p50_ns = err
            .lines()
            .find_map(|l| {
                let rest = l.split(" remote (p50 ").nth(1)?;
                rest.split_whitespace().next()?.parse::<f64>().ok()
            })
            .map(|us| (us * 1000.0) as u64)
            .unwrap_or(0);
        let mut stages_p50_ns = [0; 3];
        let mut cpu_us_per_fault = 0.0;
        if let Some(l) = err
            .lines()
            .find(|l| l.starts_with("yonder: remote-fault stages"))
        {
            for (k, name) in ["send", "wire", "install"].iter().enumerate() {
                let p50 = l
                    .split(&format!(" {name} "))
                    .nth(1)
                    .and_then(|r| r.split('/').next())
                    .and_then(|v| v.parse::<f64>().ok());
                stages_p50_ns[k] = p50.map_or(0, |us| (us * 1000.0) as u64);
            }
            cpu_us_per_fault = l
                .split("agent thread CPU ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
        }
        // "yonder: re-replicated N pages after memory-server failures (M still short of copies)"
        let (repaired, repair_deficit) = err
            .lines()
            .find_map(|l| {
                let rest = l.strip_prefix("yonder: re-replicated ")?;
                let n = rest.split_whitespace().next()?.parse().ok()?;
                let m = rest
                    .split_once('(')?
                    .1
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()?;
                Some((n, m))
            })
            .unwrap_or((0, 0));
        Self {
            remote_p50_ns,
            stages_p50_ns,
            cpu_us_per_fault,
            repaired,
            repair_deficit,
        }
    }
}

/// What [`run_under_agent`] passes on while the workload runs.
pub enum Event<'a> {
    /// `yonder-agent` was started, with this process id.
    Started(u32),
    /// A `progress PHASE DONE TOTAL` line of the workload (`fill`, then `touch`).
    Progress {
        /// `fill` or `touch`.
        phase: &'a str,
        /// Pages filled or touches made so far.
        done: u64,
        /// Of how many.
        total: u64,
    },
}

/// Runs `w` under `yonder-agent run` on `cluster` with `local_bytes` of local memory; calls
/// `on_event` when the agent starts and as the workload reports progress. Fails with the agent's
/// output if the workload fails or reads a wrong word.
pub fn run_under_agent(
    cluster: &Cluster,
    local_bytes: u64,
    replicas: usize,
    extra: &[String],
    w: &WorkloadRun,
    on_event: &mut dyn FnMut(Event),
) -> anyhow::Result<(Report, AgentSummary)> {
    let exe = std::env::current_exe()?;
    let mut args = cluster.agent_args(&format!("{}KiB", local_bytes / 1024), replicas);
    // Before the `--` that ends the agent's flags.
    let at = args.len() - 1;
    args.splice(at..at, extra.iter().cloned());
    let mut child = Command::new(yonder_tests::bin("yonder-agent"))
        .args(&args)
        .arg(&exe)
        .args(w.args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting yonder-agent")?;
    // Stops the agent (and so its workload) if this returns early with an error.
    let _agent = yonder_tests::KillOnDrop::new(child.id());
    on_event(Event::Started(child.id()));
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
                on_event(Event::Progress {
                    phase,
                    done: done.parse().unwrap_or(0),
                    total: total.parse().unwrap_or(0),
                });
            }
        }
    }
    let status = child.wait()?;
    let err = err_reader.join().unwrap_or_default();
    if !status.success() {
        bail!("the workload failed under the agent ({status}):\n{err}");
    }
    let report = result.with_context(|| format!("the workload printed no result:\n{err}"))?;
    Ok((report, AgentSummary::parse(&err)))
}
