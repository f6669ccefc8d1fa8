//! Server configuration: command-line flags, each also settable from the environment
//! (`ROOMCAST_*`) and from a config file ([`file`]), validated before anything starts.

mod bytes;
pub mod file;
#[doc(hidden)]
pub mod fuzz;

pub use bytes::parse_bytes;

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

/// `--backend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    /// io_uring where the kernel supports what roomcast uses, epoll otherwise.
    Auto,
    Uring,
    Epoll,
}

/// `--slow-policy`: what to do when a member's out-ring is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SlowPolicy {
    /// Drop the oldest queued delivery to make room (the member gets a `gap` notice).
    DropOldest,
    /// Drop the new delivery (the member gets a `gap` notice).
    DropNewest,
    /// Keep only the newest queued batch per room: the older ones queued for that room
    /// are dropped (the member gets a `gap` notice for what it skipped).
    Conflate,
    /// Close the connection with 1008 "slow consumer".
    Close,
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    /// One JSON object per line: timestamp, level, target, message and the event's fields.
    Json,
}

/// `--max-conns`: a number (0: no limit) or `auto` (the capacity model's count, less
/// `--capacity-margin`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaxConns {
    Limit(usize),
    Auto,
}

fn parse_max_conns(s: &str) -> Result<MaxConns, String> {
    if s == "auto" {
        return Ok(MaxConns::Auto);
    }
    s.parse()
        .map(MaxConns::Limit)
        .map_err(|_| format!("{s:?}: give a number of connections (0: no limit) or auto"))
}

#[derive(Clone, Debug, Args)]
pub struct ServeConfig {
    /// A TOML file with any of these settings, each under its flag's name (see
    /// sysctl/roomcast.toml). Flags and environment variables win over the file.
    #[arg(long, value_name = "FILE", env = "ROOMCAST_CONFIG")]
    pub config: Option<std::path::PathBuf>,

    /// Print the configuration in effect as TOML, with where each value came from, and
    /// exit.
    #[arg(long = "print-config")]
    pub print_config: bool,

    /// Log lines as text or as one JSON object per line.
    #[arg(long = "log-format", env = "ROOMCAST_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// What to log: a level (error, warn, info, debug, trace) or tracing directives
    /// (`info,roomcast::reactor=debug`) [default: RUST_LOG, else info].
    #[arg(long = "log-level", value_name = "FILTER", env = "ROOMCAST_LOG_LEVEL")]
    pub log_level: Option<String>,

    /// Memory the server may use, for the capacity headroom and `--max-conns auto`
    /// (bytes, or with K/M/G/T) [default: the cgroup's memory.max, else the machine's].
    #[arg(long = "memory-budget", value_name = "BYTES", env = "ROOMCAST_MEMORY_BUDGET", value_parser = parse_bytes)]
    pub memory_budget: Option<u64>,

    /// Per-unit figures from `roomcast-bench calibrate`, for the capacity model
    /// [default: the built-in figures `roomcast plan` uses].
    #[arg(long, value_name = "FILE", env = "ROOMCAST_FIGURES")]
    pub figures: Option<std::path::PathBuf>,

    /// Percent of the capacity model's connections `--max-conns auto` keeps free.
    #[arg(long = "capacity-margin", value_name = "PERCENT", env = "ROOMCAST_CAPACITY_MARGIN", default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=90))]
    pub capacity_margin: u64,

    /// Every setting in effect: (flag name, values, where from), for `/stats`. Filled
    /// after parsing.
    #[arg(skip)]
    pub effective: Vec<(String, Vec<String>, &'static str)>,

    /// Address to listen on (every shard binds it with SO_REUSEPORT).
    #[arg(long, env = "ROOMCAST_LISTEN", default_value = "127.0.0.1:9000")]
    pub listen: SocketAddr,

    /// Event loops, one thread each [default: the CPUs this process may use].
    #[arg(long = "shards", value_name = "N", env = "ROOMCAST_SHARDS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    shards_arg: Option<u16>,

    /// Skipped by clap: filled from `shards_arg`.
    #[arg(skip)]
    pub shards: Option<usize>,

    #[arg(long, env = "ROOMCAST_BACKEND", value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,

    /// Frames each connection may have queued for sending.
    #[arg(long = "out-ring", value_name = "FRAMES", env = "ROOMCAST_OUT_RING", default_value_t = 32, value_parser = clap::value_parser!(u16).range(2..=4096))]
    out_ring_arg: u16,

    #[arg(skip)]
    pub out_ring: usize,

    /// How long a room's delivery may wait for more to share one send to its member
    /// (0: none; at most 1s). Replies, control frames and closes never wait.
    #[arg(
        long = "write-delay",
        value_name = "DURATION",
        env = "ROOMCAST_WRITE_DELAY",
        default_value = "0",
        value_parser = parse_write_delay
    )]
    pub write_delay: Duration,

    /// Largest message accepted, in bytes (larger: close 1009).
    #[arg(long, env = "ROOMCAST_MAX_MESSAGE", default_value_t = 64 * 1024)]
    pub max_message: usize,

    /// Agree to permessage-deflate (RFC 7692) when a client offers it. Off by default:
    /// compressing costs CPU per message (once per room batch, shared by its members) and
    /// small messages gain little; turn it on when egress bandwidth is the bill.
    #[arg(
        long = "deflate",
        env = "ROOMCAST_DEFLATE",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub deflate: bool,

    /// With `--deflate`: messages smaller than this go uncompressed, in bytes.
    #[arg(
        long = "deflate-min-size",
        value_name = "BYTES",
        env = "ROOMCAST_DEFLATE_MIN_SIZE",
        default_value_t = 512
    )]
    pub deflate_min_size: usize,

    /// Largest handshake request head, in bytes (larger: 431).
    #[arg(long, env = "ROOMCAST_MAX_HEADER_BYTES", default_value_t = 8192)]
    pub max_header_bytes: usize,

    /// Seconds from accept to a complete handshake before the socket is closed.
    #[arg(
        long = "handshake-timeout",
        value_name = "SECS",
        env = "ROOMCAST_HANDSHAKE_TIMEOUT",
        default_value_t = 5
    )]
    pub handshake_timeout_secs: u64,

    /// Seconds between pings to each connection (phases spread over the interval).
    #[arg(
        long = "ping-interval",
        value_name = "SECS",
        env = "ROOMCAST_PING_INTERVAL",
        default_value_t = 30
    )]
    pub ping_interval_secs: u64,

    /// Seconds after a ping by which a connection must have sent something (a pong, or
    /// anything) or be dropped (checked on a 1 s wheel: the drop comes up to 1 s later).
    #[arg(
        long = "pong-timeout",
        value_name = "SECS",
        env = "ROOMCAST_PONG_TIMEOUT",
        default_value_t = 10
    )]
    pub pong_timeout_secs: u64,

    /// Listen backlog per shard.
    #[arg(long, env = "ROOMCAST_BACKLOG", default_value_t = 4096)]
    pub backlog: i32,

    /// What happens to a room member whose out-ring is full of undelivered turns:
    /// close (1008 "slow consumer"), drop-oldest, drop-newest, or conflate (keep only the
    /// newest queued batch per room). A member that loses messages gets a `gap` notice.
    #[arg(long, env = "ROOMCAST_SLOW_POLICY", value_enum, default_value_t = SlowPolicy::Close)]
    pub slow_policy: SlowPolicy,

    /// Unsent bytes a room member may have queued from earlier loop turns before the slow
    /// policy applies (alongside --out-ring frames).
    #[arg(long = "max-queued-bytes", env = "ROOMCAST_MAX_QUEUED_BYTES", default_value_t = 1 << 20)]
    pub max_queued_bytes: usize,

    /// Messages each room keeps for members that come back (`join` with `since`, an
    /// event stream's Last-Event-ID). 0: no history.
    #[arg(
        long = "history-size",
        env = "ROOMCAST_HISTORY_SIZE",
        default_value_t = 64
    )]
    pub history_size: usize,

    /// Data bytes each room's history may hold (the oldest messages go first), e.g.
    /// 256KiB.
    #[arg(
        long = "history-bytes",
        env = "ROOMCAST_HISTORY_BYTES",
        default_value = "256KiB",
        value_parser = parse_bytes
    )]
    pub history_bytes: u64,

    /// Seconds a room with no members keeps its history and epoch (publishes to it are
    /// still recorded), so members that all dropped at once can still resume. 0: a room
    /// is freed with its last member.
    #[arg(
        long = "history-ttl",
        value_name = "SECS",
        env = "ROOMCAST_HISTORY_TTL",
        default_value_t = 300
    )]
    pub history_ttl_secs: u64,

    /// Data bytes the history of rooms with no members may hold in all (e.g. 64MiB): past
    /// it the longest idle rooms are freed first, whatever their TTL.
    #[arg(
        long = "history-idle-bytes",
        env = "ROOMCAST_HISTORY_IDLE_BYTES",
        default_value = "64MiB",
        value_parser = parse_bytes
    )]
    pub history_idle_bytes: u64,

    /// Rooms one connection may be in at once.
    #[arg(
        long = "max-rooms-per-conn",
        env = "ROOMCAST_MAX_ROOMS_PER_CONN",
        default_value_t = 64
    )]
    pub max_rooms_per_conn: usize,

    /// Seconds a connection may take to finish closing (our close frame out, the peer's
    /// close or EOF back) before the socket is closed anyway.
    #[arg(
        long = "close-timeout",
        value_name = "SECS",
        env = "ROOMCAST_CLOSE_TIMEOUT",
        default_value_t = 2
    )]
    pub close_timeout_secs: u64,

    /// Close (1000 "idle timeout") a connection that sent no message for this many
    /// seconds; pongs do not count. Checked at each heartbeat, so the cut lands within
    /// one ping interval after. 0: never.
    #[arg(
        long = "idle-timeout",
        value_name = "SECS",
        env = "ROOMCAST_IDLE_TIMEOUT",
        default_value_t = 0
    )]
    pub idle_timeout_secs: u64,

    /// Messages (and pings) per second one connection may send on average; past its
    /// burst: close 1008. 0: no limit.
    #[arg(
        long,
        value_name = "PER_SEC",
        env = "ROOMCAST_RATE",
        default_value_t = 1000
    )]
    pub rate: u32,

    /// Messages a connection may send at once before --rate applies.
    #[arg(
        long,
        value_name = "MSGS",
        env = "ROOMCAST_BURST",
        default_value_t = 2000
    )]
    pub burst: u32,

    /// Open WebSocket connections in total; more: 503 at the handshake. 0: no limit but
    /// the descriptors; auto: what the capacity model says fits (see --memory-budget),
    /// less --capacity-margin.
    #[arg(
        long = "max-conns",
        value_name = "N|auto",
        env = "ROOMCAST_MAX_CONNS",
        default_value = "0",
        value_parser = parse_max_conns
    )]
    pub max_conns: MaxConns,

    /// Open WebSocket connections per client address (per /64 for IPv6); more: 429.
    /// 0: no limit (the default, since NAT puts many users behind one address).
    #[arg(
        long = "max-conns-per-ip",
        value_name = "N",
        env = "ROOMCAST_MAX_CONNS_PER_IP",
        default_value_t = 0
    )]
    pub max_conns_per_ip: usize,

    /// Open WebSocket connections per authenticated user (the token's `sub`); more: 429.
    /// 0: no limit.
    #[arg(
        long = "max-conns-per-user",
        value_name = "N",
        env = "ROOMCAST_MAX_CONNS_PER_USER",
        default_value_t = 100
    )]
    pub max_conns_per_user: usize,

    /// An Origin allowed to open WebSockets (repeatable): exact, or `https://*.example.com`
    /// for its subdomains. When any is given, others (and none) get 403.
    #[arg(
        long = "allow-origin",
        value_name = "ORIGIN",
        env = "ROOMCAST_ALLOW_ORIGIN",
        value_delimiter = ','
    )]
    pub allow_origin: Vec<String>,

    /// Require JWTs signed with this shared secret (HS256/384/512).
    #[arg(
        long = "jwt-secret",
        value_name = "SECRET",
        env = "ROOMCAST_JWT_SECRET",
        conflicts_with = "jwt_public_key"
    )]
    pub jwt_secret: Option<String>,

    /// Require JWTs signed by this key (PEM file; RSA: RS*/PS*, EC: ES256/384).
    #[arg(
        long = "jwt-public-key",
        value_name = "PEM_FILE",
        env = "ROOMCAST_JWT_PUBLIC_KEY"
    )]
    pub jwt_public_key: Option<std::path::PathBuf>,

    /// A cookie that may carry the token.
    #[arg(
        long = "auth-cookie",
        value_name = "NAME",
        env = "ROOMCAST_AUTH_COOKIE"
    )]
    pub auth_cookie: Option<String>,

    /// Turns the server API (`/api/…`) on: requests must send `Authorization: apikey
    /// <KEY>`. Off when unset: every `/api/` request is a 404.
    #[arg(long = "api-key", value_name = "KEY", env = "ROOMCAST_API_KEY")]
    pub api_key: Option<String>,

    /// The largest body an API request may send (bytes, or with K/M/G).
    #[arg(
        long = "api-max-body",
        value_name = "BYTES",
        env = "ROOMCAST_API_MAX_BODY",
        default_value = "1MiB",
        value_parser = parse_bytes
    )]
    pub api_max_body: u64,

    /// A Redis server for the backplane (repeatable: rooms are spread over them by a hash
    /// of the name): `redis://[:password@]host[:port][/db]`. Off when unset: one node.
    #[arg(
        long = "redis",
        value_name = "URL",
        env = "ROOMCAST_REDIS",
        value_delimiter = ','
    )]
    pub redis: Vec<String>,

    /// Tell a room's members when someone joins or leaves it (`{"op":"presence",
    /// "event":"join"|"leave",…}`), on every node. Off by default: N joins in a room of
    /// N members cost N² deliveries.
    #[arg(
        long = "presence-events",
        env = "ROOMCAST_PRESENCE_EVENTS",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub presence_events: bool,

    /// Serve the demo page (rooms chat on `/roomcast.js`) at `/`; `--demo false` turns it
    /// off. `/roomcast.js` is always served.
    #[arg(
        long = "demo",
        value_name = "BOOL",
        env = "ROOMCAST_DEMO",
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub demo: bool,

    /// This node's name in the cluster [default: random at start].
    #[arg(long = "node-id", value_name = "ID", env = "ROOMCAST_NODE_ID")]
    pub node_id: Option<String>,

    /// Seconds over which a drain (SIGTERM/SIGINT) spreads its 1001 closes.
    #[arg(
        long = "drain-window",
        value_name = "SECS",
        env = "ROOMCAST_DRAIN_WINDOW",
        default_value_t = 10
    )]
    pub drain_window_secs: u64,

    /// Serve /healthz, /stats and /metrics on this address too (it stays up while the
    /// main port drains).
    #[arg(
        long = "admin-listen",
        value_name = "ADDR",
        env = "ROOMCAST_ADMIN_LISTEN"
    )]
    pub admin_listen: Option<SocketAddr>,

    /// io_uring: provided receive buffers per shard (a power of two) [default: 64, fewer
    /// when there are more shards than CPUs, so the pool stays 64 per CPU, at least 8]
    #[arg(long, env = "ROOMCAST_RECV_BUFFERS")]
    pub recv_buffers: Option<u16>,

    /// io_uring: size of each provided receive buffer, in bytes.
    #[arg(long, env = "ROOMCAST_RECV_BUFFER_SIZE", default_value_t = 64 * 1024)]
    pub recv_buffer_size: u32,

    /// Serve TLS (wss://, https://) with this certificate chain (PEM, the server's
    /// certificate first). SIGHUP reads it and --tls-key again for new connections.
    #[arg(
        long = "tls-cert",
        value_name = "FILE",
        env = "ROOMCAST_TLS_CERT",
        requires = "tls_key"
    )]
    pub tls_cert: Option<std::path::PathBuf>,

    /// Serve TLS on this address instead, and keep --listen plain (ws://, http://).
    #[arg(
        long = "tls-listen",
        value_name = "ADDR",
        env = "ROOMCAST_TLS_LISTEN",
        requires = "tls_cert"
    )]
    pub tls_listen: Option<SocketAddr>,

    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(
        long = "tls-key",
        value_name = "FILE",
        env = "ROOMCAST_TLS_KEY",
        requires = "tls_cert"
    )]
    pub tls_key: Option<std::path::PathBuf>,

    /// Ask the application's backend who a handshake without a token is (POST JSON to
    /// this URL, `/ws` and `/sse`): it answers with the user or refuses (README: "Your
    /// backend").
    #[arg(
        long = "hook-connect",
        value_name = "URL",
        env = "ROOMCAST_HOOK_CONNECT"
    )]
    pub hook_connect: Option<String>,

    /// Ask the backend before every join.
    #[arg(long = "hook-join", value_name = "URL", env = "ROOMCAST_HOOK_JOIN")]
    pub hook_join: Option<String>,

    /// Ask the backend before every client publish: allow, rewrite or refuse it.
    #[arg(
        long = "hook-publish",
        value_name = "URL",
        env = "ROOMCAST_HOOK_PUBLISH"
    )]
    pub hook_publish: Option<String>,

    /// Where clients' `rpc` ops go.
    #[arg(long = "hook-rpc", value_name = "URL", env = "ROOMCAST_HOOK_RPC")]
    pub hook_rpc: Option<String>,

    /// The request headers the connect hook is shown.
    #[arg(
        long = "hook-forward-headers",
        value_name = "LIST",
        env = "ROOMCAST_HOOK_FORWARD_HEADERS",
        value_delimiter = ',',
        default_value = "Cookie,Authorization,Origin,User-Agent"
    )]
    pub hook_forward_headers: Vec<String>,

    /// How long a hook call may take, waiting for a place included (e.g. 2s, 500ms).
    #[arg(
        long = "hook-timeout",
        value_name = "DURATION",
        env = "ROOMCAST_HOOK_TIMEOUT",
        default_value = "2s",
        value_parser = parse_duration
    )]
    pub hook_timeout: Duration,

    /// Hook calls in flight at once on this node; the rest wait their turn.
    #[arg(
        long = "hook-max-inflight",
        value_name = "N",
        env = "ROOMCAST_HOOK_MAX_INFLIGHT",
        default_value_t = 256,
        value_parser = clap::value_parser!(u32).range(1..=100_000)
    )]
    pub hook_max_inflight: u32,

    /// Let joins and publishes through when the backend cannot answer (connects never).
    #[arg(
        long = "hook-fail-open",
        env = "ROOMCAST_HOOK_FAIL_OPEN",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub hook_fail_open: bool,

    /// Where webhooks are POSTed (batches of events, signed with --webhook-secret).
    #[arg(long = "webhook", value_name = "URL", env = "ROOMCAST_WEBHOOK")]
    pub webhook: Option<String>,

    /// The key of the webhooks' `X-Roomcast-Signature` (HMAC-SHA256).
    #[arg(
        long = "webhook-secret",
        value_name = "SECRET",
        env = "ROOMCAST_WEBHOOK_SECRET"
    )]
    pub webhook_secret: Option<String>,

    /// The webhook events sent: room_occupied, room_vacated, member_joined, member_left,
    /// client_publish, connection_closed (default: all).
    #[arg(
        long = "webhook-events",
        value_name = "LIST",
        env = "ROOMCAST_WEBHOOK_EVENTS",
        value_delimiter = ','
    )]
    pub webhook_events: Vec<String>,

    /// Events per webhook POST at most (a batch also goes out after 50 ms).
    #[arg(
        long = "webhook-batch",
        value_name = "N",
        env = "ROOMCAST_WEBHOOK_BATCH",
        default_value_t = 100,
        value_parser = clap::value_parser!(u32).range(1..=10_000)
    )]
    pub webhook_batch: u32,
}

/// The webhook events there are.
pub const WEBHOOK_EVENTS: &[&str] = &[
    "room_occupied",
    "room_vacated",
    "member_joined",
    "member_left",
    "client_publish",
    "connection_closed",
];

/// A duration: `500ms`, `2s`, or a number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?}: give a duration like 2s or 500ms");
    let (num, scale) = match s.strip_suffix("ms") {
        Some(n) => (n, 1e-3),
        None => (s.strip_suffix('s').unwrap_or(s), 1.0),
    };
    let v: f64 = num.trim().parse().map_err(|_| bad())?;
    if !v.is_finite() || v <= 0.0 || v * scale > 3600.0 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(v * scale))
}

/// `--write-delay`: 0 (also 0s, 0ms), or a duration like 5ms up to 1s.
pub fn parse_write_delay(s: &str) -> Result<Duration, String> {
    let number = s.trim().trim_end_matches("ms").trim_end_matches('s');
    if number.trim().parse::<f64>() == Ok(0.0) {
        return Ok(Duration::ZERO);
    }
    let d = parse_duration(s)?;
    if d > Duration::from_secs(1) {
        return Err(format!(
            "{s:?}: a write delay is at most 1s (members would wait that long for each message)"
        ));
    }
    Ok(d)
}

impl ServeConfig {
    /// Checks the flags together and fills the derived fields. Errors say which flag.
    pub fn validate(mut self) -> Result<ServeConfig, String> {
        self.shards = self.shards_arg.map(usize::from);
        self.out_ring = usize::from(self.out_ring_arg);
        if let Some(n) = self.recv_buffers.filter(|n| !n.is_power_of_two()) {
            return Err(format!("--recv-buffers must be a power of two, got {n}"));
        }
        if self.recv_buffer_size < 4096 {
            return Err("--recv-buffer-size must be at least 4096".into());
        }
        if self.max_header_bytes < 256 {
            return Err("--max-header-bytes must be at least 256".into());
        }
        if self.max_message == 0 {
            return Err("--max-message must be at least 1".into());
        }
        if self.pong_timeout_secs == 0 || self.pong_timeout_secs >= self.ping_interval_secs {
            return Err(format!(
                "--pong-timeout ({}) must be at least 1 and shorter than --ping-interval ({})",
                self.pong_timeout_secs, self.ping_interval_secs
            ));
        }
        if self.handshake_timeout_secs == 0 {
            return Err("--handshake-timeout must be at least 1 second".into());
        }
        if self.close_timeout_secs == 0 {
            return Err("--close-timeout must be at least 1 second".into());
        }
        if self.rate > 0 && !(1..=1_000_000).contains(&self.burst) {
            return Err(format!(
                "--burst must be between 1 and 1000000 when --rate is set, got {}",
                self.burst
            ));
        }
        if let Some(id) = &self.node_id {
            if id.is_empty() || id.len() > 64 || id.contains(char::is_whitespace) {
                return Err("--node-id: 1 to 64 characters, no spaces".into());
            }
        }
        for o in &self.allow_origin {
            if !o.contains("://") {
                return Err(format!(
                    "--allow-origin {o:?}: give a whole origin, like https://app.example.com"
                ));
            }
        }
        let hooks = [
            ("--hook-connect", &self.hook_connect),
            ("--hook-join", &self.hook_join),
            ("--hook-publish", &self.hook_publish),
            ("--hook-rpc", &self.hook_rpc),
            ("--webhook", &self.webhook),
        ];
        for (flag, url) in hooks {
            if let Some(u) = url {
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    return Err(format!("{flag} {u:?}: give an http:// or https:// URL"));
                }
            }
        }
        for e in &self.webhook_events {
            if !WEBHOOK_EVENTS.contains(&e.as_str()) {
                return Err(format!(
                    "--webhook-events: unknown event {e:?} (events: {})",
                    WEBHOOK_EVENTS.join(", ")
                ));
            }
        }
        if matches!(&self.jwt_secret, Some(s) if s.is_empty()) {
            return Err("--jwt-secret must not be empty".into());
        }
        Ok(self)
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_secs)
    }

    /// How long a closing connection has to finish closing.
    pub fn linger_timeout(&self) -> Duration {
        Duration::from_secs(self.close_timeout_secs)
    }
}
