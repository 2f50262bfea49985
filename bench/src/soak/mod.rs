//! `yonder-bench soak`: a long run under failures. Three memory servers on loopback, the soak
//! workload (`soak_workload.rs`) under the real `yonder-agent` with R = 2 at 25 % local memory,
//! verifying every page it reads; every 30–120 s (`--kill-every`) one server, chosen at random,
//! is SIGKILLed and, after 1–5 s (`--down-for`), started again on the same address with an empty
//! store. At the end: bytes lost (must be 0), kills, pages verified, pages re-replicated by the
//! agent, and the pauses the workload saw. docs/soak.md explains the definitions.

use std::{path::PathBuf, str::FromStr, time::Duration};

use anyhow::bail;
use rand::Rng;
use serde::{Deserialize, Serialize};
use yonder_common::size::ByteSize;

use crate::{run_info, soak_workload::Mismatch};

mod observe;
mod render;
mod runner;

pub use render::{markdown, text};
pub use runner::soak;

/// A range of seconds, `MIN-MAX` (or one figure).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Span {
    /// Shortest, seconds.
    pub min: f64,
    /// Longest, seconds.
    pub max: f64,
}

impl FromStr for Span {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s.split_once('-').unwrap_or((s, s));
        let num = |v: &str| {
            v.trim()
                .parse::<f64>()
                .map_err(|_| format!("{s:?}: expected seconds as MIN-MAX, e.g. 30-120"))
        };
        let (min, max) = (num(a)?, num(b)?);
        if !(min.is_finite() && max.is_finite() && 0.0 <= min && min <= max) {
            return Err(format!("{s:?}: expected 0 <= MIN <= MAX"));
        }
        Ok(Self { min, max })
    }
}

impl Span {
    fn draw(&self, rng: &mut impl Rng) -> Duration {
        let s = if self.max > self.min {
            rng.random_range(self.min..=self.max)
        } else {
            self.min
        };
        Duration::from_secs_f64(s)
    }

    fn text(&self) -> String {
        if self.min == self.max {
            format!("{} s", self.min)
        } else {
            format!("{}–{} s", self.min, self.max)
        }
    }
}

/// Arguments of `yonder-bench soak`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// How long the workload visits random pages, in minutes (fractions allowed).
    #[arg(long)]
    pub minutes: f64,
    /// Print one JSON object instead of the summary.
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON object to this file (e.g. bench/results/soak.json, which
    /// `yonder-bench report` renders).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Seconds between server kills, drawn uniformly from MIN-MAX.
    #[arg(long, default_value = "30-120")]
    pub kill_every: Span,
    /// Seconds a killed server stays down before it is started again, MIN-MAX.
    #[arg(long, default_value = "1-5")]
    pub down_for: Span,
    /// Longest wait, in seconds, for every server to be up and every page to have its replicas
    /// before a due kill; after it the kill happens anyway (and is counted as forced).
    #[arg(long, default_value_t = 120)]
    pub repair_wait: u64,
    /// Memory the workload maps and writes.
    #[arg(long, default_value = "64MiB")]
    pub size: ByteSize,
    /// Local memory as a percentage of `--size`.
    #[arg(long, default_value_t = 25)]
    pub local_pct: u32,
    /// Memory servers started on loopback.
    #[arg(long, default_value_t = 3)]
    pub servers: usize,
    /// Copies of each evicted page.
    #[arg(long, default_value_t = 2)]
    pub replicas: usize,
    /// Percentage of page visits that rewrite the page.
    #[arg(long, default_value_t = 50)]
    pub write_pct: u8,
    /// Seed of the kill schedule and of the workload (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// `--server-timeout-ms` for the agent (default: the agent's own, 2000).
    #[arg(long)]
    pub server_timeout_ms: Option<u64>,
    /// Directory for the logs of the agent, the workload and the servers (default: a new
    /// directory under the temporary directory, kept).
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
}

/// One server kill.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Kill {
    /// Seconds since the workload's random visits began.
    pub at_s: f64,
    /// Index of the server (0-based).
    pub server: usize,
    /// Seconds it stayed down (killed → started again and listening).
    pub down_s: f64,
    /// Seconds the kill waited, once due, for a cluster with every server up and no page short of
    /// copies.
    pub waited_s: f64,
    /// Whether it happened without that (after `--repair-wait`).
    pub forced: bool,
}

/// What `yonder-bench soak` measured: the JSON object it prints and writes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SoakReport {
    /// The exact command.
    pub command: String,
    /// When it started (UTC).
    pub date: String,
    /// The commit it was built from (`git rev-parse --short HEAD` in the working directory,
    /// `-dirty` when there were uncommitted changes).
    pub commit: String,
    /// The machine's kernel and CPU count.
    pub machine: String,
    /// Minutes of random visits asked for.
    pub minutes: f64,
    /// What the workload does.
    pub workload: String,
    /// Memory the workload maps, bytes.
    pub size: u64,
    /// Local memory of the workload, bytes.
    pub local_mem: u64,
    /// Copies of each evicted page.
    pub replicas: usize,
    /// Memory servers.
    pub servers: usize,
    /// Seconds between kills (range).
    pub kill_every_s: Span,
    /// Seconds a killed server stays down (range).
    pub down_for_s: Span,
    /// The agent's request deadline, if not its default.
    pub server_timeout_ms: Option<u64>,
    /// Seed of the kill schedule and of the workload.
    pub seed: u64,
    /// Whether the run passed: nothing lost, the workload finished and exited 0.
    pub ok: bool,
    /// Why it did not pass (empty when it did).
    pub failure: String,
    /// Bytes read back different from what was written, plus 4096 per page the agent could not
    /// read back from any server (it then stops the workload). Must be 0.
    pub bytes_lost: u64,
    /// Servers SIGKILLed.
    pub server_kills: u64,
    /// Kills made before the cluster was whole again (after waiting `--repair-wait`).
    pub forced_kills: u64,
    /// Pages the workload read and checked word by word.
    pub pages_verified: u64,
    /// Pages the agent re-replicated after servers went down or came back empty.
    pub repairs: u64,
    /// Pages still short of copies when the agent ended.
    pub repair_deficit_at_end: u64,
    /// 99th percentile of the workload's page visits (every visit, hits included), ms.
    pub pause_p99_ms: f64,
    /// Longest page visit, ms.
    pub pause_max_ms: f64,
    /// Median page visit, ms.
    pub pause_p50_ms: f64,
    /// 99.9th percentile of page visits, ms.
    pub pause_p999_ms: f64,
    /// Page visits.
    pub touches: u64,
    /// Page visits of a page that was not resident (remote faults).
    pub remote_touches: u64,
    /// Page visits that rewrote the page.
    pub rewrites: u64,
    /// Page visits of 100 ms or more.
    pub touches_over_100ms: u64,
    /// Page visits of 1 s or more.
    pub touches_over_1s: u64,
    /// Words read back wrong.
    pub bad_words: u64,
    /// Pages the agent declared lost (every copy gone).
    pub pages_lost: u64,
    /// The first wrong pages the workload found.
    pub mismatches: Vec<Mismatch>,
    /// "memory server ... is down" lines of the agent.
    pub agent_saw_down: u64,
    /// "memory server ... is back" lines of the agent.
    pub agent_saw_back: u64,
    /// The agent's fatal lines ("... stopping the workload"), if any.
    pub agent_fatal: Vec<String>,
    /// Whether the workload finished its run and its final pass over every page.
    pub workload_finished: bool,
    /// How `yonder-agent run` (and so the workload) ended.
    pub workload_status: String,
    /// Every kill.
    pub kills: Vec<Kill>,
    /// Seconds the whole soak took.
    pub elapsed_s: f64,
    /// Where the logs are.
    pub log_dir: String,
}

/// Runs `yonder-bench soak`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let report = soak(&args, &mut |s| eprintln!("soak: {s}"))?;
    run_info::emit(&report, args.json, args.out.as_deref(), text)?;
    if !report.ok {
        bail!(
            "soak failed: {} (logs in {})",
            report.failure,
            report.log_dir
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_parse_and_refuse_nonsense() {
        assert_eq!(
            "5-10".parse::<Span>().unwrap(),
            Span {
                min: 5.0,
                max: 10.0
            }
        );
        assert_eq!("3".parse::<Span>().unwrap(), Span { min: 3.0, max: 3.0 });
        assert!("10-5".parse::<Span>().is_err());
        assert!("a-b".parse::<Span>().is_err());
    }
}
