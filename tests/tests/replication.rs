//! Replicated page stores on loopback: three memory servers, pages on two of them; one server is
//! killed and another hangs (SIGSTOP) and comes back mid-run while the workload verifies every
//! word it reads. With one replica, losing the server stops the workload with a clear error.
//! (Network-namespace tests with cut links are the next step; see docs/replication.md.)

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use yonder_tests::{
    bin, compile_workload, free_tcp_port, metric, number_after, poll, KillOnDrop, Process, Server,
};

const TENANT: &str = "yonder-agent";

/// Three servers sharing one CA (the first one's certificates).
struct Cluster {
    first: Server,
    others: Vec<(Process, String)>,
    dir: tempfile::TempDir,
}

impl Cluster {
    fn start(n: usize) -> Self {
        let first = Server::start("256MiB", &[TENANT], &[]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut others = Vec::new();
        for i in 1..n {
            let mut cmd = Command::new(bin("yonder-server"));
            cmd.args([
                "--listen",
                "127.0.0.1:0",
                "--capacity",
                "256MiB",
                "--tls-dir",
            ])
            .arg(first.certs.dir());
            let (p, addr) =
                Process::start(cmd, &format!("server{i}"), "listening on", dir.path()).unwrap();
            others.push((p, addr.trim().to_string()));
        }
        Self { first, others, dir }
    }

    fn addrs(&self) -> String {
        let mut a = vec![self.first.addr.to_string()];
        a.extend(self.others.iter().map(|o| o.1.clone()));
        a.join(",")
    }

    fn agent(&self, replicas: u32, timeout_ms: u32, metrics: u16, args: &[&str]) -> Process {
        self.agent_with(&[], replicas, timeout_ms, metrics, args)
    }

    /// [`Cluster::agent`] with extra `yonder-agent run` flags.
    fn agent_with(
        &self,
        flags: &[&str],
        replicas: u32,
        timeout_ms: u32,
        metrics: u16,
        args: &[&str],
    ) -> Process {
        let mut cmd = Command::new(bin("yonder-agent"));
        cmd.args(["run", "--local-mem", "8MiB", "--servers", &self.addrs()])
            .args(flags)
            .args(["--metrics", &format!("127.0.0.1:{metrics}")])
            .arg("--tls-dir")
            .arg(self.first.certs.dir())
            .args(["--cert-name", TENANT])
            .args(["--replicas", &replicas.to_string()])
            .args(["--server-timeout-ms", &timeout_ms.to_string(), "--"])
            .args(args);
        Process::spawn(cmd, "yonder-agent", self.dir.path()).unwrap()
    }
}

fn hog(dir: &Path) -> (String, std::path::PathBuf) {
    let hog = compile_workload("hog", Path::new(env!("CARGO_TARGET_TMPDIR")), &[]);
    (hog.to_str().unwrap().to_string(), dir.join("hog.pid"))
}

fn wait_filled(agent: &mut Process, pidfile: &Path) -> KillOnDrop {
    let pid = poll(Duration::from_secs(60), || {
        (agent.stdout() == "filled\n").then_some(())?;
        std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()
    });
    match pid {
        Some(pid) => KillOnDrop::new(pid),
        None => panic!(
            "the workload did not fill its memory; agent log:\n{}",
            agent.stop_and_log()
        ),
    }
}

#[test]
fn a_killed_and_a_hung_server_lose_nothing_with_two_replicas() {
    a_killed_and_a_hung_server_lose_nothing(&[]);
}

/// The same over quinn's client (`--transport quinn`; the default is the agent's own, quinn-proto
/// driven by its thread): failure detection, reconnection and repair hold over either.
#[test]
fn a_killed_and_a_hung_server_lose_nothing_over_quinns_client() {
    a_killed_and_a_hung_server_lose_nothing(&["--transport", "quinn"]);
}

fn a_killed_and_a_hung_server_lose_nothing(flags: &[&str]) {
    let cluster = Cluster::start(3);
    let dir = tempfile::tempdir().unwrap();
    let (hog, pidfile) = hog(dir.path());
    let port = free_tcp_port();
    let mut agent = cluster.agent_with(
        flags,
        2,
        1000,
        port,
        &[&hog, "32", pidfile.to_str().unwrap()],
    );
    let workload = wait_filled(&mut agent, &pidfile);
    std::thread::sleep(Duration::from_secs(1));

    // One server dies; the workload keeps reading (and checking) every page.
    cluster.others[0].0.signal(libc::SIGKILL);
    let repaired = poll(Duration::from_secs(60), || {
        let log = agent.log();
        (log.contains("is down") && agent.stdout() == "filled\n").then_some(())
    });
    assert!(repaired.is_some(), "agent log:\n{}", agent.log());
    // Every page must have its two copies again before a second server goes away: a page whose
    // copies were on the dead server and the one about to hang would have none reachable.
    let whole = poll(Duration::from_secs(90), || {
        let repaired = metric(port, "yonder_agent_repaired_pages_total")?;
        let deficit = metric(port, "yonder_agent_replication_deficit_pages")?;
        (repaired > 0.0 && deficit == 0.0).then_some(())
    });
    assert!(
        whole.is_some(),
        "repair after the kill did not finish: deficit {:?}\n{}",
        metric(port, "yonder_agent_replication_deficit_pages"),
        agent.log()
    );

    // Another hangs (as if cut off) and comes back.
    cluster.others[1].0.signal(libc::SIGSTOP);
    // Long enough for a probe (every second) to time out (1 s) with room to spare.
    std::thread::sleep(Duration::from_secs(5));
    cluster.others[1].0.signal(libc::SIGCONT);
    let back = poll(Duration::from_secs(30), || {
        agent.log().contains("is back").then_some(())
    });
    assert!(
        back.is_some(),
        "the hung server was not reconnected:\n{}",
        agent.log()
    );
    // The metrics show the repair, until every page has its two copies again.
    let repaired = poll(Duration::from_secs(90), || {
        let repaired = metric(port, "yonder_agent_repaired_pages_total")?;
        let deficit = metric(port, "yonder_agent_replication_deficit_pages")?;
        (repaired > 0.0 && deficit == 0.0).then_some(repaired)
    });
    assert!(
        repaired.is_some(),
        "repair did not finish: deficit {:?}\n{}",
        metric(port, "yonder_agent_replication_deficit_pages"),
        agent.log()
    );

    // Still running, and never read a wrong word.
    assert!(!agent.exited(), "agent log:\n{}", agent.log());
    assert_eq!(agent.stdout(), "filled\n", "agent log:\n{}", agent.log());
    let started = Instant::now();
    drop(workload);
    agent.wait_timeout(Duration::from_secs(30));
    let log = agent.log();
    assert!(started.elapsed() < Duration::from_secs(30), "{log}");
    assert!(!agent.stdout().contains("BAD"), "{log}");
    let repaired = number_after(&log, "re-replicated ").unwrap_or(0);
    assert!(repaired > 0, "no re-replication after the failure:\n{log}");
    assert!(log.contains("(0 still short of copies)"), "{log}");
}

#[test]
fn losing_the_only_replica_stops_the_workload_with_a_clear_error() {
    let cluster = Cluster::start(1);
    let dir = tempfile::tempdir().unwrap();
    let (hog, pidfile) = hog(dir.path());
    let port = free_tcp_port();
    let mut agent = cluster.agent(1, 300, port, &[&hog, "32", pidfile.to_str().unwrap()]);
    let _workload = wait_filled(&mut agent, &pidfile);
    let first = cluster.first;
    first.process.signal(libc::SIGKILL);
    let started = Instant::now();
    let status = agent.wait_timeout(Duration::from_secs(30));
    assert!(
        status.is_some(),
        "the workload kept running:\n{}",
        agent.log()
    );
    let log = agent.log();
    assert!(
        log.contains("is lost") && log.contains("stopping the workload"),
        "{log}"
    );
    assert!(started.elapsed() < Duration::from_secs(20), "{log}");
    assert!(!agent.stdout().contains("BAD"), "{log}");
}

#[test]
fn full_servers_pause_eviction_and_the_workload_runs_over_budget_losing_nothing() {
    let server = Server::start("4MiB", &[TENANT], &[]).unwrap();
    let pattern = compile_workload("pattern", Path::new(env!("CARGO_TARGET_TMPDIR")), &[]);
    let out = Command::new(bin("yonder-agent"))
        .args(["run", "--local-mem", "4MiB", "--servers"])
        .arg(server.addr.to_string())
        .arg("--tls-dir")
        .arg(server.certs.dir())
        .args(["--cert-name", TENANT, "--"])
        .arg(&pattern)
        .args(["24", "1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("take no more pages"), "no warning:\n{err}");
    let evicted = number_after(&err, "evicted ").unwrap_or(0);
    assert!(evicted > 0, "{err}");
}
