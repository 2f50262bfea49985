//! Replicated memory servers behind real network links: each server runs in its own network
//! namespace, joined to the root namespace (where the agent and its workload run) by a veth pair.
//! A server is killed, another one's link is cut and restored, and a server restarted with an
//! empty store must get its copies back before the other one dies; meanwhile the workload, at
//! 25 % local memory, checks every word it reads. The namespaces, veths and processes a test
//! makes are removed when it ends, also when it fails (`Netns` and `Process` are drop guards).
//! Needs root and `ip` (iproute2).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use yonder_tests::{
    bin, compile_workload, free_tcp_port, free_ten_net, ip, metric, netns_list, number_after, poll,
    Certs, KillOnDrop, Netns, Process,
};

const TENANT: &str = "yonder-agent";
const PORT: u16 = 7070;
const DEFICIT: &str = "yonder_agent_replication_deficit_pages";
const REPAIRED: &str = "yonder_agent_repaired_pages_total";

/// Held by each test for its whole run: each runs a CPU-bound workload under a paging agent,
/// and two at once on a small (2-CPU) machine starve the agents' repair.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Memory servers, server `i` in namespace `nets[i]` with subnet 10.N.(i+1).0/24, sharing one CA.
/// Fields drop in order: the servers are stopped before their namespaces are deleted.
struct NsCluster {
    servers: Vec<Process>,
    addrs: Vec<String>,
    certs: Certs,
    nets: Vec<Netns>,
    dir: tempfile::TempDir,
}

impl NsCluster {
    fn start(n: u8) -> Self {
        Netns::remove_stale();
        let dir = tempfile::tempdir().unwrap();
        let ten = free_ten_net().unwrap();
        let nets: Vec<Netns> = (1..=n)
            .map(|i| Netns::create([10, ten, i]).unwrap())
            .collect();
        let addrs: Vec<String> = nets
            .iter()
            .map(|ns| format!("{}:{PORT}", ns.addr))
            .collect();
        let hosts: Vec<String> = nets.iter().map(|ns| ns.addr.to_string()).collect();
        let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
        let certs = Certs::with_hosts(&hosts, &[TENANT]).unwrap();
        let mut cluster = Self {
            servers: Vec::new(),
            addrs,
            certs,
            nets,
            dir,
        };
        for i in 0..n as usize {
            let p = cluster.start_server(i, &format!("server{}", i + 1));
            cluster.servers.push(p);
        }
        cluster
    }

    /// Starts `yonder-server` in namespace `i` on its address, with an empty store.
    fn start_server(&self, i: usize, name: &str) -> Process {
        let mut cmd = self.nets[i].command(&bin("yonder-server"));
        cmd.args([
            "--listen",
            &self.addrs[i],
            "--capacity",
            "256MiB",
            "--tls-dir",
        ])
        .arg(self.certs.dir());
        let (p, addr) = Process::start(cmd, name, "listening on", self.dir.path()).unwrap();
        assert_eq!(addr, self.addrs[i], "{name} listens elsewhere");
        p
    }

    /// `yonder-agent run` in the root namespace with R replicas and a 1 s request deadline.
    fn agent(&self, replicas: u32, metrics: u16, args: &[&str]) -> Process {
        let mut cmd = std::process::Command::new(bin("yonder-agent"));
        cmd.args([
            "run",
            "--local-mem",
            "8MiB",
            "--servers",
            &self.addrs.join(","),
        ])
        .arg("--tls-dir")
        .arg(self.certs.dir())
        .args(["--cert-name", TENANT])
        .args(["--replicas", &replicas.to_string()])
        .args(["--server-timeout-ms", "1000"])
        .args(["--metrics", &format!("127.0.0.1:{metrics}"), "--"])
        .args(args);
        if std::env::var_os("RUST_LOG").is_none() {
            // Its repair reports pages it could not copy at debug level.
            cmd.env("RUST_LOG", "warn,yonder_agent::workload=debug");
        }
        Process::spawn(cmd, "yonder-agent", self.dir.path()).unwrap()
    }

    /// SIGKILLs server `i` and reaps it.
    fn kill(&mut self, i: usize) {
        self.servers[i].signal(libc::SIGKILL);
        assert!(
            self.servers[i]
                .wait_timeout(Duration::from_secs(5))
                .is_some(),
            "server {} survived SIGKILL",
            i + 1
        );
    }

    /// Deletes the namespaces now and checks that neither they nor their host-side veths remain.
    fn remove_and_check(self) {
        let names: Vec<String> = self.nets.iter().map(|ns| ns.name.clone()).collect();
        let ifs: Vec<String> = self.nets.iter().map(|ns| ns.host_if.clone()).collect();
        drop(self);
        let left = netns_list();
        for name in &names {
            assert!(!left.contains(name), "namespace {name} was left behind");
        }
        for i in &ifs {
            assert!(
                ip(&["link", "show", "dev", i]).is_err(),
                "interface {i} was left behind"
            );
        }
    }
}

/// The agent's log without its per-batch eviction lines (its debug lines about repair stay).
fn excerpt(agent: &Process) -> String {
    let log = agent.log();
    let mut out = String::with_capacity(log.len());
    for line in log.lines() {
        if !line.contains("DEBUG") || line.contains("re-replicat") {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn hog(dir: &Path) -> (String, PathBuf) {
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

/// Waits until the agent's log contains `text`; panics with `what` and the log otherwise.
fn wait_log(agent: &Process, text: &str, timeout: Duration, what: &str) {
    // The debug log grows all test long: read it every 200 ms, not at `poll`'s 20 ms.
    let deadline = Instant::now() + timeout;
    let found = loop {
        if agent.log().contains(text) {
            break Some(());
        }
        if Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        found.is_some(),
        "{what}: no \"{text}\" in the agent log within {timeout:?}; stdout {:?}; agent log:\n{}",
        agent.stdout(),
        excerpt(agent)
    );
}

/// Waits until the repair metrics show every page with its replicas again (deficit 0) after more
/// than `repaired_before` pages were re-replicated in all; returns the repaired total.
fn wait_repaired(agent: &Process, port: u16, repaired_before: f64, what: &str) -> f64 {
    let waited = Instant::now();
    let repaired = poll(Duration::from_secs(90), || {
        let repaired = metric(port, REPAIRED)?;
        let deficit = metric(port, DEFICIT)?;
        (repaired > repaired_before && deficit == 0.0).then_some(repaired)
    });
    match repaired {
        Some(r) => {
            eprintln!(
                "{what}: {} pages re-replicated within {:?}",
                r - repaired_before,
                waited.elapsed()
            );
            r
        }
        None => panic!(
            "{what}: repair did not finish within 90 s (deficit {:?}, repaired {:?}, before \
             {repaired_before}); a \"re-replicating slot S: every copy of slot S (version V) is \
             lost\" line where the servers answer with a newer version means the repair waited \
             for a dead server for a page rewritten since it was listed; stdout {:?}; agent \
             log:\n{}",
            metric(port, DEFICIT),
            metric(port, REPAIRED),
            agent.stdout(),
            excerpt(agent)
        ),
    }
}

/// The workload is still running and has read nothing wrong.
fn assert_healthy(agent: &mut Process, when: &str) {
    let status = agent.wait_timeout(Duration::ZERO);
    assert!(
        status.is_none() && !agent.exited(),
        "{when}: the agent exited ({status:?}); stdout {:?}; agent log:\n{}",
        agent.stdout(),
        excerpt(agent)
    );
    assert_eq!(
        agent.stdout(),
        "filled\n",
        "{when}: the workload read a wrong word; agent log:\n{}",
        excerpt(agent)
    );
}

#[test]
fn a_killed_server_and_a_cut_link_lose_nothing_with_two_replicas() {
    let _serial = one_at_a_time();
    let started = Instant::now();
    let mut cluster = NsCluster::start(3);
    let [a1, a2, _] = [0, 1, 2].map(|i| cluster.addrs[i].clone());
    let dir = tempfile::tempdir().unwrap();
    let (hog, pidfile) = hog(dir.path());
    let port = free_tcp_port();
    let mut agent = cluster.agent(2, port, &[&hog, "32", pidfile.to_str().unwrap()]);
    let workload = wait_filled(&mut agent, &pidfile);
    std::thread::sleep(Duration::from_secs(1));

    // (1) Server 1 dies; (2) the agent notices and gives its pages their second copy back.
    cluster.kill(0);
    wait_log(
        &agent,
        &format!("{a1} is down"),
        Duration::from_secs(60),
        "killed server 1",
    );
    let repaired = wait_repaired(&agent, port, 0.0, "after server 1 died");
    assert_healthy(&mut agent, "after server 1 died");

    // (3) Server 2's link is cut: its requests time out and it is marked down; every page now
    // has one reachable copy (on server 3), so the repair waits for more servers.
    cluster.nets[1].set_link(false).unwrap();
    let cut = Instant::now();
    wait_log(
        &agent,
        &format!("{a2} is down"),
        Duration::from_secs(60),
        "link of server 2 cut",
    );
    std::thread::sleep(Duration::from_secs(3).saturating_sub(cut.elapsed()));
    assert_healthy(&mut agent, "while server 2 was cut off");

    // (4) The link comes back: the server is reconnected and the pages get their copies again.
    cluster.nets[1].set_link(true).unwrap();
    wait_log(
        &agent,
        &format!("{a2} is back"),
        Duration::from_secs(60),
        "link of server 2 restored",
    );
    wait_repaired(&agent, port, repaired, "after server 2 came back");

    // (5) Still running, never read a wrong word; the summary shows the repair complete.
    assert_healthy(&mut agent, "at the end");
    drop(workload);
    let status = agent.wait_timeout(Duration::from_secs(30));
    let log = excerpt(&agent);
    assert!(
        status.is_some(),
        "the agent did not exit after its workload was killed:\n{log}"
    );
    assert_eq!(agent.stdout(), "filled\n", "{log}");
    let n = number_after(&log, "yonder: re-replicated ").unwrap_or(0);
    assert!(n > 0, "no re-replication in the summary:\n{log}");
    assert!(
        log.contains(&format!("re-replicated {n} pages"))
            && log.contains("(0 still short of copies)"),
        "the summary does not show a complete repair:\n{log}"
    );
    drop(agent);
    cluster.remove_and_check();
    eprintln!("took {:?}", started.elapsed());
}

#[test]
fn server_restarted_with_an_empty_store_loses_nothing() {
    let _serial = one_at_a_time();
    let started = Instant::now();
    let mut cluster = NsCluster::start(2);
    let [a1, a2] = [0, 1].map(|i| cluster.addrs[i].clone());
    let dir = tempfile::tempdir().unwrap();
    let (hog, pidfile) = hog(dir.path());
    let port = free_tcp_port();
    let mut agent = cluster.agent(2, port, &[&hog, "32", pidfile.to_str().unwrap()]);
    let workload = wait_filled(&mut agent, &pidfile);
    std::thread::sleep(Duration::from_secs(1));

    // Server 1 dies and the agent notices; it comes back at once on the same address with the
    // same certificates and an empty store.
    cluster.kill(0);
    wait_log(
        &agent,
        &format!("{a1} is down"),
        Duration::from_secs(60),
        "killed server 1",
    );
    let seen_down = Instant::now();
    cluster.servers[0] = cluster.start_server(0, "server1-restarted");
    wait_log(
        &agent,
        &format!("{a1} is back"),
        Duration::from_secs(60),
        "server 1 restarted",
    );
    let down_for = seen_down.elapsed();

    // Every page must get its second copy back, on the restarted server (the only other one);
    // until then server 2 holds the only copy of the pages that are not resident.
    let waited = Instant::now();
    let repaired = poll(Duration::from_secs(90), || {
        let repaired = metric(port, REPAIRED)?;
        let deficit = metric(port, DEFICIT)?;
        (repaired > 0.0 && deficit == 0.0).then_some(repaired)
    });
    if let Some(r) = repaired {
        eprintln!(
            "after server 1 came back empty: {r} pages re-replicated within {:?}",
            waited.elapsed()
        );
    }
    let gap = repaired.is_none().then(|| {
        format!(
            "the agent did not re-replicate the pages onto server 1, which came back with an empty \
             store, within 90 s (metrics: deficit {:?}, repaired {:?}; the test saw server 1 back \
             {down_for:?} after it saw it down)",
            metric(port, DEFICIT),
            metric(port, REPAIRED),
        )
    });
    assert_healthy(&mut agent, "after server 1 came back");

    // Now server 2 dies: every page must still be readable, from server 1 alone. A page the
    // workload needs that is not there is declared lost after 10 request deadlines (10 s), so
    // watch for longer than that while the workload reads all its memory over and over.
    cluster.kill(1);
    wait_log(
        &agent,
        &format!("{a2} is down"),
        Duration::from_secs(60),
        "killed server 2",
    );
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(13) {
        let stopped = agent.wait_timeout(Duration::ZERO).is_some()
            || agent.log().contains("stopping the workload");
        assert!(
            !stopped && agent.stdout() == "filled\n",
            "AGENT GAP: after server 2 died, the workload was stopped: pages it needed were \
             missing on server 1, which had come back with an empty store ({}).\n\
             stdout {:?}; agent log:\n{}",
            gap.as_deref()
                .unwrap_or("yet the metrics said the repair had finished"),
            agent.stdout(),
            excerpt(&agent)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    if let Some(gap) = gap {
        panic!(
            "AGENT GAP: {gap}; the workload survived server 2's death, but pages it did not touch \
             in 13 s may be gone.\nagent log:\n{}",
            excerpt(&agent)
        );
    }
    assert_healthy(&mut agent, "after server 2 died");

    drop(workload);
    let status = agent.wait_timeout(Duration::from_secs(30));
    let log = excerpt(&agent);
    assert!(
        status.is_some(),
        "the agent did not exit after its workload was killed:\n{log}"
    );
    assert_eq!(agent.stdout(), "filled\n", "{log}");
    drop(agent);
    cluster.remove_and_check();
    eprintln!("took {:?}", started.elapsed());
}
