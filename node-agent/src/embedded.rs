//! The embedded default: with no `--servers`, the agent runs a memory server on loopback itself,
//! with real QUIC and TLS and certificates it generates, so `yonder-agent run` works on one
//! machine as is.

use std::{net::SocketAddr, path::Path, sync::Arc};

use anyhow::Context;
use tokio::sync::oneshot;
use yonder_common::{certs, tls, transport};
use yonder_server::{server, store::Store};

/// A memory server running on a thread of the agent.
pub struct Embedded {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The certificates, until [`Self::remove_certs`].
    dir: Option<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Embedded {
    /// Creates certificates in a private temporary directory and starts the server.
    pub fn start(capacity: u64) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("yonder-agent-").tempdir()?;
        certs::create(&certs::CertPlan::loopback(dir.path())).context("creating certificates")?;
        let files = tls::TlsFiles::in_dir(dir.path(), certs::DEFAULT_SERVER);
        let config = tls::server_config(&files, Some(transport::PAGE_MTU))?;
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("yonder-embedded-server".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = addr_tx.send(Err(anyhow::anyhow!("runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(async move {
                    let endpoint = match transport::endpoint(
                        "127.0.0.1:0".parse().expect("literal"),
                        Some(config),
                    ) {
                        Ok(e) => e,
                        Err(e) => {
                            let _ = addr_tx
                                .send(Err(anyhow::anyhow!("binding the embedded server: {e}")));
                            return;
                        }
                    };
                    let _ = addr_tx.send(endpoint.local_addr().map_err(anyhow::Error::from));
                    let store = Arc::new(Store::new(capacity));
                    // Spins after requests like a standalone server (docs/fault-path.md).
                    let options = server::ServeOptions {
                        spin: Some(std::time::Duration::from_micros(
                            yonder_server::config::DEFAULT_SPIN_US,
                        )),
                    };
                    server::serve_with(endpoint, store, options, async {
                        let _ = stop_rx.await;
                    })
                    .await;
                });
            })?;
        let addr = addr_rx.recv().context("embedded server thread died")??;
        Ok(Self {
            addr,
            dir: Some(dir),
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The certificate directory (client certificate `client`), until [`Self::remove_certs`].
    pub fn certs(&self) -> Option<&Path> {
        self.dir.as_ref().map(|d| d.path())
    }

    /// Deletes the certificate directory once the server and the client have loaded their
    /// certificates, so that an agent killed by SIGKILL leaves no key behind in /tmp.
    pub fn remove_certs(&mut self) {
        self.dir.take();
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
