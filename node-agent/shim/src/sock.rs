//! Raw socket I/O for the shim, without heap (also used in forked children and by the helper):
//! whole messages, and one descriptor passed with a message (SCM_RIGHTS).

use std::io;

/// Sends `data` in one message with descriptor `fd` attached (SCM_RIGHTS); false if not all of
/// it went. No heap.
pub(crate) fn send_with_fd(sock: i32, data: &[u8], fd: i32) -> bool {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
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
    // SAFETY: `msg` and everything it points to live across the call; sendmsg does not write
    // through `iov_base`.
    let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
    n == data.len() as isize
}

/// Receives exactly `buf.len()` bytes with one descriptor attached; the descriptor, or None.
pub(crate) fn recv_with_fd(sock: i32, buf: &mut [u8]) -> Option<i32> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let mut cmsg_buf = [0u64; 8];
    // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg_buf.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = std::mem::size_of_val(&cmsg_buf);
    // SAFETY: `msg` points at buffers that live across the call and whose sizes it states.
    let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC | libc::MSG_WAITALL) };
    if n != buf.len() as isize {
        return None;
    }
    let mut fd = None;
    // SAFETY: the kernel filled `msg_controllen` bytes of `cmsg_buf`; CMSG_FIRSTHDR/NXTHDR stay
    // within them, and an SCM_RIGHTS payload holds whole descriptors.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                fd = Some(std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const i32));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    fd
}

/// Reads exactly `buf.len()` bytes; false on EOF or error.
pub(crate) fn read_full(fd: i32, buf: &mut [u8]) -> bool {
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: reads into the unfilled tail of `buf`.
        let n = unsafe {
            libc::read(
                fd,
                buf[got..].as_mut_ptr() as *mut libc::c_void,
                buf.len() - got,
            )
        };
        if n > 0 {
            got += n as usize;
        } else if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        } else {
            return false;
        }
    }
    true
}

pub(crate) fn write_full(fd: i32, buf: &[u8]) -> bool {
    let mut put = 0;
    while put < buf.len() {
        // SAFETY: writes from the unwritten tail of `buf`.
        let n = unsafe {
            libc::write(
                fd,
                buf[put..].as_ptr() as *const libc::c_void,
                buf.len() - put,
            )
        };
        if n > 0 {
            put += n as usize;
        } else if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        } else {
            return false;
        }
    }
    true
}
