//! The slots of a process's parking area: where the agent moves pages it evicts (`UFFDIO_MOVE`)
//! until they are saved. Pure bookkeeping; the evictor and the fault loop do the moves.
//!
//! A slot is free, holds a parked page, or is being freed (its page was saved and the shim was
//! asked to drop it). A slot being freed is never handed out again before the shim confirms, or
//! the drop could hit a page parked there later. A held slot may be *in grace*: its page was
//! parked as an access probe and is not being saved yet (docs/eviction.md, "The grace window").

/// State of one slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Free,
    Held,
    /// Held, and its page waits in the grace window (not being saved yet).
    Grace,
    Freeing,
}

/// The parking area of one address space.
#[derive(Debug)]
pub struct Parking {
    base: u64,
    slots: Vec<Slot>,
    /// Where the next search for free slots starts (next fit).
    cursor: usize,
    held: usize,
    /// Of `held`, slots in grace.
    graced: usize,
    freeing: usize,
}

const PAGE: u64 = 4096;

impl Parking {
    /// An empty parking area of `pages` pages at `base`.
    pub fn new(base: u64, pages: usize) -> Self {
        Self {
            base,
            slots: vec![Slot::Free; pages],
            cursor: 0,
            held: 0,
            graced: 0,
            freeing: 0,
        }
    }

    /// The same area, empty (a forked child's: inherited wiped).
    pub fn empty_copy(&self) -> Self {
        Self::new(self.base, self.slots.len())
    }

    /// Whether `addr` is a page of the area.
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.base && addr < self.base + self.slots.len() as u64 * PAGE
    }

    fn index(&self, addr: u64) -> Option<usize> {
        self.contains(addr)
            .then(|| ((addr - self.base) / PAGE) as usize)
    }

    /// Takes up to `want` contiguous free slots: their first address and how many (the first
    /// run of free slots at or after the cursor, wrapping once). `None` when none is free.
    pub fn take_run(&mut self, want: usize) -> Option<(u64, usize)> {
        let n = self.slots.len();
        if want == 0 || self.held + self.freeing == n {
            return None;
        }
        for step in 0..n {
            let i = (self.cursor + step) % n;
            if self.slots[i] != Slot::Free {
                continue;
            }
            let mut len = 0;
            while i + len < n && len < want && self.slots[i + len] == Slot::Free {
                self.slots[i + len] = Slot::Held;
                len += 1;
            }
            self.held += len;
            self.cursor = (i + len) % n;
            return Some((self.base + i as u64 * PAGE, len));
        }
        None
    }

    /// A held slot is empty again (its page was moved back, or never moved in).
    pub fn release(&mut self, addr: u64) {
        if let Some(i) = self.index(addr) {
            if self.unhold(i) {
                self.slots[i] = Slot::Free;
            }
        }
    }

    /// A held slot's page is no longer wanted; the shim is being asked to drop it.
    pub fn freeing(&mut self, addr: u64) {
        if let Some(i) = self.index(addr) {
            if self.unhold(i) {
                self.slots[i] = Slot::Freeing;
                self.freeing += 1;
            }
        }
    }

    /// Whether slot `i` was held (in grace or not); it is no longer counted as held.
    fn unhold(&mut self, i: usize) -> bool {
        match self.slots[i] {
            Slot::Held => {}
            Slot::Grace => self.graced -= 1,
            Slot::Free | Slot::Freeing => return false,
        }
        self.held -= 1;
        true
    }

    /// A held slot's page starts its grace window: it waits parked before it is saved.
    pub fn start_grace(&mut self, addr: u64) {
        if let Some(i) = self.index(addr) {
            if self.slots[i] == Slot::Held {
                self.slots[i] = Slot::Grace;
                self.graced += 1;
            }
        }
    }

    /// Ends the grace window of a slot: whether its page was still parked there in grace (not
    /// moved back, dropped or freed meanwhile). The slot stays held.
    pub fn end_grace(&mut self, addr: u64) -> bool {
        match self.index(addr) {
            Some(i) if self.slots[i] == Slot::Grace => {
                self.slots[i] = Slot::Held;
                self.graced -= 1;
                true
            }
            _ => false,
        }
    }

    /// Held slots whose page waits in the grace window.
    pub fn graced(&self) -> usize {
        self.graced
    }

    /// The shim dropped a slot's page: it is free.
    pub fn freed(&mut self, addr: u64) {
        if let Some(i) = self.index(addr) {
            if self.slots[i] == Slot::Freeing {
                self.slots[i] = Slot::Free;
                self.freeing -= 1;
            }
        }
    }

    /// Slots holding a parked page (in grace or being saved).
    pub fn held(&self) -> usize {
        self.held
    }

    /// Slots whose page was saved and is being dropped: memory still in use, counted against the
    /// budget until the drop is done.
    pub fn freeing_count(&self) -> usize {
        self.freeing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: u64 = 0x7000_0000;

    #[test]
    fn runs_are_contiguous_and_never_overlap() {
        let mut p = Parking::new(BASE, 8);
        assert_eq!(p.take_run(3), Some((BASE, 3)));
        assert_eq!(p.take_run(3), Some((BASE + 3 * PAGE, 3)));
        assert_eq!(p.take_run(3), Some((BASE + 6 * PAGE, 2)), "cut at the end");
        assert_eq!(p.take_run(1), None, "full");
        assert_eq!(p.held(), 8);
        p.release(BASE + PAGE);
        assert_eq!(p.take_run(4), Some((BASE + PAGE, 1)));
    }

    #[test]
    fn a_slot_being_freed_is_not_handed_out_until_freed() {
        let mut p = Parking::new(BASE, 2);
        let (a, n) = p.take_run(2).unwrap();
        assert_eq!(n, 2);
        p.freeing(a);
        p.release(a + PAGE);
        assert_eq!(p.freeing_count(), 1);
        assert_eq!(p.take_run(2), Some((a + PAGE, 1)));
        assert_eq!(p.take_run(1), None);
        p.freed(a);
        assert_eq!(p.freeing_count(), 0);
        assert_eq!(p.take_run(1), Some((a, 1)));
        // Addresses outside the area and slots in the wrong state are ignored.
        p.freed(a);
        p.release(BASE - PAGE);
        p.freeing(BASE + 100 * PAGE);
        assert_eq!(p.held(), 2);
    }

    #[test]
    fn grace_is_a_kind_of_held_that_every_exit_ends() {
        let mut p = Parking::new(BASE, 4);
        let (a, n) = p.take_run(4).unwrap();
        assert_eq!(n, 4);
        for i in 0..4 {
            p.start_grace(a + i * PAGE);
        }
        assert_eq!((p.held(), p.graced()), (4, 4));
        // A rescue frees the slot, a refused move releases it, a release ends the grace.
        p.freeing(a);
        p.release(a + PAGE);
        assert!(p.end_grace(a + 2 * PAGE));
        assert_eq!((p.held(), p.graced(), p.freeing_count()), (2, 1, 1));
        // Only a slot still in grace ends it once.
        assert!(!p.end_grace(a));
        assert!(!p.end_grace(a + PAGE));
        assert!(!p.end_grace(a + 2 * PAGE));
        assert!(p.end_grace(a + 3 * PAGE));
        assert_eq!((p.held(), p.graced()), (2, 0));
        // A slot that is free or being freed does not go into grace.
        p.start_grace(a);
        p.start_grace(a + PAGE);
        assert_eq!(p.graced(), 0);
    }
}
