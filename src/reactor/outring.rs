//! A connection's bounded queue of frames waiting to be sent.
//!
//! Entries are [`SharedFrame`]s: a broadcast puts the same bytes in every member's ring, a
//! reply puts its own. The ring holds at most `cap` data frames; control frames (pong,
//! close) may go past that by [`CONTROL_SLACK`] so they always get out. Storage is
//! allocated on the first push and released when the ring drains, so an idle connection
//! holds no heap memory for it.

use std::collections::VecDeque;
use std::io::IoSlice;

use crate::protocol::SharedFrame;

/// How far past its capacity control frames may take a ring.
pub const CONTROL_SLACK: usize = 4;

#[derive(Debug, Default)]
pub struct OutRing {
    frames: VecDeque<SharedFrame>,
    /// Bytes of the front frame already sent.
    sent: u32,
}

/// Why a push was refused.
#[derive(Debug, PartialEq, Eq)]
pub struct Full;

impl OutRing {
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether a data frame would be refused.
    pub fn is_full(&self, cap: usize) -> bool {
        self.frames.len() >= cap
    }

    /// Queues a data frame. Cost: O(1), one refcount increment by the caller's clone.
    pub fn push(&mut self, frame: SharedFrame, cap: usize) -> Result<(), Full> {
        if self.frames.len() >= cap {
            return Err(Full);
        }
        if self.frames.capacity() == 0 {
            self.frames.reserve_exact(cap);
        }
        self.frames.push_back(frame);
        Ok(())
    }

    /// Queues a control frame, which may exceed `cap` by [`CONTROL_SLACK`].
    pub fn push_control(&mut self, frame: SharedFrame, cap: usize) -> Result<(), Full> {
        self.push(frame, cap + CONTROL_SLACK)
    }

    /// Fills `iov` with the unsent bytes, front first, and returns how many slices it
    /// used. Cost: O(slices), no copying.
    pub fn iovecs<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (i, frame) in self.frames.iter().enumerate().take(iov.len()) {
            let skip = if i == 0 { self.sent as usize } else { 0 };
            iov[i] = IoSlice::new(&frame.as_bytes()[skip..]);
            n += 1;
        }
        n
    }

    /// Records that `n` more bytes went out: drops finished frames (releasing their share
    /// of a broadcast) and remembers where the front one stands.
    pub fn advance(&mut self, mut n: usize) {
        while let Some(front) = self.frames.front() {
            let left = front.len() - self.sent as usize;
            if n < left {
                self.sent += n as u32;
                return;
            }
            n -= left;
            self.sent = 0;
            self.frames.pop_front();
        }
        // Drained: give the storage back so an idle connection owns none.
        self.frames = VecDeque::new();
    }

    /// Drops everything queued (the connection is going away).
    pub fn clear(&mut self) {
        self.frames = VecDeque::new();
        self.sent = 0;
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
