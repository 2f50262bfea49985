//! Preload shim (`LD_PRELOAD=libyonder_shim.so`) that puts a workload under the Yonder agent.
//!
//! At load time, before `main`, it creates a userfaultfd in the workload, hands it to the agent
//! named by `YONDER_AGENT_SOCK` and waits until the agent has registered the workload's memory.
//! A helper thread then runs the page drops the agent asks for (`MADV_DONTNEED` can only be done
//! from inside the process here). If the agent dies, the helper stops the workload at once with a
//! message: its memory would otherwise be incomplete.
//!
//! The shim keeps its own copy of the uffd so that the agent dying cannot unregister the memory
//! (which would make evicted pages read as zeros); faults block instead until the helper acts.

use std::{
    ffi::OsString,
    io::{self, Read, Write},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::net::UnixStream,
    },
};

#[path = "proto.rs"]
mod proto;

#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = yonder_shim_init;

extern "C" fn yonder_shim_init() {
    let Some(path) = std::env::var_os(proto::SOCKET_ENV) else {
        return;
    };
    if let Err(e) = start(path) {
        eprintln!("yonder: this process runs unmanaged: {e}");
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

fn send_hello(stream: &UnixStream, uffd: &OwnedFd) -> io::Result<()> {
    // SAFETY: getpid(2) cannot fail.
    let pid = unsafe { libc::getpid() } as u64;
    let words = [3u64, proto::MAGIC, proto::VERSION, pid];
    let mut data = [0u8; 32];
    for (i, w) in words.iter().enumerate() {
        data[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
    }
    let fd = uffd.as_raw_fd();
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // Room for one control message carrying one descriptor, suitably aligned.
    let mut cmsg_buf = [0u64; 8];
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<i32>() as u32) } as usize;
    // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg_buf.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = space;
    // SAFETY: `msg` points at `cmsg_buf`, which has room for CMSG_SPACE(4) bytes (64 bytes), so
    // the first header and its data lie inside it; the data written is one i32.
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

fn read_message(stream: &mut UnixStream, words: &mut Vec<u64>) -> io::Result<()> {
    let mut w = [0u8; 8];
    stream.read_exact(&mut w)?;
    let n = u64::from_le_bytes(w) as usize;
    if n == 0 || n > proto::MAX_WORDS {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "bad message from the agent"));
    }
    words.clear();
    for _ in 0..n {
        stream.read_exact(&mut w)?;
        words.push(u64::from_le_bytes(w));
    }
    Ok(())
}

fn write_message(stream: &mut UnixStream, words: &[u64]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(8 * (words.len() + 1));
    buf.extend_from_slice(&(words.len() as u64).to_le_bytes());
    for w in words {
        buf.extend_from_slice(&w.to_le_bytes());
    }
    stream.write_all(&buf)
}

fn start(path: OsString) -> io::Result<()> {
    let uffd = new_uffd().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot create a userfaultfd ({e}); as non-root, see docs/node-agent.md"),
        )
    })?;
    let mut stream = UnixStream::connect(&path)?;
    send_hello(&stream, &uffd)?;
    let mut words = Vec::new();
    read_message(&mut stream, &mut words)?;
    match words.first() {
        Some(&proto::READY) => {}
        Some(&proto::REFUSED) => {
            return Err(io::Error::other(
                "the agent already manages another process of this workload",
            ))
        }
        _ => return Err(io::Error::new(io::ErrorKind::InvalidData, "unexpected reply")),
    }
    std::thread::Builder::new()
        .name("yonder-shim".into())
        .spawn(move || helper(stream, uffd))?;
    Ok(())
}

/// Runs the agent's drop requests until the agent goes away.
fn helper(mut stream: UnixStream, uffd: OwnedFd) {
    let mut words = Vec::new();
    loop {
        if let Err(e) = read_message(&mut stream, &mut words) {
            let _ = writeln!(
                io::stderr(),
                "yonder: lost the node agent ({e}); stopping this workload, its memory is incomplete"
            );
            // SAFETY: kill(2) on our own pid.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
            drop(uffd);
            return;
        }
        if words.len() >= 3 && words[0] == proto::DROP {
            let id = words[1];
            let n = (words[2] as usize).min(proto::MAX_RANGES);
            let mut errno = 0u64;
            for r in words[3..].chunks_exact(2).take(n) {
                // SAFETY: the agent names page-aligned ranges of this process's own anonymous
                // memory whose contents it has saved; dropping them is what it asks for.
                let rc = unsafe { libc::madvise(r[0] as *mut libc::c_void, r[1] as usize, libc::MADV_DONTNEED) };
                if rc != 0 {
                    errno = io::Error::last_os_error().raw_os_error().unwrap_or(-1) as u64;
                }
            }
            if write_message(&mut stream, &[proto::DROPPED, id, errno]).is_err() {
                continue; // the read above will notice the agent is gone
            }
        }
    }
}
