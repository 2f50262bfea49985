//! The scale report for people: the table it prints and the "## Scale" section of
//! bench/RESULTS.md.

use std::path::PathBuf;

use super::{size_name, ScaleReport, SizeRow};
use crate::{run_info, stats::human_ns};

/// Column headers of the table (text and Markdown).
const HEADERS: [&str; 16] = [
    "size",
    "pages",
    "agent RSS",
    "agent B/page beyond baseline",
    "agent B/page vs previous size",
    "server B/stored page",
    "remote faults",
    "remote p50",
    "p50 of each run",
    "remote p99",
    "p50 vs smallest",
    "remote faults/s",
    "agent CPU/fault",
    "evictions written (touches)",
    "first GiB evicted",
    "fill",
];

/// One table row: `r`, with the row of the next smaller size (`previous`) for the agent's
/// marginal cost per page, and the smallest size's p50 for the flatness.
fn cells(r: &SizeRow, previous: Option<&SizeRow>, smallest_p50: u64) -> [String; 16] {
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1 << 20) as f64);
    let marginal = previous
        .filter(|p| p.pages < r.pages)
        .map_or("—".into(), |p| {
            let bytes = r.agent_rss_bytes as f64 - p.agent_rss_bytes as f64;
            format!("{:.1}", bytes / (r.pages - p.pages) as f64)
        });
    [
        size_name(r.size_bytes),
        r.pages.to_string(),
        mib(r.agent_rss_bytes),
        format!("{:.1}", r.agent_bytes_per_page),
        marginal,
        format!("{:.0}", r.server_bytes_per_page),
        r.remote.count.to_string(),
        human_ns(r.remote.p50_ns as f64),
        if r.remote_p50_runs_ns.len() > 1 {
            r.remote_p50_runs_ns
                .iter()
                .map(|&p| format!("{:.1}", p as f64 / 1e3))
                .collect::<Vec<_>>()
                .join(" / ")
                + " µs"
        } else {
            "—".into()
        },
        human_ns(r.remote.p99_ns as f64),
        format!(
            "{:+.0} %",
            (r.remote.p50_ns as f64 / smallest_p50.max(1) as f64 - 1.0) * 100.0
        ),
        format!("{:.0}", r.remote_faults_per_s),
        format!("{:.1} µs", r.agent_cpu_us_per_fault),
        r.touch_evictions_written_pct
            .map_or("—".into(), |p| format!("{p:.0} %")),
        r.first_gib_evicted_s
            .map_or("—".into(), |s| format!("{s:.1} s")),
        format!("{:.1} s", r.fill_s),
    ]
}

/// The table's rows for `rows` (smallest first).
fn table_rows<'a>(rows: impl IntoIterator<Item = &'a SizeRow>) -> Vec<[String; 16]> {
    let rows: Vec<&SizeRow> = rows.into_iter().collect();
    let first = rows.first().map_or(0, |r| r.remote.p50_ns);
    rows.iter()
        .enumerate()
        .map(|(i, r)| cells(r, i.checked_sub(1).map(|j| rows[j]), first))
        .collect()
}

/// What was left out or failed, one line each.
fn notes(r: &ScaleReport) -> Vec<String> {
    let skipped = r.skipped.iter().map(|s| {
        format!(
            "SKIPPED {}: needs about {}, {} was free beyond the reserve",
            size_name(s.size_bytes),
            size_name(s.needed_bytes),
            size_name(s.available_bytes)
        )
    });
    let failed = r
        .failed
        .iter()
        .map(|f| format!("FAILED {}: {}", size_name(f.size_bytes), f.error));
    skipped.chain(failed).collect()
}

/// The human table.
pub fn text(r: &ScaleReport) -> String {
    let mut s = format!(
        "Scale: one memory server on loopback (R = 1), {} % local, {} random touches per size, \
         each size the median of {} runs by remote p50; agent baseline {:.1} MiB with a {} \
         workload\n\n",
        r.local_share_pct,
        r.touches,
        r.runs,
        r.baseline.agent_rss_bytes as f64 / (1 << 20) as f64,
        size_name(r.baseline.size_bytes),
    );
    let rows = table_rows(&r.rows);
    let width = |i: usize| {
        rows.iter()
            .map(|c| c[i].chars().count())
            .chain([HEADERS[i].chars().count()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..HEADERS.len()).map(width).collect();
    let line = |c: &[String]| {
        c.iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:>w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            + "\n"
    };
    s += &line(&HEADERS.map(String::from));
    for c in &rows {
        s += &line(c);
    }
    for n in notes(r) {
        s += &format!("{n}\n");
    }
    s
}

/// The "## Scale" section of bench/RESULTS.md, from the JSON files scale runs wrote to `paths`
/// (one table, all their sizes, each row naming its run).
pub fn markdown(paths: &[PathBuf]) -> String {
    let heading = "## Scale\n\n";
    let how =
        "`yonder-bench scale --json --out bench/results/scale.json` (minutes to an hour, and \
               most of the machine's memory, so not part of `bench/regenerate`; docs/scale.md)";
    let mut runs = Vec::new();
    let mut unread = Vec::new();
    for path in paths {
        match run_info::section_result::<ScaleReport>("", "scale", path, how) {
            Ok(r) => runs.push((path, r)),
            Err(line) => unread.push(line),
        }
    }
    runs.sort_by(|a, b| a.1.date.cmp(&b.1.date));
    let mut s = String::from(heading);
    if runs.is_empty() {
        return s + &unread.concat();
    }
    s += &format!(
        "Rendered from the result files of separate runs of {how}, listed below with their exact \
         commands. One memory server on loopback (R = 1), the controlled workload under the agent \
         at {} % local memory: fill, then uniformly random one-word touches (the same count at \
         every size of a run), timed by the workload. Agent bytes per page beyond baseline: its \
         RSS at the end of the touches minus its RSS with a tiny workload in the same run, \
         divided by the difference in managed pages; vs previous size: the same against the \
         row above. Server bytes per stored page: its RSS growth since it started, divided by \
         the pages it stored (4096 of them are the page). A size that ran several times is the run \
         with the median remote-fault p50, whose figures the row gives; p50 of each run lists \
         them all in the order they ran. p50 vs smallest: the remote-fault p50 against the \
         first row's. Agent CPU per fault: all its threads during the touches \
         (evictions included), divided by the remote faults. Evictions written: the share of the \
         pages evicted during the touches that went to the server rather than being dropped \
         clean; near 100 % while the touches still push out pages resident since the fill \
         (no remote copy), which is a dearer fault than one that evicts a fetched page. First GiB evicted: seconds from the \
         start of the fill.\n\n",
        runs[0].1.local_share_pct,
    );
    for (i, (path, r)) in runs.iter().enumerate() {
        s += &format!(
            "- run {}: {}, `{}`, on {}, commit {}, {}; {} touches per size, {} run(s) of each; \
             agent baseline {:.1} MiB with a {} workload\n",
            i + 1,
            path.display(),
            r.command,
            r.date,
            r.commit,
            r.machine,
            r.touches,
            r.runs,
            r.baseline.agent_rss_bytes as f64 / (1 << 20) as f64,
            size_name(r.baseline.size_bytes),
        );
        for n in notes(r) {
            s += &format!("  - {n}\n");
        }
    }
    for line in unread {
        s += &format!("- {}", line.trim_end());
        s += "\n";
    }
    let mut rows: Vec<(usize, &SizeRow)> = runs
        .iter()
        .enumerate()
        .flat_map(|(i, (_, r))| r.rows.iter().map(move |row| (i + 1, row)))
        .collect();
    rows.sort_by_key(|(_, row)| row.size_bytes);
    s += &format!("\n| run | {} |\n", HEADERS.join(" | "));
    s += &format!("|---:|---|{}\n", "---:|".repeat(HEADERS.len() - 1));
    let cells = table_rows(rows.iter().map(|(_, row)| *row));
    for ((run, _), c) in rows.iter().zip(cells) {
        s += &format!("| {run} | {} |\n", c.join(" | "));
    }
    s + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scale::{tests::row, Skipped, GIB};

    #[test]
    fn a_written_report_is_rendered() {
        let r = ScaleReport {
            command: "yonder-bench scale --json --out x.json".into(),
            date: "2026-01-01 00:00 UTC".into(),
            commit: "abc1234".into(),
            machine: "Linux 6.x, 2 CPUs".into(),
            memory_total_bytes: 24 * GIB,
            memory_available_bytes: 22 * GIB,
            local_share_pct: 25,
            servers: 1,
            replicas: 1,
            touches: 1000,
            runs: 1,
            baseline: row(4 << 20, 90_000),
            rows: vec![row(64 << 20, 100_000), row(8 * GIB, 110_000)],
            skipped: vec![Skipped {
                size_bytes: 16 * GIB,
                needed_bytes: 20 * GIB,
                available_bytes: 19 * GIB,
            }],
            failed: vec![],
            elapsed_s: 100.0,
        };
        let mut big = r.clone();
        big.command = "yonder-bench scale --sizes 16GiB".into();
        big.runs = 3;
        let mut row16 = row(16 * GIB, 120_000);
        row16.agent_rss_bytes = 240 << 20;
        row16.remote_p50_runs_ns = vec![130_000, 120_000, 119_500];
        big.rows = vec![row16];
        big.skipped.clear();
        let dir = tempfile::tempdir().unwrap();
        let (path, path16) = (
            dir.path().join("scale.json"),
            dir.path().join("scale-16.json"),
        );
        std::fs::write(&path, serde_json::to_string(&r).unwrap()).unwrap();
        std::fs::write(&path16, serde_json::to_string(&big).unwrap()).unwrap();
        let md = markdown(&[path, path16, dir.path().join("gone.json")]);
        for want in [
            "## Scale\n",
            "- run 1: ",
            "`yonder-bench scale --json --out x.json`",
            "commit abc1234",
            "  - SKIPPED 16 GiB",
            "- run 2: ",
            "`yonder-bench scale --sizes 16GiB`",
            "- No scale result: ",
            "| run | size | pages | agent RSS |",
            "| 1 | 64 MiB | 16384 | 40.0 MiB | 100.0 | — | 4200 | 700 | 100 µs | — | 300 µs | +0 % |",
            "| 1 | 8 GiB | 2097152 | 40.0 MiB | 100.0 | 0.0 |",
            "| +10 % |",
            "| 40.0 µs | 100 % |",
            "| 3.5 s |",
            // 16 GiB against 8 GiB: 200 MiB more over 2M more pages.
            "| 2 | 16 GiB | 4194304 | 240.0 MiB | 100.0 | 100.0 |",
            "| 120 µs | 130.0 / 120.0 / 119.5 µs | 360 µs |",
            "3 run(s) of each",
        ] {
            assert!(md.contains(want), "{want:?} missing:\n{md}");
        }
        let t = text(&r);
        assert!(
            t.contains("SKIPPED 16 GiB") && t.contains("agent B/page"),
            "{t}"
        );
        let missing = markdown(&[dir.path().join("gone.json")]);
        assert!(
            missing.starts_with("## Scale\n\nNo scale result"),
            "{missing}"
        );
    }
}
