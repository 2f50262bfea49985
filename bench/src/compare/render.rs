//! The tables: plain text and Markdown (for bench/RESULTS.md).

use super::{CompareReport, Mode, Row, WorkloadReport};

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}

/// Columns of the tables.
const COLUMNS: usize = 8;

fn cells(r: &Row) -> [String; COLUMNS] {
    [
        if r.mode == Mode::Local {
            "-".into()
        } else {
            format!("{} %", r.ratio)
        },
        r.mode.label().into(),
        if r.times_s.is_empty() {
            format!("failed ×{}", r.failures.len())
        } else if r.failures.is_empty() {
            format!("{:.2} s", r.time_s)
        } else {
            format!("{:.2} s ({} failed)", r.time_s, r.failures.len())
        },
        if r.times_s.is_empty() {
            "-".into()
        } else {
            format!("{:.2}×", r.slowdown)
        },
        r.throughput.map_or("-".into(), |t| format!("{:.0}", t)),
        r.faults.map_or("-".into(), |f| f.to_string()),
        match (r.miss_p50_us, r.miss_p99_us) {
            (Some(a), Some(b)) => format!("{a:.0} / {b:.0} µs"),
            _ => "-".into(),
        },
        r.local_bytes.map_or("-".into(), mib),
    ]
}

const HEADER: [&str; COLUMNS] = [
    "local",
    "mode",
    "time",
    "× all local",
    "touches/s",
    "faults",
    "miss p50 / p99",
    "budget",
];

/// The tables as plain text, one per workload.
pub fn text_table(report: &CompareReport) -> String {
    let mut s = String::new();
    for w in &report.workloads {
        s.push_str(&format!(
            "\n{}: anonymous footprint {}, other RSS {}{}; median of {} runs\n",
            w.name,
            mib(w.anon_bytes),
            mib(w.file_bytes),
            rest_note(w),
            report.runs
        ));
        let rows: Vec<[String; COLUMNS]> = w.rows.iter().map(cells).collect();
        let widths: Vec<usize> = (0..COLUMNS)
            .map(|i| {
                rows.iter()
                    .map(|r| r[i].chars().count())
                    .chain([HEADER[i].chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cols: Vec<String>| -> String {
            let mut l = String::new();
            for (i, c) in cols.iter().enumerate() {
                let pad = widths[i] - c.chars().count();
                if i == 1 {
                    l.push_str(&format!("{c}{}  ", " ".repeat(pad)));
                } else {
                    l.push_str(&format!("{}{c}  ", " ".repeat(pad)));
                }
            }
            l.trim_end().to_string() + "\n"
        };
        s.push_str(&line(HEADER.map(String::from).into()));
        for r in rows {
            s.push_str(&line(r.into()));
        }
    }
    s
}

/// The tables as Markdown (for bench/RESULTS.md), one per workload, with a note on the columns.
pub fn markdown(report: &CompareReport) -> String {
    markdown_tables(report) + MARKDOWN_NOTE
}

/// What the Markdown tables' columns mean.
pub const MARKDOWN_NOTE: &str = concat!(
    "time: completion time of the whole program (start to exit); × all local: that time\n",
    "divided by all local's; touches/s: the timed phase of the built-in workloads; faults:\n",
    "Yonder's remote faults or the memory cgroup's major faults (swap-ins); miss p50 / p99:\n",
    "latency of a timed touch of a page that was not resident (the touch workloads' own\n",
    "measure, the same in every mode); \"(n failed)\": runs that failed (the JSON says why,\n",
    "e.g. the memory cgroup's OOM killer), left out of the figures; budget: local memory for\n",
    "anonymous pages (the cgroup's limit adds the rest given in the heading: what the\n",
    "all-local run's own cgroup was charged beyond its anonymous memory).\n",
);

/// What the swap modes' cgroup limit added to the budget, and what the all-local run's cgroup
/// was charged beyond its anonymous memory, when the swap modes ran.
fn rest_note(w: &WorkloadReport) -> String {
    match (w.memcg_rest_bytes, w.charged_rest_bytes) {
        (Some(rest), Some(charged)) => {
            format!(
                ", charged besides it {}; cgroup limit: budget + {}",
                mib(charged),
                mib(rest)
            )
        }
        (Some(rest), None) => format!("; cgroup limit: budget + {}", mib(rest)),
        _ => String::new(),
    }
}

/// The tables as Markdown, one per workload, without the note.
pub fn markdown_tables(report: &CompareReport) -> String {
    let mut s = String::new();
    for w in &report.workloads {
        s.push_str(&format!(
            "### {}: anonymous footprint {}, other RSS {}{}; median of {} runs\n\n",
            w.name,
            mib(w.anon_bytes),
            mib(w.file_bytes),
            rest_note(w),
            report.runs
        ));
        s.push_str(
            "| local | mode | time | × all local | runs | touches/s | faults | miss p50 / p99 | budget |\n",
        );
        s.push_str("|---:|---|---:|---:|---|---:|---:|---:|---:|\n");
        for r in &w.rows {
            let c = cells(r);
            let runs = r
                .times_s
                .iter()
                .map(|t| format!("{t:.2}"))
                .collect::<Vec<_>>()
                .join(" / ");
            s.push_str(&format!(
                "| {} | {} | {} | {} | {runs} | {} | {} | {} | {} |\n",
                c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]
            ));
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        compare::{Args, MachineInfo, WorkloadReport},
        system::CgroupVersion,
    };

    fn row(mode: Mode, ratio: u32, time_s: f64) -> Row {
        Row {
            mode,
            ratio,
            local_bytes: Some(1 << 20),
            memcg_limit_bytes: None,
            time_s,
            times_s: vec![time_s],
            slowdown: time_s,
            failures: vec![],
            throughput: Some(1000.0),
            throughputs: vec![1000.0],
            faults: Some(3),
            remote_p50_us: None,
            remote_p99_us: None,
            miss_p50_us: Some(80.0),
            miss_p99_us: Some(410.0),
            memcg_peak_bytes: None,
        }
    }

    #[test]
    fn tables_have_a_line_per_row() {
        let report = CompareReport {
            machine: MachineInfo {
                kernel: "6.18".into(),
                cpus: 2,
                memory_bytes: 1 << 30,
                cgroup: Some(CgroupVersion::V1),
                zram_algorithm: "lzo-rle".into(),
                page_cluster: "3".into(),
                swappiness: "60".into(),
                other_swap: vec![],
            },
            ratios: vec![50],
            runs: 1,
            servers: 2,
            replicas: 2,
            duration_s: 1.0,
            workloads: vec![WorkloadReport {
                name: "random".into(),
                command: vec![],
                anon_bytes: 2 << 20,
                file_bytes: 1 << 20,
                charged_rest_bytes: Some(512 << 10),
                memcg_rest_bytes: Some(512 << 10),
                has_throughput: true,
                rows: vec![row(Mode::Local, 100, 1.0), row(Mode::Yonder, 50, 2.5)],
            }],
        };
        let t = text_table(&report);
        assert_eq!(t.lines().filter(|l| l.contains("Yonder")).count(), 1);
        assert!(t.contains("2.50×"), "{t}");
        let md = markdown(&report);
        assert_eq!(Args::default().ratios, [100, 75, 50, 25]);
        assert!(md.contains("| 50 % | Yonder | 2.50 s | 2.50× |"), "{md}");
        assert!(
            t.contains("charged besides it 0.5 MiB; cgroup limit: budget + 0.5 MiB"),
            "{t}"
        );
    }
}
