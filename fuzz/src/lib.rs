//! What each fuzz target checks, as plain functions of the input bytes: the AFL binaries in
//! `src/bin/` call them, and the tests in `tests/` run them over the checked-in seeds.
//!
//! Every check panics when an invariant breaks; AFL records the input as a crash.

pub mod config;
pub mod frames;
pub mod seeds;
pub mod shim;

/// A target's check of one input.
pub type Check = fn(&[u8]);

/// Every target: its name (also the binary's and the seed folder's) and its check.
pub const TARGETS: &[(&str, Check)] = &[
    ("server_request", frames::server_request),
    ("agent_response", frames::agent_response),
    ("shim_hello", shim::shim_hello),
    ("api_request", shim::api_request),
    ("control_request", config::control_request),
    ("server_config", config::server_config),
    ("agent_config", config::agent_config),
];
