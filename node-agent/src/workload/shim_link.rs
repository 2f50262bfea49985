//! The agent's side of the word protocol to the shim (a count, then that many little-endian
//! `u64` words; see `shim_proto`), and grouping pages into runs for a drop request.

use std::io;

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
