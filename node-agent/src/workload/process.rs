//! One process of a workload: its uffd, page table and registered ranges; address-space events
//! (remove, unmap, remap, fork); the scanner that registers new mappings; the measurement of
//! pages shared between processes.

use std::{
    cell::{Cell, RefCell},
    collections::{BTreeMap, HashMap, HashSet},
    io,
    os::fd::OwnedFd,
    rc::Rc,
    time::Duration,
};

use tokio::net::UnixStream;
use tracing::{debug, warn};

use super::{
    faults::fault_loop,
    shim_link::{read_words, runs},
    Group, SCAN_INTERVAL,
};
use crate::{
    eviction::{EvictionPolicy, Parking},
    pages::{PageTable, PAGE},
    procfs, shim_proto as proto,
    uffd::{Event, Install, Uffd},
};

/// One process of a workload (one address space, one uffd).
pub(super) struct Proc {
    pub(super) g: Rc<Group>,
    /// 0 for a forked child until its shim says hello.
    pub(super) pid: Cell<u32>,
    /// For a forked child not paired yet: its parent and which of the parent's forks it is.
    pub(super) forked_from: Cell<Option<(u32, u64)>>,
    /// Fork events seen on this process's uffd.
    pub(super) forks: Cell<u64>,
    pub(super) uffd: Rc<Uffd>,
    pub(super) table: RefCell<PageTable<Box<dyn EvictionPolicy>>>,
    /// Its parking area, where evicted pages wait until saved (none: evictions write-protect).
    pub(super) parking: RefCell<Option<Parking>>,
    /// Parking slots to free with the next freeing request (their pages went away meanwhile).
    pub(super) pending_free: RefCell<Vec<u64>>,
    /// A PARK request is with the shim: the fault loop reads no event until it is answered.
    pub(super) exchanging: Cell<bool>,
    /// The shim's helper refused the last PARK because a thread is inside `fork()` (it holds
    /// the shim's fork lock, and moves wait until it is out). The evictor passes the process
    /// over for the rest of its round.
    pub(super) forking: Cell<bool>,
    /// The code of the shim in this process, once looked up: calls made from there are its
    /// helper's (see `intercept.rs`).
    pub(super) shim_code: Cell<Option<(u64, u64)>>,
    /// An unmap or remap event came in since the scanner last read the memory map.
    pub(super) layout_changed: Cell<bool>,
    /// Signalled when a PARK request is answered.
    pub(super) exchange_done: tokio::sync::Notify,
    /// Ranges registered with the uffd: start -> end.
    pub(super) registered: RefCell<BTreeMap<u64, u64>>,
    /// Ranges that could not be registered (left alone): start -> end.
    pub(super) refused: RefCell<BTreeMap<u64, u64>>,
    /// Pages whose drop by the shim's helper is pending: how many REMOVE events came for each
    /// meanwhile (the helper's own and the program's, told apart once the helper says which
    /// pages it dropped: `protect::settle_drops`).
    pub(super) our_drops: RefCell<HashMap<u64, u32>>,
    /// Faults that wait for room under the budget.
    pub(super) deferred: RefCell<Vec<(u64, bool, std::time::Instant)>>,
    /// Runs of remote faults, most recent first (at most [`STREAMS`](super::prefetch::STREAMS)): the end of the run's
    /// last fetch (the faulting page or the farthest one prefetched with it), how many remote
    /// faults in a row continued it, and whether it runs down. Several, so that threads each
    /// walking their own part of memory keep their own runs.
    pub(super) streams: RefCell<Vec<(u64, u32, bool)>>,
    /// Page the next zero-fill fault of a sequential run is expected at, and the run's length.
    pub(super) next_zero: Cell<(u64, u32)>,
    /// The program break after the last intercepted `brk`, page-aligned up (0: not known yet).
    brk_end: Cell<u64>,
    /// The shim's helper, once attached (taken out while an eviction talks to it).
    pub(super) shim: RefCell<Option<UnixStream>>,
    pub(super) tasks: RefCell<Vec<tokio::task::JoinHandle<()>>>,
    /// No longer part of the workload (exited, or replaced by an exec).
    pub(super) removed: Cell<bool>,
    /// The shim's helper runs: drops can be asked for.
    pub(super) helper_up: Cell<bool>,
    /// Its resident pages that another process of the workload maps too (copy-on-write since a
    /// fork): evicting one would free nothing. Refreshed by [`sharing`].
    pub(super) shared_pages: RefCell<HashSet<u64>>,
    /// Memory it locked (`mlock`): never evicted (see `locked.rs`).
    pub(super) locked: super::locked::Locked,
    /// Pages found pinned for I/O: held back from eviction for a while (see `locked.rs`).
    pub(super) pinned: super::locked::Pinned,
}

impl Proc {
    pub(super) fn new(
        g: &Rc<Group>,
        uffd: Uffd,
        table: PageTable<Box<dyn EvictionPolicy>>,
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
            parking: RefCell::default(),
            pending_free: RefCell::default(),
            exchanging: Cell::new(false),
            forking: Cell::new(false),
            layout_changed: Cell::new(false),
            shim_code: Cell::new(None),
            exchange_done: tokio::sync::Notify::new(),
            registered: RefCell::new(registered),
            refused: RefCell::new(refused),
            our_drops: RefCell::default(),
            deferred: RefCell::default(),
            streams: RefCell::default(),
            next_zero: Cell::new((0, 0)),
            brk_end: Cell::new(0),
            shim: RefCell::default(),
            tasks: RefCell::default(),
            removed: Cell::new(false),
            helper_up: Cell::new(false),
            shared_pages: RefCell::default(),
            locked: Default::default(),
            pinned: Default::default(),
        });
        g.procs.borrow_mut().push(p.clone());
        p
    }

    /// Takes the parking area `(start, len)` the shim mapped: registers it with the uffd (a
    /// `UFFDIO_MOVE` target must be) and keeps the scanner off it. Without `UFFDIO_MOVE`, or if
    /// it cannot be registered, evictions write-protect instead.
    pub(super) fn set_up_parking(&self, (start, len): (u64, u64)) {
        if len == 0 || !self.uffd.can_move() || !self.g.moves_allowed.get() {
            debug!(
                can_move = self.uffd.can_move(),
                allowed = self.g.moves_allowed.get(),
                len,
                "no parking area: evictions write-protect"
            );
            return;
        }
        self.refused.borrow_mut().insert(start, start + len);
        match self.uffd.register(start, len) {
            Ok(()) => {
                *self.parking.borrow_mut() = Some(Parking::new(start, (len / PAGE) as usize));
            }
            Err(e) => warn!("cannot register the parking area: {e}; evictions write-protect"),
        }
    }

    /// Parking slots whose pages are on their way out: parked and being saved, or saved and
    /// being freed (not those waiting in the grace window).
    pub(super) fn parking_leaving(&self) -> usize {
        self.parking
            .borrow()
            .as_ref()
            .map_or(0, |k| k.held() - k.graced() + k.freeing_count())
    }

    /// Parking slots whose pages wait in the grace window.
    pub(super) fn parking_graced(&self) -> usize {
        self.parking.borrow().as_ref().map_or(0, |k| k.graced())
    }

    /// Parking slots whose pages are saved and being freed (no longer in the page table, still
    /// in memory).
    pub(super) fn parking_freeing(&self) -> usize {
        self.parking
            .borrow()
            .as_ref()
            .map_or(0, |k| k.freeing_count())
    }

    /// The connection to the shim's helper, once no one else is using it; `None` once the
    /// process is gone or never had a helper.
    pub(super) async fn take_shim(&self) -> Option<UnixStream> {
        loop {
            if let Some(s) = self.shim.borrow_mut().take() {
                return Some(s);
            }
            if self.removed.get() || !self.helper_up.get() {
                return None;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }

    /// Enables eviction once the shim's helper runs (its thread may need faults served first).
    /// Without a helper (the process ended first, or the helper failed) nothing is evicted
    /// from this process; its faults are still served.
    pub(super) async fn wait_for_helper(&self, mut shim: UnixStream) {
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

    pub(super) fn start_fault_loop(self: &Rc<Self>) {
        self.tasks
            .borrow_mut()
            .push(tokio::task::spawn_local(fault_loop(self.clone())));
    }

    pub(super) fn start_scanner(self: &Rc<Self>) {
        self.tasks
            .borrow_mut()
            .push(tokio::task::spawn_local(scanner(self.clone())));
    }

    pub(super) fn abort_tasks(&self) {
        for t in self.tasks.borrow_mut().drain(..) {
            t.abort();
        }
    }

    /// The process is gone (or replaced by an exec): stop serving it, release its pages.
    pub(super) fn remove(self: &Rc<Self>) {
        if self.removed.replace(true) {
            return;
        }
        self.abort_tasks();
        self.g.procs.borrow_mut().retain(|p| !Rc::ptr_eq(p, self));
        self.g.forget_shared();
        let refs = self.table.borrow_mut().release_all();
        self.g.free_later(refs);
        self.shim.borrow_mut().take();
        self.g.pressure.notify_one();
    }

    /// A page no registered range of this process covers (for [`Uffd::mm_alive`]).
    pub(super) fn unregistered_page(&self) -> u64 {
        let mut a = 0x10000;
        for (&s, &e) in self.registered.borrow().iter() {
            if s <= a && a < e {
                a = e;
            }
        }
        a
    }

    pub(super) fn fail(&self, msg: String) {
        // A process that is exiting (or already a zombie) makes the work in flight fail; that is
        // not an error worth reporting. A forked child that has not said hello yet (pid 0) is
        // told apart by its address space: a live one whose fault failed would otherwise wait
        // for that page forever, unreported.
        let pid = self.pid.get();
        let gone = if pid == 0 {
            !self.uffd.mm_alive(self.unregistered_page())
        } else {
            procfs::rss_anon(pid).is_none()
        };
        if self.removed.get() || gone {
            debug!("after the process ended: {msg}");
            return;
        }
        self.g.fail(msg);
    }

    /// Registers `[s, e)` (again, if the shim's helper registered it already: the kernel accepts
    /// that) and records it, or records it as refused; counts its present pages when `present`.
    fn adopt(&self, s: u64, e: u64, present: bool) {
        match self.uffd.register(s, e - s) {
            Ok(()) => {
                self.registered.borrow_mut().insert(s, e);
                if !present {
                    return;
                }
                if let Ok(present) = procfs::populated_pages(self.pid.get(), s, e) {
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

    /// Records the mapping the shim's helper just made for the program (an intercepted `mmap`
    /// of private anonymous memory, registered by the helper): at once, not at the next scan,
    /// so that faults there see their range (the zero-fill window stays within it, and a
    /// sequential fill of fresh memory took a fault per page until the scan came).
    pub(super) fn mapped(&self, start: u64, len: u64) {
        let end = start.saturating_add(len.div_ceil(PAGE) * PAGE);
        let gaps = uncovered(&self.registered.borrow(), &BTreeMap::new(), start, end);
        cut(&mut self.refused.borrow_mut(), start, end);
        for (s, e) in gaps {
            self.adopt(s, e, false);
        }
    }

    /// Records the program break the shim's helper just set for the program (an intercepted
    /// `brk`; the C library's first call asks for the current one): the pages the heap grew by
    /// since the last known break are recorded at once, as [`Self::mapped`] does, provided the
    /// heap below them is registered (a range ends at the old break). Otherwise (no known break
    /// yet, a heap still unregistered), the scanner records the change.
    pub(super) fn moved_break(&self, brk: u64) {
        let new = brk.div_ceil(PAGE) * PAGE;
        let old = self.brk_end.replace(new);
        if new <= old {
            return;
        }
        let heap_below = old != 0 && self.registered.borrow().values().any(|&e| e == old);
        if heap_below {
            self.mapped(old, new - old);
        } else {
            self.layout_changed.set(true);
        }
    }

    /// Registers anonymous mappings not registered yet, and counts their present pages.
    pub(super) fn scan_maps(self: &Rc<Self>) {
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
                self.adopt(s, e, true);
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
        let (table, copies) = self
            .table
            .borrow()
            .fork_clone(self.g.policy.get().build(), &not_inherited);
        // A wiped range stays registered in the child (the kernel keeps the registration of
        // every mapping it copies); a MADV_DONTFORK one is not mapped there, and its stale entry
        // only makes the scanner skip that address.
        let child = Proc::new(
            &self.g,
            Uffd::forked(fd, self.uffd.can_move()),
            table,
            self.registered.borrow().clone(),
            self.refused.borrow().clone(),
        );
        child.forked_from.set(Some((self.pid.get(), seq)));
        // The child's parking area is the parent's, inherited empty (wiped on fork).
        if let Some(k) = self.parking.borrow().as_ref() {
            *child.parking.borrow_mut() = Some(k.empty_copy());
        }
        // Pages parked in the parent at the fork are in neither address space's page tables:
        // give the child its own copy now (the parent is still in fork(), so they stay put).
        if let Err(e) = self.copy_parked_into(&child, &copies) {
            self.fail(format!(
                "giving a forked child the pages parked at the fork: {e}"
            ));
        }
        let copied: std::collections::HashSet<u64> = copies.iter().map(|c| c.0).collect();
        // Right after the fork every other page the child has is the parent's, shared
        // copy-on-write: count it once until `sharing` measures what writes have since
        // separated.
        let mut inherited = child.table.borrow().resident_pages();
        inherited.retain(|pg| !copied.contains(pg));
        self.shared_pages.borrow_mut().extend(&inherited);
        child.shared_pages.borrow_mut().extend(inherited);
        self.g.update_shared();
        child.start_fault_loop();
        debug!(parent = self.pid.get(), seq, "fork");
        self.g.after_resident_change();
    }

    /// Installs in `child` the content of this process's parked pages, `(page, parking address)`.
    fn copy_parked_into(&self, child: &Proc, copies: &[(u64, u64)]) -> io::Result<()> {
        let mut buf = vec![0u8; PAGE as usize];
        for &(page, at) in copies {
            procfs::read_pages(self.pid.get(), &[at], &mut buf)?;
            let mut tries = 0;
            loop {
                match child.uffd.copy(page, &buf, false)? {
                    Install::Done | Install::Exists | Install::Gone => break,
                    Install::Again if tries < 1000 => tries += 1,
                    Install::Again => return Err(io::Error::from_raw_os_error(libc::EAGAIN)),
                }
            }
        }
        Ok(())
    }

    pub(super) fn handle_event(self: &Rc<Self>, event: Event) {
        match event {
            Event::Remove { start, end } => {
                let mut program = Vec::new();
                {
                    let mut ours = self.our_drops.borrow_mut();
                    let mut p = start;
                    while p < end {
                        match ours.get_mut(&p) {
                            // A drop of ours is pending: whose event this is, is known when the
                            // helper answers.
                            Some(seen) => *seen += 1,
                            None => program.push(p),
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
                self.layout_changed.set(true);
                let garbage = self.table.borrow_mut().unmapped(start, end);
                self.forget_range(start, end);
                self.g.free_later(garbage);
            }
            Event::Remap { from, to, len } => {
                self.layout_changed.set(true);
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
        // Parked pages the program moved: saved now, in a batch of their own (out of the grace
        // window if they were in it).
        let moved = self.table.borrow_mut().take_moved_parked();
        if !moved.is_empty() {
            if let Some(k) = self.parking.borrow_mut().as_mut() {
                for &(_, at) in &moved {
                    k.end_grace(at);
                }
            }
            let p = self.clone();
            tokio::task::spawn_local(async move { super::evict::save_now(&p, moved).await });
        }
        // Pages the program dropped or unmapped while they were parked: their slots are freed
        // with the next batch (until then they count against the budget, as parked pages do).
        let unparked = self.table.borrow_mut().take_unparked();
        if !unparked.is_empty() {
            if let Some(k) = self.parking.borrow_mut().as_mut() {
                for &a in &unparked {
                    k.freeing(a);
                }
            }
            self.pending_free.borrow_mut().extend(unparked);
        }
    }
}

/// Removes `[start, end)` from a map of ranges, splitting what overlaps.
pub(super) fn cut(map: &mut BTreeMap<u64, u64>, start: u64, end: u64) {
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

/// Parts of `[start, end)` not in `registered` nor `refused`.
pub(super) fn uncovered(
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

/// The longest the scanner goes without reading the whole memory map (which costs about a
/// millisecond of agent CPU for a large process; reading it every 10 ms kept an idle agent near
/// 3 % of a CPU).
const FULL_SCAN_INTERVAL: Duration = Duration::from_millis(250);

/// Registers memory the program maps behind the shim's back (inside the C library: malloc's large
/// blocks, brk) when they are not intercepted (`intercept.rs`; with interception it looks ten
/// times less often: only `mremap` growth and what was mapped before the filter remain). Every
/// [`SCAN_INTERVAL`] it reads a fingerprint of the address space
/// (`/proc/PID/statm`), and reads the whole map only when that changed, when an unmap or remap
/// event came in, or [`FULL_SCAN_INTERVAL`] after the last full scan (a mapping replaced by one
/// of the same size leaves the fingerprint as it was).
async fn scanner(p: Rc<Proc>) {
    let probe = procfs::LayoutProbe::open(p.pid.get()).ok();
    let lock_probe = procfs::LockProbe::open(p.pid.get()).ok();
    let mut seen = None;
    let mut last_full: Option<std::time::Instant> = None;
    loop {
        let now = probe.as_ref().and_then(|pr| pr.read().ok());
        let due = last_full.is_none_or(|t| t.elapsed() >= FULL_SCAN_INTERVAL);
        if now.is_none() || now != seen || p.layout_changed.replace(false) || due {
            p.scan_maps();
            seen = now;
            last_full = Some(std::time::Instant::now());
        }
        if let Some(lp) = &lock_probe {
            p.refresh_locked(lp);
        }
        let intercepted = !p.g.listeners.borrow().is_empty();
        tokio::time::sleep(if intercepted {
            INTERCEPTED_SCAN_INTERVAL
        } else {
            SCAN_INTERVAL
        })
        .await;
    }
}

/// The scanner's interval while the workload's `mmap` and `brk` are intercepted.
const INTERCEPTED_SCAN_INTERVAL: Duration = Duration::from_millis(100);

/// How often [`sharing`] measures which pages processes of a workload share.
const SHARING_INTERVAL: Duration = Duration::from_millis(250);

/// While the workload has several processes, measures which of their resident pages are shared
/// copy-on-write (pagemap, off the fault thread), so that such a page counts once against the
/// budget and is not picked for an eviction that would free nothing. Writes separate pages between
/// two measurements; until the next one they count once, so the workload can be over its budget
/// by what it wrote in that time (see docs/fork-and-processes.md).
pub(super) async fn sharing(g: Rc<Group>) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
