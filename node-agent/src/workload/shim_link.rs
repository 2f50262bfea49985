//! The agent's side of the word protocol to the shim (a count, then that many little-endian
//! `u64` words; see `shim_proto`), and grouping pages into runs for a drop request.

use std::{
    io,
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::UnixStream,
};

use crate::{pages::PAGE, shim_proto as proto};

pub(super) async fn write_words(stream: &mut UnixStream, words: &[u64]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(8 * (words.len() + 1));
    buf.extend_from_slice(&(words.len() as u64).to_le_bytes());
    for w in words {
        buf.extend_from_slice(&w.to_le_bytes());
    }
    stream.write_all(&buf).await
}

pub(super) async fn read_words(stream: &mut UnixStream) -> io::Result<Vec<u64>> {
    let n = stream.read_u64_le().await? as usize;
    if n == 0 || n > proto::MAX_WORDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad message from the shim",
        ));
    }
    let mut words = Vec::with_capacity(n);
    for _ in 0..n {
        words.push(stream.read_u64_le().await?);
    }
    Ok(words)
}

/// Sends `words` and waits for the reply with this thread blocked: nothing else runs on the
/// agent's thread meanwhile, in particular no userfaultfd event is read. A `PARK` relies on that
/// (see `evict::park`). Fails after `timeout` without a whole reply.
pub(super) fn exchange_blocking(
    stream: &UnixStream,
    words: &[u64],
    timeout: Duration,
) -> io::Result<Vec<u64>> {
    let fd = stream.as_raw_fd();
    let deadline = Instant::now() + timeout;
    let mut out = Vec::with_capacity(8 * (words.len() + 1));
    out.extend_from_slice(&(words.len() as u64).to_le_bytes());
    for w in words {
        out.extend_from_slice(&w.to_le_bytes());
    }
    let mut sent = 0;
    while sent < out.len() {
        // SAFETY: writes from the unsent tail of `out` to a socket we own.
        let n = unsafe {
            libc::write(
                fd,
                out[sent..].as_ptr() as *const libc::c_void,
                out.len() - sent,
            )
        };
        if n > 0 {
            sent += n as usize;
        } else {
            wait_fd(fd, libc::POLLOUT, deadline)?;
        }
    }
    let mut head = [0u8; 8];
    read_exact_blocking(fd, &mut head, deadline)?;
    let n = u64::from_le_bytes(head) as usize;
    if n == 0 || n > proto::MAX_WORDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad message from the shim",
        ));
    }
    let mut body = vec![0u8; 8 * n];
    read_exact_blocking(fd, &mut body, deadline)?;
    Ok(body
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8-byte chunk")))
        .collect())
}

/// Waits until `fd` is ready for `events`, or fails at `deadline`.
fn wait_fd(fd: i32, events: i16, deadline: Instant) -> io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the shim did not answer in time",
        ));
    }
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: poll(2) on one valid pollfd that lives across the call.
    let r = unsafe {
        libc::poll(
            &mut pfd,
            1,
            left.as_millis().clamp(1, i32::MAX as u128) as i32,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

fn read_exact_blocking(fd: i32, buf: &mut [u8], deadline: Instant) -> io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: reads into the unfilled tail of `buf` from a socket we own.
        let n = unsafe {
            libc::read(
                fd,
                buf[got..].as_mut_ptr() as *mut libc::c_void,
                buf.len() - got,
            )
        };
        if n > 0 {
            got += n as usize;
        } else if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the shim closed its connection",
            ));
        } else {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::WouldBlock && e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
            wait_fd(fd, libc::POLLIN, deadline)?;
        }
    }
    Ok(())
}

pub(super) fn runs(pages: &[u64]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &pg in pages {
        match out.last_mut() {
            Some((start, len)) if *start + *len == pg => *len += PAGE,
            _ => out.push((pg, PAGE)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_merge_neighbours() {
        assert_eq!(
            runs(&[0, PAGE, 2 * PAGE, 5 * PAGE]),
            vec![(0, 3 * PAGE), (5 * PAGE, PAGE)]
        );
        assert!(runs(&[]).is_empty());
    }
}
