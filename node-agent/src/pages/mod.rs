//! The agent's page table for one workload: what each managed page is, where its remote copy
//! lives, and how many pages are resident. Pure logic: the fault loop and the evictor call it and
//! do the I/O its answers ask for.
//!
//! States of a page (a page with no entry was never seen, or was dropped by the program, and
//! reads as zeros):
//!
//! - `Resident`: present in the workload. `dirty` when it is known to differ from `remote` (or
//!   has none); otherwise it may equal `remote` (it was fetched from there), which an eviction
//!   checks by comparing the content's digest with the one recorded for that copy ([`Slots`]).
//! - `Fetching`: not present, a fetch of `remote` is in flight.
//! - `Evicting`: leaving. Either parked (moved into the process's parking area by `UFFDIO_MOVE`:
//!   any access is a missing fault that moves it back, a rescue), or, for a page that cannot move,
//!   present and write-protected until the shim drops it.
//! - `Evicted`: not present; its content is `remote`.
//!
//! The table also keeps ghosts: pages evicted recently. A fetch of a ghost is a refault (the
//! eviction was a mistake), which the policy hears about.

use std::{cell::RefCell, collections::VecDeque, rc::Rc};

use crate::eviction::EvictionPolicy;

mod dense;
mod entry;
mod evicting;
mod slots;

use entry::Entries;

pub use dense::PageMap;

pub use slots::{digest, Digest, Remote, Slots};

/// Size of a page.
pub const PAGE: u64 = 4096;

/// A page under eviction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Evicting {
    /// The remote copy it had before (if any).
    pub old: Option<Remote>,
    /// Known to differ from `old` (its content must be written whatever its digest).
    pub dirty: bool,
    /// The copy the eviction writes (or reuses), once its content was read ([`PageTable::decide`]).
    pub new: Option<Remote>,
    /// Where the page waits in the parking area, when it was moved there.
    pub parked: Option<u64>,
    /// The drop has been sent to the shim: the page may already be gone from the workload.
    pub dropping: bool,
    /// The program dropped the page meanwhile: it must read as zeros afterwards.
    pub program_dropped: bool,
}

/// State of one page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Present in the workload.
    Resident {
        /// Differs from `remote` (or has none).
        dirty: bool,
        /// Last remote copy, if any.
        remote: Option<Remote>,
    },
    /// Being fetched from `remote`.
    Fetching {
        /// The copy being fetched.
        remote: Remote,
    },
    /// Being evicted.
    Evicting(Evicting),
    /// Only on the servers.
    Evicted {
        /// The copy.
        remote: Remote,
    },
}

/// What a write-protect fault asks the agent to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteFault {
    /// Remove the write protection (which wakes the writer): the page is now dirty.
    Unprotect,
    /// Leave the writer blocked until the eviction of this page ends, then wake it.
    WaitForEviction,
    /// Wake the writer; it will retry and take a missing fault.
    Wake,
}

/// What a missing fault asks the agent to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MissingFault {
    /// Install a zero page.
    ZeroFill,
    /// Fetch this copy and install it.
    Fetch(Remote),
    /// A fetch is already in flight; its install wakes the thread.
    InFlight,
    /// Leave the thread blocked until the eviction of this page ends, then wake it.
    WaitForEviction,
    /// The page is parked at this address: move it back (which wakes the thread).
    Rescue(u64),
}

/// What a page under eviction needs once its content is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Its remote copy already holds this content: nothing to write.
    Clean(Remote),
    /// Write the content as this copy.
    Write(Remote),
    /// It is no longer being evicted.
    Gone,
}

/// The page table of one workload.
pub struct PageTable<P> {
    entries: Entries,
    /// Told of pages by page number (address / [`PAGE`]), which keeps its own maps dense.
    policy: P,
    resident: usize,
    slots: Rc<RefCell<Slots>>,
    /// Pages evicted recently, oldest first (at most `ghost_cap`); a page is a ghost while its
    /// entry carries the mark.
    ghosts: VecDeque<u64>,
    ghost_cap: usize,
    /// Parking addresses whose page no longer needs them (dropped or unmapped by the program
    /// while parked), to be freed by the owner ([`Self::take_unparked`]).
    unparked: Vec<u64>,
    /// Parked pages the program moved (mremap) while they waited, as `(new address, parking
    /// address)`: the batch that parked them names their old address and leaves them out, so
    /// the owner saves them in a batch of their own ([`Self::take_moved_parked`]).
    moved_parked: Vec<(u64, u64)>,
}

impl<P: EvictionPolicy> PageTable<P> {
    /// An empty table using `policy` to choose victims, with slots of its own.
    pub fn new(policy: P) -> Self {
        Self::with_slots(policy, Rc::default())
    }

    /// An empty table whose remote copies live in the shared `slots`. The table reads them to
    /// name its pages' copies: no mutable borrow of them may be held across a call to it.
    pub fn with_slots(policy: P, slots: Rc<RefCell<Slots>>) -> Self {
        Self {
            entries: Entries::default(),
            policy,
            resident: 0,
            slots,
            ghosts: VecDeque::new(),
            ghost_cap: 0,
            unparked: Vec::new(),
            moved_parked: Vec::new(),
        }
    }

    fn get(&self, page: u64) -> Option<State> {
        self.entries.get(&self.slots.borrow(), page)
    }

    fn put(&mut self, page: u64, state: State) {
        self.entries.set(&self.slots.borrow(), page, Some(state));
    }

    fn remove(&mut self, page: u64) {
        self.entries.set(&self.slots.borrow(), page, None);
    }

    /// Remembers up to `n` recently evicted pages as ghosts (0: none).
    pub fn set_ghost_capacity(&mut self, n: usize) {
        self.ghost_cap = n;
        while self.ghosts.len() > n {
            if let Some(g) = self.ghosts.pop_front() {
                self.entries.set_ghost(g, false);
            }
        }
    }

    fn remember_ghost(&mut self, page: u64) {
        if self.ghost_cap == 0 || self.entries.is_ghost(page) {
            return;
        }
        let oldest = if self.ghosts.len() >= self.ghost_cap {
            self.ghosts.pop_front()
        } else {
            None
        };
        if self.ghosts.len() == self.ghosts.capacity() {
            // Grow as a vector would, but never beyond the cap.
            let len = self.ghosts.len();
            let target = (2 * len).max(16).min(self.ghost_cap).max(len + 1);
            self.ghosts.reserve_exact(target - len);
        }
        self.entries.set_ghost(page, true);
        self.ghosts.push_back(page);
        if let Some(g) = oldest {
            self.entries.set_ghost(g, false);
        }
    }

    /// Parking addresses the table no longer needs (their pages were dropped or unmapped by the
    /// program while parked): the caller frees them.
    pub fn take_unparked(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.unparked)
    }

    /// Parked pages the program moved while they waited, as `(new address, parking address)`:
    /// the caller saves them (their batch left them out).
    pub fn take_moved_parked(&mut self) -> Vec<(u64, u64)> {
        std::mem::take(&mut self.moved_parked)
    }

    /// The slots this table's remote copies live in.
    pub fn slots(&self) -> &Rc<RefCell<Slots>> {
        &self.slots
    }

    /// The table of a child forked while this table was current: every remote copy is shared
    /// (one more reference each), and each page is in the state the child's memory can be in.
    ///
    /// The kernel copied the address space before the agent read the fork event, but while it
    /// waited for us no ioctl on the parent's uffd could succeed (`mmap_changing`), so installs
    /// and write protections match the copy. Only the shim's drops could run meanwhile: a page
    /// whose drop was under way is taken as evicted (its saved copy equals its content, and a
    /// write to it if it is still present comes as a write-protect fault, which repairs the
    /// state in [`Self::write_fault`]).
    ///
    /// Pages in `not_inherited` (sorted `(start, end)` ranges the parent marked
    /// `MADV_WIPEONFORK` or `MADV_DONTFORK`) get no entry: the child's memory there is empty
    /// (read as zeros) or not mapped at all.
    ///
    /// A page parked in the parent is in neither address space's page tables at its address,
    /// and the child's parking area is empty (wiped on fork): it is returned as `(page, parking
    /// address)` for the caller to copy into the child, where it is resident and dirty.
    pub fn fork_clone(&self, policy: P, not_inherited: &[(u64, u64)]) -> (Self, Vec<(u64, u64)>) {
        let mut child = Self::with_slots(policy, self.slots.clone());
        child.ghost_cap = self.ghost_cap;
        let mut copies = Vec::new();
        let mut slots = self.slots.borrow_mut();
        // In batches: the states of a large table are not all copied out at once.
        let mut from = 0;
        loop {
            let batch = self.entries.states_from(&slots, from, 4096);
            let Some(&(last, _)) = batch.last() else {
                break;
            };
            from = last + PAGE;
            for (page, state) in batch {
                if not_inherited.iter().any(|&(a, b)| a <= page && page < b) {
                    continue;
                }
                let state = match state {
                    State::Resident { .. } => state,
                    State::Fetching { remote } | State::Evicted { remote } => {
                        State::Evicted { remote }
                    }
                    State::Evicting(e) if e.program_dropped => continue,
                    State::Evicting(Evicting {
                        parked: Some(at), ..
                    }) => {
                        copies.push((page, at));
                        State::Resident {
                            dirty: true,
                            remote: None,
                        }
                    }
                    State::Evicting(e) if !e.dropping => State::Resident {
                        dirty: true,
                        remote: e.old,
                    },
                    State::Evicting(e) => match e.new {
                        Some(remote) => State::Evicted { remote },
                        None => continue,
                    },
                };
                match state {
                    State::Resident { remote, .. } => {
                        if let Some(r) = remote {
                            slots.share(r.slot);
                        }
                        child.resident += 1;
                        child.policy.inserted(page / PAGE);
                    }
                    State::Evicted { remote } => slots.share(remote.slot),
                    _ => {}
                }
                child.entries.set(&slots, page, Some(state));
            }
        }
        (child, copies)
    }

    /// The process is gone: empties the table and returns every reference it held, to release.
    /// Work still in flight for it (an eviction batch on the wire) then finds none of its pages,
    /// so it cannot release a reference a second time.
    pub fn release_all(&mut self) -> Vec<Remote> {
        let refs = self.all_references();
        self.entries = Entries::default();
        self.resident = 0;
        self.ghosts.clear();
        refs
    }

    /// Every remote copy the table refers to, one per reference it holds.
    pub fn all_references(&self) -> Vec<Remote> {
        let mut out = Vec::new();
        self.entries
            .for_each(&self.slots.borrow(), |_, state| match state {
                State::Resident { remote, .. } => out.extend(remote),
                State::Fetching { remote } | State::Evicted { remote } => out.push(remote),
                State::Evicting(e) => {
                    out.extend(e.old);
                    out.extend(e.new.filter(|n| Some(n.slot) != e.old.map(|o| o.slot)));
                }
            });
        out
    }

    /// Pages present in the workload or about to be (resident, being fetched or evicted).
    pub fn resident(&self) -> usize {
        self.resident
    }

    /// The state of a page.
    pub fn state(&self, page: u64) -> Option<State> {
        self.get(page)
    }

    fn make_resident(&mut self, page: u64, state: State) {
        let was_resident = matches!(
            self.get(page),
            Some(State::Resident { .. } | State::Fetching { .. } | State::Evicting(_))
        );
        self.put(page, state);
        if !was_resident {
            self.resident += 1;
        }
        self.policy.inserted(page / PAGE);
    }

    /// A page found present when its range was registered.
    pub fn found_present(&mut self, page: u64) {
        if self.get(page).is_none() {
            self.make_resident(
                page,
                State::Resident {
                    dirty: true,
                    remote: None,
                },
            );
        }
    }

    /// Decides what a missing fault on `page` needs. Zero-fill and fetch decisions are not applied
    /// yet: call [`Self::zero_filled`] or [`Self::start_fetch`].
    pub fn missing_fault(&self, page: u64) -> MissingFault {
        match self.get(page) {
            None => MissingFault::ZeroFill,
            // A resident page cannot take a missing fault unless the program dropped it without
            // an event reaching us first: its content is zeros.
            Some(State::Resident { .. }) => MissingFault::ZeroFill,
            Some(State::Fetching { .. }) => MissingFault::InFlight,
            Some(State::Evicted { remote }) => MissingFault::Fetch(remote),
            Some(State::Evicting(Evicting {
                parked: Some(at), ..
            })) => MissingFault::Rescue(at),
            Some(State::Evicting(e)) if !e.dropping => {
                // Not dropped by us yet, so the program dropped it: zeros, and the eviction
                // must not keep the old content.
                MissingFault::ZeroFill
            }
            Some(State::Evicting(_)) => MissingFault::WaitForEviction,
        }
    }

    /// A zero page was installed. Returns a remote copy that is now garbage, if any.
    pub fn zero_filled(&mut self, page: u64) -> Option<Remote> {
        match self.get(page) {
            Some(State::Evicting(mut e)) => {
                e.program_dropped = true;
                self.put(page, State::Evicting(e));
                None
            }
            Some(State::Resident { remote, .. }) => {
                self.put(
                    page,
                    State::Resident {
                        dirty: true,
                        remote: None,
                    },
                );
                remote
            }
            _ => {
                self.make_resident(
                    page,
                    State::Resident {
                        dirty: true,
                        remote: None,
                    },
                );
                None
            }
        }
    }

    /// Starts fetching an evicted page; false if it is not evicted. A page evicted recently (a
    /// ghost) is a refault: the policy hears of it, and it is reported in the result's second
    /// part.
    pub fn start_fetch(&mut self, page: u64) -> bool {
        self.start_fetch_seeing_refault(page).0
    }

    /// As [`Self::start_fetch`]; also says whether the page was a ghost (a refault).
    pub fn start_fetch_seeing_refault(&mut self, page: u64) -> (bool, bool) {
        match self.get(page) {
            Some(State::Evicted { remote }) => {
                self.put(page, State::Fetching { remote });
                self.resident += 1;
                let refault = self.entries.is_ghost(page);
                if refault {
                    self.entries.set_ghost(page, false);
                    self.policy.refaulted(page / PAGE);
                }
                (true, refault)
            }
            _ => (false, false),
        }
    }

    /// Whether the fetch of `remote` into `page` is still wanted (nothing removed or moved it).
    pub fn fetch_wanted(&self, page: u64, remote: Remote) -> bool {
        self.get(page) == Some(State::Fetching { remote })
    }

    /// A fetched page was installed. `clean` is the digest of the content read back when the
    /// page may still equal `remote` (its next eviction compares with it); `None` when the
    /// faulting access was a write (its content may already differ).
    pub fn fetched(&mut self, page: u64, remote: Remote, clean: Option<Digest>) {
        if self.fetch_wanted(page, remote) {
            self.put(
                page,
                State::Resident {
                    dirty: clean.is_none(),
                    remote: Some(remote),
                },
            );
            if let Some(d) = clean {
                self.slots.borrow_mut().note_digest(remote, d);
            }
            self.policy.inserted(page / PAGE);
        }
    }

    /// A write hit a write-protected page.
    pub fn write_fault(&mut self, page: u64) -> WriteFault {
        match self.get(page) {
            Some(State::Resident { remote, .. }) => {
                self.put(
                    page,
                    State::Resident {
                        dirty: true,
                        remote,
                    },
                );
                self.policy.touched(page / PAGE);
                WriteFault::Unprotect
            }
            Some(State::Evicting(_)) => WriteFault::WaitForEviction,
            Some(State::Fetching { .. }) => WriteFault::Wake,
            // A write-protect fault proves the page is present: a page the table took as
            // evicted or unknown (a fork child's page whose drop raced the fork) is resident.
            other => {
                let remote = match other {
                    Some(State::Evicted { remote }) => Some(remote),
                    _ => None,
                };
                self.make_resident(
                    page,
                    State::Resident {
                        dirty: true,
                        remote,
                    },
                );
                WriteFault::Unprotect
            }
        }
    }

    /// The program dropped `[start, end)` (madvise): those pages read as zeros from now on.
    /// Returns remote copies that are now garbage.
    pub fn program_dropped(&mut self, start: u64, end: u64) -> Vec<Remote> {
        let mut garbage = Vec::new();
        for (page, state) in self.states_in(start, end) {
            match state {
                State::Resident { remote, .. } => {
                    // MADV_FREE may leave the page present with its content; DONTNEED does not.
                    // Either way no remote copy may come back. If the page is gone, its next
                    // fault zero-fills it.
                    self.put(
                        page,
                        State::Resident {
                            dirty: true,
                            remote: None,
                        },
                    );
                    garbage.extend(remote);
                }
                State::Evicting(e) if e.parked.is_some() => {
                    // Parked: it reads as zeros from now on, and its parked copy is freed.
                    garbage.extend(e.old);
                    garbage.extend(new_slot(&e));
                    self.unparked.extend(e.parked);
                    self.remove(page);
                    self.resident -= 1;
                }
                State::Evicting(mut e) => {
                    e.program_dropped = true;
                    self.put(page, State::Evicting(e));
                }
                State::Fetching { remote } => {
                    garbage.push(remote);
                    self.remove(page);
                    self.resident -= 1;
                    self.policy.removed(page / PAGE);
                }
                State::Evicted { remote } => {
                    garbage.push(remote);
                    self.remove(page);
                }
            }
        }
        garbage
    }

    /// The program unmapped `[start, end)`. Returns remote copies that are now garbage.
    pub fn unmapped(&mut self, start: u64, end: u64) -> Vec<Remote> {
        let mut garbage = Vec::new();
        for (page, state) in self.states_in(start, end) {
            match state {
                State::Evicting(e) => {
                    // Out of the eviction at once: the address may be mapped again by the time
                    // the eviction would drop it, and a drop must never hit new memory. A parked
                    // page is simply freed where it waits.
                    self.resident -= 1;
                    garbage.extend(e.old);
                    garbage.extend(new_slot(&e));
                    self.unparked.extend(e.parked);
                }
                State::Resident { remote, .. } => {
                    self.resident -= 1;
                    self.policy.removed(page / PAGE);
                    garbage.extend(remote);
                }
                State::Fetching { remote } => {
                    self.resident -= 1;
                    self.policy.removed(page / PAGE);
                    garbage.push(remote);
                }
                State::Evicted { remote } => garbage.push(remote),
            }
            self.entries.set_ghost(page, false);
            self.remove(page);
        }
        garbage
    }

    /// The program moved `len` bytes from `from` to `to` (mremap): states move with the pages.
    /// Returns remote copies that are now garbage.
    pub fn remapped(&mut self, from: u64, to: u64, len: u64) -> Vec<Remote> {
        let mut garbage = Vec::new();
        let moved = self.states_in(from, from + len);
        for (page, _) in &moved {
            self.remove(*page);
            self.policy.removed(*page / PAGE);
        }
        for (page, state) in moved {
            let dest = page - from + to;
            let state = match state {
                // The fetch in flight targets the old address and will be discarded; the next
                // fault at the new address fetches again.
                State::Fetching { remote } => {
                    self.resident -= 1;
                    State::Evicted { remote }
                }
                // Parked: it waits where it is, and a fault at the new address moves it back
                // there. Its batch names the old address and will leave it out: it is saved
                // in a batch of its own (or it would hold its slot, and the budget, for good).
                State::Evicting(e) if e.parked.is_some() => {
                    self.moved_parked.extend(e.parked.map(|at| (dest, at)));
                    State::Evicting(e)
                }
                // The page moved before the drop: it is still present (and still
                // write-protected, which a write fault will clear) at the new address.
                State::Evicting(e) if !e.dropping => {
                    garbage.extend(new_slot(&e));
                    State::Resident {
                        dirty: true,
                        remote: e.old,
                    }
                }
                // Already dropped by us: its content is what the eviction wrote.
                State::Evicting(e) => {
                    self.resident -= 1;
                    garbage.extend(e.old.filter(|o| Some(o.slot) != e.new.map(|n| n.slot)));
                    match e.new {
                        Some(remote) if !e.program_dropped => State::Evicted { remote },
                        _ => {
                            garbage.extend(e.new);
                            continue;
                        }
                    }
                }
                other => other,
            };
            if matches!(state, State::Resident { .. }) {
                self.policy.inserted(dest / PAGE);
            }
            self.put(dest, state);
        }
        garbage
    }

    /// Every remote copy the table refers to.
    #[cfg(test)]
    pub fn remotes(&self) -> Vec<Remote> {
        let mut out = Vec::new();
        self.entries
            .for_each(&self.slots.borrow(), |_, state| match state {
                State::Resident { remote, .. } => out.extend(remote),
                State::Fetching { remote } | State::Evicted { remote } => out.push(remote),
                State::Evicting(e) => out.extend(e.new.or(e.old)),
            });
        out
    }
}

/// The slot an eviction allocated beyond the page's old one, if it did.
fn new_slot(e: &Evicting) -> Option<Remote> {
    e.new.filter(|n| Some(n.slot) != e.old.map(|o| o.slot))
}

#[cfg(test)]
mod tests;
