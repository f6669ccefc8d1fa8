//! The owner side of the rooms on a shard: what a room's owner shard is sent (joins,
//! leaves, publishes, presence events, and the backplane's state and messages) and what it
//! does with each. Sealing a turn's batch and encoding it once per encoding is in
//! [`super::service`] (`seal`) and [`super::batch`].

use std::sync::Arc;

use crate::backplane::Request;
use crate::gather::{Answer, Reply};
use crate::reactor::Cx;
use crate::rooms::{Need, Parked};

use super::{batch, Api, App, ToMember, ToOwner};

impl App {
    /// A message on the owner channel.
    pub(super) fn on_owner(&mut self, cx: &mut Cx<App>, msg: ToOwner) {
        match msg {
            ToOwner::Join {
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
                            return cx
                                .mesh
                                .send(self.shards, Request::Sub { room, after, sub }.into())
                        }
                        Need::Fetch { after } => {
                            return cx
                                .mesh
                                .send(self.shards, Request::Fetch { room, after }.into())
                        }
                        Need::Wait => return,
                    }
                } else {
                    self.owner.join(&room, shard.into(), encoding.into(), since)
                };
                let joined = ToMember::Joined {
                    room,
                    slot,
                    gen,
                    joined,
                };
                cx.mesh.send(shard.into(), joined.into());
            }
            ToOwner::Leave {
                room,
                shard,
                slot,
                encoding,
            } => {
                let who = (shard.into(), slot);
                let gone = self.owner.leave(&room, who, encoding.into(), self.clock_ms);
                if gone {
                    cx.mesh.send(self.shards, Request::Unsub { room }.into());
                }
            }
            ToOwner::Synced {
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
                    let msg = ToMember::Joined {
                        room: room.clone(),
                        slot: p.slot,
                        gen: p.gen,
                        joined,
                    };
                    cx.mesh.send(p.shard, msg.into());
                }
                if let Some(after) = fetch {
                    cx.mesh
                        .send(self.shards, Request::Fetch { room, after }.into());
                }
            }
            ToOwner::Remote {
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
            ToOwner::Presence { room, json, remote } => self.on_presence(cx, room, json, remote),
            ToOwner::SubFailed { room } => {
                for p in self.owner.sub_failed(&room) {
                    let (room, slot, gen) = (room.clone(), p.slot, p.gen);
                    cx.mesh
                        .send(p.shard, ToMember::JoinFailed { room, slot, gen }.into());
                }
            }
            ToOwner::Publish {
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
                    Reply::Ack(id) => cx
                        .mesh
                        .send(to, ToMember::Ack { slot, gen, id, seq }.into()),
                    Reply::Api(req, index) => {
                        let epoch = published.map(|p| p.1);
                        let answer = Answer::Published { index, seq, epoch };
                        cx.mesh.send(to, Api::Answer { req, answer }.into());
                    }
                }
            }
        }
    }

    /// Hands each room's batch of this turn to the shards with members: encoded once per
    /// encoding some member uses (WebSocket frames, event-stream events) into shared
    /// frames. Cost: one encode and one allocation per room with traffic and encoding in
    /// use, one mesh message per shard with members (ours included, through the local
    /// queue).
    pub(super) fn seal(&mut self, cx: &mut Cx<App>) {
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
                    let msg = ToMember::Deliver {
                        room: s.room.clone(),
                        first: s.first,
                        last: s.last,
                        frames: frames.clone(),
                    };
                    mesh.send(shard, msg.into());
                }
            }
        });
        if buf.capacity() > 64 * 1024 {
            // A burst is over; don't keep its buffer.
            *buf = Vec::new();
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
                cx.mesh
                    .send(shard, ToMember::Reset { room, epoch, seq }.into());
            }
        }
    }
}
