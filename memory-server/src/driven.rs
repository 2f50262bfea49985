//! The request path with quinn-proto driven by one thread: no Tokio tasks, no quinn driver.
//!
//! `yonder-bench floor` measured a QUIC round trip with quinn (Tokio, an endpoint driver task, a
//! connection driver task, a task per stream) against the same round trip with quinn-proto, its
//! I/O-free core, driven by hand: the server's side alone took about 5 µs off a 4 KiB round
//! trip on one CPU and about 12 µs unpinned (medians of four alternated pairs,
//! docs/server-path.md). This loop is that server: one thread reads the
//! UDP socket (with GRO), hands each datagram to quinn-proto's `Endpoint` and `Connection`,
//! answers every complete request frame of every stream in place, and sends what the
//! connections have to send (with GSO) before it waits again; while requests come often it
//! polls the socket instead of sleeping (the `--spin-us` window).
//!
//! What a request gets is exactly what [`crate::server`] gives it (the same decoding, store
//! calls, replies and metrics): only the transport's scheduling differs. One thread serves
//! every connection; `--threads` does not apply.

use std::{
    collections::{HashMap, HashSet},
    io,
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::{Buf, Bytes, BytesMut};
use quinn::udp::UdpSocketState;
use quinn_proto::{
    ConnectionHandle, DatagramEvent, Dir, Endpoint, Event, FinishError, ReadError, ReadableError,
    ServerConfig, StreamEvent, StreamId, VarInt, WriteError,
};
use tracing::{debug, info, warn};
use yonder_common::{
    codec::{CodecError, HEADER_BYTES},
    poll::readable,
    protocol::{ErrorCode, Response},
    tls, transport, udp,
};

use crate::{
    frame_reader::frame_len,
    handler::Session,
    metrics,
    server::{
        answer, encode, Tenants, CLOSE_BAD_IDENTITY, CLOSE_SHUTDOWN, CLOSE_TOO_MANY_CONNECTIONS,
        MAX_CONNECTIONS_PER_TENANT, STOP_REFUSED,
    },
    spin::spins_after,
    store::Store,
};

/// Bytes read from a stream beyond the frame being completed; bounds what a stream buffers.
const READ_AHEAD: usize = 64 * 1024;
/// Longest sleep between two looks at the shutdown flag.
const SLEEP_CAP: Duration = Duration::from_millis(50);
/// How long connections may take to close at a server's shutdown (`serve`'s `drain`).
pub const DRAIN: Duration = Duration::from_secs(3);
/// Largest segmentation-offload send: what one UDP send can carry (docs in `yonder_common::gso`).
const GSO_BYTES: usize = yonder_common::gso::MAX_GSO_BYTES;

/// One request stream: the bytes of its next frames, and the reply not yet taken by QUIC.
#[derive(Default)]
struct Stream {
    buf: BytesMut,
    pending: Bytes,
    /// When the reply in `pending` was asked for, and by which request kind (for metrics).
    asked: Option<(&'static str, Instant)>,
    /// The client finished its side.
    recv_done: bool,
    /// Finish our side once `pending` is written (end of stream, or a refused frame).
    finish: bool,
}

/// One connection and, once its handshake is over and its certificate names a tenant admitted,
/// its session.
struct Conn {
    conn: quinn_proto::Connection,
    session: Option<Arc<Session>>,
    streams: HashMap<StreamId, Stream>,
    /// Streams with something to do since the last turn.
    busy: HashSet<StreamId>,
}

/// The loop's state.
struct Driven {
    socket: UdpSocket,
    state: UdpSocketState,
    endpoint: Endpoint,
    conns: HashMap<ConnectionHandle, Conn>,
    /// Connections that received something, ran a timer or are new since their last turn: only
    /// they can have events to handle or datagrams to send.
    touched: HashSet<ConnectionHandle>,
    /// This turn's connections, and one connection's busy streams (buffers kept between turns).
    turn: Vec<ConnectionHandle>,
    busy: Vec<StreamId>,
    store: Arc<Store>,
    tenants: Tenants,
    spin: Option<Duration>,
    /// When the last read request came (the spin window runs from it).
    last_request: Instant,
    send_buf: Vec<u8>,
    recv_buf: Vec<u8>,
    scratch: Vec<u8>,
    out: BytesMut,
}

/// Serves `socket` (bound, with the server's buffers) until `stop` is set, then closes every
/// connection and waits up to `drain` for them to drain; with a zero `drain` it sends the close
/// frames once and returns (a server inside a process that is exiting: nobody is left to
/// retransmit them to). Blocks the calling thread; a datagram to the socket wakes it.
pub fn serve(
    socket: UdpSocket,
    server_config: ServerConfig,
    store: Arc<Store>,
    spin: Option<Duration>,
    stop: &AtomicBool,
    drain: Duration,
) -> io::Result<()> {
    socket.set_nonblocking(true)?;
    let state = UdpSocketState::new((&socket).into())?;
    let recv_len = (transport::MAX_UDP_PAYLOAD as usize * state.gro_segments()).max(GSO_BYTES);
    let mut d = Driven {
        endpoint: Endpoint::new(
            Arc::new(transport::endpoint_config()),
            Some(Arc::new(server_config)),
            !state.may_fragment(),
            None,
        ),
        socket,
        state,
        conns: HashMap::new(),
        touched: HashSet::new(),
        turn: Vec::new(),
        busy: Vec::new(),
        store,
        tenants: Tenants::default(),
        spin: spin.filter(|w| !w.is_zero()),
        last_request: Instant::now(),
        send_buf: Vec::with_capacity(GSO_BYTES),
        recv_buf: vec![0; recv_len],
        scratch: Vec::new(),
        out: BytesMut::new(),
    };
    metrics::usage(&d.store.usage());
    let mut closing: Option<Instant> = None;
    loop {
        if closing.is_none() && stop.load(Ordering::Relaxed) {
            info!("shutting down: closing connections");
            let now = Instant::now();
            d.touched.extend(d.conns.keys().copied());
            for c in d.conns.values_mut() {
                c.conn.close(
                    now,
                    VarInt::from_u32(CLOSE_SHUTDOWN),
                    Bytes::from_static(b"server shutting down"),
                );
            }
            closing = Some(now);
            if drain.is_zero() {
                let all: Vec<ConnectionHandle> = d.conns.keys().copied().collect();
                return d.transmit(&all);
            }
        }
        if let Some(since) = closing {
            if d.conns.is_empty() {
                break;
            }
            if since.elapsed() > drain {
                warn!("connections did not drain within {drain:?}");
                break;
            }
        }
        d.wait()?;
        d.receive(closing.is_some())?;
        d.timers();
        // Reused from turn to turn: no allocation per request.
        let mut turn = std::mem::take(&mut d.turn);
        turn.extend(d.touched.drain());
        d.work(&turn);
        let sent = d.transmit(&turn);
        turn.clear();
        d.turn = turn;
        sent?;
    }
    Ok(())
}

impl Driven {
    /// Waits until the socket is readable, the earliest connection timer is due, or
    /// [`SLEEP_CAP`]; within the spin window it only looks.
    fn wait(&mut self) -> io::Result<()> {
        let now = Instant::now();
        if self
            .spin
            .is_some_and(|w| now.saturating_duration_since(self.last_request) < w)
        {
            if !readable(self.socket.as_raw_fd(), 0)? {
                std::thread::yield_now();
            }
            return Ok(());
        }
        let due = self
            .conns
            .values_mut()
            .filter_map(|c| c.conn.poll_timeout())
            .min();
        let wait = due.map_or(SLEEP_CAP, |t| {
            t.saturating_duration_since(now).min(SLEEP_CAP)
        });
        // Round up: a timer is never run early in a loop of zero-time waits.
        readable(
            self.socket.as_raw_fd(),
            wait.as_micros().div_ceil(1000) as i32,
        )?;
        Ok(())
    }

    /// Reads every datagram waiting and hands each to the endpoint.
    fn receive(&mut self, closing: bool) -> io::Result<()> {
        loop {
            let m = match udp::recv(&self.state, &self.socket, &mut self.recv_buf) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            };
            let now = Instant::now();
            for d in udp::datagrams(&self.recv_buf, &m) {
                // One copy, into the buffer quinn-proto keeps (as quinn's endpoint does).
                let datagram = BytesMut::from(d);
                self.send_buf.clear();
                let event =
                    self.endpoint
                        .handle(now, m.addr, m.dst_ip, None, datagram, &mut self.send_buf);
                match event {
                    Some(DatagramEvent::ConnectionEvent(ch, ev)) => {
                        if let Some(c) = self.conns.get_mut(&ch) {
                            c.conn.handle_event(ev);
                            self.touched.insert(ch);
                        }
                    }
                    Some(DatagramEvent::NewConnection(incoming)) => {
                        if closing {
                            self.send_buf.clear();
                            let t = self.endpoint.refuse(incoming, &mut self.send_buf);
                            udp::send(&self.state, &self.socket, &self.send_buf, &t);
                            continue;
                        }
                        self.send_buf.clear();
                        match self
                            .endpoint
                            .accept(incoming, now, &mut self.send_buf, None)
                        {
                            Ok((ch, conn)) => {
                                self.touched.insert(ch);
                                self.conns.insert(
                                    ch,
                                    Conn {
                                        conn,
                                        session: None,
                                        streams: HashMap::new(),
                                        busy: HashSet::new(),
                                    },
                                );
                            }
                            Err(e) => {
                                warn!("handshake refused: {}", e.cause);
                                metrics::rejected("handshake");
                                if let Some(t) = e.response {
                                    udp::send(&self.state, &self.socket, &self.send_buf, &t);
                                }
                            }
                        }
                    }
                    Some(DatagramEvent::Response(t)) => {
                        udp::send(&self.state, &self.socket, &self.send_buf, &t);
                    }
                    None => {}
                }
            }
        }
    }

    /// Runs the connections' timers that are due.
    fn timers(&mut self) {
        let now = Instant::now();
        for (ch, c) in self.conns.iter_mut() {
            if c.conn.poll_timeout().is_some_and(|t| t <= now) {
                c.conn.handle_timeout(now);
                self.touched.insert(*ch);
            }
        }
    }

    /// Handles the events of the connections in `turn` and serves their busy streams; removes
    /// drained ones.
    fn work(&mut self, turn: &[ConnectionHandle]) {
        for &ch in turn {
            let Some(mut c) = self.conns.remove(&ch) else {
                continue;
            };
            self.events(&mut c);
            if let Some(session) = c.session.clone() {
                let mut busy = std::mem::take(&mut self.busy);
                busy.extend(c.busy.drain());
                for &id in &busy {
                    self.serve_stream(&mut c, &session, id);
                }
                busy.clear();
                self.busy = busy;
            }
            while let Some(ev) = c.conn.poll_endpoint_events() {
                if let Some(back) = self.endpoint.handle_event(ch, ev) {
                    c.conn.handle_event(back);
                }
            }
            if c.conn.is_drained() {
                if let Some(session) = &c.session {
                    self.tenants.leave(session.tenant_name());
                    metrics::connections(-1.0);
                }
                continue;
            }
            self.conns.insert(ch, c);
        }
    }

    /// The application events of one connection: handshake done, connection lost, streams.
    fn events(&mut self, c: &mut Conn) {
        while let Some(ev) = c.conn.poll() {
            match ev {
                Event::Connected => self.admit(c),
                Event::ConnectionLost { reason } => match &c.session {
                    Some(s) => info!(tenant = s.tenant_name(), "client disconnected: {reason}"),
                    None => {
                        // Wrong CA, no client certificate, wrong ALPN...: the handshake fails.
                        warn!("handshake refused: {reason}");
                        metrics::rejected("handshake");
                    }
                },
                Event::Stream(StreamEvent::Opened { dir: Dir::Bi }) => {
                    while let Some(id) = c.conn.streams().accept(Dir::Bi) {
                        c.streams.insert(id, Stream::default());
                        c.busy.insert(id);
                    }
                }
                Event::Stream(StreamEvent::Readable { id })
                | Event::Stream(StreamEvent::Writable { id }) => {
                    c.busy.insert(id);
                }
                Event::Stream(StreamEvent::Stopped { id, .. }) => {
                    debug!("stream abandoned by the client");
                    metrics::rejected("stream_reset");
                    if let Some(st) = c.streams.remove(&id) {
                        release(&mut c.conn, id, &st);
                    }
                }
                _ => {}
            }
        }
    }

    /// Checks the client's certificate and admits its tenant, or closes the connection.
    fn admit(&mut self, c: &mut Conn) {
        let now = Instant::now();
        let name = c
            .conn
            .crypto_session()
            .peer_identity()
            .ok_or(tls::TlsError::NoPeerCertificate)
            .and_then(tls::common_name_of_chain);
        let name = match name {
            Ok(name) => name,
            Err(e) => {
                warn!("closing connection: {e}");
                metrics::rejected("identity");
                c.conn.close(
                    now,
                    VarInt::from_u32(CLOSE_BAD_IDENTITY),
                    Bytes::from_static(b"client certificate has no usable name"),
                );
                return;
            }
        };
        let Some(id) = self.tenants.enter(&name) else {
            warn!(
                tenant = name,
                "closing connection: the tenant has {MAX_CONNECTIONS_PER_TENANT} open"
            );
            metrics::rejected("too_many_connections");
            c.conn.close(
                now,
                VarInt::from_u32(CLOSE_TOO_MANY_CONNECTIONS),
                Bytes::from_static(b"too many connections for this tenant"),
            );
            return;
        };
        info!(tenant = name, "client connected");
        metrics::connections(1.0);
        c.session = Some(Arc::new(Session::new(id, name)));
        // Streams opened before the handshake's end wait for this.
        c.busy.extend(c.streams.keys().copied());
    }

    /// Answers every complete frame of stream `id`, as far as flow control lets the replies go.
    fn serve_stream(&mut self, c: &mut Conn, session: &Session, id: StreamId) {
        let Some(mut st) = c.streams.remove(&id) else {
            return;
        };
        if self.step_stream(c, session, id, &mut st) {
            c.streams.insert(id, st);
        } else {
            release(&mut c.conn, id, &st);
        }
    }

    /// [`Self::serve_stream`]'s work; false when the stream is over.
    fn step_stream(
        &mut self,
        c: &mut Conn,
        session: &Session,
        id: StreamId,
        st: &mut Stream,
    ) -> bool {
        loop {
            // The reply of the last frame first: a client that does not read its replies gets
            // no more of its requests read (what it sends waits in QUIC's window).
            while !st.pending.is_empty() {
                // Handed over without a copy; a partly written reply is advanced in place.
                match c
                    .conn
                    .send_stream(id)
                    .write_chunks(std::slice::from_mut(&mut st.pending))
                {
                    Ok(w) if w.bytes == 0 => return true,
                    Ok(_) => {}
                    Err(WriteError::Blocked) => return true,
                    Err(e) => {
                        debug!("client went away before its reply: {e}");
                        return false;
                    }
                }
            }
            if let Some((op, at)) = st.asked.take() {
                metrics::reply(op, at.elapsed());
            }
            if st.finish {
                let _ = c.conn.send_stream(id).finish();
                return false;
            }
            // The next frame, if it is here whole.
            match frame_len(&st.buf) {
                Err(e) => {
                    self.refuse(c, session, id, st, e);
                    continue;
                }
                Ok(Some(len)) if st.buf.len() >= len => {
                    let received = Instant::now();
                    let payload = &st.buf[HEADER_BYTES..len];
                    match answer(
                        &self.store,
                        session,
                        payload,
                        &mut self.out,
                        &mut self.scratch,
                    ) {
                        Ok(op) => {
                            if spins_after(op) {
                                self.last_request = received;
                            }
                            st.asked = op.map(|op| (op, received));
                            st.pending = self.out.split().freeze();
                            st.buf.advance(len);
                        }
                        Err(e) => {
                            warn!("cannot encode a reply: {e}");
                            let _ = c.conn.send_stream(id).reset(VarInt::from_u32(0));
                            return false;
                        }
                    }
                    continue;
                }
                Ok(need) => {
                    if st.recv_done {
                        if st.buf.is_empty() {
                            st.finish = true;
                        } else {
                            let e = CodecError::Truncated {
                                have: st.buf.len(),
                                need: need.unwrap_or(HEADER_BYTES),
                            };
                            self.refuse(c, session, id, st, e);
                        }
                        continue;
                    }
                    let want =
                        need.unwrap_or(HEADER_BYTES).saturating_sub(st.buf.len()) + READ_AHEAD;
                    match read_some(c, id, st, want) {
                        Ok(true) => continue,
                        Ok(false) => return true,
                        Err(()) => return false,
                    }
                }
            }
        }
    }

    /// Answers a frame that cannot be read with an error reply, and reads no more of its stream.
    fn refuse(
        &mut self,
        c: &mut Conn,
        session: &Session,
        id: StreamId,
        st: &mut Stream,
        e: CodecError,
    ) {
        let code = match e {
            CodecError::TooLarge { .. } => ErrorCode::FrameTooLarge,
            CodecError::Truncated { .. } => ErrorCode::Truncated,
            _ => ErrorCode::Malformed,
        };
        let _ = c.conn.recv_stream(id).stop(VarInt::from_u32(STOP_REFUSED));
        st.buf.clear();
        st.recv_done = true;
        st.finish = true;
        let resp = Response::error(code, e.to_string());
        match encode(session, &resp, true, &mut self.out, &mut self.scratch) {
            Ok(()) => st.pending = self.out.split().freeze(),
            Err(e) => warn!("cannot encode a reply: {e}"),
        }
    }

    /// Sends what the connections in `turn` have to send.
    fn transmit(&mut self, turn: &[ConnectionHandle]) -> io::Result<()> {
        let now = Instant::now();
        let max_gso = self.state.max_gso_segments();
        for ch in turn {
            let Some(c) = self.conns.get_mut(ch) else {
                continue;
            };
            let segments = (GSO_BYTES / c.conn.current_mtu() as usize).clamp(1, max_gso);
            loop {
                self.send_buf.clear();
                let Some(t) = c.conn.poll_transmit(now, segments, &mut self.send_buf) else {
                    break;
                };
                udp::send(&self.state, &self.socket, &self.send_buf, &t);
            }
        }
        Ok(())
    }
}

/// Gives a stream's resources back to QUIC once we are done with it, as quinn does when its
/// stream handles are dropped: what the client still sends is refused (`STOP_SENDING`), our side
/// is finished, or reset if the client stopped it. A stream left open here would count against
/// the client's stream limit forever, and its next `open_bi` would wait for good.
fn release(conn: &mut quinn_proto::Connection, id: StreamId, st: &Stream) {
    if !st.recv_done {
        let _ = conn.recv_stream(id).stop(VarInt::from_u32(0));
    }
    if let Err(FinishError::Stopped(code)) = conn.send_stream(id).finish() {
        let _ = conn.send_stream(id).reset(code);
    }
}

/// Reads what stream `id` holds into its buffer, up to `want` bytes: true when something came
/// (or the stream ended), false when nothing is there yet, `Err` when the stream is gone.
fn read_some(c: &mut Conn, id: StreamId, st: &mut Stream, want: usize) -> Result<bool, ()> {
    let mut stream = c.conn.recv_stream(id);
    let mut chunks = match stream.read(true) {
        Ok(chunks) => chunks,
        Err(ReadableError::ClosedStream) => {
            // Stopped by us after a refused frame, or never seen: nothing more to read.
            st.recv_done = true;
            return Ok(true);
        }
        Err(e) => {
            debug!("stream read failed: {e}");
            return Err(());
        }
    };
    let before = st.buf.len();
    let mut got = 0;
    let result = loop {
        if got >= want {
            break Ok(true);
        }
        match chunks.next(want - got) {
            Ok(Some(chunk)) => {
                got += chunk.bytes.len();
                st.buf.extend_from_slice(&chunk.bytes);
            }
            Ok(None) => {
                st.recv_done = true;
                break Ok(true);
            }
            Err(ReadError::Blocked) => break Ok(st.buf.len() > before),
            Err(ReadError::Reset(code)) => {
                debug!("stream abandoned by the client: reset {code}");
                st.recv_done = true;
                metrics::rejected("stream_reset");
                break Err(());
            }
        }
    };
    // The flow-control credit for what was read goes out with the next transmit.
    let _ = chunks.finalize();
    result
}

/// The bound socket a driven server listens on (the same buffers as quinn's endpoint).
pub fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    transport::udp_socket(addr)
}
