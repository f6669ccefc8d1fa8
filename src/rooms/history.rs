//! A room's recent messages, kept by its owner so a member that comes back can be given
//! what it missed (`join` with `since`), and so a turn's batch has somewhere to live until
//! it is sealed.
//!
//! One ring per room of `(seq, data)` in seq order, with no holes: the data is the same
//! `Arc<str>` the publisher's message was copied into once, so history costs a pointer
//! and a sequence number per message on top of the data it keeps alive.

use std::collections::VecDeque;
use std::sync::Arc;

/// How much history a room keeps (`--history-size`, `--history-bytes`, `--history-ttl`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Messages kept per room (0: none; a member can only resume from where it is).
    pub size: usize,
    /// Data bytes kept per room.
    pub bytes: usize,
    /// How long a room with no members keeps its history and epoch, in ms (0: freed at once).
    pub ttl_ms: u64,
    /// Data bytes the rooms with no members may keep in all, per owner shard: past it the
    /// longest idle go first, whatever their TTL (`--history-idle-bytes` / shards).
    pub idle_bytes: usize,
}

impl Retention {
    /// No history: a room lives while it has members, as before history existed.
    pub const NONE: Retention = Retention {
        size: 0,
        bytes: 0,
        ttl_ms: 0,
        idle_bytes: 0,
    };

    /// Whether a room with no members is kept at all.
    pub fn keeps_empty_rooms(&self) -> bool {
        self.size > 0 && self.ttl_ms > 0
    }
}

/// Bytes of bookkeeping per message kept, besides the data: the ring slot (seq and a fat
/// pointer) and the `Arc` header of the data. For `plan` and the history gauge.
pub const ENTRY_OVERHEAD: usize = std::mem::size_of::<(u64, Arc<str>)>() + 16;

#[derive(Debug, Default)]
pub struct Log {
    entries: VecDeque<(u64, Arc<str>)>,
    /// Data bytes of `entries`.
    bytes: usize,
}

impl Log {
    pub fn push(&mut self, seq: u64, data: Arc<str>) {
        debug_assert!(self.entries.back().is_none_or(|&(s, _)| s + 1 == seq));
        self.bytes += data.len();
        self.entries.push_back((seq, data));
    }

    /// Entries after `seq`, oldest first.
    /// Adds an older message in front (a backplane's fetch reaching further back than
    /// what this node received). `seq` must be the one before the oldest kept.
    pub fn push_front(&mut self, seq: u64, data: Arc<str>) {
        debug_assert!(self.entries.front().is_none_or(|&(s, _)| seq + 1 == s));
        self.bytes += data.len();
        self.entries.push_front((seq, data));
    }

    /// The oldest seq kept.
    pub fn first(&self) -> Option<u64> {
        self.entries.front().map(|e| e.0)
    }

    /// Forgets everything (the room's sequence starts over, or jumps past a hole).
    pub fn clear(&mut self) {
        self.entries = VecDeque::new();
        self.bytes = 0;
    }

    pub fn after(&self, seq: u64) -> std::collections::vec_deque::Iter<'_, (u64, Arc<str>)> {
        let skip = match self.entries.front() {
            Some(&(first, _)) => seq.saturating_add(1).saturating_sub(first) as usize,
            None => 0,
        };
        self.entries.range(skip.min(self.entries.len())..)
    }

    /// Whether every message after `seq` up to the newest is still here.
    pub fn covers_after(&self, seq: u64, newest: u64) -> bool {
        seq == newest
            || self
                .entries
                .front()
                .is_some_and(|&(first, _)| first <= seq + 1)
    }

    /// Forgets the oldest messages up to `sealed` (never one still to be delivered) until
    /// the room is within `keep`. Cost: O(messages forgotten).
    pub fn trim(&mut self, sealed: u64, keep: &Retention) {
        while let Some((seq, data)) = self.entries.front() {
            let over = self.entries.len() > keep.size || self.bytes > keep.bytes;
            if !over || *seq > sealed {
                break;
            }
            self.bytes -= data.len();
            self.entries.pop_front();
        }
        if self.entries.is_empty() && self.entries.capacity() > 0 {
            self.entries = VecDeque::new();
        } else if self.entries.capacity() > 4 * keep.size.max(16) {
            // A burst is over: don't keep its buffer.
            self.entries.shrink_to(keep.size.max(16));
        }
    }

    /// Data bytes kept.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Heap bytes this history asked for: ring slots, `Arc` headers and data (the data is
    /// shared with deliveries in flight, which end). The allocator rounds each message up
    /// to 16 B on top, which `roomcast plan` counts and this does not.
    pub fn footprint(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<(u64, Arc<str>)>()
            + self.entries.len() * 16
            + self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(seqs: std::ops::RangeInclusive<u64>) -> Log {
        let mut l = Log::default();
        for s in seqs {
            l.push(s, Arc::from(format!("m{s}").as_str()));
        }
        l
    }

    #[test]
    fn after_and_coverage() {
        let l = log(5..=9);
        let got: Vec<u64> = l.after(6).map(|e| e.0).collect();
        assert_eq!(got, vec![7, 8, 9]);
        assert_eq!(l.after(2).count(), 5);
        assert_eq!(l.after(9).count(), 0);
        assert!(l.covers_after(4, 9) && l.covers_after(9, 9));
        assert!(!l.covers_after(3, 9), "5 is the oldest kept: 4 is gone");
        assert!(Log::default().covers_after(7, 7));
        assert!(!Log::default().covers_after(6, 7));
    }

    #[test]
    fn trim_keeps_the_limits_but_never_an_unsealed_message() {
        let keep = Retention {
            size: 3,
            bytes: 1 << 20,
            ttl_ms: 1,
            idle_bytes: 1 << 20,
        };
        let mut l = log(1..=6);
        l.trim(4, &keep);
        assert_eq!(l.after(0).map(|e| e.0).collect::<Vec<_>>(), vec![4, 5, 6]);
        let mut l = log(1..=6);
        l.trim(2, &keep);
        assert_eq!(l.len(), 4, "3 to 6 are still to be delivered");
        let tight = Retention { bytes: 5, ..keep };
        let mut l = log(1..=6);
        l.trim(6, &tight);
        assert_eq!(l.after(0).map(|e| e.0).collect::<Vec<_>>(), vec![5, 6]);
        l.trim(6, &Retention::NONE);
        assert!(l.is_empty() && l.footprint() == 0);
    }
}
