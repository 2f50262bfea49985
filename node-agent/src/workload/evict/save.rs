//! Saving parked pages: reading and hashing them, writing those whose remote copy is not current
//! to the servers, and freeing their parking slots (docs/eviction.md).

use std::{io, rc::Rc};

use anyhow::{bail, Context};
use tracing::{debug, warn};
use yonder_common::protocol::{is_zero_page, PageData};

use super::super::process::Proc;
use crate::{
    pages::{digest, Decision, Remote, PAGE},
    procfs,
    uffd::Install,
};

/// Parked pages whose content is read and hashed between two yields of the fault thread.
const READ_CHUNK: usize = 64;

/// Reads, hashes and starts saving pages of `p` parked at `parked`, beside the evictor.
pub(in crate::workload) async fn save_now(p: &Rc<Proc>, parked: Vec<(u64, u64)>) {
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
pub(in crate::workload) struct ParkedBatch {
    /// Pages to write: page, the copy to write, where it is parked, its content.
    writes: Vec<(u64, Remote, u64, PageData)>,
    /// Parking addresses whose page is saved already (clean): to free.
    to_free: Vec<u64>,
    /// Pages moved to the parking area.
    moved: u64,
    /// Of those, pages that needed no write.
    clean: u64,
    /// Of the clean ones, pages of all zeros, which left without a copy.
    zero: u64,
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
        zero: 0,
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
            if is_zero_page(content) {
                // No copy at all: its next fault installs a zero page, with no fetch.
                if let Some((at, g)) = t.finish_parked_zero(page) {
                    batch.to_free.push(at);
                    freed_garbage.extend(g);
                    batch.clean += 1;
                    batch.zero += 1;
                }
                continue;
            }
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
                    // Not zeros (checked above), so no second scan for them.
                    batch
                        .writes
                        .push((page, new, at, PageData::Bytes(content.to_vec())));
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
        zero,
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
        st.evicted_as_zero(zero);
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
            r @ (Install::Done | Install::Exists | Install::Gone) => {
                if matches!(r, Install::Exists) {
                    warn!(
                        "a page moved back from parking found its address {page:#x} already \
                         filled; the parked content was not installed"
                    );
                }
                to_free.push(at);
                return Ok(());
            }
        }
    }
    Err(io::Error::from_raw_os_error(libc::EAGAIN))
}
