//! Parking: moving an eviction's victims into the process's parking area with `UFFDIO_MOVE`,
//! issued by the shim's helper, a few runs per exchange (docs/eviction.md, "Parking").

use std::{io, rc::Rc, time::Duration};

use anyhow::{bail, Context};
use tracing::debug;

use super::super::{
    process::Proc,
    shim_link::{read_words, runs, write_words},
};
use crate::{pages::PAGE, procfs, shim_proto as proto};

/// How long the shim's helper may take to answer a PARK before the workload is stopped.
const PARK_TIMEOUT: Duration = Duration::from_secs(10);

/// Most runs of pages (one `UFFDIO_MOVE` each) in one park exchange. A process's faults wait
/// while its exchange runs, and a move of a page alone costs about 2 µs (PLATFORM.md): a batch
/// of 256 scattered victims held a fault for 0.35–0.5 ms. In parts, faults are read and served
/// between two exchanges (docs/eviction.md, "Parking in parts").
pub(in crate::workload) const PARK_RUNS_PER_EXCHANGE: usize = 16;

/// Parks the victims of `p` (all marked `Evicting`) as [`park_part`] does, at most
/// [`PARK_RUNS_PER_EXCHANGE`] runs per exchange; between two exchanges the process's events
/// are read and applied, so each later part keeps only the pages still waiting to be moved
/// (an unmap takes a page out of the eviction). A part that finds the process forking ends the
/// parking: the rest stays resident, as in one exchange.
pub(in crate::workload) async fn park(
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
    let mut pinned = Vec::new();
    // Whether this process ever shared pages with another through a fork (see EBUSY below).
    let forked = p.forks.get() > 0 || p.forked_from.get().is_some();
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
                    // Not exclusive to the process: shared copy-on-write after a fork, or pinned
                    // for I/O (O_DIRECT, io_uring: the kernel writes into the very page, and a
                    // page dropped meanwhile would never see the data). pagemap tells them apart
                    // (a pinned page is mapped once; the kernel copies pinned pages at a fork).
                    // Shared pages take write protection, the rest of the run with them: it was
                    // not tried, and after a fork it is most likely shared too (left resident,
                    // it would come back as the next victims and stop at its first page again:
                    // batches of 256 evicted one page each). Pages mapped once stay resident;
                    // the one refused is held back from eviction for a while.
                    //
                    // That test only holds in a process that never shared memory through a fork:
                    // after a fork, a page keeps being refused when the other side has exited
                    // (the kernel marks it exclusive again only at the next write), although
                    // pagemap shows it mapped once. There every refused page takes write
                    // protection, as before; a pinned page of such a process is the gap
                    // (docs/node-agent.md).
                    libc::EBUSY if forked => {
                        fallback.push(failing);
                        fallback.extend(rest);
                        continue;
                    }
                    libc::EBUSY => {
                        let tried: Vec<u64> = std::iter::once(failing).chain(rest).collect();
                        // If pagemap cannot be read, none is known shared: all stay.
                        let shared: std::collections::HashSet<u64> =
                            procfs::shared_pages(p.pid.get(), &tried)
                                .unwrap_or_default()
                                .into_iter()
                                .collect();
                        for pg in tried {
                            if shared.contains(&pg) {
                                fallback.push(pg);
                            } else {
                                aborted.push(pg);
                            }
                        }
                        if !shared.contains(&failing) {
                            pinned.push(failing);
                        }
                        continue;
                    }
                    // A mapping the kernel will not move from (read-only, inaccessible; the
                    // shim moved a run that crosses two mappings page by page already): protect
                    // instead, the rest of the run too (a mapping refuses all its pages).
                    libc::EINVAL | libc::EPERM => {
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
    if !pinned.is_empty() {
        debug!(pages = pinned.len(), "pinned pages held back from eviction");
        p.pinned.hold(&pinned);
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

/// Sends `words` to the shim and reads its answer.
async fn exchange(shim: &mut tokio::net::UnixStream, words: &[u64]) -> io::Result<Vec<u64>> {
    write_words(shim, words).await?;
    read_words(shim).await
}
