//! The provided-buffer ring every multishot recv of a shard picks from, and the
//! page-aligned mappings it lives in.

use std::io;

use io_uring::IoUring;

use super::BUF_GROUP;

/// A provided-buffer ring: `count` buffers of `size` bytes the kernel picks from for
/// every multishot recv of this shard.
pub(super) struct BufRing {
    /// The ring of `io_uring_buf` entries shared with the kernel (page-aligned mmap).
    ring: *mut io_uring::types::BufRingEntry,
    /// Owns the page-aligned mapping `ring` points into. The kernel drops its reference
    /// when the io_uring is torn down, which happens first (Uring's field order).
    _ring_map: Mapping,
    /// The buffers themselves: one mapping, populated up front so the pool is resident
    /// from the start (a fixed per-shard cost, not something that grows with connections).
    pub(super) data: Mapping,
    size: u32,
    mask: u16,
    /// Our copy of the tail: entries published to the kernel.
    tail: u16,
    /// Incremental consumption: the kernel fills a buffer piece by piece across recvs, and
    /// this is where the next piece of each buffer starts.
    pub(super) incremental: bool,
    consumed: Box<[u32]>,
}

impl BufRing {
    pub(super) fn new(ring: &IoUring, count: u16, size: u32) -> io::Result<BufRing> {
        let ring_bytes = count as usize * std::mem::size_of::<io_uring::types::BufRingEntry>();
        let mut ring_map = Mapping::new(ring_bytes)?;
        let addr = ring_map.as_mut().as_mut_ptr();
        let mut br = BufRing {
            ring: addr.cast(),
            _ring_map: ring_map,
            data: Mapping::new(count as usize * size as usize)?,
            size,
            mask: count - 1,
            tail: 0,
            incremental: true,
            consumed: vec![0u32; count as usize].into_boxed_slice(),
        };
        let inc = io_uring::types::IOU_PBUF_RING_INC as u16;
        // SAFETY: the mapping is page-aligned, `count` entries long, and owned by `br`; the
        // ring (torn down before `br`, by Uring's field order) is the only other user.
        let registered = unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(addr as u64, count, BUF_GROUP, inc)
        };
        if registered.is_err() {
            br.incremental = false;
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

    /// Writes buffer `bid` into the next free ring entry (published by [`BufRing::publish`]).
    pub(super) fn push(&mut self, bid: u16) {
        let idx = (self.tail & self.mask) as usize;
        // SAFETY: idx < count, within the mapping; the kernel reads entries only up to the
        // published tail, and this one is past it until publish().
        let entry = unsafe { &mut *self.ring.add(idx) };
        entry.set_addr(self.data.as_mut()[bid as usize * self.size as usize..].as_ptr() as u64);
        entry.set_len(self.size);
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

    /// The bytes a recv completion delivered: `len` bytes of buffer `bid`, starting where
    /// the previous piece of that buffer ended. Returns the range in `data` and whether
    /// the buffer is now finished (and must be recycled once the bytes are handled).
    pub(super) fn take(
        &mut self,
        bid: u16,
        len: usize,
        more: bool,
    ) -> (std::ops::Range<usize>, bool) {
        let base = bid as usize * self.size as usize;
        let start = base + self.consumed[bid as usize] as usize;
        let done = !(self.incremental && more);
        if done {
            self.consumed[bid as usize] = 0;
        } else {
            self.consumed[bid as usize] += len as u32;
        }
        (start..start + len, done)
    }
}

/// An anonymous, populated, page-aligned mapping.
pub(super) struct Mapping {
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

    pub(super) fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `len` bytes, readable and writable, and lives as long as
        // self. The kernel writes only into buffers it was given and not yet returned, and
        // the shard reads only ranges a completion handed back, so the two never overlap.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping was created in new() with this length.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}
