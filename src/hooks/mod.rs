//! The application's backend, asked and told: hooks (connect, join, publish, RPC) and
//! webhooks, on one thread per node beside the shards.
//!
//! A shard never waits on the backend. It hands a [`Call`] over the mesh and goes on; the
//! connection that asked holds its slot and its request (a handshake stays unread in its
//! input, paused) until the [`Decided`] comes back. The thread runs a small async runtime
//! of its own (tokio, one thread) with a pooled HTTP client (`reqwest`: keep-alive,
//! HTTP/1.1, and HTTP/2 where a TLS backend offers it).
//!
//! Built for storms (a deploy reconnects everyone at once):
//! - at most `--hook-max-inflight` calls in flight; the rest wait in order, and one that
//!   waited past `--hook-timeout` is answered [`Verdict::Unavailable`] without a call;
//! - the same question in flight twice is asked once (ten tabs of one user joining one
//!   room: one call), and a backend may answer `"cache_ttl":S` to have it answered here
//!   for S seconds;
//! - a connection's publishes reach the backend one at a time, in the order it sent them.
//!
//! Webhooks ([`webhook`]) batch what happened ([`Happening`]) into signed POSTs, retried
//! until delivered, from a bounded queue whose overflow is counted.
//!
//! The wire format (what the backend receives and answers) is in [`wire`] and the README.

mod calls;
mod messages;
mod occupancy;
mod run;
mod status;
pub mod webhook;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

pub use messages::{Call, Caller, Carrier, Decided, Identity, Kind, Request, Verdict};
pub use status::Status;

/// The hooks' settings (`[hooks]`).
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// `--hook-connect`, `--hook-join`, `--hook-publish`, `--hook-rpc`: each hook is off
    /// unless its URL is set.
    pub connect: Option<String>,
    pub join: Option<String>,
    pub publish: Option<String>,
    pub rpc: Option<String>,
    /// `--hook-forward-headers`, lowercased.
    pub forward_headers: Vec<String>,
    /// `--hook-timeout`: from the shard's ask to the backend's answer, waiting included.
    pub timeout: Duration,
    /// `--hook-max-inflight`: calls in flight at once, per node.
    pub max_inflight: usize,
    /// `--hook-fail-open`: joins and publishes go on when the backend cannot answer.
    pub fail_open: bool,
    /// `--webhook` and its options.
    pub webhook: Option<webhook::Settings>,
}

impl Settings {
    /// The URL calls of `kind` go to (a refresh asks the connect hook).
    pub fn url(&self, kind: Kind) -> Option<&str> {
        match kind {
            Kind::Connect | Kind::Refresh => self.connect.as_deref(),
            Kind::Join => self.join.as_deref(),
            Kind::Publish => self.publish.as_deref(),
            Kind::Rpc => self.rpc.as_deref(),
        }
    }

    /// Whether any hook or the webhooks are on (then the thread runs).
    pub fn any(&self) -> bool {
        Kind::ALL.iter().any(|&k| self.url(k).is_some()) || self.webhook.is_some()
    }
}

/// Something that happened, for the webhooks. Stamped where it happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Happening {
    /// Unix milliseconds.
    pub at_ms: u64,
    /// Its place in the order the shards told them ([`next_order`]).
    pub order: u64,
    pub what: What,
}

static ORDER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The next happening's place. Shards take it as they tell one, so a happening caused by
/// another (a member's `member_joined` by its owner's room-here) comes after it, though
/// they reach this thread over different mesh queues: [`Reorder`] puts them back.
pub fn next_order() -> u64 {
    ORDER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// How long a happening waits for an earlier one still on its way (then goes on without).
pub const REORDER_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

/// The happenings, back in the order they were told in ([`Happening::order`]).
#[derive(Default)]
pub struct Reorder {
    next: u64,
    held: std::collections::BTreeMap<u64, Happening>,
    /// When the oldest held one started waiting.
    since: Option<std::time::Instant>,
}

impl Reorder {
    /// Takes `h`; what is in order now goes to `out`.
    pub fn push(&mut self, h: Happening, now: std::time::Instant, out: &mut Vec<Happening>) {
        if h.order < self.next {
            // Later than [`REORDER_WAIT`]: the others went on without it.
            out.push(h);
            return;
        }
        self.since.get_or_insert(now);
        self.held.insert(h.order, h);
        self.release(now, out);
    }

    /// Moves what is in order (or has waited [`REORDER_WAIT`]) to `out`; returns when to
    /// call again.
    pub fn release(
        &mut self,
        now: std::time::Instant,
        out: &mut Vec<Happening>,
    ) -> Option<std::time::Instant> {
        while let Some((&first, _)) = self.held.first_key_value() {
            let waited = self.since.is_some_and(|s| now >= s + REORDER_WAIT);
            if first != self.next && !waited {
                break;
            }
            if let Some((order, h)) = self.held.pop_first() {
                self.next = order + 1;
                out.push(h);
            }
            self.since = (!self.held.is_empty()).then_some(now);
        }
        self.since.map(|s| s + REORDER_WAIT)
    }
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum What {
    /// The room's first member on this node arrived (`occupied`) or its last one here left.
    /// The thread turns these into `room_occupied` / `room_vacated` for the whole cluster.
    RoomHere { room: Arc<str>, occupied: bool },
    MemberJoined {
        room: Arc<str>,
        user: Option<Arc<str>>,
    },
    MemberLeft {
        room: Arc<str>,
        user: Option<Arc<str>>,
    },
    /// A client's publish got its place in the room's order.
    ClientPublish {
        room: Arc<str>,
        epoch: u32,
        seq: u64,
        data: Arc<str>,
        user: Option<Arc<str>>,
    },
    ConnectionClosed {
        code: u16,
        reason: Arc<str>,
        user: Option<Arc<str>>,
    },
}

/// Unix milliseconds now.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Starts the hooks thread on `mesh`, the endpoint after the shards (and the backplane).
pub fn spawn<M: Carrier>(
    settings: Settings,
    mesh: crate::mesh::Endpoint<M>,
    status: Arc<Status>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("roomcast-hooks".into())
        .spawn(move || {
            let run = std::panic::AssertUnwindSafe(|| run::run(settings, mesh, status));
            if std::panic::catch_unwind(run).is_err() {
                // Every client waiting on a hook would wait for good, and the webhooks
                // stop: better the process ends, loudly, and its supervisor starts it.
                tracing::error!("hooks: the hooks thread panicked; the process exits (70)");
                std::process::exit(70);
            }
        })
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn h(order: u64) -> Happening {
        Happening {
            at_ms: order,
            order,
            what: What::RoomHere {
                room: Arc::from("r"),
                occupied: true,
            },
        }
    }

    #[test]
    fn happenings_come_out_in_the_order_they_were_told() {
        let mut r = Reorder::default();
        let now = Instant::now();
        let mut out = Vec::new();
        // A member's joined (1) overtook its owner's room-here (0) on another queue.
        r.push(h(1), now, &mut out);
        assert!(out.is_empty());
        r.push(h(0), now, &mut out);
        r.push(h(2), now, &mut out);
        let orders: Vec<u64> = out.drain(..).map(|h| h.order).collect();
        assert_eq!(orders, [0, 1, 2]);
        // One that never comes is waited for REORDER_WAIT, then the rest go on.
        r.push(h(4), now, &mut out);
        assert_eq!(r.release(now, &mut out), Some(now + REORDER_WAIT));
        assert!(out.is_empty());
        let later = now + REORDER_WAIT + Duration::from_millis(1);
        assert_eq!(r.release(later, &mut out), None);
        assert_eq!(out.drain(..).map(|h| h.order).collect::<Vec<_>>(), [4]);
        // The straggler, when it comes, is not held.
        r.push(h(3), later, &mut out);
        assert_eq!(out.len(), 1);
    }
}
