//! Shard-to-shard messages: N×(N−1) bounded lock-free SPSC queues (`rtrb`), drained in
//! batches once per loop turn. Generic over the message type (the service's), and the mesh
//! may have endpoints that are not shards (a backplane thread): every endpoint has a queue
//! to and from every other.
//!
//! A full queue never blocks a shard: messages wait in a local backlog per destination,
//! pushed again each turn in order. Past [`BACKLOG_LIMIT`] the backlog drops the messages
//! that say they may be dropped ([`Message::droppable`]: deliveries, publishes), counted;
//! the others (membership, acknowledgements) never are.
//!
//! Wake-ups: a shard about to sleep sets its `sleeping` flag and checks its queues once more;
//! a producer that pushed to it wakes it only if the flag was set. Both sides use SeqCst so
//! that either the producer sees the flag or the consumer sees the message. An io_uring
//! shard publishes its ring's descriptor, and producers on io_uring wake it with
//! `IORING_OP_MSG_RING` from their own ring (batched with their next submit, no extra
//! syscall); otherwise the wake-up is a write to the shard's eventfd.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{fence, AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;

use crate::sys::EventFd;

/// Slots per queue, at most (with few shards).
pub const QUEUE_CAPACITY: usize = 16 * 1024;
/// Queue slots one shard has towards all others together: with many shards each queue
/// gets fewer, so the mesh's memory grows with the shard count, not with its square
/// (64 shards: 4,032 queues of 512 slots instead of 16k).
const SLOTS_PER_SHARD: usize = 16 * 1024;

/// Slots in each queue of a mesh of `shards`: a power of two from 512 to [`QUEUE_CAPACITY`].
pub fn queue_capacity(shards: usize) -> usize {
    (SLOTS_PER_SHARD / shards.saturating_sub(1).max(1))
        .next_power_of_two()
        .clamp(512, QUEUE_CAPACITY)
}
/// Messages per destination waiting outside a full queue before deliveries are dropped.
pub const BACKLOG_LIMIT: usize = 64 * 1024;

/// What the mesh carries.
pub trait Message: Send + 'static {
    /// Whether the message may be dropped when its destination's backlog is full (a
    /// delivery may; a membership change may not).
    fn droppable(&self) -> bool;
}

/// State every shard can see: one cache line per shard.
#[repr(align(64))]
struct Doorbell {
    sleeping: AtomicBool,
    /// Messages dropped for this shard's backlogs (written by its owner only).
    dropped: AtomicU64,
    /// This shard's io_uring descriptor once its ring exists (-1 before, or on epoll).
    ring_fd: AtomicI32,
}

struct Shared {
    bells: Vec<Doorbell>,
    /// One eventfd per endpoint, written to wake it.
    wake: Vec<EventFd>,
}

/// One endpoint of the mesh (a shard's, or another thread's).
pub struct Endpoint<M> {
    me: usize,
    /// How many of the endpoints are shards (numbered first).
    shards: usize,
    out: Vec<Option<rtrb::Producer<M>>>,
    inp: Vec<Option<rtrb::Consumer<M>>>,
    backlog: Vec<VecDeque<M>>,
    /// Messages to ourselves (a room this shard owns), handled in the same drain.
    local: VecDeque<M>,
    /// Destinations pushed to since the last wake check.
    pushed: Vec<bool>,
    /// Ring descriptors of sleeping destinations to wake with MSG_RING (io_uring callers).
    ring_wakes: Vec<RawFd>,
    /// Whether the caller sends MSG_RING wake-ups itself (see [`Endpoint::take_ring_wakes`]).
    ring_waker: bool,
    shared: Arc<Shared>,
    dropped: u64,
    /// Slots in each of this endpoint's queues.
    capacity: usize,
}

/// Builds the mesh for `shards` shards and `others` endpoints that are not shards:
/// element `i` belongs to shard `i`, the others follow.
pub fn build<M: Message>(shards: usize, others: usize) -> io::Result<Vec<Endpoint<M>>> {
    let n = shards + others;
    let wake = (0..n)
        .map(|_| EventFd::new())
        .collect::<io::Result<Vec<_>>>()?;
    let bells = (0..n)
        .map(|_| Doorbell {
            sleeping: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            ring_fd: AtomicI32::new(-1),
        })
        .collect();
    let shared = Arc::new(Shared { bells, wake });
    let mut ends: Vec<Endpoint<M>> = (0..n)
        .map(|me| Endpoint {
            me,
            shards,
            out: (0..n).map(|_| None).collect(),
            inp: (0..n).map(|_| None).collect(),
            backlog: (0..n).map(|_| VecDeque::new()).collect(),
            local: VecDeque::new(),
            pushed: vec![false; n],
            ring_wakes: Vec::new(),
            ring_waker: false,
            shared: shared.clone(),
            dropped: 0,
            capacity: queue_capacity(n),
        })
        .collect();
    for from in 0..n {
        for to in 0..n {
            if from != to {
                let (p, c) = rtrb::RingBuffer::new(queue_capacity(n));
                ends[from].out[to] = Some(p);
                ends[to].inp[from] = Some(c);
            }
        }
    }
    Ok(ends)
}

impl<M: Message> Endpoint<M> {
    /// This endpoint's index (a shard's own index, for a shard).
    pub fn shard(&self) -> usize {
        self.me
    }

    /// How many shards the mesh connects (not counting other endpoints).
    pub fn shards(&self) -> usize {
        self.shards
    }

    /// How many endpoints, shards and others.
    pub fn endpoints(&self) -> usize {
        self.out.len()
    }

    /// The descriptor that becomes readable when another endpoint wakes this one.
    pub fn wake_fd(&self) -> RawFd {
        self.shared.wake[self.me].raw()
    }

    /// [`Endpoint::wake_fd`] as a descriptor of its own (for a poller that must own what
    /// it polls, an async runtime's).
    pub fn wake_fd_owned(&self) -> io::Result<std::os::fd::OwnedFd> {
        self.shared.wake[self.me].try_clone()
    }

    /// Messages dropped because a destination's backlog was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Messages waiting in local backlogs.
    pub fn backlog(&self) -> usize {
        self.backlog.iter().map(VecDeque::len).sum()
    }

    /// An io_uring shard: publishes its ring descriptor so others can MSG_RING it, and
    /// takes over sending MSG_RING wake-ups to other io_uring shards.
    pub fn use_ring(&mut self, ring_fd: RawFd) {
        self.ring_waker = true;
        self.shared.bells[self.me]
            .ring_fd
            .store(ring_fd, Ordering::Release);
    }

    /// Ring descriptors to wake with MSG_RING, collected by [`Endpoint::flush`].
    pub fn take_ring_wakes(&mut self, into: &mut Vec<RawFd>) {
        into.append(&mut self.ring_wakes);
    }

    /// Slots in each of this endpoint's queues.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Messages on their way to `to`: in its queue or in our backlog for it.
    pub fn pressure(&self, to: usize) -> usize {
        let queued = self.out[to]
            .as_ref()
            .map_or(0, |p| self.capacity - p.slots());
        queued + self.backlog[to].len()
    }

    /// The highest pressure towards any shard.
    pub fn max_pressure(&self) -> usize {
        (0..self.out.len())
            .map(|to| self.pressure(to))
            .max()
            .unwrap_or(0)
    }

    /// Sends `msg` to shard `to`. Never blocks. O(1).
    pub fn send(&mut self, to: usize, msg: M) {
        if to == self.me {
            self.local.push_back(msg);
            return;
        }
        let backlog = &mut self.backlog[to];
        if backlog.is_empty() {
            if let Some(p) = self.out[to].as_mut() {
                match p.push(msg) {
                    Ok(()) => {
                        self.pushed[to] = true;
                        return;
                    }
                    Err(rtrb::PushError::Full(m)) => return self.hold(to, m),
                }
            }
            return;
        }
        self.hold(to, msg);
    }

    fn hold(&mut self, to: usize, msg: M) {
        if self.backlog[to].len() >= BACKLOG_LIMIT && msg.droppable() {
            self.dropped += 1;
            self.shared.bells[self.me]
                .dropped
                .store(self.dropped, Ordering::Relaxed);
            return;
        }
        self.backlog[to].push_back(msg);
    }

    /// Moves backlogs into their queues and wakes destinations that are asleep. Call once
    /// per turn, before sleeping. Cost: O(messages moved) + one eventfd write per sleeping
    /// destination that got something.
    pub fn flush(&mut self) {
        for to in 0..self.out.len() {
            let (Some(p), backlog) = (self.out[to].as_mut(), &mut self.backlog[to]) else {
                continue;
            };
            while let Some(msg) = backlog.pop_front() {
                match p.push(msg) {
                    Ok(()) => self.pushed[to] = true,
                    Err(rtrb::PushError::Full(m)) => {
                        backlog.push_front(m);
                        break;
                    }
                }
            }
            if std::mem::take(&mut self.pushed[to]) {
                fence(Ordering::SeqCst);
                let bell = &self.shared.bells[to];
                if bell.sleeping.load(Ordering::SeqCst)
                    && bell.sleeping.swap(false, Ordering::SeqCst)
                {
                    let ring = bell.ring_fd.load(Ordering::Acquire);
                    if self.ring_waker && ring >= 0 {
                        self.ring_wakes.push(ring);
                    } else {
                        self.shared.wake[to].notify();
                    }
                }
            }
        }
    }

    /// Moves every waiting message into `into`: our own first, then each queue in turn,
    /// each in order. Returns how many. Cost: O(messages).
    pub fn receive(&mut self, into: &mut Vec<M>) -> usize {
        let before = into.len();
        self.receive_local(into);
        for c in self.inp.iter_mut().flatten() {
            let n = c.slots();
            into.extend((0..n).filter_map(|_| c.pop().ok()));
        }
        into.len() - before
    }

    /// Moves only the messages this endpoint sent itself into `into`. Returns how many.
    pub fn receive_local(&mut self, into: &mut Vec<M>) -> usize {
        let before = into.len();
        into.extend(self.local.drain(..));
        into.len() - before
    }

    /// Announces that this shard is about to sleep. Returns false if something arrived
    /// meanwhile (then don't sleep). Pair with [`Endpoint::awake`].
    pub fn prepare_sleep(&self) -> bool {
        let bell = &self.shared.bells[self.me];
        bell.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let waiting = !self.local.is_empty() || self.inp.iter().flatten().any(|c| !c.is_empty());
        if waiting {
            bell.sleeping.store(false, Ordering::SeqCst);
        }
        !waiting
    }

    /// Back from sleep: clear the flag and reset the eventfd.
    pub fn awake(&self) {
        self.shared.bells[self.me]
            .sleeping
            .store(false, Ordering::SeqCst);
    }

    /// Resets the eventfd after it became readable.
    pub fn consume_wake(&self) {
        self.shared.wake[self.me].consume();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test message: `Keep` is never dropped, `Drop` may be.
    #[derive(Debug)]
    enum Msg {
        Keep(u64),
        Drop,
    }

    impl Message for Msg {
        fn droppable(&self) -> bool {
            matches!(self, Msg::Drop)
        }
    }

    fn deliver(n: u64) -> Msg {
        Msg::Keep(n)
    }

    #[test]
    fn queues_shrink_as_shards_multiply() {
        assert_eq!(queue_capacity(2), QUEUE_CAPACITY);
        assert_eq!(queue_capacity(3), 8 * 1024);
        assert_eq!(queue_capacity(64), 512);
        assert_eq!(queue_capacity(1024), 512);
    }

    #[test]
    fn messages_arrive_in_order_across_a_full_queue() {
        let mut ends = build::<Msg>(2, 0).unwrap();
        let total = QUEUE_CAPACITY as u64 * 2 + 10;
        for i in 0..total {
            ends[0].send(1, deliver(i));
        }
        assert!(ends[0].backlog() > 0, "the queue filled and the rest waits");
        let mut got = Vec::new();
        while got.len() < total as usize {
            ends[0].flush();
            let mut inbox = Vec::new();
            ends[1].receive(&mut inbox);
            got.extend(inbox.into_iter().filter_map(|m| match m {
                Msg::Keep(id) => Some(id),
                Msg::Drop => None,
            }));
        }
        assert_eq!(got, (0..total).collect::<Vec<_>>());
        assert_eq!(
            ends[0].dropped(),
            0,
            "undroppable messages are never dropped"
        );
    }

    #[test]
    fn deliveries_past_the_backlog_limit_are_dropped_and_counted() {
        let mut ends = build::<Msg>(2, 0).unwrap();
        let total = QUEUE_CAPACITY + BACKLOG_LIMIT + 5;
        for _ in 0..total {
            ends[0].send(1, Msg::Drop);
        }
        assert_eq!(ends[0].dropped(), 5);
        assert_eq!(ends[0].backlog(), BACKLOG_LIMIT);
    }

    #[test]
    fn a_sleeping_shard_is_woken_and_an_awake_one_is_not() {
        let mut ends = build::<Msg>(2, 0).unwrap();
        let readable = |fd: RawFd| crate::sys::readable(fd);
        ends[0].send(1, deliver(1));
        ends[0].flush();
        assert!(
            !readable(ends[1].wake_fd()),
            "awake: no syscall spent on waking"
        );
        ends[1].receive(&mut Vec::new());
        assert!(ends[1].prepare_sleep());
        ends[0].send(1, deliver(2));
        ends[0].flush();
        assert!(readable(ends[1].wake_fd()));
        ends[1].consume_wake();
        ends[1].awake();
        assert!(!readable(ends[1].wake_fd()));
        assert!(
            !ends[1].prepare_sleep(),
            "a message is waiting: don't sleep"
        );
    }

    #[test]
    fn messages_to_self_come_first() {
        let mut ends = build::<Msg>(2, 0).unwrap();
        ends[1].send(0, deliver(2));
        ends[1].flush();
        ends[0].send(0, deliver(1));
        let mut inbox = Vec::new();
        assert_eq!(ends[0].receive(&mut inbox), 2);
        assert!(matches!(inbox[0], Msg::Keep(1)));
    }

    #[test]
    fn an_endpoint_that_is_not_a_shard_sends_and_receives() {
        let mut ends = build::<Msg>(2, 1);
        let ends = ends.as_mut().unwrap();
        assert_eq!((ends[2].shards(), ends[2].endpoints()), (2, 3));
        ends[2].send(1, deliver(7));
        ends[2].flush();
        ends[0].send(2, deliver(8));
        ends[0].flush();
        let mut inbox = Vec::new();
        assert_eq!(ends[1].receive(&mut inbox), 1);
        assert_eq!(ends[2].receive(&mut inbox), 1);
        assert!(matches!(inbox[..], [Msg::Keep(7), Msg::Keep(8)]));
    }
}
