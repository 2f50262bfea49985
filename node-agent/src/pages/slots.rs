//! Remote slots of a workload, their reference counts after forks, and the digests of what was
//! written to them.
//!
//! Slots live in a dense array of 8-byte records indexed by slot number; freed numbers are
//! reused (through a free list threaded in the records). Versions count per slot number and go
//! on across reuses, so a version names one write for good: a free names the last version handed
//! out and can never remove a later owner's page (the servers free only what is at most that
//! version), and a digest recorded for one owner never matches another's copy.
//!
//! A digest is kept only while it can be of use: from the write or the fetch that produced the
//! content until the page referring to the slot is evicted again. Digests live in a second dense
//! array that a record points into, so a slot whose page is away costs its 8-byte record and
//! nothing more. See docs/page-table.md.

use std::collections::HashMap;

/// A 128-bit digest of a page's content (XXH3-128): equal digests are taken as equal content
/// when deciding that a page need not be written again (a false match would need a collision of
/// a 128-bit hash between a page and its own earlier content).
pub type Digest = u128;

/// The digest of one page.
pub fn digest(content: &[u8]) -> Digest {
    xxhash_rust::xxh3::xxh3_128(content)
}

/// Records per chunk of the array (chunks keep a growing array from holding twice what it
/// needs, as a doubling `Vec` would).
const CHUNK: usize = 1024;
/// End of a free list; a record with no digest.
const NONE: u32 = u32::MAX;
/// Bits of a record's word that count references.
const REF_BITS: u32 = 4;
/// The reference count of a record whose count is in [`Slots::many`].
const MANY: u32 = (1 << REF_BITS) - 1;
/// The last version a slot number can have; then it is retired.
const LAST_VERSION: u32 = u32::MAX >> REF_BITS;

/// One slot number.
#[derive(Clone, Copy, Debug)]
struct Record {
    /// The last version handed out (0: none yet) above [`REF_BITS`] bits of reference count
    /// (0: free; [`MANY`]: see [`Slots::many`]).
    word: u32,
    /// Where the digest of the last version's content is in [`Slots::digests`] ([`NONE`]: not
    /// known); in a free record, the next free number.
    digest: u32,
}

impl Default for Record {
    fn default() -> Self {
        Self {
            word: 0,
            digest: NONE,
        }
    }
}

impl Record {
    fn version(&self) -> u32 {
        self.word >> REF_BITS
    }

    fn refs(&self) -> u32 {
        self.word & MANY
    }

    fn set(&mut self, version: u32, refs: u32) {
        self.word = version << REF_BITS | refs;
    }
}

fn split(d: Digest) -> [u32; 4] {
    [
        d as u32,
        (d >> 32) as u32,
        (d >> 64) as u32,
        (d >> 96) as u32,
    ]
}

/// Digests, in a dense array of their own: a [`Record`] points at its digest, and freed places
/// are reused (through a free list threaded in their first word).
#[derive(Debug)]
struct Digests {
    chunks: Vec<Box<[[u32; 4]]>>,
    /// Places handed out so far (the next fresh one).
    len: u32,
    /// First free place, [`NONE`] if none.
    free: u32,
}

impl Default for Digests {
    fn default() -> Self {
        Self {
            chunks: Vec::new(),
            len: 0,
            free: NONE,
        }
    }
}

impl Digests {
    fn get(&self, i: u32) -> &[u32; 4] {
        &self.chunks[i as usize / CHUNK][i as usize % CHUNK]
    }

    fn get_mut(&mut self, i: u32) -> &mut [u32; 4] {
        &mut self.chunks[i as usize / CHUNK][i as usize % CHUNK]
    }

    /// A place holding `d`.
    fn add(&mut self, d: [u32; 4]) -> u32 {
        let i = if self.free != NONE {
            let i = self.free;
            self.free = self.get(i)[0];
            i
        } else {
            let i = self.len;
            assert!(i < NONE, "out of digest places");
            if i as usize == self.chunks.len() * CHUNK {
                self.chunks.push(vec![[0; 4]; CHUNK].into_boxed_slice());
            }
            self.len += 1;
            i
        };
        *self.get_mut(i) = d;
        i
    }

    /// Frees place `i` for reuse.
    fn remove(&mut self, i: u32) {
        let free = self.free;
        *self.get_mut(i) = [free, 0, 0, 0];
        self.free = i;
    }
}

/// The remote slots of one workload (all its processes), with how many page-table entries refer
/// to each. After a fork, parent and child refer to the same slots; a slot referred to by more
/// than one entry is never written again (copy-on-write at the remote level), and it is freed on
/// the servers when the last reference goes.
#[derive(Debug)]
pub struct Slots {
    chunks: Vec<Box<[Record]>>,
    /// Slot numbers handed out so far (the next fresh one).
    len: u32,
    /// First free number, [`NONE`] if none.
    free: u32,
    /// Reference counts too large for a record.
    many: HashMap<u32, u32>,
    /// The digests records point at.
    digests: Digests,
}

impl Default for Slots {
    fn default() -> Self {
        Self {
            chunks: Vec::new(),
            len: 0,
            free: NONE,
            many: HashMap::new(),
            digests: Digests::default(),
        }
    }
}

impl Slots {
    fn rec(&self, i: u32) -> &Record {
        &self.chunks[i as usize / CHUNK][i as usize % CHUNK]
    }

    fn rec_mut(&mut self, i: u32) -> &mut Record {
        &mut self.chunks[i as usize / CHUNK][i as usize % CHUNK]
    }

    /// The number of the live slot `slot`, if it is one.
    fn index(&self, slot: u64) -> Option<u32> {
        u32::try_from(slot)
            .ok()
            .filter(|&i| i < self.len && self.rec(i).refs() > 0)
    }

    /// A new slot with one reference.
    pub(super) fn alloc(&mut self) -> u64 {
        let i = if self.free != NONE {
            let i = self.free;
            self.free = self.rec(i).digest;
            i
        } else {
            let i = self.len;
            assert!(i < NONE, "out of slot numbers");
            if i as usize == self.chunks.len() * CHUNK {
                self.chunks
                    .push(vec![Record::default(); CHUNK].into_boxed_slice());
            }
            self.len += 1;
            i
        };
        let r = self.rec_mut(i);
        r.digest = NONE;
        r.set(r.version(), 1);
        u64::from(i)
    }

    /// Forgets the digest of live number `i`, if it has one.
    fn clear_digest(&mut self, i: u32) {
        let at = std::mem::replace(&mut self.rec_mut(i).digest, NONE);
        if at != NONE {
            self.digests.remove(at);
        }
    }

    /// A version of `slot` newer than every one handed out before, or `None` when the slot's
    /// versions are used up (the caller writes to a new slot instead).
    pub(super) fn next_version(&mut self, slot: u64) -> Option<u64> {
        let i = self.index(slot)?;
        let r = self.rec_mut(i);
        let v = r.version() + 1;
        if v > LAST_VERSION {
            return None;
        }
        r.set(v, r.refs());
        // The digest was the previous version's.
        self.clear_digest(i);
        Some(u64::from(v))
    }

    /// One more reference to `slot`.
    pub(super) fn share(&mut self, slot: u64) {
        let Some(i) = self.index(slot) else {
            debug_assert!(false, "shared slot {slot} is not live");
            return;
        };
        let r = *self.rec(i);
        match r.refs() {
            MANY => *self.many.entry(i).or_insert(MANY) += 1,
            n => self.rec_mut(i).set(r.version(), n + 1),
        }
        if self.rec(i).refs() == MANY {
            self.many.entry(i).or_insert(MANY);
        }
    }

    /// References to `slot`.
    pub(super) fn refs(&self, slot: u64) -> u32 {
        match self.index(slot) {
            None => 0,
            Some(i) if self.rec(i).refs() == MANY => self.many[&i],
            Some(i) => self.rec(i).refs(),
        }
    }

    /// Drops one reference to live number `i`; the copy to free when it was the last.
    fn unref(&mut self, i: u32) -> Option<Remote> {
        let r = *self.rec(i);
        match r.refs() {
            MANY => {
                let n = self.many.get_mut(&i).expect("counted in many");
                *n -= 1;
                if *n < MANY {
                    self.many.remove(&i);
                    self.rec_mut(i).set(r.version(), MANY - 1);
                }
                None
            }
            1 => Some(self.free_index(i)),
            n => {
                self.rec_mut(i).set(r.version(), n - 1);
                None
            }
        }
    }

    /// Frees number `i` for reuse (or retires it when its versions are used up); returns the
    /// copy to free on the servers: every version up to the last handed out.
    fn free_index(&mut self, i: u32) -> Remote {
        self.many.remove(&i);
        self.clear_digest(i);
        let free = self.free;
        let r = self.rec_mut(i);
        let version = r.version();
        r.set(version, 0);
        if version < LAST_VERSION {
            r.digest = free;
            self.free = i;
        }
        Remote {
            slot: u64::from(i),
            version: u64::from(version),
        }
    }

    /// Records the digest of the content written as `remote` (the version last handed out for
    /// its slot).
    pub fn set_digest(&mut self, remote: Remote, d: Digest) {
        if !self.note_digest(remote, d) && self.index(remote.slot).is_some() {
            debug_assert!(false, "digest of {remote:?}, not the slot's last version");
        }
    }

    /// Records the digest of `remote`'s content (read back from the servers, which answer only
    /// with that exact version) if `remote` is still its slot's last version; false if it is
    /// not (nothing recorded).
    pub fn note_digest(&mut self, remote: Remote, d: Digest) -> bool {
        let Some(i) = self.index(remote.slot) else {
            return false;
        };
        let r = *self.rec(i);
        if u64::from(r.version()) != remote.version {
            return false;
        }
        if r.digest == NONE {
            let at = self.digests.add(split(d));
            self.rec_mut(i).digest = at;
        } else {
            *self.digests.get_mut(r.digest) = split(d);
        }
        true
    }

    /// Forgets the digest of `remote`'s content (its page went away: the digest is of no use
    /// until the page is fetched again, which records it anew). Only ever makes a page that
    /// still refers to the slot look changed, never the reverse.
    pub fn forget_digest(&mut self, remote: Remote) {
        if let Some(i) = self.index(remote.slot) {
            if u64::from(self.rec(i).version()) == remote.version {
                self.clear_digest(i);
            }
        }
    }

    /// Whether `remote` is known to hold content with digest `d`.
    pub fn holds(&self, remote: Remote, d: Digest) -> bool {
        self.index(remote.slot).is_some_and(|i| {
            let r = self.rec(i);
            r.version() != 0
                && u64::from(r.version()) == remote.version
                && r.digest != NONE
                && *self.digests.get(r.digest) == split(d)
        })
    }

    /// Digests recorded now (for tests and memory accounting).
    pub fn digests_kept(&self) -> usize {
        let mut free = 0;
        let mut at = self.digests.free;
        while at != NONE {
            free += 1;
            at = self.digests.get(at)[0];
        }
        self.digests.len as usize - free
    }

    /// Drops one reference per copy in `released`; returns the copies no one refers to any more
    /// (to free on the servers). Their version is the last one handed out for the slot, so the
    /// free removes whatever the servers hold of it, and nothing of a later owner of the number.
    pub fn release(&mut self, released: Vec<Remote>) -> Vec<Remote> {
        let mut free = Vec::new();
        for r in released {
            match self.index(r.slot) {
                Some(i) => free.extend(self.unref(i)),
                // Not counted (never shared): free it as it is.
                None => free.push(r),
            }
        }
        free
    }

    /// Whether anyone still refers to `slot`.
    pub fn is_referenced(&self, slot: u64) -> bool {
        self.index(slot).is_some()
    }

    /// The number of `remote`'s slot when `remote` is the slot's last version (so that the
    /// number and the slot's record say all there is to say about it), and it is below `limit`.
    pub(super) fn compact(&self, remote: Remote, limit: u32) -> Option<u32> {
        self.index(remote.slot)
            .filter(|&i| i < limit && u64::from(self.rec(i).version()) == remote.version)
    }

    /// The last version of the live slot number `i` (see [`Self::compact`]).
    pub(super) fn at(&self, i: u32) -> Remote {
        debug_assert!(self.rec(i).refs() > 0, "slot {i} is free");
        Remote {
            slot: u64::from(i),
            version: u64::from(self.rec(i).version()),
        }
    }
}

/// Where a page's content lives on the memory servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Remote {
    /// Slot of the page in the workload's space (its id is never reused).
    pub slot: u64,
    /// Version of the content stored there.
    pub version: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_numbers_are_reused_with_later_versions() {
        let mut s = Slots::default();
        let a = s.alloc();
        let b = s.alloc();
        assert_eq!((a, b), (0, 1));
        let v = s.next_version(a).expect("a version");
        assert_eq!(
            s.release(vec![Remote {
                slot: a,
                version: v
            }]),
            vec![Remote {
                slot: a,
                version: v
            }]
        );
        assert!(!s.is_referenced(a));
        let c = s.alloc();
        assert_eq!(c, a, "the number is reused");
        let w = s.next_version(c).expect("a version");
        assert!(w > v, "versions go on: the free of {v} cannot remove {w}");
        assert_eq!(s.refs(c), 1);
    }

    #[test]
    fn digests_belong_to_the_last_version() {
        let mut s = Slots::default();
        let a = s.alloc();
        let v1 = s.next_version(a).expect("a version");
        let r1 = Remote {
            slot: a,
            version: v1,
        };
        s.set_digest(r1, 42);
        assert!(s.holds(r1, 42));
        assert!(!s.holds(r1, 43));
        let v2 = s.next_version(a).expect("a version");
        assert!(v2 > v1);
        assert!(
            !s.holds(r1, 42),
            "an older version is not known to hold anything"
        );
        assert_eq!(s.compact(r1, u32::MAX), None);
        assert_eq!(
            s.compact(
                Remote {
                    slot: a,
                    version: v2
                },
                u32::MAX
            ),
            Some(0)
        );
    }

    #[test]
    fn a_number_whose_versions_ran_out_is_retired() {
        let mut s = Slots::default();
        let a = s.alloc();
        s.rec_mut(0).set(LAST_VERSION - 1, 1);
        assert_eq!(s.next_version(a), Some(u64::from(LAST_VERSION)));
        assert_eq!(s.next_version(a), None);
        let freed = s.release(vec![Remote {
            slot: a,
            version: u64::from(LAST_VERSION),
        }]);
        assert_eq!(freed.len(), 1);
        assert_eq!(freed[0].version, u64::from(LAST_VERSION));
        assert!(!s.is_referenced(a));
        assert_eq!(s.alloc(), 1, "a retired number is not reused");
    }

    #[test]
    fn many_references_are_counted() {
        let mut s = Slots::default();
        let a = s.alloc();
        let n = 40;
        for _ in 1..n {
            s.share(a);
        }
        assert_eq!(s.refs(a), n);
        let r = Remote {
            slot: a,
            version: 1,
        };
        for left in (1..n).rev() {
            assert!(s.release(vec![r]).is_empty());
            assert_eq!(s.refs(a), left);
        }
        assert_eq!(s.release(vec![r]).len(), 1);
        assert!(!s.is_referenced(a));
        assert!(s.many.is_empty());
    }

    #[test]
    fn a_record_is_8_bytes() {
        assert_eq!(std::mem::size_of::<Record>(), 8);
    }

    #[test]
    fn digests_are_kept_only_until_forgotten_and_their_places_reused() {
        let mut s = Slots::default();
        let a = s.alloc();
        let b = s.alloc();
        let ra = Remote {
            slot: a,
            version: s.next_version(a).expect("a version"),
        };
        let rb = Remote {
            slot: b,
            version: s.next_version(b).expect("a version"),
        };
        s.set_digest(ra, 1);
        s.set_digest(rb, 2);
        assert_eq!(s.digests_kept(), 2);
        s.forget_digest(ra);
        assert!(!s.holds(ra, 1), "a forgotten digest matches nothing");
        assert!(s.holds(rb, 2));
        assert_eq!(s.digests_kept(), 1);
        // Read back: recorded again, in the freed place.
        assert!(s.note_digest(ra, 1));
        assert!(s.holds(ra, 1));
        assert_eq!(s.digests.len, 2, "the freed place was reused");
        // A read of an older version records nothing.
        let newer = s.next_version(a).expect("a version");
        assert!(!s.holds(ra, 1), "a new version drops the old digest");
        assert!(!s.note_digest(ra, 1));
        assert!(!s.holds(
            Remote {
                slot: a,
                version: newer
            },
            1
        ));
        // Freeing a slot frees its digest.
        assert_eq!(s.release(vec![rb]), vec![rb]);
        assert_eq!(s.digests_kept(), 0);
        let c = s.alloc();
        assert_eq!(c, b);
        let rc = Remote {
            slot: c,
            version: s.next_version(c).expect("a version"),
        };
        assert!(!s.holds(rc, 2), "a reused number has no digest");
    }
}
