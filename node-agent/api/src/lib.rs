//! Client API of Yonder: lets a program that runs under `yonder-agent run` steer the paging of
//! its own memory, because it knows its access pattern better than the agent can guess it.
//!
//! Four requests, each on a byte range of the caller's own memory (rounded outward to whole
//! pages): [`Client::register`] (manage this range from now on), [`Client::unregister`] (bring
//! it back and keep it local: pin it), [`Client::prefetch`] (fetch its evicted pages ahead of
//! use, a hint) and [`Client::flush`] (evict its resident pages now). The free functions
//! ([`register`], [`unregister`], [`prefetch`], [`flush`], [`available`]) use one connection per
//! process, opened on first use; the C ABI (`include/yonder.h`, [`capi`]) is built on them.
//!
//! Outside the agent (no `YONDER_AGENT_SOCK` in the environment) every call fails with
//! [`Error::NotManaged`] and the program can simply carry on: the requests are optimisations,
//! never needed for correctness. See docs/client-api.md for the semantics and the wire protocol.

use std::{
    io::{self, Read, Write},
    os::unix::net::UnixStream,
    path::Path,
    ptr,
    sync::{
        atomic::{AtomicPtr, AtomicUsize, Ordering},
        Mutex, MutexGuard, PoisonError,
    },
    time::Duration,
};

pub mod capi;

// Shared with the agent and the shim; only the client-API part is used here.
#[allow(dead_code)]
#[path = "../../shim/src/proto.rs"]
mod proto;

/// Environment variable naming the agent's socket, set by `yonder-agent run` for its workload.
pub const SOCKET_ENV: &str = proto::SOCKET_ENV;

/// How long the agent may take to answer the hello before [`Client::connect`] gives up.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request did not happen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The program does not run under the Yonder agent (`YONDER_AGENT_SOCK` is not set).
    #[error("not running under the Yonder agent ({SOCKET_ENV} is not set)")]
    NotManaged,
    /// The agent answered the hello with REFUSED: it does not manage this process.
    #[error("the Yonder agent does not manage this process")]
    Refused,
    /// The connection to the agent failed (connect, read or write; the agent went away).
    #[error("talking to the Yonder agent: {0}")]
    Io(#[from] io::Error),
    /// The agent sent something that is not a reply of the protocol.
    #[error("unexpected message from the Yonder agent: {0}")]
    Protocol(String),
    /// The agent refused the request with this (positive) errno.
    #[error("the Yonder agent refused the request: {}", io::Error::from_raw_os_error(*.0))]
    Agent(i32),
    /// The range wraps around the end of the address space.
    #[error("the range {addr:#x}+{len:#x} wraps around the address space")]
    InvalidRange {
        /// Start address as given.
        addr: usize,
        /// Length in bytes as given.
        len: usize,
    },
    /// The client was connected by another process (this one is a forked child of it).
    #[error("this client belongs to process {owner}; a forked child must connect again")]
    Forked {
        /// The process that connected it.
        owner: u32,
    },
}

impl Error {
    /// The positive errno that the C ABI returns (negated) for this error.
    pub fn errno(&self) -> i32 {
        match self {
            Error::NotManaged | Error::Refused => libc::ENOSYS,
            Error::Io(e) => e.raw_os_error().unwrap_or(match e.kind() {
                io::ErrorKind::UnexpectedEof => libc::ECONNRESET,
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => libc::ETIMEDOUT,
                io::ErrorKind::NotConnected => libc::ENOTCONN,
                _ => libc::EIO,
            }),
            Error::Protocol(_) => libc::EPROTO,
            Error::Agent(errno) if *errno > 0 => *errno,
            Error::Agent(_) => libc::EIO,
            Error::InvalidRange { .. } => libc::EINVAL,
            Error::Forked { .. } => libc::EBADF,
        }
    }
}

/// A connection to the agent, usable from any thread of the process that opened it (requests
/// are sent one at a time).
#[derive(Debug)]
pub struct Client {
    /// The process that connected; a forked child must not use the connection.
    pid: u32,
    /// The socket; `None` once a failed exchange left it out of step.
    stream: Mutex<Option<UnixStream>>,
}

impl Client {
    /// Connects to the agent named by `YONDER_AGENT_SOCK` and says hello for this process.
    pub fn connect() -> Result<Self, Error> {
        let path = std::env::var_os(SOCKET_ENV).ok_or(Error::NotManaged)?;
        Self::connect_to(Path::new(&path))
    }

    /// Connects to the agent socket at `path` (normally [`Client::connect`] finds it).
    pub fn connect_to(path: &Path) -> Result<Self, Error> {
        let mut stream = UnixStream::connect(path)?;
        let pid = std::process::id();
        stream.set_read_timeout(Some(HELLO_TIMEOUT))?;
        write_words(
            &mut stream,
            &[proto::API_MAGIC, proto::API_VERSION, u64::from(pid)],
        )?;
        let reply = read_words(&mut stream).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no answer to the hello within {} s",
                    HELLO_TIMEOUT.as_secs()
                ),
            )),
            io::ErrorKind::UnexpectedEof => Error::Protocol(
                "the agent closed the connection without answering the hello (an agent without the client API?)"
                    .into(),
            ),
            _ => read_error(e),
        })?;
        match reply[..] {
            [proto::READY] => {}
            [proto::REFUSED] => return Err(Error::Refused),
            _ => return Err(Error::Protocol(format!("hello answered with {reply:?}"))),
        }
        stream.set_read_timeout(None)?;
        Ok(Self {
            pid,
            stream: Mutex::new(Some(stream)),
        })
    }

    /// Asks the agent to manage `[addr, addr + len)` (a private anonymous writable mapping).
    pub fn register(&self, addr: *const u8, len: usize) -> Result<(), Error> {
        self.request(proto::OP_REGISTER, addr, len)
    }

    /// Asks the agent to bring the range's evicted pages back and stop managing it (pin it).
    pub fn unregister(&self, addr: *const u8, len: usize) -> Result<(), Error> {
        self.request(proto::OP_UNREGISTER, addr, len)
    }

    /// Asks the agent to fetch the range's evicted pages ahead of use (returns once issued).
    pub fn prefetch(&self, addr: *const u8, len: usize) -> Result<(), Error> {
        self.request(proto::OP_PREFETCH, addr, len)
    }

    /// Asks the agent to evict the range's resident pages now (returns once they are out).
    pub fn flush(&self, addr: *const u8, len: usize) -> Result<(), Error> {
        self.request(proto::OP_FLUSH, addr, len)
    }

    /// Sends one request and waits for its reply. An empty range is not sent.
    fn request(&self, op: u64, addr: *const u8, len: usize) -> Result<(), Error> {
        if std::process::id() != self.pid {
            return Err(Error::Forked { owner: self.pid });
        }
        let Some((start, len)) = page_range(addr as usize, len)? else {
            return Ok(());
        };
        let mut guard = lock(&self.stream);
        let Some(stream) = guard.as_mut() else {
            return Err(Error::Io(io::Error::new(
                io::ErrorKind::NotConnected,
                "the connection was closed after an earlier failure; connect again",
            )));
        };
        let result = exchange(stream, op, start, len);
        if matches!(result, Err(Error::Io(_) | Error::Protocol(_))) {
            // The stream may be out of step (half a message sent or read): never reuse it.
            *guard = None;
        }
        result
    }
}

/// One request and its reply on `stream`.
fn exchange(stream: &mut UnixStream, op: u64, start: u64, len: u64) -> Result<(), Error> {
    write_words(stream, &[op, start, len])?;
    let reply = read_words(stream).map_err(read_error)?;
    match reply[..] {
        [o, 0] if o == op => Ok(()),
        [o, errno] if o == op && errno <= i32::MAX as u64 => Err(Error::Agent(errno as i32)),
        _ => Err(Error::Protocol(format!(
            "request {op} answered with {reply:?}"
        ))),
    }
}

/// A failed read as an [`Error`]: a malformed message is a protocol error.
fn read_error(e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::InvalidData {
        Error::Protocol(e.to_string())
    } else {
        Error::Io(e)
    }
}

/// Writes `words` preceded by their count, little-endian, in one write.
fn write_words(stream: &mut impl Write, words: &[u64]) -> io::Result<()> {
    let mut data = [0u8; 8 * 4];
    let n = words.len() + 1;
    debug_assert!(n <= 4, "client messages have at most three words");
    data[..8].copy_from_slice(&(words.len() as u64).to_le_bytes());
    for (i, w) in words.iter().enumerate() {
        data[8 * (i + 1)..8 * (i + 2)].copy_from_slice(&w.to_le_bytes());
    }
    stream.write_all(&data[..8 * n])
}

/// Reads one message: its word count, then that many words (at most `proto::MAX_WORDS`).
fn read_words(stream: &mut impl Read) -> io::Result<Vec<u64>> {
    let closed = |e: io::Error| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the agent closed the connection",
            )
        } else {
            e
        }
    };
    let mut word = [0u8; 8];
    stream.read_exact(&mut word).map_err(closed)?;
    let count = u64::from_le_bytes(word);
    if count == 0 || count > proto::MAX_WORDS as u64 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a message of {count} words"),
        ));
    }
    let mut words = Vec::with_capacity(count as usize);
    for _ in 0..count {
        stream.read_exact(&mut word).map_err(closed)?;
        words.push(u64::from_le_bytes(word));
    }
    Ok(words)
}

/// The system's page size.
pub fn page_size() -> usize {
    static PAGE: AtomicUsize = AtomicUsize::new(0);
    let mut p = PAGE.load(Ordering::Relaxed);
    if p == 0 {
        // SAFETY: sysconf(3) only reads a system constant.
        let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        p = if v > 0 { v as usize } else { 4096 };
        PAGE.store(p, Ordering::Relaxed);
    }
    p
}

/// `[addr, addr + len)` rounded outward to whole pages as `(start, len)`; `None` when empty.
pub fn page_range(addr: usize, len: usize) -> Result<Option<(u64, u64)>, Error> {
    if len == 0 {
        return Ok(None);
    }
    let page = page_size();
    let invalid = Error::InvalidRange { addr, len };
    let end = addr
        .checked_add(len)
        .and_then(|e| e.checked_add(page - 1))
        .ok_or(invalid)?
        & !(page - 1);
    let start = addr & !(page - 1);
    Ok(Some((start as u64, (end - start) as u64)))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // No code panics while holding these locks; a poisoned one still holds consistent data.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The process-wide connection behind the free functions, one per process: a forked child
/// gets a fresh one (the parent's, copied into the child, is left alone and never used).
struct Global {
    /// The process this belongs to.
    pid: u32,
    /// The connection, opened on first use.
    state: Mutex<State>,
}

enum State {
    /// Not connected yet, or the connection failed and the next call connects again.
    Idle,
    /// Connected.
    Ready(Client),
    /// The agent does not manage this process; not asked again.
    Refused,
}

/// The current process's [`Global`]. Globals are leaked, never freed: one per process
/// generation, so a pointer loaded here stays valid for ever.
static GLOBAL: AtomicPtr<Global> = AtomicPtr::new(ptr::null_mut());

fn global() -> &'static Global {
    let pid = std::process::id();
    loop {
        let cur = GLOBAL.load(Ordering::Acquire);
        // SAFETY: GLOBAL is null or points at a leaked Box<Global>, never freed.
        if let Some(g) = unsafe { cur.as_ref() } {
            if g.pid == pid {
                return g;
            }
        }
        // First use in this process, or a forked child still sees its parent's: a new one. The
        // parent's may be locked for ever (another of its threads was in a request at the fork)
        // and its socket is the parent's conversation, so it is leaked untouched.
        let new = Box::into_raw(Box::new(Global {
            pid,
            state: Mutex::new(State::Idle),
        }));
        match GLOBAL.compare_exchange(cur, new, Ordering::AcqRel, Ordering::Acquire) {
            // SAFETY: `new` came from Box::into_raw just above and is now published, never freed.
            Ok(_) => return unsafe { &*new },
            Err(_) => {
                // Another thread of this process installed one first: use that one.
                // SAFETY: `new` came from Box::into_raw above and was never published.
                drop(unsafe { Box::from_raw(new) });
            }
        }
    }
}

/// Runs `f` with the process-wide client, connecting first if needed.
fn with_global<T>(f: impl FnOnce(&Client) -> Result<T, Error>) -> Result<T, Error> {
    let g = global();
    let mut state = lock(&g.state);
    if let State::Idle = *state {
        match Client::connect() {
            Ok(c) => *state = State::Ready(c),
            Err(Error::Refused) => *state = State::Refused,
            Err(e) => return Err(e),
        }
    }
    match &*state {
        State::Ready(c) => {
            let result = f(c);
            if matches!(result, Err(Error::Io(_) | Error::Protocol(_))) {
                // The client closed its stream: connect again next time.
                *state = State::Idle;
            }
            result
        }
        State::Refused => Err(Error::Refused),
        // Not reached: an idle state was connected or returned above.
        State::Idle => Err(Error::NotManaged),
    }
}

/// Whether this process runs under the agent and the agent accepted its client connection.
pub fn available() -> bool {
    with_global(|_| Ok(())).is_ok()
}

/// [`Client::register`] on the process-wide connection.
pub fn register(addr: *const u8, len: usize) -> Result<(), Error> {
    with_global(|c| c.register(addr, len))
}

/// [`Client::unregister`] on the process-wide connection.
pub fn unregister(addr: *const u8, len: usize) -> Result<(), Error> {
    with_global(|c| c.unregister(addr, len))
}

/// [`Client::prefetch`] on the process-wide connection.
pub fn prefetch(addr: *const u8, len: usize) -> Result<(), Error> {
    with_global(|c| c.prefetch(addr, len))
}

/// [`Client::flush`] on the process-wide connection.
pub fn flush(addr: *const u8, len: usize) -> Result<(), Error> {
    with_global(|c| c.flush(addr, len))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

    use super::*;

    #[test]
    fn ranges_round_outward_to_pages() {
        let p = page_size();
        assert_eq!(page_range(0x10000, 0).unwrap(), None);
        assert_eq!(page_range(0x10000, 1).unwrap(), Some((0x10000, p as u64)));
        assert_eq!(
            page_range(0x10000 + 100, p).unwrap(),
            Some((0x10000, 2 * p as u64))
        );
        assert_eq!(
            page_range(0x10000, 3 * p).unwrap(),
            Some((0x10000, 3 * p as u64))
        );
        assert!(matches!(
            page_range(usize::MAX - 10, 100),
            Err(Error::InvalidRange { .. })
        ));
        assert!(matches!(
            page_range(usize::MAX - 10, 5),
            Err(Error::InvalidRange { .. })
        ));
    }

    #[test]
    fn errnos_for_the_c_abi() {
        assert_eq!(Error::NotManaged.errno(), libc::ENOSYS);
        assert_eq!(Error::Refused.errno(), libc::ENOSYS);
        assert_eq!(Error::Agent(libc::ENOMEM).errno(), libc::ENOMEM);
        assert_eq!(Error::Agent(0).errno(), libc::EIO);
        assert_eq!(Error::Protocol("x".into()).errno(), libc::EPROTO);
        let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "closed");
        assert_eq!(Error::Io(eof).errno(), libc::ECONNRESET);
        let refused = io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(Error::Io(refused).errno(), libc::ECONNREFUSED);
    }

    #[test]
    fn messages_are_counted_little_endian_words() {
        let mut out = Vec::new();
        write_words(&mut out, &[proto::OP_FLUSH, 0x1000, 0x2000]).unwrap();
        let words: Vec<u64> = out
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(words, [3, proto::OP_FLUSH, 0x1000, 0x2000]);
        let mut input = &out[..];
        assert_eq!(
            read_words(&mut input).unwrap(),
            [proto::OP_FLUSH, 0x1000, 0x2000]
        );
        let mut truncated = &out[..20];
        assert_eq!(
            read_words(&mut truncated).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        let huge = (proto::MAX_WORDS as u64 + 1).to_le_bytes();
        assert_eq!(
            read_words(&mut &huge[..]).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }
}
