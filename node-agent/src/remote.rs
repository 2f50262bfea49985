//! The memory servers an agent pages to: placement of slots on servers and batched requests.
//!
//! Placement is rendezvous hashing of the slot over the servers, so adding a server moves about
//! 1/N of the pages. Each page has one copy for now; replication comes with its own design.

use std::hash::{Hash, Hasher};

use yonder_common::{
    client::{Client, ClientError},
    protocol::{FreeItem, PageData, ReadItem, ReadResult, WriteItem, WriteResult, MAX_BATCH_PAGES},
    PageKey, PAGE_SIZE,
};

use crate::pages::Remote;

/// Why a page could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The server could not be asked.
    #[error("memory server {server}: {source}")]
    Request {
        /// Server address.
        server: String,
        /// The cause.
        source: ClientError,
    },
    /// The server does not have the page, or only an older version of it.
    #[error("memory server {server} lost slot {slot} (expected version {version}): {what}")]
    Lost {
        /// Server address.
        server: String,
        /// The slot.
        slot: u64,
        /// The version expected.
        version: u64,
        /// What the server answered.
        what: String,
    },
}

/// Connections to the memory servers of one agent.
pub struct Servers {
    clients: Vec<(String, Client)>,
}

fn score(slot: u64, server: usize) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (slot, server).hash(&mut h);
    h.finish()
}

impl Servers {
    /// Wraps connected clients, named by address.
    pub fn new(clients: Vec<(String, Client)>) -> Self {
        assert!(!clients.is_empty(), "at least one memory server");
        Self { clients }
    }

    /// The server that holds `slot`.
    pub fn place(&self, slot: u64) -> usize {
        (0..self.clients.len())
            .max_by_key(|&i| score(slot, i))
            .expect("at least one server")
    }

    /// Reads several pages (one request per server involved); contents in the order asked.
    pub async fn read_many(
        &self,
        space: u32,
        remotes: &[Remote],
    ) -> Result<Vec<Vec<u8>>, FetchError> {
        let mut per_server: Vec<Vec<usize>> = vec![Vec::new(); self.clients.len()];
        for (i, r) in remotes.iter().enumerate() {
            per_server[self.place(r.slot)].push(i);
        }
        let futures = per_server
            .into_iter()
            .enumerate()
            .filter(|(_, idx)| !idx.is_empty())
            .map(|(s, idx)| async move {
                let (name, client) = &self.clients[s];
                let items = idx
                    .iter()
                    .map(|&i| ReadItem {
                        key: PageKey::new(space, remotes[i].slot),
                        version: remotes[i].version,
                    })
                    .collect();
                let results = client
                    .read(items)
                    .await
                    .map_err(|source| FetchError::Request {
                        server: name.clone(),
                        source,
                    })?;
                let mut out = Vec::with_capacity(idx.len());
                for (&i, r) in idx.iter().zip(results) {
                    let remote = remotes[i];
                    let lost = |what: String| FetchError::Lost {
                        server: name.clone(),
                        slot: remote.slot,
                        version: remote.version,
                        what,
                    };
                    let data = match r {
                        ReadResult::Found { version, data } if version == remote.version => {
                            match data {
                                PageData::Zero => vec![0; PAGE_SIZE],
                                PageData::Bytes(b) if b.len() == PAGE_SIZE => b,
                                PageData::Bytes(b) => {
                                    return Err(lost(format!("a page of {} bytes", b.len())))
                                }
                            }
                        }
                        other => return Err(lost(format!("{other:?}"))),
                    };
                    out.push((i, data));
                }
                Ok(out)
            });
        let mut pages: Vec<Option<Vec<u8>>> = vec![None; remotes.len()];
        for result in futures_util::future::join_all(futures).await {
            for (i, data) in result? {
                pages[i] = Some(data);
            }
        }
        Ok(pages
            .into_iter()
            .map(|p| p.expect("every page answered"))
            .collect())
    }

    /// Writes pages; returns, per page in order, whether it is stored.
    pub async fn write(&self, space: u32, pages: Vec<(Remote, PageData)>) -> Vec<bool> {
        let mut ok = vec![false; pages.len()];
        let mut per_server: Vec<Vec<(usize, WriteItem)>> = vec![Vec::new(); self.clients.len()];
        for (i, (remote, data)) in pages.into_iter().enumerate() {
            per_server[self.place(remote.slot)].push((
                i,
                WriteItem {
                    key: PageKey::new(space, remote.slot),
                    version: remote.version,
                    data,
                },
            ));
        }
        let mut requests = Vec::new();
        for (s, items) in per_server.into_iter().enumerate() {
            let mut items = items;
            while !items.is_empty() {
                let rest = items.split_off(items.len().min(MAX_BATCH_PAGES));
                let batch = std::mem::replace(&mut items, rest);
                requests.push((s, batch));
            }
        }
        let futures = requests.into_iter().map(|(s, batch)| async move {
            let (name, client) = &self.clients[s];
            let index: Vec<usize> = batch.iter().map(|(i, _)| *i).collect();
            let items = batch.into_iter().map(|(_, w)| w).collect();
            match client.write(items).await {
                Ok(results) => index
                    .into_iter()
                    .zip(results)
                    .map(|(i, r)| (i, r == WriteResult::Stored))
                    .collect::<Vec<_>>(),
                Err(e) => {
                    tracing::warn!("writing to memory server {name}: {e}");
                    index.into_iter().map(|i| (i, false)).collect()
                }
            }
        });
        for results in futures_util::future::join_all(futures).await {
            for (i, stored) in results {
                ok[i] = stored;
            }
        }
        ok
    }

    /// Frees pages (best effort: a page left behind is freed with its space at the end).
    pub async fn free(&self, space: u32, remotes: Vec<Remote>) {
        let mut per_server: Vec<Vec<FreeItem>> = vec![Vec::new(); self.clients.len()];
        for r in remotes {
            per_server[self.place(r.slot)].push(FreeItem {
                key: PageKey::new(space, r.slot),
                version: r.version,
            });
        }
        for (s, items) in per_server.into_iter().enumerate() {
            for chunk in items.chunks(MAX_BATCH_PAGES) {
                if let Err(e) = self.clients[s].1.free(chunk.to_vec()).await {
                    tracing::debug!("freeing pages on {}: {e}", self.clients[s].0);
                }
            }
        }
    }

    /// Frees every page of a space on every server; returns how many were freed.
    pub async fn drop_space(&self, space: u32) -> u64 {
        let mut freed = 0;
        for (name, client) in &self.clients {
            match client.drop_space(space).await {
                Ok(n) => freed += n,
                Err(e) => tracing::warn!("dropping the workload's pages on {name}: {e}"),
            }
        }
        freed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_moves_about_a_fair_share_when_a_server_is_added() {
        let place = |slot: u64, n: usize| (0..n).max_by_key(|&i| score(slot, i)).unwrap();
        let moved = (0..10_000u64)
            .filter(|&s| place(s, 3) != place(s, 4))
            .count();
        assert!(
            (1_500..3_500).contains(&moved),
            "moved {moved} of 10000 (expect ~2500)"
        );
        let on_new = (0..10_000u64).filter(|&s| place(s, 4) == 3).count();
        assert_eq!(moved, on_new, "only pages that land on the new server move");
    }
}
