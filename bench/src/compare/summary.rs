//! A table row from the runs of one mode at one ratio: medians, failures, faults, latencies
//! (the workload's own and the agent's summary).

use super::{Mode, Outcome, Row};
use crate::{stats::median, workload};

#[allow(clippy::too_many_arguments)]
pub(super) fn summarise(
    mode: Mode,
    ratio: u32,
    local_bytes: Option<u64>,
    memcg_limit_bytes: Option<u64>,
    outs: &[Outcome],
    touches: bool,
    base: f64,
    peaks: &[u64],
) -> Row {
    let failures: Vec<String> = outs.iter().filter_map(|o| o.failure.clone()).collect();
    let ok: Vec<&Outcome> = outs.iter().filter(|o| o.failure.is_none()).collect();
    let times: Vec<f64> = ok.iter().map(|o| o.wall_s).collect();
    let time_s = median(&mut times.clone());
    let reports: Vec<workload::Report> = ok
        .iter()
        .filter_map(|o| {
            o.stdout
                .lines()
                .find_map(|l| l.strip_prefix("result "))
                .and_then(|j| serde_json::from_str(j).ok())
        })
        .collect();
    let throughputs: Vec<f64> = if touches {
        reports.iter().map(|r| r.touches_per_s).collect()
    } else {
        Vec::new()
    };
    let summaries: Vec<AgentSummary> = ok.iter().filter_map(|o| agent_summary(&o.stderr)).collect();
    let misses: Vec<&workload::Report> = reports.iter().filter(|r| r.remote.count > 0).collect();
    let miss = |f: fn(&workload::Report) -> u64| {
        (!misses.is_empty())
            .then(|| median(&mut misses.iter().map(|r| f(r) as f64 / 1e3).collect::<Vec<_>>()))
    };
    let faults = match mode {
        _ if ok.is_empty() => None,
        Mode::Yonder => Some(median_u64(summaries.iter().map(|s| s.remote))),
        Mode::Zram | Mode::File => Some(median_u64(ok.iter().filter_map(|o| o.memcg_faults))),
        Mode::Local => None,
    };
    let (p50, p99) = if summaries.is_empty() {
        (None, None)
    } else {
        (
            Some(median(
                &mut summaries.iter().map(|s| s.p50_us).collect::<Vec<_>>(),
            )),
            Some(median(
                &mut summaries.iter().map(|s| s.p99_us).collect::<Vec<_>>(),
            )),
        )
    };
    Row {
        mode,
        ratio,
        local_bytes,
        memcg_limit_bytes,
        time_s,
        slowdown: if base > 0.0 { time_s / base } else { 1.0 },
        failures,
        times_s: times,
        throughput: (!throughputs.is_empty()).then(|| median(&mut throughputs.clone())),
        throughputs,
        faults,
        remote_p50_us: p50,
        remote_p99_us: p99,
        miss_p50_us: miss(|r| r.remote.p50_ns),
        miss_p99_us: miss(|r| r.remote.p99_ns),
        memcg_peak_bytes: (!peaks.is_empty()).then(|| median_u64(peaks.iter().copied())),
    }
}

/// The agent's remote-fault figures from its exit summary.
struct AgentSummary {
    remote: u64,
    p50_us: f64,
    p99_us: f64,
}

/// Parses "yonder: faults: Z zero-fill, R remote (p50 X µs, p99 Y µs), ...".
fn agent_summary(stderr: &str) -> Option<AgentSummary> {
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("yonder: faults: "))?;
    let (_, rest) = line.split_once("zero-fill, ")?;
    let (remote, rest) = rest.split_once(" remote (p50 ")?;
    let (p50, rest) = rest.split_once(" µs, p99 ")?;
    let (p99, _) = rest.split_once(" µs")?;
    Some(AgentSummary {
        remote: remote.trim().parse().ok()?,
        p50_us: p50.trim().parse().ok()?,
        p99_us: p99.trim().parse().ok()?,
    })
}

pub(super) fn median_u64(values: impl Iterator<Item = u64>) -> u64 {
    let mut v: Vec<f64> = values.map(|x| x as f64).collect();
    median(&mut v) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_agent_summary() {
        let s = "x\nyonder: faults: 12 zero-fill, 345 remote (p50 101 µs, p99 250 µs), 0 write-protect; 7 pages prefetched\n";
        let a = agent_summary(s).unwrap();
        assert_eq!(a.remote, 345);
        assert_eq!(a.p50_us, 101.0);
        assert_eq!(a.p99_us, 250.0);
        assert!(agent_summary("nothing").is_none());
    }
}
