//! The embedded default: with no `--servers`, the agent runs a memory server on loopback itself,
//! with real QUIC and TLS and certificates it generates, so `yonder-agent run` works on one
//! machine as is.

use std::{
    net::SocketAddr,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use anyhow::Context;
use yonder_common::{certs, tls, transport};
use yonder_server::{driven, store::Store};

/// A memory server running on a thread of the agent.
pub struct Embedded {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The certificates, until [`Self::remove_certs`].
    dir: Option<tempfile::TempDir>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Embedded {
    /// Creates certificates in a private temporary directory and starts the server: the same
    /// request path as a standalone `yonder-server` (one thread driving quinn-proto, spinning
    /// after requests like it; docs/server-path.md).
    pub fn start(capacity: u64) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("yonder-agent-").tempdir()?;
        certs::create(&certs::CertPlan::loopback(dir.path())).context("creating certificates")?;
        let files = tls::TlsFiles::in_dir(dir.path(), certs::DEFAULT_SERVER);
        let config = tls::server_config(&files, Some(transport::PAGE_MTU))?;
        let socket = driven::bind("127.0.0.1:0".parse().expect("literal"))
            .context("binding the embedded server")?;
        let addr = socket.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("yonder-embedded-server".into())
            .spawn(move || {
                let store = Arc::new(Store::new(capacity));
                let spin = Some(std::time::Duration::from_micros(
                    yonder_server::config::DEFAULT_SPIN_US,
                ));
                // No drain: the server stops when the agent does, and the agent's client is
                // all it serves (closing took 85 ms of every `run`, docs/node-agent.md).
                let drain = std::time::Duration::ZERO;
                if let Err(e) = driven::serve(socket, config, store, spin, &flag, drain) {
                    eprintln!("yonder: the embedded memory server stopped: {e}");
                }
            })?;
        Ok(Self {
            addr,
            dir: Some(dir),
            stop,
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
        self.stop.store(true, Ordering::Relaxed);
        // Wake the thread from its sleep in poll(2) (up to 50 ms otherwise): a datagram too
        // short to be QUIC, which the endpoint drops.
        if let Ok(s) = std::net::UdpSocket::bind("127.0.0.1:0") {
            let _ = s.send_to(&[0], self.addr);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
