//! A simulation of a workload over the table (and a forked child): the program's memory is the
//! model, the servers are a map, and every evicted page must read back as the program left it.

use std::collections::HashMap;

use proptest::prelude::*;

use super::*;

/// Pages the simulation uses (few, so that operations meet).
const PAGES: u64 = 12;
/// Where a remap moves pages to (and back).
const AWAY: u64 = 1 << 30;

#[derive(Clone, Debug)]
enum Op {
    /// The program reads or writes (`Some(byte)`) page `.1` of process `.0`.
    Touch(usize, u64, Option<u8>),
    /// Process `.0` evicts up to `.1` pages, parking them.
    Evict(usize, usize),
    /// As `Evict`, but each page is faulted back (rescued) after its decision and before
    /// its write completes.
    EvictRescued(usize, usize),
    /// As `Evict`, and the servers refuse the writes.
    EvictFailing(usize, usize),
    /// As `Evict`, but the writes stay in flight (the pages parked) until `Complete`; the
    /// program may touch (rescue), drop, unmap, move or fork them meanwhile.
    EvictLater(usize, usize, bool),
    /// The write in flight at this index (modulo their number) completes, or fails.
    Complete(usize),
    /// The program drops (`MADV_DONTNEED`) pages `[.1, .1 + .2)`.
    Drop(usize, u64, u64),
    /// The program unmaps pages `[.1, .1 + .2)`.
    Unmap(usize, u64, u64),
    /// The program moves its pages away and back (two remaps).
    Remap(usize),
    /// Process 0 forks (replacing any child), or the child exits.
    Fork,
    Exit,
}

fn op() -> impl Strategy<Value = Op> {
    let p = 0..2usize;
    prop_oneof![
        // A write of zeros one time in four: a page of zeros leaves without a copy.
        6 => (p.clone(), 0..PAGES, proptest::option::of(prop_oneof![3 => any::<u8>(), 1 => Just(0u8)]))
            .prop_map(|(i, pg, w)| Op::Touch(i, pg, w)),
        3 => (p.clone(), 1..6usize).prop_map(|(i, n)| Op::Evict(i, n)),
        1 => (p.clone(), 1..4usize).prop_map(|(i, n)| Op::EvictRescued(i, n)),
        1 => (p.clone(), 1..4usize).prop_map(|(i, n)| Op::EvictFailing(i, n)),
        3 => (p.clone(), 1..6usize, proptest::bool::weighted(0.2))
            .prop_map(|(i, n, fail)| Op::EvictLater(i, n, fail)),
        3 => (0..8usize).prop_map(Op::Complete),
        1 => (p.clone(), 0..PAGES, 1..4u64).prop_map(|(i, a, n)| Op::Drop(i, a, n)),
        1 => (p.clone(), 0..PAGES, 1..4u64).prop_map(|(i, a, n)| Op::Unmap(i, a, n)),
        1 => p.prop_map(Op::Remap),
        1 => Just(Op::Fork),
        1 => Just(Op::Exit),
    ]
}

/// One process: its table and what its memory holds (absent: zeros).
struct Proc {
    /// Which process this is (a child that exits and a later one differ).
    id: u32,
    table: PageTable<Clock>,
    mem: HashMap<u64, u8>,
}

/// A write of a parked page on its way to the servers (as `save_parked`'s).
struct Flight {
    proc: u32,
    page: u64,
    at: u64,
    new: Remote,
    content: u8,
    fail: bool,
}

struct World {
    procs: Vec<Proc>,
    slots: Rc<RefCell<Slots>>,
    /// The servers: per slot, the newest version and its content.
    servers: HashMap<u64, (u64, u8)>,
    flights: Vec<Flight>,
    next_id: u32,
    next_park: u64,
}

fn content(b: u8) -> Digest {
    digest(&[b; PAGE as usize])
}

impl World {
    fn free(&mut self, garbage: Vec<Remote>) {
        let freed = self.slots.borrow_mut().release(garbage);
        for r in freed {
            if self
                .servers
                .get(&r.slot)
                .is_some_and(|&(v, _)| v <= r.version)
            {
                self.servers.remove(&r.slot);
            }
        }
    }

    fn write(&mut self, r: Remote, b: u8) {
        let stored = self.servers.entry(r.slot).or_insert((r.version, b));
        if stored.0 <= r.version {
            *stored = (r.version, b);
        }
    }

    /// What the servers answer for `r` (a newer version is returned as well).
    fn read(&self, r: Remote) -> u8 {
        match self.servers.get(&r.slot) {
            Some(&(v, b)) if v >= r.version => b,
            other => panic!("{r:?} lost: servers hold {other:?}"),
        }
    }

    fn touch(&mut self, i: usize, page: u64, write: Option<u8>) {
        let page = page * PAGE;
        let p = &mut self.procs[i];
        if !matches!(p.table.state(page), Some(State::Resident { .. })) {
            match p.table.missing_fault(page) {
                MissingFault::ZeroFill => {
                    assert_eq!(p.mem.get(&page).copied().unwrap_or(0), 0, "{page:#x}");
                    let g = p.table.zero_filled(page);
                    self.free(g.into_iter().collect());
                }
                MissingFault::Fetch(r) => {
                    assert!(p.table.start_fetch(page));
                    let b = self.read(r);
                    let p = &mut self.procs[i];
                    let want = p.mem.get(&page).copied().unwrap_or(0);
                    assert_eq!(b, want, "{page:#x} read back wrong");
                    p.table
                        .fetched(page, r, write.is_none().then(|| content(b)));
                }
                MissingFault::Rescue(at) => {
                    // The parked content is the program's: the model's memory stands.
                    let (back, g) = p.table.rescued(page).expect("parked");
                    assert_eq!(back, at);
                    self.free(g.into_iter().collect());
                }
                other => panic!("{other:?} with no eviction under way"),
            }
        }
        if let Some(b) = write {
            // Fetched pages are installed writable: the table hears nothing of the write.
            self.procs[i].mem.insert(page, b);
        }
    }

    fn evict(&mut self, i: usize, n: usize, rescue: bool, fail: bool) {
        let victims = self.procs[i].table.start_eviction(n);
        for (k, page) in victims.into_iter().enumerate() {
            let p = &mut self.procs[i];
            let at = PARK + k as u64 * PAGE;
            p.table.parked(page, at);
            let b = p.mem.get(&page).copied().unwrap_or(0);
            if b == 0 {
                // As `decide_parked`: a page of zeros leaves without a copy, before any decision.
                let (freed_at, g) = p.table.finish_parked_zero(page).expect("parked");
                assert_eq!(freed_at, at);
                self.free(g);
                continue;
            }
            let d = p.table.decide(page, content(b));
            let new = match d {
                Decision::Write(r) | Decision::Clean(r) => r,
                Decision::Gone => panic!("{page:#x} gone"),
            };
            if let Decision::Write(r) = d {
                p.table.writing(r);
            }
            if rescue {
                let (back, g) = p.table.rescued(page).expect("parked");
                assert_eq!(back, at);
                self.free(g.into_iter().collect());
                if let Decision::Write(r) = d {
                    self.write(r, b);
                    self.free(vec![r]);
                }
            } else if fail {
                let g = p.table.abort_eviction(page);
                self.free(g.into_iter().collect());
                if let Decision::Write(r) = d {
                    self.free(vec![r]);
                }
            } else {
                if let Decision::Write(r) = d {
                    self.write(r, b);
                }
                let (freed_at, g) = self.procs[i]
                    .table
                    .finish_parked(page, new)
                    .expect("still parked");
                assert_eq!(freed_at, at);
                self.free(g);
                if let Decision::Write(r) = d {
                    self.free(vec![r]);
                }
            }
        }
    }

    /// Parks up to `n` pages of process `i` and decides them; clean ones are done at once,
    /// the others leave their writes in flight.
    fn evict_later(&mut self, i: usize, n: usize, fail: bool) {
        let victims = self.procs[i].table.start_eviction(n);
        for page in victims {
            self.next_park += PAGE;
            let at = PARK + self.next_park;
            let p = &mut self.procs[i];
            p.table.parked(page, at);
            let b = p.mem.get(&page).copied().unwrap_or(0);
            if b == 0 {
                let (_, g) = p.table.finish_parked_zero(page).expect("parked");
                self.free(g);
                continue;
            }
            match p.table.decide(page, content(b)) {
                Decision::Clean(r) => {
                    let (_, g) = p.table.finish_parked(page, r).expect("still parked");
                    self.free(g);
                }
                Decision::Write(r) => {
                    p.table.writing(r);
                    let proc = p.id;
                    self.flights.push(Flight {
                        proc,
                        page,
                        at,
                        new: r,
                        content: b,
                        fail,
                    });
                }
                Decision::Gone => panic!("{page:#x} gone"),
            }
        }
    }

    /// A write in flight completes (as in `save_parked`).
    fn complete(&mut self, k: usize) {
        if self.flights.is_empty() {
            return;
        }
        let f = self.flights.remove(k % self.flights.len());
        if !f.fail {
            self.write(f.new, f.content);
        }
        if let Some(p) = self.procs.iter_mut().find(|p| p.id == f.proc) {
            let still_parked = matches!(
                p.table.state(f.page),
                Some(State::Evicting(e)) if e.parked == Some(f.at) && e.new == Some(f.new)
            );
            if still_parked {
                let g = if f.fail {
                    // Moved back where it was: resident, its content unchanged.
                    p.table.abort_eviction(f.page).into_iter().collect()
                } else {
                    p.table
                        .finish_parked(f.page, f.new)
                        .expect("still parked")
                        .1
                };
                self.free(g);
            }
        }
        // The write's own reference.
        self.free(vec![f.new]);
    }

    fn apply(&mut self, op: Op) {
        let n = self.procs.len();
        match op {
            Op::Touch(i, page, w) if i < n => self.touch(i, page, w),
            Op::Evict(i, k) if i < n => self.evict(i, k, false, false),
            Op::EvictRescued(i, k) if i < n => self.evict(i, k, true, false),
            Op::EvictFailing(i, k) if i < n => self.evict(i, k, false, true),
            Op::EvictLater(i, k, fail) if i < n => self.evict_later(i, k, fail),
            Op::Complete(k) => self.complete(k),
            Op::Drop(i, a, k) if i < n => {
                let p = &mut self.procs[i];
                let g = p.table.program_dropped(a * PAGE, (a + k) * PAGE);
                p.mem
                    .retain(|pg, _| !(a * PAGE..(a + k) * PAGE).contains(pg));
                self.free(g);
            }
            Op::Unmap(i, a, k) if i < n => {
                let p = &mut self.procs[i];
                let g = p.table.unmapped(a * PAGE, (a + k) * PAGE);
                p.mem
                    .retain(|pg, _| !(a * PAGE..(a + k) * PAGE).contains(pg));
                self.free(g);
            }
            Op::Remap(i) if i < n => {
                let p = &mut self.procs[i];
                let mut g = p.table.remapped(0, AWAY, PAGES * PAGE);
                g.extend(p.table.remapped(AWAY, 0, PAGES * PAGE));
                self.free(g);
            }
            Op::Fork => {
                if n == 2 {
                    self.apply(Op::Exit);
                }
                // Pages parked in the parent are copied into the child (`copies`): the
                // child's memory is the parent's either way.
                let (table, _copies) = self.procs[0].table.fork_clone(Clock::default(), &[]);
                let mem = self.procs[0].mem.clone();
                self.next_id += 1;
                let id = self.next_id;
                self.procs.push(Proc { id, table, mem });
            }
            Op::Exit if n == 2 => {
                let mut child = self.procs.pop().expect("a child");
                let refs = child.table.release_all();
                self.free(refs);
            }
            _ => {}
        }
    }

    /// Every evicted page reads back as the program left it; resident counts and slot
    /// references add up.
    fn check(&self) {
        let mut refs: HashMap<u64, u32> = HashMap::new();
        for p in &self.procs {
            let states = p.table.states_in(0, u64::MAX);
            let present = states
                .iter()
                .filter(|(_, s)| !matches!(s, State::Evicted { .. }))
                .count();
            assert_eq!(p.table.resident(), present);
            for (page, s) in states {
                if let State::Evicted { remote } = s {
                    let want = p.mem.get(&page).copied().unwrap_or(0);
                    assert_eq!(self.read(remote), want, "{page:#x}");
                }
            }
            for r in p.table.all_references() {
                *refs.entry(r.slot).or_default() += 1;
            }
        }
        for f in &self.flights {
            *refs.entry(f.new.slot).or_default() += 1;
        }
        let slots = self.slots.borrow();
        for (&slot, &n) in &refs {
            assert_eq!(slots.refs(slot), n, "references of slot {slot:#x}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn no_byte_is_lost(ops in proptest::collection::vec(op(), 1..80)) {
        let slots: Rc<RefCell<Slots>> = Rc::default();
        let mut w = World {
            procs: vec![Proc {
                id: 0,
                table: PageTable::with_slots(Clock::default(), slots.clone()),
                mem: HashMap::new(),
            }],
            slots,
            servers: HashMap::new(),
            flights: Vec::new(),
            next_id: 0,
            next_park: 0,
        };
        w.procs[0].table.set_ghost_capacity(4);
        for op in ops {
            w.apply(op);
            w.check();
        }
        // Everything goes: every slot is freed on the servers.
        while !w.flights.is_empty() {
            w.complete(0);
            w.check();
        }
        while let Some(p) = w.procs.pop() {
            let refs = p.table.all_references();
            w.free(refs);
        }
        prop_assert!(w.servers.is_empty(), "left on the servers: {:?}", w.servers);
    }
}
