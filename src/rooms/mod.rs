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

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use slab::Slab;

/// The shard that owns `room`. Stable across processes and runs (SipHash with fixed keys),
/// so every shard computes the same owner.
pub fn owner_of(room: &str, shards: usize) -> usize {
    #[allow(deprecated)] // SipHasher with zero keys: stable, and fast enough per op.
    let mut h = std::hash::SipHasher::new();
    room.hash(&mut h);
    (h.finish() % shards.max(1) as u64) as usize
}

/// A room as its owner sees it.
#[derive(Debug)]
struct OwnedRoom {
    /// The last sequence number assigned.
    seq: u64,
    /// Members per shard.
    members: Vec<u32>,
    /// Messages published this turn, not yet delivered: `(seq, data)`.
    batch: Vec<(u64, Arc<str>)>,
}

/// The rooms this shard owns.
#[derive(Debug)]
pub struct Owner {
    shards: usize,
    rooms: HashMap<Arc<str>, OwnedRoom>,
    /// Rooms with a non-empty batch.
    dirty: Vec<Arc<str>>,
}

impl Owner {
    pub fn new(shards: usize) -> Owner {
        Owner {
            shards,
            rooms: HashMap::new(),
            dirty: Vec::new(),
        }
    }

    /// Rooms owned here with at least one member anywhere.
    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }

    /// A member on `shard` joined `room`; returns the room's current sequence number
    /// (the member receives everything after it). O(1).
    pub fn join(&mut self, room: &Arc<str>, shard: usize) -> u64 {
        let shards = self.shards;
        let r = self.rooms.entry(room.clone()).or_insert_with(|| OwnedRoom {
            seq: 0,
            members: vec![0; shards],
            batch: Vec::new(),
        });
        r.members[shard] += 1;
        r.seq
    }

    /// A member on `shard` left `room`. A room with no members anywhere is freed. O(shards).
    pub fn leave(&mut self, room: &str, shard: usize) {
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        r.members[shard] = r.members[shard].saturating_sub(1);
        if r.members.iter().all(|&m| m == 0) {
            self.rooms.remove(room);
        }
    }

    /// Assigns the next sequence number and adds the message to this turn's batch.
    /// `None`: the room has no members, so nothing is kept and nobody receives it.
    /// Cost: O(1), no copy of `data`.
    pub fn publish(&mut self, room: &Arc<str>, data: Arc<str>) -> Option<u64> {
        let r = self.rooms.get_mut(room)?;
        r.seq += 1;
        if r.batch.is_empty() {
            self.dirty.push(room.clone());
        }
        r.batch.push((r.seq, data));
        Some(r.seq)
    }

    /// Ends the turn: hands each room's batch, in seq order, to `deliver` with the room's
    /// member count per shard. Cost: O(rooms published to this turn).
    pub fn seal(&mut self, mut deliver: impl FnMut(&Arc<str>, &[(u64, Arc<str>)], &[u32])) {
        for room in self.dirty.drain(..) {
            let Some(r) = self.rooms.get_mut(&room) else {
                continue;
            };
            if r.batch.is_empty() {
                continue;
            }
            deliver(&room, &r.batch, &r.members);
            r.batch.clear();
            if r.batch.capacity() > 1024 {
                // A burst is over; don't keep its buffer for an idle room.
                r.batch = Vec::new();
            }
        }
    }
}

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

    #[test]
    fn owner_sequences_batches_and_frees_empty_rooms() {
        let mut o = Owner::new(2);
        let r = name("r");
        assert_eq!(o.publish(&r, name("1")), None, "no members: nothing kept");
        assert_eq!(o.join(&r, 0), 0);
        assert_eq!(o.join(&r, 1), 0);
        assert_eq!(o.publish(&r, name("1")), Some(1));
        assert_eq!(o.publish(&r, name("\"two\"")), Some(2));
        let mut got = Vec::new();
        o.seal(|room, batch, members| got.push((room.clone(), batch.to_vec(), members.to_vec())));
        assert_eq!(got.len(), 1, "one batch per room per turn");
        let (_, batch, members) = &got[0];
        assert_eq!(members, &vec![1, 1]);
        assert_eq!(batch, &vec![(1, name("1")), (2, name("\"two\""))]);
        o.seal(|_, _, _| panic!("nothing published since"));
        o.leave(&r, 0);
        assert_eq!(o.len(), 1);
        o.leave(&r, 1);
        assert!(o.is_empty(), "no members anywhere: freed");
        assert_eq!(o.join(&r, 1), 0, "a new room starts over");
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
