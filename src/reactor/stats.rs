//! Per-shard figures other threads may read (`/stats`, `/metrics`). Each shard counts in
//! plain integers and copies them to its own cache line once per loop turn, with relaxed
//! stores: nothing contended on the hot path.
//!
//! Two tables per shard: the reactor's own ([`Transport`]: sockets, bytes, TLS, the mesh,
//! sends) and the service's ([`Service::Figures`](super::Service::Figures), declared with
//! [`figures!`]), each with its metadata. Both are published here the same way and read
//! as one.

use std::sync::atomic::{AtomicU64, Ordering};

/// How a figure is exposed to Prometheus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// One figure's Prometheus family, label and help text.
#[derive(Clone, Copy, Debug)]
pub struct Meta {
    pub field: &'static str,
    pub family: &'static str,
    /// `key="value"` or empty.
    pub label: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

/// A table of figures a shard counts: plain integers, with one [`Meta`] per field.
pub trait Figures: Default + 'static {
    /// Every figure's metadata, in declaration order (families are contiguous).
    const META: &'static [Meta];
    /// Copies the figures into `slots` (one per [`Figures::META`] entry), relaxed.
    fn publish(&self, slots: &[AtomicU64]);
}

/// No figures (a service that counts nothing of its own).
impl Figures for () {
    const META: &'static [Meta] = &[];
    fn publish(&self, _: &[AtomicU64]) {}
}

/// Declares a [`Figures`] table: `name: Counter|Gauge "family" "label" "help",` per field.
macro_rules! figures {
    ($(#[$doc:meta])* $table:ident { $($name:ident: $kind:ident $family:literal $label:literal $help:literal,)* }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $table { $(pub $name: u64,)* }

        impl $crate::reactor::stats::Figures for $table {
            const META: &'static [$crate::reactor::stats::Meta] = &[$($crate::reactor::stats::Meta {
                field: stringify!($name),
                family: $family,
                label: $label,
                kind: $crate::reactor::stats::Kind::$kind,
                help: $help,
            },)*];

            fn publish(&self, slots: &[std::sync::atomic::AtomicU64]) {
                let mut slots = slots.iter();
                $(if let Some(s) = slots.next() {
                    s.store(self.$name, std::sync::atomic::Ordering::Relaxed);
                })*
            }
        }
    };
}
pub(crate) use figures;

figures!(
    /// The reactor's figures of one shard.
    Transport {
        connections: Gauge "roomcast_connections" "" "Sockets open on the shard, in any phase.",
        fixed_files: Gauge "roomcast_fixed_files_limit" "" "Size of the shard's io_uring fixed-file table (0 on epoll).",
        accepted: Counter "roomcast_accepted_total" "" "Sockets accepted.",
        closed: Counter "roomcast_sockets_closed_total" "" "Sockets closed, for any reason.",
        handshake_timeouts: Counter "roomcast_handshake_timeouts_total" "" "Sockets closed for not finishing the handshake (or first-message auth) in time.",
        bytes_in: Counter "roomcast_bytes_in_total" "" "Bytes received from clients.",
        bytes_out: Counter "roomcast_bytes_out_total" "" "Bytes sent to clients.",
        tls_handshakes: Counter "roomcast_tls_handshakes_total" "outcome=\"ok\"" "TLS handshakes, by outcome (failed: refused by rustls, plain HTTP on the TLS port, keys not taken over).",
        tls_failed: Counter "roomcast_tls_handshakes_total" "outcome=\"failed\"" "",
        pong_timeouts: Counter "roomcast_pong_timeouts_total" "" "Connections dropped for silence after a ping.",
        mesh_backlog: Gauge "roomcast_mesh_backlog" "" "Messages waiting for room in the shard's outgoing SPSC queues.",
        mesh_dropped: Counter "roomcast_mesh_dropped_total" "" "Deliveries dropped because the mesh backlog was full.",
        sends_deferred: Counter "roomcast_sends_deferred_total" "" "Flushes that could not send everything queued before the loop slept: an earlier send still in flight (io_uring) or a full socket (epoll). At a low rate this stays 0: a message leaves in the turn it was published.",
    }
);

/// One shard's published figures: the reactor's, then the service's.
#[repr(align(64))]
struct ShardSlots(Box<[AtomicU64]>);

/// Every shard's figures.
pub struct SharedStats {
    shards: Vec<ShardSlots>,
    /// How many of each shard's slots are the reactor's.
    transport: usize,
    /// The figures, in slot order: the reactor's, then the service's.
    meta: Vec<Meta>,
    /// The settings that shape capacity (shards, receive pool, heartbeat), as a JSON
    /// object for `/stats`: `roomcast-bench calibrate` reads them.
    pub config: String,
}

impl std::fmt::Debug for SharedStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_json())
    }
}

impl SharedStats {
    /// Slots for `n` shards of a service whose figures are `service`.
    pub fn new(n: usize, service: &'static [Meta]) -> SharedStats {
        let transport = Transport::META.len();
        let meta: Vec<Meta> = Transport::META.iter().chain(service).copied().collect();
        for (i, m) in meta.iter().enumerate() {
            assert!(
                meta[..i].iter().all(|o| o.field != m.field),
                "figure {} declared twice",
                m.field
            );
        }
        let slots = meta.len();
        SharedStats {
            shards: (0..n)
                .map(|_| ShardSlots((0..slots).map(|_| AtomicU64::new(0)).collect()))
                .collect(),
            transport,
            meta,
            config: "{}".into(),
        }
    }

    /// Publishes shard `shard`'s figures. Cost: one relaxed store per figure.
    pub fn store(&self, shard: usize, transport: &Transport, service: &impl Figures) {
        let slots = &self.shards[shard].0;
        transport.publish(&slots[..self.transport]);
        service.publish(&slots[self.transport..]);
    }

    /// The figures shown, in order.
    pub fn meta(&self) -> impl Iterator<Item = &Meta> {
        self.meta.iter()
    }

    /// Each shard's values, in [`SharedStats::meta`]'s order.
    pub fn values(&self) -> Vec<Vec<u64>> {
        self.shards
            .iter()
            .map(|s| s.0.iter().map(|v| v.load(Ordering::Relaxed)).collect())
            .collect()
    }

    /// A figure summed over the shards (0 if no table declares it).
    pub fn total(&self, field: &str) -> u64 {
        (0..self.shards.len()).map(|s| self.value(s, field)).sum()
    }

    /// One shard's figure (0 if no table declares it).
    pub fn value(&self, shard: usize, field: &str) -> u64 {
        self.meta
            .iter()
            .position(|m| m.field == field)
            .map_or(0, |i| self.shards[shard].0[i].load(Ordering::Relaxed))
    }

    /// `/stats`: totals and one object per shard.
    pub fn to_json(&self) -> String {
        self.to_json_with("")
    }

    /// `/stats` with more members (`,"name":value…`) before the shards.
    pub fn to_json_with(&self, extra: &str) -> String {
        let per: Vec<String> = self
            .values()
            .iter()
            .map(|values| {
                let parts: Vec<String> = self
                    .meta()
                    .zip(values)
                    .map(|(m, v)| format!("\"{}\":{v}", m.field))
                    .collect();
                format!("{{{}}}", parts.join(","))
            })
            .collect();
        format!(
            "{{\"connections\":{},\"websockets\":{},\"rooms\":{},\"members\":{},\"config\":{}{extra},\"shards\":[{}]}}\n",
            self.total("connections"),
            self.total("upgraded_open"),
            self.total("rooms_owned"),
            self.total("members"),
            self.config,
            per.join(",")
        )
    }
}
