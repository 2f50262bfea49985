//! AFL target `control_request`: see [`yonder_fuzz::config::control_request`].

fn main() {
    afl::fuzz!(|data: &[u8]| yonder_fuzz::config::control_request(data));
}
