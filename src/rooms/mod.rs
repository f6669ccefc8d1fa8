//! Rooms, sharded across cores. Pure data: no I/O, no threads.
//!
//! Every room has one owner shard, `hash(room) % shards`. The owner assigns the room's
//! sequence numbers and knows how many members each shard has ([`Owner`]); each shard knows
//! its own members ([`Local`]). A message published during a loop turn joins the room's
//! batch for that turn as `(seq, data)`; at the end of the turn [`Owner::seal`] hands each
//! batch out, and the app encodes it once per encoding (a WebSocket frame today) into one
//! shared frame that goes to every shard with members and into every member's out-ring.
//! One ring entry per member per turn, whatever the publish rate: a member whose ring fills
//! has fallen that many turns behind, which is what "slow consumer" means.

mod history;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use slab::Slab;

use history::Log;
pub use history::{Retention, ENTRY_OVERHEAD};

/// The shard that owns `room`. Stable across processes and runs (SipHash with fixed keys),
/// so every shard computes the same owner.
pub fn owner_of(room: &str, shards: usize) -> usize {
    #[allow(deprecated)] // SipHasher with zero keys: stable, and fast enough per op.
    let mut h = std::hash::SipHasher::new();
    room.hash(&mut h);
    (h.finish() % shards.max(1) as u64) as usize
}

/// How many ways a member may want its deliveries encoded; the owner counts members per
/// encoding so that an encoding nobody in a room uses is not made (the app numbers them).
pub const ENCODINGS: usize = 3;

/// A room as its owner sees it.
#[derive(Debug)]
struct OwnedRoom {
    /// The last sequence number assigned.
    seq: u64,
    /// The last sequence number handed out by [`Owner::seal`]: `sealed + 1 ..= seq` is this
    /// turn's batch.
    sealed: u64,
    /// Changes whenever the room's sequence starts over (see [`Owner::join`]).
    epoch: u32,
    /// Members per shard, and per encoding over all shards.
    members: Vec<u32>,
    encodings: [u32; ENCODINGS],
    /// Recent messages and this turn's batch, in seq order.
    log: Log,
    /// When the room was last left or published to (ms): an empty room is freed
    /// `ttl` after that.
    active_ms: u64,
    /// Whether the room has an entry in [`Owner::idle`].
    idle: bool,
    /// Data bytes counted against the idle budget while the room has no members.
    counted: usize,
}

impl OwnedRoom {
    fn is_empty(&self) -> bool {
        self.members.iter().all(|&m| m == 0)
    }
}

/// What a join found.
#[derive(Debug, PartialEq, Eq)]
pub struct Joined {
    /// The member receives everything after this seq (the replay, then live).
    pub seq: u64,
    pub epoch: u32,
    /// Whether the `since` asked for could be honoured (`None`: none was asked for).
    pub recovered: Option<bool>,
    /// The messages after `since` up to `seq`, when recovered.
    pub replay: Vec<(u64, Arc<str>)>,
}

/// A batch's messages, oldest first (cheap to clone: iterate as often as there are
/// encodings to make).
pub type Batch<'a> = std::collections::vec_deque::Iter<'a, (u64, Arc<str>)>;

/// A stretch of a room's history ([`Owner::page`]).
#[derive(Debug)]
pub struct Page {
    pub room: Arc<str>,
    pub epoch: u32,
    /// The room's last seq.
    pub seq: u64,
    /// Whether the history reaches back to the `since` asked for.
    pub complete: bool,
    pub messages: Vec<(u64, Arc<str>)>,
}

/// A room's batch for this turn, as [`Owner::seal`] hands it out.
pub struct Sealed<'a> {
    pub room: &'a Arc<str>,
    pub epoch: u32,
    /// `(seq, data)`, in seq order, never empty.
    pub batch: Batch<'a>,
    pub first: u64,
    pub last: u64,
    /// Members per shard, and per encoding over all shards.
    pub members: &'a [u32],
    pub encodings: [u32; ENCODINGS],
}

/// The rooms this shard owns.
#[derive(Debug)]
pub struct Owner {
    shards: usize,
    keep: Retention,
    rooms: HashMap<Arc<str>, OwnedRoom>,
    /// Rooms with a non-empty batch.
    dirty: Vec<Arc<str>>,
    /// Rooms with no members, kept for their history: (earliest expiry, name).
    idle: BinaryHeap<Reverse<(u64, Arc<str>)>>,
    /// Data bytes the rooms with no members keep, against `keep.idle_bytes`.
    idle_total: usize,
    /// Epochs: a per-process seed and a counter, mixed.
    seed: u64,
    epochs: u64,
}

impl Owner {
    /// `seed` must differ between processes (and shards) so that epochs do.
    pub fn new(shards: usize, keep: Retention, seed: u64) -> Owner {
        Owner {
            shards,
            keep,
            rooms: HashMap::new(),
            dirty: Vec::new(),
            idle: BinaryHeap::new(),
            idle_total: 0,
            seed,
            epochs: 0,
        }
    }

    /// Rooms owned here: with a member anywhere, or kept for their history.
    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }

    /// Heap bytes held by history, over every room owned here. O(rooms).
    pub fn history_bytes(&self) -> usize {
        self.rooms.values().map(|r| r.log.footprint()).sum()
    }

    fn next_epoch(&mut self) -> u32 {
        self.epochs += 1;
        // splitmix64: distinct counters give unrelated epochs.
        let mut z = self
            .seed
            .wrapping_add(self.epochs.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) as u32) & EPOCH_MASK
    }

    /// A member on `shard` that wants `encoding` joins `room`, having seen everything up to
    /// `since = (seq, epoch)` if given. It receives what [`Joined`] says, then every batch
    /// sealed after this call. Cost: O(1), plus O(replayed messages).
    pub fn join(
        &mut self,
        room: &Arc<str>,
        shard: usize,
        encoding: usize,
        since: Option<(u64, u32)>,
    ) -> Joined {
        if !self.rooms.contains_key(room) {
            let epoch = self.next_epoch();
            self.rooms.insert(
                room.clone(),
                OwnedRoom {
                    seq: 0,
                    sealed: 0,
                    epoch,
                    members: vec![0; self.shards],
                    encodings: [0; ENCODINGS],
                    log: Log::default(),
                    active_ms: 0,
                    idle: false,
                    counted: 0,
                },
            );
        }
        let r = self.rooms.get_mut(room).expect("inserted above");
        self.idle_total -= std::mem::take(&mut r.counted);
        r.members[shard] += 1;
        r.encodings[encoding.min(ENCODINGS - 1)] += 1;
        // This turn's batch is not sealed yet: the member gets it with everyone else.
        let seq = r.sealed;
        let mut joined = Joined {
            seq,
            epoch: r.epoch,
            recovered: None,
            replay: Vec::new(),
        };
        if let Some((since, epoch)) = since {
            let ok = epoch == r.epoch && since <= seq && r.log.covers_after(since, seq);
            joined.recovered = Some(ok);
            if ok {
                joined.replay = r
                    .log
                    .after(since)
                    .take_while(|e| e.0 <= seq)
                    .cloned()
                    .collect();
            }
        }
        joined
    }

    /// A member on `shard` that wanted `encoding` left `room`. A room with no members
    /// anywhere is freed, or kept for `--history-ttl` if it keeps history. O(shards).
    pub fn leave(&mut self, room: &Arc<str>, shard: usize, encoding: usize, now_ms: u64) {
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        r.members[shard] = r.members[shard].saturating_sub(1);
        let e = &mut r.encodings[encoding.min(ENCODINGS - 1)];
        *e = e.saturating_sub(1);
        if !r.is_empty() {
            return;
        }
        if self.keep.keeps_empty_rooms() {
            r.active_ms = now_ms;
            r.counted = r.log.bytes();
            self.idle_total += r.counted;
            if !r.idle {
                r.idle = true;
                let due = now_ms.saturating_add(self.keep.ttl_ms);
                self.idle.push(Reverse((due, room.clone())));
            }
            self.evict();
        } else {
            self.rooms.remove(room);
        }
    }

    /// Frees the longest idle rooms while the idle ones keep more than their budget.
    fn evict(&mut self) {
        while self.idle_total > self.keep.idle_bytes {
            let Some(Reverse((_, room))) = self.idle.pop() else {
                return;
            };
            let Some(r) = self.rooms.get_mut(&room) else {
                continue;
            };
            if r.is_empty() {
                self.idle_total -= r.counted;
                self.rooms.remove(&room);
            } else {
                r.idle = false;
            }
        }
    }

    /// Frees the rooms that have had no members and no publishes for `--history-ttl`.
    /// Cost: O(log rooms) per room looked at; nothing when none is due.
    pub fn expire(&mut self, now_ms: u64) {
        while let Some(Reverse((due, _))) = self.idle.peek() {
            if *due > now_ms {
                return;
            }
            let Some(Reverse((_, room))) = self.idle.pop() else {
                return;
            };
            let Some(r) = self.rooms.get_mut(&room) else {
                continue;
            };
            let due = r.active_ms.saturating_add(self.keep.ttl_ms);
            if !r.is_empty() {
                r.idle = false;
            } else if due > now_ms {
                self.idle.push(Reverse((due, room)));
            } else {
                self.idle_total -= r.counted;
                self.rooms.remove(&room);
            }
        }
    }

    /// Assigns the next sequence number and adds the message to this turn's batch (and to
    /// the room's history). `None`: the room does not exist (no members, no history), so
    /// nothing is kept and nobody receives it. Cost: O(1), no copy of `data`.
    pub fn publish(&mut self, room: &Arc<str>, data: Arc<str>, now_ms: u64) -> Option<(u64, u32)> {
        let r = self.rooms.get_mut(room)?;
        r.seq += 1;
        if r.seq == r.sealed + 1 {
            self.dirty.push(room.clone());
        }
        if r.is_empty() {
            // Recorded for members to come back to: counted against the idle budget.
            r.counted += data.len();
            self.idle_total += data.len();
        }
        r.log.push(r.seq, data);
        r.active_ms = now_ms;
        let done = Some((r.seq, r.epoch));
        self.evict();
        done
    }

    /// Up to `limit` of `room`'s messages after `since` (`None`: no such room). Cost:
    /// O(limit).
    pub fn page(&self, room: &Arc<str>, since: u64, limit: usize) -> Option<Page> {
        let r = self.rooms.get(room)?;
        Some(Page {
            room: room.clone(),
            epoch: r.epoch,
            seq: r.seq,
            complete: r.log.covers_after(since.min(r.seq), r.seq),
            messages: r.log.after(since).take(limit).cloned().collect(),
        })
    }

    /// Every room owned here, with its members on all shards. O(rooms).
    pub fn rooms(&self) -> Vec<(Arc<str>, u64)> {
        let total = |r: &OwnedRoom| r.members.iter().map(|&m| u64::from(m)).sum();
        self.rooms
            .iter()
            .map(|(name, r)| (name.clone(), total(r)))
            .collect()
    }

    /// Ends the turn: hands each room's batch, in seq order, to `deliver`, then trims the
    /// room's history to its limits. Cost: O(rooms published to this turn + messages).
    pub fn seal(&mut self, mut deliver: impl FnMut(Sealed<'_>)) {
        let keep = self.keep;
        for room in self.dirty.drain(..) {
            let Some(r) = self.rooms.get_mut(&room) else {
                continue;
            };
            if r.seq == r.sealed {
                continue;
            }
            let (first, last) = (r.sealed + 1, r.seq);
            deliver(Sealed {
                room: &room,
                epoch: r.epoch,
                batch: r.log.after(r.sealed),
                first,
                last,
                members: &r.members,
                encodings: r.encodings,
            });
            r.sealed = last;
            r.log.trim(last, &keep);
        }
    }
}

/// Epochs are 30 bits: six base-32 characters.
pub const EPOCH_MASK: u32 = (1 << 30) - 1;

/// Why a join was refused locally.
#[derive(Debug, PartialEq, Eq)]
pub enum JoinRefused {
    AlreadyJoined,
    TooManyRooms,
}

#[derive(Debug)]
struct LocalRoom {
    name: Arc<str>,
    members: Vec<u32>,
    /// Joins sent to the owner and not yet answered.
    pending: Vec<u32>,
    /// The first seq of the next batch due from the owner (0: none answered yet). The
    /// owner's messages to a shard arrive in order, so a batch that starts later means the
    /// mesh dropped one under overload.
    next: u64,
}

/// This shard's members, by room, and each connection's rooms.
#[derive(Debug, Default)]
pub struct Local {
    ids: HashMap<Arc<str>, usize>,
    rooms: Slab<LocalRoom>,
    /// Rooms (joined or pending) of each connection that has any.
    by_conn: HashMap<u32, Vec<usize>>,
    memberships: usize,
}

impl Local {
    /// Rooms with a member (or a pending join) on this shard.
    pub fn rooms(&self) -> usize {
        self.rooms.len()
    }

    /// Joined memberships on this shard.
    pub fn memberships(&self) -> usize {
        self.memberships
    }

    /// Records a join request; the caller forwards it to the owner. O(rooms of the conn).
    pub fn request_join(
        &mut self,
        room: &Arc<str>,
        slot: u32,
        max_rooms: usize,
    ) -> Result<(), JoinRefused> {
        let mine = self.by_conn.entry(slot).or_default();
        if let Some(&id) = self.ids.get(room) {
            if mine.contains(&id) {
                return Err(JoinRefused::AlreadyJoined);
            }
        }
        if mine.len() >= max_rooms {
            if mine.is_empty() {
                self.by_conn.remove(&slot);
            }
            return Err(JoinRefused::TooManyRooms);
        }
        let id = match self.ids.get(room) {
            Some(&id) => id,
            None => {
                let id = self.rooms.insert(LocalRoom {
                    name: room.clone(),
                    members: Vec::new(),
                    pending: Vec::new(),
                    next: 0,
                });
                self.ids.insert(room.clone(), id);
                id
            }
        };
        self.rooms[id].pending.push(slot);
        self.by_conn.entry(slot).or_default().push(id);
        Ok(())
    }

    /// The owner answered a join: the connection becomes a member. Returns false if it is
    /// no longer waiting (it left or closed meanwhile). O(pending joins in the room).
    pub fn joined(&mut self, room: &str, slot: u32) -> bool {
        let Some(&id) = self.ids.get(room) else {
            return false;
        };
        let r = &mut self.rooms[id];
        let Some(i) = r.pending.iter().position(|&s| s == slot) else {
            return false;
        };
        r.pending.swap_remove(i);
        r.members.push(slot);
        self.memberships += 1;
        true
    }

    /// The owner answered a join of `room` on this shard after message `seq`: batches from
    /// `seq + 1` on follow. Returns the seqs the current members were due up to `seq` and
    /// never got (batches the mesh dropped before the answer).
    pub fn expect(&mut self, room: &str, seq: u64) -> Option<(u64, u64)> {
        let &id = self.ids.get(room)?;
        let r = &mut self.rooms[id];
        let present = !r.members.is_empty();
        let missed = (present && r.next != 0 && r.next <= seq).then_some((r.next, seq));
        if !present || r.next <= seq {
            r.next = seq + 1;
        }
        missed
    }

    /// A batch `first..=last` of `room` arrived: returns the seqs this shard's members
    /// were due before it and never got (a batch the mesh dropped). O(1).
    pub fn arrived(&mut self, room: &str, first: u64, last: u64) -> Option<(u64, u64)> {
        let &id = self.ids.get(room)?;
        let r = &mut self.rooms[id];
        if r.next != 0 && last < r.next {
            // Sealed before this shard's current members joined.
            return None;
        }
        let missed = (r.next != 0 && first > r.next).then(|| (r.next, first - 1));
        r.next = last + 1;
        missed
    }

    /// Removes `slot` from `room` (joined or pending). Returns whether it was there, in
    /// which case the caller tells the owner. O(members of the room on this shard).
    pub fn leave(&mut self, room: &str, slot: u32) -> bool {
        let Some(&id) = self.ids.get(room) else {
            return false;
        };
        let Some(mine) = self.by_conn.get_mut(&slot) else {
            return false;
        };
        let Some(i) = mine.iter().position(|&r| r == id) else {
            return false;
        };
        mine.swap_remove(i);
        if mine.is_empty() {
            self.by_conn.remove(&slot);
        }
        self.remove_member(id, slot);
        true
    }

    /// Removes `slot` from every room; returns the names, for the owners. O(its rooms ×
    /// members per room on this shard).
    pub fn leave_all(&mut self, slot: u32) -> Vec<Arc<str>> {
        let Some(ids) = self.by_conn.remove(&slot) else {
            return Vec::new();
        };
        ids.into_iter()
            .map(|id| {
                let name = self.rooms[id].name.clone();
                self.remove_member(id, slot);
                name
            })
            .collect()
    }

    fn remove_member(&mut self, id: usize, slot: u32) {
        let r = &mut self.rooms[id];
        if let Some(i) = r.members.iter().position(|&s| s == slot) {
            r.members.swap_remove(i);
            self.memberships -= 1;
        } else if let Some(i) = r.pending.iter().position(|&s| s == slot) {
            r.pending.swap_remove(i);
        }
        if r.members.is_empty() && r.pending.is_empty() {
            let r = self.rooms.remove(id);
            self.ids.remove(&r.name);
        }
    }

    /// The members of `room` on this shard.
    pub fn members(&self, room: &str) -> &[u32] {
        self.ids
            .get(room)
            .map_or(&[], |&id| &self.rooms[id].members)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn owner_is_stable_and_spread() {
        assert_eq!(owner_of("lobby", 4), owner_of("lobby", 4));
        let mut seen = [0; 4];
        for i in 0..1000 {
            seen[owner_of(&format!("room-{i}"), 4)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 150), "{seen:?}");
    }

    type Handed = (Arc<str>, Vec<(u64, Arc<str>)>, Vec<u32>, (u64, u64));

    fn sealed(o: &mut Owner) -> Vec<Handed> {
        let mut got = Vec::new();
        o.seal(|s| {
            let batch = s.batch.cloned().collect();
            got.push((s.room.clone(), batch, s.members.to_vec(), (s.first, s.last)));
        });
        got
    }

    #[test]
    fn owner_sequences_batches_and_frees_empty_rooms() {
        let mut o = Owner::new(2, Retention::NONE, 1);
        let r = name("r");
        assert_eq!(
            o.publish(&r, name("1"), 0),
            None,
            "no members: nothing kept"
        );
        assert_eq!(o.join(&r, 0, 0, None).seq, 0);
        assert_eq!(o.join(&r, 1, 0, None).seq, 0);
        assert_eq!(o.publish(&r, name("1"), 0).map(|p| p.0), Some(1));
        assert_eq!(o.publish(&r, name("\"two\""), 0).map(|p| p.0), Some(2));
        let got = sealed(&mut o);
        assert_eq!(got.len(), 1, "one batch per room per turn");
        let (_, batch, members, span) = &got[0];
        assert_eq!(members, &vec![1, 1]);
        assert_eq!(*span, (1, 2));
        assert_eq!(batch, &vec![(1, name("1")), (2, name("\"two\""))]);
        assert!(sealed(&mut o).is_empty(), "nothing published since");
        o.leave(&r, 0, 0, 0);
        assert_eq!(o.len(), 1);
        o.leave(&r, 1, 0, 0);
        assert!(o.is_empty(), "no members anywhere, no history: freed");
        assert_eq!(o.join(&r, 1, 0, None).seq, 0, "a new room starts over");
    }

    fn keep(size: usize) -> Retention {
        Retention {
            size,
            bytes: 1 << 20,
            ttl_ms: 1000,
            idle_bytes: 1 << 20,
        }
    }

    #[test]
    fn rooms_with_no_members_keep_at_most_their_budget_longest_idle_first() {
        let mut o = Owner::new(
            1,
            Retention {
                idle_bytes: 25,
                ..keep(64)
            },
            7,
        );
        for (i, room) in ["a", "b", "c"].iter().enumerate() {
            let r = name(room);
            o.join(&r, 0, 0, None);
            o.publish(&r, name(&"x".repeat(10)), 0);
            sealed(&mut o);
            o.leave(&r, 0, 0, i as u64);
        }
        assert_eq!(o.len(), 2, "30 bytes idle > 25: the longest idle (a) went");
        let j = o.join(&name("a"), 0, 0, None);
        assert_eq!(j.seq, 0, "a starts over");
        // b and c are kept; publishing to an idle room counts too.
        o.publish(&name("c"), name(&"y".repeat(10)), 5);
        assert_eq!(o.len(), 2, "b went for c's new message");
        sealed(&mut o);
        assert_eq!(o.join(&name("c"), 0, 0, None).seq, 2, "c kept both");
    }

    #[test]
    fn a_join_mid_turn_gets_the_batch_live_and_history_before_it() {
        let mut o = Owner::new(1, keep(4), 7);
        let r = name("r");
        let first = o.join(&r, 0, 0, None);
        for i in 1..=6 {
            o.publish(&r, name(&i.to_string()), 0);
        }
        sealed(&mut o);
        o.publish(&r, name("7"), 0);
        // 7 is in this turn's batch: it arrives live, not in the replay.
        let j = o.join(&r, 0, 0, Some((3, first.epoch)));
        assert_eq!((j.seq, j.epoch, j.recovered), (6, first.epoch, Some(true)));
        let seqs: Vec<u64> = j.replay.iter().map(|e| e.0).collect();
        assert_eq!(seqs, vec![4, 5, 6]);
        let j = o.join(&r, 0, 0, Some((1, first.epoch)));
        assert_eq!(
            j.recovered,
            Some(false),
            "2 fell out of a 4-message history"
        );
        assert!(j.replay.is_empty());
        let j = o.join(&r, 0, 0, Some((3, first.epoch ^ 1)));
        assert_eq!(j.recovered, Some(false), "another epoch");
        let j = o.join(&r, 0, 0, Some((9, first.epoch)));
        assert_eq!(j.recovered, Some(false), "from the future");
        let j = o.join(&r, 0, 0, Some((6, first.epoch)));
        assert_eq!((j.recovered, j.replay.len()), (Some(true), 0), "up to date");
        assert_eq!(sealed(&mut o)[0].3, (7, 7));
    }

    #[test]
    fn an_empty_room_keeps_its_history_and_epoch_for_the_ttl() {
        let mut o = Owner::new(1, keep(8), 7);
        let r = name("r");
        let e = o.join(&r, 0, 1, None).epoch;
        o.publish(&r, name("1"), 10);
        sealed(&mut o);
        o.leave(&r, 0, 1, 100);
        assert_eq!(
            o.publish(&r, name("2"), 500).map(|p| p.0),
            Some(2),
            "still recorded"
        );
        sealed(&mut o);
        o.expire(1099);
        let j = o.join(&r, 0, 0, Some((0, e)));
        assert_eq!((j.epoch, j.recovered, j.replay.len()), (e, Some(true), 2));
        o.leave(&r, 0, 0, 1200);
        o.expire(1500);
        assert_eq!(o.len(), 1, "left at 1200: kept until 2200");
        o.expire(2200);
        assert!(o.is_empty());
        let j = o.join(&r, 0, 0, Some((2, e)));
        assert_ne!(j.epoch, e, "a new room, a new epoch");
        assert_eq!((j.seq, j.recovered), (0, Some(false)));
        assert!(o.history_bytes() == 0);
    }

    #[test]
    fn epochs_differ_between_rooms_and_processes() {
        let (mut a, mut b) = (Owner::new(1, keep(1), 1), Owner::new(1, keep(1), 2));
        let ea = a.join(&name("x"), 0, 0, None).epoch;
        let ea2 = a.join(&name("y"), 0, 0, None).epoch;
        let eb = b.join(&name("x"), 0, 0, None).epoch;
        assert!(ea != ea2 && ea != eb && ea <= EPOCH_MASK);
    }

    #[test]
    fn local_joins_go_through_pending_and_leave_all_cleans_up() {
        let mut l = Local::default();
        let (a, b) = (name("a"), name("b"));
        l.request_join(&a, 7, 8).unwrap();
        assert_eq!(l.request_join(&a, 7, 8), Err(JoinRefused::AlreadyJoined));
        assert!(l.members("a").is_empty(), "pending until the owner answers");
        assert!(l.joined("a", 7));
        assert!(!l.joined("a", 7));
        assert_eq!(l.members("a"), &[7]);
        l.request_join(&b, 7, 8).unwrap();
        l.request_join(&a, 9, 8).unwrap();
        assert_eq!(l.rooms(), 2);
        let mut left = l.leave_all(7);
        left.sort();
        assert_eq!(left, vec![a.clone(), b.clone()]);
        assert_eq!(l.rooms(), 1, "b had only 7; a still has 9 pending");
        assert!(l.leave("a", 9));
        assert!(!l.leave("a", 9));
        assert_eq!((l.rooms(), l.memberships()), (0, 0));
    }

    #[test]
    fn a_batch_that_starts_late_reports_what_was_missed() {
        let mut l = Local::default();
        let a = name("a");
        l.request_join(&a, 1, 8).unwrap();
        assert_eq!(
            l.arrived("a", 4, 5),
            None,
            "before any answer: nothing expected"
        );
        assert_eq!(l.expect("a", 10), None);
        assert!(l.joined("a", 1));
        assert_eq!(
            l.arrived("a", 8, 10),
            None,
            "sealed before the join: ignored"
        );
        assert_eq!(l.arrived("a", 11, 12), None);
        let late = l.arrived("a", 15, 15);
        assert_eq!(late, Some((13, 14)), "13 and 14 never came");
        assert_eq!(l.expect("a", 15), None, "a later join, all caught up");
        assert_eq!(
            l.expect("a", 18),
            Some((16, 18)),
            "16 to 18 were dropped before it"
        );
        assert_eq!(l.arrived("a", 19, 19), None);
        assert_eq!(l.arrived("b", 1, 1), None, "no members here");
    }

    #[test]
    fn rooms_per_connection_are_capped() {
        let mut l = Local::default();
        l.request_join(&name("a"), 1, 2).unwrap();
        l.request_join(&name("b"), 1, 2).unwrap();
        assert_eq!(
            l.request_join(&name("c"), 1, 2),
            Err(JoinRefused::TooManyRooms)
        );
        assert_eq!(
            l.request_join(&name("c"), 2, 0),
            Err(JoinRefused::TooManyRooms)
        );
        assert_eq!(l.rooms(), 2);
    }
}
