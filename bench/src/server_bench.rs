//! Memory server benchmark: pages/s read and written over loopback QUIC with 1 and 32 requests in
//! flight, and the server's resident memory per stored page.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use hdrhistogram::Histogram;
use rand::{Rng, RngCore, SeedableRng};
use serde::Serialize;
use yonder_common::{
    client::Client,
    protocol::{PageData, ReadItem, ReadResult, WriteItem, WriteResult, MAX_BATCH_PAGES},
    PageKey, PAGE_SIZE,
};
use yonder_tests::Server;

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
    /// Worker threads of the client runtime (the server uses its own default).
    #[arg(long, default_value_t = 1)]
    pub client_threads: usize,
    /// Fixed datagram size on both ends (loopback allows one page per packet with 4400);
    /// default: path-MTU discovery, as on an unknown network.
    #[arg(long)]
    pub mtu: Option<u16>,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// One throughput measurement.
#[derive(Serialize, Clone)]
pub struct ThroughputRow {
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
pub fn run(args: Args) -> anyhow::Result<()> {
    let report = measure(&args)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "| op | requests in flight | pages per request | pages/s | request p50 µs | p99 µs |"
        );
        println!("|---|---:|---:|---:|---:|---:|");
        for r in &report.throughput {
            println!(
                "| {} | {} | {} | {:.0} | {:.1} | {:.1} |",
                r.op, r.inflight, r.pages_per_request, r.pages_per_sec, r.p50_us, r.p99_us
            );
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

/// Measures as `args` says.
pub fn measure(args: &Args) -> anyhow::Result<Report> {
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
    rt.block_on(bench(args))
}

fn random_page(rng: &mut impl RngCore) -> Vec<u8> {
    let mut page = vec![0; PAGE_SIZE];
    rng.fill_bytes(&mut page);
    page
}

async fn bench(args: &Args) -> anyhow::Result<Report> {
    let mut throughput = Vec::new();
    {
        let server = Server::start_with_mtu("8GiB", &["bench"], &[], args.mtu)?;
        let client = Arc::new(server.connect("bench").await?);
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
        for &batch in &args.batch {
            for &inflight in &args.inflight {
                for op in ["write", "read"] {
                    let dur = Duration::from_secs(args.seconds);
                    throughput.push(measure_throughput(&client, op, inflight, batch, dur).await?);
                }
            }
        }
    }
    let memory = vec![
        memory(args.memory_pages, false, args.mtu).await?,
        memory(args.memory_pages, true, args.mtu).await?,
    ];
    Ok(Report { throughput, memory })
}

async fn measure_throughput(
    client: &Arc<Client>,
    op: &'static str,
    inflight: usize,
    batch: usize,
    dur: Duration,
) -> anyhow::Result<ThroughputRow> {
    anyhow::ensure!(
        (1..=MAX_BATCH_PAGES).contains(&batch),
        "batch must be 1..={MAX_BATCH_PAGES}"
    );
    let started = Instant::now();
    let deadline = started + dur;
    let mut tasks = Vec::new();
    for t in 0..inflight {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(100 + t as u64);
            let mut hist = Histogram::<u64>::new(3).expect("histogram");
            let page = PageData::Bytes(random_page(&mut rng));
            let mut version = 2 + t as u64;
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
                        r.iter().all(|r| matches!(
                            r,
                            WriteResult::Stored | WriteResult::Superseded { .. }
                        )),
                        "write refused near {first}"
                    );
                }
                hist.record(t0.elapsed().as_nanos() as u64)?;
            }
            anyhow::Ok(hist)
        }));
    }
    let mut total = Histogram::<u64>::new(3)?;
    for t in tasks {
        total.add(t.await??)?;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(ThroughputRow {
        op,
        inflight,
        pages_per_request: batch,
        pages_per_sec: (total.len() * batch as u64) as f64 / secs,
        p50_us: total.value_at_quantile(0.5) as f64 / 1e3,
        p99_us: total.value_at_quantile(0.99) as f64 / 1e3,
    })
}

fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("VmRSS missing")?
        .parse()?;
    Ok(kb * 1024)
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
