//! The app's part of a connection's slab slot: which endpoint it speaks and that
//! endpoint's state. The reactor's part (socket, out-ring, input tail) sits next to it.

use crate::protocol::Decoder;
use crate::reactor::conn::TRANSPORT_BYTES;

use super::encoding::Encoding;
use super::slow::Tag;

/// What an upgraded WebSocket connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/echo`: every message comes back as it was (the conformance endpoint).
    Echo,
    /// `/ws`: the rooms protocol (JSON ops).
    Rooms,
}

/// A WebSocket connection's state: the frame decoder and the per-connection limits.
#[derive(Debug)]
pub struct Ws {
    pub route: Route,
    pub decoder: Decoder,
    /// Rate-limit bucket, in thousandths of a message, as of `stamp` (shard ms).
    pub tokens: u32,
    pub stamp: u32,
    /// When the last message arrived (shard ms), for `--idle-timeout`.
    pub last_msg: u32,
    /// permessage-deflate, if agreed (no zlib state: see [`crate::protocol::deflate`]).
    pub deflate: Option<crate::protocol::deflate::Agreed>,
}

/// Which endpoint a connection speaks. A new endpoint (an event stream) is a new variant
/// with only the state it needs: an HTTP request carries no WebSocket decoder.
#[derive(Debug)]
pub enum Endpoint {
    /// Reading a request head (or answering a plain HTTP request).
    Http,
    Ws(Ws),
    /// `GET /sse`: an event stream (no decoder: the client sends nothing more).
    Sse(super::sse::Sse),
}

/// App flags per connection.
pub mod flag {
    /// Upgraded without a token: waiting for `{"op":"auth"}` until the handshake deadline.
    pub const AUTH_PENDING: u8 = 1 << 0;
    /// Counted against `--max-conns-per-ip` / `--max-conns`: released when it closes.
    pub const COUNTED_IP: u8 = 1 << 1;
    pub const COUNTED_TOTAL: u8 = 1 << 2;
    /// A close frame (ours or the echo of the peer's) was queued.
    pub const CLOSE_SENT: u8 = 1 << 3;
    /// The peer broke the framing: what it sends after our close cannot be parsed (it is
    /// dropped unread until its EOF or the close timeout).
    pub const BROKEN: u8 = 1 << 4;
    /// Gap notices are owed to this member (see [`crate::app::slow::Gap`]).
    pub const OWED: u8 = 1 << 5;
    /// An authorized API request whose body is still coming: it may hold that much input.
    pub const API_BODY: u8 = 1 << 6;
    /// An API request waits for the shards' answers: further input is dropped.
    pub const API_WAIT: u8 = 1 << 7;
}

#[derive(Debug)]
pub struct AppConn {
    pub ep: Endpoint,
    /// The peer's address key ([`super::gate::peer_key`]; 0: unknown).
    pub peer: u32,
    /// Deliveries dropped for this connection by the slow-consumer policy (saturating).
    pub drops: u16,
    /// The close code sent or echoed (with [`flag::CLOSE_SENT`]), for the webhooks.
    pub close_code: u16,
    pub flags: u8,
}

// The whole slot stays at 128 bytes or less (an idle `/ws` connection must not cost more
// than it did before the seam): the app's share is what the transport leaves.
const _: () = assert!(std::mem::size_of::<AppConn>() <= 128 - TRANSPORT_BYTES);
const _: () = assert!(std::mem::size_of::<crate::reactor::conn::Conn<AppConn, Tag>>() <= 128);

impl AppConn {
    pub fn new(peer: u32) -> AppConn {
        AppConn {
            ep: Endpoint::Http,
            peer,
            drops: 0,
            close_code: 0,
            flags: 0,
        }
    }

    pub fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }

    pub fn set(&mut self, f: u8) {
        self.flags |= f;
    }

    pub fn clear(&mut self, f: u8) {
        self.flags &= !f;
    }

    /// The WebSocket state, if upgraded.
    pub fn ws(&mut self) -> Option<&mut Ws> {
        match &mut self.ep {
            Endpoint::Ws(ws) => Some(ws),
            _ => None,
        }
    }

    /// The event stream's state, if this is one.
    pub fn sse(&mut self) -> Option<&mut super::sse::Sse> {
        match &mut self.ep {
            Endpoint::Sse(s) => Some(s),
            _ => None,
        }
    }

    pub fn route(&self) -> Option<Route> {
        match &self.ep {
            Endpoint::Ws(ws) => Some(ws.route),
            _ => None,
        }
    }

    /// How this connection's deliveries are encoded.
    pub fn encoding(&self) -> Encoding {
        match &self.ep {
            Endpoint::Sse(s) => s.encoding(),
            Endpoint::Ws(Ws {
                deflate: Some(a), ..
            }) => {
                if a.narrow {
                    Encoding::DeflateNarrow
                } else {
                    Encoding::Deflate
                }
            }
            _ => Encoding::Ws,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_fits_its_budget() {
        let slot = std::mem::size_of::<crate::reactor::conn::Conn<AppConn, Tag>>();
        assert!(slot <= 128, "{slot}");
        // A vacant slab entry reuses a niche: no tag word on top.
        let entry = std::mem::size_of::<Option<crate::reactor::conn::Conn<AppConn, Tag>>>();
        assert_eq!(entry, slot);
    }
}
