//! A UDP socket for quinn whose segmentation-offload (GSO) sends never exceed what one
//! `sendmsg` can carry.
//!
//! quinn batches up to 10 datagrams of one size into one GSO send, whatever that size. Linux
//! refuses a GSO send whose total is larger than a UDP datagram can be (64 KiB) with `EMSGSIZE`,
//! and quinn-udp takes `EMSGSIZE` for a failed MTU probe: it reports success, and every packet
//! of the batch is lost. With datagrams of 8,800 bytes (`--mtu 8800`, jumbo frames) a batch of 8
//! or more was lost every time, and loss recovery stalled the fault path for tens of
//! milliseconds at a time (docs/protocol.md, "Datagram size"). This wrapper splits such a batch
//! into sends of at most [`MAX_GSO_BYTES`].

use std::{
    fmt,
    io::{self, IoSliceMut},
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use quinn::{
    udp::{RecvMeta, Transmit},
    AsyncUdpSocket, UdpPoller,
};

/// Largest total of one GSO send: a UDP datagram's 65,535 bytes less the UDP and IPv4 headers.
pub const MAX_GSO_BYTES: usize = 65_535 - 8 - 20;

/// A socket that splits GSO batches larger than [`MAX_GSO_BYTES`]; everything else goes to the
/// wrapped socket unchanged.
pub struct CappedGso {
    inner: Arc<dyn AsyncUdpSocket>,
}

impl CappedGso {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn AsyncUdpSocket>) -> Self {
        Self { inner }
    }
}

impl fmt::Debug for CappedGso {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CappedGso")
            .field("inner", &self.inner)
            .finish()
    }
}

/// Whether a transmit of `len` bytes in segments of `segment_size` must be cut.
fn too_big(len: usize, segment_size: Option<usize>) -> Option<usize> {
    segment_size.filter(|&s| s > 0 && len > MAX_GSO_BYTES)
}

/// The pieces one transmit is sent as: `(start, end)` byte ranges of its contents, each a whole
/// number of segments and at most [`MAX_GSO_BYTES`] (a single segment is never split).
pub fn pieces(len: usize, segment_size: Option<usize>) -> impl Iterator<Item = (usize, usize)> {
    // One piece, the whole, when nothing needs cutting.
    let step =
        too_big(len, segment_size).map_or(len.max(1), |seg| (MAX_GSO_BYTES / seg).max(1) * seg);
    (0..len.max(1))
        .step_by(step)
        .map(move |start| (start, (start + step).min(len)))
}

impl AsyncUdpSocket for CappedGso {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        // Every packet goes through here: the common case costs one comparison, no allocation.
        if too_big(transmit.contents.len(), transmit.segment_size).is_none() {
            return self.inner.try_send(transmit);
        }
        // A piece that would block after earlier ones went out makes quinn send the whole batch
        // again (its `buffered_transmit`): the receiver drops the duplicate packets.
        for (start, end) in pieces(transmit.contents.len(), transmit.segment_size) {
            let contents = &transmit.contents[start..end];
            let segment_size = transmit.segment_size.filter(|&s| contents.len() > s);
            self.inner.try_send(&Transmit {
                destination: transmit.destination,
                ecn: transmit.ecn,
                contents,
                segment_size,
                src_ip: transmit.src_ip,
            })?;
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_batches_and_single_datagrams_go_whole() {
        assert_eq!(
            pieces(10 * 4400, Some(4400)).collect::<Vec<_>>(),
            vec![(0, 44_000)]
        );
        assert_eq!(pieces(1200, None).collect::<Vec<_>>(), vec![(0, 1200)]);
        assert_eq!(
            pieces(MAX_GSO_BYTES, Some(1)).collect::<Vec<_>>(),
            vec![(0, MAX_GSO_BYTES)]
        );
    }

    #[test]
    fn a_batch_over_64_kib_is_cut_at_segment_boundaries() {
        // 10 datagrams of 8,800 bytes: 7 fit (61,600), then 3.
        assert_eq!(
            pieces(10 * 8800, Some(8800)).collect::<Vec<_>>(),
            vec![(0, 61_600), (61_600, 88_000)]
        );
        // The last datagram of a batch may be short.
        assert_eq!(
            pieces(9 * 8800 + 100, Some(8800)).collect::<Vec<_>>(),
            vec![(0, 61_600), (61_600, 79_300)]
        );
        for (start, end) in pieces(10 * 9000, Some(9000)) {
            assert!(end - start <= MAX_GSO_BYTES);
            assert_eq!(start % 9000, 0);
        }
    }
}
