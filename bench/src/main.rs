//! `yonder-bench`: benchmarks of Yonder and the demo.

mod cluster;
mod compare;
mod corpus;
mod demo;
mod floor;
mod latency;
mod mem;
mod os;
mod pattern;
mod plot;
mod procfs;
mod redis_workload;
mod report;
mod run_info;
mod scale;
mod scrape;
mod server_bench;
mod soak;
mod soak_workload;
mod stats;
mod system;
mod workload;

use clap::{Parser, Subcommand};

/// Yonder benchmarks and demo.
#[derive(Parser)]
#[command(name = "yonder-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Memory server throughput (pages/s over loopback) and memory per stored page.
    Server(server_bench::Cli),
    /// Remote-fault latency measured from the workload's side, per access pattern and thread count.
    Latency(latency::Args),
    /// This machine's latency floors: a uffd fault from a local page, UDP and QUIC 4 KiB round trips.
    Floor(floor::Args),
    /// Yonder side by side with all-local memory and kernel swap (zram, swap file) under a memcg.
    Compare(Box<compare::Args>),
    /// A short demonstration on an embedded default (a memory server on loopback).
    Demo,
    /// Regenerates bench/RESULTS.md: floors, latency, comparison with kernel swap, server throughput.
    Report(report::Args),
    /// A long run under failures: servers SIGKILLed and restarted while a workload under the
    /// agent (R = 2, 25 % local) verifies every page it reads; bytes lost must be 0.
    Soak(soak::Args),
    /// Cost per page and per fault as the workload grows (64 MiB to 16 GiB, what fits): agent and
    /// server RSS per page, remote-fault p50/p99 and faults/s, time to evict the first GiB.
    Scale(scale::Args),
    /// The controlled workload the benchmarks run (under the agent, or plain).
    #[command(hide = true)]
    Workload(workload::Args),
    /// The workload `soak` runs under the agent.
    #[command(hide = true)]
    SoakWorkload(soak_workload::Args),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Server(args) => server_bench::run(args),
        Command::Latency(args) => latency::run(args),
        Command::Floor(args) => floor::run(args),
        Command::Compare(args) => compare::run(*args),
        Command::Demo => demo::run(),
        Command::Report(args) => report::run(args),
        Command::Soak(args) => soak::run(args),
        Command::Scale(args) => scale::run(args),
        Command::Workload(args) => workload::run(args),
        Command::SoakWorkload(args) => soak_workload::run(args),
    }
}
