//! Tests of the evictor: choosing victims across processes, and its rounds when it can do
//! nothing.

use std::{collections::BTreeMap, fs::File, os::fd::OwnedFd};

use super::super::shim_link::{read_words, write_words};
use super::*;
use crate::{
    pages::PAGE,
    remote::{Policy, Servers},
    shim_proto as proto,
    uffd::Uffd,
};

/// A workload whose one (unconnected) server is never asked anything.
fn group() -> Rc<Group> {
    let clients = vec![("10.0.0.1:7070".to_string(), None, None)];
    let servers = Rc::new(Servers::new(clients, Policy::default()));
    Group::new("t".into(), servers, 1 << 20)
}

/// A process of `g` whose helper is up, with `pages` resident (zero-filled). Its uffd is a
/// stand-in: choosing victims touches no memory.
fn process(g: &Rc<Group>, pages: std::ops::Range<u64>) -> Rc<Proc> {
    let fd: OwnedFd = File::open("/dev/null").unwrap().into();
    let p = Proc::new(
        g,
        Uffd::forked(fd, false),
        g.new_table(),
        BTreeMap::new(),
        BTreeMap::new(),
    );
    p.helper_up.set(true);
    for pg in pages {
        p.table.borrow_mut().zero_filled(pg * PAGE);
    }
    p
}

/// Gives `p` a parking area with `n` parked pages being freed.
fn being_freed(p: &Proc, n: usize) {
    let mut k = crate::eviction::Parking::new(1 << 30, n);
    let (at, got) = k.take_run(n).unwrap();
    for i in 0..got as u64 {
        k.freeing(at + i * PAGE);
    }
    *p.parking.borrow_mut() = Some(k);
}

fn share(p: &Proc, pages: std::ops::Range<u64>) {
    p.shared_pages
        .borrow_mut()
        .extend(pages.map(|pg| pg * PAGE));
}

/// A parent with pages `0..shared` and its child with `0..child`, sharing `0..shared`.
fn forked(g: &Rc<Group>, shared: u64, child: u64) -> (Rc<Proc>, Rc<Proc>) {
    let parent = process(g, 0..shared);
    let kid = process(g, 0..child);
    share(&parent, 0..shared);
    share(&kid, 0..shared);
    g.update_shared();
    (parent, kid)
}

#[test]
fn a_shared_page_is_taken_from_every_process_that_maps_it() {
    let g = group();
    // A parent and its child share pages 0..8; the child has 8..10 of its own.
    let (parent, child) = forked(&g, 8, 10);
    assert_eq!(g.resident(), 10);

    // The child's own pages go first, and alone.
    let (p, own) = pick_victims(&g, 4).unwrap();
    assert!(Rc::ptr_eq(&p, &child));
    assert_eq!(own, vec![8 * PAGE, 9 * PAGE]);
    assert!(pick_victims(&g, 4).is_none(), "only shared pages are left");

    // Then shared pages, from both sides at once, and they stop counting as shared.
    let picked = pick_shared(&g, 3);
    assert_eq!(picked.len(), 2);
    assert!(!Rc::ptr_eq(&picked[0].0, &picked[1].0));
    assert_eq!(picked[0].1.len(), 3);
    assert_eq!(picked[0].1, picked[1].1, "the same pages on both sides");
    for pg in &picked[0].1 {
        assert!(!parent.shared_pages.borrow().contains(pg));
        assert!(!child.shared_pages.borrow().contains(pg));
    }
    assert_eq!(g.shared.get(), 5);
}

/// When the pages only one process maps are a handful of what is needed (after a fork, the few
/// a process writes), the evictor takes shared pages from both sides as well: a handful per
/// batch made no room, and the few came straight back (a Redis `BGSAVE` 5-9 times slower).
#[test]
fn a_handful_of_unshared_pages_brings_shared_ones_along() {
    let g = group();
    // A parent and its child share pages 0..200; the child has 200..203 of its own.
    let (parent, child) = forked(&g, 200, 203);
    let picked = choose(&g, 64);
    let from = |p: &Rc<Proc>| -> Vec<u64> {
        picked
            .iter()
            .filter(|(q, _)| Rc::ptr_eq(q, p))
            .flat_map(|(_, v)| v.iter().copied())
            .collect()
    };
    let (of_child, of_parent) = (from(&child), from(&parent));
    for pg in 200..203 {
        assert!(of_child.contains(&(pg * PAGE)), "the child's own page {pg}");
    }
    assert_eq!(of_child.len(), 64, "the child gives as many as asked");
    assert_eq!(of_parent.len(), 61, "the shared ones leave the parent too");
    assert!(of_parent.iter().all(|pg| of_child.contains(pg)));

    // Enough pages of its own: those alone.
    let g = group();
    let (_parent, child) = forked(&g, 200, 400);
    let picked = choose(&g, 64);
    assert_eq!(picked.len(), 1);
    assert!(Rc::ptr_eq(&picked[0].0, &child));
    assert!(picked[0].1.iter().all(|&pg| pg >= 200 * PAGE));
}

/// A fault deferred at the hard limit, with the pages that are leaving held by a process
/// that is gone (an exited child whose parked pages were being freed): the evictor can do
/// nothing, and must still let the agent's other tasks run, one of which reaps that
/// process. Until it yielded, its rounds woke themselves through the deferred fault, the
/// reaping never ran and the fault waited forever (CI, forkstorm).
#[test]
fn an_evictor_that_can_do_nothing_lets_the_rest_of_the_agent_run() {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        let ran = local.block_on(&rt, async {
            let g = Group::new("t".into(), group().servers.clone(), 64);
            let parent = process(&g, 0..50);
            // The child: 16 parked pages being freed (counted resident and leaving).
            let child = process(&g, 100..100);
            being_freed(&child, 16);
            assert_eq!(g.resident(), 66);
            assert!(g.over_hard_limit());
            assert!(g.resident() - g.leaving() <= g.soft_limit());
            parent.handle_fault(200 * PAGE, true, false, std::time::Instant::now());
            assert_eq!(
                parent.deferred.borrow().len(),
                1,
                "the fault waits for room"
            );
            let evictor = tokio::task::spawn_local(evictor(g.clone()));
            // What the agent's main loop does every 100 ms: reap what is gone.
            let reaper = tokio::task::spawn_local({
                let child = child.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    child.remove();
                }
            });
            reaper.await.unwrap();
            // With the child gone there is room: the fault is tried again and leaves the
            // deferred list (its install fails on the stand-in uffd; that is not the point).
            for _ in 0..100 {
                if parent.deferred.borrow().is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            evictor.abort();
            let served = parent.deferred.borrow().is_empty();
            served
        });
        let _ = done_tx.send(ran);
    });
    match done_rx.recv_timeout(Duration::from_secs(20)) {
        Ok(served) => assert!(served, "the deferred fault was never tried again"),
        Err(_) => panic!("the evictor kept the agent's thread to itself for 20 s"),
    }
}

/// A fault handled late (deferred at the hard limit, tried again after its page came back by
/// a prefetch and was picked for a write-protect eviction) must not be taken for a drop by
/// the program: the page is there, and the eviction must keep its content.
/// The same state with nothing to reap (pages counted as leaving that nothing will take
/// out): after [`STALL_LIMIT`] the evictor says so and lets the fault in.
#[test]
fn faults_stalled_at_the_limit_with_nothing_leaving_are_let_in() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let g = Group::new("t".into(), group().servers.clone(), 64);
        let parent = process(&g, 0..50);
        let stuck = process(&g, 100..100);
        being_freed(&stuck, 16);
        parent.handle_fault(200 * PAGE, true, false, std::time::Instant::now());
        assert_eq!(parent.deferred.borrow().len(), 1);
        let evictor = tokio::task::spawn_local(evictor(g.clone()));
        tokio::time::sleep(STALL_LIMIT / 2).await;
        assert_eq!(parent.deferred.borrow().len(), 1, "let in too early");
        tokio::time::sleep(STALL_LIMIT).await;
        assert!(parent.deferred.borrow().is_empty(), "still waiting");
        assert!(g.stuck_warned.get());
        evictor.abort();
    });
}

#[test]
fn a_stale_fault_on_a_page_under_eviction_keeps_its_content() {
    // SAFETY: a plain system call with flags; it returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
    assert!(fd >= 0, "userfaultfd: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` was just returned to us and nothing else owns it.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    let uffd = Uffd::new(fd).expect("handshake");
    // SAFETY: an anonymous private mapping at an address the kernel picks; checked below.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGE as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(base, libc::MAP_FAILED);
    let page = base as u64;
    uffd.register(page, PAGE).expect("register");
    uffd.copy(page, &[0xab; PAGE as usize], false).unwrap();
    let g = group();
    let p = Proc::new(&g, uffd, g.new_table(), BTreeMap::new(), BTreeMap::new());
    p.table.borrow_mut().zero_filled(page);
    assert_eq!(
        p.table.borrow_mut().start_eviction_of(vec![page]),
        vec![page]
    );
    p.handle_fault(page, false, false, std::time::Instant::now());
    match p.table.borrow().state(page) {
        Some(crate::pages::State::Evicting(e)) => {
            assert!(!e.program_dropped, "a present page taken for dropped")
        }
        other => panic!("the eviction ended: {other:?}"),
    }
    // SAFETY: the page is present (installed above) and mapped until the munmap below.
    let first = unsafe { *(page as *const u8) };
    assert_eq!(first, 0xab);
    // Unregistered first: an unmap event no one reads would make munmap wait for ever.
    p.uffd.unregister(page, PAGE).unwrap();
    // SAFETY: unmaps the mapping made above, which nothing uses any more.
    unsafe { libc::munmap(base, PAGE as usize) };
}

#[test]
fn a_shared_page_whose_other_side_is_forking_leaves_one_side_only() {
    let g = group();
    let (parent, child) = forked(&g, 4, 4);
    parent.forking.set(true);
    let picked = pick_shared(&g, 2);
    assert_eq!(picked.len(), 1);
    assert!(Rc::ptr_eq(&picked[0].0, &child));
    // The parent keeps its copy, resident and no longer counted as shared.
    for pg in &picked[0].1 {
        assert!(matches!(
            parent.table.borrow().state(*pg),
            Some(crate::pages::State::Resident { .. })
        ));
        assert!(!parent.shared_pages.borrow().contains(pg));
    }
}

/// Parks pages 0..8 of `p` (all resident, a parking area at 1 GiB) with a stand-in for the
/// shim's helper that refuses the run at its first page with `errno`, nothing moved; returns
/// what `park` returns.
async fn park_refused(p: &Rc<Proc>, errno: i32) -> (Vec<(u64, u64)>, Vec<u64>) {
    *p.parking.borrow_mut() = Some(crate::eviction::Parking::new(1 << 30, 64));
    let victims: Vec<u64> = (0..8).map(|pg| pg * PAGE).collect();
    assert_eq!(
        p.table.borrow_mut().start_eviction_of(victims.clone()),
        victims
    );
    let (agent_end, mut helper_end) = tokio::net::UnixStream::pair().unwrap();
    *p.shim.borrow_mut() = Some(agent_end);
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let helper = tokio::task::spawn_local(async move {
                let req = read_words(&mut helper_end).await.unwrap();
                assert_eq!(req[0], proto::PARK);
                assert_eq!(&req[2..], &[1, 0, 1 << 30, 8 * PAGE]);
                let reply = [proto::PARKED, req[1], 1, 0, errno as u64];
                write_words(&mut helper_end, &reply).await.unwrap();
                helper_end
            });
            let r = park(p, victims).await.unwrap();
            helper.await.unwrap();
            r
        })
        .await
}

#[tokio::test(flavor = "current_thread")]
async fn a_run_refused_at_its_first_page_goes_to_write_protection_whole() {
    let g = group();
    let p = process(&g, 0..8);
    // It forked: a page refused as not exclusive is shared (or was, with a child since gone).
    p.forks.set(1);
    let (parked, fallback) = park_refused(&p, libc::EBUSY).await;
    let victims: Vec<u64> = (0..8).map(|pg| pg * PAGE).collect();
    assert!(parked.is_empty());
    assert_eq!(fallback, victims, "the rest of the run was left resident");
    for pg in victims {
        match p.table.borrow().state(pg) {
            Some(crate::pages::State::Evicting(e)) => assert!(!e.dropping),
            other => panic!("not under eviction any more: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_page_refused_in_a_process_that_never_forked_stays_and_is_held_back() {
    // Not exclusive without a fork: pinned for I/O (O_DIRECT). Write protection would drop it
    // under the I/O; it stays resident, and the evictor leaves it alone for a while.
    let g = group();
    let p = process(&g, 0..8);
    // This test's own process: pagemap shows its pages, none of them at these addresses shared.
    p.pid.set(std::process::id());
    let (parked, fallback) = park_refused(&p, libc::EBUSY).await;
    assert!(parked.is_empty());
    assert!(fallback.is_empty(), "{fallback:?} went to write protection");
    for pg in (0..8).map(|pg| pg * PAGE) {
        assert!(matches!(
            p.table.borrow().state(pg),
            Some(crate::pages::State::Resident { .. })
        ));
    }
    assert!(p.pinned.contains(0), "the refused page is held back");
    let again = p
        .table
        .borrow_mut()
        .start_eviction_where(8, &mut |pg| !p.pinned.contains(pg));
    assert!(!again.contains(&0), "{again:?}");
}

#[test]
fn a_child_not_paired_yet_keeps_its_fork_estimate_when_another_process_goes() {
    let g = group();
    let parent = process(&g, 0..8);
    parent.pid.set(100);
    let child = process(&g, 0..8);
    child.forked_from.set(Some((100, 1)));
    share(&parent, 0..8);
    share(&child, 0..8);
    let other = process(&g, 100..104);
    other.pid.set(200);
    share(&other, 100..104);
    g.update_shared();
    assert_eq!(g.shared.get(), 8 + 2);
    other.remove();
    assert_eq!(g.shared.get(), 8, "the fork-time estimate was wiped");
    parent.remove();
    assert_eq!(g.shared.get(), 0, "shared with a parent that is gone");
}

/// Scattered victims park in parts of at most `PARK_RUNS_PER_EXCHANGE` runs, with the
/// process's events read in between: a page the program unmapped after the first part is not
/// in the second, and the faults of the process are not held between two parts.
#[tokio::test(flavor = "current_thread")]
async fn scattered_victims_park_in_parts_and_a_page_unmapped_between_them_stays_out() {
    let g = group();
    let p = process(&g, 0..80);
    *p.parking.borrow_mut() = Some(crate::eviction::Parking::new(1 << 30, 128));
    // Every other page: 40 runs of one page, so three parts (16, 16, 8).
    let victims: Vec<u64> = (0..40).map(|i| 2 * i * PAGE).collect();
    assert_eq!(
        p.table.borrow_mut().start_eviction_of(victims.clone()),
        victims
    );
    let unmapped = 34 * PAGE; // the second part's second page
    let (agent_end, mut helper_end) = tokio::net::UnixStream::pair().unwrap();
    *p.shim.borrow_mut() = Some(agent_end);
    let local = tokio::task::LocalSet::new();
    let q = p.clone();
    let (parked, fallback) = local
        .run_until(async {
            // A stand-in for the shim's helper that moves every run it is asked to.
            let helper = tokio::task::spawn_local(async move {
                let mut sizes = Vec::new();
                for part in 0..3 {
                    let req =
                        tokio::time::timeout(Duration::from_secs(5), read_words(&mut helper_end))
                            .await
                            .expect("the victims came in parts")
                            .unwrap();
                    assert_eq!(req[0], proto::PARK);
                    assert!(q.exchanging.get(), "faults wait while pages move");
                    let n = req[2] as usize;
                    sizes.push(n);
                    let sources: Vec<u64> = (0..n).map(|i| req[3 + 3 * i]).collect();
                    if part == 1 {
                        assert!(!sources.contains(&unmapped), "an unmapped page was moved");
                    }
                    let mut reply = vec![proto::PARKED, req[1], n as u64];
                    for i in 0..n {
                        reply.extend([req[5 + 3 * i] / PAGE, 0]);
                    }
                    write_words(&mut helper_end, &reply).await.unwrap();
                    if part == 0 {
                        // The program unmaps a page of the next part; its event can only be
                        // read once this exchange is over.
                        while q.exchanging.get() {
                            tokio::task::yield_now().await;
                        }
                        q.handle_event(crate::uffd::Event::Unmap {
                            start: unmapped,
                            end: unmapped + PAGE,
                        });
                    }
                }
                sizes
            });
            let r = park(&p, victims.clone()).await.unwrap();
            assert_eq!(helper.await.unwrap(), vec![16, 15, 8]);
            r
        })
        .await;
    assert!(fallback.is_empty());
    assert_eq!(parked.len(), 39);
    assert!(parked.iter().all(|&(pg, _)| pg != unmapped));
    assert!(p.table.borrow().state(unmapped).is_none());
    for (pg, at) in parked {
        match p.table.borrow().state(pg) {
            Some(crate::pages::State::Evicting(e)) => assert_eq!(e.parked, Some(at)),
            other => panic!("{pg:#x} is not parked: {other:?}"),
        }
    }
}

/// A stand-in for the shim's helper that moves every run it is asked to, until the agent's
/// end closes; returns how many pages it moved.
async fn moving_helper(mut helper_end: tokio::net::UnixStream) -> usize {
    let mut moved = 0;
    while let Ok(req) = read_words(&mut helper_end).await {
        assert_eq!(req[0], proto::PARK);
        let n = req[2] as usize;
        let mut reply = vec![proto::PARKED, req[1], n as u64];
        for i in 0..n {
            let pages = req[5 + 3 * i] / PAGE;
            moved += pages as usize;
            reply.extend([pages, 0]);
        }
        write_words(&mut helper_end, &reply).await.unwrap();
    }
    moved
}

/// The grace window is topped up with useful batches only. A process whose other pages are all
/// shared with a forked relative has only the few it is using to give (a Redis `BGSAVE` child's
/// own pages): parked, they came straight back, one exchange and one rescue each, thousands of
/// times per page. Those stay resident; with enough candidates the window takes them.
#[tokio::test(flavor = "current_thread")]
async fn the_grace_window_takes_no_handful_of_pages_a_forked_process_is_using() {
    let g = group();
    let p = process(&g, 0..200);
    *p.parking.borrow_mut() = Some(crate::eviction::Parking::new(1 << 30, 1024));
    g.note_left(1000);
    assert!(g.grace_target() >= 128, "a window to fill");
    share(&p, 3..200);
    let local = tokio::task::LocalSet::new();
    for (unshared, parked) in [(3, 0), (200, 200)] {
        if unshared == 200 {
            p.shared_pages.borrow_mut().clear();
        }
        let (agent_end, helper_end) = tokio::net::UnixStream::pair().unwrap();
        *p.shim.borrow_mut() = Some(agent_end);
        let moved = local
            .run_until(async {
                let helper = tokio::task::spawn_local(moving_helper(helper_end));
                super::super::grace::top_up_grace(&g).await;
                p.shim.borrow_mut().take();
                helper.await.unwrap()
            })
            .await;
        assert_eq!(moved, parked, "{unshared} pages not shared");
        assert_eq!(g.graced(), parked);
        let t = p.table.borrow();
        let resident = (0..200u64)
            .filter(|pg| {
                matches!(
                    t.state(pg * PAGE),
                    Some(crate::pages::State::Resident { .. })
                )
            })
            .count();
        assert_eq!(resident, 200 - parked, "{unshared} pages not shared");
    }
}
