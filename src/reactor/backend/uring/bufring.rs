//! The provided-buffer ring every multishot recv of a shard picks from, and the
//! page-aligned mappings it lives in.
//!
//! The kernel writes into every buffer it was given and has not handed back, at any time,
//! from another context. So no Rust reference ever covers the pool as a whole: a buffer's
//! address goes to the kernel as an integer, and the shard gets a `&mut [u8]` over exactly
//! the bytes one completion delivered ([`BufRing::bytes`]), which the kernel has finished
//! writing and does not touch again until the buffer is pushed back. With incremental
//! consumption the kernel goes on filling the rest of that same buffer meanwhile; the
//! slice stops where its piece does, so the two never overlap.

use std::io;

use io_uring::IoUring;

use super::BUF_GROUP;

/// A provided-buffer ring: `count` buffers of `size` bytes the kernel picks from for
/// every multishot recv of this shard.
pub(super) struct BufRing {
    /// The ring of `io_uring_buf` entries shared with the kernel (page-aligned mmap).
    ring: *mut io_uring::types::BufRingEntry,
    /// Owns the page-aligned mapping `ring` points into. Registered with the io_uring
    /// until [`BufRing::unregister`]; unmapped only after that (Uring's teardown).
    _ring_map: Mapping,
    /// The buffers themselves, and how far each has been consumed.
    pool: Pool,
    mask: u16,
    /// Our copy of the tail: entries published to the kernel.
    tail: u16,
}

impl BufRing {
    pub(super) fn new(ring: &IoUring, count: u16, size: u32) -> io::Result<BufRing> {
        let ring_bytes = count as usize * std::mem::size_of::<io_uring::types::BufRingEntry>();
        let ring_map = Mapping::new(ring_bytes)?;
        let addr = ring_map.ptr;
        let mut br = BufRing {
            ring: addr.cast(),
            _ring_map: ring_map,
            pool: Pool::new(count, size, true)?,
            mask: count - 1,
            tail: 0,
        };
        let inc = io_uring::types::IOU_PBUF_RING_INC as u16;
        // SAFETY: the mapping is page-aligned, `count` entries long, and owned by `br`,
        // which stays alive, and mapped, until it is unregistered (BufRing::unregister,
        // called by Uring's teardown and by probe before they drop it).
        let registered = unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(addr as u64, count, BUF_GROUP, inc)
        };
        if registered.is_err() {
            br.pool.incremental = false;
            // SAFETY: as above.
            unsafe {
                ring.submitter()
                    .register_buf_ring_with_flags(addr as u64, count, BUF_GROUP, 0)?
            };
        }
        for bid in 0..count {
            br.push(bid);
        }
        br.publish();
        Ok(br)
    }

    /// Whether the kernel consumes buffers incrementally (`IOU_PBUF_RING_INC`).
    pub(super) fn incremental(&self) -> bool {
        self.pool.incremental
    }

    /// Takes the ring back from the kernel: from here on no recv picks a buffer from it,
    /// and the mappings may go. Call it before dropping a ring that was registered with a
    /// live io_uring.
    pub(super) fn unregister(&self, ring: &IoUring) -> io::Result<()> {
        ring.submitter().unregister_buf_ring(BUF_GROUP)
    }

    /// Writes buffer `bid` into the next free ring entry (published by [`BufRing::publish`]).
    pub(super) fn push(&mut self, bid: u16) {
        let idx = (self.tail & self.mask) as usize;
        // SAFETY: idx < count, within the mapping; the kernel reads entries only up to the
        // published tail, and this one is past it until publish().
        let entry = unsafe { &mut *self.ring.add(idx) };
        entry.set_addr(self.pool.addr(bid));
        entry.set_len(self.pool.size);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes pushed entries visible to the kernel.
    pub(super) fn publish(&mut self) {
        // SAFETY: the tail field overlays entry 0's reserved field (the ring ABI); the
        // mapping is valid. A release store orders the entry writes before the tail.
        unsafe {
            let tail = io_uring::types::BufRingEntry::tail(self.ring)
                as *const std::sync::atomic::AtomicU16;
            (*tail).store(self.tail, std::sync::atomic::Ordering::Release);
        }
    }

    /// The piece a recv completion delivered: `len` bytes of buffer `bid`, starting where
    /// the previous piece of that buffer ended; `more`: the kernel keeps the buffer for
    /// the next recv (`IORING_CQE_F_BUF_MORE`).
    pub(super) fn take(&mut self, bid: u16, len: usize, more: bool) -> Piece {
        self.pool.take(bid, len, more)
    }

    /// The bytes of `piece`, and no others.
    pub(super) fn bytes(&mut self, piece: &Piece) -> &mut [u8] {
        self.pool.bytes(piece)
    }
}

/// What one recv completion delivered: `len` bytes of buffer `bid` from `offset`. Made
/// only by [`Pool::take`], which keeps it inside its buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Piece {
    bid: u16,
    offset: u32,
    len: u32,
    /// The kernel is done with the buffer: push it back once the bytes are handled.
    pub(super) done: bool,
}

/// The buffers of a ring: one populated mapping of `count` buffers of `size` bytes, so the
/// pool is resident from the start (a fixed per-shard cost, not something that grows with
/// connections), and where the next piece of each buffer starts.
struct Pool {
    data: Mapping,
    size: u32,
    /// Incremental consumption: the kernel fills a buffer piece by piece across recvs.
    incremental: bool,
    consumed: Box<[u32]>,
}

impl Pool {
    fn new(count: u16, size: u32, incremental: bool) -> io::Result<Pool> {
        Ok(Pool {
            data: Mapping::new(count as usize * size as usize)?,
            size,
            incremental,
            consumed: vec![0u32; count as usize].into_boxed_slice(),
        })
    }

    /// Buffer `bid`'s address, for the kernel. Cost: arithmetic, no reference made.
    fn addr(&self, bid: u16) -> u64 {
        assert!(
            usize::from(bid) < self.consumed.len(),
            "buffer {bid} out of range"
        );
        let at = usize::from(bid) * self.size as usize;
        self.data.ptr.wrapping_add(at) as u64
    }

    /// See [`BufRing::take`]. A length past the buffer's end (which the kernel never
    /// reports) is cut at the end, so a piece never leaves its buffer.
    fn take(&mut self, bid: u16, len: usize, more: bool) -> Piece {
        let consumed = &mut self.consumed[usize::from(bid)];
        let offset = (*consumed).min(self.size);
        let len = len.min((self.size - offset) as usize) as u32;
        let done = !(self.incremental && more);
        *consumed = if done { 0 } else { offset + len };
        Piece {
            bid,
            offset,
            len,
            done,
        }
    }

    fn bytes(&mut self, piece: &Piece) -> &mut [u8] {
        let at = usize::from(piece.bid) * self.size as usize + piece.offset as usize;
        debug_assert!(at + piece.len as usize <= self.data.len);
        // SAFETY: take() made the piece: bid < count and offset + len <= size, so the
        // range lies inside buffer `bid`, inside the mapping, which lives as long as self.
        // The completion that reported it means the kernel has written these bytes and
        // will not write them again before the buffer is pushed back (after the shard is
        // done with them), and no other reference into the pool exists: the slice
        // borrows the pool mutably for its whole life.
        unsafe { std::slice::from_raw_parts_mut(self.data.ptr.add(at), piece.len as usize) }
    }
}

/// An anonymous, populated, page-aligned mapping. It hands out its address only: who
/// makes references into it says why they hold.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Mapping> {
        // SAFETY: an anonymous private mapping with no address hint; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping was created in new() with this length, and no reference into
        // it outlives its owner (pieces borrow the pool).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: u32 = 4096;

    fn span(pool: &mut Pool, piece: &Piece) -> (usize, usize) {
        let base = pool.data.ptr as usize;
        let bytes = pool.bytes(piece);
        (bytes.as_ptr() as usize - base, bytes.len())
    }

    #[test]
    fn a_piece_is_the_bytes_its_completion_delivered_and_no_more() {
        let mut pool = Pool::new(4, SIZE, true).unwrap();
        let size = SIZE as usize;
        // Buffer 2, filled in three recvs; the kernel keeps it after the first two.
        let a = pool.take(2, 100, true);
        let b = pool.take(2, 50, true);
        let c = pool.take(2, 10, false);
        assert_eq!((a.done, b.done, c.done), (false, false, true));
        assert_eq!(span(&mut pool, &a), (2 * size, 100));
        assert_eq!(span(&mut pool, &b), (2 * size + 100, 50));
        assert_eq!(span(&mut pool, &c), (2 * size + 150, 10));
        // Recycled: the next piece starts at the buffer's start again.
        let d = pool.take(2, 7, true);
        assert_eq!(span(&mut pool, &d), (2 * size, 7));
        // The kernel is given each buffer's start.
        assert_eq!(pool.addr(3) - pool.addr(0), 3 * SIZE as u64);
    }

    #[test]
    fn writes_through_a_piece_stay_in_it() {
        let mut pool = Pool::new(4, SIZE, true).unwrap();
        let first = pool.take(1, 300, true);
        pool.bytes(&first).fill(0xAA);
        let rest = pool.take(1, SIZE as usize, false);
        assert_eq!(rest.len, SIZE - 300, "cut at the buffer's end");
        assert!(pool.bytes(&rest).iter().all(|&b| b == 0));
        for bid in [0, 2, 3] {
            let whole = pool.take(bid, SIZE as usize, false);
            assert!(pool.bytes(&whole).iter().all(|&b| b == 0), "buffer {bid}");
        }
        let again = pool.take(1, SIZE as usize, false);
        let bytes = pool.bytes(&again);
        assert!(bytes[..300].iter().all(|&b| b == 0xAA) && bytes[300..].iter().all(|&b| b == 0));
    }

    #[test]
    fn without_incremental_consumption_every_piece_is_a_whole_buffer_start() {
        let mut pool = Pool::new(2, SIZE, false).unwrap();
        for len in [1, 4096, 99_999] {
            let p = pool.take(1, len, true);
            assert!(p.done);
            assert_eq!(span(&mut pool, &p), (SIZE as usize, len.min(SIZE as usize)));
        }
    }
}
