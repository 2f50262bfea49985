//! The agent's side of QUIC with quinn-proto driven on the agent's own thread: no quinn endpoint
//! or connection driver tasks between a request and the socket.
//!
//! With quinn, a request written to a stream wakes quinn's connection task, which builds the
//! packet and sends it on a later turn of the runtime; a reply is read by the endpoint task,
//! passed to the connection task, and only then wakes the task waiting for it. Here a request
//! alone on its connection (a fault's read) is built and sent by the task that writes it; one
//! written while others are in flight is left to the connection's driver task, which runs after
//! the requests of the same turn and sends them packed into as few datagrams as they fit. The
//! driver also reads the socket, feeds quinn-proto and completes the waiting request in the
//! same turn.
//! `yonder-bench floor` measured what quinn's client side costs per 4 KiB round trip against
//! the hand-driven server: about 7 µs on one CPU (docs/fault-path.md, "Session 23").
//!
//! The protocol is the same as [`yonder_common::client::Client`]'s: one connection per server, a
//! pool of long-lived bidirectional streams ("lanes") that carry one request at a time, and a
//! lane whose request failed or was cancelled is reset, never reused.

use std::{
    cell::{Cell, RefCell},
    collections::HashMap,
    io,
    net::SocketAddr,
    rc::Rc,
    sync::Arc,
    task::{Poll, Waker},
    time::{Duration, Instant},
};

use bytes::Bytes;
use quinn::udp::UdpSocketState;
use quinn_proto::{ClientConfig, ConnectionError, ConnectionHandle, Dir, Endpoint, StreamId};
use serde::Serialize;
use tokio::sync::Notify;
use yonder_common::{
    client::{ClientError, Outgoing, Requests, ServerInfo, Timing},
    codec::{decode_payload, encode_frame, HEADER_BYTES},
    protocol::Response,
    transport,
};

/// Largest segmentation-offload send (as the memory server's driven path).
const GSO_BYTES: usize = yonder_common::gso::MAX_GSO_BYTES;
/// Lanes kept idle for reuse, and requests in flight at once: as many streams as the server
/// lets a connection keep open.
const MAX_LANES: usize = transport::MAX_STREAMS as usize;
/// A lane's reply buffer above this after a reply (a large read) is given back, not kept.
const BUF_KEPT_BYTES: usize = 256 * 1024;
/// How long a closed connection's driver waits for the close to reach the server.
const CLOSE_LINGER: Duration = Duration::from_millis(200);

mod driver;
mod streams;
#[cfg(test)]
mod tests;

use driver::{close, drive, flush};
use streams::{abandon, write_more};

/// Numbers connections, so that a reconnection is told apart from the connection it replaces.
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// One request on its lane: what is still to be written, and the reply as it comes.
struct Call {
    /// Frame bytes QUIC has not taken yet (flow control).
    out: Vec<Bytes>,
    /// When the last byte of the request was taken by QUIC.
    sent: Option<Instant>,
    header: [u8; HEADER_BYTES],
    have_header: usize,
    /// The reply's payload length, once its header is in.
    len: Option<usize>,
    payload: Vec<u8>,
    /// The outcome, once known (with when the reply was complete).
    done: Option<Result<Instant, ClientError>>,
    waker: Option<Waker>,
    /// Data came after the reply: the lane is not reused.
    broken: bool,
}

/// The connection and what rides on it.
struct State {
    endpoint: Endpoint,
    handle: ConnectionHandle,
    conn: quinn_proto::Connection,
    connected: bool,
    /// Why the connection ended, once it has.
    lost: Option<ConnectionError>,
    /// Lanes ready for a request, with the buffer their last reply used.
    idle: Vec<(StreamId, Vec<u8>)>,
    calls: HashMap<StreamId, Call>,
    /// The timer the driver sleeps until (quinn-proto's earliest timer when it last looked).
    armed: Option<Instant>,
    send_buf: Vec<u8>,
    recv_buf: Vec<u8>,
}

struct Shared {
    id: u64,
    socket: tokio::net::UdpSocket,
    udp: UdpSocketState,
    state: RefCell<State>,
    /// Wakes the driver: an earlier timer, requests written to be sent, or the connection was
    /// closed.
    kick: Notify,
    /// Connected or lost; a stream became available.
    changed: Notify,
    permits: tokio::sync::Semaphore,
    closed: Cell<bool>,
}

/// A connection to one memory server over quinn-proto driven on this thread (call from a
/// `LocalSet`: the connection's driver is a local task).
#[derive(Clone)]
pub struct DrivenClient {
    shared: Rc<Shared>,
    info: Rc<ServerInfo>,
    _owner: Rc<Owner>,
}

/// Closes the connection when the last handle goes.
struct Owner(Rc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        close(&self.0);
    }
}

impl std::fmt::Debug for DrivenClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DrivenClient")
            .field("id", &self.shared.id)
            .field("info", &*self.info)
            .finish()
    }
}

impl DrivenClient {
    /// Connects from a fresh socket, completes the TLS handshake and the protocol hello.
    pub async fn connect(
        config: ClientConfig,
        addr: SocketAddr,
        server_name: &str,
        client: &str,
    ) -> Result<Self, ClientError> {
        let bind: SocketAddr = if addr.is_ipv6() {
            "[::]:0".parse().expect("literal address")
        } else {
            "0.0.0.0:0".parse().expect("literal address")
        };
        let io_err = |e: io::Error| {
            ClientError::Connection(ConnectionError::TransportError(
                quinn_proto::TransportError {
                    code: quinn_proto::TransportErrorCode::INTERNAL_ERROR,
                    frame: None,
                    reason: format!("socket: {e}"),
                },
            ))
        };
        let socket = transport::udp_socket(bind).map_err(io_err)?;
        socket.set_nonblocking(true).map_err(io_err)?;
        let udp = UdpSocketState::new((&socket).into()).map_err(io_err)?;
        let recv_len = (transport::MAX_UDP_PAYLOAD as usize * udp.gro_segments()).max(GSO_BYTES);
        let mut endpoint = Endpoint::new(Arc::new(transport::endpoint_config()), None, true, None);
        let (handle, conn) = endpoint.connect(Instant::now(), config, addr, server_name)?;
        let shared = Rc::new(Shared {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            socket: tokio::net::UdpSocket::from_std(socket).map_err(io_err)?,
            udp,
            state: RefCell::new(State {
                endpoint,
                handle,
                conn,
                connected: false,
                lost: None,
                idle: Vec::new(),
                calls: HashMap::new(),
                armed: None,
                send_buf: Vec::with_capacity(GSO_BYTES),
                recv_buf: vec![0; recv_len],
            }),
            kick: Notify::new(),
            changed: Notify::new(),
            permits: tokio::sync::Semaphore::new(MAX_LANES),
            closed: Cell::new(false),
        });
        let owner = Rc::new(Owner(shared.clone()));
        tokio::task::spawn_local(drive(shared.clone()));
        flush(&shared);
        loop {
            let changed = shared.changed.notified();
            {
                let st = shared.state.borrow();
                if let Some(e) = &st.lost {
                    return Err(ClientError::Connection(e.clone()));
                }
                if st.connected {
                    break;
                }
            }
            changed.await;
        }
        let mut this = Self {
            shared,
            info: Rc::new(ServerInfo {
                server: String::new(),
                tenant: String::new(),
                capacity_bytes: 0,
            }),
            _owner: owner,
        };
        this.info = Rc::new(yonder_common::client::hello(&this, client).await?);
        Ok(this)
    }

    /// What the server said in its hello.
    pub fn info(&self) -> &ServerInfo {
        &self.info
    }

    /// This connection's number (a reconnection gets a new one).
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// Datagrams received on this connection so far.
    pub fn datagrams_received(&self) -> u64 {
        self.shared.state.borrow().conn.stats().udp_rx.datagrams
    }

    /// Datagrams sent on this connection so far.
    pub fn datagrams_sent(&self) -> u64 {
        self.shared.state.borrow().conn.stats().udp_tx.datagrams
    }

    /// Closes the connection politely (requests in flight fail).
    pub fn close(&self) {
        close(&self.shared);
    }
}

impl Requests for DrivenClient {
    async fn exchange<R: Serialize>(
        &self,
        req: Outgoing<'_, R>,
    ) -> Result<(Response, Timing), ClientError> {
        let sh = &self.shared;
        let _permit = sh
            .permits
            .acquire()
            .await
            .map_err(|_| ClientError::NoReply)?;
        let (id, mut buf) = lane(sh).await?;
        let out = match req {
            Outgoing::Message(m) => {
                if let Err(e) = encode_frame(m, &mut buf) {
                    // Nothing was sent: the lane is as good as before.
                    sh.state.borrow_mut().idle.push((id, buf));
                    return Err(e.into());
                }
                vec![Bytes::copy_from_slice(&buf)]
            }
            Outgoing::Chunks(chunks) => chunks,
        };
        // From here until the reply, a cancelled request resets its lane.
        let mut guard = Pending { sh, id: None };
        let alone = {
            let mut st = sh.state.borrow_mut();
            // Alone on the connection, the request goes out at once. With others in flight, more
            // requests are likely to be written in this turn of the runtime (replies come in
            // bursts): the driver, which runs after them, sends them all, packed into as few
            // datagrams as they fit (a datagram per request halved the server's throughput).
            let alone = st.calls.is_empty();
            st.calls.insert(
                id,
                Call {
                    out,
                    sent: None,
                    header: [0; HEADER_BYTES],
                    have_header: 0,
                    len: None,
                    payload: buf,
                    done: None,
                    waker: None,
                    broken: false,
                },
            );
            guard.id = Some(id);
            write_more(&mut st, id);
            alone
        };
        if alone {
            flush(sh);
        } else {
            sh.kick.notify_one();
        }
        let outcome = std::future::poll_fn(|cx| {
            let mut st = sh.state.borrow_mut();
            let Some(call) = st.calls.get_mut(&id) else {
                return Poll::Ready(Err(ClientError::NoReply));
            };
            match call.done.take() {
                Some(r) => Poll::Ready(r),
                None => {
                    call.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await;
        let replied = match outcome {
            Ok(t) => t,
            // The guard resets the lane.
            Err(e) => return Err(e),
        };
        guard.id = None;
        let call = sh
            .state
            .borrow_mut()
            .calls
            .remove(&id)
            .expect("the call completed above");
        let sent = call.sent.unwrap_or(replied);
        let resp = decode_payload::<Response>(&call.payload);
        let mut payload = call.payload;
        if payload.capacity() > BUF_KEPT_BYTES {
            payload = Vec::new();
        }
        {
            let mut st = sh.state.borrow_mut();
            if call.broken {
                abandon(&mut st, id);
            } else if st.idle.len() < MAX_LANES && st.lost.is_none() {
                st.idle.push((id, payload));
            }
        }
        match resp? {
            Response::Error { code, message } => Err(ClientError::Server { code, message }),
            resp => Ok((resp, Timing { sent, replied })),
        }
    }
}

/// A request between its first byte and its reply: dropped early (cancelled, or failed), it
/// resets its lane, which never carries anything again.
struct Pending<'a> {
    sh: &'a Rc<Shared>,
    id: Option<StreamId>,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        let Some(id) = self.id else {
            return;
        };
        {
            let mut st = self.sh.state.borrow_mut();
            st.calls.remove(&id);
            abandon(&mut st, id);
        }
        flush(self.sh);
    }
}

/// An idle lane, or a new stream (waiting for the server to allow one).
async fn lane(sh: &Rc<Shared>) -> Result<(StreamId, Vec<u8>), ClientError> {
    loop {
        let changed = sh.changed.notified();
        {
            let mut st = sh.state.borrow_mut();
            if let Some(e) = &st.lost {
                return Err(ClientError::Connection(e.clone()));
            }
            if let Some(l) = st.idle.pop() {
                return Ok(l);
            }
            if let Some(id) = st.conn.streams().open(Dir::Bi) {
                return Ok((id, Vec::new()));
            }
        }
        changed.await;
    }
}
