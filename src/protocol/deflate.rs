//! RFC 7692 permessage-deflate: the offer answered, messages compressed for sending and
//! inflated on receipt.
//!
//! The server always answers with `server_no_context_takeover` and
//! `client_no_context_takeover`: every message is compressed on its own in both
//! directions. That is what lets a room's batch be compressed once and shared by every
//! member (no member's stream depends on what it was sent before), and what lets a
//! connection hold no zlib state between messages: one compressor and one inflater per
//! shard serve all of its connections. The cost is ratio on a client's small messages,
//! which cannot refer back to earlier ones (uWebSockets' shared decompressor makes the same
//! trade). Chromium, Firefox, Node `ws` and Python `websockets` accept the answer.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::frame::{FrameHeader, OpCode, MAX_HEADER_LEN};

/// The empty stored block a sync flush ends with: removed from every compressed message on
/// the wire and put back before inflating (RFC 7692 §7.2.1, §7.2.2).
const TRAILER: [u8; 4] = [0, 0, 0xff, 0xff];

/// The LZ77 window (log2) our messages use when the client asked for a smaller one than the
/// default 32 KiB. zlib's raw deflate does not go below 9, and at 9 it refers back at most
/// 512 − 262 = 250 bytes, so the one narrow window suits any `server_max_window_bits` from 8
/// to 14.
pub const NARROW_WINDOW: u8 = 9;

/// What was agreed with one client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Agreed {
    /// The client limited our window (`server_max_window_bits` below 15): our messages to
    /// it use [`NARROW_WINDOW`].
    pub narrow: bool,
}

/// Answers a `Sec-WebSocket-Extensions` offer: the first `permessage-deflate` element whose
/// parameters are valid is accepted (RFC 7692 §5: an element with an unknown, repeated or
/// malformed parameter is declined, and the next is tried). Returns what was agreed and the
/// response's extension value, or `None` (the connection goes on uncompressed).
pub fn negotiate(offers: &str) -> Option<(Agreed, String)> {
    offers.split(',').find_map(accept)
}

fn accept(element: &str) -> Option<(Agreed, String)> {
    let mut params = element.split(';').map(str::trim);
    if !params.next()?.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut seen = 0u8;
    let mut server_bits = None;
    let mut client_bits = None;
    for param in params {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(unquote(v.trim())?)),
            None => (param, None),
        };
        let bit = match (name.to_ascii_lowercase().as_str(), value) {
            ("server_no_context_takeover", None) => 1,
            ("client_no_context_takeover", None) => 2,
            ("server_max_window_bits", Some(v)) => {
                server_bits = Some(window_bits(v)?);
                4
            }
            ("client_max_window_bits", None) => 8,
            ("client_max_window_bits", Some(v)) => {
                client_bits = Some(window_bits(v)?);
                8
            }
            _ => return None,
        };
        if seen & bit != 0 {
            return None;
        }
        seen |= bit;
    }
    let mut answer =
        String::from("permessage-deflate; server_no_context_takeover; client_no_context_takeover");
    if let Some(bits) = server_bits {
        answer.push_str(&format!("; server_max_window_bits={bits}"));
    }
    if let Some(bits) = client_bits {
        // Any window does for messages inflated on their own; naming the client's own
        // value only confirms it.
        answer.push_str(&format!("; client_max_window_bits={bits}"));
    }
    let narrow = server_bits.is_some_and(|b| b < 15);
    Some((Agreed { narrow }, answer))
}

/// A parameter's value: a token, or the same in one pair of quotes (RFC 7692 §7.1.2.2).
fn unquote(value: &str) -> Option<&str> {
    match value.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"').filter(|v| !v.contains('"')),
        None => (!value.contains('"')).then_some(value),
    }
}

/// A window size parameter: 8 to 15, digits only, no leading zero (RFC 7692 §7.1.2).
fn window_bits(value: &str) -> Option<u8> {
    if value.starts_with('0') || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok().filter(|b| (8..=15).contains(b))
}

/// A shard's compressors: one per window in use, made on first use and reused for every
/// message (reset in between: no message depends on another).
pub struct Deflater {
    level: Compression,
    wide: Option<Compress>,
    narrow: Option<Compress>,
    scratch: Vec<u8>,
}

impl Deflater {
    /// Compresses at `level` (0–9).
    pub fn new(level: u32) -> Deflater {
        Deflater {
            level: Compression::new(level.min(9)),
            wide: None,
            narrow: None,
            scratch: Vec::new(),
        }
    }

    /// Appends `payload` to `out` as one final frame for a client that agreed to deflate:
    /// compressed (RSV1 set), or as it is when compressing would not make it smaller.
    /// Returns whether it was compressed. Cost: one deflate pass over `payload` and a reset
    /// of the compressor.
    pub fn write_frame(
        &mut self,
        opcode: OpCode,
        payload: &[u8],
        narrow: bool,
        out: &mut Vec<u8>,
    ) -> bool {
        let level = self.level;
        let c = match narrow {
            false => self.wide.get_or_insert_with(|| Compress::new(level, false)),
            true => self
                .narrow
                .get_or_insert_with(|| Compress::new_with_window_bits(level, false, NARROW_WINDOW)),
        };
        c.reset();
        let buf = &mut self.scratch;
        if buf.capacity() > 256 * 1024 {
            // An earlier large message is over; don't keep its buffer.
            *buf = Vec::new();
        }
        buf.clear();
        buf.reserve(payload.len() + payload.len() / 16 + 64);
        let mut at = 0;
        loop {
            let before = c.total_in();
            // Errors here mean a misused stream, which a reset one is not: sent plain.
            if c.compress_vec(&payload[at..], buf, FlushCompress::Sync)
                .is_err()
            {
                write_plain(opcode, payload, out);
                return false;
            }
            at += (c.total_in() - before) as usize;
            if at == payload.len() && buf.len() < buf.capacity() {
                // The flush completed: output space was left over.
                break;
            }
            buf.reserve(buf.capacity().max(64));
        }
        let body = buf.strip_suffix(&TRAILER).unwrap_or(buf);
        if body.len() >= payload.len() {
            write_plain(opcode, payload, out);
            return false;
        }
        let mut header = FrameHeader::server(opcode, body.len());
        header.rsv = 0b100;
        let mut head = [0u8; MAX_HEADER_LEN];
        let n = header.format(&mut head);
        out.reserve(n + body.len());
        out.extend_from_slice(&head[..n]);
        out.extend_from_slice(body);
        true
    }
}

fn write_plain(opcode: OpCode, payload: &[u8], out: &mut Vec<u8>) {
    super::encode::write_frame(opcode, payload, out);
}

/// Why a compressed message was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates past the size limit (close 1009): found before inflating past it.
    TooBig,
    /// Not valid DEFLATE data (close 1007).
    Corrupt,
}

/// A shard's inflater, reset for every message (clients agreed to no context takeover).
pub struct Inflater {
    d: Decompress,
}

impl Default for Inflater {
    fn default() -> Self {
        Inflater::new()
    }
}

impl Inflater {
    pub fn new() -> Inflater {
        Inflater {
            d: Decompress::new(false),
        }
    }

    /// Inflates one message's payload into `out` (cleared first), refusing it as soon as
    /// more than `cap` bytes come out: `out` never grows past `cap + 1` bytes (or the
    /// capacity it came with), whatever the ratio. Cost: O(inflated size).
    pub fn inflate(
        &mut self,
        input: &[u8],
        cap: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), InflateError> {
        self.d.reset(false);
        out.clear();
        for chunk in [input, &TRAILER[..]] {
            let mut at = 0;
            loop {
                if out.len() == out.capacity() {
                    if out.len() > cap {
                        return Err(InflateError::TooBig);
                    }
                    // Grow by doubling, never past one byte over the cap.
                    let room = cap.saturating_add(1) - out.len();
                    let want = out
                        .len()
                        .max(input.len().saturating_mul(4))
                        .max(256)
                        .min(room);
                    out.reserve_exact(want);
                }
                let before = self.d.total_in();
                let status = self
                    .d
                    .decompress_vec(&chunk[at..], out, FlushDecompress::Sync)
                    .map_err(|_| InflateError::Corrupt)?;
                at += (self.d.total_in() - before) as usize;
                if out.len() > cap {
                    return Err(InflateError::TooBig);
                }
                match status {
                    // A final block: whatever follows is not part of the message.
                    Status::StreamEnd => return Ok(()),
                    Status::BufError if out.len() < out.capacity() => break,
                    _ if at == chunk.len() && out.len() < out.capacity() => break,
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(offer: &str) -> Option<String> {
        negotiate(offer).map(|(_, a)| a)
    }

    #[test]
    fn answers_the_offers_browsers_and_libraries_send() {
        let base = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
        // Chromium, Firefox, Node `ws`, Python `websockets`.
        assert_eq!(
            answer("permessage-deflate; client_max_window_bits").as_deref(),
            Some(base)
        );
        assert_eq!(answer("permessage-deflate").as_deref(), Some(base));
        assert_eq!(
            answer("permessage-deflate; client_max_window_bits=12; server_no_context_takeover")
                .as_deref(),
            Some(&*format!("{base}; client_max_window_bits=12"))
        );
        let (agreed, a) = negotiate("permessage-deflate; server_max_window_bits=10").unwrap();
        assert!(agreed.narrow);
        assert_eq!(a, format!("{base}; server_max_window_bits=10"));
        let (agreed, _) = negotiate("permessage-deflate; server_max_window_bits=15").unwrap();
        assert!(!agreed.narrow);
        // Quoted values are tokens too (RFC 7692 §7.1.2.2).
        assert!(answer("permessage-deflate; client_max_window_bits=\"10\"").is_some());
    }

    #[test]
    fn a_bad_element_is_declined_and_the_next_one_tried() {
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; client_max_window_bits=abc",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; foo",
            "x-webkit-deflate-frame",
        ] {
            assert_eq!(answer(bad), None, "{bad}");
        }
        let (agreed, _) =
            negotiate("permessage-deflate; server_max_window_bits=20, permessage-deflate").unwrap();
        assert!(!agreed.narrow, "the second, valid offer was taken");
    }

    /// What a client does: put the trailer back, inflate with a raw inflater.
    fn client_inflate(frame: &[u8], window: u8) -> Vec<u8> {
        let (header, n) = FrameHeader::parse(
            frame,
            &super::super::Rules {
                rsv_allowed: 0b100,
                require_mask: false,
            },
        )
        .unwrap()
        .unwrap();
        let payload = &frame[n..];
        assert_eq!(payload.len() as u64, header.payload_len);
        if header.rsv == 0 {
            return payload.to_vec();
        }
        let mut d = Decompress::new_with_window_bits(false, window.max(9));
        let mut out = Vec::with_capacity(1 << 20);
        d.decompress_vec(
            &[payload, &TRAILER].concat(),
            &mut out,
            FlushDecompress::Sync,
        )
        .unwrap();
        out
    }

    fn json(n: usize) -> Vec<u8> {
        let mut s = String::from("[");
        for i in 0..n {
            s += &format!(
                "{{\"sym\":\"S{:03}\",\"bid\":{}.{:02}}},",
                i % 97,
                100 + i,
                i % 100
            );
        }
        s.pop();
        s.push(']');
        s.into_bytes()
    }

    #[test]
    fn compressed_frames_inflate_back_for_any_window() {
        let mut d = Deflater::new(6);
        let msg = json(200);
        for narrow in [false, true] {
            let mut out = Vec::new();
            d.write_frame(OpCode::Text, &msg, narrow, &mut out);
            assert_eq!(out[0], 0xC1, "FIN, RSV1, text");
            assert!(out.len() < msg.len() / 2, "{} of {}", out.len(), msg.len());
            // The narrow window must do for a client that asked for 8: what we sent refers
            // back at most 250 bytes. flate2's API inflates with 9 at the least; an 8-bit
            // inflater (Python's zlib) reads it in Autobahn 13.3 and 13.5.
            assert_eq!(client_inflate(&out, if narrow { 9 } else { 15 }), msg);
            // Every message stands alone: the same one compresses the same way again.
            let mut again = Vec::new();
            d.write_frame(OpCode::Text, &msg, narrow, &mut again);
            assert_eq!(out, again);
        }
        // What does not shrink goes plain.
        let mut out = Vec::new();
        d.write_frame(OpCode::Text, b"{}", false, &mut out);
        assert_eq!(out, [0x81, 2, b'{', b'}']);
    }

    #[test]
    fn inflates_within_the_cap_and_refuses_past_it() {
        let mut d = Deflater::new(1);
        let msg = json(500);
        let mut frame = Vec::new();
        d.write_frame(OpCode::Binary, &msg, false, &mut frame);
        let payload = &frame[4..];
        let mut i = Inflater::new();
        let mut out = Vec::new();
        i.inflate(payload, msg.len(), &mut out).unwrap();
        assert_eq!(out, msg);
        let mut fresh = Vec::new();
        assert_eq!(
            i.inflate(payload, msg.len() - 1, &mut fresh),
            Err(InflateError::TooBig)
        );
        assert!(fresh.capacity() <= msg.len(), "never past cap + 1");
        // The inflater is reusable after a refusal.
        i.inflate(payload, msg.len(), &mut out).unwrap();
        assert_eq!(out, msg);
        assert_eq!(
            i.inflate(&[0xff, 0xff, 0xff], 100, &mut out),
            Err(InflateError::Corrupt)
        );
        // A message sent as a final block (BFINAL, RFC 7692 §7.2.3.3) is fine too.
        let mut c = Compress::new(Compression::fast(), false);
        let mut whole = Vec::with_capacity(4096);
        c.compress_vec(b"hello hello hello", &mut whole, FlushCompress::Finish)
            .unwrap();
        i.inflate(&whole, 100, &mut out).unwrap();
        assert_eq!(out, b"hello hello hello");
    }

    #[test]
    fn a_bomb_is_refused_at_the_cap() {
        // 100 MiB of zeros compress to ~100 KB; refused once 64 KiB + 1 came out.
        let mut c = Compress::new(Compression::best(), false);
        let zeros = vec![0u8; 1 << 20];
        let mut bomb = Vec::with_capacity(200_000);
        for _ in 0..100 {
            c.compress_vec(&zeros, &mut bomb, FlushCompress::None)
                .unwrap();
        }
        c.compress_vec(&[], &mut bomb, FlushCompress::Sync).unwrap();
        let mut out = Vec::new();
        let t = std::time::Instant::now();
        assert_eq!(
            Inflater::new().inflate(&bomb, 64 * 1024, &mut out),
            Err(InflateError::TooBig)
        );
        assert!(out.capacity() <= 64 * 1024 + 1);
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
    }
}
