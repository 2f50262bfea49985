//! Remote slots of a workload, their reference counts after forks, and the digests of what was
//! written to them.

use std::collections::HashMap;

/// A 128-bit digest of a page's content (XXH3-128): equal digests are taken as equal content
/// when deciding that a page need not be written again (a false match would need a collision of
/// a 128-bit hash between a page and its own earlier content).
pub type Digest = u128;

/// The digest of one page.
pub fn digest(content: &[u8]) -> Digest {
    xxhash_rust::xxh3::xxh3_128(content)
}

/// The remote slots of one workload (all its processes), with how many page-table entries refer
/// to each. After a fork, parent and child refer to the same slots; a slot referred to by more
/// than one entry is never written again (copy-on-write at the remote level), and it is freed on
/// the servers when the last reference goes.
#[derive(Debug)]
pub struct Slots {
    next_slot: u64,
    next_version: u64,
    refs: HashMap<u64, u32>,
    /// Per slot, the version last written and the digest of its content.
    digests: HashMap<u64, (u64, Digest)>,
}

impl Default for Slots {
    fn default() -> Self {
        Self {
            next_slot: 0,
            next_version: 1,
            refs: HashMap::new(),
            digests: HashMap::new(),
        }
    }
}

impl Slots {
    /// A new slot with one reference.
    pub(super) fn alloc(&mut self) -> u64 {
        let slot = self.next_slot;
        self.next_slot += 1;
        self.refs.insert(slot, 1);
        slot
    }

    /// A version newer than every one handed out before.
    pub(super) fn version(&mut self) -> u64 {
        self.next_version += 1;
        self.next_version
    }

    /// One more reference to `slot`.
    pub(super) fn share(&mut self, slot: u64) {
        *self.refs.entry(slot).or_insert(0) += 1;
    }

    /// References to `slot`.
    pub(super) fn refs(&self, slot: u64) -> u32 {
        self.refs.get(&slot).copied().unwrap_or(0)
    }

    /// Records the digest of the content written as `remote`.
    pub fn set_digest(&mut self, remote: Remote, d: Digest) {
        self.digests.insert(remote.slot, (remote.version, d));
    }

    /// Whether `remote` is known to hold content with digest `d`.
    pub fn holds(&self, remote: Remote, d: Digest) -> bool {
        self.digests.get(&remote.slot) == Some(&(remote.version, d))
    }

    /// Drops one reference per copy in `released`; returns the copies no one refers to any more
    /// (to free on the servers). Their version is `u64::MAX`: slots are never reused, so the
    /// free may remove whatever version the servers hold.
    pub fn release(&mut self, released: Vec<Remote>) -> Vec<Remote> {
        let mut free = Vec::new();
        for r in released {
            match self.refs.get_mut(&r.slot) {
                Some(n) if *n > 1 => *n -= 1,
                Some(_) => {
                    self.refs.remove(&r.slot);
                    self.digests.remove(&r.slot);
                    free.push(Remote {
                        slot: r.slot,
                        version: u64::MAX,
                    });
                }
                // Not counted (never shared): free it as it is.
                None => free.push(r),
            }
        }
        free
    }

    /// Forgets `slot` (no one refers to it any more; it is being freed).
    pub(super) fn forget(&mut self, slot: u64) {
        self.refs.remove(&slot);
        self.digests.remove(&slot);
    }

    /// Whether anyone still refers to `slot`.
    pub fn is_referenced(&self, slot: u64) -> bool {
        self.refs.contains_key(&slot)
    }
}

/// Where a page's content lives on the memory servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Remote {
    /// Slot of the page in the workload's space (never reused).
    pub slot: u64,
    /// Version of the content stored there.
    pub version: u64,
}
