//! Server frames: never masked (RFC 6455 §5.1), written into a caller buffer, or built once
//! as a [`SharedFrame`] that any number of connections send from without copying.

use std::sync::Arc;

use super::error::CloseCode;
use super::frame::{FrameHeader, OpCode, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN};

/// Appends one final, unmasked frame to `out`. Cost: one header format + one memcpy.
pub fn write_frame(opcode: OpCode, payload: &[u8], out: &mut Vec<u8>) {
    let mut head = [0u8; MAX_HEADER_LEN];
    let n = FrameHeader::server(opcode, payload.len()).format(&mut head);
    out.reserve(n + payload.len());
    out.extend_from_slice(&head[..n]);
    out.extend_from_slice(payload);
}

/// Appends one client frame (masked with `key`, as RFC 6455 §5.1 requires of clients):
/// what the load generator and tests send. Cost: one header format, one copy, one mask pass.
pub fn write_client_frame(
    fin: bool,
    opcode: OpCode,
    payload: &[u8],
    key: [u8; 4],
    out: &mut Vec<u8>,
) {
    let header = FrameHeader {
        fin,
        rsv: 0,
        opcode,
        mask: Some(key),
        payload_len: payload.len() as u64,
    };
    let mut head = [0u8; MAX_HEADER_LEN];
    let n = header.format(&mut head);
    out.reserve(n + payload.len());
    out.extend_from_slice(&head[..n]);
    let start = out.len();
    out.extend_from_slice(payload);
    super::mask::apply_mask(&mut out[start..], key, 0);
}

/// Appends a close frame with `code` and `reason`, the reason cut at a character boundary
/// so the payload stays within the 125 bytes of a control frame (RFC 6455 §5.5).
pub fn write_close(code: CloseCode, reason: &str, out: &mut Vec<u8>) {
    let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
    let n = close_payload(code, reason, &mut payload);
    write_frame(OpCode::Close, &payload[..n], out);
}

/// Fills `out` with a close payload (code, then as much of `reason` as fits on a UTF-8
/// boundary) and returns its length.
pub fn close_payload(code: CloseCode, reason: &str, out: &mut [u8; MAX_CONTROL_PAYLOAD]) -> usize {
    out[..2].copy_from_slice(&code.0.to_be_bytes());
    let mut cut = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    out[2..2 + cut].copy_from_slice(&reason.as_bytes()[..cut]);
    2 + cut
}

/// An immutable, reference-counted, fully framed message: header and payload in one
/// allocation. Cloning it is one atomic increment; every connection that sends it points
/// its iovec at the same bytes. This is the unit of zero-copy fan-out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedFrame(Arc<[u8]>);

impl SharedFrame {
    /// Frames `payload` as one final frame. One allocation, one copy of the payload.
    pub fn new(opcode: OpCode, payload: &[u8]) -> SharedFrame {
        SharedFrame::from_parts(opcode, &[payload])
    }

    /// Frames the concatenation of `parts` as one final frame, so a payload assembled from
    /// pieces (a JSON envelope around spliced client bytes) is copied exactly once.
    pub fn from_parts(opcode: OpCode, parts: &[&[u8]]) -> SharedFrame {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut head = [0u8; MAX_HEADER_LEN];
        let n = FrameHeader::server(opcode, len).format(&mut head);
        // `RepeatN` reports its exact length, so collecting it into an `Arc<[u8]>`
        // allocates once at the final size; the frame is then written in place.
        let mut bytes: Arc<[u8]> = std::iter::repeat_n(0u8, n + len).collect();
        let buf = Arc::get_mut(&mut bytes).expect("a fresh Arc has no other owner");
        buf[..n].copy_from_slice(&head[..n]);
        let mut at = n;
        for part in parts {
            buf[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        SharedFrame(bytes)
    }

    /// Wraps bytes that already hold one or more complete frames.
    pub fn from_encoded(bytes: Arc<[u8]>) -> SharedFrame {
        SharedFrame(bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_5_7_unmasked_hello() {
        let mut out = Vec::new();
        write_frame(OpCode::Text, b"Hello", &mut out);
        assert_eq!(out, [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
        assert_eq!(
            SharedFrame::new(OpCode::Text, b"Hello").as_bytes(),
            &out[..]
        );
    }

    #[test]
    fn shared_frame_from_parts_is_one_frame() {
        let f = SharedFrame::from_parts(OpCode::Text, &[b"{\"data\":", b"[1,2]", b"}"]);
        assert_eq!(&f.as_bytes()[..2], &[0x81, 14]);
        assert_eq!(&f.as_bytes()[2..], b"{\"data\":[1,2]}");
        let g = f.clone();
        assert!(
            std::ptr::eq(f.as_bytes(), g.as_bytes()),
            "clones share the bytes"
        );
    }

    #[test]
    fn shared_frame_uses_extended_lengths() {
        let big = vec![7u8; 70_000];
        let f = SharedFrame::new(OpCode::Binary, &big);
        assert_eq!(&f.as_bytes()[..2], &[0x82, 127]);
        assert_eq!(f.len(), 10 + 70_000);
    }

    #[test]
    fn client_frames_decode_to_their_payload_at_every_length_form() {
        use crate::protocol::message::{Decoder, Event, Limits};
        for len in [0usize, 5, 125, 126, 65535, 65536] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut out = Vec::new();
            write_client_frame(true, OpCode::Binary, &payload, [9, 8, 7, 6], &mut out);
            let total = out.len();
            let (n, event) = Decoder::new()
                .decode(&mut out, &Limits::server(1 << 20))
                .unwrap();
            assert_eq!(n, total);
            match event {
                Some(Event::Message { payload: got, .. }) => assert_eq!(&got[..], &payload[..]),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn close_reason_is_cut_on_a_char_boundary() {
        let reason = "é".repeat(100); // 200 bytes
        let mut out = Vec::new();
        write_close(CloseCode::NORMAL, &reason, &mut out);
        assert_eq!(out[1] as usize, out.len() - 2);
        assert!(out.len() - 2 <= 125);
        assert!(std::str::from_utf8(&out[4..]).is_ok());
    }
}
