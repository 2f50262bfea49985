//! The client API end to end: C programs linked against the real `libyonder.so` run under
//! `yonder-agent run` (embedded memory server, QUIC, TLS) and outside it. The workload
//! (tests/workloads/api_user.c) checks each call's return value, its effect on residency
//! (mincore) and the integrity of every region by checksum; these tests check its verdict and
//! the agent's summary. Needs `cargo build --workspace` first (for `libyonder.so`).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::{
    collections::HashMap,
    io::Read,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use yonder_tests::{bin, children, number_after};

const SOCKET_ENV: &str = "YONDER_AGENT_SOCK";

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Compiles a C file against libyonder.so (header from node-agent/api/include, rpath to the
/// library's directory) once per test run.
fn compile_with_libyonder(src: &Path, name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let mut built = BUILT.get_or_init(Default::default).lock().unwrap();
    if let Some(p) = built.get(name) {
        return p.clone();
    }
    let lib = bin("libyonder.so");
    let lib_dir = lib.parent().unwrap();
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let tmp = out.with_extension(format!("tmp{}", std::process::id()));
    let result = Command::new("cc")
        .args(["-O2", "-pthread", "-Wall", "-Werror", "-I"])
        .arg(root().join("node-agent/api/include"))
        .arg("-o")
        .arg(&tmp)
        .arg(src)
        .arg("-L")
        .arg(lib_dir)
        .arg("-lyonder")
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
        .output()
        .expect("a C compiler (cc) is needed to build the test workloads");
    assert!(
        result.status.success(),
        "compiling {}:\n{}",
        src.display(),
        String::from_utf8_lossy(&result.stderr)
    );
    std::fs::rename(&tmp, &out).unwrap();
    built.insert(name.to_string(), out.clone());
    out
}

fn api_user() -> PathBuf {
    compile_with_libyonder(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads/api_user.c"),
        "api_user",
    )
}

struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Panics with the whole output unless the program exited 0 and printed `ok_line`.
    fn assert_ok(&self, ok_line: &str) {
        assert!(
            self.status.success() && self.stdout.lines().any(|l| l == ok_line),
            "status {:?}\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
    }

    /// The first number after `label` in the agent's summary.
    fn summary(&self, label: &str) -> u64 {
        number_after(&self.stderr, label)
            .unwrap_or_else(|| panic!("no {label:?} in the agent's summary:\n{}", self.stderr))
    }

    /// The return code printed on the line `bad NAME rc=RC`.
    fn bad_rc(&self, name: &str) -> i64 {
        let prefix = format!("bad {name} rc=");
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{}", self.stdout))
            .parse()
            .unwrap()
    }
}

/// Runs `cmd` with its output captured; kills it (and the agent's children) after `limit`.
fn run(mut cmd: Command, limit: Duration) -> Run {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let read = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            r.read_to_string(&mut s).unwrap();
            s
        })
    };
    let out = read(Box::new(child.stdout.take().unwrap()));
    let err = read(Box::new(child.stderr.take().unwrap()));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            for pid in children(child.id()) {
                // SAFETY: kill(2) of a child of the process this test started.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            child.kill().unwrap();
            child.wait().unwrap();
            panic!(
                "not finished within {limit:?}\nstdout:\n{}\nstderr:\n{}",
                out.join().unwrap(),
                err.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// `yonder-agent run --local-mem BUDGET -- PROG ARGS`.
fn under_agent(budget: &str, prog: &Path, args: &[&str]) -> Run {
    let mut cmd = Command::new(bin("yonder-agent"));
    cmd.args(["run", "--local-mem", budget, "--"])
        .arg(prog)
        .args(args)
        .env_remove(SOCKET_ENV);
    run(cmd, Duration::from_secs(240))
}

#[test]
fn not_under_the_agent_every_call_returns_enosys() {
    let mut cmd = Command::new(api_user());
    cmd.arg("absent").env_remove(SOCKET_ENV);
    run(cmd, Duration::from_secs(30)).assert_ok("api_user: all ok");
}

#[test]
fn agent_socket_missing_every_call_fails() {
    let mut cmd = Command::new(api_user());
    cmd.arg("unreachable").env(
        SOCKET_ENV,
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("no-agent-here.sock"),
    );
    run(cmd, Duration::from_secs(30)).assert_ok("api_user: all ok");
}

#[test]
fn flush_prefetch_unregister_register_at_an_8_mib_budget() {
    let run = under_agent("8MiB", &api_user(), &["managed"]);
    run.assert_ok("api_user: all ok");
    assert!(run.summary("yonder: evicted ") > 0, "{}", run.stderr);
}

/// With a budget far above what the program uses, only its flushes evict and only its
/// prefetches (and the faults) bring pages back.
#[test]
fn flush_evicts_and_prefetch_fetches_without_memory_pressure() {
    let run = under_agent("1GiB", &api_user(), &["managed"]);
    run.assert_ok("api_user: all ok");
    let evicted = run.summary("yonder: evicted ");
    assert!(
        evicted >= 16 << 8,
        "{evicted} pages evicted, fewer than the 16 MiB flushed:\n{}",
        run.stderr
    );
    let prefetched = run.summary("write-protect; ");
    assert!(prefetched > 0, "nothing prefetched:\n{}", run.stderr);
}

#[test]
fn forked_child_opens_its_own_connection() {
    under_agent("8MiB", &api_user(), &["fork"]).assert_ok("api_user: all ok");
}

#[test]
fn register_and_unregister_refuse_bad_ranges() {
    let run = under_agent("8MiB", &api_user(), &["bad"]);
    run.assert_ok("api_user: all ok");
    for name in [
        "register",
        "unregister",
        "register-readonly",
        "register-wraps",
    ] {
        assert!(run.bad_rc(name) < 0, "{name}:\n{}", run.stdout);
    }
    assert_eq!(run.bad_rc("register-wraps"), -i64::from(libc::EINVAL));
}

/// madvise(2) answers ENOMEM for a range that is not mapped; so should these.
#[test]
fn flush_and_prefetch_refuse_unmapped_ranges() {
    let run = under_agent("8MiB", &api_user(), &["bad"]);
    run.assert_ok("api_user: all ok");
    for name in ["prefetch", "flush"] {
        assert!(
            run.bad_rc(name) < 0,
            "{name} of an unmapped range succeeded:\n{}",
            run.stdout
        );
    }
}

/// The documented example (node-agent/api/examples/cooperative.c) builds as its comment says
/// and runs with and without the agent.
#[test]
fn cooperative_example() {
    let prog = compile_with_libyonder(
        &root().join("node-agent/api/examples/cooperative.c"),
        "cooperative",
    );
    let mut cmd = Command::new(&prog);
    cmd.env_remove(SOCKET_ENV);
    let alone = run(cmd, Duration::from_secs(60));
    alone.assert_ok("cooperative: all checksums ok");
    assert!(
        alone.stdout.contains("under the Yonder agent: no"),
        "{}",
        alone.stdout
    );
    let managed = under_agent("24MiB", &prog, &[]);
    managed.assert_ok("cooperative: all checksums ok");
    for hint in ["flush cold region 3", "unregister (pin) hot region 0"] {
        assert!(
            managed
                .stdout
                .lines()
                .any(|l| l.starts_with(hint) && l.contains(" ok in ")),
            "{hint} did not succeed:\n{}",
            managed.stdout
        );
    }
    assert!(
        managed.summary("yonder: evicted ") > 0,
        "{}",
        managed.stderr
    );
}
