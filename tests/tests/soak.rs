//! `yonder-bench soak` on a short run: three real memory servers, the soak workload under the
//! real agent with R = 2 at 25 % local memory, a server SIGKILLed every 5–10 s and restarted on
//! its address. Nothing read back may differ from what was written, the kills must have
//! happened, the agent must have re-replicated, and the JSON must have every field. No timing is
//! asserted (the pauses are figures, not pass criteria); docs/soak.md explains the soak.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::process::Command;

use serde_json::Value;
use yonder_tests::bin;

/// Every field of the soak's JSON that docs/soak.md and the report rely on.
const FIELDS: &[&str] = &[
    "bytes_lost",
    "server_kills",
    "pages_verified",
    "repairs",
    "pause_p99_ms",
    "pause_max_ms",
    "minutes",
    "workload",
    "local_mem",
    "replicas",
    "command",
    "date",
    "commit",
    "ok",
    "failure",
    "kills",
    "workload_finished",
    "log_dir",
];

#[test]
fn a_one_minute_soak_with_a_server_killed_every_few_seconds_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("soak.json");
    let logs = dir.path().join("logs");
    let run = Command::new(bin("yonder-bench"))
        .args([
            "soak",
            "--minutes",
            "1",
            "--kill-every",
            "5-10",
            "--down-for",
            "1-2",
            "--size",
            "32MiB",
            "--json",
            "--out",
        ])
        .arg(&out)
        .arg("--log-dir")
        .arg(&logs)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    let agent_log = std::fs::read_to_string(logs.join("agent.log")).unwrap_or_default();
    let context = format!("stdout:\n{stdout}\nstderr:\n{stderr}\nagent log:\n{agent_log}");
    assert!(
        run.status.success(),
        "soak failed ({})\n{context}",
        run.status
    );

    let r: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}\n{context}"));
    for f in FIELDS {
        assert!(r.get(f).is_some(), "{f} missing\n{context}");
    }
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(written, r, "--out must hold what --json printed");

    let n = |f: &str| r[f].as_u64().unwrap_or_else(|| panic!("{f}: {}", r[f]));
    assert_eq!(n("bytes_lost"), 0, "{context}");
    assert_eq!(n("bad_words"), 0, "{context}");
    assert!(n("server_kills") >= 2, "{context}");
    assert_eq!(
        r["kills"].as_array().unwrap().len() as u64,
        n("server_kills")
    );
    assert!(n("pages_verified") > 0, "{context}");
    // Every page once in the final pass, on top of the random visits.
    assert!(n("pages_verified") >= 32 * 256, "{context}");
    assert!(
        n("remote_touches") > 0,
        "no remote faults at 25 %\n{context}"
    );
    // Servers came back empty: the agent must have given pages their copies again.
    assert!(n("repairs") > 0, "{context}");
    assert_eq!(r["ok"], true, "{context}");
    assert_eq!(r["workload_finished"], true, "{context}");
    assert_eq!(r["replicas"], 2);
    assert_eq!(n("local_mem"), 8 << 20);
    assert!(r["pause_p99_ms"].as_f64().unwrap() <= r["pause_max_ms"].as_f64().unwrap());
    // One log per server start: the three first starts and one per restart.
    let server_logs = std::fs::read_dir(&logs)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("server"))
        .count() as u64;
    assert_eq!(server_logs, 3 + n("server_kills"), "{context}");
}

#[test]
fn soak_refuses_a_kill_range_upside_down() {
    let run = Command::new(bin("yonder-bench"))
        .args(["soak", "--minutes", "1", "--kill-every", "10-5"])
        .output()
        .unwrap();
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("MIN <= MAX"), "{err}");
}
