//! `yonder-bench report`: regenerates bench/RESULTS.md (and the charts it shows) in one go:
//! the machine, the date, the exact command, this machine's floors, remote-fault latency per
//! pattern, Yonder side by side with kernel swap, and the memory server's throughput. Every
//! figure is the median of `--runs` runs made by this one command; nothing is copied in by hand.
//! The exceptions are the soak (an hour long) and the scale run (most of the machine's memory):
//! their sections are rendered from the JSON files separate `yonder-bench soak` and
//! `yonder-bench scale` runs wrote, which name their own command, date and commit
//! (`--file-sections-only` re-renders just those two into an existing file).

use std::{fmt::Write as _, path::PathBuf, time::Instant};

use anyhow::Context;
use yonder_common::size::ByteSize;

use crate::{
    compare, floor, latency, plot, server_bench,
    stats::{human_ns, median, Summary},
};

/// Corpus of the xz workload in the report (the default of `compare` is 6 MiB).
const REAL_XZ_CORPUS: u64 = 256 << 10;

/// Dataset of the redis workload in the report (the default of `compare` is 256 MiB).
const REAL_REDIS_DATASET: u64 = 12 << 20;

/// Arguments of `yonder-bench report`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The Markdown file to write.
    #[arg(long, default_value = "bench/RESULTS.md")]
    pub out: PathBuf,
    /// Directory for the comparison charts (PNG and SVG), linked from the Markdown.
    #[arg(long, default_value = "bench/results")]
    pub charts: PathBuf,
    /// Runs of every configuration; figures are medians.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// A tiny, fast run that exercises every section (for tests; the figures mean nothing).
    #[arg(long)]
    pub quick: bool,
    /// The result of a separate soak run (`yonder-bench soak --json --out FILE`), rendered as the
    /// "Soak" section; the section says so when the file is missing.
    #[arg(long, default_value = "bench/results/soak.json")]
    pub soak: PathBuf,
    /// Results of separate scale runs (`yonder-bench scale --json --out FILE`), rendered as the
    /// "Scale" section, comma-separated (default: every bench/results/scale*.json); the section
    /// says so when there is none.
    #[arg(long, value_delimiter = ',')]
    pub scale: Vec<PathBuf>,
    /// Measure nothing: render only the sections that come from result files (Soak, Scale) and
    /// put them in place of those sections of the existing `--out` file (appended when absent).
    #[arg(long)]
    pub file_sections_only: bool,
}

/// The sections rendered from result files written by separate runs, by heading.
fn file_sections(args: &Args) -> [(&'static str, String); 2] {
    [
        ("## Soak\n", crate::soak::markdown(&args.soak)),
        ("## Scale\n", crate::scale::markdown(&scale_files(args))),
    ]
}

/// `--scale`, or every bench/results/scale*.json (bench/results/scale.json when there is none,
/// so that the section says it is missing).
fn scale_files(args: &Args) -> Vec<PathBuf> {
    if !args.scale.is_empty() {
        return args.scale.clone();
    }
    let dir = std::path::Path::new("bench/results");
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("scale") && n.ends_with(".json"))
        })
        .collect();
    found.sort();
    if found.is_empty() {
        found.push(dir.join("scale.json"));
    }
    found
}

/// `md` with the section that starts with `heading` (up to the next `## ` heading) replaced by
/// `section`, or with `section` appended when there is no such section.
fn replace_section(md: &str, heading: &str, section: &str) -> String {
    let start = if md.starts_with(heading) {
        Some(0)
    } else {
        md.find(&format!("\n{heading}")).map(|i| i + 1)
    };
    let Some(start) = start else {
        let sep = if md.is_empty() || md.ends_with("\n\n") {
            ""
        } else if md.ends_with('\n') {
            "\n"
        } else {
            "\n\n"
        };
        return format!("{md}{sep}{section}");
    };
    let body = start + heading.len();
    let end = md[body..].find("\n## ").map_or(md.len(), |i| body + i + 1);
    format!("{}{section}{}", &md[..start], &md[end..])
}

/// Runs the report and writes the Markdown.
pub fn run(args: Args) -> anyhow::Result<()> {
    if args.file_sections_only {
        let mut md = std::fs::read_to_string(&args.out)
            .with_context(|| format!("reading {}", args.out.display()))?;
        for (heading, section) in file_sections(&args) {
            md = replace_section(&md, heading, &section);
        }
        std::fs::write(&args.out, md).with_context(|| format!("writing {}", args.out.display()))?;
        eprintln!(
            "report: re-rendered the Soak and Scale sections of {}",
            args.out.display()
        );
        return Ok(());
    }
    let started = Instant::now();
    let command = crate::run_info::command();
    let runs = args.runs.max(1);
    let mut md = String::new();
    let log = |s: &str| eprintln!("report: {s}");

    // Floors, several times.
    log("floors");
    let samples = if args.quick { 500 } else { 20_000 };
    let mut floor_runs = Vec::new();
    for _ in 0..runs {
        floor_runs.push(floor::measure(samples)?);
    }

    log("latency");
    let mut lat = latency::Args {
        servers: vec![],
        tls_dir: "/etc/yonder/tls".into(),
        cert_name: "client".into(),
        mtu: None,
        embedded: 2,
        replicas: 2,
        size: ByteSize(64 << 20),
        local_pct: 25,
        patterns: vec![],
        threads: vec![1, 2],
        theta: 0.99,
        stride: 16,
        touches: None,
        runs,
        floor_samples: samples,
        no_floor: true,
        json: false,
        breakdown: true,
        variants: vec![],
    };
    if args.quick {
        lat.size = ByteSize(8 << 20);
        lat.threads = vec![1];
    }
    let latency = latency::measure(&lat, &mut |s| log(&s))?;

    // What replicas cost on the fault path: three servers, random touches, R = 1, 2, 3.
    log("replicas");
    let mut replicas = Vec::new();
    for r in 1..=3 {
        let args = latency::Args {
            embedded: 3,
            replicas: r,
            patterns: vec![crate::pattern::Pattern::Random],
            threads: vec![1],
            ..lat.clone()
        };
        replicas.push((r, latency::measure(&args, &mut |s| log(&s))?));
    }

    // Spin-then-park, side by side: neither end spins, only the agent, only the servers, both
    // (the defaults), runs interleaved.
    log("spin");
    let spin = latency::measure(
        &latency::Args {
            patterns: vec![crate::pattern::Pattern::Random],
            variants: vec![
                "neither=--spin-us=0 server:--spin-us=0".into(),
                "agent=--spin-us=200 server:--spin-us=0".into(),
                "servers=--spin-us=0 server:--spin-us=200".into(),
                "both=--spin-us=200 server:--spin-us=200".into(),
            ],
            ..lat.clone()
        },
        &mut |s| log(&s),
    )?;

    log("compare");
    let mut cmp = compare::Args {
        runs,
        out_dir: args.charts.clone(),
        ..Default::default()
    };
    if args.quick {
        cmp.size = ByteSize(8 << 20);
        cmp.ratios = vec![50];
        cmp.workloads = vec![compare::Builtin::Random];
    }
    let comparison = compare::measure(&cmp)?;
    // Real programs, smaller than `compare`'s defaults (6 MiB corpus, 256 MiB dataset): at 25 %
    // local memory Yonder takes minutes per run of those (xz of a 1 MiB corpus: 127 s).
    log("compare: real programs");
    let mut real = compare::Args {
        workloads: vec![compare::Builtin::Xz, compare::Builtin::Redis],
        xz_corpus: ByteSize(REAL_XZ_CORPUS),
        redis_dataset: ByteSize(REAL_REDIS_DATASET),
        ..cmp.clone()
    };
    if args.quick {
        real.xz_corpus = ByteSize(128 << 10);
        real.redis_dataset = ByteSize(4 << 20);
    }
    let real_programs = compare::measure(&real)?;
    // The other side of the bracket (docs/benchmarks-compare.md): the kernel held to the
    // anonymous budget alone, without what the program's all-local run was charged besides,
    // which its reclaim may spend on anonymous pages (Redis: the RDB file's page cache, ~15 MiB
    // beside ~20 MiB of anonymous memory).
    log("compare: real programs, kernel at the anonymous budget alone");
    let anon_only = compare::measure(&compare::Args {
        modes: vec![compare::Mode::Zram, compare::Mode::File],
        memcg_anon_only: true,
        ..real.clone()
    })?;
    std::fs::create_dir_all(&args.charts)?;
    let mut charts = Vec::new();
    for (w, machine) in comparison
        .workloads
        .iter()
        .map(|w| (w, &comparison.machine))
        .chain(
            real_programs
                .workloads
                .iter()
                .map(|w| (w, &real_programs.machine)),
        )
    {
        let (png, svg) = plot::chart(w, machine, &args.charts)?;
        charts.push((w.name.clone(), png, svg));
    }

    log("memory server");
    let mut server_runs = Vec::new();
    for _ in 0..runs {
        server_runs.push(server_bench::measure(&server_bench::Args {
            seconds: if args.quick { 1 } else { 3 },
            inflight: vec![1, 32],
            batch: vec![1, 16],
            memory_pages: if args.quick { 2_000 } else { 250_000 },
            client_threads: 1,
            client: yonder_agent::remote::Transport::Quinn,
            mtu: Some(crate::cluster::LOOPBACK_MTU),
            json: false,
        })?);
    }

    // The Markdown.
    writeln!(md, "# Benchmark results\n")?;
    writeln!(
        md,
        "Generated by one command, `{command}` (the script `bench/regenerate` builds a release \
         and runs it), in {:.0} s. Do not edit by hand: regenerate.\n",
        started.elapsed().as_secs_f64()
    )?;
    if args.quick {
        writeln!(
            md,
            "**QUICK RUN: tiny sizes, for format checks only; these figures mean nothing.**\n"
        )?;
    }
    writeln!(md, "{}", machine()?)?;
    writeln!(
        md,
        "Every figure is the median of {runs} run(s) made by this command, one after the other on \
         this machine, which is noisy (2 shared vCPUs): compare figures within one table, where \
         they were measured side by side, rather than across files.\n"
    )?;
    md += &floors_md(&floor_runs);
    md += &latency_md(&latency, &floor_runs);
    md += &replicas_md(&replicas);
    md += &spin_md(&spin);
    writeln!(md, "## Yonder side by side with kernel swap\n")?;
    writeln!(
        md,
        "`yonder-bench compare` (defaults; docs/benchmarks-compare.md explains how budgets are made equal). Charts: {}.\n",
        charts
            .iter()
            .map(|(name, png, svg)| format!(
                "[{name} (PNG)]({}), [SVG]({})",
                rel(png),
                rel(svg)
            ))
            .collect::<Vec<_>>()
            .join("; ")
    )?;
    for (_, png, _) in &charts {
        writeln!(md, "![]({})\n", rel(png))?;
    }
    md += &compare::markdown_tables(&comparison);
    writeln!(
        md,
        "### Real programs\n\n`yonder-bench compare --workload xz,redis --xz-corpus {}KiB \
         --redis-dataset {}KiB` (smaller than the defaults, 6 MiB and 256 MiB, to keep this report \
         short): `xz -9 -T1` compressing a generated text corpus, and `redis-server` loaded with \
         SETs, read with random GETs, saved with `BGSAVE` (a fork) and shut down, driven by the \
         bench from outside the budget. Whole-program times; docs/benchmarks-compare.md says \
         more.\n",
        real.xz_corpus.0 >> 10,
        real.redis_dataset.0 >> 10,
    )?;
    md += &compare::markdown_tables(&real_programs);
    writeln!(
        md,
        "### Real programs, the kernel held to the anonymous budget alone\n\nThe same with \
         `--memcg-anon-only --modes zram,file`: the memory cgroup's limit is the anonymous \
         budget alone. The tables above add what the all-local run's own cgroup was charged \
         beyond its anonymous memory (the heading's \"charged besides it\"; for Redis mostly \
         the RDB file's page cache), which the kernel's reclaim can spend on anonymous pages \
         once it drops that cache (Yonder's budget is for anonymous pages only); this is \
         stricter for the kernel than Yonder's budget. The two bracket the fair figure \
         (docs/benchmarks-compare.md). The budgets come from this run's own all-local runs.\n"
    )?;
    md += &compare::markdown_tables(&anon_only).replace("### ", "#### ");
    md += compare::MARKDOWN_NOTE;
    md += "\n";
    md += &server_md(&server_runs);
    md += "\n";
    for (_, section) in file_sections(&args) {
        md += &section;
    }
    std::fs::write(&args.out, md).with_context(|| format!("writing {}", args.out.display()))?;
    log(&format!(
        "wrote {} in {:.0} s",
        args.out.display(),
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// A path as written in the Markdown: relative to bench/ when it is under it.
fn rel(p: &std::path::Path) -> String {
    let s = p.display().to_string();
    s.strip_prefix("bench/").unwrap_or(&s).to_string()
}

fn first_line(path: &str, key: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split(':').nth(1))
        .map(|v| v.trim().to_string())
}

fn machine() -> anyhow::Result<String> {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let cpu = first_line("/proc/cpuinfo", "model name").unwrap_or_default();
    let mem = first_line("/proc/meminfo", "MemTotal").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    Ok(format!(
        "| | |\n|---|---|\n| date | {date} |\n| commit | {commit} |\n| kernel | Linux {kernel} |\n| CPU | {cpus} × {cpu} |\n| memory | {mem} |\n| build | release (`cargo build --release`) |\n| network | loopback (memory servers on this machine) |\n"
    ))
}

fn med_u(v: impl Iterator<Item = u64>) -> f64 {
    let mut v: Vec<f64> = v.map(|x| x as f64).collect();
    median(&mut v)
}

fn floors_md(runs: &[floor::Floors]) -> String {
    let mut s = String::from(
        "## This machine's floors\n\n`yonder-bench floor`: what a remote fault is made of, without Yonder. \
         \"Unpinned\" leaves the two threads to the scheduler (how Yonder runs); \"one CPU\" pins both \
         to CPU 0, which removes the cross-CPU wake-up (PLATFORM.md: ~20–25 µs here).\n\n\
         | floor | unpinned p50 | p99 | one CPU p50 | p99 |\n|---|---:|---:|---:|---:|\n",
    );
    for i in 0..runs[0].named().len() {
        let name = runs[0].named()[i].0;
        let pick = |f: &dyn Fn(&floor::Floor) -> u64| {
            human_ns(med_u(runs.iter().map(|r| f(&r.named()[i].1))))
        };
        s += &format!(
            "| {name} | {} | {} | {} | {} |\n",
            pick(&|f| f.unpinned.p50_ns),
            pick(&|f| f.unpinned.p99_ns),
            pick(&|f| f.one_cpu.p50_ns),
            pick(&|f| f.one_cpu.p99_ns),
        );
    }
    s + "\n"
}

fn latency_md(r: &latency::LatencyReport, floors: &[floor::Floors]) -> String {
    let mut s = format!(
        "## Remote-fault latency, measured by the workload\n\n`yonder-bench latency`: the controlled \
         workload maps {} and fills it (zero-fill faults), then touches one word per page in the \
         pattern, timing each touch from its own side; a touch of a page that was not resident \
         (mincore just before) is a remote fault. {} local ({} %), {} memory servers on loopback, \
         R = {}. Agent-side p50 is the agent's own measure (fault read → page installed); the \
         difference is fault delivery and wake-up. In the sequential and reverse rows most remote \
         touches find a page of a prefetch batch still being installed and wait microseconds, \
         not a round trip: there the agent-side p50 (counted per request, not per page) is the \
         round trip, and the workload's p50 is below the floors.\n\n\
         | pattern | threads | remote faults | p50 | p90 | p99 | p99.9 | max | remote faults/s | agent-side p50 | zero-fill p50 | zero-fill p99 | hit p50 |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        ByteSize(r.size_bytes),
        ByteSize(r.local_bytes),
        r.local_bytes * 100 / r.size_bytes.max(1),
        r.servers,
        r.replicas,
    );
    let f = |ns: u64| human_ns(ns as f64);
    for row in &r.rows {
        let rm: &Summary = &row.remote;
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {} | {} | {} | {} |\n",
            row.pattern.name(),
            row.threads,
            rm.count,
            f(rm.p50_ns),
            f(rm.p90_ns),
            f(rm.p99_ns),
            f(rm.p999_ns),
            f(rm.max_ns),
            row.remote_faults_per_s,
            human_ns(med_u(row.agent_remote_p50_ns.iter().copied())),
            f(row.zero_fill.p50_ns),
            f(row.zero_fill.p99_ns),
            f(row.hit.p50_ns),
        );
    }
    let fl = |pick: &dyn Fn(&floor::Floors) -> u64| med_u(floors.iter().map(pick)).max(1.0);
    let uffd = fl(&|x| x.uffd_local.unpinned.p50_ns);
    let udp = fl(&|x| x.udp_4k.unpinned.p50_ns);
    let quic = fl(&|x| x.quic_4k.unpinned.p50_ns);
    s += &format!(
        "\nRemote-fault p50 as a multiple of each floor's unpinned p50 (uffd local {}, UDP {}, QUIC {}):\n\n\
         | pattern | threads | × uffd local | × UDP 4 KiB | × QUIC 4 KiB |\n|---|---:|---:|---:|---:|\n",
        human_ns(uffd),
        human_ns(udp),
        human_ns(quic)
    );
    for row in &r.rows {
        let p = row.remote.p50_ns as f64;
        s += &format!(
            "| {} | {} | {:.1} | {:.1} | {:.1} |\n",
            row.pattern.name(),
            row.threads,
            p / uffd,
            p / udp,
            p / quic
        );
    }
    let uffd1 = fl(&|x| x.uffd_local.one_cpu.p50_ns);
    let quic1 = fl(&|x| x.quic_4k.one_cpu.p50_ns);
    s += &format!(
        "\nWhere a remote fault's time goes (`yonder-bench latency --breakdown`; p50s, median over runs): \
         the agent's stages (fault read → request handed to QUIC → reply read → page installed), the \
         rest of what the workload measured (fault delivery to the agent and the workload's \
         wake-up), and the agent thread's CPU per remote fault (its evictions included). Issue 13's \
         bound, 2 × (one-CPU uffd floor + one-CPU QUIC floor), is {} on this run's floors.\n\n\
         | pattern | threads | workload p50 | agent p50 | send | wire | install | delivery + wake-up | agent CPU per remote fault |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        human_ns(2.0 * (uffd1 + quic1)),
    );
    for row in &r.rows {
        let stage = |k: usize| human_ns(med_u(row.agent_stages_p50_ns.iter().map(|a| a[k])));
        let agent = med_u(row.agent_remote_p50_ns.iter().copied());
        let mut cpu = row.agent_cpu_us_per_fault.clone();
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.1} µs |\n",
            row.label(),
            row.threads,
            human_ns(row.remote.p50_ns as f64),
            human_ns(agent),
            stage(0),
            stage(1),
            stage(2),
            human_ns((row.remote.p50_ns as f64 - agent).max(0.0)),
            crate::stats::median(&mut cpu),
        );
    }
    s + "\n"
}

fn replicas_md(runs: &[(usize, latency::LatencyReport)]) -> String {
    let mut s = String::from(
        "## Replicas on the fault path\n\n`yonder-bench latency --embedded 3 --replicas R --patterns random \
         --threads 1`, the same workload and budget as above, three memory servers on loopback. A \
         remote fault reads one replica; evictions write R copies, which costs CPU on this shared \
         machine.\n\n| R | remote faults | p50 | p90 | p99 | p99.9 | remote faults/s | agent-side p50 |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (r, report) in runs {
        for row in &report.rows {
            let f = |ns: u64| human_ns(ns as f64);
            s += &format!(
                "| {r} | {} | {} | {} | {} | {} | {:.0} | {} |\n",
                row.remote.count,
                f(row.remote.p50_ns),
                f(row.remote.p90_ns),
                f(row.remote.p99_ns),
                f(row.remote.p999_ns),
                row.remote_faults_per_s,
                human_ns(med_u(row.agent_remote_p50_ns.iter().copied())),
            );
        }
    }
    s + "\n"
}

fn spin_md(r: &latency::LatencyReport) -> String {
    let mut s = String::from(
        "## Spin, then park

`yonder-bench latency --patterns random --variant \
         NAME=\"--spin-us=A server:--spin-us=S\"`, the same workload and budget as above: the agent \
         and the memory servers keep polling for 200 µs after each fault, reply or request instead \
         of sleeping (defaults), or not; runs interleaved. docs/fault-path.md explains.\n\n\
         | who spins | threads | remote faults | p50 | p90 | p99 | remote faults/s | agent-side p50 | wire p50 | agent CPU per remote fault |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for row in &r.rows {
        let f = |ns: u64| human_ns(ns as f64);
        let mut cpu = row.agent_cpu_us_per_fault.clone();
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {:.0} | {} | {} | {:.1} µs |\n",
            row.variant,
            row.threads,
            row.remote.count,
            f(row.remote.p50_ns),
            f(row.remote.p90_ns),
            f(row.remote.p99_ns),
            row.remote_faults_per_s,
            human_ns(med_u(row.agent_remote_p50_ns.iter().copied())),
            human_ns(med_u(row.agent_stages_p50_ns.iter().map(|a| a[1]))),
            crate::stats::median(&mut cpu),
        );
    }
    s + "\n"
}

fn server_md(runs: &[server_bench::Report]) -> String {
    let mut s = String::from(
        "## Memory server throughput\n\n`yonder-bench server --mtu 4400`: one `yonder-server` on \
         loopback, one client connection keeping N requests in flight, each reading or writing a \
         run of random pages; request latency measured by the client. Memory: server RSS growth \
         per stored page.\n\n\
         | op | requests in flight | pages per request | pages/s | request p50 | p99 |\n|---|---:|---:|---:|---:|---:|\n",
    );
    for (i, row) in runs[0].throughput.iter().enumerate() {
        let med = |f: &dyn Fn(&server_bench::ThroughputRow) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(|r| f(&r.throughput[i])).collect();
            median(&mut v)
        };
        s += &format!(
            "| {} | {} | {} | {:.0} | {} | {} |\n",
            row.op,
            row.inflight,
            row.pages_per_request,
            med(&|r| r.pages_per_sec),
            human_ns(med(&|r| r.p50_us) * 1e3),
            human_ns(med(&|r| r.p99_us) * 1e3),
        );
    }
    s += "\n| pages | count | bytes of server RSS per page |\n|---|---:|---:|\n";
    for (i, row) in runs[0].memory.iter().enumerate() {
        let mut v: Vec<f64> = runs.iter().map(|r| r.memory[i].bytes_per_page).collect();
        s += &format!("| {} | {} | {:.1} |\n", row.kind, row.pages, median(&mut v));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_section_is_replaced_in_place_or_appended() {
        let md = "# R\n\n## Soak\n\nold soak\n\n## Scale\n\nold scale\n";
        let md = replace_section(md, "## Soak\n", "## Soak\n\nnew soak\n\n");
        assert_eq!(md, "# R\n\n## Soak\n\nnew soak\n\n## Scale\n\nold scale\n");
        let md = replace_section(&md, "## Scale\n", "## Scale\n\nnew scale\n\n");
        assert_eq!(
            md,
            "# R\n\n## Soak\n\nnew soak\n\n## Scale\n\nnew scale\n\n"
        );
        let md = replace_section("# R\n\n## Soak\n\ns\n", "## Scale\n", "## Scale\n\nx\n");
        assert_eq!(md, "# R\n\n## Soak\n\ns\n\n## Scale\n\nx\n");
        // A heading that only appears inside a line is not the section.
        let md = replace_section("# R\ntext ## Scale\n", "## Scale\n", "## Scale\n\nx\n");
        assert_eq!(md, "# R\ntext ## Scale\n\n## Scale\n\nx\n");
    }
}
