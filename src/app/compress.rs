//! permessage-deflate on a shard (`--deflate`): the compressors and the inflater every
//! connection that agreed to it shares. A connection keeps only what was agreed (one
//! byte); see [`crate::protocol::deflate`] for why no per-connection zlib state is needed.

use crate::protocol::deflate::{Deflater, InflateError, Inflater};
use crate::protocol::{MessageKind, OpCode, SharedFrame};

use super::encoding::Encoding;
use super::wire;

/// Compression level of the frames a room's members share: compressed once per batch,
/// sent to every member, so ratio is worth the time (level 6: 3.2× on 1 KB JSON in
/// ~9 µs here, against 2.4× in ~3 µs at level 1).
const SHARED_LEVEL: u32 = 6;
/// Compression level of a frame for one connection (an echo, a replay): paid per message.
const DIRECT_LEVEL: u32 = 1;

/// A shard's permessage-deflate state.
pub struct Codec {
    shared: Deflater,
    direct: Deflater,
    inflater: Inflater,
    /// Messages smaller than this go uncompressed (`--deflate-min-size`).
    min_size: usize,
    /// A delivery's JSON before compression, and an inflated message: reused.
    json: Vec<u8>,
    inflated: Vec<u8>,
    /// Messages compressed since the shard last took the count (its `deflate_out`).
    pub compressed: u64,
}

impl Codec {
    pub fn new(min_size: usize) -> Codec {
        Codec {
            shared: Deflater::new(SHARED_LEVEL),
            direct: Deflater::new(DIRECT_LEVEL),
            inflater: Inflater::new(),
            min_size,
            json: Vec::new(),
            inflated: Vec::new(),
            compressed: 0,
        }
    }

    /// Whether a `msg` op is large enough to be compressed (`--deflate-min-size`).
    pub fn compresses(&self, room: &str, seq: u64, data: &str) -> bool {
        wire::msg_json_len(room, seq, data) >= self.min_size
    }

    /// Appends one `msg` frame for members with a deflate `encoding`: compressed when it
    /// is at least `--deflate-min-size`. `shared`: a room's batch, sent to every member
    /// (compressed at level 6, paid once for all of them); else one member's replay (level
    /// 1). Cost: one deflate pass over the message.
    pub fn write_msg(
        &mut self,
        msg: (&str, u64, &str),
        encoding: Encoding,
        shared: bool,
        out: &mut Vec<u8>,
    ) {
        let (room, seq, data) = msg;
        let json = &mut self.json;
        json.clear();
        wire::write_msg_json(room, seq, data, json);
        if json.len() < self.min_size {
            return crate::protocol::encode::write_frame(OpCode::Text, json, out);
        }
        let narrow = encoding == Encoding::DeflateNarrow;
        let deflater = if shared {
            &mut self.shared
        } else {
            &mut self.direct
        };
        let compressed = deflater.write_frame(OpCode::Text, json, narrow, out);
        self.compressed += u64::from(compressed);
    }

    /// One message for one connection that agreed to deflate (an echo): compressed when it
    /// is at least `--deflate-min-size`.
    pub fn frame(&mut self, kind: MessageKind, payload: &[u8], narrow: bool) -> SharedFrame {
        if payload.len() < self.min_size {
            return SharedFrame::new(kind.opcode(), payload);
        }
        let mut out = Vec::with_capacity(payload.len() / 2 + 16);
        let compressed = self
            .direct
            .write_frame(kind.opcode(), payload, narrow, &mut out);
        self.compressed += u64::from(compressed);
        SharedFrame::from_encoded(out.into())
    }

    /// Inflates a received message, at most `cap` bytes of it, and checks a text message is
    /// UTF-8. The buffer is lent out: give it back with [`Codec::give_back`].
    pub fn inflate(
        &mut self,
        kind: MessageKind,
        payload: &[u8],
        cap: usize,
    ) -> Result<Vec<u8>, Refused> {
        let mut out = std::mem::take(&mut self.inflated);
        let refused = match self.inflater.inflate(payload, cap, &mut out) {
            Err(InflateError::TooBig) => Some(Refused::TooBig),
            Err(InflateError::Corrupt) => Some(Refused::Corrupt),
            Ok(()) if kind == MessageKind::Text && std::str::from_utf8(&out).is_err() => {
                Some(Refused::Utf8)
            }
            Ok(()) => None,
        };
        match refused {
            Some(r) => {
                self.give_back(out);
                Err(r)
            }
            None => Ok(out),
        }
    }

    /// Takes back the buffer [`Codec::inflate`] lent, unless a large message made it large.
    pub fn give_back(&mut self, buf: Vec<u8>) {
        if buf.capacity() <= 64 * 1024 {
            self.inflated = buf;
        }
    }
}

/// Why a compressed message was refused, and the close it gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Past `--max-message` once inflated: 1009.
    TooBig,
    /// Not DEFLATE data: 1007.
    Corrupt,
    /// A text message that is not UTF-8 once inflated: 1007.
    Utf8,
}

impl Refused {
    pub fn close(self) -> (crate::protocol::CloseCode, &'static str) {
        use crate::protocol::CloseCode;
        match self {
            Refused::TooBig => (CloseCode::MESSAGE_TOO_BIG, "message too big once inflated"),
            Refused::Corrupt => (
                CloseCode::INVALID_PAYLOAD,
                "compressed data is not valid DEFLATE",
            ),
            Refused::Utf8 => (
                CloseCode::INVALID_PAYLOAD,
                "text message is not valid UTF-8",
            ),
        }
    }
}
