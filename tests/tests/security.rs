//! Trying to get in: a real `yonder-server` on loopback facing clients it must not serve (expired
//! or not yet valid certificates, other CAs, self-signed certificates, certificates made for
//! another purpose or signed by a non-CA), a tenant asking for another tenant's pages, and a peer
//! that ties up connections and streams while another client must stay served. docs/security.md
//! lists the limits these tests hold the server to.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::{net::SocketAddr, path::Path, time::Duration};
use yonder_common::client::Requests as _;

use rcgen::{
    date_time_ymd, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, Issuer,
    KeyPair, KeyUsagePurpose,
};
use yonder_common::{
    client::{self, Client},
    protocol::*,
    tls::{self, TlsFiles},
    PageKey, PAGE_SIZE,
};
use yonder_tests::{poll, rss_anon, Certs, Server};

/// What a forged client certificate looks like.
struct Forgery {
    /// Subject common name: the tenant it claims.
    name: &'static str,
    /// Validity, as (year, month, day) pairs.
    not_before: (i32, u8, u8),
    not_after: (i32, u8, u8),
    /// The extended key usage it carries.
    usage: ExtendedKeyUsagePurpose,
}

impl Forgery {
    fn client(name: &'static str) -> Self {
        Self {
            name,
            not_before: (2020, 1, 1),
            not_after: (2099, 1, 1),
            usage: ExtendedKeyUsagePurpose::ClientAuth,
        }
    }

    /// Writes `NAME.pem` (the leaf, then `chain`) and `NAME.key` into `dir`, signed by `issuer`
    /// (self-signed when `None`); `dir` also gets the cluster's `ca.pem` to trust the server.
    fn write(&self, dir: &Path, ca_pem: &str, issuer: Option<&Issuer<'_, KeyPair>>, chain: &str) {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, self.name);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![rcgen::SanType::DnsName(self.name.try_into().unwrap())];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![self.usage.clone()];
        let (y, m, d) = self.not_before;
        params.not_before = date_time_ymd(y, m, d);
        let (y, m, d) = self.not_after;
        params.not_after = date_time_ymd(y, m, d);
        let key = KeyPair::generate().unwrap();
        let cert = match issuer {
            Some(issuer) => params.signed_by(&key, issuer).unwrap(),
            None => params.self_signed(&key).unwrap(),
        };
        std::fs::write(dir.join(format!("{}.pem", self.name)), cert.pem() + chain).unwrap();
        std::fs::write(dir.join(format!("{}.key", self.name)), key.serialize_pem()).unwrap();
        std::fs::write(dir.join("ca.pem"), ca_pem).unwrap();
    }
}

/// The cluster CA of `certs`, able to sign (as a stolen `ca.key` would).
fn cluster_issuer(certs: &Certs) -> Issuer<'static, KeyPair> {
    let pem = std::fs::read_to_string(certs.dir().join("ca.pem")).unwrap();
    let key = std::fs::read_to_string(certs.dir().join("ca.key")).unwrap();
    Issuer::from_ca_cert_pem(&pem, KeyPair::from_pem(&key).unwrap()).unwrap()
}

/// Connects with the certificate `name` of `dir` and says hello.
async fn connect_with(dir: &Path, name: &str, addr: SocketAddr) -> anyhow::Result<Client> {
    let config = tls::client_config(&TlsFiles::in_dir(dir, name), None)?;
    let endpoint = client::endpoint(config, false)?;
    Ok(Client::connect(&endpoint, addr, "localhost", "intruder").await?)
}

fn page(seed: u8) -> PageData {
    PageData::Bytes((0..PAGE_SIZE).map(|i| (i as u8) ^ seed).collect())
}

/// Counts the lines of the server's log that contain `what`, waiting up to 10 s for `want`.
fn wait_for_log(server: &Server, what: &str, want: usize) -> usize {
    let count = || server.process.log().matches(what).count();
    poll(Duration::from_secs(10), || (count() >= want).then_some(())).map_or_else(count, |()| want)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_foreign_self_signed_and_misused_certificates_are_refused() {
    let server = Server::start("64MiB", &["client"], &[]).unwrap();
    let good = server.connect("client").await.unwrap();
    good.write(vec![WriteItem {
        key: PageKey::new(1, 1),
        version: 1,
        data: page(1),
    }])
    .await
    .unwrap();
    let ca_pem = std::fs::read_to_string(server.certs.dir().join("ca.pem")).unwrap();
    let issuer = cluster_issuer(&server.certs);
    let dir = tempfile::tempdir().unwrap();

    // The control: the same forging code with the cluster CA and sane dates gets in, so each
    // refusal below is the server checking what the case changes.
    Forgery::client("client").write(dir.path(), &ca_pem, Some(&issuer), "");
    let control = connect_with(dir.path(), "client", server.addr)
        .await
        .unwrap();
    assert_eq!(control.info().tenant, "client");
    control.close();

    let mut refused = Vec::new();
    let mut attempt = |what: &'static str, res: anyhow::Result<Client>| {
        match res {
            Ok(c) => panic!("{what}: served as tenant {:?}", c.info().tenant),
            Err(e) => eprintln!("{what}: refused: {e:#}"),
        }
        refused.push(what);
    };

    let expired = Forgery {
        not_before: (2020, 1, 1),
        not_after: (2021, 1, 1),
        ..Forgery::client("expired")
    };
    expired.write(dir.path(), &ca_pem, Some(&issuer), "");
    attempt(
        "expired",
        connect_with(dir.path(), "expired", server.addr).await,
    );

    let early = Forgery {
        not_before: (2090, 1, 1),
        not_after: (2099, 1, 1),
        ..Forgery::client("early")
    };
    early.write(dir.path(), &ca_pem, Some(&issuer), "");
    attempt(
        "not yet valid",
        connect_with(dir.path(), "early", server.addr).await,
    );

    // Another cluster whose CA has the very same subject ("Yonder cluster CA"), and a
    // certificate for the same tenant name.
    let other = Certs::new(&["client"]).unwrap();
    attempt(
        "another CA",
        other.connect("client", server.addr, None).await,
    );

    Forgery::client("selfsigned").write(dir.path(), &ca_pem, None, "");
    attempt(
        "self-signed",
        connect_with(dir.path(), "selfsigned", server.addr).await,
    );

    // The cluster's own server certificate is valid and signed by the CA, but for server
    // authentication only: it must not make its holder a tenant.
    for ext in ["pem", "key"] {
        std::fs::copy(
            server.certs.dir().join(format!("server.{ext}")),
            dir.path().join(format!("stolen-server.{ext}")),
        )
        .unwrap();
    }
    attempt(
        "server certificate as client",
        connect_with(dir.path(), "stolen-server", server.addr).await,
    );

    // A tenant's certificate used as a CA: it signs a certificate for another tenant name and
    // sends itself along as the intermediate. It is not a CA, so the chain is refused.
    let client_pem = std::fs::read_to_string(server.certs.dir().join("client.pem")).unwrap();
    let client_key = std::fs::read_to_string(server.certs.dir().join("client.key")).unwrap();
    let tenant_as_ca =
        Issuer::from_ca_cert_pem(&client_pem, KeyPair::from_pem(&client_key).unwrap()).unwrap();
    Forgery::client("escalated").write(dir.path(), &ca_pem, Some(&tenant_as_ca), &client_pem);
    attempt(
        "signed by a tenant",
        connect_with(dir.path(), "escalated", server.addr).await,
    );

    // Each refusal happened in the handshake, is logged, and disturbed nobody.
    let logged = wait_for_log(&server, "handshake refused", refused.len());
    assert_eq!(
        logged,
        refused.len(),
        "{refused:?}\n{}",
        server.process.log()
    );
    match &good
        .read(vec![ReadItem {
            key: PageKey::new(1, 1),
            version: 1,
        }])
        .await
        .unwrap()[..]
    {
        [ReadResult::Found { version: 1, data }] => assert!(*data == page(1)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_gets_nothing_of_another_tenants_slots() {
    let server = Server::start("64MiB", &["tenant-a", "tenant-b"], &[]).unwrap();
    let a = server.connect("tenant-a").await.unwrap();
    let keys: Vec<PageKey> = [0, 1, 7, u32::MAX]
        .into_iter()
        .flat_map(|space| [0, 1, 2, u64::MAX].map(|slot| PageKey::new(space, slot)))
        .collect();
    let items = |version, seed: u8| -> Vec<WriteItem> {
        keys.iter()
            .map(|&key| WriteItem {
                key,
                version,
                data: page(seed),
            })
            .collect()
    };
    assert!(a
        .write(items(5, 0xaa))
        .await
        .unwrap()
        .iter()
        .all(|r| *r == WriteResult::Stored));
    let a_usage = a.stats().await.unwrap();

    // Tenant B, whose hello even claims to be tenant A: the tenant comes from the certificate.
    let config = server.certs.client_config("tenant-b").unwrap();
    let endpoint = client::endpoint(config, false).unwrap();
    let b = Client::connect(&endpoint, server.addr, "localhost", "tenant-a")
        .await
        .unwrap();
    assert_eq!(b.info().tenant, "tenant-b");

    for version in [0, 5, u64::MAX] {
        let reads = keys.iter().map(|&key| ReadItem { key, version }).collect();
        let results = b.read(reads).await.unwrap();
        assert!(
            results.iter().all(|r| *r == ReadResult::Missing),
            "B read at version {version}: {results:?}"
        );
    }
    let frees = keys
        .iter()
        .map(|&key| FreeItem {
            key,
            version: u64::MAX,
        })
        .collect();
    assert_eq!(b.free(frees).await.unwrap(), 0, "B freed A's pages");
    for space in [0, 1, 7, u32::MAX] {
        assert_eq!(b.drop_space(space).await.unwrap(), 0, "B dropped A's space");
    }
    let stats = b.stats().await.unwrap();
    assert_eq!((stats.tenant_data_pages, stats.tenant_zero_pages), (0, 0));
    // Writes at the same keys with a version that would supersede A's land in B's namespace.
    assert!(b
        .write(items(u64::MAX, 0xbb))
        .await
        .unwrap()
        .iter()
        .all(|r| *r == WriteResult::Stored));
    let reads = keys
        .iter()
        .map(|&key| ReadItem { key, version: 0 })
        .collect();
    for r in b.read(reads).await.unwrap() {
        assert!(
            matches!(r, ReadResult::Found { version: u64::MAX, ref data } if *data == page(0xbb))
        );
    }

    // A still has exactly what it wrote.
    let reads = keys
        .iter()
        .map(|&key| ReadItem { key, version: 5 })
        .collect();
    for (key, r) in keys.iter().zip(a.read(reads).await.unwrap()) {
        match r {
            ReadResult::Found { version: 5, data } => assert!(data == page(0xaa), "{key:?}"),
            other => panic!("A's page {key:?} is now {other:?}"),
        }
    }
    let after = a.stats().await.unwrap();
    assert_eq!(
        (after.tenant_data_pages, after.tenant_zero_pages),
        (a_usage.tenant_data_pages, a_usage.tenant_zero_pages)
    );
}

/// Opens a connection of tenant `name` from its own endpoint and says hello.
async fn open(server: &Server, name: &str) -> anyhow::Result<(quinn::Endpoint, Client)> {
    let endpoint = client::endpoint(server.certs.client_config(name)?, false)?;
    let c = Client::connect(&endpoint, server.addr, "localhost", "flood").await?;
    Ok((endpoint, c))
}

/// The well-behaved client must be served promptly: a read and a write, each within 10 s (a
/// deadline for "still responsive", not a performance figure).
async fn still_served(good: &Client, round: u64) {
    let key = PageKey::new(1, round % 8);
    let write = good.write(vec![WriteItem {
        key,
        version: round + 1,
        data: page(round as u8),
    }]);
    let res = tokio::time::timeout(Duration::from_secs(10), write).await;
    assert_eq!(
        res.expect("a write of the good client timed out").unwrap(),
        vec![WriteResult::Stored]
    );
    let read = good.read(vec![ReadItem {
        key,
        version: round + 1,
    }]);
    let res = tokio::time::timeout(Duration::from_secs(10), read).await;
    match &res.expect("a read of the good client timed out").unwrap()[..] {
        [ReadResult::Found { data, .. }] => assert!(*data == page(round as u8)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_connections_and_stalled_streams_leaves_others_served() {
    // Must match MAX_CONNECTIONS_PER_TENANT and MAX_STREAMS of the server (docs/security.md).
    const PER_TENANT: usize = 64;
    const STREAMS: usize = yonder_common::transport::MAX_STREAMS as usize;
    // Connections whose every stream announces a full frame and sends nothing more.
    const STALLING: usize = 4;
    let server = Server::start("64MiB", &["client", "mallory"], &[]).unwrap();
    let pid = server.process.pid();
    let good = server.connect("client").await.unwrap();
    still_served(&good, 0).await;
    let rss_before = rss_anon(pid).unwrap();

    // Mallory opens as many connections as a tenant may, and one more.
    let mut flood = Vec::new();
    for i in 0..PER_TENANT {
        flood.push(
            open(&server, "mallory")
                .await
                .unwrap_or_else(|e| panic!("connection {i} of {PER_TENANT}: {e:#}")),
        );
    }
    let over = open(&server, "mallory").await;
    assert!(
        over.is_err(),
        "connection {} of one tenant was served",
        PER_TENANT + 1
    );
    still_served(&good, 1).await;

    // On a few of them, every stream the server allows gets a header announcing the largest
    // frame, then nothing: a slow-loris on the frame reader.
    let header = (MAX_FRAME_BYTES as u32).to_le_bytes();
    let mut stalled = Vec::new();
    for (_, c) in flood.iter().take(STALLING) {
        // The hello's stream stays open as an idle lane of the client: one fewer to open.
        for _ in 1..STREAMS {
            let (mut send, recv) = c.connection().open_bi().await.unwrap();
            send.write_all(&header).await.unwrap();
            stalled.push((send, recv));
        }
        // The server grants no stream beyond its limit: the next open waits.
        let extra = tokio::time::timeout(Duration::from_secs(1), c.connection().open_bi()).await;
        assert!(extra.is_err(), "a stream beyond {STREAMS} was granted");
    }
    for round in 2..12 {
        still_served(&good, round).await;
    }
    // A stalled frame costs the server what was sent, not what the header announced (that
    // would be STALLING * STREAMS * 1.1 MiB, over 1 GiB here).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown = rss_anon(pid).unwrap().saturating_sub(rss_before);
    assert!(
        grown < 256 << 20,
        "the server grew by {} MiB for {} stalled headers (1,108 MiB when read_frame allocated by the header)",
        grown >> 20,
        STALLING * STREAMS
    );
    // Another tenant is not locked out by Mallory's connections.
    let fresh = server.connect("client").await.unwrap();
    still_served(&fresh, 12).await;

    // Once Mallory lets go, its slots come back.
    drop(stalled);
    for (endpoint, c) in flood.drain(..) {
        c.close();
        endpoint.close(0u32.into(), b"");
    }
    let mut again = None;
    for _ in 0..50 {
        if let Ok(c) = open(&server, "mallory").await {
            again = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        again.is_some(),
        "mallory's connection slots never came back"
    );
    let log = server.process.log();
    assert!(log.contains("the tenant has 64 open"), "{log}");
}

/// An agent whose certificate comes from another CA is refused by the server's handshake and
/// says so, over either QUIC client, without starting the program.
#[test]
fn an_agent_of_another_ca_is_refused_with_a_clear_error_over_either_transport() {
    let server = Server::start("64MiB", &["client"], &[]).unwrap();
    let other = Certs::new(&["client"]).unwrap();
    for transport in ["quinn", "driven"] {
        let out = std::process::Command::new(yonder_tests::bin("yonder-agent"))
            .args(["run", "--local-mem", "8MiB", "--standalone", "--servers"])
            .arg(format!("localhost:{}", server.addr.port()))
            .arg("--tls-dir")
            .arg(other.dir())
            .args(["--cert-name", "client", "--transport", transport])
            .args(["--", "sh", "-c", "echo started"])
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{transport}: {stderr}");
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("started"),
            "{transport}: the program must not run without a server: {stderr}"
        );
        assert!(
            stderr.contains("no memory server can be reached"),
            "{transport}: {stderr}"
        );
    }
}
