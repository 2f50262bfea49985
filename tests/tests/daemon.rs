//! The node daemon: several workloads under one `yonder-agent daemon`, each with its own budget,
//! under a node-wide limit, with `yonder-agent status` showing them.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use yonder_tests::{bin, compile_workload, free_tcp_port, Process};

const MIB: u64 = 1 << 20;
/// How far over its budget a workload may be: the evictor's slack (2 MiB) plus what a fast writer
/// fills in heap growth before the agent's scanner registers it (as in tests/agent.rs).
const SLACK_AND_SCAN: u64 = 2 * MIB + 6 * MIB;

/// Kills a child by pid when dropped (also when an assertion fails).
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn status(socket: &Path) -> serde_json::Value {
    let out = Command::new(bin("yonder-agent"))
        .args(["status", "--json", "--daemon"])
        .arg(socket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The daemon's Prometheus metrics, or "" if they cannot be read.
fn metrics_body(port: u16) -> String {
    use std::io::{Read, Write};
    let mut body = String::new();
    if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
        let _ = s.read_to_string(&mut body);
    }
    body
}

fn run_under(socket: &Path, budget: &str, args: &[&str]) -> Guard {
    Guard(
        Command::new(bin("yonder-agent"))
            .args(["run", "--local-mem", budget, "--daemon"])
            .arg(socket)
            .arg("--")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

#[test]
fn two_workloads_with_separate_budgets_under_one_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run/agent.sock");
    let config = dir.path().join("agent.toml");
    let metrics_port = free_tcp_port();
    std::fs::write(
        &config,
        format!(
            "socket = \"{}\"\nnode_memory = \"40MiB\"\nmetrics = \"127.0.0.1:{metrics_port}\"\n",
            socket.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(bin("yonder-agent"));
    cmd.args(["daemon", "--config"]).arg(&config);
    let (mut daemon, _) = Process::start(
        cmd,
        "yonder-agent-daemon",
        "yonder-agent daemon listening",
        dir.path(),
    )
    .unwrap();

    let pattern = compile_workload("pattern", Path::new(env!("CARGO_TARGET_TMPDIR")), &[]);
    let pattern = pattern.to_str().unwrap();
    let budgets = [(8, "32"), (16, "40")];
    let mut runs: Vec<Guard> = budgets
        .iter()
        .map(|(b, mb)| run_under(&socket, &format!("{b}MiB"), &[pattern, mb, "1"]))
        .collect();

    // Both must hold their budgets before the third asks: the `run` processes were only spawned,
    // and a third that reached the daemon first would be admitted (seen once in CI).
    let deadline = Instant::now() + Duration::from_secs(60);
    while status(&socket)["workloads"].as_array().unwrap().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "both workloads did not register; daemon log:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // A third workload does not fit under the node limit: refused with a clear error.
    let refused = Command::new(bin("yonder-agent"))
        .args(["run", "--local-mem", "32MiB", "--daemon"])
        .arg(&socket)
        .args(["--", "true"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("node memory is committed"), "{err}");
    // A budget too small to run in is refused, by `run` and by the daemon (for any client).
    let tiny = Command::new(bin("yonder-agent"))
        .args(["run", "--local-mem", "0", "--daemon"])
        .arg(&socket)
        .args(["--", "true"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&tiny.stderr);
    assert_eq!(tiny.status.code(), Some(125), "{err}");
    assert!(err.contains("too small"), "{err}");
    {
        use std::io::{BufRead, Write};
        let mut c = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        c.write_all(b"{\"Register\":{\"name\":\"tiny\",\"budget\":4096}}\n")
            .unwrap();
        let mut reply = String::new();
        std::io::BufReader::new(c).read_line(&mut reply).unwrap();
        assert!(
            reply.contains("Error") && reply.contains("too small"),
            "{reply}"
        );
    }

    // While both run, status shows each with its own budget, and neither goes over its budget
    // (plus the evictor's slack) once it has settled: memory that the C library maps for malloc
    // is only found by the agent's scanner, so a fast writer can fill some of it before it is
    // registered (see docs/node-agent.md, coverage), and evicting that burst takes as long as
    // the machine needs. Settled: up 4 s, and in two samples in a row (200 ms apart) holding
    // at least half its budget and no more than budget + slack, i.e. past its first writes.
    let mut seen = std::collections::BTreeMap::new();
    let mut calm = std::collections::BTreeMap::<u64, u32>::new();
    let mut settled = std::collections::BTreeSet::new();
    // Each workload's metrics carry its id: the resident gauge of one is not the other's.
    let mut labelled = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let done = runs.iter_mut().all(|g| g.0.try_wait().unwrap().is_some());
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "workloads did not finish");
        let s = status(&socket);
        assert_eq!(s["node_memory"], 40 * MIB);
        for w in s["workloads"].as_array().unwrap() {
            let budget = w["budget"].as_u64().unwrap();
            let resident = w["resident"].as_u64().unwrap();
            let id = w["id"].as_u64().unwrap();
            seen.insert(id, budget);
            let body = metrics_body(metrics_port);
            let mine = format!("workload=\"{id}\"");
            let series = |name: &str| {
                body.lines()
                    .any(|l| l.starts_with(&format!("{name}{{")) && l.contains(&mine))
            };
            if series("yonder_agent_resident_pages") && series("yonder_agent_faults_total") {
                labelled.insert(id);
            }
            if !settled.contains(&id) {
                let in_band = w["uptime"].as_f64().unwrap() >= 4.0
                    && resident >= budget / 2
                    && resident <= budget + SLACK_AND_SCAN;
                let n = calm.entry(id).or_default();
                *n = if in_band { *n + 1 } else { 0 };
                if *n >= 2 {
                    settled.insert(id);
                }
                continue;
            }
            assert!(
                resident <= budget + SLACK_AND_SCAN,
                "workload {} resident {resident} over budget {budget}; status {s}\ndaemon log:\n{}",
                w["id"],
                daemon.log()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut budgets_seen: Vec<u64> = seen.values().copied().collect();
    budgets_seen.sort();
    assert_eq!(budgets_seen, [8 * MIB, 16 * MIB], "{seen:?}");
    assert_eq!(
        labelled.len(),
        2,
        "the metrics do not show each workload apart: {labelled:?}\n{}",
        metrics_body(metrics_port)
    );
    assert_eq!(
        settled.len(),
        2,
        "a workload was never seen within its budget: {settled:?} of {seen:?}"
    );
    for g in &mut runs {
        let out = std::mem::replace(&mut g.0, Command::new("true").spawn().unwrap())
            .wait_with_output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(
            err.contains("remote pages freed"),
            "no summary from the daemon:\n{err}"
        );
        let evicted: u64 = err
            .split("evicted ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(evicted > 0, "nothing was evicted:\n{err}");
    }
    // Once they ended, the daemon has no workloads left.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !status(&socket)["workloads"].as_array().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "workloads left in the daemon");
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = daemon.stop_and_log();
    assert!(!log.contains("panicked"), "{log}");
}
