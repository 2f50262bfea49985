//! Serving faults: the fault loop of a process, missing and write-protect faults, zero-fill
//! ahead, prefetch of the pages after a run of remote faults, and fetches.

use std::{rc::Rc, time::Instant};

use super::{
    prefetch::track_stream, process::Proc, PREFETCH_MAX, ZEROS, ZERO_AHEAD_MAX, ZERO_AROUND,
};
use crate::{
    pages::{digest, MissingFault, Remote, State, WriteFault, PAGE},
    procfs,
    uffd::{Event, Install},
};

impl Proc {
    pub(super) fn handle_fault(self: &Rc<Self>, page: u64, write: bool, wp: bool, at: Instant) {
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
        // A zero-fill of a page the table counts as resident already (dropped by the program
        // while resident or under a write-protect eviction) adds nothing to the budget, so it
        // never waits for room. It must not: the eviction's own read of the batch
        // (`process_vm_readv` on a blocking thread) can fault on such a page, and at the hard
        // limit the room it waited for could only come from that very eviction.
        let counted = matches!(
            self.table.borrow().state(page),
            Some(State::Resident { .. } | State::Evicting(_))
        );
        match decision {
            MissingFault::InFlight | MissingFault::WaitForEviction => {}
            // Parked pages count against the budget already: moving one back adds nothing.
            MissingFault::Rescue(at) => self.rescue(page, at, write),
            MissingFault::ZeroFill if counted => self.zero_fill(page, write),
            MissingFault::ZeroFill | MissingFault::Fetch(_) if self.g.over_hard_limit() => {
                self.deferred.borrow_mut().push((page, write, at));
                // A fault tried again needs no new round of the evictor: it is one.
                if !self.g.retrying.get() {
                    self.g.stats.borrow_mut().deferred();
                    self.g.pressure.notify_one();
                }
            }
            MissingFault::ZeroFill => self.zero_fill(page, write),
            MissingFault::Fetch(remote) => {
                let (started, refault) = self.table.borrow_mut().start_fetch_seeing_refault(page);
                if refault {
                    self.g.stats.borrow_mut().refault();
                }
                if started {
                    let batch = self.with_prefetch(page, remote);
                    self.g.after_resident_change();
                    tokio::task::spawn_local(fetch(self.clone(), batch, write, at));
                }
            }
        }
    }

    /// Wakes whoever faulted on `page`, whose range is gone (unmapped meanwhile, or the address
    /// space went): the kernel's unmap normally wakes them itself, and a wake-up of no one is
    /// harmless, but a thread must never stay blocked on a fault nobody will serve.
    fn wake_gone(&self, page: u64) {
        let _ = self.uffd.wake(page, PAGE);
    }

    /// Serves a missing fault with zeros (a page never touched, or dropped by the program).
    fn zero_fill(self: &Rc<Self>, page: u64, write: bool) {
        let evicting = matches!(self.table.borrow().state(page), Some(State::Evicting(_)));
        // Under eviction the page must stay write-protected, so install zeros with WP.
        let r = if write || evicting {
            self.uffd.copy(page, &ZEROS, evicting)
        } else {
            self.uffd.zeropage(page)
        };
        match r {
            // The page is there: the fault was stale (deferred, then the page came back by a
            // prefetch and was picked for eviction meanwhile). Taking that for a drop by the
            // program would make the eviction discard its content: leave the table alone.
            Ok(Install::Exists) if evicting => {
                if let Err(e) = self.uffd.wake(page, PAGE) {
                    self.fail(format!("waking at {page:#x}: {e}"));
                }
            }
            Ok(Install::Done | Install::Exists) => {
                let garbage = self.table.borrow_mut().zero_filled(page);
                if self.locked.arrived(page) {
                    self.g.note_locked();
                }
                self.g.free_later(garbage.into_iter().collect());
                self.g.stats.borrow_mut().zero_fault();
                if !evicting {
                    self.zero_fill_ahead(page, write);
                }
                self.g.after_resident_change();
            }
            Ok(Install::Again) => self.retry_fault(page, write),
            Ok(Install::Gone) => self.wake_gone(page),
            Err(e) => self.fail(format!("cannot zero-fill {page:#x}: {e}")),
        }
    }

    /// Brings the parked page at `at` back to `page`, which wakes the faulting thread: it was in
    /// use, and its eviction ends here (a write of it in flight is discarded when it completes;
    /// the new slot the eviction took is released by the page, and freed once that write is
    /// over).
    /// The agent cannot move it back (`UFFDIO_MOVE` is refused from outside the process) and a
    /// hop to the shim's helper costs a cross-vCPU wake-up, so it copies it: read from the slot
    /// (nothing can change a parked page), installed with `UFFDIO_COPY`; the slot is freed with
    /// the next batch.
    fn rescue(self: &Rc<Self>, page: u64, at: u64, write: bool) {
        let mut buf = [0u8; PAGE as usize];
        if let Err(e) = procfs::read_pages(self.pid.get(), &[at], &mut buf) {
            self.fail(format!(
                "cannot read the parked page {page:#x} at {at:#x}: {e}"
            ));
            return;
        }
        match self.uffd.copy(page, &buf, false) {
            Ok(r @ (Install::Done | Install::Exists)) => {
                if matches!(r, Install::Exists) {
                    tracing::warn!(
                        "a rescued page found its address {page:#x} already filled; the parked \
                         content was not installed"
                    );
                }
                let rescued = self.table.borrow_mut().rescued(page);
                if self.locked.arrived(page) {
                    self.g.note_locked();
                }
                if let Some((at, garbage)) = rescued {
                    self.g.free_later(garbage.into_iter().collect());
                    if let Some(k) = self.parking.borrow_mut().as_mut() {
                        k.freeing(at);
                    }
                    self.pending_free.borrow_mut().push(at);
                }
                self.g.stats.borrow_mut().rescue();
            }
            Ok(Install::Again) => self.retry_fault(page, write),
            Ok(Install::Gone) => self.wake_gone(page),
            Err(e) => self.fail(format!("cannot install the parked page {page:#x}: {e}")),
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
            self.zero_fill_around(page);
            0
        } else {
            (1u64 << run.min(6)).min(ZERO_AHEAD_MAX)
        };
        let end = self.registered_range(page).map_or(page, |(_, e)| e);
        // Up to the budget itself, not the lower mark where evictions start: the pages after a
        // sequential fill's fault are the next ones it writes, so under pressure they would
        // come in within microseconds anyway, one fault each.
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
                if self.locked.arrived(next) {
                    self.g.note_locked();
                }
                room -= 1;
                next += PAGE;
            }
        }
        self.next_zero.set((next, run));
    }

    /// The registered range `[start, end)` that holds `page`, if any.
    fn registered_range(&self, page: u64) -> Option<(u64, u64)> {
        self.registered
            .borrow()
            .range(..=page)
            .next_back()
            .map(|(&s, &e)| (s, e))
            .filter(|&(_, e)| e > page)
    }

    /// Far below the budget, a zero-fill fault that starts no run also maps the zero page on the
    /// never-touched pages of its aligned block of [`ZERO_AROUND`] pages, one ioctl per run of
    /// them: a program that touches fresh memory in scattered order (hash tables, `xz`'s match
    /// finder) takes a fault per block instead of one per page, each a round trip through the
    /// agent. The pages cost nothing until written (the shared zero page), but count against the
    /// budget, hence only below half of it; the policy sees them as new and untouched, the first
    /// to go under pressure. Pages known to the table (evicted, parked, present) are skipped, and
    /// a page that became present meanwhile stops its run (the kernel refuses, nothing is
    /// overwritten).
    fn zero_fill_around(&self, page: u64) {
        if self.g.resident() + ZERO_AROUND as usize > self.g.soft_limit() / 2 {
            return;
        }
        let Some((rs, re)) = self.registered_range(page) else {
            return;
        };
        let block = page & !(ZERO_AROUND * PAGE - 1);
        let (start, end) = (block.max(rs), (block + ZERO_AROUND * PAGE).min(re));
        let mut t = self.table.borrow_mut();
        let mut p = start;
        while p < end {
            if t.state(p).is_some() {
                p += PAGE;
                continue;
            }
            let mut q = p;
            while q < end && t.state(q).is_none() {
                q += PAGE;
            }
            let Ok((done, _)) = self.uffd.zeropage_run(p, ((q - p) / PAGE) as usize) else {
                return;
            };
            for i in 0..done as u64 {
                let garbage = t.zero_filled(p + i * PAGE);
                debug_assert!(garbage.is_none(), "a never-touched page had a remote copy");
                if self.locked.arrived(p + i * PAGE) {
                    self.g.note_locked();
                }
            }
            p = q;
        }
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
        let window = (1u64 << run.min(PREFETCH_MAX.trailing_zeros())).min(PREFETCH_MAX);
        let mut room = self.g.soft_limit().saturating_sub(self.g.resident() + 1);
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

    pub(super) fn retry_deferred(self: &Rc<Self>) {
        let deferred = std::mem::take(&mut *self.deferred.borrow_mut());
        let outer = self.g.retrying.replace(true);
        for (page, write, since) in deferred {
            let before = self.deferred.borrow().len();
            self.handle_fault(page, write, false, Instant::now());
            let mut d = self.deferred.borrow_mut();
            if d.len() > before {
                // Deferred again: it keeps waiting since it first did.
                if let Some(last) = d.last_mut() {
                    last.2 = since;
                }
            } else {
                self.g.stats.borrow_mut().deferral(since.elapsed());
            }
        }
        self.g.retrying.set(outer);
    }
}

pub(super) async fn fault_loop(p: Rc<Proc>) {
    let afd = match crate::uffd::watch(&p.uffd) {
        Ok(a) => a,
        Err(e) => {
            p.fail(format!("watching the userfaultfd: {e}"));
            return;
        }
    };
    let mut events = Vec::with_capacity(64);
    loop {
        // While the shim moves pages for an eviction, events stay queued (see `evict::park`).
        while p.exchanging.get() {
            let done = p.exchange_done.notified();
            if !p.exchanging.get() {
                break;
            }
            done.await;
        }
        let mut guard = match afd.readable().await {
            Ok(g) => g,
            Err(e) => {
                p.fail(format!("userfaultfd: {e}"));
                return;
            }
        };
        if p.exchanging.get() {
            drop(guard);
            continue;
        }
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
        crate::spin::activity();
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

/// Fetches the faulting page (first in `batch`) and any prefetched ones in one request, and
/// installs them writable: the faulting page first (which wakes its thread), then each contiguous
/// run of prefetched pages with one `UFFDIO_COPY`.
pub(super) async fn fetch(p: Rc<Proc>, batch: Vec<(u64, Remote)>, write: bool, at: Instant) {
    struct InFlight;
    impl Drop for InFlight {
        fn drop(&mut self) {
            crate::spin::fetch_done();
        }
    }
    crate::spin::fetch_started();
    let _in_flight = InFlight;
    let remotes: Vec<Remote> = batch.iter().map(|b| b.1).collect();
    let fetched = match p.g.servers.read_many(p.g.space, &remotes).await {
        Ok(d) => d,
        Err(e) => {
            p.fail(format!(
                "the page at {:#x} cannot be read back: {e}",
                batch[0].0
            ));
            return;
        }
    };
    let mut pages = batch
        .into_iter()
        .zip(fetched.pages)
        .map(|((page, remote), data)| (page, remote, data));
    let Some((page, remote, data)) = pages.next() else {
        return;
    };
    let Ok(went_in) = install(&p, page, remote, &data, write).await else {
        return;
    };
    let installed = Instant::now();
    if went_in {
        let mut stats = p.g.stats.borrow_mut();
        stats.remote_fault(installed - at);
        if let Some(t) = fetched.timing {
            stats.remote_stages([
                t.sent.saturating_duration_since(at),
                t.replied.saturating_duration_since(t.sent),
                installed.saturating_duration_since(t.replied),
            ]);
        }
    }
    let mut rest: Vec<(u64, Remote, Vec<u8>)> = pages.collect();
    rest.sort_unstable_by_key(|r| r.0);
    let mut i = 0;
    while i < rest.len() {
        // The run of pages from `i` that are contiguous and still wanted (checked with no await
        // before the copy, so nothing can change them in between).
        let mut j = i;
        {
            let t = p.table.borrow();
            while j < rest.len()
                && (j == i || rest[j].0 == rest[j - 1].0 + PAGE)
                && t.fetch_wanted(rest[j].0, rest[j].1)
            {
                j += 1;
            }
        }
        if j == i {
            i += 1;
            continue;
        }
        let mut k = i;
        if j - i >= 2 {
            let buf: Vec<u8> = rest[i..j]
                .iter()
                .flat_map(|r| r.2.iter().copied())
                .collect();
            match p.uffd.copy_run(rest[i].0, &buf) {
                Ok((n, _)) => {
                    let mut locked = false;
                    {
                        let mut t = p.table.borrow_mut();
                        let mut stats = p.g.stats.borrow_mut();
                        for (page, remote, data) in &rest[i..i + n] {
                            t.fetched(*page, *remote, Some(digest(data)));
                            locked |= p.locked.arrived(*page);
                            stats.prefetched();
                        }
                    }
                    if locked {
                        p.g.note_locked();
                    }
                    k = i + n;
                }
                Err(e) => {
                    p.fail(format!("cannot install the pages at {:#x}: {e}", rest[i].0));
                    return;
                }
            }
        }
        // One by one from where a run stopped (a page already there, or the address space
        // changing), or a run of one.
        for (page, remote, data) in &rest[k..j] {
            match install(&p, *page, *remote, data, false).await {
                Ok(true) => p.g.stats.borrow_mut().prefetched(),
                Ok(false) => {}
                Err(()) => return,
            }
        }
        i = j;
    }
}

/// Installs one fetched page if the table still wants it; `Ok(true)` when it went in (or was
/// there already), `Err` when the process failed.
async fn install(
    p: &Proc,
    page: u64,
    remote: Remote,
    data: &[u8],
    dirty: bool,
) -> Result<bool, ()> {
    loop {
        if !p.table.borrow().fetch_wanted(page, remote) {
            return Ok(false);
        }
        // Installed writable: whether it stays equal to its remote copy is decided at its
        // eviction, from its content's digest, so a write costs no fault.
        match p.uffd.copy(page, data, false) {
            Ok(r @ (Install::Done | Install::Exists)) => {
                if matches!(r, Install::Exists) {
                    // Nothing should be there: the page is being fetched, so what is there is
                    // not what the servers hold. Said loudly while a rare wrong word at 8 GiB is
                    // unexplained (docs/scale.md, session 19).
                    tracing::warn!(
                        "a fetched page found its address {page:#x} already filled; the fetched \
                         content was not installed"
                    );
                }
                // The digest of what the servers hold (after the copy, which woke the thread).
                let clean = (!dirty).then(|| digest(data));
                p.table.borrow_mut().fetched(page, remote, clean);
                if p.locked.arrived(page) {
                    p.g.note_locked();
                }
                return Ok(true);
            }
            Ok(Install::Again) => tokio::task::yield_now().await,
            Ok(Install::Gone) => {
                p.wake_gone(page);
                return Ok(false);
            }
            Err(e) => {
                p.fail(format!("cannot install the page at {page:#x}: {e}"));
                return Err(());
            }
        }
    }
}
