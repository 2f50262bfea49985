//! The eviction of a page, state by state: picked (`Evicting`), moved to parking, its content
//! decided (clean, or written under a new slot), rescued, aborted, dropped, finished.

use super::*;

impl<P: EvictionPolicy> PageTable<P> {
    /// Picks up to `n` resident pages to evict and marks them `Evicting` (see
    /// [`Self::start_eviction_of`]).
    pub fn start_eviction(&mut self, n: usize) -> Vec<u64> {
        self.start_eviction_where(n, &mut |_| true)
    }

    /// As [`Self::start_eviction`], passing over the pages for which `allowed` (given a page's
    /// address) is false: pages another process maps too, whose eviction here would free no
    /// memory, or pages the program locked in memory.
    pub fn start_eviction_where(
        &mut self,
        n: usize,
        allowed: &mut dyn FnMut(u64) -> bool,
    ) -> Vec<u64> {
        let entries = &self.entries;
        let victims = self.policy.pick(n, &mut |pn| {
            entries.is_resident(pn * PAGE) && allowed(pn * PAGE)
        });
        self.start_eviction_of(victims.into_iter().map(|pn| pn * PAGE).collect())
    }

    /// Pages mapped in the process now (state `Resident`), in address order.
    pub fn resident_pages(&self) -> Vec<u64> {
        let mut out = Vec::new();
        self.entries.for_each(&self.slots.borrow(), |page, state| {
            if matches!(state, State::Resident { .. }) {
                out.push(page);
            }
        });
        out
    }

    /// How many pages of `[start, end)` are resident (state `Resident`).
    pub fn resident_in(&self, start: u64, end: u64) -> usize {
        self.entries.resident_in(start, end)
    }

    /// The states of the pages in `[start, end)` that have one.
    pub fn states_in(&self, start: u64, end: u64) -> Vec<(u64, State)> {
        self.entries.range(&self.slots.borrow(), start, end)
    }

    /// Marks the given pages `Evicting` (those that are resident) and returns them. What each
    /// needs written is decided once its content is read ([`Self::decide`]).
    pub fn start_eviction_of(&mut self, victims: Vec<u64>) -> Vec<u64> {
        let mut out = Vec::with_capacity(victims.len());
        for page in victims {
            let Some(State::Resident { dirty, remote }) = self.get(page) else {
                continue;
            };
            self.put(
                page,
                State::Evicting(Evicting {
                    old: remote,
                    dirty: dirty || remote.is_none(),
                    new: None,
                    parked: None,
                    dropping: false,
                    program_dropped: false,
                }),
            );
            out.push(page);
        }
        out
    }

    /// The eviction state of `page`, if it is being evicted.
    pub(super) fn evicting(&self, page: u64) -> Option<Evicting> {
        match self.get(page) {
            Some(State::Evicting(e)) => Some(e),
            _ => None,
        }
    }

    /// `page`, being evicted, now waits in the parking area at `at`.
    pub fn parked(&mut self, page: u64, at: u64) {
        if let Some(mut e) = self.evicting(page) {
            e.parked = Some(at);
            e.dropping = false;
            self.put(page, State::Evicting(e));
        }
    }

    /// The content of `page`, being evicted, has digest `d`: decides whether it must be
    /// written and as which copy. Its old copy is reused when it holds this very content;
    /// otherwise a new version, in the old slot unless another process refers to that slot
    /// (or the slot's versions ran out).
    pub fn decide(&mut self, page: u64, d: Digest) -> Decision {
        let Some(mut e) = self.evicting(page) else {
            return Decision::Gone;
        };
        if e.program_dropped {
            return Decision::Gone;
        }
        let decision = {
            let mut slots = self.slots.borrow_mut();
            match e.old {
                Some(old) if !e.dirty && slots.holds(old, d) => {
                    e.new = Some(old);
                    Decision::Clean(old)
                }
                _ => {
                    let reused = e
                        .old
                        .filter(|r| slots.refs(r.slot) == 1)
                        .and_then(|r| Some((r.slot, slots.next_version(r.slot)?)));
                    let (slot, version) = reused.unwrap_or_else(|| {
                        let slot = slots.alloc();
                        (
                            slot,
                            slots
                                .next_version(slot)
                                .expect("a new slot's first version"),
                        )
                    });
                    let new = Remote { slot, version };
                    tracing::trace!(target: "yonder_agent::slottrace", page, ?new, old = ?e.old, "decide write");
                    slots.set_digest(new, d);
                    e.new = Some(new);
                    e.dirty = true;
                    Decision::Write(new)
                }
            }
        };
        self.put(page, State::Evicting(e));
        decision
    }

    /// The parked `page` was saved as `new` (or was clean): it is evicted. Returns the parking
    /// address to free and the remote copies that are now garbage; `None` when the page is no
    /// longer this eviction (rescued, dropped or unmapped meanwhile: nothing to do for the page,
    /// the write's own reference is released by the caller, see [`Self::writing`]).
    pub fn finish_parked(&mut self, page: u64, new: Remote) -> Option<(u64, Vec<Remote>)> {
        let e = self.evicting(page)?;
        let at = e.parked?;
        if e.new != Some(new) || e.program_dropped {
            return None;
        }
        self.resident -= 1;
        tracing::trace!(target: "yonder_agent::slottrace", page, ?new, "finished parked");
        self.put(page, State::Evicted { remote: new });
        // Of no use until the page is read back, which records it again.
        self.slots.borrow_mut().forget_digest(new);
        self.remember_ghost(page);
        let garbage = e.old.filter(|o| o.slot != new.slot).into_iter().collect();
        Some((at, garbage))
    }

    /// The parked `page` read as all zeros: it leaves without a copy, as a page the program never
    /// touched (its next fault installs a zero page, with no fetch). Returns the parking address
    /// to free and the remote copies that are now garbage; `None` when the page is no longer
    /// parked by this eviction or its content was already decided ([`Self::decide`]).
    pub fn finish_parked_zero(&mut self, page: u64) -> Option<(u64, Vec<Remote>)> {
        let e = self.evicting(page)?;
        let at = e.parked?;
        if e.new.is_some() || e.program_dropped {
            return None;
        }
        tracing::trace!(target: "yonder_agent::slottrace", page, old = ?e.old, "finished parked as zeros");
        self.remove(page);
        self.resident -= 1;
        Some((at, e.old.into_iter().collect()))
    }

    /// A write of `new` (a [`Decision::Write`]) is about to go to the servers: the write holds a
    /// reference of its own to the slot until it is over. The caller releases it then (as
    /// garbage, [`Slots::release`]), whatever became of the page meanwhile. Until then the slot
    /// cannot be freed, nor its number reused, nor its version moved by another eviction of the
    /// page: a page rescued, dropped, unmapped or forked while its write is in flight only
    /// releases the references the page itself holds.
    pub fn writing(&mut self, new: Remote) {
        self.slots.borrow_mut().share(new.slot);
    }

    /// The parked `page` was moved back (a fault wanted it): it is resident again, and in use.
    /// Its content is what was parked, so it equals its old copy when the eviction found it
    /// clean. Returns the parking address, now empty, and the new slot the eviction had taken
    /// for it, if any: garbage as far as the page is concerned (a write of it still in flight
    /// holds its own reference, [`Self::writing`]).
    pub fn rescued(&mut self, page: u64) -> Option<(u64, Option<Remote>)> {
        let e = self.evicting(page)?;
        let at = e.parked?;
        let clean = e.old.is_some() && e.new == e.old;
        tracing::trace!(target: "yonder_agent::slottrace", page, ?e, "rescued");
        self.put(
            page,
            State::Resident {
                dirty: !clean && e.dirty,
                remote: e.old,
            },
        );
        self.policy.rescued(page / PAGE);
        Some((at, new_slot(&e)))
    }

    /// The eviction of `page` could not save it (server error, full servers, or the page could
    /// not be moved or protected): it stays resident. Returns a remote copy that is now garbage
    /// (the new slot it did not fill), if any.
    pub fn abort_eviction(&mut self, page: u64) -> Option<Remote> {
        let e = self.evicting(page)?;
        tracing::trace!(target: "yonder_agent::slottrace", page, ?e, "aborted");
        self.put(
            page,
            State::Resident {
                dirty: true,
                remote: e.old,
            },
        );
        self.policy.inserted(page / PAGE);
        new_slot(&e)
    }

    /// The drop of `page` is about to be sent; false if the page is no longer being evicted.
    pub fn dropping(&mut self, page: u64) -> bool {
        let Some(mut e) = self.evicting(page) else {
            return false;
        };
        e.dropping = true;
        self.put(page, State::Evicting(e));
        true
    }

    /// `page`, being evicted, turned out not to be present at all: the program dropped it (no
    /// REMOVE event says so when `MADV_FREE` memory is reclaimed, and a DONTNEED'd page keeps a
    /// resident entry). It reads as zeros from now on. Returns remote copies that are now garbage.
    pub fn vanished(&mut self, page: u64) -> Vec<Remote> {
        let Some(e) = self.evicting(page) else {
            return Vec::new();
        };
        self.remove(page);
        self.resident -= 1;
        e.old.into_iter().chain(new_slot(&e)).collect()
    }

    /// `page`, being evicted, is known to be still in place after all (it could not be moved).
    pub fn not_dropping(&mut self, page: u64) {
        if let Some(mut e) = self.evicting(page) {
            e.dropping = false;
            self.put(page, State::Evicting(e));
        }
    }

    /// The drop of `page` is done. Returns remote copies that are now garbage.
    pub fn finish_eviction(&mut self, page: u64) -> Vec<Remote> {
        let Some(e) = self.evicting(page) else {
            return Vec::new();
        };
        self.resident -= 1;
        let mut garbage: Vec<Remote> = e
            .old
            .into_iter()
            .filter(|o| Some(o.slot) != e.new.map(|n| n.slot))
            .collect();
        if e.program_dropped {
            self.remove(page);
            garbage.extend(e.new);
        } else if let Some(remote) = e.new {
            tracing::trace!(target: "yonder_agent::slottrace", page, ?remote, "finished protected");
            self.put(page, State::Evicted { remote });
            self.slots.borrow_mut().forget_digest(remote);
            self.remember_ghost(page);
        } else {
            self.remove(page);
        }
        garbage
    }
}
