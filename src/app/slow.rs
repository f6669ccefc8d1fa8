//! What a room member that falls behind gets (`--slow-policy`), and the `gap` notices
//! that say what it skipped.
//!
//! A member is slow when what is left over from earlier turns fills its ring (see
//! [`crate::reactor::outring`]). `close` ends the connection; the three dropping policies
//! skip messages and owe the member a notice for each skipped range. Owed notices wait
//! here until the member's ring has room, merged per room, and go out before the room's
//! next message to the member.

use std::collections::HashMap;
use std::sync::Arc;

use crate::protocol::{CloseCode, OpCode, SharedFrame};
use crate::reactor::outring::Kind;
use crate::reactor::Link;

use super::conn::{flag, AppConn};
use super::sse;
use super::ws::fail;
use super::{wire, Settings, SlowPolicy};

/// A gap notice owed to a member: its slow-consumer policy skipped `from..=to` of `room`.
#[derive(Debug)]
pub struct Gap {
    room: Arc<str>,
    from: u64,
    to: u64,
}

/// The gap notices owed on a shard, by member `(slot, generation)`: finding a member's is
/// O(1), whatever the number of slow members.
pub type Owed = HashMap<(u32, u32), Vec<Gap>>;

/// Offers a batch (`span` = its first and last seq) to one member, applying the
/// slow-consumer policy when its ring is full. Whatever a policy skips is owed to the
/// member as a gap notice, queued before its next delivery from the room (or at the end of
/// the turn). Returns whether the batch was queued.
pub(super) fn offer(
    cfg: &Settings,
    gaps: &mut Owed,
    link: &mut Link<'_, AppConn>,
    room: &Arc<str>,
    span: (u64, u64),
    frame: SharedFrame,
    (turn, out_cap): (u32, usize),
) -> bool {
    let cap = out_cap * 4;
    if link.app().has(flag::OWED) {
        // What was skipped goes out before what comes after it.
        pay(gaps, link, room, cap);
    }
    if link
        .deliver(frame.clone(), cfg.max_queued_bytes, turn)
        .is_ok()
    {
        link.stats.delivered += 1;
        return true;
    }
    let queued = match cfg.slow_policy {
        SlowPolicy::Close => {
            link.stats.closed_slow += 1;
            end(link, CloseCode::POLICY_VIOLATION, "slow consumer");
            return false;
        }
        SlowPolicy::DropNewest => {
            link.stats.dropped_newest += 1;
            false
        }
        SlowPolicy::DropOldest => {
            if let Some(old) = link.drop_oldest() {
                link.stats.dropped_oldest += 1;
                if let Some((r, from, to)) = wire::span(old.as_bytes()) {
                    let r = if *r == **room {
                        room.clone()
                    } else {
                        Arc::from(&*r)
                    };
                    owe(gaps, link, r, from, to);
                }
            }
            // With nothing it may drop (what is queued is being sent: one large batch
            // partly out, or pinned by an in-flight send) the newest still goes in: this
            // policy keeps the newest, and the next delivery drops this one if the send
            // is still stuck, so the queue grows by one frame at most.
            link.deliver_up_to(frame, cap).is_ok()
        }
        SlowPolicy::Conflate => {
            // The room's queued batches give way to this one, with one notice for all.
            let mut skipped = Vec::new();
            let of_room = |f: &SharedFrame| match wire::span(f.as_bytes()) {
                Some((r, from, to)) if *r == **room => Some((from, to)),
                _ => None,
            };
            link.remove_queued(|f, kind| {
                match (kind == Kind::Delivery).then(|| of_room(f)).flatten() {
                    Some((from, to)) => {
                        skipped.push((from, to));
                        true
                    }
                    _ => false,
                }
            });
            link.stats.dropped_conflated += skipped.len() as u64;
            for (from, to) in skipped {
                owe(gaps, link, room.clone(), from, to);
            }
            pay(gaps, link, room, cap);
            link.deliver_up_to(frame, cap).is_ok()
        }
    };
    if queued {
        link.stats.delivered += 1;
    } else {
        owe(gaps, link, room.clone(), span.0, span.1);
    }
    let drops = &mut link.app().drops;
    *drops = drops.saturating_add(1);
    queued
}

/// Records that `from..=to` of `room` was skipped for this member, merged with what is
/// already owed when it continues it.
pub(super) fn owe(
    gaps: &mut Owed,
    link: &mut Link<'_, AppConn>,
    room: Arc<str>,
    from: u64,
    to: u64,
) {
    let key = (link.slot() as u32, link.gen());
    link.app().set(flag::OWED);
    let mine = gaps.entry(key).or_default();
    match mine.iter_mut().find(|g| g.room == room && g.to + 1 == from) {
        Some(g) => g.to = to,
        None => mine.push(Gap { room, from, to }),
    }
}

/// Queues the notices this member is owed for `room`.
fn pay(gaps: &mut Owed, link: &mut Link<'_, AppConn>, room: &Arc<str>, cap: usize) {
    let key = (link.slot() as u32, link.gen());
    if let Some(mine) = gaps.get_mut(&key) {
        mine.retain_mut(|g| g.room != *room || !send_gap(link, g, cap));
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
pub(super) fn send_gap(link: &mut Link<'_, AppConn>, g: &mut Gap, cap: usize) -> bool {
    let (room, mut from, mut to) = (g.room.clone(), g.from, g.to);
    link.remove_queued(|f, kind| {
        match (kind == Kind::Notice)
            .then(|| wire::span(f.as_bytes()))
            .flatten()
        {
            Some((r, a, b)) if *r == *room && (b + 1 == from || to + 1 == a) => {
                (from, to) = (from.min(a), to.max(b));
                true
            }
            _ => false,
        }
    });
    let json = wire::gap_json(&room, from, to);
    let frame = match sse::is_stream(link.app().encoding()) {
        false => SharedFrame::new(OpCode::Text, &json),
        true => sse::event("gap", None, &json),
    };
    let sent = link.send_notice(frame, cap).is_ok();
    if sent {
        link.stats.gap_notices += 1;
    } else {
        (g.from, g.to) = (from, to);
    }
    sent
}

/// Ends a connection from our side: a close frame with `code` on a WebSocket, a `close`
/// event on a stream.
pub(super) fn end(link: &mut Link<'_, AppConn>, code: CloseCode, reason: &str) {
    if link.app().sse().is_none() {
        return fail(link, code, reason);
    }
    let json = format!(
        "{{\"op\":\"close\",\"reason\":{}}}",
        serde_json::to_string(reason).unwrap_or_default()
    );
    link.finish(sse::event("close", None, json.as_bytes()));
}
