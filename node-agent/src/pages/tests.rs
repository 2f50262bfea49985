//! Tests of the page table: evictions by both paths, fetches, forks, the program's own
//! changes, and refaults.

use super::*;
use crate::eviction::Clock;

fn table() -> PageTable<Clock> {
    PageTable::new(Clock::default())
}

/// The write-protect path for every candidate: decide from `content(page)`'s digest, drop,
/// finish. Returns each page with its decision.
fn evict_all_with(t: &mut PageTable<Clock>, content: impl Fn(u64) -> u8) -> Vec<(u64, Decision)> {
    let victims = t.start_eviction(usize::MAX);
    evict_pages(t, victims, content)
}

fn evict_pages(
    t: &mut PageTable<Clock>,
    victims: Vec<u64>,
    content: impl Fn(u64) -> u8,
) -> Vec<(u64, Decision)> {
    let mut out = Vec::new();
    for page in victims {
        let d = t.decide(page, digest(&[content(page); PAGE as usize]));
        assert!(t.dropping(page));
        t.finish_eviction(page);
        out.push((page, d));
    }
    out
}

fn evict_all(t: &mut PageTable<Clock>) -> Vec<(u64, Decision)> {
    evict_all_with(t, |_| 0)
}

fn written(d: Decision) -> Remote {
    match d {
        Decision::Write(r) => r,
        other => panic!("expected a write, got {other:?}"),
    }
}

/// Releases `garbage` as the agent does (`Group::free_later`): what comes back is freed on the
/// servers.
fn release(t: &PageTable<Clock>, garbage: Vec<Remote>) -> Vec<Remote> {
    t.slots().borrow_mut().release(garbage)
}

#[test]
fn zero_fill_evict_fetch_and_clean_drop() {
    let mut t = table();
    assert_eq!(t.missing_fault(0), MissingFault::ZeroFill);
    t.zero_filled(0);
    assert_eq!(t.resident(), 1);
    let v = evict_all_with(&mut t, |_| 7);
    assert_eq!(v.len(), 1);
    let remote = written(v[0].1);
    assert_eq!(t.resident(), 0);
    assert_eq!(t.missing_fault(0), MissingFault::Fetch(remote));
    assert!(t.start_fetch(0));
    assert_eq!(t.missing_fault(0), MissingFault::InFlight);
    t.fetched(0, remote, Some(digest(&[7; PAGE as usize])));
    assert_eq!(t.resident(), 1);
    // Same content: evicting again writes nothing and keeps the same copy.
    let v = evict_all_with(&mut t, |_| 7);
    assert_eq!(v, vec![(0, Decision::Clean(remote))]);
    assert_eq!(t.state(0), Some(State::Evicted { remote }));
}

#[test]
fn a_page_whose_content_changed_gets_a_newer_version_in_the_same_slot() {
    let mut t = table();
    t.zero_filled(0);
    let first = written(evict_all_with(&mut t, |_| 1)[0].1);
    t.start_fetch(0);
    t.fetched(0, first, Some(digest(&[1; PAGE as usize])));
    // Written without any fault: only the content says so.
    let second = written(evict_all_with(&mut t, |_| 2)[0].1);
    assert_eq!(second.slot, first.slot);
    assert!(second.version > first.version);
    // A fetched page that took a write fault is dirty whatever its digest.
    t.start_fetch(0);
    t.fetched(0, second, None);
    let third = written(evict_all_with(&mut t, |_| 2)[0].1);
    assert!(third.version > second.version);
}

#[test]
fn writes_during_eviction_wait_and_program_drops_win() {
    let mut t = table();
    t.zero_filled(0);
    t.zero_filled(PAGE);
    let victims = t.start_eviction(2);
    assert_eq!(victims.len(), 2);
    assert_eq!(t.write_fault(0), WriteFault::WaitForEviction);
    // The program drops page 1 before our drop: it must end as zeros, nothing written.
    assert!(t.program_dropped(PAGE, 2 * PAGE).is_empty());
    assert!(matches!(
        t.decide(0, digest(&[1; 4096])),
        Decision::Write(_)
    ));
    assert_eq!(t.decide(PAGE, digest(&[1; 4096])), Decision::Gone);
    for p in &victims {
        t.dropping(*p);
    }
    assert_eq!(t.missing_fault(0), MissingFault::WaitForEviction);
    t.finish_eviction(0);
    assert!(t.finish_eviction(PAGE).is_empty());
    assert_eq!(t.state(PAGE), None);
    assert_eq!(t.missing_fault(PAGE), MissingFault::ZeroFill);
    assert!(matches!(t.state(0), Some(State::Evicted { .. })));
    assert_eq!(t.resident(), 0);
}

#[test]
fn unmap_and_drop_free_remote_copies() {
    let mut t = table();
    for i in 0..4 {
        t.zero_filled(i * PAGE);
    }
    evict_all(&mut t);
    assert_eq!(t.program_dropped(0, 2 * PAGE).len(), 2);
    assert_eq!(t.missing_fault(0), MissingFault::ZeroFill);
    assert_eq!(t.unmapped(2 * PAGE, 4 * PAGE).len(), 2);
    assert!(t.remotes().is_empty());
}

#[test]
fn remap_moves_states_and_keeps_counts() {
    let mut t = table();
    for i in 0..4 {
        t.zero_filled(i * PAGE);
    }
    let v = t.start_eviction(2);
    let evicted = v.clone();
    evict_pages(&mut t, v, |_| 3);
    let base = 1 << 30;
    t.remapped(0, base, 4 * PAGE);
    assert_eq!(t.resident(), 2);
    for i in 0..4 {
        assert_eq!(t.state(i * PAGE), None);
        let s = t.state(base + i * PAGE).unwrap();
        if evicted.contains(&(i * PAGE)) {
            assert!(matches!(s, State::Evicted { .. }));
        } else {
            assert!(matches!(s, State::Resident { .. }));
        }
    }
    // A page moved in the middle of its eviction (before the drop) stays resident there.
    let v = t.start_eviction(1);
    let p = v[0];
    t.remapped(p, 2 * base, PAGE);
    assert!(matches!(
        t.state(2 * base),
        Some(State::Resident { dirty: true, .. })
    ));
    assert!(t.finish_eviction(p).is_empty());
    assert_eq!(t.resident(), 2);
}

#[test]
fn aborted_evictions_keep_the_page_resident_and_dirty() {
    let mut t = table();
    t.zero_filled(0);
    let v = t.start_eviction(1);
    t.abort_eviction(v[0]);
    assert_eq!(
        t.state(0),
        Some(State::Resident {
            dirty: true,
            remote: None
        })
    );
    assert_eq!(t.resident(), 1);
    assert_eq!(t.start_eviction(1).len(), 1, "still a candidate");
}

/// Parks every candidate at `PARK + index` and decides it from `content`.
const PARK: u64 = 1 << 40;

fn park_all(t: &mut PageTable<Clock>, content: u8) -> Vec<(u64, u64, Decision)> {
    let victims = t.start_eviction(usize::MAX);
    victims
        .into_iter()
        .enumerate()
        .map(|(i, page)| {
            let at = PARK + i as u64 * PAGE;
            t.parked(page, at);
            (page, at, t.decide(page, digest(&[content; 4096])))
        })
        .collect()
}

#[test]
fn a_parked_page_is_rescued_by_a_fault_and_its_write_is_abandoned() {
    let mut t = table();
    t.zero_filled(0);
    t.zero_filled(PAGE);
    let parked = park_all(&mut t, 5);
    assert_eq!(parked.len(), 2);
    let (p0, at0, d0) = parked[0];
    let (p1, at1, d1) = parked[1];
    assert_eq!(t.missing_fault(p0), MissingFault::Rescue(at0));
    assert_eq!(t.resident(), 2, "parked pages count against the budget");
    t.writing(written(d0));
    // Page 0 is faulted back before its write completes.
    assert_eq!(t.rescued(p0), Some((at0, Some(written(d0)))));
    assert!(matches!(
        t.state(p0),
        Some(State::Resident {
            dirty: true,
            remote: None
        })
    ));
    // The page lets go of its new copy; the write in flight keeps it until it is over.
    assert!(release(&t, vec![written(d0)]).is_empty());
    assert_eq!(t.finish_parked(p0, written(d0)), None);
    let freed = release(&t, vec![written(d0)]);
    assert_eq!(
        freed,
        vec![written(d0)],
        "its new copy is garbage once written"
    );
    // Page 1 is saved: evicted, its slot handed back.
    assert_eq!(t.finish_parked(p1, written(d1)), Some((at1, vec![])));
    assert_eq!(
        t.state(p1),
        Some(State::Evicted {
            remote: written(d1)
        })
    );
    assert_eq!(t.resident(), 1);
}

#[test]
fn a_parked_page_of_zeros_leaves_without_a_copy_and_comes_back_as_a_zero_fill() {
    let mut t = table();
    t.zero_filled(0);
    // Page 0 had a remote copy once (non-zero), then the program zeroed it.
    let r = written(evict_all_with(&mut t, |_| 3)[0].1);
    t.start_fetch(0);
    t.fetched(0, r, None);
    t.zero_filled(PAGE);
    let victims = t.start_eviction(usize::MAX);
    assert_eq!(victims.len(), 2);
    for (i, &page) in victims.iter().enumerate() {
        t.parked(page, PARK + i as u64 * PAGE);
    }
    assert_eq!(t.resident(), 2, "parked pages count against the budget");
    let (at0, g0) = t.finish_parked_zero(0).expect("page 0 is parked");
    assert_eq!(at0, PARK);
    assert_eq!(g0, vec![r], "its old copy is garbage");
    assert_eq!(release(&t, g0), vec![r]);
    assert!(t.finish_parked_zero(PAGE).is_some());
    assert_eq!(t.resident(), 0);
    for page in [0, PAGE] {
        assert_eq!(t.state(page), None);
        assert_eq!(t.missing_fault(page), MissingFault::ZeroFill, "no fetch");
    }
    // Only a page parked by this eviction and not yet decided leaves that way.
    assert_eq!(t.finish_parked_zero(0), None);
    t.zero_filled(0);
    t.start_eviction(usize::MAX);
    assert_eq!(t.finish_parked_zero(0), None, "not parked");
    t.parked(0, PARK);
    let d = t.decide(0, digest(&[1; PAGE as usize]));
    assert!(matches!(d, Decision::Write(_)));
    assert_eq!(t.finish_parked_zero(0), None, "decided as a write");
}

#[test]
fn a_clean_parked_page_is_done_at_once_and_a_rescue_keeps_it_clean() {
    let mut t = table();
    t.zero_filled(0);
    let r = written(evict_all_with(&mut t, |_| 9)[0].1);
    t.start_fetch(0);
    t.fetched(0, r, Some(digest(&[9; PAGE as usize])));
    let parked = park_all(&mut t, 9);
    assert_eq!(parked[0].2, Decision::Clean(r));
    // Rescued before it was finished: still equal to its copy.
    assert_eq!(t.rescued(0), Some((parked[0].1, None)));
    assert_eq!(
        t.state(0),
        Some(State::Resident {
            dirty: false,
            remote: Some(r)
        })
    );
    let parked = park_all(&mut t, 9);
    assert_eq!(parked[0].2, Decision::Clean(r));
    assert_eq!(t.finish_parked(0, r), Some((parked[0].1, vec![])));
    assert_eq!(t.state(0), Some(State::Evicted { remote: r }));
}

#[test]
fn the_program_dropping_unmapping_or_moving_a_parked_page() {
    let mut t = table();
    for i in 0..3 {
        t.zero_filled(i * PAGE);
    }
    let parked = park_all(&mut t, 4);
    for &(_, _, d) in &parked {
        t.writing(written(d));
    }
    // Dropped while parked: zeros from now on, its parked copy freed.
    let g = t.program_dropped(0, PAGE);
    assert!(release(&t, g).is_empty(), "its write is still in flight");
    assert_eq!(t.state(0), None);
    assert_eq!(t.missing_fault(0), MissingFault::ZeroFill);
    // Unmapped while parked: gone, parked copy freed.
    let g = t.unmapped(PAGE, 2 * PAGE);
    assert!(release(&t, g).is_empty(), "its write is still in flight");
    assert_eq!(t.state(PAGE), None);
    assert_eq!(t.take_unparked(), vec![parked[0].1, parked[1].1]);
    // Moved while parked: the rescue goes to the new address.
    let base = 1 << 30;
    t.remapped(2 * PAGE, base, PAGE);
    assert_eq!(t.missing_fault(base), MissingFault::Rescue(parked[2].1));
    assert_eq!(t.resident(), 1);
    // Its batch names the old address: the owner is told to save it where it is now (left
    // unsaved, it held its parking slot and the budget for good, and a remapping workload at a
    // small slack stopped the evictor).
    assert_eq!(t.take_moved_parked(), vec![(base, parked[2].1)]);
    assert!(t.take_moved_parked().is_empty());
    // Writes finishing afterwards: garbage for the two that went.
    assert!(t.finish_parked(0, written(parked[0].2)).is_none());
    assert_eq!(release(&t, vec![written(parked[0].2)]).len(), 1);
    assert_eq!(
        t.finish_parked(base, written(parked[2].2)).map(|x| x.0),
        Some(parked[2].1)
    );
}

#[test]
fn refaults_are_seen_for_recent_evictions_only() {
    let mut t = table();
    t.set_ghost_capacity(2);
    for i in 0..4 {
        t.zero_filled(i * PAGE);
    }
    evict_all(&mut t);
    // Ghosts: the last two evicted.
    let evicted_last: Vec<u64> = t.ghosts.iter().copied().collect();
    assert_eq!(evicted_last.len(), 2);
    for i in 0..4 {
        let page = i * PAGE;
        let (started, refault) = t.start_fetch_seeing_refault(page);
        assert!(started);
        assert_eq!(refault, evicted_last.contains(&page), "page {i}");
    }
}

#[test]
fn fork_shares_slots_and_each_side_writes_to_its_own() {
    let mut parent = table();
    for i in 0..3 {
        parent.zero_filled(i * PAGE);
    }
    // Page 0 evicted, page 1 fetched back clean, page 2 dirty without a copy.
    let victims = parent.start_eviction_of(vec![0, PAGE]);
    let v = evict_pages(&mut parent, victims, |p| p as u8);
    let r1 = written(v[1].1);
    parent.start_fetch(PAGE);
    parent.fetched(PAGE, r1, Some(digest(&[PAGE as u8; PAGE as usize])));
    let (mut child, copies) = parent.fork_clone(Clock::default(), &[]);
    assert!(copies.is_empty());
    assert_eq!(child.resident(), parent.resident());
    assert_eq!(child.state(0), parent.state(0));
    assert_eq!(child.slots().borrow().refs(r1.slot), 2);

    // The child changes page 1 and evicts it: a new slot, the parent's copy stays.
    let cv = child.start_eviction_of(vec![PAGE]);
    let new = written(child.decide(cv[0], digest(&[0xee; 4096])));
    assert_ne!(new.slot, r1.slot, "a shared slot is never rewritten");
    child.dropping(PAGE);
    let garbage = child.finish_eviction(PAGE);
    assert_eq!(garbage, vec![r1]);
    // Releasing the child's reference does not free the parent's copy.
    assert!(child.slots().borrow_mut().release(garbage).is_empty());
    assert_eq!(
        parent.state(PAGE),
        Some(State::Resident {
            dirty: false,
            remote: Some(r1)
        })
    );

    // Now the parent alone refers to r1: its own rewrite reuses the slot.
    let pv = parent.start_eviction_of(vec![PAGE]);
    assert_eq!(
        written(parent.decide(pv[0], digest(&[1; 4096]))).slot,
        r1.slot
    );

    // When the child goes, only slots no one else refers to are freed.
    // (The table reads the slots to name its copies: take them before borrowing the slots.)
    let refs = child.all_references();
    let freed = child.slots().borrow_mut().release(refs);
    let freed: Vec<u64> = freed.iter().map(|r| r.slot).collect();
    assert_eq!(freed, vec![new.slot]);
}

#[test]
fn fork_leaves_wipe_on_fork_and_dont_fork_pages_out_of_the_child() {
    let mut parent = table();
    for i in 0..4 {
        parent.zero_filled(i * PAGE);
    }
    // Pages 0 and 2 evicted; pages 1 and 3 resident.
    let victims = parent.start_eviction_of(vec![0, 2 * PAGE]);
    let v = evict_pages(&mut parent, victims, |_| 1);
    // Pages 0 and 1 are in a range the child does not inherit.
    let (child, _) = parent.fork_clone(Clock::default(), &[(0, 2 * PAGE)]);
    assert_eq!(
        child.state(0),
        None,
        "an evicted page would be fetched, not zeros"
    );
    assert_eq!(child.state(PAGE), None);
    assert_eq!(child.state(2 * PAGE), parent.state(2 * PAGE));
    assert_eq!(child.resident(), 1);
    // No reference is taken for what the child does not have.
    assert_eq!(child.slots().borrow().refs(written(v[0].1).slot), 1);
    assert_eq!(child.slots().borrow().refs(written(v[1].1).slot), 2);
}

#[test]
fn fork_during_an_eviction_gives_the_child_a_state_its_memory_can_be_in() {
    let mut t = table();
    for i in 0..3 {
        t.zero_filled(i * PAGE);
    }
    let v = t.start_eviction_of(vec![0, PAGE]);
    let saved = written(t.decide(v[1], digest(&[1; 4096])));
    t.dropping(PAGE);
    // Page 2 is parked.
    let w = t.start_eviction_of(vec![2 * PAGE]);
    t.parked(w[0], PARK);
    let (mut child, copies) = t.fork_clone(Clock::default(), &[]);
    // Not dropped yet: the child has the page, dirty (it will save it itself).
    assert_eq!(
        child.state(0),
        Some(State::Resident {
            dirty: true,
            remote: None
        })
    );
    // Drop under way: the child may or may not have it; its content is the saved copy.
    assert_eq!(child.state(PAGE), Some(State::Evicted { remote: saved }));
    // If it does have it, a write proves it: the state is repaired, nothing lost.
    assert_eq!(child.write_fault(PAGE), WriteFault::Unprotect);
    assert_eq!(
        child.state(PAGE),
        Some(State::Resident {
            dirty: true,
            remote: Some(saved)
        })
    );
    // Parked in the parent: the caller copies it into the child, where it is resident.
    assert_eq!(copies, vec![(2 * PAGE, PARK)]);
    assert_eq!(
        child.state(2 * PAGE),
        Some(State::Resident {
            dirty: true,
            remote: None
        })
    );
    assert_eq!(child.resident(), 3);
}

/// Page 0 is evicted in place (its slot gets a newer version), rescued while that write is in
/// flight, then dropped by the program, and page 1 is evicted: page 1 must not get page 0's
/// slot number while the write is in flight, and the write completing must free only what
/// was page 0's. (Before the write held a reference of its own, the drop freed the slot, page
/// 1 took the number, and the completed write freed page 1's copy.)
#[test]
fn a_write_completing_after_its_page_let_go_of_the_slot_frees_only_that_slot() {
    let mut t = table();
    t.zero_filled(0);
    t.zero_filled(PAGE);
    let v = t.start_eviction_of(vec![0]);
    let first = written(evict_pages(&mut t, v, |_| 1)[0].1);
    assert!(t.start_fetch(0));
    t.fetched(0, first, Some(digest(&[1; PAGE as usize])));
    // Rewritten without a fault, parked: a new version of the same slot.
    assert_eq!(t.start_eviction_of(vec![0]), vec![0]);
    t.parked(0, PARK);
    let second = written(t.decide(0, digest(&[2; PAGE as usize])));
    assert_eq!(second.slot, first.slot, "in place");
    t.writing(second);
    // Rescued while the write is in flight, then dropped by the program.
    assert_eq!(t.rescued(0), Some((PARK, None)));
    let g = t.program_dropped(0, PAGE);
    assert!(
        release(&t, g).is_empty(),
        "the write in flight holds the slot"
    );
    // Page 1 is evicted meanwhile.
    let v = t.start_eviction_of(vec![PAGE]);
    let third = written(evict_pages(&mut t, v, |_| 3)[0].1);
    assert_ne!(third.slot, first.slot, "the number is not free yet");
    // Page 0's write completes.
    assert_eq!(t.finish_parked(0, second), None);
    let freed = release(&t, vec![second]);
    assert_eq!(freed, vec![second], "page 0's slot, every version");
    assert_eq!(t.slots().borrow().refs(third.slot), 1);
    assert_eq!(t.state(PAGE), Some(State::Evicted { remote: third }));
}

/// As above, but the page's old slot stays with a forked child: the parent is rescued, forks,
/// and is evicted again (to a new slot, the old one being shared) before the first write
/// completes. The child's reference must survive it.
#[test]
fn a_write_completing_after_a_fork_leaves_the_childs_slot() {
    let mut t = table();
    t.zero_filled(0);
    let v = t.start_eviction_of(vec![0]);
    let first = written(evict_pages(&mut t, v, |_| 1)[0].1);
    assert!(t.start_fetch(0));
    t.fetched(0, first, Some(digest(&[1; PAGE as usize])));
    t.start_eviction_of(vec![0]);
    t.parked(0, PARK);
    let second = written(t.decide(0, digest(&[2; PAGE as usize])));
    assert_eq!(second.slot, first.slot, "in place");
    t.writing(second);
    assert_eq!(t.rescued(0), Some((PARK, None)));
    let (child, _) = t.fork_clone(Clock::default(), &[]);
    // The parent evicts page 0 again: the slot is shared, so a new one.
    let victims = t.start_eviction_of(vec![0]);
    let fourth = written(t.decide(victims[0], digest(&[4; PAGE as usize])));
    assert_ne!(fourth.slot, first.slot);
    assert!(t.dropping(0));
    let g = t.finish_eviction(0);
    assert!(
        release(&t, g).is_empty(),
        "the child still refers to the old slot"
    );
    // The first write completes.
    assert!(
        release(&t, vec![second]).is_empty(),
        "the child's slot was freed"
    );
    assert_eq!(t.slots().borrow().refs(first.slot), 1);
    assert!(matches!(
        child.state(0),
        Some(State::Resident { remote: Some(r), .. }) if r.slot == first.slot
    ));
}

/// A forked child exits while a batch of its evictions is on the wire (a Redis BGSAVE child):
/// its table's references go once, at its exit, and the batch finishing afterwards finds
/// nothing to finish, so the slot the parent shares keeps the parent's reference.
#[test]
fn a_batch_finishing_after_its_process_exited_releases_nothing_twice() {
    let mut parent = table();
    parent.zero_filled(0);
    let v = parent.start_eviction_of(vec![0]);
    let first = written(evict_pages(&mut parent, v, |_| 1)[0].1);
    assert!(parent.start_fetch(0));
    parent.fetched(0, first, Some(digest(&[1; PAGE as usize])));
    let (mut child, _) = parent.fork_clone(Clock::default(), &[]);
    assert_eq!(child.slots().borrow().refs(first.slot), 2);
    // The child rewrites the page and evicts it: a new slot, the old one being shared.
    assert_eq!(child.start_eviction_of(vec![0]), vec![0]);
    child.parked(0, PARK);
    let new = written(child.decide(0, digest(&[7; PAGE as usize])));
    assert_ne!(new.slot, first.slot);
    child.writing(new);
    // The child exits.
    let refs = child.release_all();
    assert!(release(&child, refs).is_empty(), "the write holds its slot");
    assert_eq!(child.state(0), None);
    // Its write completes.
    assert_eq!(child.finish_parked(0, new), None, "nothing left to finish");
    assert_eq!(release(&child, vec![new]), vec![new]);
    assert_eq!(parent.slots().borrow().refs(first.slot), 1);
    assert_eq!(
        parent.state(0),
        Some(State::Resident {
            dirty: false,
            remote: Some(first)
        })
    );
}

/// A simulation of a workload over the table (and a forked child): the program's memory is the
/// model, the servers are a map, and every evicted page must read back as the program left it.
mod simulated;
