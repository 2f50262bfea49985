//! AFL target `shim_hello`: see [`yonder_fuzz::shim::shim_hello`].

fn main() {
    afl::fuzz!(|data: &[u8]| yonder_fuzz::shim::shim_hello(data));
}
