//! The agent's side of QUIC with quinn-proto driven on the agent's own thread: no quinn endpoint
//! or connection driver tasks between a request and the socket.
//!
//! With quinn, a request written to a stream wakes quinn's connection task, which builds the
//! packet and sends it on a later turn of the runtime; a reply is read by the endpoint task,
//! passed to the connection task, and only then wakes the task waiting for it. Here the task
//! that writes a request builds and sends its packets itself, and one driver task per connection
//! reads the socket, feeds quinn-proto and completes the waiting request in the same turn.
//! `yonder-bench floor` measured what quinn's client side costs per 4 KiB round trip against
//! the hand-driven server: about 7 µs on one CPU (docs/fault-path.md, "Session 23").
//!
//! The protocol is the same as [`yonder_common::client::Client`]'s: one connection per server, a
//! pool of long-lived bidirectional streams ("lanes") that carry one request at a time, and a
//! lane whose request failed or was cancelled is reset, never reused.

use std::{
    cell::{Cell, RefCell},
    collections::HashMap,
    io::{self, IoSliceMut},
    net::SocketAddr,
    rc::Rc,
    sync::Arc,
    task::{Poll, Waker},
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use quinn::udp::{RecvMeta, Transmit as UdpTransmit, UdpSocketState};
use quinn_proto::{
    ClientConfig, ConnectionError, ConnectionHandle, DatagramEvent, Dir, Endpoint, Event,
    StreamEvent, StreamId, VarInt,
};
use serde::Serialize;
use tokio::{io::Interest, sync::Notify};
use yonder_common::{
    client::{ClientError, Outgoing, Requests, ServerInfo, Timing},
    codec::{decode_payload, encode_frame, payload_len, CodecError, HEADER_BYTES},
    protocol::{Request, Response, PROTOCOL_VERSION},
    transport::{self, FrameReadError},
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
    /// Wakes the driver: an earlier timer, or the connection was closed.
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
        let hello = Request::Hello {
            protocol_version: PROTOCOL_VERSION,
            client: client.to_string(),
        };
        match this.call(&hello).await? {
            Response::Hello {
                server,
                tenant,
                capacity_bytes,
                ..
            } => {
                this.info = Rc::new(ServerInfo {
                    server,
                    tenant,
                    capacity_bytes,
                });
                Ok(this)
            }
            _ => Err(ClientError::Unexpected("hello")),
        }
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
        sh.state.borrow_mut().calls.insert(
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
        // From here until the reply, a cancelled request resets its lane.
        let mut guard = Pending { sh, id: Some(id) };
        write_more(&mut sh.state.borrow_mut(), id);
        flush(sh);
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
                if st.lost.is_none() {
                    let _ = st.conn.send_stream(id).reset(VarInt::from_u32(0));
                    let _ = st.conn.recv_stream(id).stop(VarInt::from_u32(0));
                }
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
            if st.lost.is_none() {
                let _ = st.conn.send_stream(id).reset(VarInt::from_u32(0));
                let _ = st.conn.recv_stream(id).stop(VarInt::from_u32(0));
            }
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

/// Hands QUIC what it takes of call `id`'s request.
fn write_more(st: &mut State, id: StreamId) {
    let State { conn, calls, .. } = st;
    let Some(call) = calls.get_mut(&id) else {
        return;
    };
    if call.sent.is_some() || call.done.is_some() {
        return;
    }
    let mut stream = conn.send_stream(id);
    let mut first = 0;
    while first < call.out.len() {
        match stream.write_chunks(&mut call.out[first..]) {
            Ok(w) => {
                first += w.chunks;
                if w.bytes == 0 {
                    break;
                }
            }
            Err(quinn_proto::WriteError::Blocked) => break,
            Err(quinn_proto::WriteError::Stopped(code)) => {
                finish(
                    call,
                    Err(ClientError::Write(quinn::WriteError::Stopped(code))),
                );
                return;
            }
            Err(quinn_proto::WriteError::ClosedStream) => {
                finish(
                    call,
                    Err(ClientError::Write(quinn::WriteError::ClosedStream)),
                );
                return;
            }
        }
    }
    call.out.drain(..first);
    if call.out.iter().all(|c| c.is_empty()) {
        call.out.clear();
        call.sent = Some(Instant::now());
    }
}

fn finish(call: &mut Call, r: Result<Instant, ClientError>) {
    if call.done.is_none() {
        call.done = Some(r);
        if let Some(w) = call.waker.take() {
            w.wake();
        }
    }
}

/// Reads what stream `id` holds into its call's reply; a stream with no call (a reset lane, or
/// data nobody asked for) is drained and stopped.
fn read_reply(st: &mut State, id: StreamId) {
    let State {
        conn, calls, idle, ..
    } = st;
    let mut stream = conn.recv_stream(id);
    let mut chunks = match stream.read(true) {
        Ok(c) => c,
        Err(_) => return,
    };
    let Some(call) = calls.get_mut(&id) else {
        // No request on this lane (idle, or reset): anything that comes makes it unusable.
        let said = drain(&mut chunks);
        let _ = chunks.finalize();
        if said {
            idle.retain(|l| l.0 != id);
            let _ = conn.recv_stream(id).stop(VarInt::from_u32(0));
        }
        return;
    };
    if call.done.is_some() {
        // The reply is in (its request not yet back from the waiting task): a further event
        // with nothing new (quinn-proto signals every STREAM frame, a resent one too) is
        // harmless, more data means the lane is broken.
        if drain(&mut chunks) {
            call.broken = true;
        }
        let _ = chunks.finalize();
        return;
    }
    let result = loop {
        let want = match call.len {
            None => HEADER_BYTES - call.have_header,
            Some(len) => len - call.payload.len(),
        };
        if want == 0 {
            break Some(Ok(()));
        }
        match chunks.next(want) {
            Ok(Some(chunk)) => match call.len {
                None => {
                    let n = chunk.bytes.len();
                    call.header[call.have_header..call.have_header + n]
                        .copy_from_slice(&chunk.bytes);
                    call.have_header += n;
                    if call.have_header == HEADER_BYTES {
                        match payload_len(call.header) {
                            Ok(len) => {
                                call.len = Some(len);
                                call.payload.clear();
                                call.payload.reserve(len);
                            }
                            Err(e) => break Some(Err(ClientError::Read(e.into()))),
                        }
                    }
                }
                Some(_) => call.payload.extend_from_slice(&chunk.bytes),
            },
            Ok(None) => {
                break Some(Err(if call.have_header == 0 {
                    ClientError::NoReply
                } else {
                    let have = call.have_header + call.payload.len();
                    let need = HEADER_BYTES + call.len.unwrap_or(0);
                    ClientError::Read(CodecError::Truncated { have, need }.into())
                }))
            }
            Err(quinn_proto::ReadError::Blocked) => break None,
            Err(quinn_proto::ReadError::Reset(code)) => {
                break Some(Err(ClientError::Read(FrameReadError::Stream(
                    quinn::ReadError::Reset(code),
                ))))
            }
        }
    };
    let _ = chunks.finalize();
    match result {
        Some(Ok(())) => finish(call, Ok(Instant::now())),
        Some(Err(e)) => finish(call, Err(e)),
        None => {}
    }
}

/// Reads and drops whatever a stream holds (finalizing the read); true if anything came, or
/// the stream ended or was reset: a lane that says anything out of turn cannot be trusted.
fn drain(chunks: &mut quinn_proto::Chunks<'_>) -> bool {
    let mut said = false;
    loop {
        match chunks.next(usize::MAX) {
            Ok(Some(_)) => said = true,
            Ok(None) | Err(quinn_proto::ReadError::Reset(_)) => {
                said = true;
                break;
            }
            Err(quinn_proto::ReadError::Blocked) => break,
        }
    }
    said
}

/// Passes endpoint events both ways, handles the connection's application events, and sends
/// everything the connection has to send.
fn flush(sh: &Shared) {
    pump(sh, true)
}

/// [`flush`]; with `kick`, wakes the driver when quinn-proto now wants an earlier timer than
/// the one it sleeps until (the driver itself re-arms on its next turn).
fn pump(sh: &Shared, kick: bool) {
    let mut st = sh.state.borrow_mut();
    let st = &mut *st;
    loop {
        let mut any = false;
        while let Some(ev) = st.conn.poll_endpoint_events() {
            any = true;
            if let Some(back) = st.endpoint.handle_event(st.handle, ev) {
                st.conn.handle_event(back);
            }
        }
        while let Some(ev) = st.conn.poll() {
            any = true;
            match ev {
                Event::Connected => {
                    st.connected = true;
                    sh.changed.notify_waiters();
                }
                Event::ConnectionLost { reason } => lose(sh, st, reason),
                Event::Stream(StreamEvent::Readable { id }) => read_reply(st, id),
                Event::Stream(StreamEvent::Writable { id }) => write_more(st, id),
                Event::Stream(StreamEvent::Available { dir: Dir::Bi }) => {
                    sh.changed.notify_waiters()
                }
                Event::Stream(StreamEvent::Stopped { id, error_code }) => {
                    st.idle.retain(|l| l.0 != id);
                    if let Some(call) = st.calls.get_mut(&id) {
                        let e = quinn::WriteError::Stopped(error_code);
                        finish(call, Err(ClientError::Write(e)));
                    }
                }
                Event::Stream(StreamEvent::Opened { dir }) => {
                    // The protocol has the client open every stream: refuse the server's.
                    while let Some(id) = st.conn.streams().accept(dir) {
                        let _ = st.conn.recv_stream(id).stop(VarInt::from_u32(0));
                    }
                }
                _ => {}
            }
        }
        let now = Instant::now();
        let segments =
            (GSO_BYTES / st.conn.current_mtu() as usize).clamp(1, sh.udp.max_gso_segments());
        loop {
            st.send_buf.clear();
            let Some(t) = st.conn.poll_transmit(now, segments, &mut st.send_buf) else {
                break;
            };
            any = true;
            send(&sh.udp, &sh.socket, &st.send_buf, &t);
        }
        if !any {
            break;
        }
    }
    // The driver sleeps until the timer it armed: wake it if quinn-proto wants an earlier one.
    let due = st.conn.poll_timeout();
    if kick && due.is_some_and(|d| st.armed.is_none_or(|a| d < a)) {
        sh.kick.notify_one();
    }
}

/// The connection ended: every request on it fails.
fn lose(sh: &Shared, st: &mut State, reason: ConnectionError) {
    for call in st.calls.values_mut() {
        finish(call, Err(ClientError::Connection(reason.clone())));
    }
    st.idle.clear();
    st.lost.get_or_insert(reason);
    sh.changed.notify_waiters();
}

fn close(sh: &Shared) {
    if sh.closed.replace(true) {
        return;
    }
    {
        let mut st = sh.state.borrow_mut();
        if st.lost.is_none() {
            st.conn.close(
                Instant::now(),
                VarInt::from_u32(0),
                Bytes::from_static(b"bye"),
            );
        }
    }
    flush(sh);
    sh.kick.notify_one();
}

/// The connection's driver: reads the socket and runs the timers until the connection is over.
async fn drive(sh: Rc<Shared>) {
    let mut closed_at: Option<Instant> = None;
    loop {
        let due = {
            let mut st = sh.state.borrow_mut();
            if st.conn.is_drained() {
                break;
            }
            let due = st.conn.poll_timeout();
            st.armed = due;
            due
        };
        if sh.closed.get() {
            let at = *closed_at.get_or_insert_with(Instant::now);
            if at.elapsed() >= CLOSE_LINGER {
                break;
            }
        }
        let sleep_until = due.map_or_else(
            || tokio::time::Instant::now() + Duration::from_secs(3600),
            tokio::time::Instant::from_std,
        );
        let sleep_until = if sh.closed.get() {
            sleep_until.min(tokio::time::Instant::now() + CLOSE_LINGER)
        } else {
            sleep_until
        };
        tokio::select! {
            r = sh.socket.readable() => match r {
                Ok(()) => {
                    if receive(&sh).is_err() {
                        let mut st = sh.state.borrow_mut();
                        let st = &mut *st;
                        let reason = ConnectionError::TransportError(quinn_proto::TransportError {
                            code: quinn_proto::TransportErrorCode::INTERNAL_ERROR,
                            frame: None,
                            reason: "the socket failed".into(),
                        });
                        lose(&sh, st, reason);
                        break;
                    }
                }
                Err(_) => break,
            },
            () = tokio::time::sleep_until(sleep_until) => {
                let mut st = sh.state.borrow_mut();
                let now = Instant::now();
                if st.conn.poll_timeout().is_some_and(|t| t <= now) {
                    st.conn.handle_timeout(now);
                }
            }
            () = sh.kick.notified() => {}
        }
        pump(&sh, false);
    }
    // Whatever still waits fails now.
    let mut st = sh.state.borrow_mut();
    let st = &mut *st;
    if st.lost.is_none() {
        lose(&sh, st, ConnectionError::LocallyClosed);
    }
}

/// Reads every datagram waiting and hands each to the endpoint and the connection.
fn receive(sh: &Shared) -> io::Result<()> {
    let mut st = sh.state.borrow_mut();
    let st = &mut *st;
    loop {
        let mut meta = [RecvMeta::default()];
        let n = {
            let mut bufs = [IoSliceMut::new(&mut st.recv_buf)];
            let socket = &sh.socket;
            match socket.try_io(Interest::READABLE, || {
                sh.udp.recv(socket.into(), &mut bufs, &mut meta)
            }) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // ICMP errors of an earlier send (a server that is gone): QUIC's timers tell.
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
        };
        if n == 0 {
            return Ok(());
        }
        let m = meta[0];
        let now = Instant::now();
        let stride = m.stride.max(1);
        for start in (0..m.len).step_by(stride) {
            let datagram = BytesMut::from(&st.recv_buf[start..(start + stride).min(m.len)]);
            st.send_buf.clear();
            match st
                .endpoint
                .handle(now, m.addr, m.dst_ip, None, datagram, &mut st.send_buf)
            {
                Some(DatagramEvent::ConnectionEvent(ch, ev)) if ch == st.handle => {
                    st.conn.handle_event(ev)
                }
                Some(DatagramEvent::Response(t)) => send(&sh.udp, &sh.socket, &st.send_buf, &t),
                // A client accepts no connections; anything else is not ours.
                _ => {}
            }
        }
    }
}

/// Sends one transmit of quinn-proto (several datagrams with segmentation offload). A full
/// socket buffer, or an error, drops it as a network would: QUIC sends it again.
fn send(
    udp: &UdpSocketState,
    socket: &tokio::net::UdpSocket,
    buf: &[u8],
    t: &quinn_proto::Transmit,
) {
    let transmit = UdpTransmit {
        destination: t.destination,
        ecn: None,
        contents: &buf[..t.size],
        segment_size: t.segment_size,
        src_ip: t.src_ip,
    };
    if let Err(e) = udp.send(socket.into(), &transmit) {
        if e.kind() != io::ErrorKind::WouldBlock {
            tracing::debug!("sending to {}: {e}", t.destination);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yonder_common::{
        protocol::{PageData, ReadItem, ReadResult, WriteItem, WriteResult},
        tls, PageKey, PAGE_SIZE,
    };

    fn page(i: u64) -> Vec<u8> {
        (0..PAGE_SIZE)
            .map(|b| (i as usize * 31 + b * 7) as u8)
            .collect()
    }

    /// Requests cancelled at every stage (before their frame leaves, in flight, with their reply
    /// half in) never disturb the ones after them on the same connection: the lanes they used
    /// are reset, the others keep serving, and every page reads back right. (The stream events
    /// with nothing new that a resent frame brings, which once condemned good lanes, are not
    /// provoked here: an agent under load met them, docs/fault-path.md.)
    #[test]
    fn cancelled_requests_leave_the_connection_serving_every_page_right() {
        let embedded = crate::embedded::Embedded::start(64 << 20).unwrap();
        let files = tls::TlsFiles::in_dir(
            embedded.certs().unwrap(),
            yonder_common::certs::DEFAULT_CLIENT,
        );
        let config = tls::client_config(&files, Some(transport::PAGE_MTU)).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async move {
            let c = DrivenClient::connect(config, embedded.addr, "localhost", "test")
                .await
                .unwrap();
            const PAGES: u64 = 64;
            let items = (0..PAGES)
                .map(|i| WriteItem {
                    key: PageKey::new(1, i),
                    version: 1,
                    data: PageData::Bytes(page(i)),
                })
                .collect();
            let stored = c.write(items).await.unwrap();
            assert!(stored.iter().all(|r| *r == WriteResult::Stored));
            let read = |first: u64| {
                (first..first + 8)
                    .map(|i| ReadItem {
                        key: PageKey::new(1, i % PAGES),
                        version: 1,
                    })
                    .collect::<Vec<_>>()
            };
            let mut cancelled = 0;
            for n in 0..400u64 {
                // Deadlines from nothing to about a round trip: some requests never leave, some
                // are cut off in flight, some make it.
                let wait = Duration::from_micros((n * 37) % 150);
                if tokio::time::timeout(wait, c.read(read(n))).await.is_err() {
                    cancelled += 1;
                }
                let got = c.read(read(n)).await.unwrap();
                for (k, r) in got.into_iter().enumerate() {
                    let i = (n + k as u64) % PAGES;
                    match r {
                        ReadResult::Found {
                            version: 1,
                            data: PageData::Bytes(b),
                        } => assert_eq!(b, page(i), "page {i} after {n} rounds"),
                        other => panic!("page {i}: {other:?}"),
                    }
                }
            }
            assert!(
                cancelled > 0,
                "no request was cancelled: the test tests nothing"
            );
            // Many requests at once, on as many lanes.
            let all = (0..32u64).map(|n| c.read(read(n * 2)));
            for r in futures_util::future::join_all(all).await {
                assert_eq!(r.unwrap().len(), 8);
            }
            assert!(c.stats().await.is_ok());
        });
    }
}
