//! `yonder-server`: serve pages to node agents, or create the cluster's certificates.

use std::{
    io::Write,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tracing::info;
use yonder_common::{certs, size::ByteSize, tls, transport};
use yonder_server::{
    config::{Io, ServerConfig},
    driven, metrics, server,
    store::Store,
};

mod probe;

/// Yonder memory server: keeps node agents' evicted pages in memory, per tenant, over QUIC + mTLS.
#[derive(Parser)]
#[command(
    name = "yonder-server",
    version,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Create a cluster CA plus server and client certificates in one directory.
    Certs(CertsArgs),
    /// Connect to a memory server as a client, ask for its usage figures and print them; exits
    /// non-zero if it does not answer (a health check).
    Probe(probe::ProbeArgs),
}

/// Flags of the server; each overrides the config file.
#[derive(Args)]
struct ServeArgs {
    /// UDP address to listen on [default: 0.0.0.0:7070].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Memory for pages, e.g. 8GiB [default: 1GiB].
    #[arg(long)]
    capacity: Option<ByteSize>,
    /// Directory with ca.pem and the server certificate [default: /etc/yonder/tls].
    #[arg(long)]
    tls_dir: Option<PathBuf>,
    /// File stem of the server certificate in the TLS directory [default: server].
    #[arg(long)]
    cert_name: Option<String>,
    /// Address for the Prometheus metrics endpoint.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Worker threads serving requests; 1 serves everything on one thread [default: 1].
    #[arg(long)]
    threads: Option<usize>,
    /// Fixed datagram size for a known network path (loopback, jumbo frames), e.g. 4400.
    #[arg(long, value_parser = parse_mtu)]
    mtu: Option<u16>,
    /// Microseconds to keep polling for the next request after a read arrived; 0: sleep at once
    /// [default: 200].
    #[arg(long)]
    spin_us: Option<u64>,
    /// How requests are read and answered: driven (one thread driving quinn-proto) or quinn
    /// (Tokio tasks; the one for --threads above 1) [default: driven, quinn with --threads > 1].
    #[arg(long, value_enum)]
    io: Option<yonder_server::config::Io>,
    /// TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct CertsArgs {
    /// Directory to create the files in (an existing CA there is reused).
    #[arg(long)]
    dir: PathBuf,
    /// Host name or IP address the server certificates are valid for (repeatable).
    #[arg(long = "host", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()])]
    hosts: Vec<String>,
    /// File stem of a server certificate to create (repeatable).
    #[arg(long = "server", default_values_t = [certs::DEFAULT_SERVER.to_string()])]
    servers: Vec<String>,
    /// Name of a client certificate to create; it is also the client's tenant (repeatable).
    #[arg(long = "client", default_values_t = [certs::DEFAULT_CLIENT.to_string()])]
    clients: Vec<String>,
    /// Replace existing server and client certificates (the CA is never replaced).
    #[arg(long)]
    force: bool,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Certs(args)) => make_certs(args),
        Some(Command::Probe(args)) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(probe::probe(args)),
        None => {
            let config = merge(cli.serve)?;
            let runtime = if config.threads <= 1 {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?
            } else {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(config.threads)
                    .enable_all()
                    .build()?
            };
            runtime.block_on(run(config))
        }
    }
}

fn make_certs(args: CertsArgs) -> anyhow::Result<()> {
    let report = certs::create(&certs::CertPlan {
        dir: args.dir.clone(),
        server_hosts: args.hosts,
        servers: args.servers,
        clients: args.clients,
        force: args.force,
    })?;
    for path in &report.written {
        println!("wrote {}", path.display());
    }
    for path in &report.kept {
        println!("kept  {} (exists)", path.display());
    }
    println!(
        "keep {} private: it can sign certificates for the whole cluster",
        args.dir.join(certs::CA_KEY).display()
    );
    Ok(())
}

fn merge(args: ServeArgs) -> anyhow::Result<ServerConfig> {
    let mut config = match &args.config {
        Some(path) => ServerConfig::from_file(path)?,
        None => ServerConfig::default(),
    };
    if let Some(v) = args.listen {
        config.listen = v;
    }
    if let Some(v) = args.capacity {
        config.capacity = v;
    }
    if let Some(v) = args.tls_dir {
        config.tls_dir = v;
    }
    if let Some(v) = args.cert_name {
        config.cert_name = v;
    }
    if let Some(v) = args.threads {
        config.threads = v;
    }
    if let Some(v) = args.mtu {
        config.mtu = Some(v);
    }
    if let Some(v) = args.metrics {
        config.metrics = Some(v);
    }
    if let Some(v) = args.spin_us {
        config.spin_us = v;
    }
    if let Some(v) = args.io {
        config.io = Some(v);
    }
    Ok(config)
}

async fn run(config: ServerConfig) -> anyhow::Result<()> {
    let files = tls::TlsFiles::in_dir(&config.tls_dir, &config.cert_name);
    for path in [&files.ca, &files.cert, &files.key] {
        if !path.exists() {
            anyhow::bail!(
                "{} not found: create the cluster certificates with `yonder-server certs --dir {}`",
                path.display(),
                config.tls_dir.display()
            );
        }
    }
    if let Some(mtu) = config.mtu {
        transport::check_mtu(mtu).map_err(anyhow::Error::msg)?;
    }
    let server_config =
        tls::server_config(&files, config.mtu).context("loading the TLS certificates")?;
    let driven = config.io() == Io::Driven;
    if driven && config.threads > 1 {
        tracing::warn!(
            threads = config.threads,
            "the driven request path serves on one thread: `threads` applies to `io = \"quinn\"`"
        );
    }
    let (endpoint, socket) = if driven {
        let socket = yonder_server::driven::bind(config.listen)
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        (None, Some(socket))
    } else {
        let endpoint = transport::endpoint(config.listen, Some(server_config.clone()))
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        (Some(endpoint), None)
    };
    let local = match (&endpoint, &socket) {
        (Some(e), _) => e.local_addr()?,
        (_, Some(s)) => s.local_addr()?,
        _ => unreachable!("one of the two is bound"),
    };
    if let Some(addr) = config.metrics {
        metrics::install(addr).with_context(|| format!("metrics endpoint on {addr}"))?;
        info!("metrics on http://{addr}/metrics");
    }
    info!(capacity = %config.capacity, io = ?config.io(), "listening on {local}");
    // A machine-readable line for whoever started us with port 0.
    println!("listening on {local}");
    std::io::stdout().flush()?;
    let store = Arc::new(Store::new(config.capacity.bytes()));
    let spin = Some(std::time::Duration::from_micros(config.spin_us));
    if let Some(socket) = socket {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let mut serving = tokio::task::spawn_blocking(move || {
            driven::serve(socket, server_config, store, spin, &flag, driven::DRAIN)
        });
        tokio::select! {
            r = &mut serving => r.context("the request thread panicked")?.context("serving")?,
            () = shutdown_signal() => {
                // The thread closes the connections and ends within its drain time.
                stop.store(true, Ordering::Relaxed);
                serving.await.context("the request thread panicked")?.context("serving")?;
            }
        }
    } else if let Some(endpoint) = endpoint {
        let options = server::ServeOptions { spin };
        server::serve_with(endpoint, store, options, shutdown_signal()).await;
    }
    info!("stopped");
    Ok(())
}

fn parse_mtu(s: &str) -> Result<u16, String> {
    transport::check_mtu(s.parse().map_err(|e| format!("{e}"))?)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot watch SIGTERM: {e}");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
    }
}
