//! Connecting to the memory servers a workload pages to, or starting the embedded loopback
//! server when none is named.

use std::time::Duration;

use anyhow::{bail, Context};
use yonder_common::{client, tls, transport};

use crate::{
    embedded::Embedded,
    remote::{Dialer, Policy, Servers, Transport},
};

/// Connects to the memory servers `servers` (or starts the embedded one when empty). Servers
/// that cannot be reached start as down (and are dialled again in the background), as long as
/// one can be.
pub(crate) async fn connect_servers(
    servers: &[String],
    tls_dir: &std::path::Path,
    cert_name: &str,
    mtu: Option<u16>,
    policy: Policy,
    transport: Transport,
) -> anyhow::Result<(Servers, Option<Embedded>)> {
    let (specs, files, mtu, mut embedded) = if servers.is_empty() {
        let e = Embedded::start(u64::MAX / 2).context("starting the embedded memory server")?;
        let dir = e
            .certs()
            .context("the embedded server's certificates are gone")?;
        let files = tls::TlsFiles::in_dir(dir, yonder_common::certs::DEFAULT_CLIENT);
        (
            vec![e.addr.to_string()],
            files,
            Some(transport::PAGE_MTU),
            Some(e),
        )
    } else {
        let files = tls::TlsFiles::in_dir(tls_dir, cert_name);
        (servers.to_vec(), files, mtu, None)
    };
    let tls = tls::client_config(&files, mtu)
        .with_context(|| format!("loading the client certificate {}", files.cert.display()))?;
    if let Some(e) = embedded.as_mut() {
        e.remove_certs();
    }
    let mut clients = Vec::new();
    let mut errors = Vec::new();
    for spec in &specs {
        let (addr, host) = client::resolve(spec).await?;
        let endpoint = client::endpoint(tls.clone(), addr.is_ipv6())?;
        let dialer = Dialer {
            endpoint,
            config: tls.clone(),
            transport,
            addr,
            host,
        };
        let c =
            tokio::time::timeout(policy.timeout.max(Duration::from_secs(5)), dialer.dial()).await;
        let c = match c {
            Ok(Ok(c)) => Some(c),
            Ok(Err(e)) => {
                errors.push(format!("{spec}: {e}"));
                None
            }
            Err(_) => {
                errors.push(format!("{spec}: no answer"));
                None
            }
        };
        clients.push((spec.clone(), c, embedded.is_none().then_some(dialer)));
    }
    if clients.iter().all(|c| c.1.is_none()) {
        bail!("no memory server can be reached: {}", errors.join("; "));
    }
    for e in &errors {
        eprintln!("yonder: memory server {e}; it counts as down until it answers");
    }
    Ok((Servers::new(clients, policy), embedded))
}
