//! The agent's side of the word protocol to the shim (a count, then that many little-endian
//! `u64` words; see `shim_proto`), and grouping pages into runs for a drop request.

use std::io;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::UnixStream,
};

use crate::{pages::PAGE, shim_proto as proto};

/// Encodes one message: its word count, then the words, all little-endian `u64`.
pub fn encode_words(words: &[u64]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(8 * (words.len() + 1));
    buf.extend_from_slice(&(words.len() as u64).to_le_bytes());
    for w in words {
        buf.extend_from_slice(&w.to_le_bytes());
    }
    buf
}

pub(super) async fn write_words(stream: &mut UnixStream, words: &[u64]) -> io::Result<()> {
    stream.write_all(&encode_words(words)).await
}

/// Checks the word count that starts every message from the shim: 1 to `MAX_WORDS`.
pub fn word_count(n: u64) -> io::Result<usize> {
    if n == 0 || n > proto::MAX_WORDS as u64 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad message from the shim",
        ));
    }
    Ok(n as usize)
}

fn words_from_le(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8-byte chunk")))
        .collect()
}

pub(super) async fn read_words(stream: &mut UnixStream) -> io::Result<Vec<u64>> {
    let n = word_count(stream.read_u64_le().await?)?;
    let mut bytes = vec![0; 8 * n];
    stream.read_exact(&mut bytes).await?;
    Ok(words_from_le(&bytes))
}

/// Decodes the first message of `input` as [`read_words`] reads it from a stream: its words and
/// the bytes it took. A message cut short is an `UnexpectedEof` error.
pub fn decode_words(input: &[u8]) -> io::Result<(Vec<u64>, usize)> {
    let eof = || io::Error::from(io::ErrorKind::UnexpectedEof);
    let head = input.get(..8).ok_or_else(eof)?;
    let n = word_count(u64::from_le_bytes(head.try_into().expect("8 bytes")))?;
    let body = input.get(8..8 + 8 * n).ok_or_else(eof)?;
    Ok((words_from_le(body), 8 + 8 * n))
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
