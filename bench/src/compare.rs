//! `yonder-bench compare`: one workload at several local-memory ratios under (a) all local
//! memory, (b) Yonder, (c) Linux swap to zram and (d) Linux swap to a file on the local disk,
//! (c) and (d) in a memory cgroup with the same budget. Prints a table, writes JSON and one chart
//! per workload (PNG and SVG). See docs/benchmarks-compare.md for how budgets are made equal.
//!
//! The footprint comes from the all-local run: the peak anonymous RSS of the process tree
//! (`anon`) and the peak of the rest of its RSS (`file`, mapped files and shared memory). At a
//! ratio r, Yonder gets `--local-mem r·anon` (it manages anonymous memory only) and the memory
//! cgroup a limit of `r·anon + file` (the kernel charges both to the group).

use std::{
    io::Read,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use yonder_common::size::ByteSize;

use crate::{
    cluster::Cluster,
    corpus, plot,
    redis_workload::{self, Control},
    stats::median,
    system::{self, CgroupVersion, Machine},
    workload,
};

/// How a workload's memory is provided.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// All memory local: no budget (the reference).
    Local,
    /// Yonder: `yonder-agent run --local-mem` with memory servers on loopback.
    Yonder,
    /// Linux swap to a zram device, in a memory cgroup with the budget.
    Zram,
    /// Linux swap to a file on the local disk, in a memory cgroup with the budget.
    File,
}

impl Mode {
    /// The name in tables, JSON and legends.
    pub fn label(self) -> &'static str {
        match self {
            Mode::Local => "all local",
            Mode::Yonder => "Yonder",
            Mode::Zram => "swap to zram",
            Mode::File => "swap to file",
        }
    }
}

/// The built-in workloads.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Builtin {
    /// `yonder-bench workload --pattern random`: uniform random page touches.
    Random,
    /// `yonder-bench workload --pattern zipfian`: skewed touches (θ = 0.99, a small hot set).
    Zipfian,
    /// `yonder-bench workload --pattern sequential`: page after page, around and around (every
    /// touch misses once the budget is below the footprint; readahead and prefetching help).
    Sequential,
    /// A Python program: the demo's (~36 MiB of small objects), hashing them six times.
    Python,
    /// `xz -9 -T1` compressing a generated text corpus (`--xz-corpus`, default 6 MiB: about
    /// 80 MiB of peak RSS).
    Xz,
    /// `redis-server` driven by the bench from outside the budget: SETs of `--redis-dataset`,
    /// random GETs, a `BGSAVE` (a fork), `SHUTDOWN NOSAVE`.
    Redis,
}

/// Arguments of `yonder-bench compare`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Local memory as percentages of the workload's anonymous footprint.
    #[arg(long, value_delimiter = ',', default_value = "100,75,50,25")]
    pub ratios: Vec<u32>,
    /// Modes to run (all local always runs: it is the reference and gives the footprint).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "local,yonder,zram,file"
    )]
    pub modes: Vec<Mode>,
    /// Built-in workloads (ignored when a COMMAND is given).
    #[arg(
        long = "workload",
        value_enum,
        value_delimiter = ',',
        default_value = "random,zipfian"
    )]
    pub workloads: Vec<Builtin>,
    /// Memory the random and zipfian workloads fill.
    #[arg(long, default_value = "128MiB")]
    pub size: ByteSize,
    /// What the touch workloads fill their pages with (compressible: about 2:1, which favours
    /// zram; random: incompressible).
    #[arg(long, value_enum, default_value = "random")]
    pub fill: crate::workload::Fill,
    /// Timed touches of the random and zipfian workloads (default: twice the pages).
    #[arg(long)]
    pub touches: Option<u64>,
    /// Size of the generated text corpus the xz workload compresses.
    #[arg(long, default_value = "6MiB")]
    pub xz_corpus: ByteSize,
    /// Bytes of values the redis workload loads (keys and Redis's own overhead come on top).
    #[arg(long, default_value = "256MiB")]
    pub redis_dataset: ByteSize,
    /// Mean length of a value of the redis workload, bytes (each is 50–150 % of it).
    #[arg(long, default_value_t = 400)]
    pub redis_value_bytes: u64,
    /// Random GETs of the redis workload (default: as many as it has keys).
    #[arg(long)]
    pub redis_gets: Option<u64>,
    /// Runs of each configuration; the tables show the median.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Memory servers started on loopback for Yonder.
    #[arg(long, default_value_t = 2)]
    pub servers: usize,
    /// Copies of each evicted page (`yonder-agent --replicas`).
    #[arg(long, default_value_t = 2)]
    pub replicas: usize,
    /// The agent's eviction policy (`yonder-agent --eviction-policy`: clock or s3fifo); the
    /// agent's default when not given.
    #[arg(long)]
    pub eviction_policy: Option<String>,
    /// Extra `yonder-agent run` flags for the Yonder runs (whitespace-separated, e.g.
    /// `--agent-args=--spin-us=0`).
    #[arg(long, allow_hyphen_values = true)]
    pub agent_args: Option<String>,
    /// Extra flags for the memory servers started on loopback (e.g. `--server-args=--spin-us=0`).
    #[arg(long, allow_hyphen_values = true)]
    pub server_args: Option<String>,
    /// Directory of the swap file (must be on a disk, not tmpfs), and of the xz workload's
    /// corpus and the redis workload's RDB file (in temporary directories removed afterwards).
    #[arg(long, default_value = "/var/tmp")]
    pub swap_dir: PathBuf,
    /// zram compression algorithm (default: the device's).
    #[arg(long)]
    pub zram_algorithm: Option<String>,
    /// Limit the memory cgroup to the anonymous budget alone, without the program's other RSS
    /// (a stricter budget for the kernel than Yonder's; see docs/benchmarks-compare.md).
    #[arg(long)]
    pub memcg_anon_only: bool,
    /// Run even though the machine has swap of its own active (it is recorded in the JSON).
    #[arg(long)]
    pub allow_swap: bool,
    /// Longest run of one configuration, in seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Write the JSON report to FILE, or to stdout with no FILE (the table then goes to stderr).
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-")]
    pub json: Option<PathBuf>,
    /// Also write the tables as Markdown to FILE (as in bench/RESULTS.md).
    #[arg(long, value_name = "FILE")]
    pub markdown: Option<PathBuf>,
    /// Where the charts go (`compare-<workload>.png` and `.svg`).
    #[arg(long, default_value = ".")]
    pub out_dir: PathBuf,
    /// No charts.
    #[arg(long)]
    pub no_plot: bool,
    /// Keep each run's output (the program's, the agent's summary, the Redis driver's phase
    /// times) in DIR, one file per run: `<workload>-<mode>-<local %>-<run>.log`.
    #[arg(long, value_name = "DIR")]
    pub log_dir: Option<PathBuf>,
    /// Name of the COMMAND workload in tables and file names (default: its program's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Measure nothing: print, write and draw the results of an earlier `--json` file.
    #[arg(long, value_name = "FILE")]
    pub from_json: Option<PathBuf>,
    /// Only undo what a killed run left behind (swap, zram device, cgroups, swap file), then exit.
    #[arg(long)]
    pub restore: bool,
    /// Any program to compare instead of the built-ins (its completion time is measured).
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

impl Default for Args {
    /// The defaults of the command line (`yonder-bench compare` with no options).
    fn default() -> Self {
        #[derive(clap::Parser)]
        struct Wrap {
            #[command(flatten)]
            args: Args,
        }
        <Wrap as clap::Parser>::parse_from(["compare"]).args
    }
}

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

/// One workload of the comparison.
struct Workload {
    /// Its name in tables, JSON and chart files.
    name: String,
    /// Whether it reports touches (the built-in touch workloads).
    touches: bool,
    /// How each run is set up.
    kind: Kind,
}

/// How each run of a workload is set up.
enum Kind {
    /// The same command line every run.
    Command(Vec<String>),
    /// `xz -9 -T1 -k -f CORPUS` on a generated corpus of `bytes` in `dir` (removed on drop).
    Xz {
        /// Kept for its `Drop`, which removes the corpus.
        _dir: tempfile::TempDir,
        corpus: PathBuf,
        bytes: u64,
    },
    /// `redis-server` with its `--dir` in `dir` (removed on drop), driven by the bench.
    Redis {
        dir: tempfile::TempDir,
        config: redis_workload::Config,
    },
}

/// What drives a server workload during a run (on its own thread, while the run is watched).
type Driver<'a> = dyn Fn(&Control) -> anyhow::Result<String> + Sync + 'a;

impl Workload {
    fn command(name: String, argv: Vec<String>, touches: bool) -> Self {
        Self {
            name,
            touches,
            kind: Kind::Command(argv),
        }
    }

    /// The measured command line of a run and, for Redis, its port (a fresh one each run).
    fn plan(&self) -> anyhow::Result<(Vec<String>, Option<u16>)> {
        Ok(match &self.kind {
            Kind::Command(argv) => (argv.clone(), None),
            Kind::Xz { corpus, .. } => (
                ["xz", "-9", "-T1", "-k", "-f"]
                    .map(String::from)
                    .into_iter()
                    .chain([corpus.display().to_string()])
                    .collect(),
                None,
            ),
            Kind::Redis { dir, .. } => {
                let port = redis_workload::free_port()?;
                (redis_workload::server_argv(port, dir.path()), Some(port))
            }
        })
    }

    /// One run: `wrap` makes the command that runs the measured command line in a mode; the
    /// bench drives the server (Redis) and checks the output (xz). A failed check or drive is
    /// the run's `failure`. The run's output files are removed afterwards.
    fn run(
        &self,
        wrap: impl FnOnce(&[String]) -> Command,
        deadline: Duration,
    ) -> anyhow::Result<Outcome> {
        let (argv, port) = self.plan()?;
        let mut cmd = wrap(&argv);
        let result = match (&self.kind, port) {
            (Kind::Redis { dir, config }, Some(port)) => {
                let drive = |c: &Control| redis_workload::drive(config, port, dir.path(), c);
                run_once(&mut cmd, deadline, Some(&drive))
            }
            _ => run_once(&mut cmd, deadline, None),
        };
        let check = match (&result, &self.kind) {
            (Ok(o), Kind::Xz { corpus, bytes, .. }) if o.failure.is_none() => {
                check_xz(corpus, *bytes)
            }
            _ => Ok(()),
        };
        let cleaned = self.clean();
        let mut o = result?;
        if let Err(e) = check {
            o.failure = Some(format!("{e:#}"));
        }
        cleaned?;
        Ok(o)
    }

    /// Removes what a run wrote: xz's output, Redis's RDB files.
    fn clean(&self) -> anyhow::Result<()> {
        match &self.kind {
            Kind::Command(_) => {}
            Kind::Xz { corpus, .. } => {
                let out = xz_output(corpus);
                match std::fs::remove_file(&out) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(e).with_context(|| format!("removing {}", out.display()));
                    }
                    _ => {}
                }
            }
            Kind::Redis { dir, .. } => {
                for e in std::fs::read_dir(dir.path())? {
                    let p = e?.path();
                    std::fs::remove_file(&p)
                        .with_context(|| format!("removing {}", p.display()))?;
                }
            }
        }
        Ok(())
    }
}

/// Where `xz -k` writes its output.
fn xz_output(corpus: &Path) -> PathBuf {
    let mut p = corpus.as_os_str().to_owned();
    p.push(".xz");
    p.into()
}

/// Checks that xz's output is there and says it holds `bytes` (`xz --robot --list` reads the
/// sizes from the file's index: cheap, no decompression).
fn check_xz(corpus: &Path, bytes: u64) -> anyhow::Result<()> {
    let out = xz_output(corpus);
    let list = Command::new("xz")
        .args(["--robot", "--list"])
        .arg(&out)
        .output()
        .context("running xz --list")?;
    let text = String::from_utf8_lossy(&list.stdout);
    let size = text
        .lines()
        .find_map(|l| l.strip_prefix("totals\t"))
        .and_then(|l| l.split('\t').nth(3)?.parse::<u64>().ok());
    anyhow::ensure!(
        list.status.success() && size == Some(bytes),
        "xz's output {} does not hold the {bytes} bytes of the corpus (xz --list: {}{})",
        out.display(),
        text.trim(),
        String::from_utf8_lossy(&list.stderr).trim()
    );
    Ok(())
}

/// A temporary directory for a workload's files in `--swap-dir` (on the disk, like the swap
/// file), named `yonder-bench-<what>-*`.
fn scratch_dir(args: &Args, what: &str) -> anyhow::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("{}{what}-", system::PREFIX))
        .tempdir_in(&args.swap_dir)
        .with_context(|| format!("making a directory in {}", args.swap_dir.display()))
}

/// The workloads to run.
fn workload_commands(args: &Args) -> anyhow::Result<Vec<Workload>> {
    if !args.command.is_empty() {
        let name = args.name.clone().unwrap_or_else(|| {
            Path::new(&args.command[0])
                .file_name()
                .map_or("command".into(), |n| n.to_string_lossy().into_owned())
        });
        return Ok(vec![Workload::command(name, args.command.clone(), false)]);
    }
    let exe = std::env::current_exe()?.display().to_string();
    let pages = args.size.0 / 4096;
    let touches = args.touches.unwrap_or(2 * pages).to_string();
    let fill = match args.fill {
        crate::workload::Fill::Random => "random",
        crate::workload::Fill::Compressible => "compressible",
    };
    // The fill is part of the name (tables, chart files) when it is not the default.
    let name = |pattern: &str| -> String {
        match args.fill {
            crate::workload::Fill::Random => pattern.into(),
            crate::workload::Fill::Compressible => format!("{pattern}-compressible"),
        }
    };
    let mut out = Vec::new();
    for w in &args.workloads {
        let touch = |pattern: &str| -> Vec<String> {
            [
                &exe,
                "workload",
                "--pattern",
                pattern,
                "--size",
                &args.size.0.to_string(),
                "--touches",
                &touches,
                "--settle-ms",
                "0",
                "--fill",
                fill,
            ]
            .map(String::from)
            .into()
        };
        out.push(match w {
            Builtin::Random => Workload::command(name("random"), touch("random"), true),
            Builtin::Zipfian => Workload::command(name("zipfian"), touch("zipfian"), true),
            Builtin::Sequential => Workload::command(name("sequential"), touch("sequential"), true),
            Builtin::Python => Workload::command(
                "python".into(),
                vec![python()?, "-c".into(), PYTHON.into()],
                false,
            ),
            Builtin::Xz => {
                anyhow::ensure!(args.xz_corpus.0 > 0, "--xz-corpus must not be 0");
                let dir = scratch_dir(args, "xz")?;
                let corpus = dir.path().join("corpus.txt");
                corpus::write(&corpus, args.xz_corpus.0 as usize, corpus::SEED)?;
                Workload {
                    name: "xz".into(),
                    touches: false,
                    kind: Kind::Xz {
                        _dir: dir,
                        corpus,
                        bytes: args.xz_corpus.0,
                    },
                }
            }
            Builtin::Redis => {
                anyhow::ensure!(
                    args.redis_dataset.0 > 0 && args.redis_value_bytes > 1,
                    "--redis-dataset must not be 0, --redis-value-bytes at least 2"
                );
                Workload {
                    name: "redis".into(),
                    touches: false,
                    kind: Kind::Redis {
                        dir: scratch_dir(args, "redis")?,
                        config: redis_workload::Config {
                            dataset: args.redis_dataset.0,
                            value_bytes: args.redis_value_bytes,
                            gets: args.redis_gets,
                            seed: redis_workload::SEED,
                        },
                    },
                }
            }
        });
    }
    Ok(out)
}

/// The demo's Python program with more passes, so that the run is not mostly start-up.
const PYTHON: &str = "
import hashlib
data = [bytes([i % 251]) * 200 for i in range(120_000)]
h = hashlib.sha256()
for _ in range(6):
    for b in data:
        h.update(b)
print(h.hexdigest())
";

/// The Python interpreter itself (not a wrapper script that would fork helpers first).
fn python() -> anyhow::Result<String> {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .context("running python3")?;
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

fn measure_workload(
    args: &Args,
    machine: &mut Option<Machine>,
    cluster: Option<&Cluster>,
    w: &Workload,
) -> anyhow::Result<WorkloadReport> {
    let (name, touches) = (w.name.as_str(), w.touches);
    let argv = w.plan()?.0;
    let deadline = Duration::from_secs(args.timeout);
    eprintln!("compare: {name}: all local ({} runs)", args.runs);
    let mut local = Vec::new();
    for run in 0..args.runs {
        let o = w.run(
            |argv| {
                let mut c = Command::new(&argv[0]);
                c.args(&argv[1..]);
                c
            },
            deadline,
        )?;
        keep_log(args, name, Mode::Local, 100, run, &o)?;
        if let Some(why) = &o.failure {
            bail!("{name} failed on its own ({why}):\n{}", o.stderr_tail());
        }
        local.push(o);
    }
    let anon = median_u64(local.iter().map(|o| o.anon_peak));
    let file = median_u64(local.iter().map(|o| o.file_peak));
    anyhow::ensure!(
        anon > 0,
        "{name}: no anonymous memory seen in the all-local run"
    );
    let local_row = summarise(Mode::Local, 100, None, None, &local, touches, 0.0, &[]);
    let base = local_row.time_s;
    let mut rows = vec![local_row];

    let budget = |ratio: u32| anon * u64::from(ratio) / 100;
    if let (Some(cluster), true) = (cluster, args.modes.contains(&Mode::Yonder)) {
        for &ratio in &args.ratios {
            eprintln!("compare: {name}: Yonder at {ratio} %");
            let local_mem = format!("{}KiB", budget(ratio).div_ceil(1024));
            let mut agent_args = cluster.agent_args(&local_mem, args.replicas);
            if let Some(policy) = &args.eviction_policy {
                // Before the "--" that ends the agent's own arguments.
                let at = agent_args.len() - 1;
                agent_args.splice(at..at, ["--eviction-policy".into(), policy.clone()]);
            }
            if let Some(extra) = &args.agent_args {
                let at = agent_args.len() - 1;
                agent_args.splice(at..at, extra.split_whitespace().map(String::from));
            }
            let mut outs = Vec::new();
            for run in 0..args.runs {
                let o = w.run(
                    |argv| {
                        let mut c = Command::new(yonder_tests::bin("yonder-agent"));
                        c.args(&agent_args).args(argv);
                        c
                    },
                    deadline,
                )?;
                keep_log(args, name, Mode::Yonder, ratio, run, &o)?;
                if let Some(why) = &o.failure {
                    eprintln!(
                        "compare: {name}: Yonder at {ratio} % failed ({why}):\n{}",
                        o.stderr_tail()
                    );
                }
                outs.push(o);
            }
            rows.push(summarise(
                Mode::Yonder,
                ratio,
                Some(budget(ratio)),
                None,
                &outs,
                touches,
                base,
                &[],
            ));
        }
    }
    for mode in [Mode::Zram, Mode::File] {
        if !args.modes.contains(&mode) {
            continue;
        }
        let m = machine
            .as_mut()
            .context("the swap modes need the machine guard")?;
        // Room for all of it and then some: swap must never run out.
        let swap_bytes = (anon + file) * 3 / 2 + (64 << 20);
        match mode {
            Mode::Zram => {
                m.zram_swap_on(swap_bytes, args.zram_algorithm.as_deref())?;
            }
            _ => {
                m.file_swap_on(&args.swap_dir, swap_bytes)?;
            }
        }
        eprintln!("compare: {name}: swapon ({})", mode.label());
        let result = (|| -> anyhow::Result<()> {
            for &ratio in &args.ratios {
                eprintln!("compare: {name}: {} at {ratio} %", mode.label());
                let limit = budget(ratio) + if args.memcg_anon_only { 0 } else { file };
                let mut outs = Vec::new();
                let mut peaks = Vec::new();
                for run in 0..args.runs {
                    let memcg = m.cgroup(&format!("{name}-{ratio}-{run}"), limit)?;
                    let o = w.run(
                        |argv| {
                            let mut c = Command::new("sh");
                            c.args(memcg.wrap(argv));
                            c
                        },
                        deadline,
                    );
                    let faults = memcg.stat("pgmajfault").or(memcg.stat("total_pgmajfault"));
                    let peak = memcg.peak();
                    let oom_kills = memcg.oom_kills();
                    m.remove_cgroup(memcg)?;
                    let mut o = o?;
                    o.memcg_faults = faults;
                    if o.failure.is_some() && oom_kills > 0 {
                        o.failure = Some("killed by the memory cgroup's OOM killer".into());
                    }
                    keep_log(args, name, mode, ratio, run, &o)?;
                    if let Some(why) = &o.failure {
                        eprintln!(
                            "compare: {name}: {} at {ratio} % failed ({why}):\n{}",
                            mode.label(),
                            o.stderr_tail()
                        );
                    }
                    peaks.push(peak.unwrap_or(0));
                    outs.push(o);
                }
                rows.push(summarise(
                    mode,
                    ratio,
                    Some(budget(ratio)),
                    Some(limit),
                    &outs,
                    touches,
                    base,
                    &peaks,
                ));
            }
            Ok(())
        })();
        let off = m.swap_off();
        result?;
        off?;
    }
    Ok(WorkloadReport {
        name: name.into(),
        command: argv,
        anon_bytes: anon,
        file_bytes: file,
        has_throughput: touches,
        rows,
    })
}

/// Writes one run's output to `--log-dir`, if given.
fn keep_log(
    args: &Args,
    name: &str,
    mode: Mode,
    ratio: u32,
    run: usize,
    o: &Outcome,
) -> anyhow::Result<()> {
    let Some(dir) = &args.log_dir else {
        return Ok(());
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mode = mode.label().replace(' ', "-");
    let path = dir.join(format!("{name}-{mode}-{ratio}-{run}.log"));
    let text = format!(
        "time {:.3} s, failure {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.wall_s, o.failure, o.stdout, o.stderr
    );
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

#[allow(clippy::too_many_arguments)]
fn summarise(
    mode: Mode,
    ratio: u32,
    local_bytes: Option<u64>,
    memcg_limit_bytes: Option<u64>,
    outs: &[Outcome],
    touches: bool,
    base: f64,
    peaks: &[u64],
) -> Row {
    let failures: Vec<String> = outs.iter().filter_map(|o| o.failure.clone()).collect();
    let ok: Vec<&Outcome> = outs.iter().filter(|o| o.failure.is_none()).collect();
    let times: Vec<f64> = ok.iter().map(|o| o.wall_s).collect();
    let time_s = median(&mut times.clone());
    let reports: Vec<workload::Report> = ok
        .iter()
        .filter_map(|o| {
            o.stdout
                .lines()
                .find_map(|l| l.strip_prefix("result "))
                .and_then(|j| serde_json::from_str(j).ok())
        })
        .collect();
    let throughputs: Vec<f64> = if touches {
        reports.iter().map(|r| r.touches_per_s).collect()
    } else {
        Vec::new()
    };
    let summaries: Vec<AgentSummary> = ok.iter().filter_map(|o| agent_summary(&o.stderr)).collect();
    let misses: Vec<&workload::Report> = reports.iter().filter(|r| r.remote.count > 0).collect();
    let miss = |f: fn(&workload::Report) -> u64| {
        (!misses.is_empty())
            .then(|| median(&mut misses.iter().map(|r| f(r) as f64 / 1e3).collect::<Vec<_>>()))
    };
    let faults = match mode {
        _ if ok.is_empty() => None,
        Mode::Yonder => Some(median_u64(summaries.iter().map(|s| s.remote))),
        Mode::Zram | Mode::File => Some(median_u64(ok.iter().filter_map(|o| o.memcg_faults))),
        Mode::Local => None,
    };
    let (p50, p99) = if summaries.is_empty() {
        (None, None)
    } else {
        (
            Some(median(
                &mut summaries.iter().map(|s| s.p50_us).collect::<Vec<_>>(),
            )),
            Some(median(
                &mut summaries.iter().map(|s| s.p99_us).collect::<Vec<_>>(),
            )),
        )
    };
    Row {
        mode,
        ratio,
        local_bytes,
        memcg_limit_bytes,
        time_s,
        slowdown: if base > 0.0 { time_s / base } else { 1.0 },
        failures,
        times_s: times,
        throughput: (!throughputs.is_empty()).then(|| median(&mut throughputs.clone())),
        throughputs,
        faults,
        remote_p50_us: p50,
        remote_p99_us: p99,
        miss_p50_us: miss(|r| r.remote.p50_ns),
        miss_p99_us: miss(|r| r.remote.p99_ns),
        memcg_peak_bytes: (!peaks.is_empty()).then(|| median_u64(peaks.iter().copied())),
    }
}

/// The agent's remote-fault figures from its exit summary.
struct AgentSummary {
    remote: u64,
    p50_us: f64,
    p99_us: f64,
}

/// Parses "yonder: faults: Z zero-fill, R remote (p50 X µs, p99 Y µs), ...".
fn agent_summary(stderr: &str) -> Option<AgentSummary> {
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("yonder: faults: "))?;
    let (_, rest) = line.split_once("zero-fill, ")?;
    let (remote, rest) = rest.split_once(" remote (p50 ")?;
    let (p50, rest) = rest.split_once(" µs, p99 ")?;
    let (p99, _) = rest.split_once(" µs")?;
    Some(AgentSummary {
        remote: remote.trim().parse().ok()?,
        p50_us: p50.trim().parse().ok()?,
        p99_us: p99.trim().parse().ok()?,
    })
}

fn median_u64(values: impl Iterator<Item = u64>) -> u64 {
    let mut v: Vec<f64> = values.map(|x| x as f64).collect();
    median(&mut v) as u64
}

/// Runs `cmd` in its own process group to the end, sampling the RSS of its process tree; a
/// non-zero exit or running past `deadline` (then the group is killed) is recorded in the
/// outcome's `failure`. With a `driver` (a server workload), the driver runs on its own thread
/// meanwhile; if it fails, the group and the server it found are killed and the run fails. On
/// Ctrl-C it kills the group (and the server) and fails.
fn run_once(
    cmd: &mut Command,
    deadline: Duration,
    driver: Option<&Driver<'_>>,
) -> anyhow::Result<Outcome> {
    if system::interrupted() {
        bail!("interrupted");
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let started = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let pid = child.id();
    let read = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = read(Box::new(child.stdout.take().context("stdout")?));
    let err = read(Box::new(child.stderr.take().context("stderr")?));
    let mut o = Outcome::default();
    let control = Control::default();
    let driver_failed = AtomicBool::new(false);
    // The whole group (the agent, the workload and anything they started), and the server by
    // its PID in case it left the group.
    let kill_all = || {
        system::kill(-(pid as i32), libc::SIGKILL);
        control.kill_server();
    };
    let (status, driven) = std::thread::scope(|scope| {
        let driving = driver.map(|d| {
            scope.spawn(|| {
                let r = d(&control);
                if r.is_err() {
                    driver_failed.store(true, Ordering::Relaxed);
                }
                r
            })
        });
        let watched = (|| -> anyhow::Result<std::process::ExitStatus> {
            let mut next_sample = Instant::now();
            let mut killed = false;
            loop {
                if let Some(status) = child.try_wait()? {
                    return Ok(status);
                }
                if driver_failed.load(Ordering::Relaxed) && !killed {
                    kill_all();
                    killed = true;
                }
                if Instant::now() >= next_sample {
                    let (anon, file) = tree_rss(pid);
                    o.anon_peak = o.anon_peak.max(anon);
                    o.file_peak = o.file_peak.max(file);
                    next_sample = Instant::now() + Duration::from_millis(10);
                }
                if system::interrupted() {
                    bail!("interrupted: killed {cmd:?}");
                }
                if started.elapsed() > deadline {
                    kill_all();
                    o.failure = Some(format!(
                        "timed out after {} s (--timeout)",
                        deadline.as_secs()
                    ));
                    return Ok(child.wait()?);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })();
        // The driver gives up at its next read or write; the scope waits for it.
        control.stop.store(true, Ordering::Relaxed);
        if watched.is_err() {
            kill_all();
            let _ = child.wait();
        }
        let driven = driving.map(|h| {
            h.join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the driver panicked")))
        });
        watched.map(|status| (status, driven))
    })?;
    o.wall_s = started.elapsed().as_secs_f64();
    // Anything of the group still running (a daemonised child) is killed too.
    kill_all();
    o.stdout = out.join().unwrap_or_default();
    o.stderr = err.join().unwrap_or_default();
    match driven {
        Some(Ok(summary)) => o.stdout.push_str(&format!("{summary}\n")),
        Some(Err(e)) if o.failure.is_none() => o.failure = Some(format!("{e:#}")),
        _ => {}
    }
    if !status.success() && o.failure.is_none() {
        o.failure = Some(status.to_string());
    }
    Ok(o)
}

/// Anonymous and other resident memory of process `pid` and its descendants, in bytes. When
/// processes of the workload share pages copy-on-write (more than one of them: a fork),
/// anonymous memory is the sum of their `Pss_Anon`: Redis's BGSAVE child shares the whole
/// dataset until either writes it, and summing `RssAnon` would count it twice. The agent at the
/// root of a Yonder run shares nothing with the program it starts (a fork and exec), so it does
/// not make the tree "forked": `Pss_Anon` walks a process's page tables under its memory map
/// lock, which every 10 ms cost about 7 % of this 2-CPU machine in a Yonder run (perf, session
/// 10), and none in a swap run, whose tree is the program alone.
fn tree_rss(pid: u32) -> (u64, u64) {
    let mut procs = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        procs.push(p);
        todo.extend(yonder_tests::children(p));
    }
    let kb = |s: &str, key: &str| -> u64 {
        s.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let is_agent = |p: u32| {
        std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "yonder-agent")
    };
    let program = procs.iter().filter(|&&p| !is_agent(p)).count();
    let mut anon = 0;
    let mut other = 0;
    for &p in &procs {
        let Ok(s) = std::fs::read_to_string(format!("/proc/{p}/status")) else {
            continue;
        };
        other += (kb(&s, "RssFile:") + kb(&s, "RssShmem:")) * 1024;
        let pss = (program > 1 && !is_agent(p))
            .then(|| std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")).ok())
            .flatten()
            .filter(|r| r.contains("Pss_Anon:"));
        anon += match pss {
            Some(r) => kb(&r, "Pss_Anon:"),
            None => kb(&s, "RssAnon:"),
        } * 1024;
    }
    (anon, other)
}

fn meminfo_total() -> u64 {
    crate::procfs::meminfo_bytes("MemTotal").unwrap_or(0)
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}

/// Columns of the tables.
const COLUMNS: usize = 8;

fn cells(r: &Row) -> [String; COLUMNS] {
    [
        if r.mode == Mode::Local {
            "-".into()
        } else {
            format!("{} %", r.ratio)
        },
        r.mode.label().into(),
        if r.times_s.is_empty() {
            format!("failed ×{}", r.failures.len())
        } else if r.failures.is_empty() {
            format!("{:.2} s", r.time_s)
        } else {
            format!("{:.2} s ({} failed)", r.time_s, r.failures.len())
        },
        if r.times_s.is_empty() {
            "-".into()
        } else {
            format!("{:.2}×", r.slowdown)
        },
        r.throughput.map_or("-".into(), |t| format!("{:.0}", t)),
        r.faults.map_or("-".into(), |f| f.to_string()),
        match (r.miss_p50_us, r.miss_p99_us) {
            (Some(a), Some(b)) => format!("{a:.0} / {b:.0} µs"),
            _ => "-".into(),
        },
        r.local_bytes.map_or("-".into(), mib),
    ]
}

const HEADER: [&str; COLUMNS] = [
    "local",
    "mode",
    "time",
    "× all local",
    "touches/s",
    "faults",
    "miss p50 / p99",
    "budget",
];

/// The tables as plain text, one per workload.
pub fn text_table(report: &CompareReport) -> String {
    let mut s = String::new();
    for w in &report.workloads {
        s.push_str(&format!(
            "\n{}: anonymous footprint {}, other RSS {}; median of {} runs\n",
            w.name,
            mib(w.anon_bytes),
            mib(w.file_bytes),
            report.runs
        ));
        let rows: Vec<[String; COLUMNS]> = w.rows.iter().map(cells).collect();
        let widths: Vec<usize> = (0..COLUMNS)
            .map(|i| {
                rows.iter()
                    .map(|r| r[i].chars().count())
                    .chain([HEADER[i].chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cols: Vec<String>| -> String {
            let mut l = String::new();
            for (i, c) in cols.iter().enumerate() {
                let pad = widths[i] - c.chars().count();
                if i == 1 {
                    l.push_str(&format!("{c}{}  ", " ".repeat(pad)));
                } else {
                    l.push_str(&format!("{}{c}  ", " ".repeat(pad)));
                }
            }
            l.trim_end().to_string() + "\n"
        };
        s.push_str(&line(HEADER.map(String::from).into()));
        for r in rows {
            s.push_str(&line(r.into()));
        }
    }
    s
}

/// The tables as Markdown (for bench/RESULTS.md), one per workload, with a note on the columns.
pub fn markdown(report: &CompareReport) -> String {
    markdown_tables(report) + MARKDOWN_NOTE
}

/// What the Markdown tables' columns mean.
pub const MARKDOWN_NOTE: &str = concat!(
    "time: completion time of the whole program (start to exit); × all local: that time\n",
    "divided by all local's; touches/s: the timed phase of the built-in workloads; faults:\n",
    "Yonder's remote faults or the memory cgroup's major faults (swap-ins); miss p50 / p99:\n",
    "latency of a timed touch of a page that was not resident (the touch workloads' own\n",
    "measure, the same in every mode); \"(n failed)\": runs that failed (the JSON says why,\n",
    "e.g. the memory cgroup's OOM killer), left out of the figures; budget: local memory for\n",
    "anonymous pages (the cgroup's limit adds the program's other RSS).\n",
);

/// The tables as Markdown, one per workload, without the note.
pub fn markdown_tables(report: &CompareReport) -> String {
    let mut s = String::new();
    for w in &report.workloads {
        s.push_str(&format!(
            "### {}: anonymous footprint {}, other RSS {}; median of {} runs\n\n",
            w.name,
            mib(w.anon_bytes),
            mib(w.file_bytes),
            report.runs
        ));
        s.push_str(
            "| local | mode | time | × all local | runs | touches/s | faults | miss p50 / p99 | budget |\n",
        );
        s.push_str("|---:|---|---:|---:|---|---:|---:|---:|---:|\n");
        for r in &w.rows {
            let c = cells(r);
            let runs = r
                .times_s
                .iter()
                .map(|t| format!("{t:.2}"))
                .collect::<Vec<_>>()
                .join(" / ");
            s.push_str(&format!(
                "| {} | {} | {} | {} | {runs} | {} | {} | {} | {} |\n",
                c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]
            ));
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_agent_summary() {
        let s = "x\nyonder: faults: 12 zero-fill, 345 remote (p50 101 µs, p99 250 µs), 0 write-protect; 7 pages prefetched\n";
        let a = agent_summary(s).unwrap();
        assert_eq!(a.remote, 345);
        assert_eq!(a.p50_us, 101.0);
        assert_eq!(a.p99_us, 250.0);
        assert!(agent_summary("nothing").is_none());
    }

    fn row(mode: Mode, ratio: u32, time_s: f64) -> Row {
        Row {
            mode,
            ratio,
            local_bytes: Some(1 << 20),
            memcg_limit_bytes: None,
            time_s,
            times_s: vec![time_s],
            slowdown: time_s,
            failures: vec![],
            throughput: Some(1000.0),
            throughputs: vec![1000.0],
            faults: Some(3),
            remote_p50_us: None,
            remote_p99_us: None,
            miss_p50_us: Some(80.0),
            miss_p99_us: Some(410.0),
            memcg_peak_bytes: None,
        }
    }

    #[test]
    fn tables_have_a_line_per_row() {
        let report = CompareReport {
            machine: MachineInfo {
                kernel: "6.18".into(),
                cpus: 2,
                memory_bytes: 1 << 30,
                cgroup: Some(CgroupVersion::V1),
                zram_algorithm: "lzo-rle".into(),
                page_cluster: "3".into(),
                swappiness: "60".into(),
                other_swap: vec![],
            },
            ratios: vec![50],
            runs: 1,
            servers: 2,
            replicas: 2,
            duration_s: 1.0,
            workloads: vec![WorkloadReport {
                name: "random".into(),
                command: vec![],
                anon_bytes: 2 << 20,
                file_bytes: 1 << 20,
                has_throughput: true,
                rows: vec![row(Mode::Local, 100, 1.0), row(Mode::Yonder, 50, 2.5)],
            }],
        };
        let t = text_table(&report);
        assert_eq!(t.lines().filter(|l| l.contains("Yonder")).count(), 1);
        assert!(t.contains("2.50×"), "{t}");
        let md = markdown(&report);
        assert_eq!(Args::default().ratios, [100, 75, 50, 25]);
        assert!(md.contains("| 50 % | Yonder | 2.50 s | 2.50× |"), "{md}");
    }
}
