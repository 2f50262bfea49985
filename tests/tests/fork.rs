//! fork under the pager: parent and child each keep their own copy-on-write memory, also for
//! pages evicted before the fork and pages evicted by either side after it; exec after fork
//! works; a child's remote pages are freed when it exits, and the workload's when it ends.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};
use yonder_common::client::Requests as _;

use yonder_tests::{bin, compile_workload, Server};

const MIB: u64 = 1 << 20;

/// Pages the server holds for the agent's tenant.
fn stored_pages(rt: &tokio::runtime::Runtime, server: &Server) -> u64 {
    rt.block_on(async {
        let c = server.connect("yonder-agent").await.unwrap();
        let s = c.stats().await.unwrap();
        s.tenant_data_pages + s.tenant_zero_pages
    })
}

#[test]
fn parent_and_children_keep_their_own_memory_across_fork() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = Server::start("1GiB", &["yonder-agent"], &[]).unwrap();
    let forker = compile_workload("forker", Path::new(env!("CARGO_TARGET_TMPDIR")), &[]);
    let data_mib = 24;
    let mut agent = Command::new(bin("yonder-agent"))
        .args(["run", "--local-mem", "6MiB", "--servers"])
        .arg(server.addr.to_string())
        .arg("--tls-dir")
        .arg(server.certs.dir())
        .args(["--cert-name", "yonder-agent", "--"])
        .arg(&forker)
        .arg(data_mib.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut go_ahead = agent.stdin.take();
    // Killed by pid if anything below fails.
    struct Kill(u32);
    impl Drop for Kill {
        fn drop(&mut self) {
            // SAFETY: kill(2) of the agent this test started; its workload dies with it.
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }
    let _guard = Kill(agent.id());
    let stdout = agent.stdout.take().unwrap();
    let mut stderr = agent.stderr.take().unwrap();
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut s).unwrap();
        s
    });
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let parent_pages = data_mib * MIB / 4096;
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut during = None;
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if line == "CHILDREN_DONE" {
            // The children have exited; only the parent's pages may remain on the server once
            // the agent has noticed (it probes every 100 ms) and the frees have landed. The
            // parent waits for a line on stdin, so this takes as long as the machine needs.
            let settled = Instant::now() + Duration::from_secs(60);
            let mut n = stored_pages(&rt, &server);
            while n > parent_pages + parent_pages / 4 && Instant::now() < settled {
                std::thread::sleep(Duration::from_millis(100));
                n = stored_pages(&rt, &server);
            }
            during = Some(n);
            if let Some(mut stdin) = go_ahead.take() {
                std::io::Write::write_all(&mut stdin, b"\n").unwrap();
            }
        }
        lines.push(line);
    }
    let status = agent.wait().unwrap();
    let err = err.join().unwrap();
    assert!(
        status.success(),
        "status {status}; stdout {lines:?}; stderr:\n{err}"
    );
    assert_eq!(lines, ["CHILDREN_DONE", "OK"], "stderr:\n{err}");

    // Children rewrote their whole copy (two full copies beyond the parent's): had their pages
    // not been freed at their exit, the server would hold about three times the parent's.
    let during = during.unwrap();
    assert!(
        during > parent_pages / 2 && during <= parent_pages + parent_pages / 4,
        "{during} pages stored after the children exited; the parent has {parent_pages}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = stored_pages(&rt, &server);
        if n == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{n} pages left after the workload ended"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs C workload `name` with `arg` under `yonder-agent run` at `budget`; it must print "OK" and
/// succeed. Returns the agent's stderr (its summary) and the pages it evicted.
fn run_ok(name: &str, budget: &str, arg: &str) -> (String, u64) {
    let prog = compile_workload(name, Path::new(env!("CARGO_TARGET_TMPDIR")), &[]);
    let out = Command::new(bin("yonder-agent"))
        .args(["run", "--local-mem", budget, "--"])
        .arg(&prog)
        .arg(arg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{:?}\n{err}", out.status);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "OK\n", "{err}");
    let evicted = yonder_tests::number_after(&err, "evicted ").unwrap_or(0);
    (err, evicted)
}

#[test]
fn wipe_on_fork_ranges_read_zeros_and_dont_fork_ranges_are_absent_in_the_child() {
    // Three 8 MiB ranges at a 4 MiB budget: at the fork, the wiped range is all evicted, so the
    // agent must know not to serve the parent's copy in the child.
    let (err, evicted) = run_ok("wipeonfork", "4MiB", "8");
    assert!(
        evicted >= 3 * 8 * MIB / 4096 / 2,
        "too little was evicted to test anything:\n{err}"
    );
    assert!(!err.contains("are inherited"), "{err}");
}

#[test]
fn a_fork_that_only_reads_evicts_nothing_for_pages_parent_and_child_share() {
    // 16 MiB written at a 24 MiB budget, then a fork whose child only reads for about a second:
    // the two share every page copy-on-write, so the workload still holds about 16 MiB and
    // nothing needs to go. Counting each page in both processes would make it 32 MiB and evict
    // 8 MiB or more (2,048 pages).
    let (err, evicted) = run_ok("cowread", "24MiB", "16");
    assert!(
        evicted < 512,
        "{evicted} pages evicted for a fork that shares its pages:\n{err}"
    );
}

#[test]
fn a_thread_that_faults_inside_fork_at_the_hard_limit_gets_its_page() {
    // `fork()` takes every malloc arena's lock after the shim's prepare handler took its fork
    // lock, and while that lock is held the shim's helper moves no page of the process. With 16
    // thread arenas evicted (four readers of a 32 MiB buffer at a 4 MiB budget, no grace window)
    // the forking thread faults there, often while the workload is at its hard limit; that
    // fault must not wait for an eviction the fork itself holds back (Redis's BGSAVE stalled
    // with jemalloc's fork handlers in that place).
    let prog = compile_workload("forkfault", Path::new(env!("CARGO_TARGET_TMPDIR")), &[]);
    let out = Command::new(bin("yonder-agent"))
        .args(["run", "--local-mem", "4MiB", "--parked-share", "0", "--"])
        .arg(&prog)
        .args(["32", "40", "4", "16"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}\n{err}", out.status);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "OK\n", "{err}");
}
