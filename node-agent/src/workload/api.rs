//! The client API: a process of the workload asks to register, unregister, prefetch or flush a
//! range of its memory (see `proto::API_MAGIC`).

use std::{
    collections::BTreeMap,
    rc::Rc,
    time::{Duration, Instant},
};

use tokio::net::UnixStream;
use tracing::warn;

use super::{
    faults::fetch,
    process::{cut, uncovered, Proc},
    protect::{evict_protected, Saved},
    shim_link::{read_words, write_words},
};
use crate::{
    pages::{Remote, State, PAGE},
    procfs, shim_proto as proto,
    uffd::Install,
};

/// A client-API request that passed the checks that need no process: a known operation on a
/// non-empty, page-aligned range that does not wrap around.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiRequest {
    /// One of `proto::OP_*`.
    pub op: u64,
    /// First byte of the range.
    pub start: u64,
    /// End of the range (exclusive), above `start`.
    pub end: u64,
}

/// Checks the words of one client-API request, `[op, start, len]`; the errno to answer
/// otherwise (`EINVAL` for a bad shape or range, `EOPNOTSUPP` for an unknown operation).
pub fn parse_request(words: &[u64]) -> Result<ApiRequest, i32> {
    let &[op, start, len] = words else {
        return Err(libc::EINVAL);
    };
    let Some(end) = start.checked_add(len) else {
        return Err(libc::EINVAL);
    };
    if !start.is_multiple_of(PAGE) || !len.is_multiple_of(PAGE) || len == 0 {
        return Err(libc::EINVAL);
    }
    if !matches!(
        op,
        proto::OP_REGISTER | proto::OP_UNREGISTER | proto::OP_PREFETCH | proto::OP_FLUSH
    ) {
        return Err(libc::EOPNOTSUPP);
    }
    Ok(ApiRequest { op, start, end })
}

/// Serves one client-API connection of a process (see `proto::API_MAGIC`).
pub(super) async fn api_loop(p: Rc<Proc>, mut s: UnixStream) {
    loop {
        let Ok(words) = read_words(&mut s).await else {
            return;
        };
        let op = words.first().copied().unwrap_or(0);
        let errno = match parse_request(&words) {
            Ok(req) => p.api(req).await,
            Err(errno) => errno,
        };
        if write_words(&mut s, &[op, errno as u64]).await.is_err() {
            return;
        }
    }
}

impl Proc {
    /// Runs one checked client-API request; returns 0 or an errno.
    async fn api(self: &Rc<Self>, req: ApiRequest) -> i32 {
        let ApiRequest { op, start, end } = req;
        if matches!(op, proto::OP_PREFETCH | proto::OP_FLUSH) {
            // As madvise(2): the whole range must be mapped.
            let Ok(ranges) = procfs::all_ranges(self.pid.get()) else {
                return libc::ESRCH;
            };
            let mapped: BTreeMap<u64, u64> = ranges.into_iter().collect();
            if !uncovered(&mapped, &BTreeMap::new(), start, end).is_empty() {
                return libc::ENOMEM;
            }
        }
        match op {
            proto::OP_REGISTER => self.api_register(start, end),
            proto::OP_UNREGISTER => self.api_unregister(start, end).await,
            proto::OP_PREFETCH => {
                self.prefetch_range(start, end);
                0
            }
            proto::OP_FLUSH => self.api_flush(start, end).await,
            _ => libc::EOPNOTSUPP,
        }
    }

    fn api_register(&self, start: u64, end: u64) -> i32 {
        // Only private anonymous writable memory can be paged (shared memory keeps its pages in
        // the page cache whatever the agent drops).
        let Ok(ranges) = procfs::anonymous_ranges(self.pid.get()) else {
            return libc::ESRCH;
        };
        if !uncovered(&ranges.into_iter().collect(), &BTreeMap::new(), start, end).is_empty() {
            return libc::EINVAL;
        }
        if let Err(e) = self.uffd.register(start, end - start) {
            return e.raw_os_error().unwrap_or(libc::EINVAL);
        }
        cut(&mut self.refused.borrow_mut(), start, end);
        cut(&mut self.registered.borrow_mut(), start, end);
        self.registered.borrow_mut().insert(start, end);
        if let Ok(present) = procfs::populated_pages(self.pid.get(), start, end) {
            let mut t = self.table.borrow_mut();
            for p in present {
                t.found_present(p);
            }
        }
        self.g.after_resident_change();
        0
    }

    /// Starts fetching the evicted pages of `[start, end)`, as far as the budget has room.
    fn prefetch_range(self: &Rc<Self>, start: u64, end: u64) {
        let evicted: Vec<(u64, Remote)> = self
            .table
            .borrow()
            .states_in(start, end)
            .into_iter()
            .filter_map(|(pg, st)| match st {
                State::Evicted { remote } => Some((pg, remote)),
                _ => None,
            })
            .collect();
        let room = self.g.soft_limit().saturating_sub(self.g.resident());
        let mut batch = Vec::new();
        for (pg, remote) in evicted.into_iter().take(room.max(1)) {
            if self.table.borrow_mut().start_fetch(pg) {
                batch.push((pg, remote));
            }
            if batch.len() == 64 {
                let b = std::mem::take(&mut batch);
                tokio::task::spawn_local(fetch(self.clone(), b, false, Instant::now()));
            }
        }
        if !batch.is_empty() {
            tokio::task::spawn_local(fetch(self.clone(), batch, false, Instant::now()));
        }
        self.g.after_resident_change();
    }

    async fn api_unregister(self: &Rc<Self>, start: u64, end: u64) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // Bring every evicted page back and wait for what is in flight.
            let busy = self
                .table
                .borrow()
                .states_in(start, end)
                .iter()
                .any(|(_, st)| !matches!(st, State::Resident { .. }));
            if !busy {
                // No await from here on: nothing can start evicting these pages meanwhile.
                match self.uffd.write_protect(start, end - start, false) {
                    Ok(Install::Again) => {}
                    Ok(_) => {
                        if let Err(e) = self.uffd.unregister(start, end - start) {
                            return e.raw_os_error().unwrap_or(libc::EINVAL);
                        }
                        let garbage = self.table.borrow_mut().unmapped(start, end);
                        cut(&mut self.registered.borrow_mut(), start, end);
                        self.refused.borrow_mut().insert(start, end);
                        self.g.free_later(garbage);
                        return 0;
                    }
                    Err(e) => return e.raw_os_error().unwrap_or(libc::EINVAL),
                }
            }
            if Instant::now() > deadline {
                return libc::ETIMEDOUT;
            }
            // Pages waiting in the grace window would wait there until the next pressure:
            // have them saved, so they can be fetched back.
            self.g.release_grace_of(self).await;
            self.prefetch_range(start, end);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    async fn api_flush(self: &Rc<Self>, start: u64, end: u64) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(60);
        // Right after a fork or start the shim's helper may not be up yet: wait for it.
        while !self.helper_up.get() {
            if self.removed.get() || Instant::now() > deadline {
                return libc::EAGAIN;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // The evictor may be using the shim: wait for it.
        let mut shim = loop {
            if let Some(s) = self.shim.borrow_mut().take() {
                break s;
            }
            if self.removed.get() || Instant::now() > deadline {
                return libc::ESRCH;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let pages: Vec<u64> = self
            .table
            .borrow()
            .states_in(start, end)
            .into_iter()
            .filter(|(_, st)| matches!(st, State::Resident { .. }))
            .map(|(pg, _)| pg)
            .collect();
        let victims = self.table.borrow_mut().start_eviction_of(pages);
        let id = self.g.next_drop_id.get() + 1;
        self.g.next_drop_id.set(id);
        let r = if victims.is_empty() {
            Ok(Saved {
                written: 0,
                failed: 0,
            })
        } else {
            evict_protected(self, victims, &mut shim, id).await
        };
        *self.shim.borrow_mut() = Some(shim);
        // Pages the evictor had parked in the range leave with their batch: wait for them, and
        // end the grace window of those waiting in it. Ended again on every round: a top-up
        // that was parking when the flush began adds its batch to the window afterwards, and
        // without pressure nothing else would ever end that batch's window.
        while self
            .table
            .borrow()
            .states_in(start, end)
            .iter()
            .any(|(_, st)| matches!(st, State::Evicting(_)))
        {
            self.g.release_grace_of(self).await;
            if self.removed.get() || Instant::now() > deadline {
                return libc::ETIMEDOUT;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        match r {
            Ok(Saved { failed: 0, .. }) => 0,
            Ok(_) => libc::ENOSPC,
            Err(e) => {
                warn!("flush of {start:#x}-{end:#x} failed: {e:#}");
                libc::EIO
            }
        }
    }
}
