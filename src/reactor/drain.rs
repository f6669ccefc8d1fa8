//! Graceful drain: on SIGTERM or SIGINT the listeners close and every shard says goodbye
//! to its open streams ([`Service::drain`](super::Service::drain): a WebSocket gets 1001),
//! spread evenly over the drain window so that clients do not all reconnect in the same
//! instant. Services read [`Drain::active`] too (`/healthz` answers 503).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The drain state every shard reads once per loop turn (one relaxed load of a value
/// written once).
#[derive(Debug, Default)]
pub struct Drain {
    /// Milliseconds since the process epoch at which the drain began, plus one; 0 while
    /// serving.
    started: AtomicU64,
    /// `--drain-window`.
    pub window: Duration,
}

/// The process epoch drain times are measured from.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Drain {
    pub fn new(window: Duration) -> Drain {
        epoch();
        Drain {
            started: AtomicU64::new(0),
            window,
        }
    }

    /// Starts draining now. Returns false if a drain had already begun.
    pub fn begin(&self) -> bool {
        let ms = epoch().elapsed().as_millis() as u64 + 1;
        self.started
            .compare_exchange(0, ms, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// When the drain began, if it has.
    pub fn started(&self) -> Option<Instant> {
        match self.started.load(Ordering::Acquire) {
            0 => None,
            ms => Some(epoch() + Duration::from_millis(ms - 1)),
        }
    }

    pub fn active(&self) -> bool {
        self.started.load(Ordering::Relaxed) != 0
    }
}

/// One shard's share of a drain: its open connections, each given a moment in the window.
#[derive(Debug)]
pub struct Schedule {
    start: Instant,
    window: Duration,
    /// (slot, generation) in the order they will be closed.
    queue: std::collections::VecDeque<(u32, u32)>,
    total: usize,
    done: usize,
}

impl Schedule {
    pub fn new(start: Instant, window: Duration, conns: Vec<(u32, u32)>) -> Schedule {
        Schedule {
            start,
            window,
            total: conns.len(),
            queue: conns.into(),
            done: 0,
        }
    }

    /// When the next connection is due: the k-th of n at start + window·k/n, so the
    /// shard's closes are spread evenly over the whole window.
    pub fn next_at(&self) -> Option<Instant> {
        if self.queue.is_empty() {
            return None;
        }
        let frac = self.done as f64 / self.total.max(1) as f64;
        Some(self.start + self.window.mul_f64(frac))
    }

    /// The connections due by `now`.
    pub fn due(&mut self, now: Instant, out: &mut Vec<(u32, u32)>) {
        while self.next_at().is_some_and(|at| at <= now) {
            if let Some(c) = self.queue.pop_front() {
                out.push(c);
                self.done += 1;
            }
        }
    }

    pub fn is_done(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closes_are_spread_over_the_window() {
        let start = Instant::now();
        let window = Duration::from_secs(10);
        let mut s = Schedule::new(start, window, (0..100).map(|i| (i, 0)).collect());
        let mut out = Vec::new();
        s.due(start, &mut out);
        assert_eq!(out.len(), 1, "the first one goes at once");
        s.due(start + Duration::from_millis(4_999), &mut out);
        assert_eq!(out.len(), 50);
        s.due(start + window, &mut out);
        assert_eq!(out.len(), 100);
        assert!(s.is_done() && s.next_at().is_none());
    }

    #[test]
    fn begin_happens_once() {
        let d = Drain::new(Duration::from_secs(1));
        assert!(!d.active() && d.started().is_none());
        assert!(d.begin());
        assert!(!d.begin());
        assert!(d.active() && d.started().unwrap() <= Instant::now());
    }
}
