//! `yonder-agent`: runs programs with their anonymous memory paged to Yonder memory servers.

use std::{
    ffi::OsString, net::SocketAddr, os::unix::process::ExitStatusExt, path::PathBuf,
    process::ExitCode,
};

use clap::{Parser, Subcommand};
use yonder_agent::agent::{self, RunConfig};
use yonder_common::{size::ByteSize, transport};

/// Yonder node agent.
#[derive(Parser)]
#[command(name = "yonder-agent", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a program with its anonymous memory managed by Yonder.
    Run(Box<RunArgs>),
    /// Serve the workloads of this node (the node daemon).
    Daemon {
        /// Configuration file (TOML).
        #[arg(long, default_value = yonder_agent::daemon::DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Show the node daemon's workloads, budgets, resident memory and fault rates.
    Status {
        /// The daemon's control socket (default: $YONDER_DAEMON, else from /etc/yonder/agent.toml).
        #[arg(long)]
        daemon: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Local memory the program's managed memory may occupy, e.g. 256MiB.
    #[arg(long)]
    local_mem: ByteSize,
    /// Memory servers, HOST:PORT,...; without it a memory server runs on loopback in the agent.
    #[arg(long, value_delimiter = ',')]
    servers: Vec<String>,
    /// Directory with ca.pem and the client certificate (with --servers).
    #[arg(long, default_value = "/etc/yonder/tls")]
    tls_dir: PathBuf,
    /// File stem of the client certificate in the TLS directory.
    #[arg(long, default_value = yonder_common::certs::DEFAULT_CLIENT)]
    cert_name: String,
    /// Fixed datagram size towards the servers on a known path (e.g. 4400).
    #[arg(long, value_parser = parse_mtu)]
    mtu: Option<u16>,
    /// The QUIC client towards the servers: driven (quinn-proto driven by the agent's thread, no
    /// task between a request and the socket) or quinn (Tokio tasks drive it; docs/fault-path.md).
    #[arg(long, value_enum, default_value_t = yonder_agent::remote::Transport::default())]
    transport: yonder_agent::remote::Transport,
    /// Address for the Prometheus metrics endpoint.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// The node daemon's control socket; by default $YONDER_DAEMON, else the daemon configured in
    /// /etc/yonder/agent.toml if that file exists. Without one the agent serves the program itself.
    #[arg(long, conflicts_with = "standalone")]
    daemon: Option<PathBuf>,
    /// Serve the program in this process even if a node daemon is configured.
    #[arg(long)]
    standalone: bool,
    /// Copies of each page on distinct memory servers (capped at the number of servers).
    #[arg(long, default_value_t = 2)]
    replicas: usize,
    /// Acks needed before an evicted page is dropped locally (default: all replicas).
    #[arg(long)]
    write_quorum: Option<usize>,
    /// A memory server that does not answer a request within this many milliseconds is marked
    /// down: reads go to other replicas and its pages are re-replicated. A page whose every
    /// replica stays unreachable for ten times this is declared lost (a fatal error).
    #[arg(long, default_value_t = 2000)]
    server_timeout_ms: u64,
    /// Which pages leave first under memory pressure: s3fifo or clock (docs/eviction.md).
    #[arg(long, default_value_t = yonder_agent::eviction::Policy::default())]
    eviction_policy: yonder_agent::eviction::Policy,
    /// Spin instead of sleeping for this many microseconds after each fault or reply (and while a
    /// fetch is in flight, up to 2 ms), so the next event needs no wake-up; 0 never spins
    /// (docs/fault-path.md).
    #[arg(long, default_value_t = yonder_agent::spin::DEFAULT_WINDOW_US)]
    spin_us: u64,
    /// Share of the budget, percent, kept parked as an access probe before it is saved: a page
    /// the program touches meanwhile comes back at the cost of a local fault and is kept
    /// (docs/eviction.md); 0 saves pages as soon as they are parked. The most it keeps: the
    /// window shrinks while the program takes two rescues or more per remote fault.
    #[arg(long, default_value_t = yonder_agent::workload::DEFAULT_PARKED_SHARE,
          value_parser = clap::value_parser!(u32).range(0..=yonder_agent::workload::MAX_PARKED_SHARE as i64))]
    parked_share: u32,
    /// How pages leave: `auto` moves them to a parking area where the kernel has `UFFDIO_MOVE`
    /// (Linux 6.8) and write-protects those that cannot move; `protect` write-protects every
    /// page, as on an older kernel (to test or compare that path; docs/eviction.md).
    #[arg(long, default_value = "auto", value_parser = ["auto", "protect"])]
    evict_by: String,
    /// Hand the C library's own mmap and brk to the shim's helper, which registers the new
    /// memory before the program gets it (docs/node-agent.md, "New memory"): auto (when the
    /// workload has CAP_SYS_ADMIN), always (otherwise by setting no_new_privs, which keeps
    /// setuid programs in the workload from gaining privileges), or off (found by scanning).
    #[arg(long, default_value = "auto", value_parser = ["auto", "always", "off"])]
    intercept: String,
    /// The program and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<OsString>,
}

fn parse_mtu(s: &str) -> Result<u16, String> {
    transport::check_mtu(s.parse().map_err(|e| format!("{e}"))?)
}

fn main() -> ExitCode {
    yonder_agent::malloc::one_arena();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = match Cli::parse().command {
        Command::Run(args) => *args,
        Command::Daemon { config } => {
            let result = yonder_agent::daemon::DaemonConfig::from_file(&config)
                .and_then(yonder_agent::daemon::daemon);
            return match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("yonder-agent: {e:#}");
                    ExitCode::from(1)
                }
            };
        }
        Command::Status { daemon, json } => return status(daemon, json),
    };
    // Like a shell waiting for its foreground job: the terminal's ^C and ^\ reach the program
    // directly (same process group); the agent must outlive it to clean up.
    // SAFETY: setting signal dispositions to SIG_IGN before any other thread exists.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGQUIT, libc::SIG_IGN);
    }
    let daemon = if args.standalone {
        None
    } else {
        match yonder_agent::daemon::configured_socket(args.daemon) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("yonder-agent: {e:#}");
                return ExitCode::from(125);
            }
        }
    };
    if args.local_mem.bytes() < yonder_agent::agent::MIN_BUDGET {
        eprintln!(
            "yonder-agent: --local-mem {} is too small: at least {} (64 pages)",
            args.local_mem,
            ByteSize(yonder_agent::agent::MIN_BUDGET)
        );
        return ExitCode::from(125);
    }
    let config = RunConfig {
        local_mem: args.local_mem.bytes(),
        servers: args.servers,
        tls_dir: args.tls_dir,
        cert_name: args.cert_name,
        mtu: args.mtu,
        transport: args.transport,
        metrics: args.metrics,
        command: args.command,
        daemon,
        eviction: args.eviction_policy,
        spin_us: args.spin_us,
        parked_share: args.parked_share,
        protect_only: args.evict_by == "protect",
        intercept: args.intercept,
        policy: yonder_agent::remote::Policy {
            replicas: args.replicas,
            write_quorum: args.write_quorum.unwrap_or(args.replicas),
            timeout: std::time::Duration::from_millis(args.server_timeout_ms),
            lost_after: std::time::Duration::from_millis(args.server_timeout_ms.saturating_mul(10)),
        },
    };
    match agent::run(config) {
        Ok(status) => {
            if let Some(code) = status.code() {
                return ExitCode::from(code as u8);
            }
            let sig = status.signal().unwrap_or(libc::SIGKILL);
            // Die of the same signal so that our parent sees what the program's would have.
            // SAFETY: resetting a disposition and raising a signal on ourselves.
            unsafe {
                libc::signal(sig, libc::SIG_DFL);
                libc::raise(sig);
            }
            ExitCode::from(128 + sig as u8)
        }
        Err(e) => {
            eprintln!("yonder-agent: {e:#}");
            ExitCode::from(125)
        }
    }
}

fn status(daemon: Option<PathBuf>, json: bool) -> ExitCode {
    use yonder_agent::daemon::{self, Control, Reply, Request};
    let run = || -> anyhow::Result<()> {
        let socket = daemon::configured_socket(daemon)?.ok_or_else(|| {
            anyhow::anyhow!(
                "no node daemon configured (--daemon, ${}, or {})",
                daemon::SOCKET_ENV,
                daemon::DEFAULT_CONFIG
            )
        })?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let reply = rt.block_on(async {
            let mut c = Control::connect(&socket).await?;
            c.send(&Request::Status).await?;
            c.recv().await
        })?;
        match reply {
            Some(Reply::Status(s)) => daemon::print_status(&s, json),
            other => anyhow::bail!("unexpected reply from the daemon: {other:?}"),
        }
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("yonder-agent: {e:#}");
            ExitCode::from(1)
        }
    }
}
