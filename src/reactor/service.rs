//! The seam between the reactor and what runs on it.
//!
//! The reactor owns sockets, buffers, out-rings, timers, flushing and the close lifecycle;
//! a [`Service`] owns what a connection means (a WebSocket endpoint, an HTTP request, an
//! event stream) and what a shard shares (rooms, sessions). The reactor is generic over
//! it, so every call below is static and inlined: no `dyn`, no per-event allocation.
//!
//! The service acts through a context: [`Cx`] for the shard (the other connections, the
//! mesh, the counters), [`Link`] for one connection (send a frame, a shared frame or a
//! control frame, pause, close). It never reaches into the reactor's fields.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use slab::Slab;

use super::conn::{flag, Conn};
use super::outring::{Full, Kind, OutRing, Tag};
use super::stats::{Figures, TransportFigures};
use crate::mesh::Endpoint;
use crate::protocol::SharedFrame;

/// What a shard runs. Each shard has its own instance (built by the factory given to
/// [`Server::start`](super::Server::start)); instances talk only through the mesh.
pub trait Service: Sized + 'static {
    /// The service's part of a connection's slab slot. Keep it small: it is paid by every
    /// idle connection.
    type Conn;
    /// What shards (and non-shard mesh endpoints) send each other.
    type Msg: crate::mesh::Message;
    /// What the service counts on each shard, published with the reactor's figures.
    type Figures: Figures;
    /// What the service marks each queued frame with (a room and its seqs, say), so that
    /// its slow-consumer policies decide without reading the frame again. Lives in the
    /// ring's heap entries, beside the frame: keep it small, it is paid per queued frame.
    type Tag: Tag;

    /// A socket was accepted into `slot` (from `peer`, when the backend knows it). Its
    /// state.
    fn open(&mut self, slot: usize, peer: Option<SocketAddr>) -> Self::Conn;

    /// Bytes arrived for `slot` (after any input held back earlier). Returns how many were
    /// consumed; the rest is held and offered again, in front of the next bytes or when a
    /// paused connection resumes. May unmask or otherwise rewrite `data` in place.
    ///
    /// Bytes keep arriving after the service queued its last ones ([`Link::finish`]): a
    /// closing connection lingers, reading what the peer still sends so that the peer's
    /// stack never answers our close with a reset. The service drops them, and calls
    /// [`Link::goodbye`] when the peer has closed too (its close frame).
    fn data(&mut self, cx: &mut Cx<Self>, slot: usize, data: &mut [u8]) -> usize;

    /// How many unconsumed bytes `conn` may hold while it is not paused (a handshake head,
    /// a frame header). Past it, [`Service::overflow`].
    fn max_pending(&self, conn: &Self::Conn) -> usize;

    /// The connection held more unconsumed input than it may: close it.
    fn overflow(&mut self, link: &mut Link<'_, Self::Conn, Self::Tag, Self::Figures>);

    /// A heartbeat tick reached a connection marked with [`Link::start_heartbeat`]: send a
    /// ping (or a comment line), or close it if it has been idle too long. Returns whether
    /// the peer must show a sign of life before the pong timeout.
    fn tick(&mut self, link: &mut Link<'_, Self::Conn, Self::Tag, Self::Figures>) -> bool;

    /// The handshake deadline passed and the connection has not been
    /// [established](Link::establish). Close it (with [`Link::abort`] or a close frame).
    fn handshake_timeout(&mut self, link: &mut Link<'_, Self::Conn, Self::Tag, Self::Figures>);

    /// The drain schedule reached this connection (one with a heartbeat): say goodbye.
    fn drain(&mut self, link: &mut Link<'_, Self::Conn, Self::Tag, Self::Figures>);

    /// A message from another shard (or from this one, or a non-shard endpoint).
    fn message(&mut self, cx: &mut Cx<Self>, msg: Self::Msg);

    /// The end of a loop turn, after the mesh was drained: seal batches, publish figures.
    fn end_turn(&mut self, cx: &mut Cx<Self>);

    /// The connection in `slot` is gone (its socket closed, nothing in flight); the
    /// service's state of it is handed back (what was still queued is dropped).
    fn closed(&mut self, cx: &mut Cx<Self>, slot: usize, conn: Self::Conn);
}

/// The loop turn's clock, read once when the turn starts and lent to every event of it.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// When the turn started.
    pub now: Instant,
    /// The same in milliseconds since the shard started (coarse; wraps after 49 days).
    pub now_ms: u32,
    /// Loop turns so far (a member is slow when frames from earlier turns fill its ring).
    pub turn: u32,
}

/// What every connection of a shard is held to, the same for all of them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rules {
    /// `--out-ring`: data frames a connection may have queued.
    pub out_cap: usize,
    /// How long a closing connection may take to finish closing.
    pub linger: Duration,
    /// `--write-delay`: how long a delivery may wait for others to share its send.
    pub write_delay: Duration,
}

/// A closing connection's deadline.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadline {
    pub at: Instant,
    pub slot: u32,
    pub gen: u32,
}

/// The shard as a service sees it: its connections, its mesh endpoint, its counters.
pub struct Cx<S: Service> {
    pub(super) conns: Slab<Conn<S::Conn, S::Tag>>,
    pub(super) flush: Vec<usize>,
    // Constant timeouts expire in the order they were set, so a FIFO is a timer: O(1) to
    // add, O(expired) to check.
    pub(super) lingers: VecDeque<Deadline>,
    /// Connections whose deliveries wait for `--write-delay` (a FIFO too: one delay for
    /// all, so entries come due in the order they were added).
    pub(super) delayed: VecDeque<Deadline>,
    /// Paused connections the service wants read again, handled after the turn.
    pub(super) resumes: Vec<(usize, u32)>,
    /// This shard's counters (the reactor's), published once per turn.
    pub(super) stats: TransportFigures,
    /// The service's figures, published with them.
    pub(super) figures: S::Figures,
    pub(super) mesh: Endpoint<S::Msg>,
    pub(super) clock: Clock,
    pub(super) rules: Rules,
}

impl<S: Service> Cx<S> {
    /// The service's figures on this shard (published once per turn).
    pub fn figures(&mut self) -> &mut S::Figures {
        &mut self.figures
    }

    /// This shard's mesh endpoint: send to other shards (and the off-shard threads).
    pub fn mesh(&mut self) -> &mut Endpoint<S::Msg> {
        &mut self.mesh
    }

    /// This loop turn's clock.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// `--out-ring`: data frames a connection may have queued.
    pub fn out_cap(&self) -> usize {
        self.rules.out_cap
    }

    /// The connection in `slot`, if that slot holds generation `gen` and is not being torn
    /// down.
    pub fn link(&mut self, slot: usize, gen: u32) -> Option<Link<'_, S::Conn, S::Tag, S::Figures>> {
        self.link_any(slot).filter(|l| l.conn.gen == gen)
    }

    /// The connection in `slot`, whatever its generation (the service is handling one of
    /// its events).
    pub fn link_any(&mut self, slot: usize) -> Option<Link<'_, S::Conn, S::Tag, S::Figures>> {
        let conn = self.conns.get_mut(slot)?;
        Some(Link {
            slot,
            conn,
            flush: &mut self.flush,
            lingers: &mut self.lingers,
            delayed: &mut self.delayed,
            figures: &mut self.figures,
            clock: self.clock,
            rules: self.rules,
        })
    }

    /// The service's state of the connection in `slot` (read-only, no side effects).
    pub fn app(&self, slot: usize) -> Option<&S::Conn> {
        self.conns.get(slot).map(|c| &c.app)
    }

    /// The generation of the connection in `slot`.
    pub fn gen(&self, slot: usize) -> Option<u32> {
        self.conns.get(slot).map(|c| c.gen)
    }

    /// Connections on this shard, in any phase.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Reads a connection paused with [`Link::pause`] again (after this turn), starting with
    /// the input it held back.
    pub fn resume(&mut self, slot: usize, gen: u32) {
        self.resumes.push((slot, gen));
    }
}

/// One connection, lent to the service for one event (`A` its state, `T` the tags on its
/// queued frames, `F` the service's figures).
pub struct Link<'a, A, T, F> {
    slot: usize,
    conn: &'a mut Conn<A, T>,
    flush: &'a mut Vec<usize>,
    lingers: &'a mut VecDeque<Deadline>,
    delayed: &'a mut VecDeque<Deadline>,
    figures: &'a mut F,
    /// The loop turn: what a ring holds from earlier turns is what makes a member slow.
    clock: Clock,
    rules: Rules,
}

impl<'a, A, T: Tag, F> Link<'a, A, T, F> {
    // The shard's parts a link borrows, one by one (the heartbeat holds the slab apart).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        slot: usize,
        conn: &'a mut Conn<A, T>,
        flush: &'a mut Vec<usize>,
        lingers: &'a mut VecDeque<Deadline>,
        delayed: &'a mut VecDeque<Deadline>,
        figures: &'a mut F,
        clock: Clock,
        rules: Rules,
    ) -> Link<'a, A, T, F> {
        Link {
            slot,
            conn,
            flush,
            lingers,
            delayed,
            figures,
            clock,
            rules,
        }
    }

    /// The service's figures on this shard.
    pub fn figures(&mut self) -> &mut F {
        self.figures
    }

    /// The shard's coarse clock (ms since it started), set once per loop turn.
    pub fn now_ms(&self) -> u32 {
        self.clock.now_ms
    }

    /// `--out-ring`: data frames the connection may have queued.
    pub fn out_cap(&self) -> usize {
        self.rules.out_cap
    }

    pub fn slot(&self) -> usize {
        self.slot
    }

    pub fn gen(&self) -> u32 {
        self.conn.gen
    }

    /// The service's state of this connection.
    pub fn app(&mut self) -> &mut A {
        &mut self.conn.app
    }

    /// Frames queued and not sent yet.
    pub fn queued(&self) -> &OutRing<T> {
        &self.conn.out
    }

    /// Whether a data frame would be refused: stop consuming input and [`Link::pause`].
    pub fn is_full(&self) -> bool {
        self.conn.out.is_full(self.rules.out_cap)
    }

    /// Whether the connection is closing (its last bytes are queued): send nothing more.
    pub fn is_closing(&self) -> bool {
        self.conn.is_closing()
    }

    fn queue_flush(&mut self) {
        if !self.conn.has(flag::QUEUED) {
            self.conn.set(flag::QUEUED);
            self.flush.push(self.slot);
        }
    }

    /// After a room's delivery: flushed this turn, or with `--write-delay` once the delay
    /// has passed since the first one waiting (anything else queued meanwhile, a reply, a
    /// control frame, a close, takes them along sooner). A ring half full, in frames or
    /// in `max_bytes`, goes now, so that waiting never makes a member look slow to its
    /// policy. No timer per connection: a flag and an entry in the shard's FIFO.
    fn queue_delivery(&mut self, max_bytes: usize) {
        let delay = self.rules.write_delay;
        let out = &self.conn.out;
        if delay.is_zero() || out.len() * 2 >= self.rules.out_cap || out.bytes() * 2 >= max_bytes {
            return self.queue_flush();
        }
        if !self.conn.has(flag::QUEUED | flag::DELAYED) {
            self.conn.set(flag::DELAYED);
            self.delayed.push_back(Deadline {
                at: self.clock.now + delay,
                slot: self.slot as u32,
                gen: self.conn.gen,
            });
        }
    }

    /// Queues a data frame (a reply, an echo, a delivery). Refused when the ring holds
    /// `--out-ring` frames. Cost: O(1), the caller's clone is the only refcount touched.
    pub fn send(&mut self, frame: SharedFrame) -> Result<(), Full> {
        self.send_up_to(frame, self.rules.out_cap)
    }

    /// Queues a data frame as long as fewer than `cap` are queued.
    pub fn send_up_to(&mut self, frame: SharedFrame, cap: usize) -> Result<(), Full> {
        if self.is_closing() {
            return Err(Full);
        }
        self.conn.out.mark_turn(self.clock.turn);
        self.conn.out.push(frame, cap)?;
        self.queue_flush();
        Ok(())
    }

    /// Queues a room's delivery, tagged `tag` (of [`Kind::Delivery`]), in loop turn `turn`
    /// (see [`OutRing::push_delivery`]).
    pub fn deliver(&mut self, frame: SharedFrame, tag: T, max_bytes: usize) -> Result<(), Full> {
        if self.is_closing() {
            return Err(Full);
        }
        let (cap, turn) = (self.rules.out_cap, self.clock.turn);
        let pushed = self
            .conn
            .out
            .push_delivery(frame, tag, cap, max_bytes, turn);
        if !self.conn.out.is_empty() {
            self.queue_delivery(max_bytes);
        }
        pushed
    }

    /// Queues a delivery as long as fewer than `cap` frames are queued, whatever the turn
    /// (after a slow-consumer policy made room).
    pub fn deliver_up_to(&mut self, frame: SharedFrame, tag: T, cap: usize) -> Result<(), Full> {
        if self.is_closing() {
            return Err(Full);
        }
        debug_assert_eq!(tag.kind(), Kind::Delivery);
        self.conn.out.mark_turn(self.clock.turn);
        self.conn.out.push_tagged(frame, tag, cap)?;
        // A slow member's policy made room: no reason to wait.
        self.queue_flush();
        Ok(())
    }

    /// Queues a notice about deliveries, tagged `tag` (of [`Kind::Notice`]), as long as
    /// fewer than `cap` frames are queued.
    pub fn send_notice(&mut self, frame: SharedFrame, tag: T, cap: usize) -> Result<(), Full> {
        if self.is_closing() {
            return Err(Full);
        }
        debug_assert_eq!(tag.kind(), Kind::Notice);
        self.conn.out.mark_turn(self.clock.turn);
        self.conn.out.push_tagged(frame, tag, cap)?;
        self.queue_flush();
        Ok(())
    }

    /// Drops the oldest queued delivery no send is using (drop-oldest slow policy), and
    /// returns its tag: what the member will not get.
    pub fn drop_oldest(&mut self) -> Option<T> {
        self.conn.out.drop_oldest_data().map(|(_, tag)| tag)
    }

    /// Removes the queued deliveries and notices no send is using whose tags `doomed`
    /// picks (conflation, merging notices). Cost: O(queued frames), tags only.
    pub fn remove_queued(&mut self, mut doomed: impl FnMut(T) -> bool) {
        self.conn.out.remove_data(|_, tag| doomed(tag))
    }

    /// Queues a control frame (a pong, a ping, a handshake response), which goes out even
    /// past a full ring, up to a small slack. Refused past that: a peer that fills even the
    /// slack is not reading.
    pub fn send_control(&mut self, frame: SharedFrame) -> Result<(), Full> {
        if self.is_closing() {
            return Err(Full);
        }
        self.conn.out.mark_turn(self.clock.turn);
        self.conn.out.push_control(frame, self.rules.out_cap)?;
        self.queue_flush();
        Ok(())
    }

    /// Queues the last bytes this connection gets (a close frame, an HTTP response) and
    /// closes it once they are out, lingering: the write side is shut, what the peer still
    /// sends is read and dropped, and the socket is closed at [`Link::goodbye`], the peer's
    /// EOF or the close timeout, whichever comes first.
    pub fn finish(&mut self, last: SharedFrame) {
        if self.is_closing() {
            return;
        }
        self.conn.out.mark_turn(self.clock.turn);
        if let Err(Full) = self.conn.out.push_control(last.clone(), self.rules.out_cap) {
            // Past even the control slack: what is queued goes (the peer is not reading
            // it), the last bytes still do.
            self.conn.out.clear();
            let _ = self.conn.out.push_control(last, self.rules.out_cap);
        }
        self.closing();
        self.queue_flush();
    }

    /// Closes the connection without sending anything more (what is queued is dropped).
    pub fn abort(&mut self) {
        self.conn.out.clear();
        self.conn.tail = thin_vec::ThinVec::new();
        self.closing();
        self.goodbye();
    }

    /// The peer has closed too (its close frame came after ours, or ours answered its
    /// own): close the socket as soon as our last bytes are out.
    pub fn goodbye(&mut self) {
        self.conn.set(flag::GOODBYE);
    }

    fn closing(&mut self) {
        self.conn.set(flag::CLOSING);
        // A closing connection reads on (and drops) whatever the peer sends.
        self.conn.clear(flag::PAUSED);
        if !self.conn.has(flag::DEADLINE) {
            self.conn.set(flag::DEADLINE);
            self.lingers.push_back(Deadline {
                at: self.clock.now + self.rules.linger,
                slot: self.slot as u32,
                gen: self.conn.gen,
            });
        }
    }

    /// Stops reading this connection until its out-ring drains (or [`Cx::resume`]).
    pub fn pause(&mut self) {
        self.conn.set(flag::PAUSED);
    }

    pub fn is_paused(&self) -> bool {
        self.conn.has(flag::PAUSED)
    }

    /// The handshake is over: its deadline no longer applies.
    pub fn establish(&mut self) {
        self.conn.set(flag::ESTABLISHED);
    }

    /// The connection is an open stream: the heartbeat wheel ticks it, and a drain gives
    /// it a moment in the drain window.
    pub fn start_heartbeat(&mut self) {
        self.conn.set(flag::HEARTBEAT);
    }
}
