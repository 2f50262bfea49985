//! AFL target `agent_response`: see [`yonder_fuzz::frames::agent_response`].

fn main() {
    afl::fuzz!(|data: &[u8]| yonder_fuzz::frames::agent_response(data));
}
