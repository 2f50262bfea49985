//! The page table's storage: one 32-bit word per page in dense chunks ([`PageMap`]), holding the
//! page's state when it fits (resident, fetching or evicted, with the index of a slot whose last
//! version is the page's copy) and whether the page is a ghost; the states that do not fit
//! (pages under eviction, and the rare page whose copy is not its slot's last version) are kept
//! whole in a side map. See docs/page-table.md.

use std::collections::HashMap;

use super::{dense::PageMap, Remote, Slots, State, PAGE};

/// The page was evicted recently (a fault on it is a refault).
const GHOST: u32 = 1 << 31;
/// Where the state's tag is.
const TAG_SHIFT: u32 = 28;
/// Slot indices the word can hold (beyond them, a state goes to the side map).
const SLOT_LIMIT: u32 = 1 << TAG_SHIFT;

/// No state (never seen, or dropped by the program).
const NONE: u32 = 0;
/// `Resident` without a remote copy; `+ 1` when dirty.
const RESIDENT: u32 = 1;
/// `Resident` with a remote copy; `+ 1` when dirty.
const RESIDENT_COPY: u32 = 3;
/// `Fetching`.
const FETCHING: u32 = 5;
/// `Evicted`.
const EVICTED: u32 = 6;
/// In the side map.
const ODD: u32 = 7;

/// The states of a table's pages, and their ghost marks. Pages are addresses (multiples of
/// [`PAGE`]); the words are keyed by page number.
#[derive(Default)]
pub(super) struct Entries {
    words: PageMap<u32>,
    odd: HashMap<u64, State>,
}

/// The word of a state whose copy is `remote` with `tag`, if it fits.
fn with_slot(slots: &Slots, tag: u32, remote: Remote) -> Option<u32> {
    slots
        .compact(remote, SLOT_LIMIT)
        .map(|i| tag << TAG_SHIFT | i)
}

/// The word of `state` (without the ghost mark), or `None` when it does not fit.
fn encode(slots: &Slots, state: State) -> Option<u32> {
    match state {
        State::Resident {
            dirty,
            remote: None,
        } => Some((RESIDENT + u32::from(dirty)) << TAG_SHIFT),
        State::Resident {
            dirty,
            remote: Some(r),
        } => with_slot(slots, RESIDENT_COPY + u32::from(dirty), r),
        State::Fetching { remote } => with_slot(slots, FETCHING, remote),
        State::Evicted { remote } => with_slot(slots, EVICTED, remote),
        State::Evicting(_) => None,
    }
}

impl Entries {
    fn word(&self, page: u64) -> u32 {
        debug_assert_eq!(page % PAGE, 0, "unaligned page {page:#x}");
        self.words.get(page / PAGE)
    }

    fn set_word(&mut self, page: u64, w: u32) {
        self.words.set(page / PAGE, w);
    }

    /// The state of the page whose word is `w`.
    fn decode(&self, slots: &Slots, page: u64, w: u32) -> Option<State> {
        let slot = || slots.at(w & (SLOT_LIMIT - 1));
        match (w & !GHOST) >> TAG_SHIFT {
            NONE => None,
            t @ (RESIDENT | 2) => Some(State::Resident {
                dirty: t == 2,
                remote: None,
            }),
            t @ (RESIDENT_COPY | 4) => Some(State::Resident {
                dirty: t == 4,
                remote: Some(slot()),
            }),
            FETCHING => Some(State::Fetching { remote: slot() }),
            EVICTED => Some(State::Evicted { remote: slot() }),
            _ => self.odd.get(&page).copied(),
        }
    }

    /// The state of `page`.
    pub(super) fn get(&self, slots: &Slots, page: u64) -> Option<State> {
        self.decode(slots, page, self.word(page))
    }

    /// Whether `page` is `Resident`.
    pub(super) fn is_resident(&self, page: u64) -> bool {
        let w = self.word(page);
        match (w & !GHOST) >> TAG_SHIFT {
            RESIDENT..=4 => true,
            ODD => matches!(self.odd.get(&page), Some(State::Resident { .. })),
            _ => false,
        }
    }

    /// Sets the state of `page` (`None`: no state), keeping its ghost mark. The copy a state
    /// names must be live in `slots` for as long as the state holds it.
    pub(super) fn set(&mut self, slots: &Slots, page: u64, state: Option<State>) {
        let old = self.word(page);
        let w = match state {
            None => NONE,
            Some(s) => encode(slots, s).unwrap_or_else(|| {
                self.odd.insert(page, s);
                ODD << TAG_SHIFT
            }),
        };
        if (old & !GHOST) >> TAG_SHIFT == ODD && (w >> TAG_SHIFT) != ODD {
            self.odd.remove(&page);
        }
        self.set_word(page, w | (old & GHOST));
    }

    /// Whether `page` is a ghost.
    pub(super) fn is_ghost(&self, page: u64) -> bool {
        self.word(page) & GHOST != 0
    }

    /// Marks `page` a ghost, or not.
    pub(super) fn set_ghost(&mut self, page: u64, ghost: bool) {
        let w = self.word(page);
        self.set_word(page, if ghost { w | GHOST } else { w & !GHOST });
    }

    /// The pages in `[start, end)` that have a state, in order, with their states.
    pub(super) fn range(&self, slots: &Slots, start: u64, end: u64) -> Vec<(u64, State)> {
        self.words
            .range(start.div_ceil(PAGE), end.div_ceil(PAGE))
            .filter_map(|(pn, w)| Some((pn * PAGE, self.decode(slots, pn * PAGE, w)?)))
            .collect()
    }

    /// How many pages of `[start, end)` are resident.
    pub(super) fn resident_in(&self, start: u64, end: u64) -> usize {
        self.words
            .range(start.div_ceil(PAGE), end.div_ceil(PAGE))
            .filter(|&(pn, _)| self.is_resident(pn * PAGE))
            .count()
    }

    /// Up to `max` pages from `from` on that have a state, in order, with their states.
    pub(super) fn states_from(&self, slots: &Slots, from: u64, max: usize) -> Vec<(u64, State)> {
        self.words
            .range(from.div_ceil(PAGE), u64::MAX)
            .filter_map(|(pn, w)| Some((pn * PAGE, self.decode(slots, pn * PAGE, w)?)))
            .take(max)
            .collect()
    }

    /// Calls `f` with every page that has a state, in order, and its state.
    pub(super) fn for_each(&self, slots: &Slots, mut f: impl FnMut(u64, State)) {
        for (pn, w) in self.words.iter() {
            if let Some(s) = self.decode(slots, pn * PAGE, w) {
                f(pn * PAGE, s);
            }
        }
    }
}
