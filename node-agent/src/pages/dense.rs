//! A map from page numbers to small values, stored as dense chunks of neighbouring pages: one
//! ordered-map entry per 64 pages instead of one hash-map entry per page (docs/page-table.md).

use std::collections::BTreeMap;

/// Pages per chunk.
const CHUNK: u64 = 64;

/// The values of 64 neighbouring pages.
struct Chunk<T> {
    vals: [T; CHUNK as usize],
    /// Values that are not `T::default()`.
    used: u32,
}

/// A map from page numbers (or any `u64` key) to values whose `Default` means "no entry".
/// Memory: one chunk of 64 values wherever a key is set, so it suits keys that come in runs
/// (the pages of a mapping), not keys scattered one per 64.
pub struct PageMap<T> {
    chunks: BTreeMap<u64, Box<Chunk<T>>>,
    len: usize,
}

impl<T> Default for PageMap<T> {
    fn default() -> Self {
        Self {
            chunks: BTreeMap::new(),
            len: 0,
        }
    }
}

impl<T: Copy + Default + PartialEq> PageMap<T> {
    /// The value of `key` (`T::default()` when it has none).
    pub fn get(&self, key: u64) -> T {
        self.chunks
            .get(&(key / CHUNK))
            .map_or_else(T::default, |c| c.vals[(key % CHUNK) as usize])
    }

    /// Sets the value of `key`; `T::default()` removes it.
    pub fn set(&mut self, key: u64, v: T) {
        let empty = T::default();
        let i = (key % CHUNK) as usize;
        let Some(chunk) = self.chunks.get_mut(&(key / CHUNK)) else {
            if v != empty {
                let mut vals = [empty; CHUNK as usize];
                vals[i] = v;
                self.chunks
                    .insert(key / CHUNK, Box::new(Chunk { vals, used: 1 }));
                self.len += 1;
            }
            return;
        };
        let old = std::mem::replace(&mut chunk.vals[i], v);
        match (old == empty, v == empty) {
            (true, false) => {
                chunk.used += 1;
                self.len += 1;
            }
            (false, true) => {
                chunk.used -= 1;
                self.len -= 1;
                if chunk.used == 0 {
                    self.chunks.remove(&(key / CHUNK));
                }
            }
            _ => {}
        }
    }

    /// Keys with a value.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no key has a value.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The keys in `[start, end)` with a value, in order, with their values.
    pub fn range(&self, start: u64, end: u64) -> impl Iterator<Item = (u64, T)> + '_ {
        let empty = T::default();
        let chunks = if start < end {
            self.chunks.range(start / CHUNK..=(end - 1) / CHUNK)
        } else {
            // An empty range of chunks.
            self.chunks.range(1..1)
        };
        chunks
            .flat_map(|(&c, chunk)| {
                chunk
                    .vals
                    .iter()
                    .enumerate()
                    .map(move |(i, &v)| (c * CHUNK + i as u64, v))
            })
            .filter(move |&(k, v)| v != empty && start <= k && k < end)
    }

    /// Every key with a value, in order, with its value.
    pub fn iter(&self) -> impl Iterator<Item = (u64, T)> + '_ {
        self.range(0, u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::PageMap;

    proptest! {
        /// The map holds what a `BTreeMap` holds after the same sets, in the same order.
        #[test]
        fn matches_an_ordered_map(ops in proptest::collection::vec((0u64..400, 0u8..4), 0..600),
                                  start in 0u64..400, len in 0u64..400) {
            let mut m = PageMap::default();
            let mut model = BTreeMap::new();
            for (k, v) in ops {
                m.set(k, v);
                if v == 0 {
                    model.remove(&k);
                } else {
                    model.insert(k, v);
                }
            }
            prop_assert_eq!(m.len(), model.len());
            let all: Vec<(u64, u8)> = m.iter().collect();
            let want: Vec<(u64, u8)> = model.iter().map(|(k, v)| (*k, *v)).collect();
            prop_assert_eq!(all, want);
            let got: Vec<(u64, u8)> = m.range(start, start + len).collect();
            let want: Vec<(u64, u8)> = model.range(start..start + len).map(|(k, v)| (*k, *v)).collect();
            prop_assert_eq!(got, want);
            for k in 0..400 {
                prop_assert_eq!(m.get(k), model.get(&k).copied().unwrap_or(0));
            }
        }
    }

    #[test]
    fn empty_chunks_are_dropped() {
        let mut m = PageMap::default();
        m.set(5, 1u32);
        m.set(700, 2);
        m.set(5, 0);
        m.set(700, 0);
        assert!(m.is_empty());
        assert!(m.chunks.is_empty());
        assert_eq!(m.range(u64::MAX - 3, u64::MAX).count(), 0);
    }
}
