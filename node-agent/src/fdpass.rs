//! The shim's hello (with the workload's userfaultfd, SCM_RIGHTS) and the reply that hands a
//! forked child its userfaultfd, on a Unix stream.

use std::{
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::net::UnixStream,
    },
};

use crate::shim_proto as proto;

/// The hello of a shim: the process, how it came to be, and memory to leave unmanaged.
pub struct Hello {
    /// Process id.
    pub pid: u32,
    /// A program started (or exec'd) with its new userfaultfd, or a forked child.
    pub kind: HelloKind,
    /// The shim helper's stack `(start, len)`: never registered.
    pub helper_stack: (u64, u64),
    /// The parking area `(start, len)` of a program's hello (evicted pages are moved there);
    /// `(0, 0)` for other hellos (a forked child inherits its parent's, empty).
    pub parking: (u64, u64),
}

/// How the process that says hello came to be.
pub enum HelloKind {
    /// A program that loaded the shim: its userfaultfd.
    Program(OwnedFd),
    /// A connection of the client API (`yonder_register` and friends) from a managed process.
    Api,
    /// A copy of the listener of a managed process's seccomp filter (see the shim's
    /// `intercept.rs`), for the agent to answer once the process is gone.
    Listener(OwnedFd),
    /// A child forked by a managed process: whose, and which of its forks (from 1).
    Forked {
        /// Parent's pid.
        ppid: u32,
        /// The parent's fork number.
        seq: u64,
    },
}

/// Reads the hello (blocking). Fails on anything but a well-formed hello with one descriptor.
pub fn recv_hello(stream: &UnixStream) -> io::Result<Hello> {
    let mut data = [0u8; 8 * (proto::FORK_HELLO_WORDS + 1)];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let mut cmsg_buf = [0u64; 8];
    // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg_buf.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = std::mem::size_of_val(&cmsg_buf);
    // SAFETY: `msg` points at buffers that live across the call and whose sizes it states;
    // MSG_CMSG_CLOEXEC keeps the received descriptor out of children.
    let n = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fd = None;
    // SAFETY: the kernel filled `msg_controllen` bytes of `cmsg_buf`; CMSG_FIRSTHDR/NXTHDR stay
    // within them, and an SCM_RIGHTS payload holds whole descriptors.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let raw = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const i32);
                let owned = OwnedFd::from_raw_fd(raw);
                if fd.is_none() {
                    fd = Some(owned);
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    parse_hello(&data[..n as usize], fd)
}

/// Parses the bytes of a hello (`data`, as received) and the descriptor that came with it.
/// Fails on anything but a well-formed hello; a program's hello needs the descriptor.
pub fn parse_hello(data: &[u8], fd: Option<OwnedFd>) -> io::Result<Hello> {
    let n = data.len();
    let mut words = [0u64; proto::FORK_HELLO_WORDS + 1];
    for (w, c) in words.iter_mut().zip(data.chunks_exact(8)) {
        *w = u64::from_le_bytes(c.try_into().expect("8-byte chunk"));
    }
    let program = n == 8 * (proto::HELLO_WORDS + 1)
        && words[0] == proto::HELLO_WORDS as u64
        && words[1] == proto::MAGIC;
    let forked = n == 8 * (proto::FORK_HELLO_WORDS + 1)
        && words[0] == proto::FORK_HELLO_WORDS as u64
        && words[1] == proto::FORK_MAGIC;
    let api = n == 8 * (proto::API_HELLO_WORDS + 1)
        && words[0] == proto::API_HELLO_WORDS as u64
        && words[1] == proto::API_MAGIC;
    let listen = n == 8 * (proto::LISTEN_HELLO_WORDS + 1)
        && words[0] == proto::LISTEN_HELLO_WORDS as u64
        && words[1] == proto::LISTEN_MAGIC;
    if listen {
        if words[2] != proto::VERSION {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("shim protocol version {}", words[2]),
            ));
        }
        let fd = fd.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "a listener hello without its descriptor",
            )
        })?;
        return Ok(Hello {
            pid: pid(words[3])?,
            kind: HelloKind::Listener(fd),
            helper_stack: (0, 0),
            parking: (0, 0),
        });
    }
    if api {
        if words[2] != proto::API_VERSION {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("client API protocol version {}", words[2]),
            ));
        }
        return Ok(Hello {
            pid: pid(words[3])?,
            kind: HelloKind::Api,
            helper_stack: (0, 0),
            parking: (0, 0),
        });
    }
    if !program && !forked {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a Yonder shim hello",
        ));
    }
    if words[2] != proto::VERSION {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "shim protocol version {} (agent speaks {})",
                words[2],
                proto::VERSION
            ),
        ));
    }
    if forked {
        return Ok(Hello {
            pid: pid(words[3])?,
            kind: HelloKind::Forked {
                ppid: pid(words[4])?,
                seq: words[5],
            },
            helper_stack: (words[6], words[7]),
            parking: (0, 0),
        });
    }
    let uffd = fd
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "hello without a userfaultfd"))?;
    Ok(Hello {
        pid: pid(words[3])?,
        kind: HelloKind::Program(uffd),
        helper_stack: (words[4], words[5]),
        parking: (words[6], words[7]),
    })
}

/// A process id word of a hello: refused unless it is one (a pid that does not fit would be
/// silently cut to another process's).
fn pid(word: u64) -> io::Result<u32> {
    u32::try_from(word)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("pid {word} in a hello")))
}

/// Sends `words` (with their count first, as every shim message) and one descriptor (blocking).
pub fn send_with_fd(stream: &UnixStream, words: &[u64], fd: RawFd) -> io::Result<()> {
    let mut data = Vec::with_capacity(8 * (words.len() + 1));
    data.extend_from_slice(&(words.len() as u64).to_le_bytes());
    for w in words {
        data.extend_from_slice(&w.to_le_bytes());
    }
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let mut cmsg_buf = [0u64; 8];
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<i32>() as u32) } as usize;
    // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg_buf.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = space;
    // SAFETY: `cmsg_buf` has room for CMSG_SPACE(4) bytes, so the first header and its data lie
    // inside it; the data written is one i32.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<i32>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut i32, fd);
    }
    // SAFETY: `msg` and everything it points to live across the call.
    let n = unsafe { libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n != data.len() as isize {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(words: &[u64]) -> Vec<u8> {
        std::iter::once(words.len() as u64)
            .chain(words.iter().copied())
            .flat_map(u64::to_le_bytes)
            .collect()
    }

    #[test]
    fn api_hello_names_its_pid() {
        let hello = parse_hello(&bytes(&[proto::API_MAGIC, proto::API_VERSION, 42]), None).unwrap();
        assert!(matches!(hello.kind, HelloKind::Api));
        assert_eq!(hello.pid, 42);
    }

    #[test]
    fn a_pid_that_does_not_fit_is_refused_not_cut() {
        // Found by the shim_hello fuzz target: (1 << 32) + 42 used to be read as pid 42.
        let api = [proto::API_MAGIC, proto::API_VERSION, (1 << 32) + 42];
        assert!(parse_hello(&bytes(&api), None).is_err());
        let forked = [
            proto::FORK_MAGIC,
            proto::VERSION,
            43,
            (1 << 32) + 42,
            1,
            0,
            0,
        ];
        assert!(parse_hello(&bytes(&forked), None).is_err());
    }

    #[test]
    fn a_listener_of_an_older_shim_is_refused_by_its_version() {
        // Version 1 shims answer a DROP without naming the pages they dropped.
        let old = [proto::LISTEN_MAGIC, 1, 42];
        let e = parse_hello(&bytes(&old), None).err().expect("refused");
        assert!(e.to_string().contains("version 1"), "{e}");
    }

    #[test]
    fn a_program_hello_needs_its_userfaultfd() {
        let program = [proto::MAGIC, proto::VERSION, 42, 0, 0, 0, 0];
        assert!(parse_hello(&bytes(&program), None).is_err());
    }
}
