//! `yonder-agent run`: launches a workload with the preload shim and serves its memory.
//!
//! Everything runs on one thread (a current-thread runtime): reading the uffd, fetching over QUIC,
//! installing pages, evicting. A wake-up on another vCPU costs ~20-25 µs on the machines this was
//! measured on, so the fault path has no thread hop. Only copying victims out of the workload
//! (`process_vm_readv`) runs on a blocking thread, because it could fault on the workload's memory
//! and must never wait for the very loop that serves that fault.

use std::{
    cell::{Cell, RefCell},
    collections::{BTreeMap, HashMap},
    ffi::OsString,
    io,
    net::SocketAddr,
    os::unix::process::{CommandExt, ExitStatusExt},
    path::PathBuf,
    process::ExitStatus,
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
use yonder_common::{client, protocol::PageData, tls, transport};

use crate::{
    embedded::Embedded,
    eviction::Clock,
    fdpass,
    pages::{MissingFault, PageTable, Remote, WriteFault, PAGE},
    procfs,
    remote::Servers,
    shim_proto as proto,
    stats::Stats,
    uffd::{Event, Install, Uffd},
};

/// Pages evicted per batch.
const EVICT_BATCH: usize = 256;
/// Most pages fetched ahead of a sequential run of remote faults.
const PREFETCH_MAX: u64 = 16;
/// How often the agent looks for new anonymous mappings of the workload.
const SCAN_INTERVAL: Duration = Duration::from_millis(10);

/// What `yonder-agent run` was asked to do.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Local-memory budget in bytes for the workload's managed memory.
    pub local_mem: u64,
    /// Memory servers (`HOST:PORT`); empty for the embedded default.
    pub servers: Vec<String>,
    /// Certificate directory (with `ca.pem` and the client certificate).
    pub tls_dir: PathBuf,
    /// File stem of the client certificate.
    pub cert_name: String,
    /// Fixed datagram size towards the servers.
    pub mtu: Option<u16>,
    /// Prometheus endpoint.
    pub metrics: Option<SocketAddr>,
    /// The program and its arguments.
    pub command: Vec<OsString>,
}

impl RunConfig {
    /// Budget in pages.
    pub fn budget_pages(&self) -> usize {
        (self.local_mem / PAGE) as usize
    }

    /// Pages the workload may be over budget while the evictor catches up: two batches.
    pub fn slack_pages(&self) -> usize {
        2 * EVICT_BATCH
    }
}

/// Runs the workload to completion and returns its exit status.
pub fn run(config: RunConfig) -> anyhow::Result<ExitStatus> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, run_async(config))
}

/// One managed workload.
struct Workload {
    pid: u32,
    space: u32,
    uffd: Rc<Uffd>,
    servers: Rc<Servers>,
    table: RefCell<PageTable<Clock>>,
    stats: Rc<RefCell<Stats>>,
    budget: usize,
    slack: usize,
    /// Ranges registered with the uffd: start -> end.
    registered: RefCell<BTreeMap<u64, u64>>,
    /// Ranges that could not be registered (left alone): start -> end.
    refused: RefCell<BTreeMap<u64, u64>>,
    /// Per page, how many REMOVE events our own drops still owe us.
    our_drops: RefCell<HashMap<u64, u32>>,
    /// Faults that wait for room under the budget.
    deferred: RefCell<Vec<(u64, bool)>>,
    /// Wakes the evictor.
    pressure: Notify,
    /// Set once to say "nothing can be evicted" only once per stretch.
    stuck_warned: Cell<bool>,
    /// First fatal error; the workload is killed when it is set.
    fatal: RefCell<Option<String>>,
    /// Last remote fault and how many remote faults in a row were on consecutive pages.
    last_remote: Cell<(u64, u32)>,
}

const ZEROS: [u8; PAGE as usize] = [0; PAGE as usize];

async fn run_async(config: RunConfig) -> anyhow::Result<ExitStatus> {
    if let Some(addr) = config.metrics {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .with_context(|| format!("metrics endpoint on {addr}"))?;
    }
    let (servers, _embedded) = connect_servers(&config).await?;
    let servers = Rc::new(servers);

    let dir = tempfile::Builder::new().prefix("yonder-run-").tempdir()?;
    let sock = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&sock)?;
    let mut child = spawn_workload(&config, &sock)?;
    let child_pid = child.id().unwrap_or(0);

    let accepted = tokio::select! {
        r = listener.accept() => Some(r?.0),
        status = child.wait() => {
            eprintln!("yonder: the program ended before loading the shim (statically linked, or LD_PRELOAD ignored): it ran unmanaged");
            return Ok(status?);
        }
        () = tokio::time::sleep(Duration::from_secs(10)) => None,
    };
    let Some(stream) = accepted else {
        eprintln!("yonder: the program did not load the shim within 10 s (statically linked?): it runs unmanaged");
        return Ok(child.wait().await?);
    };
    let stats = Rc::new(RefCell::new(Stats::default()));
    let started = Instant::now();
    let mut current = Attached::start(&config, &servers, &stats, stream, child_pid).await?;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status?,
            conn = listener.accept() => {
                let Ok((stream, _)) = conn else { continue };
                match Attached::start(&config, &servers, &stats, stream, current.w.pid).await {
                    // The same process exec'd a new program: its old address space is gone.
                    Ok(next) => {
                        let old = std::mem::replace(&mut current, next);
                        old.stop().await;
                    }
                    Err(e) => {
                        debug!("another process of the workload stays unmanaged: {e:#}");
                        stats.borrow_mut().unmanaged_processes += 1;
                    }
                }
            }
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                let fatal = current.w.fatal.borrow().clone();
                if let Some(msg) = fatal {
                    eprintln!("yonder: {msg}; stopping the workload");
                    let _ = child.start_kill();
                }
                let resident = current.w.table.borrow().resident();
                if let Some(rss) = procfs::rss_anon(current.w.pid) {
                    stats.borrow_mut().share_samples.push((resident as u64 * PAGE, rss));
                }
            }
        }
    };
    let freed = current.stop().await;
    eprint!(
        "{}",
        stats
            .borrow()
            .summary(config.budget_pages(), config.slack_pages())
    );
    eprintln!(
        "yonder: workload {} after {:.1} s; {} remote pages freed",
        describe(status),
        started.elapsed().as_secs_f64(),
        freed
    );
    Ok(status)
}

/// A process under management and the tasks serving it.
struct Attached {
    w: Rc<Workload>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Attached {
    /// Completes the handshake on `stream` and starts serving the process. Only `expected_pid`
    /// (the program, possibly after an exec) is accepted; anyone else is told to run unmanaged.
    async fn start(
        config: &RunConfig,
        servers: &Rc<Servers>,
        stats: &Rc<RefCell<Stats>>,
        stream: UnixStream,
        expected_pid: u32,
    ) -> anyhow::Result<Self> {
        let std_stream = stream.into_std()?;
        std_stream.set_nonblocking(false)?;
        std_stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let hello = fdpass::recv_hello(&std_stream).context("handshake with the shim")?;
        std_stream.set_read_timeout(None)?;
        std_stream.set_nonblocking(true)?;
        let mut shim = UnixStream::from_std(std_stream)?;
        if hello.pid != expected_pid {
            let _ = write_words(&mut shim, &[proto::REFUSED]).await;
            bail!(
                "process {} is not the managed program (fork and exec are not managed yet)",
                hello.pid
            );
        }
        let uffd = Uffd::new(hello.uffd).context("userfaultfd API handshake")?;
        // A space per address space: the pid (22 bits on Linux) plus how many programs this
        // process has exec'd, so the old program's pages can be dropped without the new one's.
        let generation = stats.borrow().attached;
        stats.borrow_mut().attached += 1;
        let w = Rc::new(Workload {
            pid: hello.pid,
            space: (generation << 22) | (hello.pid & 0x3f_ffff),
            uffd: Rc::new(uffd),
            servers: servers.clone(),
            table: RefCell::new(PageTable::new(Clock::default())),
            stats: stats.clone(),
            budget: config.budget_pages(),
            slack: config.slack_pages(),
            registered: RefCell::default(),
            refused: RefCell::default(),
            our_drops: RefCell::default(),
            deferred: RefCell::default(),
            pressure: Notify::new(),
            stuck_warned: Cell::new(false),
            fatal: RefCell::default(),
            last_remote: Cell::new((0, 0)),
        });
        let (stack, stack_len) = hello.helper_stack;
        w.refused.borrow_mut().insert(stack, stack + stack_len);
        w.scan_maps();
        write_words(&mut shim, &[proto::READY]).await?;
        info!(
            pid = w.pid,
            budget_pages = w.budget,
            "workload under management"
        );
        let tasks = vec![
            tokio::task::spawn_local(fault_loop(w.clone())),
            tokio::task::spawn_local(scanner(w.clone())),
            tokio::task::spawn_local(evictor(w.clone(), shim)),
        ];
        Ok(Self { w, tasks })
    }

    /// Stops serving and frees the process's pages on the servers; returns how many.
    async fn stop(self) -> u64 {
        for t in self.tasks {
            t.abort();
        }
        self.w.servers.drop_space(self.w.space).await
    }
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (_, Some(s)) => format!("was killed by signal {s}"),
        _ => "ended".into(),
    }
}

async fn connect_servers(config: &RunConfig) -> anyhow::Result<(Servers, Option<Embedded>)> {
    let (specs, files, mtu, embedded) = if config.servers.is_empty() {
        let e = Embedded::start(u64::MAX / 2).context("starting the embedded memory server")?;
        let files = tls::TlsFiles::in_dir(e.certs(), yonder_common::certs::DEFAULT_CLIENT);
        (
            vec![e.addr.to_string()],
            files,
            Some(transport::PAGE_MTU),
            Some(e),
        )
    } else {
        let files = tls::TlsFiles::in_dir(&config.tls_dir, &config.cert_name);
        (config.servers.clone(), files, config.mtu, None)
    };
    let tls = tls::client_config(&files, mtu)
        .with_context(|| format!("loading the client certificate {}", files.cert.display()))?;
    let mut clients = Vec::new();
    for spec in &specs {
        let (addr, host) = client::resolve(spec).await?;
        let endpoint = client::endpoint(tls.clone(), addr.is_ipv6())?;
        let c = client::Client::connect(&endpoint, addr, &host, "yonder-agent")
            .await
            .with_context(|| format!("connecting to memory server {spec}"))?;
        clients.push((spec.clone(), c));
    }
    Ok((Servers::new(clients), embedded))
}

fn spawn_workload(
    config: &RunConfig,
    sock: &std::path::Path,
) -> anyhow::Result<tokio::process::Child> {
    let shim = shim_path()?;
    let preload = match std::env::var_os("LD_PRELOAD") {
        Some(old) if !old.is_empty() => {
            let mut v = shim.clone().into_os_string();
            v.push(":");
            v.push(old);
            v
        }
        _ => shim.into_os_string(),
    };
    let (program, args) = config.command.split_first().context("no program to run")?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .env("LD_PRELOAD", preload)
        .env(proto::SOCKET_ENV, sock);
    // SAFETY: runs between fork and exec: prctl(2) only, async-signal-safe, no allocation.
    unsafe {
        cmd.pre_exec(|| {
            // If the agent dies, the workload dies too rather than wait forever on its faults.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = tokio::process::Command::from(cmd)
        .spawn()
        .with_context(|| format!("cannot run {}", program.to_string_lossy()))?;
    Ok(child)
}

/// The shim library: next to the agent binary.
fn shim_path() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("agent binary has no directory")?;
    for candidate in [
        dir.join("libyonder_shim.so"),
        dir.join("../lib/yonder/libyonder_shim.so"),
    ] {
        if candidate.exists() {
            return Ok(candidate.canonicalize()?);
        }
    }
    bail!("libyonder_shim.so not found next to {}", exe.display())
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
    for &p in pages {
        match out.last_mut() {
            Some((start, len)) if *start + *len == p => *len += PAGE,
            _ => out.push((p, PAGE)),
        }
    }
    out
}

impl Workload {
    fn fail(&self, msg: String) {
        // A workload that is exiting (or already a zombie) makes the work in flight fail; that is
        // not an error worth reporting.
        if procfs::rss_anon(self.pid).is_none() {
            debug!("after the workload ended: {msg}");
            return;
        }
        let mut f = self.fatal.borrow_mut();
        if f.is_none() {
            tracing::error!("{msg}");
            *f = Some(msg);
        }
    }

    fn free_later(self: &Rc<Self>, garbage: Vec<crate::pages::Remote>) {
        if garbage.is_empty() {
            return;
        }
        let w = self.clone();
        tokio::task::spawn_local(async move { w.servers.free(w.space, garbage).await });
    }

    /// Registers anonymous mappings not registered yet, and counts their present pages.
    fn scan_maps(&self) {
        let ranges = match procfs::anonymous_ranges(self.pid) {
            Ok(r) => r,
            Err(e) => {
                debug!("reading the workload's mappings: {e}");
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
                        if let Ok(present) = procfs::present_pages(self.pid, s, e) {
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
        let resident = self.table.borrow().resident();
        self.stats.borrow_mut().resident(resident);
        if resident > self.budget {
            self.pressure.notify_one();
        }
    }

    fn forget_range(&self, start: u64, end: u64) {
        for map in [&self.registered, &self.refused] {
            let mut m = map.borrow_mut();
            let overlapping: Vec<(u64, u64)> = m
                .range(..end)
                .filter(|(_, &e)| e > start)
                .map(|(&s, &e)| (s, e))
                .collect();
            for (s, e) in overlapping {
                m.remove(&s);
                if s < start {
                    m.insert(s, start);
                }
                if e > end {
                    m.insert(end, e);
                }
            }
        }
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
                self.free_later(garbage);
            }
            Event::Unmap { start, end } => {
                let garbage = self.table.borrow_mut().unmapped(start, end);
                self.forget_range(start, end);
                self.free_later(garbage);
            }
            Event::Remap { from, to, len } => {
                self.table.borrow_mut().remapped(from, to, len);
                self.forget_range(from, from + len);
                // The new range keeps its registration; record it so the scanner skips it.
                self.registered.borrow_mut().insert(to, to + len);
            }
            Event::Fault { .. } => unreachable!("faults are handled by handle_fault"),
            Event::Other(kind) => warn!("unexpected userfaultfd event {kind}"),
        }
    }

    fn handle_fault(self: &Rc<Self>, page: u64, write: bool, wp: bool, at: Instant) {
        if wp {
            self.stats.borrow_mut().wp_fault();
            let action = self.table.borrow_mut().write_fault(page);
            let r = match action {
                WriteFault::Unprotect => match self.uffd.write_protect(page, PAGE, false) {
                    // The address space is changing (an event is pending): retry after the fault
                    // loop has read it, or the writer would stay blocked.
                    Ok(Install::Again) => {
                        let w = self.clone();
                        tokio::task::spawn_local(async move {
                            tokio::task::yield_now().await;
                            w.handle_fault(page, true, true, Instant::now());
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
        tracing::trace!(page, ?decision, state = ?self.table.borrow().state(page), "missing fault");
        match decision {
            MissingFault::InFlight | MissingFault::WaitForEviction => {}
            MissingFault::ZeroFill | MissingFault::Fetch(_) if self.over_hard_limit() => {
                self.deferred.borrow_mut().push((page, write));
                self.pressure.notify_one();
            }
            MissingFault::ZeroFill => {
                let evicting = matches!(
                    self.table.borrow().state(page),
                    Some(crate::pages::State::Evicting(_))
                );
                // Under eviction the page must stay write-protected, so install zeros with WP.
                let r = if write || evicting {
                    self.uffd.copy(page, &ZEROS, evicting)
                } else {
                    self.uffd.zeropage(page)
                };
                match r {
                    Ok(Install::Done | Install::Exists) => {
                        let garbage = self.table.borrow_mut().zero_filled(page);
                        self.free_later(garbage.into_iter().collect());
                        self.stats.borrow_mut().zero_fault();
                        self.after_resident_change();
                    }
                    Ok(Install::Again) => self.retry_fault(page, write),
                    Ok(Install::Gone) => {}
                    Err(e) => self.fail(format!("cannot zero-fill {page:#x}: {e}")),
                }
            }
            MissingFault::Fetch(remote) => {
                if self.table.borrow_mut().start_fetch(page) {
                    let batch = self.with_prefetch(page, remote);
                    self.after_resident_change();
                    tokio::task::spawn_local(fetch(self.clone(), batch, write, at));
                }
            }
        }
    }

    /// The faulting page plus, after consecutive remote faults, the evicted pages that follow it
    /// (a window doubling up to PREFETCH_MAX), all marked as being fetched.
    fn with_prefetch(&self, page: u64, remote: Remote) -> Vec<(u64, Remote)> {
        let (last, run) = self.last_remote.get();
        let run = if page == last + PAGE { run + 1 } else { 0 };
        self.last_remote.set((page, run));
        let mut batch = vec![(page, remote)];
        if run < 2 {
            return batch;
        }
        let window = (1u64 << run.min(4)).min(PREFETCH_MAX);
        let mut t = self.table.borrow_mut();
        for i in 1..=window {
            let next = page + i * PAGE;
            if t.resident() + 1 >= self.budget {
                break;
            }
            match t.state(next) {
                Some(crate::pages::State::Evicted { remote }) if t.start_fetch(next) => {
                    batch.push((next, remote))
                }
                _ => break,
            }
        }
        batch
    }

    fn over_hard_limit(&self) -> bool {
        self.table.borrow().resident() >= self.budget + self.slack && !self.stuck_warned.get()
    }

    fn after_resident_change(&self) {
        let resident = self.table.borrow().resident();
        self.stats.borrow_mut().resident(resident);
        if resident > self.budget {
            self.pressure.notify_one();
        }
    }

    fn retry_fault(self: &Rc<Self>, page: u64, write: bool) {
        let w = self.clone();
        tokio::task::spawn_local(async move {
            // EAGAIN: the address space is changing; let the fault loop read the events first.
            tokio::task::yield_now().await;
            w.handle_fault(page, write, false, Instant::now());
        });
    }

    fn retry_deferred(self: &Rc<Self>) {
        let deferred = std::mem::take(&mut *self.deferred.borrow_mut());
        for (page, write) in deferred {
            self.handle_fault(page, write, false, Instant::now());
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

async fn fault_loop(w: Rc<Workload>) {
    let afd = match crate::uffd::watch(&w.uffd) {
        Ok(a) => a,
        Err(e) => {
            w.fail(format!("watching the userfaultfd: {e}"));
            return;
        }
    };
    let mut events = Vec::with_capacity(64);
    loop {
        let mut guard = match afd.readable().await {
            Ok(g) => g,
            Err(e) => {
                w.fail(format!("userfaultfd: {e}"));
                return;
            }
        };
        events.clear();
        if let Err(e) = w.uffd.read_events(&mut events) {
            w.fail(format!("reading the userfaultfd: {e}"));
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
                w.handle_event(e);
            }
        }
        for &e in &events {
            if let Event::Fault { page, write, wp } = e {
                w.handle_fault(page, write, wp, now);
            }
        }
    }
}

/// Fetches the faulting page (first in `batch`) and any prefetched ones in one request, and
/// installs them; prefetched pages are installed write-protected, as clean copies.
async fn fetch(w: Rc<Workload>, batch: Vec<(u64, Remote)>, write: bool, at: Instant) {
    let remotes: Vec<Remote> = batch.iter().map(|b| b.1).collect();
    let pages = match w.servers.read_many(w.space, &remotes).await {
        Ok(d) => d,
        Err(e) => {
            w.fail(format!(
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
            if !w.table.borrow().fetch_wanted(page, remote) {
                break;
            }
            // A read installs the page write-protected: it is clean until a write says otherwise.
            match w.uffd.copy(page, &data, !dirty) {
                Ok(Install::Done | Install::Exists) => {
                    w.table.borrow_mut().fetched(page, remote, dirty);
                    let mut stats = w.stats.borrow_mut();
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
                    w.fail(format!("cannot install the page at {page:#x}: {e}"));
                    return;
                }
            }
        }
    }
}

async fn scanner(w: Rc<Workload>) {
    loop {
        tokio::time::sleep(SCAN_INTERVAL).await;
        w.scan_maps();
    }
}

async fn evictor(w: Rc<Workload>, mut shim: UnixStream) {
    let mut next_id = 0u64;
    loop {
        tokio::select! {
            () = w.pressure.notified() => {}
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        let low = w
            .budget
            .saturating_sub((w.budget / 16).max(EVICT_BATCH / 4));
        while w.table.borrow().resident() > w.budget {
            let want = (w.table.borrow().resident() - low).min(EVICT_BATCH);
            let victims = w.table.borrow_mut().start_eviction(want);
            if victims.is_empty() {
                if !w.stuck_warned.replace(true) {
                    eprintln!(
                        "yonder: nothing can be evicted right now (every resident page is in flight); the workload runs over its budget"
                    );
                }
                w.retry_deferred();
                break;
            }
            w.stuck_warned.set(false);
            next_id += 1;
            debug!(
                batch = victims.len(),
                resident = w.table.borrow().resident(),
                "evicting"
            );
            if let Err(e) = evict(&w, victims, &mut shim, next_id).await {
                w.fail(format!("eviction failed: {e}"));
                return;
            }
            w.retry_deferred();
        }
        w.retry_deferred();
    }
}

/// Sets or clears write protection, retrying while the address space is changing (EAGAIN: the
/// fault loop must read a pending event first). A range that vanished is not an error.
async fn write_protect(w: &Workload, start: u64, len: u64, on: bool) -> io::Result<()> {
    loop {
        match w.uffd.write_protect(start, len, on)? {
            Install::Again => tokio::task::yield_now().await,
            Install::Done | Install::Exists | Install::Gone => return Ok(()),
        }
    }
}

/// Evicts a batch without losing a racing write: write-protect, copy out, write to the servers,
/// drop inside the workload, then wake whoever blocked meanwhile.
async fn evict(
    w: &Rc<Workload>,
    victims: Vec<(u64, Remote, bool)>,
    shim: &mut UnixStream,
    id: u64,
) -> anyhow::Result<()> {
    let mut pages: Vec<u64> = victims.iter().map(|v| v.0).collect();
    pages.sort_unstable();
    let all_runs = runs(&pages);
    for &(start, len) in &all_runs {
        write_protect(w, start, len, true)
            .await
            .with_context(|| format!("write-protecting {start:#x}+{len:#x}"))?;
    }

    // Copy out the pages that need writing; pages no longer present were dropped by the program.
    let to_write: Vec<(u64, Remote)> = victims.iter().filter(|v| v.2).map(|v| (v.0, v.1)).collect();
    let mut present = std::collections::HashSet::new();
    for &(start, len) in &runs(&to_write.iter().map(|x| x.0).collect::<Vec<_>>()) {
        present.extend(procfs::present_pages(w.pid, start, start + len)?);
    }
    let readable: Vec<u64> = to_write
        .iter()
        .map(|x| x.0)
        .filter(|p| present.contains(p))
        .collect();
    let pid = w.pid;
    let (readable, contents) = tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; readable.len() * PAGE as usize];
        procfs::read_pages(pid, &readable, &mut buf).map(|()| (readable, buf))
    })
    .await??;
    let mut content_of: HashMap<u64, &[u8]> = HashMap::new();
    for (i, p) in readable.iter().enumerate() {
        content_of.insert(*p, &contents[i * PAGE as usize..(i + 1) * PAGE as usize]);
    }
    let items: Vec<(Remote, PageData)> = to_write
        .iter()
        .map(|(p, r)| {
            (
                *r,
                content_of
                    .get(p)
                    .map_or(PageData::Zero, |b| PageData::from_bytes(b)),
            )
        })
        .collect();
    let stored = w.servers.write(w.space, items).await;

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
        for &p in &failed {
            w.table.borrow_mut().abort_eviction(p);
            write_protect(w, p, PAGE, false).await?;
        }
    }

    // Drop what is still being evicted (the program may have unmapped or moved pages meanwhile).
    let mut drop_pages = Vec::new();
    {
        let mut t = w.table.borrow_mut();
        let mut ours = w.our_drops.borrow_mut();
        for &p in &pages {
            if t.dropping(p) {
                drop_pages.push(p);
                *ours.entry(p).or_default() += 1;
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
            .context("the shim did not answer a drop (workload gone?)")?;
        if reply.len() != 3 || reply[0] != proto::DROPPED || reply[1] != id {
            bail!("unexpected reply from the shim: {reply:?}");
        }
        errno = errno.max(reply[2]);
    }
    {
        let mut ours = w.our_drops.borrow_mut();
        for p in &drop_pages {
            ours.remove(p);
        }
    }
    // Pages the shim did not drop (no longer ours, or madvise failed) are still present: those
    // still being evicted stay resident.
    let mut still_present = std::collections::HashSet::new();
    for &(start, len) in &drop_runs {
        still_present.extend(procfs::present_pages(w.pid, start, start + len)?);
    }
    let mut garbage = Vec::new();
    let mut done = 0u64;
    for &p in &drop_pages {
        if still_present.contains(&p) {
            w.table.borrow_mut().abort_eviction(p);
            write_protect(w, p, PAGE, false).await?;
        } else {
            garbage.extend(w.table.borrow_mut().finish_eviction(p));
            done += 1;
        }
    }
    for &(start, len) in &all_runs {
        w.uffd.wake(start, len)?;
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
    w.stats.borrow_mut().evictions(done, written.min(done));
    let resident = w.table.borrow().resident();
    w.stats.borrow_mut().resident(resident);
    w.free_later(garbage);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
