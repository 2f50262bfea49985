//! Eviction: the evictor that keeps a workload under its budget, and one eviction batch
//! (write-protect, copy out, store on the servers, drop inside the process through the shim).

use std::{
    collections::{HashMap, HashSet},
    io,
    rc::Rc,
    time::Duration,
};

use anyhow::{bail, Context};
use tokio::net::UnixStream;
use tracing::{debug, warn};
use yonder_common::protocol::PageData;

use super::{
    process::Proc,
    shim_link::{read_words, runs, write_words},
    Group, EVICT_BATCH,
};
use crate::{
    pages::{Remote, PAGE},
    procfs, shim_proto as proto,
    uffd::Install,
};

/// Evicts from the process with the most resident pages while the workload is over budget.
pub(super) async fn evictor(g: Rc<Group>) {
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
pub(super) struct Saved {
    /// Pages written to the servers.
    pub(super) written: u64,
    /// Pages that could not be stored (they stay resident).
    pub(super) failed: u64,
}

pub(super) async fn evict(
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
