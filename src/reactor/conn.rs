//! A connection's transport state: the socket, its generation, what the backend has in
//! flight, the out-ring of frames to send and the input not consumed yet. What the bytes
//! mean lives next to it in `app`, the [`Service`](super::Service)'s own per-connection
//! state. No syscalls here: the backends own the sockets.

use thin_vec::ThinVec;

use super::outring::{Kind, OutRing};

/// Flags the reactor keeps per connection.
pub mod flag {
    /// On the shard's list of connections to flush this turn.
    pub const QUEUED: u16 = 1 << 0;
    /// Input processing stopped because the out-ring is full (or the service asked); the
    /// backend stops reading until it drains.
    pub const PAUSED: u16 = 1 << 1;
    /// A send is in flight (io_uring): its iovecs point into the ring.
    pub const SENDING: u16 = 1 << 2;
    /// A multishot recv is armed (io_uring) or reads are wanted (epoll).
    pub const RECEIVING: u16 = 1 << 3;
    /// The write side has been shut down after the final bytes went out.
    pub const SHUT_WR: u16 = 1 << 4;
    /// Close requested; the slot is freed once no operation refers to it any more.
    pub const DEAD: u16 = 1 << 5;
    /// The close deadline is set (the connection entered closing).
    pub const DEADLINE: u16 = 1 << 6;
    /// Bytes arrived since the last heartbeat check.
    pub const SEEN: u16 = 1 << 7;
    /// A ping went out and the peer has not been heard from since.
    pub const AWAIT_PONG: u16 = 1 << 8;
    /// An io_uring shutdown(SHUT_WR) is in flight: the descriptor must not be closed (and
    /// its fixed-file index reused) before it completes.
    pub const SHUTTING: u16 = 1 << 9;
    /// The service queued its last bytes: input is discarded; once the ring drains the
    /// backend half-closes, then closes at EOF or the linger deadline.
    pub const CLOSING: u16 = 1 << 10;
    /// The service is done with the handshake: the handshake deadline no longer applies.
    pub const ESTABLISHED: u16 = 1 << 11;
    /// The heartbeat wheel ticks this connection ([`Service::tick`](crate::reactor::Service::tick)).
    pub const HEARTBEAT: u16 = 1 << 12;
    /// The peer has finished closing too (its close frame came, or the service aborted):
    /// once the last bytes are out the socket is closed without waiting for its EOF.
    pub const GOODBYE: u16 = 1 << 13;
    /// epoll: the connection had its read budget this turn with bytes still waiting, and
    /// is on the shard's list to be read again next turn.
    pub const UNREAD: u16 = 1 << 14;
    /// `--write-delay`: the connection is on the shard's list of delayed flushes (its
    /// deliveries go out when that entry is due, or sooner with anything else).
    pub const DELAYED: u16 = 1 << 15;
}

/// One slab slot: the transport's part and the service's part (`app`); `T` is the
/// service's [`Tag`](super::outring::Tag) on each queued frame. Its size is part of
/// the per-connection memory budget (DESIGN.md: ≤ 256 B per idle connection, slab slot
/// included); the transport's share is asserted below, the app's where it is defined.
#[derive(Debug)]
pub struct Conn<A, T> {
    /// The socket: a plain fd (epoll) or a fixed-file index (io_uring).
    pub io: u32,
    /// Distinguishes this connection from earlier ones in the same slab slot.
    pub gen: u32,
    pub flags: u16,
    /// Bytes received since the connection started closing, read and dropped (bounded by
    /// [`LINGER_BYTES`](super::shard::LINGER_BYTES)).
    pub(crate) lingered: u32,
    pub out: OutRing<T>,
    /// Bytes received but not yet consumed by the service: an incomplete handshake or
    /// frame tail, or input held back while paused. Empty, with no heap storage, while
    /// idle; a thin vector (one pointer) because it is empty nearly always.
    pub(crate) tail: ThinVec<u8>,
    pub app: A,
}

/// The transport's share of a slot: 56 bytes (io, gen, flags, the linger count, a 32-byte
/// out-ring, the tail pointer), so a service's per-connection state may take 72 and keep the slot at
/// 128 bytes. The tag type does not change it: tags live in the ring's heap entries.
pub const TRANSPORT_BYTES: usize = std::mem::size_of::<Conn<(), Kind>>();
const _: () = assert!(TRANSPORT_BYTES <= 56);

impl<A, T> Conn<A, T> {
    pub fn new(io: u32, gen: u32, app: A) -> Conn<A, T> {
        Conn {
            io,
            gen,
            flags: 0,
            lingered: 0,
            out: OutRing::default(),
            tail: ThinVec::new(),
            app,
        }
    }

    pub fn has(&self, f: u16) -> bool {
        self.flags & f != 0
    }

    pub fn set(&mut self, f: u16) {
        self.flags |= f;
    }

    pub fn clear(&mut self, f: u16) {
        self.flags &= !f;
    }

    /// Whether the service queued its last bytes (or the connection is being torn down).
    pub fn is_closing(&self) -> bool {
        self.has(flag::CLOSING | flag::DEAD)
    }

    /// Bytes held in the tail (for tests and accounting).
    pub fn tail_len(&self) -> usize {
        self.tail.len()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_transport_share_fits_its_budget() {
        let bytes = std::mem::size_of::<super::Conn<(), super::Kind>>();
        assert!(bytes <= 56, "{bytes}");
        let tagged = std::mem::size_of::<super::Conn<(), (u64, u64, u64)>>();
        assert_eq!(tagged, bytes, "the tags live on the heap");
    }
}
