//! The helper thread and what it does for the agent inside the process: drops of pages the
//! agent evicted by write protection, moves of victims into the parking area (`UFFDIO_MOVE`,
//! which the kernel takes only from the process itself), frees of saved parking slots, and the
//! `mmap`/`brk` calls handed to it.

use std::{io, sync::atomic::Ordering};

use crate::{
    die, intercept, proto, register,
    sock::{read_full, write_full},
    FORK_LOCK, PARK_LEN, PARK_START,
};

/// Bit of a /proc/PID/pagemap entry: the page is write-protected by userfaultfd.
const PM_UFFD_WP: u64 = 1 << 57;

/// Drops the pages of `[start, start+len)` that still carry the agent's write protection.
///
/// The agent write-protects every page it evicts before asking for the drop. A page without the
/// mark is not the page the agent saved: the program unmapped the range and mapped new memory
/// at the same address meanwhile, and that memory must not be dropped.
///
/// Sets, in `dropped`, bit `first_bit + i` for each page `i` of the range it called
/// `MADV_DONTNEED` on: each raised a REMOVE event for the agent, which must tell those from the
/// program's own drops of the same pages (a page the program dropped first carries no mark, is
/// skipped, and raises no event of ours). A page beyond the bitmap is not dropped (`E2BIG`).
fn drop_protected(
    pagemap: i32,
    start: u64,
    len: u64,
    dropped: &mut [u64],
    first_bit: usize,
) -> u64 {
    const CHUNK: usize = 512;
    let mut entries = [0u8; 8 * CHUNK];
    let mut errno = 0;
    let mut pages = len / 4096;
    let capacity = (dropped.len() * 64).saturating_sub(first_bit) as u64;
    if pages > capacity {
        pages = capacity;
        errno = libc::E2BIG as u64;
    }
    let mut done = 0u64;
    while done < pages {
        let n = ((pages - done) as usize).min(CHUNK);
        let first = start + done * 4096;
        let bytes = &mut entries[..8 * n];
        // SAFETY: pread into a stack buffer of exactly `bytes.len()` bytes.
        let got = unsafe {
            libc::pread(
                pagemap,
                bytes.as_mut_ptr() as *mut libc::c_void,
                bytes.len(),
                (first / 4096 * 8) as i64,
            )
        };
        if got != bytes.len() as isize {
            return libc::EIO as u64;
        }
        let mut i = 0;
        while i < n {
            let marked = |k: usize| {
                u64::from_le_bytes(bytes[8 * k..8 * k + 8].try_into().expect("8 bytes"))
                    & PM_UFFD_WP
                    != 0
            };
            if !marked(i) {
                i += 1;
                continue;
            }
            let run_start = i;
            while i < n && marked(i) {
                i += 1;
            }
            let addr = first + run_start as u64 * 4096;
            // SAFETY: the run is page-aligned memory of this process that the agent saved and
            // write-protected (checked just above); dropping it is what the agent asks for.
            let rc = unsafe {
                libc::madvise(
                    addr as *mut libc::c_void,
                    (i - run_start) * 4096,
                    libc::MADV_DONTNEED,
                )
            };
            if rc != 0 {
                errno = io::Error::last_os_error().raw_os_error().unwrap_or(-1) as u64;
            }
            for k in run_start..i {
                let bit = first_bit + done as usize + k;
                dropped[bit / 64] |= 1 << (bit % 64);
            }
        }
        done += n as u64;
    }
    errno
}

/// Frees `[start, start+len)` of the parking area: pages the agent has saved and will never move
/// back. Anything outside the parking area is refused (EINVAL): the program's memory is not
/// dropped this way.
fn free_parked(start: u64, len: u64) -> u64 {
    let (park, park_len) = (
        PARK_START.load(Ordering::Acquire),
        PARK_LEN.load(Ordering::Acquire),
    );
    let inside = start >= park
        && start
            .checked_add(len)
            .is_some_and(|end| end <= park + park_len)
        && start.is_multiple_of(4096)
        && len.is_multiple_of(4096);
    if !inside || park == 0 {
        return libc::EINVAL as u64;
    }
    // SAFETY: the range lies inside the parking area, which the program never uses; the agent
    // asks for it once the pages there are saved and no longer wanted.
    let drop = || unsafe {
        libc::madvise(
            start as *mut libc::c_void,
            len as usize,
            libc::MADV_DONTNEED,
        )
    };
    let mut rc = drop();
    if rc != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        // The program locked all its memory (mlockall), the parking area with it, and the
        // kernel drops no locked page: unlock the area, which holds none of the program's data.
        unlock_parking(park, park_len);
        rc = drop();
    }
    if rc != 0 {
        return io::Error::last_os_error().raw_os_error().unwrap_or(-1) as u64;
    }
    0
}

/// Unlocks the parking area (`mlockall` locks it with the rest of the process, and the kernel
/// then neither drops its pages nor moves unlocked pages into it).
pub(crate) fn unlock_parking(park: u64, park_len: u64) {
    // SAFETY: munlock(2) of the parking area, which this shim mapped and the program never uses;
    // unlocking keeps its contents.
    unsafe { libc::munlock(park as *const libc::c_void, park_len as usize) };
}

/// Runs a PARK request (see `proto::PARK`): each run moved with `UFFDIO_MOVE` into the parking
/// area, and the reply with what moved. A run whose destination leaves the parking area is
/// refused (EINVAL) without a move.
fn park(sock: i32, uffd: i32, word: &dyn Fn(usize) -> u64) {
    #[repr(C)]
    struct UffdioMove {
        dst: u64,
        src: u64,
        len: u64,
        mode: u64,
        moved: i64,
    }
    const UFFDIO_MOVE: libc::c_ulong = 0xc028_aa05;
    let (park, park_len) = (
        PARK_START.load(Ordering::Acquire),
        PARK_LEN.load(Ordering::Acquire),
    );
    let id = word(1);
    let n = (word(2) as usize).min(proto::MAX_RANGES);
    let mut reply = [0u8; 8 * (4 + 2 * proto::MAX_RANGES)];
    let mut put = |i: usize, w: u64| reply[8 * i..8 * i + 8].copy_from_slice(&w.to_le_bytes());
    put(0, 3 + 2 * n as u64);
    put(1, proto::PARKED);
    put(2, id);
    put(3, n as u64);
    // No move while this process forks: a fork waits for the agent to read its event, and the
    // agent waits for this answer, so a move stuck behind the fork would stall both (seen: the
    // 10 s timeout, then a lost connection). A fork that starts meanwhile waits in its prepare
    // handler until the moves are done, which never takes long.
    let forking = FORK_LOCK
        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err();
    for r in 0..n {
        let (src, dst, len) = (word(3 + 3 * r), word(4 + 3 * r), word(5 + 3 * r));
        let inside = !forking
            && park != 0
            && dst >= park
            && dst
                .checked_add(len)
                .is_some_and(|end| end <= park + park_len);
        let (moved, errno) = if forking {
            (0, proto::PARK_FORKING)
        } else if !inside {
            (0, libc::EINVAL as u64)
        } else {
            let mut mv = UffdioMove {
                dst,
                src,
                len,
                mode: 0,
                moved: 0,
            };
            // SAFETY: UFFDIO_MOVE takes a uffdio_move, whose layout UffdioMove repeats; the kernel
            // checks both ranges (private anonymous, registered with this uffd), and the
            // destination is our parking area, which the program never uses.
            let mut rc = unsafe { libc::ioctl(uffd, UFFDIO_MOVE, &mut mv) };
            if rc != 0
                && mv.moved <= 0
                && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL)
            {
                // The kernel moves only between ranges locked alike: after mlockall the parking
                // area is locked and the program's memory mapped before it may not be. Unlock
                // the area and try once more (a locked source page stays refused: the agent
                // does not evict locked memory).
                unlock_parking(park, park_len);
                mv.moved = 0;
                // SAFETY: as above.
                rc = unsafe { libc::ioctl(uffd, UFFDIO_MOVE, &mut mv) };
            }
            if rc != 0
                && mv.moved <= 0
                && len > 4096
                && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL)
            {
                // A move stays within one mapping: a run that crosses from one into the next
                // (two mappings side by side, or one the program split with mprotect) is
                // refused whole. Move it page by page, up to the first page refused alone.
                let mut k = 0;
                rc = 0;
                while k < len / 4096 {
                    let mut one = UffdioMove {
                        dst: dst + k * 4096,
                        src: src + k * 4096,
                        len: 4096,
                        mode: 0,
                        moved: 0,
                    };
                    // SAFETY: as above, for one page of the same ranges.
                    if unsafe { libc::ioctl(uffd, UFFDIO_MOVE, &mut one) } != 0 {
                        rc = -1;
                        break;
                    }
                    k += 1;
                }
                mv.moved = (k * 4096) as i64;
            }
            if rc == 0 {
                (len / 4096, 0)
            } else {
                let e = io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(libc::EIO);
                (mv.moved.max(0) as u64 / 4096, e as u64)
            }
        };
        put(4 + 2 * r, moved);
        put(5 + 2 * r, errno);
    }
    if !forking {
        FORK_LOCK.store(false, Ordering::Release);
    }
    write_full(sock, &reply[..8 * (4 + 2 * n)]);
}

/// The helper thread: runs the agent's drop requests until the agent goes away. Uses only its
/// own stack.
pub(crate) extern "C" fn helper(arg: *mut libc::c_void) -> *mut libc::c_void {
    let sock = (arg as u64 & 0xffff_ffff) as i32;
    let _uffd_kept_open = (arg as u64 >> 32) as i32;
    // SAFETY: open(2) of a NUL-terminated path.
    let pagemap = unsafe {
        libc::open(
            c"/proc/self/pagemap".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    let mut buf = [0u8; 8 * (proto::MAX_WORDS + 1)];
    let mut up = [0u8; 16];
    up[..8].copy_from_slice(&1u64.to_le_bytes());
    up[8..].copy_from_slice(&proto::HELPER_UP.to_le_bytes());
    // Creating this thread may have faulted on managed memory (the C library allocates its
    // thread-local storage); only now can the agent count on drops being served.
    write_full(sock, &up);
    loop {
        let mut head = [0u8; 8];
        let ok = read_full(sock, &mut head) && {
            let n = u64::from_le_bytes(head) as usize;
            (1..=proto::MAX_WORDS).contains(&n) && read_full(sock, &mut buf[..8 * n])
        };
        if !ok {
            die(b"yonder: lost the node agent; stopping this workload, its memory is incomplete\n");
            return std::ptr::null_mut();
        }
        let word =
            |i: usize| u64::from_le_bytes(buf[8 * i..8 * i + 8].try_into().expect("8 bytes"));
        let op = word(0);
        if op == proto::PARK {
            park(sock, _uffd_kept_open, &word);
            continue;
        }
        if op == proto::MAP || op == proto::BRK {
            let r = if op == proto::MAP {
                let a = [word(2), word(3), word(4), word(5), word(6), word(7)];
                intercept::map(a, _uffd_kept_open, register)
            } else {
                intercept::brk(word(2), _uffd_kept_open, register)
            };
            let mut reply = [0u8; 32];
            for (i, w) in [3u64, proto::MAPPED, word(1), r as u64].iter().enumerate() {
                reply[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
            }
            write_full(sock, &reply);
            continue;
        }
        if op != proto::DROP && op != proto::FREE_PARKED {
            continue;
        }
        let id = word(1);
        let n = (word(2) as usize).min(proto::MAX_RANGES);
        let mut errno = 0u64;
        // DROP: which requested pages got a MADV_DONTNEED, one bit each in request order.
        let mut dropped = [0u64; proto::MAX_WORDS - 3];
        let mut pages = 0usize;
        for r in 0..n {
            let (start, len) = (word(3 + 2 * r), word(4 + 2 * r));
            let e = if op == proto::FREE_PARKED {
                free_parked(start, len)
            } else if pagemap >= 0 {
                drop_protected(pagemap, start, len, &mut dropped, pages)
            } else {
                libc::EIO as u64
            };
            pages += (len / 4096) as usize;
            if e != 0 {
                errno = e;
            }
        }
        let (done, bitmap_words) = if op == proto::DROP {
            (proto::DROPPED, pages.div_ceil(64).min(dropped.len()))
        } else {
            (proto::FREED, 0)
        };
        let mut reply = [0u8; 8 * (proto::MAX_WORDS + 1)];
        let head = [3 + bitmap_words as u64, done, id, errno];
        for (i, w) in head.iter().chain(&dropped[..bitmap_words]).enumerate() {
            reply[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        // A failed write means the agent is gone: the next read notices.
        write_full(sock, &reply[..8 * (4 + bitmap_words)]);
    }
}
