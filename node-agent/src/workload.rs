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

use std::{
    cell::{Cell, RefCell},
    collections::{BTreeMap, HashMap, HashSet},
    io,
    os::fd::{AsRawFd, OwnedFd},
    rc::Rc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{UnixListener, UnixStream},
    sync::Notify,
};
use tracing::{debug, info, warn};
use yonder_common::protocol::PageData;

use crate::{
    eviction::Clock,
    fdpass::{self, HelloKind},
    pages::{MissingFault, PageTable, Remote, Slots, State, WriteFault, PAGE},
    procfs,
    remote::Servers,
    shim_proto as proto,
    stats::Stats,
    uffd::{Event, Install, Uffd},
};

/// Pages evicted per batch.
pub const EVICT_BATCH: usize = 256;
/// Most pages fetched ahead of a sequential run of remote faults.
const PREFETCH_MAX: u64 = 16;
/// Most never-touched pages zero-filled ahead of a sequential run of zero-fill faults.
const ZERO_AHEAD_MAX: u64 = 32;
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
    /// Budget in pages.
    pub budget: usize,
    /// Pages it may be over budget while the evictor catches up.
    pub slack: usize,
    /// The first program's pid: processes that descend from it may attach.
    root: Cell<u32>,
    procs: RefCell<Vec<Rc<Proc>>>,
    pressure: Notify,
    stuck_warned: Cell<bool>,
    fatal: RefCell<Option<String>>,
    tasks: RefCell<Vec<tokio::task::JoinHandle<()>>>,
    /// Numbers drop requests to the shims.
    next_drop_id: Cell<u64>,
    /// The last eviction batch could store nothing (servers full or unreachable).
    servers_refuse: Cell<bool>,
    /// Resident pages counted in two processes' tables that are one page of memory (shared
    /// copy-on-write since a fork): subtracted from the sum of the tables (see [`Self::resident`]).
    shared: Cell<usize>,
}

/// One process of a workload (one address space, one uffd).
struct Proc {
    g: Rc<Group>,
    /// 0 for a forked child until its shim says hello.
    pid: Cell<u32>,
    /// For a forked child not paired yet: its parent and which of the parent's forks it is.
    forked_from: Cell<Option<(u32, u64)>>,
    /// Fork events seen on this process's uffd.
    forks: Cell<u64>,
    uffd: Rc<Uffd>,
    table: RefCell<PageTable<Clock>>,
    /// Ranges registered with the uffd: start -> end.
    registered: RefCell<BTreeMap<u64, u64>>,
    /// Ranges that could not be registered (left alone): start -> end.
    refused: RefCell<BTreeMap<u64, u64>>,
    /// Per page, how many REMOVE events our own drops still owe us.
    our_drops: RefCell<HashMap<u64, u32>>,
    /// Faults that wait for room under the budget.
    deferred: RefCell<Vec<(u64, bool)>>,
    /// Runs of remote faults, most recent first (at most [`STREAMS`]): the end of the run's
    /// last fetch (the faulting page or the farthest one prefetched with it), how many remote
    /// faults in a row continued it, and whether it runs down. Several, so that threads each
    /// walking their own part of memory keep their own runs.
    streams: RefCell<Vec<(u64, u32, bool)>>,
    /// Page the next zero-fill fault of a sequential run is expected at, and the run's length.
    next_zero: Cell<(u64, u32)>,
    /// The shim's helper, once attached (taken out while an eviction talks to it).
    shim: RefCell<Option<UnixStream>>,
    tasks: RefCell<Vec<tokio::task::JoinHandle<()>>>,
    /// No longer part of the workload (exited, or replaced by an exec).
    removed: Cell<bool>,
    /// The shim's helper runs: drops can be asked for.
    helper_up: Cell<bool>,
    /// Its resident pages that another process of the workload maps too (copy-on-write since a
    /// fork): evicting one would free nothing. Refreshed by [`sharing`].
    shared_pages: RefCell<HashSet<u64>>,
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
    pub fn new(name: String, servers: Rc<Servers>, budget: usize, slack: usize) -> Rc<Self> {
        Rc::new(Self {
            name,
            space: random_space(),
            servers,
            slots: Rc::default(),
            stats: Rc::new(RefCell::new(Stats::default())),
            budget,
            slack,
            root: Cell::new(0),
            procs: RefCell::default(),
            pressure: Notify::new(),
            stuck_warned: Cell::new(false),
            fatal: RefCell::default(),
            tasks: RefCell::default(),
            next_drop_id: Cell::new(0),
            servers_refuse: Cell::new(false),
            shared: Cell::new(0),
        })
    }

    /// Sets the pid of the program the workload runs (before its shim says hello).
    pub fn set_root(&self, pid: u32) {
        self.root.set(pid);
    }

    /// Pages resident (or about to be) in all its processes, a page shared copy-on-write by two
    /// of them counted once.
    pub fn resident(&self) -> usize {
        let sum: usize = self
            .procs
            .borrow()
            .iter()
            .map(|p| p.table.borrow().resident())
            .sum();
        sum.saturating_sub(self.shared.get())
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

    /// Forgets what is shared (a process went: until the next measurement, count every page).
    fn forget_shared(&self) {
        for p in self.procs.borrow().iter() {
            p.shared_pages.borrow_mut().clear();
        }
        self.shared.set(0);
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
                let p = Proc::new(
                    self,
                    uffd,
                    PageTable::with_slots(Clock::default(), self.slots.clone()),
                    BTreeMap::new(),
                    BTreeMap::new(),
                );
                p.pid.set(hello.pid);
                p.refused.borrow_mut().insert(stack, stack + stack_len);
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

    /// Resident managed bytes and RssAnon bytes of its processes (for the managed share).
    pub fn sample_share(&self) {
        let mut rss = 0;
        for pid in self.pids() {
            rss += procfs::rss_anon(pid).unwrap_or(0);
        }
        let resident = self.resident() as u64 * PAGE;
        if rss > 0 {
            self.stats.borrow_mut().share_samples.push((resident, rss));
        }
    }

    /// Stops serving and frees every page of the workload on the servers; returns how many.
    pub async fn stop(&self) -> u64 {
        for t in self.tasks.borrow_mut().drain(..) {
            t.abort();
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
        let free = self.slots.borrow_mut().release(released);
        if free.is_empty() {
            return;
        }
        let g = self.clone();
        tokio::task::spawn_local(async move { g.servers.free(g.space, free).await });
    }

    fn after_resident_change(&self) {
        let resident = self.resident();
        self.stats.borrow_mut().resident(resident);
        if resident > self.budget {
            self.pressure.notify_one();
        }
    }

    fn over_hard_limit(&self) -> bool {
        self.resident() >= self.budget + self.slack
            && !self.stuck_warned.get()
            && !self.servers_refuse.get()
    }

    fn retry_deferred(&self) {
        let procs: Vec<Rc<Proc>> = self.procs.borrow().clone();
        for p in procs {
            p.retry_deferred();
        }
    }
}

/// After a memory server goes down, copies every page it was a home of from a surviving replica
/// to the next server of the page's ranking, until every page has its replicas again.
async fn repairer(g: Rc<Group>) {
    let mut cursor = 0;
    // Pages a pass could not give their replicas back (too few servers up): retried.
    let mut short: Vec<Remote> = Vec::new();
    loop {
        tokio::time::sleep(Duration::from_millis(if short.is_empty() {
            200
        } else {
            1000
        }))
        .await;
        // Servers that went down, or came back (perhaps restarted empty), since the last pass.
        let changed = g.servers.changed_since(&mut cursor);
        if changed.is_empty() && short.is_empty() {
            continue;
        }
        let mut todo: HashMap<u64, u64> = short.drain(..).map(|r| (r.slot, r.version)).collect();
        if !changed.is_empty() && g.servers.policy().replicas >= 2 {
            // Every slot the workload refers to whose home includes such a server.
            for p in g.procs.borrow().iter() {
                for r in p.table.borrow().all_references() {
                    if changed.iter().any(|&d| g.servers.is_home(r.slot, d)) {
                        let v = todo.entry(r.slot).or_insert(r.version);
                        *v = (*v).max(r.version);
                    }
                }
            }
            info!(
                pages = todo.len(),
                "re-replicating after memory-server changes"
            );
        }
        if todo.is_empty() {
            continue;
        }
        let affected: Vec<Remote> = todo
            .into_iter()
            .map(|(slot, version)| Remote { slot, version })
            .collect();
        let mut deficit = affected.len() as u64;
        g.stats.borrow_mut().repair(0, deficit);
        for chunk in affected.chunks(64) {
            // Pages freed meanwhile need no copy.
            let live: Vec<Remote> = chunk
                .iter()
                .copied()
                .filter(|r| g.slots.borrow().is_referenced(r.slot))
                .collect();
            let reads = g.servers.read_for_repair(g.space, &live).await;
            let mut items = Vec::new();
            for (r, read) in live.iter().zip(reads) {
                match read {
                    crate::remote::RepairRead::Data(d) => {
                        items.push((*r, PageData::from_bytes(&d)))
                    }
                    // Rewritten since: that write placed its own replicas.
                    crate::remote::RepairRead::Newer => {}
                    // Only on servers that are down now: try again later.
                    crate::remote::RepairRead::Unavailable => short.push(*r),
                }
            }
            let written: Vec<Remote> = items.iter().map(|(r, _)| *r).collect();
            let stored = g.servers.write(g.space, items).await;
            let mut done = 0;
            for (r, ok) in written.into_iter().zip(stored) {
                if ok {
                    done += 1;
                } else {
                    short.push(r);
                }
            }
            deficit = deficit.saturating_sub(chunk.len() as u64);
            g.stats
                .borrow_mut()
                .repair(done, deficit + short.len() as u64);
        }
        if short.is_empty() {
            info!("re-replication done");
        } else {
            debug!(short = short.len(), "pages still short of replicas");
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

impl Proc {
    fn new(
        g: &Rc<Group>,
        uffd: Uffd,
        table: PageTable<Clock>,
        registered: BTreeMap<u64, u64>,
        refused: BTreeMap<u64, u64>,
    ) -> Rc<Self> {
        let p = Rc::new(Self {
            g: g.clone(),
            pid: Cell::new(0),
            forked_from: Cell::new(None),
            forks: Cell::new(0),
            uffd: Rc::new(uffd),
            table: RefCell::new(table),
            registered: RefCell::new(registered),
            refused: RefCell::new(refused),
            our_drops: RefCell::default(),
            deferred: RefCell::default(),
            streams: RefCell::default(),
            next_zero: Cell::new((0, 0)),
            shim: RefCell::default(),
            tasks: RefCell::default(),
            removed: Cell::new(false),
            helper_up: Cell::new(false),
            shared_pages: RefCell::default(),
        });
        g.procs.borrow_mut().push(p.clone());
        p
    }

    /// Enables eviction once the shim's helper runs (its thread may need faults served first).
    /// Without a helper (the process ended first, or the helper failed) nothing is evicted
    /// from this process; its faults are still served.
    async fn wait_for_helper(&self, mut shim: UnixStream) {
        let up = tokio::time::timeout(Duration::from_secs(30), read_words(&mut shim)).await;
        match up {
            Ok(Ok(words)) if words == [proto::HELPER_UP] => {
                *self.shim.borrow_mut() = Some(shim);
                self.helper_up.set(true);
            }
            other => {
                let pid = self.pid.get();
                if procfs::rss_anon(pid).is_some() {
                    debug!("the shim helper in process {pid} did not start ({other:?}): nothing will be evicted from it");
                } else {
                    debug!("process {pid} ended before its shim's helper started");
                }
            }
        }
    }

    fn start_fault_loop(self: &Rc<Self>) {
        self.tasks
            .borrow_mut()
            .push(tokio::task::spawn_local(fault_loop(self.clone())));
    }

    fn start_scanner(self: &Rc<Self>) {
        self.tasks
            .borrow_mut()
            .push(tokio::task::spawn_local(scanner(self.clone())));
    }

    fn abort_tasks(&self) {
        for t in self.tasks.borrow_mut().drain(..) {
            t.abort();
        }
    }

    /// The process is gone (or replaced by an exec): stop serving it, release its pages.
    fn remove(self: &Rc<Self>) {
        if self.removed.replace(true) {
            return;
        }
        self.abort_tasks();
        self.g.procs.borrow_mut().retain(|p| !Rc::ptr_eq(p, self));
        self.g.forget_shared();
        let refs = self.table.borrow().all_references();
        self.g.free_later(refs);
        self.shim.borrow_mut().take();
        self.g.pressure.notify_one();
    }

    /// A page no registered range of this process covers (for [`Uffd::mm_alive`]).
    fn unregistered_page(&self) -> u64 {
        let mut a = 0x10000;
        for (&s, &e) in self.registered.borrow().iter() {
            if s <= a && a < e {
                a = e;
            }
        }
        a
    }

    fn fail(&self, msg: String) {
        // A process that is exiting (or already a zombie) makes the work in flight fail; that is
        // not an error worth reporting.
        let pid = self.pid.get();
        if self.removed.get() || pid == 0 || procfs::rss_anon(pid).is_none() {
            debug!("after the process ended: {msg}");
            return;
        }
        self.g.fail(msg);
    }

    /// Registers anonymous mappings not registered yet, and counts their present pages.
    fn scan_maps(self: &Rc<Self>) {
        let pid = self.pid.get();
        let ranges = match procfs::anonymous_ranges(pid) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                debug!(pid, "process gone");
                self.remove();
                return;
            }
            Err(e) => {
                debug!("reading the mappings of {pid}: {e}");
                return;
            }
        };
        for (start, end) in ranges {
            let gaps = uncovered(
                &self.registered.borrow(),
                &self.refused.borrow(),
                start,
                end,
            );
            for (s, e) in gaps {
                match self.uffd.register(s, e - s) {
                    Ok(()) => {
                        self.registered.borrow_mut().insert(s, e);
                        if let Ok(present) = procfs::present_pages(pid, s, e) {
                            let mut t = self.table.borrow_mut();
                            for p in present {
                                t.found_present(p);
                            }
                        }
                    }
                    Err(err) => {
                        debug!("cannot register {s:#x}-{e:#x}: {err}");
                        self.refused.borrow_mut().insert(s, e);
                    }
                }
            }
        }
        self.g.after_resident_change();
    }

    fn forget_range(&self, start: u64, end: u64) {
        cut(&mut self.registered.borrow_mut(), start, end);
        cut(&mut self.refused.borrow_mut(), start, end);
    }

    /// The process forked: serve the child's memory from now on, with a copy of this table.
    fn forked(self: &Rc<Self>, fd: OwnedFd) {
        let seq = self.forks.get() + 1;
        self.forks.set(seq);
        // The parent waits in fork() until this event is read, so its mappings' flags are those
        // the kernel copied by. Should they be unreadable, every page is inherited: a wiped
        // range would then read the parent's data in the child, so say so.
        let pid = self.pid.get();
        let not_inherited = procfs::not_inherited_ranges(pid).unwrap_or_else(|e| {
            warn!(pid, "reading /proc/{pid}/smaps at a fork: {e}; MADV_WIPEONFORK and MADV_DONTFORK ranges are inherited");
            Vec::new()
        });
        let table = self
            .table
            .borrow()
            .fork_clone(Clock::default(), &not_inherited);
        // A wiped range stays registered in the child (the kernel keeps the registration of
        // every mapping it copies); a MADV_DONTFORK one is not mapped there, and its stale entry
        // only makes the scanner skip that address.
        let child = Proc::new(
            &self.g,
            Uffd::forked(fd),
            table,
            self.registered.borrow().clone(),
            self.refused.borrow().clone(),
        );
        child.forked_from.set(Some((self.pid.get(), seq)));
        // Right after the fork every page the child has is the parent's, shared copy-on-write:
        // count it once until `sharing` measures what writes have since separated.
        let inherited = child.table.borrow().resident_pages();
        self.shared_pages.borrow_mut().extend(&inherited);
        child.shared_pages.borrow_mut().extend(inherited);
        self.g.update_shared();
        child.start_fault_loop();
        debug!(parent = self.pid.get(), seq, "fork");
        self.g.after_resident_change();
    }

    fn handle_event(self: &Rc<Self>, event: Event) {
        match event {
            Event::Remove { start, end } => {
                let mut program = Vec::new();
                {
                    let mut ours = self.our_drops.borrow_mut();
                    let mut p = start;
                    while p < end {
                        match ours.get_mut(&p) {
                            Some(n) if *n > 0 => *n -= 1,
                            _ => program.push(p),
                        }
                        p += PAGE;
                    }
                }
                let mut garbage = Vec::new();
                for (s, len) in runs(&program) {
                    garbage.extend(self.table.borrow_mut().program_dropped(s, s + len));
                }
                self.g.free_later(garbage);
            }
            Event::Unmap { start, end } => {
                let garbage = self.table.borrow_mut().unmapped(start, end);
                self.forget_range(start, end);
                self.g.free_later(garbage);
            }
            Event::Remap { from, to, len } => {
                let garbage = self.table.borrow_mut().remapped(from, to, len);
                self.forget_range(from, from + len);
                // The new range keeps its registration; record it so the scanner skips it.
                self.registered.borrow_mut().insert(to, to + len);
                self.g.free_later(garbage);
            }
            Event::Fork { ufd } => self.forked(crate::uffd::adopt_fork_fd(ufd)),
            Event::Fault { .. } => unreachable!("faults are handled by handle_fault"),
            Event::Other(kind) => warn!("unexpected userfaultfd event {kind}"),
        }
    }

    fn handle_fault(self: &Rc<Self>, page: u64, write: bool, wp: bool, at: Instant) {
        if wp {
            self.g.stats.borrow_mut().wp_fault();
            let action = self.table.borrow_mut().write_fault(page);
            let r = match action {
                WriteFault::Unprotect => match self.uffd.write_protect(page, PAGE, false) {
                    // The address space is changing (an event is pending): retry after the fault
                    // loop has read it, or the writer would stay blocked.
                    Ok(Install::Again) => {
                        let p = self.clone();
                        tokio::task::spawn_local(async move {
                            tokio::task::yield_now().await;
                            p.handle_fault(page, true, true, Instant::now());
                        });
                        Ok(())
                    }
                    r => r.map(|_| ()),
                },
                // Woken when the eviction ends.
                WriteFault::WaitForEviction => Ok(()),
                WriteFault::Wake => self.uffd.wake(page, PAGE),
            };
            if let Err(e) = r {
                self.fail(format!("write-protect fault at {page:#x}: {e}"));
            }
            return;
        }
        let decision = self.table.borrow().missing_fault(page);
        tracing::trace!(page, ?decision, "missing fault");
        match decision {
            MissingFault::InFlight | MissingFault::WaitForEviction => {}
            MissingFault::ZeroFill | MissingFault::Fetch(_) if self.g.over_hard_limit() => {
                self.deferred.borrow_mut().push((page, write));
                self.g.pressure.notify_one();
            }
            MissingFault::ZeroFill => {
                let evicting = matches!(self.table.borrow().state(page), Some(State::Evicting(_)));
                // Under eviction the page must stay write-protected, so install zeros with WP.
                let r = if write || evicting {
                    self.uffd.copy(page, &ZEROS, evicting)
                } else {
                    self.uffd.zeropage(page)
                };
                match r {
                    Ok(Install::Done | Install::Exists) => {
                        let garbage = self.table.borrow_mut().zero_filled(page);
                        self.g.free_later(garbage.into_iter().collect());
                        self.g.stats.borrow_mut().zero_fault();
                        if !evicting {
                            self.zero_fill_ahead(page, write);
                        }
                        self.g.after_resident_change();
                    }
                    Ok(Install::Again) => self.retry_fault(page, write),
                    Ok(Install::Gone) => {}
                    Err(e) => self.fail(format!("cannot zero-fill {page:#x}: {e}")),
                }
            }
            MissingFault::Fetch(remote) => {
                if self.table.borrow_mut().start_fetch(page) {
                    let batch = self.with_prefetch(page, remote);
                    self.g.after_resident_change();
                    tokio::task::spawn_local(fetch(self.clone(), batch, write, at));
                }
            }
        }
    }

    /// After zero-fill faults on consecutive pages (a program filling fresh memory), installs
    /// zeros on the never-touched pages that follow `page`, a window doubling up to
    /// [`ZERO_AHEAD_MAX`], within its registered range and the free budget, so the program takes
    /// one fault per window instead of one per page. Each page is installed by its own ioctl and
    /// recorded only when the kernel installed it; the first page that is known to the table,
    /// already present, or refused ends the window. Zero-filled pages count as dirty (a later
    /// write to a shared zero page is not seen), so an eviction writes them (as zero pages).
    fn zero_fill_ahead(&self, page: u64, write: bool) {
        let (expected, run) = self.next_zero.get();
        let run = if page == expected { run + 1 } else { 0 };
        let window = if run == 0 {
            0
        } else {
            (1u64 << run.min(6)).min(ZERO_AHEAD_MAX)
        };
        let end = self
            .registered
            .borrow()
            .range(..=page)
            .next_back()
            .map_or(page, |(_, &e)| e);
        let mut room = self.g.budget.saturating_sub(self.g.resident() + 1);
        let mut next = page + PAGE;
        {
            let mut t = self.table.borrow_mut();
            while next < end && next <= page + window * PAGE && room > 0 {
                if t.state(next).is_some() {
                    break;
                }
                let r = if write {
                    self.uffd.copy(next, &ZEROS, false)
                } else {
                    self.uffd.zeropage(next)
                };
                if !matches!(r, Ok(Install::Done)) {
                    break;
                }
                let garbage = t.zero_filled(next);
                debug_assert!(garbage.is_none(), "a never-touched page had a remote copy");
                room -= 1;
                next += PAGE;
            }
        }
        self.next_zero.set((next, run));
    }

    /// The faulting page plus, after remote faults that continue a run of pages upwards or
    /// downwards (a program walking an array backwards, or freeing a list from its end), the
    /// evicted pages that come next in that direction (a window doubling up to PREFETCH_MAX), all
    /// marked as being fetched. A run continues from the end of the last fetch, prefetched pages
    /// included, so that the window can grow.
    fn with_prefetch(&self, page: u64, remote: Remote) -> Vec<(u64, Remote)> {
        let (run, down) = track_stream(&mut self.streams.borrow_mut(), page);
        let mut batch = vec![(page, remote)];
        if run >= 2 {
            self.prefetch_into(&mut batch, run, down);
        }
        let end = batch.last().map_or(page, |b| b.0);
        self.streams.borrow_mut()[0].0 = end;
        batch
    }

    /// Adds to `batch` (the faulting page) the evicted pages after it, or before it when `down`.
    fn prefetch_into(&self, batch: &mut Vec<(u64, Remote)>, run: u32, down: bool) {
        let page = batch[0].0;
        let window = (1u64 << run.min(4)).min(PREFETCH_MAX);
        let mut room = self.g.budget.saturating_sub(self.g.resident() + 1);
        let mut t = self.table.borrow_mut();
        for i in 1..=window {
            let next = if down {
                match page.checked_sub(i * PAGE) {
                    Some(n) => n,
                    None => break,
                }
            } else {
                page + i * PAGE
            };
            if room == 0 {
                break;
            }
            match t.state(next) {
                Some(State::Evicted { remote }) if t.start_fetch(next) => {
                    batch.push((next, remote));
                    room -= 1;
                }
                _ => break,
            }
        }
    }

    fn retry_fault(self: &Rc<Self>, page: u64, write: bool) {
        let p = self.clone();
        tokio::task::spawn_local(async move {
            // EAGAIN: the address space is changing; let the fault loop read the events first.
            tokio::task::yield_now().await;
            p.handle_fault(page, write, false, Instant::now());
        });
    }

    fn retry_deferred(self: &Rc<Self>) {
        let deferred = std::mem::take(&mut *self.deferred.borrow_mut());
        for (page, write) in deferred {
            self.handle_fault(page, write, false, Instant::now());
        }
    }
}

/// Serves one client-API connection of a process (see `proto::API_MAGIC`).
async fn api_loop(p: Rc<Proc>, mut s: UnixStream) {
    loop {
        let Ok(words) = read_words(&mut s).await else {
            return;
        };
        let op = words.first().copied().unwrap_or(0);
        let errno = match words[..] {
            [op, start, len] => p.api(op, start, len).await,
            _ => libc::EINVAL,
        };
        if write_words(&mut s, &[op, errno as u64]).await.is_err() {
            return;
        }
    }
}

/// Removes `[start, end)` from a map of ranges, splitting what overlaps.
fn cut(map: &mut BTreeMap<u64, u64>, start: u64, end: u64) {
    let overlapping: Vec<(u64, u64)> = map
        .range(..end)
        .filter(|(_, &e)| e > start)
        .map(|(&s, &e)| (s, e))
        .collect();
    for (s, e) in overlapping {
        map.remove(&s);
        if s < start {
            map.insert(s, start);
        }
        if e > end {
            map.insert(end, e);
        }
    }
}

impl Proc {
    /// Runs one client-API request; returns 0 or an errno.
    async fn api(self: &Rc<Self>, op: u64, start: u64, len: u64) -> i32 {
        let Some(end) = start.checked_add(len) else {
            return libc::EINVAL;
        };
        if !start.is_multiple_of(PAGE) || !len.is_multiple_of(PAGE) || len == 0 {
            return libc::EINVAL;
        }
        if matches!(op, proto::OP_PREFETCH | proto::OP_FLUSH) {
            // As madvise(2): the whole range must be mapped.
            let Ok(ranges) = procfs::all_ranges(self.pid.get()) else {
                return libc::ESRCH;
            };
            let mapped: BTreeMap<u64, u64> = ranges.into_iter().collect();
            if !uncovered(&mapped, &BTreeMap::new(), start, end).is_empty() {
                return libc::ENOMEM;
            }
        }
        match op {
            proto::OP_REGISTER => self.api_register(start, end),
            proto::OP_UNREGISTER => self.api_unregister(start, end).await,
            proto::OP_PREFETCH => {
                self.prefetch_range(start, end);
                0
            }
            proto::OP_FLUSH => self.api_flush(start, end).await,
            _ => libc::EOPNOTSUPP,
        }
    }

    fn api_register(&self, start: u64, end: u64) -> i32 {
        // Only private anonymous writable memory can be paged (shared memory keeps its pages in
        // the page cache whatever the agent drops).
        let Ok(ranges) = procfs::anonymous_ranges(self.pid.get()) else {
            return libc::ESRCH;
        };
        if !uncovered(&ranges.into_iter().collect(), &BTreeMap::new(), start, end).is_empty() {
            return libc::EINVAL;
        }
        if let Err(e) = self.uffd.register(start, end - start) {
            return e.raw_os_error().unwrap_or(libc::EINVAL);
        }
        cut(&mut self.refused.borrow_mut(), start, end);
        cut(&mut self.registered.borrow_mut(), start, end);
        self.registered.borrow_mut().insert(start, end);
        if let Ok(present) = procfs::present_pages(self.pid.get(), start, end) {
            let mut t = self.table.borrow_mut();
            for p in present {
                t.found_present(p);
            }
        }
        self.g.after_resident_change();
        0
    }

    /// Starts fetching the evicted pages of `[start, end)`, as far as the budget has room.
    fn prefetch_range(self: &Rc<Self>, start: u64, end: u64) {
        let evicted: Vec<(u64, Remote)> = self
            .table
            .borrow()
            .states_in(start, end)
            .into_iter()
            .filter_map(|(pg, st)| match st {
                State::Evicted { remote } => Some((pg, remote)),
                _ => None,
            })
            .collect();
        let room = self.g.budget.saturating_sub(self.g.resident());
        let mut batch = Vec::new();
        for (pg, remote) in evicted.into_iter().take(room.max(1)) {
            if self.table.borrow_mut().start_fetch(pg) {
                batch.push((pg, remote));
            }
            if batch.len() == 64 {
                let b = std::mem::take(&mut batch);
                tokio::task::spawn_local(fetch(self.clone(), b, false, Instant::now()));
            }
        }
        if !batch.is_empty() {
            tokio::task::spawn_local(fetch(self.clone(), batch, false, Instant::now()));
        }
        self.g.after_resident_change();
    }

    async fn api_unregister(self: &Rc<Self>, start: u64, end: u64) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // Bring every evicted page back and wait for what is in flight.
            let busy = self
                .table
                .borrow()
                .states_in(start, end)
                .iter()
                .any(|(_, st)| !matches!(st, State::Resident { .. }));
            if !busy {
                // No await from here on: nothing can start evicting these pages meanwhile.
                match self.uffd.write_protect(start, end - start, false) {
                    Ok(Install::Again) => {}
                    Ok(_) => {
                        if let Err(e) = self.uffd.unregister(start, end - start) {
                            return e.raw_os_error().unwrap_or(libc::EINVAL);
                        }
                        let garbage = self.table.borrow_mut().unmapped(start, end);
                        cut(&mut self.registered.borrow_mut(), start, end);
                        self.refused.borrow_mut().insert(start, end);
                        self.g.free_later(garbage);
                        return 0;
                    }
                    Err(e) => return e.raw_os_error().unwrap_or(libc::EINVAL),
                }
            }
            if Instant::now() > deadline {
                return libc::ETIMEDOUT;
            }
            self.prefetch_range(start, end);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    async fn api_flush(self: &Rc<Self>, start: u64, end: u64) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(60);
        // Right after a fork or start the shim's helper may not be up yet: wait for it.
        while !self.helper_up.get() {
            if self.removed.get() || Instant::now() > deadline {
                return libc::EAGAIN;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // The evictor may be using the shim: wait for it.
        let mut shim = loop {
            if let Some(s) = self.shim.borrow_mut().take() {
                break s;
            }
            if self.removed.get() || Instant::now() > deadline {
                return libc::ESRCH;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let pages: Vec<u64> = self
            .table
            .borrow()
            .states_in(start, end)
            .into_iter()
            .filter(|(_, st)| matches!(st, State::Resident { .. }))
            .map(|(pg, _)| pg)
            .collect();
        let victims = self.table.borrow_mut().start_eviction_of(pages);
        let id = self.g.next_drop_id.get() + 1;
        self.g.next_drop_id.set(id);
        let r = if victims.is_empty() {
            Ok(Saved {
                written: 0,
                failed: 0,
            })
        } else {
            evict(self, victims, &mut shim, id).await
        };
        *self.shim.borrow_mut() = Some(shim);
        match r {
            Ok(Saved { failed: 0, .. }) => 0,
            Ok(_) => libc::ENOSPC,
            Err(e) => {
                warn!("flush of {start:#x}-{end:#x} failed: {e:#}");
                libc::EIO
            }
        }
    }
}

/// Parts of `[start, end)` not in `registered` nor `refused`.
fn uncovered(
    registered: &BTreeMap<u64, u64>,
    refused: &BTreeMap<u64, u64>,
    start: u64,
    end: u64,
) -> Vec<(u64, u64)> {
    let mut covered: Vec<(u64, u64)> = registered
        .range(..end)
        .chain(refused.range(..end))
        .filter(|(_, &e)| e > start)
        .map(|(&s, &e)| (s.max(start), e.min(end)))
        .collect();
    covered.sort();
    let mut out = Vec::new();
    let mut at = start;
    for (s, e) in covered {
        if s > at {
            out.push((at, s));
        }
        at = at.max(e);
    }
    if at < end {
        out.push((at, end));
    }
    out
}

async fn fault_loop(p: Rc<Proc>) {
    let afd = match crate::uffd::watch(&p.uffd) {
        Ok(a) => a,
        Err(e) => {
            p.fail(format!("watching the userfaultfd: {e}"));
            return;
        }
    };
    let mut events = Vec::with_capacity(64);
    loop {
        let mut guard = match afd.readable().await {
            Ok(g) => g,
            Err(e) => {
                p.fail(format!("userfaultfd: {e}"));
                return;
            }
        };
        events.clear();
        if let Err(e) = p.uffd.read_events(&mut events) {
            p.fail(format!("reading the userfaultfd: {e}"));
            return;
        }
        if events.is_empty() {
            guard.clear_ready();
            continue;
        }
        drop(guard);
        tracing::trace!(?events, "uffd events");
        let now = Instant::now();
        // Changes to the address space first, so that faults in the same batch see them.
        for &e in &events {
            if !matches!(e, Event::Fault { .. }) {
                p.handle_event(e);
            }
        }
        for &e in &events {
            if let Event::Fault { page, write, wp } = e {
                p.handle_fault(page, write, wp, now);
            }
        }
    }
}

/// Runs of remote faults tracked per process.
const STREAMS: usize = 8;

/// Finds the run a remote fault at `page` continues (else starts one, forgetting the least
/// recently used beyond [`STREAMS`]), moves it to the front as `(page, run, down)`, and returns
/// its new length and direction.
fn track_stream(streams: &mut Vec<(u64, u32, bool)>, page: u64) -> (u32, bool) {
    let found = streams.iter().enumerate().find_map(|(i, &s)| {
        let (run, down) = continue_run(s, page);
        (run > 0).then_some((i, run, down))
    });
    let (run, down) = match found {
        Some((i, run, down)) => {
            streams.remove(i);
            (run, down)
        }
        None => {
            streams.truncate(STREAMS - 1);
            (0, false)
        }
    };
    streams.insert(0, (page, run, down));
    (run, down)
}

/// The run a remote fault at `page` makes after `(end of the last fetch, run, down)`: one longer
/// if it is the next page in the run's direction (either, when no run is under way), else none.
fn continue_run((last, run, down): (u64, u32, bool), page: u64) -> (u32, bool) {
    if page == last.wrapping_add(PAGE) && (run == 0 || !down) {
        (run + 1, false)
    } else if page == last.wrapping_sub(PAGE) && (run == 0 || down) {
        (run + 1, true)
    } else {
        (0, false)
    }
}

/// Fetches the faulting page (first in `batch`) and any prefetched ones in one request, and
/// installs them; prefetched pages are installed write-protected, as clean copies.
async fn fetch(p: Rc<Proc>, batch: Vec<(u64, Remote)>, write: bool, at: Instant) {
    let remotes: Vec<Remote> = batch.iter().map(|b| b.1).collect();
    let pages = match p.g.servers.read_many(p.g.space, &remotes).await {
        Ok(d) => d,
        Err(e) => {
            p.fail(format!(
                "the page at {:#x} cannot be read back: {e}",
                batch[0].0
            ));
            return;
        }
    };
    for (i, ((page, remote), data)) in batch.into_iter().zip(pages).enumerate() {
        let faulting = i == 0;
        let dirty = faulting && write;
        loop {
            if !p.table.borrow().fetch_wanted(page, remote) {
                break;
            }
            // A read installs the page write-protected: it is clean until a write says otherwise.
            match p.uffd.copy(page, &data, !dirty) {
                Ok(Install::Done | Install::Exists) => {
                    p.table.borrow_mut().fetched(page, remote, dirty);
                    let mut stats = p.g.stats.borrow_mut();
                    if faulting {
                        stats.remote_fault(at.elapsed());
                    } else {
                        stats.prefetched();
                    }
                    break;
                }
                Ok(Install::Again) => tokio::task::yield_now().await,
                Ok(Install::Gone) => break,
                Err(e) => {
                    p.fail(format!("cannot install the page at {page:#x}: {e}"));
                    return;
                }
            }
        }
    }
}

async fn scanner(p: Rc<Proc>) {
    loop {
        p.scan_maps();
        tokio::time::sleep(SCAN_INTERVAL).await;
    }
}

/// How often [`sharing`] measures which pages processes of a workload share.
const SHARING_INTERVAL: Duration = Duration::from_millis(250);

/// While the workload has several processes, measures which of their resident pages are shared
/// copy-on-write (pagemap, off the fault thread), so that such a page counts once against the
/// budget and is not picked for an eviction that would free nothing. Writes separate pages between
/// two measurements; until the next one they count once, so the workload can be over its budget
/// by what it wrote in that time (see docs/fork-and-processes.md).
async fn sharing(g: Rc<Group>) {
    loop {
        tokio::time::sleep(SHARING_INTERVAL).await;
        let procs: Vec<Rc<Proc>> = g.procs.borrow().clone();
        if procs.len() < 2 {
            if g.shared.get() != 0 {
                g.forget_shared();
            }
            continue;
        }
        if procs.iter().any(|p| p.pid.get() == 0) {
            continue; // a child not paired yet: keep the estimate made at its fork
        }
        let jobs: Vec<(u32, Vec<u64>)> = procs
            .iter()
            .map(|p| (p.pid.get(), p.table.borrow().resident_pages()))
            .collect();
        let measured = tokio::task::spawn_blocking(move || {
            jobs.into_iter()
                .map(|(pid, pages)| procfs::shared_pages(pid, &pages))
                .collect::<io::Result<Vec<Vec<u64>>>>()
        })
        .await;
        let Ok(Ok(measured)) = measured else {
            continue; // a process went meanwhile: its removal reset the count
        };
        let now = g.procs.borrow();
        if now.len() != procs.len() || now.iter().zip(&procs).any(|(a, b)| !Rc::ptr_eq(a, b)) {
            continue;
        }
        drop(now);
        for (p, pages) in procs.iter().zip(measured) {
            *p.shared_pages.borrow_mut() = pages.into_iter().collect();
        }
        g.update_shared();
        g.after_resident_change();
    }
}

/// Evicts from the process with the most resident pages while the workload is over budget.
async fn evictor(g: Rc<Group>) {
    loop {
        tokio::select! {
            () = g.pressure.notified() => {}
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        let low = g
            .budget
            .saturating_sub((g.budget / 16).max(EVICT_BATCH / 4));
        while g.resident() > g.budget {
            let want = (g.resident() - low).min(EVICT_BATCH);
            let mut procs: Vec<Rc<Proc>> = g
                .procs
                .borrow()
                .iter()
                .filter(|p| p.shim.borrow().is_some())
                .cloned()
                .collect();
            procs.sort_by_key(|p| std::cmp::Reverse(p.table.borrow().resident()));
            // Pages only one process maps first: evicting a page a forked relative shares frees
            // nothing until both have dropped it.
            let mut chosen = None;
            'pick: for only_unshared in [true, false] {
                for p in &procs {
                    let shared = p.shared_pages.borrow();
                    if !only_unshared && shared.is_empty() {
                        continue;
                    }
                    let victims = if only_unshared {
                        p.table.borrow_mut().start_eviction_except(want, &shared)
                    } else {
                        p.table.borrow_mut().start_eviction(want)
                    };
                    if !victims.is_empty() {
                        chosen = Some((p.clone(), victims));
                        break 'pick;
                    }
                }
            }
            let Some((p, victims)) = chosen else {
                let ready = g.procs.borrow().iter().any(|p| p.shim.borrow().is_some());
                if !ready {
                    // No helper is up yet (a process is still starting): not stuck, just early.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                if !g.stuck_warned.replace(true) {
                    eprintln!(
                        "yonder: nothing can be evicted right now (every resident page is in flight); the workload runs over its budget"
                    );
                }
                g.retry_deferred();
                break;
            };
            g.stuck_warned.set(false);
            let next_id = g.next_drop_id.get() + 1;
            g.next_drop_id.set(next_id);
            debug!(batch = victims.len(), pid = p.pid.get(), "evicting");
            let Some(mut shim) = p.shim.borrow_mut().take() else {
                continue;
            };
            let r = evict(&p, victims, &mut shim, next_id).await;
            match r {
                Ok(Saved { written, failed }) => {
                    *p.shim.borrow_mut() = Some(shim);
                    if written > 0 && g.servers_refuse.replace(false) {
                        eprintln!("yonder: the memory servers take pages again: eviction resumed");
                    }
                    if failed > 0 && written == 0 {
                        // Nothing could be stored: servers full or unreachable. Let the workload
                        // run over its budget (faults must not wait for room that cannot come)
                        // and try again in a second rather than hammer the servers.
                        if !g.servers_refuse.replace(true) {
                            eprintln!(
                                "yonder: the memory servers take no more pages (full or unreachable): eviction paused, the workload runs over its budget"
                            );
                        }
                        g.retry_deferred();
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        break;
                    }
                }
                Err(e) => {
                    // A process that ended mid-eviction is reaped; anything else is fatal.
                    p.fail(format!("eviction failed: {e:#}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            g.retry_deferred();
        }
        g.retry_deferred();
    }
}

/// Sets or clears write protection, retrying while the address space is changing (EAGAIN: the
/// fault loop must read a pending event first). A range that vanished is not an error.
async fn write_protect(p: &Proc, start: u64, len: u64, on: bool) -> io::Result<()> {
    loop {
        match p.uffd.write_protect(start, len, on)? {
            Install::Again => tokio::task::yield_now().await,
            Install::Done | Install::Exists | Install::Gone => return Ok(()),
        }
    }
}

/// Evicts a batch without losing a racing write: write-protect, copy out, write to the servers,
/// drop inside the process, then wake whoever blocked meanwhile.
/// What an eviction batch managed to store.
struct Saved {
    /// Pages written to the servers.
    written: u64,
    /// Pages that could not be stored (they stay resident).
    failed: u64,
}

async fn evict(
    p: &Rc<Proc>,
    victims: Vec<(u64, Remote, bool)>,
    shim: &mut UnixStream,
    id: u64,
) -> anyhow::Result<Saved> {
    let pid = p.pid.get();
    let mut pages: Vec<u64> = victims.iter().map(|v| v.0).collect();
    pages.sort_unstable();
    let all_runs = runs(&pages);
    for &(start, len) in &all_runs {
        write_protect(p, start, len, true)
            .await
            .with_context(|| format!("write-protecting {start:#x}+{len:#x}"))?;
    }

    // Copy out the pages that need writing; pages no longer present were dropped by the program.
    let to_write: Vec<(u64, Remote)> = victims.iter().filter(|v| v.2).map(|v| (v.0, v.1)).collect();
    let mut present = HashSet::new();
    for &(start, len) in &runs(&to_write.iter().map(|x| x.0).collect::<Vec<_>>()) {
        present.extend(procfs::present_pages(pid, start, start + len)?);
    }
    let readable: Vec<u64> = to_write
        .iter()
        .map(|x| x.0)
        .filter(|pg| present.contains(pg))
        .collect();
    let (readable, contents) = tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; readable.len() * PAGE as usize];
        procfs::read_pages(pid, &readable, &mut buf).map(|()| (readable, buf))
    })
    .await??;
    let mut content_of: HashMap<u64, &[u8]> = HashMap::new();
    for (i, pg) in readable.iter().enumerate() {
        content_of.insert(*pg, &contents[i * PAGE as usize..(i + 1) * PAGE as usize]);
    }
    let items: Vec<(Remote, PageData)> = to_write
        .iter()
        .map(|(pg, r)| {
            (
                *r,
                content_of
                    .get(pg)
                    .map_or(PageData::Zero, |b| PageData::from_bytes(b)),
            )
        })
        .collect();
    let stored = p.g.servers.write(p.g.space, items).await;

    let mut garbage = Vec::new();
    let mut failed = Vec::new();
    for ((page, _), ok) in to_write.iter().zip(&stored) {
        if !ok {
            failed.push(*page);
        }
    }
    if !failed.is_empty() {
        warn!(
            "{} pages could not be stored; they stay resident",
            failed.len()
        );
        for &pg in &failed {
            garbage.extend(p.table.borrow_mut().abort_eviction(pg));
            write_protect(p, pg, PAGE, false).await?;
        }
    }

    // Drop what is still being evicted (the program may have unmapped or moved pages meanwhile).
    let mut drop_pages = Vec::new();
    {
        let mut t = p.table.borrow_mut();
        let mut ours = p.our_drops.borrow_mut();
        for &pg in &pages {
            if t.dropping(pg) {
                drop_pages.push(pg);
                *ours.entry(pg).or_default() += 1;
            }
        }
    }
    let drop_runs = runs(&drop_pages);
    let mut errno = 0;
    for chunk in drop_runs.chunks(proto::MAX_RANGES) {
        let mut words = vec![proto::DROP, id, chunk.len() as u64];
        for &(s, l) in chunk {
            words.extend([s, l]);
        }
        write_words(shim, &words)
            .await
            .context("sending a drop to the shim")?;
        let reply = read_words(shim)
            .await
            .context("the shim did not answer a drop (process gone?)")?;
        if reply.len() != 3 || reply[0] != proto::DROPPED || reply[1] != id {
            bail!("unexpected reply from the shim: {reply:?}");
        }
        errno = errno.max(reply[2]);
    }
    {
        let mut ours = p.our_drops.borrow_mut();
        for pg in &drop_pages {
            ours.remove(pg);
        }
    }
    // Pages the shim did not drop (no longer ours, or madvise failed) are still present: those
    // still being evicted stay resident.
    let mut still_present = HashSet::new();
    for &(start, len) in &drop_runs {
        still_present.extend(procfs::present_pages(pid, start, start + len)?);
    }
    let mut done = 0u64;
    for &pg in &drop_pages {
        if still_present.contains(&pg) {
            garbage.extend(p.table.borrow_mut().abort_eviction(pg));
            write_protect(p, pg, PAGE, false).await?;
        } else {
            garbage.extend(p.table.borrow_mut().finish_eviction(pg));
            done += 1;
        }
    }
    for &(start, len) in &all_runs {
        p.uffd.wake(start, len)?;
    }
    let written = to_write.len() as u64 - failed.len() as u64;
    debug!(
        victims = pages.len(),
        written,
        failed = failed.len(),
        dropped = drop_pages.len(),
        done,
        errno,
        still_present = still_present.len(),
        "evicted"
    );
    p.g.stats.borrow_mut().evictions(done, written.min(done));
    let resident = p.g.resident();
    p.g.stats.borrow_mut().resident(resident);
    p.g.free_later(garbage);
    Ok(Saved {
        written,
        failed: failed.len() as u64,
    })
}

async fn write_words(stream: &mut UnixStream, words: &[u64]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(8 * (words.len() + 1));
    buf.extend_from_slice(&(words.len() as u64).to_le_bytes());
    for w in words {
        buf.extend_from_slice(&w.to_le_bytes());
    }
    stream.write_all(&buf).await
}

async fn read_words(stream: &mut UnixStream) -> io::Result<Vec<u64>> {
    let n = stream.read_u64_le().await? as usize;
    if n == 0 || n > proto::MAX_WORDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad message from the shim",
        ));
    }
    let mut words = Vec::with_capacity(n);
    for _ in 0..n {
        words.push(stream.read_u64_le().await?);
    }
    Ok(words)
}

fn runs(pages: &[u64]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &pg in pages {
        match out.last_mut() {
            Some((start, len)) if *start + *len == pg => *len += PAGE,
            _ => out.push((pg, PAGE)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_fault_runs_go_either_way_and_continue_after_a_prefetch() {
        let p = 100 * PAGE;
        // Up: p, p+1, p+2 make a run of 2 (the prefetch threshold).
        let (r, d) = continue_run((0, 0, false), p);
        assert_eq!((r, d), (0, false));
        let (r, d) = continue_run((p, r, d), p + PAGE);
        let (r, d) = continue_run((p + PAGE, r, d), p + 2 * PAGE);
        assert_eq!((r, d), (2, false));
        // After a prefetch that ended at p+6, a fault at p+7 continues the run.
        assert_eq!(continue_run((p + 6 * PAGE, r, d), p + 7 * PAGE), (3, false));
        // Down, the same.
        let (r, d) = continue_run((p, 0, false), p - PAGE);
        let (r, d) = continue_run((p - PAGE, r, d), p - 2 * PAGE);
        assert_eq!((r, d), (2, true));
        // A turn or a jump ends a run.
        assert_eq!(continue_run((p, 3, true), p + PAGE), (0, false));
        assert_eq!(continue_run((p, 3, false), p + 9 * PAGE), (0, false));
    }

    #[test]
    fn two_threads_walking_their_own_pages_keep_their_own_runs() {
        let (a, b) = (100 * PAGE, 5000 * PAGE);
        let mut s = Vec::new();
        let mut last = (0, false);
        for i in 0..3 {
            last = track_stream(&mut s, a + i * PAGE);
            track_stream(&mut s, b - i * PAGE);
        }
        assert_eq!(
            last,
            (2, false),
            "the upward run survives the other thread's faults"
        );
        assert_eq!(track_stream(&mut s, b - 3 * PAGE), (3, true));
        // Random faults start runs of their own and push the oldest out, at most STREAMS.
        for i in 0..20 {
            track_stream(&mut s, (10_000 + 7 * i) * PAGE);
        }
        assert_eq!(s.len(), STREAMS);
        assert_eq!(track_stream(&mut s, a + 3 * PAGE), (0, false));
    }

    #[test]
    fn runs_merge_neighbours() {
        assert_eq!(
            runs(&[0, PAGE, 2 * PAGE, 5 * PAGE]),
            vec![(0, 3 * PAGE), (5 * PAGE, PAGE)]
        );
        assert!(runs(&[]).is_empty());
    }

    #[test]
    fn uncovered_finds_the_gaps() {
        let mut reg = BTreeMap::new();
        reg.insert(10, 20);
        reg.insert(30, 40);
        let refused = BTreeMap::new();
        assert_eq!(
            uncovered(&reg, &refused, 0, 50),
            vec![(0, 10), (20, 30), (40, 50)]
        );
        assert_eq!(uncovered(&reg, &refused, 12, 18), vec![]);
        assert_eq!(uncovered(&reg, &refused, 15, 35), vec![(20, 30)]);
    }
}
