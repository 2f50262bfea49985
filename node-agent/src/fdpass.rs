//! Receives the shim's hello and the workload's userfaultfd (SCM_RIGHTS) on a Unix stream.

use std::{
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::net::UnixStream,
    },
};

use crate::shim_proto as proto;

/// The hello of a shim: the workload's pid, its userfaultfd, and memory to leave unmanaged.
pub struct Hello {
    /// Process id of the workload.
    pub pid: u32,
    /// The workload's userfaultfd.
    pub uffd: OwnedFd,
    /// The shim helper's stack `(start, len)`: never registered.
    pub helper_stack: (u64, u64),
}

/// Reads the hello (blocking). Fails on anything but a well-formed hello with one descriptor.
pub fn recv_hello(stream: &UnixStream) -> io::Result<Hello> {
    let mut data = [0u8; 8 * (proto::HELLO_WORDS + 1)];
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
    let words: Vec<u64> = data
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8-byte chunk")))
        .collect();
    if n as usize != data.len() || words[0] != proto::HELLO_WORDS as u64 || words[1] != proto::MAGIC
    {
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
    let uffd = fd
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "hello without a userfaultfd"))?;
    Ok(Hello {
        pid: words[3] as u32,
        uffd,
        helper_stack: (words[4], words[5]),
    })
}
