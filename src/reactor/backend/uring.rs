//! The io_uring backend, hand-driven on the `io-uring` crate.
//!
//! - One ring per shard, `SINGLE_ISSUER | DEFER_TASKRUN`: only the shard thread submits, and
//!   completions are run when it asks for them, not by interrupting it.
//! - Multishot accept straight into the ring's fixed-file table (direct descriptors): an
//!   accepted socket never occupies a process fd, so a process holds more sockets than
//!   `RLIMIT_NOFILE` (the table is capped per ring, not per process).
//!   A direct descriptor's peer address cannot be asked for on Linux 6.18 (the
//!   getpeername uring command arrives in 6.19), and a multishot accept writes every
//!   peer into the same buffer. So with `--max-conns-per-ip` set the shard keeps
//!   [`ADDR_ACCEPTS`] single-shot accepts armed instead, each with its own address buffer.
//! - Multishot recv from a provided buffer ring, incrementally consumed
//!   (`IOU_PBUF_RING_INC`) where the kernel has it: an idle connection holds no buffer.
//! - One `sendmsg` per connection per turn with iovecs pointing at the queued shared
//!   frames; the frames stay in the out-ring until the completion says they went out. The
//!   msghdrs and iovec arrays live in one per-shard arena ([`SendArena`]) only until the
//!   submit that hands them to the kernel (`IORING_FEAT_SUBMIT_STABLE`: the kernel copies
//!   them as it consumes the SQE), so a send in flight costs no user memory of its own and
//!   an idle connection has no send state at all.
//!
//! Every operation's `user_data` packs the op kind, the connection's generation and its
//! slab slot ([`UserData`]); a completion whose generation does not match is stale.

use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use io_uring::types::{CancelBuilder, Fixed, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring};

mod accept;
mod arena;
mod bufring;
use accept::AddrSlot;
pub use accept::ADDR_ACCEPTS;
use arena::SendArena;
use bufring::BufRing;

use crate::reactor::conn::flag;
use crate::reactor::shard::{Core, DrainStatus, Next, GEN_MASK};
use crate::reactor::{Service, ShardSetup};

/// What an operation was, in the top four bits of its `user_data`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Op {
    Accept = 1,
    Recv = 2,
    Send = 3,
    Close = 4,
    /// Results nobody waits for: shutdown(SHUT_WR), cancellations.
    Ignore = 5,
    /// One-shot poll on the listener while the fixed-file table is full.
    ListenerPoll = 6,
    /// Multishot poll on the mesh eventfd: another shard has messages for us.
    Wake = 7,
    /// A MSG_RING from another shard: nothing to do but wake up.
    RingWake = 8,
    /// shutdown(SHUT_WR) after a connection's last bytes.
    Shutdown = 9,
}

/// `op << 60 | gen << 32 | slot`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct UserData(u64);

impl UserData {
    /// Completions whose result is not needed.
    const IGNORE: UserData = UserData((Op::Ignore as u64) << 60);
    /// The poll on the mesh eventfd.
    const WAKE: UserData = UserData((Op::Wake as u64) << 60);
    /// Wake-ups between shards' rings.
    const RING_WAKE: UserData = UserData((Op::RingWake as u64) << 60);

    fn new(op: Op, slot: usize, gen: u32) -> UserData {
        UserData((op as u64) << 60 | u64::from(gen & GEN_MASK) << 32 | slot as u64)
    }

    fn op(self) -> u8 {
        (self.0 >> 60) as u8
    }

    fn gen(self) -> u32 {
        (self.0 >> 32) as u32 & GEN_MASK
    }

    fn slot(self) -> usize {
        (self.0 & 0xFFFF_FFFF) as usize
    }
}

const SQ_ENTRIES: u32 = 1024;
const CQ_ENTRIES: u32 = 16 * 1024;
const BUF_GROUP: u16 = 0;
use arena::{ARENA_SENDS, MAX_IOV};

/// Checks that this kernel has everything the backend uses. The error says what is not.
pub fn probe() -> Result<(), String> {
    let ring = build_ring(8)
        .map_err(|e| format!("io_uring_setup with SINGLE_ISSUER|DEFER_TASKRUN: {e}"))?;
    let mut probe = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("probe: {e}"))?;
    for (code, name) in [
        (opcode::AcceptMulti::CODE, "accept"),
        (opcode::RecvMulti::CODE, "recv"),
        (opcode::SendMsg::CODE, "sendmsg"),
        (opcode::Close::CODE, "close"),
        (opcode::Shutdown::CODE, "shutdown"),
        (opcode::AsyncCancel::CODE, "async_cancel"),
        (opcode::MsgRingData::CODE, "msg_ring"),
    ] {
        if !probe.is_supported(code) {
            return Err(format!("opcode {name} not supported"));
        }
    }
    if !ring.params().is_feature_submit_stable() {
        return Err("IORING_FEAT_SUBMIT_STABLE missing (Linux 5.5)".into());
    }
    ring.submitter()
        .register_files_sparse(4)
        .map_err(|e| format!("sparse fixed-file table: {e}"))?;
    let bufs = BufRing::new(&ring, 2, 4096).map_err(|e| format!("provided buffer ring: {e}"))?;
    // Unregistered before it is unmapped: the ring outlives it here. Should that fail,
    // the ring is closed first (which drops the kernel's reference), then the mapping.
    let unregistered = bufs.unregister(&ring);
    drop(ring);
    drop(bufs);
    unregistered.map_err(|e| format!("unregistering the provided buffer ring: {e}"))
}

fn build_ring(entries: u32) -> io::Result<IoUring> {
    IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_cqsize(CQ_ENTRIES.max(entries * 2))
        .build(entries)
}

/// How long a shard's teardown waits for the kernel to finish with what was in flight
/// before it gives up and leaks the memory instead of freeing it under the kernel.
const TEARDOWN_WAIT: Duration = Duration::from_secs(2);

/// A shard's loop. Its teardown ([`Drop`]) does not rely on field order: what the kernel
/// may still write into or read from (the buffer ring, the accepts' address buffers, the
/// frames of sends in flight, in `core`) is freed only once every operation has
/// completed, after an `IORING_ASYNC_CANCEL_ANY` (see [`Uring::quiesce`]).
struct Uring<S: Service> {
    ring: IoUring,
    /// Registered with `ring`: unregistered and unmapped once nothing is in flight.
    bufs: ManuallyDrop<BufRing>,
    /// Address buffers of the single-shot accepts (empty: multishot accept). A boxed
    /// slice, never resized, so the kernel's pointers stay valid.
    addrs: ManuallyDrop<Box<[AddrSlot]>>,
    /// The shard's listeners (the main one, then `--tls-listen`'s) and whether each
    /// speaks TLS; an accept's or a listener poll's generation bits say which.
    listeners: Vec<(socket2::Socket, bool)>,
    core: ManuallyDrop<Core<S>>,
    /// The msghdrs and iovecs of the sends not submitted yet.
    arena: SendArena,
    fixed_files: u32,
    /// The fixed-file table is full: new connections are refused until a slot frees.
    at_limit: bool,
    cqes: Vec<(u64, i32, u32)>,
    expired: Vec<usize>,
    /// Operations pushed whose last completion has not arrived: one per SQE, until its
    /// CQE without `IORING_CQE_F_MORE`. The teardown waits for it to reach 0.
    in_flight: usize,
}

pub fn run<S: Service>(setup: ShardSetup<S>) -> io::Result<()> {
    let ring = build_ring(SQ_ENTRIES)?;
    ring.submitter().register_files_sparse(setup.fixed_files)?;
    let bufs = BufRing::new(&ring, setup.recv_buffers, setup.recv_buffer_size)?;
    tracing::debug!(
        shard = setup.index,
        fixed_files = setup.fixed_files,
        incremental = bufs.incremental(),
        "io_uring shard ready"
    );
    let want_peers = setup.peer_addresses;
    let listeners = setup.listeners;
    let addrs = (0..if want_peers {
        ADDR_ACCEPTS * listeners.len()
    } else {
        0
    })
        .map(|_| AddrSlot {
            // SAFETY: all-zero bytes are a valid sockaddr_storage.
            addr: unsafe { std::mem::zeroed() },
            len: 0,
            armed: false,
        })
        .collect();
    let mut lp = Uring {
        ring,
        bufs: ManuallyDrop::new(bufs),
        addrs: ManuallyDrop::new(addrs),
        listeners,
        core: ManuallyDrop::new(Core::new(setup.service, setup.core)),
        arena: SendArena::new(),
        fixed_files: setup.fixed_files,
        at_limit: false,
        cqes: Vec::with_capacity(1024),
        expired: Vec::new(),
        in_flight: 0,
    };
    lp.core.fixed_files = u64::from(lp.fixed_files);
    lp.core.pin_sends = true;
    lp.core.reserve_slots(lp.fixed_files as usize);
    lp.arm_accept();
    lp.arm_wake();
    let ring_fd = lp.ring.as_raw_fd();
    lp.core.mesh().use_ring(ring_fd);
    let mut wakes = Vec::new();
    loop {
        lp.flush();
        lp.core.mesh().flush();
        lp.core.mesh().take_ring_wakes(&mut wakes);
        for fd in wakes.drain(..) {
            lp.ring_wake(fd);
        }
        lp.wait()?;
        lp.core.mesh().awake();
        lp.core.begin_turn(Instant::now());
        lp.complete();
        lp.core.end_turn();
        for (slot, next) in lp.core.take_actions() {
            lp.apply(slot, next);
        }
        if lp.expire() == DrainStatus::Done {
            tracing::info!(shard = lp.core.index(), "drained");
            return Ok(());
        }
    }
}

impl<S: Service> Uring<S> {
    /// Queues an SQE, submitting first if the queue is full. Cost: usually a memcpy of 64
    /// bytes; one io_uring_enter when the queue fills.
    fn push(&mut self, entry: squeue::Entry) {
        loop {
            // SAFETY: every entry's pointers (msghdr, iovecs) stay valid until a submit
            // consumes it: the arena is reset only once the queue is empty (SUBMIT_STABLE).
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                self.in_flight += 1;
                return;
            }
            if let Err(e) = self.ring.submit() {
                tracing::warn!(error = %e, "io_uring submit failed while the queue was full");
            }
        }
    }

    /// Wakes the shard whose ring is `fd`: a CQE appears on its ring. Submitted with our
    /// next io_uring_enter; no syscall of its own.
    fn ring_wake(&mut self, fd: i32) {
        let target = io_uring::types::Fd(fd);
        let entry = opcode::MsgRingData::new(target, 0, UserData::RING_WAKE.0, None)
            .build()
            .user_data(UserData::IGNORE.0);
        self.push(entry);
    }

    fn arm_wake(&mut self) {
        let fd = io_uring::types::Fd(self.core.mesh().wake_fd());
        let entry = opcode::PollAdd::new(fd, libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(UserData::WAKE.0);
        self.push(entry);
    }

    fn arm_recv(&mut self, slot: usize) {
        let Some(conn) = self.core.conn(slot) else {
            return;
        };
        if conn.has(flag::RECEIVING) || conn.has(flag::DEAD) {
            return;
        }
        conn.set(flag::RECEIVING);
        let ud = UserData::new(Op::Recv, slot, conn.gen);
        let entry = opcode::RecvMulti::new(Fixed(conn.io), BUF_GROUP)
            .build()
            .user_data(ud.0);
        self.push(entry);
    }

    /// Sleeps until at least one completion or the next deadline.
    fn wait(&mut self) -> io::Result<()> {
        let now = Instant::now();
        let timeout = self
            .core
            .next_deadline(now)
            .unwrap_or(Duration::from_secs(3600));
        let want = if self.core.has_flush() || !self.core.mesh().prepare_sleep() {
            0
        } else {
            1
        };
        let ts = Timespec::from(timeout);
        let args = SubmitArgs::new().timespec(&ts);
        let submitted = self.ring.submitter().submit_with_args(want, &args);
        self.arena_consumed();
        match submitted {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn complete(&mut self) {
        let mut cqes = std::mem::take(&mut self.cqes);
        // Drain in rounds: handling completions queues new SQEs, and the completion queue
        // may hold more than one round.
        loop {
            cqes.clear();
            cqes.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            if cqes.is_empty() {
                break;
            }
            self.reaped(&cqes);
            for &(ud, res, flags) in &cqes {
                self.on_cqe(UserData(ud), res, flags);
            }
            self.bufs.publish();
        }
        self.cqes = cqes;
    }

    fn on_cqe(&mut self, ud: UserData, res: i32, flags: u32) {
        match ud.op() {
            x if x == Op::Accept as u8 => self.on_accept(ud, res, flags),
            x if x == Op::Recv as u8 => self.on_recv(ud, res, flags),
            x if x == Op::Send as u8 => self.on_send(ud, res),
            x if x == Op::Close as u8 => self.on_closed(ud),
            x if x == Op::Shutdown as u8 => self.on_shutdown(ud),
            x if x == Op::ListenerPoll as u8 => self.on_listener_ready(ud.gen() as usize),
            x if x == Op::Wake as u8 => {
                self.core.mesh().consume_wake();
                if !cqueue::more(flags) {
                    self.arm_wake();
                }
            }
            _ => {}
        }
    }

    fn on_recv(&mut self, ud: UserData, res: i32, flags: u32) {
        let slot = ud.slot();
        let more = cqueue::more(flags);
        let bid = cqueue::buffer_select(flags);
        // Whatever happens to the connection, a buffer the kernel handed over goes back.
        let mut recycle = None;
        let next = match (res, bid) {
            (n, Some(bid)) if n > 0 => {
                let piece = self.bufs.take(bid, n as usize, cqueue::buffer_more(flags));
                if piece.done {
                    recycle = Some(bid);
                }
                let alive = self
                    .core
                    .get(slot, ud.gen())
                    .is_some_and(|c| !c.has(flag::DEAD));
                if alive {
                    self.core.receive(slot, self.bufs.bytes(&piece))
                } else {
                    Next::Nothing
                }
            }
            (0, _) => {
                tracing::trace!(slot, "recv: end of stream");
                Next::Close
            }
            (n, _) if n == -libc::ENOBUFS => {
                // Out of provided buffers: the bytes stay in the socket; re-armed below.
                tracing::trace!(slot, "recv: no provided buffer free (ENOBUFS), re-arming");
                Next::Nothing
            }
            (n, _) if n == -libc::ECANCELED || n > 0 => Next::Nothing,
            (n, _) => {
                tracing::debug!(slot, errno = -n, "recv failed");
                Next::Close
            }
        };
        if let Some(bid) = recycle {
            self.bufs.push(bid);
        }
        let Some(conn) = self.core.get(slot, ud.gen()) else {
            return;
        };
        if !more {
            conn.clear(flag::RECEIVING);
        }
        let dead = conn.has(flag::DEAD);
        let paused = conn.has(flag::PAUSED);
        if dead {
            return self.maybe_free(slot);
        }
        self.apply(slot, next);
        // A multishot recv that ended (out of buffers, cancelled for a pause that has since
        // lifted, or the kernel's own reasons) is re-armed; no bytes are lost, they wait in
        // the socket.
        if !more && next != Next::Close && !paused {
            self.arm_recv(slot);
        }
    }

    fn on_send(&mut self, ud: UserData, res: i32) {
        let slot = ud.slot();
        let Some(conn) = self.core.get(slot, ud.gen()) else {
            return;
        };
        conn.clear(flag::SENDING);
        // The kernel is done with the frames it was reading.
        conn.out.unpin();
        if conn.has(flag::DEAD) {
            return self.maybe_free(slot);
        }
        if res < 0 {
            tracing::debug!(slot, errno = -res, "send failed: closing");
            return self.close(slot);
        }
        let next = self.core.sent(slot, res as usize);
        self.core.queue_flush(slot);
        self.apply(slot, next);
    }

    fn on_closed(&mut self, ud: UserData) {
        let slot = ud.slot();
        if let Some(conn) = self.core.get(slot, ud.gen()) {
            // The descriptor is gone; what remains is waiting for the last completions.
            conn.io = u32::MAX;
            self.maybe_free(slot);
        }
    }

    /// Frees a dead connection's slot once no operation refers to it any more.
    fn maybe_free(&mut self, slot: usize) {
        let Some(conn) = self.core.conn(slot) else {
            return;
        };
        if conn.io == u32::MAX && !conn.has(flag::SENDING) && !conn.has(flag::RECEIVING) {
            self.core.remove(slot);
            self.slot_freed();
        }
    }

    fn apply(&mut self, slot: usize, next: Next) {
        let Some(conn) = self.core.conn(slot) else {
            return;
        };
        let (io, gen) = (conn.io, conn.gen);
        match next {
            Next::Nothing => {}
            Next::StopReading => {
                if conn.has(flag::RECEIVING) {
                    self.cancel(Op::Recv, slot, gen);
                }
            }
            Next::ResumeReading => self.arm_recv(slot),
            Next::ShutdownWrite => {
                // IORING_OP_SHUTDOWN always runs in io-wq and looks the fixed-file index
                // up when it runs. If the descriptor were closed first, the index could
                // already belong to a new connection, and it would be that connection's
                // write side that got shut. So it is tracked, and close waits for it.
                if let Some(conn) = self.core.conn(slot) {
                    conn.set(flag::SHUTTING);
                }
                let entry = opcode::Shutdown::new(Fixed(io), libc::SHUT_WR)
                    .build()
                    .user_data(UserData::new(Op::Shutdown, slot, gen).0);
                self.push(entry);
                // Linger: read (and drop) what the peer still sends; a recv cancelled
                // for a pause is armed again.
                self.arm_recv(slot);
            }
            Next::Close => self.close(slot),
        }
    }

    /// Cancels the connection's `op` in flight. By user data, which the kernel finds by
    /// hash: a cancel by descriptor scans every armed request of the ring, and with tens
    /// of thousands of idle connections per ring that made each close cost ~0.5 ms.
    fn cancel(&mut self, op: Op, slot: usize, gen: u32) {
        let entry = opcode::AsyncCancel::new(UserData::new(op, slot, gen).0)
            .build()
            .user_data(UserData::IGNORE.0);
        self.push(entry);
    }

    /// Cancels what is in flight on the socket (its recv, its send) and closes its direct
    /// descriptor; the slot is freed when the last completion for it has arrived.
    fn close(&mut self, slot: usize) {
        let Some(conn) = self.core.conn(slot) else {
            return;
        };
        if conn.has(flag::DEAD) {
            return;
        }
        tracing::debug!(
            slot,
            gen = conn.gen,
            flags = conn.flags,
            queued = conn.out.len(),
            "closing"
        );
        conn.set(flag::DEAD);
        let (io, gen) = (conn.io, conn.gen);
        let shutting = conn.has(flag::SHUTTING);
        let in_flight = [
            (Op::Recv, conn.has(flag::RECEIVING)),
            (Op::Send, conn.has(flag::SENDING)),
        ];
        for (op, _) in in_flight.into_iter().filter(|(_, armed)| *armed) {
            self.cancel(op, slot, gen);
        }
        if !shutting {
            self.push_close(slot, io, gen);
        }
        // Otherwise on_shutdown pushes the close once the shutdown is done.
    }

    fn push_close(&mut self, slot: usize, io: u32, gen: u32) {
        let close = opcode::Close::new(Fixed(io))
            .build()
            .user_data(UserData::new(Op::Close, slot, gen).0);
        self.push(close);
    }

    fn on_shutdown(&mut self, ud: UserData) {
        let slot = ud.slot();
        let Some(conn) = self.core.get(slot, ud.gen()) else {
            return;
        };
        conn.clear(flag::SHUTTING);
        if conn.has(flag::DEAD) && conn.io != u32::MAX {
            let (io, gen) = (conn.io, conn.gen);
            self.push_close(slot, io, gen);
        }
    }

    fn expire(&mut self) -> DrainStatus {
        let mut expired = std::mem::take(&mut self.expired);
        let status = self.core.expired(Instant::now(), &mut expired);
        for slot in expired.drain(..) {
            tracing::debug!(
                slot,
                "deadline passed (handshake, close or heartbeat): closing"
            );
            self.close(slot);
        }
        self.expired = expired;
        status
    }

    /// One sendmsg per connection with something queued and no send in flight.
    fn flush(&mut self) {
        if !self.core.has_flush() {
            return;
        }
        let list = self.core.take_flush();
        for &slot in &list {
            self.send(slot);
        }
        self.core.done_flushing(list);
    }

    fn send(&mut self, slot: usize) {
        let Some(conn) = self.core.conn(slot) else {
            return;
        };
        if conn.has(flag::DEAD) || conn.out.is_empty() {
            return;
        }
        if conn.has(flag::SENDING) {
            // Gated on the send in flight: what was queued since goes out once it
            // completes (on_send queues the connection again), in a later turn.
            self.core.cx.stats.sends_deferred += 1;
            return;
        }
        if self.arena.used == ARENA_SENDS && !self.submit_arena() {
            // The kernel did not take every queued SQE: try again next turn.
            self.core.queue_flush(slot);
            return;
        }
        let i = self.arena.used;
        let iovs = &mut self.arena.iovs[i * MAX_IOV..(i + 1) * MAX_IOV];
        let mut slices = [io::IoSlice::new(&[]); MAX_IOV];
        // Pins what the slices point into until the completion.
        let count = self.core.egress(slot, &mut slices);
        if count == 0 {
            return;
        }
        self.arena.used += 1;
        for (dst, src) in iovs.iter_mut().zip(&slices[..count]) {
            *dst = libc::iovec {
                iov_base: src.as_ptr() as *mut libc::c_void,
                iov_len: src.len(),
            };
        }
        let hdr = &mut self.arena.hdrs[i];
        hdr.msg_iov = iovs.as_mut_ptr();
        hdr.msg_iovlen = count;
        let Some(conn) = self.core.conn(slot) else {
            return;
        };
        conn.set(flag::SENDING);
        let ud = UserData::new(Op::Send, slot, conn.gen);
        let entry = opcode::SendMsg::new(Fixed(conn.io), hdr)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build()
            .user_data(ud.0);
        self.push(entry);
        self.core.cx.stats.sends += 1;
    }

    /// Submits what is queued so that the arena can be reused. Returns whether it can (the
    /// kernel consumed every SQE, and with them the arena's msghdrs and iovecs).
    fn submit_arena(&mut self) -> bool {
        if let Err(e) = self.ring.submit() {
            tracing::debug!(error = %e, "io_uring submit (send arena full) failed");
        }
        self.arena_consumed()
    }

    /// After a submit: if the kernel consumed every SQE, the arena is free again.
    fn arena_consumed(&mut self) -> bool {
        if self.ring.submission().is_empty() {
            self.arena.used = 0;
        }
        self.arena.used < ARENA_SENDS
    }
}

/// How many of `cqes` end their operation: those without `IORING_CQE_F_MORE`, except the
/// wake-ups other shards post into this ring (MSG_RING), which no SQE of ours asked for.
/// Cost: one pass over the batch, no syscall.
fn finished(cqes: &[(u64, i32, u32)]) -> usize {
    cqes.iter()
        .filter(|&&(ud, _, flags)| ud != UserData::RING_WAKE.0 && !cqueue::more(flags))
        .count()
}

impl<S: Service> Uring<S> {
    /// Counts the operations `cqes` ended. An undercount would free memory under the
    /// kernel at teardown; an overcount only makes it wait and leak, so a count that
    /// would go below zero wraps in release builds (and fails tests in debug ones).
    fn reaped(&mut self, cqes: &[(u64, i32, u32)]) {
        let done = finished(cqes);
        debug_assert!(
            done <= self.in_flight,
            "{done} completions for {}",
            self.in_flight
        );
        self.in_flight = self.in_flight.wrapping_sub(done);
    }

    /// Cancels everything in flight with one `IORING_ASYNC_CANCEL_ANY` and reaps
    /// completions, without handling them, until every operation has ended or
    /// [`TEARDOWN_WAIT`] has passed, as monoio's driver does before it frees an op's
    /// buffers. Operations the cancel cannot stop (already running in io-wq: a close, a
    /// shutdown) end on their own. Returns whether none is left.
    fn quiesce(&mut self) -> bool {
        if self.in_flight == 0 {
            return true;
        }
        let cancel = opcode::AsyncCancel2::new(CancelBuilder::any())
            .build()
            .user_data(UserData::IGNORE.0);
        self.push(cancel);
        let deadline = Instant::now() + TEARDOWN_WAIT;
        let mut cqes = std::mem::take(&mut self.cqes);
        while self.in_flight > 0 {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            let ts = Timespec::from(left);
            let args = SubmitArgs::new().timespec(&ts);
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                    ) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "io_uring wait at teardown failed");
                    break;
                }
            }
            cqes.clear();
            cqes.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            self.reaped(&cqes);
        }
        self.in_flight == 0
    }
}

impl<S: Service> Drop for Uring<S> {
    /// Frees what the kernel may touch only once it no longer can: cancel and reap
    /// first, then free the connections (whose queued frames sends read from) and the
    /// accepts' address buffers, then unregister the buffer ring and unmap it; the ring
    /// itself is closed last (its field drop). If operations are still in flight
    /// after [`TEARDOWN_WAIT`], those are leaked instead: the shard is ending, and a
    /// leak is better than a kernel write into memory that has been reused.
    fn drop(&mut self) {
        if !self.quiesce() {
            tracing::error!(
                in_flight = self.in_flight,
                "io_uring operations still in flight at teardown: leaking their memory"
            );
            return;
        }
        // SAFETY: no operation is in flight (quiesce), so the kernel holds no pointer into
        // these. Each is dropped exactly once, here, and never used again: this is the
        // loop's drop.
        unsafe {
            ManuallyDrop::drop(&mut self.core);
            ManuallyDrop::drop(&mut self.addrs);
        }
        match self.bufs.unregister(&self.ring) {
            // SAFETY: unregistered, and no recv in flight: the kernel no longer knows the
            // ring or its buffers. Dropped once, here, as above.
            Ok(()) => unsafe { ManuallyDrop::drop(&mut self.bufs) },
            // Still registered: left mapped (a leak at shard exit), never unmapped under
            // the kernel.
            Err(e) => tracing::warn!(error = %e, "unregistering the provided buffer ring"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_round_trips_and_reserved_values_are_distinct() {
        let ud = UserData::new(Op::Send, 123_456, GEN_MASK);
        assert_eq!(
            (ud.op(), ud.slot(), ud.gen()),
            (Op::Send as u8, 123_456, GEN_MASK)
        );
        let reserved = [
            UserData::new(Op::Accept, 0, 1),
            UserData::new(Op::ListenerPoll, 0, 1),
            UserData::IGNORE,
            UserData::WAKE,
            UserData::RING_WAKE,
        ];
        for (i, a) in reserved.iter().enumerate() {
            for b in &reserved[i + 1..] {
                assert_ne!(a.op(), b.op());
            }
            assert_ne!(a.op(), Op::Recv as u8);
        }
    }

    #[test]
    fn an_operation_ends_at_its_last_completion_and_wake_ups_from_other_shards_end_none() {
        let more = 1 << 1; // IORING_CQE_F_MORE
        assert!(cqueue::more(more));
        let recv = UserData::new(Op::Recv, 7, 1).0;
        let accept = UserData::new(Op::Accept, 0, 1).0;
        let cqes = [
            (recv, 100, more),             // multishot recv, still armed
            (recv, 0, 0),                  // its last completion
            (accept, 5, more),             // multishot accept, still armed
            (UserData::IGNORE.0, 0, 0),    // a cancel or a shutdown
            (UserData::RING_WAKE.0, 0, 0), // another shard's MSG_RING: not ours
            (UserData::new(Op::Send, 3, 1).0, 64, 0),
        ];
        assert_eq!(finished(&cqes), 3);
        assert_eq!(finished(&[]), 0);
    }
}
