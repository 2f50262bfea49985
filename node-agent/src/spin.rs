//! Spin-then-park for the agent's thread: while faults come often, the thread polls its
//! userfaultfds and sockets without sleeping; when they stop, it sleeps in `epoll_wait` again.
//!
//! Why: on this kind of machine a thread asleep on an idle vCPU takes 25–40 µs to wake (the vCPU
//! halts and must be woken by an inter-processor interrupt, PLATFORM.md), and a remote fault
//! wakes the agent twice: when the fault arrives and when the server's reply does. A task that
//! keeps yielding makes Tokio's current-thread scheduler poll its I/O driver with a zero time-out
//! instead of parking (`park_yield`), so both are seen at once. See docs/fault-path.md for the
//! measurements that set the defaults.
//!
//! Bounded: the spinner runs only within `window` of the last fault or reply, or while a fetch
//! is in flight and younger than [`IN_FLIGHT_MAX`]; an idle agent never spins. One spinner per
//! thread (the agent and the daemon each run everything on one thread).

use std::{
    cell::{Cell, RefCell},
    rc::Rc,
    time::{Duration, Instant},
};

use tokio::sync::Notify;

/// Longest a fetch in flight keeps the thread spinning: past it the server is slow (or down), and
/// waiting in `epoll_wait` costs less than a wasted CPU.
pub const IN_FLIGHT_MAX: Duration = Duration::from_millis(2);

/// Default spin window after a fault or reply, microseconds (docs/fault-path.md).
pub const DEFAULT_WINDOW_US: u64 = 200;

struct Spinner {
    window: Duration,
    /// Spin until then (last fault or reply plus the window).
    until: Cell<Instant>,
    /// Fetches in flight, and when the last one started.
    in_flight: Cell<u32>,
    started: Cell<Instant>,
    asleep: Cell<bool>,
    wake: Notify,
}

impl Spinner {
    fn wanted(&self, now: Instant) -> bool {
        now < self.until.get()
            || (self.in_flight.get() > 0 && now < self.started.get() + IN_FLIGHT_MAX)
    }

    fn poke(&self) {
        if self.asleep.get() {
            self.asleep.set(false);
            self.wake.notify_one();
        }
    }
}

/// The spinner gives the CPU away (`sched_yield`) once every this many polls (docs/fault-path.md,
/// "Session 22": yielding at every poll cost whole programs 2-22 % where kernel entries are dear).
const YIELD_EVERY: u32 = 4;

thread_local! {
    static SPINNER: RefCell<Option<Rc<Spinner>>> = const { RefCell::new(None) };
}

fn with(f: impl FnOnce(&Spinner)) {
    SPINNER.with(|s| {
        if let Some(s) = s.borrow().as_ref() {
            f(s)
        }
    })
}

/// Starts this thread's spinner (a local task) with a window of `window_us` microseconds after
/// each fault or reply; 0 leaves the thread sleeping between events (no spinner). Call once,
/// inside the thread's `LocalSet`.
pub fn start(window_us: u64) {
    if window_us == 0 || SPINNER.with(|s| s.borrow().is_some()) {
        return;
    }
    let now = Instant::now();
    let s = Rc::new(Spinner {
        window: Duration::from_micros(window_us),
        until: Cell::new(now),
        in_flight: Cell::new(0),
        started: Cell::new(now),
        asleep: Cell::new(true),
        wake: Notify::new(),
    });
    SPINNER.with(|slot| *slot.borrow_mut() = Some(s.clone()));
    tokio::task::spawn_local(async move {
        let mut turn = 0u32;
        loop {
            if s.wanted(Instant::now()) {
                // Give the CPU to whatever else is runnable on it (a memory server, the workload)
                // every few polls: a spinner must not starve the thread it waits for, but each
                // yield is a kernel entry between two looks at the uffd and the sockets.
                turn = turn.wrapping_add(1);
                if turn.is_multiple_of(YIELD_EVERY) {
                    std::thread::yield_now();
                }
                tokio::task::yield_now().await;
            } else {
                s.asleep.set(true);
                s.wake.notified().await;
            }
        }
    });
}

/// Faults were read or a reply arrived: keep spinning for the window.
pub fn activity() {
    with(|s| {
        s.until.set(Instant::now() + s.window);
        s.poke();
    })
}

/// A fetch went out: spin until its reply (at most [`IN_FLIGHT_MAX`]). Pair with [`fetch_done`].
pub fn fetch_started() {
    with(|s| {
        s.in_flight.set(s.in_flight.get() + 1);
        s.started.set(Instant::now());
        s.poke();
    })
}

/// A fetch ended (its reply arrived or it failed).
pub fn fetch_done() {
    with(|s| {
        s.in_flight.set(s.in_flight.get().saturating_sub(1));
        s.until.set(Instant::now() + s.window);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spinner(window_us: u64, now: Instant) -> Spinner {
        Spinner {
            window: Duration::from_micros(window_us),
            until: Cell::new(now),
            in_flight: Cell::new(0),
            started: Cell::new(now),
            asleep: Cell::new(true),
            wake: Notify::new(),
        }
    }

    #[test]
    fn spins_within_the_window_after_activity_and_not_after() {
        let t0 = Instant::now();
        let s = spinner(200, t0);
        assert!(!s.wanted(t0), "no activity yet: asleep");
        s.until.set(t0 + s.window);
        assert!(s.wanted(t0 + Duration::from_micros(199)));
        assert!(!s.wanted(t0 + Duration::from_micros(200)));
    }

    #[test]
    fn a_fetch_in_flight_keeps_it_spinning_but_never_past_the_bound() {
        let t0 = Instant::now();
        let s = spinner(50, t0);
        s.in_flight.set(1);
        s.started.set(t0);
        assert!(s.wanted(t0 + Duration::from_micros(500)));
        assert!(s.wanted(t0 + IN_FLIGHT_MAX - Duration::from_micros(1)));
        assert!(
            !s.wanted(t0 + IN_FLIGHT_MAX),
            "a slow server is waited for asleep"
        );
        s.in_flight.set(0);
        assert!(!s.wanted(t0 + Duration::from_micros(500)));
    }
}
