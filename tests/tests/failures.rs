//! Failures around the node agent with real processes: the agent killed while its workload
//! pages, the workload killed while the agent serves it, and a program the shim cannot enter
//! (statically linked). The paging tests use a real `yonder-server` with its own certificates,
//! so the test can watch the tenant's pages on the server. Every process a test starts is
//! stopped by PID when the test ends, whether it passes or fails (`Process`, `KillOnDrop`).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::{
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};
use yonder_common::client::Requests as _;

use yonder_common::protocol::StatsReply;
use yonder_tests::{
    bin, children, compile_workload, free_tcp_port, metric, number_after, poll, proc_gone,
    proc_state, KillOnDrop, Process, Server,
};

const TENANT: &str = "yonder-agent";
const SHIM_LOST: &str = "lost the node agent";

fn workload(name: &str, extra: &[&str]) -> PathBuf {
    compile_workload(name, Path::new(env!("CARGO_TARGET_TMPDIR")), extra)
}

/// A memory server, a client of it as the agent's tenant, and the runtime that drives it.
struct Cluster {
    server: Server,
    /// The server's Prometheus port.
    metrics: u16,
    rt: tokio::runtime::Runtime,
    client: yonder_common::client::Client,
}

impl Cluster {
    fn start() -> Self {
        let metrics = free_tcp_port();
        let server = Server::start(
            "64MiB",
            &[TENANT],
            &["--metrics", &format!("127.0.0.1:{metrics}")],
        )
        .unwrap();
        // A worker thread keeps the QUIC connection driven between the test's calls.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let client = rt.block_on(server.connect(TENANT)).unwrap();
        Self {
            server,
            metrics,
            rt,
            client,
        }
    }

    fn stats(&self) -> StatsReply {
        self.rt.block_on(self.client.stats()).unwrap()
    }

    /// Asserts that an agent that exited closed its connection on the way out: the server is
    /// left with the test's own within 3 s, not after its 10 s idle time-out.
    fn assert_agent_closed(&self, log: &str) {
        let conns = || metric(self.metrics, "yonder_server_connections");
        let closed = poll(Duration::from_secs(3), || {
            (conns() == Some(1.0)).then_some(())
        });
        assert!(
            closed.is_some(),
            "the server still counts {:?} connections 3 s after the agent exited (the test's own \
             is 1); agent log:\n{log}",
            conns()
        );
    }

    /// Pages the agent's tenant has on the server, with content or as zero flags.
    fn tenant_pages(&self) -> u64 {
        let s = self.stats();
        s.tenant_data_pages + s.tenant_zero_pages
    }
}

/// The agent running `hog MB PIDFILE` against the cluster's server with a 4 MiB budget, and the
/// workload's pid once it is known.
struct Paging {
    agent: Process,
    workload: KillOnDrop,
    _dir: tempfile::TempDir,
}

fn start_paging(cluster: &Cluster, mb: u32) -> Paging {
    let hog = workload("hog", &[]);
    let dir = tempfile::Builder::new()
        .prefix("yonder-failures-")
        .tempdir()
        .unwrap();
    let pidfile = dir.path().join("workload.pid");
    let mut cmd = Command::new(bin("yonder-agent"));
    cmd.args(["run", "--local-mem", "4MiB", "--servers"])
        .arg(cluster.server.addr.to_string())
        .arg("--tls-dir")
        .arg(cluster.server.certs.dir())
        .args(["--cert-name", TENANT, "--"])
        .arg(&hog)
        .arg(mb.to_string())
        .arg(&pidfile);
    let mut agent = Process::spawn(cmd, "yonder-agent", dir.path()).unwrap();
    let pid = poll(Duration::from_secs(20), || {
        std::fs::read_to_string(&pidfile)
            .ok()?
            .trim()
            .parse::<u32>()
            .ok()
    });
    let Some(pid) = pid else {
        let status = agent.wait_timeout(Duration::ZERO);
        panic!(
            "the workload did not write its pid within 20 s (agent: {status:?}); agent log:\n{}",
            agent.stop_and_log()
        );
    };
    let workload = KillOnDrop::new(pid);
    assert!(
        children(agent.pid()).contains(&pid),
        "the workload {pid} is not a child of the agent {}",
        agent.pid()
    );
    Paging {
        agent,
        workload,
        _dir: dir,
    }
}

/// Waits until the workload has written all its memory and is in its read loop, with pages on
/// the server: it went over its budget, was evicted, and now faults pages back in.
fn wait_for_remote_pages(cluster: &Cluster, p: &mut Paging) -> u64 {
    let stored = poll(Duration::from_secs(120), || {
        let n = cluster.stats().tenant_data_pages;
        (n > 0 && p.agent.stdout() == "filled\n").then_some(n)
    });
    match stored {
        Some(n) => n,
        None => panic!(
            "the workload did not fill its memory with pages on the server within 120 s \
             (agent: {:?}); its output: {:?}; agent log:\n{}",
            p.agent.wait_timeout(Duration::ZERO),
            p.agent.stdout(),
            p.agent.log()
        ),
    }
}

#[test]
fn workload_dies_within_a_second_when_the_agent_is_killed() {
    let cluster = Cluster::start();
    let mut p = start_paging(&cluster, 32);
    let stored = wait_for_remote_pages(&cluster, &mut p);
    // Let it page for a moment, so that the kill lands while faults are in flight.
    std::thread::sleep(Duration::from_millis(300));
    let wpid = p.workload.pid();
    assert!(
        !proc_gone(wpid),
        "the workload ended on its own before the kill"
    );

    // A SIGKILLed agent cannot remove its socket directory: the test does, also on failure.
    let _socket_dir = SocketDir::of_workload(wpid);
    p.agent.signal(libc::SIGKILL);
    let killed = Instant::now();
    let gone = poll(Duration::from_secs(1), || proc_gone(wpid).then_some(()));
    let took = killed.elapsed();
    assert!(
        gone.is_some(),
        "the workload (pid {wpid}, state {:?}) still runs 1 s after the agent was killed; log:\n{}",
        proc_state(wpid),
        p.agent.log()
    );
    let status = p.agent.wait_timeout(Duration::from_secs(5));
    assert_eq!(status.and_then(|s| s.signal()), Some(libc::SIGKILL));
    let log = p.agent.log();
    eprintln!(
        "workload ended {took:?} after the agent was killed ({stored} pages were on the server); \
         shim message printed: {}",
        log.contains(SHIM_LOST)
    );
    // Two mechanisms stop the workload: PR_SET_PDEATHSIG (SIGKILL from the kernel as the agent
    // exits) and the shim's helper thread, which reads EOF on the agent's socket, prints the
    // message and SIGKILLs its own process. Both fire as the agent's exit closes its files, and
    // they race: the message was there in 16 of 20 runs here (and in 3 of 12 of an earlier
    // version of this test that killed the agent while the workload was still filling its
    // memory), because the kernel's signal often lands before the helper gets to write. So the
    // message cannot be required. What is reliable, and what matters, is that the workload is
    // dead at once (by the first 20 ms poll in every run): it must never run on with holes in
    // its memory. If the message is there it must be the whole line, written once.
    if log.contains(SHIM_LOST) {
        assert_eq!(log.matches(SHIM_LOST).count(), 1, "{log}");
        assert!(
            log.contains(
                "yonder: lost the node agent; stopping this workload, its memory is incomplete\n"
            ),
            "{log}"
        );
    }
    let out = p.agent.stdout();
    assert_eq!(out, "filled\n", "the workload read something wrong");
}

#[test]
fn killed_workload_is_reported_and_its_pages_are_freed_on_the_server() {
    let cluster = Cluster::start();
    let mut p = start_paging(&cluster, 32);
    let stored = wait_for_remote_pages(&cluster, &mut p);
    std::thread::sleep(Duration::from_millis(300));
    assert!(cluster.tenant_pages() > 0);

    // SAFETY: kill(2) of the workload, checked above to be the agent's child and still running
    // (the guard's pid; the agent has not reaped it).
    unsafe {
        libc::kill(p.workload.pid() as i32, libc::SIGKILL);
    }
    let status = p.agent.wait_timeout(Duration::from_secs(10));
    let log = p.agent.log();
    let Some(status) = status else {
        panic!("the agent did not exit within 10 s of its workload's death; log:\n{log}");
    };
    // The agent dies of the same signal as its program (it re-raises it), so its parent sees
    // what it would have seen without Yonder: killed by signal 9, not an exit status of 137.
    assert_eq!(
        (status.code(), status.signal()),
        (None, Some(libc::SIGKILL)),
        "{status:?}\n{log}"
    );
    assert!(
        log.contains("yonder: workload was killed by signal 9"),
        "no summary line about the kill:\n{log}"
    );
    let freed = log
        .lines()
        .find(|l| l.ends_with(" remote pages freed"))
        .and_then(|l| number_after(l, "; "));
    assert!(
        freed.is_some_and(|n| n > 0),
        "the agent freed no remote pages:\n{log}"
    );
    let left = poll(Duration::from_secs(5), || {
        let n = cluster.tenant_pages();
        (n == 0).then_some(())
    });
    assert!(
        left.is_some(),
        "{} pages of the dead workload are still on the server 5 s after the agent exited \
         ({stored} were stored while it ran); agent log:\n{log}",
        cluster.tenant_pages()
    );
    assert!(!log.contains(SHIM_LOST), "{log}");
    let out = p.agent.stdout();
    assert_eq!(out, "filled\n", "the workload read something wrong");
    cluster.assert_agent_closed(&log);
}

/// A SIGTERM to the agent goes on to its program, as it would without Yonder; the agent serves
/// the program until it exits, then does what it does at every end: the summary, the program's
/// pages freed on the server, the connection closed, its socket directory removed, and it exits
/// as its program did (killed by SIGTERM). Before, SIGTERM killed the agent at once: the program
/// died of a lost agent and the socket directory stayed.
#[test]
fn a_sigterm_to_the_agent_stops_the_program_and_the_agent_cleans_up() {
    let cluster = Cluster::start();
    let mut p = start_paging(&cluster, 32);
    wait_for_remote_pages(&cluster, &mut p);
    let wpid = p.workload.pid();
    let socket_dir = SocketDir::of_workload(wpid);
    let dir = socket_dir
        .0
        .clone()
        .expect("the workload names its agent's socket directory");
    assert!(dir.exists());
    p.agent.signal(libc::SIGTERM);
    let status = p.agent.wait_timeout(Duration::from_secs(20));
    let log = p.agent.log();
    let Some(status) = status else {
        panic!("the agent did not exit within 20 s of a SIGTERM; log:\n{log}");
    };
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}\n{log}");
    assert!(
        log.contains("yonder: workload was killed by signal 15"),
        "no summary line about the program's end:\n{log}"
    );
    assert!(
        !log.contains(SHIM_LOST),
        "the program died of a lost agent:\n{log}"
    );
    assert!(proc_gone(wpid), "the program still runs");
    assert!(!dir.exists(), "{} is still there", dir.display());
    let left = poll(Duration::from_secs(5), || {
        (cluster.tenant_pages() == 0).then_some(())
    });
    assert!(
        left.is_some(),
        "pages left on the server; agent log:\n{log}"
    );
    cluster.assert_agent_closed(&log);
}

#[test]
fn statically_linked_program_runs_unmanaged_with_a_warning() {
    // -static needs libc.a (libc6-dev); if it cannot link, compile_workload fails the test with
    // the linker's message.
    let prog = workload("static_hello", &["-static"]);
    let ldd = Command::new("ldd").arg(&prog).output().unwrap();
    let ldd = String::from_utf8_lossy(&ldd.stdout) + String::from_utf8_lossy(&ldd.stderr);
    assert!(
        ldd.contains("not a dynamic executable") || ldd.contains("statically linked"),
        "the workload is not statically linked: {ldd}"
    );
    let dir = tempfile::Builder::new()
        .prefix("yonder-failures-")
        .tempdir()
        .unwrap();
    // Against a server of its own, to see that the agent closes its connection on this path too.
    let cluster = Cluster::start();
    let mut cmd = Command::new(bin("yonder-agent"));
    cmd.args(["run", "--local-mem", "4MiB", "--servers"])
        .arg(cluster.server.addr.to_string())
        .arg("--tls-dir")
        .arg(cluster.server.certs.dir())
        .args(["--cert-name", TENANT, "--"])
        .arg(&prog);
    let started = Instant::now();
    let mut agent = Process::spawn(cmd, "yonder-agent", dir.path()).unwrap();
    // The program exits at once; the agent notices that before its 10 s wait for the shim.
    let status = agent.wait_timeout(Duration::from_secs(20));
    let log = agent.log();
    let Some(status) = status else {
        panic!("the agent did not exit within 20 s; log:\n{log}");
    };
    // It must notice the exit, not run out its 10 s wait for a shim that never comes.
    assert!(
        log.contains("ended before loading the shim") && !log.contains("within 10 s"),
        "the agent waited for a shim that never comes ({:?}):\n{log}",
        started.elapsed()
    );
    assert_eq!(status.code(), Some(3), "{status:?}\n{log}");
    assert_eq!(
        agent.stdout(),
        format!("static program ran, sum {}\n", 7 * 2048)
    );
    assert!(log.contains("unmanaged"), "no warning:\n{log}");
    assert!(log.contains("yonder:"), "{log}");
    // No page was ever managed, but the agent had connected.
    cluster.assert_agent_closed(&log);
}

/// The agent's socket directory (`/tmp/yonder-run-*`) named in a workload's environment, removed
/// when dropped.
struct SocketDir(Option<PathBuf>);

impl SocketDir {
    fn of_workload(pid: u32) -> Self {
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let dir = env
            .split(|b| *b == 0)
            .filter_map(|kv| std::str::from_utf8(kv).ok())
            .find_map(|kv| kv.strip_prefix("YONDER_AGENT_SOCK="))
            .and_then(|sock| Path::new(sock).parent().map(Path::to_path_buf))
            .filter(|d| d.starts_with(std::env::temp_dir()));
        Self(dir)
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        if let Some(dir) = &self.0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[test]
fn a_killed_agent_leaves_no_embedded_server_keys_behind() {
    // The embedded memory server's certificates and keys live in a temporary directory only
    // until both sides have loaded them: the workload (here a shell) finds none, and a SIGKILL of
    // the agent, which runs no destructor, leaves none. TMPDIR is the test's own directory (removed
    // with what the killed agent leaves in it), so other tests' agents do not count.
    let tmp = tempfile::tempdir().unwrap();
    let mut agent = Command::new(bin("yonder-agent"))
        .args(["run", "--local-mem", "8MiB", "--"])
        .args(["sh", "-c", "ls -A \"$TMPDIR\"; echo end; sleep 60"])
        .env("TMPDIR", tmp.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _guard = KillOnDrop::new(agent.id());
    let mut out = std::io::BufReader::new(agent.stdout.take().unwrap());
    let mut listed = String::new();
    while !listed.ends_with("end\n") {
        let n = std::io::BufRead::read_line(&mut out, &mut listed).unwrap();
        assert!(n > 0, "the workload ended early: {listed:?}");
    }
    // The shim's socket directory (yonder-run-*) is there by design; keys must not be.
    assert!(
        !listed.contains("yonder-agent-") && listed.contains("yonder-run-"),
        "in TMPDIR while the agent runs: {listed:?}"
    );
    agent.kill().unwrap();
    agent.wait().unwrap();
    let keys: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("yonder-agent-"))
        .collect();
    assert!(keys.is_empty(), "left after SIGKILL: {keys:?}");
}

#[test]
fn a_background_job_and_a_program_without_the_shim_outlive_the_agent() {
    // `sh` starts a background job and exits at once: the job's shim says hello after its parent
    // is gone (it was paired by a parent pid it read after the reparenting, and killed itself).
    // The job then runs a program with the shim taken out of its environment, unmanaged but still
    // under the workload's seccomp filter, which maps 64 MiB after the agent has stopped: someone
    // must still answer the filter, or its mmap fails with ENOSYS.
    let dir = tempfile::Builder::new()
        .prefix("yonder-failures-")
        .tempdir()
        .unwrap();
    let out = dir.path().join("straggler.out");
    let py = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 (tests/run installs it)");
    let py = String::from_utf8(py.stdout).unwrap().trim().to_string();
    let script = format!(
        "(sleep 1; exec env -u LD_PRELOAD {py} -c 'import os, time; \
         open(\"{out}.pid\", \"w\").write(str(os.getpid())); time.sleep(2); \
         x = bytearray(64 << 20); x[-1] = 1; open(\"{out}\", \"w\").write(\"mapped\")') \
         >/dev/null 2>&1 &",
        out = out.display()
    );
    let mut cmd = Command::new(bin("yonder-agent"));
    cmd.args(["run", "--local-mem", "16MiB", "--intercept", "auto", "--"])
        .args(["sh", "-c", &script]);
    let mut agent = Process::spawn(cmd, "yonder-agent", dir.path()).unwrap();
    let status = agent.wait_timeout(Duration::from_secs(30));
    let log = agent.log();
    assert!(
        status.is_some_and(|s| s.success()),
        "the agent did not end well: {status:?}\n{log}"
    );
    assert!(
        !log.contains("could not reach the node agent"),
        "the background job was stopped:\n{log}"
    );
    let pid_file = out.with_extension("out.pid");
    let straggler = poll(Duration::from_secs(10), || {
        std::fs::read_to_string(&pid_file)
            .ok()?
            .trim()
            .parse::<u32>()
            .ok()
    })
    .unwrap_or_else(|| panic!("the background job never ran its program:\n{log}"));
    let _guard = KillOnDrop::new(straggler);
    let mapped = poll(Duration::from_secs(20), || {
        (std::fs::read_to_string(&out).ok()? == "mapped").then_some(())
    });
    assert!(
        mapped.is_some(),
        "the program without the shim could not map memory after the agent stopped \
         (is {straggler} still running: {})\n{log}",
        !proc_gone(straggler)
    );
}
