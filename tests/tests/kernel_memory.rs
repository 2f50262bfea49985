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

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use yonder_tests::{bin, compile_workload, number_after};

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
