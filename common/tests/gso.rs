//! Bulk transfers over QUIC with jumbo datagrams lose nothing (docs/protocol.md, "Datagram
//! size"): quinn's segmentation-offload batches of 8,800-byte datagrams exceed what one `sendmsg`
//! can carry, and without `yonder_common::gso` every such batch was silently dropped.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::net::SocketAddr;

use yonder_common::{certs, tls, transport};

/// Sends `bytes` on one stream (bidirectional: Yonder's endpoints allow no other) from a client to a server, both with datagrams of `mtu` bytes;
/// returns the client's count of lost packets.
fn lost_packets(mtu: u16, bytes: usize) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    certs::create(&certs::CertPlan::loopback(dir.path())).unwrap();
    let server_config =
        tls::server_config(&tls::TlsFiles::in_dir(dir.path(), "server"), Some(mtu)).unwrap();
    let client_config =
        tls::client_config(&tls::TlsFiles::in_dir(dir.path(), "client"), Some(mtu)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let server =
            transport::endpoint("127.0.0.1:0".parse().unwrap(), Some(server_config)).unwrap();
        let addr: SocketAddr = server.local_addr().unwrap();
        let receiver = tokio::spawn(async move {
            let conn = server.accept().await.unwrap().await.unwrap();
            let (_send, mut recv) = conn.accept_bi().await.unwrap();
            let got = recv.read_to_end(usize::MAX).await.unwrap();
            conn.closed().await;
            got
        });
        let mut client = transport::endpoint("127.0.0.1:0".parse().unwrap(), None).unwrap();
        client.set_default_client_config(client_config);
        let conn = client.connect(addr, "localhost").unwrap().await.unwrap();
        let (mut send, _recv) = conn.open_bi().await.unwrap();
        let data: Vec<u8> = (0..bytes).map(|i| (i * 7 + i / 4096) as u8).collect();
        // In pieces, as eviction batches go: each write lets quinn send what it has.
        for chunk in data.chunks(1 << 20) {
            send.write_all(chunk).await.unwrap();
        }
        send.finish().unwrap();
        send.stopped().await.unwrap();
        let lost = conn.stats().path.lost_packets;
        conn.close(0u32.into(), b"done");
        let got = receiver.await.unwrap();
        assert!(got == data, "the stream arrived changed");
        client.wait_idle().await;
        lost
    })
}

fn gso_available() -> bool {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let state = quinn::udp::UdpSocketState::new((&socket).into()).unwrap();
    state.max_gso_segments() > 1
}

#[test]
fn jumbo_datagrams_in_offload_batches_are_not_lost() {
    if !gso_available() {
        eprintln!(
            "SKIPPED: this kernel has no UDP segmentation offload, so quinn sends one datagram \
             per call and there is no batch to split"
        );
        return;
    }
    // Loopback loses nothing by itself: every lost packet is one the sender never sent.
    let lost = lost_packets(8800, 32 << 20);
    assert_eq!(lost, 0, "{lost} packets lost at 8,800-byte datagrams");
    let lost = lost_packets(transport::PAGE_MTU, 16 << 20);
    assert_eq!(lost, 0, "{lost} packets lost at 4,400-byte datagrams");
}
