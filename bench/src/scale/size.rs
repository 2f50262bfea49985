//! One size's run: a fresh memory server, the workload under the agent, the sampler beside
//! it; its row of figures.

use std::time::Instant;

use anyhow::{bail, Context};
use yonder_common::size::ByteSize;
use yonder_tests::free_tcp_port;

use super::{
    sampler::{Sample, Sampler, Watched},
    size_name, Args, SizeRow, GIB,
};
use crate::{
    cluster::Cluster,
    latency::{run_under_agent, Event, WorkloadRun},
    mem::PAGE,
    pattern::Pattern,
    procfs,
};

/// Longest wait for the workload's resident set to settle after the fill (a large fill can end
/// well before the agent has evicted down to its budget).
const SETTLE_MS: u64 = 60_000;

/// When a rising series first reached `target`: linear between the two points around it.
/// `points` are (seconds, value) in time order.
fn time_to_reach(points: &[(f64, f64)], target: f64) -> Option<f64> {
    let i = points.iter().position(|(_, v)| *v >= target)?;
    let (t1, v1) = points[i];
    match i.checked_sub(1).map(|j| points[j]) {
        Some((t0, v0)) if v1 > v0 => Some(t0 + (target - v0) / (v1 - v0) * (t1 - t0)),
        _ => Some(t1),
    }
}

/// Runs one size: a fresh server, the workload under the agent, the sampler beside it.
pub(super) fn measure_size(
    args: &Args,
    size: u64,
    baseline: Option<&SizeRow>,
    log: &mut dyn FnMut(String),
) -> anyhow::Result<SizeRow> {
    let pages = size / PAGE as u64;
    let local_bytes = size * u64::from(args.local_share) / 100 / PAGE as u64 * PAGE as u64;
    let server_port = free_tcp_port();
    // Room for every page, and more, so that the store never refuses one.
    let capacity = format!("{}KiB", (size + size / 8 + (64 << 20)) / 1024);
    let mut server_args = vec!["--metrics".into(), format!("127.0.0.1:{server_port}")];
    server_args.extend(
        args.server_args
            .iter()
            .flat_map(|a| a.split_whitespace())
            .map(String::from),
    );
    let cluster = Cluster::start_with(1, &capacity, &server_args)?;
    let server = *cluster.pids().first().context("no server process")?;
    let server_rss_at_start =
        procfs::status_bytes(server, "VmRSS").context("reading the server's VmRSS")?;
    let agent_port = free_tcp_port();
    let extra = ["--metrics".to_string(), format!("127.0.0.1:{agent_port}")];
    let w = WorkloadRun {
        size: ByteSize(size),
        pattern: Pattern::Random,
        threads: 1,
        theta: 0.99,
        stride: 16,
        touches: Some(args.touches),
        settle_ms: Some(SETTLE_MS),
    };
    let mut watched = None;
    let mut sampler = None;
    let mut fill_start = None;
    let mut touch_start = None;
    let mut touch_end = None;
    let (report, summary) =
        run_under_agent(&cluster, local_bytes, 1, &extra, &w, &mut |e| match e {
            Event::Started(agent) => {
                let wt = Watched {
                    agent,
                    agent_port,
                    server,
                    server_port,
                };
                watched = Some(wt);
                sampler = Some(Sampler::start(wt));
            }
            Event::Progress { phase, done, total } => {
                let Some(wt) = watched else { return };
                if phase == "fill" && fill_start.is_none() {
                    fill_start = Some(Instant::now());
                } else if phase == "touch" && touch_start.is_none() {
                    log(format!("{}: filled; touching", size_name(size)));
                    touch_start = Some(wt.sample());
                }
                if phase == "touch" && done >= total && touch_end.is_none() {
                    touch_end = Some(wt.sample());
                }
            }
        })?;
    let samples = sampler.map(Sampler::finish).unwrap_or_default();
    let (Some(fill_start), Some(touch_start), Some(end)) = (fill_start, touch_start, touch_end)
    else {
        bail!("the workload ended without reporting its fill and its touches");
    };
    anyhow::ensure!(
        end.agent_rss > 0 && end.server_rss > 0,
        "the agent or the server had ended before the touches did"
    );
    let live = samples.iter().filter(|s| s.agent_rss > 0);
    let peak = |f: fn(&Sample) -> u64| live.clone().map(f).chain([f(&end)]).max().unwrap_or(0);
    let evicted: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.at >= fill_start && s.agent_rss > 0)
        .map(|s| {
            (
                s.at.duration_since(fill_start).as_secs_f64(),
                s.evicted_pages as f64,
            )
        })
        .collect();
    let first_gib_evicted_s = (size - local_bytes >= GIB)
        .then(|| time_to_reach(&evicted, (GIB / PAGE as u64) as f64))
        .flatten();
    let server_pages_stored = end.server_stored;
    Ok(SizeRow {
        size_bytes: size,
        pages,
        local_bytes,
        agent_rss_bytes: end.agent_rss,
        agent_peak_rss_bytes: peak(|s| s.agent_hwm),
        agent_bytes_per_page: baseline.map_or(0.0, |b| {
            (end.agent_rss as f64 - b.agent_rss_bytes as f64) / (pages - b.pages).max(1) as f64
        }),
        server_rss_at_start_bytes: server_rss_at_start,
        server_rss_bytes: end.server_rss,
        server_pages_stored,
        server_bytes_per_page: end.server_rss.saturating_sub(server_rss_at_start) as f64
            / server_pages_stored.max(1) as f64,
        workload_peak_rss_bytes: peak(|s| s.workload_hwm),
        touches: report.touches,
        remote: report.remote,
        remote_faults_per_s: report.remote_faults_per_s,
        agent_remote_p50_ns: summary.remote_p50_ns,
        agent_cpu_us_per_fault: (end.agent_cpu_s - touch_start.agent_cpu_s).max(0.0) * 1e6
            / report.remote.count.max(1) as f64,
        fill_s: report.fill_s,
        first_gib_evicted_s,
        evicted_pages: end.evicted_pages,
        touch_evictions_written_pct: written_share(&touch_start, &end),
        remote_p50_runs_ns: vec![report.remote.p50_ns],
    })
}

/// Of the pages evicted between two samples, the share that had to be written (not dropped
/// clean), percent; `None` when none was evicted.
fn written_share(from: &Sample, to: &Sample) -> Option<f64> {
    let evicted = to.evicted_pages.saturating_sub(from.evicted_pages);
    let clean = to.clean_drops.saturating_sub(from.clean_drops).min(evicted);
    (evicted > 0).then(|| (evicted - clean) as f64 * 100.0 / evicted as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_written_share_counts_what_was_not_dropped_clean() {
        let at = |evicted_pages, clean_drops| Sample {
            at: Instant::now(),
            agent_rss: 0,
            agent_hwm: 0,
            agent_cpu_s: 0.0,
            evicted_pages,
            clean_drops,
            server_rss: 0,
            server_stored: 0,
            workload_hwm: 0,
        };
        assert_eq!(written_share(&at(100, 40), &at(300, 90)), Some(75.0));
        assert_eq!(written_share(&at(100, 40), &at(100, 40)), None);
        // A counter read as 0 (the agent gone) is no negative share.
        assert_eq!(written_share(&at(100, 40), &at(200, 0)), Some(100.0));
    }

    #[test]
    fn time_to_reach_interpolates() {
        let p = [(0.0, 0.0), (1.0, 100.0), (2.0, 300.0)];
        assert_eq!(time_to_reach(&p, 200.0), Some(1.5));
        assert_eq!(time_to_reach(&p, 0.0), Some(0.0));
        assert_eq!(time_to_reach(&p, 301.0), None);
        assert_eq!(time_to_reach(&[], 1.0), None);
    }
}
