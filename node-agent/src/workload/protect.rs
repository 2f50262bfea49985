//! Eviction by write protection, for pages that cannot move into the parking area (shared
//! copy-on-write after a fork, or a kernel without `UFFDIO_MOVE`): write-protect, copy out,
//! store on the servers, drop inside the process through the shim, then wake whoever blocked.

use std::{
    collections::{HashMap, HashSet},
    io,
    rc::Rc,
};

use anyhow::{bail, Context};
use tracing::{debug, warn};
use yonder_common::protocol::PageData;

use super::{
    process::Proc,
    shim_link::{read_words, runs, write_words},
    Group,
};
use crate::{
    pages::{digest, Decision, Remote, PAGE},
    procfs, shim_proto as proto,
    uffd::Install,
};

/// Evicts `victims` of `p` by write protection, with the shim's drop; reports servers that
/// refuse pages as [`evictor`] expects.
pub(super) async fn run_protected(g: &Rc<Group>, p: &Rc<Proc>, victims: Vec<u64>) {
    let Some(mut shim) = p.take_shim().await else {
        for pg in victims {
            let garbage = p.table.borrow_mut().abort_eviction(pg);
            g.free_later(garbage.into_iter().collect());
        }
        return;
    };
    let id = g.next_drop_id.get() + 1;
    g.next_drop_id.set(id);
    let r = evict_protected(p, victims, &mut shim, id).await;
    *p.shim.borrow_mut() = Some(shim);
    match r {
        Ok(Saved { written, failed }) => g.stored(written, failed),
        // A process that ended mid-eviction is reaped; anything else is fatal.
        Err(e) => p.fail(format!("eviction failed: {e:#}")),
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

/// What an eviction batch managed to store.
pub(super) struct Saved {
    /// Pages written to the servers.
    pub(super) written: u64,
    /// Pages that could not be stored (they stay resident).
    pub(super) failed: u64,
}

/// Evicts a batch without losing a racing write: write-protect, copy out, write to the servers,
/// drop inside the process, then wake whoever blocked meanwhile.
pub(super) async fn evict_protected(
    p: &Rc<Proc>,
    mut pages: Vec<u64>,
    shim: &mut tokio::net::UnixStream,
    id: u64,
) -> anyhow::Result<Saved> {
    let pid = p.pid.get();
    pages.sort_unstable();
    let all_runs = runs(&pages);
    for &(start, len) in &all_runs {
        write_protect(p, start, len, true)
            .await
            .with_context(|| format!("write-protecting {start:#x}+{len:#x}"))?;
    }

    // Copy out every victim (its digest says whether its remote copy is current); a page neither
    // in memory nor in swap was dropped by the program and reads as zeros (a swapped-out page is
    // read back in by the copy). The read runs on a blocking thread: it could fault on the
    // process's memory, which this thread must stay free to serve.
    let mut present = HashSet::new();
    for &(start, len) in &all_runs {
        present.extend(procfs::populated_pages(pid, start, start + len)?);
    }
    let readable: Vec<u64> = pages
        .iter()
        .copied()
        .filter(|pg| present.contains(pg))
        .collect();
    // The buffer is allocated here, not on the blocking thread: memory that thread allocates
    // stays in its own malloc arena once freed (3.3 MiB of it in a 2 GiB run, docs/scale.md).
    let mut buf = vec![0u8; readable.len() * PAGE as usize];
    let read = tokio::task::spawn_blocking(move || {
        procfs::read_pages(pid, &readable, &mut buf).map(|()| (readable, buf))
    })
    .await?;
    let (readable, contents) = match read {
        Ok(r) => r,
        Err(e) => {
            // A page that cannot be read (unmapped meanwhile): give the batch up, as it is.
            // The program's unmap event, if that is what it was, forgets its pages next.
            debug!("cannot read a batch to evict ({e}): it stays resident");
            let mut garbage = Vec::new();
            for &pg in &pages {
                garbage.extend(p.table.borrow_mut().abort_eviction(pg));
            }
            for &(start, len) in &all_runs {
                write_protect(p, start, len, false).await?;
                p.uffd.wake(start, len)?;
            }
            p.g.free_later(garbage);
            return Ok(Saved {
                written: 0,
                failed: 0,
            });
        }
    };
    let mut content_of: HashMap<u64, &[u8]> = HashMap::new();
    for (i, pg) in readable.iter().enumerate() {
        content_of.insert(*pg, &contents[i * PAGE as usize..(i + 1) * PAGE as usize]);
    }
    const ZEROS: [u8; PAGE as usize] = [0; PAGE as usize];
    let mut to_write: Vec<(u64, Remote)> = Vec::new();
    let mut items: Vec<(Remote, PageData)> = Vec::new();
    {
        let mut t = p.table.borrow_mut();
        for &pg in &pages {
            let content = content_of.get(&pg).copied().unwrap_or(&ZEROS);
            if let Decision::Write(new) = t.decide(pg, digest(content)) {
                t.writing(new);
                to_write.push((pg, new));
                items.push((new, PageData::from_bytes(content)));
            }
        }
    }
    let stored = p.g.servers.write(p.g.space, items).await;
    // The writes are over: their own references to their slots go (`PageTable::writing`).
    p.g.free_later(to_write.iter().map(|w| w.1).collect());

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
    // Pages the shim did not drop (no longer ours, or madvise failed) are still present (or in
    // swap): those still being evicted stay resident.
    let mut still_present = HashSet::new();
    for &(start, len) in &drop_runs {
        still_present.extend(procfs::populated_pages(pid, start, start + len)?);
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
    {
        let mut st = p.g.stats.borrow_mut();
        st.evictions(done, written.min(done));
        st.evicted_by_protection(done);
    }
    p.g.note_left(done as usize);
    let resident = p.g.resident();
    p.g.stats.borrow_mut().resident(resident);
    p.g.free_later(garbage);
    Ok(Saved {
        written,
        failed: failed.len() as u64,
    })
}
