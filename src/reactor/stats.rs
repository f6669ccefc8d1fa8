//! Per-shard figures other threads may read (`/stats`, `/metrics`). Each shard counts in
//! plain integers and copies them to its own cache line once per loop turn, with relaxed
//! stores: nothing contended on the hot path.

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

macro_rules! shard_figures {
    ($($name:ident: $kind:ident $family:literal $label:literal $help:literal,)*) => {
        /// One shard's published figures.
        #[repr(align(64))]
        #[derive(Default)]
        pub struct ShardFigures { $(pub $name: AtomicU64,)* }

        /// A plain copy of one shard's figures; also the shard's own working counters.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct Snapshot { $(pub $name: u64,)* }

        impl ShardFigures {
            pub fn store(&self, s: &Snapshot) {
                $(self.$name.store(s.$name, Ordering::Relaxed);)*
            }

            pub fn load(&self) -> Snapshot {
                Snapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }

        impl Snapshot {
            /// Every figure with its value, in declaration order.
            pub fn values(&self) -> Vec<u64> {
                vec![$(self.$name,)*]
            }
        }

        /// Every figure's metadata, in declaration order (families are contiguous).
        pub const META: &[Meta] = &[$(Meta {
            field: stringify!($name),
            family: $family,
            label: $label,
            kind: Kind::$kind,
            help: $help,
        },)*];
    };
}

shard_figures!(
    connections: Gauge "roomcast_connections" "" "Sockets open on the shard, in any phase.",
    upgraded_open: Gauge "roomcast_websockets" "" "Upgraded WebSocket connections open on the shard.",
    fixed_files: Gauge "roomcast_fixed_files_limit" "" "Size of the shard's io_uring fixed-file table (0 on epoll).",
    accepted: Counter "roomcast_accepted_total" "" "Sockets accepted.",
    upgraded: Counter "roomcast_upgraded_total" "" "Handshakes completed with 101.",
    http_requests: Counter "roomcast_http_requests_total" "" "Plain HTTP requests answered (healthz, stats, metrics).",
    closed: Counter "roomcast_sockets_closed_total" "" "Sockets closed, for any reason.",
    close_1000: Counter "roomcast_closed_total" "code=\"1000\"" "WebSocket connections closed, by the close code sent or echoed (none: dropped without a close frame).",
    close_1001: Counter "roomcast_closed_total" "code=\"1001\"" "",
    close_1002: Counter "roomcast_closed_total" "code=\"1002\"" "",
    close_1003: Counter "roomcast_closed_total" "code=\"1003\"" "",
    close_1007: Counter "roomcast_closed_total" "code=\"1007\"" "",
    close_1008: Counter "roomcast_closed_total" "code=\"1008\"" "",
    close_1009: Counter "roomcast_closed_total" "code=\"1009\"" "",
    close_1011: Counter "roomcast_closed_total" "code=\"1011\"" "",
    close_other: Counter "roomcast_closed_total" "code=\"other\"" "",
    close_none: Counter "roomcast_closed_total" "code=\"none\"" "",
    refused_400: Counter "roomcast_handshake_refused_total" "status=\"400\"" "Handshakes refused, by HTTP status.",
    refused_401: Counter "roomcast_handshake_refused_total" "status=\"401\"" "",
    refused_403: Counter "roomcast_handshake_refused_total" "status=\"403\"" "",
    refused_404: Counter "roomcast_handshake_refused_total" "status=\"404\"" "",
    refused_405: Counter "roomcast_handshake_refused_total" "status=\"405\"" "",
    refused_426: Counter "roomcast_handshake_refused_total" "status=\"426\"" "",
    refused_429: Counter "roomcast_handshake_refused_total" "status=\"429\"" "",
    refused_431: Counter "roomcast_handshake_refused_total" "status=\"431\"" "",
    refused_503: Counter "roomcast_handshake_refused_total" "status=\"503\"" "",
    handshake_timeouts: Counter "roomcast_handshake_timeouts_total" "" "Sockets closed for not finishing the handshake (or first-message auth) in time.",
    messages_in: Counter "roomcast_messages_in_total" "" "WebSocket messages received.",
    messages_out: Counter "roomcast_messages_out_total" "" "Messages queued to clients (echoes, replies, deliveries).",
    bytes_in: Counter "roomcast_bytes_in_total" "" "Bytes received from clients.",
    bytes_out: Counter "roomcast_bytes_out_total" "" "Bytes sent to clients.",
    tls_handshakes: Counter "roomcast_tls_handshakes_total" "outcome=\"ok\"" "TLS handshakes, by outcome (failed: refused by rustls, plain HTTP on the TLS port, keys not taken over).",
    tls_failed: Counter "roomcast_tls_handshakes_total" "outcome=\"failed\"" "",
    deflate_agreed: Counter "roomcast_deflate_agreed_total" "" "Handshakes that agreed to permessage-deflate (--deflate).",
    deflate_in: Counter "roomcast_deflate_messages_total" "direction=\"in\"" "Compressed messages: received (in); compressed to send (out: once per message of a room batch and encoding in use, shared by the members, or once per echo and replayed message).",
    deflate_out: Counter "roomcast_deflate_messages_total" "direction=\"out\"" "",
    protocol_errors: Counter "roomcast_protocol_errors_total" "" "Connections failed for breaking RFC 6455.",
    rate_limited: Counter "roomcast_rate_limited_total" "" "Connections closed for exceeding --rate/--burst.",
    pings_sent: Counter "roomcast_pings_sent_total" "" "Heartbeat pings sent.",
    pong_timeouts: Counter "roomcast_pong_timeouts_total" "" "Connections dropped for silence after a ping.",
    idle_timeouts: Counter "roomcast_idle_timeouts_total" "" "Connections closed by --idle-timeout.",
    auth_failures: Counter "roomcast_auth_failures_total" "" "Tokens refused (missing, invalid or expired), at the handshake or in a message.",
    tokens_expired: Counter "roomcast_tokens_expired_total" "" "Connections closed because their token expired mid-connection.",
    forbidden: Counter "roomcast_forbidden_total" "" "Joins and publishes refused by the token's room rights.",
    rooms_owned: Gauge "roomcast_rooms_owned" "" "Rooms whose owner is this shard.",
    rooms_local: Gauge "roomcast_rooms_local" "" "Rooms with members on this shard.",
    members: Gauge "roomcast_members" "" "Room memberships on this shard.",
    published: Counter "roomcast_published_total" "" "Messages published by this shard's connections.",
    delivered: Counter "roomcast_delivered_total" "" "Deliveries queued to members on this shard.",
    dropped_oldest: Counter "roomcast_slow_dropped_total" "policy=\"drop-oldest\"" "Deliveries dropped by the slow-consumer policy.",
    dropped_newest: Counter "roomcast_slow_dropped_total" "policy=\"drop-newest\"" "",
    dropped_conflated: Counter "roomcast_slow_dropped_total" "policy=\"conflate\"" "",
    closed_slow: Counter "roomcast_slow_closed_total" "" "Members closed by the slow-consumer policy (close).",
    gap_notices: Counter "roomcast_gap_notices_total" "" "Gap notices queued to members whose slow-consumer policy skipped messages.",
    resumed: Counter "roomcast_resumes_total" "outcome=\"recovered\"" "Joins with `since` (or an SSE Last-Event-ID), by whether the history covered what was missed.",
    resume_failed: Counter "roomcast_resumes_total" "outcome=\"not_recovered\"" "",
    replayed: Counter "roomcast_replayed_total" "" "Messages replayed from history to resuming members.",
    history_bytes: Gauge "roomcast_history_bytes" "" "Heap bytes held by the history of rooms this shard owns.",
    sse_open: Gauge "roomcast_sse_streams" "" "Server-sent event streams (/sse) open on the shard.",
    sse_opened: Counter "roomcast_sse_streams_total" "" "Server-sent event streams (/sse) started.",
    mesh_backlog: Gauge "roomcast_mesh_backlog" "" "Messages waiting for room in the shard's outgoing SPSC queues.",
    mesh_dropped: Counter "roomcast_mesh_dropped_total" "" "Deliveries dropped because the mesh backlog was full.",
    sends_deferred: Counter "roomcast_sends_deferred_total" "" "Flushes that could not send everything queued before the loop slept: an earlier send still in flight (io_uring) or a full socket (epoll). At a low rate this stays 0: a message leaves in the turn it was published.",
);

impl Snapshot {
    /// `{"name":value,…}`
    pub fn to_json(&self) -> String {
        let parts: Vec<String> = META
            .iter()
            .zip(self.values())
            .map(|(m, v)| format!("\"{}\":{v}", m.field))
            .collect();
        format!("{{{}}}", parts.join(","))
    }

    /// Counts a close frame queued with `code` (ours, or the echo of the peer's).
    pub fn count_close(&mut self, code: u16) {
        let field = match code {
            1000 => &mut self.close_1000,
            1001 => &mut self.close_1001,
            1002 => &mut self.close_1002,
            1003 => &mut self.close_1003,
            1007 => &mut self.close_1007,
            1008 => &mut self.close_1008,
            1009 => &mut self.close_1009,
            1011 => &mut self.close_1011,
            _ => &mut self.close_other,
        };
        *field += 1;
    }

    /// Counts a handshake refused with HTTP `status`.
    pub fn count_refusal(&mut self, status: u16) {
        let field = match status {
            400 => &mut self.refused_400,
            401 => &mut self.refused_401,
            403 => &mut self.refused_403,
            405 => &mut self.refused_405,
            426 => &mut self.refused_426,
            429 => &mut self.refused_429,
            431 => &mut self.refused_431,
            503 => &mut self.refused_503,
            _ => &mut self.refused_404,
        };
        *field += 1;
    }
}

/// Every shard's figures.
pub struct SharedStats {
    pub shards: Vec<ShardFigures>,
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
    pub fn new(n: usize) -> SharedStats {
        SharedStats {
            shards: (0..n).map(|_| ShardFigures::default()).collect(),
            config: "{}".into(),
        }
    }

    pub fn snapshots(&self) -> Vec<Snapshot> {
        self.shards.iter().map(ShardFigures::load).collect()
    }

    /// `/stats`: totals and one object per shard.
    pub fn to_json(&self) -> String {
        self.to_json_with("")
    }

    /// `/stats` with more members (`,"name":value…`) before the shards.
    pub fn to_json_with(&self, extra: &str) -> String {
        let snaps = self.snapshots();
        let sum = |f: fn(&Snapshot) -> u64| snaps.iter().map(f).sum::<u64>();
        let per: Vec<String> = snaps.iter().map(Snapshot::to_json).collect();
        format!(
            "{{\"connections\":{},\"websockets\":{},\"rooms\":{},\"members\":{},\"config\":{}{extra},\"shards\":[{}]}}\n",
            sum(|s| s.connections),
            sum(|s| s.upgraded_open),
            sum(|s| s.rooms_owned),
            sum(|s| s.members),
            self.config,
            per.join(",")
        )
    }
}
