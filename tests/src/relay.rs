//! A lossy UDP relay for end-to-end tests (this kernel has no `tc netem`): it listens on a
//! loopback port, forwards every datagram to one upstream address (a memory server) and the
//! replies back, and on the way injects a fixed delay with jitter, loss, duplication, reordering
//! and partitions, all changeable while it runs. Each client address gets its own upstream socket,
//! as behind a NAT, so the server sees one peer per client. Random choices come from a seeded
//! generator, so a run with the same seed and the same traffic makes the same choices.
//!
//! Threads: one reads the listening socket, one per client reads its upstream socket, and one
//! sends what is due. Dropping the relay stops and joins them all.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    net::{SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Condvar, Mutex, MutexGuard, PoisonError,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use rand::{rngs::StdRng, Rng, SeedableRng};
// Large socket buffers, as the agent and the server use: a burst must not overflow the relay's
// buffers, which would be loss nobody asked for.
use yonder_common::transport::udp_socket;

/// How often blocked threads look at the stop flag.
const POLL: Duration = Duration::from_millis(20);

/// Largest datagram relayed (the largest UDP payload).
const MAX_DATAGRAM: usize = 65_535;

/// What the relay does to datagrams; set with [`Relay::set_faults`] at any time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Faults {
    /// Fixed one-way delay added to every datagram.
    pub delay: Duration,
    /// Each datagram's delay is `delay` plus a uniform random amount in `-jitter..=jitter`
    /// (at least zero in all). Unless `jitter_reorders`, a datagram is never sent before one
    /// that arrived earlier in the same direction (jitter as a varying queue).
    pub jitter: Duration,
    /// Let jitter reorder datagrams, as netem does: one that drew a shorter delay overtakes
    /// those that arrived shortly before it.
    pub jitter_reorders: bool,
    /// Probability that a datagram is dropped.
    pub loss: f64,
    /// Probability that a datagram is sent twice.
    pub duplicate: f64,
    /// Probability that a datagram is held back until the next `reorder_gap` datagrams in the
    /// same direction have been sent (or `reorder_max_hold` has passed), then sent after them.
    pub reorder: f64,
    /// How many later datagrams overtake a held-back one.
    pub reorder_gap: u32,
    /// Longest a datagram is held back when no further datagrams come.
    pub reorder_max_hold: Duration,
    /// Drop everything in both directions, also datagrams already queued (a cut cable).
    pub partitioned: bool,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            jitter_reorders: false,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_gap: 2,
            reorder_max_hold: Duration::from_millis(20),
            partitioned: false,
        }
    }
}

/// Counts of what the relay did since it started, both directions together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Datagrams received from clients.
    pub from_clients: u64,
    /// Datagrams received from the upstream server.
    pub from_server: u64,
    /// Datagrams sent on (duplicates included).
    pub sent: u64,
    /// Datagrams dropped by the loss probability.
    pub lost: u64,
    /// Datagrams dropped because of a partition (on arrival or while queued).
    pub partitioned: u64,
    /// Extra copies sent.
    pub duplicated: u64,
    /// Datagrams held back and sent after later ones.
    pub reordered: u64,
    /// Clients seen (upstream sockets opened).
    pub clients: u64,
}

/// Which way a datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    ToServer,
    ToClient,
}

/// A datagram on its way: where it goes and what it carries.
struct Packet {
    /// Client it belongs to (its source, or its destination on the way back).
    client: SocketAddr,
    direction: Direction,
    data: Vec<u8>,
}

/// A datagram waiting to be sent; ordered by due time, then arrival.
struct Scheduled {
    due: Instant,
    seq: u64,
    packet: Packet,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

/// A datagram held back for reordering.
struct Held {
    packet: Packet,
    due: Instant,
    overtakes_left: u32,
    release_at: Instant,
}

/// The decisions and the queue, behind one lock.
struct Shaper {
    faults: Faults,
    /// One generator per direction, so that the choices in one direction do not depend on how
    /// the two directions' datagrams interleave.
    rngs: [StdRng; 2],
    queue: BinaryHeap<Reverse<Scheduled>>,
    /// At most one held-back datagram per direction.
    held: Vec<Held>,
    seq: u64,
    /// Due time of the last datagram queued in each direction (for order-keeping jitter).
    last_due: [Option<Instant>; 2],
    stats: RelayStats,
}

impl Shaper {
    fn schedule(&mut self, due: Instant, packet: Packet) {
        self.seq += 1;
        let seq = self.seq;
        self.queue.push(Reverse(Scheduled { due, seq, packet }));
    }

    /// Applies the faults to a datagram that just arrived.
    fn arrive(&mut self, packet: Packet, now: Instant) {
        match packet.direction {
            Direction::ToServer => self.stats.from_clients += 1,
            Direction::ToClient => self.stats.from_server += 1,
        }
        let f = self.faults;
        let rng = &mut self.rngs[packet.direction as usize];
        if f.partitioned {
            self.stats.partitioned += 1;
            return;
        }
        if f.loss > 0.0 && rng.random_bool(f.loss.min(1.0)) {
            self.stats.lost += 1;
            return;
        }
        let jitter_ns = f.jitter.as_nanos() as i64;
        let offset = if jitter_ns > 0 {
            rng.random_range(-jitter_ns..=jitter_ns)
        } else {
            0
        };
        let delay_ns = (f.delay.as_nanos() as i64 + offset).max(0) as u64;
        let mut due = now + Duration::from_nanos(delay_ns);
        let direction = packet.direction;
        if !f.jitter_reorders {
            let last = &mut self.last_due[direction as usize];
            due = last.map_or(due, |l| due.max(l));
            *last = Some(due);
        }
        let copy = (f.duplicate > 0.0 && rng.random_bool(f.duplicate.min(1.0))).then(|| Packet {
            client: packet.client,
            direction,
            data: packet.data.clone(),
        });
        // Drawn whether or not a datagram is already held, so that the draws do not depend on
        // timing.
        let hold = f.reorder > 0.0 && rng.random_bool(f.reorder.min(1.0));
        let hold =
            hold && f.reorder_gap > 0 && !self.held.iter().any(|h| h.packet.direction == direction);
        if hold {
            self.held.push(Held {
                packet,
                due,
                overtakes_left: f.reorder_gap,
                release_at: now + f.reorder_max_hold,
            });
        } else {
            self.schedule(due, packet);
            // Datagrams held back in this direction are released once enough have overtaken
            // them, due no earlier than the last one that did (the sequence number breaks ties).
            let mut k = 0;
            while k < self.held.len() {
                if self.held[k].packet.direction == direction {
                    self.held[k].overtakes_left -= 1;
                    if self.held[k].overtakes_left == 0 {
                        let h = self.held.swap_remove(k);
                        self.stats.reordered += 1;
                        self.schedule(h.due.max(due), h.packet);
                        continue;
                    }
                }
                k += 1;
            }
        }
        if let Some(copy) = copy {
            self.stats.duplicated += 1;
            self.schedule(due, copy);
        }
    }

    /// Moves held-back datagrams whose hold time is over to the queue (not counted as reordered:
    /// nothing overtook them).
    fn release_expired(&mut self, now: Instant) {
        let mut k = 0;
        while k < self.held.len() {
            if self.held[k].release_at <= now {
                let h = self.held.swap_remove(k);
                self.schedule(h.due.max(now), h.packet);
            } else {
                k += 1;
            }
        }
    }

    /// When the sender next has something to do.
    fn next_wake(&self) -> Option<Instant> {
        let queued = self.queue.peek().map(|Reverse(s)| s.due);
        let held = self.held.iter().map(|h| h.release_at).min();
        match (queued, held) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// State shared by the relay's threads.
struct Shared {
    upstream: SocketAddr,
    listen: UdpSocket,
    shaper: Mutex<Shaper>,
    /// Wakes the sender when something is queued or the relay stops.
    wake: Condvar,
    stop: AtomicBool,
    /// Upstream socket of each client.
    clients: Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>,
    /// Threads reading upstream sockets, joined on drop.
    readers: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    fn shaper(&self) -> MutexGuard<'_, Shaper> {
        self.shaper.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn arrive(&self, packet: Packet) {
        self.shaper().arrive(packet, Instant::now());
        self.wake.notify_one();
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// The upstream socket of `client`, opened (with its reader thread) on first use.
    fn upstream_of(self: &Arc<Self>, client: SocketAddr) -> std::io::Result<Arc<UdpSocket>> {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = clients.get(&client) {
            return Ok(s.clone());
        }
        let bind: SocketAddr = if self.upstream.is_ipv6() {
            "[::1]:0"
        } else {
            "127.0.0.1:0"
        }
        .parse()
        .expect("a valid loopback address");
        let socket = udp_socket(bind)?;
        socket.connect(self.upstream)?;
        socket.set_read_timeout(Some(POLL))?;
        let socket = Arc::new(socket);
        clients.insert(client, socket.clone());
        self.shaper().stats.clients += 1;
        let shared = self.clone();
        let reader = socket.clone();
        let handle = std::thread::Builder::new()
            .name("relay-upstream".into())
            .spawn(move || shared.read_upstream(client, &reader))?;
        self.readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(handle);
        Ok(socket)
    }

    /// Reads datagrams from clients until the relay stops.
    fn read_clients(self: &Arc<Self>) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        while !self.stopped() {
            let Ok((n, client)) = self.listen.recv_from(&mut buf) else {
                continue;
            };
            if let Err(e) = self.upstream_of(client) {
                eprintln!("relay: no upstream socket for {client}: {e}");
                continue;
            }
            self.arrive(Packet {
                client,
                direction: Direction::ToServer,
                data: buf[..n].to_vec(),
            });
        }
    }

    /// Reads the server's replies to `client` until the relay stops.
    fn read_upstream(&self, client: SocketAddr, socket: &UdpSocket) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        while !self.stopped() {
            // Errors: the timeout, or ICMP unreachable while the server is not listening.
            let Ok(n) = socket.recv(&mut buf) else {
                continue;
            };
            self.arrive(Packet {
                client,
                direction: Direction::ToClient,
                data: buf[..n].to_vec(),
            });
        }
    }

    /// Sends queued datagrams when they are due, until the relay stops.
    fn send_due(&self) {
        let mut shaper = self.shaper();
        while !self.stopped() {
            let now = Instant::now();
            shaper.release_expired(now);
            let mut due = Vec::new();
            while shaper.queue.peek().is_some_and(|Reverse(s)| s.due <= now) {
                if let Some(Reverse(s)) = shaper.queue.pop() {
                    due.push(s.packet);
                }
            }
            if due.is_empty() {
                let wait = shaper
                    .next_wake()
                    .map_or(POLL, |t| t.saturating_duration_since(now).min(POLL));
                shaper = self
                    .wake
                    .wait_timeout(shaper, wait)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
                continue;
            }
            if shaper.faults.partitioned {
                shaper.stats.partitioned += due.len() as u64;
                continue;
            }
            shaper.stats.sent += due.len() as u64;
            // Send without the lock, so that arrivals are not held up.
            drop(shaper);
            for p in due {
                // A send error is a lost datagram, as on a real network.
                let _ = match p.direction {
                    Direction::ToClient => self.listen.send_to(&p.data, p.client),
                    Direction::ToServer => {
                        let socket = self
                            .clients
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .get(&p.client)
                            .cloned();
                        match socket {
                            Some(s) => s.send(&p.data),
                            None => continue,
                        }
                    }
                };
            }
            shaper = self.shaper();
        }
    }
}

/// A running relay; stops and joins its threads when dropped.
pub struct Relay {
    addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Relay {
    /// Starts a relay on an ephemeral port of the loopback address of `upstream`'s family,
    /// forwarding to `upstream`, with no faults and random choices seeded by `seed`.
    pub fn start(upstream: SocketAddr, seed: u64) -> std::io::Result<Self> {
        let bind: SocketAddr = if upstream.is_ipv6() {
            "[::1]:0"
        } else {
            "127.0.0.1:0"
        }
        .parse()
        .expect("a valid loopback address");
        let listen = udp_socket(bind)?;
        listen.set_read_timeout(Some(POLL))?;
        let addr = listen.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            listen,
            shaper: Mutex::new(Shaper {
                faults: Faults::default(),
                rngs: [
                    StdRng::seed_from_u64(seed),
                    StdRng::seed_from_u64(seed ^ 0x9E37_79B9_7F4A_7C15),
                ],
                queue: BinaryHeap::new(),
                held: Vec::new(),
                seq: 0,
                last_due: [None; 2],
                stats: RelayStats::default(),
            }),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            clients: Mutex::new(HashMap::new()),
            readers: Mutex::new(Vec::new()),
        });
        let mut threads = Vec::new();
        let s = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("relay-listen".into())
                .spawn(move || s.read_clients())?,
        );
        let s = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("relay-send".into())
                .spawn(move || s.send_due())?,
        );
        Ok(Self {
            addr,
            shared,
            threads,
        })
    }

    /// The address clients send to (give it to the agent instead of the server's).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The faults in force.
    pub fn faults(&self) -> Faults {
        self.shared.shaper().faults
    }

    /// Replaces the faults; applies to datagrams arriving from now on (a partition also to
    /// those still queued).
    pub fn set_faults(&self, faults: Faults) {
        self.shared.shaper().faults = faults;
        self.shared.wake.notify_one();
    }

    /// Changes the faults in place, e.g. `relay.update(|f| f.partitioned = true)`.
    pub fn update(&self, change: impl FnOnce(&mut Faults)) {
        change(&mut self.shared.shaper().faults);
        self.shared.wake.notify_one();
    }

    /// What the relay did so far.
    pub fn stats(&self) -> RelayStats {
        self.shared.shaper().stats
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.wake.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // No reader is added once the listening thread has ended.
        let readers = std::mem::take(
            &mut *self
                .shared
                .readers
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for t in readers {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

    use super::*;

    /// An echo server on loopback that answers every datagram with the same bytes.
    fn echo() -> (SocketAddr, Arc<AtomicBool>, JoinHandle<()>) {
        let s = udp_socket("127.0.0.1:0".parse().unwrap()).unwrap();
        s.set_read_timeout(Some(POLL)).unwrap();
        let addr = s.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let h = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !st.load(Ordering::Relaxed) {
                if let Ok((n, from)) = s.recv_from(&mut buf) {
                    let _ = s.send_to(&buf[..n], from);
                }
            }
        });
        (addr, stop, h)
    }

    fn client() -> UdpSocket {
        let c = udp_socket("127.0.0.1:0".parse().unwrap()).unwrap();
        c.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        c
    }

    /// Sends `n` numbered datagrams one at a time, waiting briefly for each echo; returns the
    /// numbers that came back, in arrival order.
    fn exchange(c: &UdpSocket, to: SocketAddr, n: u32, wait: Duration) -> Vec<u32> {
        for i in 0..n {
            c.send_to(&i.to_be_bytes(), to).unwrap();
        }
        let mut got = Vec::new();
        let deadline = Instant::now() + wait;
        let mut buf = [0u8; 16];
        while Instant::now() < deadline {
            if let Ok(n) = c.recv(&mut buf) {
                got.push(u32::from_be_bytes(buf[..n].try_into().unwrap()));
            }
        }
        got
    }

    #[test]
    fn forwards_both_ways_without_faults() {
        let (server, stop, h) = echo();
        let relay = Relay::start(server, 1).unwrap();
        let c = client();
        let got = exchange(&c, relay.addr(), 100, Duration::from_millis(500));
        assert_eq!(got, (0..100).collect::<Vec<_>>());
        let s = relay.stats();
        assert_eq!(
            (s.from_clients, s.from_server, s.sent, s.clients),
            (100, 100, 200, 1)
        );
        drop(relay);
        stop.store(true, Ordering::Relaxed);
        h.join().unwrap();
    }

    #[test]
    fn loss_drops_about_the_given_share_and_the_seed_decides_which() {
        let (server, stop, h) = echo();
        let run = |seed| {
            let relay = Relay::start(server, seed).unwrap();
            relay.update(|f| f.loss = 0.3);
            let c = client();
            let got = exchange(&c, relay.addr(), 400, Duration::from_millis(600));
            (got, relay.stats())
        };
        let (a, sa) = run(7);
        let (b, _) = run(7);
        assert_eq!(a, b, "same seed, same choices");
        // Each echo crosses the relay twice: about 0.7 * 0.7 = 49 % come back.
        assert!((120..280).contains(&a.len()), "{} came back", a.len());
        assert_eq!(sa.lost + sa.sent, sa.from_clients + sa.from_server);
        stop.store(true, Ordering::Relaxed);
        h.join().unwrap();
    }

    #[test]
    fn delay_duplication_reordering_and_partition() {
        let (server, stop, h) = echo();
        let relay = Relay::start(server, 3).unwrap();
        let c = client();

        relay.update(|f| f.delay = Duration::from_millis(30));
        let t = Instant::now();
        c.send_to(b"\0\0\0\x01", relay.addr()).unwrap();
        let mut buf = [0u8; 16];
        c.recv(&mut buf).unwrap();
        assert!(
            t.elapsed() >= Duration::from_millis(60),
            "{:?}",
            t.elapsed()
        );

        relay.set_faults(Faults {
            jitter: Duration::from_millis(5),
            ..Faults::default()
        });
        let got = exchange(&c, relay.addr(), 100, Duration::from_millis(400));
        assert_eq!(
            got,
            (0..100).collect::<Vec<_>>(),
            "jitter alone keeps order"
        );
        relay.update(|f| f.jitter_reorders = true);
        let got = exchange(&c, relay.addr(), 100, Duration::from_millis(400));
        assert_eq!(got.len(), 100);
        assert!(
            got.windows(2).any(|w| w[0] > w[1]),
            "netem-like jitter reorders"
        );

        relay.set_faults(Faults {
            duplicate: 1.0,
            ..Faults::default()
        });
        let got = exchange(&c, relay.addr(), 10, Duration::from_millis(400));
        // Both ways duplicated: four copies of each.
        assert_eq!(got.len(), 40, "{got:?}");

        relay.set_faults(Faults {
            reorder: 0.3,
            ..Faults::default()
        });
        let got = exchange(&c, relay.addr(), 200, Duration::from_millis(500));
        assert_eq!(got.len(), 200);
        assert!(got.windows(2).any(|w| w[0] > w[1]), "nothing reordered");
        let mut sorted = got.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..200).collect::<Vec<_>>());
        assert!(relay.stats().reordered > 0);

        relay.set_faults(Faults {
            partitioned: true,
            ..Faults::default()
        });
        assert!(exchange(&c, relay.addr(), 10, Duration::from_millis(200)).is_empty());
        relay.update(|f| f.partitioned = false);
        assert_eq!(
            exchange(&c, relay.addr(), 3, Duration::from_millis(300)).len(),
            3
        );

        let started = Instant::now();
        drop(relay);
        assert!(started.elapsed() < Duration::from_secs(2), "slow to stop");
        stop.store(true, Ordering::Relaxed);
        h.join().unwrap();
    }
}
