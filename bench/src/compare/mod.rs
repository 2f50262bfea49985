//! `yonder-bench compare`: one workload at several local-memory ratios under (a) all local
//! memory, (b) Yonder, (c) Linux swap to zram and (d) Linux swap to a file on the local disk,
//! (c) and (d) in a memory cgroup with the same budget. Prints a table, writes JSON and one chart
//! per workload (PNG and SVG). See docs/benchmarks-compare.md for how budgets are made equal.
//!
//! The footprint comes from the all-local run: the peak anonymous RSS of the process tree
//! (`anon`) and the peak of the rest of its RSS (`file`, mapped files and shared memory). When
//! the swap modes run, the all-local runs run in a memory cgroup without a limit, and what it was
//! charged at its peak beyond `anon` is the `rest` (page cache the program filled, kernel
//! memory; not the libraries' pages, which are charged to whoever read them first). At a ratio
//! r, Yonder gets `--local-mem r·anon` (it manages anonymous memory only, and leaves the rest
//! unlimited) and the memory cgroup a limit of `r·anon + rest` (`--memcg-rest`).

use std::time::Instant;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::{
    cluster::Cluster,
    plot,
    system::{self, CgroupVersion, Machine},
};

mod args;
mod measure;
mod process;
mod render;
mod summary;
mod workloads;

use measure::measure_workload;
use workloads::workload_commands;

pub use args::{Args, Builtin, Mode};
pub use render::{markdown, markdown_tables, text_table, MARKDOWN_NOTE};

/// What `compare` measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompareReport {
    /// The machine and its swap settings.
    pub machine: MachineInfo,
    /// Local-memory ratios in percent.
    pub ratios: Vec<u32>,
    /// Runs per configuration.
    pub runs: usize,
    /// Memory servers and replicas for Yonder.
    pub servers: usize,
    /// Copies of each evicted page.
    pub replicas: usize,
    /// Wall time of the whole comparison, seconds.
    pub duration_s: f64,
    /// One entry per workload.
    pub workloads: Vec<WorkloadReport>,
}

/// The machine the comparison ran on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MachineInfo {
    /// `uname -r`.
    pub kernel: String,
    /// Online CPUs.
    pub cpus: usize,
    /// MemTotal in bytes.
    pub memory_bytes: u64,
    /// Memory cgroup hierarchy used for the swap modes.
    pub cgroup: Option<CgroupVersion>,
    /// zram compression algorithm in use.
    pub zram_algorithm: String,
    /// `vm.page-cluster` (swap readahead of 2^n pages).
    pub page_cluster: String,
    /// `vm.swappiness`.
    pub swappiness: String,
    /// Swap areas of the machine's own that were active during the run (should be none).
    pub other_swap: Vec<String>,
}

/// One workload at every ratio and mode.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkloadReport {
    /// Name (built-in or the command's).
    pub name: String,
    /// The command line run.
    pub command: Vec<String>,
    /// Peak anonymous RSS of the all-local run (median), bytes.
    pub anon_bytes: u64,
    /// Peak non-anonymous RSS of the all-local run (median), bytes.
    pub file_bytes: u64,
    /// What the all-local run's memory cgroup was charged at its peak beyond the anonymous
    /// footprint (median), bytes; none when the swap modes did not run (or an older report).
    #[serde(default)]
    pub charged_rest_bytes: Option<u64>,
    /// What the swap modes' cgroup limit added to the anonymous budget, bytes.
    #[serde(default)]
    pub memcg_rest_bytes: Option<u64>,
    /// Whether rows carry a throughput (touches per second of the timed phase).
    pub has_throughput: bool,
    /// All local first, then each ratio's modes.
    pub rows: Vec<Row>,
}

/// One mode at one ratio.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// The mode.
    pub mode: Mode,
    /// Local memory in percent of the anonymous footprint (100 for all local).
    pub ratio: u32,
    /// Yonder's `--local-mem`, or the memory anonymous pages may use under the cgroup, bytes.
    pub local_bytes: Option<u64>,
    /// The memory cgroup's limit, bytes (swap modes).
    pub memcg_limit_bytes: Option<u64>,
    /// Completion time (median of the runs that succeeded; 0 when none did), seconds.
    pub time_s: f64,
    /// Completion time of each run.
    pub times_s: Vec<f64>,
    /// Completion time divided by all local's (0 when every run failed).
    pub slowdown: f64,
    /// Why runs failed (OOM kill, exit status, time-out), one entry per failed run; the figures
    /// are of the other runs.
    pub failures: Vec<String>,
    /// Touches per second in the timed phase (median; built-in touch workloads).
    pub throughput: Option<f64>,
    /// Throughput of each run.
    pub throughputs: Vec<f64>,
    /// Pages brought back (median): Yonder's remote faults, or the cgroup's major faults.
    pub faults: Option<u64>,
    /// Yonder's remote-fault latency p50 and p99 from its summary (median), microseconds.
    pub remote_p50_us: Option<f64>,
    /// As above, p99.
    pub remote_p99_us: Option<f64>,
    /// Latency of a timed touch of a page that was not resident, as the touch workloads measure
    /// it in every mode (fault, fetch or swap-in, wake-up): p50 (median over runs), microseconds.
    pub miss_p50_us: Option<f64>,
    /// As above, p99.
    pub miss_p99_us: Option<f64>,
    /// Peak memory charged to the cgroup (median), bytes.
    pub memcg_peak_bytes: Option<u64>,
}

/// What one run of a command gave.
#[derive(Debug, Default)]
struct Outcome {
    wall_s: f64,
    stdout: String,
    stderr: String,
    anon_peak: u64,
    file_peak: u64,
    /// Major faults charged to the run's memory cgroup (swap modes).
    memcg_faults: Option<u64>,
    /// Why the run failed (exit status, OOM kill, time-out); None when it succeeded.
    failure: Option<String>,
}

impl Outcome {
    /// The last lines of the run's stderr, for error messages.
    fn stderr_tail(&self) -> String {
        let lines: Vec<&str> = self.stderr.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        if tail.is_empty() {
            "(no output on stderr)".into()
        } else {
            tail
        }
    }
}

/// Runs the comparison and prints, writes and draws its results.
pub fn run(args: Args) -> anyhow::Result<()> {
    if args.restore {
        drop(Machine::take()?);
        eprintln!("compare: the machine is restored");
        return Ok(());
    }
    let report = match &args.from_json {
        Some(p) => serde_json::from_str(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )
        .with_context(|| format!("{} is not a compare report", p.display()))?,
        None => measure(&args)?,
    };
    let table = text_table(&report);
    match &args.json {
        Some(p) if p.as_os_str() == "-" => {
            eprint!("{table}");
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Some(p) => {
            print!("{table}");
            std::fs::write(p, serde_json::to_string_pretty(&report)? + "\n")
                .with_context(|| format!("writing {}", p.display()))?;
            eprintln!("compare: wrote {}", p.display());
        }
        None => print!("{table}"),
    }
    if let Some(p) = &args.markdown {
        std::fs::write(p, markdown(&report)).with_context(|| format!("writing {}", p.display()))?;
    }
    if !args.no_plot {
        std::fs::create_dir_all(&args.out_dir)?;
        for w in &report.workloads {
            let (png, svg) = plot::chart(w, &report.machine, &args.out_dir)?;
            eprintln!("compare: wrote {} and {}", png.display(), svg.display());
        }
    }
    Ok(())
}

/// Measures every workload at every ratio and mode; the machine is restored before it returns
/// (also on error or Ctrl-C).
pub fn measure(args: &Args) -> anyhow::Result<CompareReport> {
    anyhow::ensure!(args.runs > 0, "--runs must be at least 1");
    anyhow::ensure!(
        !args.ratios.is_empty() && args.ratios.iter().all(|r| (1..=100).contains(r)),
        "--ratios are percentages from 1 to 100"
    );
    system::catch_interrupts()?;
    let started = Instant::now();
    let swap_modes = args
        .modes
        .iter()
        .any(|m| matches!(m, Mode::Zram | Mode::File));
    let mut machine = if swap_modes {
        Some(Machine::take()?)
    } else {
        None
    };
    let other_swap = system::foreign_swaps();
    if !other_swap.is_empty() {
        if !args.allow_swap {
            bail!(
                "the machine has swap active ({}): it would mix into every mode's results; \
                 swapoff it or pass --allow-swap",
                other_swap.join(", ")
            );
        }
        eprintln!(
            "compare: WARNING: the machine's own swap is active ({}); results include it",
            other_swap.join(", ")
        );
    }
    let info = MachineInfo {
        kernel: system::read_setting("/proc/sys/kernel/osrelease"),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_bytes: meminfo_total(),
        cgroup: machine.as_ref().map(|m| m.cgroup_version()),
        zram_algorithm: args.zram_algorithm.clone().unwrap_or_else(|| {
            let s = system::read_setting("/sys/block/zram0/comp_algorithm");
            s.split_whitespace()
                .find(|a| a.starts_with('['))
                .map(|a| a.trim_matches(['[', ']']).to_string())
                .unwrap_or(s)
        }),
        page_cluster: system::read_setting("/proc/sys/vm/page-cluster"),
        swappiness: system::read_setting("/proc/sys/vm/swappiness"),
        other_swap,
    };
    let cluster = if args.modes.contains(&Mode::Yonder) {
        eprintln!(
            "compare: starting {} memory servers on loopback",
            args.servers
        );
        let extra: Vec<String> = args
            .server_args
            .iter()
            .flat_map(|a| a.split_whitespace().map(String::from))
            .collect();
        Some(Cluster::start_with(args.servers.max(1), "16GiB", &extra)?)
    } else {
        None
    };
    let mut workloads = Vec::new();
    for w in workload_commands(args)? {
        workloads.push(measure_workload(args, &mut machine, cluster.as_ref(), &w)?);
    }
    Ok(CompareReport {
        machine: info,
        ratios: args.ratios.clone(),
        runs: args.runs,
        servers: args.servers,
        replicas: args.replicas,
        duration_s: started.elapsed().as_secs_f64(),
        workloads,
    })
}

fn meminfo_total() -> u64 {
    crate::procfs::meminfo_bytes("MemTotal").unwrap_or(0)
}
