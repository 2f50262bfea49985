//! Small system calls the floor measurements need: a userfaultfd, and pinning a thread to a CPU.

use std::os::fd::{FromRawFd, OwnedFd};

/// A new userfaultfd (close-on-exec, non-blocking), before the API handshake.
pub fn new_uffd() -> std::io::Result<OwnedFd> {
    // SAFETY: userfaultfd(2) takes flags only and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just created for us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Pins the calling thread to `cpu`.
pub fn pin_to_cpu(cpu: usize) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is a plain bit set; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes one bit inside `set`, which we own (cpu is bounded by the kernel's
    // CPU_SETSIZE in the macro).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 means the calling thread; `set` is a valid cpu_set_t of the size passed.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Blocks until `fd` is readable (or `timeout_ms` passes); returns whether it is.
pub fn wait_readable(fd: i32, timeout_ms: i32) -> std::io::Result<bool> {
    yonder_common::poll::readable(fd, timeout_ms)
}
