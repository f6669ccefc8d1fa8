//! What a room member that falls behind gets (`--slow-policy`), and the `gap` notices
//! that say what it skipped.
//!
//! A member is slow when what is left over from earlier turns fills its ring (see
//! [`crate::reactor::outring`]). `close` ends the connection; the three dropping policies
//! skip messages and owe the member a notice for each skipped range. Owed notices wait
//! here until the member's ring has room, merged per room, and go out before the room's
//! next message to the member.
//!
//! The policies decide on the [`Tag`] each queued frame carries (its room, its seqs, its
//! kind), never on the frame's bytes: a slow member costs a walk over its ring's tags,
//! not a parse (or, with permessage-deflate, an inflate) of what was already encoded.

use std::collections::HashMap;
use std::sync::Arc;

use crate::protocol::{CloseCode, OpCode, SharedFrame};
use crate::reactor::outring::{self, Kind};
use crate::rooms::{Local, RoomId};

use super::conn::flag;
use super::sse;
use super::ws::{fail, L};
use super::{wire, Settings, SlowPolicy};

/// What a frame in a member's out-ring is, for the policies here: which room (its id on
/// the member's shard, [`RoomId`]), which seqs (`first..=last`: a batch, or the range a
/// gap notice names) and which kind (a reply or control frame, a delivery, a gap notice).
/// Set when the frame is queued; a policy decides on it and never reads the frame again,
/// compressed or not. 32 bytes per queued frame, on the heap beside the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tag {
    pub room: RoomId,
    pub first: u64,
    pub last: u64,
    pub kind: Kind,
}

// Paid per queued frame (not per idle connection: the ring's entries are on the heap).
const _: () = assert!(std::mem::size_of::<Tag>() <= 32);

impl Tag {
    /// A batch of `room`, messages `first..=last`.
    pub fn delivery(room: RoomId, (first, last): (u64, u64)) -> Tag {
        Tag {
            room,
            first,
            last,
            kind: Kind::Delivery,
        }
    }

    /// A gap notice: `from..=to` of `room` was skipped.
    pub fn notice(room: RoomId, from: u64, to: u64) -> Tag {
        Tag {
            room,
            first: from,
            last: to,
            kind: Kind::Notice,
        }
    }
}

impl outring::Tag for Tag {
    /// Replies, control frames, handshakes: of no room as far as a policy is concerned.
    const FIXED: Tag = Tag {
        room: RoomId::NONE,
        first: 0,
        last: 0,
        kind: Kind::Fixed,
    };

    fn kind(&self) -> Kind {
        self.kind
    }
}

/// A gap notice owed to a member: its slow-consumer policy skipped `from..=to` of the room
/// `room` (named `name`).
#[derive(Debug)]
pub struct Gap {
    room: RoomId,
    name: Arc<str>,
    from: u64,
    to: u64,
}

/// The gap notices owed on a shard, by member `(slot, generation)`: finding a member's is
/// O(1), whatever the number of slow members.
pub type Owed = HashMap<(u32, u32), Vec<Gap>>;

/// Offers a batch of `name` (`tag`: its room's id and first and last seq) to one member,
/// applying the slow-consumer policy when its ring is full. Whatever a policy skips is
/// owed to the member as a gap notice, queued before its next delivery from the room (or
/// at the end of the turn). `rooms` names the rooms other queued batches are of. Returns
/// whether the batch was queued. Cost: O(1) unless the ring is full; then the policy walks
/// the queued tags (O(queued frames)), nothing is parsed or inflated.
pub(super) fn offer(
    (cfg, rooms): (&Settings, &Local),
    gaps: &mut Owed,
    link: L<'_, '_>,
    name: &Arc<str>,
    tag: Tag,
    frame: SharedFrame,
) -> bool {
    let cap = link.out_cap() * 4;
    let room = tag.room;
    if link.app().has(flag::OWED) {
        // What was skipped goes out before what comes after it.
        pay(gaps, link, room, cap);
    }
    if link
        .deliver(frame.clone(), tag, cfg.max_queued_bytes)
        .is_ok()
    {
        link.figures().delivered += 1;
        return true;
    }
    let queued = match cfg.slow_policy {
        SlowPolicy::Close => {
            link.figures().closed_slow += 1;
            end(link, CloseCode::POLICY_VIOLATION, "slow consumer");
            return false;
        }
        SlowPolicy::DropNewest => {
            link.figures().dropped_newest += 1;
            false
        }
        SlowPolicy::DropOldest => {
            if let Some(old) = link.drop_oldest() {
                link.figures().dropped_oldest += 1;
                // A room this member has left since is not its any more: nothing is owed.
                let old_name = if old.room == room {
                    Some(name)
                } else {
                    rooms.name_for(old.room, link.slot() as u32)
                };
                if let Some(old_name) = old_name {
                    owe(gaps, link, (old.room, old_name), old.first, old.last);
                }
            }
            // With nothing it may drop (what is queued is being sent: one large batch
            // partly out, or pinned by an in-flight send) the newest still goes in: this
            // policy keeps the newest, and the next delivery drops this one if the send
            // is still stuck, so the queue grows by one frame at most.
            link.deliver_up_to(frame, tag, cap).is_ok()
        }
        SlowPolicy::Conflate => {
            // The room's queued batches give way to this one, with one notice for all.
            let mut skipped = Vec::new();
            link.remove_queued(|t| {
                let hit = t.kind == Kind::Delivery && t.room == room;
                if hit {
                    skipped.push((t.first, t.last));
                }
                hit
            });
            link.figures().dropped_conflated += skipped.len() as u64;
            for (from, to) in skipped {
                owe(gaps, link, (room, name), from, to);
            }
            pay(gaps, link, room, cap);
            link.deliver_up_to(frame, tag, cap).is_ok()
        }
    };
    if queued {
        link.figures().delivered += 1;
    } else {
        owe(gaps, link, (room, name), tag.first, tag.last);
    }
    let drops = &mut link.app().drops;
    *drops = drops.saturating_add(1);
    queued
}

/// Records that `from..=to` of `room` (its id and name) was skipped for this member,
/// merged with what is already owed when it continues it.
pub(super) fn owe(
    gaps: &mut Owed,
    link: L<'_, '_>,
    (room, name): (RoomId, &Arc<str>),
    from: u64,
    to: u64,
) {
    let key = (link.slot() as u32, link.gen());
    link.app().set(flag::OWED);
    let mine = gaps.entry(key).or_default();
    match mine.iter_mut().find(|g| g.room == room && g.to + 1 == from) {
        Some(g) => g.to = to,
        None => mine.push(Gap {
            room,
            name: name.clone(),
            from,
            to,
        }),
    }
}

/// Queues the notices this member is owed for `room`.
fn pay(gaps: &mut Owed, link: L<'_, '_>, room: RoomId, cap: usize) {
    let key = (link.slot() as u32, link.gen());
    if let Some(mine) = gaps.get_mut(&key) {
        mine.retain_mut(|g| g.room != room || !send_gap(link, g, cap));
        if !mine.is_empty() {
            return;
        }
        gaps.remove(&key);
    }
    link.app().clear(flag::OWED);
}

/// Queues one gap notice in the member's encoding, in place of the unsent notices for the
/// room it continues (so a member that stays slow holds one notice per room, not one per
/// turn). False if the ring has no room (the gap stays owed).
pub(super) fn send_gap(link: L<'_, '_>, g: &mut Gap, cap: usize) -> bool {
    let (room, mut from, mut to) = (g.room, g.from, g.to);
    link.remove_queued(|t| {
        let hit =
            t.kind == Kind::Notice && t.room == room && (t.last + 1 == from || to + 1 == t.first);
        if hit {
            (from, to) = (from.min(t.first), to.max(t.last));
        }
        hit
    });
    let json = wire::gap_json(&g.name, from, to);
    let frame = match link.app().encoding().is_stream() {
        false => SharedFrame::new(OpCode::Text, &json),
        true => sse::event("gap", None, &json),
    };
    let sent = link
        .send_notice(frame, Tag::notice(room, from, to), cap)
        .is_ok();
    if sent {
        link.figures().gap_notices += 1;
    } else {
        (g.from, g.to) = (from, to);
    }
    sent
}

/// Ends a connection from our side: a close frame with `code` on a WebSocket, a `close`
/// event on a stream.
pub(super) fn end(link: L<'_, '_>, code: CloseCode, reason: &str) {
    if link.app().sse().is_none() {
        return fail(link, code, reason);
    }
    let json = format!(
        "{{\"op\":\"close\",\"reason\":{}}}",
        serde_json::to_string(reason).unwrap_or_default()
    );
    link.finish(sse::event("close", None, json.as_bytes()));
}

#[cfg(test)]
mod tests {
    //! The policies on a real shard core (no sockets), for a member with and without
    //! permessage-deflate: what they drop and owe is read from the ring's tags and from
    //! the notices sent.

    use std::time::Instant;

    use serde_json::{json, Value};

    use super::*;
    use crate::protocol::deflate::Inflater;
    use crate::reactor::shard::Core;

    use crate::app::tests::{masked, open, sent, settings, shard_with};
    use crate::app::{gate, App};

    /// Members' rings hold 2 frames left over from earlier turns before a policy acts.
    const OUT_CAP: usize = 2;

    fn core(policy: SlowPolicy) -> Core<App> {
        let s = Settings {
            slow_policy: policy,
            deflate: true,
            deflate_min_size: 16,
            ..settings()
        };
        shard_with(OUT_CAP, gate::Gate::default(), s)
    }

    /// A `/ws` member of `rooms`, with permessage-deflate if `deflate`.
    fn member(core: &mut Core<App>, rooms: &str, deflate: bool) -> usize {
        let (slot, _) = core.insert(0, None, Instant::now(), false);
        let ext = if deflate {
            "Sec-WebSocket-Extensions: permessage-deflate\r\n"
        } else {
            ""
        };
        let mut req = format!(
            "GET /ws?room={rooms} HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n{ext}\r\n"
        )
        .into_bytes();
        core.receive(slot, &mut req);
        let head = String::from_utf8_lossy(&sent(core, slot)).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert_eq!(head.contains("permessage-deflate"), deflate, "{head}");
        core.end_turn();
        core.end_turn();
        sent(core, slot);
        slot
    }

    /// One turn: `publisher` publishes `n` messages to each of `rooms`, large enough to be
    /// compressed for a deflate member.
    fn publish(core: &mut Core<App>, publisher: usize, rooms: &[&str], n: usize) {
        for room in rooms {
            for _ in 0..n {
                let op = format!(
                    r#"{{"op":"pub","room":"{room}","data":"{}"}}"#,
                    "z".repeat(64)
                );
                core.receive(publisher, &mut masked(OpCode::Text, op.as_bytes()));
            }
        }
        core.end_turn();
    }

    fn id(core: &Core<App>, room: &str) -> RoomId {
        core.service.members.local.id(room).unwrap()
    }

    /// The JSON of every frame in `bytes`, inflating the compressed ones; and how many
    /// were compressed.
    fn read(mut bytes: &[u8]) -> (Vec<Value>, usize) {
        let (mut out, mut compressed) = (Vec::new(), 0);
        while bytes.len() >= 2 {
            let (len, head) = match bytes[1] {
                126 => (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
                n => (usize::from(n), 2),
            };
            let payload = &bytes[head..head + len];
            let mut text = Vec::new();
            if bytes[0] & 0x40 != 0 {
                compressed += 1;
                Inflater::new()
                    .inflate(payload, 1 << 16, &mut text)
                    .unwrap();
            } else {
                text.extend_from_slice(payload);
            }
            out.push(serde_json::from_slice(&text).unwrap());
            bytes = &bytes[head + len..];
        }
        (out, compressed)
    }

    fn delivery(core: &Core<App>, room: &str, first: u64, last: u64) -> Tag {
        Tag::delivery(id(core, room), (first, last))
    }

    fn notice(core: &Core<App>, room: &str, from: u64, to: u64) -> Tag {
        Tag::notice(id(core, room), from, to)
    }

    fn msg(room: &str, seq: u64) -> Value {
        json!({"op": "msg", "room": room, "seq": seq, "data": "z".repeat(64)})
    }

    fn gap(room: &str, from: u64, to: u64) -> Value {
        json!({"op": "gap", "room": room, "from": from, "to": to})
    }

    /// A slow member of `rooms` on a fresh core with `policy` (and a publisher).
    fn setup(policy: SlowPolicy, rooms: &str, deflate: bool) -> (Core<App>, usize, usize) {
        let mut core = core(policy);
        let publisher = open(&mut core, "/ws");
        let slow = member(&mut core, rooms, deflate);
        (core, publisher, slow)
    }

    /// The member's ring holds frames tagged `tags`; reading it then gives `ops`, the
    /// deliveries compressed exactly when it agreed to deflate (the gap notices never are).
    fn queued(core: &mut Core<App>, slow: usize, deflate: bool, tags: &[Tag], ops: &[Value]) {
        let held: Vec<Tag> = core.conn(slow).unwrap().out.tags().collect();
        assert_eq!(held, tags, "deflate: {deflate}");
        let (got, compressed) = read(&sent(core, slow));
        assert_eq!(got, ops, "deflate: {deflate}");
        let msgs = got.iter().filter(|m| m["op"] == "msg").count();
        assert_eq!(compressed, if deflate { msgs } else { 0 }, "{got:?}");
    }

    #[test]
    fn drop_oldest_owes_the_dropped_batch_to_its_own_room() {
        for deflate in [false, true] {
            let (mut core, publisher, slow) = setup(SlowPolicy::DropOldest, "a,b", deflate);
            for rooms in [&["a"][..], &["b"], &["b"]] {
                publish(&mut core, publisher, rooms, 2);
            }
            // b's second batch found two batches left over: a's, the oldest, gave way.
            core.end_turn();
            assert_eq!(core.cx.figures().dropped_oldest, 1);
            let tags = [
                delivery(&core, "b", 1, 2),
                delivery(&core, "b", 3, 4),
                notice(&core, "a", 1, 2),
            ];
            let mut ops: Vec<Value> = (1..=4).map(|seq| msg("b", seq)).collect();
            ops.push(gap("a", 1, 2));
            queued(&mut core, slow, deflate, &tags, &ops);
        }
    }

    #[test]
    fn conflate_removes_only_that_rooms_deliveries() {
        for deflate in [false, true] {
            let (mut core, publisher, slow) = setup(SlowPolicy::Conflate, "a,b", deflate);
            for rooms in [&["a"][..], &["b"], &["a"]] {
                publish(&mut core, publisher, rooms, 2);
            }
            // a's new batch replaces a's queued one; b's stays where it was, and then goes
            // the same way.
            let (a_id, b_id) = (id(&core, "a"), id(&core, "b"));
            let held: Vec<Tag> = core.conn(slow).unwrap().out.tags().collect();
            let rooms: Vec<RoomId> = held.iter().map(|t| t.room).collect();
            assert_eq!(rooms, [b_id, a_id, a_id], "deflate: {deflate}");
            publish(&mut core, publisher, &["b"], 2);
            assert_eq!(core.cx.figures().dropped_conflated, 2);
            let tags = [
                notice(&core, "a", 1, 2),
                delivery(&core, "a", 3, 4),
                notice(&core, "b", 1, 2),
                delivery(&core, "b", 3, 4),
            ];
            let ops: Vec<Value> = ["a", "b"]
                .into_iter()
                .flat_map(|r| [gap(r, 1, 2), msg(r, 3), msg(r, 4)])
                .collect();
            queued(&mut core, slow, deflate, &tags, &ops);
        }
    }

    #[test]
    fn a_rooms_unsent_notices_merge_into_one_and_other_rooms_keep_theirs() {
        for deflate in [false, true] {
            let (mut core, publisher, slow) = setup(SlowPolicy::DropNewest, "a,b", deflate);
            publish(&mut core, publisher, &["a"], 1);
            publish(&mut core, publisher, &["b"], 1);
            // From here every batch is dropped and owed; each turn's notice replaces the
            // room's unsent one.
            for _ in 0..3 {
                publish(&mut core, publisher, &["a", "b"], 2);
            }
            core.end_turn();
            assert_eq!(core.cx.figures().dropped_newest, 6);
            let tags = [
                delivery(&core, "a", 1, 1),
                delivery(&core, "b", 1, 1),
                notice(&core, "a", 2, 7),
                notice(&core, "b", 2, 7),
            ];
            let ops = [msg("a", 1), msg("b", 1), gap("a", 2, 7), gap("b", 2, 7)];
            queued(&mut core, slow, deflate, &tags, &ops);
        }
    }

    #[test]
    fn a_dropped_batch_of_a_room_left_since_owes_nothing() {
        for deflate in [false, true] {
            let (mut core, publisher, slow) = setup(SlowPolicy::DropOldest, "a,b", deflate);
            publish(&mut core, publisher, &["a"], 2);
            let old_a = id(&core, "a");
            let leave = br#"{"op":"leave","room":"a"}"#;
            core.receive(slow, &mut masked(OpCode::Text, leave));
            // `a` has no member here now: its id names nothing (and is never given again).
            assert_eq!(core.service.members.local.name(old_a), None);
            // b's first batch drops a's (nothing owed), its second drops its first (owed).
            for _ in 0..2 {
                publish(&mut core, publisher, &["b"], 2);
            }
            core.end_turn();
            assert_eq!(core.cx.figures().dropped_oldest, 2);
            let tags = [
                <Tag as outring::Tag>::FIXED,
                delivery(&core, "b", 3, 4),
                notice(&core, "b", 1, 2),
            ];
            let left = json!({"op": "left", "room": "a"});
            let ops = [left, msg("b", 3), msg("b", 4), gap("b", 1, 2)];
            queued(&mut core, slow, deflate, &tags, &ops);
        }
    }
}
