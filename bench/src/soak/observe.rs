//! What the soak reads of the agent and the workload: the agent's metrics endpoint and log
//! lines, whether the cluster is whole before a kill, the workload's result lines and how it
//! ended.

use std::{
    process::ExitStatus,
    time::{Duration, Instant},
};

use super::Kill;
use crate::{scrape, soak_workload::SoakResult};

/// The agent's view of the servers, from its Prometheus endpoint.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct AgentMetrics {
    /// `yonder_agent_server_up` of each server.
    up: Vec<f64>,
    /// `yonder_agent_replication_deficit_pages`.
    deficit: Option<f64>,
    /// `yonder_agent_repaired_pages_total`.
    pub(super) repaired: Option<f64>,
}

impl AgentMetrics {
    fn parse(body: &str) -> Self {
        let mut m = Self::default();
        for (name, v) in scrape::samples(body) {
            match name {
                "yonder_agent_server_up" => m.up.push(v),
                "yonder_agent_replication_deficit_pages" => m.deficit = Some(v),
                "yonder_agent_repaired_pages_total" => m.repaired = Some(v),
                _ => {}
            }
        }
        m
    }

    pub(super) fn scrape(port: u16) -> Option<Self> {
        scrape::get(port).map(|body| Self::parse(&body))
    }

    /// No server down and no page short of copies. A gauge the agent never set counts as fine:
    /// `yonder-agent run` sets a server's gauge when it goes down or comes back, and the deficit
    /// at the first repair pass.
    fn whole(&self) -> bool {
        self.up.iter().all(|u| *u == 1.0) && self.deficit.unwrap_or(0.0) == 0.0
    }
}

/// Whether the agent's log shows every kill of every server noticed and the server back: for
/// each address, at least as many "is down" lines as kills, and its last line "is back".
pub(super) fn agent_saw_every_comeback(log: &str, addrs: &[String], kills: &[Kill]) -> bool {
    addrs.iter().enumerate().all(|(i, addr)| {
        let down = format!("memory server {addr} is down");
        let back = format!("memory server {addr} is back");
        let mut downs = 0;
        let mut last_back = true;
        for l in log.lines() {
            if l.contains(&down) {
                downs += 1;
                last_back = false;
            } else if l.ends_with(&back) {
                last_back = true;
            }
        }
        let killed = kills.iter().filter(|k| k.server == i).count();
        downs >= killed && last_back
    })
}

/// Waits for a whole cluster before a kill: every kill so far noticed by the agent and the
/// server back in its eyes, no page short of copies, and the repair counter unchanged for two
/// seconds (a repair pass starts within 200 ms of a change and raises the deficit at once).
pub(super) struct Health {
    pub(super) stable_since: Option<(Instant, Option<f64>)>,
}

impl Health {
    pub(super) fn whole(&mut self, m: Option<AgentMetrics>, comebacks_seen: bool) -> bool {
        let Some(m) = m.filter(|m| comebacks_seen && m.whole()) else {
            self.stable_since = None;
            return false;
        };
        match self.stable_since {
            Some((since, repaired)) if repaired == m.repaired => {
                since.elapsed() >= Duration::from_secs(2)
            }
            _ => {
                self.stable_since = Some((Instant::now(), m.repaired));
                false
            }
        }
    }
}

/// The last `KIND {json}` line of the workload's output.
pub(super) fn last_line(out: &str, kind: &str) -> Option<SoakResult> {
    out.lines()
        .rev()
        .find_map(|l| serde_json::from_str(l.strip_prefix(kind)?.strip_prefix(' ')?).ok())
}

/// Distinct slots the agent declared lost ("every copy of slot S (version V) is lost").
pub(super) fn lost_slots(log: &str) -> u64 {
    let mut slots: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" is lost"))
        .filter_map(|l| {
            l.split("every copy of slot ")
                .nth(1)?
                .split_whitespace()
                .next()
        })
        .collect();
    slots.sort_unstable();
    slots.dedup();
    slots.len() as u64
}

pub(super) fn describe(status: Option<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        None => "did not end (stopped by the soak)".into(),
        Some(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exited with status {c}"),
            (_, Some(sig)) => format!("killed by signal {sig}"),
            _ => "ended".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::latency::AgentSummary;

    #[test]
    fn agent_lines_are_read() {
        let err = "yonder: memory server 127.0.0.1:1 is down (no answer within 2s); its pages are served and re-replicated from the others\n\
                   yonder: memory server 127.0.0.1:1 is back\n\
                   yonder: every copy of slot 3284 (version 3286) is lost: x; stopping the workload\n\
                   yonder: every copy of slot 3284 (version 3286) is lost: x; stopping the workload\n\
                   yonder: re-replicated 1234 pages after memory-server failures (5 still short of copies)\n";
        assert_eq!(lost_slots(err), 1);
        let s = AgentSummary::parse(err);
        assert_eq!((s.repaired, s.repair_deficit), (1234, 5));
        let m = AgentMetrics::parse(
            "# TYPE x gauge\nyonder_agent_server_up{server=\"a\"} 1\nyonder_agent_server_up{server=\"b\"} 0\n\
             yonder_agent_replication_deficit_pages 0\nyonder_agent_repaired_pages_total 17\n",
        );
        assert_eq!(m.up, vec![1.0, 0.0]);
        assert_eq!(m.repaired, Some(17.0));
        assert!(!m.whole());
        assert!(
            AgentMetrics::parse("").whole(),
            "no gauge yet: nothing went down"
        );
        let addrs = vec!["127.0.0.1:1".to_string(), "127.0.0.1:2".to_string()];
        let kill = Kill {
            at_s: 1.0,
            server: 0,
            down_s: 1.0,
            waited_s: 0.0,
            forced: false,
        };
        assert!(agent_saw_every_comeback("", &addrs, &[]));
        assert!(!agent_saw_every_comeback(
            "",
            &addrs,
            std::slice::from_ref(&kill)
        ));
        assert!(!agent_saw_every_comeback(
            err.lines().next().unwrap(),
            &addrs,
            std::slice::from_ref(&kill)
        ));
        assert!(agent_saw_every_comeback(err, &addrs, &[kill]));
    }
}
