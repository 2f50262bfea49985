//! QUIC transport settings shared by both ends, and frame I/O on QUIC streams.

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use quinn::{RecvStream, SendStream};
use socket2::{Domain, Protocol, Socket, Type};

use crate::codec::{payload_len, CodecError, HEADER_BYTES};

/// How long a silent connection lives before it is considered dead.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Interval of keep-alive packets; well below [`IDLE_TIMEOUT`].
pub const KEEP_ALIVE: Duration = Duration::from_secs(2);

/// Concurrent request streams per connection. A stream holds what its peer sent of a frame (up
/// to ~1.1 MiB); what a connection can make the other side buffer is capped by the connection's
/// receive window (64 MiB) whatever the number of streams.
pub const MAX_STREAMS: u32 = 256;

/// Largest UDP payload an endpoint accepts (advertised to peers). Each sender picks its own size.
pub const MAX_UDP_PAYLOAD: u16 = 9000;

/// Smallest datagram size QUIC allows.
pub const MIN_MTU: u16 = 1200;

/// A datagram size that carries one 4 KiB page with its frame and QUIC overhead in one packet;
/// what the embedded loopback setups use.
pub const PAGE_MTU: u16 = 4400;

/// Transport parameters: many concurrent request streams and windows sized for full write
/// batches.
///
/// `mtu` fixes the datagram size for a network whose path MTU is known (loopback, jumbo frames):
/// one packet per page instead of three roughly doubles the pages/s of single-page requests.
/// Without it, quinn's path-MTU discovery runs from 1200 up to 1452 bytes, which is safe on any
/// network. See docs/protocol.md for the measurements behind this.
pub fn transport_config(mtu: Option<u16>) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(MAX_STREAMS.into())
        .max_concurrent_uni_streams(0u32.into())
        .stream_receive_window((4u32 << 20).into())
        .receive_window((64u32 << 20).into())
        .send_window(64 << 20)
        .keep_alive_interval(Some(KEEP_ALIVE))
        .datagram_receive_buffer_size(None);
    if let Some(mtu) = mtu {
        // A known path: use that size from the first packet, never probe, never fall below it.
        t.initial_mtu(mtu).min_mtu(mtu).mtu_discovery_config(None);
    }
    if let Ok(idle) = IDLE_TIMEOUT.try_into() {
        t.max_idle_timeout(Some(idle));
    }
    t
}

/// Socket buffer size asked for; the kernel caps it at `net.core.{r,w}mem_max`. The default
/// (~208 KiB) overflows under a burst of write batches and turns into losses and retransmits.
pub const SOCKET_BUFFER_BYTES: usize = 8 << 20;

/// Endpoint settings shared by servers and clients.
pub fn endpoint_config() -> quinn::EndpointConfig {
    let mut config = quinn::EndpointConfig::default();
    config
        .max_udp_payload_size(MAX_UDP_PAYLOAD)
        .expect("MAX_UDP_PAYLOAD is within QUIC's limits");
    config
}

/// Checks a configured datagram size.
pub fn check_mtu(mtu: u16) -> Result<u16, String> {
    if (MIN_MTU..=MAX_UDP_PAYLOAD).contains(&mtu) {
        Ok(mtu)
    } else {
        Err(format!(
            "mtu {mtu} is outside {MIN_MTU}..={MAX_UDP_PAYLOAD}"
        ))
    }
}

/// Binds a UDP socket with large buffers.
pub fn udp_socket(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: a smaller buffer is slower, not wrong.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Creates a QUIC endpoint on `addr`; a server endpoint when `server` is given. Must be called
/// inside a Tokio runtime. Its socket never makes a segmentation-offload send over 64 KiB
/// ([`crate::gso`]).
pub fn endpoint(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> io::Result<quinn::Endpoint> {
    let runtime = Arc::new(quinn::TokioRuntime);
    let socket = Arc::new(crate::gso::CappedGso::new(quinn::Runtime::wrap_udp_socket(
        &*runtime,
        udp_socket(addr)?,
    )?));
    quinn::Endpoint::new_with_abstract_socket(endpoint_config(), server, socket, runtime)
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
    // The buffer grows with what arrives, not with what the header announces: a peer that
    // sends a header and stalls makes us hold what it sent, not a megabyte per stream.
    while buf.len() < len {
        match recv.read_chunk(len - buf.len(), true).await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
            Ok(None) => {
                return Err(CodecError::Truncated {
                    have: HEADER_BYTES + buf.len(),
                    need: HEADER_BYTES + len,
                }
                .into())
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

/// Writes an encoded frame (header included) to a stream.
pub async fn write_frame(send: &mut SendStream, frame: &[u8]) -> Result<(), quinn::WriteError> {
    send.write_all(frame).await
}
