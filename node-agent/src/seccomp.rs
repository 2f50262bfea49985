//! The agent's side of the shim's seccomp filter (the shim's `intercept.rs`): receiving the
//! notifications of the workload's `mmap` and `brk` calls, and answering them.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, OwnedFd},
};

/// A call of a workload thread, handed over by the filter.
#[derive(Clone, Copy, Debug)]
pub struct Call {
    /// Identifies the call in the answer.
    pub id: u64,
    /// The calling thread.
    pub tid: u32,
    /// System call number.
    pub nr: i64,
    /// Address of the calling instruction.
    pub ip: u64,
    /// The call's arguments.
    pub args: [u64; 6],
}

/// How a call ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// It was made on the caller's behalf: this is its result.
    Done(i64),
    /// It failed with this errno (positive).
    Failed(i32),
    /// The caller makes it itself, as if there were no filter.
    LetThrough,
}

/// Takes the next pending call of `listener`: `None` when none is pending; an error once no
/// process uses the filter any more (hang-up) or the listener is broken. Never blocks.
pub fn receive(listener: &impl AsFd) -> io::Result<Option<Call>> {
    let fd = listener.as_fd().as_raw_fd();
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: poll(2) on one entry that lives across the call, without waiting.
        let r = unsafe { libc::poll(&mut pfd, 1, 0) };
        if r >= 0 {
            break;
        }
        let e = io::Error::last_os_error();
        // A signal is not the end of the listener: ask again (this poll never waits).
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    if pfd.revents & libc::POLLIN == 0 {
        if pfd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
            return Err(io::Error::from(io::ErrorKind::BrokenPipe));
        }
        return Ok(None);
    }
    // SAFETY: seccomp_notif is plain old data; all-zero is valid, and NOTIF_RECV requires a
    // zeroed buffer.
    let mut req: libc::seccomp_notif = unsafe { std::mem::zeroed() };
    // SAFETY: NOTIF_RECV fills `req`, which lives across the call. A call is pending and the
    // agent is the listener's only reader, so it does not wait (a caller killed meanwhile makes
    // it fail with ENOENT instead).
    if unsafe { libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_RECV, &mut req) } != 0 {
        return Ok(None);
    }
    Ok(Some(Call {
        id: req.id,
        tid: req.pid,
        nr: i64::from(req.data.nr),
        ip: req.data.instruction_pointer,
        args: req.data.args,
    }))
}

/// Answers call `id` of `listener`. Failing (the caller was killed meanwhile) needs nothing more.
pub fn answer(listener: &impl AsFd, id: u64, answer: Answer) {
    // SAFETY: seccomp_notif_resp is plain old data; all-zero is valid.
    let mut resp: libc::seccomp_notif_resp = unsafe { std::mem::zeroed() };
    resp.id = id;
    match answer {
        Answer::Done(v) => resp.val = v,
        Answer::Failed(errno) => resp.error = -errno,
        Answer::LetThrough => resp.flags = libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32,
    }
    // SAFETY: NOTIF_SEND reads `resp`, which lives across the call.
    unsafe {
        libc::ioctl(
            listener.as_fd().as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_SEND,
            &resp,
        );
    }
}

/// Registers a listener with the Tokio reactor to wait for calls (inside a runtime).
pub fn watch(listener: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: the `AsyncFd` owns the descriptor, so it stays open and refers to the same file for
    // as long as it is registered.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(listener, tokio::io::Interest::READABLE)
    }
    .map_err(|e| e.into_parts().1)
}

/// Leaves behind a small process that lets every call of `listener` through until no process
/// uses its filter any more, for an agent that stops while processes it did not manage (a
/// statically linked program, one started without the shim) still run under the filter: with
/// its listener closed, their `mmap` and `brk` would fail with ENOSYS. Returns at once.
pub fn keep_letting_through(listener: &impl AsFd) -> io::Result<()> {
    let fd = listener.as_fd().as_raw_fd();
    // SAFETY: fork(2). The child runs only system calls that are async-signal-safe (poll, ioctl,
    // close_range, _exit) and touches no lock, allocator or other thread's state, as a child of
    // a multithreaded process must.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid > 0 {
        return Ok(());
    }
    // The child: keep only the listener (not the agent's sockets, nor the stdout and stderr a
    // caller may be reading to their end), then answer until the filter has no users.
    // SAFETY: close_range(2) on descriptors this child owns copies of; setsid(2) detaches it
    // from the agent's session and its signals.
    unsafe {
        if fd > 0 {
            libc::syscall(libc::SYS_close_range, 0, fd - 1, 0);
        }
        libc::syscall(libc::SYS_close_range, fd + 1, u32::MAX, 0);
        libc::setsid();
    }
    loop {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll(2) on one entry that lives across the call.
        let r = unsafe { libc::poll(&mut pfd, 1, -1) };
        if r < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        if r < 0 || pfd.revents & libc::POLLIN == 0 {
            // Hung up (no process uses the filter) or broken: done.
            // SAFETY: _exit(2) ends this child without running the parent's exit handlers.
            unsafe { libc::_exit(0) };
        }
        // SAFETY: as in `receive` and `answer`: plain old data, zeroed; a call is pending and
        // this process is the listener's only reader.
        unsafe {
            let mut req: libc::seccomp_notif = std::mem::zeroed();
            if libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_RECV, &mut req) == 0 {
                let mut resp: libc::seccomp_notif_resp = std::mem::zeroed();
                resp.id = req.id;
                resp.flags = libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32;
                libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_SEND, &resp);
            }
        }
    }
}

/// Whether some process still uses the filter of `listener` (no hang-up yet).
pub fn in_use(listener: &impl AsFd) -> bool {
    let mut pfd = libc::pollfd {
        fd: listener.as_fd().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll(2) on one entry that lives across the call, without waiting.
    let r = unsafe { libc::poll(&mut pfd, 1, 0) };
    r >= 0 && pfd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) == 0
}
