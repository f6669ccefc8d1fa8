//! A connection's bounded queue of frames waiting to be sent.
//!
//! Entries are [`SharedFrame`]s: a broadcast puts the same bytes in every member's ring, a
//! reply puts its own. The ring holds at most `cap` data frames; control frames (pong,
//! close) may go past that by [`CONTROL_SLACK`] so they always get out. Storage is
//! allocated on the first push and released when the ring drains, so an idle connection
//! holds no heap memory for it.
//!
//! The storage is a [`ThinVec`] (one pointer inline, length and capacity on the heap)
//! used as a queue: sent frames are taken from the front and leave an empty slot until the
//! next push that would grow the vector compacts it instead. A `VecDeque` keeps 32 bytes
//! inline for the same job; at a million idle connections those 24 bytes are 24 MB.

use std::io::IoSlice;

use thin_vec::ThinVec;

use crate::protocol::SharedFrame;

/// How far past its capacity control frames may take a ring.
pub const CONTROL_SLACK: usize = 4;

#[derive(Debug, Default)]
pub struct OutRing {
    /// `frames[head..]` are queued; the slots before `head` were sent and are empty.
    frames: ThinVec<Option<SharedFrame>>,
    head: u16,
    /// Bytes of the front frame already sent.
    sent: u32,
    /// Front frames an in-flight send points into (io_uring): never dropped.
    pinned: u16,
    /// Frames queued before the current loop turn started, and that turn's number: a
    /// member is slow when frames from earlier turns fill its ring, not when one busy turn
    /// brings many rooms' batches at once.
    before_turn: u16,
    turn: u32,
    /// Unsent bytes queued, and how many of them were queued before this turn.
    bytes: u32,
    bytes_before_turn: u32,
}

/// Frame slots a ring allocates on its first push (it grows by doubling from there).
const INITIAL_SLOTS: usize = 4;

/// Why a push was refused.
#[derive(Debug, PartialEq, Eq)]
pub struct Full;

impl OutRing {
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Frames queued.
    pub fn len(&self) -> usize {
        self.frames.len() - usize::from(self.head)
    }

    /// Whether a data frame would be refused.
    pub fn is_full(&self, cap: usize) -> bool {
        self.len() >= cap
    }

    fn queued(&self) -> impl Iterator<Item = &SharedFrame> {
        self.frames[usize::from(self.head)..].iter().flatten()
    }

    /// Queues a data frame. Cost: O(1) amortized (a compaction moves the queued frames'
    /// pointers, not their bytes), one refcount increment by the caller's clone.
    pub fn push(&mut self, frame: SharedFrame, cap: usize) -> Result<(), Full> {
        let len = self.len();
        if len >= cap || len >= usize::from(u16::MAX) {
            return Err(Full);
        }
        if self.frames.capacity() == 0 {
            // Small to start: most pushes onto an empty ring are one frame (a ping, a
            // reply, one delivery) sent and released within the turn; reserving the whole
            // cap made every heartbeat allocate ~0.5 KiB per connection, and at a 10 s
            // ping interval that showed up as +170 B per idle connection.
            self.frames.reserve_exact(INITIAL_SLOTS.min(cap));
        } else if self.frames.len() == self.frames.capacity() && self.head > 0 {
            // Reuse the sent slots at the front before growing.
            self.frames.drain(..usize::from(self.head));
            self.head = 0;
        }
        self.bytes = self.bytes.saturating_add(frame.len() as u32);
        self.frames.push(Some(frame));
        Ok(())
    }

    /// Queues a delivery from a room during loop turn `turn`. Refused when what is left
    /// over from earlier turns already fills `cap` frames or `max_bytes` bytes, or this turn
    /// alone has brought `4 × cap` frames.
    pub fn push_delivery(
        &mut self,
        frame: SharedFrame,
        cap: usize,
        max_bytes: usize,
        turn: u32,
    ) -> Result<(), Full> {
        if self.turn != turn {
            self.turn = turn;
            self.before_turn = self.len().min(u16::MAX as usize) as u16;
            self.bytes_before_turn = self.bytes;
        }
        if self.before_turn as usize >= cap || self.bytes_before_turn as usize >= max_bytes {
            return Err(Full);
        }
        self.push(frame, cap * 4)
    }

    /// Unsent bytes queued.
    pub fn bytes(&self) -> usize {
        self.bytes as usize
    }

    /// Drops the oldest data frame that no send is using (not a control frame, not one
    /// partly sent or pinned by an in-flight send). Returns whether one was dropped.
    pub fn drop_oldest_data(&mut self) -> bool {
        let first_free = usize::from(self.pinned).max(usize::from(self.sent > 0));
        let is_data = |f: &SharedFrame| matches!(f.as_bytes().first(), Some(0x81 | 0x82));
        let Some(i) = self.queued().skip(first_free).position(is_data) else {
            return false;
        };
        if let Some(f) = self.frames.remove(usize::from(self.head) + first_free + i) {
            self.bytes = self.bytes.saturating_sub(f.len() as u32);
            self.bytes_before_turn = self.bytes_before_turn.min(self.bytes);
        }
        self.before_turn = self.before_turn.saturating_sub(1);
        true
    }

    /// An in-flight send points into the first `n` frames.
    pub fn pin(&mut self, n: usize) {
        self.pinned = n as u16;
    }

    pub fn unpin(&mut self) {
        self.pinned = 0;
    }

    /// Queues a control frame, which may exceed `cap` by [`CONTROL_SLACK`].
    pub fn push_control(&mut self, frame: SharedFrame, cap: usize) -> Result<(), Full> {
        self.push(frame, cap + CONTROL_SLACK)
    }

    /// Fills `iov` with the unsent bytes, front first, and returns how many slices it
    /// used. Cost: O(slices), no copying.
    pub fn iovecs<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (i, frame) in self.queued().enumerate().take(iov.len()) {
            let skip = if i == 0 { self.sent as usize } else { 0 };
            iov[i] = IoSlice::new(&frame.as_bytes()[skip..]);
            n += 1;
        }
        n
    }

    /// Records that `n` more bytes went out: drops finished frames (releasing their share
    /// of a broadcast) and remembers where the front one stands.
    pub fn advance(&mut self, mut n: usize) {
        self.bytes = self.bytes.saturating_sub(n as u32);
        self.bytes_before_turn = self.bytes_before_turn.min(self.bytes);
        while let Some(slot) = self.frames.get_mut(usize::from(self.head)) {
            let left = slot.as_ref().map_or(0, |f| f.len()) - self.sent as usize;
            if n < left {
                self.sent += n as u32;
                return;
            }
            n -= left;
            self.sent = 0;
            *slot = None;
            self.head += 1;
            self.pinned = self.pinned.saturating_sub(1);
            self.before_turn = self.before_turn.saturating_sub(1);
        }
        // Drained: give the storage back so an idle connection owns none.
        self.frames = ThinVec::new();
        self.head = 0;
    }

    /// Drops everything queued that no send is using (the connection is going away).
    pub fn clear(&mut self) {
        if self.pinned == 0 {
            self.frames = ThinVec::new();
            self.head = 0;
            self.sent = 0;
        } else {
            self.frames
                .truncate(usize::from(self.head) + usize::from(self.pinned));
        }
        self.bytes = self.queued().map(|f| f.len() as u32).sum::<u32>() - self.sent;
        self.before_turn = 0;
        self.bytes_before_turn = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::OpCode;

    fn frame(payload: &[u8]) -> SharedFrame {
        SharedFrame::new(OpCode::Binary, payload)
    }

    fn pending(ring: &OutRing) -> Vec<Vec<u8>> {
        let mut iov = [IoSlice::new(&[]); 8];
        let n = ring.iovecs(&mut iov);
        iov[..n].iter().map(|s| s.to_vec()).collect()
    }

    #[test]
    fn partial_sends_resume_at_the_right_offset() {
        let mut ring = OutRing::default();
        ring.push(frame(b"abc"), 4).unwrap(); // 5 bytes framed
        ring.push(frame(b"defgh"), 4).unwrap(); // 7 bytes framed
        assert_eq!(pending(&ring).len(), 2);
        ring.advance(3);
        let p = pending(&ring);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0], b"bc");
        ring.advance(2 + 4);
        assert_eq!(ring.len(), 1);
        assert_eq!(pending(&ring)[0], b"fgh");
        ring.advance(3);
        assert!(ring.is_empty());
        assert_eq!(ring.frames.capacity(), 0, "storage released when drained");
    }

    #[test]
    fn sent_slots_are_reused_before_the_storage_grows() {
        let mut ring = OutRing::default();
        for i in 0..4u8 {
            ring.push(frame(&[i]), 8).unwrap();
        }
        let cap = ring.frames.capacity();
        ring.advance(3 * 2);
        for i in 4..6u8 {
            ring.push(frame(&[i]), 8).unwrap();
        }
        assert_eq!(ring.frames.capacity(), cap, "compacted, not grown");
        let left: Vec<u8> = pending(&ring).iter().map(|f| f[2]).collect();
        assert_eq!(left, [2, 3, 4, 5]);
        assert_eq!(ring.bytes(), 4 * 3);
    }

    #[test]
    fn deliveries_count_against_the_ring_only_once_a_turn_has_passed() {
        let mut ring = OutRing::default();
        for _ in 0..8 {
            ring.push_delivery(frame(b"d"), 2, 1 << 20, 1).unwrap();
        }
        assert_eq!(
            ring.push_delivery(frame(b"d"), 2, 1 << 20, 1),
            Err(Full),
            "4 x cap in one turn"
        );
        assert_eq!(
            ring.push_delivery(frame(b"d"), 2, 1 << 20, 2),
            Err(Full),
            "a whole ring left over"
        );
        ring.advance(3 * 7);
        assert_eq!(ring.bytes(), 3);
        ring.push_delivery(frame(b"d"), 2, 1 << 20, 3).unwrap();
    }

    #[test]
    fn leftover_bytes_count_too() {
        let mut ring = OutRing::default();
        ring.push_delivery(frame(&[0; 100]), 32, 150, 1).unwrap();
        ring.push_delivery(frame(&[0; 100]), 32, 150, 1).unwrap();
        assert_eq!(ring.bytes(), 204);
        assert_eq!(
            ring.push_delivery(frame(b"x"), 32, 150, 2),
            Err(Full),
            "204 bytes left over"
        );
        ring.advance(102);
        ring.push_delivery(frame(b"x"), 32, 150, 3).unwrap();
    }

    #[test]
    fn drop_oldest_skips_control_partly_sent_and_pinned_frames() {
        let mut ring = OutRing::default();
        ring.push(frame(b"a"), 8).unwrap();
        ring.push_control(SharedFrame::new(OpCode::Pong, b""), 8)
            .unwrap();
        ring.push(frame(b"b"), 8).unwrap();
        ring.push(frame(b"c"), 8).unwrap();
        ring.pin(1);
        assert!(ring.drop_oldest_data());
        let left: Vec<_> = pending(&ring).into_iter().map(|f| f[f.len() - 1]).collect();
        assert_eq!(
            left,
            vec![b'a', 0, b'c'],
            "a is pinned, the pong is control: b goes"
        );
        ring.unpin();
        ring.advance(1);
        assert!(ring.drop_oldest_data());
        assert_eq!(ring.len(), 2, "a was partly sent and stays; c goes");
    }

    #[test]
    fn capacity_is_enforced_and_control_frames_get_slack() {
        let mut ring = OutRing::default();
        for _ in 0..2 {
            ring.push(frame(b"x"), 2).unwrap();
        }
        assert_eq!(ring.push(frame(b"x"), 2), Err(Full));
        for _ in 0..CONTROL_SLACK {
            ring.push_control(frame(b"p"), 2).unwrap();
        }
        assert_eq!(ring.push_control(frame(b"p"), 2), Err(Full));
    }
}
