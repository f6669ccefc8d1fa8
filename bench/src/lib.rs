//! roomcast-bench: the client side of roomcast's benchmarks.
//!
//! The load generator proper arrives with its own issue; this crate starts with what every
//! client engine needs and what the protocol micro-benchmarks in `benches/` share: frames
//! masked ahead of time, so a client sends without touching the payload.

use roomcast::protocol::encode::write_client_frame;
use roomcast::protocol::frame::OpCode;

/// One final client frame (masked with `key`, as RFC 6455 §5.1 requires of clients).
pub fn masked_frame(opcode: OpCode, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::new();
    write_client_frame(true, opcode, payload, key, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomcast::protocol::message::{Decoder, Event, Limits};

    #[test]
    fn masked_frames_decode_to_their_payload() {
        let mut frame = masked_frame(OpCode::Binary, b"payload", [1, 2, 3, 4]);
        let (n, event) = Decoder::new()
            .decode(&mut frame, &Limits::server(100))
            .unwrap();
        assert_eq!(n, 6 + 7);
        match event {
            Some(Event::Message { payload, .. }) => assert_eq!(&payload[..], b"payload"),
            other => panic!("{other:?}"),
        }
    }
}
