//! Redis (Debian's `redis-server`) under the node agent with a dataset four times its budget:
//! every value read back, the dataset digest unchanged, and a `BGSAVE` (Redis forks a child that
//! writes the dataset to disk while the parent goes on) that a second, plain Redis loads with the
//! same digest. The agent runs with its embedded memory server, so the pages travel over QUIC.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::Path,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use rand::{RngCore, SeedableRng};
use yonder_tests::{
    bin, free_tcp_port, hang_report, number_after, poll, rss_anon, KillOnDrop, Process,
};

/// The agent under test and its log file, reported when a command hangs.
static WATCHED: std::sync::Mutex<Option<(u32, std::path::PathBuf)>> = std::sync::Mutex::new(None);

/// What the agent and Redis are doing, and the agent's log: for a command that hangs.
fn stuck_report() -> String {
    let Some((pid, log)) = WATCHED.lock().unwrap().clone() else {
        return String::new();
    };
    format!(
        "{}\nagent log:\n{}",
        hang_report(&[pid], &[pid]),
        std::fs::read_to_string(log).unwrap_or_default()
    )
}

const MIB: u64 = 1 << 20;
const BUDGET_MIB: u64 = 16;
// The dataset is mostly large values with a share of small ones. A pass over the dataset (a
// DEBUG DIGEST, the read pass, the BGSAVE child) visits the keys in hash order, that is in random
// order in memory, so with small values nearly every value costs a remote fault of its own:
// 64 MiB of 1 KiB values took 67 s for one DEBUG DIGEST with the debug-build agent. Large values
// are read front to back and fetched with prefetch, which keeps the test within a minute; the
// small ones still page Redis's dictionary, key and object metadata in random order.
/// Keys made by `DEBUG POPULATE`: `key:I` holds `value:I` padded with zero bytes to 1 KiB.
const POPULATED: usize = 4000;
const POPULATED_SIZE: usize = 1024;
/// Keys written through `redis-cli --pipe`: `rnd:I` holds random bytes (just under 256 KiB, so
/// that with its header it fits one jemalloc size class; 64 KiB values made each pass over the
/// dataset half as slow again, prefetch's window needing a few faults to grow on each value).
const RANDOM: usize = 250;
const RANDOM_SIZE: usize = 262_000;
const _: () = assert!(
    (POPULATED * POPULATED_SIZE + RANDOM * RANDOM_SIZE) as u64 >= 4 * BUDGET_MIB * MIB,
    "the values alone must be four times the budget"
);

/// Runs `program args`, feeding `stdin`; kills it and fails the test after `timeout`.
fn run(program: &str, args: &[&str], stdin: Vec<u8>, timeout: Duration) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program} (tests/run installs it): {e}"));
    let mut input = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = r.read_to_end(&mut b);
            b
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let report = stuck_report();
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("{program} {args:?} did not finish within {timeout:?}\n{report}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    writer.join().unwrap();
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// `redis-cli -p PORT ARGS`: its output, trimmed; fails the test on an error or after 300 s (a
/// whole-dataset command pages everything in; the limit only ends a hung run).
fn cli(port: u16, args: &[&str]) -> String {
    let port = port.to_string();
    let mut all = vec!["-p", &port];
    all.extend_from_slice(args);
    let out = run("redis-cli", &all, Vec::new(), Duration::from_secs(300));
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && !text.starts_with("ERR") && !text.starts_with("(error)"),
        "redis-cli {args:?}: {:?} {text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// A field of `INFO SECTION`, e.g. `info(port, "persistence", "rdb_bgsave_in_progress")`.
fn info(port: u16, section: &str, field: &str) -> String {
    let text = cli(port, &["INFO", section]);
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in INFO {section}:\n{text}"))
        .trim()
        .to_string()
}

fn info_number(port: u16, section: &str, field: &str) -> u64 {
    info(port, section, field).parse().unwrap()
}

/// Waits until Redis on `port` answers PING, while `process` still runs.
fn wait_ready(port: u16, process: &mut Process) {
    let ready = poll(Duration::from_secs(30), || {
        if let Some(status) = process.wait_timeout(Duration::ZERO) {
            panic!(
                "Redis exited ({status:?}) before it answered; log:\n{}\n{}",
                process.log(),
                process.stdout()
            );
        }
        let out = run(
            "redis-cli",
            &["-p", &port.to_string(), "PING"],
            Vec::new(),
            Duration::from_secs(10),
        );
        (String::from_utf8_lossy(&out.stdout).trim() == "PONG").then_some(())
    });
    assert!(
        ready.is_some(),
        "Redis did not answer within 30 s; log:\n{}\n{}",
        process.log(),
        process.stdout()
    );
}

/// The value of random key `rnd:i`.
fn random_value(i: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed_0000 + i as u64);
    let mut v = vec![0; RANDOM_SIZE];
    rng.fill_bytes(&mut v);
    v
}

/// The value `DEBUG POPULATE` gives `key:i`.
fn populated_value(i: usize) -> Vec<u8> {
    let mut v = format!("value:{i}").into_bytes();
    v.resize(POPULATED_SIZE, 0);
    v
}

fn resp_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Reads one RESP reply that must be a bulk string (or nil): the reply to a GET.
fn read_bulk(r: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line).unwrap();
    let head = String::from_utf8_lossy(&line).trim_end().to_string();
    let len: i64 = head
        .strip_prefix('$')
        .unwrap_or_else(|| panic!("not a bulk string reply: {head:?}"))
        .parse()
        .unwrap();
    if len < 0 {
        return None;
    }
    let mut v = vec![0; len as usize + 2];
    r.read_exact(&mut v).unwrap();
    assert_eq!(&v[len as usize..], b"\r\n");
    v.truncate(len as usize);
    Some(v)
}

/// GETs every key of the dataset (pipelined, about 1 MiB of values at a time) and compares it with what was
/// written; returns how many values were wrong.
fn read_every_key(port: u16) -> usize {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::with_capacity(1 << 16, stream);
    let keys: Vec<(String, Vec<u8>)> = (0..POPULATED)
        .map(|i| (format!("key:{i}"), populated_value(i)))
        .chain((0..RANDOM).map(|i| (format!("rnd:{i}"), random_value(i))))
        .collect();
    // Batches of about 1 MiB of values: Redis builds the replies of a whole pipeline in its
    // output buffers, fresh memory that counts against the budget too.
    let mut batches = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, (_, v)) in keys.iter().enumerate() {
        bytes += v.len();
        if bytes >= 1 << 20 || i + 1 == keys.len() {
            batches.push(&keys[start..=i]);
            (start, bytes) = (i + 1, 0);
        }
    }
    let mut wrong = 0;
    for batch in batches {
        let mut req = Vec::new();
        for (k, _) in batch {
            resp_command(&mut req, &[b"GET", k.as_bytes()]);
        }
        writer.write_all(&req).unwrap();
        for (k, want) in batch {
            let got = read_bulk(&mut reader);
            if got.as_ref() != Some(want) {
                if wrong < 5 {
                    eprintln!(
                        "{k}: {} bytes, first {:?}",
                        got.as_ref().map_or(0, Vec::len),
                        got.as_ref()
                            .map(|g| String::from_utf8_lossy(&g[..g.len().min(16)]))
                    );
                }
                wrong += 1;
            }
        }
    }
    wrong
}

fn redis_args<'a>(port: &'a str, dir: &'a Path) -> Vec<&'a str> {
    vec![
        "redis-server",
        "--port",
        port,
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--enable-debug-command",
        "yes",
        "--dir",
        dir.to_str().unwrap(),
        "--dbfilename",
        "dump.rdb",
    ]
}

#[test]
fn redis_four_times_its_budget_keeps_its_data_and_saves_it_with_bgsave() {
    let started = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("yonder-redis-")
        .tempdir()
        .unwrap();
    let port = free_tcp_port();
    let port_s = port.to_string();

    // Redis under the agent, in the foreground (no daemonize), as the agent's child.
    let mut cmd = Command::new(bin("yonder-agent"));
    cmd.args(["run", "--local-mem", &format!("{BUDGET_MIB}MiB"), "--"])
        .args(redis_args(&port_s, dir.path()));
    let mut agent = Process::spawn(cmd, "yonder-agent", dir.path()).unwrap();
    *WATCHED.lock().unwrap() = Some((agent.pid(), dir.path().join("yonder-agent.log")));
    wait_ready(port, &mut agent);
    let redis_pid: u32 = info(port, "server", "process_id").parse().unwrap();
    let _redis = KillOnDrop::new(redis_pid);
    assert!(
        yonder_tests::children(agent.pid()).contains(&redis_pid),
        "Redis ({redis_pid}) is not the agent's child"
    );

    // The dataset: DEBUG POPULATE, then random values through `redis-cli --pipe`.
    cli(
        port,
        &[
            "DEBUG",
            "POPULATE",
            &POPULATED.to_string(),
            "key",
            &POPULATED_SIZE.to_string(),
        ],
    );
    let mut pipe = Vec::new();
    for i in 0..RANDOM {
        resp_command(
            &mut pipe,
            &[b"SET", format!("rnd:{i}").as_bytes(), &random_value(i)],
        );
    }
    let out = run(
        "redis-cli",
        &["-p", &port_s, "--pipe"],
        pipe,
        Duration::from_secs(60),
    );
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && report.contains(&format!("errors: 0, replies: {RANDOM}")),
        "redis-cli --pipe: {:?}\n{report}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        cli(port, &["DBSIZE"]),
        (POPULATED + RANDOM).to_string(),
        "keys in the dataset"
    );
    let loaded = Instant::now();

    // The data really is over the budget, and most of it is not resident: the test cannot pass
    // without paging.
    let used = info_number(port, "memory", "used_memory");
    assert!(
        used >= 4 * BUDGET_MIB * MIB,
        "the dataset ({} MiB) must be at least four times the budget",
        used / MIB
    );
    let rss = rss_anon(redis_pid).unwrap();
    eprintln!(
        "dataset loaded in {:?}: used_memory {} MiB, Redis RssAnon {} MiB",
        loaded - started,
        used / MIB,
        rss / MIB
    );
    assert!(
        rss < used / 2,
        "Redis has {} MiB of anonymous memory resident for a {} MiB dataset and a {BUDGET_MIB} \
         MiB budget: it was not paged out",
        rss / MIB,
        used / MIB
    );

    let d1 = cli(port, &["DEBUG", "DIGEST"]);
    assert_eq!(d1.len(), 40, "{d1}");
    assert_ne!(d1, "0".repeat(40), "empty dataset");
    let digested = Instant::now();
    eprintln!("DEBUG DIGEST took {:?}", digested - loaded);
    let wrong = read_every_key(port);
    eprintln!("read every key in {:?}", digested.elapsed());
    assert_eq!(wrong, 0, "values read back wrong (first ones above)");
    let d2 = cli(port, &["DEBUG", "DIGEST"]);
    assert_eq!(d1, d2, "the dataset changed while it was paged");

    // BGSAVE: Redis forks, and the child writes every value to dump.rdb.
    assert_eq!(info(port, "persistence", "rdb_bgsave_in_progress"), "0");
    let bgsave = Instant::now();
    let reply = cli(port, &["BGSAVE"]);
    assert!(reply.contains("Background saving started"), "{reply}");
    let done = poll(Duration::from_secs(300), || {
        (info(port, "persistence", "rdb_bgsave_in_progress") == "0").then_some(())
    });
    assert!(
        done.is_some(),
        "BGSAVE did not finish within 300 s\n{}\nRedis log:\n{}",
        stuck_report(),
        agent.stdout()
    );
    let status = info(port, "persistence", "rdb_last_bgsave_status");
    assert_eq!(
        status,
        "ok",
        "BGSAVE failed; agent log:\n{}\nRedis log:\n{}",
        agent.log(),
        agent.stdout()
    );
    eprintln!("BGSAVE took {:?}", bgsave.elapsed());

    // Shut Redis down; the agent passes its exit status through and prints its summary.
    let _ = run(
        "redis-cli",
        &["-p", &port_s, "SHUTDOWN", "NOSAVE"],
        Vec::new(),
        Duration::from_secs(30),
    );
    let status = agent.wait_timeout(Duration::from_secs(20));
    let log = agent.log();
    assert!(
        status.is_some_and(|s| s.success()),
        "the agent did not exit cleanly after SHUTDOWN: {status:?}\n{log}"
    );
    eprintln!(
        "{}",
        log.lines()
            .filter(|l| l.starts_with("yonder: "))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Nearly all of Redis's anonymous memory is managed; during BGSAVE parent and child share
    // it copy-on-write, which must count once (summing RssAnon counted it twice: 48.8 %).
    let share = number_after(&log, "managed share of anonymous RSS: ").unwrap_or(0);
    assert!(
        share >= 70,
        "managed share {share} % (pages shared with the BGSAVE child counted twice?):\n{log}"
    );
    let evicted = number_after(&log, "yonder: evicted ").unwrap_or(0);
    let remote = number_after(&log, "zero-fill, ").unwrap_or(0);
    assert!(
        evicted > 0 && remote > 0,
        "no paging in the summary:\n{log}"
    );

    let reload = Instant::now();
    // A plain Redis (not under the agent) loads the dump: the file is checked by a reference
    // that owes nothing to Yonder, so a fault in the agent cannot hide a bad dump by reading it
    // back the same wrong way.
    let size = std::fs::metadata(dir.path().join("dump.rdb"))
        .unwrap()
        .len();
    let port2 = free_tcp_port();
    let port2_s = port2.to_string();
    let args = redis_args(&port2_s, dir.path());
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..]);
    let mut plain = Process::spawn(cmd, "redis-plain", dir.path()).unwrap();
    wait_ready(port2, &mut plain);
    let loading = poll(Duration::from_secs(30), || {
        (info(port2, "persistence", "loading") == "0").then_some(())
    });
    assert!(loading.is_some(), "the dump did not load within 30 s");
    assert_eq!(
        cli(port2, &["DBSIZE"]),
        (POPULATED + RANDOM).to_string(),
        "keys loaded from the {size}-byte dump; Redis log:\n{}",
        plain.stdout()
    );
    assert_eq!(
        cli(port2, &["DEBUG", "DIGEST"]),
        d1,
        "the dump BGSAVE wrote under the agent does not hold the dataset"
    );
    let _ = run(
        "redis-cli",
        &["-p", &port2_s, "SHUTDOWN", "NOSAVE"],
        Vec::new(),
        Duration::from_secs(30),
    );
    let status = plain.wait_timeout(Duration::from_secs(20));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    eprintln!(
        "plain Redis loaded and checked the dump in {:?}; agent summary:\n{log}total {:?}",
        reload.elapsed(),
        started.elapsed()
    );
}
