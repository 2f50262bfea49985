//! `yonder-agent`: the node agent. Running workloads under it is the next piece of work; until
//! then the binary refuses clearly instead of pretending.

use clap::Parser;

/// Yonder node agent (not yet implemented: it does not run workloads yet).
#[derive(Parser)]
#[command(name = "yonder-agent", version)]
struct Cli {
    /// Arguments reserved for the agent's subcommands.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

fn main() -> std::process::ExitCode {
    let _ = Cli::parse();
    eprintln!(
        "yonder-agent: running workloads is not implemented yet; only yonder-server is usable"
    );
    std::process::ExitCode::from(2)
}
