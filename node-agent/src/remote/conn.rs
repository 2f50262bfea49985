//! A connection to one memory server over either QUIC client: quinn's, or quinn-proto driven
//! on the agent's own thread ([`super::driven`]), chosen by `--transport`.

use std::net::SocketAddr;

use serde::Serialize;
use yonder_common::{
    client::{Client, ClientError, Outgoing, Requests, Timing},
    protocol::Response,
};

use super::driven::DrivenClient;

/// Which QUIC client the agent uses towards its memory servers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// quinn: Tokio tasks drive the endpoint and each connection.
    Quinn,
    /// quinn-proto driven by the agent's thread: requests are sent by the task that makes
    /// them, replies complete their request in the turn that reads them (the default since
    /// session 23: as fast or faster, with less CPU; docs/fault-path.md).
    #[default]
    Driven,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Quinn => "quinn",
            Transport::Driven => "driven",
        })
    }
}

/// An authenticated session with one memory server.
#[derive(Clone, Debug)]
pub enum ServerConn {
    /// Over quinn.
    Quinn(Client),
    /// Over quinn-proto driven on this thread.
    Driven(DrivenClient),
}

impl ServerConn {
    /// Identifies the connection (a reconnection has another).
    pub fn id(&self) -> u64 {
        match self {
            ServerConn::Quinn(c) => c.connection().stable_id() as u64,
            ServerConn::Driven(d) => d.id(),
        }
    }

    /// Closes the connection politely: the server learns at once that this agent is gone
    /// (requests in flight fail).
    pub fn close(&self) {
        match self {
            ServerConn::Quinn(c) => c.close(),
            ServerConn::Driven(d) => d.close(),
        }
    }

    /// Datagrams received from the server on this connection so far.
    pub fn datagrams_received(&self) -> u64 {
        match self {
            ServerConn::Quinn(c) => c.connection().stats().udp_rx.datagrams,
            ServerConn::Driven(d) => d.datagrams_received(),
        }
    }
}

impl Requests for ServerConn {
    async fn exchange<R: Serialize>(
        &self,
        req: Outgoing<'_, R>,
    ) -> Result<(Response, Timing), ClientError> {
        match self {
            ServerConn::Quinn(c) => c.exchange(req).await,
            ServerConn::Driven(d) => d.exchange(req).await,
        }
    }
}

/// How to reach a server (again, after its connection failed).
pub struct Dialer {
    /// The QUIC endpoint (quinn's client).
    pub endpoint: quinn::Endpoint,
    /// The TLS client configuration (the driven client makes a socket per connection).
    pub config: quinn::ClientConfig,
    /// Which client to use.
    pub transport: Transport,
    /// Server address.
    pub addr: SocketAddr,
    /// TLS server name.
    pub host: String,
}

impl Dialer {
    /// Connects, completes the TLS handshake and the protocol hello.
    pub async fn dial(&self) -> Result<ServerConn, ClientError> {
        const NAME: &str = "yonder-agent";
        Ok(match self.transport {
            Transport::Quinn => ServerConn::Quinn(
                Client::connect(&self.endpoint, self.addr, &self.host, NAME).await?,
            ),
            Transport::Driven => ServerConn::Driven(
                DrivenClient::connect(self.config.clone(), self.addr, &self.host, NAME).await?,
            ),
        })
    }
}
