//! The QUIC floor with quinn-proto driven by hand: the same request and reply, TLS, transport
//! settings and one stream as the quinn floor, but no Tokio runtime and no quinn driver tasks.
//! Each side is one thread that sleeps in `poll(2)` on its UDP socket (like the UDP floor's
//! blocking sockets), hands every datagram to quinn-proto's `Endpoint` and `Connection` itself,
//! and sends whatever the connection has to send before it sleeps again.
//!
//! Issue 13 asks whether driving quinn-proto from the agent's fault loop would take quinn's
//! task hand-offs off a remote fault. This measures that before anything is built: the difference
//! between this floor and the quinn floor is what quinn's machinery costs per round trip, the
//! difference between this floor and the UDP floor is what QUIC itself (packet protection, ACKs,
//! stream state) costs.

use std::{
    io::ErrorKind,
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use bytes::BytesMut;
use quinn_proto::{
    ClientConfig, Connection, ConnectionHandle, DatagramEvent, Dir, Endpoint, Event, ServerConfig,
    StreamEvent, StreamId,
};
use yonder_common::transport;

use crate::{
    mem::PAGE,
    os,
    stats::{histogram, Summary},
};

/// The request's size, as in the other floors.
const REQUEST: usize = 32;

/// How long either side waits for the handshake or for its peer before it gives up.
const PATIENCE: Duration = Duration::from_secs(10);

/// One end: a UDP socket, a quinn-proto endpoint and its one connection.
struct Side {
    socket: UdpSocket,
    endpoint: Endpoint,
    server_config: Option<Arc<ServerConfig>>,
    conn: Option<(ConnectionHandle, Connection)>,
    out: Vec<u8>,
    inbuf: Vec<u8>,
}

impl Side {
    fn new(server_config: Option<ServerConfig>) -> anyhow::Result<Self> {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        socket.set_nonblocking(true)?;
        let server_config = server_config.map(Arc::new);
        let endpoint = Endpoint::new(
            Arc::new(transport::endpoint_config()),
            server_config.clone(),
            true,
            None,
        );
        Ok(Self {
            socket,
            endpoint,
            server_config,
            conn: None,
            out: Vec::with_capacity(64 * 1024),
            inbuf: vec![0u8; 64 * 1024],
        })
    }

    fn conn(&mut self) -> anyhow::Result<&mut Connection> {
        self.conn
            .as_mut()
            .map(|(_, c)| c)
            .context("no connection yet")
    }

    /// Passes the connection's endpoint events on, then sends every datagram it has ready.
    fn flush(&mut self) -> anyhow::Result<()> {
        let Some((ch, conn)) = self.conn.as_mut() else {
            return Ok(());
        };
        while let Some(ev) = conn.poll_endpoint_events() {
            if let Some(back) = self.endpoint.handle_event(*ch, ev) {
                conn.handle_event(back);
            }
        }
        loop {
            self.out.clear();
            let Some(t) = conn.poll_transmit(Instant::now(), 1, &mut self.out) else {
                return Ok(());
            };
            send(&self.socket, &self.out[..t.size], t.destination)?;
        }
    }

    /// Sleeps until a datagram comes or the connection's timer is due (at most `cap`), feeds
    /// every datagram waiting to quinn-proto, runs the timer if due, and flushes.
    fn turn(&mut self, cap: Duration) -> anyhow::Result<()> {
        let now = Instant::now();
        let wait = self
            .conn
            .as_mut()
            .and_then(|(_, c)| c.poll_timeout())
            .map_or(cap, |t| t.saturating_duration_since(now).min(cap));
        // poll(2) counts milliseconds: round up, so a timer is never run early in a busy loop.
        let ms = wait.as_micros().div_ceil(1000) as i32;
        if os::wait_readable(self.socket.as_raw_fd(), ms)? {
            self.receive()?;
        }
        if let Some((_, conn)) = self.conn.as_mut() {
            let now = Instant::now();
            if conn.poll_timeout().is_some_and(|t| t <= now) {
                conn.handle_timeout(now);
            }
        }
        self.flush()
    }

    /// Reads every datagram the socket holds and hands it to the endpoint.
    fn receive(&mut self) -> anyhow::Result<()> {
        loop {
            let (n, from) = match self.socket.recv_from(&mut self.inbuf) {
                Ok(r) => r,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            let now = Instant::now();
            let data = BytesMut::from(&self.inbuf[..n]);
            self.out.clear();
            match self
                .endpoint
                .handle(now, from, None, None, data, &mut self.out)
            {
                Some(DatagramEvent::ConnectionEvent(ch, ev)) => {
                    if let Some((mine, conn)) = self.conn.as_mut() {
                        if *mine == ch {
                            conn.handle_event(ev);
                        }
                    }
                }
                Some(DatagramEvent::NewConnection(incoming)) => {
                    anyhow::ensure!(self.conn.is_none(), "a second connection");
                    self.out.clear();
                    let accepted = self.endpoint.accept(
                        incoming,
                        now,
                        &mut self.out,
                        self.server_config.clone(),
                    );
                    match accepted {
                        Ok(c) => self.conn = Some(c),
                        Err(e) => anyhow::bail!("accepting the connection: {}", e.cause),
                    }
                }
                Some(DatagramEvent::Response(t)) => {
                    send(&self.socket, &self.out[..t.size], t.destination)?;
                }
                None => {}
            }
        }
    }

    /// Turns until `done` says so (it sees every application event), or fails after
    /// [`PATIENCE`].
    fn until(
        &mut self,
        what: &str,
        mut done: impl FnMut(&mut Connection, Option<Event>) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if let Some((_, conn)) = self.conn.as_mut() {
                while let Some(ev) = conn.poll() {
                    if let Event::ConnectionLost { reason } = &ev {
                        anyhow::bail!("connection lost while waiting for {what}: {reason}");
                    }
                    if done(conn, Some(ev))? {
                        return self.flush();
                    }
                }
                if done(conn, None)? {
                    return self.flush();
                }
            }
            anyhow::ensure!(start.elapsed() < PATIENCE, "timed out waiting for {what}");
            self.turn(Duration::from_millis(100))?;
        }
    }
}

fn send(socket: &UdpSocket, data: &[u8], to: SocketAddr) -> anyhow::Result<()> {
    loop {
        match socket.send_to(data, to) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            // A full socket buffer drops the datagram, as the network would; QUIC resends.
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reads what the stream holds into `buf` up to `want` bytes; true once it has them all.
fn read_into(
    conn: &mut Connection,
    id: StreamId,
    buf: &mut Vec<u8>,
    want: usize,
) -> anyhow::Result<bool> {
    let mut stream = conn.recv_stream(id);
    let mut chunks = match stream.read(true) {
        Ok(c) => c,
        Err(quinn_proto::ReadableError::ClosedStream) => anyhow::bail!("stream closed"),
        Err(e) => anyhow::bail!("reading the stream: {e}"),
    };
    while buf.len() < want {
        match chunks.next(want - buf.len()) {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
            Ok(None) => break,
            Err(quinn_proto::ReadError::Blocked) => break,
            Err(e) => anyhow::bail!("reading the stream: {e}"),
        }
    }
    // Its flow-control credit goes out with the next flush.
    let _ = chunks.finalize();
    Ok(buf.len() == want)
}

/// Writes all of `data`, turning the connection while flow control holds it back.
fn write_all(side: &mut Side, id: StreamId, data: &[u8]) -> anyhow::Result<()> {
    let mut off = 0;
    while off < data.len() {
        match side.conn()?.send_stream(id).write(&data[off..]) {
            Ok(n) => off += n,
            Err(quinn_proto::WriteError::Blocked) => side.turn(Duration::from_millis(100))?,
            Err(e) => anyhow::bail!("writing the stream: {e}"),
        }
    }
    side.flush()
}

/// The server's thread: answers `samples` requests on the client's stream, then waits for the
/// client to close.
fn serve(
    samples: usize,
    server_config: ServerConfig,
    addr_tx: std::sync::mpsc::Sender<SocketAddr>,
) -> anyhow::Result<()> {
    let mut side = Side::new(Some(server_config))?;
    addr_tx.send(side.socket.local_addr()?)?;
    let mut stream = None;
    side.until("the client's stream", |conn, _| {
        stream = conn.streams().accept(Dir::Bi);
        Ok(stream.is_some())
    })?;
    let id = stream.context("no stream")?;
    let reply = vec![7u8; PAGE];
    let mut req = Vec::with_capacity(REQUEST);
    for _ in 0..samples {
        req.clear();
        side.until("a request", |conn, ev| {
            if matches!(ev, Some(Event::Stream(StreamEvent::Readable { .. })) | None) {
                read_into(conn, id, &mut req, REQUEST)
            } else {
                Ok(false)
            }
        })?;
        write_all(&mut side, id, &reply)?;
    }
    // Until the client closes (or a while passes): the last reply may still need resending.
    let start = Instant::now();
    while start.elapsed() < PATIENCE {
        let lost = side
            .conn()?
            .poll()
            .is_some_and(|e| matches!(e, Event::ConnectionLost { .. }));
        if lost || side.conn()?.is_drained() {
            break;
        }
        side.turn(Duration::from_millis(100))?;
    }
    Ok(())
}

/// One round-trip measurement: a client here, a server on another thread, both pinned to CPU 0
/// when `pin`. With `quinn_client` the client is quinn's (Tokio, its driver tasks), as the
/// agent's is today, against the hand-driven server, as the memory server's `driven` path is.
pub fn quic_proto(
    samples: usize,
    pin: bool,
    server_config: ServerConfig,
    client_config: ClientConfig,
    quinn_client: Option<quinn::ClientConfig>,
) -> anyhow::Result<Summary> {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel::<SocketAddr>();
    super::on_thread(move || {
        std::thread::scope(|s| -> anyhow::Result<Summary> {
            let server = s.spawn(move || -> anyhow::Result<()> {
                super::maybe_pin(pin)?;
                serve(samples, server_config, addr_tx)
            });
            super::maybe_pin(pin)?;
            let summary = match quinn_client {
                Some(c) => measure_quinn(samples, c, &addr_rx),
                None => measure(samples, client_config, &addr_rx),
            };
            let served = server.join().expect("floor server panicked");
            let summary = summary?;
            served.context("the hand-driven server")?;
            Ok(summary)
        })
    })
}

fn measure(
    samples: usize,
    client_config: ClientConfig,
    addr_rx: &std::sync::mpsc::Receiver<SocketAddr>,
) -> anyhow::Result<Summary> {
    let server = addr_rx
        .recv_timeout(PATIENCE)
        .context("the server did not start")?;
    let mut side = Side::new(None)?;
    side.conn = Some(
        side.endpoint
            .connect(Instant::now(), client_config, server, "localhost")
            .context("connecting")?,
    );
    side.flush()?;
    side.until("the handshake", |_, ev| {
        Ok(matches!(ev, Some(Event::Connected)))
    })?;
    let id = side
        .conn()?
        .streams()
        .open(Dir::Bi)
        .context("no stream allowed")?;
    let mut h = histogram();
    let mut page = Vec::with_capacity(PAGE);
    let request = [1u8; REQUEST];
    for _ in 0..samples {
        page.clear();
        let t = Instant::now();
        write_all(&mut side, id, &request)?;
        side.until("a reply", |conn, ev| {
            if matches!(ev, Some(Event::Stream(StreamEvent::Readable { .. })) | None) {
                read_into(conn, id, &mut page, PAGE)
            } else {
                Ok(false)
            }
        })?;
        h.record(t.elapsed().as_nanos() as u64)?;
        anyhow::ensure!(page.iter().all(|&b| b == 7), "wrong reply content");
    }
    side.conn()?
        .close(Instant::now(), 0u32.into(), "done".into());
    side.flush()?;
    Ok(Summary::of(&h))
}

/// [`measure`] with quinn's client on a current-thread Tokio runtime.
fn measure_quinn(
    samples: usize,
    client_config: quinn::ClientConfig,
    addr_rx: &std::sync::mpsc::Receiver<SocketAddr>,
) -> anyhow::Result<Summary> {
    let server = addr_rx
        .recv_timeout(PATIENCE)
        .context("the server did not start")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut ep = transport::endpoint("127.0.0.1:0".parse()?, None)?;
        ep.set_default_client_config(client_config);
        let conn = ep.connect(server, "localhost")?.await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        let mut h = histogram();
        let mut page = vec![0u8; PAGE];
        let request = [1u8; REQUEST];
        for _ in 0..samples {
            let t = Instant::now();
            send.write_all(&request).await?;
            recv.read_exact(&mut page).await?;
            h.record(t.elapsed().as_nanos() as u64)?;
            anyhow::ensure!(page.iter().all(|&b| b == 7), "wrong reply content");
        }
        conn.close(0u32.into(), b"done");
        ep.wait_idle().await;
        Ok(Summary::of(&h))
    })
}
