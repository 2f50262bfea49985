//! Cooperative paging from Rust: a 64 MiB table in four regions, one hot (pinned local), one cold
//! (flushed as soon as it is written, prefetched before it is scanned again), two left to the
//! agent. Checksums prove the data survives every move. Without the agent it runs the same, with
//! no hints. See docs/client-api.md.
//!
//! ```sh
//! cargo build --workspace && cargo build -p yonder-api --example cooperative
//! target/debug/yonder-agent run --local-mem 24MiB -- target/debug/examples/cooperative
//! ```

use std::time::Instant;

use yonder::{Client, Error};

/// Words per region (16 MiB).
const WORDS: usize = 2 << 20;

/// Byte range of a region, as the API takes it.
fn range(r: &[u64]) -> (*const u8, usize) {
    (r.as_ptr().cast(), std::mem::size_of_val(r))
}

/// Fills a region with a pattern that depends on its index and returns its checksum.
fn fill(r: &mut [u64], seed: u64) -> u64 {
    for (i, w) in r.iter_mut().enumerate() {
        *w = (i as u64 ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    checksum(r)
}

fn checksum(r: &[u64]) -> u64 {
    r.iter()
        .fold(0u64, |acc, w| acc.rotate_left(5) ^ w.wrapping_add(acc))
}

/// Prints what a hint did, or why it did not happen.
fn report(what: &str, r: Result<(), Error>, started: Instant) {
    match r {
        Ok(()) => println!(
            "{what}: ok in {:.1} ms",
            started.elapsed().as_secs_f64() * 1e3
        ),
        Err(e) => println!("{what}: {e}"),
    }
}

fn main() {
    let client = match Client::connect() {
        Ok(c) => Some(c),
        Err(e) => {
            println!("no hints: {e}");
            None
        }
    };
    let hint = |what: &str, f: &dyn Fn(&Client) -> Result<(), Error>| {
        if let Some(c) = &client {
            let t = Instant::now();
            report(what, f(c), t);
        }
    };

    // Large vectors come from mmap calls inside the C library, which the agent's scanner finds
    // within ~10 ms; registering them right away manages them from the first byte.
    let mut regions: Vec<Vec<u64>> = (0..4).map(|_| vec![0u64; WORDS]).collect();
    for (i, r) in regions.iter().enumerate() {
        let (p, n) = range(r);
        hint(&format!("register region {i}"), &|c| c.register(p, n));
    }
    let sums: Vec<u64> = regions
        .iter_mut()
        .enumerate()
        .map(|(i, r)| fill(r, i as u64))
        .collect();

    // Region 3 is cold: push it out now instead of waiting for the agent to find it cold.
    let (cold, cold_len) = range(&regions[3]);
    hint("flush cold region 3", &|c| c.flush(cold, cold_len));

    // Region 0 is hot: keep it local whatever else happens.
    let (hot, hot_len) = range(&regions[0]);
    hint("unregister (pin) hot region 0", &|c| {
        c.unregister(hot, hot_len)
    });
    let t = Instant::now();
    let mut ok = true;
    for _ in 0..4 {
        ok &= checksum(&regions[0]) == sums[0];
    }
    println!(
        "4 scans of the pinned region: {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );

    // About to scan the cold region: ask for it back first.
    hint("prefetch cold region 3", &|c| c.prefetch(cold, cold_len));
    let t = Instant::now();
    ok &= checksum(&regions[3]) == sums[3];
    println!(
        "scan of the cold region: {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );

    for (i, r) in regions.iter().enumerate() {
        let good = checksum(r) == sums[i];
        println!("region {i}: checksum {}", if good { "ok" } else { "BAD" });
        ok &= good;
    }
    if !ok {
        eprintln!("cooperative: data corrupted");
        std::process::exit(1);
    }
    println!("cooperative: all checksums ok");
}
