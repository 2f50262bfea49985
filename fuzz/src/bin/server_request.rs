//! AFL target `server_request`: see [`yonder_fuzz::frames::server_request`].

fn main() {
    // Before the fork server starts (afl::fuzz! starts it): every fuzzing process inherits the store.
    yonder_fuzz::frames::server_request_setup();
    afl::fuzz!(|data: &[u8]| yonder_fuzz::frames::server_request(data));
}
