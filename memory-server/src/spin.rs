//! Bounded spin-then-park for the request path.
//!
//! When the runtime has nothing to run it sleeps in `epoll_wait`; the next packet then has to wake
//! the thread, which costs 25–40 µs on this kind of VM when its vCPU went idle (see
//! docs/server-path.md). After a request arrives, a [`Spinner`] keeps the runtime awake for a short
//! window: its task yields to Tokio in a loop, and each yield makes the scheduler poll the I/O
//! driver without blocking, so a request arriving within the window is read without a wake-up.
//! After a quiet window the spinner parks: an idle server sleeps and uses no CPU.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use tokio::sync::Notify;

/// Keeps the runtime polling for `window` after the last request.
pub struct Spinner {
    window: Duration,
    epoch: Instant,
    /// Nanoseconds after `epoch` of the last request.
    last: AtomicU64,
    spinning: AtomicBool,
    wake: Notify,
}

impl Spinner {
    /// A spinner with the given window; spawn [`Spinner::run`] on the serving runtime.
    pub fn new(window: Duration) -> Arc<Self> {
        Arc::new(Self {
            window,
            epoch: Instant::now(),
            last: AtomicU64::new(0),
            spinning: AtomicBool::new(false),
            wake: Notify::new(),
        })
    }

    fn since_epoch(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// Notes a request that arrived at `at`: the window starts again.
    pub fn touch(&self, at: Instant) {
        self.last.store(self.since_epoch(at), Ordering::Relaxed);
        if !self.spinning.load(Ordering::Relaxed) {
            self.wake.notify_one();
        }
    }

    /// Spins after each request until the window passes without one, then parks. Never returns.
    pub async fn run(self: Arc<Self>) {
        let window = self.window.as_nanos() as u64;
        loop {
            self.wake.notified().await;
            self.spinning.store(true, Ordering::Relaxed);
            // A request that raced with the end of the last window notified us: spin again.
            while self
                .since_epoch(Instant::now())
                .saturating_sub(self.last.load(Ordering::Relaxed))
                < window
            {
                // Give the CPU to whatever else is runnable on it (a client on the same machine)
                // before polling again.
                std::thread::yield_now();
                tokio::task::yield_now().await;
            }
            self.spinning.store(false, Ordering::Relaxed);
        }
    }
}

/// Whether a request of kind `op` opens the spin window: only reads, the requests a faulting
/// program waits for. Writes and frees come from evictions, in batches whose next request is
/// milliseconds away; spinning after them took a CPU the program and the agent needed
/// (docs/server-path.md, "Spin after reads only").
pub fn spins_after(op: Option<&str>) -> bool {
    op == Some("read")
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_reads_open_the_window() {
        assert!(super::spins_after(Some("read")));
        for op in [Some("write"), Some("free"), Some("hello"), None] {
            assert!(!super::spins_after(op), "{op:?}");
        }
    }

    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn spins_for_the_window_then_parks() {
        let spinner = Spinner::new(Duration::from_millis(20));
        let task = tokio::spawn(spinner.clone().run());
        tokio::task::yield_now().await;
        assert!(!spinner.spinning.load(Ordering::Relaxed));
        spinner.touch(Instant::now());
        tokio::task::yield_now().await;
        assert!(spinner.spinning.load(Ordering::Relaxed));
        let started = Instant::now();
        while spinner.spinning.load(Ordering::Relaxed) {
            assert!(started.elapsed() < Duration::from_secs(5), "never parked");
            tokio::task::yield_now().await;
        }
        assert!(started.elapsed() >= Duration::from_millis(15));
        task.abort();
    }
}
