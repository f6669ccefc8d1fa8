//! The app as the reactor runs it: [`App`] is the [`Service`] of every shard. It carries
//! out what `/ws` connections ask (join, leave, publish, sessions) against the rooms and
//! the mesh, encodes each room's batch once per turn, and delivers it.
//!
//! Where a publish goes, file by file: [`super::ws`] parses the op and pushes an intent;
//! [`App::apply_intents`] sends it to the room's owner shard over [`crate::mesh`]; there
//! [`crate::rooms::Owner::publish`] gives it a seq in this turn's batch; at the end of the
//! turn [`App::seal`] encodes the batch once ([`super::wire::write_msg`]) into one shared
//! frame and sends it to every shard with members; each shard's [`App::deliver`] puts a
//! reference to it in every local member's out-ring, and the reactor flushes.

use std::cmp::Reverse;
use std::net::IpAddr;
use std::sync::Arc;

use crate::protocol::{CloseCode, SharedFrame};
use crate::reactor::conn::Conn;
use crate::reactor::{Cx, Link, Service};
use crate::rooms::{owner_of, JoinRefused};

use super::auth::{unix_now, Session};
use super::conn::{flag, AppConn, Endpoint};
use super::ws::{fail, reply};
use super::{gate, wire, App, Intent, Msg, SlowPolicy};

/// A publishing connection stops being read when the mesh queue towards the room's owner
/// is fuller than capacity / PAUSE, and paused publishers are read again once every queue
/// is below capacity / RESUME ([`crate::mesh::queue_capacity`]).
const MESH_PAUSE_DIVISOR: usize = 2;
const MESH_RESUME_DIVISOR: usize = 8;

impl Service for App {
    type Conn = AppConn;
    type Msg = Msg;

    fn open(&mut self, peer: Option<IpAddr>) -> AppConn {
        AppConn::new(peer.map_or(0, gate::peer_key))
    }

    fn data(&mut self, cx: &mut Cx<App>, slot: usize, data: &mut [u8]) -> usize {
        let n = match cx.link_any(slot) {
            Some(mut link) => self.receive(&mut link, data),
            None => data.len(),
        };
        self.apply_intents(cx, slot);
        n
    }

    fn max_pending(&self, conn: &AppConn) -> usize {
        self.pending_bound(conn)
    }

    fn overflow(&mut self, link: &mut Link<'_, AppConn>) {
        match link.app().ep {
            Endpoint::Http => super::ws::refuse(
                link,
                crate::protocol::Status::HeadersTooLarge,
                "request head too large",
            ),
            Endpoint::Ws(_) => fail(link, CloseCode::POLICY_VIOLATION, "input backlog"),
        }
    }

    fn tick(&mut self, link: &mut Link<'_, AppConn>) -> bool {
        let (idle_ms, now) = (self.cfg.idle_ms, link.now_ms);
        let Some(ws) = link.app().ws() else {
            return false;
        };
        if idle_ms > 0 && now.wrapping_sub(ws.last_msg) >= idle_ms {
            link.stats.idle_timeouts += 1;
            fail(link, CloseCode::NORMAL, "idle timeout");
            return false;
        }
        // A control frame: it goes out even past a full ring (up to the control slack).
        if link.send_control(self.ping.clone()).is_ok() {
            link.stats.pings_sent += 1;
        }
        true
    }

    fn handshake_timeout(&mut self, link: &mut Link<'_, AppConn>) {
        link.stats.handshake_timeouts += 1;
        if link.app().route().is_some() {
            // Upgraded, but the `auth` op never came.
            link.stats.auth_failures += 1;
            fail(link, CloseCode::POLICY_VIOLATION, "authentication timeout");
        } else {
            link.abort();
        }
    }

    fn drain(&mut self, link: &mut Link<'_, AppConn>) {
        fail(link, CloseCode::GOING_AWAY, "server shutting down");
    }

    fn message(&mut self, cx: &mut Cx<App>, msg: Msg) {
        self.on_mesh(cx, msg);
    }

    fn end_turn(&mut self, cx: &mut Cx<App>) {
        self.seal(cx);
        self.resume_publishers(cx);
        self.expire_tokens(cx);
        let s = &mut cx.stats;
        s.upgraded_open = s.upgraded - self.ws_closed;
        s.rooms_owned = self.owner.len() as u64;
        s.rooms_local = self.local.rooms() as u64;
        s.members = self.local.memberships() as u64;
    }

    fn closed(&mut self, cx: &mut Cx<App>, slot: usize, conn: Conn<AppConn>) {
        for room in self.local.leave_all(slot as u32) {
            let owner = owner_of(&room, self.shards);
            let shard = self.shard as u16;
            cx.mesh.send(owner, Msg::Leave { room, shard });
        }
        let mut app = conn.app;
        if app.route().is_some() {
            self.ws_closed += 1;
            if !app.has(flag::CLOSE_SENT) {
                cx.stats.close_none += 1;
            }
        }
        self.release(&mut app);
        if let Some(s) = self.sessions.remove(slot as u32) {
            self.gate.release_user(&s.sub);
        }
        if app.drops > 0 {
            tracing::info!(
                shard = self.shard,
                drops = app.drops,
                "closed a connection that had deliveries dropped (slow consumer)"
            );
        }
    }
}

/// Queues a reply for the connection in `slot` (the one whose event is being handled).
fn reply_to(cx: &mut Cx<App>, slot: usize, frame: SharedFrame) {
    if let Some(mut link) = cx.link_any(slot) {
        reply(&mut link, frame);
    }
}

impl App {
    /// Carries out the `/ws` ops the connection in `slot` just asked for.
    fn apply_intents(&mut self, cx: &mut Cx<App>, slot: usize) {
        if self.intents.is_empty() {
            return;
        }
        let mut intents = std::mem::take(&mut self.intents);
        let me = self.shard as u16;
        let shards = self.shards;
        let gen = cx.gen(slot).unwrap_or(0);
        let who = slot as u32;
        for intent in intents.drain(..) {
            match intent {
                Intent::Login(session) => self.login(slot, gen, session),
                Intent::Refresh(session) => self.refresh(cx, slot, gen, session),
                Intent::Join { .. } | Intent::Pub { .. }
                    if self.sessions.required && self.sessions.get(who).is_none() =>
                {
                    reply_to(cx, slot, wire::unauthenticated());
                }
                Intent::Join { room } if !self.sessions.may_join(who, &room) => {
                    cx.stats.forbidden += 1;
                    let e = wire::error("forbidden", "not allowed to join that room");
                    reply_to(cx, slot, e);
                }
                Intent::Pub { room, .. } if !self.sessions.may_publish(who, &room) => {
                    cx.stats.forbidden += 1;
                    let e = wire::error("forbidden", "not allowed to publish to that room");
                    reply_to(cx, slot, e);
                }
                Intent::Join { room } => {
                    let max = self.cfg.max_rooms_per_conn;
                    match self.local.request_join(&room, who, max) {
                        Ok(()) => {
                            let owner = owner_of(&room, shards);
                            let msg = Msg::Join {
                                room,
                                shard: me,
                                slot: who,
                                gen,
                            };
                            cx.mesh.send(owner, msg);
                        }
                        Err(JoinRefused::AlreadyJoined) => reply_to(
                            cx,
                            slot,
                            wire::error("already_joined", "already a member of that room"),
                        ),
                        Err(JoinRefused::TooManyRooms) => reply_to(
                            cx,
                            slot,
                            wire::error("too_many_rooms", "this connection is in too many rooms"),
                        ),
                    }
                }
                Intent::Leave { room } => {
                    if self.local.leave(&room, who) {
                        reply_to(cx, slot, wire::left(&room));
                        let owner = owner_of(&room, shards);
                        cx.mesh.send(owner, Msg::Leave { room, shard: me });
                    } else {
                        let e = wire::error("not_joined", "not a member of that room");
                        reply_to(cx, slot, e);
                    }
                }
                Intent::Pub { room, data, id } => {
                    cx.stats.published += 1;
                    let owner = owner_of(&room, shards);
                    let msg = Msg::Publish {
                        room,
                        data,
                        shard: me,
                        slot: who,
                        gen,
                        id,
                    };
                    cx.mesh.send(owner, msg);
                    // Flow control: a publisher faster than the owner can take stops being
                    // read until the mesh drains, instead of its messages being dropped.
                    if cx.mesh.pressure(owner) > cx.mesh.capacity() / MESH_PAUSE_DIVISOR {
                        if let Some(mut link) = cx.link_any(slot) {
                            if !link.is_paused() {
                                link.pause();
                                self.mesh_paused.push((slot, gen));
                            }
                        }
                    }
                }
            }
        }
        self.intents = intents;
    }

    /// Records the session of a connection whose token was accepted.
    fn login(&mut self, slot: usize, gen: u32, session: Session) {
        self.expiries.push(Reverse((session.exp, slot as u32, gen)));
        if let Some(old) = self.sessions.insert(slot as u32, session) {
            self.gate.release_user(&old.sub);
        }
    }

    /// A `refresh` op's token: same user, new expiry and rights.
    fn refresh(&mut self, cx: &mut Cx<App>, slot: usize, gen: u32, session: Session) {
        let same = self
            .sessions
            .get(slot as u32)
            .is_some_and(|s| s.sub == session.sub);
        if !same {
            let e = wire::error("wrong_user", "a refresh token must be for the same sub");
            return reply_to(cx, slot, e);
        }
        reply_to(cx, slot, wire::authed(&session.sub, session.exp));
        self.expiries.push(Reverse((session.exp, slot as u32, gen)));
        self.sessions.insert(slot as u32, session);
    }

    /// Closes (1008 "token expired") connections whose token expired without a refresh.
    fn expire_tokens(&mut self, cx: &mut Cx<App>) {
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
            if current.is_none_or(|e| e > now) {
                continue;
            }
            if let Some(mut link) = cx.link(slot as usize, gen) {
                link.stats.tokens_expired += 1;
                fail(&mut link, CloseCode::POLICY_VIOLATION, "token expired");
            }
        }
    }

    /// Hands each room's batch of this turn to the shards with members: encoded once
    /// into one shared frame. Cost: one encode and one allocation per room with traffic,
    /// one mesh message per shard with members (ours included, through the local queue).
    fn seal(&mut self, cx: &mut Cx<App>) {
        let (owner, mesh, buf) = (&mut self.owner, &mut cx.mesh, &mut self.encoded);
        owner.seal(|room, batch, members| {
            buf.clear();
            for (seq, data) in batch {
                wire::write_msg(room, *seq, data, buf);
            }
            let frame = SharedFrame::from_encoded(Arc::from(&buf[..]));
            for (shard, &n) in members.iter().enumerate() {
                if n > 0 {
                    let room = room.clone();
                    mesh.send(
                        shard,
                        Msg::Deliver {
                            room,
                            frame: frame.clone(),
                        },
                    );
                }
            }
        });
        if buf.capacity() > 64 * 1024 {
            // A burst is over; don't keep its buffer.
            *buf = Vec::new();
        }
    }

    /// Reads paused publishers again once the mesh has drained.
    fn resume_publishers(&mut self, cx: &mut Cx<App>) {
        if self.mesh_paused.is_empty()
            || cx.mesh.max_pressure() > cx.mesh.capacity() / MESH_RESUME_DIVISOR
        {
            return;
        }
        for (slot, gen) in self.mesh_paused.drain(..) {
            cx.resume(slot, gen);
        }
    }

    fn on_mesh(&mut self, cx: &mut Cx<App>, msg: Msg) {
        match msg {
            Msg::Join {
                room,
                shard,
                slot,
                gen,
            } => {
                let seq = self.owner.join(&room, shard.into());
                let joined = Msg::Joined {
                    room,
                    slot,
                    gen,
                    seq,
                };
                cx.mesh.send(shard.into(), joined);
            }
            Msg::Leave { room, shard } => self.owner.leave(&room, shard.into()),
            Msg::Publish {
                room,
                data,
                shard,
                slot,
                gen,
                id,
            } => {
                // No members anywhere: nothing is kept, and the ack says seq 0.
                let seq = self.owner.publish(&room, data).unwrap_or(0);
                if let Some(id) = id {
                    cx.mesh.send(shard.into(), Msg::Ack { slot, gen, id, seq });
                }
            }
            Msg::Joined {
                room,
                slot,
                gen,
                seq,
            } => {
                if cx.gen(slot as usize) == Some(gen) && self.local.joined(&room, slot) {
                    reply_to(cx, slot as usize, wire::joined(&room, seq));
                }
            }
            Msg::Ack { slot, gen, id, seq } => {
                if let Some(mut link) = cx.link(slot as usize, gen) {
                    reply(&mut link, wire::ack(id, seq));
                }
            }
            Msg::Deliver { room, frame } => self.deliver(cx, &room, &frame),
        }
    }

    /// Puts `frame` in the out-ring of every member of `room` on this shard.
    /// Cost: O(members on this shard), one refcount increment each; no copy.
    fn deliver(&mut self, cx: &mut Cx<App>, room: &str, frame: &SharedFrame) {
        let (turn, out_cap) = (cx.turn, cx.out_cap);
        let (policy, max_bytes) = (self.cfg.slow_policy, self.cfg.max_queued_bytes);
        for &slot in self.local.members(room) {
            let Some(mut link) = cx.link_any(slot as usize) else {
                continue;
            };
            if link.is_closing() {
                continue;
            }
            let mut ok = link.deliver(frame.clone(), max_bytes, turn).is_ok();
            if !ok {
                match policy {
                    SlowPolicy::DropNewest => {
                        link.stats.dropped_newest += 1;
                        link.app().drops = link.app().drops.saturating_add(1);
                    }
                    SlowPolicy::DropOldest => {
                        link.stats.dropped_oldest += 1;
                        link.app().drops = link.app().drops.saturating_add(1);
                        ok = link.drop_oldest()
                            && link.send_up_to(frame.clone(), out_cap * 4).is_ok();
                    }
                    SlowPolicy::Close => {
                        link.stats.closed_slow += 1;
                        fail(&mut link, CloseCode::POLICY_VIOLATION, "slow consumer");
                    }
                }
            }
            if ok {
                link.stats.delivered += 1;
            }
        }
    }
}
