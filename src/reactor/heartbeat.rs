//! Heartbeats on a hashed timer wheel whose entries are implicit.
//!
//! The wheel has one bucket per second of the ping interval, and a connection's bucket is
//! its slab slot modulo the interval: phases are spread by slot, so a million pings never
//! go out in the same second, and no connection stores a timer (0 bytes each, not one
//! kernel timer each). Every 1 s tick visits two buckets:
//!
//! - the ping bucket: every connection in it marked for heartbeats is ticked (the service
//!   queues a ping, one frame shared by the whole shard, or a comment line) and, when the
//!   service says so, marked as awaiting a sign of life;
//! - the bucket pinged `pong_timeout + 1` ticks ago: a connection that has sent nothing
//!   since, not even a pong, is dropped. The extra tick is the wheel's slack: a tick can
//!   run late (a busy loop turn) while the next one runs on time, so a bucket checked only
//!   `pong_timeout` ticks on could have had less than `pong_timeout` to answer. A silent
//!   connection goes between `pong_timeout` and `pong_timeout` + 1 s after its ping.
//!
//! Cost per tick: O(slots / interval), two flag tests each.

use std::time::{Duration, Instant};

use slab::Slab;

use super::conn::{flag, Conn};

const TICK: Duration = Duration::from_secs(1);

pub struct Heartbeat {
    /// Ping interval and pong timeout, in ticks.
    interval: u64,
    pong_timeout: u64,
    tick: u64,
    next: Instant,
}

/// What a tick asks of the shard.
pub trait Beat<A, T> {
    /// `conn` (in `slot`) is due a ping. Returns whether it must answer.
    fn ping(&mut self, slot: usize, conn: &mut Conn<A, T>) -> bool;
    /// `slot` missed its deadline: drop it.
    fn dead(&mut self, slot: usize);
}

impl Heartbeat {
    /// `pong_timeout` must be shorter than `interval` (the config checks it).
    pub fn new(interval: Duration, pong_timeout: Duration, now: Instant) -> Heartbeat {
        Heartbeat {
            interval: interval.as_secs().max(1),
            pong_timeout: pong_timeout.as_secs().max(1),
            tick: 0,
            next: now + TICK,
        }
    }

    /// When the next tick is due.
    pub fn next_tick(&self) -> Instant {
        self.next
    }

    /// Runs the tick due by `now`, if any. A loop that fell behind by more than a tick
    /// does not replay the ticks it missed: it would judge connections whose pongs it had
    /// no chance to read. The missed buckets skip one ping, and a missed check only
    /// postpones that bucket's verdict by one interval.
    pub fn run<A, T>(
        &mut self,
        now: Instant,
        conns: &mut Slab<Conn<A, T>>,
        beat: &mut impl Beat<A, T>,
    ) {
        if self.next > now {
            return;
        }
        self.tick += 1;
        self.next += TICK;
        self.check_pongs(conns, beat);
        self.send_pings(conns, beat);
        if self.next <= now {
            self.next = now + TICK;
        }
    }

    fn bucket(&self, tick: u64) -> usize {
        (tick % self.interval) as usize
    }

    fn slots<A, T>(
        &self,
        bucket: usize,
        conns: &Slab<Conn<A, T>>,
    ) -> std::iter::StepBy<std::ops::Range<usize>> {
        (bucket..conns.capacity()).step_by(self.interval as usize)
    }

    fn send_pings<A, T>(&self, conns: &mut Slab<Conn<A, T>>, beat: &mut impl Beat<A, T>) {
        for slot in self.slots(self.bucket(self.tick), conns) {
            let Some(conn) = conns.get_mut(slot) else {
                continue;
            };
            if !conn.has(flag::HEARTBEAT) || conn.is_closing() {
                continue;
            }
            conn.clear(flag::SEEN);
            if beat.ping(slot, conn) {
                conn.set(flag::AWAIT_PONG);
            }
        }
    }

    fn check_pongs<A, T>(&self, conns: &mut Slab<Conn<A, T>>, beat: &mut impl Beat<A, T>) {
        let Some(pinged_at) = self.tick.checked_sub(self.pong_timeout + 1) else {
            return;
        };
        for slot in self.slots(self.bucket(pinged_at), conns) {
            let Some(conn) = conns.get_mut(slot) else {
                continue;
            };
            if !conn.has(flag::AWAIT_PONG) {
                continue;
            }
            conn.clear(flag::AWAIT_PONG);
            if !conn.has(flag::SEEN) && !conn.is_closing() {
                beat.dead(slot);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reactor::outring::Kind;

    #[derive(Default)]
    struct Log {
        pings: Vec<usize>,
        dead: Vec<usize>,
    }

    impl Beat<(), Kind> for Log {
        fn ping(&mut self, slot: usize, _: &mut Conn<(), Kind>) -> bool {
            self.pings.push(slot);
            true
        }
        fn dead(&mut self, slot: usize) {
            self.dead.push(slot);
        }
    }

    fn open_conns(n: usize) -> Slab<Conn<(), Kind>> {
        let mut conns = Slab::new();
        for i in 0..n {
            let mut c = Conn::new(i as u32, i as u32, ());
            c.set(flag::HEARTBEAT);
            conns.insert(c);
        }
        conns
    }

    #[test]
    fn every_connection_is_pinged_once_per_interval_spread_by_slot() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(Duration::from_secs(10), Duration::from_secs(3), t0);
        let mut conns = open_conns(100);
        let mut per_tick = Vec::new();
        let mut all = Vec::new();
        for s in 1..=10 {
            let mut log = Log::default();
            hb.run(t0 + Duration::from_secs(s), &mut conns, &mut log);
            for slot in &log.pings {
                conns[*slot].set(flag::SEEN); // everyone answers
            }
            per_tick.push(log.pings.len());
            all.extend(log.pings);
            assert!(log.dead.is_empty());
        }
        all.sort_unstable();
        assert_eq!(all, (0..100).collect::<Vec<_>>(), "each once per interval");
        assert!(
            per_tick.iter().all(|&n| n == 10),
            "spread evenly: {per_tick:?}"
        );
    }

    #[test]
    fn silent_connections_are_dropped_after_the_pong_timeout_and_talkers_are_not() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(Duration::from_secs(4), Duration::from_secs(2), t0);
        let mut conns = open_conns(8);
        let mut dead = Vec::new();
        for s in 1..=8 {
            let mut log = Log::default();
            hb.run(t0 + Duration::from_secs(s), &mut conns, &mut log);
            for slot in log.pings {
                if slot % 2 == 0 {
                    conns[slot].set(flag::SEEN); // even slots answer
                }
            }
            for slot in log.dead {
                dead.push((s, slot));
                conns.remove(slot);
            }
        }
        let slots: Vec<usize> = dead.iter().map(|&(_, slot)| slot).collect();
        assert_eq!(slots.len(), 4);
        assert!(slots.iter().all(|s| s % 2 == 1), "{dead:?}");
        // Dropped pong_timeout + 1 ticks after their ping.
        for (s, slot) in dead {
            assert_eq!(
                (s as usize - 3) % 4,
                slot % 4,
                "slot {slot} dropped at tick {s}"
            );
        }
    }

    #[test]
    fn a_ping_sent_by_a_late_tick_gets_its_whole_pong_timeout() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(Duration::from_secs(2), Duration::from_secs(1), t0);
        let mut conns = open_conns(2);
        let mut log = Log::default();
        // Tick 1 runs 0.95 s late and pings bucket 1; tick 2 runs on time, 50 ms later.
        hb.run(t0 + Duration::from_millis(1950), &mut conns, &mut log);
        assert_eq!(log.pings, [1]);
        hb.run(t0 + Duration::from_secs(2), &mut conns, &mut log);
        assert!(log.dead.is_empty(), "judged 50 ms after its ping");
        // Tick 3, 1.05 s after the ping: now it has had its second.
        hb.run(t0 + Duration::from_secs(3), &mut conns, &mut log);
        assert_eq!(log.dead, [1]);
    }

    #[test]
    fn a_stalled_loop_catches_up_without_spinning() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(Duration::from_secs(5), Duration::from_secs(2), t0);
        let mut conns = open_conns(10);
        let mut log = Log::default();
        hb.run(t0 + Duration::from_secs(1000), &mut conns, &mut log);
        assert_eq!(log.pings.len(), 2, "one tick, one bucket");
        assert!(log.dead.is_empty(), "nobody judged on ticks that never ran");
        assert!(hb.next_tick() > t0 + Duration::from_secs(1000));
    }
}
