//! The page store: every tenant's pages in memory, with versions and a capacity limit.
//!
//! Pure logic, no I/O: the network layer calls it with the tenant it authenticated. Pages live in
//! 4 KiB frames of large chunks ([`frames`]); an all-zero page is a flag with no frame. The index is
//! split into shards, each behind its own mutex with its own frames, so concurrent requests rarely
//! contend and a shard's lock protects both its index and its bytes.
//!
//! Capacity counts [`PAGE_SIZE`] bytes per page with content and [`ZERO_PAGE_CHARGE`] bytes per
//! zero page (its index entry), so even a flood of zero pages cannot exhaust the server's memory.

mod frames;

use std::{
    collections::HashMap,
    hash::BuildHasher,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex, MutexGuard,
    },
};

use yonder_common::{
    protocol::{PageData, ReadResult, WriteResult},
    PageKey, PAGE_SIZE,
};

use frames::FramePool;

/// Numeric id of a tenant (the server maps certificate names to these).
pub type TenantId = u32;

/// Bytes charged against capacity for a zero page.
pub const ZERO_PAGE_CHARGE: u64 = 64;

const DATA_PAGE_CHARGE: u64 = PAGE_SIZE as u64;
const SHARDS: usize = 64;
const ZERO_FRAME: u32 = u32::MAX;

/// Index key inside one tenant's map. Built from `u32`s only so that key plus entry pack into
/// 24 bytes per slot of the hash table: at most ~52 bytes of index per page even right after a
/// table doubles.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct IndexKey {
    space: u32,
    slot: [u32; 2],
}

impl From<PageKey> for IndexKey {
    fn from(key: PageKey) -> Self {
        Self {
            space: key.space,
            slot: [key.slot as u32, (key.slot >> 32) as u32],
        }
    }
}

#[derive(Clone, Copy)]
struct Entry {
    version: [u32; 2],
    frame: u32,
}

impl Entry {
    fn new(version: u64, frame: u32) -> Self {
        Self {
            version: [version as u32, (version >> 32) as u32],
            frame,
        }
    }

    fn version(&self) -> u64 {
        u64::from(self.version[0]) | (u64::from(self.version[1]) << 32)
    }

    fn set_version(&mut self, version: u64) {
        self.version = [version as u32, (version >> 32) as u32];
    }

    fn is_zero(&self) -> bool {
        self.frame == ZERO_FRAME
    }
}

/// What a read finds, borrowed from the store (see [`Store::read_with`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageRef<'a> {
    /// The page at its stored version; `None` for a zero page.
    Found {
        /// Version stored.
        version: u64,
        /// The [`PAGE_SIZE`] stored bytes, or `None` for a zero page.
        data: Option<&'a [u8]>,
    },
    /// Only an older version than the reader expects is stored.
    Stale {
        /// Version stored.
        stored_version: u64,
    },
    /// Not stored.
    Missing,
}

/// Pages stored by one tenant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TenantUsage {
    /// Pages with content.
    pub data_pages: u64,
    /// Zero pages.
    pub zero_pages: u64,
}

/// One tenant's pages within a shard.
#[derive(Default)]
struct TenantPages {
    index: HashMap<IndexKey, Entry>,
    usage: TenantUsage,
}

impl TenantUsage {
    fn count(&mut self, data: i64, zero: i64) {
        self.data_pages = self.data_pages.wrapping_add_signed(data);
        self.zero_pages = self.zero_pages.wrapping_add_signed(zero);
    }
}

/// A shard: its tenants' indexes and the frames their pages live in. Tenants are kept apart by
/// construction: a request only ever reaches the map of the tenant its certificate names.
#[derive(Default)]
struct Shard {
    tenants: HashMap<TenantId, TenantPages>,
    frames: FramePool,
}

/// Server-wide usage figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreUsage {
    /// Capacity in bytes.
    pub capacity_bytes: u64,
    /// Bytes charged against capacity.
    pub used_bytes: u64,
    /// Pages with content.
    pub data_pages: u64,
    /// Zero pages.
    pub zero_pages: u64,
}

/// All tenants' pages.
pub struct Store {
    shards: Box<[Mutex<Shard>]>,
    hasher: std::collections::hash_map::RandomState,
    capacity: u64,
    used: AtomicU64,
    data_pages: AtomicU64,
    zero_pages: AtomicU64,
}

fn all_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

impl Store {
    /// Creates an empty store that may hold `capacity_bytes` (see the module docs for what counts).
    pub fn new(capacity_bytes: u64) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: Default::default(),
            capacity: capacity_bytes,
            used: AtomicU64::new(0),
            data_pages: AtomicU64::new(0),
            zero_pages: AtomicU64::new(0),
        }
    }

    fn shard(&self, tenant: TenantId, key: &IndexKey) -> MutexGuard<'_, Shard> {
        let i = self.hasher.hash_one((tenant, key)) as usize % SHARDS;
        lock(&self.shards[i])
    }

    fn reserve(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(bytes).filter(|&n| n <= self.capacity)
            })
            .is_ok()
    }

    fn unreserve(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Stores a page unless a newer version is stored. `data` must hold [`PAGE_SIZE`] bytes when
    /// it is [`PageData::Bytes`] (the caller validates input from the network).
    pub fn write(
        &self,
        tenant: TenantId,
        key: PageKey,
        version: u64,
        data: &PageData,
    ) -> WriteResult {
        let bytes = match data {
            PageData::Bytes(b) => Some(b.as_slice()),
            PageData::Zero => None,
        };
        self.write_bytes(tenant, key, version, bytes)
    }

    /// [`Store::write`] of borrowed bytes (`None`: a zero page); the same length rule applies.
    pub fn write_bytes(
        &self,
        tenant: TenantId,
        key: PageKey,
        version: u64,
        bytes: Option<&[u8]>,
    ) -> WriteResult {
        let bytes = bytes.filter(|b| !all_zero(b));
        debug_assert!(bytes.is_none_or(|b| b.len() == PAGE_SIZE));
        let ik = IndexKey::from(key);
        let mut guard = self.shard(tenant, &ik);
        let shard = &mut *guard;
        let pages = shard.tenants.entry(tenant).or_default();
        match pages.index.get_mut(&ik) {
            Some(entry) => {
                let stored = entry.version();
                if stored > version {
                    return WriteResult::Superseded {
                        stored_version: stored,
                    };
                }
                if stored == version {
                    // A retried write of the same version: already stored.
                    return WriteResult::Stored;
                }
                match (entry.is_zero(), bytes) {
                    (true, None) => {}
                    (false, Some(b)) => shard.frames.page_mut(entry.frame).copy_from_slice(b),
                    (false, None) => {
                        shard.frames.release(entry.frame);
                        entry.frame = ZERO_FRAME;
                        self.unreserve(DATA_PAGE_CHARGE - ZERO_PAGE_CHARGE);
                        self.data_pages.fetch_sub(1, Ordering::Relaxed);
                        self.zero_pages.fetch_add(1, Ordering::Relaxed);
                        pages.usage.count(-1, 1);
                    }
                    (true, Some(b)) => {
                        if !self.reserve(DATA_PAGE_CHARGE - ZERO_PAGE_CHARGE) {
                            return WriteResult::CapacityExceeded;
                        }
                        let frame = shard.frames.alloc();
                        shard.frames.page_mut(frame).copy_from_slice(b);
                        entry.frame = frame;
                        self.data_pages.fetch_add(1, Ordering::Relaxed);
                        self.zero_pages.fetch_sub(1, Ordering::Relaxed);
                        pages.usage.count(1, -1);
                    }
                }
                entry.set_version(version);
            }
            None => {
                let charge = if bytes.is_some() {
                    DATA_PAGE_CHARGE
                } else {
                    ZERO_PAGE_CHARGE
                };
                if !self.reserve(charge) {
                    return WriteResult::CapacityExceeded;
                }
                let frame = match bytes {
                    Some(b) => {
                        let frame = shard.frames.alloc();
                        shard.frames.page_mut(frame).copy_from_slice(b);
                        self.data_pages.fetch_add(1, Ordering::Relaxed);
                        pages.usage.count(1, 0);
                        frame
                    }
                    None => {
                        self.zero_pages.fetch_add(1, Ordering::Relaxed);
                        pages.usage.count(0, 1);
                        ZERO_FRAME
                    }
                };
                pages.index.insert(ik, Entry::new(version, frame));
            }
        }
        WriteResult::Stored
    }

    /// Reads a page; a stored version older than `expected` is reported as stale, never returned.
    pub fn read(&self, tenant: TenantId, key: PageKey, expected: u64) -> ReadResult {
        self.read_with(tenant, key, expected, |page| match page {
            PageRef::Found { version, data } => ReadResult::Found {
                version,
                data: data.map_or(PageData::Zero, |b| PageData::Bytes(b.to_vec())),
            },
            PageRef::Stale { stored_version } => ReadResult::Stale { stored_version },
            PageRef::Missing => ReadResult::Missing,
        })
    }

    /// Reads a page like [`Store::read`], handing `f` the stored bytes in place (under the shard's
    /// lock) instead of a copy: a reply can be encoded straight from the store.
    pub fn read_with<R>(
        &self,
        tenant: TenantId,
        key: PageKey,
        expected: u64,
        f: impl FnOnce(PageRef<'_>) -> R,
    ) -> R {
        let ik = IndexKey::from(key);
        let shard = self.shard(tenant, &ik);
        let Some(entry) = shard.tenants.get(&tenant).and_then(|p| p.index.get(&ik)) else {
            return f(PageRef::Missing);
        };
        let version = entry.version();
        if version < expected {
            return f(PageRef::Stale {
                stored_version: version,
            });
        }
        let data = (!entry.is_zero()).then(|| shard.frames.page(entry.frame));
        f(PageRef::Found { version, data })
    }

    fn remove_entry(&self, frames: &mut FramePool, pages: &mut TenantPages, entry: Entry) {
        if entry.is_zero() {
            self.unreserve(ZERO_PAGE_CHARGE);
            self.zero_pages.fetch_sub(1, Ordering::Relaxed);
            pages.usage.count(0, -1);
        } else {
            frames.release(entry.frame);
            self.unreserve(DATA_PAGE_CHARGE);
            self.data_pages.fetch_sub(1, Ordering::Relaxed);
            pages.usage.count(-1, 0);
        }
    }

    /// Frees a page if its stored version is at most `version`; returns whether it was freed.
    pub fn free(&self, tenant: TenantId, key: PageKey, version: u64) -> bool {
        let ik = IndexKey::from(key);
        let mut guard = self.shard(tenant, &ik);
        let shard = &mut *guard;
        let Some(pages) = shard.tenants.get_mut(&tenant) else {
            return false;
        };
        match pages.index.get(&ik) {
            Some(entry) if entry.version() <= version => {
                let entry = *entry;
                pages.index.remove(&ik);
                self.remove_entry(&mut shard.frames, pages, entry);
                true
            }
            _ => false,
        }
    }

    /// Frees every page of one space of a tenant; returns how many were freed.
    pub fn drop_space(&self, tenant: TenantId, space: u32) -> u64 {
        let mut freed = 0;
        for shard in self.shards.iter() {
            let mut guard = lock(shard);
            let shard = &mut *guard;
            let Some(pages) = shard.tenants.get_mut(&tenant) else {
                continue;
            };
            let doomed: Vec<(IndexKey, Entry)> = pages
                .index
                .iter()
                .filter(|(k, _)| k.space == space)
                .map(|(k, e)| (*k, *e))
                .collect();
            for (k, e) in doomed {
                pages.index.remove(&k);
                self.remove_entry(&mut shard.frames, pages, e);
                freed += 1;
            }
            if pages.index.is_empty() {
                shard.tenants.remove(&tenant);
            }
        }
        freed
    }

    /// Server-wide usage.
    pub fn usage(&self) -> StoreUsage {
        StoreUsage {
            capacity_bytes: self.capacity,
            used_bytes: self.used.load(Ordering::Acquire),
            data_pages: self.data_pages.load(Ordering::Relaxed),
            zero_pages: self.zero_pages.load(Ordering::Relaxed),
        }
    }

    /// Usage of one tenant.
    pub fn tenant_usage(&self, tenant: TenantId) -> TenantUsage {
        let mut total = TenantUsage::default();
        for shard in self.shards.iter() {
            if let Some(p) = lock(shard).tenants.get(&tenant) {
                total.data_pages += p.usage.data_pages;
                total.zero_pages += p.usage.zero_pages;
            }
        }
        total
    }
}

/// Locks a shard. A panic while holding it cannot leave a shard half-updated in a way that loses
/// data for other pages, so a poisoned lock is taken over rather than taking the server down.
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests;
