//! The part of a shard both backends share, generic over the [`Service`] it runs: the
//! slab of connections, the list of connections to flush this turn, the deadlines, the
//! heartbeat wheel and the drain. The backends call in with socket events and get back
//! what to do at the socket level ([`Next`]); the service is called for what the bytes
//! mean. Between the two sits each connection's transport (`transport.rs`: plain, or
//! TLS in `tls.rs`): the backends' byte events enter there, and reach the plain path
//! here.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use slab::Slab;

use super::conn::{flag, Conn};
use super::drain::{Drain, Schedule};
use super::heartbeat::{Beat, Heartbeat};
use super::service::{Clock, Cx, Deadline, Link, Rules, Service};
use super::stats::{SharedStats, TransportFigures};
use crate::mesh::Endpoint;
use transport::Transports;

/// What the backend must do with a connection after an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    Nothing,
    /// Stop reading: the out-ring is full (epoll: skip reads; io_uring: cancel the recv).
    StopReading,
    /// The out-ring drained below its limit: read again, starting with what is buffered.
    ResumeReading,
    /// Everything owed went out; half-close, and read on (dropping what comes) until the
    /// peer's EOF, its goodbye or the close deadline.
    ShutdownWrite,
    /// Close the socket now.
    Close,
}

/// Timeouts the shard enforces on every connection.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// From accept to [`Link::establish`] (slowloris, first-message auth).
    pub handshake: Duration,
    /// From the last bytes queued to the peer's EOF.
    pub linger: Duration,
    /// Between heartbeat ticks of each connection.
    pub ping_interval: Duration,
    /// From a ping to the drop of a connection that has sent nothing since.
    pub pong_timeout: Duration,
}

/// Where a shard is in a drain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainStatus {
    Serving,
    /// Closing connections on schedule; the backend must not accept any more.
    Draining,
    /// Every connection is gone (or the deadline passed): the shard may stop.
    Done,
}

/// Input a paused connection may hold back before it is closed: the backend should have
/// stopped reading long before.
const MAX_PAUSED_INPUT: usize = 4 << 20;

/// What a closing connection may still send (read and dropped) before it is closed without
/// waiting any longer: a client caught mid-way through a large message gets to finish it
/// and read our close frame; one that floods does not keep a shard busy for the whole
/// close timeout.
pub const LINGER_BYTES: u32 = 16 << 20;

pub struct Core<S: Service> {
    pub cx: Cx<S>,
    pub service: S,
    index: usize,
    next_gen: u32,
    timeouts: Timeouts,
    handshake_deadlines: VecDeque<Deadline>,
    heartbeat: Heartbeat,
    /// When the shard started: the origin of `cx.now_ms`.
    started: Instant,
    drain: Arc<Drain>,
    schedule: Option<Schedule>,
    /// Where this shard publishes its figures once per turn.
    shared: Arc<SharedStats>,
    /// io_uring: the fixed-file table size (for the metrics).
    pub fixed_files: u64,
    inbox: Vec<S::Msg>,
    /// What the backend must do for connections changed outside an event of their own.
    actions: Vec<(usize, Next)>,
    /// Each connection's transport: what carries its bytes.
    transports: Transports,
    /// The kernel reads sends after the call returns (io_uring): what a send points
    /// into is pinned until it completes.
    pub pin_sends: bool,
}

/// Generations are packed into 28 bits of io_uring user data.
pub const GEN_MASK: u32 = (1 << 28) - 1;

/// What a heartbeat tick does to the shard: the service ticks each due connection, the
/// silent are handed to the backend to close.
struct Beats<'a, S: Service> {
    service: &'a mut S,
    flush: &'a mut Vec<usize>,
    lingers: &'a mut VecDeque<Deadline>,
    delayed: &'a mut VecDeque<Deadline>,
    stats: &'a mut TransportFigures,
    figures: &'a mut S::Figures,
    clock: Clock,
    rules: Rules,
    dead: &'a mut Vec<usize>,
}

impl<S: Service> Beat<S::Conn, S::Tag> for Beats<'_, S> {
    fn ping(&mut self, slot: usize, conn: &mut Conn<S::Conn, S::Tag>) -> bool {
        let mut link = Link::new(
            slot,
            conn,
            self.flush,
            self.lingers,
            self.delayed,
            self.figures,
            self.clock,
            self.rules,
        );
        self.service.tick(&mut link)
    }

    fn dead(&mut self, slot: usize) {
        tracing::debug!(slot, "no sign of life after a ping: dropping");
        self.stats.pong_timeouts += 1;
        self.dead.push(slot);
    }
}

/// What a shard starts with, besides its service.
pub struct CoreSetup<M> {
    pub index: usize,
    pub mesh: Endpoint<M>,
    pub timeouts: Timeouts,
    pub out_cap: usize,
    /// `--write-delay` (zero: none).
    pub write_delay: Duration,
    pub drain: Arc<Drain>,
    pub shared: Arc<SharedStats>,
    /// The certificate, when a listener speaks TLS.
    pub tls: Option<Arc<crate::reactor::tls::Source>>,
}

impl<S: Service> Core<S> {
    pub fn new(service: S, setup: CoreSetup<S::Msg>) -> Core<S> {
        let now = Instant::now();
        let t = setup.timeouts;
        Core {
            cx: Cx {
                conns: Slab::new(),
                flush: Vec::new(),
                lingers: VecDeque::new(),
                delayed: VecDeque::new(),
                resumes: Vec::new(),
                stats: Default::default(),
                figures: Default::default(),
                mesh: setup.mesh,
                clock: Clock {
                    now,
                    now_ms: 0,
                    turn: 0,
                },
                rules: Rules {
                    out_cap: setup.out_cap,
                    linger: t.linger,
                    write_delay: setup.write_delay,
                },
            },
            service,
            index: setup.index,
            next_gen: 0,
            timeouts: t,
            handshake_deadlines: VecDeque::new(),
            heartbeat: Heartbeat::new(t.ping_interval, t.pong_timeout, now),
            started: now,
            drain: setup.drain,
            schedule: None,
            shared: setup.shared,
            fixed_files: 0,
            inbox: Vec::new(),
            actions: Vec::new(),
            transports: Transports::new(setup.tls),
            pin_sends: false,
        }
    }

    /// This shard's index.
    pub fn index(&self) -> usize {
        self.index
    }

    pub fn mesh(&mut self) -> &mut Endpoint<S::Msg> {
        &mut self.cx.mesh
    }

    /// Whether a drain has begun (the backend accepts no more).
    pub fn draining(&self) -> bool {
        self.drain.active()
    }

    /// Connections in the slab, in any phase.
    pub fn len(&self) -> usize {
        self.cx.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cx.conns.is_empty()
    }

    /// Reserves address space for `slots` connections up front, so the slab never moves:
    /// pages are touched only as connections arrive, and no half-size copy of the slab is
    /// left behind in the allocator after a growth (which idle shards never return).
    pub fn reserve_slots(&mut self, slots: usize) {
        self.cx.conns.reserve_exact(slots);
    }

    /// Starts a loop turn: sets the coarse clock.
    pub fn begin_turn(&mut self, now: Instant) {
        self.cx.clock.now = now;
        self.cx.clock.now_ms = now.saturating_duration_since(self.started).as_millis() as u32;
    }

    /// Registers an accepted socket from `peer` (when known). Returns its slot and
    /// generation.
    pub fn insert(
        &mut self,
        io: u32,
        peer: Option<std::net::SocketAddr>,
        now: Instant,
        tls: bool,
    ) -> (usize, u32) {
        self.next_gen = (self.next_gen + 1) & GEN_MASK;
        let gen = self.next_gen;
        let entry = self.cx.conns.vacant_entry();
        let slot = entry.key();
        let app = self.service.open(slot, peer);
        entry.insert(Conn::new(io, gen, app));
        self.cx.stats.accepted += 1;
        self.transports.open(slot, tls);
        self.handshake_deadlines.push_back(Deadline {
            at: now + self.timeouts.handshake,
            slot: slot as u32,
            gen,
        });
        (slot, gen)
    }

    /// The connection in `slot` if it is still generation `gen`.
    pub fn get(&mut self, slot: usize, gen: u32) -> Option<&mut Conn<S::Conn, S::Tag>> {
        self.cx.conns.get_mut(slot).filter(|c| c.gen == gen)
    }

    /// The connection in `slot`, whatever its generation.
    pub fn conn(&mut self, slot: usize) -> Option<&mut Conn<S::Conn, S::Tag>> {
        self.cx.conns.get_mut(slot)
    }

    /// Plaintext arrived for `slot`. Only what the service cannot consume yet is copied
    /// into the connection's tail; an idle connection's tail stays unallocated.
    fn receive_plain(&mut self, slot: usize, data: &mut [u8]) -> Next {
        let Some(conn) = self.cx.conns.get_mut(slot) else {
            return Next::Close;
        };
        self.cx.stats.bytes_in += data.len() as u64;
        // Any bytes at all count as a sign of life (RFC 6455 §5.5.2: a pong, or anything).
        conn.set(flag::SEEN);
        if conn.is_closing() {
            // Lingering: the service reads on (for the peer's close frame) and drops the
            // rest; a peer that sends too much is cut off.
            conn.lingered = conn.lingered.saturating_add(data.len() as u32);
            if conn.lingered > LINGER_BYTES {
                return Next::Close;
            }
        }
        if conn.tail.is_empty() && !conn.has(flag::PAUSED) {
            let n = self.service.data(&mut self.cx, slot, data);
            let conn = &mut self.cx.conns[slot];
            if n < data.len() && !conn.has(flag::GOODBYE) {
                conn.tail.extend_from_slice(&data[n..]);
            }
        } else {
            conn.tail.extend_from_slice(data);
            if !conn.has(flag::PAUSED) {
                self.process_tail(slot);
            }
        }
        self.check_tail_bound(slot);
        self.after_input(slot)
    }

    /// Offers the held-back input to the service again.
    fn process_tail(&mut self, slot: usize) {
        let mut tail = std::mem::take(&mut self.cx.conns[slot].tail);
        let n = self.service.data(&mut self.cx, slot, &mut tail);
        let conn = &mut self.cx.conns[slot];
        if !conn.has(flag::GOODBYE) && n < tail.len() {
            tail.drain(..n);
            conn.tail = tail;
        }
    }

    /// Holding more than the service allows outside a pause means a peer sending what
    /// cannot be parsed yet (a huge header); holding a lot while paused means the backend
    /// kept reading. Either way the connection, not the process, pays.
    fn check_tail_bound(&mut self, slot: usize) {
        let conn = &self.cx.conns[slot];
        let bound = if conn.has(flag::PAUSED) {
            MAX_PAUSED_INPUT
        } else {
            self.service.max_pending(&conn.app)
        };
        if conn.tail.len() > bound {
            self.cx.conns[slot].tail = thin_vec::ThinVec::new();
            if let Some(mut link) = self.cx.link_any(slot) {
                self.service.overflow(&mut link);
            }
        }
    }

    /// What the backend does after input was handled.
    fn after_input(&mut self, slot: usize) -> Next {
        let conn = &mut self.cx.conns[slot];
        if conn.has(flag::GOODBYE) && conn.out.is_empty() && !conn.has(flag::SENDING) {
            Next::Close
        } else if conn.has(flag::PAUSED) {
            Next::StopReading
        } else {
            Next::Nothing
        }
    }

    /// Picks up input held back while paused.
    fn resume(&mut self, slot: usize) -> Next {
        let conn = &mut self.cx.conns[slot];
        conn.clear(flag::PAUSED);
        if !conn.tail.is_empty() && !conn.is_closing() {
            self.process_tail(slot);
        }
        match self.after_input(slot) {
            Next::Nothing => Next::ResumeReading,
            other => other,
        }
    }

    /// Puts `slot` on this turn's flush list if it has something to send.
    pub fn queue_flush(&mut self, slot: usize) {
        if let Some(conn) = self.cx.conns.get_mut(slot) {
            if !conn.out.is_empty() && !conn.has(flag::QUEUED) {
                conn.set(flag::QUEUED);
                self.cx.flush.push(slot);
            }
        }
    }

    /// Whether anything is waiting to be flushed.
    pub fn has_flush(&self) -> bool {
        !self.cx.flush.is_empty()
    }

    /// Takes this turn's list of connections to flush. Give it back with
    /// [`Core::done_flushing`] so its allocation is reused.
    pub fn take_flush(&mut self) -> Vec<usize> {
        let list = std::mem::take(&mut self.cx.flush);
        for &slot in &list {
            if let Some(conn) = self.cx.conns.get_mut(slot) {
                conn.clear(flag::QUEUED);
            }
        }
        list
    }

    pub fn done_flushing(&mut self, mut list: Vec<usize>) {
        list.clear();
        if self.cx.flush.is_empty() {
            self.cx.flush = list;
        }
    }

    /// `n` bytes of `slot`'s queued frames went out.
    fn sent_plain(&mut self, slot: usize, n: usize) -> Next {
        let Some(conn) = self.cx.conns.get_mut(slot) else {
            return Next::Nothing;
        };
        self.cx.stats.bytes_out += n as u64;
        conn.out.advance(n);
        // What is left waits for the backend: io_uring sends again at once (the kernel
        // waits for room), epoll waits for EPOLLOUT.
        if !conn.out.is_empty()
            && (!conn.has(flag::PAUSED) || conn.out.len() * 2 > self.cx.rules.out_cap)
        {
            return Next::Nothing;
        }
        if conn.has(flag::CLOSING) {
            if !conn.out.is_empty() {
                return Next::Nothing;
            }
            if conn.has(flag::GOODBYE) {
                return Next::Close;
            }
            if !conn.has(flag::SHUT_WR) {
                // The close deadline set when the connection started closing still holds:
                // a peer that never closes cannot keep its slot past the close timeout.
                conn.set(flag::SHUT_WR);
                return Next::ShutdownWrite;
            }
            return Next::Nothing;
        }
        if conn.has(flag::PAUSED) {
            return self.resume(slot);
        }
        Next::Nothing
    }

    /// Forgets `slot`. The backend has closed its socket and no operation refers to it.
    pub fn remove(&mut self, slot: usize) {
        if let Some(conn) = self.cx.conns.try_remove(slot) {
            self.transports.close(slot);
            self.cx.stats.closed += 1;
            self.service.closed(&mut self.cx, slot, conn.app);
        }
    }

    /// The end of a loop turn: handle what other shards sent, let the service seal its
    /// batches, push our own messages out, read resumed connections again and publish
    /// our figures.
    pub fn end_turn(&mut self) {
        self.cx.clock.turn = self.cx.clock.turn.wrapping_add(1);
        self.drain_mesh(false);
        self.service.end_turn(&mut self.cx);
        // What the service sent itself while ending the turn (an owner's deliveries to its
        // own members) is handled now, so it leaves with this turn's flush. Messages from
        // other shards that arrived meanwhile stay queued: the loop does not sleep on a
        // non-empty queue, and the next turn handles them and then ends (a publish that
        // arrived here is sealed then, not whenever the shard next wakes).
        self.drain_mesh(true);
        self.cx.mesh.flush();
        for (slot, gen) in std::mem::take(&mut self.cx.resumes) {
            let paused = self
                .get(slot, gen)
                .is_some_and(|c| c.has(flag::PAUSED) && !c.has(flag::DEAD));
            if paused {
                let next = self.resume(slot);
                self.actions.push((slot, next));
            }
        }
        self.publish_figures();
    }

    /// What the backend must do for connections that changed outside their own events
    /// (resumed publishers). Drain after [`Core::end_turn`].
    pub fn take_actions(&mut self) -> Vec<(usize, Next)> {
        std::mem::take(&mut self.actions)
    }

    /// Hands the mesh's messages to the service: all of them, or only those this shard
    /// sent itself (`local_only`).
    fn drain_mesh(&mut self, local_only: bool) {
        let mut inbox = std::mem::take(&mut self.inbox);
        loop {
            let n = if local_only {
                self.cx.mesh.receive_local(&mut inbox)
            } else {
                self.cx.mesh.receive(&mut inbox)
            };
            if n == 0 {
                break;
            }
            for msg in inbox.drain(..) {
                self.service.message(&mut self.cx, msg);
            }
        }
        self.inbox = inbox;
    }

    /// Stores this shard's figures where `/stats` and `/metrics` read them.
    fn publish_figures(&mut self) {
        let s = &mut self.cx.stats;
        s.connections = self.cx.conns.len() as u64;
        s.fixed_files = self.fixed_files;
        s.mesh_backlog = self.cx.mesh.backlog() as u64;
        s.mesh_dropped = self.cx.mesh.dropped();
        self.shared.store(self.index, s, &self.cx.figures);
    }

    /// Follows the drain: when it begins, every open stream gets a moment in the window
    /// (connections still in their handshake are closed at once, into `out`); then the
    /// due ones are handed to the service. `Done` once all are gone or the deadline
    /// (window + close timeout + 1 s) has passed.
    fn drain_step(&mut self, now: Instant, out: &mut Vec<usize>) -> DrainStatus {
        let Some(start) = self.drain.started() else {
            return DrainStatus::Serving;
        };
        let window = self.drain.window;
        if self.schedule.is_none() {
            let mut open = Vec::new();
            for (slot, conn) in self.cx.conns.iter() {
                if conn.is_closing() {
                    continue;
                }
                if conn.has(flag::HEARTBEAT) {
                    open.push((slot as u32, conn.gen));
                } else {
                    out.push(slot);
                }
            }
            tracing::info!(
                shard = self.index,
                connections = open.len(),
                window_ms = window.as_millis() as u64,
                "draining"
            );
            self.schedule = Some(Schedule::new(start, window, open));
        }
        let mut due = Vec::new();
        if let Some(schedule) = &mut self.schedule {
            schedule.due(now, &mut due);
        }
        for (slot, gen) in due {
            if let Some(mut link) = self.cx.link(slot as usize, gen) {
                self.service.drain(&mut link);
            }
        }
        let deadline = start + window + self.timeouts.linger + Duration::from_secs(1);
        let scheduled = self.schedule.as_ref().is_none_or(Schedule::is_done);
        if (scheduled && self.cx.conns.is_empty()) || now >= deadline {
            DrainStatus::Done
        } else {
            DrainStatus::Draining
        }
    }

    /// Connections to close now: a handshake not finished in time, a peer silent after a
    /// ping, a closing peer past its deadline, one the service aborted. Appends their
    /// slots to `out`. Also follows a drain and returns where it stands.
    pub fn expired(&mut self, now: Instant, out: &mut Vec<usize>) -> DrainStatus {
        let cx = &mut self.cx;
        let mut beats = Beats {
            service: &mut self.service,
            flush: &mut cx.flush,
            lingers: &mut cx.lingers,
            delayed: &mut cx.delayed,
            stats: &mut cx.stats,
            figures: &mut cx.figures,
            clock: cx.clock,
            rules: cx.rules,
            dead: out,
        };
        if self.heartbeat.next_tick() <= now {
            // Once a second: the thread's CPU time, for /stats, /metrics and /dashboard.
            beats.stats.cpu_micros = crate::sys::thread_cpu_micros();
        }
        self.heartbeat.run(now, &mut cx.conns, &mut beats);
        while let Some(d) = self.handshake_deadlines.front().copied() {
            if d.at > now {
                break;
            }
            self.handshake_deadlines.pop_front();
            let slot = d.slot as usize;
            let Some(conn) = self.cx.conns.get(slot).filter(|c| c.gen == d.gen) else {
                continue;
            };
            if conn.is_closing() || conn.has(flag::ESTABLISHED) {
                continue;
            }
            self.cx.stats.handshake_timeouts += 1;
            if self.transports.handshaking(slot) {
                out.push(slot);
                continue;
            }
            if let Some(mut link) = self.cx.link_any(slot) {
                self.service.handshake_timeout(&mut link);
            }
            let conn = &self.cx.conns[slot];
            if conn.is_closing() && conn.out.is_empty() {
                out.push(slot);
            }
        }
        while let Some(d) = self.cx.lingers.front().copied() {
            if d.at > now {
                break;
            }
            self.cx.lingers.pop_front();
            if self.get(d.slot as usize, d.gen).is_some() {
                out.push(d.slot as usize);
            }
        }
        self.delayed_due(now);
        let status = self.drain_step(now, out);
        // A connection can be due twice (aborted at its handshake deadline, and past its
        // close deadline in the same check): the backend closes it once.
        out.sort_unstable();
        out.dedup();
        status
    }

    /// `--write-delay`: the connections whose first waiting delivery has waited long
    /// enough are flushed this turn (unless something else took their deliveries out
    /// already). Cost: O(due).
    fn delayed_due(&mut self, now: Instant) {
        while let Some(d) = self.cx.delayed.front().copied() {
            if d.at > now {
                break;
            }
            self.cx.delayed.pop_front();
            let slot = d.slot as usize;
            if let Some(conn) = self.get(slot, d.gen) {
                conn.clear(flag::DELAYED);
                self.queue_flush(slot);
            }
        }
    }

    /// Tests: everything queued for `slot`, as if one send took it all, and what the
    /// backend would do next.
    #[cfg(test)]
    pub(crate) fn send_all(&mut self, slot: usize) -> (Vec<u8>, Next) {
        let mut all = Vec::new();
        let conn = &self.cx.conns[slot];
        let mut iov = [std::io::IoSlice::new(&[]); 64];
        let n = conn.out.iovecs(&mut iov);
        for s in &iov[..n] {
            all.extend_from_slice(s);
        }
        let next = self.sent(slot, all.len());
        (all, next)
    }

    /// How long the loop may sleep before a deadline needs checking.
    pub fn next_deadline(&self, now: Instant) -> Option<Duration> {
        let a = self.handshake_deadlines.front().map(|d| d.at);
        let b = [&self.cx.lingers, &self.cx.delayed]
            .into_iter()
            .filter_map(|q| q.front().map(|d| d.at))
            .min();
        // With no connections there is nobody to ping: sleep until something happens.
        let c = (!self.cx.conns.is_empty()).then(|| self.heartbeat.next_tick());
        let d = self.schedule.as_ref().and_then(Schedule::next_at);
        let at = [a, b, c, d].into_iter().flatten().min()?;
        // Round up to whole milliseconds so the loop never wakes just before the deadline.
        Some(at.saturating_duration_since(now) + Duration::from_millis(1))
    }
}

#[cfg(test)]
mod tests;
mod tls;
mod transport;
