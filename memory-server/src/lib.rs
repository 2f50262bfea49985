//! The Yonder memory server: an in-memory, per-tenant, capacity-limited page store served over
//! QUIC with mutual TLS.

pub mod config;
pub mod driven;
pub mod frame_reader;
pub mod handler;
pub mod metrics;
pub mod reply;
pub mod server;
pub mod spin;
pub mod store;
pub mod wire;
