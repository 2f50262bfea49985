//! AFL target `agent_config`: see [`yonder_fuzz::config::agent_config`].

fn main() {
    afl::fuzz!(|data: &[u8]| yonder_fuzz::config::agent_config(data));
}
