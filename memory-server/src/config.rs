//! Server configuration: a TOML file with documented defaults, overridden by command-line flags.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use yonder_common::size::ByteSize;

/// Everything `yonder-server` needs to run.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// UDP address to listen on. Default `0.0.0.0:7070`.
    pub listen: SocketAddr,
    /// Memory the store may use for pages (4 KiB per page with content, 64 bytes per zero page).
    /// Default `1GiB`.
    pub capacity: ByteSize,
    /// Directory holding `ca.pem` and the server certificate. Default `/etc/yonder/tls`.
    pub tls_dir: PathBuf,
    /// File stem of the server certificate in `tls_dir` (`NAME.pem`, `NAME.key`). Default `server`.
    pub cert_name: String,
    /// Address of the Prometheus endpoint; none by default.
    pub metrics: Option<SocketAddr>,
    /// Worker threads serving requests. Default 1: one thread reads the socket, runs QUIC and
    /// serves the store without cross-thread wake-ups, which costs less per request than spreading
    /// one connection over several threads. More threads pay off with many busy clients.
    pub threads: usize,
    /// Fixed datagram size (1200..=9000) for a network whose path MTU is known, such as loopback
    /// or jumbo frames; 4400 carries a page per packet. None by default: path-MTU discovery.
    pub mtu: Option<u16>,
    /// Microseconds the request path keeps polling for the next request after a read arrived,
    /// instead of sleeping until the kernel wakes it (bounded; an idle server sleeps; writes and
    /// frees open no window). 0 turns it off. Default [`DEFAULT_SPIN_US`].
    pub spin_us: u64,
    /// How requests are read and answered: `driven` (one thread driving quinn-proto itself,
    /// docs/server-path.md) or `quinn` (Tokio tasks on quinn's endpoint, the only one that can
    /// use several `threads`). Default: `driven` with one thread, `quinn` with more.
    pub io: Option<Io>,
}

/// How the server runs its QUIC endpoint.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Io {
    /// quinn's endpoint, a Tokio task per connection and per stream, on `threads` threads.
    Quinn,
    /// One thread drives quinn-proto: reads the socket, runs QUIC, answers, sends.
    Driven,
}

impl ServerConfig {
    /// The request path to use: the one configured, else [`Io::Driven`] for one thread and
    /// [`Io::Quinn`] for several.
    pub fn io(&self) -> Io {
        self.io.unwrap_or(if self.threads <= 1 {
            Io::Driven
        } else {
            Io::Quinn
        })
    }
}

/// Default spin window after a request, µs: with the agent spinning too, a remote fault's p50
/// went from 130–150 µs to 40–55 µs here (docs/fault-path.md).
pub const DEFAULT_SPIN_US: u64 = 200;

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 7070)),
            capacity: ByteSize(1 << 30),
            tls_dir: PathBuf::from("/etc/yonder/tls"),
            cert_name: yonder_common::certs::DEFAULT_SERVER.into(),
            metrics: None,
            threads: 1,
            mtu: None,
            spin_us: DEFAULT_SPIN_US,
            io: None,
        }
    }
}

impl ServerConfig {
    /// Reads a TOML configuration file; missing keys take their defaults.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", path.display()))?;
        Self::from_toml(&text)
            .map_err(|e| anyhow::anyhow!("invalid config {}: {e}", path.display()))
    }

    /// Parses the text of a TOML configuration; missing keys take their defaults.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_keys_override_defaults() {
        let c: ServerConfig =
            toml::from_str("listen = \"127.0.0.1:9000\"\ncapacity = \"8GiB\"\n").unwrap();
        assert_eq!(c.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(c.capacity, ByteSize(8 << 30));
        assert_eq!(c.tls_dir, ServerConfig::default().tls_dir);
    }

    #[test]
    fn the_request_path_follows_the_threads_unless_given() {
        let one: ServerConfig = toml::from_str("threads = 1").unwrap();
        assert_eq!(one.io(), Io::Driven);
        let four: ServerConfig = toml::from_str("threads = 4").unwrap();
        assert_eq!(four.io(), Io::Quinn);
        let given: ServerConfig = toml::from_str("io = \"quinn\"").unwrap();
        assert_eq!(given.io(), Io::Quinn);
        assert!(toml::from_str::<ServerConfig>("io = \"tokio\"").is_err());
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(toml::from_str::<ServerConfig>("capacty = \"1GiB\"").is_err());
    }
}
