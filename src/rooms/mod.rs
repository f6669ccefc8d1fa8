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
mod remote;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use slab::Slab;

use history::Log;
pub use history::{Retention, ENTRY_OVERHEAD};
pub use remote::{Need, Parked};

/// The shard that owns `room`. Stable across processes and runs (SipHash with fixed keys),
/// so every shard computes the same owner.
pub fn owner_of(room: &str, shards: usize) -> usize {
    (name_hash(room) % shards.max(1) as u64) as usize
}

/// SipHash-2-4 with zero keys over the name as `Hash for str` writes it (its bytes, then
/// 0xff): what `std::hash::SipHasher` computed before it was deprecated, so owners do
/// not move. Stable, and fast enough per op.
fn name_hash(room: &str) -> u64 {
    let mut h = siphasher::sip::SipHasher::new();
    room.hash(&mut h);
    h.finish()
}

/// How many ways a member may want its deliveries encoded; the owner counts members per
/// encoding so that an encoding nobody in a room uses is not made (the app numbers them).
pub const ENCODINGS: usize = 5;

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
    /// With a backplane: whether the room's epoch and seq have come from Redis, and the
    /// joins waiting for them (or for older history to resume from).
    live: bool,
    parked: Vec<Parked>,
    /// The subscription this room's state comes from ([`Need::Subscribe`]).
    sub: u32,
}

impl OwnedRoom {
    fn new(epoch: u32, shards: usize, live: bool) -> OwnedRoom {
        OwnedRoom {
            seq: 0,
            sealed: 0,
            epoch,
            members: vec![0; shards],
            encodings: [0; ENCODINGS],
            log: Log::default(),
            active_ms: 0,
            idle: false,
            counted: 0,
            live,
            parked: Vec::new(),
            sub: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.members.iter().all(|&m| m == 0)
    }

    /// Whether the log holds everything after `since` up to the last sealed seq.
    fn covers(&self, since: u64) -> bool {
        since <= self.sealed && self.log.covers_after(since, self.sealed)
    }

    /// Counts a member on `shard` and says what it receives (see [`Owner::join`]).
    fn admit(&mut self, shard: usize, encoding: usize, since: Option<(u64, u32)>) -> Joined {
        self.members[shard] += 1;
        self.encodings[encoding.min(ENCODINGS - 1)] += 1;
        // This turn's batch is not sealed yet: the member gets it with everyone else.
        let seq = self.sealed;
        let mut joined = Joined {
            seq,
            epoch: self.epoch,
            recovered: None,
            replay: Vec::new(),
        };
        if let Some((since, epoch)) = since {
            let ok = epoch == self.epoch && self.covers(since);
            joined.recovered = Some(ok);
            if ok {
                joined.replay = self
                    .log
                    .after(since)
                    .take_while(|e| e.0 <= seq)
                    .cloned()
                    .collect();
            }
        }
        joined
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
    /// With a backplane, rooms' epochs and seqs come from Redis ([`Owner::synced`],
    /// [`Owner::arrive`]), and a room with no members here is dropped (its history
    /// lives in Redis).
    remote: bool,
    keep: Retention,
    rooms: HashMap<Arc<str>, OwnedRoom>,
    /// Rooms with a non-empty batch.
    dirty: Vec<Arc<str>>,
    /// Rooms with no members, kept for their history: (earliest expiry, name).
    idle: BinaryHeap<Reverse<(u64, Arc<str>)>>,
    /// Data bytes the rooms with no members keep, against `keep.idle_bytes`.
    idle_total: usize,
    /// With a backplane: rooms with joins waiting for this node to reach their `since`,
    /// and the number of the last subscription asked for.
    ahead: Vec<Arc<str>>,
    subs: u32,
    /// Epochs: a per-process seed and a counter, mixed.
    seed: u64,
    epochs: u64,
}

impl Owner {
    /// `seed` must differ between processes (and shards) so that epochs do.
    pub fn new(shards: usize, keep: Retention, seed: u64) -> Owner {
        Owner {
            shards,
            remote: false,
            keep,
            rooms: HashMap::new(),
            dirty: Vec::new(),
            idle: BinaryHeap::new(),
            idle_total: 0,
            ahead: Vec::new(),
            subs: 0,
            seed,
            epochs: 0,
        }
    }

    /// Rooms take their order from a backplane (see [`Owner::remote`]).
    pub fn with_backplane(mut self) -> Owner {
        self.remote = true;
        self
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
            self.rooms
                .insert(room.clone(), OwnedRoom::new(epoch, self.shards, true));
        }
        let r = self.rooms.get_mut(room).expect("inserted above");
        self.idle_total -= std::mem::take(&mut r.counted);
        r.admit(shard, encoding, since)
    }

    /// Members per shard of `room`.
    pub fn members_of(&self, room: &str) -> &[u32] {
        self.rooms.get(room).map_or(&[], |r| &r.members)
    }

    /// A member on `shard` that wanted `encoding` left `room`. A room with no members
    /// anywhere is freed, or kept for `--history-ttl` if it keeps history. O(shards).
    ///
    /// With a backplane, a parked join of `slot` is withdrawn instead, and a room left
    /// empty is dropped: returns true when this node no longer needs the room's channel.
    pub fn leave(
        &mut self,
        room: &Arc<str>,
        (shard, slot): (usize, u32),
        encoding: usize,
        now_ms: u64,
    ) -> bool {
        let Some(r) = self.rooms.get_mut(room) else {
            return false;
        };
        if let Some(i) = r
            .parked
            .iter()
            .position(|p| p.shard == shard && p.slot == slot)
        {
            r.parked.swap_remove(i);
        } else {
            r.members[shard] = r.members[shard].saturating_sub(1);
            let e = &mut r.encodings[encoding.min(ENCODINGS - 1)];
            *e = e.saturating_sub(1);
        }
        if !r.is_empty() || !r.parked.is_empty() {
            return false;
        }
        if self.remote {
            self.rooms.remove(room);
            return true;
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
        false
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

/// A room as the shard of its members knows it, for what is queued to them (a tag on a
/// frame in a member's out-ring): a number the shard gives a room when it takes its first
/// member or join, and never gives again (a serial count: 2^64 rooms at a million a second
/// last half a million years). A room that loses its last member here and comes back gets
/// a new id, so an id held past its room's end names nothing rather than another room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RoomId(u64);

impl RoomId {
    /// Names no room (the shard's count starts after it).
    pub const NONE: RoomId = RoomId(0);
}

#[derive(Debug)]
struct LocalRoom {
    name: Arc<str>,
    id: RoomId,
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
    /// The rooms by [`RoomId`], and the last id given.
    by_id: HashMap<RoomId, usize>,
    last_id: u64,
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

    /// Whether `slot` is in `room` here, joined or with its join pending.
    pub fn is_member(&self, room: &str, slot: u32) -> bool {
        let (Some(id), Some(mine)) = (self.ids.get(room), self.by_conn.get(&slot)) else {
            return false;
        };
        mine.contains(id)
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
                self.last_id += 1;
                let room_id = RoomId(self.last_id);
                let id = self.rooms.insert(LocalRoom {
                    name: room.clone(),
                    id: room_id,
                    members: Vec::new(),
                    pending: Vec::new(),
                    next: 0,
                });
                self.ids.insert(room.clone(), id);
                self.by_id.insert(room_id, id);
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
            self.by_id.remove(&r.id);
        }
    }

    /// `room`'s sequence started over: batches from `seq + 1` on follow.
    pub fn reset(&mut self, room: &str, seq: u64) {
        if let Some(&id) = self.ids.get(room) {
            self.rooms[id].next = seq + 1;
        }
    }

    /// The id of `room` on this shard, while it has a member or a join here. O(1).
    pub fn id(&self, room: &str) -> Option<RoomId> {
        self.ids.get(room).map(|&i| self.rooms[i].id)
    }

    /// The name of the room `id` stands for, if that room still has a member or a join
    /// here (an id is never reused: an old one finds nothing). O(1).
    pub fn name(&self, id: RoomId) -> Option<&Arc<str>> {
        self.by_id.get(&id).map(|&i| &self.rooms[i].name)
    }

    /// The name of the room `id` stands for, if `slot` is (or is joining) in it. O(rooms of
    /// the connection).
    pub fn name_for(&self, id: RoomId, slot: u32) -> Option<&Arc<str>> {
        let &i = self.by_id.get(&id)?;
        let theirs = self.by_conn.get(&slot)?;
        theirs.contains(&i).then(|| &self.rooms[i].name)
    }

    /// The members of `room` on this shard.
    pub fn members(&self, room: &str) -> &[u32] {
        self.ids
            .get(room)
            .map_or(&[], |&id| &self.rooms[id].members)
    }
}

#[cfg(test)]
mod tests;
