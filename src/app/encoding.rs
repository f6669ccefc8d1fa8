//! How a member's deliveries are encoded. A room's batch is encoded once per encoding some
//! member uses ([`super::batch`]); the owner counts members per encoding (by
//! [`Encoding::index`], in arrays of [`crate::rooms::ENCODINGS`]).

/// One way of encoding deliveries. One byte: it travels in every join and leave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Encoding {
    /// WebSocket text frames.
    Ws,
    /// An event stream on one room: every `msg` event has its `id:`.
    StreamOne,
    /// An event stream on several rooms: events without `id:`, then the stream's own id
    /// block.
    StreamMany,
    /// WebSocket frames for a client that agreed to permessage-deflate: messages from
    /// `--deflate-min-size` up compressed with the default window.
    Deflate,
    /// The same with the narrow window (the client asked for `server_max_window_bits`
    /// below 15).
    DeflateNarrow,
}

impl Encoding {
    pub const ALL: [Encoding; 5] = [
        Encoding::Ws,
        Encoding::StreamOne,
        Encoding::StreamMany,
        Encoding::Deflate,
        Encoding::DeflateNarrow,
    ];

    /// Its place in per-encoding arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Whether it is an event stream's (else: WebSocket frames).
    pub fn is_stream(self) -> bool {
        matches!(self, Encoding::StreamOne | Encoding::StreamMany)
    }

    /// Whether it compresses (permessage-deflate).
    pub fn is_deflate(self) -> bool {
        matches!(self, Encoding::Deflate | Encoding::DeflateNarrow)
    }
}

// The owner's per-encoding arrays have exactly one slot per encoding, in `ALL`'s order.
const _: () = assert!(Encoding::ALL.len() == crate::rooms::ENCODINGS);
const _: () = {
    let mut i = 0;
    while i < Encoding::ALL.len() {
        assert!(Encoding::ALL[i] as usize == i);
        i += 1;
    }
};
