//! The soak's report for people: the summary it prints and the "## Soak" section of
//! bench/RESULTS.md.

use std::path::Path;

use yonder_common::size::ByteSize;

use super::SoakReport;
use crate::{run_info, stats::human_ns};

/// The human summary.
pub fn text(r: &SoakReport) -> String {
    let ms = |v: f64| human_ns(v * 1e6);
    let mut s = format!(
        "Soak: {:.1} min of random page visits over {} at {} local ({} %), {} memory servers on \
         loopback, R = {}; a server SIGKILLed every {} and started again after {}\n",
        r.minutes,
        ByteSize(r.size),
        ByteSize(r.local_mem),
        r.local_mem * 100 / r.size.max(1),
        r.servers,
        r.replicas,
        r.kill_every_s.text(),
        r.down_for_s.text(),
    );
    s += &format!(
        "  result:          {}\n",
        if r.ok {
            "PASSED".to_string()
        } else {
            format!("FAILED: {}", r.failure)
        }
    );
    s += &format!(
        "  bytes lost:      {} ({} wrong words, {} pages the agent could not read back)\n",
        r.bytes_lost, r.bad_words, r.pages_lost
    );
    s += &format!(
        "  server kills:    {} ({} before the cluster was whole again); the agent saw {} downs, {} comebacks\n",
        r.server_kills, r.forced_kills, r.agent_saw_down, r.agent_saw_back
    );
    s += &format!(
        "  pages verified:  {} ({} visits, {} remote faults, {} rewrites)\n",
        r.pages_verified, r.touches, r.remote_touches, r.rewrites
    );
    s += &format!(
        "  repairs:         {} pages re-replicated ({} still short of copies at the end)\n",
        r.repairs, r.repair_deficit_at_end
    );
    s += &format!(
        "  pauses (page visits as the workload saw them): p50 {}, p99 {}, p99.9 {}, max {}; {} of 100 ms or more, {} of 1 s or more\n",
        ms(r.pause_p50_ms),
        ms(r.pause_p99_ms),
        ms(r.pause_p999_ms),
        ms(r.pause_max_ms),
        r.touches_over_100ms,
        r.touches_over_1s
    );
    for f in &r.agent_fatal {
        s += &format!("  agent: {f}\n");
    }
    for m in &r.mismatches {
        s += &format!(
            "  wrong page {} at {:.1} s: wanted generation {}, found page {} generation {} ({} words differ)\n",
            m.page, m.at_s, m.want_generation, m.found_page, m.found_generation, m.words
        );
    }
    s += &format!(
        "  workload {}; {:.0} s in all; seed {}; logs in {}\n",
        r.workload_status, r.elapsed_s, r.seed, r.log_dir
    );
    s
}

/// The "## Soak" section of bench/RESULTS.md, from the JSON a soak wrote to `path`.
pub fn markdown(path: &Path) -> String {
    let mut s = String::from("## Soak\n\n");
    let how = format!(
        "`yonder-bench soak --minutes 60 --json --out {}` (about an hour, so not part of \
         `bench/regenerate`; docs/soak.md)",
        path.display()
    );
    let r: SoakReport = match run_info::section_result(&s, "soak", path, &how) {
        Ok(r) => r,
        Err(section) => return section,
    };
    s += &format!(
        "Rendered from {}, written by a separate run of {how}: `{}`, on {}, commit {}, {}. \
         Three memory servers on loopback, the soak workload under the agent with R = {} at {} \
         of its {} local; one server SIGKILLed every {} (chosen at random) and started again \
         empty on the same address after {}. Pauses are the workload's page visits (read and \
         check a whole page, rewrite it for {}), every visit counted.\n\n",
        path.display(),
        r.command,
        r.date,
        r.commit,
        r.machine,
        r.replicas,
        ByteSize(r.local_mem),
        ByteSize(r.size),
        r.kill_every_s.text(),
        r.down_for_s.text(),
        match (r.rewrites * 100).checked_div(r.touches) {
            Some(pct) => format!("{pct} % of them"),
            None => "some".into(),
        },
    );
    s += "| | |\n|---|---:|\n";
    let ms = |v: f64| human_ns(v * 1e6);
    for (k, v) in [
        (
            "result",
            if r.ok {
                "passed".to_string()
            } else {
                format!("FAILED: {}", r.failure)
            },
        ),
        ("minutes", format!("{}", r.minutes)),
        ("bytes lost", r.bytes_lost.to_string()),
        ("server kills", r.server_kills.to_string()),
        (
            "kills before the cluster was whole again",
            r.forced_kills.to_string(),
        ),
        ("pages verified", r.pages_verified.to_string()),
        ("remote faults", r.remote_touches.to_string()),
        ("pages re-replicated (repairs)", r.repairs.to_string()),
        (
            "times the agent marked a server down",
            r.agent_saw_down.to_string(),
        ),
        ("pause p50", ms(r.pause_p50_ms)),
        ("pause p99", ms(r.pause_p99_ms)),
        ("pause p99.9", ms(r.pause_p999_ms)),
        ("pause max", ms(r.pause_max_ms)),
        (
            "page visits of 100 ms or more",
            r.touches_over_100ms.to_string(),
        ),
        ("page visits of 1 s or more", r.touches_over_1s.to_string()),
    ] {
        s += &format!("| {k} | {v} |\n");
    }
    s + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::soak::Span;

    #[test]
    fn a_written_report_is_rendered() {
        let r = SoakReport {
            command: "yonder-bench soak --minutes 60".into(),
            date: "2025-01-01 00:00 UTC".into(),
            commit: "abc1234".into(),
            machine: "Linux 6.x, 2 CPUs".into(),
            minutes: 60.0,
            workload: "w".into(),
            size: 64 << 20,
            local_mem: 16 << 20,
            replicas: 2,
            servers: 3,
            kill_every_s: Span {
                min: 30.0,
                max: 120.0,
            },
            down_for_s: Span { min: 1.0, max: 5.0 },
            server_timeout_ms: None,
            seed: 1,
            ok: true,
            failure: String::new(),
            bytes_lost: 0,
            server_kills: 48,
            forced_kills: 0,
            pages_verified: 1000,
            repairs: 5000,
            repair_deficit_at_end: 0,
            pause_p99_ms: 1.5,
            pause_max_ms: 900.0,
            pause_p50_ms: 0.1,
            pause_p999_ms: 20.0,
            touches: 900,
            remote_touches: 600,
            rewrites: 450,
            touches_over_100ms: 3,
            touches_over_1s: 0,
            bad_words: 0,
            pages_lost: 0,
            mismatches: vec![],
            agent_saw_down: 48,
            agent_saw_back: 48,
            agent_fatal: vec![],
            workload_finished: true,
            workload_status: "exited with status 0".into(),
            kills: vec![],
            elapsed_s: 3700.0,
            log_dir: "/tmp/x".into(),
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("soak.json");
        std::fs::write(&path, serde_json::to_string(&r).unwrap()).unwrap();
        let md = markdown(&path);
        for want in [
            "## Soak\n",
            "`yonder-bench soak --minutes 60`",
            "commit abc1234",
            "| result | passed |",
            "| bytes lost | 0 |",
            "| server kills | 48 |",
            "| times the agent marked a server down | 48 |",
            "| pause p99 | 1.50 ms |",
            "50 % of them",
        ] {
            assert!(md.contains(want), "{want:?} missing:\n{md}");
        }
        assert!(text(&r).contains("PASSED"));
    }

    #[test]
    fn the_section_says_when_the_file_is_missing() {
        let md = markdown(Path::new("/nonexistent/soak.json"));
        assert!(md.starts_with("## Soak\n"), "{md}");
        assert!(md.contains("No soak result"), "{md}");
    }
}
