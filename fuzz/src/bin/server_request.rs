//! AFL target `server_request`: see [`yonder_fuzz::frames::server_request`].

fn main() {
    afl::fuzz!(|data: &[u8]| yonder_fuzz::frames::server_request(data));
}
