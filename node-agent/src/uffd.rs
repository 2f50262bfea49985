//! Thin wrappers over the userfaultfd ioctls the agent uses, on a uffd received from a workload.
//!
//! The uffd belongs to the workload's address space (it was created there by the shim); every
//! ioctl here acts on that address space, not the agent's. This module holds all the agent's
//! userfaultfd `unsafe` code.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    rc::Rc,
};

use tokio::io::{unix::AsyncFd, Interest};

use userfaultfd_sys as sys;

/// Size of a page.
pub const PAGE: u64 = 4096;

/// Features the agent asks for: write-protect faults, and notice of the program's own
/// unmapping, moving and dropping of memory.
pub const FEATURES: u64 = sys::UFFD_FEATURE_PAGEFAULT_FLAG_WP
    | sys::UFFD_FEATURE_EVENT_REMAP
    | sys::UFFD_FEATURE_EVENT_REMOVE
    | sys::UFFD_FEATURE_EVENT_UNMAP
    | sys::UFFD_FEATURE_EVENT_FORK
    | sys::UFFD_FEATURE_THREAD_ID;
// UFFD_FEATURE_WP_ASYNC is deliberately not asked for: it would make every write-protect fault
// resolve itself, and the eviction of pages that cannot move (shared after a fork) relies on a
// racing writer blocking in one (docs/eviction.md).

/// `UFFD_FEATURE_MOVE` (Linux 6.8): `UFFDIO_MOVE` moves pages between ranges of the address
/// space. Asked for when the kernel offers it; evictions fall back to write protection without it.
/// The feature is chosen at the handshake, which the agent does, though the moves themselves
/// come from the shim's helper (the kernel refuses them from another process).
pub const FEATURE_MOVE: u64 = 1 << 16;

/// `UFFD_FEATURE_RWP`, uffd read-write protection: a fault on any access, read or write, to a
/// protected present page (the series proposed for Linux 7.2, bit 17 there). It would let the
/// policy see reads without parking pages; the agent detects it and does not use it yet
/// (docs/eviction.md, "Read-write protection"). The bit may change before the kernel takes it.
pub const FEATURE_RWP: u64 = 1 << 17;

/// One event read from the uffd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A thread touched a page it may not (missing, or write-protected).
    Fault {
        /// Page-aligned address.
        page: u64,
        /// A write access.
        write: bool,
        /// A write to a write-protected page (rather than a missing page).
        wp: bool,
    },
    /// The program dropped `[start, end)` (madvise DONTNEED/FREE/REMOVE).
    Remove {
        /// Start address.
        start: u64,
        /// End address (exclusive).
        end: u64,
    },
    /// The program unmapped `[start, end)`.
    Unmap {
        /// Start address.
        start: u64,
        /// End address (exclusive).
        end: u64,
    },
    /// The program moved `len` bytes from `from` to `to` (mremap).
    Remap {
        /// Old start.
        from: u64,
        /// New start.
        to: u64,
        /// Length in bytes.
        len: u64,
    },
    /// The process forked: the child's memory has a new uffd, installed in the agent as this
    /// descriptor (owned by whoever handles the event).
    Fork {
        /// The child's uffd, already initialised with the parent's features.
        ufd: RawFd,
    },
    /// An event the agent did not ask for.
    Other(u8),
}

/// Outcome of installing a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Install {
    /// Installed; waiting threads were woken.
    Done,
    /// A page was already there (another path installed it): also success.
    Exists,
    /// The address space changed under us (munmap/mremap in flight): retry after reading events.
    Again,
    /// The range is no longer registered or mapped: nothing to do.
    Gone,
}

/// A userfaultfd received from a workload.
pub struct Uffd {
    fd: OwnedFd,
    /// The kernel accepted [`FEATURE_MOVE`] for this uffd.
    can_move: bool,
    /// Every feature the kernel offered at the handshake (it reports all it has, asked for or
    /// not); 0 for a uffd created at a fork.
    offered: u64,
}

fn ioctl<T>(fd: RawFd, req: u32, arg: &mut T) -> io::Result<()> {
    // SAFETY: `req` is one of the userfaultfd ioctls whose argument type is `T` (each caller
    // passes the matching `uffdio_*` struct), and `arg` is a valid exclusive reference for the call.
    let r = unsafe { libc::ioctl(fd, req as libc::c_ulong, arg as *mut T) };
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn install_result(r: io::Result<()>) -> io::Result<Install> {
    match r {
        Ok(()) => Ok(Install::Done),
        Err(e) => match e.raw_os_error() {
            Some(libc::EEXIST) => Ok(Install::Exists),
            Some(libc::EAGAIN) => Ok(Install::Again),
            Some(libc::ENOENT) | Some(libc::ESRCH) | Some(libc::EFAULT) => Ok(Install::Gone),
            _ => Err(e),
        },
    }
}

impl Uffd {
    /// Takes ownership of a uffd and performs the API handshake with [`FEATURES`], plus
    /// [`FEATURE_MOVE`] where the kernel has it (a refused handshake leaves the uffd
    /// uninitialised, so it is tried again without).
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        let mut api = sys::uffdio_api {
            api: sys::UFFD_API,
            features: FEATURES | FEATURE_MOVE,
            ioctls: 0,
        };
        let (can_move, offered) = match ioctl(fd.as_raw_fd(), sys::UFFDIO_API, &mut api) {
            Ok(()) => (true, api.features),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                let mut api = sys::uffdio_api {
                    api: sys::UFFD_API,
                    features: FEATURES,
                    ioctls: 0,
                };
                ioctl(fd.as_raw_fd(), sys::UFFDIO_API, &mut api)?;
                (false, api.features)
            }
            Err(e) => return Err(e),
        };
        Ok(Self {
            fd,
            can_move,
            offered,
        })
    }

    /// Takes ownership of a uffd the kernel created at a fork (already past the handshake, with
    /// the features of the parent's, `can_move` among them).
    pub fn forked(fd: OwnedFd, can_move: bool) -> Self {
        Self {
            fd,
            can_move,
            offered: 0,
        }
    }

    /// Every feature bit the kernel offered at this uffd's handshake (0 for a forked child's).
    pub fn offered(&self) -> u64 {
        self.offered
    }

    /// Whether pages can be moved within the address space (`UFFDIO_MOVE`, which the kernel takes
    /// only from a thread of that process: the shim's helper issues it).
    pub fn can_move(&self) -> bool {
        self.can_move
    }

    /// Whether the address space of this uffd still exists (false once its process exited or
    /// exec'd). Probes with a zero-page request at `unregistered`, an address no range of this
    /// uffd covers: a live address space answers ENOENT (or EAGAIN), a gone one ESRCH.
    pub fn mm_alive(&self, unregistered: u64) -> bool {
        let mut zp = sys::uffdio_zeropage {
            range: sys::uffdio_range {
                start: unregistered,
                len: PAGE,
            },
            mode: sys::UFFDIO_ZEROPAGE_MODE_DONTWAKE,
            zeropage: 0,
        };
        match ioctl(self.fd.as_raw_fd(), sys::UFFDIO_ZEROPAGE, &mut zp) {
            Err(e) => e.raw_os_error() != Some(libc::ESRCH),
            Ok(()) => true,
        }
    }

    /// Registers `[start, start+len)` for missing and write-protect faults.
    pub fn register(&self, start: u64, len: u64) -> io::Result<()> {
        let mut reg = sys::uffdio_register {
            range: sys::uffdio_range { start, len },
            mode: sys::UFFDIO_REGISTER_MODE_MISSING | sys::UFFDIO_REGISTER_MODE_WP,
            ioctls: 0,
        };
        ioctl(self.fd.as_raw_fd(), sys::UFFDIO_REGISTER, &mut reg)
    }

    /// Stops managing `[start, start+len)`: faults there are the kernel's again.
    pub fn unregister(&self, start: u64, len: u64) -> io::Result<()> {
        let mut range = sys::uffdio_range { start, len };
        ioctl(self.fd.as_raw_fd(), sys::UFFDIO_UNREGISTER, &mut range)
    }

    /// Installs `src` (a multiple of [`PAGE`] bytes) at `dst`; write-protected when `wp`.
    pub fn copy(&self, dst: u64, src: &[u8], wp: bool) -> io::Result<Install> {
        let mut copy = sys::uffdio_copy {
            dst,
            src: src.as_ptr() as u64,
            len: src.len() as u64,
            mode: if wp { sys::UFFDIO_COPY_MODE_WP } else { 0 },
            copy: 0,
        };
        // The kernel reads `src` during the call only; `src` outlives it.
        install_result(ioctl(self.fd.as_raw_fd(), sys::UFFDIO_COPY, &mut copy))
    }

    /// Installs `src` (several pages) at `dst` with one ioctl and says how many whole pages went
    /// in before the kernel stopped, and how the call ended: `Done` when all went in; a stop after
    /// some pages is `Again` whatever the cause (the kernel says EAGAIN), so the caller goes on
    /// page by page from there.
    pub fn copy_run(&self, dst: u64, src: &[u8]) -> io::Result<(usize, Install)> {
        let mut copy = sys::uffdio_copy {
            dst,
            src: src.as_ptr() as u64,
            len: src.len() as u64,
            mode: 0,
            copy: 0,
        };
        // The kernel reads `src` during the call only; `src` outlives it.
        let r = install_result(ioctl(self.fd.as_raw_fd(), sys::UFFDIO_COPY, &mut copy));
        // On a stop part-way, `copy` holds the bytes copied (or a negative errno when none were).
        let done = if matches!(r, Ok(Install::Done)) {
            src.len()
        } else {
            copy.copy.max(0) as usize
        };
        r.map(|i| (done / PAGE as usize, i))
    }

    /// Maps the shared zero page at `dst` (one page).
    pub fn zeropage(&self, dst: u64) -> io::Result<Install> {
        self.zeropage_run(dst, 1).map(|(_, i)| i)
    }

    /// Maps the shared zero page at `pages` pages from `dst` with one ioctl and says how many went
    /// in before the kernel stopped (at a page already present: `Exists`), and how the call
    /// ended, as [`Self::copy_run`] does.
    pub fn zeropage_run(&self, dst: u64, pages: usize) -> io::Result<(usize, Install)> {
        let mut zp = sys::uffdio_zeropage {
            range: sys::uffdio_range {
                start: dst,
                len: pages as u64 * PAGE,
            },
            mode: 0,
            zeropage: 0,
        };
        let r = install_result(ioctl(self.fd.as_raw_fd(), sys::UFFDIO_ZEROPAGE, &mut zp));
        // On a stop part-way, `zeropage` holds the bytes mapped (or a negative errno).
        let done = if matches!(r, Ok(Install::Done)) {
            pages
        } else {
            (zp.zeropage.max(0) as u64 / PAGE) as usize
        };
        r.map(|i| (done, i))
    }

    /// Write-protects (`on`) or un-protects a range; un-protecting wakes threads blocked on it.
    pub fn write_protect(&self, start: u64, len: u64, on: bool) -> io::Result<Install> {
        let mut wp = sys::uffdio_writeprotect {
            range: sys::uffdio_range { start, len },
            mode: if on {
                sys::UFFDIO_WRITEPROTECT_MODE_WP
            } else {
                0
            },
        };
        install_result(ioctl(
            self.fd.as_raw_fd(),
            sys::UFFDIO_WRITEPROTECT,
            &mut wp,
        ))
    }

    /// Wakes threads blocked on faults in a range (they retry their access).
    pub fn wake(&self, start: u64, len: u64) -> io::Result<()> {
        let mut range = sys::uffdio_range { start, len };
        match ioctl(self.fd.as_raw_fd(), sys::UFFDIO_WAKE, &mut range) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            r => r,
        }
    }

    /// Reads the events queued now (non-blocking); empty when none.
    pub fn read_events(&self, out: &mut Vec<Event>) -> io::Result<()> {
        const BATCH: usize = 64;
        // SAFETY: uffd_msg is plain old data (integers and a union of integers): all-zero bytes
        // are a valid value.
        let mut msgs: [sys::uffd_msg; BATCH] = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<sys::uffd_msg>();
        // SAFETY: reads at most BATCH * size bytes into `msgs`, a buffer of exactly that size;
        // uffd_msg is plain old data, any bytes are a valid value.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                msgs.as_mut_ptr() as *mut libc::c_void,
                BATCH * size,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::WouldBlock {
                Ok(())
            } else {
                Err(e)
            };
        }
        for msg in &msgs[..n as usize / size] {
            out.push(decode(msg));
        }
        Ok(())
    }
}

impl AsRawFd for Uffd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Takes ownership of the child's uffd that a fork event installed in the agent.
pub fn adopt_fork_fd(ufd: RawFd) -> OwnedFd {
    // SAFETY: reading the fork event installed this descriptor in our table for us; nothing
    // else refers to it, and each event is handled once.
    unsafe { OwnedFd::from_raw_fd(ufd) }
}

/// A uffd shared with a readiness watcher; keeps the descriptor open while watched.
pub struct Watched(Rc<Uffd>);

impl AsRawFd for Watched {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Registers a uffd with the Tokio reactor to wait for events (inside a runtime).
pub fn watch(uffd: &Rc<Uffd>) -> io::Result<AsyncFd<Watched>> {
    // SAFETY: `Watched` holds an `Rc` to the `Uffd` that owns the descriptor, so it stays open
    // and refers to the same file for as long as the `AsyncFd` exists.
    unsafe { AsyncFd::register_with_interest(Watched(uffd.clone()), Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

fn decode(msg: &sys::uffd_msg) -> Event {
    // SAFETY (for each union read below): the kernel fills the union member that matches
    // `msg.event`, and every member is plain integers, so reading it is sound.
    match msg.event {
        sys::UFFD_EVENT_PAGEFAULT => {
            // SAFETY: see above; PAGEFAULT carries `pagefault`.
            let pf = unsafe { msg.arg.pagefault };
            // SAFETY: see above; with THREAD_ID the `feat` union holds the thread id.
            tracing::trace!(tid = unsafe { pf.feat.ptid }, addr = pf.address, "fault");
            Event::Fault {
                page: pf.address & !(PAGE - 1),
                write: pf.flags & sys::UFFD_PAGEFAULT_FLAG_WRITE != 0,
                wp: pf.flags & sys::UFFD_PAGEFAULT_FLAG_WP != 0,
            }
        }
        sys::UFFD_EVENT_REMOVE => {
            // SAFETY: see above; REMOVE carries `remove`.
            let r = unsafe { msg.arg.remove };
            Event::Remove {
                start: r.start,
                end: r.end,
            }
        }
        sys::UFFD_EVENT_UNMAP => {
            // SAFETY: see above; UNMAP carries `remove`.
            let r = unsafe { msg.arg.remove };
            Event::Unmap {
                start: r.start,
                end: r.end,
            }
        }
        sys::UFFD_EVENT_REMAP => {
            // SAFETY: see above; REMAP carries `remap`.
            let r = unsafe { msg.arg.remap };
            Event::Remap {
                from: r.from,
                to: r.to,
                len: r.len,
            }
        }
        sys::UFFD_EVENT_FORK => {
            // SAFETY: see above; FORK carries `fork`.
            let f = unsafe { msg.arg.fork };
            Event::Fork {
                ufd: f.ufd as RawFd,
            }
        }
        other => Event::Other(other),
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::FromRawFd;

    use super::*;

    /// A uffd of this process and a fresh registered mapping of `pages` pages.
    fn setup(pages: usize) -> (Uffd, u64) {
        // SAFETY: a plain system call with flags; it returns a new fd or -1.
        let fd =
            unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
        assert!(fd >= 0, "userfaultfd: {}", io::Error::last_os_error());
        // SAFETY: `fd` was just returned to us and nothing else owns it.
        let uffd = Uffd::new(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }).expect("handshake");
        let len = pages * PAGE as usize;
        // SAFETY: an anonymous private mapping at an address the kernel picks; checked below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED);
        uffd.register(addr as u64, len as u64).expect("register");
        (uffd, addr as u64)
    }

    fn page_of(n: u8) -> Vec<u8> {
        vec![n; PAGE as usize]
    }

    #[test]
    fn the_handshake_keeps_what_the_kernel_offers() {
        let (uffd, base) = setup(1);
        // The kernel reports every feature it has: at least those the agent asked for, and the
        // move exactly when the handshake took it.
        assert_eq!(uffd.offered() & FEATURES, FEATURES, "{:#x}", uffd.offered());
        assert_eq!(uffd.offered() & FEATURE_MOVE != 0, uffd.can_move());
        uffd.unregister(base, PAGE).expect("unregister");
        // SAFETY: unmapping the mapping made in `setup`, which nothing else uses.
        unsafe { libc::munmap(base as *mut libc::c_void, PAGE as usize) };
    }

    #[test]
    fn a_run_goes_in_with_one_copy_and_stops_at_a_page_already_there() {
        let (uffd, base) = setup(8);
        // Page 3 is there first: a run over 1..6 installs 1 and 2, then stops.
        assert!(matches!(
            uffd.copy(base + 3 * PAGE, &page_of(9), false),
            Ok(Install::Done)
        ));
        let run: Vec<u8> = (1..6u8).flat_map(page_of).collect();
        let (n, why) = uffd.copy_run(base + PAGE, &run).expect("copy");
        // The kernel reports a stop after some pages as EAGAIN, whatever stopped it.
        assert_eq!(n, 2);
        assert!(matches!(why, Install::Again));
        // The rest of a run after the stop, one call.
        let (n, why) = uffd
            .copy_run(base + 4 * PAGE, &run[3 * PAGE as usize..])
            .expect("copy");
        assert_eq!((n, matches!(why, Install::Done)), (2, true));
        for (i, want) in [(1u64, 1u8), (2, 2), (3, 9), (4, 4), (5, 5)] {
            // SAFETY: the page is installed (above) inside our own live mapping.
            let got = unsafe { *((base + i * PAGE + 100) as *const u8) };
            assert_eq!(got, want, "page {i}");
        }
        // An unmap would wait for its event to be read: unregister first.
        uffd.unregister(base, 8 * PAGE).expect("unregister");
        // SAFETY: unmapping the mapping made in `setup`, which nothing else uses.
        unsafe { libc::munmap(base as *mut libc::c_void, 8 * PAGE as usize) };
    }
}
