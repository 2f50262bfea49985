//! One managed workload: a process tree whose anonymous memory shares one local-memory budget and
//! one remote space, and the tasks that serve it (fault loops, scanners, the evictor).
//!
//! Everything runs on one thread (a current-thread runtime): reading the uffds, fetching over
//! QUIC, installing pages, evicting. A wake-up on another vCPU costs ~20-25 µs on the machines
//! this was measured on, so the fault path has no thread hop. Only copying victims out of a
//! process (`process_vm_readv`) runs on a blocking thread, because it could fault on the
//! process's memory and must never wait for the very loop that serves that fault.
//!
//! Processes: the program the workload started is attached by the shim's hello. A `fork` reaches
//! the agent as UFFD_EVENT_FORK on the parent's uffd, with the child's uffd: the child gets a copy
//! of the parent's page table (sharing every remote slot, see [`crate::pages::Slots`]) and is
//! served at once; its shim then says hello with its pid, which pairs it with that fork event and
//! lets the agent scan and evict its memory. A descendant that execs a program loading the shim
//! attaches like the first program.
//!
//! The parts, by what they do:
//! - `process`: one process, its address-space events and forks, the scanner, shared pages;
//! - `faults`: the fault loop, serving missing and write-protect faults, zero-fill ahead, fetches;
//! - `prefetch`: tracking runs of remote faults (pure);
//! - `evict`: the evictor and one eviction batch;
//! - `api`: the client API (register, unregister, prefetch, flush);
//! - `repair`: re-replication after a memory server goes down;
//! - `shim_link`: the agent's side of the word protocol to the shim.

pub mod api;
mod evict;
mod faults;
mod grace;
mod intercept;
mod locked;
mod prefetch;
mod process;
mod protect;
mod repair;
pub mod shim_link;

use std::{
    cell::{Cell, RefCell},
    collections::BTreeMap,
    os::fd::AsRawFd,
    rc::Rc,
    time::Duration,
};

use anyhow::{bail, Context};
use tokio::{
    net::{UnixListener, UnixStream},
    sync::Notify,
};
use tracing::{debug, info};

use crate::{
    eviction::{EvictionPolicy, GraceSizer, Policy, Sample},
    fdpass::{self, HelloKind},
    pages::{PageTable, Remote, Slots, PAGE},
    procfs,
    remote::Servers,
    shim_proto as proto,
    stats::Stats,
    uffd::Uffd,
};

use self::{
    api::api_loop,
    evict::evictor,
    process::{sharing, Proc},
    repair::repairer,
    shim_link::write_words,
};

/// Pages evicted per batch.
pub const EVICT_BATCH: usize = 256;
/// Default share of the budget parked in the grace window, percent (docs/eviction.md).
pub const DEFAULT_PARKED_SHARE: u32 = 10;
/// Largest parked share, percent.
pub const MAX_PARKED_SHARE: u32 = 50;
/// Evictions a page is remembered for (a ghost), as a share of the budget in pages: a fault on
/// it within that many evictions is a refault, which the policy takes as a mistake (S3-FIFO
/// puts the page in its main queue). A whole budget's worth promoted too many pages of programs
/// that sweep their memory (xz: 10-14 % more remote faults than a quarter, docs/eviction.md,
/// "Session 18").
pub const GHOST_PERCENT: usize = 25;
/// Most pages in the grace window: half a parking area, so batches being saved always fit.
const GRACE_MAX: usize = (crate::shim_proto::PARK_PAGES / 2) as usize;
/// The slack of a budget of `budget` pages: two eviction batches, at most a 32nd of it but at
/// least 16 pages (an eighth of a tiny budget). An eighth, used until session 11, cost small
/// budgets a tenth of their faults (docs/node-agent.md, "Budget and eviction").
pub fn slack_for(budget: usize) -> usize {
    (2 * EVICT_BATCH).min((budget / 32).max(16.min(budget / 8)))
}

/// The smallest local-memory budget a workload may have: 64 pages. Below it the program would do
/// little but wait for its own pages (and 0 would mean every page remote).
pub const MIN_BUDGET: u64 = 64 * PAGE;
/// Most pages fetched ahead of a sequential run of remote faults.
const PREFETCH_MAX: u64 = 32;
/// Most never-touched pages zero-filled ahead of a sequential run of zero-fill faults.
const ZERO_AHEAD_MAX: u64 = 32;
/// Pages of the aligned block a scattered zero-fill fault fills far below the budget.
const ZERO_AROUND: u64 = 16;
/// How often the agent looks for new anonymous mappings of a process.
const SCAN_INTERVAL: Duration = Duration::from_millis(10);

const ZEROS: [u8; PAGE as usize] = [0; PAGE as usize];

/// A workload: its processes, budget and remote space.
pub struct Group {
    /// Name shown in logs and status (the program).
    pub name: String,
    /// Remote space of all its pages.
    pub space: u32,
    servers: Rc<Servers>,
    slots: Rc<RefCell<Slots>>,
    /// Counters.
    pub stats: Rc<RefCell<Stats>>,
    /// Budget in pages: a hard limit on its resident managed pages (faults wait for room).
    pub budget: usize,
    /// Pages below the budget where evictions start ([`Self::soft_limit`]): the room for pages
    /// that arrive while the evictor catches up.
    pub slack: usize,
    /// The first program's pid: processes that descend from it may attach.
    root: Cell<u32>,
    procs: RefCell<Vec<Rc<Proc>>>,
    pressure: Notify,
    /// Deferred faults are being tried again: one that must wait again does not wake the
    /// evictor (the evictor itself tries them, and would wake itself forever).
    retrying: Cell<bool>,
    stuck_warned: Cell<bool>,
    /// The user was told once that nothing could be evicted (see `evict.rs`).
    stuck_told: Cell<bool>,
    /// This round of the evictor found nothing to evict but pages of a process inside `fork()`:
    /// faults are not held back for room meanwhile (the forking thread may be one of them).
    forks_hold_back: Cell<bool>,
    fatal: RefCell<Option<String>>,
    tasks: RefCell<Vec<tokio::task::JoinHandle<()>>>,
    /// Listeners of the workload's seccomp filters (see `intercept.rs`).
    pub(super) listeners: RefCell<Vec<Rc<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>>>,
    /// Numbers drop requests to the shims.
    next_drop_id: Cell<u64>,
    /// The last eviction batch could store nothing (servers full or unreachable).
    servers_refuse: Cell<bool>,
    /// Resident pages counted in two processes' tables that are one page of memory (shared
    /// copy-on-write since a fork): subtracted from the sum of the tables (see [`Self::resident`]).
    shared: Cell<usize>,
    /// Parked batches whose writes are in flight.
    batches_in_flight: Cell<usize>,
    /// Signalled when a parked batch is done.
    batch_done: Notify,
    /// The eviction policy of its processes.
    policy: Cell<Policy>,
    /// Share of the budget, in percent, kept parked in the grace window (an access probe).
    parked_share: Cell<u32>,
    /// Whether evictions may move pages to a parking area (`UFFDIO_MOVE`); false evicts every
    /// page by write protection, as on a kernel without it (`--evict-by protect`).
    moves_allowed: Cell<bool>,
    /// Batches parked in the grace window, oldest first: they are saved in this order.
    grace: RefCell<std::collections::VecDeque<grace::GraceBatch>>,
    /// Pages that left memory (saved or dropped clean) per finished batch, over the last
    /// [`LEFT_WINDOW`]: the eviction volume that sizes the grace window.
    left_log: RefCell<std::collections::VecDeque<(std::time::Instant, usize)>>,
    /// Scales the grace window by its rescues per remote fault (`eviction::GraceSizer`).
    sizer: RefCell<GraceSizer>,
}

/// How far back the pages that left memory count towards the grace window's size.
const LEFT_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);

/// Drops the entries of `log` older than [`LEFT_WINDOW`] at `now`.
fn prune_left(
    log: &mut std::collections::VecDeque<(std::time::Instant, usize)>,
    now: std::time::Instant,
) {
    while log
        .front()
        .is_some_and(|e| now.duration_since(e.0) > LEFT_WINDOW)
    {
        log.pop_front();
    }
}

/// Sends `sig` to process `pid` (a process of a workload; 0 is ignored, never the caller's own
/// process group).
pub(crate) fn signal(pid: u32, sig: i32) {
    if pid == 0 {
        return;
    }
    // SAFETY: kill(2) of one positive pid with a signal number; no memory is involved.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// A random space id, so that agents sharing a client certificate do not collide.
fn random_space() -> u32 {
    let mut b = [0u8; 4];
    use std::io::Read;
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_err()
    {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return t.subsec_nanos() ^ std::process::id();
    }
    u32::from_le_bytes(b)
}

impl Group {
    /// A workload with no process yet.
    pub fn new(name: String, servers: Rc<Servers>, budget: usize) -> Rc<Self> {
        Rc::new(Self {
            name,
            space: random_space(),
            servers,
            slots: Rc::default(),
            stats: Rc::new(RefCell::new(Stats::default())),
            budget,
            slack: slack_for(budget),
            root: Cell::new(0),
            procs: RefCell::default(),
            pressure: Notify::new(),
            retrying: Cell::new(false),
            stuck_warned: Cell::new(false),
            stuck_told: Cell::new(false),
            forks_hold_back: Cell::new(false),
            fatal: RefCell::default(),
            tasks: RefCell::default(),
            listeners: RefCell::default(),
            next_drop_id: Cell::new(0),
            servers_refuse: Cell::new(false),
            shared: Cell::new(0),
            batches_in_flight: Cell::new(0),
            batch_done: Notify::new(),
            policy: Cell::new(Policy::default()),
            parked_share: Cell::new(DEFAULT_PARKED_SHARE),
            moves_allowed: Cell::new(true),
            grace: RefCell::default(),
            left_log: RefCell::default(),
            sizer: RefCell::default(),
        })
    }

    /// Resident pages above which the evictor works: the budget less the slack. Prefetches and
    /// zero-fill windows stay below it too, so that they never push out a page in use.
    pub fn soft_limit(&self) -> usize {
        self.budget - self.slack
    }

    /// Chooses the share of the budget kept parked in the grace window, in percent (0: pages
    /// are saved as soon as they are parked).
    pub fn set_parked_share(&self, percent: u32) {
        self.parked_share.set(percent.min(MAX_PARKED_SHARE));
    }

    /// Evicts by write protection only, never by moving pages, as on a kernel without
    /// `UFFDIO_MOVE` (for tests and comparisons); takes effect for processes attached later.
    pub fn forbid_moves(&self) {
        self.moves_allowed.set(false);
    }

    /// Pages the evictor keeps parked in the grace window: the parked share of the budget,
    /// within what the parking areas leave beside the batches being saved, and at most what
    /// left memory over the last [`LEFT_WINDOW`]. The window probes the pages about to leave;
    /// a workload a little over its budget, which sheds a few hundred pages a second, would
    /// otherwise have a tenth of its budget parked and fault back on a tenth of its touches
    /// (random touches at a budget equal to their footprint: 5,926 rescues for 906 remote
    /// faults, docs/eviction.md).
    ///
    /// The share is scaled by [`GraceSizer`]: down to an eighth of it while the program takes
    /// two rescues or more per remote fault (the window then parks its working set), and back
    /// up while it takes few.
    fn grace_target(&self) -> usize {
        let share = self.budget * self.parked_share.get() as usize / 100;
        self.size_grace(share)
            .min(GRACE_MAX)
            .min(self.recently_left())
    }

    /// Tells the sizer the rescues and remote faults so far, and returns the window's size for
    /// a configured size of `share` pages.
    fn size_grace(&self, share: usize) -> usize {
        let sample = {
            let stats = self.stats.borrow();
            Sample {
                at: std::time::Instant::now(),
                rescues: stats.rescues,
                remote_faults: stats.remote_faults,
            }
        };
        let mut sizer = self.sizer.borrow_mut();
        if let Some(r) = sizer.observe(sample) {
            debug!(
                rescues_per_remote_fault = r.ratio,
                percent = r.percent,
                "grace window sized"
            );
            self.stats.borrow_mut().grace_scaled(r.percent);
        }
        sizer.size(share)
    }

    /// Notes `n` pages that left memory with a finished batch.
    fn note_left(&self, n: usize) {
        if n == 0 {
            return;
        }
        let now = std::time::Instant::now();
        let mut log = self.left_log.borrow_mut();
        log.push_back((now, n));
        prune_left(&mut log, now);
    }

    /// Pages that left memory over the last [`LEFT_WINDOW`].
    fn recently_left(&self) -> usize {
        let mut log = self.left_log.borrow_mut();
        prune_left(&mut log, std::time::Instant::now());
        log.iter().map(|e| e.1).sum()
    }

    /// Chooses the eviction policy (before any process attaches).
    pub fn set_policy(&self, policy: Policy) {
        self.policy.set(policy);
    }

    /// An empty page table for one of its processes.
    fn new_table(&self) -> PageTable<Box<dyn EvictionPolicy>> {
        let mut t = PageTable::with_slots(self.policy.get().build(), self.slots.clone());
        t.set_ghost_capacity(self.budget * GHOST_PERCENT / 100);
        t
    }

    /// Sets the pid of the program the workload runs (before its shim says hello).
    pub fn set_root(&self, pid: u32) {
        self.root.set(pid);
    }

    /// Pages resident (or about to be) in all its processes, a page shared copy-on-write by two
    /// of them counted once, and pages the program locked in memory not at all.
    pub fn resident(&self) -> usize {
        let sum: usize = self
            .procs
            .borrow()
            .iter()
            .map(|p| {
                // Locked pages come on top of the budget (`locked.rs`).
                (p.table.borrow().resident() + p.parking_freeing()).saturating_sub(p.locked.pages())
            })
            .sum();
        sum.saturating_sub(self.shared.get())
    }

    /// Of [`Self::resident`], pages on their way out: parked and being saved, or saved and
    /// being freed. Pages waiting in the grace window are not (yet).
    pub fn leaving(&self) -> usize {
        self.procs
            .borrow()
            .iter()
            .map(|p| p.parking_leaving())
            .sum()
    }

    /// Of [`Self::resident`], pages parked in the grace window (an access probe).
    pub fn graced(&self) -> usize {
        self.procs.borrow().iter().map(|p| p.parking_graced()).sum()
    }

    /// Sets [`Self::shared`] from the processes' shared pages. Each such page is counted in
    /// (at least) two processes, so half the total is what the tables count twice; a page shared
    /// by three processes is then counted a little too often, never too rarely.
    fn update_shared(&self) {
        let total: usize = self
            .procs
            .borrow()
            .iter()
            .map(|p| p.shared_pages.borrow().len())
            .sum();
        self.shared.set(total / 2);
    }

    /// Forgets what is shared (a process went: until the next measurement, count every page),
    /// except the estimate made at the fork of a child not paired yet, which [`process::sharing`]
    /// cannot measure before it has a pid: its inherited pages stay counted once with its parent,
    /// if the parent is still here. (Wiping it too counted parent and child twice until the child
    /// said hello, and faults waited for room that was there.)
    fn forget_shared(&self) {
        let procs = self.procs.borrow();
        for p in procs.iter().filter(|p| p.pid.get() != 0) {
            p.shared_pages.borrow_mut().clear();
        }
        for child in procs.iter().filter(|p| p.pid.get() == 0) {
            let parent = child.forked_from.get().and_then(|(pid, _)| {
                procs
                    .iter()
                    .find(|p| p.pid.get() == pid && !p.removed.get())
            });
            match parent {
                Some(parent) => parent
                    .shared_pages
                    .borrow_mut()
                    .extend(child.shared_pages.borrow().iter()),
                None => child.shared_pages.borrow_mut().clear(),
            }
        }
        drop(procs);
        self.update_shared();
    }

    /// Pids of its attached processes.
    pub fn pids(&self) -> Vec<u32> {
        self.procs
            .borrow()
            .iter()
            .map(|p| p.pid.get())
            .filter(|&p| p != 0)
            .collect()
    }

    /// SIGKILLs every attached process of the workload.
    pub(crate) fn kill_all(&self) {
        self.signal_all(libc::SIGKILL);
    }

    /// Sends `sig` to every attached process of the workload.
    pub(crate) fn signal_all(&self, sig: i32) {
        for pid in self.pids() {
            signal(pid, sig);
        }
    }

    /// Processes under management (attached or forked and not paired yet).
    pub fn process_count(&self) -> usize {
        self.procs.borrow().len()
    }

    /// The first fatal error, if any: the workload must be stopped.
    pub fn fatal(&self) -> Option<String> {
        self.fatal.borrow().clone()
    }

    /// Starts the evictor and the listener for shims connecting to `listener`.
    pub fn start(self: &Rc<Self>, listener: UnixListener) {
        let mut tasks = self.tasks.borrow_mut();
        tasks.push(tokio::task::spawn_local(evictor(self.clone())));
        tasks.push(tokio::task::spawn_local(repairer(self.clone())));
        tasks.push(tokio::task::spawn_local(sharing(self.clone())));
        tasks.push(tokio::task::spawn_local(accept_loop(
            self.clone(),
            listener,
        )));
    }

    /// Handles one shim connection: attaches the program or forked child that says hello.
    pub async fn hello(self: &Rc<Self>, stream: UnixStream) -> anyhow::Result<()> {
        tokio::time::timeout(Duration::from_secs(5), stream.readable())
            .await
            .context("no hello from the shim within 5 s")??;
        let peer = stream.peer_cred()?.pid();
        let std_stream = stream.into_std()?;
        std_stream.set_nonblocking(false)?;
        std_stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let hello = fdpass::recv_hello(&std_stream).context("handshake with the shim")?;
        std_stream.set_read_timeout(None)?;
        if peer != Some(hello.pid as i32) {
            bail!("a hello for pid {} came from pid {peer:?}", hello.pid);
        }
        let (stack, stack_len) = hello.helper_stack;
        match hello.kind {
            HelloKind::Api => {
                let p = self
                    .procs
                    .borrow()
                    .iter()
                    .find(|p| p.pid.get() == hello.pid && !p.removed.get())
                    .cloned();
                std_stream.set_nonblocking(true)?;
                let mut api = UnixStream::from_std(std_stream)?;
                let Some(p) = p else {
                    let _ = write_words(&mut api, &[proto::REFUSED]).await;
                    bail!("client API: process {} is not managed", hello.pid);
                };
                write_words(&mut api, &[proto::READY]).await?;
                let task = tokio::task::spawn_local(api_loop(p.clone(), api));
                p.tasks.borrow_mut().push(task);
            }
            HelloKind::Listener(fd) => {
                let afd =
                    Rc::new(crate::seccomp::watch(fd).context("watching a seccomp listener")?);
                self.listeners.borrow_mut().push(afd.clone());
                let task = tokio::task::spawn_local(intercept::serve(self.clone(), afd));
                self.tasks.borrow_mut().push(task);
                self.stats.borrow_mut().intercepting += 1;
                debug!(pid = hello.pid, "the shim hands mmap and brk to the agent");
            }
            HelloKind::Program(fd) => {
                // Under the daemon the program may say hello before `run` says which pid it is.
                if self.root.get() == 0 {
                    self.root.set(hello.pid);
                }
                let root = self.root.get();
                let known = self.procs.borrow().iter().any(|p| p.pid.get() == hello.pid);
                if !known && !procfs::descends_from(hello.pid, root) {
                    std_stream.set_nonblocking(true)?;
                    let mut shim = UnixStream::from_std(std_stream)?;
                    let _ = write_words(&mut shim, &[proto::REFUSED]).await;
                    self.stats.borrow_mut().unmanaged_processes += 1;
                    bail!("process {} is not part of this workload", hello.pid);
                }
                // The same process exec'd: its old address space is gone.
                let old: Vec<Rc<Proc>> = self
                    .procs
                    .borrow()
                    .iter()
                    .filter(|p| p.pid.get() == hello.pid)
                    .cloned()
                    .collect();
                for p in old {
                    p.remove();
                }
                let uffd = Uffd::new(fd).context("userfaultfd API handshake")?;
                debug!(
                    pid = hello.pid,
                    offered = format!("{:#x}", uffd.offered()),
                    "userfaultfd features the kernel offers"
                );
                if uffd.offered() & crate::uffd::FEATURE_RWP != 0 {
                    self.stats.borrow_mut().rwp_offered = true;
                }
                let p = Proc::new(
                    self,
                    uffd,
                    self.new_table(),
                    BTreeMap::new(),
                    BTreeMap::new(),
                );
                p.pid.set(hello.pid);
                p.refused.borrow_mut().insert(stack, stack + stack_len);
                p.set_up_parking(hello.parking);
                p.scan_maps();
                std_stream.set_nonblocking(true)?;
                let mut shim = UnixStream::from_std(std_stream)?;
                write_words(&mut shim, &[proto::READY]).await?;
                p.start_fault_loop();
                p.start_scanner();
                p.wait_for_helper(shim).await;
                self.stats.borrow_mut().attached += 1;
                info!(pid = hello.pid, workload = %self.name, "process under management");
            }
            HelloKind::Forked { ppid, seq } => {
                let child = self
                    .procs
                    .borrow()
                    .iter()
                    .find(|p| p.pid.get() == 0 && p.forked_from.get() == Some((ppid, seq)))
                    .cloned();
                let Some(p) = child else {
                    let _ = fdpass::send_with_fd(&std_stream, &[proto::REFUSED], -1);
                    bail!(
                        "process {} says it is fork {seq} of {ppid}, which is unknown",
                        hello.pid
                    );
                };
                p.pid.set(hello.pid);
                p.forked_from.set(None);
                p.refused.borrow_mut().insert(stack, stack + stack_len);
                // The child keeps its own copy of its uffd, as the first program does.
                fdpass::send_with_fd(&std_stream, &[proto::READY], p.uffd.as_raw_fd())
                    .context("handing the forked child its userfaultfd")?;
                std_stream.set_nonblocking(true)?;
                p.start_scanner();
                p.wait_for_helper(UnixStream::from_std(std_stream)?).await;
                self.stats.borrow_mut().attached += 1;
                debug!(pid = hello.pid, ppid, seq, "forked child under management");
            }
        }
        Ok(())
    }

    /// Removes processes whose address space is gone (exited or exec'd without the shim) and
    /// releases their remote pages. Returns how many processes remain.
    pub fn reap(&self) -> usize {
        let gone: Vec<Rc<Proc>> = self
            .procs
            .borrow()
            .iter()
            .filter(|p| !p.uffd.mm_alive(p.unregistered_page()))
            .cloned()
            .collect();
        for p in gone {
            debug!(pid = p.pid.get(), "address space gone");
            p.remove();
        }
        self.procs.borrow().len()
    }

    /// Samples managed resident bytes against the anonymous memory of the workload's processes
    /// (for the managed share). One process: its `RssAnon`. Several (after a fork): the sum of
    /// their `Pss_Anon`, which counts a page shared copy-on-write once, as the table does.
    pub fn sample_share(&self) {
        let pids = self.pids();
        let one = pids.len() == 1;
        let mut rss = 0;
        for pid in pids {
            let anon = if one {
                procfs::rss_anon(pid)
            } else {
                procfs::pss_anon(pid).or_else(|| procfs::rss_anon(pid))
            };
            rss += anon.unwrap_or(0);
        }
        let resident = self.resident() as u64 * PAGE;
        if rss > 0 {
            self.stats.borrow_mut().share_sample(resident, rss);
        }
    }

    /// Stops serving and frees every page of the workload on the servers; returns how many.
    pub async fn stop(&self) -> u64 {
        for t in self.tasks.borrow_mut().drain(..) {
            t.abort();
        }
        // Processes may still run under the filter without being managed (a statically linked
        // program, one started without the shim): someone must keep answering their calls.
        for l in self.listeners.borrow_mut().drain(..) {
            if crate::seccomp::in_use(l.get_ref()) {
                if let Err(e) = crate::seccomp::keep_letting_through(l.get_ref()) {
                    tracing::warn!("cannot leave a process to answer the seccomp filter: {e}; unmanaged processes of the workload that still run will see mmap fail");
                }
            }
        }
        let procs: Vec<Rc<Proc>> = self.procs.borrow_mut().drain(..).collect();
        for p in procs {
            p.abort_tasks();
        }
        self.servers.drop_space(self.space).await
    }

    fn fail(&self, msg: String) {
        let mut f = self.fatal.borrow_mut();
        if f.is_none() {
            tracing::error!("{msg}");
            *f = Some(msg);
        }
    }

    fn free_later(self: &Rc<Self>, released: Vec<Remote>) {
        if released.is_empty() {
            return;
        }
        tracing::trace!(target: "yonder_agent::slottrace", ?released, "release");
        let free = self.slots.borrow_mut().release(released);
        tracing::trace!(target: "yonder_agent::slottrace", ?free, "free");
        if free.is_empty() {
            return;
        }
        let g = self.clone();
        tokio::task::spawn_local(async move { g.servers.free(g.space, free).await });
    }

    fn after_resident_change(&self) {
        let resident = self.resident();
        self.stats.borrow_mut().resident(resident);
        if resident > self.soft_limit() {
            self.pressure.notify_one();
        }
    }

    fn over_hard_limit(&self) -> bool {
        self.resident() >= self.budget
            && !self.stuck_warned.get()
            && !self.forks_hold_back.get()
            && !self.servers_refuse.get()
    }

    fn retry_deferred(&self) {
        let procs: Vec<Rc<Proc>> = self.procs.borrow().clone();
        for p in procs {
            p.retry_deferred();
        }
    }
}

async fn accept_loop(g: Rc<Group>, listener: UnixListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let g2 = g.clone();
        tokio::task::spawn_local(async move {
            if let Err(e) = g2.hello(stream).await {
                debug!("a process of the workload stays unmanaged: {e:#}");
            }
        });
    }
}
