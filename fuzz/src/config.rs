//! Text the agent and the server parse: their TOML configuration files and the daemon's control
//! socket (one JSON request per line from `yonder-agent run`).

use yonder_agent::daemon::{DaemonConfig, Request};
use yonder_server::config::ServerConfig;

/// Parses `text` as a TOML document and prints it back: the same document in toml's own layout.
fn reprinted(text: &str) -> String {
    let doc: toml::Table = toml::from_str(text).expect("a config that parses is a TOML document");
    toml::to_string(&doc).expect("a TOML document prints")
}

/// The server's configuration file. Checks: a configuration depends on the document, not on its
/// layout (the reprinted document parses to the same configuration).
pub fn server_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = ServerConfig::from_toml(text) else {
        return;
    };
    assert_eq!(ServerConfig::from_toml(&reprinted(text)).ok(), Some(config));
}

/// The agent daemon's configuration file. Checks: as for the server's, and the replication
/// policy derived from it can be computed for any values.
pub fn agent_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = DaemonConfig::from_toml(text) else {
        return;
    };
    let policy = config.policy();
    assert!(policy.lost_after >= policy.timeout);
    assert_eq!(DaemonConfig::from_toml(&reprinted(text)).ok(), Some(config));
}

/// A request line on the daemon's control socket. Checks: a request prints back as JSON that
/// parses to the same request.
pub fn control_request(data: &[u8]) {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(req) = serde_json::from_str::<Request>(line) else {
        return;
    };
    let printed = serde_json::to_string(&req).expect("a request prints");
    let again: Request = serde_json::from_str(&printed).expect("a printed request parses");
    assert_eq!(
        serde_json::to_string(&again).expect("a request prints"),
        printed
    );
}
