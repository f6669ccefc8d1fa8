//! The part of a shard both backends share: the slab of connections, the list of
//! connections to flush this turn, and the deadlines. The backends call in with events
//! and get back what to do at the socket level ([`Next`]).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use slab::Slab;

use super::conn::{flag, Conn, Ctx, Phase, Route};
use super::heartbeat::{Beat, Heartbeat};
use crate::app::auth::{unix_now, Session};
use crate::app::authz::Sessions;
use crate::app::{ops, Intent, SlowPolicy};
use crate::mesh::{Endpoint, MeshMsg};
use crate::ops::drain::Schedule;
use crate::protocol::{CloseCode, SharedFrame};
use crate::rooms::{owner_of, JoinRefused, Local, Owner};

/// What the backend must do with a connection after an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    Nothing,
    /// Stop reading: the out-ring is full (epoll: skip reads; io_uring: cancel the recv).
    StopReading,
    /// The out-ring drained below its limit: read again, starting with what is buffered.
    ResumeReading,
    /// Everything owed went out; half-close and wait for the peer's EOF (or the linger
    /// deadline) before closing.
    ShutdownWrite,
    /// Close the socket now.
    Close,
}

#[derive(Clone, Copy, Debug)]
struct Deadline {
    at: Instant,
    slot: u32,
    gen: u32,
}

/// How the shard treats room members.
#[derive(Clone, Copy, Debug)]
pub struct RoomSettings {
    pub slow_policy: SlowPolicy,
    pub max_rooms_per_conn: usize,
    /// Unsent bytes a member may have left over from earlier turns.
    pub max_queued_bytes: usize,
}

/// Timeouts the shard enforces on every connection.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// From accept to a complete request head (slowloris).
    pub handshake: Duration,
    /// From half-close to the peer's EOF.
    pub linger: Duration,
    /// Between pings to each open connection.
    pub ping_interval: Duration,
    /// From a ping to the drop of a connection that has sent nothing since.
    pub pong_timeout: Duration,
    /// Without a message for this long a connection is closed (zero: never).
    pub idle: Duration,
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

pub struct Core {
    pub conns: Slab<Conn>,
    pub ctx: Ctx,
    flush: Vec<usize>,
    next_gen: u32,
    timeouts: Timeouts,
    // Constant timeouts expire in the order they were set, so a FIFO per kind is a timer:
    // O(1) to add, O(expired) to check.
    handshake_deadlines: VecDeque<Deadline>,
    linger_deadlines: VecDeque<Deadline>,
    pub mesh: Endpoint,
    local: Local,
    owner: Owner,
    rooms: RoomSettings,
    /// Loop turns, for telling this turn's deliveries from earlier ones.
    turn: u32,
    inbox: Vec<MeshMsg>,
    heartbeat: Heartbeat,
    /// Who may join and publish where: the connections' token sessions.
    sessions: Sessions,
    /// Token expiries, earliest first: (exp, slot, generation). A refresh pushes a new
    /// entry; a stale one is recognized by the session's own `exp`.
    expiries: BinaryHeap<Reverse<(u64, u32, u32)>>,
    /// When the shard started: the origin of `ctx.now_ms`.
    started: Instant,
    drain: Option<Schedule>,
    /// io_uring: the fixed-file table size (for the metrics).
    pub fixed_files: u64,
    /// Upgraded connections closed so far (open WebSockets = upgraded − this).
    ws_closed: u64,
    /// Publishers paused because the mesh towards an owner is backed up.
    mesh_paused: Vec<(usize, u32)>,
    /// What the backend must do for connections changed outside an event of their own.
    actions: Vec<(usize, Next)>,
}

/// A publishing connection stops being read when the mesh queue towards the room's owner
/// is fuller than capacity / PAUSE, and paused publishers are read again once every queue
/// is below capacity / RESUME ([`crate::mesh::queue_capacity`]).
const MESH_PAUSE_DIVISOR: usize = 2;
const MESH_RESUME_DIVISOR: usize = 8;

/// What a heartbeat tick does to the shard: pings queued for flushing, the idle closed,
/// the silent handed to the backend to close.
struct Beats<'a> {
    flush: &'a mut Vec<usize>,
    dead: &'a mut Vec<usize>,
    closing: &'a mut Vec<usize>,
    ctx: &'a mut Ctx,
    /// `--idle-timeout` in ms (0: off).
    idle_ms: u32,
}

impl Beat for Beats<'_> {
    fn ping(&mut self, slot: usize, conn: &mut Conn, frame: &SharedFrame) {
        let idle = self.ctx.now_ms.wrapping_sub(conn.last_msg);
        if self.idle_ms > 0 && idle >= self.idle_ms {
            self.ctx.stats.idle_timeouts += 1;
            conn.fail(CloseCode::NORMAL, "idle timeout", self.ctx);
            self.closing.push(slot);
        } else if conn
            .out
            .push_control(frame.clone(), self.ctx.out_cap)
            .is_ok()
        {
            // A control frame: it goes out even past a full ring (up to the control slack).
            self.ctx.stats.pings_sent += 1;
        }
        if !conn.out.is_empty() && !conn.has(flag::QUEUED) {
            conn.set(flag::QUEUED);
            self.flush.push(slot);
        }
    }

    fn dead(&mut self, slot: usize) {
        tracing::debug!(slot, "no sign of life after a ping: dropping");
        self.ctx.stats.pong_timeouts += 1;
        self.dead.push(slot);
    }
}

/// Generations are packed into 28 bits of io_uring user data.
pub const GEN_MASK: u32 = (1 << 28) - 1;

impl Core {
    pub fn new(ctx: Ctx, timeouts: Timeouts, mesh: Endpoint, rooms: RoomSettings) -> Core {
        let ctx_auth = ctx.gate.auth.is_some();
        Core {
            conns: Slab::new(),
            ctx,
            flush: Vec::new(),
            next_gen: 0,
            timeouts,
            handshake_deadlines: VecDeque::new(),
            linger_deadlines: VecDeque::new(),
            owner: Owner::new(mesh.shards()),
            mesh,
            local: Local::default(),
            rooms,
            turn: 0,
            inbox: Vec::new(),
            mesh_paused: Vec::new(),
            actions: Vec::new(),
            sessions: Sessions::new(ctx_auth),
            expiries: BinaryHeap::new(),
            started: Instant::now(),
            drain: None,
            fixed_files: 0,
            ws_closed: 0,
            heartbeat: Heartbeat::new(
                timeouts.ping_interval,
                timeouts.pong_timeout,
                Instant::now(),
            ),
        }
    }

    /// Reserves address space for `slots` connections up front, so the slab never moves:
    /// pages are touched only as connections arrive, and no half-size copy of the slab is
    /// left behind in the allocator after a growth (which idle shards never return).
    pub fn reserve_slots(&mut self, slots: usize) {
        self.conns.reserve_exact(slots);
    }

    /// Starts a loop turn: sets the coarse clock connections read.
    pub fn begin_turn(&mut self, now: Instant) {
        self.ctx.now_ms = now.saturating_duration_since(self.started).as_millis() as u32;
    }

    /// Registers an accepted socket from `peer` (an address key; 0: unknown). Returns its
    /// slot and generation.
    pub fn insert(&mut self, io: u32, peer: u32, now: Instant) -> (usize, u32) {
        self.next_gen = (self.next_gen + 1) & GEN_MASK;
        let gen = self.next_gen;
        let slot = self.conns.insert(Conn::new(io, gen, peer));
        self.ctx.stats.accepted += 1;
        self.handshake_deadlines.push_back(Deadline {
            at: now + self.timeouts.handshake,
            slot: slot as u32,
            gen,
        });
        (slot, gen)
    }

    /// The connection in `slot` if it is still generation `gen`.
    pub fn get(&mut self, slot: usize, gen: u32) -> Option<&mut Conn> {
        self.conns.get_mut(slot).filter(|c| c.gen == gen)
    }

    /// Bytes arrived for `slot`.
    pub fn receive(&mut self, slot: usize, data: &mut [u8]) -> Next {
        let Some(conn) = self.conns.get_mut(slot) else {
            return Next::Close;
        };
        self.ctx.stats.bytes_in += data.len() as u64;
        conn.receive(data, &mut self.ctx);
        self.apply_intents(slot);
        self.after_input(slot)
    }

    /// Input held back while paused gets processed now that there is room.
    fn after_input(&mut self, slot: usize) -> Next {
        self.queue_flush(slot);
        self.closing_deadline(slot);
        let conn = &mut self.conns[slot];
        if conn.phase == Phase::Closing && conn.out.is_empty() && !conn.has(flag::SENDING) {
            Next::Close
        } else if conn.has(flag::PAUSED) {
            Next::StopReading
        } else {
            Next::Nothing
        }
    }

    /// Puts `slot` on this turn's flush list if it has something to send.
    pub fn queue_flush(&mut self, slot: usize) {
        if let Some(conn) = self.conns.get_mut(slot) {
            if !conn.out.is_empty() && !conn.has(flag::QUEUED) {
                conn.set(flag::QUEUED);
                self.flush.push(slot);
            }
        }
    }

    /// Whether anything is waiting to be flushed.
    pub fn has_flush(&self) -> bool {
        !self.flush.is_empty()
    }

    /// Takes this turn's list of connections to flush. Give it back with
    /// [`Core::done_flushing`] so its allocation is reused.
    pub fn take_flush(&mut self) -> Vec<usize> {
        let list = std::mem::take(&mut self.flush);
        for &slot in &list {
            if let Some(conn) = self.conns.get_mut(slot) {
                conn.clear(flag::QUEUED);
            }
        }
        list
    }

    pub fn done_flushing(&mut self, mut list: Vec<usize>) {
        list.clear();
        if self.flush.is_empty() {
            self.flush = list;
        }
    }

    /// `n` bytes of `slot`'s queue went out.
    pub fn sent(&mut self, slot: usize, n: usize, now: Instant) -> Next {
        let Some(conn) = self.conns.get_mut(slot) else {
            return Next::Nothing;
        };
        self.ctx.stats.bytes_out += n as u64;
        conn.out.advance(n);
        // What is left waits for the backend: io_uring sends again at once (the kernel
        // waits for room), epoll waits for EPOLLOUT.
        if !conn.out.is_empty()
            && (!conn.has(flag::PAUSED) || conn.out.len() * 2 > self.ctx.out_cap)
        {
            return Next::Nothing;
        }
        if conn.phase == Phase::Closing {
            if conn.out.is_empty() && !conn.has(flag::SHUT_WR) {
                conn.set(flag::SHUT_WR);
                let deadline = Deadline {
                    at: now + self.timeouts.linger,
                    slot: slot as u32,
                    gen: conn.gen,
                };
                self.linger_deadlines.push_back(deadline);
                return Next::ShutdownWrite;
            }
            return Next::Nothing;
        }
        if conn.has(flag::PAUSED) {
            conn.resume(&mut self.ctx);
            self.apply_intents(slot);
            return match self.after_input(slot) {
                Next::Nothing => Next::ResumeReading,
                other => other,
            };
        }
        Next::Nothing
    }

    /// A connection entering `Closing` gets one deadline for the rest: its final bytes
    /// out, the peer's EOF. A peer that never reads cannot hold its slot past it.
    fn closing_deadline(&mut self, slot: usize) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if conn.phase == Phase::Closing && !conn.has(flag::DEADLINE) {
            conn.set(flag::DEADLINE);
            let at = Instant::now() + self.timeouts.linger;
            self.linger_deadlines.push_back(Deadline {
                at,
                slot: slot as u32,
                gen: conn.gen,
            });
        }
    }

    /// Takes `slot` out of every room (the backend is closing it). Idempotent.
    pub fn detach(&mut self, slot: usize) {
        for room in self.local.leave_all(slot as u32) {
            let owner = owner_of(&room, self.mesh.shards());
            let shard = self.mesh.shard() as u16;
            self.mesh.send(owner, MeshMsg::Leave { room, shard });
        }
    }

    /// Forgets `slot`. The backend has closed its socket and no operation refers to it.
    pub fn remove(&mut self, slot: usize) {
        self.detach(slot);
        if let Some(mut conn) = self.conns.try_remove(slot) {
            self.ctx.stats.closed += 1;
            if conn.route != Route::None {
                self.ws_closed += 1;
                if !conn.has(flag::CLOSE_SENT) {
                    self.ctx.stats.close_none += 1;
                }
            }
            conn.release(&self.ctx.gate);
            if let Some(s) = self.sessions.remove(slot as u32) {
                self.ctx.gate.release_user(&s.sub);
            }
            if conn.drops > 0 {
                tracing::info!(
                    shard = self.mesh.shard(),
                    drops = conn.drops,
                    "closed a connection that had deliveries dropped (slow consumer)"
                );
            }
        }
    }

    /// Carries out the `/ws` ops the connection in `slot` just asked for.
    fn apply_intents(&mut self, slot: usize) {
        if self.ctx.intents.is_empty() {
            return;
        }
        let mut intents = std::mem::take(&mut self.ctx.intents);
        let me = self.mesh.shard() as u16;
        let shards = self.mesh.shards();
        let gen = self.conns.get(slot).map_or(0, |c| c.gen);
        let who = slot as u32;
        for intent in intents.drain(..) {
            match intent {
                Intent::Login(session) => self.login(slot, gen, session),
                Intent::Refresh(session) => self.refresh(slot, gen, session),
                Intent::Join { .. } | Intent::Pub { .. }
                    if self.sessions.required && self.sessions.get(who).is_none() =>
                {
                    self.reply(slot, ops::unauthenticated());
                }
                Intent::Join { room } if !self.sessions.may_join(who, &room) => {
                    self.ctx.stats.forbidden += 1;
                    self.reply(
                        slot,
                        ops::error("forbidden", "not allowed to join that room"),
                    );
                }
                Intent::Pub { room, .. } if !self.sessions.may_publish(who, &room) => {
                    self.ctx.stats.forbidden += 1;
                    self.reply(
                        slot,
                        ops::error("forbidden", "not allowed to publish to that room"),
                    );
                }
                Intent::Join { room } => {
                    match self
                        .local
                        .request_join(&room, slot as u32, self.rooms.max_rooms_per_conn)
                    {
                        Ok(()) => {
                            let msg = MeshMsg::Join {
                                room: room.clone(),
                                shard: me,
                                slot: slot as u32,
                                gen,
                            };
                            self.mesh.send(owner_of(&room, shards), msg);
                        }
                        Err(JoinRefused::AlreadyJoined) => self.reply(
                            slot,
                            ops::error("already_joined", "already a member of that room"),
                        ),
                        Err(JoinRefused::TooManyRooms) => self.reply(
                            slot,
                            ops::error("too_many_rooms", "this connection is in too many rooms"),
                        ),
                    }
                }
                Intent::Leave { room } => {
                    if self.local.leave(&room, slot as u32) {
                        self.reply(slot, ops::left(&room));
                        self.mesh
                            .send(owner_of(&room, shards), MeshMsg::Leave { room, shard: me });
                    } else {
                        self.reply(slot, ops::error("not_joined", "not a member of that room"));
                    }
                }
                Intent::Pub { room, data, id } => {
                    self.ctx.stats.published += 1;
                    let owner = owner_of(&room, shards);
                    self.mesh.send(
                        owner,
                        MeshMsg::Publish {
                            room,
                            data,
                            shard: me,
                            slot: slot as u32,
                            gen,
                            id,
                        },
                    );
                    // Flow control: a publisher faster than the owner can take stops being
                    // read until the mesh drains, instead of its messages being dropped.
                    if self.mesh.pressure(owner) > self.mesh.capacity() / MESH_PAUSE_DIVISOR {
                        if let Some(conn) = self.conns.get_mut(slot) {
                            if !conn.has(flag::PAUSED) {
                                conn.set(flag::PAUSED);
                                self.mesh_paused.push((slot, gen));
                            }
                        }
                    }
                }
            }
        }
        self.ctx.intents = intents;
    }

    /// Records the session of a connection whose token was accepted.
    fn login(&mut self, slot: usize, gen: u32, session: Session) {
        self.expiries.push(Reverse((session.exp, slot as u32, gen)));
        if let Some(old) = self.sessions.insert(slot as u32, session) {
            self.ctx.gate.release_user(&old.sub);
        }
    }

    /// A `refresh` op's token: same user, new expiry and rights.
    fn refresh(&mut self, slot: usize, gen: u32, session: Session) {
        let same = self
            .sessions
            .get(slot as u32)
            .is_some_and(|s| s.sub == session.sub);
        if !same {
            self.reply(
                slot,
                ops::error("wrong_user", "a refresh token must be for the same sub"),
            );
            return;
        }
        self.reply(slot, ops::authed(&session.sub, session.exp));
        self.expiries.push(Reverse((session.exp, slot as u32, gen)));
        self.sessions.insert(slot as u32, session);
    }

    /// Starts closing `slot` from our side: the close frame queued for flushing, and the
    /// deadline by which it must be gone.
    fn close_with(&mut self, slot: usize, code: CloseCode, reason: &str) {
        if let Some(conn) = self.conns.get_mut(slot) {
            conn.fail(code, reason, &mut self.ctx);
            self.queue_flush(slot);
            self.closing_deadline(slot);
        }
    }

    /// Closes (1008 "token expired") connections whose token expired without a refresh.
    fn expire_tokens(&mut self) {
        // Called every loop turn: without tokens, not even the clock is read.
        if self.expiries.is_empty() {
            return;
        }
        let now = unix_now();
        while let Some(&Reverse((exp, slot, gen))) = self.expiries.peek() {
            if exp > now {
                break;
            }
            self.expiries.pop();
            let current = self.sessions.get(slot).map(|s| s.exp);
            let slot = slot as usize;
            if current.is_some_and(|e| e <= now) && self.get(slot, gen).is_some() {
                self.ctx.stats.tokens_expired += 1;
                self.close_with(slot, CloseCode::POLICY_VIOLATION, "token expired");
            }
        }
    }

    /// Follows the drain: when it begins, every open WebSocket gets a moment in the
    /// window (connections still in the handshake are closed at once, into `out`); then
    /// the due ones are sent 1001. `Done` once all are gone or the deadline (window +
    /// close timeout + 1 s) has passed.
    pub fn drain_step(&mut self, now: Instant, out: &mut Vec<usize>) -> DrainStatus {
        let Some(start) = self.ctx.gate.drain.started() else {
            return DrainStatus::Serving;
        };
        let window = self.ctx.gate.drain.window;
        if self.drain.is_none() {
            let mut open = Vec::new();
            for (slot, conn) in self.conns.iter() {
                match conn.phase {
                    Phase::Open => open.push((slot as u32, conn.gen)),
                    Phase::Handshake => out.push(slot),
                    Phase::Closing => {}
                }
            }
            tracing::info!(
                shard = self.mesh.shard(),
                connections = open.len(),
                window_ms = window.as_millis() as u64,
                "draining"
            );
            self.drain = Some(Schedule::new(start, window, open));
        }
        let mut due = Vec::new();
        if let Some(schedule) = &mut self.drain {
            schedule.due(now, &mut due);
        }
        for (slot, gen) in due {
            if self.get(slot as usize, gen).is_some() {
                self.close_with(slot as usize, CloseCode::GOING_AWAY, "server shutting down");
            }
        }
        let deadline = start + window + self.timeouts.linger + Duration::from_secs(1);
        let scheduled = self.drain.as_ref().is_none_or(Schedule::is_done);
        if (scheduled && self.conns.is_empty()) || now >= deadline {
            DrainStatus::Done
        } else {
            DrainStatus::Draining
        }
    }

    /// Queues a reply for the connection in `slot`.
    fn reply(&mut self, slot: usize, frame: SharedFrame) {
        if let Some(conn) = self.conns.get_mut(slot) {
            conn.reply(frame, &mut self.ctx);
            self.queue_flush(slot);
        }
    }

    /// The end of a loop turn: handle what other shards sent, deliver this turn's room
    /// batches, push our own messages out and publish our figures.
    pub fn end_turn(&mut self) {
        self.turn = self.turn.wrapping_add(1);
        self.drain_mesh();
        let (owner, mesh) = (&mut self.owner, &mut self.mesh);
        // Cost: one shared frame per room with traffic this turn, one mesh message per
        // shard with members (ours included, through the local queue).
        owner.seal(|room, frame, members| {
            for (shard, &n) in members.iter().enumerate() {
                if n > 0 {
                    mesh.send(
                        shard,
                        MeshMsg::Deliver {
                            room: room.clone(),
                            frame: frame.clone(),
                        },
                    );
                }
            }
        });
        self.drain_mesh();
        self.mesh.flush();
        self.resume_publishers();
        self.publish_figures();
    }

    /// Reads paused publishers again once the mesh has drained.
    fn resume_publishers(&mut self) {
        if self.mesh_paused.is_empty()
            || self.mesh.max_pressure() > self.mesh.capacity() / MESH_RESUME_DIVISOR
        {
            return;
        }
        for (slot, gen) in std::mem::take(&mut self.mesh_paused) {
            let Some(conn) = self.conns.get_mut(slot).filter(|c| c.gen == gen) else {
                continue;
            };
            if conn.has(flag::DEAD) || !conn.has(flag::PAUSED) {
                continue;
            }
            conn.resume(&mut self.ctx);
            self.apply_intents(slot);
            let next = match self.after_input(slot) {
                Next::Nothing => Next::ResumeReading,
                other => other,
            };
            self.actions.push((slot, next));
        }
    }

    /// What the backend must do for connections that changed outside their own events
    /// (resumed publishers). Drain after [`Core::end_turn`].
    pub fn take_actions(&mut self) -> Vec<(usize, Next)> {
        std::mem::take(&mut self.actions)
    }

    fn drain_mesh(&mut self) {
        let mut inbox = std::mem::take(&mut self.inbox);
        while self.mesh.receive(&mut inbox) > 0 {
            for msg in inbox.drain(..) {
                self.on_mesh(msg);
            }
        }
        self.inbox = inbox;
    }

    fn on_mesh(&mut self, msg: MeshMsg) {
        match msg {
            MeshMsg::Join {
                room,
                shard,
                slot,
                gen,
            } => {
                let seq = self.owner.join(&room, shard.into());
                self.mesh.send(
                    shard.into(),
                    MeshMsg::Joined {
                        room,
                        slot,
                        gen,
                        seq,
                    },
                );
            }
            MeshMsg::Leave { room, shard } => self.owner.leave(&room, shard.into()),
            MeshMsg::Publish {
                room,
                data,
                shard,
                slot,
                gen,
                id,
            } => {
                // No members anywhere: nothing is kept, and the ack says seq 0.
                let seq = self.owner.publish(&room, &data).unwrap_or(0);
                if let Some(id) = id {
                    self.mesh
                        .send(shard.into(), MeshMsg::Ack { slot, gen, id, seq });
                }
            }
            MeshMsg::Joined {
                room,
                slot,
                gen,
                seq,
            } => {
                let slot = slot as usize;
                if self.get(slot, gen).is_some() && self.local.joined(&room, slot as u32) {
                    self.reply(slot, ops::joined(&room, seq));
                }
            }
            MeshMsg::Ack { slot, gen, id, seq } => {
                if self.get(slot as usize, gen).is_some() {
                    self.reply(slot as usize, ops::ack(id, seq));
                }
            }
            MeshMsg::Deliver { room, frame } => self.deliver(&room, &frame),
        }
    }

    /// Puts `frame` in the out-ring of every member of `room` on this shard.
    /// Cost: O(members on this shard), one refcount increment each; no copy.
    fn deliver(&mut self, room: &Arc<str>, frame: &SharedFrame) {
        let Core {
            local,
            conns,
            flush,
            ctx,
            rooms,
            turn,
            ..
        } = self;
        // Members the close policy just closed get their deadline after the loop.
        let mut closing = Vec::new();
        for &slot in local.members(room) {
            let slot = slot as usize;
            let Some(conn) = conns.get_mut(slot) else {
                continue;
            };
            if conn.phase != Phase::Open || conn.has(flag::DEAD) {
                continue;
            }
            let mut ok = conn
                .out
                .push_delivery(frame.clone(), ctx.out_cap, rooms.max_queued_bytes, *turn)
                .is_ok();
            if !ok {
                match rooms.slow_policy {
                    SlowPolicy::DropNewest => {
                        ctx.stats.dropped_newest += 1;
                        conn.drops = conn.drops.saturating_add(1);
                    }
                    SlowPolicy::DropOldest => {
                        ctx.stats.dropped_oldest += 1;
                        conn.drops = conn.drops.saturating_add(1);
                        ok = conn.out.drop_oldest_data()
                            && conn.out.push(frame.clone(), ctx.out_cap * 4).is_ok();
                    }
                    SlowPolicy::Close => {
                        ctx.stats.closed_slow += 1;
                        conn.fail(CloseCode::POLICY_VIOLATION, "slow consumer", ctx);
                        closing.push(slot);
                    }
                }
            }
            if ok {
                ctx.stats.delivered += 1;
            }
            if !conn.out.is_empty() && !conn.has(flag::QUEUED) {
                conn.set(flag::QUEUED);
                flush.push(slot);
            }
        }
        for slot in closing {
            self.closing_deadline(slot);
        }
    }

    /// Stores this shard's figures where `/stats` and `/metrics` read them.
    fn publish_figures(&mut self) {
        let s = &mut self.ctx.stats;
        s.connections = self.conns.len() as u64;
        s.upgraded_open = s.upgraded - self.ws_closed;
        s.fixed_files = self.fixed_files;
        s.rooms_owned = self.owner.len() as u64;
        s.rooms_local = self.local.rooms() as u64;
        s.members = self.local.memberships() as u64;
        s.mesh_backlog = self.mesh.backlog() as u64;
        s.mesh_dropped = self.mesh.dropped();
        self.ctx.shared.shards[self.mesh.shard()].store(s);
    }

    /// Connections whose deadline passed: a handshake not finished in time, or a peer
    /// that never closed after our half-close. Appends their slots to `out`.
    /// Also follows a drain (see [`Core::drain_step`]) and returns where it stands.
    pub fn expired(&mut self, now: Instant, out: &mut Vec<usize>) -> DrainStatus {
        let mut closing = Vec::new();
        let mut beats = Beats {
            flush: &mut self.flush,
            dead: out,
            closing: &mut closing,
            ctx: &mut self.ctx,
            idle_ms: self.timeouts.idle.as_millis().min(u32::MAX as u128 / 2) as u32,
        };
        self.heartbeat.run(now, &mut self.conns, &mut beats);
        for slot in closing {
            self.closing_deadline(slot);
        }
        self.expire_tokens();
        while let Some(d) = self.handshake_deadlines.front().copied() {
            if d.at > now {
                break;
            }
            self.handshake_deadlines.pop_front();
            let slot = d.slot as usize;
            let Some(conn) = self.conns.get_mut(slot).filter(|c| c.gen == d.gen) else {
                continue;
            };
            if conn.phase == Phase::Handshake {
                self.ctx.stats.handshake_timeouts += 1;
                out.push(slot);
            } else if conn.phase == Phase::Open && conn.has(flag::AUTH_PENDING) {
                self.ctx.stats.handshake_timeouts += 1;
                self.ctx.stats.auth_failures += 1;
                self.close_with(slot, CloseCode::POLICY_VIOLATION, "authentication timeout");
            }
        }
        while let Some(d) = self.linger_deadlines.front().copied() {
            if d.at > now {
                break;
            }
            self.linger_deadlines.pop_front();
            if self.get(d.slot as usize, d.gen).is_some() {
                out.push(d.slot as usize);
            }
        }
        self.drain_step(now, out)
    }

    /// How long the loop may sleep before a deadline needs checking.
    pub fn next_deadline(&self, now: Instant) -> Option<Duration> {
        let a = self.handshake_deadlines.front().map(|d| d.at);
        let b = self.linger_deadlines.front().map(|d| d.at);
        // With no connections there is nobody to ping: sleep until something happens.
        let c = (!self.conns.is_empty()).then(|| self.heartbeat.next_tick());
        let d = self.drain.as_ref().and_then(Schedule::next_at);
        let at = [a, b, c, d].into_iter().flatten().min()?;
        // Round up to whole milliseconds so the loop never wakes just before the deadline.
        Some(at.saturating_duration_since(now) + Duration::from_millis(1))
    }
}
