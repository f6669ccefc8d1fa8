//! roomcast-bench: the client side of roomcast's benchmarks.
//!
//! The load generator proper arrives with its own issue; this crate starts with what every
//! client engine needs and what the protocol micro-benchmarks in `benches/` share: frames
//! masked ahead of time, so a client sends without touching the payload.

use roomcast::protocol::frame::{FrameHeader, OpCode, MAX_HEADER_LEN};
use roomcast::protocol::mask::apply_mask;

/// One final client frame (masked with `key`, as RFC 6455 §5.1 requires of clients).
pub fn masked_frame(opcode: OpCode, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    let header = FrameHeader {
        fin: true,
        rsv: 0,
        opcode,
        mask: Some(key),
        payload_len: payload.len() as u64,
    };
    let mut head = [0u8; MAX_HEADER_LEN];
    let n = header.format(&mut head);
    let mut out = Vec::with_capacity(n + payload.len());
    out.extend_from_slice(&head[..n]);
    out.extend_from_slice(payload);
    apply_mask(&mut out[n..], key, 0);
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
