//! Shared pieces of Yonder: the wire protocol and its framing, TLS and certificate handling, the
//! QUIC transport settings and a small client for memory servers.
//!
//! Nothing here decides policy (placement, retries, eviction); it only defines what travels on the
//! wire and how to open an authenticated connection.

pub mod certs;
pub mod client;
pub mod codec;
pub mod gso;
pub mod poll;
pub mod protocol;
pub mod size;
pub mod tls;
pub mod transport;
pub mod udp;

pub use protocol::{PageKey, PAGE_SIZE, PROTOCOL_VERSION};
