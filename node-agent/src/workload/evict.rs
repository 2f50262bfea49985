//! Eviction: the evictor that keeps a workload under its budget, and the two ways a batch leaves.
//!
//! - **Parking** (`UFFDIO_MOVE`, [`park`] then [`save_parked`]): the victims move into the
//!   process's parking area, atomically per page, so from that instant any access is a missing
//!   fault that moves the page back (a rescue). Their content is read from the parked pages, a
//!   page whose remote copy holds that very content (same digest) is done at once, the others are
//!   written to the servers while the evictor goes on with the next batch; then the parked pages
//!   are freed in bulk by the shim. No write protection, so no write fault, and nothing a racing
//!   write could be lost in.
//! - **Write protection** (`protect.rs`), for pages that cannot move (shared copy-on-write
//!   after a fork, or a kernel without `UFFDIO_MOVE`): write-protect, copy out, store on the
//!   servers, drop inside the process through the shim, then wake whoever blocked meanwhile.
//!
//! Pages may first wait in the grace window (`grace.rs`) before they are saved.

use std::{io, rc::Rc, time::Duration};

use anyhow::{bail, Context};
use tracing::{debug, warn};
use yonder_common::protocol::PageData;

use super::{
    grace::{release_grace, top_up_grace},
    process::Proc,
    protect::run_protected,
    shim_link::{read_words, runs, write_words},
    Group, EVICT_BATCH,
};
use crate::{
    pages::{digest, Decision, Remote, PAGE},
    procfs, shim_proto as proto,
    uffd::Install,
};

/// Batches whose writes may be in flight at once (each up to [`EVICT_BATCH`] pages).
pub(super) const BATCHES_IN_FLIGHT: usize = 4;
/// How long faults may wait at the limit while nothing is evicted before they are let in.
const STALL_LIMIT: Duration = Duration::from_secs(5);
/// Parked pages whose content is read and hashed between two yields of the fault thread.
const READ_CHUNK: usize = 64;

/// Evicts from the process with the most resident pages while the workload is over budget.
pub(super) async fn evictor(g: Rc<Group>) {
    // Since when faults have waited at the limit with nothing on its way out (see below).
    let mut stalled_since: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            () = g.pressure.notified() => {}
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        // A notification already stored returns at once: let every other task of the agent run
        // before this round, or a round that can do nothing (faults waiting for room that only
        // those tasks can make: a batch's write, a free, the reaping of an exited process)
        // would start again and again without them (seen: a forked child exited with parked
        // pages being freed, and the parent's fault waited forever with the agent at 100 %).
        tokio::task::yield_now().await;
        // A process whose helper refused a park because it was forking may be out of fork() by
        // now: try it again (once per round, see `Proc::forking`).
        g.forks_hold_back.set(false);
        for p in g.procs.borrow().iter() {
            p.forking.set(false);
        }
        // Slots freed meanwhile (rescues, pages the program dropped while parked) leave with the
        // next batch; with none in flight, free them now, or they would hold the budget.
        if g.batches_in_flight.get() == 0 {
            g.flush_pending_frees().await;
        }
        let soft = g.soft_limit();
        let low = soft.saturating_sub((soft / 32).max(EVICT_BATCH / 4));
        // Whether pages left this round: only then is the grace window refilled, so that a
        // workload within its budget is not probed for nothing.
        let mut evicted = false;
        // Pages already on their way out (parked, or saved and being freed) need no new victims.
        while g.resident().saturating_sub(g.leaving()) > soft {
            // Let the fault loops, and the batches on the wire, run between two batches.
            tokio::task::yield_now().await;
            if g.batches_in_flight.get() >= BATCHES_IN_FLIGHT {
                g.batch_done.notified().await;
                continue;
            }
            if g.servers_refuse.get() {
                // The last batch could store nothing: wait for what is in flight, then try one
                // batch a second rather than hammer the servers.
                if g.batches_in_flight.get() > 0 {
                    g.batch_done.notified().await;
                    continue;
                }
                g.retry_deferred();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            // The oldest pages of the grace window leave first: they had their chance to show
            // that they are in use.
            let oldest = g.grace.borrow_mut().pop_front();
            if let Some(batch) = oldest {
                evicted = true;
                release_grace(&g, batch).await;
                continue;
            }
            let want = (g.resident().saturating_sub(g.leaving()))
                .saturating_sub(low)
                .clamp(1, EVICT_BATCH);
            let mut picked: Vec<(Rc<Proc>, Vec<u64>)> =
                pick_victims(&g, want).into_iter().collect();
            if picked.is_empty() {
                picked = pick_shared(&g, want);
            }
            if picked.is_empty() {
                if g.batches_in_flight.get() > 0 {
                    // Pages are on their way out; their completion frees room.
                    g.batch_done.notified().await;
                    continue;
                }
                if g.procs.borrow().iter().any(|p| p.forking.get()) {
                    // What is left belongs to a process inside fork(), whose helper moves
                    // nothing until the forking thread is out; that thread may be waiting for
                    // room itself (a fault in the C library's or an allocator's fork handlers).
                    // Let faults in until the next round rather than wait for each other.
                    if !g.forks_hold_back.replace(true) {
                        debug!("only a forking process has pages to evict: faults go in");
                    }
                    g.retry_deferred();
                    break;
                }
                let ready = g.procs.borrow().iter().any(|p| p.helper_up.get());
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
            }
            g.stuck_warned.set(false);
            evicted = true;
            for (p, victims) in picked {
                evict_batch(&g, &p, victims).await;
            }
            g.retry_deferred();
        }
        if evicted {
            top_up_grace(&g).await;
        }
        g.retry_deferred();
        // Faults waiting at the limit while nothing is on its way out that could make room: a
        // leak in the counts (pages counted as leaving that no task will ever take out). Say so
        // with the counts, and let the faults in rather than stop the workload for good.
        let waiting = g
            .procs
            .borrow()
            .iter()
            .any(|p| !p.deferred.borrow().is_empty());
        if waiting && !evicted && g.batches_in_flight.get() == 0 && g.over_hard_limit() {
            let since = *stalled_since.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() >= STALL_LIMIT {
                g.stuck_warned.set(true);
                eprintln!(
                    "yonder: faults waited {STALL_LIMIT:?} at the budget with nothing being evicted ({}); the workload runs over its budget",
                    g.counts()
                );
                g.retry_deferred();
            }
        } else {
            stalled_since = None;
        }
        if g.over_hard_limit() && g.batches_in_flight.get() > 0 {
            // Faults wait for room that batches on the wire will make: wait for one, rather
            // than wake up for every fault that is deferred again.
            g.batch_done.notified().await;
        }
    }
}

impl Group {
    /// The counts behind the budget, for a message: resident, leaving, and each process's
    /// parking slots held and being freed.
    fn counts(&self) -> String {
        let mut s = format!(
            "{} pages resident of {}, {} leaving, {} batches in flight",
            self.resident(),
            self.budget,
            self.leaving(),
            self.batches_in_flight.get()
        );
        for p in self.procs.borrow().iter() {
            let (held, freeing) = p
                .parking
                .borrow()
                .as_ref()
                .map_or((0, 0), |k| (k.held(), k.freeing_count()));
            s.push_str(&format!(
                "; process {}: {} resident, {held} parked, {freeing} being freed",
                p.pid.get(),
                p.table.borrow().resident()
            ));
        }
        s
    }

    /// Frees, in every process, the parking slots waiting for a batch to free them.
    async fn flush_pending_frees(&self) {
        let procs: Vec<Rc<Proc>> = self.procs.borrow().clone();
        for p in procs {
            let pending: Vec<u64> = p.pending_free.borrow_mut().drain(..).collect();
            if !pending.is_empty() {
                p.free_parked(pending).await;
                self.after_resident_change();
            }
        }
    }
}

impl Group {
    /// Notes what a batch stored: `written` pages, `failed` that the servers refused.
    pub(super) fn stored(&self, written: u64, failed: u64) {
        if written > 0 && self.servers_refuse.replace(false) {
            eprintln!("yonder: the memory servers take pages again: eviction resumed");
        }
        if failed > 0 && written == 0 {
            // Nothing could be stored: servers full or unreachable. Let the workload run over
            // its budget (faults must not wait for room that cannot come).
            if !self.servers_refuse.replace(true) {
                eprintln!(
                    "yonder: the memory servers take no more pages (full or unreachable): eviction paused, the workload runs over its budget"
                );
            }
            self.retry_deferred();
        }
    }
}

/// Whether the evictor may take pages from `p` now.
fn evictable(p: &Proc) -> bool {
    p.helper_up.get() && !p.removed.get() && !p.forking.get()
}

/// Chooses up to `want` victims that only one process maps, from the process with the most
/// resident pages: evicting a page a forked relative shares frees nothing by itself (see
/// [`pick_shared`]). A process found forking this round is passed over.
pub(super) fn pick_victims(g: &Group, want: usize) -> Option<(Rc<Proc>, Vec<u64>)> {
    let mut procs: Vec<Rc<Proc>> = g
        .procs
        .borrow()
        .iter()
        .filter(|p| evictable(p))
        .cloned()
        .collect();
    procs.sort_by_key(|p| std::cmp::Reverse(p.table.borrow().resident()));
    for p in &procs {
        let shared = p.shared_pages.borrow();
        // Every resident page shared: a scan of the whole policy would find nothing.
        if !shared.is_empty() && p.table.borrow().resident() <= shared.len() {
            continue;
        }
        let victims = p.table.borrow_mut().start_eviction_except(want, &shared);
        if !victims.is_empty() {
            return Some((p.clone(), victims));
        }
    }
    None
}

/// When no process has unshared pages to give: up to `want` pages shared copy-on-write, taken
/// from the process with the most resident pages *and* from every other process that maps them,
/// so that the memory is freed (the kernel reclaims such a page from all its mappers at once;
/// evicting it from one side only frees nothing, and the other side then reads it back).
/// A page whose other mapper cannot give it up now (forking, starting) is evicted from the
/// chosen process alone. The pages leave the shared sets at once, so the budget's count stays
/// right until the next measurement.
pub(super) fn pick_shared(g: &Group, want: usize) -> Vec<(Rc<Proc>, Vec<u64>)> {
    let all: Vec<Rc<Proc>> = g.procs.borrow().clone();
    let mut procs: Vec<&Rc<Proc>> = all
        .iter()
        .filter(|p| evictable(p) && !p.shared_pages.borrow().is_empty())
        .collect();
    procs.sort_by_key(|p| std::cmp::Reverse(p.table.borrow().resident()));
    for p in procs {
        let victims = p.table.borrow_mut().start_eviction(want);
        if victims.is_empty() {
            continue;
        }
        let mut out = vec![(p.clone(), victims.clone())];
        for q in all.iter().filter(|q| !Rc::ptr_eq(q, p)) {
            let along: Vec<u64> = {
                let mut shared = q.shared_pages.borrow_mut();
                let along = victims
                    .iter()
                    .copied()
                    .filter(|pg| shared.remove(pg))
                    .collect();
                along
            };
            if along.is_empty() || !evictable(q) {
                continue;
            }
            let along = q.table.borrow_mut().start_eviction_of(along);
            if !along.is_empty() {
                out.push((q.clone(), along));
            }
        }
        {
            let mut shared = p.shared_pages.borrow_mut();
            for pg in &victims {
                shared.remove(pg);
            }
        }
        g.update_shared();
        return out;
    }
    Vec::new()
}

/// Starts one batch of `victims` of `p` on its way out: parked and saved beside the evictor,
/// or, for pages that cannot move, written out under write protection.
async fn evict_batch(g: &Rc<Group>, p: &Rc<Proc>, victims: Vec<u64>) {
    debug!(batch = victims.len(), pid = p.pid.get(), "evicting");
    let protected = if p.parking.borrow().is_some() {
        match park(p, victims).await {
            Ok((parked, fallback)) => {
                save_now(p, parked).await;
                fallback
            }
            Err(e) => {
                p.fail(format!("eviction failed: {e:#}"));
                tokio::time::sleep(Duration::from_millis(10)).await;
                Vec::new()
            }
        }
    } else {
        victims
    };
    if !protected.is_empty() {
        run_protected(g, p, protected).await;
    }
}

/// Reads, hashes and starts saving pages of `p` parked at `parked`, beside the evictor.
pub(super) async fn save_now(p: &Rc<Proc>, parked: Vec<(u64, u64)>) {
    match prepare(p, parked).await {
        Ok(batch) => {
            p.g.batches_in_flight.set(p.g.batches_in_flight.get() + 1);
            tokio::task::spawn_local(save_parked(p.clone(), batch));
        }
        // The address space went (an exec keeps the pid, so `fail` could not tell): nothing
        // to save.
        Err(_) if !p.uffd.mm_alive(p.unregistered_page()) => p.remove(),
        Err(e) => p.fail(format!("eviction failed: {e:#}")),
    }
}

/// A batch of parked pages on its way out.
pub(super) struct ParkedBatch {
    /// Pages to write: page, the copy to write, where it is parked, its content.
    writes: Vec<(u64, Remote, u64, PageData)>,
    /// Parking addresses whose page is saved already (clean): to free.
    to_free: Vec<u64>,
    /// Pages moved to the parking area.
    moved: u64,
    /// Of those, pages that needed no write.
    clean: u64,
}

/// How long the shim's helper may take to answer a PARK before the workload is stopped.
const PARK_TIMEOUT: Duration = Duration::from_secs(10);

/// Most runs of pages (one `UFFDIO_MOVE` each) in one park exchange. A process's faults wait
/// while its exchange runs, and a move of a page alone costs about 2 µs (PLATFORM.md): a batch
/// of 256 scattered victims held a fault for 0.35–0.5 ms. In parts, faults are read and served
/// between two exchanges (docs/eviction.md, "Parking in parts").
pub(super) const PARK_RUNS_PER_EXCHANGE: usize = 16;

/// Parks the victims of `p` (all marked `Evicting`) as [`park_part`] does, at most
/// [`PARK_RUNS_PER_EXCHANGE`] runs per exchange; between two exchanges the process's events
/// are read and applied, so each later part keeps only the pages still waiting to be moved
/// (an unmap takes a page out of the eviction). A part that finds the process forking ends the
/// parking: the rest stays resident, as in one exchange.
pub(super) async fn park(
    p: &Rc<Proc>,
    mut victims: Vec<u64>,
) -> anyhow::Result<(Vec<(u64, u64)>, Vec<u64>)> {
    victims.sort_unstable();
    let mut parts: Vec<Vec<u64>> = Vec::new();
    for (i, (start, len)) in runs(&victims).into_iter().enumerate() {
        if i % PARK_RUNS_PER_EXCHANGE == 0 {
            parts.push(Vec::new());
        }
        let part = parts.last_mut().expect("pushed above");
        part.extend((start..start + len).step_by(PAGE as usize));
    }
    let mut parked = Vec::new();
    let mut fallback = Vec::new();
    let mut parts = parts.into_iter();
    let mut first = true;
    while let Some(part) = parts.next() {
        let part: Vec<u64> = if std::mem::replace(&mut first, false) {
            part
        } else {
            // Let the fault loop read what came meanwhile, then keep what is still to move.
            tokio::task::yield_now().await;
            let t = p.table.borrow();
            part.into_iter()
                .filter(|&pg| {
                    matches!(t.state(pg), Some(crate::pages::State::Evicting(e)) if e.parked.is_none())
                })
                .collect()
        };
        if part.is_empty() {
            continue;
        }
        match park_part(p, part).await {
            Ok((pk, fb)) => {
                parked.extend(pk);
                fallback.extend(fb);
            }
            Err(e) => {
                abort_rest(p, parts.flatten());
                return Err(e);
            }
        }
        if p.forking.get() || p.removed.get() {
            abort_rest(p, parts.flatten());
            break;
        }
    }
    Ok((parked, fallback))
}

/// Ends the eviction of victims that were not sent to the shim: they stay resident.
fn abort_rest(p: &Rc<Proc>, rest: impl Iterator<Item = u64>) {
    let mut garbage = Vec::new();
    {
        let mut t = p.table.borrow_mut();
        for pg in rest {
            if matches!(t.state(pg), Some(crate::pages::State::Evicting(e)) if e.parked.is_none()) {
                garbage.extend(t.abort_eviction(pg));
            }
        }
    }
    p.g.free_later(garbage);
}

/// Moves the victims of `p` (all marked `Evicting`) into its parking area, one `UFFDIO_MOVE`
/// per contiguous run: returns the parked pages as `(page, parking address)`, and the pages that
/// cannot move, for the write-protect path. Pages that must not be evicted now (the address
/// space is changing, the parking area is full) stay resident.
///
/// The kernel takes `UFFDIO_MOVE` only from a thread of the process itself, so the shim's helper
/// issues it, and the process's userfaultfd events are not read until its answer is in. That is
/// what makes the move safe against the program changing its memory at the same time: an unmap,
/// remap, drop or fork raises `mmap_changing` on the uffd until its event is read, and a move
/// while it is raised fails with `EAGAIN` instead of moving a page that may belong to new memory
/// at the same address. Events read before the request are in the page table already; events
/// after it wait until the table knows what moved. (Reading them meanwhile would let the program
/// unmap, map new memory at the same address and write it before the move.)
async fn park_part(
    p: &Rc<Proc>,
    mut victims: Vec<u64>,
) -> anyhow::Result<(Vec<(u64, u64)>, Vec<u64>)> {
    victims.sort_unstable();
    // Runs of victims, each cut to fit runs of free parking slots: (source, slot, pages).
    let mut moves: Vec<(u64, u64, u64)> = Vec::new();
    let mut aborted = Vec::new();
    {
        let mut parking_ref = p.parking.borrow_mut();
        let parking = parking_ref.as_mut().context("no parking area")?;
        for (start, len) in runs(&victims) {
            let end = start + len;
            let mut page = start;
            while page < end {
                let want = ((end - page) / PAGE) as usize;
                let Some((at, n)) = parking.take_run(want) else {
                    aborted.extend((page..end).step_by(PAGE as usize));
                    break;
                };
                moves.push((page, at, n as u64));
                page += n as u64 * PAGE;
            }
        }
    }
    let mut parked: Vec<(u64, u64)> = Vec::with_capacity(victims.len());
    let mut fallback = Vec::new();
    let mut vanished = Vec::new();
    let mut forking = false;
    // From now until the answer, any of these pages may be gone from its address at any moment:
    // a fault on one waits (and is woken below).
    {
        let mut t = p.table.borrow_mut();
        for &(page, _, n) in &moves {
            for i in 0..n {
                t.dropping(page + i * PAGE);
            }
        }
    }
    let Some(mut shim) = p.take_shim().await else {
        // The process is gone: nothing to save.
        for &(page, at, n) in &moves {
            for i in 0..n {
                aborted.push(page + i * PAGE);
                if let Some(k) = p.parking.borrow_mut().as_mut() {
                    k.release(at + i * PAGE);
                }
            }
        }
        let mut garbage = Vec::new();
        for pg in aborted {
            garbage.extend(p.table.borrow_mut().abort_eviction(pg));
        }
        p.g.free_later(garbage);
        bail!("the process is gone");
    };
    // The process's uffd events wait until the answer (see above); everything else runs on.
    p.exchanging.set(true);
    let exchange_began = std::time::Instant::now();
    let id = p.g.next_drop_id.get() + 1;
    p.g.next_drop_id.set(id);
    let mut result: anyhow::Result<()> = Ok(());
    for chunk in moves.chunks(proto::MAX_RANGES) {
        let mut words = vec![proto::PARK, id, chunk.len() as u64];
        for &(src, dst, n) in chunk {
            words.extend([src, dst, n * PAGE]);
        }
        let reply = if result.is_err() {
            Vec::new()
        } else {
            match tokio::time::timeout(PARK_TIMEOUT, exchange(&mut shim, &words)).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    result = Err(anyhow::Error::new(e).context("the shim did not answer a park"));
                    Vec::new()
                }
                Err(_) => {
                    result = Err(anyhow::anyhow!(
                        "the shim did not answer a park within {PARK_TIMEOUT:?}"
                    ));
                    Vec::new()
                }
            }
        };
        let ok = reply.len() == 3 + 2 * chunk.len()
            && reply[0] == proto::PARKED
            && reply[1] == id
            && reply[2] == chunk.len() as u64;
        if !ok && result.is_ok() {
            result = Err(anyhow::anyhow!("unexpected answer to a park: {reply:?}"));
        }
        // No early return from here to the end of the exchange: the process's events wait
        // until `exchanging` is cleared and the shim is back.
        let mut k_ref = p.parking.borrow_mut();
        for (i, &(src, dst, n)) in chunk.iter().enumerate() {
            let (moved, errno) = if ok {
                (reply[3 + 2 * i].min(n), reply[4 + 2 * i] as i32)
            } else {
                (0, libc::EAGAIN)
            };
            for j in 0..moved {
                parked.push((src + j * PAGE, dst + j * PAGE));
            }
            if let Some(k) = k_ref.as_mut() {
                for j in moved..n {
                    k.release(dst + j * PAGE);
                }
            }
            if moved < n {
                let failing = src + moved * PAGE;
                let rest = (moved + 1..n).map(|j| src + j * PAGE);
                tracing::trace!(page = failing, errno, "cannot move");
                match errno {
                    // Not exclusive to the process (shared copy-on-write after a fork: EBUSY),
                    // or a mapping the kernel will not move from (EINVAL): protect instead. The
                    // rest of the run was not tried; it is most likely the same (a fork shares
                    // the whole heap, a mapping refuses all its pages), and write protection
                    // evicts any page, so it goes that way too. Left resident, it would come
                    // back as the next victims and stop at its first page again: after a fork,
                    // batches of 256 evicted one page each.
                    libc::EBUSY | libc::EINVAL | libc::EPERM => {
                        fallback.push(failing);
                        fallback.extend(rest);
                        continue;
                    }
                    // Not present: the program dropped it (MADV_DONTNEED/FREE keep the table's
                    // entry resident, as the page may stay), so it reads as zeros.
                    libc::ENOENT => vanished.push(failing),
                    // A thread of the process is inside fork(): nothing moves until it is out.
                    e if e as u64 == proto::PARK_FORKING => {
                        forking = true;
                        aborted.push(failing);
                    }
                    // The address space is changing, or an occupied slot: not now.
                    _ => aborted.push(failing),
                }
                // What follows the failing page was not tried: it stays resident for now.
                aborted.extend(rest);
            }
        }
    }
    *p.shim.borrow_mut() = Some(shim);
    {
        let mut t = p.table.borrow_mut();
        for &pg in &fallback {
            t.not_dropping(pg);
        }
        let mut garbage = Vec::new();
        for &pg in &vanished {
            garbage.extend(t.vanished(pg));
        }
        drop(t);
        p.g.free_later(garbage);
    }
    p.forking.set(forking);
    p.exchanging.set(false);
    p.g.stats.borrow_mut().exchange(exchange_began.elapsed());
    p.exchange_done.notify_waiters();
    // Threads that faulted on these pages meanwhile wait: let them fault again.
    for &(page, _, n) in &moves {
        let _ = p.uffd.wake(page, n * PAGE);
    }
    debug!(
        parked = parked.len(),
        aborted = aborted.len(),
        fallback = fallback.len(),
        "park exchange done"
    );
    {
        let mut t = p.table.borrow_mut();
        for &(page, at) in &parked {
            t.parked(page, at);
        }
    }
    let mut garbage = Vec::new();
    for &pg in &aborted {
        garbage.extend(p.table.borrow_mut().abort_eviction(pg));
    }
    p.g.free_later(garbage);
    // A write-protect fault on a victim read while the shim's connection was awaited waits for
    // the eviction (a page a forked child inherited write-protected); those that found no
    // parking slot were not in a move, so were not woken above: they retry now.
    aborted.sort_unstable();
    for (start, len) in runs(&aborted) {
        let _ = p.uffd.wake(start, len);
    }
    result?;
    {
        let held = p.parking.borrow().as_ref().map_or(0, |k| k.held());
        p.g.stats.borrow_mut().parked(held);
    }
    Ok((parked, fallback))
}

/// Reads and hashes the pages of `p` parked at `parked` (`(page, parking address)`), and
/// decides which must be written: the batch for [`save_parked`]. Pages no longer parked there
/// (rescued, dropped, unmapped) are left out.
async fn prepare(p: &Rc<Proc>, parked: Vec<(u64, u64)>) -> anyhow::Result<ParkedBatch> {
    let mut batch = ParkedBatch {
        writes: Vec::new(),
        to_free: Vec::new(),
        moved: parked.len() as u64,
        clean: 0,
    };
    let r = decide_parked(p, parked, &mut batch).await;
    if r.is_err() {
        // No write will go: the references the decided writes took are released.
        p.g.free_later(batch.writes.iter().map(|w| w.1).collect());
    }
    r.map(|()| batch)
}

/// The work of [`prepare`]: every page that needs a write is added to `batch.writes` with a
/// reference of the write's own to its slot ([`crate::pages::PageTable::writing`]).
async fn decide_parked(
    p: &Rc<Proc>,
    parked: Vec<(u64, u64)>,
    batch: &mut ParkedBatch,
) -> anyhow::Result<()> {
    // Read and hash the parked pages, a chunk at a time so that faults are served in between.
    // A parked page stays in its slot until the slot is freed (a rescue copies it back), so the
    // read never faults.
    let pid = p.pid.get();
    let mut buf = vec![0u8; READ_CHUNK * PAGE as usize];
    for chunk in parked.chunks(READ_CHUNK) {
        tokio::task::yield_now().await;
        if p.removed.get() {
            // Its references went with it (`Proc::remove`): its table must not release any more.
            bail!("the process is gone");
        }
        let still: Vec<(u64, u64)> = {
            let t = p.table.borrow();
            chunk
                .iter()
                .copied()
                .filter(|&(page, at)| {
                    matches!(t.state(page), Some(crate::pages::State::Evicting(e)) if e.parked == Some(at))
                })
                .collect()
        };
        let ats: Vec<u64> = still.iter().map(|x| x.1).collect();
        let bytes = &mut buf[..ats.len() * PAGE as usize];
        procfs::read_pages(pid, &ats, bytes).context("reading parked pages")?;
        let mut t = p.table.borrow_mut();
        let mut freed_garbage = Vec::new();
        for (i, &(page, at)) in still.iter().enumerate() {
            let content = &bytes[i * PAGE as usize..(i + 1) * PAGE as usize];
            match t.decide(page, digest(content)) {
                Decision::Clean(r) => {
                    if let Some((at, g)) = t.finish_parked(page, r) {
                        batch.to_free.push(at);
                        freed_garbage.extend(g);
                        batch.clean += 1;
                    }
                }
                Decision::Write(new) => {
                    t.writing(new);
                    batch
                        .writes
                        .push((page, new, at, PageData::from_bytes(content)));
                }
                Decision::Gone => {}
            }
        }
        drop(t);
        p.g.free_later(freed_garbage);
    }
    Ok(())
}

/// Writes a parked batch to the servers, ends the eviction of each page that is still parked
/// (a page that was rescued, dropped or unmapped meanwhile is left as it is now, its new copy
/// freed), moves back the pages the servers refused, and frees the parked pages through the
/// shim. Runs beside the evictor, so the next batch is chosen while this one is on the wire.
async fn save_parked(p: Rc<Proc>, batch: ParkedBatch) {
    let g = p.g.clone();
    let ParkedBatch {
        mut writes,
        mut to_free,
        moved,
        clean,
        ..
    } = batch;
    debug!(
        writes = writes.len(),
        to_free = to_free.len(),
        "saving a parked batch"
    );
    // The contents move to the write (nothing below reads them): no copy of the batch.
    let items: Vec<(Remote, PageData)> = writes
        .iter_mut()
        .map(|w| (w.1, std::mem::replace(&mut w.3, PageData::Zero)))
        .collect();
    let stored = if items.is_empty() {
        Vec::new()
    } else {
        g.servers.write(g.space, items).await
    };
    let mut written = 0u64;
    let mut failed = 0u64;
    // Each write's own reference to its slot goes now that the write is over, whatever became
    // of its page (see `PageTable::writing`).
    let mut garbage: Vec<Remote> = writes.iter().map(|w| w.1).collect();
    for ((page, new, at, _), ok) in writes.into_iter().zip(stored) {
        // A removed process's table is empty (`PageTable::release_all`): nothing is parked.
        let still_parked = matches!(
            p.table.borrow().state(page),
            Some(crate::pages::State::Evicting(e)) if e.parked == Some(at) && e.new == Some(new)
        );
        if !still_parked {
            // Rescued, dropped, unmapped or moved meanwhile: the page's own references were
            // dealt with then.
            continue;
        }
        if ok {
            if let Some((at, g2)) = p.table.borrow_mut().finish_parked(page, new) {
                to_free.push(at);
                garbage.extend(g2);
                written += 1;
            }
            continue;
        }
        failed += 1;
        // Refused: move it back where it was (nothing else can be there: any access since the
        // move was a fault that waits for this page).
        if let Err(e) = unpark(&p, page, at, &mut to_free).await {
            p.fail(format!("cannot move the parked page {page:#x} back: {e}"));
            continue;
        }
        garbage.extend(p.table.borrow_mut().abort_eviction(page));
    }
    if failed > 0 {
        warn!("{failed} pages could not be stored; they stay resident");
    }
    to_free.extend(p.table.borrow_mut().take_unparked());
    to_free.extend(p.pending_free.borrow_mut().drain(..));
    {
        let mut st = g.stats.borrow_mut();
        st.evictions(written + clean, written);
        st.evicted_by_move(written + clean);
    }
    g.note_left((written + clean) as usize);
    g.free_later(garbage);
    g.stored(written, failed);
    p.free_parked(to_free).await;
    g.batches_in_flight
        .set(g.batches_in_flight.get().saturating_sub(1));
    g.batch_done.notify_waiters();
    g.after_resident_change();
    g.retry_deferred();
    debug!(moved, clean, written, failed, "parked batch saved");
}

/// Puts the parked page at `at` back at `page` (a copy: see `Proc::rescue`), retrying while the
/// address space changes; its slot is freed with the others.
async fn unpark(p: &Proc, page: u64, at: u64, to_free: &mut Vec<u64>) -> io::Result<()> {
    let mut buf = [0u8; PAGE as usize];
    procfs::read_pages(p.pid.get(), &[at], &mut buf)?;
    for _ in 0..1000 {
        match p.uffd.copy(page, &buf, false)? {
            Install::Again => tokio::task::yield_now().await,
            Install::Done | Install::Exists | Install::Gone => {
                to_free.push(at);
                return Ok(());
            }
        }
    }
    Err(io::Error::from_raw_os_error(libc::EAGAIN))
}

/// Sends `words` to the shim and reads its answer.
async fn exchange(shim: &mut tokio::net::UnixStream, words: &[u64]) -> io::Result<Vec<u64>> {
    write_words(shim, words).await?;
    read_words(shim).await
}

mod free;
#[cfg(test)]
mod tests;
