//! The QUIC layer: accepts authenticated connections and serves request streams.
//!
//! Each connection is one tenant (named by its client certificate); each bidirectional stream
//! carries request frames answered in order. A bad frame gets an error reply on its own stream; a
//! failing stream or connection never affects the others.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::BytesMut;
use quinn::{Connection, Endpoint, RecvStream, SendStream, VarInt};
use tracing::{debug, info, info_span, warn, Instrument};
use yonder_common::{
    codec::{decode_payload, encode_frame, CodecError},
    protocol::{ErrorCode, Request, Response, MAX_BATCH_PAGES},
    tls,
    transport::FrameReadError,
};

use crate::{
    frame_reader::FrameReader,
    handler::{self, handle, Session},
    metrics, reply,
    spin::{spins_after, Spinner},
    store::{Store, TenantId},
    wire,
};

/// Application error code used when the server closes a connection because it shuts down.
pub const CLOSE_SHUTDOWN: u32 = 1;
/// Application error code used when a peer's certificate carries no usable identity.
pub const CLOSE_BAD_IDENTITY: u32 = 2;
/// Stream stop code sent when a frame is refused before being read.
pub const STOP_REFUSED: u32 = 3;
/// Application error code used when a tenant already has [`MAX_CONNECTIONS_PER_TENANT`].
pub const CLOSE_TOO_MANY_CONNECTIONS: u32 = 4;

/// Connections one tenant may hold open at once. An agent needs one per server; the cap stops a
/// certificate holder from tying up the server with idle connections (each can also make the
/// server buffer up to its 64 MiB receive window).
pub const MAX_CONNECTIONS_PER_TENANT: usize = 64;

/// Maps tenant names (certificate common names) to store ids for the server's lifetime, and
/// counts each tenant's open connections.
#[derive(Default)]
pub(crate) struct Tenants(Mutex<HashMap<String, (TenantId, usize)>>);

impl Tenants {
    /// The tenant's id and a slot among its connections, or `None` when it has
    /// [`MAX_CONNECTIONS_PER_TENANT`] open.
    fn admit<'a>(&'a self, name: &str) -> Option<Admitted<'a>> {
        let id = self.enter(name)?;
        Some(Admitted {
            tenants: self,
            name: name.to_string(),
            id,
        })
    }

    /// Takes a connection slot of tenant `name`: its id, or `None` when it has
    /// [`MAX_CONNECTIONS_PER_TENANT`] open. Give it back with [`Self::leave`].
    pub(crate) fn enter(&self, name: &str) -> Option<TenantId> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let next = map.len() as TenantId;
        let (id, open) = map.entry(name.to_string()).or_insert((next, 0));
        if *open >= MAX_CONNECTIONS_PER_TENANT {
            return None;
        }
        *open += 1;
        Some(*id)
    }

    /// Gives back a slot taken with [`Self::enter`].
    pub(crate) fn leave(&self, name: &str) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, open)) = map.get_mut(name) {
            *open = open.saturating_sub(1);
        }
    }
}

/// One open connection of a tenant; gives its slot back when dropped.
struct Admitted<'a> {
    tenants: &'a Tenants,
    name: String,
    id: TenantId,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.tenants.leave(&self.name);
    }
}

/// What every connection task shares.
struct Shared {
    store: Arc<Store>,
    tenants: Tenants,
    spinner: Option<Arc<Spinner>>,
}

/// Tuning of the request path.
#[derive(Clone, Copy, Debug, Default)]
pub struct ServeOptions {
    /// Keep the runtime polling this long after each request instead of sleeping (see
    /// [`crate::spin`]); `None` sleeps as soon as there is nothing to do.
    pub spin: Option<Duration>,
}

/// Serves `endpoint` until `shutdown` completes, then closes every connection and waits (briefly)
/// for them to drain.
pub async fn serve(endpoint: Endpoint, store: Arc<Store>, shutdown: impl Future<Output = ()>) {
    serve_with(endpoint, store, ServeOptions::default(), shutdown).await;
}

/// [`serve`] with tuning options.
pub async fn serve_with(
    endpoint: Endpoint,
    store: Arc<Store>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    let spinner = options.spin.filter(|w| !w.is_zero()).map(Spinner::new);
    let spin_task = spinner.clone().map(|s| tokio::spawn(s.run()));
    let shared = Arc::new(Shared {
        store,
        tenants: Tenants::default(),
        spinner,
    });
    metrics::usage(&shared.store.usage());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => {
                    let shared = shared.clone();
                    let remote = incoming.remote_address();
                    tokio::spawn(
                        connection(incoming, shared).instrument(info_span!("conn", %remote)),
                    );
                }
                None => break,
            },
            () = &mut shutdown => break,
        }
    }
    info!("shutting down: closing connections");
    endpoint.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"server shutting down");
    if tokio::time::timeout(Duration::from_secs(3), endpoint.wait_idle())
        .await
        .is_err()
    {
        warn!("connections did not drain within 3 s");
    }
    if let Some(task) = spin_task {
        task.abort();
    }
}

async fn connection(incoming: quinn::Incoming, shared: Arc<Shared>) {
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => {
            // Wrong CA, no client certificate, wrong ALPN...: the handshake fails here.
            warn!("handshake refused: {e}");
            metrics::rejected("handshake");
            return;
        }
    };
    let name = match tls::peer_common_name(&conn) {
        Ok(name) => name,
        Err(e) => {
            warn!("closing connection: {e}");
            metrics::rejected("identity");
            conn.close(
                VarInt::from_u32(CLOSE_BAD_IDENTITY),
                b"client certificate has no usable name",
            );
            return;
        }
    };
    let Some(admitted) = shared.tenants.admit(&name) else {
        warn!(
            tenant = name,
            "closing connection: the tenant has {MAX_CONNECTIONS_PER_TENANT} open"
        );
        metrics::rejected("too_many_connections");
        conn.close(
            VarInt::from_u32(CLOSE_TOO_MANY_CONNECTIONS),
            b"too many connections for this tenant",
        );
        return;
    };
    let session = Arc::new(Session::new(admitted.id, name));
    info!(tenant = session.tenant_name(), "client connected");
    metrics::connections(1.0);
    let reason = accept_streams(&conn, &shared, &session).await;
    metrics::connections(-1.0);
    drop(admitted);
    info!(
        tenant = session.tenant_name(),
        "client disconnected: {reason}"
    );
}

async fn accept_streams(
    conn: &Connection,
    shared: &Arc<Shared>,
    session: &Arc<Session>,
) -> quinn::ConnectionError {
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let shared = shared.clone();
                let session = session.clone();
                tokio::spawn(async move { stream(send, recv, &shared, &session).await });
            }
            Err(e) => return e,
        }
    }
}

async fn stream(mut send: SendStream, mut recv: RecvStream, shared: &Shared, session: &Session) {
    let mut frames = FrameReader::default();
    let mut scratch = Vec::new();
    let mut out = BytesMut::new();
    loop {
        let (op, received, last) = match frames.next(&mut recv).await {
            Ok(None) => break,
            Ok(Some(payload)) => {
                let received = Instant::now();
                match answer(&shared.store, session, payload, &mut out, &mut scratch) {
                    Ok(op) => {
                        if let Some(spinner) = shared.spinner.as_ref().filter(|_| spins_after(op)) {
                            spinner.touch(received);
                        }
                        (op, received, false)
                    }
                    Err(e) => {
                        warn!("cannot encode a reply: {e}");
                        return;
                    }
                }
            }
            Err(FrameReadError::Codec(e)) => {
                let code = match e {
                    CodecError::TooLarge { .. } => ErrorCode::FrameTooLarge,
                    CodecError::Truncated { .. } => ErrorCode::Truncated,
                    _ => ErrorCode::Malformed,
                };
                // Whatever follows a refused header cannot be framed: stop reading the stream.
                let _ = recv.stop(VarInt::from_u32(STOP_REFUSED));
                let resp = Response::error(code, e.to_string());
                if let Err(e) = encode(session, &resp, true, &mut out, &mut scratch) {
                    warn!("cannot encode a reply: {e}");
                    return;
                }
                (None, Instant::now(), true)
            }
            Err(FrameReadError::Stream(e)) => {
                debug!("stream abandoned by the client: {e}");
                metrics::rejected("stream_reset");
                return;
            }
        };
        // The reply goes to quinn as it is, without another copy.
        if let Err(e) = send.write_chunk(out.split().freeze()).await {
            debug!("client went away before its reply: {e}");
            return;
        }
        if let Some(op) = op {
            metrics::reply(op, received.elapsed());
        }
        if last {
            break;
        }
    }
    let _ = send.finish();
}

/// Decodes and serves one request frame's payload, appending the reply frame to `out`; returns
/// the request's kind (`None` for a payload that is not a request). Writes are decoded in place
/// ([`wire::decode_write`]).
pub(crate) fn answer(
    store: &Store,
    session: &Session,
    payload: &[u8],
    out: &mut BytesMut,
    scratch: &mut Vec<u8>,
) -> Result<Option<&'static str>, CodecError> {
    let decoded = match wire::decode_write(payload) {
        Some(Ok(pages)) => {
            let started = Instant::now();
            let resp = handler::handle_write(store, session, &pages);
            metrics::request("write", pages.len(), &resp, started.elapsed());
            metrics::usage(&store.usage());
            return encode(session, &resp, false, out, scratch).map(|()| Some("write"));
        }
        Some(Err(e)) => Err(e),
        None => decode_payload::<Request>(payload),
    };
    match decoded {
        Ok(req) => {
            let op = req.op();
            serve_request(store, session, req, out, scratch).map(|()| Some(op))
        }
        Err(e) => {
            let resp = Response::error(ErrorCode::Malformed, e.to_string());
            encode(session, &resp, false, out, scratch).map(|()| None)
        }
    }
}

/// Encodes `resp` as a frame at the end of `out` (through `scratch`), logging an error reply.
pub(crate) fn encode(
    session: &Session,
    resp: &Response,
    last: bool,
    out: &mut BytesMut,
    scratch: &mut Vec<u8>,
) -> Result<(), CodecError> {
    if let Response::Error { code, message } = resp {
        debug!(
            tenant = session.tenant_name(),
            "refused request: {code:?}: {message}"
        );
        if last {
            metrics::rejected(code.as_str());
        }
    }
    encode_frame(resp, scratch)?;
    out.extend_from_slice(scratch);
    Ok(())
}

/// Serves one request, appending its reply frame to `out`. A read of a greeted session with a
/// valid batch is encoded straight from the store ([`reply::encode_read`]); every other request
/// goes through [`handle`] and the generic encoder.
fn serve_request(
    store: &Store,
    session: &Session,
    req: Request,
    out: &mut BytesMut,
    scratch: &mut Vec<u8>,
) -> Result<(), CodecError> {
    let op = req.op();
    let started = Instant::now();
    if let Request::Read { pages } = &req {
        if session.greeted() && pages.len() <= MAX_BATCH_PAGES {
            reply::encode_read(store, session.tenant(), pages, out)?;
            metrics::request_ok(op, pages.len(), started.elapsed());
            return Ok(());
        }
    }
    let pages = match &req {
        Request::Read { pages } => pages.len(),
        Request::Write { pages } => pages.len(),
        Request::Free { pages } => pages.len(),
        _ => 0,
    };
    let resp = handle(store, session, req);
    metrics::request(op, pages, &resp, started.elapsed());
    if matches!(op, "write" | "free" | "drop_space") {
        metrics::usage(&store.usage());
    }
    encode(session, &resp, false, out, scratch)
}
