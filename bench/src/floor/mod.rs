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
//! - **QUIC DATAGRAM 4 KiB**: the same as unreliable QUIC DATAGRAM frames (RFC 9221) instead of
//!   a stream: what a read path without streams would cost (issue 13 asks for the comparison;
//!   docs/fault-path.md has it). A lost reply would be retried by asking again after 50 ms.
//! - **QUIC 4 KiB, quinn-proto by hand**: the stream floor again, with quinn-proto driven by one
//!   thread per side that sleeps in `poll(2)`: no Tokio, no quinn tasks ([`proto`]).
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

mod proto;

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
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
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
    /// QUIC round trip as DATAGRAM frames, 32 B request, 4 KiB reply.
    pub quic_dgram_4k: Floor,
    /// QUIC round trip on one stream with quinn-proto driven by hand (no Tokio, no quinn tasks).
    pub quic_proto_4k: Floor,
    /// The same with quinn's client (as the agent's) against the hand-driven server (as the
    /// memory server's `driven` path): what the client's side of quinn costs.
    #[serde(default)]
    pub quic_mixed_4k: Floor,
}

impl Floors {
    /// (name, floor) pairs in report order.
    pub fn named(&self) -> [(&'static str, Floor); 6] {
        [
            ("uffd fault from a local page", self.uffd_local),
            ("UDP round trip, 4 KiB", self.udp_4k),
            ("QUIC round trip, 4 KiB", self.quic_4k),
            ("QUIC DATAGRAM round trip, 4 KiB", self.quic_dgram_4k),
            ("QUIC, quinn-proto by hand, 4 KiB", self.quic_proto_4k),
            ("QUIC, quinn client to by hand", self.quic_mixed_4k),
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
        quic_4k: both(&|pin| quic(samples, pin, Frames::Stream)).context("QUIC floor")?,
        quic_dgram_4k: both(&|pin| quic(samples, pin, Frames::Datagram))
            .context("QUIC DATAGRAM floor")?,
        quic_proto_4k: both(&|pin| quic_by_hand(samples, pin, false))
            .context("QUIC floor with quinn-proto by hand")?,
        quic_mixed_4k: both(&|pin| quic_by_hand(samples, pin, true))
            .context("QUIC floor, quinn's client to a hand-driven server")?,
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

fn quic_by_hand(samples: usize, pin: bool, quinn_client: bool) -> anyhow::Result<Summary> {
    let dir = tempfile::Builder::new()
        .prefix("yonder-bench-floor-")
        .tempdir()?;
    certs::create(&certs::CertPlan::loopback(dir.path()))?;
    let mtu = Some(crate::cluster::LOOPBACK_MTU);
    let server_config = tls::server_config(&tls::TlsFiles::in_dir(dir.path(), "server"), mtu)?;
    let client_config = tls::client_config(&tls::TlsFiles::in_dir(dir.path(), "client"), mtu)?;
    let quinn_client = quinn_client.then(|| client_config.clone());
    proto::quic_proto(samples, pin, server_config, client_config, quinn_client)
}

/// How the QUIC floor carries its requests and replies.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Frames {
    /// One bidirectional stream, reused for every round trip.
    Stream,
    /// DATAGRAM frames: no stream state, no retransmission (a lost reply is asked for again).
    Datagram,
}

/// How long the DATAGRAM floor waits for a reply before asking again.
const DATAGRAM_RETRY: std::time::Duration = std::time::Duration::from_millis(50);

fn quic(samples: usize, pin: bool, frames: Frames) -> anyhow::Result<Summary> {
    let dir = tempfile::Builder::new()
        .prefix("yonder-bench-floor-")
        .tempdir()?;
    certs::create(&certs::CertPlan::loopback(dir.path()))?;
    let mtu = Some(crate::cluster::LOOPBACK_MTU);
    let mut server_config = tls::server_config(&tls::TlsFiles::in_dir(dir.path(), "server"), mtu)?;
    let mut client_config = tls::client_config(&tls::TlsFiles::in_dir(dir.path(), "client"), mtu)?;
    if frames == Frames::Datagram {
        // Yonder's transport refuses DATAGRAM frames; this floor accepts them on both ends.
        let mut t = transport::transport_config(mtu);
        t.datagram_receive_buffer_size(Some(1 << 20));
        let t = std::sync::Arc::new(t);
        server_config.transport_config(t.clone());
        client_config.transport_config(t);
    }
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
                    let reply = vec![7u8; PAGE];
                    if frames == Frames::Datagram {
                        // Until the client closes: a retried request is answered again. The
                        // reply starts with the request's number, as a real one names its page.
                        while let Ok(req) = conn.read_datagram().await {
                            anyhow::ensure!(req.len() == 32, "short DATAGRAM request");
                            let mut page = reply.clone();
                            page[..8].copy_from_slice(&req[..8]);
                            conn.send_datagram(page.into())?;
                        }
                        ep.wait_idle().await;
                        return anyhow::Ok(());
                    }
                    let (mut send, mut recv) = conn.accept_bi().await?;
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
                let mut h = histogram();
                if frames == Frames::Datagram {
                    anyhow::ensure!(
                        conn.max_datagram_size().is_some_and(|m| m >= PAGE),
                        "a page does not fit one DATAGRAM frame at this datagram size"
                    );
                    for n in 0..samples as u64 {
                        let mut req = vec![1u8; 32];
                        req[..8].copy_from_slice(&n.to_le_bytes());
                        let req = bytes::Bytes::from(req);
                        let t = Instant::now();
                        'ask: loop {
                            conn.send_datagram(req.clone())?;
                            let deadline = tokio::time::Instant::now() + DATAGRAM_RETRY;
                            // A late reply to an earlier request (after a retry) is skipped.
                            while let Ok(reply) =
                                tokio::time::timeout_at(deadline, conn.read_datagram()).await
                            {
                                let reply = reply?;
                                anyhow::ensure!(reply.len() == PAGE, "short DATAGRAM reply");
                                if reply[..8] == n.to_le_bytes() {
                                    break 'ask;
                                }
                            }
                        }
                        h.record(t.elapsed().as_nanos() as u64)?;
                    }
                    conn.close(0u32.into(), b"done");
                    ep.wait_idle().await;
                    return Ok(Summary::of(&h));
                }
                let (mut send, mut recv) = conn.open_bi().await?;
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
