//! The memory servers an agent pages to: replicated placement of slots, batched requests,
//! failure detection and failover.
//!
//! Placement: each slot has a ranking of all servers by rendezvous hashing (score of slot and
//! server name), so adding a server moves about 1/N of the pages. A write goes to the first R
//! servers of the ranking that are up and not full; a server that fails or is full is skipped and
//! the next one in the ranking takes its place. A read asks the servers in ranking order (the
//! fastest of the first R first) and takes the first copy with the exact version it expects; a
//! server without the page, or with an older version ("stale"), is skipped. Versions make this
//! safe: a server that was down or cut off and comes back can only answer "missing" or "stale" for
//! what changed meanwhile, never old data as current (see docs/replication.md).
//!
//! Failure detection: every request has a deadline (`timeout`); a server that misses it while
//! its connection has gone silent, or whose connection fails, is marked down at once and skipped,
//! and a background prober reconnects it. A server that misses a deadline while datagrams still
//! arrive from it (acks, other replies: it is alive, the path or the machine is slow) gets more
//! deadlines, up to [`SLOW_PATIENCE`] in all, before it is marked down (docs/replication.md).

use std::{
    cell::{Cell, RefCell},
    collections::HashMap,
    hash::{Hash, Hasher},
    rc::Rc,
    time::{Duration, Instant},
};

use yonder_common::{
    client::{ClientError, Requests, Timing},
    protocol::{
        FreeItem, PageData, ReadItem, ReadResult, SharedPage, SharedWriteItem, WriteResult,
        MAX_BATCH_PAGES,
    },
    PageKey, PAGE_SIZE,
};

use crate::pages::Remote;

mod conn;
mod driven;
mod read;

pub use conn::{Dialer, ServerConn, Transport};
pub use driven::DrivenClient;

/// Why a page could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No server has the page at the expected version (all copies lost or stale).
    #[error("every copy of slot {slot} (version {version}) is lost: {what}")]
    Lost {
        /// The slot.
        slot: u64,
        /// The version expected.
        version: u64,
        /// What the servers answered.
        what: String,
    },
}

/// Pages read back, and when the request that brought the first one left and was answered.
#[derive(Debug)]
pub struct Fetched {
    /// Contents, in the order asked.
    pub pages: Vec<Vec<u8>>,
    /// Timing of the request that brought the first page (None if it took several rounds).
    pub timing: Option<Timing>,
}

/// What a read for re-replication found.
#[derive(Debug)]
pub enum RepairRead {
    /// The content at the expected version.
    Data(Vec<u8>),
    /// A newer version is stored: the page was rewritten, and that write placed its own copies
    /// (or, if it could not place them on its whole home, listed itself as displaced).
    Newer,
    /// No server that is up has it now.
    Unavailable,
}

/// A request past its deadline on a connection that still receives datagrams waits up to this
/// many deadlines before its server is marked down (a slow server is not a dead one).
const SLOW_PATIENCE: u32 = 4;
/// After a deadline, how long the request may still complete from input that was waiting to be
/// read (the agent's own thread may have been starved of CPU).
const LATE_INPUT: Duration = Duration::from_millis(20);

/// How replicas are placed and when a server counts as failed.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// Copies of each page (capped at the number of servers).
    pub replicas: usize,
    /// Acks needed before a page counts as stored (1..=replicas).
    pub write_quorum: usize,
    /// Deadline of one request; a server that misses it is marked down.
    pub timeout: Duration,
    /// How long a read keeps trying while servers that may hold the page are unreachable, before
    /// the page is declared lost.
    pub lost_after: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            replicas: 2,
            write_quorum: 2,
            timeout: Duration::from_secs(2),
            lost_after: Duration::from_secs(30),
        }
    }
}

struct Server {
    name: String,
    /// None while it could not be reached at all.
    client: RefCell<Option<ServerConn>>,
    dialer: Option<Dialer>,
    /// Since when the server is down, if it is.
    down_since: Cell<Option<Instant>>,
    /// Until when the server counts as full (it refused a write for capacity).
    full_until: Cell<Option<Instant>>,
    /// Smoothed request latency in microseconds.
    latency_us: Cell<f64>,
    /// Smoothed absolute deviation of the latency, microseconds.
    latency_dev_us: Cell<f64>,
}

impl Server {
    fn up(&self) -> bool {
        self.down_since.get().is_none()
    }

    fn full(&self) -> bool {
        self.full_until.get().is_some_and(|t| Instant::now() < t)
    }

    fn observe(&self, took: Duration) {
        let us = took.as_secs_f64() * 1e6;
        let old = self.latency_us.get();
        if old == 0.0 {
            self.latency_us.set(us);
            self.latency_dev_us.set(us / 2.0);
            return;
        }
        self.latency_us.set(0.8 * old + 0.2 * us);
        let dev = self.latency_dev_us.get();
        self.latency_dev_us.set(0.8 * dev + 0.2 * (us - old).abs());
    }

    /// A delay near this server's p99 (mean + 4 deviations), after which a read is hedged.
    fn hedge_delay(&self, timeout: Duration) -> Duration {
        let us = self.latency_us.get() + 4.0 * self.latency_dev_us.get();
        Duration::from_secs_f64((us / 1e6).max(300e-6)).min(timeout / 2)
    }
}

/// Health of one server, for status and metrics.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ServerHealth {
    /// Address.
    pub name: String,
    /// Reachable.
    pub up: bool,
    /// Refused a write for capacity recently.
    pub full: bool,
    /// Smoothed request latency in microseconds.
    pub latency_us: f64,
}

/// Connections to the memory servers of one agent.
pub struct Servers {
    servers: Vec<Server>,
    policy: Policy,
    /// Servers that went down or came back, in order: a workload re-replicates the pages whose
    /// home includes them (a server that comes back may have restarted empty).
    changes: RefCell<Vec<usize>>,
    /// Pages whose last stored write did not land on every server of their home (a home server
    /// was down, full or failed, and the next of the ranking took the copy, or fewer than R
    /// acknowledged): slot to the newest such version. The repairer copies them home once every
    /// home server is up ([`Self::take_displaced`]).
    displaced: RefCell<HashMap<u64, u64>>,
    /// Closed for good ([`Self::close`]): servers that are down are not dialled again.
    closed: Cell<bool>,
}

fn score(slot: u64, server: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (slot, server).hash(&mut h);
    h.finish()
}

/// Whether a copy was placed on every server of `home` (`placed`: bit i for server i; servers
/// past 64 are never taken as placed).
fn on_home(home: &[usize], placed: u64) -> bool {
    home.iter().all(|&h| h < 64 && placed & (1 << h) != 0)
}

/// What one request to one server did.
enum Outcome<T> {
    Done(T),
    Failed(String),
}

impl Servers {
    /// Wraps connected clients, named by address, with the dialers to reconnect them.
    pub fn new(clients: Vec<(String, Option<ServerConn>, Option<Dialer>)>, policy: Policy) -> Self {
        assert!(!clients.is_empty(), "at least one memory server");
        let mut policy = policy;
        policy.replicas = policy.replicas.clamp(1, clients.len());
        policy.write_quorum = policy.write_quorum.clamp(1, policy.replicas);
        Self {
            servers: clients
                .into_iter()
                .map(|(name, client, dialer)| Server {
                    name,
                    down_since: Cell::new(client.is_none().then(Instant::now)),
                    client: RefCell::new(client),
                    dialer,
                    full_until: Cell::new(None),
                    latency_us: Cell::new(0.0),
                    latency_dev_us: Cell::new(0.0),
                })
                .collect(),
            displaced: RefCell::default(),
            closed: Cell::new(false),
            policy,
            changes: RefCell::default(),
        }
    }

    /// The placement and failure policy in force (replicas capped at the number of servers).
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Health of each server.
    pub fn health(&self) -> Vec<ServerHealth> {
        self.servers
            .iter()
            .map(|s| ServerHealth {
                name: s.name.clone(),
                up: s.up(),
                full: s.full(),
                latency_us: s.latency_us.get(),
            })
            .collect()
    }

    /// Sets every server's `yonder_agent_server_up` gauge to its state now.
    pub fn refresh_metrics(&self) {
        for s in &self.servers {
            let up = if s.up() { 1.0 } else { 0.0 };
            metrics::gauge!("yonder_agent_server_up", "server" => s.name.clone()).set(up);
        }
    }

    /// All servers, best first for `slot`.
    pub fn ranking(&self, slot: u64) -> Vec<usize> {
        let mut r: Vec<usize> = (0..self.servers.len()).collect();
        r.sort_by_key(|&i| std::cmp::Reverse(score(slot, &self.servers[i].name)));
        r
    }

    /// Whether server `i` is among the first R of `slot`'s ranking (where its copies go when
    /// every server is up).
    pub fn is_home(&self, slot: u64, i: usize) -> bool {
        self.ranking(slot)[..self.policy.replicas].contains(&i)
    }

    /// Servers that went down or came back since `cursor` (which moves past them).
    pub fn changed_since(&self, cursor: &mut usize) -> Vec<usize> {
        let changes = self.changes.borrow();
        let out = changes[(*cursor).min(changes.len())..].to_vec();
        *cursor = changes.len();
        out
    }

    fn mark_down(&self, i: usize, why: &str) {
        let s = &self.servers[i];
        if s.up() {
            s.down_since.set(Some(Instant::now()));
            self.changes.borrow_mut().push(i);
            eprintln!(
                "yonder: memory server {} is down ({why}); its pages are served and re-replicated from the others",
                s.name
            );
            metrics::gauge!("yonder_agent_server_up", "server" => s.name.clone()).set(0.0);
        }
    }

    /// Runs `f` against server `i` with the request deadline; a miss or a transport error marks
    /// the server down.
    async fn call<T, F, Fut>(&self, i: usize, f: F) -> Outcome<T>
    where
        F: FnOnce(ServerConn) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let s = &self.servers[i];
        let Some(client) = s.client.borrow().clone() else {
            return Outcome::Failed("not connected".into());
        };
        let started = Instant::now();
        let conn = client.clone();
        let mut heard = conn.datagrams_received();
        let fut = f(client);
        tokio::pin!(fut);
        let hard_limit = started + self.policy.timeout * SLOW_PATIENCE;
        let mut deadline = started + self.policy.timeout;
        let result = loop {
            match tokio::time::timeout_at(deadline.into(), &mut fut).await {
                Ok(r) => break Ok(r),
                Err(_) => {
                    // Datagrams that waited behind a busy CPU: let them be read before judging.
                    if let Ok(r) = tokio::time::timeout(LATE_INPUT, &mut fut).await {
                        break Ok(r);
                    }
                    // A server that sends anything (acks, other replies) is alive but slow (a
                    // lossy or delayed path, an overloaded machine): give it more time, up to
                    // the hard limit. One that went silent is down.
                    let now = conn.datagrams_received();
                    if now > heard && Instant::now() < hard_limit {
                        heard = now;
                        deadline = (deadline + self.policy.timeout).min(hard_limit);
                        continue;
                    }
                    break Err(());
                }
            }
        };
        // A request sent on a connection the prober has replaced since (the server was down
        // and came back) says nothing about the new one.
        let current = || {
            s.client
                .borrow()
                .as_ref()
                .is_some_and(|c| c.id() == conn.id())
        };
        match result {
            Ok(Ok(v)) => {
                s.observe(started.elapsed());
                Outcome::Done(v)
            }
            Ok(Err(e)) => {
                let why = e.to_string();
                if matches!(e, ClientError::Server { .. }) {
                    // The server answered: it is up, the request was refused.
                    return Outcome::Failed(why);
                }
                if current() {
                    self.mark_down(i, &why);
                }
                Outcome::Failed(why)
            }
            Err(()) => {
                let waited = started.elapsed().min(self.policy.timeout * SLOW_PATIENCE);
                let why = format!(
                    "no answer within {:?}",
                    Duration::from_millis(waited.as_millis() as u64)
                );
                if current() {
                    self.mark_down(i, &why);
                }
                Outcome::Failed(why)
            }
        }
    }

    /// Checks servers that are up with a small request (so that a failure is noticed within a
    /// deadline even when no page traffic goes there) and reconnects servers that are down (run
    /// in the background every second).
    pub async fn probe_down(&self) {
        if self.closed.get() {
            return;
        }
        let heartbeats = (0..self.servers.len())
            .filter(|&i| self.servers[i].up())
            .map(|i| self.call(i, |c| async move { c.stats().await }));
        futures_util::future::join_all(heartbeats).await;
        for (i, s) in self.servers.iter().enumerate() {
            if s.up() {
                continue;
            }
            let Some(d) = &s.dialer else {
                // Nothing to dial (embedded server): try the old connection.
                if let Outcome::Done(_) = self.call(i, |c| async move { c.stats().await }).await {
                    s.down_since.set(None);
                }
                continue;
            };
            let conn = tokio::time::timeout(self.policy.timeout, d.dial()).await;
            if let Ok(Ok(client)) = conn {
                *s.client.borrow_mut() = Some(client);
                s.down_since.set(None);
                s.full_until.set(None);
                self.changes.borrow_mut().push(i);
                eprintln!("yonder: memory server {} is back", s.name);
                metrics::gauge!("yonder_agent_server_up", "server" => s.name.clone()).set(1.0);
            }
        }
    }

    /// Writes pages to R servers each; returns, per page in order, whether it is stored (acked by
    /// at least the write quorum). A server that fails or is full is replaced by the next one in
    /// the page's ranking.
    pub async fn write(&self, space: u32, pages: Vec<(Remote, PageData)>) -> Vec<bool> {
        let want = self.policy.replicas;
        // The contents move into buffers every server's request shares (no copy per server).
        let pages: Vec<(Remote, SharedPage)> =
            pages.into_iter().map(|(r, d)| (r, d.into())).collect();
        let mut acks = vec![0usize; pages.len()];
        // Per page: the servers that hold the copy now (bit i: server i; servers past 64 are
        // taken as outside the home, which at worst costs a repair copy).
        let mut placed = vec![0u64; pages.len()];
        // Per page: the servers not tried yet, in ranking order.
        let mut candidates: Vec<Vec<usize>> =
            pages.iter().map(|(r, _)| self.ranking(r.slot)).collect();
        // Each page's home, from the ranking just made (it is consumed below).
        let homes: Vec<Vec<usize>> = candidates.iter().map(|c| c[..want].to_vec()).collect();
        loop {
            // Next round: each page that lacks copies goes to as many further servers as needed.
            let mut per_server: Vec<Vec<usize>> = vec![Vec::new(); self.servers.len()];
            let mut any = false;
            for (i, cands) in candidates.iter_mut().enumerate() {
                let mut need = want.saturating_sub(acks[i]);
                while need > 0 && !cands.is_empty() {
                    let s = cands.remove(0);
                    if self.servers[s].up() && !self.servers[s].full() {
                        per_server[s].push(i);
                        need -= 1;
                        any = true;
                    }
                }
            }
            if !any {
                break;
            }
            let mut requests = Vec::new();
            for (s, idx) in per_server.iter().enumerate() {
                for chunk in idx.chunks(MAX_BATCH_PAGES) {
                    requests.push((s, chunk.to_vec()));
                }
            }
            let pages = &pages;
            let futures = requests.into_iter().map(|(s, idx)| async move {
                // Shared: each server's request hands the same contents to QUIC, no copy.
                let items: Vec<SharedWriteItem> = idx
                    .iter()
                    .map(|&i| SharedWriteItem {
                        key: PageKey::new(space, pages[i].0.slot),
                        version: pages[i].0.version,
                        data: pages[i].1.clone(),
                    })
                    .collect();
                let outcome = self
                    .call(s, |c| async move { c.write_shared(&items).await })
                    .await;
                (s, idx, outcome)
            });
            for (s, idx, outcome) in futures_util::future::join_all(futures).await {
                match outcome {
                    Outcome::Done(results) => {
                        for (i, r) in idx.into_iter().zip(results) {
                            match r {
                                // A newer version stored means a newer write won: this copy is
                                // not needed, and counts as placed.
                                WriteResult::Stored | WriteResult::Superseded { .. } => {
                                    tracing::trace!(target: "yonder_agent::slottrace", remote = ?pages[i].0, server = s, result = ?r, "write ack");
                                    acks[i] += 1;
                                    if s < 64 {
                                        placed[i] |= 1 << s;
                                    }
                                }
                                WriteResult::CapacityExceeded => {
                                    let srv = &self.servers[s];
                                    if !srv.full() {
                                        tracing::warn!("memory server {} is full", srv.name);
                                    }
                                    srv.full_until
                                        .set(Some(Instant::now() + Duration::from_secs(5)));
                                }
                            }
                        }
                    }
                    Outcome::Failed(why) => {
                        tracing::warn!("writing to memory server {}: {why}", self.servers[s].name);
                    }
                }
            }
        }
        let stored: Vec<bool> = acks
            .into_iter()
            .map(|a| a >= self.policy.write_quorum)
            .collect();
        let mut displaced = self.displaced.borrow_mut();
        for (i, (r, _)) in pages.iter().enumerate() {
            if stored[i] && !on_home(&homes[i], placed[i]) {
                tracing::trace!(target: "yonder_agent::slottrace", remote = ?r, placed = placed[i], "displaced");
                let v = displaced.entry(r.slot).or_insert(r.version);
                *v = (*v).max(r.version);
            }
        }
        stored
    }

    /// Takes the pages whose last write did not land on their whole home, and whose home
    /// servers are all up now: the repairer copies them home. A page whose home is still
    /// partly down stays listed until it is not.
    pub fn take_displaced(&self) -> Vec<Remote> {
        let mut displaced = self.displaced.borrow_mut();
        if displaced.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::new();
        displaced.retain(|&slot, &mut version| {
            let ready = self.ranking(slot)[..self.policy.replicas]
                .iter()
                .all(|&h| self.servers[h].up() && !self.servers[h].full());
            if ready {
                out.push(Remote { slot, version });
            }
            !ready
        });
        out
    }

    /// Frees pages on every server that may hold them (best effort: a page left behind is freed
    /// with its space at the end).
    pub async fn free(&self, space: u32, remotes: Vec<Remote>) {
        let items: Vec<FreeItem> = remotes
            .iter()
            .map(|r| FreeItem {
                key: PageKey::new(space, r.slot),
                version: r.version,
            })
            .collect();
        for i in 0..self.servers.len() {
            if !self.servers[i].up() {
                continue;
            }
            for chunk in items.chunks(MAX_BATCH_PAGES) {
                let chunk = chunk.to_vec();
                if let Outcome::Failed(e) =
                    self.call(i, |c| async move { c.free(chunk).await }).await
                {
                    tracing::debug!("freeing pages on {}: {e}", self.servers[i].name);
                }
            }
        }
    }

    /// Frees every page of a space on every server; returns how many were freed.
    pub async fn drop_space(&self, space: u32) -> u64 {
        let mut freed = 0;
        for i in 0..self.servers.len() {
            match self
                .call(i, |c| async move { c.drop_space(space).await })
                .await
            {
                Outcome::Done(n) => freed += n,
                Outcome::Failed(e) => tracing::warn!(
                    "dropping the workload's pages on {}: {e}",
                    self.servers[i].name
                ),
            }
        }
        freed
    }

    /// Closes every connection politely, for an agent that is done: the servers free the
    /// connections' state at once instead of after their idle time-out (10 s). quinn's client
    /// sends the close from its endpoint's task, which gets a moment to do so; the driven client
    /// sends it in the call.
    pub async fn close(&self) {
        self.closed.set(true);
        for s in &self.servers {
            if let Some(c) = s.client.borrow().as_ref() {
                c.close();
            }
        }
        for s in &self.servers {
            if let Some(d) = &s.dialer {
                if d.transport == Transport::Quinn {
                    let _ = tokio::time::timeout(CLOSE_WAIT, d.endpoint.wait_idle()).await;
                }
            }
        }
    }
}

/// How long an agent that is done waits for quinn to send its connections' closes.
const CLOSE_WAIT: Duration = Duration::from_millis(100);

/// Reconnects failed servers every second, for as long as `servers` lives elsewhere.
pub async fn prober(servers: Rc<Servers>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if Rc::strong_count(&servers) == 1 {
            return;
        }
        servers.probe_down().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_is_on_its_home_only_with_a_copy_on_every_home_server() {
        assert!(on_home(&[0, 2], 0b101));
        assert!(on_home(&[0, 2], 0b111));
        assert!(!on_home(&[0, 2], 0b011), "server 1 took server 2's copy");
        assert!(!on_home(&[0, 2], 0b001), "one copy only");
        assert!(!on_home(&[70], u64::MAX), "past 64: never taken as placed");
    }

    #[test]
    fn displaced_pages_are_taken_once_their_whole_home_is_up() {
        let clients = (0..3)
            .map(|i| (format!("10.0.0.{i}:7070"), None, None))
            .collect();
        let s = Servers::new(clients, Policy::default());
        let with_0 = (0..100u64).find(|&x| s.is_home(x, 0)).unwrap();
        let without_0 = (0..100u64).find(|&x| !s.is_home(x, 0)).unwrap();
        s.displaced.borrow_mut().insert(with_0, 3);
        s.displaced.borrow_mut().insert(without_0, 5);
        assert!(s.take_displaced().is_empty(), "every server is down");
        for srv in &s.servers[1..] {
            srv.down_since.set(None);
        }
        assert_eq!(
            s.take_displaced(),
            vec![Remote {
                slot: without_0,
                version: 5
            }]
        );
        assert!(s.take_displaced().is_empty(), "taken once");
        s.servers[0].down_since.set(None);
        assert_eq!(
            s.take_displaced(),
            vec![Remote {
                slot: with_0,
                version: 3
            }]
        );
    }

    #[test]
    fn rendezvous_moves_about_a_fair_share_when_a_server_is_added() {
        let names: Vec<String> = (0..4).map(|i| format!("10.0.0.{i}:7070")).collect();
        let place = |slot: u64, n: usize| (0..n).max_by_key(|&i| score(slot, &names[i])).unwrap();
        let moved = (0..10_000u64)
            .filter(|&s| place(s, 3) != place(s, 4))
            .count();
        assert!(
            (1_500..3_500).contains(&moved),
            "moved {moved} of 10000 (expect ~2500)"
        );
        let on_new = (0..10_000u64).filter(|&s| place(s, 4) == 3).count();
        assert_eq!(moved, on_new, "only pages that land on the new server move");
    }
}
