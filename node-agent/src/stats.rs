//! Counters of one workload run: Prometheus metrics while it runs, a summary when it ends.

use std::time::Duration;

use hdrhistogram::Histogram;
use metrics::{counter, gauge, histogram, Label};

/// Counters of one run.
pub struct Stats {
    /// Missing faults served with a zero page.
    pub zero_faults: u64,
    /// Missing faults served from a memory server.
    pub remote_faults: u64,
    /// Pages fetched ahead of a sequential run of faults.
    pub prefetched: u64,
    /// Writes to write-protected (clean fetched) pages.
    pub wp_faults: u64,
    /// Pages evicted.
    pub evicted: u64,
    /// Of those, pages dropped without a write because the server copy was current.
    pub clean_drops: u64,
    /// Of the clean drops, pages of all zeros (no copy kept: a later fault zero-fills).
    pub zero_evictions: u64,
    /// Of the pages evicted, those moved to the parking area (`UFFDIO_MOVE`).
    pub evicted_moved: u64,
    /// Of the pages evicted, those evicted by write protection (they could not move).
    pub evicted_protected: u64,
    /// Parked pages faulted back before their eviction ended (they were in use).
    pub rescues: u64,
    /// Remote faults on pages evicted a short while ago (ghosts: the eviction was a mistake).
    pub refaults: u64,
    /// Most pages parked at once.
    pub peak_parked: usize,
    /// Most pages parked at once in the grace window (an access probe).
    pub peak_graced: usize,
    /// The grace window's size as a percentage of its configured share, after the last reading
    /// of the sizer (none yet: the whole share).
    pub grace_percent: Option<u32>,
    /// The smallest of those percentages.
    pub grace_least_percent: Option<u32>,
    /// Readings the grace window's sizer took.
    pub grace_readings: u64,
    /// Bytes fetched from servers.
    pub bytes_in: u64,
    /// Bytes written to servers.
    pub bytes_out: u64,
    /// Highest resident managed page count.
    pub peak_resident: usize,
    /// Most managed pages the workload's processes had locked (`mlock`) in memory at once.
    pub peak_locked: usize,
    /// Times the workload went over its budget because nothing could be evicted.
    pub stuck: u64,
    /// Missing faults that waited for room at the hard limit (counted once each).
    pub deferred: u64,
    /// How long those faults waited for room, nanoseconds (deferred to served).
    pub deferral: Histogram<u64>,
    /// Remote-fault service time, nanoseconds (fault read to page installed).
    pub remote_latency: Histogram<u64>,
    /// Park exchanges with a shim's helper, nanoseconds: while one runs, that process's faults
    /// wait unread (see `evict::park`).
    pub exchanges: Histogram<u64>,
    /// Remote-fault stages, nanoseconds: fault read to request handed to QUIC, to reply read, to
    /// page installed (see [`Stage`]).
    pub stages: [Histogram<u64>; 3],
    /// CPU time of the agent's thread when the run started (to report CPU per remote fault).
    pub cpu_at_start: Duration,
    /// The sample of (managed resident bytes, anonymous RSS bytes) with the largest RSS.
    pub share_peak: Option<(u64, u64)>,
    /// Address spaces attached so far (more than one after an exec).
    pub attached: u32,
    /// The kernel offered uffd read-write protection (`UFFD_FEATURE_RWP`) at a handshake.
    pub rwp_offered: bool,
    /// Seccomp filters whose listener the agent serves (one per workload, normally).
    pub intercepting: u32,
    /// `mmap` and `brk` calls the filter handed over that a helper made (new memory registered
    /// before the program got it).
    pub calls_made: u64,
    /// Calls let through (a process not managed, or not yet): found by scanning.
    pub calls_let_through: u64,
    /// Other processes of the workload (fork/exec children) that ran unmanaged.
    pub unmanaged_processes: u64,
    /// Pages copied to another server after a server failure, to restore their replica count.
    pub repaired: u64,
    /// Pages still waiting for such a copy.
    pub repair_deficit: u64,
    /// Labels on every metric of this run: none for `run`, the workload's id and name in the
    /// daemon (whose metrics would otherwise mix its workloads).
    pub labels: Vec<Label>,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            zero_faults: 0,
            remote_faults: 0,
            prefetched: 0,
            wp_faults: 0,
            evicted: 0,
            clean_drops: 0,
            zero_evictions: 0,
            evicted_moved: 0,
            evicted_protected: 0,
            rescues: 0,
            refaults: 0,
            peak_parked: 0,
            peak_graced: 0,
            grace_percent: None,
            grace_least_percent: None,
            grace_readings: 0,
            bytes_in: 0,
            bytes_out: 0,
            peak_resident: 0,
            peak_locked: 0,
            stuck: 0,
            deferred: 0,
            deferral: Histogram::new(3).expect("valid histogram precision"),
            remote_latency: Histogram::new(3).expect("valid histogram precision"),
            exchanges: Histogram::new(3).expect("valid histogram precision"),
            stages: std::array::from_fn(|_| Histogram::new(3).expect("valid histogram precision")),
            cpu_at_start: crate::procfs::thread_cpu_time(),
            share_peak: None,
            attached: 0,
            rwp_offered: false,
            intercepting: 0,
            calls_made: 0,
            calls_let_through: 0,
            unmanaged_processes: 0,
            repaired: 0,
            repair_deficit: 0,
            labels: Vec::new(),
        }
    }
}

impl Stats {
    /// This run's labels, plus `kind` when given.
    fn labels(&self, kind: Option<&'static str>) -> Vec<Label> {
        let mut l = self.labels.clone();
        l.extend(kind.map(|k| Label::new("kind", k)));
        l
    }

    /// Records a zero-fill fault.
    pub fn zero_fault(&mut self) {
        self.zero_faults += 1;
        counter!("yonder_agent_faults_total", self.labels(Some("zero"))).increment(1);
    }

    /// Records a remote fault and its service time.
    pub fn remote_fault(&mut self, took: Duration) {
        self.remote_faults += 1;
        self.bytes_in += 4096;
        let _ = self.remote_latency.record(took.as_nanos() as u64);
        counter!("yonder_agent_faults_total", self.labels(Some("remote"))).increment(1);
        histogram!(
            "yonder_agent_remote_fault_duration_seconds",
            self.labels(None)
        )
        .record(took.as_secs_f64());
    }

    /// Records a missing fault that has to wait for room at the hard limit.
    pub fn deferred(&mut self) {
        self.deferred += 1;
        counter!("yonder_agent_faults_deferred_total", self.labels(None)).increment(1);
    }

    /// Records how long a deferred fault waited for room before it was served.
    pub fn deferral(&mut self, waited: Duration) {
        let _ = self.deferral.record(waited.as_nanos() as u64);
        histogram!("yonder_agent_fault_deferral_seconds", self.labels(None))
            .record(waited.as_secs_f64());
    }

    /// Records how long a park exchange held its process's faults.
    pub fn exchange(&mut self, took: Duration) {
        let _ = self.exchanges.record(took.as_nanos() as u64);
        histogram!("yonder_agent_park_exchange_seconds", self.labels(None))
            .record(took.as_secs_f64());
    }

    /// Records the stages of one remote fault (each ends where the next begins).
    pub fn remote_stages(&mut self, took: [Duration; 3]) {
        for (stage, t) in Stage::ALL.into_iter().zip(took) {
            let _ = self.stages[stage as usize].record(t.as_nanos() as u64);
            let mut l = self.labels.clone();
            l.push(Label::new("stage", stage.name()));
            histogram!("yonder_agent_remote_fault_stage_seconds", l).record(t.as_secs_f64());
        }
    }

    /// Records a page fetched ahead.
    pub fn prefetched(&mut self) {
        self.prefetched += 1;
        self.bytes_in += 4096;
        counter!("yonder_agent_prefetched_pages_total", self.labels(None)).increment(1);
    }

    /// Records a write-protect fault.
    pub fn wp_fault(&mut self) {
        self.wp_faults += 1;
        counter!(
            "yonder_agent_faults_total",
            self.labels(Some("write_protect"))
        )
        .increment(1);
    }

    /// Records evicted pages.
    pub fn evictions(&mut self, pages: u64, written: u64) {
        self.evicted += pages;
        self.clean_drops += pages - written;
        self.bytes_out += written * 4096;
        let l = self.labels(None);
        counter!("yonder_agent_evicted_pages_total", l.clone()).increment(pages);
        counter!("yonder_agent_clean_drops_total", l.clone()).increment(pages - written);
        counter!("yonder_agent_written_bytes_total", l).increment(written * 4096);
    }

    /// Records evicted pages that were all zeros: they left without a copy (a later fault
    /// installs a zero page).
    pub fn evicted_as_zero(&mut self, pages: u64) {
        if pages == 0 {
            return;
        }
        self.zero_evictions += pages;
        counter!("yonder_agent_zero_evictions_total", self.labels(None)).increment(pages);
    }

    /// Records pages whose eviction went through the parking area.
    pub fn evicted_by_move(&mut self, pages: u64) {
        self.evicted_moved += pages;
        counter!(
            "yonder_agent_evicted_pages_by_path_total",
            self.path_labels("move")
        )
        .increment(pages);
    }

    /// Records pages evicted by write protection (they could not move).
    pub fn evicted_by_protection(&mut self, pages: u64) {
        self.evicted_protected += pages;
        counter!(
            "yonder_agent_evicted_pages_by_path_total",
            self.path_labels("protect")
        )
        .increment(pages);
    }

    fn path_labels(&self, path: &'static str) -> Vec<Label> {
        let mut l = self.labels.clone();
        l.push(Label::new("path", path));
        l
    }

    /// Records a parked page faulted back (rescued).
    pub fn rescue(&mut self) {
        self.rescues += 1;
        counter!("yonder_agent_rescues_total", self.labels(None)).increment(1);
    }

    /// Records a remote fault on a page evicted a short while ago.
    pub fn refault(&mut self) {
        self.refaults += 1;
        counter!("yonder_agent_refaults_total", self.labels(None)).increment(1);
    }

    /// Records how many pages wait in the grace window now.
    pub fn graced(&mut self, pages: usize) {
        self.peak_graced = self.peak_graced.max(pages);
        gauge!("yonder_agent_grace_pages", self.labels(None)).set(pages as f64);
    }

    /// Records the grace window's size as a percentage of its configured share, after the
    /// sizer compared rescues with remote faults (`eviction::GraceSizer`).
    pub fn grace_scaled(&mut self, percent: u32) {
        self.grace_percent = Some(percent);
        self.grace_least_percent = Some(self.grace_least_percent.unwrap_or(percent).min(percent));
        self.grace_readings += 1;
        gauge!("yonder_agent_grace_scale_percent", self.labels(None)).set(f64::from(percent));
    }

    /// Records how many pages are parked now.
    pub fn parked(&mut self, pages: usize) {
        self.peak_parked = self.peak_parked.max(pages);
        gauge!("yonder_agent_parked_pages", self.labels(None)).set(pages as f64);
    }

    /// Records a sample of managed resident bytes against anonymous RSS bytes; the summary
    /// reports the one taken at the largest RSS.
    pub fn share_sample(&mut self, managed: u64, rss: u64) {
        if self.share_peak.is_none_or(|(_, peak)| rss > peak) {
            self.share_peak = Some((managed, rss));
        }
    }

    /// Counts a time the workload went over its budget because nothing could be evicted.
    pub fn over_budget_stuck(&mut self) {
        self.stuck += 1;
        counter!("yonder_agent_over_budget_stuck_total", self.labels(None)).increment(1);
    }

    /// Records how many managed pages the workload has locked in memory now.
    pub fn locked(&mut self, pages: usize) {
        self.peak_locked = self.peak_locked.max(pages);
        gauge!("yonder_agent_locked_pages", self.labels(None)).set(pages as f64);
    }

    /// Records the resident page count.
    pub fn resident(&mut self, pages: usize) {
        self.peak_resident = self.peak_resident.max(pages);
        gauge!("yonder_agent_resident_pages", self.labels(None)).set(pages as f64);
    }

    /// Sets this run's gauges again (the daemon does so every second, so that the metrics of a
    /// live workload never go idle while those of an ended one do and are dropped).
    pub fn refresh_gauges(&self, resident: usize) {
        gauge!("yonder_agent_resident_pages", self.labels(None)).set(resident as f64);
        gauge!("yonder_agent_replication_deficit_pages", self.labels(None))
            .set(self.repair_deficit as f64);
    }

    /// Records repair progress.
    pub fn repair(&mut self, repaired: u64, deficit: u64) {
        self.repaired += repaired;
        self.repair_deficit = deficit;
        counter!("yonder_agent_repaired_pages_total", self.labels(None)).increment(repaired);
        gauge!("yonder_agent_replication_deficit_pages", self.labels(None)).set(deficit as f64);
    }

    /// The end-of-run summary.
    pub fn summary(&self, budget_pages: usize, slack_pages: usize) -> String {
        let mib = |pages: u64| pages as f64 * 4096.0 / (1 << 20) as f64;
        let q = |x: f64| self.remote_latency.value_at_quantile(x) as f64 / 1e3;
        let mut s = String::new();
        s += &format!(
            "yonder: faults: {} zero-fill, {} remote (p50 {:.0} µs, p99 {:.0} µs), {} write-protect; {} pages prefetched\n",
            self.zero_faults,
            self.remote_faults,
            q(0.5),
            q(0.99),
            self.wp_faults,
            self.prefetched
        );
        if self.remote_faults > 0 {
            let st = |k: Stage| {
                let h = &self.stages[k as usize];
                format!(
                    "{} {:.0}/{:.0}",
                    k.name(),
                    h.value_at_quantile(0.5) as f64 / 1e3,
                    h.value_at_quantile(0.99) as f64 / 1e3
                )
            };
            let cpu = crate::procfs::thread_cpu_time().saturating_sub(self.cpu_at_start);
            s += &format!(
                "yonder: remote-fault stages p50/p99 µs: {}, {}, {}; agent thread CPU {:.1} µs per remote fault ({:.2} s in all)\n",
                st(Stage::Send),
                st(Stage::Wire),
                st(Stage::Install),
                cpu.as_secs_f64() * 1e6 / self.remote_faults as f64,
                cpu.as_secs_f64()
            );
        }
        if self.deferred > 0 {
            let d = |x: f64| self.deferral.value_at_quantile(x) as f64 / 1e3;
            s += &format!(
                "yonder: {} faults waited for room at the budget (p50 {:.0} µs, p99 {:.0} µs, {:.2} s in all)\n",
                self.deferred,
                d(0.5),
                d(0.99),
                self.deferral.mean() * self.deferral.len() as f64 / 1e9
            );
        }
        s += &format!(
            "yonder: evicted {} pages ({} clean drops without a write, {} of them all zeros, kept as zero pages); {:.1} MiB out, {:.1} MiB in\n",
            self.evicted,
            self.clean_drops,
            self.zero_evictions,
            self.bytes_out as f64 / (1 << 20) as f64,
            self.bytes_in as f64 / (1 << 20) as f64
        );
        if self.evicted > 0 {
            s += &format!(
                "yonder: eviction paths: {} pages moved to parking, {} write-protected (could not move); {} rescued from parking, {} refaults; at most {} pages parked, {} of them in the grace window\n",
                self.evicted_moved,
                self.evicted_protected,
                self.rescues,
                self.refaults,
                self.peak_parked,
                self.peak_graced
            );
        }
        if let (Some(end), Some(least)) = (self.grace_percent, self.grace_least_percent) {
            s += &format!(
                "yonder: grace window sized {} times by the rescues per remote fault: down to {} % of its share, {} % at the end\n",
                self.grace_readings, least, end
            );
        }
        if !self.exchanges.is_empty() {
            let e = |x: f64| self.exchanges.value_at_quantile(x) as f64 / 1e3;
            s += &format!(
                "yonder: {} park exchanges with the shim (p50 {:.0} µs, p99 {:.0} µs, {:.2} s in all; a process's faults wait during its own)\n",
                self.exchanges.len(),
                e(0.5),
                e(0.99),
                self.exchanges.mean() * self.exchanges.len() as f64 / 1e9
            );
        }
        s += &format!(
"yonder: resident managed memory peaked at {:.1} MiB; budget {:.1} MiB (a hard limit; evictions start {:.1} MiB below it)\n",
            mib(self.peak_resident as u64),
            mib(budget_pages as u64),
            mib(slack_pages as u64)
        );
        if self.stuck > 0 {
            s += &format!(
                "yonder: {} times nothing could be evicted (pages in flight, locked or pinned) and the workload went over its budget\n",
                self.stuck
            );
        }
        if self.peak_locked > 0 {
            s += &format!(
                "yonder: locked by the program (mlock): at most {:.1} MiB of managed memory, never evicted and on top of the budget\n",
                mib(self.peak_locked as u64)
            );
        }
        if self.repaired > 0 || self.repair_deficit > 0 {
            s += &format!(
                "yonder: re-replicated {} pages after memory-server failures ({} still short of copies)\n",
                self.repaired, self.repair_deficit
            );
        }
        if self.unmanaged_processes > 0 {
            s += &format!(
                "yonder: {} other processes of the workload (forked children) ran unmanaged\n",
                self.unmanaged_processes
            );
        }
        if self.attached > 0 {
            s += &if self.intercepting > 0 {
                format!(
                    "yonder: new memory: {} mmap/brk calls made by the shim's helper and registered before the program got the memory, {} let through (found by scanning)\n",
                    self.calls_made, self.calls_let_through
                )
            } else {
                "yonder: new memory found by scanning the maps (mmap and brk not intercepted: see --intercept)\n"
                    .to_string()
            };
        }
        if self.rwp_offered {
            s += "yonder: this kernel offers userfaultfd read-write protection (UFFD_FEATURE_RWP), which would show reads to the eviction policy; this agent does not use it yet and sees reads through the grace window\n";
        }
        if let Some((managed, rss)) = self.share_peak {
            s += &format!(
                "yonder: managed share of anonymous RSS: {:.1}% ({:.1} of {:.1} MiB, at the largest RSS seen)\n",
                100.0 * managed.min(rss) as f64 / rss.max(1) as f64,
                managed as f64 / (1 << 20) as f64,
                rss as f64 / (1 << 20) as f64
            );
        }
        s
    }
}

/// The stages of a remote fault as the agent sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Fault read from the uffd to the request handed to QUIC.
    Send = 0,
    /// Request handed to QUIC to its reply read: the network, the server and the wake-ups.
    Wire = 1,
    /// Reply read to the page installed (which wakes the faulting thread).
    Install = 2,
}

impl Stage {
    /// Every stage, in order.
    pub const ALL: [Stage; 3] = [Stage::Send, Stage::Wire, Stage::Install];

    /// Its name in metrics and the summary.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Send => "send",
            Stage::Wire => "wire",
            Stage::Install => "install",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_read_write_protection_only_when_the_kernel_offers_it() {
        let mut s = Stats::default();
        assert!(!s.summary(1000, 10).contains("UFFD_FEATURE_RWP"));
        s.rwp_offered = true;
        assert!(s.summary(1000, 10).contains("UFFD_FEATURE_RWP"));
    }
}
