//! Re-replication: after a memory server goes down (or comes back empty), gives every page of the
//! workload its replicas again.

use std::{collections::HashMap, rc::Rc, time::Duration};

use tracing::{debug, info};
use yonder_common::protocol::PageData;

use super::Group;
use crate::pages::Remote;

/// After a memory server goes down, copies every page it was a home of from a surviving replica
/// to the next server of the page's ranking, until every page has its replicas again.
pub(super) async fn repairer(g: Rc<Group>) {
    let mut cursor = 0;
    // Pages a pass could not give their replicas back (too few servers up): retried.
    let mut short: Vec<Remote> = Vec::new();
    loop {
        tokio::time::sleep(Duration::from_millis(if short.is_empty() {
            200
        } else {
            1000
        }))
        .await;
        // Servers that went down, or came back (perhaps restarted empty), since the last pass.
        let changed = g.servers.changed_since(&mut cursor);
        // Pages whose last write could not place a copy on every home server (one was down:
        // the next server of the ranking took it), now that their home is up again. A pass
        // for a server's comeback lists pages by the version their table names, and skips
        // those found rewritten since; a rewrite that began while the server was down is
        // brought home here (without it, such a page was left with one copy on its home and
        // one elsewhere, and the soak lost it after two more kills).
        let displaced = g.servers.take_displaced();
        if changed.is_empty() && short.is_empty() && displaced.is_empty() {
            continue;
        }
        let mut todo: HashMap<u64, u64> = short.drain(..).map(|r| (r.slot, r.version)).collect();
        for r in displaced {
            let v = todo.entry(r.slot).or_insert(r.version);
            *v = (*v).max(r.version);
        }
        if !changed.is_empty() && g.servers.policy().replicas >= 2 {
            // Every slot the workload refers to whose home includes such a server.
            for p in g.procs.borrow().iter() {
                for r in p.table.borrow().all_references() {
                    if changed.iter().any(|&d| g.servers.is_home(r.slot, d)) {
                        let v = todo.entry(r.slot).or_insert(r.version);
                        *v = (*v).max(r.version);
                    }
                }
            }
            info!(
                pages = todo.len(),
                "re-replicating after memory-server changes"
            );
        }
        if todo.is_empty() {
            continue;
        }
        let affected: Vec<Remote> = todo
            .into_iter()
            .map(|(slot, version)| Remote { slot, version })
            .collect();
        let mut deficit = affected.len() as u64;
        g.stats.borrow_mut().repair(0, deficit);
        for chunk in affected.chunks(64) {
            // Pages freed meanwhile need no copy.
            let live: Vec<Remote> = chunk
                .iter()
                .copied()
                .filter(|r| g.slots.borrow().is_referenced(r.slot))
                .collect();
            let reads = g.servers.read_for_repair(g.space, &live).await;
            let mut items = Vec::new();
            for (r, read) in live.iter().zip(reads) {
                match read {
                    crate::remote::RepairRead::Data(d) => {
                        items.push((*r, PageData::from_bytes(&d)))
                    }
                    // Rewritten since: that write placed its own copies, or listed itself as
                    // displaced if it could not place them on the whole home (see below).
                    crate::remote::RepairRead::Newer => {}
                    // Only on servers that are down now: try again later.
                    crate::remote::RepairRead::Unavailable => short.push(*r),
                }
            }
            let written: Vec<Remote> = items.iter().map(|(r, _)| *r).collect();
            tracing::trace!(target: "yonder_agent::slottrace", ?written, ?short, "repair writes");
            let stored = g.servers.write(g.space, items).await;
            let mut done = 0;
            for (r, ok) in written.into_iter().zip(stored) {
                if ok {
                    done += 1;
                } else {
                    short.push(r);
                }
            }
            deficit = deficit.saturating_sub(chunk.len() as u64);
            g.stats
                .borrow_mut()
                .repair(done, deficit + short.len() as u64);
        }
        if short.is_empty() {
            info!("re-replication done");
        } else {
            debug!(short = short.len(), "pages still short of replicas");
        }
    }
}
