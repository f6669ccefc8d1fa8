//! Per-shard figures other threads may read (`/stats`, `/metrics`). Each shard counts in
//! plain integers and copies them to its own cache line once per loop turn, with relaxed
//! stores: nothing contended on the hot path.
//!
//! Two tables per shard: the reactor's own ([`TransportFigures`]: sockets, bytes, TLS, the mesh,
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
    /// Hands each figure to `store` with its index in [`Figures::META`].
    fn publish(&self, store: impl FnMut(usize, u64));
}

/// No figures (a service that counts nothing of its own).
impl Figures for () {
    const META: &'static [Meta] = &[];
    fn publish(&self, _: impl FnMut(usize, u64)) {}
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

            fn publish(&self, mut store: impl FnMut(usize, u64)) {
                let mut i = 0;
                $(
                    store(i, self.$name);
                    i += 1;
                )*
                let _ = i;
            }
        }
    };
}
pub(crate) use figures;

figures!(
    /// The reactor's figures of one shard.
    TransportFigures {
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
        sends: Counter "roomcast_sends_total" "" "Sends the kernel took (a writev that wrote, or an io_uring send submitted), each carrying every frame queued for one connection, up to 64. Deliveries per send is what coalescing and --write-delay buy.",
        cpu_micros: Counter "roomcast_shard_cpu_microseconds_total" "" "CPU time the shard's thread has used (user and system; softirq the kernel ran on its CPU outside the thread is not in it), read once a second.",
        sends_deferred: Counter "roomcast_sends_deferred_total" "" "Flushes that could not send everything queued before the loop slept: an earlier send still in flight (io_uring) or a full socket (epoll). At a low rate this stays 0: a message leaves in the turn it was published.",
    }
);

/// Eight figures: a cache line. A shard's figures are whole lines of their own, so no two
/// shards ever write the same line.
#[repr(align(64))]
#[derive(Default)]
struct Line([AtomicU64; 8]);

/// One shard's published figures: the reactor's, then the service's.
struct ShardSlots(Box<[Line]>);

impl ShardSlots {
    fn get(&self, i: usize) -> &AtomicU64 {
        &self.0[i / 8].0[i % 8]
    }
}

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
        let transport = TransportFigures::META.len();
        let meta: Vec<Meta> = TransportFigures::META
            .iter()
            .chain(service)
            .copied()
            .collect();
        for (i, m) in meta.iter().enumerate() {
            assert!(
                meta[..i].iter().all(|o| o.field != m.field),
                "figure {} declared twice",
                m.field
            );
            // `/metrics` writes a family's HELP and TYPE where it starts: it must not
            // start twice.
            let starts = i == 0 || meta[i - 1].family != m.family;
            assert!(
                !starts || meta[..i].iter().all(|o| o.family != m.family),
                "family {} is split",
                m.family
            );
        }
        let lines = meta.len().div_ceil(8);
        SharedStats {
            shards: (0..n)
                .map(|_| ShardSlots((0..lines).map(|_| Line::default()).collect()))
                .collect(),
            transport,
            meta,
            config: "{}".into(),
        }
    }

    /// Publishes shard `shard`'s figures. Cost: one relaxed store per figure.
    pub fn store(&self, shard: usize, transport: &TransportFigures, service: &impl Figures) {
        let slots = &self.shards[shard];
        transport.publish(|i, v| slots.get(i).store(v, Ordering::Relaxed));
        let at = self.transport;
        service.publish(|i, v| slots.get(at + i).store(v, Ordering::Relaxed));
    }

    /// The figures shown, in order.
    pub fn meta(&self) -> impl Iterator<Item = &Meta> {
        self.meta.iter()
    }

    /// Each shard's values, in [`SharedStats::meta`]'s order.
    pub fn values(&self) -> Vec<Vec<u64>> {
        self.shards
            .iter()
            .map(|s| {
                (0..self.meta.len())
                    .map(|i| s.get(i).load(Ordering::Relaxed))
                    .collect()
            })
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
            .map_or(0, |i| self.shards[shard].get(i).load(Ordering::Relaxed))
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

#[cfg(test)]
mod tests {
    use super::*;

    figures!(
        /// A service's figures, for the tests.
        Ours {
            asked: Counter "ours_asked_total" "" "Asked.",
            held: Gauge "ours_held" "" "Held.",
        }
    );

    figures!(
        /// A service that reuses a family of the reactor's further down.
        Split {
            again: Counter "roomcast_accepted_total" "kind=\"again\"" "",
        }
    );

    #[test]
    fn both_tables_are_published_per_shard_and_read_as_one() {
        let s = SharedStats::new(2, Ours::META);
        let t = TransportFigures {
            accepted: 3,
            ..Default::default()
        };
        s.store(1, &t, &Ours { asked: 5, held: 7 });
        assert_eq!((s.value(1, "accepted"), s.value(1, "held")), (3, 7));
        assert_eq!((s.value(0, "held"), s.total("asked")), (0, 5));
        let names: Vec<&str> = s.meta().map(|m| m.field).collect();
        assert_eq!(names.len(), TransportFigures::META.len() + 2);
        assert_eq!(s.values()[1][names.len() - 1], 7);
        assert!(s.to_json().contains("\"held\":7"));
    }

    #[test]
    fn a_shards_figures_start_on_a_cache_line_of_their_own() {
        let s = SharedStats::new(3, Ours::META);
        for shard in &s.shards {
            assert_eq!(shard.get(0) as *const AtomicU64 as usize % 64, 0);
        }
    }

    #[test]
    #[should_panic(expected = "is split")]
    fn a_family_split_over_the_two_tables_is_refused() {
        SharedStats::new(1, Split::META);
    }
}
