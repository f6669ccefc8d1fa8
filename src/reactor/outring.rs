//! A connection's bounded queue of frames waiting to be sent.
//!
//! Entries are [`SharedFrame`]s: a broadcast puts the same bytes in every member's ring, a
//! reply puts its own. The ring holds at most `cap` data frames; control frames (pong,
//! close) may go past that by [`CONTROL_SLACK`] so they always get out. Each entry carries
//! the service's [`Tag`], a small `Copy` value that says what the frame is (a room's
//! delivery and its seqs, say): a slow-consumer policy decides on tags and never reads
//! the bytes again. The ring reads only the tag's [`Kind`]: a policy may drop deliveries,
//! may take notices back to merge them into a newer one, and never touches anything else.
//! Storage is allocated on the first push and released when the ring drains, so an idle
//! connection holds no heap memory for it (the tags live in the heap entries, beside the
//! frames).
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

#[derive(Debug)]
pub struct OutRing<T> {
    /// `frames[head..]` are queued; the slots before `head` were sent and are empty.
    frames: ThinVec<Option<Queued<T>>>,
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

/// What a queued frame is, for the slow-consumer policies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A control frame, a reply, a handshake: never dropped.
    Fixed,
    /// A room's delivery: a policy may drop it.
    Delivery,
    /// A notice about deliveries (what a policy skipped): a policy may take it back to
    /// send a merged one instead.
    Notice,
}

/// What a service marks each queued frame with ([`Service::Tag`](super::Service::Tag)):
/// whatever its slow-consumer policies need to know of a frame without reading it (for
/// roomcast's app: the room and the seqs). The ring reads only its [`Kind`].
pub trait Tag: Copy + std::fmt::Debug {
    /// The tag of a frame queued as [`Kind::Fixed`] (a control frame, a reply).
    const FIXED: Self;

    fn kind(&self) -> Kind;
}

/// A service that needs nothing but the kind tags with it.
impl Tag for Kind {
    const FIXED: Kind = Kind::Fixed;

    fn kind(&self) -> Kind {
        *self
    }
}

#[derive(Debug)]
struct Queued<T> {
    frame: SharedFrame,
    tag: T,
}

impl<T> Default for OutRing<T> {
    fn default() -> OutRing<T> {
        OutRing {
            frames: ThinVec::new(),
            head: 0,
            sent: 0,
            pinned: 0,
            before_turn: 0,
            turn: 0,
            bytes: 0,
            bytes_before_turn: 0,
        }
    }
}

/// Bytes of frame slots a ring allocates on its first push (it grows by doubling from
/// there): four slots when the tag fits in the padding beside the frame's pointer (24
/// bytes a slot), fewer with a larger tag, so that the allocation every ping or reply on
/// an idle connection makes is as small whatever the service tags its frames with.
const INITIAL_BYTES: usize = 96;

/// Why a push was refused.
#[derive(Debug, PartialEq, Eq)]
pub struct Full;

impl<T: Tag> OutRing<T> {
    /// Frame slots a ring allocates on its first push.
    const INITIAL_SLOTS: usize = {
        let slots = INITIAL_BYTES / std::mem::size_of::<Option<Queued<T>>>();
        if slots > 0 {
            slots
        } else {
            1
        }
    };

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
        self.frames[usize::from(self.head)..]
            .iter()
            .flatten()
            .map(|q| &q.frame)
    }

    /// Queues a data frame. Cost: O(1) amortized (a compaction moves the queued frames'
    /// pointers, not their bytes), one refcount increment by the caller's clone.
    pub fn push(&mut self, frame: SharedFrame, cap: usize) -> Result<(), Full> {
        self.push_tagged(frame, T::FIXED, cap)
    }

    /// Queues a frame with its tag (whose kind says whether a policy may drop it), as long
    /// as fewer than `cap` are queued.
    pub fn push_tagged(&mut self, frame: SharedFrame, tag: T, cap: usize) -> Result<(), Full> {
        let len = self.len();
        if len >= cap || len >= usize::from(u16::MAX) {
            return Err(Full);
        }
        if self.frames.capacity() == 0 {
            // Small to start: most pushes onto an empty ring are one frame (a ping, a
            // reply, one delivery) sent and released within the turn; reserving the whole
            // cap made every heartbeat allocate ~0.5 KiB per connection, and at a 10 s
            // ping interval that showed up as +170 B per idle connection.
            self.frames.reserve_exact(Self::INITIAL_SLOTS.min(cap));
        } else if self.frames.len() == self.frames.capacity() && self.head > 0 {
            // Reuse the sent slots at the front before growing.
            self.frames.drain(..usize::from(self.head));
            self.head = 0;
        }
        self.bytes = self.bytes.saturating_add(frame.len() as u32);
        self.frames.push(Some(Queued { frame, tag }));
        Ok(())
    }

    /// Queues a delivery (`tag` of [`Kind::Delivery`]) during loop turn `turn`. Refused
    /// when what is left over from earlier turns already fills `cap` frames or `max_bytes`
    /// bytes, or this turn alone has brought `4 × cap` frames.
    pub fn push_delivery(
        &mut self,
        frame: SharedFrame,
        tag: T,
        cap: usize,
        max_bytes: usize,
        turn: u32,
    ) -> Result<(), Full> {
        self.mark_turn(turn);
        if self.before_turn as usize >= cap || self.bytes_before_turn as usize >= max_bytes {
            return Err(Full);
        }
        debug_assert_eq!(tag.kind(), Kind::Delivery);
        self.push_tagged(frame, tag, cap * 4)
    }

    /// Notes that loop turn `turn` has begun for this ring, if it had not: what is queued
    /// now was queued in earlier turns. Called before every push, so replies queued early
    /// in a turn never count as left over from an earlier one.
    pub fn mark_turn(&mut self, turn: u32) {
        if self.turn != turn {
            self.turn = turn;
            self.before_turn = self.len().min(u16::MAX as usize) as u16;
            self.bytes_before_turn = self.bytes;
        }
    }

    /// Unsent bytes queued.
    pub fn bytes(&self) -> usize {
        self.bytes as usize
    }

    /// The first queued entry a slow-consumer policy may touch: not partly sent, not
    /// pinned by an in-flight send.
    fn first_free(&self) -> usize {
        usize::from(self.head) + usize::from(self.pinned).max(usize::from(self.sent > 0))
    }

    fn forget(&mut self, f: &SharedFrame) {
        self.bytes = self.bytes.saturating_sub(f.len() as u32);
        self.bytes_before_turn = self.bytes_before_turn.min(self.bytes);
        self.before_turn = self.before_turn.saturating_sub(1);
    }

    /// Drops the oldest delivery that no send is using (not a control frame or a reply,
    /// not one partly sent or pinned by an in-flight send) and returns it with its tag.
    /// Cost: O(queued frames) at worst, the tags only.
    pub fn drop_oldest_data(&mut self) -> Option<(SharedFrame, T)> {
        let from = self.first_free().min(self.frames.len());
        let i = self.frames[from..]
            .iter()
            .position(|q| q.as_ref().is_some_and(|q| q.tag.kind() == Kind::Delivery))?;
        let q = self.frames.remove(from + i)?;
        self.forget(&q.frame);
        Some((q.frame, q.tag))
    }

    /// Removes every delivery and notice no send is using for which `doomed` says so,
    /// oldest first. Cost: O(queued frames).
    pub fn remove_data(&mut self, mut doomed: impl FnMut(&SharedFrame, T) -> bool) {
        let from = self.first_free().min(self.frames.len());
        let mut i = from;
        while i < self.frames.len() {
            let hit = self.frames[i]
                .as_ref()
                .is_some_and(|q| q.tag.kind() != Kind::Fixed && doomed(&q.frame, q.tag));
            if hit {
                if let Some(q) = self.frames.remove(i) {
                    self.forget(&q.frame);
                }
            } else {
                i += 1;
            }
        }
    }

    /// The tags of the queued frames, front first.
    pub fn tags(&self) -> impl Iterator<Item = T> + '_ {
        self.frames[usize::from(self.head)..]
            .iter()
            .flatten()
            .map(|q| q.tag)
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
            let left = slot.as_ref().map_or(0, |q| q.frame.len()) - self.sent as usize;
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
        // A frame partly sent stays, or the next bytes on the wire would land in the
        // middle of it.
        let keep = self.first_free() - usize::from(self.head);
        if keep == 0 {
            self.frames = ThinVec::new();
            self.head = 0;
            self.sent = 0;
        } else {
            self.frames.truncate(usize::from(self.head) + keep);
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

    fn pending(ring: &OutRing<Kind>) -> Vec<Vec<u8>> {
        let mut iov = [IoSlice::new(&[]); 8];
        let n = ring.iovecs(&mut iov);
        iov[..n].iter().map(|s| s.to_vec()).collect()
    }

    #[test]
    fn partial_sends_resume_at_the_right_offset() {
        let mut ring = OutRing::<Kind>::default();
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
        let mut ring = OutRing::<Kind>::default();
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
        let mut ring = OutRing::<Kind>::default();
        for _ in 0..8 {
            ring.push_delivery(frame(b"d"), Kind::Delivery, 2, 1 << 20, 1)
                .unwrap();
        }
        assert_eq!(
            ring.push_delivery(frame(b"d"), Kind::Delivery, 2, 1 << 20, 1),
            Err(Full),
            "4 x cap in one turn"
        );
        assert_eq!(
            ring.push_delivery(frame(b"d"), Kind::Delivery, 2, 1 << 20, 2),
            Err(Full),
            "a whole ring left over"
        );
        ring.advance(3 * 7);
        assert_eq!(ring.bytes(), 3);
        ring.push_delivery(frame(b"d"), Kind::Delivery, 2, 1 << 20, 3)
            .unwrap();
    }

    #[test]
    fn leftover_bytes_count_too() {
        let mut ring = OutRing::<Kind>::default();
        ring.push_delivery(frame(&[0; 100]), Kind::Delivery, 32, 150, 1)
            .unwrap();
        ring.push_delivery(frame(&[0; 100]), Kind::Delivery, 32, 150, 1)
            .unwrap();
        assert_eq!(ring.bytes(), 204);
        assert_eq!(
            ring.push_delivery(frame(b"x"), Kind::Delivery, 32, 150, 2),
            Err(Full),
            "204 bytes left over"
        );
        ring.advance(102);
        ring.push_delivery(frame(b"x"), Kind::Delivery, 32, 150, 3)
            .unwrap();
    }

    #[test]
    fn drop_oldest_skips_control_partly_sent_and_pinned_frames() {
        let mut ring = OutRing::<Kind>::default();
        ring.push_delivery(frame(b"a"), Kind::Delivery, 8, 1 << 20, 1)
            .unwrap();
        ring.push_control(SharedFrame::new(OpCode::Pong, b""), 8)
            .unwrap();
        ring.push(frame(b"r"), 8).unwrap();
        ring.push_delivery(frame(b"b"), Kind::Delivery, 8, 1 << 20, 1)
            .unwrap();
        ring.push_delivery(frame(b"c"), Kind::Delivery, 8, 1 << 20, 1)
            .unwrap();
        ring.pin(1);
        let (gone, tag) = ring.drop_oldest_data().unwrap();
        assert_eq!(tag, Kind::Delivery);
        assert_eq!(gone.as_bytes().last(), Some(&b'b'));
        let left: Vec<_> = pending(&ring).into_iter().map(|f| f[f.len() - 1]).collect();
        assert_eq!(
            left,
            vec![b'a', 0, b'r', b'c'],
            "a is pinned, the pong is control, r a reply: b goes"
        );
        ring.unpin();
        ring.advance(1);
        assert!(ring.drop_oldest_data().is_some());
        assert_eq!(ring.len(), 3, "a was partly sent and stays; c goes");
        assert!(
            ring.drop_oldest_data().is_none(),
            "only control and replies left"
        );
    }

    #[test]
    fn remove_data_takes_only_unsent_deliveries() {
        let mut ring = OutRing::<Kind>::default();
        for b in [b"x", b"y", b"x", b"z"] {
            ring.push_delivery(frame(b), Kind::Delivery, 8, 1 << 20, 1)
                .unwrap();
        }
        ring.push(frame(b"x"), 8).unwrap();
        ring.advance(1);
        ring.push_tagged(frame(b"n"), Kind::Notice, 8).unwrap();
        ring.remove_data(|f, kind| f.as_bytes().last() == Some(&b'x') || kind == Kind::Notice);
        let left: Vec<_> = pending(&ring).into_iter().map(|f| f[f.len() - 1]).collect();
        assert_eq!(
            left,
            vec![b'x', b'y', b'z', b'x'],
            "partly sent and the reply stay"
        );
        assert_eq!(ring.bytes(), 2 + 3 * 3);
    }

    #[test]
    fn clearing_keeps_a_frame_partly_sent() {
        let mut ring = OutRing::<Kind>::default();
        for b in [b"a", b"b", b"c"] {
            ring.push(frame(b), 8).unwrap();
        }
        ring.advance(1);
        ring.clear();
        assert_eq!(
            pending(&ring),
            vec![vec![1, b'a']],
            "the rest of a's frame, nothing else"
        );
        assert_eq!(ring.bytes(), 2);
        ring.advance(2);
        ring.clear();
        assert!(ring.is_empty());
    }

    #[test]
    fn a_larger_tag_makes_the_first_allocation_no_larger() {
        #[derive(Clone, Copy, Debug)]
        struct Wide(Kind, [u64; 3]);
        impl Tag for Wide {
            const FIXED: Wide = Wide(Kind::Fixed, [0; 3]);
            fn kind(&self) -> Kind {
                self.0
            }
        }
        assert_eq!(
            size_of::<Option<Queued<Kind>>>(),
            24,
            "the kind fits beside"
        );
        assert_eq!(OutRing::<Kind>::INITIAL_SLOTS, 4);
        let mut wide = OutRing::<Wide>::default();
        wide.push(frame(b"p"), 32).unwrap();
        let bytes = wide.frames.capacity() * size_of::<Option<Queued<Wide>>>();
        assert!(bytes <= INITIAL_BYTES, "{bytes}");
        for _ in 0..8 {
            wide.push_tagged(frame(b"d"), Wide(Kind::Delivery, [1; 3]), 32)
                .unwrap();
        }
        assert_eq!(wide.len(), 9, "and it grows as it must");
        assert_eq!(wide.drop_oldest_data().map(|(_, t)| t.1), Some([1; 3]));
    }

    #[test]
    fn capacity_is_enforced_and_control_frames_get_slack() {
        let mut ring = OutRing::<Kind>::default();
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
