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

use quinn::{Connection, Endpoint, RecvStream, SendStream, VarInt};
use tracing::{debug, info, info_span, warn, Instrument};
use yonder_common::{
    codec::{decode_payload, encode_frame, CodecError},
    protocol::{ErrorCode, Request, Response},
    tls,
    transport::{read_frame, write_frame, FrameReadError},
};

use crate::{
    handler::{handle, Session},
    metrics,
    store::{Store, TenantId},
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
struct Tenants(Mutex<HashMap<String, (TenantId, usize)>>);

impl Tenants {
    /// The tenant's id and a slot among its connections, or `None` when it has
    /// [`MAX_CONNECTIONS_PER_TENANT`] open.
    fn admit<'a>(&'a self, name: &str) -> Option<Admitted<'a>> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let next = map.len() as TenantId;
        let (id, open) = map.entry(name.to_string()).or_insert((next, 0));
        if *open >= MAX_CONNECTIONS_PER_TENANT {
            return None;
        }
        *open += 1;
        Some(Admitted {
            tenants: self,
            name: name.to_string(),
            id: *id,
        })
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
        let mut map = self.tenants.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, open)) = map.get_mut(&self.name) {
            *open -= 1;
        }
    }
}

/// What every connection task shares.
struct Shared {
    store: Arc<Store>,
    tenants: Tenants,
}

/// Serves `endpoint` until `shutdown` completes, then closes every connection and waits (briefly)
/// for them to drain.
pub async fn serve(endpoint: Endpoint, store: Arc<Store>, shutdown: impl Future<Output = ()>) {
    let shared = Arc::new(Shared {
        store,
        tenants: Tenants::default(),
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
    let mut buf = Vec::new();
    let mut out = Vec::new();
    loop {
        let (resp, last) = match read_frame(&mut recv, &mut buf).await {
            Ok(false) => break,
            Ok(true) => match decode_payload::<Request>(&buf) {
                Ok(req) => (serve_request(shared, session, req), false),
                Err(e) => (Response::error(ErrorCode::Malformed, e.to_string()), false),
            },
            Err(FrameReadError::Codec(e)) => {
                let code = match e {
                    CodecError::TooLarge { .. } => ErrorCode::FrameTooLarge,
                    CodecError::Truncated { .. } => ErrorCode::Truncated,
                    _ => ErrorCode::Malformed,
                };
                // Whatever follows a refused header cannot be framed: stop reading the stream.
                let _ = recv.stop(VarInt::from_u32(STOP_REFUSED));
                (Response::error(code, e.to_string()), true)
            }
            Err(FrameReadError::Stream(e)) => {
                debug!("stream abandoned by the client: {e}");
                metrics::rejected("stream_reset");
                return;
            }
        };
        if let Response::Error { code, message } = &resp {
            debug!(
                tenant = session.tenant_name(),
                "refused request: {code:?}: {message}"
            );
            if last {
                metrics::rejected(code.as_str());
            }
        }
        if let Err(e) = encode_frame(&resp, &mut out) {
            warn!("cannot encode a reply: {e}");
            return;
        }
        if let Err(e) = write_frame(&mut send, &out).await {
            debug!("client went away before its reply: {e}");
            return;
        }
        if last {
            break;
        }
    }
    let _ = send.finish();
}

fn serve_request(shared: &Shared, session: &Session, req: Request) -> Response {
    let op = req.op();
    let pages = match &req {
        Request::Read { pages } => pages.len(),
        Request::Write { pages } => pages.len(),
        Request::Free { pages } => pages.len(),
        _ => 0,
    };
    let started = Instant::now();
    let resp = handle(&shared.store, session, req);
    metrics::request(op, pages, &resp, started.elapsed());
    if matches!(op, "write" | "free" | "drop_space") {
        metrics::usage(&shared.store.usage());
    }
    resp
}
