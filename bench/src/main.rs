//! `yonder-bench`: benchmarks of Yonder and the demo.

mod demo;
mod server_bench;

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
    Server(server_bench::Args),
    /// A short demonstration on an embedded default (a memory server on loopback).
    Demo,
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
        Command::Demo => demo::run(),
    }
}
