//! `yonder-server probe`: connect to a memory server as a client and print its usage figures.
//!
//! Deployment uses it as the server's health check: a listening socket proves little, a completed
//! mutual-TLS handshake, protocol hello and `Stats` reply prove the server serves clients of this
//! cluster at the address and name the agents will use.

use std::{path::PathBuf, time::Duration};
use yonder_common::client::Requests as _;

use anyhow::Context;
use clap::Args;
use yonder_common::{client, tls, transport};

/// Flags of `yonder-server probe`.
#[derive(Args)]
pub struct ProbeArgs {
    /// Server to ask, `HOST:PORT`; HOST must be a name in the server's certificate.
    #[arg(long)]
    server: String,
    /// Directory with ca.pem and the client certificate.
    #[arg(long, default_value = "/etc/yonder/tls")]
    tls_dir: PathBuf,
    /// File stem of the client certificate in the TLS directory (its name is the tenant).
    #[arg(long)]
    cert_name: String,
    /// Fixed datagram size, if the server uses one.
    #[arg(long, value_parser = crate::parse_mtu)]
    mtu: Option<u16>,
    /// Give up after this many milliseconds.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
}

/// Connects, asks for `Stats` and prints one line; an error when the server does not answer.
pub async fn probe(args: ProbeArgs) -> anyhow::Result<()> {
    let files = tls::TlsFiles::in_dir(&args.tls_dir, &args.cert_name);
    if let Some(mtu) = args.mtu {
        transport::check_mtu(mtu).map_err(anyhow::Error::msg)?;
    }
    let config = tls::client_config(&files, args.mtu).context("loading the TLS certificates")?;
    let ask = async {
        let (addr, host) = client::resolve(&args.server).await?;
        let endpoint = client::endpoint(config, addr.is_ipv6())?;
        let c = client::Client::connect(&endpoint, addr, &host, "yonder-server probe").await?;
        let stats = c.stats().await?;
        c.close();
        endpoint.wait_idle().await;
        anyhow::Ok((c.info().clone(), stats))
    };
    let (info, stats) = tokio::time::timeout(Duration::from_millis(args.timeout_ms), ask)
        .await
        .map_err(|_| anyhow::anyhow!("{}: no answer within {} ms", args.server, args.timeout_ms))?
        .with_context(|| format!("probing {}", args.server))?;
    println!(
        "ok {} server={:?} tenant={} capacity_bytes={} used_bytes={} data_pages={} zero_pages={}",
        args.server,
        info.server,
        info.tenant,
        stats.capacity_bytes,
        stats.used_bytes,
        stats.data_pages,
        stats.zero_pages
    );
    Ok(())
}
