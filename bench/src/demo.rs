//! The demo: an embedded memory server on loopback with generated certificates, a batch of pages
//! written, read back and verified over real QUIC with mutual TLS; then a Python program run
//! under the node agent with a quarter of its memory local, checked against a plain run.

use std::time::Instant;

use rand::{RngCore, SeedableRng};
use yonder_common::{
    protocol::{PageData, ReadItem, ReadResult, WriteItem, WriteResult, MAX_BATCH_PAGES},
    transport::PAGE_MTU,
    PageKey, PAGE_SIZE,
};
use yonder_tests::Server;

/// Pages the demo stores: 64 MiB.
const PAGES: u64 = 16_384;

pub fn run() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(demo())
}

async fn demo() -> anyhow::Result<()> {
    println!("Starting a memory server on loopback (QUIC, mutual TLS, certificates from `yonder-server certs`)...");
    let server = Server::start_with_mtu("256MiB", &["demo"], &[], Some(PAGE_MTU))?;
    let client = server.connect("demo").await?;
    println!(
        "Connected to {} at {} as tenant {:?}",
        client.info().server,
        server.addr,
        client.info().tenant
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let pages: Vec<Vec<u8>> = (0..PAGES)
        .map(|i| {
            let mut p = vec![0; PAGE_SIZE];
            if i % 4 != 0 {
                rng.fill_bytes(&mut p);
            }
            p
        })
        .collect();

    let t = Instant::now();
    for (start, chunk) in pages.chunks(MAX_BATCH_PAGES).enumerate() {
        let batch = chunk
            .iter()
            .enumerate()
            .map(|(i, p)| WriteItem {
                key: PageKey::new(1, (start * MAX_BATCH_PAGES + i) as u64),
                version: 1,
                data: PageData::from_bytes(p),
            })
            .collect();
        let results = client.write(batch).await?;
        anyhow::ensure!(
            results.iter().all(|r| *r == WriteResult::Stored),
            "write refused"
        );
    }
    let write_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let mut verified = 0;
    for (start, chunk) in pages.chunks(MAX_BATCH_PAGES).enumerate() {
        let batch = (0..chunk.len())
            .map(|i| ReadItem {
                key: PageKey::new(1, (start * MAX_BATCH_PAGES + i) as u64),
                version: 1,
            })
            .collect();
        for (r, want) in client.read(batch).await?.into_iter().zip(chunk) {
            match r {
                ReadResult::Found { data, .. } if data.to_vec() == *want => verified += 1,
                other => anyhow::bail!("page mismatch: {other:?}"),
            }
        }
    }
    let read_s = t.elapsed().as_secs_f64();
    let stats = client.stats().await?;
    let mib = (PAGES as f64 * PAGE_SIZE as f64) / (1 << 20) as f64;
    println!(
        "Wrote  {PAGES} pages ({mib:.0} MiB) in {write_s:.2} s: {:.0} pages/s",
        PAGES as f64 / write_s
    );
    println!("Read   {PAGES} pages back in {read_s:.2} s: {:.0} pages/s, {verified} verified byte for byte", PAGES as f64 / read_s);
    println!(
        "Server holds {} pages with content and {} zero pages (stored as flags), {} MiB charged",
        stats.data_pages,
        stats.zero_pages,
        stats.used_bytes >> 20
    );
    drop(client);
    drop(server);
    agent_demo()
}

/// A Python program whose memory is four times its local budget, run under the agent with its
/// embedded memory server, and checked against a run without Yonder.
const PROGRAM: &str = "
import hashlib
data = [bytes([i % 251]) * 200 for i in range(120_000)]   # ~30 MB of objects
h = hashlib.sha256()
for _ in range(2):
    for b in data:
        h.update(b)
print(h.hexdigest())
";

fn agent_demo() -> anyhow::Result<()> {
    println!();
    println!("Running a Python program (~40 MiB of memory) with 10 MiB of local memory under yonder-agent...");
    // The interpreter itself, not a wrapper script (pyenv's would fork helpers first).
    let exe = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()?;
    let python = String::from_utf8(exe.stdout)?.trim().to_string();
    let plain = std::process::Command::new(&python)
        .args(["-c", PROGRAM])
        .output()?;
    anyhow::ensure!(plain.status.success(), "python3 failed on its own");
    let started = Instant::now();
    let managed = std::process::Command::new(yonder_tests::bin("yonder-agent"))
        .args(["run", "--local-mem", "10MiB", "--", &python, "-c", PROGRAM])
        .output()?;
    let took = started.elapsed().as_secs_f64();
    print!("{}", String::from_utf8_lossy(&managed.stderr));
    anyhow::ensure!(
        managed.status.success(),
        "the program failed under the agent"
    );
    let same = managed.stdout == plain.stdout;
    println!(
        "Result {} the run without Yonder ({:.1} s under Yonder).",
        if same {
            "is identical to"
        } else {
            "DIFFERS from"
        },
        took
    );
    anyhow::ensure!(same, "results differ");
    Ok(())
}
