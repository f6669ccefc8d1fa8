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
use crate::rooms::{owner_of, JoinRefused, Need, Parked, ENCODINGS};

use super::auth::{unix_now, Session};
use super::conn::{flag, AppConn, Endpoint};
use super::slow::{offer, owe, send_gap, Tag};
use super::sse::{self, ENC_MANY, ENC_WS};
use super::ws::{fail, reply};
use super::{api, batch, gate, wire, App, Intent, Msg, Reply};

/// A publishing connection stops being read when the mesh queue towards the room's owner
/// is fuller than capacity / PAUSE, and paused publishers are read again once every queue
/// is below capacity / RESUME ([`crate::mesh::queue_capacity`]).
const MESH_PAUSE_DIVISOR: usize = 2;
const MESH_RESUME_DIVISOR: usize = 8;

impl Service for App {
    type Conn = AppConn;
    type Msg = Msg;
    type Tag = Tag;

    fn open(&mut self, peer: Option<IpAddr>) -> AppConn {
        AppConn::new(peer.map_or(0, gate::peer_key))
    }

    fn data(&mut self, cx: &mut Cx<App>, slot: usize, data: &mut [u8]) -> usize {
        let n = match cx.link_any(slot) {
            Some(mut link) => self.receive(&mut link, data),
            None => data.len(),
        };
        self.apply_intents(cx, slot);
        self.acks_owed = 0;
        if !self.api_sends.is_empty() || !self.api_asks.is_empty() {
            self.send_api(cx);
        }
        n
    }

    fn max_pending(&self, conn: &AppConn) -> usize {
        self.pending_bound(conn)
    }

    fn overflow(&mut self, link: &mut Link<'_, AppConn, Tag>) {
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

    fn tick(&mut self, link: &mut Link<'_, AppConn, Tag>) -> bool {
        let (idle_ms, now) = (self.cfg.idle_ms, link.now_ms);
        if link.app().sse().is_some() {
            // A comment line keeps proxies from timing the stream out; nothing comes back.
            let _ = link.send_control(self.sse_beat.clone());
            return false;
        }
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

    fn handshake_timeout(&mut self, link: &mut Link<'_, AppConn, Tag>) {
        link.stats.handshake_timeouts += 1;
        if link.app().route().is_some() {
            // Upgraded, but the `auth` op never came.
            link.stats.auth_failures += 1;
            fail(link, CloseCode::POLICY_VIOLATION, "authentication timeout");
        } else {
            link.abort();
        }
    }

    fn drain(&mut self, link: &mut Link<'_, AppConn, Tag>) {
        if link.app().sse().is_some() {
            return link.finish(sse::goodbye());
        }
        fail(link, CloseCode::GOING_AWAY, "server shutting down");
    }

    fn message(&mut self, cx: &mut Cx<App>, msg: Msg) {
        // A shard that slept through a room's TTL frees it before it answers anything about
        // it (O(1) when nothing is due).
        let now = self.clock(cx.now_ms);
        self.owner.expire(now);
        self.on_mesh(cx, msg);
    }

    fn end_turn(&mut self, cx: &mut Cx<App>) {
        self.clock(cx.now_ms);
        self.seal(cx);
        if let Some(codec) = self.codec.as_deref_mut() {
            cx.stats.deflate_out += std::mem::take(&mut codec.compressed);
        }
        if self.cfg.backplane {
            for (room, p, joined) in self.owner.ready() {
                let (slot, gen) = (p.slot, p.gen);
                let msg = Msg::Joined {
                    room,
                    slot,
                    gen,
                    joined,
                };
                cx.mesh.send(p.shard, msg);
            }
        }
        self.flush_gaps(cx);
        self.owner.expire(self.clock_ms);
        self.resume_publishers(cx);
        self.expire_tokens(cx);
        let s = &mut cx.stats;
        if self.clock_ms >= self.gauge_ms + 1000 {
            self.gauge_ms = self.clock_ms;
            s.history_bytes = self.owner.history_bytes() as u64;
        }
        s.upgraded_open = s.upgraded - self.ws_closed;
        s.sse_open = s.sse_opened - self.sse_closed;
        s.rooms_owned = self.owner.len() as u64;
        s.rooms_local = self.local.rooms() as u64;
        s.members = self.local.memberships() as u64;
    }

    fn closed(&mut self, cx: &mut Cx<App>, slot: usize, conn: Conn<AppConn, Tag>) {
        let encoding = conn.app.encoding();
        for room in self.local.leave_all(slot as u32) {
            self.presence_event(cx, &room, slot as u32, false);
            self.tell_owner_left(cx, room, slot as u32, encoding);
        }
        let mut app = conn.app;
        if app.sse().is_some() {
            self.sse_closed += 1;
        }
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
                Intent::Join { .. } | Intent::Pub { .. } | Intent::Presence { .. }
                    if self.sessions.required && self.sessions.get(who).is_none() =>
                {
                    let id = match intent {
                        Intent::Pub { id, .. } => id,
                        _ => None,
                    };
                    reply_to(cx, slot, wire::unauthenticated(id));
                }
                Intent::Presence { room } if !self.sessions.may_join(who, &room) => {
                    cx.stats.forbidden += 1;
                    let e = wire::error("forbidden", "not allowed to see that room");
                    reply_to(cx, slot, e);
                }
                Intent::Presence { room } => {
                    if let Some(mut link) = cx.link_any(slot) {
                        self.ask_presence(&mut link, room, true);
                    }
                }
                Intent::Join { room, .. } if !self.sessions.may_join(who, &room) => {
                    cx.stats.forbidden += 1;
                    let e = wire::error("forbidden", "not allowed to join that room");
                    reply_to(cx, slot, e);
                }
                Intent::Pub { room, id, .. } if !self.sessions.may_publish(who, &room) => {
                    cx.stats.forbidden += 1;
                    let msg = "not allowed to publish to that room";
                    reply_to(cx, slot, wire::error_id("forbidden", msg, id));
                }
                Intent::Join { room, since } => {
                    let max = self.cfg.max_rooms_per_conn;
                    match self.local.request_join(&room, who, max) {
                        Ok(()) => {
                            let owner = owner_of(&room, shards);
                            let encoding = cx.app(slot).map_or(ENC_WS, AppConn::encoding) as u8;
                            let msg = Msg::Join {
                                room,
                                shard: me,
                                slot: who,
                                gen,
                                encoding,
                                since,
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
                        self.presence_event(cx, &room, who, false);
                        let encoding = cx.app(slot).map_or(ENC_WS, AppConn::encoding);
                        self.tell_owner_left(cx, room, who, encoding);
                    } else {
                        let e = wire::error("not_joined", "not a member of that room");
                        reply_to(cx, slot, e);
                    }
                }
                Intent::Pub { room, data, id } => {
                    cx.stats.published += 1;
                    let owner = self.orderer(&room);
                    let msg = Msg::Publish {
                        room,
                        data,
                        shard: me,
                        slot: who,
                        gen,
                        reply: id.map_or(Reply::None, Reply::Ack),
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

    /// Tells `room`'s owner that a member here, with its deliveries in `encoding`, left.
    fn tell_owner_left(&mut self, cx: &mut Cx<App>, room: Arc<str>, slot: u32, encoding: usize) {
        let owner = owner_of(&room, self.shards);
        let (shard, encoding) = (self.shard as u16, encoding as u8);
        cx.mesh.send(
            owner,
            Msg::Leave {
                room,
                shard,
                slot,
                encoding,
            },
        );
    }

    /// Where a publish to `room` goes to be given its seq: the room's owner shard, or
    /// with a backplane, the backplane (Redis orders the cluster's publishes).
    pub(super) fn orderer(&self, room: &str) -> usize {
        if self.cfg.backplane {
            self.shards
        } else {
            owner_of(room, self.shards)
        }
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

    /// Hands each room's batch of this turn to the shards with members: encoded once per
    /// encoding some member uses (WebSocket frames, event-stream events) into shared
    /// frames. Cost: one encode and one allocation per room with traffic and encoding in
    /// use, one mesh message per shard with members (ours included, through the local
    /// queue).
    fn seal(&mut self, cx: &mut Cx<App>) {
        let (owner, mesh, buf) = (&mut self.owner, &mut cx.mesh, &mut self.encoded);
        let codec = &mut self.codec;
        owner.seal(|s| {
            if s.members.iter().all(|&n| n == 0) {
                // Kept for its history only: nobody to deliver to.
                return;
            }
            let frames = Arc::new(batch::frames(&s, buf, codec));
            for (shard, &n) in s.members.iter().enumerate() {
                if n > 0 {
                    let msg = Msg::Deliver {
                        room: s.room.clone(),
                        first: s.first,
                        last: s.last,
                        frames: frames.clone(),
                    };
                    mesh.send(shard, msg);
                }
            }
        });
        if buf.capacity() > 64 * 1024 {
            // A burst is over; don't keep its buffer.
            *buf = Vec::new();
        }
    }

    /// Queues the gap notices owed, where the members' rings have room again.
    fn flush_gaps(&mut self, cx: &mut Cx<App>) {
        if self.gaps.is_empty() {
            return;
        }
        let cap = cx.out_cap * 4;
        self.gaps.retain(|&(slot, gen), mine| {
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
                encoding,
                since,
            } => {
                let joined = if self.cfg.backplane {
                    let parked = Parked {
                        shard: shard.into(),
                        slot,
                        gen,
                        encoding: encoding.into(),
                        since,
                        asked: false,
                    };
                    match self.owner.join_remote(&room, parked) {
                        Need::Ready(joined) => joined,
                        Need::Subscribe { after, sub } => {
                            return cx.mesh.send(self.shards, Msg::Sub { room, after, sub })
                        }
                        Need::Fetch { after } => {
                            return cx.mesh.send(self.shards, Msg::Fetch { room, after })
                        }
                        Need::Wait => return,
                    }
                } else {
                    self.owner.join(&room, shard.into(), encoding.into(), since)
                };
                let joined = Msg::Joined {
                    room,
                    slot,
                    gen,
                    joined,
                };
                cx.mesh.send(shard.into(), joined);
            }
            Msg::Leave {
                room,
                shard,
                slot,
                encoding,
            } => {
                let who = (shard.into(), slot);
                let gone = self.owner.leave(&room, who, encoding.into(), self.clock_ms);
                if gone {
                    cx.mesh.send(self.shards, Msg::Unsub { room });
                }
            }
            Msg::Synced {
                room,
                epoch,
                seq,
                entries,
                fetch,
                sub,
            } => {
                // A catch-up may start the room's log over: this turn's batch goes first.
                if !fetch {
                    self.seal(cx);
                }
                let before = self.owner.position(&room).filter(|_| !fetch);
                let (answered, fetch) =
                    self.owner
                        .synced(&room, (epoch, seq), entries, (fetch, sub));
                if let Some((old, _)) = before.filter(|&(e, _)| e != epoch) {
                    tracing::warn!(room = %room, old, epoch, "a room's sequence started over in Redis: members are told");
                    self.reset(cx, &room);
                }
                for (p, joined) in answered {
                    let msg = Msg::Joined {
                        room: room.clone(),
                        slot: p.slot,
                        gen: p.gen,
                        joined,
                    };
                    cx.mesh.send(p.shard, msg);
                }
                if let Some(after) = fetch {
                    cx.mesh.send(self.shards, Msg::Fetch { room, after });
                }
            }
            Msg::Remote {
                room,
                epoch,
                seq,
                data,
            } => {
                if self.owner.must_seal(&room, epoch, seq) {
                    self.seal(cx);
                }
                if self.owner.arrive(&room, epoch, seq, data) {
                    tracing::warn!(room = %room, epoch, "a room's sequence started over in Redis: members are told");
                    self.reset(cx, &room);
                }
            }
            Msg::Reset { room, epoch, seq } => {
                self.local.reset(&room, seq);
                let members = self.local.members(&room).to_vec();
                for slot in members {
                    let joined = crate::rooms::Joined {
                        seq,
                        epoch,
                        recovered: Some(false),
                        replay: Vec::new(),
                    };
                    self.on_joined(cx, slot as usize, &room, joined);
                }
            }
            Msg::Refused {
                slot,
                gen,
                id,
                unknown,
            } => {
                if let Some(mut link) = cx.link(slot as usize, gen) {
                    reply(&mut link, wire::unavailable(id, unknown));
                }
            }
            Msg::Presence { room, json, remote } => self.on_presence(cx, room, json, remote),
            Msg::PresenceDeliver { room, json } => self.deliver_presence(cx, &room, &json),
            Msg::SubFailed { room } => {
                for p in self.owner.sub_failed(&room) {
                    let (room, slot, gen) = (room.clone(), p.slot, p.gen);
                    cx.mesh.send(p.shard, Msg::JoinFailed { room, slot, gen });
                }
            }
            Msg::JoinFailed { room, slot, gen } => {
                // The owner dropped the join: no leave goes back to it.
                if cx.gen(slot as usize) == Some(gen) && self.local.leave(&room, slot) {
                    reply_to(cx, slot as usize, wire::join_unavailable(&room));
                }
            }
            Msg::Sub { .. } | Msg::Unsub { .. } | Msg::Fetch { .. } => {}
            Msg::Publish {
                room,
                data,
                shard,
                slot,
                gen,
                reply,
            } => {
                // No members anywhere: nothing is kept, and the ack says seq 0.
                let published = self.owner.publish(&room, data, self.clock_ms);
                let seq = published.map_or(0, |p| p.0);
                let to = shard.into();
                match reply {
                    Reply::None => {}
                    Reply::Ack(id) => cx.mesh.send(to, Msg::Ack { slot, gen, id, seq }),
                    Reply::Api(req, index) => {
                        let epoch = published.map(|p| p.1);
                        let answer = api::Answer::Published { index, seq, epoch };
                        cx.mesh.send(to, Msg::Answer { req, answer });
                    }
                }
            }
            Msg::Ask { shard, req, ask } => {
                let answer = self.on_ask(cx, ask);
                cx.mesh.send(shard.into(), Msg::Answer { req, answer });
            }
            Msg::Answer { req, answer } => self.on_answer(cx, req, answer),
            Msg::Joined {
                room,
                slot,
                gen,
                joined,
            } => {
                let missed = self.local.expect(&room, joined.seq);
                if let (Some((from, to)), Some(id)) = (missed, self.local.id(&room)) {
                    // Batches the mesh dropped before this answer: owed to the members.
                    for &member in self.local.members(&room) {
                        if let Some(mut link) = cx.link_any(member as usize) {
                            owe(&mut self.gaps, &mut link, (id, &room), from, to);
                        }
                    }
                }
                if cx.gen(slot as usize) == Some(gen) && self.local.joined(&room, slot) {
                    self.on_joined(cx, slot as usize, &room, joined);
                    self.presence_event(cx, &room, slot, true);
                }
            }
            Msg::Ack { slot, gen, id, seq } => {
                if let Some(mut link) = cx.link(slot as usize, gen) {
                    reply(&mut link, wire::ack(id, seq));
                }
            }
            Msg::Deliver {
                room,
                first,
                last,
                frames,
            } => self.deliver(cx, &room, (first, last), &frames),
        }
    }

    /// `room`'s sequence started over (a new epoch from Redis): every shard with members
    /// tells them where they now are.
    fn reset(&mut self, cx: &mut Cx<App>, room: &Arc<str>) {
        let Some((epoch, seq)) = self.owner.position(room) else {
            return;
        };
        let members = self.owner.members_of(room).to_vec();
        for (shard, n) in members.into_iter().enumerate() {
            if n > 0 {
                let room = room.clone();
                cx.mesh.send(shard, Msg::Reset { room, epoch, seq });
            }
        }
    }

    /// The owner answered a join: the `joined` op, then what the member missed (through
    /// its ring and slow-consumer policy like any delivery), then live deliveries follow.
    fn on_joined(
        &mut self,
        cx: &mut Cx<App>,
        slot: usize,
        room: &Arc<str>,
        j: crate::rooms::Joined,
    ) {
        let (turn, out_cap) = (cx.turn, cx.out_cap);
        let Some(mut link) = cx.link_any(slot) else {
            return;
        };
        match j.recovered {
            Some(true) => link.stats.resumed += 1,
            Some(false) => link.stats.resume_failed += 1,
            None => {}
        }
        link.stats.replayed += j.replay.len() as u64;
        let encoding = link.app().encoding();
        if !sse::is_stream(encoding) {
            // Past a full ring like a notice: the replay and live messages behind it
            // mean nothing without it.
            let joined = wire::joined(room, j.seq, j.epoch, j.recovered);
            if link.send_up_to(joined, out_cap * 4).is_ok() {
                link.stats.messages_out += 1;
            }
        } else if let Some(stream) = link.app().sse() {
            // The stream's position is what it has been given: where it resumes from
            // until the replay is out.
            let given = j.replay.first().map_or(j.seq, |&(seq, _)| seq - 1);
            if let Some(pos) = stream.pos(room) {
                (pos.epoch, pos.seq, pos.joined) = (j.epoch, given, true);
            }
            let cursor = stream.cursor();
            let json = wire::joined_json(room, j.seq, j.epoch, j.recovered);
            let _ = link.send_up_to(sse::event("joined", Some(&cursor), &json), out_cap * 4);
            if j.recovered == Some(false) {
                let lost = sse::event("gap", None, &wire::lost_json(room));
                let _ = link.send_up_to(lost, out_cap * 4);
            }
        }
        let (Some(&(first, _)), Some(&(last, _))) = (j.replay.first(), j.replay.last()) else {
            return;
        };
        let Some(id) = self.local.id(room) else {
            // Not a member here any more: what it missed goes nowhere.
            return;
        };
        let mut buf = Vec::new();
        let codec = &mut self.codec;
        batch::encode(
            room,
            j.epoch,
            j.replay.iter(),
            encoding,
            &mut buf,
            codec,
            false,
        );
        let frame = SharedFrame::from_encoded(Arc::from(buf));
        let tag = Tag::delivery(id, (first, last));
        let (shard, gaps) = ((&*self.cfg, &self.local), &mut self.gaps);
        let ok = offer(shard, gaps, &mut link, room, tag, frame, (turn, out_cap));
        advance_stream(&mut link, room, last, ok, out_cap);
    }

    /// Puts this turn's batch of `room` in the out-ring of every member on this shard, in
    /// the member's encoding. Cost: O(members on this shard), one refcount increment each;
    /// no copy (a stream on several rooms adds its few bytes of position).
    fn deliver(
        &mut self,
        cx: &mut Cx<App>,
        room: &Arc<str>,
        span: (u64, u64),
        frames: &[Option<SharedFrame>; ENCODINGS],
    ) {
        let how = (cx.turn, cx.out_cap);
        let missed = self.local.arrived(room, span.0, span.1);
        let Some(id) = self.local.id(room) else {
            // No member here (any more).
            return;
        };
        let tag = Tag::delivery(id, span);
        let (shard, gaps) = ((&*self.cfg, &self.local), &mut self.gaps);
        for &slot in self.local.members(room) {
            let Some(mut link) = cx.link_any(slot as usize) else {
                continue;
            };
            if link.is_closing() {
                continue;
            }
            if let Some((from, to)) = missed {
                // The mesh dropped a batch on its way here: said, not silent.
                owe(gaps, &mut link, (id, room), from, to);
            }
            let encoding = link.app().encoding();
            let Some(frame) = &frames[encoding] else {
                continue;
            };
            let ok = offer(shard, gaps, &mut link, room, tag, frame.clone(), how);
            if sse::is_stream(encoding) {
                advance_stream(&mut link, room, span.1, ok, how.1);
            }
        }
    }
}

/// An event stream was given `room` up to `seq` (or skipped it, with a gap notice owed):
/// its position moves there, and a stream on several rooms gets its id block (one on a
/// single room had the id on every event).
fn advance_stream(
    link: &mut Link<'_, AppConn, Tag>,
    room: &str,
    seq: u64,
    queued: bool,
    out_cap: usize,
) {
    let Some(stream) = link.app().sse() else {
        return;
    };
    if let Some(pos) = stream.pos(room) {
        pos.seq = seq;
    }
    if queued && stream.encoding() == ENC_MANY {
        let block = sse::id_block(&stream.cursor());
        let _ = link.send_up_to(block, out_cap * 4);
    }
}
