//! The connection's I/O: passing quinn-proto's events and packets along, the driver task that
//! reads the socket and runs the timers, and the end of a connection.

use std::{
    io,
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use quinn_proto::{ConnectionError, DatagramEvent, Dir, Event, StreamEvent, VarInt};
use tokio::io::Interest;
use yonder_common::{client::ClientError, udp};

use super::{
    streams::{finish, read_reply, write_more},
    Shared, State, CLOSE_LINGER, GSO_BYTES,
};

/// Passes endpoint events both ways, handles the connection's application events, and sends
/// everything the connection has to send.
pub(super) fn flush(sh: &Shared) {
    pump(sh, true)
}

/// [`flush`]; with `kick`, wakes the driver when quinn-proto now wants an earlier timer than
/// the one it sleeps until (the driver itself re-arms on its next turn).
pub(super) fn pump(sh: &Shared, kick: bool) {
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
            udp::send(&sh.udp, &sh.socket, &st.send_buf, &t);
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
pub(super) fn lose(sh: &Shared, st: &mut State, reason: ConnectionError) {
    for call in st.calls.values_mut() {
        finish(call, Err(ClientError::Connection(reason.clone())));
    }
    st.idle.clear();
    st.lost.get_or_insert(reason);
    sh.changed.notify_waiters();
}

pub(super) fn close(sh: &Shared) {
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
pub(super) async fn drive(sh: std::rc::Rc<Shared>) {
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
pub(super) fn receive(sh: &Shared) -> io::Result<()> {
    let mut st = sh.state.borrow_mut();
    let st = &mut *st;
    loop {
        let socket = &sh.socket;
        let m = match socket.try_io(Interest::READABLE, || {
            udp::recv(&sh.udp, socket, &mut st.recv_buf)
        }) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        };
        let now = Instant::now();
        for d in udp::datagrams(&st.recv_buf, &m) {
            st.send_buf.clear();
            let datagram = BytesMut::from(d);
            match st
                .endpoint
                .handle(now, m.addr, m.dst_ip, None, datagram, &mut st.send_buf)
            {
                Some(DatagramEvent::ConnectionEvent(ch, ev)) if ch == st.handle => {
                    st.conn.handle_event(ev)
                }
                Some(DatagramEvent::Response(t)) => {
                    udp::send(&sh.udp, &sh.socket, &st.send_buf, &t)
                }
                // A client accepts no connections; anything else is not ours.
                _ => {}
            }
        }
    }
}
