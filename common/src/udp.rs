//! The UDP side of a QUIC end driven by hand (quinn-proto without quinn's tasks): the memory
//! server's `driven` path and the agent's own client read and send datagrams the same way.

use std::{
    io::{self, IoSliceMut},
    os::fd::AsFd,
};

use quinn::udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};

/// Receives one batch of datagrams (several with receive offload) into `buf`. Interrupted calls
/// and the ICMP errors of an earlier send (a peer that is gone: QUIC's timers tell) are retried;
/// `WouldBlock` is returned as such.
pub fn recv<S: AsFd>(state: &UdpSocketState, socket: &S, buf: &mut [u8]) -> io::Result<RecvMeta> {
    loop {
        let mut meta = [RecvMeta::default()];
        let mut bufs = [IoSliceMut::new(buf)];
        match state.recv(UdpSockRef::from(socket), &mut bufs, &mut meta) {
            Ok(0) => return Err(io::ErrorKind::WouldBlock.into()),
            Ok(_) => return Ok(meta[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionRefused
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::HostUnreachable
                        | io::ErrorKind::NetworkUnreachable
                ) =>
            {
                continue
            }
            Err(e) => return Err(e),
        }
    }
}

/// The datagrams of one received batch, each as its own slice of `buf`.
pub fn datagrams<'a>(buf: &'a [u8], m: &RecvMeta) -> impl Iterator<Item = &'a [u8]> + 'a {
    let stride = m.stride.max(1);
    let len = m.len;
    (0..len)
        .step_by(stride)
        .map(move |start| &buf[start..(start + stride).min(len)])
}

/// Sends one transmit of quinn-proto (several datagrams with segmentation offload) from `buf`.
/// A full socket buffer, or an error, drops it as a network would: QUIC sends it again.
pub fn send<S: AsFd>(state: &UdpSocketState, socket: &S, buf: &[u8], t: &quinn_proto::Transmit) {
    let transmit = Transmit {
        destination: t.destination,
        ecn: None,
        contents: &buf[..t.size],
        segment_size: t.segment_size,
        src_ip: t.src_ip,
    };
    if let Err(e) = state.send(UdpSockRef::from(socket), &transmit) {
        if e.kind() != io::ErrorKind::WouldBlock {
            tracing::debug!("sending to {}: {e}", t.destination);
        }
    }
}
