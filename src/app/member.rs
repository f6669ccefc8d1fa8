//! The member side of the rooms on a shard: what the shard of a room's members is sent by
//! the owner (join answers, batches, presence, acks, resets) and what it does with each.

use std::sync::Arc;

use crate::protocol::SharedFrame;
use crate::reactor::Cx;
use crate::rooms::{Local, ENCODINGS};

use super::service::{advance_stream, reply_to};
use super::slow::{offer, owe, Owed, Tag};
use super::sse;
use super::ws::reply;
use super::{batch, wire, App, ToMember};

/// The member side's state on a shard.
#[derive(Default)]
pub(super) struct Members {
    /// The rooms with members here, and who they are.
    pub local: Local,
    /// Gap notices owed to members whose slow-consumer policy skipped messages, merged
    /// while they wait for room in the member's ring.
    pub gaps: Owed,
}

impl App {
    /// A message on the member channel.
    pub(super) fn on_member(&mut self, cx: &mut Cx<App>, msg: ToMember) {
        match msg {
            ToMember::Reset { room, epoch, seq } => {
                self.members.local.reset(&room, seq);
                let members = self.members.local.members(&room).to_vec();
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
            ToMember::PresenceDeliver { room, json } => self.deliver_presence(cx, &room, &json),
            ToMember::JoinFailed { room, slot, gen } => {
                // The owner dropped the join: no leave goes back to it.
                if cx.gen(slot as usize) == Some(gen) && self.members.local.leave(&room, slot) {
                    reply_to(cx, slot as usize, wire::join_unavailable(&room));
                }
            }
            ToMember::Joined {
                room,
                slot,
                gen,
                joined,
            } => {
                let missed = self.members.local.expect(&room, joined.seq);
                if let (Some((from, to)), Some(id)) = (missed, self.members.local.id(&room)) {
                    // Batches the mesh dropped before this answer: owed to the members.
                    for &member in self.members.local.members(&room) {
                        if let Some(mut link) = cx.link_any(member as usize) {
                            owe(&mut self.members.gaps, &mut link, (id, &room), from, to);
                        }
                    }
                }
                if cx.gen(slot as usize) == Some(gen) && self.members.local.joined(&room, slot) {
                    self.on_joined(cx, slot as usize, &room, joined);
                    self.presence_event(cx, &room, slot, true);
                }
            }
            ToMember::Ack { slot, gen, id, seq } => {
                if let Some(mut link) = cx.link(slot as usize, gen) {
                    reply(&mut link, wire::ack(id, seq));
                }
            }
            ToMember::Deliver {
                room,
                first,
                last,
                frames,
            } => self.deliver(cx, &room, (first, last), &frames),
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
        if self.events().members {
            let user = self.sessions.get(slot as u32).map(|s| s.sub.clone());
            let room = room.clone();
            self.tell_hooks(cx, crate::hooks::What::MemberJoined { room, user });
        }
        let out_cap = cx.out_cap();
        let Some(mut link) = cx.link_any(slot) else {
            return;
        };
        match j.recovered {
            Some(true) => link.figures().resumed += 1,
            Some(false) => link.figures().resume_failed += 1,
            None => {}
        }
        link.figures().replayed += j.replay.len() as u64;
        let encoding = link.app().encoding();
        if !encoding.is_stream() {
            // Past a full ring like a notice: the replay and live messages behind it
            // mean nothing without it.
            let joined = wire::joined(room, j.seq, j.epoch, j.recovered);
            if link.send_up_to(joined, out_cap * 4).is_ok() {
                link.figures().messages_out += 1;
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
        let Some(id) = self.members.local.id(room) else {
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
        let (shard, gaps) = ((&*self.cfg, &self.members.local), &mut self.members.gaps);
        let ok = offer(shard, gaps, &mut link, room, tag, frame);
        advance_stream(&mut link, room, last, ok);
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
        let missed = self.members.local.arrived(room, span.0, span.1);
        let Some(id) = self.members.local.id(room) else {
            // No member here (any more).
            return;
        };
        let tag = Tag::delivery(id, span);
        let (shard, gaps) = ((&*self.cfg, &self.members.local), &mut self.members.gaps);
        for &slot in self.members.local.members(room) {
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
            let Some(frame) = &frames[encoding.index()] else {
                continue;
            };
            let ok = offer(shard, gaps, &mut link, room, tag, frame.clone());
            if encoding.is_stream() {
                advance_stream(&mut link, room, span.1, ok);
            }
        }
    }
}
