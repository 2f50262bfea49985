//! Request frames read from a stream chunk by chunk.
//!
//! `transport::read_frame` reads a frame with two exact reads (header, then payload), each a poll
//! of the stream under the connection's lock. A request of a page read is a few dozen bytes that
//! arrive in one QUIC frame: here one chunk read takes the whole request, and the frame is parsed
//! from the buffered bytes. A frame that did not arrive whole (a write of several packets) is
//! completed with one exact read into a buffer sized for it.

use bytes::{Buf, BytesMut};
use quinn::{ReadExactError, RecvStream};
use yonder_common::{
    codec::{payload_len, CodecError, HEADER_BYTES},
    transport::FrameReadError,
};

/// Bytes one chunk read may take while no frame header is buffered; bounds what a stream buffers
/// beyond one frame.
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
                Some(len) => return self.read_rest(recv, len).await.map(Some),
                None => HEADER_BYTES,
            };
            match recv.read_chunk(READ_AHEAD, true).await? {
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

    /// Reads the rest of a frame of `len` bytes (header included) whose start is buffered. An
    /// exact read takes every chunk already received per poll, where chunk reads would take one
    /// per poll: a 16-page write is 16 packets; each exact read covers at most [`READ_AHEAD`].
    async fn read_rest(
        &mut self,
        recv: &mut RecvStream,
        len: usize,
    ) -> Result<&[u8], FrameReadError> {
        // The buffer grows by at most READ_AHEAD per exact read, not to what the header announces
        // at once: a peer that sends a header and stalls makes us hold what it sent plus one
        // step, not a megabyte per stream (tests/tests/security.rs, the flood test).
        while self.buf.len() < len {
            let have = self.buf.len();
            let step = (len - have).min(READ_AHEAD);
            self.buf.resize(have + step, 0);
            match recv.read_exact(&mut self.buf[have..]).await {
                Ok(()) => {}
                Err(ReadExactError::FinishedEarly(more)) => {
                    return Err(CodecError::Truncated {
                        have: have + more,
                        need: len,
                    }
                    .into())
                }
                Err(ReadExactError::ReadError(e)) => return Err(e.into()),
            }
        }
        self.consumed = len;
        Ok(&self.buf[HEADER_BYTES..len])
    }

    /// Length of the frame at the front of the buffer, header included, once its header is here.
    fn frame_len(&self) -> Result<Option<usize>, CodecError> {
        frame_len(&self.buf)
    }
}

/// Length (header included) of the frame at the front of `buf`, once its header is there; an
/// error for a header announcing more than a frame may hold. Shared with the driven path.
pub(crate) fn frame_len(buf: &[u8]) -> Result<Option<usize>, CodecError> {
    let Some(header) = buf.get(..HEADER_BYTES) else {
        return Ok(None);
    };
    let header: [u8; HEADER_BYTES] = header.try_into().expect("slice of HEADER_BYTES");
    Ok(Some(HEADER_BYTES + payload_len(header)?))
}
