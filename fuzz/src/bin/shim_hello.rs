//! AFL target `shim_hello`: see [`yonder_fuzz::shim::shim_hello`].

fn main() {
    // Before the fork server starts (afl::fuzz! starts it): every fuzzing process inherits it.
    yonder_fuzz::shim::shim_hello_setup();
    afl::fuzz!(|data: &[u8]| yonder_fuzz::shim::shim_hello(data));
}
