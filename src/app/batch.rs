//! A room's batch, encoded for the members: once per encoding some member uses
//! (WebSocket frames, the same compressed with either window, event-stream events), each
//! into one shared frame.

use std::sync::Arc;

use crate::protocol::SharedFrame;
use crate::rooms::{Sealed, ENCODINGS};

use super::compress::Codec;
use super::sse::{self, ENC_DEFLATE, ENC_DEFLATE_NARROW, ENC_MANY, ENC_ONE, ENC_WS};
use super::wire;

/// The shared frames of one sealed batch, by encoding (`None`: no member uses it).
pub(super) type Frames = [Option<SharedFrame>; ENCODINGS];

/// Encodes `s`'s batch once for every encoding its members use, in `buf` (reused). A batch
/// with nothing large enough to compress is the same bytes for members that agreed to
/// deflate as for the others: one frame for all of them. Cost: one encode and one
/// allocation per encoding in use (a compression per message for the deflate ones).
pub(super) fn frames(s: &Sealed<'_>, buf: &mut Vec<u8>, codec: &mut Option<Box<Codec>>) -> Frames {
    let mut frames: Frames = Default::default();
    let deflating = s.encodings[ENC_DEFLATE] + s.encodings[ENC_DEFLATE_NARROW] > 0;
    let plain_only = deflating
        && codec.as_deref().is_some_and(|c| {
            !s.batch
                .clone()
                .any(|(seq, d)| c.compresses(s.room, *seq, d))
        });
    for encoding in 0..ENCODINGS {
        if s.encodings[encoding] == 0 {
            continue;
        }
        let like = match encoding {
            ENC_DEFLATE | ENC_DEFLATE_NARROW if plain_only => ENC_WS,
            _ => encoding,
        };
        if let Some(same) = frames[like].clone() {
            frames[encoding] = Some(same);
            continue;
        }
        buf.clear();
        encode(s.room, s.epoch, s.batch.clone(), like, buf, codec, true);
        let frame = SharedFrame::from_encoded(Arc::from(&buf[..]));
        frames[like] = Some(frame.clone());
        frames[encoding] = Some(frame);
    }
    frames
}

/// Encodes a batch of `room` for members with `encoding` (the deflate encodings need the
/// shard's `codec`, there whenever a member could have agreed to deflate). `shared`: for
/// every member (a turn's batch), else for one (a replay).
pub(super) fn encode<'a>(
    room: &str,
    epoch: u32,
    batch: impl Iterator<Item = &'a (u64, Arc<str>)>,
    encoding: usize,
    out: &mut Vec<u8>,
    codec: &mut Option<Box<Codec>>,
    shared: bool,
) {
    for (seq, data) in batch {
        match (encoding, codec.as_deref_mut()) {
            (ENC_DEFLATE | ENC_DEFLATE_NARROW, Some(codec)) => {
                codec.write_msg((room, *seq, data), encoding, shared, out)
            }
            (ENC_ONE | ENC_MANY, _) => {
                sse::write_msg(room, epoch, *seq, data, encoding == ENC_ONE, out)
            }
            _ => wire::write_msg(room, *seq, data, out),
        }
    }
}
