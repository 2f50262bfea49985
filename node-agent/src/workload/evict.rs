//! Eviction: the evictor that keeps a workload under its budget, and the two ways a batch leaves.
//!
//! - **Parking** (`UFFDIO_MOVE`, [`park`] in `park.rs`, then saving in `save.rs`): the victims move into the
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

use std::{rc::Rc, time::Duration};

use tracing::debug;

use super::{
    grace::{release_grace, top_up_grace},
    process::Proc,
    protect::run_protected,
    Group, EVICT_BATCH,
};

/// Batches whose writes may be in flight at once (each up to [`EVICT_BATCH`] pages).
pub(super) const BATCHES_IN_FLIGHT: usize = 4;
/// How long faults may wait at the limit while nothing is evicted before they are let in.
const STALL_LIMIT: Duration = Duration::from_secs(5);

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
            let picked = choose(&g, want);
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
                    g.stats.borrow_mut().over_budget_stuck();
                    // Said once: a workload that pins or locks pages meets this again and again.
                    if !g.stuck_told.replace(true) {
                        eprintln!(
                            "yonder: nothing can be evicted right now (every resident page is in flight, locked in memory by the program, or pinned for I/O); the workload runs over its budget until some can (said once; the summary counts the times)"
                        );
                    }
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

/// The evictor's victims, up to `want`: pages only one process maps ([`pick_victims`]), and
/// pages shared copy-on-write, taken from every process that maps them ([`pick_shared`]), when
/// the first are a handful of what is needed. After a fork the pages only one side maps are the
/// few it writes (a Redis `BGSAVE` child's own buffers): evicted alone, a few per batch, they
/// came straight back, and batch after batch of them made no room (the save took 13-18 s
/// instead of 2, with 70,000 park exchanges and 93,000 rescues).
pub(super) fn choose(g: &Group, want: usize) -> Vec<(Rc<Proc>, Vec<u64>)> {
    let mut picked: Vec<(Rc<Proc>, Vec<u64>)> = pick_victims(g, want).into_iter().collect();
    let found: usize = picked.iter().map(|(_, v)| v.len()).sum();
    if found * 4 < want {
        picked.extend(pick_shared(g, want - found));
    }
    picked
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
        // Every resident page shared, locked or pinned: a scan of the whole policy would find
        // nothing.
        let held = shared.len() + p.held_back();
        if held > 0 && p.table.borrow().resident() <= held {
            continue;
        }
        let victims = p
            .table
            .borrow_mut()
            .start_eviction_where(want, &mut |pg| !shared.contains(&pg) && p.may_evict(pg));
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
        let held = p.held_back();
        if held > 0 && p.table.borrow().resident() <= held {
            continue;
        }
        let victims = p
            .table
            .borrow_mut()
            .start_eviction_where(want, &mut |pg| p.may_evict(pg));
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

mod free;
mod park;
mod save;
#[cfg(test)]
mod tests;

pub(super) use park::park;
pub(super) use save::save_now;
