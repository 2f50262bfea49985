//! Memory the kernel manages its own way, inside a workload's managed ranges.
//!
//! - **Pages the kernel swapped out**: on a node that also has swap, the kernel may page out a
//!   workload's memory (pressure, or `MADV_PAGEOUT`), and /proc/PID/pagemap then shows the page
//!   as "swapped", not "present". Such a page is still the program's data; an eviction that took
//!   it for a page the program had dropped wrote zeros in its place (session 20).
//!   `tests/workloads/swapped.c` pages out every other page of 8 MiB and checks every page after
//!   a 4 MiB budget pushed them out, with and without a fork, on both eviction paths. The test
//!   adds a swap file of its own (root needed) and removes it afterwards, also when it fails.
//! - **Transparent huge pages**: a program may ask for them and the kernel may collapse a fully
//!   populated range into one (khugepaged, `MADV_COLLAPSE`), also in a registered range; evicting
//!   and fetching 4 KiB pages of it must split it without losing a byte.
//! - **KSM**: pages `ksmd` merged are shared by many mappings; the move refuses them and they
//!   take the write-protect path. The test turns `ksmd` on for the machine and puts its settings
//!   back afterwards (unmerging everything), also when it fails.
//! - **Locked** (`mlock`, `mlockall`), **protected** (`mprotect` read-only or `PROT_NONE`) and
//!   **pinned for I/O** (`O_DIRECT`) memory, and children that borrow the address space
//!   (`posix_spawn`, `vfork`): what the program does to its memory that the kernel then treats
//!   differently.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use yonder_tests::{bin, compile_workload, number_after, poll, KillOnDrop};

/// A swap file in use while this lives: `swapoff` and removal on drop.
struct SwapFile(PathBuf);

impl SwapFile {
    fn on(path: &Path, mib: u64) -> Self {
        let _ = std::fs::remove_file(path);
        let run = |program: &str, args: &[&str]| {
            let out = Command::new(program).args(args).output().unwrap();
            assert!(
                out.status.success(),
                "{program} {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let p = path.to_str().unwrap();
        // Written out, not fallocated: swapon refuses files with holes on some filesystems.
        run(
            "dd",
            &[
                "if=/dev/zero",
                &format!("of={p}"),
                "bs=1M",
                &format!("count={mib}"),
                "status=none",
            ],
        );
        let guard = Self(path.to_path_buf());
        run("chmod", &["600", p]);
        run("mkswap", &[p]);
        run("swapon", &[p]);
        guard
    }
}

impl Drop for SwapFile {
    fn drop(&mut self) {
        let _ = Command::new("swapoff").arg(&self.0).status();
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn pages_the_kernel_swapped_out_are_evicted_and_read_back_whole() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let prog = compile_workload("swapped", dir, &[]);
    // On the disk, as the bench's swap files are (a tmpfs cannot hold swap).
    let swap_dir = tempfile::Builder::new()
        .prefix("yonder-test-swap-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let swap = SwapFile::on(&swap_dir.path().join("swapfile"), 64);
    for (evict_by, fork) in [
        ("protect", false),
        ("protect", true),
        ("auto", false),
        ("auto", true),
    ] {
        let mut cmd = Command::new(bin("yonder-agent"));
        cmd.args(["run", "--local-mem", "4MiB", "--evict-by", evict_by, "--"])
            .arg(&prog)
            .args(["8", "4"]);
        if fork {
            cmd.arg("fork");
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        let case = format!("--evict-by {evict_by}, fork: {fork}");
        // The test means nothing unless the kernel really paged some of them out.
        let swapped = number_after(&err, "swapped: ").unwrap_or(0);
        assert!(
            swapped > 0,
            "{case}: no page was swapped out (is the swap file on?):\n{err}"
        );
        assert!(out.status.success(), "{case}: {:?}\n{err}", out.status);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "OK\n",
            "{case}: {err}"
        );
        // The path asked for was taken.
        let moved = number_after(&err, "eviction paths: ").unwrap();
        let protected = number_after(&err, "pages moved to parking, ").unwrap();
        if evict_by == "protect" {
            assert_eq!(moved, 0, "{case}:\n{err}");
            assert!(protected > 1024, "{case}:\n{err}");
        } else {
            assert!(moved > 1024, "{case}:\n{err}");
        }
    }
    drop(swap);
}

#[test]
fn huge_pages_the_kernel_collapsed_are_evicted_and_read_back_whole() {
    let prog = compile_workload("hugepages", Path::new(env!("CARGO_TARGET_TMPDIR")), &[]);
    for evict_by in ["auto", "protect"] {
        run_checked(
            evict_by,
            "24MiB",
            &prog,
            &["16", "32"],
            (
                "huge: ",
                2048,
                "no huge page was made (transparent_hugepage \"never\"?)",
            ),
            4096,
        );
    }
}

/// `ksmd` on, fast, while this lives; on drop every page is unmerged and the settings are put back.
struct KsmOn(Vec<(&'static str, String)>);

impl KsmOn {
    const DIR: &'static str = "/sys/kernel/mm/ksm";

    fn start() -> Self {
        let read = |f: &str| {
            std::fs::read_to_string(format!("{}/{f}", Self::DIR))
                .unwrap_or_else(|e| panic!("KSM is needed ({}/{f}): {e}", Self::DIR))
                .trim()
                .to_string()
        };
        let saved = vec![
            ("sleep_millisecs", read("sleep_millisecs")),
            ("pages_to_scan", read("pages_to_scan")),
            ("run", read("run")),
        ];
        let guard = Self(saved);
        for (f, v) in [
            ("sleep_millisecs", "10"),
            ("pages_to_scan", "2000"),
            ("run", "1"),
        ] {
            std::fs::write(format!("{}/{f}", Self::DIR), v).unwrap();
        }
        guard
    }
}

impl Drop for KsmOn {
    fn drop(&mut self) {
        // "2" stops ksmd and unmerges every merged page; then the settings as they were.
        let _ = std::fs::write(format!("{}/run", Self::DIR), "2");
        for (f, v) in &self.0 {
            let _ = std::fs::write(format!("{}/{f}", Self::DIR), v);
        }
    }
}

#[test]
fn pages_ksm_merged_are_evicted_and_read_back_whole() {
    let prog = compile_workload("ksm", Path::new(env!("CARGO_TARGET_TMPDIR")), &[]);
    let ksm = KsmOn::start();
    for evict_by in ["auto", "protect"] {
        run_checked(
            evict_by,
            "8MiB",
            &prog,
            &["8", "16", "20"],
            ("merged: ", 1, "KSM merged nothing"),
            2048,
        );
    }
    drop(ksm);
}

/// Runs `prog args` under the agent at `budget` by eviction path `evict_by`; checks that the
/// workload's own report (the number after `label` on stderr) is at least `needed` (else the
/// test tested nothing), that it printed exactly "OK" and exited 0, and that more than `evicted`
/// pages left. Returns its stderr.
fn run_checked(
    evict_by: &str,
    budget: &str,
    prog: &Path,
    args: &[&str],
    (label, needed, missing): (&str, u64, &str),
    evicted: u64,
) -> String {
    let out = Command::new(bin("yonder-agent"))
        .args(["run", "--local-mem", budget, "--evict-by", evict_by, "--"])
        .arg(prog)
        .args(args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let case = format!("--evict-by {evict_by} {args:?}");
    let seen = number_after(&err, label).unwrap_or(0);
    assert!(seen >= needed, "{case}: {missing}:\n{err}");
    assert!(out.status.success(), "{case}: {:?}\n{err}", out.status);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "OK\n",
        "{case}: {err}"
    );
    assert!(
        number_after(&err, "evicted ").unwrap_or(0) > evicted,
        "{case}: too little was pushed out:\n{err}"
    );
    err
}

/// What a workload run under the agent gave.
struct Run {
    status: std::process::ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `yonder-agent run --local-mem BUDGET FLAGS -- ARGS` with `stdin` as its input; kills it
/// by its PID after `limit` (a hang is a failure, not a stuck test).
fn run_agent_with(
    budget: &str,
    flags: &[&str],
    args: &[&str],
    stdin: &str,
    limit: Duration,
) -> Run {
    use std::io::{Read, Write};
    let mut child = Command::new(bin("yonder-agent"))
        .args(["run", "--local-mem", budget])
        .args(flags)
        .arg("--")
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _kill = KillOnDrop::new(child.id());
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let read = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = read(Box::new(child.stdout.take().unwrap()));
    let err = read(Box::new(child.stderr.take().unwrap()));
    let Some(status) = poll(limit, || child.try_wait().unwrap()) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "{args:?} did not end within {limit:?}:\n{}",
            err.join().unwrap_or_default()
        )
    };
    Run {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// As [`run_agent_with`] without extra flags.
fn run_agent(budget: &str, args: &[&str], stdin: &str, limit: Duration) -> Run {
    run_agent_with(budget, &[], args, stdin, limit)
}

/// The first number after `label` in a run's summary; panics if there is none.
fn summary_number(stderr: &str, label: &str) -> u64 {
    number_after(stderr, label).unwrap_or_else(|| panic!("no {label:?} in:\n{stderr}"))
}

/// A program that locks more memory (`mlock`, `mlockall`) than its budget: the locked pages stay
/// (the kernel would refuse to drop them anyway), the rest is still paged within the budget,
/// and the program runs to the end. Until session 20 the agent tried to evict locked pages
/// again and again, writing them out and putting them back, and the program hung.
#[test]
fn memory_the_program_locks_stays_and_the_rest_is_still_paged() {
    let prog = compile_workload("locked", Path::new(env!("CARGO_TARGET_TMPDIR")), &[]);
    for mode in ["part", "all"] {
        let run = run_agent(
            "16MiB",
            &[prog.to_str().unwrap(), "64", mode],
            "",
            Duration::from_secs(120),
        );
        assert!(
            run.status.success() && run.stdout == "OK\n",
            "{mode}: {:?} {}\n{}",
            run.status,
            run.stdout,
            run.stderr
        );
        let locked = summary_number(&run.stderr, "locked by the program (mlock): at most ");
        assert!(
            locked >= 32,
            "{mode}: locked memory not reported:\n{}",
            run.stderr
        );
        if mode == "part" {
            // The unlocked half, 32 MiB, went through a 16 MiB budget.
            assert!(
                summary_number(&run.stderr, "yonder: evicted ") > 4096,
                "{mode}: the unlocked half was not paged:\n{}",
                run.stderr
            );
            let peak = summary_number(&run.stderr, "resident managed memory peaked at ");
            assert!(
                peak <= 17,
                "{mode}: {peak} MiB resident beside the locked memory:\n{}",
                run.stderr
            );
        }
    }
}

/// Memory the program made read-only or inaccessible (`mprotect`) while it is pushed out, by
/// either eviction path: the write-protect path copies pages out with `process_vm_readv`, which
/// has the program's access rights and refuses a `PROT_NONE` page; until session 20 that ended
/// the workload ("eviction failed: Bad address").
#[test]
fn memory_the_program_protects_is_evicted_and_reads_back_whole() {
    let prog = compile_workload("mprotected", Path::new(env!("CARGO_TARGET_TMPDIR")), &[]);
    for prot in ["none", "ro"] {
        run_ok_by_both_paths("8MiB", &[prog.to_str().unwrap(), "16", prot], 8192);
    }
}

/// Runs `args` under the agent at `budget` by each eviction path (moves, and write protection
/// alone): it must print exactly "OK" and exit 0, and more than `evicted` pages must have left.
fn run_ok_by_both_paths(budget: &str, args: &[&str], evicted: u64) {
    for evict_by in ["auto", "protect"] {
        let run = run_agent_with(
            budget,
            &["--evict-by", evict_by],
            args,
            "",
            Duration::from_secs(300),
        );
        assert!(
            run.status.success() && run.stdout == "OK\n",
            "{evict_by} {args:?}: {:?} {}\n{}",
            run.status,
            run.stdout,
            run.stderr
        );
        assert!(
            summary_number(&run.stderr, "yonder: evicted ") > evicted,
            "{evict_by} {args:?}: too little was evicted:\n{}",
            run.stderr
        );
    }
}

/// Reads with O_DIRECT into buffers larger than the budget: the kernel pins each buffer page
/// for the read, and a pinned page must not be evicted (the device would write into a page the
/// program no longer maps). Until session 20 `UFFDIO_MOVE`'s refusal of a pinned page sent it to
/// write protection, which dropped it: 36,789 pages of 300 reads came back as the buffer's old
/// content.
#[test]
fn buffers_pinned_for_direct_io_are_not_evicted_under_the_read() {
    let prog = compile_workload("odirect", Path::new(env!("CARGO_TARGET_TMPDIR")), &[]);
    // On the disk: a tmpfs takes no O_DIRECT.
    let dir = tempfile::Builder::new()
        .prefix("yonder-test-odirect-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let file = dir.path().join("data");
    let run = run_agent(
        "2MiB",
        &[
            prog.to_str().unwrap(),
            file.to_str().unwrap(),
            "16",
            "1024",
            "100",
        ],
        "",
        Duration::from_secs(300),
    );
    assert!(
        run.status.success() && run.stdout == "OK\n",
        "{:?} {}\n{}",
        run.status,
        run.stdout,
        run.stderr
    );
    assert!(
        summary_number(&run.stderr, "yonder: evicted ") > 4096,
        "the buffers were not paged:\n{}",
        run.stderr
    );
}

/// `posix_spawn` and `vfork` + exec (what Python's subprocess and shells use): the child borrows
/// the parent's address space until it execs, with no fork event, while the parent's memory is
/// paged and a thread of it reads everything back; by both eviction paths.
#[test]
fn spawned_and_vforked_children_leave_the_parent_memory_whole() {
    let prog = compile_workload(
        "spawner",
        Path::new(env!("CARGO_TARGET_TMPDIR")),
        &["-pthread"],
    );
    run_ok_by_both_paths("4MiB", &[prog.to_str().unwrap(), "32", "100"], 4096);
}
