//! The app as the reactor runs it: [`App`] is the [`Service`] of every shard. It hands
//! what a connection's bytes meant to the role that carries it out, and carries out the
//! intents (join, leave, publish, sessions) a connection hands its shard.
//!
//! Where a publish goes, file by file: `ws` parses the op and pushes an intent;
//! `App::apply_intents` here sends a `ToOwner::Publish` to the room's owner shard over
//! [`crate::mesh`] (with `--redis`, a `Request::Publish` to the backplane, whose order
//! comes back to the owner from Redis); there `owner` has [`crate::rooms::Owner::publish`] give it a seq in
//! this turn's batch; at the end of the turn `owner`'s `seal` encodes the batch once per
//! encoding in use (`batch`) into one shared frame and sends a `ToMember::Deliver` to every
//! shard with members; each shard's `member` puts a reference to it in every local
//! member's out-ring (through [`super::slow`]'s policy), and the reactor flushes.

use std::cmp::Reverse;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::protocol::{CloseCode, SharedFrame};
use crate::reactor::{Cx, Link, Service};
use crate::rooms::{owner_of, JoinRefused};

use super::auth::{unix_now, Session};
use super::conn::{flag, AppConn, Endpoint};
use super::encoding::Encoding;
use super::figures::Counts;
use super::slow::{send_gap, Tag};
use super::sse;
use super::wire::RoomOp;
use super::ws::{fail, reply};
use super::{gate, wire, Api, App, Intent, Msg, ToMember, ToOwner};
use crate::backplane::Request;
use crate::gather::{Publish, Reply};
use crate::hooks::What;

/// A publishing connection stops being read when the mesh queue towards the room's owner
/// is fuller than capacity / PAUSE, and paused publishers are read again once every queue
/// is below capacity / RESUME ([`crate::mesh::queue_capacity`]).
const MESH_PAUSE_DIVISOR: usize = 2;
const MESH_RESUME_DIVISOR: usize = 8;

impl Service for App {
    type Conn = AppConn;
    type Msg = Msg;
    type Tag = Tag;
    type Figures = Counts;

    fn open(&mut self, slot: usize, peer: Option<SocketAddr>) -> AppConn {
        if let Some(b) = &mut self.backend {
            b.opened(slot as u32, peer);
        }
        AppConn::new(peer.map_or(0, |p| gate::peer_key(p.ip())))
    }

    fn data(&mut self, cx: &mut Cx<App>, slot: usize, data: &mut [u8]) -> usize {
        let n = match cx.link_any(slot) {
            Some(mut link) => self.receive(&mut link, data),
            None => data.len(),
        };
        if !self.pending_calls.is_empty() {
            self.send_calls(cx);
        }
        self.apply_intents(cx, slot);
        self.acks_owed = 0;
        if !self.api.sends.is_empty() || !self.api.asks.is_empty() {
            self.send_api(cx);
        }
        n
    }

    fn max_pending(&self, conn: &AppConn) -> usize {
        self.pending_bound(conn)
    }

    fn overflow(&mut self, link: &mut Link<'_, AppConn, Tag, Counts>) {
        match link.app().ep {
            Endpoint::Http => super::ws::refuse(
                link,
                crate::protocol::Status::HeadersTooLarge,
                "request head too large",
            ),
            Endpoint::Ws(_) => fail(link, CloseCode::POLICY_VIOLATION, "input backlog"),
            Endpoint::Sse(_) => link.abort(),
        }
    }

    fn tick(&mut self, link: &mut Link<'_, AppConn, Tag, Counts>) -> bool {
        let (idle_ms, now) = (self.cfg.idle_ms, link.now_ms());
        if link.app().sse().is_some() {
            // A comment line keeps proxies from timing the stream out; nothing comes back.
            let _ = link.send_control(self.front.sse_beat.clone());
            return false;
        }
        let Some(ws) = link.app().ws() else {
            return false;
        };
        if idle_ms > 0 && now.wrapping_sub(ws.last_msg) >= idle_ms {
            link.figures().idle_timeouts += 1;
            fail(link, CloseCode::NORMAL, "idle timeout");
            return false;
        }
        // A control frame: it goes out even past a full ring (up to the control slack).
        if link.send_control(self.front.ping.clone()).is_ok() {
            link.figures().pings_sent += 1;
        }
        true
    }

    fn handshake_timeout(&mut self, link: &mut Link<'_, AppConn, Tag, Counts>) {
        if link.app().route().is_some() {
            // Upgraded, but the `auth` op never came.
            link.figures().auth_failures += 1;
            fail(link, CloseCode::POLICY_VIOLATION, "authentication timeout");
        } else {
            link.abort();
        }
    }

    fn drain(&mut self, link: &mut Link<'_, AppConn, Tag, Counts>) {
        if link.app().sse().is_some() {
            return link.finish(sse::goodbye());
        }
        fail(link, CloseCode::GOING_AWAY, "server shutting down");
    }

    fn message(&mut self, cx: &mut Cx<App>, msg: Msg) {
        // A shard that slept through a room's TTL frees it before it answers anything about
        // it (O(1) when nothing is due).
        let now = self.owner.clock(cx.clock().now_ms);
        self.owner.rooms.expire(now);
        self.on_mesh(cx, msg);
    }

    fn end_turn(&mut self, cx: &mut Cx<App>) {
        self.owner.clock(cx.clock().now_ms);
        self.seal(cx);
        if let Some(codec) = self.codec.as_deref_mut() {
            cx.figures().deflate_out += std::mem::take(&mut codec.compressed);
        }
        if self.cfg.backplane {
            for (room, p, joined) in self.owner.rooms.ready() {
                let (slot, gen) = (p.slot, p.gen);
                let msg = ToMember::Joined {
                    room,
                    slot,
                    gen,
                    joined,
                };
                cx.mesh().send(p.shard, msg.into());
            }
        }
        self.flush_gaps(cx);
        self.owner.rooms.expire(self.owner.clock_ms);
        self.resume_publishers(cx);
        self.expire_tokens(cx);
        self.refresh_sessions(cx);
        let s = &mut cx.figures();
        if self.owner.clock_ms >= self.owner.gauge_ms + 1000 {
            self.owner.gauge_ms = self.owner.clock_ms;
            s.history_bytes = self.owner.rooms.history_bytes() as u64;
        }
        s.upgraded_open = s.upgraded - self.front.ws_closed;
        s.sse_open = s.sse_opened - self.front.sse_closed;
        s.rooms_owned = self.owner.rooms.len() as u64;
        s.rooms_local = self.members.local.rooms() as u64;
        s.members = self.members.local.memberships() as u64;
    }

    fn closed(&mut self, cx: &mut Cx<App>, slot: usize, mut app: AppConn) {
        let encoding = app.encoding();
        let events = self.events();
        let user = || self.sessions.get(slot as u32).map(|s| s.sub.clone());
        let user = (events.members || events.connection_closed)
            .then(user)
            .flatten();
        for room in self.members.local.leave_all(slot as u32) {
            self.presence_event(cx, &room, slot as u32, false);
            if events.members {
                let user = user.clone();
                self.tell_hooks(
                    cx,
                    What::MemberLeft {
                        room: room.clone(),
                        user,
                    },
                );
            }
            self.tell_owner_left(cx, room, slot as u32, encoding);
        }
        if let Some(b) = &mut self.backend {
            b.closed(slot as u32);
        }
        if events.connection_closed && (app.route().is_some() || app.sse().is_some()) {
            let (code, reason) = match app.route() {
                Some(_) if app.has(flag::CLOSE_SENT) => (app.close_code, ""),
                Some(_) => (1006, "closed without a close frame"),
                None => (0, "event stream ended"),
            };
            let reason = Arc::from(reason);
            self.tell_hooks(cx, What::ConnectionClosed { code, reason, user });
        }
        if app.sse().is_some() {
            self.front.sse_closed += 1;
        }
        if app.route().is_some() {
            self.front.ws_closed += 1;
            if !app.has(flag::CLOSE_SENT) {
                cx.figures().close_none += 1;
            }
        }
        self.release(&mut app);
        if let Some(s) = self.sessions.remove(slot as u32) {
            self.front.gate.release_user(&s.sub);
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
pub(super) fn reply_to(cx: &mut Cx<App>, slot: usize, frame: SharedFrame) {
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
        let gen = cx.gen(slot).unwrap_or(0);
        let who = slot as u32;
        for intent in intents.drain(..) {
            match intent {
                Intent::Login(session) => self.login(slot, gen, session),
                Intent::Refresh(session) => self.refresh(cx, slot, gen, session),
                Intent::ServerJoin(room) => self.join_now(cx, slot, gen, room, None),
                Intent::Rpc { method, data, id } => {
                    self.ask_rpc(cx, slot, gen, (method, data, id));
                }
                Intent::Room(
                    RoomOp::Join { .. } | RoomOp::Pub { .. } | RoomOp::Presence { .. },
                ) if self.sessions.required && self.sessions.get(who).is_none() => {
                    let id = match intent {
                        Intent::Room(RoomOp::Pub { id, .. }) => id,
                        _ => None,
                    };
                    reply_to(cx, slot, wire::unauthenticated(id));
                }
                Intent::Room(RoomOp::Presence { room }) if !self.sessions.may_join(who, &room) => {
                    cx.figures().forbidden += 1;
                    let e = wire::error("forbidden", "not allowed to see that room");
                    reply_to(cx, slot, e);
                }
                Intent::Room(RoomOp::Presence { room }) => {
                    if let Some(mut link) = cx.link_any(slot) {
                        self.ask_presence(&mut link, room, true);
                    }
                }
                Intent::Room(RoomOp::Join { room, .. }) if !self.sessions.may_join(who, &room) => {
                    cx.figures().forbidden += 1;
                    let e = wire::error("forbidden", "not allowed to join that room");
                    reply_to(cx, slot, e);
                }
                Intent::Room(RoomOp::Pub { room, id, .. })
                    if !self.sessions.may_publish(who, &room) =>
                {
                    cx.figures().forbidden += 1;
                    let msg = "not allowed to publish to that room";
                    reply_to(cx, slot, wire::error_id("forbidden", msg, id));
                }
                Intent::Room(RoomOp::Join { room, since }) => {
                    if !self.ask_join(cx, slot, gen, room.clone(), since) {
                        self.join_now(cx, slot, gen, room, since);
                    }
                }
                Intent::Room(RoomOp::Leave { room })
                    if self
                        .backend
                        .as_mut()
                        .is_some_and(|b| b.withdraw_join(who, &room)) =>
                {
                    // Its join was still with the join hook: withdrawn.
                    reply_to(cx, slot, wire::left(&room));
                }
                Intent::Room(RoomOp::Leave { room }) => {
                    if self.members.local.leave(&room, who) {
                        reply_to(cx, slot, wire::left(&room));
                        self.presence_event(cx, &room, who, false);
                        if self.events().members {
                            let user = self.sessions.get(who).map(|s| s.sub.clone());
                            self.tell_hooks(
                                cx,
                                What::MemberLeft {
                                    room: room.clone(),
                                    user,
                                },
                            );
                        }
                        let encoding = cx.app(slot).map_or(Encoding::Ws, AppConn::encoding);
                        self.tell_owner_left(cx, room, who, encoding);
                    } else {
                        let e = wire::error("not_joined", "not a member of that room");
                        reply_to(cx, slot, e);
                    }
                }
                Intent::Room(RoomOp::Pub { room, data, id }) => {
                    if let Some((room, data, id)) =
                        self.ask_publish(cx, slot, gen, (room, data, id))
                    {
                        self.publish_now(cx, slot, gen, room, data, id);
                    }
                }
            }
        }
        self.intents = intents;
    }

    /// Joins `room` for the connection in `slot` (its rights and any join hook passed):
    /// asks the room's owner.
    pub(super) fn join_now(
        &mut self,
        cx: &mut Cx<App>,
        slot: usize,
        gen: u32,
        room: Arc<str>,
        since: Option<(u64, u32)>,
    ) {
        let max = self.cfg.max_rooms_per_conn;
        let who = slot as u32;
        match self.members.local.request_join(&room, who, max) {
            Ok(()) => {
                let owner = owner_of(&room, self.shards);
                let encoding = cx.app(slot).map_or(Encoding::Ws, AppConn::encoding);
                let msg = ToOwner::Join {
                    room,
                    shard: self.shard as u16,
                    slot: who,
                    gen,
                    encoding,
                    since,
                };
                cx.mesh().send(owner, msg.into());
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

    /// Publishes for the connection in `slot` (its rights and any publish hook passed):
    /// to the room's owner, or the backplane.
    pub(super) fn publish_now(
        &mut self,
        cx: &mut Cx<App>,
        slot: usize,
        gen: u32,
        room: Arc<str>,
        data: Arc<str>,
        id: Option<u64>,
    ) {
        cx.figures().published += 1;
        let user = match self.events().client_publish {
            true => self.sessions.get(slot as u32).map(|s| s.sub.clone()),
            false => None,
        };
        let publish = Publish {
            room,
            data,
            shard: self.shard as u16,
            slot: slot as u32,
            gen,
            reply: id.map_or(Reply::None, Reply::Ack),
            notify: self.events().client_publish,
            user,
        };
        let owner = self.send_publish(cx, publish);
        // Flow control: a publisher faster than the owner can take stops being read until
        // the mesh drains, instead of its messages being dropped.
        if cx.mesh().pressure(owner) > cx.mesh().capacity() / MESH_PAUSE_DIVISOR {
            if let Some(mut link) = cx.link(slot, gen) {
                if !link.is_paused() {
                    link.pause();
                    self.mesh_paused.push((slot, gen));
                }
            }
        }
    }

    /// The webhook events some receiver wants.
    pub(super) fn events(&self) -> super::backend::Events {
        self.backend
            .as_ref()
            .map_or_else(Default::default, |b| b.use_.events)
    }

    /// Tells `room`'s owner that a member here, with its deliveries in `encoding`, left.
    fn tell_owner_left(&mut self, cx: &mut Cx<App>, room: Arc<str>, slot: u32, encoding: Encoding) {
        let owner = owner_of(&room, self.shards);
        let shard = self.shard as u16;
        cx.mesh().send(
            owner,
            ToOwner::Leave {
                room,
                shard,
                slot,
                encoding,
            }
            .into(),
        );
    }

    /// Sends a publish to be given its seq: to the room's owner shard, or with a backplane,
    /// to the backplane (Redis orders the cluster's publishes). Returns where it went.
    pub(super) fn send_publish(&self, cx: &mut Cx<App>, publish: Publish) -> usize {
        if self.cfg.backplane {
            cx.mesh()
                .send(self.shards, Request::Publish(publish).into());
            self.shards
        } else {
            let owner = owner_of(&publish.room, self.shards);
            cx.mesh().send(owner, ToOwner::Publish(publish).into());
            owner
        }
    }

    /// Records the session of a connection whose token was accepted.
    fn login(&mut self, slot: usize, gen: u32, session: Session) {
        self.sessions
            .expiries
            .push(Reverse((session.exp, slot as u32, gen)));
        if let Some(old) = self.sessions.insert(slot as u32, session) {
            self.front.gate.release_user(&old.sub);
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
        self.sessions
            .expiries
            .push(Reverse((session.exp, slot as u32, gen)));
        self.sessions.insert(slot as u32, session);
    }

    /// Closes (1008 "token expired") connections whose token expired without a refresh.
    fn expire_tokens(&mut self, cx: &mut Cx<App>) {
        // Called every loop turn: without tokens, not even the clock is read.
        if self.sessions.expiries.is_empty() {
            return;
        }
        let now = unix_now();
        while let Some(&Reverse((exp, slot, gen))) = self.sessions.expiries.peek() {
            if exp > now {
                break;
            }
            self.sessions.expiries.pop();
            let current = self.sessions.get(slot).map(|s| s.exp);
            if current.is_none_or(|e| e > now) {
                continue;
            }
            if let Some(mut link) = cx.link(slot as usize, gen) {
                link.figures().tokens_expired += 1;
                fail(&mut link, CloseCode::POLICY_VIOLATION, "token expired");
            }
        }
    }

    /// Queues the gap notices owed, where the members' rings have room again.
    fn flush_gaps(&mut self, cx: &mut Cx<App>) {
        if self.members.gaps.is_empty() {
            return;
        }
        let cap = cx.out_cap() * 4;
        self.members.gaps.retain(|&(slot, gen), mine| {
            let Some(mut link) = cx.link(slot as usize, gen) else {
                // Closed: nothing is owed any more.
                return false;
            };
            if link.queued().len() >= cap {
                // Still no room: no ring scan this turn.
                return true;
            }
            mine.retain_mut(|g| !send_gap(&mut link, g, cap));
            if mine.is_empty() {
                link.app().clear(flag::OWED);
            }
            !mine.is_empty()
        });
    }

    /// Reads paused publishers again once the mesh has drained.
    fn resume_publishers(&mut self, cx: &mut Cx<App>) {
        if self.mesh_paused.is_empty()
            || cx.mesh().max_pressure() > cx.mesh().capacity() / MESH_RESUME_DIVISOR
        {
            return;
        }
        for (slot, gen) in self.mesh_paused.drain(..) {
            cx.resume(slot, gen);
        }
    }

    fn on_mesh(&mut self, cx: &mut Cx<App>, msg: Msg) {
        match msg {
            Msg::Owner(m) => self.on_owner(cx, m),
            Msg::Member(m) => self.on_member(cx, m),
            Msg::Api(Api::Ask { shard, req, ask }) => {
                let answer = self.on_ask(cx, ask);
                cx.mesh()
                    .send(shard.into(), Api::Answer { req, answer }.into());
            }
            Msg::Api(Api::Answer { req, answer }) => self.on_answer(cx, req, answer),
            Msg::FromBackplane(e) => self.on_backplane(cx, e),
            // The backplane's own channel: a shard is never on its end.
            Msg::Backplane(r) => debug_assert!(false, "a shard got a backplane request: {r:?}"),
            Msg::FromHooks(d) => self.on_hooks(cx, d),
            Msg::Hooks(r) => debug_assert!(false, "a shard got a hooks request: {r:?}"),
        }
    }
}

/// An event stream was given `room` up to `seq` (or skipped it, with a gap notice owed):
/// its position moves there, and a stream on several rooms gets its id block (one on a
/// single room had the id on every event).
pub(super) fn advance_stream(
    link: &mut Link<'_, AppConn, Tag, Counts>,
    room: &str,
    seq: u64,
    queued: bool,
) {
    let out_cap = link.out_cap();
    let Some(stream) = link.app().sse() else {
        return;
    };
    if let Some(pos) = stream.pos(room) {
        pos.seq = seq;
    }
    if queued && stream.encoding() == Encoding::StreamMany {
        let block = sse::id_block(&stream.cursor());
        let _ = link.send_up_to(block, out_cap * 4);
    }
}
