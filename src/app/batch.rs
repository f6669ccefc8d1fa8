//! A room's batch, encoded for the members: once per encoding some member uses
//! (WebSocket frames, the same compressed with either window, event-stream events), each
//! into one shared frame.

use std::sync::Arc;

use crate::protocol::SharedFrame;
use crate::rooms::{Sealed, ENCODINGS};

use super::compress::Codec;
use super::encoding::Encoding;
use super::sse;
use super::wire;

/// The shared frames of one sealed batch, by encoding (`None`: no member uses it).
pub(super) type Frames = [Option<SharedFrame>; ENCODINGS];

/// Encodes `s`'s batch once for every encoding its members use, in `buf` (reused). A batch
/// with nothing large enough to compress is the same bytes for members that agreed to
/// deflate as for the others: one frame for all of them. Cost: one encode and one
/// allocation per encoding in use (a compression per message for the deflate ones).
pub(super) fn frames(s: &Sealed<'_>, buf: &mut Vec<u8>, codec: &mut Option<Box<Codec>>) -> Frames {
    let mut frames: Frames = Default::default();
    let deflating = Encoding::ALL
        .iter()
        .any(|e| e.is_deflate() && s.encodings[e.index()] > 0);
    let plain_only = deflating
        && codec.as_deref().is_some_and(|c| {
            !s.batch
                .clone()
                .any(|(seq, d)| c.compresses(s.room, *seq, d))
        });
    for encoding in Encoding::ALL {
        if s.encodings[encoding.index()] == 0 {
            continue;
        }
        let like = match encoding {
            e if e.is_deflate() && plain_only => Encoding::Ws,
            _ => encoding,
        };
        if let Some(same) = frames[like.index()].clone() {
            frames[encoding.index()] = Some(same);
            continue;
        }
        buf.clear();
        encode(s.room, s.epoch, s.batch.clone(), like, buf, codec, true);
        let frame = SharedFrame::from_encoded(Arc::from(&buf[..]));
        frames[like.index()] = Some(frame.clone());
        frames[encoding.index()] = Some(frame);
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
    encoding: Encoding,
    out: &mut Vec<u8>,
    codec: &mut Option<Box<Codec>>,
    shared: bool,
) {
    for (seq, data) in batch {
        match (encoding, codec.as_deref_mut()) {
            (Encoding::Deflate | Encoding::DeflateNarrow, Some(codec)) => {
                codec.write_msg((room, *seq, data), encoding, shared, out)
            }
            (Encoding::StreamOne | Encoding::StreamMany, _) => {
                let with_id = encoding == Encoding::StreamOne;
                sse::write_msg(room, epoch, *seq, data, with_id, out)
            }
            _ => wire::write_msg(room, *seq, data, out),
        }
    }
}
