//! The part of a shard both backends share: the slab of connections, the list of
//! connections to flush this turn, and the deadlines. The backends call in with events
//! and get back what to do at the socket level ([`Next`]).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use slab::Slab;

use super::conn::{flag, Conn, Ctx, Phase};

/// What the backend must do with a connection after an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    Nothing,
    /// Stop reading: the out-ring is full (epoll: skip reads; io_uring: cancel the recv).
    StopReading,
    /// The out-ring drained below its limit: read again, starting with what is buffered.
    ResumeReading,
    /// Everything owed went out; half-close and wait for the peer's EOF (or the linger
    /// deadline) before closing.
    ShutdownWrite,
    /// Close the socket now.
    Close,
}

#[derive(Clone, Copy, Debug)]
struct Deadline {
    at: Instant,
    slot: u32,
    gen: u32,
}

/// Timeouts the shard enforces on every connection.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// From accept to a complete request head (slowloris).
    pub handshake: Duration,
    /// From half-close to the peer's EOF.
    pub linger: Duration,
}

pub struct Core {
    pub conns: Slab<Conn>,
    pub ctx: Ctx,
    flush: Vec<usize>,
    next_gen: u32,
    timeouts: Timeouts,
    // Constant timeouts expire in the order they were set, so a FIFO per kind is a timer:
    // O(1) to add, O(expired) to check.
    handshake_deadlines: VecDeque<Deadline>,
    linger_deadlines: VecDeque<Deadline>,
}

/// Generations are packed into 28 bits of io_uring user data.
pub const GEN_MASK: u32 = (1 << 28) - 1;

impl Core {
    pub fn new(ctx: Ctx, timeouts: Timeouts) -> Core {
        Core {
            conns: Slab::new(),
            ctx,
            flush: Vec::new(),
            next_gen: 0,
            timeouts,
            handshake_deadlines: VecDeque::new(),
            linger_deadlines: VecDeque::new(),
        }
    }

    /// Registers an accepted socket. Returns its slot and generation.
    pub fn insert(&mut self, io: u32, now: Instant) -> (usize, u32) {
        self.next_gen = (self.next_gen + 1) & GEN_MASK;
        let gen = self.next_gen;
        let slot = self.conns.insert(Conn::new(io, gen));
        self.ctx.stats.accepted += 1;
        self.handshake_deadlines.push_back(Deadline {
            at: now + self.timeouts.handshake,
            slot: slot as u32,
            gen,
        });
        (slot, gen)
    }

    /// The connection in `slot` if it is still generation `gen`.
    pub fn get(&mut self, slot: usize, gen: u32) -> Option<&mut Conn> {
        self.conns.get_mut(slot).filter(|c| c.gen == gen)
    }

    /// Bytes arrived for `slot`.
    pub fn receive(&mut self, slot: usize, data: &mut [u8]) -> Next {
        let Some(conn) = self.conns.get_mut(slot) else {
            return Next::Close;
        };
        conn.receive(data, &mut self.ctx);
        self.after_input(slot)
    }

    /// Input held back while paused gets processed now that there is room.
    fn after_input(&mut self, slot: usize) -> Next {
        self.queue_flush(slot);
        let conn = &mut self.conns[slot];
        if conn.phase == Phase::Closing && conn.out.is_empty() && !conn.has(flag::SENDING) {
            Next::Close
        } else if conn.has(flag::PAUSED) {
            Next::StopReading
        } else {
            Next::Nothing
        }
    }

    /// Puts `slot` on this turn's flush list if it has something to send.
    pub fn queue_flush(&mut self, slot: usize) {
        if let Some(conn) = self.conns.get_mut(slot) {
            if !conn.out.is_empty() && !conn.has(flag::QUEUED) {
                conn.set(flag::QUEUED);
                self.flush.push(slot);
            }
        }
    }

    /// Whether anything is waiting to be flushed.
    pub fn has_flush(&self) -> bool {
        !self.flush.is_empty()
    }

    /// Takes this turn's list of connections to flush. Give it back with
    /// [`Core::done_flushing`] so its allocation is reused.
    pub fn take_flush(&mut self) -> Vec<usize> {
        let list = std::mem::take(&mut self.flush);
        for &slot in &list {
            if let Some(conn) = self.conns.get_mut(slot) {
                conn.clear(flag::QUEUED);
            }
        }
        list
    }

    pub fn done_flushing(&mut self, mut list: Vec<usize>) {
        list.clear();
        if self.flush.is_empty() {
            self.flush = list;
        }
    }

    /// `n` bytes of `slot`'s queue went out.
    pub fn sent(&mut self, slot: usize, n: usize, now: Instant) -> Next {
        let Some(conn) = self.conns.get_mut(slot) else {
            return Next::Nothing;
        };
        conn.out.advance(n);
        // What is left waits for the backend: io_uring sends again at once (the kernel
        // waits for room), epoll waits for EPOLLOUT.
        if !conn.out.is_empty()
            && (!conn.has(flag::PAUSED) || conn.out.len() * 2 > self.ctx.out_cap)
        {
            return Next::Nothing;
        }
        if conn.phase == Phase::Closing {
            if conn.out.is_empty() && !conn.has(flag::SHUT_WR) {
                conn.set(flag::SHUT_WR);
                let deadline = Deadline {
                    at: now + self.timeouts.linger,
                    slot: slot as u32,
                    gen: conn.gen,
                };
                self.linger_deadlines.push_back(deadline);
                return Next::ShutdownWrite;
            }
            return Next::Nothing;
        }
        if conn.has(flag::PAUSED) {
            conn.resume(&mut self.ctx);
            return match self.after_input(slot) {
                Next::Nothing => Next::ResumeReading,
                other => other,
            };
        }
        Next::Nothing
    }

    /// Forgets `slot`. The backend has closed its socket and no operation refers to it.
    pub fn remove(&mut self, slot: usize) {
        if self.conns.try_remove(slot).is_some() {
            self.ctx.stats.closed += 1;
        }
    }

    /// Connections whose deadline passed: a handshake not finished in time, or a peer
    /// that never closed after our half-close. Appends their slots to `out`.
    pub fn expired(&mut self, now: Instant, out: &mut Vec<usize>) {
        while let Some(d) = self.handshake_deadlines.front().copied() {
            if d.at > now {
                break;
            }
            self.handshake_deadlines.pop_front();
            if let Some(conn) = self.get(d.slot as usize, d.gen) {
                if conn.phase == Phase::Handshake {
                    out.push(d.slot as usize);
                }
            }
        }
        while let Some(d) = self.linger_deadlines.front().copied() {
            if d.at > now {
                break;
            }
            self.linger_deadlines.pop_front();
            if self.get(d.slot as usize, d.gen).is_some() {
                out.push(d.slot as usize);
            }
        }
    }

    /// How long the loop may sleep before a deadline needs checking.
    pub fn next_deadline(&self, now: Instant) -> Option<Duration> {
        let a = self.handshake_deadlines.front().map(|d| d.at);
        let b = self.linger_deadlines.front().map(|d| d.at);
        let at = match (a, b) {
            (Some(a), Some(b)) => a.min(b),
            (x, y) => x.or(y)?,
        };
        // Round up to whole milliseconds so the loop never wakes just before the deadline.
        Some(at.saturating_duration_since(now) + Duration::from_millis(1))
    }
}
