//! The tiny protocol between the preload shim and the agent, over a Unix stream socket.
//!
//! Shared by both sides (the agent includes this file). Every message is a sequence of
//! little-endian `u64` words preceded by its word count. The shim's first message, the hello,
//! travels with the workload's userfaultfd attached (SCM_RIGHTS).

/// Environment variable naming the agent's socket.
pub const SOCKET_ENV: &str = "YONDER_AGENT_SOCK";
/// Words of the hello: `[MAGIC, VERSION, pid, helper stack start, helper stack length, parking
/// area start, parking area length]`.
pub const HELLO_WORDS: usize = 7;
/// First word of the hello.
pub const MAGIC: u64 = 0x594f_4e44_4552_0001;
/// Protocol version, second word of the hello (2: a DROPPED reply names the pages dropped).
pub const VERSION: u64 = 2;
/// Version of the client API's protocol, second word of its hello (unchanged by the shim's).
pub const API_VERSION: u64 = 1;
/// Words of the hello of a forked child (no descriptor attached): `[FORK_MAGIC, VERSION, pid,
/// parent pid, fork number in the parent, helper stack start, helper stack length]`. The agent
/// answers `READY` with the child's userfaultfd attached (the kernel gave it to the agent).
pub const FORK_HELLO_WORDS: usize = 7;
/// First word of a forked child's hello.
pub const FORK_MAGIC: u64 = 0x594f_4e44_4552_0002;
/// Words of a listener hello (its own connection, with the descriptor attached): `[LISTEN_MAGIC,
/// VERSION, pid]`: the listener of the seccomp filter the process installed, which the agent
/// answers from then on for the whole workload (`intercept.rs` in the shim). No reply.
pub const LISTEN_HELLO_WORDS: usize = 3;
/// First word of a listener hello.
pub const LISTEN_MAGIC: u64 = 0x594f_4e44_4552_0004;
/// Agent → shim: the memory is registered, the program may start.
pub const READY: u64 = 1;
/// Agent → shim: this process will not be managed.
pub const REFUSED: u64 = 2;
/// Agent → shim: `[DROP, id, n, start, len, ...]`, drop these ranges with MADV_DONTNEED (the
/// pages that still carry the agent's write protection; at most [`MAX_DROP_PAGES`] pages).
pub const DROP: u64 = 3;
/// Shim → agent: `[DROPPED, id, errno, bitmap...]`: bit `i` (word `i / 64`, bit `i % 64`) set
/// when the `i`-th page of the request, in order, got a MADV_DONTNEED (and so raised a REMOVE
/// event of the helper's own); `ceil(pages / 64)` words.
pub const DROPPED: u64 = 4;
/// Shim → agent, the helper's first message: `[HELPER_UP]`; drops may be sent from now on.
pub const HELPER_UP: u64 = 5;
/// Agent → shim: `[FREE_PARKED, id, n, start, len, ...]`, free these ranges of the parking area
/// (MADV_DONTNEED); ranges outside the parking area are refused.
pub const FREE_PARKED: u64 = 6;
/// Shim → agent: `[FREED, id, errno]`.
pub const FREED: u64 = 7;
/// Agent → shim: `[PARK, id, n, src, dst, len, ...]`, move these runs of pages into the parking
/// area with `UFFDIO_MOVE` (which only a thread of the process itself may issue); `dst` must lie
/// in the parking area.
pub const PARK: u64 = 8;
/// Shim → agent: `[PARKED, id, n, moved, errno, ...]`, per run the pages moved from its start and
/// the error that stopped it (0 if none; [`PARK_FORKING`] when the process is forking).
pub const PARKED: u64 = 9;
/// The errno of every run of a PARK the helper refused because a thread of the process is inside
/// `fork()` (between the shim's prepare and parent handlers): nothing moved, and nothing will
/// until that thread gets out, which may need a fault served first.
pub const PARK_FORKING: u64 = libc::EINPROGRESS as u64;
/// Agent → shim: `[MAP, id, addr, len, prot, flags, fd, offset]`: make this `mmap`, which a
/// program thread asked for and the seccomp filter handed to the agent, and register the new
/// range with the userfaultfd.
pub const MAP: u64 = 14;
/// Agent → shim: `[BRK, id, addr]`: make this `brk` and register what the heap grew by.
pub const BRK: u64 = 15;
/// Shim → agent: `[MAPPED, id, result]`, the call's raw result (a negative errno on failure).
pub const MAPPED: u64 = 16;
/// Pages in the parking area the shim maps for the agent's evictions (`UFFDIO_MOVE` target).
pub const PARK_PAGES: u64 = 8192;
/// Most ranges in one DROP message.
pub const MAX_RANGES: usize = 64;
/// Most words in any message.
pub const MAX_WORDS: usize = 3 + 3 * MAX_RANGES;
/// Most pages in one DROP message: as many as the bitmap of its reply can name.
pub const MAX_DROP_PAGES: usize = 64 * (MAX_WORDS - 3);

/// Words of a client-API hello (no descriptor): `[API_MAGIC, API_VERSION, pid]`. The agent answers
/// `[READY]` if `pid` is a process it manages, `[REFUSED]` otherwise. Then each request is
/// `[op, start, len]` (page-aligned range of the caller's memory) and its reply `[op, errno]`
/// (0 on success, a positive errno otherwise), in order, one at a time per connection.
pub const API_HELLO_WORDS: usize = 3;
/// First word of a client-API hello.
pub const API_MAGIC: u64 = 0x594f_4e44_4552_0003;
/// Request: manage this range (an anonymous private writable mapping) from now on.
pub const OP_REGISTER: u64 = 10;
/// Request: stop managing this range; its evicted pages are brought back first, so it stays
/// local from then on. The agent's scanner will not take it again.
pub const OP_UNREGISTER: u64 = 11;
/// Request: fetch the evicted pages of this range ahead of use (a hint: the reply comes once the
/// fetches are issued, not installed).
pub const OP_PREFETCH: u64 = 12;
/// Request: evict the resident pages of this range now (written to the servers, dropped
/// locally); the reply comes when that is done.
pub const OP_FLUSH: u64 = 13;
