//! A client for one memory server: one QUIC connection and a pool of request streams ("lanes").
//!
//! Each lane is a long-lived bidirectional stream that carries one request at a time; many lanes
//! give many requests in flight without head-of-line blocking. Reusing streams instead of opening
//! one per request saves the stream setup, teardown and a server task per request, which measured
//! as most of the per-request cost (see docs/protocol.md). A request that fails or is cancelled
//! drops its lane, so a lane never holds half a reply.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Instant,
};

use quinn::{RecvStream, SendStream};
use serde::Serialize;

use crate::{
    codec::{self, decode_payload, encode_frame, CodecError},
    protocol::*,
    transport::{read_frame, write_frame, FrameReadError},
};

/// Why a request to a memory server failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The address could not be resolved.
    #[error("cannot resolve {0}")]
    Resolve(String),
    /// The connection could not be started.
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The connection failed or was refused (e.g. the TLS handshake).
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Sending the request failed.
    #[error("send: {0}")]
    Write(#[from] quinn::WriteError),
    /// Receiving the reply failed.
    #[error("receive: {0}")]
    Read(#[from] FrameReadError),
    /// A message could not be encoded or decoded.
    #[error("codec: {0}")]
    Codec(#[from] CodecError),
    /// The server closed the stream without replying.
    #[error("server closed the stream without a reply")]
    NoReply,
    /// The server answered with an error.
    #[error("server error {code:?}: {message}")]
    Server {
        /// Machine-readable reason.
        code: ErrorCode,
        /// Explanation from the server.
        message: String,
    },
    /// The server answered with a reply of the wrong kind.
    #[error("unexpected reply to {0}")]
    Unexpected(&'static str),
    /// The reply did not carry one result per requested page.
    #[error("reply to {op} has {got} results for {want} pages")]
    WrongCount {
        /// Operation.
        op: &'static str,
        /// Results received.
        got: usize,
        /// Pages requested.
        want: usize,
    },
}

/// What the server said in its hello.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerInfo {
    /// Server software and version.
    pub server: String,
    /// Tenant name the server took from our certificate.
    pub tenant: String,
    /// Capacity of the server in bytes.
    pub capacity_bytes: u64,
}

/// Splits `HOST:PORT` and resolves it; the host part is the name the certificate must carry.
pub async fn resolve(spec: &str) -> Result<(SocketAddr, String), ClientError> {
    let (host, _) = spec
        .rsplit_once(':')
        .ok_or_else(|| ClientError::Resolve(format!("{spec} (expected HOST:PORT)")))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let addr = tokio::net::lookup_host(spec)
        .await
        .map_err(|e| ClientError::Resolve(format!("{spec}: {e}")))?
        .next()
        .ok_or_else(|| ClientError::Resolve(spec.to_string()))?;
    Ok((addr, host))
}

/// Creates a client endpoint bound to an ephemeral port of the right address family.
pub fn endpoint(config: quinn::ClientConfig, ipv6: bool) -> std::io::Result<quinn::Endpoint> {
    let bind: SocketAddr = if ipv6 {
        "[::]:0".parse().expect("literal address")
    } else {
        "0.0.0.0:0".parse().expect("literal address")
    };
    let mut endpoint = crate::transport::endpoint(bind, None)?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// Lanes (requests in flight and idle streams together): as many streams as the server lets a
/// connection keep open.
const MAX_IDLE_LANES: usize = crate::transport::MAX_STREAMS as usize;

struct Lane {
    send: SendStream,
    recv: RecvStream,
    buf: Vec<u8>,
}

/// An authenticated session with one memory server.
#[derive(Clone)]
pub struct Client {
    conn: quinn::Connection,
    info: ServerInfo,
    lanes: Arc<Mutex<Vec<Lane>>>,
    /// One permit per stream the server lets us open. Lanes stay open while pooled, so without
    /// this bound a burst of requests would wait forever for a stream that never closes.
    in_flight: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("remote", &self.conn.remote_address())
            .field("info", &self.info)
            .finish()
    }
}

impl Client {
    /// Connects, completes the TLS handshake and the protocol hello.
    pub async fn connect(
        endpoint: &quinn::Endpoint,
        addr: SocketAddr,
        server_name: &str,
        client: &str,
    ) -> Result<Self, ClientError> {
        let conn = endpoint.connect(addr, server_name)?.await?;
        let mut this = Self {
            conn,
            info: ServerInfo {
                server: String::new(),
                tenant: String::new(),
                capacity_bytes: 0,
            },
            lanes: Arc::default(),
            in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_IDLE_LANES)),
        };
        this.info = hello(&this, client).await?;
        Ok(this)
    }

    /// What the server said in its hello.
    pub fn info(&self) -> &ServerInfo {
        &self.info
    }

    /// The underlying QUIC connection.
    pub fn connection(&self) -> &quinn::Connection {
        &self.conn
    }

    /// Closes the connection politely.
    pub fn close(&self) {
        self.conn.close(0u32.into(), b"bye");
    }
}

/// The requests of the protocol, over any transport that can carry one request frame and bring
/// back its reply: quinn's [`Client`] here, or the agent's own quinn-proto client.
#[allow(async_fn_in_trait)] // used on one thread; the futures need not be Send
pub trait Requests {
    /// Sends one request frame (a message to encode, or a frame already in chunks) and reads its
    /// reply; error replies become [`ClientError::Server`].
    async fn exchange<R: Serialize>(
        &self,
        req: Outgoing<'_, R>,
    ) -> Result<(Response, Timing), ClientError>;

    /// Sends one request and waits for its reply; error replies become [`ClientError::Server`].
    async fn call<R: Serialize>(&self, req: &R) -> Result<Response, ClientError> {
        self.call_timed(req).await.map(|(resp, _)| resp)
    }

    /// Like [`Requests::call`], and says when the request was handed to QUIC and when its reply
    /// was read.
    async fn call_timed<R: Serialize>(&self, req: &R) -> Result<(Response, Timing), ClientError> {
        self.exchange(Outgoing::Message(req)).await
    }

    /// Reads a batch of pages.
    async fn read(&self, pages: Vec<ReadItem>) -> Result<Vec<ReadResult>, ClientError> {
        let want = pages.len();
        match self.call(&Request::Read { pages }).await? {
            Response::Read { pages } => counted("read", pages, want),
            _ => Err(ClientError::Unexpected("read")),
        }
    }

    /// Reads a batch of pages, and says when the request left and its reply arrived.
    async fn read_timed(
        &self,
        pages: Vec<ReadItem>,
    ) -> Result<(Vec<ReadResult>, Timing), ClientError> {
        let want = pages.len();
        match self.call_timed(&Request::Read { pages }).await? {
            (Response::Read { pages }, t) => Ok((counted("read", pages, want)?, t)),
            _ => Err(ClientError::Unexpected("read")),
        }
    }

    /// Writes a batch of pages.
    async fn write(&self, pages: Vec<WriteItem>) -> Result<Vec<WriteResult>, ClientError> {
        let shared: Vec<SharedWriteItem> = pages.into_iter().map(Into::into).collect();
        self.write_shared(&shared).await
    }

    /// Writes a batch of pages whose contents are shared (the same request as
    /// [`Requests::write`]): each content goes to QUIC as it is, without a copy into a frame.
    async fn write_shared(
        &self,
        pages: &[SharedWriteItem],
    ) -> Result<Vec<WriteResult>, ClientError> {
        let want = pages.len();
        let chunks = codec::write_frame_chunks(pages)?;
        match self.exchange::<()>(Outgoing::Chunks(chunks)).await?.0 {
            Response::Write { pages } => counted("write", pages, want),
            _ => Err(ClientError::Unexpected("write")),
        }
    }

    /// Frees a batch of pages; returns how many were freed.
    async fn free(&self, pages: Vec<FreeItem>) -> Result<u64, ClientError> {
        match self.call(&Request::Free { pages }).await? {
            Response::Free { freed } => Ok(freed),
            _ => Err(ClientError::Unexpected("free")),
        }
    }

    /// Frees every page of a space; returns how many were freed.
    async fn drop_space(&self, space: u32) -> Result<u64, ClientError> {
        match self.call(&Request::DropSpace { space }).await? {
            Response::DropSpace { freed } => Ok(freed),
            _ => Err(ClientError::Unexpected("drop_space")),
        }
    }

    /// Asks for usage figures.
    async fn stats(&self) -> Result<StatsReply, ClientError> {
        match self.call(&Request::Stats).await? {
            Response::Stats(s) => Ok(s),
            _ => Err(ClientError::Unexpected("stats")),
        }
    }
}

impl Requests for Client {
    async fn exchange<R: Serialize>(
        &self,
        req: Outgoing<'_, R>,
    ) -> Result<(Response, Timing), ClientError> {
        let _permit = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| ClientError::NoReply)?;
        let idle = self.lanes.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut lane = match idle {
            Some(lane) => lane,
            None => {
                let (send, recv) = self.conn.open_bi().await?;
                Lane {
                    send,
                    recv,
                    buf: Vec::new(),
                }
            }
        };
        // On any error the lane is dropped here: its stream may hold a partial frame.
        let (resp, timing) = exchange(&mut lane, req).await?;
        let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        if lanes.len() < MAX_IDLE_LANES {
            lanes.push(lane);
        }
        drop(lanes);
        match resp {
            Response::Error { code, message } => Err(ClientError::Server { code, message }),
            resp => Ok((resp, timing)),
        }
    }
}

/// The protocol's hello on a fresh connection: says who `client` is, returns what the server
/// said (the first request on any connection, whatever carries it).
pub async fn hello(conn: &impl Requests, client: &str) -> Result<ServerInfo, ClientError> {
    let hello = Request::Hello {
        protocol_version: PROTOCOL_VERSION,
        client: client.to_string(),
    };
    match conn.call(&hello).await? {
        Response::Hello {
            server,
            tenant,
            capacity_bytes,
            ..
        } => Ok(ServerInfo {
            server,
            tenant,
            capacity_bytes,
        }),
        _ => Err(ClientError::Unexpected("hello")),
    }
}

fn counted<T>(op: &'static str, items: Vec<T>, want: usize) -> Result<Vec<T>, ClientError> {
    if items.len() == want {
        Ok(items)
    } else {
        Err(ClientError::WrongCount {
            op,
            got: items.len(),
            want,
        })
    }
}

/// When a request was handed to QUIC and when its reply had been read (for per-stage latency).
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// The request frame was written to its stream.
    pub sent: Instant,
    /// The reply frame was read from its stream.
    pub replied: Instant,
}

/// What a request sends: a message to encode (into the lane's buffer), or a frame already in
/// chunks, which QUIC takes as they are.
pub enum Outgoing<'a, R> {
    /// Encoded into the lane's buffer, which QUIC copies from.
    Message(&'a R),
    /// A whole frame whose chunks QUIC takes as they are.
    Chunks(Vec<bytes::Bytes>),
}

/// A lane's buffer above this after a reply (a large read) is given back, not kept.
const LANE_BUF_KEPT_BYTES: usize = 256 * 1024;

/// Sends `req` on `lane` and reads the reply.
async fn exchange<R: Serialize>(
    lane: &mut Lane,
    req: Outgoing<'_, R>,
) -> Result<(Response, Timing), ClientError> {
    match req {
        Outgoing::Message(req) => {
            encode_frame(req, &mut lane.buf)?;
            write_frame(&mut lane.send, &lane.buf).await?;
        }
        Outgoing::Chunks(mut chunks) => {
            lane.send.write_all_chunks(&mut chunks).await?;
        }
    }
    let sent = Instant::now();
    if !read_frame(&mut lane.recv, &mut lane.buf).await? {
        return Err(ClientError::NoReply);
    }
    let replied = Instant::now();
    let resp = decode_payload::<Response>(&lane.buf)?;
    if lane.buf.capacity() > LANE_BUF_KEPT_BYTES {
        lane.buf = Vec::new();
    }
    Ok((resp, Timing { sent, replied }))
}
