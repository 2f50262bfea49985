//! The grace window: pages parked as an access probe before they are saved (docs/eviction.md,
//! "The grace window"). The evictor saves the oldest batch first under pressure and tops the
//! window up after pages left.

use std::rc::Rc;

use super::{
    evict::{park, pick_victims, save_now, BATCHES_IN_FLIGHT},
    process::Proc,
    protect::run_protected,
    Group, EVICT_BATCH,
};

/// Pages of one process parked in the grace window: an access probe. A page the program touches
/// meanwhile is moved back (a rescue, which tells the policy it is in use); the others are saved
/// when the batch leaves the window, oldest batch first.
pub(super) struct GraceBatch {
    p: Rc<Proc>,
    /// `(page, parking address)`.
    parked: Vec<(u64, u64)>,
}

/// Ends the grace window of a batch: its pages still parked are saved.
pub(super) async fn release_grace(g: &Group, batch: GraceBatch) {
    let GraceBatch { p, parked } = batch;
    if p.removed.get() {
        return;
    }
    if !p.uffd.mm_alive(p.unregistered_page()) {
        // Exited or exec'd while its pages waited: the parking area went with it.
        p.remove();
        return;
    }
    let still: Vec<(u64, u64)> = {
        let mut k = p.parking.borrow_mut();
        let Some(k) = k.as_mut() else { return };
        parked
            .into_iter()
            .filter(|&(_, at)| k.end_grace(at))
            .collect()
    };
    g.stats.borrow_mut().graced(g.graced());
    if !still.is_empty() {
        save_now(&p, still).await;
    }
}

impl Group {
    /// Saves every page of `p` waiting in the grace window now (a flush must not wait for the
    /// window to end).
    pub(super) async fn release_grace_of(&self, p: &Rc<Proc>) {
        let mine: std::collections::VecDeque<GraceBatch> = {
            let mut grace = self.grace.borrow_mut();
            let (mine, others) = std::mem::take(&mut *grace)
                .into_iter()
                .partition(|b| Rc::ptr_eq(&b.p, p));
            *grace = others;
            mine
        };
        for b in mine {
            release_grace(self, b).await;
        }
    }
}

/// Parks victims in the grace window until it holds the parked share of the budget (called
/// after pages left, so only under pressure). Parking moves pages within the budget: it frees
/// nothing, and a page the program touches comes back at the cost of a local fault. Pages that
/// cannot be parked are evicted by write protection at once, as they would be under pressure.
pub(super) async fn top_up_grace(g: &Rc<Group>) {
    let target = g.grace_target();
    // Small top-ups cost a park exchange each for little: park only useful batches.
    let useful = (EVICT_BATCH / 4).min(target / 2).max(1);
    loop {
        let graced = g.graced();
        let missing = target.saturating_sub(graced);
        if missing == 0 || (graced > 0 && missing < useful) {
            return;
        }
        if g.servers_refuse.get()
            || g.stuck_warned.get()
            || g.forks_hold_back.get()
            || g.batches_in_flight.get() >= BATCHES_IN_FLIGHT
        {
            return;
        }
        tokio::task::yield_now().await;
        let Some((p, victims)) = pick_victims(g, missing.min(EVICT_BATCH)) else {
            return;
        };
        // No parking area: nothing to probe with. Too few candidates: the process's other
        // pages are shared with a forked relative, locked or pinned, and the few left are the
        // ones it is using (a Redis `BGSAVE` child writes its own few pages all the time), so
        // parked they would come straight back, one exchange and one rescue each, again and
        // again (seen: thousands of rescues of the same page, the save three times slower).
        // The window is a probe, not a must: leave these pages resident.
        if p.parking.borrow().is_none() || victims.len() < useful {
            let mut garbage = Vec::new();
            for pg in victims {
                garbage.extend(p.table.borrow_mut().abort_eviction(pg));
            }
            g.free_later(garbage);
            return;
        }
        let (fallback, none_parked) = match park(&p, victims).await {
            Ok((parked, fallback)) => {
                let none_parked = parked.is_empty();
                if let Some(k) = p.parking.borrow_mut().as_mut() {
                    for &(_, at) in &parked {
                        k.start_grace(at);
                    }
                }
                if !parked.is_empty() {
                    g.grace.borrow_mut().push_back(GraceBatch {
                        p: p.clone(),
                        parked,
                    });
                }
                (fallback, none_parked)
            }
            Err(e) => {
                p.fail(format!("eviction failed: {e:#}"));
                return;
            }
        };
        g.stats.borrow_mut().graced(g.graced());
        if !fallback.is_empty() {
            run_protected(g, &p, fallback).await;
        } else if none_parked {
            // Nothing could be parked (the process is forking, or its address space is
            // changing): a top-up is no must, and asking again at once would only spin.
            return;
        }
    }
}
