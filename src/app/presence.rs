//! `--presence-events`: a room's members are told when someone joins or leaves it,
//! `{"op":"presence","room":…,"event":"join"|"leave","user":…}` (`user` with auth on), on
//! every node. The member's shard makes the event, the room's owner hands it to the shards
//! with members (and, with a backplane, to the other nodes through the room's channel).
//! Events are not messages: no seq, no history, and a member whose ring is full misses
//! them rather than being counted slow. Off by default: in a room of N members, N joins
//! cost N² deliveries.

use std::sync::Arc;

use crate::backplane::Request;
use crate::protocol::{OpCode, SharedFrame};
use crate::reactor::Cx;
use crate::rooms::owner_of;

use super::sse;
use super::{App, ToMember, ToOwner};

impl App {
    /// The member in `slot` (on this shard) joined or left `room`.
    pub(super) fn presence_event(
        &mut self,
        cx: &mut Cx<App>,
        room: &Arc<str>,
        slot: u32,
        join: bool,
    ) {
        if !self.cfg.presence_events {
            return;
        }
        let user = self.sessions.get(slot).map(|s| &*s.sub);
        let event = if join { "join" } else { "leave" };
        let mut v = serde_json::json!({"op": "presence", "room": &**room, "event": event});
        if let Some(user) = user {
            v["user"] = user.into();
        }
        let json: Arc<[u8]> = Arc::from(v.to_string().into_bytes());
        let owner = owner_of(room, self.shards);
        let room = room.clone();
        cx.mesh()
            .send(owner, ToOwner::Presence { room, json }.into());
    }

    /// At the owner: to every shard with members here, and to the other nodes.
    pub(super) fn on_presence(
        &mut self,
        cx: &mut Cx<App>,
        room: Arc<str>,
        json: Arc<[u8]>,
        remote: bool,
    ) {
        for (shard, &n) in self.owner.rooms.members_of(&room).iter().enumerate() {
            if n > 0 {
                let (room, json) = (room.clone(), json.clone());
                cx.mesh()
                    .send(shard, ToMember::PresenceDeliver { room, json }.into());
            }
        }
        if self.cfg.backplane && !remote {
            cx.mesh()
                .send(self.shards, Request::Presence { room, json }.into());
        }
    }

    /// On a shard with members: the event to each, in its encoding.
    pub(super) fn deliver_presence(&mut self, cx: &mut Cx<App>, room: &Arc<str>, json: &[u8]) {
        let ws = SharedFrame::new(OpCode::Text, json);
        let stream = sse::event("presence", None, json);
        let out_cap = cx.out_cap();
        for &slot in self.members.local.members(room) {
            let Some(mut link) = cx.link_any(slot as usize) else {
                continue;
            };
            if link.is_closing() {
                continue;
            }
            let frame = if link.app().encoding().is_stream() {
                &stream
            } else {
                &ws
            };
            if link.send_up_to(frame.clone(), out_cap).is_ok() {
                link.figures().messages_out += 1;
            }
        }
    }
}
