//! The command line of `compare`: its arguments, the modes and the built-in workloads.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use yonder_common::size::ByteSize;

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
    /// What the swap modes' memory cgroup gets beside the anonymous budget: what the all-local
    /// run's cgroup was charged beyond its anonymous memory, or its other RSS (mapped files,
    /// the libraries' pages included), or nothing (see docs/benchmarks-compare.md).
    #[arg(long, value_enum, default_value_t = MemcgRest::Charged)]
    pub memcg_rest: MemcgRest,
    /// The same as `--memcg-rest none`: the anonymous budget alone (a stricter budget for the
    /// kernel than Yonder's).
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

/// What the memory cgroup's limit adds to the anonymous budget.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemcgRest {
    /// What the all-local run's cgroup was charged beyond its anonymous memory (page cache it
    /// filled, kernel memory): the memory Yonder leaves unlimited that the kernel charges.
    Charged,
    /// The all-local run's other RSS (mapped files and shared memory), charged or not: the
    /// libraries' pages, charged to whoever read them first, give the kernel that much more room.
    Rss,
    /// Nothing: the anonymous budget alone.
    None,
}

impl Args {
    /// The rest the cgroup's limit adds, `--memcg-anon-only` taking precedence.
    pub fn memcg_rest(&self) -> MemcgRest {
        if self.memcg_anon_only {
            MemcgRest::None
        } else {
            self.memcg_rest
        }
    }
}
