//! Rooms whose order comes from a backplane (`--redis`): the owner takes each room's epoch
//! and seq from Redis instead of making them ([`Owner::synced`], [`Owner::arrive`]), a
//! join of a room new to the node waits for that state, and a resume from before what
//! the node holds waits for history fetched from the room's stream.

use std::sync::Arc;

use super::{Joined, OwnedRoom, Owner};

/// A join waiting at the owner for the backplane (see [`Owner::join_remote`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parked {
    pub shard: usize,
    pub slot: u32,
    pub gen: u32,
    pub encoding: usize,
    pub since: Option<(u64, u32)>,
    /// Whether history from `since` on was asked of Redis for this join.
    pub asked: bool,
}

/// What a join with a backplane needs before it can be answered.
#[derive(Debug, PartialEq, Eq)]
pub enum Need {
    /// Nothing: here is the answer.
    Ready(Joined),
    /// The room is new on this node: subscribe to it, fetching history after `after`.
    /// `sub` numbers this subscription: a state from an earlier one (the room was left
    /// and joined again meanwhile) is recognized and ignored.
    Subscribe { after: Option<u64>, sub: u32 },
    /// History after `after` that this node does not hold.
    Fetch { after: u64 },
    /// Nothing more than what was already asked for.
    Wait,
}

impl Owner {
    /// [`Owner::join`] with a backplane: the room's state comes from Redis, so a room new
    /// here, or a resume from before what this node holds, waits for it (parked until
    /// [`Owner::synced`]).
    pub fn join_remote(&mut self, room: &Arc<str>, p: Parked) -> Need {
        let Some(r) = self.rooms.get_mut(room) else {
            let mut r = OwnedRoom::new(0, self.shards, false);
            let after = p.since.map(|s| s.0);
            self.subs = self.subs.wrapping_add(1);
            r.sub = self.subs;
            r.parked.push(Parked { asked: true, ..p });
            self.rooms.insert(room.clone(), r);
            return Need::Subscribe {
                after,
                sub: self.subs,
            };
        };
        if !r.live {
            r.parked.push(p);
            return Need::Wait;
        }
        match p.since {
            Some((since, epoch)) if epoch == r.epoch && !r.covers(since) => {
                r.parked.push(Parked { asked: true, ..p });
                Need::Fetch { after: since }
            }
            _ => Need::Ready(r.admit(p.shard, p.encoding, p.since)),
        }
    }

    /// With a backplane: Redis says `room` is at `seq` in `epoch`, with `entries` (in seq
    /// order) the newest messages after what was asked. A subscription's sync makes a new
    /// room live, or catches a live one up on newer messages (a jump past what Redis no
    /// longer holds, or a new epoch, starts the log over: seal first). A `fetch` (history
    /// for a resume) only adds older history in front: newer messages come on the channel.
    /// Returns the parked joins now answered, and history to fetch for the others. A join
    /// from further than this node has come (`since` beyond the last sealed seq, not beyond
    /// Redis's) waits for it: [`Owner::ready`].
    pub fn synced(
        &mut self,
        room: &Arc<str>,
        (epoch, seq): (u32, u64),
        entries: Vec<(u64, Arc<str>)>,
        (fetch, sub): (bool, u32),
    ) -> (Vec<(Parked, Joined)>, Option<u64>) {
        let Some(r) = self.rooms.get_mut(room).filter(|r| r.sub == sub) else {
            // Gone, or an earlier subscription's.
            return (Vec::new(), None);
        };
        if fetch {
            if !r.live {
                // The subscription's own sync answers the parked joins.
                return (Vec::new(), None);
            }
            if epoch == r.epoch {
                r.prepend(entries);
            }
        } else if !r.live {
            (r.live, r.epoch, r.seq, r.sealed) = (true, epoch, seq, seq);
            r.prepend(entries);
        } else {
            let mut newer = Vec::new();
            let mut older = Vec::new();
            for (s, data) in entries {
                if epoch != r.epoch || s > r.seq {
                    newer.push((s, data));
                } else {
                    older.push((s, data));
                }
            }
            r.prepend(older);
            let dirty = &mut self.dirty;
            for (s, data) in newer {
                r.arrive(room, epoch, s, data, dirty);
            }
            if epoch != r.epoch || seq > r.seq {
                // Newer than anything Redis still holds: nothing to deliver, but the
                // sequence moves on (members get a gap notice with the next batch).
                r.restart(epoch, seq);
            }
        }
        let parked = std::mem::take(&mut r.parked);
        let mut fetch_after = None;
        let mut answered = Vec::new();
        let mut waits = false;
        for p in parked {
            let (covered, ahead) = match p.since {
                // Further than this node has come, not further than Redis: wait.
                Some((since, e)) if e == r.epoch && since > r.sealed && since <= seq => {
                    (false, true)
                }
                Some((since, e)) => (e != r.epoch || r.covers(since), false),
                None => (true, false),
            };
            if ahead && p.asked {
                waits = true;
                r.parked.push(p);
            } else if covered || p.asked {
                let joined = r.admit(p.shard, p.encoding, p.since);
                answered.push((p, joined));
            } else {
                let since = p.since.map_or(0, |s| s.0);
                fetch_after = Some(fetch_after.map_or(since, |f: u64| f.min(since)));
                r.parked.push(Parked { asked: true, ..p });
            }
        }
        if waits && !self.ahead.contains(room) {
            self.ahead.push(room.clone());
        }
        (answered, fetch_after)
    }

    /// With a backplane: the joins that waited for this node to reach their `since`, now
    /// that it has (or the room started over): call after [`Owner::seal`]. O(rooms with
    /// such joins).
    pub fn ready(&mut self) -> Vec<(Arc<str>, Parked, Joined)> {
        let mut out = Vec::new();
        let rooms = &mut self.rooms;
        self.ahead.retain(|room| {
            let Some(r) = rooms.get_mut(room) else {
                return false;
            };
            let parked = std::mem::take(&mut r.parked);
            for p in parked {
                match p.since {
                    Some((since, e)) if e == r.epoch && since > r.sealed => r.parked.push(p),
                    _ => {
                        let joined = r.admit(p.shard, p.encoding, p.since);
                        out.push((room.clone(), p, joined));
                    }
                }
            }
            !r.parked.is_empty()
        });
        out
    }

    /// With a backplane: the history asked for `room`'s parked resumes (subscription `sub`)
    /// could not be read. A resume from behind what this node holds gets what it has
    /// (`recovered: false`); a resume from ahead of it in the same epoch is returned, to
    /// be refused as unavailable: answered at the node's seq, it would be handed again
    /// the seqs it already had. Returns (answered, refused, whether the room is now
    /// unused: no members, nothing parked, dropped, so its channel can go).
    pub fn fetch_failed(
        &mut self,
        room: &Arc<str>,
        sub: u32,
    ) -> (Vec<(Parked, Joined)>, Vec<Parked>, bool) {
        let Some(r) = self.rooms.get_mut(room).filter(|r| r.sub == sub && r.live) else {
            // Gone, an earlier subscription's, or not live yet: its own sync answers.
            return (Vec::new(), Vec::new(), false);
        };
        let (mut answered, mut refused) = (Vec::new(), Vec::new());
        for p in std::mem::take(&mut r.parked) {
            match p.since {
                _ if !p.asked => r.parked.push(p),
                Some((since, e)) if e == r.epoch && since > r.sealed => refused.push(p),
                _ => {
                    let joined = r.admit(p.shard, p.encoding, p.since);
                    answered.push((p, joined));
                }
            }
        }
        let unused = r.is_empty() && r.parked.is_empty();
        if unused {
            self.rooms.remove(room);
        }
        (answered, refused, unused)
    }

    /// With a backplane: `room` could not be subscribed. A room still waiting for its
    /// first state is dropped; its parked joins are returned, to be refused.
    pub fn sub_failed(&mut self, room: &Arc<str>) -> Vec<Parked> {
        match self.rooms.get(room) {
            Some(r) if !r.live => self.rooms.remove(room).map_or(Vec::new(), |r| r.parked),
            _ => Vec::new(),
        }
    }

    /// With a backplane: whether a message `seq` of `room` in `epoch` would restart its
    /// log while this turn's batch is not sealed yet (seal first: a batch is contiguous).
    pub fn must_seal(&self, room: &Arc<str>, epoch: u32, seq: u64) -> bool {
        self.rooms
            .get(room)
            .is_some_and(|r| r.live && r.seq != r.sealed && (epoch != r.epoch || seq > r.seq + 1))
    }

    /// With a backplane: message `seq` of `room`, in Redis's order, joins this turn's
    /// batch. A duplicate is ignored; a jump or a new epoch starts the log over. Returns
    /// whether the epoch changed (the members must be told). O(1).
    pub fn arrive(&mut self, room: &Arc<str>, epoch: u32, seq: u64, data: Arc<str>) -> bool {
        match self.rooms.get_mut(room) {
            Some(r) if r.live => {
                let changed = r.epoch != epoch;
                r.arrive(room, epoch, seq, data, &mut self.dirty);
                changed
            }
            _ => false,
        }
    }

    /// The room's epoch and last seq (with a backplane, once live).
    pub fn position(&self, room: &str) -> Option<(u32, u64)> {
        self.rooms
            .get(room)
            .filter(|r| r.live)
            .map(|r| (r.epoch, r.sealed))
    }
}

impl OwnedRoom {
    /// Adds `entries` (in seq order) in front of the log where they continue it backwards:
    /// history older than what this node received (a fresh room's first sync, a resume's
    /// fetch). Only a stretch contiguous with the log (or, for an empty log, ending at the
    /// last sealed seq) counts.
    fn prepend(&mut self, entries: Vec<(u64, Arc<str>)>) {
        for (s, data) in entries.into_iter().rev() {
            let fits = match self.log.first() {
                Some(first) => s + 1 == first,
                None => s == self.sealed && self.seq == self.sealed,
            };
            if fits {
                self.log.push_front(s, data);
            } else if self.log.first().is_some_and(|f| s >= f) || s > self.sealed {
                continue;
            } else {
                break;
            }
        }
    }

    /// The sequence goes on from `seq` (in `epoch`): what came before is not history.
    fn restart(&mut self, epoch: u32, seq: u64) {
        self.log.clear();
        (self.epoch, self.seq, self.sealed) = (epoch, seq, seq);
    }

    /// Message `seq` in `epoch` from the backplane (see [`Owner::arrive`]).
    fn arrive(
        &mut self,
        room: &Arc<str>,
        epoch: u32,
        seq: u64,
        data: Arc<str>,
        dirty: &mut Vec<Arc<str>>,
    ) {
        if epoch == self.epoch && seq <= self.seq {
            return;
        }
        if epoch != self.epoch || seq > self.seq + 1 {
            self.restart(epoch, seq.saturating_sub(1));
        }
        self.seq = seq;
        if seq == self.sealed + 1 {
            dirty.push(room.clone());
        }
        self.log.push(seq, data);
    }
}
