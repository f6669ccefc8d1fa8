//! What the backplane tells this shard (`--redis`): a room's state and messages in the
//! cluster's order, presence from other nodes, the fate of publishes, and the API's
//! cluster-wide asks and answers. The backplane's [`Event`]s arrive here as they are.

use std::sync::Arc;

use crate::backplane::{Event, Request};
use crate::reactor::Cx;
use crate::rooms::{Joined, Parked};

use super::ws::reply;
use super::{wire, App, ToMember};

impl App {
    /// A message from the backplane.
    pub(super) fn on_backplane(&mut self, cx: &mut Cx<App>, event: Event) {
        match event {
            Event::Synced {
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
                let before = self.owner.rooms.position(&room).filter(|_| !fetch);
                let (answered, fetch) =
                    self.owner
                        .rooms
                        .synced(&room, (epoch, seq), entries, (fetch, sub));
                if let Some((old, _)) = before.filter(|&(e, _)| e != epoch) {
                    tracing::warn!(room = %room, old, epoch, "a room's sequence started over in Redis: members are told");
                    self.reset(cx, &room);
                }
                tell_joined(cx, &room, answered);
                if let Some(after) = fetch {
                    cx.mesh()
                        .send(self.shards, Request::Fetch { room, after }.into());
                }
            }
            Event::Remote {
                room,
                epoch,
                seq,
                data,
            } => {
                if self.owner.rooms.must_seal(&room, epoch, seq) {
                    self.seal(cx);
                }
                if self.owner.rooms.arrive(&room, epoch, seq, data) {
                    tracing::warn!(room = %room, epoch, "a room's sequence started over in Redis: members are told");
                    self.reset(cx, &room);
                }
            }
            Event::Presence { room, json } => self.on_presence(cx, room, json, true),
            Event::FetchFailed { room, sub } => {
                let (answered, refused, unused) = self.owner.rooms.fetch_failed(&room, sub);
                tell_joined(cx, &room, answered);
                for p in refused {
                    self.count_interest(cx, &room, false);
                    let (room, slot, gen) = (room.clone(), p.slot, p.gen);
                    cx.mesh()
                        .send(p.shard, ToMember::JoinFailed { room, slot, gen }.into());
                }
                if unused {
                    cx.mesh().send(self.shards, Request::Unsub { room }.into());
                }
            }
            Event::SubFailed { room } => {
                for p in self.owner.rooms.sub_failed(&room) {
                    self.count_interest(cx, &room, false);
                    let (room, slot, gen) = (room.clone(), p.slot, p.gen);
                    cx.mesh()
                        .send(p.shard, ToMember::JoinFailed { room, slot, gen }.into());
                }
            }
            Event::Ack { slot, gen, id, seq } => {
                self.on_member(cx, ToMember::Ack { slot, gen, id, seq })
            }
            Event::Refused {
                slot,
                gen,
                id,
                unknown,
            } => {
                if let Some(mut link) = cx.link(slot as usize, gen) {
                    reply(&mut link, wire::unavailable(id, unknown));
                }
            }
            Event::Published {
                room,
                epoch,
                seq,
                data,
                user,
            } => {
                let what = crate::hooks::What::ClientPublish {
                    room,
                    epoch,
                    seq,
                    data,
                    user,
                };
                self.tell_hooks(cx, what);
            }
            Event::Ask { shard, req, ask } => {
                let answer = self.on_ask(cx, ask);
                cx.mesh()
                    .send(shard.into(), Request::Answer { req, answer }.into());
            }
            Event::Answer { req, answer } => self.on_answer(cx, req, answer),
        }
    }

    /// `room`'s sequence started over (a new epoch from Redis): every shard with members
    /// tells them where they now are.
    fn reset(&mut self, cx: &mut Cx<App>, room: &Arc<str>) {
        let Some((epoch, seq)) = self.owner.rooms.position(room) else {
            return;
        };
        let members = self.owner.rooms.members_of(room).to_vec();
        for (shard, n) in members.into_iter().enumerate() {
            if n > 0 {
                let room = room.clone();
                cx.mesh()
                    .send(shard, ToMember::Reset { room, epoch, seq }.into());
            }
        }
    }
}

/// Parked joins of `room` the owner answered: each to its member's shard.
fn tell_joined(cx: &mut Cx<App>, room: &Arc<str>, answered: Vec<(Parked, Joined)>) {
    for (p, joined) in answered {
        let msg = ToMember::Joined {
            room: room.clone(),
            slot: p.slot,
            gen: p.gen,
            joined,
        };
        cx.mesh().send(p.shard, msg.into());
    }
}
