//! The owner side of the rooms on a shard: what a room's owner shard is sent by the
//! members' shards (joins, leaves, publishes, presence events) and what it does with each,
//! and sealing a turn's batch (`seal`, encoding it once per encoding in [`super::batch`]).
//! What the backplane tells an owner is in [`super::cluster`].

use std::collections::HashMap;
use std::sync::Arc;

use crate::backplane::Request;
use crate::gather::{Answer, Publish, Reply};
use crate::hooks::What;
use crate::reactor::Cx;
use crate::rooms::{Need, Owner, Parked};

use super::{batch, Api, App, ToMember, ToOwner};

/// The owner side's state on a shard.
pub(super) struct OwnerSide {
    /// The rooms this shard owns.
    pub rooms: Owner,
    /// Where a room's batch is encoded, reused from turn to turn.
    pub encoded: Vec<u8>,
    /// The owner's clock for `--history-ttl`: the shard's coarse clock (set when a loop
    /// turn starts, so it is fresh even after a long sleep) as last seen, and its ms
    /// extended past the u32's wrap.
    pub shard_ms: u32,
    pub clock_ms: u64,
    /// When the history gauge was last computed (it walks the rooms: once a second).
    pub gauge_ms: u64,
    /// Joins less leaves per room, counted only for the webhooks' `room_occupied` and
    /// `room_vacated` (a join waiting on Redis counts: its leave or failure will too).
    pub interest: HashMap<Arc<str>, u32>,
}

impl OwnerSide {
    pub fn new(rooms: Owner) -> OwnerSide {
        OwnerSide {
            rooms,
            encoded: Vec::new(),
            shard_ms: 0,
            clock_ms: 0,
            gauge_ms: 0,
            interest: HashMap::new(),
        }
    }

    /// The owner's clock, advanced to the shard's clock of this turn.
    pub fn clock(&mut self, now_ms: u32) -> u64 {
        self.clock_ms += u64::from(now_ms.wrapping_sub(self.shard_ms));
        self.shard_ms = now_ms;
        self.clock_ms
    }
}

impl App {
    /// Counts a join (or a leave) of `room` on this node. The room's first member here
    /// and its last one tell the webhooks, which make them `room_occupied` and
    /// `room_vacated` for the whole cluster.
    pub(super) fn count_interest(&mut self, cx: &mut Cx<App>, room: &Arc<str>, joined: bool) {
        if !self.events().occupancy {
            return;
        }
        let n = self.owner.interest.entry(room.clone()).or_insert(0);
        let was = *n;
        *n = if joined {
            was + 1
        } else {
            was.saturating_sub(1)
        };
        let now = *n;
        if now == 0 {
            self.owner.interest.remove(room);
        }
        if (was == 0) != (now == 0) {
            let what = What::RoomHere {
                room: room.clone(),
                occupied: now > 0,
            };
            self.tell_hooks(cx, what);
        }
    }

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
                self.count_interest(cx, &room, true);
                let joined = if self.cfg.backplane {
                    let parked = Parked {
                        shard: shard.into(),
                        slot,
                        gen,
                        encoding: encoding.index(),
                        since,
                        asked: false,
                    };
                    match self.owner.rooms.join_remote(&room, parked) {
                        Need::Ready(joined) => joined,
                        Need::Subscribe { after, sub } => {
                            return cx
                                .mesh()
                                .send(self.shards, Request::Sub { room, after, sub }.into())
                        }
                        Need::Fetch { after } => {
                            return cx
                                .mesh()
                                .send(self.shards, Request::Fetch { room, after }.into())
                        }
                        Need::Wait => return,
                    }
                } else {
                    self.owner
                        .rooms
                        .join(&room, shard.into(), encoding.index(), since)
                };
                let joined = ToMember::Joined {
                    room,
                    slot,
                    gen,
                    joined,
                };
                cx.mesh().send(shard.into(), joined.into());
            }
            ToOwner::Leave {
                room,
                shard,
                slot,
                encoding,
            } => {
                let who = (shard.into(), slot);
                let gone =
                    self.owner
                        .rooms
                        .leave(&room, who, encoding.index(), self.owner.clock_ms);
                self.count_interest(cx, &room, false);
                if gone {
                    cx.mesh().send(self.shards, Request::Unsub { room }.into());
                }
            }
            ToOwner::Presence { room, json } => self.on_presence(cx, room, json, false),
            ToOwner::Publish(Publish {
                room,
                data,
                shard,
                slot,
                gen,
                reply,
                notify,
                user,
            }) => {
                let told = notify.then(|| data.clone());
                // No members anywhere: nothing is kept, and the ack says seq 0.
                let published = self.owner.rooms.publish(&room, data, self.owner.clock_ms);
                if let Some(data) = told {
                    let (seq, epoch) = published.unwrap_or((0, 0));
                    let room = room.clone();
                    let what = What::ClientPublish {
                        room,
                        epoch,
                        seq,
                        data,
                        user,
                    };
                    self.tell_hooks(cx, what);
                }
                let seq = published.map_or(0, |p| p.0);
                let to = shard.into();
                match reply {
                    Reply::None => {}
                    Reply::Ack(id) => cx
                        .mesh()
                        .send(to, ToMember::Ack { slot, gen, id, seq }.into()),
                    Reply::Api(req, index) => {
                        let epoch = published.map(|p| p.1);
                        let answer = Answer::Published { index, seq, epoch };
                        cx.mesh().send(to, Api::Answer { req, answer }.into());
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
        let (owner, mesh, buf) = (
            &mut self.owner.rooms,
            &mut cx.mesh(),
            &mut self.owner.encoded,
        );
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
}
