//! QUIC transport settings shared by both ends, and frame I/O on QUIC streams.

use std::time::Duration;

use quinn::{RecvStream, SendStream};

use crate::codec::{payload_len, CodecError, HEADER_BYTES};

/// How long a silent connection lives before it is considered dead.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Interval of keep-alive packets; well below [`IDLE_TIMEOUT`].
pub const KEEP_ALIVE: Duration = Duration::from_secs(2);

/// Transport parameters: many concurrent request streams, windows sized for full write batches,
/// and path-MTU discovery allowed to grow so that a 4 KiB page fits one packet where the path
/// allows it (a 1452-byte MTU splits every page into three packets).
pub fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(4096u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .stream_receive_window((4u32 << 20).into())
        .receive_window((64u32 << 20).into())
        .send_window(64 << 20)
        .keep_alive_interval(Some(KEEP_ALIVE))
        .datagram_receive_buffer_size(None);
    if let Ok(idle) = IDLE_TIMEOUT.try_into() {
        t.max_idle_timeout(Some(idle));
    }
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(8952);
    t.mtu_discovery_config(Some(mtu));
    t
}

/// Why a frame could not be read from a stream.
#[derive(Debug, thiserror::Error)]
pub enum FrameReadError {
    /// The frame itself is invalid (too large, or the stream ended inside it).
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The stream failed (reset by the peer, connection lost).
    #[error("stream read failed: {0}")]
    Stream(#[from] quinn::ReadError),
}

/// Reads one frame's payload into `buf`. Returns `Ok(false)` when the stream ended cleanly
/// before a new frame began.
pub async fn read_frame(recv: &mut RecvStream, buf: &mut Vec<u8>) -> Result<bool, FrameReadError> {
    let mut header = [0; HEADER_BYTES];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(false),
        Err(quinn::ReadExactError::FinishedEarly(have)) => {
            return Err(CodecError::Truncated {
                have,
                need: HEADER_BYTES,
            }
            .into())
        }
        Err(quinn::ReadExactError::ReadError(e)) => return Err(e.into()),
    }
    let len = payload_len(header)?;
    buf.clear();
    buf.resize(len, 0);
    match recv.read_exact(buf).await {
        Ok(()) => Ok(true),
        Err(quinn::ReadExactError::FinishedEarly(have)) => Err(CodecError::Truncated {
            have: HEADER_BYTES + have,
            need: HEADER_BYTES + len,
        }
        .into()),
        Err(quinn::ReadExactError::ReadError(e)) => Err(e.into()),
    }
}

/// Writes an encoded frame (header included) to a stream.
pub async fn write_frame(send: &mut SendStream, frame: &[u8]) -> Result<(), quinn::WriteError> {
    send.write_all(frame).await
}
