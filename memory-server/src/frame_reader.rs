//! Request frames read from a stream chunk by chunk.
//!
//! `transport::read_frame` reads a frame with two exact reads (header, then payload), each a poll
//! of the stream under the connection's lock. A request of a page read is a few dozen bytes that
//! arrive in one QUIC frame: here one chunk read takes the whole request, and the frame is parsed
//! from the buffered bytes.

use bytes::{Buf, BytesMut};
use quinn::RecvStream;
use yonder_common::{
    codec::{payload_len, CodecError, HEADER_BYTES},
    transport::FrameReadError,
};

/// Bytes read ahead of the current frame at most; bounds what a stream buffers beyond one frame.
const READ_AHEAD: usize = 64 * 1024;

/// Buffers one stream's bytes and hands out its frames.
#[derive(Default)]
pub struct FrameReader {
    buf: BytesMut,
    /// Length (header included) of the frame at the front of `buf` once its header was read.
    consumed: usize,
}

impl FrameReader {
    /// The payload of the next frame; `Ok(None)` when the stream ended cleanly between frames.
    /// The payload stays valid until the next call.
    pub async fn next(&mut self, recv: &mut RecvStream) -> Result<Option<&[u8]>, FrameReadError> {
        self.buf.advance(self.consumed);
        self.consumed = 0;
        loop {
            let need = match self.frame_len()? {
                Some(len) if self.buf.len() >= len => {
                    self.consumed = len;
                    return Ok(Some(&self.buf[HEADER_BYTES..len]));
                }
                Some(len) => len,
                None => HEADER_BYTES,
            };
            let want = (need - self.buf.len()).max(READ_AHEAD);
            match recv.read_chunk(want, true).await? {
                Some(chunk) => self.buf.extend_from_slice(&chunk.bytes),
                None if self.buf.is_empty() => return Ok(None),
                None => {
                    return Err(CodecError::Truncated {
                        have: self.buf.len(),
                        need,
                    }
                    .into())
                }
            }
        }
    }

    /// Length of the frame at the front of the buffer, header included, once its header is here.
    fn frame_len(&self) -> Result<Option<usize>, CodecError> {
        let Some(header) = self.buf.get(..HEADER_BYTES) else {
            return Ok(None);
        };
        let header: [u8; HEADER_BYTES] = header.try_into().expect("slice of HEADER_BYTES");
        Ok(Some(HEADER_BYTES + payload_len(header)?))
    }
}
