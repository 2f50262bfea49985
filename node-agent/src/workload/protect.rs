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
    // From here until the shim's answer, REMOVE events on these pages are counted, not taken as
    // the program's: the helper's own drops raise them too (see `settle_drops`).
    let mut drop_pages = Vec::new();
    {
        let mut t = p.table.borrow_mut();
        let mut ours = p.our_drops.borrow_mut();
        for &pg in &pages {
            if t.dropping(pg) {
                drop_pages.push(pg);
                ours.insert(pg, 0);
            }
        }
    }
    let drop_runs = runs(&drop_pages);
    let mut errno = 0;
    let mut helper_dropped = HashSet::new();
    for chunk in drop_messages(&drop_runs) {
        let mut words = vec![proto::DROP, id, chunk.len() as u64];
        for &(s, l) in &chunk {
            words.extend([s, l]);
        }
        write_words(shim, &words)
            .await
            .context("sending a drop to the shim")?;
        let reply = read_words(shim)
            .await
            .context("the shim did not answer a drop (process gone?)")?;
        let pages_asked: u64 = chunk.iter().map(|&(_, l)| l / PAGE).sum();
        let bitmap_words = pages_asked.div_ceil(64) as usize;
        if reply.len() != 3 + bitmap_words || reply[0] != proto::DROPPED || reply[1] != id {
            bail!("unexpected reply from the shim: {reply:?}");
        }
        errno = errno.max(reply[2]);
        let bitmap = &reply[3..];
        let mut i = 0usize;
        for &(s, l) in &chunk {
            for k in 0..l / PAGE {
                if bitmap[i / 64] & (1 << (i % 64)) != 0 {
                    helper_dropped.insert(s + k * PAGE);
                }
                i += 1;
            }
        }
    }
    garbage.extend(settle_drops(p, &drop_pages, &helper_dropped));
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

/// Splits drop runs into DROP messages: at most [`proto::MAX_RANGES`] ranges and
/// [`proto::MAX_DROP_PAGES`] pages each (a longer run is split).
fn drop_messages(drop_runs: &[(u64, u64)]) -> Vec<Vec<(u64, u64)>> {
    let max_bytes = proto::MAX_DROP_PAGES as u64 * PAGE;
    let mut out: Vec<Vec<(u64, u64)>> = Vec::new();
    let mut bytes = 0;
    for &(start, len) in drop_runs {
        let mut at = start;
        while at < start + len {
            let full = out
                .last()
                .is_none_or(|m| m.len() == proto::MAX_RANGES || bytes == max_bytes);
            if full {
                out.push(Vec::new());
                bytes = 0;
            }
            let take = (start + len - at).min(max_bytes - bytes);
            out.last_mut().expect("a message").push((at, take));
            bytes += take;
            at += take;
        }
    }
    out
}

/// After the shim answered the drops of `drop_pages`: a REMOVE event on one of them while the
/// drop was pending was the helper's own if the helper dropped that page (`helper_dropped`: one
/// event each), the program's otherwise, or beyond that one. The program's drop is applied now
/// (the page reads as zeros, its saved copy never comes back); the pages are no longer counted.
/// Returns remote copies that are now garbage.
///
/// Taking the first REMOVE event as the helper's, as before session 25, lost the program's drop
/// when it came first: the program's `MADV_DONTNEED` zapped the page, the helper found no mark
/// on it and dropped nothing, and the saved content came back at the next fault
/// (`tests/workloads/remap.c` under `--evict-by protect`, once in a loaded suite run).
fn settle_drops(p: &Proc, drop_pages: &[u64], helper_dropped: &HashSet<u64>) -> Vec<Remote> {
    let mut program = Vec::new();
    {
        let mut ours = p.our_drops.borrow_mut();
        for pg in drop_pages {
            let seen = ours.remove(pg).unwrap_or(0);
            if seen > u32::from(helper_dropped.contains(pg)) {
                program.push(*pg);
            }
        }
    }
    let mut garbage = Vec::new();
    let mut t = p.table.borrow_mut();
    for (s, len) in runs(&program) {
        garbage.extend(t.program_dropped(s, s + len));
    }
    garbage
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_messages_respect_both_limits_and_cover_every_page() {
        let max = proto::MAX_DROP_PAGES as u64 * PAGE;
        // Many small runs: cut by the range count.
        let small: Vec<(u64, u64)> = (0..200u64).map(|i| (i * 4 * PAGE, PAGE)).collect();
        let m = drop_messages(&small);
        assert_eq!(m.len(), 4);
        assert!(m.iter().all(|c| c.len() <= proto::MAX_RANGES));
        // One long run and a short one: cut by the page count.
        let long = [(0, max + 3 * PAGE), (max + 10 * PAGE, PAGE)];
        let m = drop_messages(&long);
        assert_eq!(
            m,
            vec![
                vec![(0, max)],
                vec![(max, 3 * PAGE), (max + 10 * PAGE, PAGE)]
            ]
        );
        for c in &m {
            assert!(c.iter().map(|r| r.1).sum::<u64>() <= max);
        }
        assert!(drop_messages(&[]).is_empty());
    }
}
