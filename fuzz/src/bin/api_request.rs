//! AFL target `api_request`: see [`yonder_fuzz::shim::api_request`].

fn main() {
    afl::fuzz!(|data: &[u8]| yonder_fuzz::shim::api_request(data));
}
