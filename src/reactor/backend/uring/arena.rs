//! Where the sendmsg SQEs of one submit keep their msghdrs and iovecs.

/// Slices per sendmsg.
pub(super) const MAX_IOV: usize = 16;
/// Sends a shard prepares between two submits: past that it submits early. 256 msghdrs and
/// 4,096 iovecs, 78 KiB per shard, touched only as sends need them.
pub(super) const ARENA_SENDS: usize = 256;

/// The msghdrs and iovecs of the sendmsg SQEs pushed since the last submit that consumed
/// every SQE. With `IORING_FEAT_SUBMIT_STABLE` the kernel has copied them once it consumed
/// the SQE, so they are reused from the next submit on; the frames the iovecs point into
/// stay pinned in their out-rings until each send completes. Boxed slices, never resized:
/// the addresses in the pending SQEs stay valid.
pub(super) struct SendArena {
    pub(super) hdrs: Box<[libc::msghdr]>,
    pub(super) iovs: Box<[libc::iovec]>,
    pub(super) used: usize,
}

impl SendArena {
    pub(super) fn new() -> SendArena {
        let iov = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        SendArena {
            // SAFETY: msghdr is a plain C struct; all-zero is a valid value.
            hdrs: (0..ARENA_SENDS)
                .map(|_| unsafe { std::mem::zeroed() })
                .collect(),
            iovs: vec![iov; ARENA_SENDS * MAX_IOV].into_boxed_slice(),
            used: 0,
        }
    }
}
