//! Preload shim (`LD_PRELOAD=libyonder_shim.so`) that puts a workload under the Yonder agent.
//!
//! At load time, before `main`, it creates a userfaultfd in the workload, hands it to the agent
//! named by `YONDER_AGENT_SOCK` and waits until the agent has registered the workload's memory.
//! A helper thread then runs the page drops the agent asks for (`MADV_DONTNEED` can only be done
//! from inside the process here). If the agent dies, the helper stops the workload at once with a
//! message: its memory would otherwise be incomplete.
//!
//! The helper must never touch managed memory: a page it touched could be in the very eviction
//! that waits for it. So it runs on a stack of its own that the agent leaves unmanaged, uses no
//! heap, and is started with `pthread_create` rather than `std::thread` (which allocates).
//!
//! The shim keeps its own copy of the uffd so that the agent dying cannot unregister the memory
//! (which would make evicted pages read as zeros); faults block instead until the helper acts.
//!
//! After a `fork`, the child has no helper thread and the kernel gave the child's new uffd to the
//! agent (UFFD_EVENT_FORK). A `pthread_atfork` child handler reconnects: it tells the agent its
//! pid, its parent and which of the parent's forks it is (forks are numbered under a lock, so the
//! agent can pair it with the n-th fork event), receives its uffd back and starts a helper. It
//! uses no heap: the C library's allocator state in a forked child is not ours to rely on.

use std::{
    ffi::OsString,
    io::{self, Read},
    os::{
        fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd},
        unix::net::UnixStream,
    },
    sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering},
};

mod helper;
mod intercept;
mod sock;

use helper::{helper, unlock_parking};
use sock::{recv_with_fd, send_with_fd, write_full};

// The client-API part of the protocol is the agent's and libyonder's, not the shim's.
#[allow(dead_code)]
#[path = "proto.rs"]
mod proto;

/// Stack of the helper thread.
const HELPER_STACK: usize = 256 * 1024;

/// The workload's uffd once the agent manages it; -1 before.
static UFFD: AtomicI32 = AtomicI32::new(-1);

/// The socket to the agent that the helper serves; -1 before.
static SOCK: AtomicI32 = AtomicI32::new(-1);

/// The parking area (start, length in bytes): where the agent moves pages it evicts
/// (`UFFDIO_MOVE`) until they are saved. Set once at load time; a forked child inherits the
/// mapping empty (`MADV_WIPEONFORK`) at the same address.
static PARK_START: AtomicU64 = AtomicU64::new(0);
static PARK_LEN: AtomicU64 = AtomicU64::new(0);

/// Held from the prepare to the parent/child handler of a fork: forks are numbered one at a time.
/// The helper also holds it while it moves pages for the agent (see `park`).
static FORK_LOCK: AtomicBool = AtomicBool::new(false);

/// The pid of the process that forks, recorded before the fork: a child whose parent exits at
/// once would find itself reparented (getppid() = 1) before it says hello.
static FORKING_PID: AtomicU64 = AtomicU64::new(0);

/// Forks this process made since it came under management.
static FORK_SEQ: AtomicU64 = AtomicU64::new(0);

/// The agent's socket address, saved at load time for forked children.
struct SockAddr(std::cell::UnsafeCell<libc::sockaddr_un>);

// SAFETY: written once by the constructor before any thread or fork exists, read-only after.
unsafe impl Sync for SockAddr {}

static AGENT_ADDR: SockAddr = SockAddr(std::cell::UnsafeCell::new(libc::sockaddr_un {
    sun_family: 0,
    sun_path: [0; 108],
}));

/// The C library's mmap, found with dlsym(RTLD_NEXT).
static REAL_MMAP: AtomicUsize = AtomicUsize::new(0);

type MmapFn =
    unsafe extern "C" fn(*mut libc::c_void, usize, i32, i32, i32, i64) -> *mut libc::c_void;

fn real_mmap() -> MmapFn {
    let mut f = REAL_MMAP.load(Ordering::Acquire);
    if f == 0 {
        // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name; the C library always defines
        // mmap, whose signature is MmapFn.
        f = unsafe { libc::dlsym(libc::RTLD_NEXT, c"mmap".as_ptr()) } as usize;
        REAL_MMAP.store(f, Ordering::Release);
    }
    // SAFETY: `f` is the address of the C library's mmap (non-null: libc defines it).
    unsafe { std::mem::transmute::<usize, MmapFn>(f) }
}

/// Interposed `mmap`: a new private anonymous writable mapping is registered with the agent's
/// userfaultfd before the caller can touch it, so its pages are managed from the first byte.
/// Mappings made inside the C library (malloc's large blocks, brk) do not pass here; the agent's
/// scanner picks those up.
///
/// # Safety
///
/// Same contract as mmap(2).
#[no_mangle]
pub unsafe extern "C" fn mmap(
    addr: *mut libc::c_void,
    len: usize,
    prot: i32,
    flags: i32,
    fd: i32,
    off: i64,
) -> *mut libc::c_void {
    // SAFETY: forwards the caller's arguments unchanged to the real mmap.
    let p = unsafe { real_mmap()(addr, len, prot, flags, fd, off) };
    let uffd = UFFD.load(Ordering::Acquire);
    let anon_private = flags & libc::MAP_ANONYMOUS != 0 && flags & libc::MAP_PRIVATE != 0;
    if uffd >= 0 && p != libc::MAP_FAILED && anon_private && prot & libc::PROT_WRITE != 0 {
        register(uffd, p as u64, len as u64);
    }
    p
}

/// Interposed `mmap64` (the same function on 64-bit targets).
///
/// # Safety
///
/// Same contract as mmap(2).
#[no_mangle]
pub unsafe extern "C" fn mmap64(
    addr: *mut libc::c_void,
    len: usize,
    prot: i32,
    flags: i32,
    fd: i32,
    off: i64,
) -> *mut libc::c_void {
    // SAFETY: same contract, forwarded.
    unsafe { mmap(addr, len, prot, flags, fd, off) }
}

/// Interposed `mlockall`: under the agent, memory is locked as it is faulted in
/// (`MCL_ONFAULT`) rather than populated at once, and the shim's parking area is unlocked
/// again. Populating it would fill the whole area through the agent, and the kernel neither
/// drops locked pages nor moves unlocked ones into a locked area. Locked memory of the program
/// is never evicted (the agent reads which ranges are locked), so the program's pages stay in
/// memory once touched, as it asked.
///
/// # Safety
///
/// Same contract as mlockall(2).
#[no_mangle]
pub unsafe extern "C" fn mlockall(flags: i32) -> i32 {
    let (park, park_len) = (
        PARK_START.load(Ordering::Acquire),
        PARK_LEN.load(Ordering::Acquire),
    );
    let managed = park != 0 && flags & libc::MCL_CURRENT != 0;
    let flags = if managed {
        flags | libc::MCL_ONFAULT
    } else {
        flags
    };
    // SAFETY: the raw mlockall(2) system call with the caller's flags (plus MCL_ONFAULT).
    let rc = unsafe { libc::syscall(libc::SYS_mlockall, flags as libc::c_long) } as i32;
    if rc == 0 && managed {
        unlock_parking(park, park_len);
    }
    rc
}

/// Registers a range for missing and write-protect faults; failure leaves it to the scanner.
fn register(uffd: i32, start: u64, len: u64) {
    #[repr(C)]
    struct UffdioRegister {
        start: u64,
        len: u64,
        mode: u64,
        ioctls: u64,
    }
    const UFFDIO_REGISTER: libc::c_ulong = 0xc020_aa00;
    const MODE_MISSING_WP: u64 = 1 | 2;
    let len = (len + 4095) & !4095;
    let mut reg = UffdioRegister {
        start,
        len,
        mode: MODE_MISSING_WP,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_REGISTER takes a uffdio_register, whose layout UffdioRegister repeats; the
    // range is a mapping this process just created.
    unsafe {
        libc::ioctl(uffd, UFFDIO_REGISTER, &mut reg);
    }
}

#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = yonder_shim_init;

extern "C" fn yonder_shim_init() {
    let Some(path) = std::env::var_os(proto::SOCKET_ENV) else {
        return;
    };
    match start(path) {
        Ok(()) => {}
        // Another process of the workload (a child): the agent counts these in its summary.
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {}
        Err(e) => eprintln!("yonder: this process runs unmanaged: {e}"),
    }
}

fn new_uffd() -> io::Result<OwnedFd> {
    // SAFETY: userfaultfd(2) takes flags only and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn helper_stack() -> io::Result<*mut libc::c_void> {
    // SAFETY: a fresh anonymous private mapping; nothing else refers to it.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            HELPER_STACK,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(p)
}

/// Maps the parking area: private anonymous memory the program never touches, reserved but not
/// backed until the agent moves pages in. Wiped in forked children (the parent's parked pages are
/// the parent's business) and never made of huge pages (pages move one by one).
fn parking_area() -> io::Result<u64> {
    let len = (proto::PARK_PAGES * 4096) as usize;
    // SAFETY: a fresh anonymous private mapping; nothing else refers to it.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: advice on the mapping just created, which holds no data yet.
    let ok = unsafe {
        libc::madvise(p, len, libc::MADV_WIPEONFORK) == 0
            && libc::madvise(p, len, libc::MADV_NOHUGEPAGE) == 0
    };
    if !ok {
        return Err(io::Error::last_os_error());
    }
    PARK_START.store(p as u64, Ordering::Release);
    PARK_LEN.store(len as u64, Ordering::Release);
    Ok(p as u64)
}

fn send_hello(stream: &UnixStream, uffd: &OwnedFd, stack: u64, park: u64) -> io::Result<()> {
    // SAFETY: getpid(2) cannot fail.
    let pid = unsafe { libc::getpid() } as u64;
    let words = [
        proto::HELLO_WORDS as u64,
        proto::MAGIC,
        proto::VERSION,
        pid,
        stack,
        HELPER_STACK as u64,
        park,
        proto::PARK_PAGES * 4096,
    ];
    let mut data = [0u8; 8 * (proto::HELLO_WORDS + 1)];
    for (i, w) in words.iter().enumerate() {
        data[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
    }
    if !send_with_fd(stream.as_raw_fd(), &data, uffd.as_raw_fd()) {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn start(path: OsString) -> io::Result<()> {
    let uffd = new_uffd().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot create a userfaultfd ({e}); as non-root, see docs/node-agent.md"),
        )
    })?;
    let stack = helper_stack()?;
    let park = parking_area()?;
    save_agent_addr(&path)?;
    let mut stream = UnixStream::connect(&path)?;
    send_hello(&stream, &uffd, stack as u64, park)?;
    let mut reply = [0u8; 16];
    stream.read_exact(&mut reply)?;
    match u64::from_le_bytes(reply[8..16].try_into().expect("8 bytes")) {
        proto::READY => {}
        proto::REFUSED => {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the agent already manages another process of this workload",
            ))
        }
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "unexpected reply",
            ))
        }
    }
    let intercept = intercept::prepare();
    start_helper(stream.into_raw_fd(), uffd.into_raw_fd(), stack)?;
    if intercept.is_ok() {
        intercept_here();
    }
    // SAFETY: registers three extern "C" functions that live as long as the process.
    let rc = unsafe {
        libc::pthread_atfork(
            Some(before_fork),
            Some(after_fork_parent),
            Some(after_fork_child),
        )
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

fn save_agent_addr(path: &OsString) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_bytes();
    // SAFETY: only the constructor writes AGENT_ADDR, before any other thread exists.
    let addr = unsafe { &mut *AGENT_ADDR.0.get() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "agent socket path too long",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, &b) in addr.sun_path.iter_mut().zip(bytes) {
        *d = b as libc::c_char;
    }
    Ok(())
}

/// Starts the helper thread on `stack`, serving `sock`; it keeps `uffd` open. Both descriptors
/// travel in its argument, not the heap.
fn start_helper(sock: i32, uffd: i32, stack: *mut libc::c_void) -> io::Result<()> {
    UFFD.store(uffd, Ordering::Release);
    SOCK.store(sock, Ordering::Release);
    let arg = (sock as u64) | ((uffd as u64) << 32);
    // SAFETY: attr is initialised before use and destroyed after; the stack is a mapping of
    // HELPER_STACK bytes that stays mapped for the life of the process.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        libc::pthread_attr_init(&mut attr);
        libc::pthread_attr_setstack(&mut attr, stack, HELPER_STACK);
        let mut tid: libc::pthread_t = 0;
        let rc = libc::pthread_create(&mut tid, &attr, helper, arg as *mut libc::c_void);
        libc::pthread_attr_destroy(&mut attr);
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        libc::pthread_detach(tid);
    }
    Ok(())
}

extern "C" fn before_fork() {
    while FORK_LOCK
        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        // SAFETY: sched_yield(2) has no preconditions.
        unsafe { libc::sched_yield() };
    }
    FORK_SEQ.fetch_add(1, Ordering::Relaxed);
    // SAFETY: getpid(2) cannot fail.
    FORKING_PID.store(unsafe { libc::getpid() } as u64, Ordering::Relaxed);
}

extern "C" fn after_fork_parent() {
    FORK_LOCK.store(false, Ordering::Release);
}

extern "C" fn after_fork_child() {
    FORK_LOCK.store(false, Ordering::Release);
    let seq = FORK_SEQ.swap(0, Ordering::Relaxed);
    // The parent's uffd and agent connection are the parent's business.
    for fd in [
        SOCK.swap(-1, Ordering::AcqRel),
        UFFD.swap(-1, Ordering::AcqRel),
    ] {
        if fd >= 0 {
            // SAFETY: closes descriptors this child inherited and no one else here uses.
            unsafe { libc::close(fd) };
        }
    }
    if !attach_forked(seq) {
        // Our memory is only complete through the agent: running on could read zeros.
        die(b"yonder: a forked child could not reach the node agent; stopping it, its memory would be incomplete\n");
    }
}

/// Installs the filter on this thread (see `intercept`) and hands its listener to the agent,
/// which answers it from then on. Under an inherited filter (this program was started by `exec`
/// from a workload process) there is nothing to do: the agent answers that one.
fn intercept_here() {
    // Reach the agent first: once the filter is in, a listener no one reads would make every
    // mmap of the program wait forever.
    // SAFETY: socket(2) with constant arguments.
    let sock = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return;
    }
    // SAFETY: AGENT_ADDR was filled by the constructor and is only read now; connect(2) reads
    // exactly size_of::<sockaddr_un>() bytes of it.
    let rc = unsafe {
        libc::connect(
            sock,
            AGENT_ADDR.0.get() as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    let listener = if rc == 0 {
        intercept::install().ok()
    } else {
        None
    };
    if let Some(listener) = listener {
        // SAFETY: getpid(2) cannot fail.
        let pid = unsafe { libc::getpid() } as u64;
        let words = [
            proto::LISTEN_HELLO_WORDS as u64,
            proto::LISTEN_MAGIC,
            proto::VERSION,
            pid,
        ];
        let mut data = [0u8; 8 * (proto::LISTEN_HELLO_WORDS + 1)];
        for (i, w) in words.iter().enumerate() {
            data[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        if !send_with_fd(sock, &data, listener) {
            die(b"yonder: could not hand the seccomp listener to the node agent; stopping, the program's mmap calls would wait forever\n");
        }
        // SAFETY: the agent holds the listener now (the descriptor in flight keeps it open).
        unsafe { libc::close(listener) };
    }
    // SAFETY: closes the socket this function opened.
    unsafe { libc::close(sock) };
}

/// Writes `msg` to stderr and kills this process.
fn die(msg: &[u8]) {
    // SAFETY: write(2) of a caller's buffer to stderr, then kill(2) on our own pid.
    unsafe {
        libc::write(2, msg.as_ptr() as *const libc::c_void, msg.len());
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
}

/// The forked child's side of the handshake (no heap); false if the agent cannot take it.
fn attach_forked(seq: u64) -> bool {
    let Ok(stack) = helper_stack() else {
        return false;
    };
    // SAFETY: socket(2) with constant arguments.
    let sock = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return false;
    }
    // SAFETY: AGENT_ADDR was filled by the constructor and is only read now; connect(2) reads
    // exactly size_of::<sockaddr_un>() bytes of it.
    let rc = unsafe {
        libc::connect(
            sock,
            AGENT_ADDR.0.get() as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return false;
    }
    // SAFETY: getpid(2) cannot fail.
    let pid = unsafe { libc::getpid() as u64 };
    // The parent as it was at the fork (it may have exited since).
    let ppid = FORKING_PID.load(Ordering::Relaxed);
    let words = [
        proto::FORK_HELLO_WORDS as u64,
        proto::FORK_MAGIC,
        proto::VERSION,
        pid,
        ppid,
        seq,
        stack as u64,
        HELPER_STACK as u64,
    ];
    let mut data = [0u8; 8 * (proto::FORK_HELLO_WORDS + 1)];
    for (i, w) in words.iter().enumerate() {
        data[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
    }
    if !write_full(sock, &data) {
        return false;
    }
    let mut reply = [0u8; 16];
    let Some(uffd) = recv_with_fd(sock, &mut reply) else {
        return false;
    };
    if u64::from_le_bytes(reply[8..16].try_into().expect("8 bytes")) != proto::READY {
        return false;
    }
    start_helper(sock, uffd, stack).is_ok()
}
