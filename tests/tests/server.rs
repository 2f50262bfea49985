//! A real `yonder-server` process on loopback, with certificates made by `yonder-server certs`,
//! driven over QUIC: normal use, capacity, tenant isolation and every kind of bad input.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::{net::UdpSocket, process::Command, sync::Arc, time::Duration};
use yonder_common::client::Requests as _;

use rand::{Rng, RngCore, SeedableRng};
use yonder_common::{
    client::{Client, ClientError},
    codec::{decode_payload, encode_frame},
    protocol::*,
    transport::read_frame,
    transport::PAGE_MTU,
    PageKey, PAGE_SIZE,
};
use yonder_tests::{bin, Certs, Server};

fn pattern(seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut page = vec![0; PAGE_SIZE];
    rng.fill_bytes(&mut page);
    page
}

fn write(space: u32, slot: u64, version: u64, data: PageData) -> WriteItem {
    WriteItem {
        key: PageKey::new(space, slot),
        version,
        data,
    }
}

fn read(space: u32, slot: u64, version: u64) -> ReadItem {
    ReadItem {
        key: PageKey::new(space, slot),
        version,
    }
}

/// Sends raw bytes on a fresh stream and returns the decoded reply.
async fn raw(client: &Client, bytes: &[u8]) -> Response {
    let (mut send, mut recv) = client.connection().open_bi().await.unwrap();
    send.write_all(bytes).await.unwrap();
    let _ = send.finish();
    let mut buf = Vec::new();
    assert!(read_frame(&mut recv, &mut buf).await.unwrap(), "no reply");
    decode_payload(&buf).unwrap()
}

fn error_code(resp: &Response) -> ErrorCode {
    match resp {
        Response::Error { code, .. } => *code,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

/// Checks that `client` still reads back exactly what `write_pattern` stored.
async fn check_pattern(client: &Client, pages: u64) {
    let items = (0..pages).map(|i| read(1, i, 1)).collect();
    let results = client.read(items).await.unwrap();
    for (i, r) in results.into_iter().enumerate() {
        match r {
            ReadResult::Found { version: 1, data } => {
                assert_eq!(data.to_vec(), pattern(i as u64), "page {i}")
            }
            other => panic!("page {i}: {other:?}"),
        }
    }
}

async fn write_pattern(client: &Client, pages: u64) {
    let items = (0..pages)
        .map(|i| write(1, i, 1, PageData::Bytes(pattern(i))))
        .collect();
    let results = client.write(items).await.unwrap();
    assert!(
        results.iter().all(|r| *r == WriteResult::Stored),
        "{results:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_round_trip_with_versions_zero_pages_and_frees() {
    // Both request paths (the default, `driven`, and `quinn`).
    for io in ["driven", "quinn"] {
        pages_round_trip_with_versions_zero_pages_and_frees_with(io).await;
    }
}

async fn pages_round_trip_with_versions_zero_pages_and_frees_with(io: &str) {
    let server = Server::start("64MiB", &["client"], &["--io", io]).unwrap();
    let c = server.connect("client").await.unwrap();
    assert_eq!(c.info().tenant, "client");
    write_pattern(&c, 100).await;
    check_pattern(&c, 100).await;

    // Zero pages, sent as a flag or as bytes, read back as zeros and are stored as flags.
    let res = c
        .write(vec![
            write(2, 0, 1, PageData::Zero),
            write(2, 1, 1, PageData::Bytes(vec![0; PAGE_SIZE])),
        ])
        .await
        .unwrap();
    assert_eq!(res, vec![WriteResult::Stored; 2]);
    let stats = c.stats().await.unwrap();
    assert_eq!((stats.data_pages, stats.zero_pages), (100, 2));
    assert_eq!((stats.tenant_data_pages, stats.tenant_zero_pages), (100, 2));
    for r in c.read(vec![read(2, 0, 1), read(2, 1, 1)]).await.unwrap() {
        assert_eq!(
            r,
            ReadResult::Found {
                version: 1,
                data: PageData::Zero
            }
        );
    }

    // An older version never replaces a newer one; a reader expecting newer data gets "stale".
    let res = c
        .write(vec![write(1, 5, 3, PageData::Bytes(pattern(500)))])
        .await
        .unwrap();
    assert_eq!(res, vec![WriteResult::Stored]);
    let res = c
        .write(vec![write(1, 5, 2, PageData::Bytes(pattern(999)))])
        .await
        .unwrap();
    assert_eq!(res, vec![WriteResult::Superseded { stored_version: 3 }]);
    assert_eq!(
        c.read(vec![read(1, 5, 4)]).await.unwrap(),
        vec![ReadResult::Stale { stored_version: 3 }]
    );
    match &c.read(vec![read(1, 5, 3)]).await.unwrap()[0] {
        ReadResult::Found { version: 3, data } => assert_eq!(data.to_vec(), pattern(500)),
        other => panic!("{other:?}"),
    }

    // Frees respect versions; dropping a space frees all of it.
    let freed = c
        .free(vec![
            FreeItem {
                key: PageKey::new(1, 5),
                version: 2,
            },
            FreeItem {
                key: PageKey::new(1, 6),
                version: 1,
            },
        ])
        .await
        .unwrap();
    assert_eq!(freed, 1);
    assert_eq!(
        c.read(vec![read(1, 6, 0)]).await.unwrap(),
        vec![ReadResult::Missing]
    );
    assert_eq!(c.drop_space(1).await.unwrap(), 99);
    assert_eq!(c.drop_space(2).await.unwrap(), 2);
    let stats = c.stats().await.unwrap();
    assert_eq!(
        (stats.data_pages, stats.zero_pages, stats.used_bytes),
        (0, 0, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_requests_in_flight_on_one_connection_with_a_page_per_packet() {
    let server = Server::start_with_mtu("64MiB", &["client"], &[], Some(PAGE_MTU)).unwrap();
    let c = Arc::new(server.connect("client").await.unwrap());
    let tasks: Vec<_> = (0..64u64)
        .map(|t| {
            let c = c.clone();
            tokio::spawn(async move {
                for round in 0..8u64 {
                    let slot = t * 8 + round;
                    let page = pattern(slot);
                    c.write(vec![write(3, slot, 1, PageData::Bytes(page.clone()))])
                        .await
                        .unwrap();
                    match &c.read(vec![read(3, slot, 1)]).await.unwrap()[0] {
                        ReadResult::Found { data, .. } => assert_eq!(data.to_vec(), page),
                        other => panic!("{other:?}"),
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(c.stats().await.unwrap().data_pages, 512);
    let path = c.connection().stats().path;
    assert_eq!(path.current_mtu, PAGE_MTU, "{path:?}");
}

/// Streams a client abandons in the middle of a request (a hedged read whose answer is no longer
/// wanted drops its lane: FIN on its side, STOP_SENDING on ours) must be given back to QUIC, or
/// each one counts against the connection's stream limit for good and the client's next
/// `open_bi` waits forever. More of them than the limit, then an ordinary request; with either
/// request path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_a_client_abandons_are_given_back_beyond_the_stream_limit() {
    for io in ["driven", "quinn"] {
        let server = Server::start("64MiB", &["client"], &["--io", io]).unwrap();
        let c = server.connect("client").await.unwrap();
        let conn = c.connection();
        let mut frame = Vec::new();
        encode_frame(&Request::Stats, &mut frame).unwrap();
        let limit = yonder_common::transport::MAX_STREAMS as usize;
        for i in 0..limit + 64 {
            let (mut send, mut recv) =
                tokio::time::timeout(Duration::from_secs(10), conn.open_bi())
                    .await
                    .unwrap_or_else(|_| panic!("{io}: stream {i} never opened: streams leak"))
                    .unwrap();
            send.write_all(&frame).await.unwrap();
            if i % 2 == 1 {
                // Half of them read their reply's first byte before going.
                let mut b = [0u8; 1];
                recv.read_exact(&mut b).await.unwrap();
            }
        }
        let stats = tokio::time::timeout(Duration::from_secs(10), c.stats())
            .await
            .unwrap_or_else(|_| panic!("{io}: no answer after abandoned streams"))
            .unwrap();
        assert_eq!(stats.data_pages, 0, "{io}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_exceeded_is_a_clear_reply_and_loses_nothing() {
    let server = Server::start("40KiB", &["client"], &[]).unwrap();
    let c = server.connect("client").await.unwrap();
    assert_eq!(c.info().capacity_bytes, 40 * 1024);
    write_pattern(&c, 10).await;
    let res = c
        .write(vec![write(1, 10, 1, PageData::Bytes(pattern(10)))])
        .await
        .unwrap();
    assert_eq!(res, vec![WriteResult::CapacityExceeded]);
    check_pattern(&c, 10).await;
    // Overwrites of stored pages still work when full.
    let res = c
        .write(vec![write(1, 0, 2, PageData::Bytes(pattern(77)))])
        .await
        .unwrap();
    assert_eq!(res, vec![WriteResult::Stored]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_read_overwrite_or_free_another_tenants_pages() {
    let server = Server::start("64MiB", &["tenant-a", "tenant-b"], &[]).unwrap();
    let a = server.connect("tenant-a").await.unwrap();
    let b = server.connect("tenant-b").await.unwrap();
    assert_eq!(b.info().tenant, "tenant-b");
    write_pattern(&a, 4).await;
    // Same keys, other tenant: nothing to read, and its writes and frees land in its own space.
    assert_eq!(
        b.read(vec![read(1, 0, 0)]).await.unwrap(),
        vec![ReadResult::Missing]
    );
    b.write(vec![write(1, 0, 9, PageData::Bytes(pattern(1000)))])
        .await
        .unwrap();
    assert_eq!(
        b.free(vec![FreeItem {
            key: PageKey::new(1, 1),
            version: u64::MAX
        }])
        .await
        .unwrap(),
        0
    );
    assert_eq!(b.drop_space(1).await.unwrap(), 1);
    check_pattern(&a, 4).await;
    let stats = b.stats().await.unwrap();
    assert_eq!((stats.tenant_data_pages, stats.data_pages), (0, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_truncated_and_oversize_frames_get_error_replies() {
    // Both request paths (the default, `driven`, and `quinn`).
    for io in ["driven", "quinn"] {
        malformed_truncated_and_oversize_frames_get_error_replies_with(io).await;
    }
}

async fn malformed_truncated_and_oversize_frames_get_error_replies_with(io: &str) {
    let server = Server::start("64MiB", &["client"], &["--io", io]).unwrap();
    let c = server.connect("client").await.unwrap();
    write_pattern(&c, 8).await;

    // A valid header with garbage inside, then a valid request on the same stream: both answered.
    let mut bytes = 3u32.to_le_bytes().to_vec();
    bytes.extend_from_slice(&[0xff, 0xff, 0xff]);
    let mut stats = Vec::new();
    encode_frame(&Request::Stats, &mut stats).unwrap();
    bytes.extend_from_slice(&stats);
    let (mut send, mut recv) = c.connection().open_bi().await.unwrap();
    send.write_all(&bytes).await.unwrap();
    let _ = send.finish();
    let mut buf = Vec::new();
    assert!(read_frame(&mut recv, &mut buf).await.unwrap());
    assert_eq!(
        error_code(&decode_payload(&buf).unwrap()),
        ErrorCode::Malformed
    );
    assert!(read_frame(&mut recv, &mut buf).await.unwrap());
    assert!(matches!(decode_payload(&buf).unwrap(), Response::Stats(_)));

    // Truncated: the header promises more than the stream carries.
    let mut bytes = 100u32.to_le_bytes().to_vec();
    bytes.extend_from_slice(&[1; 10]);
    assert_eq!(error_code(&raw(&c, &bytes).await), ErrorCode::Truncated);
    assert_eq!(error_code(&raw(&c, &[1, 0]).await), ErrorCode::Truncated);

    // Oversize: refused from the header alone.
    let bytes = ((MAX_FRAME_BYTES + 1) as u32).to_le_bytes();
    assert_eq!(error_code(&raw(&c, &bytes).await), ErrorCode::FrameTooLarge);
    let bytes = u32::MAX.to_le_bytes();
    assert_eq!(error_code(&raw(&c, &bytes).await), ErrorCode::FrameTooLarge);

    // A batch above the limit, and a page of the wrong size.
    let mut frame = Vec::new();
    let big = (0..=MAX_BATCH_PAGES as u64)
        .map(|i| read(1, i, 0))
        .collect();
    encode_frame(&Request::Read { pages: big }, &mut frame).unwrap();
    assert_eq!(error_code(&raw(&c, &frame).await), ErrorCode::BatchTooLarge);
    encode_frame(
        &Request::Write {
            pages: vec![write(1, 0, 5, PageData::Bytes(vec![1; 17]))],
        },
        &mut frame,
    )
    .unwrap();
    assert_eq!(error_code(&raw(&c, &frame).await), ErrorCode::InvalidPage);

    // Random garbage streams.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for _ in 0..50 {
        let len = rng.random_range(1..64);
        let mut junk = vec![0u8; len];
        rng.fill_bytes(&mut junk);
        let (mut send, mut recv) = c.connection().open_bi().await.unwrap();
        send.write_all(&junk).await.unwrap();
        let _ = send.finish();
        while read_frame(&mut recv, &mut buf).await.unwrap_or(false) {
            assert!(matches!(
                decode_payload(&buf).unwrap(),
                Response::Error { .. } | Response::Hello { .. } | Response::Stats(_)
            ));
        }
    }

    // Nothing stored was harmed and the connection still works.
    check_pattern(&c, 8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_protocol_versions_and_missing_hello_are_refused() {
    let server = Server::start("64MiB", &["client"], &[]).unwrap();
    let c = server.connect("client").await.unwrap();
    let endpoint =
        yonder_common::client::endpoint(server.certs.client_config("client").unwrap(), false)
            .unwrap();
    let conn = endpoint
        .connect(server.addr, "localhost")
        .unwrap()
        .await
        .unwrap();

    let call = |req: Request| {
        let conn = conn.clone();
        async move {
            let mut frame = Vec::new();
            encode_frame(&req, &mut frame).unwrap();
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            send.write_all(&frame).await.unwrap();
            let _ = send.finish();
            let mut buf = Vec::new();
            assert!(read_frame(&mut recv, &mut buf).await.unwrap());
            decode_payload::<Response>(&buf).unwrap()
        }
    };
    assert_eq!(
        error_code(&call(Request::Stats).await),
        ErrorCode::HelloRequired
    );
    let resp = call(Request::Hello {
        protocol_version: PROTOCOL_VERSION + 1,
        client: "future".into(),
    })
    .await;
    match &resp {
        Response::Error {
            code: ErrorCode::UnsupportedVersion,
            message,
        } => {
            assert!(message.contains(&PROTOCOL_VERSION.to_string()), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        error_code(&call(Request::Read { pages: vec![] }).await),
        ErrorCode::HelloRequired
    );
    // The well-behaved client was never disturbed.
    assert!(c.stats().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_a_valid_certificate_are_refused() {
    let server = Server::start("64MiB", &["client"], &[]).unwrap();
    let good = server.connect("client").await.unwrap();
    write_pattern(&good, 4).await;

    // A complete cluster of its own: same names, another CA.
    let other = Certs::new(&["client"]).unwrap();
    let err = other
        .connect("client", server.addr, None)
        .await
        .unwrap_err();
    assert!(err.downcast_ref::<ClientError>().is_some(), "{err}");

    // No client certificate at all.
    let roots = {
        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read(server.certs.dir().join("ca.pem")).unwrap();
        for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
            roots.add(cert.unwrap()).unwrap();
        }
        roots
    };
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let endpoint =
        yonder_common::client::endpoint(quinn::ClientConfig::new(Arc::new(quic)), false).unwrap();
    let res = Client::connect(&endpoint, server.addr, "localhost", "anonymous").await;
    assert!(
        res.is_err(),
        "a client without a certificate must be refused"
    );

    check_pattern(&good, 4).await;
    // The server writes its log on its own time: wait for the line rather than race it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !server.process.log().contains("handshake refused")
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = server.process.log();
    assert!(
        log.contains("handshake refused"),
        "the server logs refusals:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_datagrams_and_vanishing_clients_do_not_disturb_the_server() {
    let server = Server::start("64MiB", &["client"], &[]).unwrap();
    let good = server.connect("client").await.unwrap();
    write_pattern(&good, 16).await;

    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    for i in 0..500 {
        let len = [1, 20, 1200, 1500][i % 4];
        let mut junk = vec![0u8; len];
        rng.fill_bytes(&mut junk);
        if i % 5 == 0 {
            junk[0] = 0xc0; // looks like a QUIC long header
        }
        sock.send_to(&junk, server.addr).unwrap();
    }

    // Clients that die in the middle of a request, with half a write batch sent.
    for _ in 0..5 {
        let endpoint =
            yonder_common::client::endpoint(server.certs.client_config("client").unwrap(), false)
                .unwrap();
        let victim = Client::connect(&endpoint, server.addr, "localhost", "victim")
            .await
            .unwrap();
        let mut frame = Vec::new();
        let pages = (0..64)
            .map(|i| write(1, i, 100, PageData::Bytes(pattern(9999))))
            .collect();
        encode_frame(&Request::Write { pages }, &mut frame).unwrap();
        let (mut send, _recv) = victim.connection().open_bi().await.unwrap();
        send.write_all(&frame[..frame.len() / 2]).await.unwrap();
        drop(send);
        drop(victim);
        endpoint.close(0u32.into(), b"");
        drop(endpoint);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    check_pattern(&good, 16).await;
    let fresh = server.connect("client").await.unwrap();
    check_pattern(&fresh, 16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_server_cleanly_and_metrics_are_served() {
    let metrics_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let mut server = Server::start("64MiB", &["client"], &["--metrics", &metrics_addr]).unwrap();
    let c = server.connect("client").await.unwrap();
    write_pattern(&c, 3).await;
    c.read(vec![read(1, 0, 1)]).await.unwrap();

    let body = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&metrics_addr).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    })
    .await
    .unwrap();
    for needle in [
        "yonder_server_pages_stored 3",
        "yonder_server_requests_total{op=\"write\"} 1",
        "yonder_server_request_duration_seconds_bucket",
        "yonder_server_capacity_bytes",
    ] {
        assert!(body.contains(needle), "metrics lack {needle}:\n{body}");
    }

    server.process.signal(libc::SIGTERM);
    let status = server
        .process
        .wait_timeout(Duration::from_secs(10))
        .expect("server exits after SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    let log = server.process.log();
    assert!(
        log.contains("SIGTERM received") && log.contains("stopped"),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn certs_command_is_safe_to_rerun() {
    let certs = Certs::new(&["client"]).unwrap();
    let ca = std::fs::read(certs.dir().join("ca.pem")).unwrap();
    let client = std::fs::read(certs.dir().join("client.pem")).unwrap();
    let out = Command::new(bin("yonder-server"))
        .args(["certs", "--dir"])
        .arg(certs.dir())
        .args(["--client", "client", "--client", "node-2"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(std::fs::read(certs.dir().join("ca.pem")).unwrap(), ca);
    assert_eq!(
        std::fs::read(certs.dir().join("client.pem")).unwrap(),
        client
    );
    assert!(certs.dir().join("node-2.pem").exists());
}

#[test]
fn an_impossible_mtu_is_refused_up_front() {
    let certs = Certs::new(&["client"]).unwrap();
    let out = Command::new(bin("yonder-server"))
        .args(["--listen", "127.0.0.1:0", "--mtu", "500", "--tls-dir"])
        .arg(certs.dir())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("1200..=9000"), "{err}");
}

#[test]
fn a_missing_certificate_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin("yonder-server"))
        .args(["--listen", "127.0.0.1:0", "--tls-dir"])
        .arg(dir.path().join("nope"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("yonder-server certs --dir"), "{err}");
}
