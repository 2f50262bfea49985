//! A thread beside one size's run that reads the agent's and the server's RSS, CPU time and
//! metrics, and the workload's peak RSS, every [`SAMPLE_EVERY`].

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use yonder_tests::children;

use crate::{procfs, scrape};

/// How often the sampler reads the processes and the metrics endpoints.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// The processes of one size's run and their metrics endpoints.
#[derive(Clone, Copy)]
pub(super) struct Watched {
    pub(super) agent: u32,
    pub(super) agent_port: u16,
    pub(super) server: u32,
    pub(super) server_port: u16,
}

/// One reading of the processes and their metrics; 0 for what could not be read (a process
/// that has ended).
#[derive(Clone, Copy, Debug)]
pub(super) struct Sample {
    pub(super) at: Instant,
    pub(super) agent_rss: u64,
    pub(super) agent_hwm: u64,
    pub(super) agent_cpu_s: f64,
    pub(super) evicted_pages: u64,
    pub(super) clean_drops: u64,
    pub(super) server_rss: u64,
    pub(super) server_stored: u64,
    pub(super) workload_hwm: u64,
}

impl Watched {
    pub(super) fn sample(&self) -> Sample {
        let metric = |port: u16, names: &[&str]| -> u64 {
            scrape::get(port).map_or(0, |body| {
                names
                    .iter()
                    .filter_map(|n| scrape::sum(&body, n))
                    .sum::<f64>() as u64
            })
        };
        let workload = children(self.agent).first().copied();
        Sample {
            at: Instant::now(),
            agent_rss: procfs::status_bytes(self.agent, "VmRSS").unwrap_or(0),
            agent_hwm: procfs::status_bytes(self.agent, "VmHWM").unwrap_or(0),
            agent_cpu_s: procfs::cpu_seconds(self.agent).unwrap_or(0.0),
            evicted_pages: metric(self.agent_port, &["yonder_agent_evicted_pages_total"]),
            clean_drops: metric(self.agent_port, &["yonder_agent_clean_drops_total"]),
            server_rss: procfs::status_bytes(self.server, "VmRSS").unwrap_or(0),
            server_stored: metric(
                self.server_port,
                &[
                    "yonder_server_pages_stored",
                    "yonder_server_zero_pages_stored",
                ],
            ),
            workload_hwm: workload
                .and_then(|w| procfs::status_bytes(w, "VmHWM"))
                .unwrap_or(0),
        }
    }
}

/// A thread that samples the watched processes every [`SAMPLE_EVERY`] until stopped or dropped.
pub(super) struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Sample>>>,
}

impl Sampler {
    pub(super) fn start(w: Watched) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                samples.push(w.sample());
                std::thread::sleep(SAMPLE_EVERY);
            }
            samples
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the thread and returns its samples.
    pub(super) fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
