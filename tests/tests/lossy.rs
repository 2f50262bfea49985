//! The agent and its memory servers over a lossy network: every server sits behind its own UDP
//! relay (`yonder_tests::Relay`) that delays, drops, duplicates, reorders or cuts datagrams, and
//! the agent is given the relays' addresses. The workload (`tests/workloads/rewriter.c`) checks
//! every word it reads and rewrites every page each pass, at 25 % local memory, so pages travel
//! both ways all the time; one wrong word ends it with "BAD". What each test showed is in
//! docs/lossy-network.md.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use yonder_tests::{
    bin, children, compile_workload, free_tcp_port, metric, number_after, Faults, KillOnDrop,
    Process, Relay, Server,
};

const TENANT: &str = "yonder-agent";
const DEFICIT: &str = "yonder_agent_replication_deficit_pages";
const REPAIRED: &str = "yonder_agent_repaired_pages_total";

/// Held by each test for its whole run: a paging agent with a CPU-bound workload per test, two at
/// once on a small machine, would make the timings in the logs meaningless.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Memory servers sharing one CA (the first one's certificates), each behind its own relay.
/// Fields drop in order: relays first, then the servers.
struct Cluster {
    relays: Vec<Relay>,
    first: Server,
    _others: Vec<Process>,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n` servers and a relay for each, seeded `seed`, `seed + 1`, ...
    fn start(n: usize, seed: u64) -> Self {
        let first = Server::start("256MiB", &[TENANT], &[]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut others = Vec::new();
        let mut addrs = vec![first.addr];
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
            others.push(p);
            addrs.push(addr.parse().unwrap());
        }
        let relays = addrs
            .iter()
            .zip(seed..)
            .map(|(&a, s)| Relay::start(a, s).unwrap())
            .collect();
        Self {
            relays,
            first,
            _others: others,
            dir,
        }
    }

    /// The relays' addresses, as the agent's `--servers`.
    fn addrs(&self) -> String {
        let a: Vec<String> = self.relays.iter().map(|r| r.addr().to_string()).collect();
        a.join(",")
    }

    /// `yonder-agent run` at 8 MiB local memory through the relays.
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

    /// Sets the same faults on every relay.
    fn set_faults(&self, faults: Faults) {
        for r in &self.relays {
            r.set_faults(faults);
        }
    }

    /// Cuts (or restores) the relays `which`.
    fn partition(&self, which: &[usize], cut: bool) {
        for &i in which {
            self.relays[i].update(|f| f.partitioned = cut);
        }
    }

    /// One line per relay with what it did.
    fn relay_report(&self) -> String {
        let mut out = String::new();
        for (i, r) in self.relays.iter().enumerate() {
            let s = r.stats();
            out.push_str(&format!(
                "relay {i}: {} datagrams in ({} from the agent), {} sent, {} lost, {} cut by a \
                 partition, {} duplicated, {} reordered\n",
                s.from_clients + s.from_server,
                s.from_clients,
                s.sent,
                s.lost,
                s.partitioned,
                s.duplicated,
                s.reordered
            ));
        }
        out
    }
}

fn rewriter() -> String {
    let path: PathBuf = compile_workload(
        "rewriter",
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")),
        &[],
    );
    path.to_str().unwrap().to_string()
}

/// The workload's progress lines: (pass, MiB done in the pass, monotonic ms).
fn progress(stdout: &str) -> Vec<(u64, u64, i64)> {
    stdout
        .lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("progress ")?.split_whitespace();
            Some((
                w.next()?.parse().ok()?,
                w.next()?.parse().ok()?,
                w.next()?.parse().ok()?,
            ))
        })
        .collect()
}

/// The longest gap between two progress lines, in ms, and the pass and MiB after it.
fn longest_pause(stdout: &str) -> (i64, u64, u64) {
    progress(stdout)
        .windows(2)
        .map(|w| (w[1].2 - w[0].2, w[1].0, w[1].1))
        .max()
        .unwrap_or((0, 0, 0))
}

/// The pass the workload is in now (0 before its first progress line).
fn pass(agent: &Process) -> u64 {
    progress(&agent.stdout()).last().map_or(0, |p| p.0)
}

/// The agent's `yonder:` lines (failures, recoveries and the summary).
fn yonder_lines(agent: &Process) -> String {
    agent
        .log()
        .lines()
        .filter(|l| l.starts_with("yonder:") || l.contains("WARN") || l.contains("ERROR"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until `check` holds, reading every 100 ms; panics with `what` and the agent's log.
fn wait_until(agent: &Process, timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {timeout:?}; stdout tail {:?}; agent log:\n{}",
            tail(&agent.stdout()),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The last few lines of `s`.
fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(3)..].join("\n")
}

/// Runs the workload for `passes` passes over `mib` MiB through relays with `faults` (two
/// servers, R = 2, a request deadline of `timeout_ms`) and checks it finishes with every word
/// right.
fn finishes_with_exact_data(faults: Faults, seed: u64, mib: u32, passes: u32, timeout_ms: u32) {
    finishes_with_exact_data_with(&[], faults, seed, mib, passes, timeout_ms)
}

/// [`finishes_with_exact_data`] with extra `yonder-agent run` flags.
fn finishes_with_exact_data_with(
    flags: &[&str],
    faults: Faults,
    seed: u64,
    mib: u32,
    passes: u32,
    timeout_ms: u32,
) {
    let _serial = one_at_a_time();
    let cluster = Cluster::start(2, seed);
    cluster.set_faults(faults);
    let started = Instant::now();
    let mut agent = cluster.agent_with(
        flags,
        2,
        timeout_ms,
        free_tcp_port(),
        &[&rewriter(), &mib.to_string(), &passes.to_string()],
    );
    let status = agent.wait_timeout(Duration::from_secs(120));
    let took = started.elapsed();
    let out = agent.stdout();
    let log = yonder_lines(&agent);
    let relays = cluster.relay_report();
    assert!(
        status.is_some(),
        "the workload did not finish within 120 s; stdout tail {:?}\n{relays}{}",
        tail(&out),
        agent.stop_and_log()
    );
    assert!(
        status.unwrap().success() && out.contains(&format!("done {passes} passes, 0 bad words")),
        "status {status:?}; stdout tail {:?}\n{relays}{}",
        tail(&out),
        agent.log()
    );
    assert!(!out.contains("BAD"), "{out}");
    let (pause, at_pass, at_mib) = longest_pause(&out);
    eprintln!(
        "{faults:?}: {passes} passes over {mib} MiB in {took:.1?}; longest pause {pause} ms \
         (pass {at_pass}, MiB {at_mib})\n{relays}{log}"
    );
    let evicted = number_after(&log, "evicted ").unwrap_or(0);
    assert!(evicted > 0, "nothing was evicted:\n{log}");
}

#[test]
fn one_percent_loss_loses_no_data() {
    finishes_with_exact_data(
        Faults {
            loss: 0.01,
            ..Faults::default()
        },
        101,
        32,
        4,
        2000,
    );
}

#[test]
fn ten_percent_loss_loses_no_data() {
    finishes_with_exact_data(
        Faults {
            loss: 0.10,
            ..Faults::default()
        },
        201,
        10,
        1,
        // The default 2 s deadline: a server whose datagrams still arrive is slow, not down,
        // and gets more deadlines (docs/replication.md), so servers that are up do not flap.
        2000,
    );
}

/// 10 % loss over quinn's client (`--transport quinn`); the default, the agent's own client
/// (quinn-proto driven by its thread), runs every other test here.
#[test]
fn ten_percent_loss_loses_no_data_over_quinns_client() {
    finishes_with_exact_data_with(
        &["--transport", "quinn"],
        Faults {
            loss: 0.10,
            ..Faults::default()
        },
        211,
        10,
        1,
        2000,
    );
}

#[test]
fn five_ms_delay_with_jitter_loses_no_data() {
    // Every remote fault costs at least a 10 ms round trip here: a smaller working set keeps the
    // test short. Jitter keeps the order of datagrams (see docs/lossy-network.md for jitter that
    // reorders, as netem's does).
    finishes_with_exact_data(
        Faults {
            delay: Duration::from_millis(5),
            jitter: Duration::from_millis(2),
            ..Faults::default()
        },
        301,
        12,
        1,
        // The default deadline, as for 10 % loss.
        2000,
    );
}

#[test]
fn reordering_and_duplication_lose_no_data() {
    finishes_with_exact_data(
        Faults {
            reorder: 0.05,
            reorder_gap: 3,
            duplicate: 0.05,
            ..Faults::default()
        },
        401,
        32,
        4,
        2000,
    );
}

/// The agent's workload process, killed by PID when dropped.
fn workload_of(agent: &Process) -> KillOnDrop {
    let pid = yonder_tests::poll(Duration::from_secs(10), || {
        children(agent.pid()).first().copied()
    })
    .expect("the agent started its workload");
    KillOnDrop::new(pid)
}

/// Kills the workload, waits for the agent to exit and checks nothing wrong was read.
fn finish(agent: &mut Process, workload: KillOnDrop) {
    drop(workload);
    let status = agent.wait_timeout(Duration::from_secs(30));
    assert!(
        status.is_some(),
        "the agent did not exit after its workload was killed:\n{}",
        agent.log()
    );
    assert!(!agent.stdout().contains("BAD"), "{}", agent.stdout());
}

#[test]
fn a_two_second_partition_of_one_of_three_servers_loses_no_data() {
    let _serial = one_at_a_time();
    let cluster = Cluster::start(3, 501);
    let cut = cluster.relays[0].addr().to_string();
    let port = free_tcp_port();
    let mut agent = cluster.agent(2, 1000, port, &[&rewriter(), "32", "0"]);
    let workload = workload_of(&agent);
    wait_until(&agent, Duration::from_secs(60), "two passes", || {
        pass(&agent) >= 3
    });

    cluster.partition(&[0], true);
    let t0 = Instant::now();
    wait_until(
        &agent,
        Duration::from_secs(10),
        "the cut server marked down",
        || agent.log().contains(&format!("{cut} is down")),
    );
    let down_after = t0.elapsed();
    std::thread::sleep(Duration::from_secs(2).saturating_sub(t0.elapsed()));
    let pass_at_heal = pass(&agent);
    cluster.partition(&[0], false);
    let healed = Instant::now();
    wait_until(
        &agent,
        Duration::from_secs(15),
        "the cut server back",
        || agent.log().contains(&format!("{cut} is back")),
    );
    let back_after = healed.elapsed();
    wait_until(&agent, Duration::from_secs(60), "repair finished", || {
        metric(port, REPAIRED).unwrap_or(0.0) > 0.0 && metric(port, DEFICIT) == Some(0.0)
    });
    let repaired_after = healed.elapsed();
    // Two more whole passes over every page after the repair, every word checked.
    let pass_now = pass(&agent);
    wait_until(&agent, Duration::from_secs(60), "two more passes", || {
        pass(&agent) >= pass_now + 2
    });
    assert!(!agent.exited(), "{}", agent.log());
    let out = agent.stdout();
    let (pause, at_pass, at_mib) = longest_pause(&out);
    finish(&mut agent, workload);
    let log = yonder_lines(&agent);
    eprintln!(
        "server 1 of 3 cut for 2 s: marked down {down_after:?} after the cut, back \
         {back_after:?} after the heal (in pass {pass_at_heal}), repaired {repaired_after:?} after \
         the heal; longest pause {pause} ms (pass {at_pass}, MiB {at_mib}); {} passes\n{}{log}",
        pass(&agent),
        cluster.relay_report()
    );
    assert!(log.contains("(0 still short of copies)"), "{log}");
}

#[test]
fn a_two_second_partition_of_every_server_pauses_the_workload_which_then_resumes() {
    let _serial = one_at_a_time();
    let cluster = Cluster::start(3, 601);
    let port = free_tcp_port();
    // A 1 s request deadline: a page is declared lost after 10 s without a reachable copy.
    let mut agent = cluster.agent(2, 1000, port, &[&rewriter(), "32", "0"]);
    let workload = workload_of(&agent);
    wait_until(&agent, Duration::from_secs(60), "two passes", || {
        pass(&agent) >= 3
    });

    cluster.partition(&[0, 1, 2], true);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let downs = agent.log().matches(" is down").count();
    cluster.partition(&[0, 1, 2], false);
    let healed = Instant::now();
    let at_heal = agent.stdout();
    // Every server marked down comes back. A server the agent sent nothing to during the cut
    // is never marked down (R = 2 of 3: its pages may not have been asked for), so the count
    // to wait for is the downs', not the servers'.
    wait_until(&agent, Duration::from_secs(15), "every server back", || {
        let log = agent.log();
        let down = log.matches(" is down").count();
        down >= 1 && log.matches(" is back").count() >= down
    });
    let back_after = healed.elapsed();
    // The workload moves again, then makes two more whole passes.
    wait_until(
        &agent,
        Duration::from_secs(30),
        "the workload resumed",
        || progress(&agent.stdout()).len() > progress(&at_heal).len(),
    );
    let resumed_after = healed.elapsed();
    let pass_now = pass(&agent);
    wait_until(&agent, Duration::from_secs(60), "two more passes", || {
        pass(&agent) >= pass_now + 2
    });
    assert!(!agent.exited(), "{}", agent.log());
    let out = agent.stdout();
    let (pause, at_pass, at_mib) = longest_pause(&out);
    finish(&mut agent, workload);
    let log = yonder_lines(&agent);
    eprintln!(
        "every server cut for 2 s: {downs} marked down during the cut, all back {back_after:?} \
         after the heal, progress again {resumed_after:?} after it; longest pause {pause} ms \
         (pass {at_pass}, MiB {at_mib}), cut at {:?} for 2 s; {} passes\n{}{log}",
        t0.elapsed(),
        pass(&agent),
        cluster.relay_report()
    );
    assert!(
        pause >= 1000,
        "the workload did not pause while every server was cut off (longest pause {pause} ms)"
    );
    assert!(!log.contains("is lost"), "{log}");
}

#[test]
fn a_partition_of_every_server_longer_than_the_deadline_stops_the_workload_clearly() {
    let _serial = one_at_a_time();
    let cluster = Cluster::start(2, 701);
    let port = free_tcp_port();
    // A 300 ms request deadline: a page is declared lost after 3 s without a reachable copy.
    let mut agent = cluster.agent(2, 300, port, &[&rewriter(), "32", "0"]);
    let _workload = workload_of(&agent);
    wait_until(&agent, Duration::from_secs(60), "two passes", || {
        pass(&agent) >= 3
    });

    cluster.partition(&[0, 1], true);
    let t0 = Instant::now();
    let status = agent.wait_timeout(Duration::from_secs(30));
    let stopped_after = t0.elapsed();
    let log = yonder_lines(&agent);
    assert!(
        status.is_some(),
        "the agent kept waiting for 30 s with every server cut off:\n{log}"
    );
    assert!(!status.unwrap().success(), "{log}");
    assert!(
        log.contains("is lost") && log.contains("stopping the workload"),
        "no clear message:\n{log}"
    );
    assert!(!agent.stdout().contains("BAD"), "{}", agent.stdout());
    eprintln!(
        "every server cut for good (300 ms deadline, 3 s lost deadline): the agent stopped \
         {stopped_after:?} after the cut\n{}{log}",
        cluster.relay_report()
    );
    // The lost deadline (3 s) counts from the read that found no copy, which starts right after
    // the cut; allow for the probes and a loaded machine.
    assert!(stopped_after < Duration::from_secs(15), "{log}");
}
