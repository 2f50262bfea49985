//! Memory server benchmark: pages/s read and written over loopback QUIC with 1 and 32 requests in
//! flight, the server's CPU time per page, and the server's resident memory per stored page.
//!
//! `--variant` runs several server binaries (or one binary with different flags) side by side in
//! one invocation, interleaving their runs so that load from elsewhere on the machine hits them
//! alike; `--runs` repeats every measurement and reports medians.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Context;
use hdrhistogram::Histogram;
use rand::{Rng, RngCore, SeedableRng};
use serde::Serialize;
use yonder_agent::remote::{DrivenClient, ServerConn, Transport};
use yonder_common::{
    client::Requests,
    protocol::{PageData, ReadItem, ReadResult, WriteItem, WriteResult, MAX_BATCH_PAGES},
    PageKey, PAGE_SIZE,
};
use yonder_tests::{Certs, Process, Server};

use crate::stats::median;

/// Flags of `yonder-bench server`: the measurement plus how to compare server builds.
#[derive(clap::Args)]
pub struct Cli {
    /// What to measure.
    #[command(flatten)]
    pub args: Args,
    /// Which servers, how often.
    #[command(flatten)]
    pub compare: CompareArgs,
}

/// Side-by-side options of `yonder-bench server`.
#[derive(clap::Args, Clone, Default)]
pub struct CompareArgs {
    /// A server to measure, `LABEL=PATH [FLAG ...]` (repeatable): a `yonder-server` binary and extra
    /// flags of its own. Several variants are measured in turn within each run. Default: the
    /// `yonder-server` next to this benchmark.
    #[arg(long = "variant")]
    pub variants: Vec<String>,
    /// Runs of every measurement; figures are medians over the runs.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Operations to measure (comma-separated: write, read).
    #[arg(long, value_delimiter = ',', default_values_t = ["write".to_string(), "read".to_string()])]
    pub ops: Vec<String>,
}

/// A server build (and flags) under test.
#[derive(Clone, Debug)]
struct Variant {
    label: String,
    bin: PathBuf,
    flags: Vec<String>,
}

impl Variant {
    fn parse(spec: &str) -> anyhow::Result<Self> {
        let (label, rest) = spec
            .split_once('=')
            .with_context(|| format!("variant {spec:?} is not LABEL=PATH [FLAG ...]"))?;
        let mut words = rest.split_whitespace();
        let bin = words.next().context("variant without a binary")?;
        Ok(Self {
            label: label.to_string(),
            bin: PathBuf::from(bin),
            flags: words.map(str::to_string).collect(),
        })
    }

    fn default_build() -> Self {
        Self {
            label: "yonder-server".into(),
            bin: yonder_tests::bin("yonder-server"),
            flags: Vec::new(),
        }
    }

    fn start(&self, capacity: &str, mtu: Option<u16>) -> anyhow::Result<Server> {
        let certs = Certs::new(&["bench"])?;
        let mut cmd = Command::new(&self.bin);
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            "--capacity",
            capacity,
            "--tls-dir",
        ])
        .arg(certs.dir())
        .args(&self.flags);
        if let Some(mtu) = mtu {
            cmd.arg("--mtu").arg(mtu.to_string());
        }
        let (process, addr) = Process::start(cmd, "yonder-server", "listening on", certs.dir())?;
        Ok(Server {
            process,
            addr: addr.parse()?,
            certs,
            mtu,
        })
    }
}

/// Options of `yonder-bench server`.
#[derive(clap::Args)]
pub struct Args {
    /// Seconds per throughput measurement.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Requests in flight to measure (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 32])]
    pub inflight: Vec<usize>,
    /// Pages per request to measure (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 16])]
    pub batch: Vec<usize>,
    /// Pages to store for the memory measurement.
    #[arg(long, default_value_t = 1_000_000)]
    pub memory_pages: u64,
    /// Worker threads of the client runtime (the server uses its own default; quinn's client
    /// only).
    #[arg(long, default_value_t = 1)]
    pub client_threads: usize,
    /// The benchmark's QUIC client: quinn's, or the agent's own (`driven`, quinn-proto driven by
    /// one thread), which leaves more of a small machine's CPU to the server.
    #[arg(long, value_enum, default_value_t = Transport::Quinn)]
    pub client: Transport,
    /// Fixed datagram size on both ends (loopback allows one page per packet with 4400);
    /// default: path-MTU discovery, as on an unknown network.
    #[arg(long)]
    pub mtu: Option<u16>,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// One throughput measurement (with `--runs`, the median of each figure over the runs).
#[derive(Serialize, Clone)]
pub struct ThroughputRow {
    /// Label of the server variant measured.
    pub server: String,
    /// "read" or "write".
    pub op: &'static str,
    /// Requests kept in flight.
    pub inflight: usize,
    /// Pages in each request.
    pub pages_per_request: usize,
    /// Pages per second.
    pub pages_per_sec: f64,
    /// Request latency p50, µs.
    pub p50_us: f64,
    /// Request latency p99, µs.
    pub p99_us: f64,
    /// CPU time (user + system, all threads) of the server process per second of the run.
    pub server_cpu_per_sec: f64,
    /// Server CPU time per page served, µs.
    pub server_cpu_us_per_page: f64,
    /// Pages/s of every run, in run order.
    pub runs_pages_per_sec: Vec<f64>,
}

/// One memory-per-page measurement.
#[derive(Serialize, Clone)]
pub struct MemoryRow {
    /// "data" or "zero" pages.
    pub kind: &'static str,
    /// Pages stored.
    pub pages: u64,
    /// Server RSS before, bytes.
    pub rss_before_bytes: u64,
    /// Server RSS after, bytes.
    pub rss_after_bytes: u64,
    /// RSS growth per stored page, bytes.
    pub bytes_per_page: f64,
}

/// Everything `server` measured.
#[derive(Serialize, Clone)]
pub struct Report {
    /// Throughput rows.
    pub throughput: Vec<ThroughputRow>,
    /// Memory rows.
    pub memory: Vec<MemoryRow>,
}

/// Pages preloaded for the read measurement (and overwritten by the write measurement).
const WORKING_SET: u64 = 65_536;

/// Runs `yonder-bench server` and prints its tables or JSON.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let args = &cli.args;
    let report = measure_with(args, &cli.compare)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "| server | op | requests in flight | pages per request | pages/s | request p50 µs | p99 µs | server CPU s/s | server CPU µs/page |"
        );
        println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
        for r in &report.throughput {
            println!(
                "| {} | {} | {} | {} | {:.0} | {:.1} | {:.1} | {:.2} | {:.2} |",
                r.server,
                r.op,
                r.inflight,
                r.pages_per_request,
                r.pages_per_sec,
                r.p50_us,
                r.p99_us,
                r.server_cpu_per_sec,
                r.server_cpu_us_per_page
            );
        }
        if cli.compare.runs > 1 {
            println!();
            println!("pages/s of each run:");
            for r in &report.throughput {
                let runs: Vec<String> = r
                    .runs_pages_per_sec
                    .iter()
                    .map(|v| format!("{v:.0}"))
                    .collect();
                println!(
                    "  {} {} x{} @{}: {}",
                    r.server,
                    r.op,
                    r.pages_per_request,
                    r.inflight,
                    runs.join(" ")
                );
            }
        }
        if report.memory.is_empty() {
            return Ok(());
        }
        println!();
        println!("| pages | count | server RSS before | after | bytes per page |");
        println!("|---|---:|---:|---:|---:|");
        for m in &report.memory {
            println!(
                "| {} | {} | {} MiB | {} MiB | {:.1} |",
                m.kind,
                m.pages,
                m.rss_before_bytes >> 20,
                m.rss_after_bytes >> 20,
                m.bytes_per_page
            );
        }
    }
    Ok(())
}

/// Measures as `args` says, one run of the default server build.
pub fn measure(args: &Args) -> anyhow::Result<Report> {
    measure_with(args, &CompareArgs::default())
}

/// Measures as `args` says, for every variant and run of `compare`.
pub fn measure_with(args: &Args, compare: &CompareArgs) -> anyhow::Result<Report> {
    let rt = if args.client_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.client_threads)
            .enable_all()
            .build()?
    };
    // Inside a LocalSet: the driven client's tasks are local to this thread.
    tokio::task::LocalSet::new().block_on(&rt, bench(args, compare))
}

fn random_page(rng: &mut impl RngCore) -> Vec<u8> {
    let mut page = vec![0; PAGE_SIZE];
    rng.fill_bytes(&mut page);
    page
}

async fn bench(args: &Args, compare: &CompareArgs) -> anyhow::Result<Report> {
    let variants = if compare.variants.is_empty() {
        vec![Variant::default_build()]
    } else {
        compare
            .variants
            .iter()
            .map(|v| Variant::parse(v))
            .collect::<anyhow::Result<_>>()?
    };
    let ops: Vec<&'static str> = if compare.ops.is_empty() {
        vec!["write", "read"]
    } else {
        compare
            .ops
            .iter()
            .map(|op| match op.as_str() {
                "write" => Ok("write"),
                "read" => Ok("read"),
                other => Err(anyhow::anyhow!("unknown op {other:?}: write or read")),
            })
            .collect::<anyhow::Result<_>>()?
    };
    let mut servers = Vec::new();
    for v in &variants {
        let server = v.start("8GiB", args.mtu)?;
        let client = match args.client {
            Transport::Quinn => ServerConn::Quinn(server.connect("bench").await?),
            Transport::Driven => {
                let files = yonder_common::tls::TlsFiles::in_dir(server.certs.dir(), "bench");
                let config = yonder_common::tls::client_config(&files, server.mtu)?;
                let c = DrivenClient::connect(config, server.addr, "localhost", "yonder-bench");
                ServerConn::Driven(c.await?)
            }
        };
        preload(&client).await?;
        servers.push((v, server, client));
    }
    // samples[cell][variant] = one row per run; runs of the variants interleave.
    let cells: Vec<(usize, usize, &'static str)> = args
        .batch
        .iter()
        .flat_map(|&b| {
            let ops = &ops;
            args.inflight
                .iter()
                .flat_map(move |&i| ops.iter().map(move |&op| (b, i, op)))
        })
        .collect();
    let mut samples = vec![vec![Vec::new(); servers.len()]; cells.len()];
    let dur = Duration::from_secs(args.seconds);
    for run in 0..compare.runs.max(1) {
        for (c, &(batch, inflight, op)) in cells.iter().enumerate() {
            // Alternate the order so that neither variant always runs right after the other.
            let mut order: Vec<usize> = (0..servers.len()).collect();
            if run % 2 == 1 {
                order.reverse();
            }
            for s in order {
                let (v, server, client) = &servers[s];
                tracing::info!("run {run}: {} {op} x{batch} @{inflight}", v.label);
                let mut row =
                    measure_throughput(client, server.process.pid(), op, inflight, batch, dur)
                        .await
                        .with_context(|| format!("{} {op} x{batch} @{inflight}", v.label))?;
                row.server = v.label.clone();
                samples[c][s].push(row);
            }
        }
    }
    let mut throughput = Vec::new();
    for cell in samples {
        for rows in cell {
            throughput.push(median_row(&rows));
        }
    }
    drop(servers);
    let memory = if args.memory_pages == 0 {
        Vec::new()
    } else {
        vec![
            memory(args.memory_pages, false, args.mtu).await?,
            memory(args.memory_pages, true, args.mtu).await?,
        ]
    };
    Ok(Report { throughput, memory })
}

/// Writes the working set the read measurement reads.
async fn preload(client: &impl Requests) -> anyhow::Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for start in (0..WORKING_SET).step_by(MAX_BATCH_PAGES) {
        let pages = (start..start + MAX_BATCH_PAGES as u64)
            .map(|slot| WriteItem {
                key: PageKey::new(0, slot),
                version: 1,
                data: PageData::Bytes(random_page(&mut rng)),
            })
            .collect();
        client.write(pages).await?;
    }
    Ok(())
}

/// The median of each figure over `rows` (runs of one measurement).
fn median_row(rows: &[ThroughputRow]) -> ThroughputRow {
    let med = |f: &dyn Fn(&ThroughputRow) -> f64| {
        let mut v: Vec<f64> = rows.iter().map(f).collect();
        median(&mut v)
    };
    ThroughputRow {
        pages_per_sec: med(&|r| r.pages_per_sec),
        p50_us: med(&|r| r.p50_us),
        p99_us: med(&|r| r.p99_us),
        server_cpu_per_sec: med(&|r| r.server_cpu_per_sec),
        server_cpu_us_per_page: med(&|r| r.server_cpu_us_per_page),
        runs_pages_per_sec: rows.iter().map(|r| r.pages_per_sec).collect(),
        ..rows[0].clone()
    }
}

/// CPU time (user + system, all threads) a process has used so far, seconds.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; the fields after its closing parenthesis do not.
    let rest = &stat[stat.rfind(')').context("malformed /proc/PID/stat")? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: u64 = fields
        .get(11..13)
        .context("short /proc/PID/stat")?
        .iter()
        .map(|f| f.parse::<u64>())
        .sum::<Result<_, _>>()?;
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Ok(ticks as f64 / hz.max(1) as f64)
}

async fn measure_throughput(
    client: &ServerConn,
    server_pid: u32,
    op: &'static str,
    inflight: usize,
    batch: usize,
    dur: Duration,
) -> anyhow::Result<ThroughputRow> {
    anyhow::ensure!(
        (1..=MAX_BATCH_PAGES).contains(&batch),
        "batch must be 1..={MAX_BATCH_PAGES}"
    );
    let cpu_before = cpu_seconds(server_pid)?;
    let started = Instant::now();
    let deadline = started + dur;
    let mut tasks = Vec::new();
    for t in 0..inflight {
        let task = Requester {
            t: t as u64,
            op,
            inflight,
            batch,
            deadline,
        };
        tasks.push(match client {
            // quinn's client may run on several worker threads (--client-threads).
            ServerConn::Quinn(c) => tokio::spawn(task.run(c.clone())),
            ServerConn::Driven(d) => tokio::task::spawn_local(task.run(d.clone())),
        });
    }
    let mut total = Histogram::<u64>::new(3)?;
    for t in tasks {
        total.add(t.await??)?;
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(server_pid)? - cpu_before;
    let pages = total.len() * batch as u64;
    let pages_per_sec = pages as f64 / secs;
    Ok(ThroughputRow {
        server: String::new(),
        op,
        inflight,
        pages_per_request: batch,
        pages_per_sec,
        p50_us: total.value_at_quantile(0.5) as f64 / 1e3,
        p99_us: total.value_at_quantile(0.99) as f64 / 1e3,
        server_cpu_per_sec: cpu / secs,
        server_cpu_us_per_page: cpu * 1e6 / pages.max(1) as f64,
        runs_pages_per_sec: vec![pages_per_sec],
    })
}

/// One of the requests kept in flight: asks again as soon as its answer is in, until `deadline`.
struct Requester {
    t: u64,
    op: &'static str,
    inflight: usize,
    batch: usize,
    deadline: Instant,
}

impl Requester {
    /// Reads or writes runs of random pages; the latency of each request.
    async fn run(self, client: impl Requests) -> anyhow::Result<Histogram<u64>> {
        let Self {
            t,
            op,
            inflight,
            batch,
            deadline,
        } = self;
        let mut rng = rand::rngs::StdRng::seed_from_u64(100 + t);
        let mut hist = Histogram::<u64>::new(3).expect("histogram");
        let page = PageData::Bytes(random_page(&mut rng));
        let mut version = 2 + t;
        while Instant::now() < deadline {
            // A run of neighbouring pages, as the agent's batches are.
            let first = rng.random_range(0..WORKING_SET - batch as u64);
            let keys = (first..first + batch as u64).map(|slot| PageKey::new(0, slot));
            let t0 = Instant::now();
            if op == "read" {
                let items = keys.map(|key| ReadItem { key, version: 0 }).collect();
                let r = client.read(items).await?;
                anyhow::ensure!(
                    r.iter().all(|r| matches!(r, ReadResult::Found { .. })),
                    "page missing near {first}"
                );
            } else {
                version += inflight as u64;
                let items = keys
                    .map(|key| WriteItem {
                        key,
                        version,
                        data: page.clone(),
                    })
                    .collect();
                let r = client.write(items).await?;
                anyhow::ensure!(
                    r.iter()
                        .all(|r| matches!(r, WriteResult::Stored | WriteResult::Superseded { .. })),
                    "write refused near {first}"
                );
            }
            hist.record(t0.elapsed().as_nanos() as u64)?;
        }
        Ok(hist)
    }
}

fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    crate::procfs::status_bytes(pid, "VmRSS").context("VmRSS missing")
}

async fn memory(pages: u64, zero: bool, mtu: Option<u16>) -> anyhow::Result<MemoryRow> {
    let server = Server::start_with_mtu("16GiB", &["bench"], &[], mtu)?;
    let client = server.connect("bench").await?;
    let before = rss_bytes(server.process.pid())?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(if zero { 2 } else { 3 });
    let mut written = 0;
    while written < pages {
        let n = (pages - written).min(MAX_BATCH_PAGES as u64);
        let batch = (0..n)
            .map(|_| WriteItem {
                // Random keys over many spaces: the worst case for the index.
                key: PageKey::new(rng.random_range(0..1024), rng.random()),
                version: 1,
                data: if zero {
                    PageData::Zero
                } else {
                    PageData::Bytes(random_page(&mut rng))
                },
            })
            .collect();
        let results = client.write(batch).await?;
        anyhow::ensure!(
            results.iter().all(|r| *r == WriteResult::Stored),
            "write refused"
        );
        written += n;
    }
    let stats = client.stats().await?;
    let stored = if zero {
        stats.zero_pages
    } else {
        stats.data_pages
    };
    anyhow::ensure!(
        stored == pages,
        "server holds {stored} pages, expected {pages}"
    );
    let after = rss_bytes(server.process.pid())?;
    Ok(MemoryRow {
        kind: if zero { "zero" } else { "data" },
        pages,
        rss_before_bytes: before,
        rss_after_bytes: after,
        bytes_per_page: after.saturating_sub(before) as f64 / pages as f64,
    })
}
