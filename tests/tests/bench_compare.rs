//! `yonder-bench compare` on a tiny run: the table, JSON, Markdown and chart formats, and that the
//! machine is restored afterwards (no swap of the bench's, zram reset, no cgroups, no swap file,
//! no state file) after a normal run, after Ctrl-C, and after a SIGKILLed run once
//! `compare --restore` (or the next run) has cleaned up. No figure is asserted: this is a format
//! and hygiene test, never a benchmark.
//!
//! The tests touch swap and cgroups, so they need root, and they run one at a time.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
    time::Duration,
};

use yonder_tests::{bin, poll, Process};

/// The machine's swap and cgroups are one shared resource: one test at a time.
static MACHINE: Mutex<()> = Mutex::new(());

const STATE: &str = "/run/yonder-bench/state.json";

/// What the machine looked like before a test: swap areas and zram devices with their sizes and
/// compression algorithms.
#[derive(Debug, PartialEq)]
struct Snapshot {
    swaps: Vec<String>,
    zram: Vec<(String, String, String)>,
}

fn snapshot() -> Snapshot {
    let swaps = std::fs::read_to_string("/proc/swaps")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect();
    let mut zram: Vec<(String, String, String)> = std::fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("zram"))
        .map(|n| {
            let read = |f: &str| {
                std::fs::read_to_string(format!("/sys/block/{n}/{f}"))
                    .unwrap_or_default()
                    .trim()
                    .to_string()
            };
            (read("disksize"), read("comp_algorithm"), n)
        })
        .collect();
    zram.sort();
    Snapshot { swaps, zram }
}

fn bench_cgroups() -> Vec<PathBuf> {
    [
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup",
        "/sys/fs/cgroup/unified",
    ]
    .iter()
    .filter_map(|root| std::fs::read_dir(root).ok())
    .flat_map(|d| d.flatten())
    .filter(|e| e.file_name().to_string_lossy().starts_with("yonder-bench-"))
    .map(|e| e.path())
    .collect()
}

fn swap_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("yonder-bench-"))
        .map(|e| e.path())
        .collect()
}

/// Asserts the machine is as `before`, with nothing of the bench's left.
fn assert_restored(before: &Snapshot, swap_dir: &Path) {
    assert_eq!(
        snapshot(),
        *before,
        "swap or zram devices were not restored"
    );
    assert!(
        !std::fs::read_to_string("/proc/swaps")
            .unwrap()
            .contains("yonder-bench"),
        "a swap of the bench is still active"
    );
    assert_eq!(bench_cgroups(), Vec::<PathBuf>::new(), "cgroups left");
    assert_eq!(
        swap_files(swap_dir),
        Vec::<PathBuf>::new(),
        "swap file left"
    );
    assert!(!Path::new(STATE).exists(), "state file left");
}

/// Per test: a swap directory on the disk (not tmpfs) and an output directory; on drop, the bench
/// is asked to undo anything a failed test left behind.
struct Scene {
    swap_dir: tempfile::TempDir,
    out: tempfile::TempDir,
}

impl Scene {
    fn new() -> Self {
        Self {
            swap_dir: tempfile::Builder::new()
                .prefix("yonder-bench-test-")
                .tempdir_in("/var/tmp")
                .unwrap(),
            out: tempfile::tempdir().unwrap(),
        }
    }

    fn compare(&self) -> Command {
        let mut cmd = Command::new(bin("yonder-bench"));
        cmd.arg("compare")
            .arg("--swap-dir")
            .arg(self.swap_dir.path());
        cmd
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        let _ = self.compare().arg("--restore").output();
    }
}

fn skip_unless_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipped: needs root (swap and cgroups)");
    }
    !root
}

#[test]
fn tiny_run_prints_table_json_markdown_and_charts_and_restores_the_machine() {
    if skip_unless_root() {
        return;
    }
    let _one = MACHINE.lock().unwrap_or_else(|e| e.into_inner());
    let before = snapshot();
    let scene = Scene::new();
    let json = scene.out.path().join("compare.json");
    // Another compression algorithm than the device's, to see it set back afterwards.
    let algorithms = std::fs::read_to_string("/sys/block/zram0/comp_algorithm").unwrap_or_default();
    let other = algorithms
        .split_whitespace()
        .find(|a| !a.starts_with('['))
        .map(String::from);
    let md = scene.out.path().join("compare.md");
    let out = scene
        .compare()
        .args(["--size", "8MiB", "--ratios", "50", "--runs", "1"])
        .args(["--workload", "random"])
        .args(other.iter().flat_map(|a| ["--zram-algorithm", a.as_str()]))
        .arg("--json")
        .arg(&json)
        .arg("--markdown")
        .arg(&md)
        .arg("--out-dir")
        .arg(scene.out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "compare failed:\n{stdout}\n{stderr}");

    // The table: a header and one line per mode.
    assert!(stdout.contains("random: anonymous footprint"), "{stdout}");
    let header = stdout.lines().find(|l| l.contains("mode")).unwrap();
    for col in [
        "local",
        "time",
        "× all local",
        "touches/s",
        "faults",
        "budget",
    ] {
        assert!(header.contains(col), "no {col:?} in {header:?}");
    }
    for mode in ["all local", "Yonder", "swap to zram", "swap to file"] {
        let line = stdout
            .lines()
            .filter(|l| *l != header)
            .find(|l| l.contains(mode));
        let line = line.unwrap_or_else(|| panic!("no {mode} row in\n{stdout}"));
        assert!(line.contains(" s "), "no time in {line:?}");
        if mode != "all local" {
            assert!(line.trim_start().starts_with("50 %"), "{line:?}");
        }
    }

    // The JSON.
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["ratios"], serde_json::json!([50]));
    assert_eq!(report["runs"], 1);
    assert!(report["machine"]["kernel"].as_str().is_some());
    assert!(report["machine"]["cgroup"].as_str().is_some());
    let w = &report["workloads"][0];
    assert_eq!(w["name"], "random");
    assert!(w["anon_bytes"].as_u64().unwrap() >= 8 << 20);
    let rows = w["rows"].as_array().unwrap();
    let modes: Vec<&str> = rows.iter().map(|r| r["mode"].as_str().unwrap()).collect();
    assert_eq!(modes, ["local", "yonder", "zram", "file"]);
    for r in rows {
        assert!(r["time_s"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["slowdown"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["throughput"].as_f64().unwrap() > 0.0, "{r}");
        assert_eq!(r["times_s"].as_array().unwrap().len(), 1, "{r}");
        assert_eq!(r["failures"], serde_json::json!([]), "{r}");
    }
    for r in &rows[1..] {
        assert_eq!(r["ratio"], 50);
        let budget = r["local_bytes"].as_u64().unwrap();
        assert_eq!(budget, w["anon_bytes"].as_u64().unwrap() / 2, "{r}");
        assert!(r["faults"].as_u64().is_some(), "{r}");
        assert!(r.get("miss_p50_us").is_some(), "{r}");
    }
    // The all-local run ran in a cgroup of its own: what it was charged beyond its anonymous
    // memory is what the swap modes' limit adds to the budget (`--memcg-rest charged`).
    let charged = w["charged_rest_bytes"]
        .as_u64()
        .expect("charged rest measured");
    assert_eq!(w["memcg_rest_bytes"].as_u64(), Some(charged), "{w}");
    assert!(charged < w["anon_bytes"].as_u64().unwrap(), "{w}");
    for r in &rows[2..] {
        let limit = r["memcg_limit_bytes"].as_u64().unwrap();
        assert_eq!(limit, r["local_bytes"].as_u64().unwrap() + charged);
    }

    // Markdown and the charts.
    let md = std::fs::read_to_string(&md).unwrap();
    assert!(md.contains("| local | mode | time |"), "{md}");
    assert!(md.contains("charged besides it"), "{md}");
    assert!(md.contains("| 50 % | Yonder |"), "{md}");
    let png = std::fs::read(scene.out.path().join("compare-random.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let svg = std::fs::read_to_string(scene.out.path().join("compare-random.svg")).unwrap();
    assert!(
        svg.contains("<svg") && svg.contains("swap to zram"),
        "{svg:.300}"
    );

    assert_restored(&before, scene.swap_dir.path());
}

/// Starts a compare run that keeps swap on for a while, and waits until it has.
fn start_long_run(scene: &Scene, name: &str) -> Process {
    let mut cmd = scene.compare();
    cmd.args(["--size", "32MiB", "--ratios", "25", "--runs", "20"])
        .args(["--workload", "random", "--modes", "zram,file", "--no-plot"]);
    let p = Process::spawn(cmd, name, scene.out.path()).unwrap();
    let on = poll(Duration::from_secs(120), || {
        let log = p.log();
        (log.contains("swapon") || p.exited()).then_some(log)
    })
    .unwrap_or_else(|| panic!("no swapon within 120 s; log:\n{}", p.log()));
    assert!(on.contains("swapon"), "{on}");
    // Mid-run: a workload is in its cgroup.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        std::fs::read_to_string("/proc/swaps")
            .unwrap()
            .lines()
            .count()
            > 1,
        "no swap active mid-run"
    );
    p
}

#[test]
fn ctrl_c_mid_run_restores_the_machine() {
    if skip_unless_root() {
        return;
    }
    let _one = MACHINE.lock().unwrap_or_else(|e| e.into_inner());
    let before = snapshot();
    let scene = Scene::new();
    let mut p = start_long_run(&scene, "compare-int");
    p.signal(libc::SIGINT);
    let status = p
        .wait_timeout(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("compare did not exit after SIGINT; log:\n{}", p.log()));
    let log = p.log();
    assert!(!status.success(), "an interrupted run must fail: {log}");
    assert!(log.contains("interrupted"), "{log}");
    assert_restored(&before, scene.swap_dir.path());
}

#[test]
fn a_killed_run_is_cleaned_up_by_restore() {
    if skip_unless_root() {
        return;
    }
    let _one = MACHINE.lock().unwrap_or_else(|e| e.into_inner());
    let before = snapshot();
    let scene = Scene::new();
    let mut p = start_long_run(&scene, "compare-kill");
    p.signal(libc::SIGKILL);
    p.wait_timeout(Duration::from_secs(10)).unwrap();
    // Nothing ran the guard: the state file lists what is left.
    assert!(Path::new(STATE).exists(), "no state file after SIGKILL");
    let out = scene.compare().arg("--restore").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_restored(&before, scene.swap_dir.path());
}

/// Runs `compare --workload WORKLOAD` with `extra` flags at 50 % in every mode, once, and checks
/// that every mode completed and the JSON is complete; returns the workload's JSON.
fn real_program_in_every_mode(workload: &str, extra: &[&str]) -> serde_json::Value {
    let before = snapshot();
    let scene = Scene::new();
    let json = scene.out.path().join("compare.json");
    let out = scene
        .compare()
        .args([
            "--ratios",
            "50",
            "--runs",
            "1",
            "--no-plot",
            "--workload",
            workload,
        ])
        .args(extra)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "compare failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("{workload}: anonymous footprint")),
        "{stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let w = report["workloads"][0].clone();
    assert_eq!(w["name"], workload);
    assert_eq!(w["has_throughput"], false);
    assert!(w["anon_bytes"].as_u64().unwrap() > 0, "{w}");
    assert!(w["file_bytes"].as_u64().is_some(), "{w}");
    let rows = w["rows"].as_array().unwrap();
    let modes: Vec<&str> = rows.iter().map(|r| r["mode"].as_str().unwrap()).collect();
    assert_eq!(modes, ["local", "yonder", "zram", "file"]);
    for r in rows {
        assert!(r["throughput"].is_null(), "{r}");
        let failures = r["failures"].as_array().unwrap();
        // The v1 memory cgroup's OOM killer sometimes ends a swap-mode run even with free swap
        // (docs/benchmarks-compare.md); anything else is a failure of the test.
        if !failures.is_empty() {
            assert!(
                ["zram", "file"].contains(&r["mode"].as_str().unwrap())
                    && failures
                        .iter()
                        .all(|f| f.as_str().unwrap().contains("OOM killer")),
                "{r}\n{stderr}"
            );
            assert_eq!(r["times_s"], serde_json::json!([]), "{r}");
            continue;
        }
        assert!(r["time_s"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["slowdown"].as_f64().unwrap() > 0.0, "{r}");
        assert_eq!(r["times_s"].as_array().unwrap().len(), 1, "{r}");
    }
    for r in &rows[1..] {
        assert_eq!(r["ratio"], 50);
        assert_eq!(
            r["local_bytes"].as_u64().unwrap(),
            w["anon_bytes"].as_u64().unwrap() / 2,
            "{r}"
        );
        if r["failures"] == serde_json::json!([]) {
            assert!(r["faults"].as_u64().is_some(), "{r}");
        }
    }
    // The corpus or the RDB file's directory (named yonder-bench-*) is gone with the rest.
    assert_restored(&before, scene.swap_dir.path());
    w
}

#[test]
fn xz_builtin_completes_in_every_mode() {
    if skip_unless_root() {
        return;
    }
    let _one = MACHINE.lock().unwrap_or_else(|e| e.into_inner());
    let w = real_program_in_every_mode("xz", &["--xz-corpus", "1MiB"]);
    let command: Vec<&str> = w["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(command[..5], ["xz", "-9", "-T1", "-k", "-f"], "{command:?}");
    // xz -9 on 1 MiB of text needs tens of MiB (its match finder), not just the corpus.
    assert!(w["anon_bytes"].as_u64().unwrap() > 8 << 20, "{w}");
}

#[test]
fn redis_builtin_completes_in_every_mode() {
    if skip_unless_root() {
        return;
    }
    let _one = MACHINE.lock().unwrap_or_else(|e| e.into_inner());
    let w = real_program_in_every_mode("redis", &["--redis-dataset", "20MiB"]);
    assert_eq!(w["command"][0], "redis-server", "{w}");
    // The footprint is the server's (the dataset and Redis's own per-key memory), counted once
    // although the BGSAVE child shares it.
    let anon = w["anon_bytes"].as_u64().unwrap();
    assert!(anon > 20 << 20 && anon < 48 << 20, "{anon}");
}
