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
    pub what: What,
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
