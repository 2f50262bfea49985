//! `yonder-bench floor`: the latency floors of this machine that a remote fault is made of,
//! measured in the same run as Yonder's figures so the ratios compare like with like.
//!
//! - **uffd local**: a missing-page fault on a userfaultfd-registered region, served by a
//!   handler thread with `UFFDIO_COPY` from a local buffer (the agent's own uffd code), timed
//!   around the touching access. Everything a remote fault costs except the network.
//! - **UDP 4 KiB**: a 32-byte request answered by a 4 KiB datagram over loopback, blocking
//!   sockets, server on another thread.
//! - **QUIC 4 KiB**: the same over one reused QUIC stream (quinn + rustls, mutual TLS, the
//!   transport settings Yonder uses, one page per packet), server on another thread.
//!
//! Each is measured twice: with both threads left to the scheduler (how Yonder runs) and with
//! both pinned to one CPU (no cross-CPU wake-up; see PLATFORM.md).

use std::{
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use yonder_agent::uffd::{Event, Uffd};
use yonder_common::{certs, tls, transport};

use crate::{
    mem::{Region, PAGE},
    os,
    stats::{histogram, human_ns, Summary},
};

/// Arguments of `yonder-bench floor`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Samples per measurement.
    #[arg(long, default_value_t = 20_000)]
    pub samples: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One floor, with the scheduler's placement and pinned to one CPU.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Floor {
    /// Threads left to the scheduler.
    pub unpinned: Summary,
    /// Both threads on CPU 0.
    pub one_cpu: Summary,
}

/// The machine's floors.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Floors {
    /// Missing fault served by UFFDIO_COPY from a local page.
    pub uffd_local: Floor,
    /// UDP round trip, 32 B request, 4 KiB reply.
    pub udp_4k: Floor,
    /// QUIC round trip on one stream, 32 B request, 4 KiB reply.
    pub quic_4k: Floor,
}

impl Floors {
    /// (name, floor) pairs in report order.
    pub fn named(&self) -> [(&'static str, Floor); 3] {
        [
            ("uffd fault from a local page", self.uffd_local),
            ("UDP round trip, 4 KiB", self.udp_4k),
            ("QUIC round trip, 4 KiB", self.quic_4k),
        ]
    }
}

/// Runs `yonder-bench floor`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let floors = measure(args.samples)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&floors)?);
    } else {
        print!("{}", table(&floors));
    }
    Ok(())
}

/// Measures every floor with `samples` samples each.
pub fn measure(samples: usize) -> anyhow::Result<Floors> {
    let both = |f: &dyn Fn(bool) -> anyhow::Result<Summary>| -> anyhow::Result<Floor> {
        Ok(Floor {
            unpinned: f(false)?,
            one_cpu: f(true)?,
        })
    };
    Ok(Floors {
        uffd_local: both(&|pin| uffd_local(samples, pin)).context("uffd floor")?,
        udp_4k: both(&|pin| udp(samples, pin)).context("UDP floor")?,
        quic_4k: both(&|pin| quic(samples, pin)).context("QUIC floor")?,
    })
}

/// A plain-text table of the floors.
pub fn table(f: &Floors) -> String {
    let mut s = String::from(
        "floor                            unpinned p50    p99      one CPU p50    p99\n",
    );
    for (name, fl) in f.named() {
        s += &format!(
            "{name:<32} {:>10} {:>10}   {:>10} {:>10}\n",
            human_ns(fl.unpinned.p50_ns as f64),
            human_ns(fl.unpinned.p99_ns as f64),
            human_ns(fl.one_cpu.p50_ns as f64),
            human_ns(fl.one_cpu.p99_ns as f64),
        );
    }
    s
}

fn maybe_pin(pin: bool) -> anyhow::Result<()> {
    if pin {
        os::pin_to_cpu(0).context("pinning to CPU 0")?;
    }
    Ok(())
}

/// Runs `f` on a fresh thread (so pinning never leaks into the caller).
fn on_thread<T: Send>(f: impl FnOnce() -> anyhow::Result<T> + Send) -> anyhow::Result<T> {
    std::thread::scope(|s| s.spawn(f).join().expect("floor thread panicked"))
}

fn uffd_local(samples: usize, pin: bool) -> anyhow::Result<Summary> {
    on_thread(|| {
        maybe_pin(pin)?;
        let uffd = Uffd::new(os::new_uffd().context(
            "userfaultfd(2) failed (root, or vm.unprivileged_userfaultfd=1, is needed)",
        )?)?;
        let region = Region::map(samples)?;
        uffd.register(region.base() as u64, (samples * PAGE) as u64)?;
        let stop = AtomicBool::new(false);
        let src = vec![0x5au8; PAGE];
        std::thread::scope(|s| -> anyhow::Result<Summary> {
            let handler = s.spawn(|| -> anyhow::Result<()> {
                maybe_pin(pin)?;
                let mut events = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if !os::wait_readable(uffd.as_raw_fd(), 100)? {
                        continue;
                    }
                    events.clear();
                    uffd.read_events(&mut events)?;
                    for e in &events {
                        if let Event::Fault { page, .. } = e {
                            uffd.copy(*page, &src, false)?;
                        }
                    }
                }
                Ok(())
            });
            let mut h = histogram();
            for p in 0..samples {
                let t = Instant::now();
                let v = region.read(p, 0);
                let ns = t.elapsed().as_nanos() as u64;
                anyhow::ensure!(v == 0x5a5a_5a5a_5a5a_5a5a, "wrong page content");
                h.record(ns)?;
            }
            stop.store(true, Ordering::Relaxed);
            handler.join().expect("handler panicked")?;
            // Unregister before the unmap: with the agent's features an unmap of a registered
            // range waits for a handler to read the event.
            uffd.unregister(region.base() as u64, (samples * PAGE) as u64)?;
            Ok(Summary::of(&h))
        })
    })
}

fn udp(samples: usize, pin: bool) -> anyhow::Result<Summary> {
    on_thread(|| {
        maybe_pin(pin)?;
        let server = UdpSocket::bind("127.0.0.1:0")?;
        let server_addr = server.local_addr()?;
        let client = UdpSocket::bind("127.0.0.1:0")?;
        client.connect(server_addr)?;
        std::thread::scope(|s| -> anyhow::Result<Summary> {
            s.spawn(|| -> anyhow::Result<()> {
                maybe_pin(pin)?;
                let reply = vec![7u8; PAGE];
                let mut req = [0u8; 32];
                for _ in 0..samples {
                    let (_, from) = server.recv_from(&mut req)?;
                    server.send_to(&reply, from)?;
                }
                Ok(())
            });
            let mut h = histogram();
            let mut buf = vec![0u8; PAGE + 64];
            for _ in 0..samples {
                let t = Instant::now();
                client.send(&[1u8; 32])?;
                let n = client.recv(&mut buf)?;
                h.record(t.elapsed().as_nanos() as u64)?;
                anyhow::ensure!(n == PAGE, "short UDP reply");
            }
            Ok(Summary::of(&h))
        })
    })
}

fn quic(samples: usize, pin: bool) -> anyhow::Result<Summary> {
    let dir = tempfile::Builder::new()
        .prefix("yonder-bench-floor-")
        .tempdir()?;
    certs::create(&certs::CertPlan::loopback(dir.path()))?;
    let mtu = Some(crate::cluster::LOOPBACK_MTU);
    let server_config = tls::server_config(&tls::TlsFiles::in_dir(dir.path(), "server"), mtu)?;
    let client_config = tls::client_config(&tls::TlsFiles::in_dir(dir.path(), "client"), mtu)?;
    let (addr_tx, addr_rx) = std::sync::mpsc::channel::<SocketAddr>();
    on_thread(move || {
        std::thread::scope(|s| -> anyhow::Result<Summary> {
            s.spawn(move || -> anyhow::Result<()> {
                maybe_pin(pin)?;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let ep = transport::endpoint("127.0.0.1:0".parse()?, Some(server_config))?;
                    addr_tx.send(ep.local_addr()?)?;
                    let conn = ep.accept().await.context("no client")?.await?;
                    let (mut send, mut recv) = conn.accept_bi().await?;
                    let reply = vec![7u8; PAGE];
                    let mut req = [0u8; 32];
                    for _ in 0..samples {
                        recv.read_exact(&mut req).await?;
                        send.write_all(&reply).await?;
                    }
                    send.finish()?;
                    // Wait for the client to close, so the last reply is delivered.
                    conn.closed().await;
                    ep.wait_idle().await;
                    anyhow::Ok(())
                })
            });
            maybe_pin(pin)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let server = addr_rx.recv()?;
                let mut ep = transport::endpoint("127.0.0.1:0".parse()?, None)?;
                ep.set_default_client_config(client_config);
                let conn = ep.connect(server, "localhost")?.await?;
                let (mut send, mut recv) = conn.open_bi().await?;
                let mut h = histogram();
                let mut page = vec![0u8; PAGE];
                for _ in 0..samples {
                    let t = Instant::now();
                    send.write_all(&[1u8; 32]).await?;
                    recv.read_exact(&mut page).await?;
                    h.record(t.elapsed().as_nanos() as u64)?;
                }
                conn.close(0u32.into(), b"done");
                ep.wait_idle().await;
                Ok(Summary::of(&h))
            })
        })
    })
}
