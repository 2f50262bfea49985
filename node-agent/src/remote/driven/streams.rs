//! A request's stream: handing its frame to QUIC as flow control allows, reading its reply, and
//! telling a lane that speaks out of turn from a harmless event.

use std::time::Instant;

use quinn_proto::{StreamId, VarInt};
use yonder_common::{
    client::ClientError,
    codec::{payload_len, CodecError, HEADER_BYTES},
    transport::FrameReadError,
};

use super::{Call, State};

/// Hands QUIC what it takes of call `id`'s request.
pub(super) fn write_more(st: &mut State, id: StreamId) {
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

/// Gives up lane `id` for good: our side reset, the server's reply refused (nothing to do on a
/// connection that is gone).
pub(super) fn abandon(st: &mut State, id: StreamId) {
    if st.lost.is_none() {
        let _ = st.conn.send_stream(id).reset(VarInt::from_u32(0));
        let _ = st.conn.recv_stream(id).stop(VarInt::from_u32(0));
    }
}

pub(super) fn finish(call: &mut Call, r: Result<Instant, ClientError>) {
    if call.done.is_none() {
        call.done = Some(r);
        if let Some(w) = call.waker.take() {
            w.wake();
        }
    }
}

/// Reads what stream `id` holds into its call's reply; a stream with no call (a reset lane, or
/// data nobody asked for) is drained and stopped.
pub(super) fn read_reply(st: &mut State, id: StreamId) {
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
