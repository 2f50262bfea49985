//! `yonder-bench demo`, the README's main command: on an embedded default (two memory servers
//! on loopback, R = 2, a quarter of the memory local) it runs a real program nobody here wrote
//! (Python) and checks its result against a plain run, then measures remote faults from a
//! program's side against this machine's floors, and prints the headline figures. Under a
//! minute on the development VM.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use yonder_common::size::ByteSize;

use crate::{
    cluster::Cluster,
    floor,
    latency::{run_under_agent, Event, WorkloadRun},
    pattern::Pattern,
    stats::human_ns,
};

/// Memory servers, replicas and local share of the embedded default.
const SERVERS: usize = 2;
const REPLICAS: usize = 2;
const LOCAL_PCT: u64 = 25;

/// A Python program with ~40 MiB of objects: paged at 10 MiB local, checked against a plain run.
const PROGRAM: &str = "
import hashlib
data = [bytes([i % 251]) * 200 for i in range(120_000)]   # ~30 MB of objects
h = hashlib.sha256()
for _ in range(2):
    for b in data:
        h.update(b)
print(h.hexdigest())
";
const PYTHON_MEMORY_MIB: u64 = 40;

/// The controlled workload's size.
const WORKLOAD: ByteSize = ByteSize(64 << 20);

/// A line above the progress bar, or plain when there is no terminal (no bar drawn).
fn say(bars: &MultiProgress, line: String) {
    if bars.is_hidden() {
        println!("{line}");
    } else {
        let _ = bars.println(line);
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// Runs the demo.
pub fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    println!(
        "Yonder demo: {SERVERS} memory servers on loopback (QUIC, mutual TLS), each evicted page on {REPLICAS} of them, {LOCAL_PCT} % of each program's memory local.\n"
    );
    let bars = MultiProgress::new();
    let step = bars
        .add(ProgressBar::new(4))
        .with_style(style("[{elapsed_precise}] step {pos}/{len} {wide_msg}"));
    step.enable_steady_tick(Duration::from_millis(200));

    step.set_message("starting the memory servers...");
    let cluster = Cluster::start(SERVERS, "1GiB")?;
    say(
        &bars,
        format!(
            "  memory servers: {} (certificates from `yonder-server certs`)",
            cluster.addrs().join(", ")
        ),
    );
    step.inc(1);

    // 1. A real program.
    let local = PYTHON_MEMORY_MIB * LOCAL_PCT / 100;
    step.set_message(format!(
        "Python with ~{PYTHON_MEMORY_MIB} MiB of objects, {local} MiB local..."
    ));
    let python = python()?;
    let t = Instant::now();
    let plain = Command::new(&python).args(["-c", PROGRAM]).output()?;
    let plain_s = t.elapsed().as_secs_f64();
    anyhow::ensure!(plain.status.success(), "python3 failed on its own");
    let t = Instant::now();
    let managed = Command::new(yonder_tests::bin("yonder-agent"))
        .args(cluster.agent_args(&format!("{local}MiB"), REPLICAS))
        .args([&python, "-c", PROGRAM])
        .output()?;
    let managed_s = t.elapsed().as_secs_f64();
    let summary = String::from_utf8_lossy(&managed.stderr).into_owned();
    anyhow::ensure!(
        managed.status.success(),
        "the program failed under the agent:\n{summary}"
    );
    let identical = managed.stdout == plain.stdout;
    anyhow::ensure!(
        identical,
        "the result under Yonder DIFFERS from the plain run:\n{summary}"
    );
    let remote = summary
        .lines()
        .find(|l| l.contains(" remote (p50"))
        .unwrap_or("")
        .trim_start_matches("yonder: ")
        .to_string();
    say(&bars, format!(
        "  Python: result identical to a plain run; {managed_s:.1} s under Yonder, {plain_s:.1} s plain\n    agent: {remote}"
    ));
    step.inc(1);

    // 2. Remote faults measured from the program's side.
    let local_bytes = WORKLOAD.0 * LOCAL_PCT / 100;
    step.set_message(format!(
        "random touches over {WORKLOAD}, {} local...",
        ByteSize(local_bytes)
    ));
    let bar = bars
        .add(ProgressBar::new(1))
        .with_style(style("  {msg:<8} [{bar:40}] {pos}/{len} pages"));
    let w = WorkloadRun {
        size: WORKLOAD,
        pattern: Pattern::Random,
        threads: 1,
        theta: 0.99,
        stride: 16,
        touches: None,
        settle_ms: None,
    };
    let (report, _) = run_under_agent(&cluster, local_bytes, REPLICAS, &[], &w, &mut |e| {
        if let Event::Progress { phase, done, total } = e {
            bar.set_message(phase.to_string());
            bar.set_length(total);
            bar.set_position(done);
        }
    })?;
    bar.finish_and_clear();
    step.inc(1);

    step.set_message("this machine's floors...");
    let floors = floor::measure(5_000).context("measuring the floors")?;
    step.inc(1);
    step.finish_and_clear();

    let r = &report.remote;
    println!(
        "\nHeadline ({:.0} s in all):",
        started.elapsed().as_secs_f64()
    );
    println!(
        "  Python at {LOCAL_PCT} % local memory: same result as a plain run; {managed_s:.1} s against {plain_s:.2} s all local (it streams over all its data: nearly every page it reads is remote)."
    );
    println!(
        "  Remote fault, measured by the program (random, {} local of {}): p50 {}, p90 {}, p99 {}, p99.9 {}; {:.0} remote faults/s; {} of {} touches were remote.",
        ByteSize(local_bytes),
        WORKLOAD,
        human_ns(r.p50_ns as f64),
        human_ns(r.p90_ns as f64),
        human_ns(r.p99_ns as f64),
        human_ns(r.p999_ns as f64),
        report.remote_faults_per_s,
        r.count,
        report.touches,
    );
    let q = floors.quic_4k.unpinned.p50_ns.max(1) as f64;
    println!(
        "  That p50 is {:.1}x a bare QUIC round trip of 4 KiB on this machine ({}); the other floors here: UDP 4 KiB {}, a uffd fault served from a local page {} (p50, threads left to the scheduler).",
        r.p50_ns as f64 / q,
        human_ns(q),
        human_ns(floors.udp_4k.unpinned.p50_ns as f64),
        human_ns(floors.uffd_local.unpinned.p50_ns as f64),
    );
    println!(
        "  Every word read back was checked: {} wrong. Hits (resident pages): p50 {}.",
        report.bad,
        human_ns(report.hit.p50_ns as f64)
    );
    println!("\nMore: `yonder-bench latency`, `yonder-bench compare`, `yonder-bench floor`; figures in bench/RESULTS.md.");
    Ok(())
}

/// The interpreter itself, not a wrapper script (pyenv's would fork helpers first).
fn python() -> anyhow::Result<String> {
    let exe = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .context("python3 is needed for the demo")?;
    Ok(String::from_utf8(exe.stdout)?.trim().to_string())
}
