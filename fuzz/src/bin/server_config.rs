//! AFL target `server_config`: see [`yonder_fuzz::config::server_config`].

fn main() {
    afl::fuzz!(|data: &[u8]| yonder_fuzz::config::server_config(data));
}
