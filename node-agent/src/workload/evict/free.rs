//! Freeing parking slots: the shim's helper drops the saved pages, and the slots are handed out
//! again once it has.

use tracing::{debug, warn};

use super::super::{
    process::Proc,
    shim_link::{read_words, runs, write_words},
};
use crate::shim_proto as proto;

impl Proc {
    /// Frees parking slots whose pages are saved or no longer wanted: the shim drops them, and
    /// they are handed out again once it has. Until then they count against the budget.
    pub(in crate::workload) async fn free_parked(&self, addrs: Vec<u64>) {
        if addrs.is_empty() {
            return;
        }
        if let Some(k) = self.parking.borrow_mut().as_mut() {
            for &a in &addrs {
                k.freeing(a);
            }
        }
        let mut sorted = addrs.clone();
        sorted.sort_unstable();
        let ranges = runs(&sorted);
        let Some(mut shim) = self.take_shim().await else {
            // The process is gone, and its parking area with it: nothing is held any more.
            self.parked_gone(&addrs);
            return;
        };
        let id = self.g.next_drop_id.get() + 1;
        self.g.next_drop_id.set(id);
        let mut ok = true;
        for chunk in ranges.chunks(proto::MAX_RANGES) {
            let mut words = vec![proto::FREE_PARKED, id, chunk.len() as u64];
            for &(s, l) in chunk {
                words.extend([s, l]);
            }
            let reply = match write_words(&mut shim, &words).await {
                Ok(()) => read_words(&mut shim).await,
                Err(e) => Err(e),
            };
            match reply {
                Ok(r) if r.len() == 3 && r[0] == proto::FREED && r[1] == id && r[2] == 0 => {}
                Ok(r) => {
                    warn!("the shim could not free parked pages: {r:?}");
                    ok = false;
                }
                Err(e) => {
                    debug!("the shim did not answer a free (process gone?): {e}");
                    ok = false;
                    break;
                }
            }
        }
        *self.shim.borrow_mut() = Some(shim);
        if ok || !self.uffd.mm_alive(self.unregistered_page()) {
            self.parked_gone(&addrs);
        }
    }

    /// The parked pages at `addrs` are no longer in memory (freed, or their process is gone).
    fn parked_gone(&self, addrs: &[u64]) {
        if let Some(k) = self.parking.borrow_mut().as_mut() {
            for &a in addrs {
                k.freed(a);
            }
        }
    }
}
