//! `roomcast plan`: what N connections, and optionally a room workload, will cost, from
//! per-unit costs measured by `roomcast-bench calibrate` (or the built-in figures, measured
//! on the 2-vCPU development machines). It prints the memory and CPU it predicts, the
//! flags and the sysctls to use, and whether it fits the machine.
//!
//! The model is linear, which is what the measurements show for idle connections:
//!
//! - user space = process base + shards × (shard base + receive pool) + N × bytes per
//!   connection;
//! - kernel = N × bytes per socket (the server's end only);
//! - CPU = N / ping interval × cost per ping round trip
//!   + sends/s × cost per send + deliveries/s × cost per delivery + bytes/s × cost per byte
//!   + publishes/s × cost per inbound message.
//!
//! Sends are what fixed rates cost. A send's fixed part (the syscall or submission, TCP and
//! IP output, on loopback the receiver's input too) is several times a message's, and at
//! the rates people run a member gets one message per send unless `--write-delay` gathers
//! them: a room publishing R msg/s every 1/R s puts 1 + ⌊D·R⌋ messages in each send (at
//! most half the out-ring, or half of `--max-queued-bytes`, which go at once). Bursty
//! traffic gathers more, so this errs high. `--link nic` (the default) leaves out the part
//! of a send that on loopback is the receiving end's work on the server's CPU.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// Per-unit costs, as `roomcast-bench calibrate` writes them.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Figures {
    /// Where they were measured (CPU model, kernel, date).
    pub measured_on: String,
    /// Server RSS added per idle connection (the marginal cost, slab slot included).
    pub user_bytes_per_conn: f64,
    /// Kernel memory per idle server socket (TCP socket, file, armed multishot recv).
    pub kernel_bytes_per_socket: f64,
    /// RSS of a server with no shards' worth of anything: binary, runtime, allocator.
    pub process_base_bytes: f64,
    /// RSS per shard at rest beyond its receive pool: stack, ring, mesh queues.
    pub shard_base_bytes: f64,
    /// Server CPU per heartbeat: a ping out, its pong in (kernel TCP included).
    pub ping_cpu_us: f64,
    /// Server CPU per message delivered to one member of a room, beyond its share of a
    /// send: the out-ring, the frame's bytes gathered into the send. (Figures files written
    /// before `send_cpu_ns` hold the closed loop's figure here, where a send carries many
    /// messages: with the send counted again they err high.)
    pub delivery_cpu_ns: f64,
    /// Server CPU per send to a member (`roomcast_sends_total`), measured on loopback:
    /// the submission or syscall, TCP and IP output and, on loopback, the receiving end's
    /// TCP input, which runs in softirq on the sending CPU.
    #[serde(default = "default_send_cpu_ns")]
    pub send_cpu_ns: f64,
    /// Of `send_cpu_ns`: the receiving end's input, which a real NIC moves to the member's
    /// machine (`--link nic` leaves it out).
    #[serde(default = "default_loopback_receive_ns")]
    pub loopback_receive_ns: f64,
    /// Server CPU per byte sent (copies into the socket, checksums).
    #[serde(default = "default_wire_byte_ns")]
    pub wire_byte_ns: f64,
    /// RSS a shard adds once its rooms have traffic (allocator pages in use, the receive
    /// pool touched), and each member of a room with traffic (its out-ring's storage and
    /// the frames in flight).
    #[serde(default = "default_busy_shard_bytes")]
    pub busy_shard_bytes: f64,
    #[serde(default = "default_busy_member_bytes")]
    pub busy_member_bytes: f64,
    /// Server CPU per message received and answered (echo): the cost of a publish's
    /// ingress.
    pub message_cpu_ns: f64,
    /// Server CPU per opening handshake (accept to 101).
    pub handshake_cpu_us: f64,
    /// With a backplane: a node's CPU per message it publishes through Redis (to the
    /// script and the acknowledgement back), and per message it receives from Redis for
    /// its members (beyond the deliveries).
    #[serde(default = "default_backplane_publish_ns")]
    pub backplane_publish_ns: f64,
    #[serde(default = "default_backplane_receive_ns")]
    pub backplane_receive_ns: f64,
    /// Redis CPU per published message (the Lua script: seq, XADD, PUBLISH), and per node
    /// subscribed to the room (PUBLISH writes to each).
    #[serde(default = "default_redis_publish_us")]
    pub redis_publish_us: f64,
    #[serde(default = "default_redis_subscriber_us")]
    pub redis_subscriber_us: f64,
}

// Figures files written before the backplane lack its costs: the built-in ones stand in.
fn default_send_cpu_ns() -> f64 {
    Figures::builtin().send_cpu_ns
}
fn default_loopback_receive_ns() -> f64 {
    Figures::builtin().loopback_receive_ns
}
fn default_wire_byte_ns() -> f64 {
    Figures::builtin().wire_byte_ns
}
fn default_busy_shard_bytes() -> f64 {
    Figures::builtin().busy_shard_bytes
}
fn default_busy_member_bytes() -> f64 {
    Figures::builtin().busy_member_bytes
}
fn default_backplane_publish_ns() -> f64 {
    Figures::builtin().backplane_publish_ns
}
fn default_backplane_receive_ns() -> f64 {
    Figures::builtin().backplane_receive_ns
}
fn default_redis_publish_us() -> f64 {
    Figures::builtin().redis_publish_us
}
fn default_redis_subscriber_us() -> f64 {
    Figures::builtin().redis_subscriber_us
}

impl Figures {
    /// Measured on this project's development machines: 2 vCPUs (KVM), Linux 6.18,
    /// io_uring. Bytes per connection and ping cost: the 1M idle run with 64 shards (server
    /// CPU while idle / pings per second); the process and shard bases: the RSS of 1-, 2-
    /// and 4-shard servers at rest (10.8, 15.2, 15.8 MiB); what traffic adds: the fan-outs
    /// of `bench/scripts/plan-check.sh`; messages and handshakes: one pinned shard. Sends,
    /// deliveries and bytes: a fit of the server CPU's busy time (softirq included) to
    /// sends, deliveries and wire bytes, least squares in relative error, over the 49 runs
    /// of `bench/scripts/write-delay.sh` not measured client-bound (5 fixed-rate shapes at
    /// 100,000 deliveries/s, write delays 0 to 100 ms, so 1 to 16 messages per send); the
    /// receiving end's share of a loopback send: `bench/scripts/link-share.sh` (loopback's
    /// input steered to the other CPU: 2.0 µs less per send). bench/RESULTS.md has the runs.
    pub fn builtin() -> Figures {
        Figures {
            measured_on: "built-in: 2-vCPU KVM guest, Linux 6.18, io_uring (bench/RESULTS.md)"
                .into(),
            user_bytes_per_conn: 111.0,
            kernel_bytes_per_socket: 4_920.0,
            process_base_bytes: 6.4 * MIB,
            shard_base_bytes: 0.40 * MIB,
            ping_cpu_us: 20.8,
            delivery_cpu_ns: 300.0,
            send_cpu_ns: 5_950.0,
            loopback_receive_ns: 2_000.0,
            wire_byte_ns: 0.19,
            busy_shard_bytes: 0.8 * MIB,
            busy_member_bytes: 300.0,
            message_cpu_ns: 712.0,
            handshake_cpu_us: 37.1,
            backplane_publish_ns: BACKPLANE_PUBLISH_NS,
            backplane_receive_ns: BACKPLANE_RECEIVE_NS,
            redis_publish_us: REDIS_PUBLISH_US,
            redis_subscriber_us: REDIS_SUBSCRIBER_US,
        }
    }

    /// CPU per send over `link`.
    pub fn send_ns(&self, link: Link) -> f64 {
        match link {
            Link::Loopback => self.send_cpu_ns,
            Link::Nic => (self.send_cpu_ns - self.loopback_receive_ns).max(0.0),
        }
    }

    /// CPU per heartbeat over `link`: a ping is one send.
    pub fn ping_us(&self, link: Link) -> f64 {
        match link {
            Link::Loopback => self.ping_cpu_us,
            Link::Nic => (self.ping_cpu_us - self.loopback_receive_ns / 1e3).max(0.0),
        }
    }

    pub fn load(path: &std::path::Path) -> Result<Figures, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        serde_json::from_str(&text)
            .map_err(|e| format!("{} is not a figures file: {e}", path.display()))
    }
}

/// Backplane costs, measured by `bench/scripts/backplane-costs.py` at 20,000 publishes/s
/// (bench/RESULTS.md): Redis 9.45 µs per publish with one node subscribed, 10.35 with
/// two; the publishing node 10.35 µs per message with one member (less its ingress and
/// one delivery, and the receive side), a receiving node 2.7 µs (less one delivery).
const BACKPLANE_PUBLISH_NS: f64 = 6_500.0;
const BACKPLANE_RECEIVE_NS: f64 = 1_700.0;
const REDIS_PUBLISH_US: f64 = 8.6;
const REDIS_SUBSCRIBER_US: f64 = 0.9;
/// Redis runs commands on one thread: plan each server to stay under this share of a core.
const REDIS_SHARE: f64 = 0.7;

/// permessage-deflate (`--deflate`), measured here: a shard's compressors (level 6 for
/// room batches, level 1 for echoes, the narrow window) and its inflater, all in use, hold
/// ~0.95 MiB (RSS of a 1-shard server after one of each, against a plain one); a connection
/// holds nothing more. Compressing costs ~9.1 ns per byte of message at level 6, once per
/// message whatever the members; JSON like the benchmark's feed leaves at 0.37 of its size.
pub const DEFLATE_SHARD_BYTES: f64 = 0.95 * MIB;
const DEFLATE_NS_PER_BYTE: f64 = 9.1;
const DEFLATE_RATIO: f64 = 0.37;
/// `--deflate-min-size`'s default: smaller messages go uncompressed.
const DEFLATE_MIN_SIZE: u64 = 512;

/// TLS (`--tls-cert`), measured with `bench/scripts/tls.sh` (bench/RESULTS.md, 15,000
/// idle and 5,000 members, TLS 1.3 AES-128-GCM against plain): an open connection's
/// session (its keys, sequence numbers and counters, boxed in a table beside the slab)
/// adds 163–179 B of user space; at 20 msg/s to 5,000 members (each delivery its own
/// send: one key expansion, one record) a 1,059-byte delivery cost 690–990 ns more CPU,
/// modelled as a fixed part and a part per byte; a full handshake (ECDSA P-256, X25519)
/// cost the server 93–96 µs more than a plain one (a lower bound: the load generator was
/// saturated). The fixed part is a record's: one per send.
pub const TLS_CONN_BYTES: f64 = 180.0;
pub const TLS_RECORD_NS: f64 = 400.0;
pub const TLS_NS_PER_BYTE: f64 = 0.4;
pub const TLS_HANDSHAKE_US: f64 = 100.0;

const MIB: f64 = 1024.0 * 1024.0;
const GIB: f64 = 1024.0 * MIB;
/// Descriptors a shard keeps for itself (listener, ring, eventfd, logs) out of RLIMIT_NOFILE.
const RESERVED_FDS: u64 = 1024;
/// Bytes a delivered `msg` frame adds to its `data`: header and envelope.
const ENVELOPE_BYTES: u64 = 48;
/// Heartbeats should leave most of the CPU for work: the interval `plan` suggests keeps
/// them under this share.
const HEARTBEAT_SHARE: f64 = 0.25;

/// What to plan for, and the machine to plan on.
#[derive(Clone, Debug)]
pub struct Workload {
    pub connections: u64,
    /// Rooms the connections are spread over (0: idle connections only).
    pub rooms: u64,
    /// Messages published per second to each room.
    pub msg_rate: f64,
    pub msg_size: u64,
    /// The server's `--history-size` and `--history-bytes` (per room).
    pub history_size: u64,
    pub history_bytes: u64,
    pub ping_interval_secs: u64,
    /// Shards to plan with (None: as many as the CPUs and the fixed-file tables need).
    pub shards: Option<u64>,
    /// Nodes the connections are spread over (more than 1: with a Redis backplane). The
    /// machine is one node's; the connections and rooms are the whole cluster's.
    pub nodes: u64,
    /// `--deflate`: the shards' compressors, the compression CPU, the smaller egress.
    pub deflate: bool,
    /// `--tls-cert`: each connection's session, sealing each delivery, the handshakes.
    pub tls: bool,
    /// `--write-delay`, in seconds: how long a member's deliveries may wait to share a send.
    pub write_delay_secs: f64,
    /// `--max-queued-bytes`: half of it goes at once, whatever the delay.
    pub max_queued_bytes: u64,
    /// Where the members are.
    pub link: Link,
}

#[derive(Clone, Debug)]
pub struct Machine {
    pub cpus: u64,
    pub memory_bytes: u64,
    /// RLIMIT_NOFILE hard limit: what one io_uring fixed-file table can hold.
    pub nofile: u64,
    pub uring: bool,
}

/// The prediction.
#[derive(Clone, Debug)]
pub struct Plan {
    pub shards: u64,
    pub recv_buffers: u16,
    pub recv_buffer_size: u64,
    pub out_ring: u64,
    /// User space that does not grow with connections: process base, shards, their pools.
    pub user_fixed_bytes: f64,
    pub user_bytes: f64,
    /// Of `user_bytes`: the rooms' history.
    pub history_bytes: f64,
    pub kernel_bytes: f64,
    pub pings_per_sec: f64,
    pub heartbeat_cpus: f64,
    pub deliveries_per_sec: f64,
    /// Sends to members that carry those deliveries, and how many each carries.
    pub sends_per_sec: f64,
    pub messages_per_send: f64,
    /// The deliveries alone would take more than the CPUs with one send each (or the
    /// delay's gathering): the loop gathers more per send, and the CPUs are all busy.
    pub saturated: bool,
    pub delivery_cpus: f64,
    /// Of `delivery_cpus`: sealing TLS records (`--tls`).
    pub tls_cpus: f64,
    /// CPU-seconds of TLS handshakes for every connection to reconnect (`--tls`).
    pub handshake_cpu_secs: f64,
    pub publish_cpus: f64,
    pub egress_bytes_per_sec: f64,
    /// With several nodes: this node's connections, the nodes each room spans, the
    /// backplane thread's CPU on this node, and Redis's CPU (all servers) and servers.
    pub node_connections: u64,
    pub room_nodes: u64,
    pub backplane_cpus: f64,
    pub redis_cpus: f64,
    pub redis_servers: u64,
    /// A ping interval that keeps heartbeats under [`HEARTBEAT_SHARE`] of the CPUs.
    pub suggested_ping_interval: u64,
    pub sysctls: Vec<(&'static str, String, &'static str)>,
}

impl Plan {
    pub fn cpus(&self) -> f64 {
        self.heartbeat_cpus + self.delivery_cpus + self.publish_cpus + self.backplane_cpus
    }

    pub fn memory(&self) -> f64 {
        self.user_bytes + self.kernel_bytes
    }
}

/// Heap bytes one room's full history takes: the messages kept (by count, or fewer when
/// `--history-bytes` binds), each an `Arc<str>` (16 B header, rounded up to the
/// allocator's 16 B) in a ring slot of seq and pointer, the ring grown by doubling.
pub fn history_per_room(w: &Workload) -> f64 {
    let kept = match w.history_bytes.checked_div(w.msg_size) {
        Some(by_bytes) => w.history_size.min(by_bytes),
        None => w.history_size,
    };
    if kept == 0 {
        return 0.0;
    }
    let slot = std::mem::size_of::<(u64, std::sync::Arc<str>)>() as u64;
    let data = (16 + w.msg_size).div_ceil(16) * 16;
    (kept.next_power_of_two() * slot + kept * data) as f64
}

pub fn plan(w: &Workload, m: &Machine, f: &Figures) -> Plan {
    let nodes = w.nodes.max(1);
    // This node's share; rooms keep their size over the cluster.
    let n = w.connections.div_ceil(nodes);
    // io_uring: each ring's fixed-file table holds up to RLIMIT_NOFILE sockets, so a
    // low limit is met with more rings than CPUs. epoll: one process-wide limit.
    let per_ring = m.nofile.saturating_sub(RESERVED_FDS).max(1);
    let needed = if m.uring {
        m.cpus.max(n.div_ceil(per_ring)).max(1)
    } else {
        m.cpus.max(1)
    };
    let shards = w.shards.unwrap_or(needed).max(1);
    let recv_buffers = crate::reactor::recv_buffers_for(shards as usize, m.cpus as usize);
    let recv_buffer_size = 64 * 1024;
    let pool = if m.uring {
        f64::from(recv_buffers) * recv_buffer_size as f64
    } else {
        0.0
    };
    let deflate_shard = if w.deflate { DEFLATE_SHARD_BYTES } else { 0.0 };
    let tls_conn = if w.tls { TLS_CONN_BYTES } else { 0.0 };
    let user_fixed =
        f.process_base_bytes + shards as f64 * (f.shard_base_bytes + pool + deflate_shard);
    let wire_size = w.msg_size + ENVELOPE_BYTES;
    let (deflate_ns, egress_ratio) = match w.deflate && wire_size >= DEFLATE_MIN_SIZE {
        true => (wire_size as f64 * DEFLATE_NS_PER_BYTE, DEFLATE_RATIO),
        false => (0.0, 1.0),
    };
    // Each member's copy is sealed for it: what goes on the wire, compressed or not, in
    // one record per send.
    let (tls_record, tls_byte) = if w.tls {
        (TLS_RECORD_NS, TLS_NS_PER_BYTE)
    } else {
        (0.0, 0.0)
    };
    let members_per_room = w.connections.checked_div(w.rooms).unwrap_or(0);
    let all_publishes = w.rooms as f64 * w.msg_rate;
    // Publishes come in spread over the nodes; a room's members too, so each node with
    // members in a room receives all of its messages from Redis.
    let publishes = all_publishes / nodes as f64;
    let deliveries = all_publishes * members_per_room as f64 / nodes as f64;
    let room_nodes = if nodes > 1 {
        nodes.min(members_per_room.max(1))
    } else {
        0
    };
    let received = all_publishes * room_nodes as f64 / nodes as f64;
    let backplane_cpus = if nodes > 1 {
        (received * f.backplane_receive_ns + publishes * f.backplane_publish_ns) / 1e9
    } else {
        0.0
    };
    let redis_cpus = if nodes > 1 {
        all_publishes * (f.redis_publish_us + f.redis_subscriber_us * room_nodes as f64) / 1e6
    } else {
        0.0
    };
    let redis_servers = (redis_cpus / REDIS_SHARE).ceil().max(1.0) as u64;
    // One frame per room in flight per member, shared: membership and the frames' bytes;
    // with traffic, what busy shards and members hold beyond that.
    let members = n.min(members_per_room * w.rooms);
    let busy = if deliveries > 0.0 {
        shards as f64 * f.busy_shard_bytes + members as f64 * f.busy_member_bytes
    } else {
        0.0
    };
    let rooms_bytes = w.rooms as f64 * (256.0 + w.msg_size as f64) + members as f64 * 16.0 + busy;
    let history = w.rooms as f64 * history_per_room(w);
    let ping_us = f.ping_us(w.link);
    let pings = n as f64 / w.ping_interval_secs.max(1) as f64;
    let heartbeat_cpus = pings * ping_us / 1e6;
    let budget = HEARTBEAT_SHARE * m.cpus.max(1) as f64 * 1e6;
    let suggested_ping_interval = ((n as f64 * ping_us / budget).ceil() as u64).max(30);
    // A member may fall a second behind a busy room before the slow-consumer policy acts.
    let out_ring = (w.msg_rate.ceil() as u64)
        .next_power_of_two()
        .clamp(32, 1024);
    let on_wire = (wire_size as f64 * egress_ratio).ceil() as u64;
    let per_send = messages_per_send(
        w.msg_rate,
        w.write_delay_secs,
        out_ring,
        w.max_queued_bytes,
        on_wire,
    )
    .min(frames_per_send(m.uring));
    let send_ns = f.send_ns(w.link) + tls_record;
    let delivery_ns = f.delivery_cpu_ns + on_wire as f64 * (f.wire_byte_ns + tls_byte);
    // A CPU that cannot give each delivery a send of its own keeps up by gathering: the
    // deliveries that come in while it works share the next send. At d deliveries/s per CPU,
    // s per send and m per delivery, a busy loop's turn carries k = d·s / (1 − d·m) each
    // (the turn takes k sends' worth of work while k more arrive): when that is above what
    // the delay gathers, the CPUs are saturated, latency grows with the turn, and the CPU is
    // all of theirs. Past d·m ≥ 1 not even that keeps up.
    let per_cpu = deliveries / shards.min(m.cpus).max(1) as f64;
    let (load_s, load_m) = (per_cpu * send_ns / 1e9, per_cpu * delivery_ns / 1e9);
    let gathered = match load_m < 1.0 {
        true => load_s / (1.0 - load_m),
        false => f64::INFINITY,
    };
    let saturated = gathered > per_send;
    let per_send = per_send.max(gathered).min(frames_per_send(m.uring));
    let sends = deliveries / per_send;
    let tls_cpus = (sends * tls_record + deliveries * on_wire as f64 * tls_byte) / 1e9;
    let delivery_cpus = (sends * send_ns + deliveries * delivery_ns) / 1e9;
    let kernel_socket = f.kernel_bytes_per_socket;
    let tcp_pages = (n as f64 * kernel_socket * 1.5 / 4096.0) as u64;
    let mut sysctls = vec![
        (
            "fs.file-max",
            (n * 2 + 65_536).to_string(),
            "every socket is a file, direct descriptors too",
        ),
        (
            "fs.nr_open",
            (if m.uring { n.div_ceil(shards) } else { n } + RESERVED_FDS)
                .max(1 << 20)
                .to_string(),
            "the ceiling for RLIMIT_NOFILE",
        ),
        (
            "RLIMIT_NOFILE (LimitNOFILE=)",
            (if m.uring { n.div_ceil(shards) } else { n } + RESERVED_FDS).to_string(),
            "per ring with io_uring, per process with epoll",
        ),
        (
            "net.core.somaxconn",
            "65535".into(),
            "each shard's accept backlog during a ramp",
        ),
        (
            "net.ipv4.tcp_max_syn_backlog",
            "65535".into(),
            "half-open connections during a ramp",
        ),
        (
            "net.ipv4.tcp_mem",
            format!("{} {} {}", tcp_pages / 2, tcp_pages, tcp_pages * 2),
            "pages of TCP memory: N sockets × kernel bytes × 1.5",
        ),
    ];
    if std::path::Path::new("/proc/sys/net/netfilter/nf_conntrack_max").exists() {
        sysctls.push((
            "net.netfilter.nf_conntrack_max",
            (n * 2).to_string(),
            "conntrack is loaded: a full table drops new connections",
        ));
    }
    Plan {
        shards,
        recv_buffers,
        recv_buffer_size,
        out_ring,
        user_fixed_bytes: user_fixed,
        user_bytes: user_fixed
            + n as f64 * (f.user_bytes_per_conn + tls_conn)
            + rooms_bytes
            + history,
        history_bytes: history,
        kernel_bytes: n as f64 * kernel_socket,
        pings_per_sec: pings,
        heartbeat_cpus,
        deliveries_per_sec: deliveries,
        sends_per_sec: sends,
        messages_per_send: per_send,
        saturated,
        delivery_cpus,
        tls_cpus,
        handshake_cpu_secs: if w.tls {
            n as f64 * TLS_HANDSHAKE_US / 1e6
        } else {
            0.0
        },
        publish_cpus: publishes * (f.message_cpu_ns + deflate_ns) / 1e9,
        egress_bytes_per_sec: deliveries * wire_size as f64 * egress_ratio,
        node_connections: n,
        room_nodes,
        backplane_cpus,
        redis_cpus,
        redis_servers: if nodes > 1 { redis_servers } else { 0 },
        suggested_ping_interval,
        sysctls,
    }
}

/// The report `roomcast plan` prints, and whether the workload fits.
pub fn render(w: &Workload, m: &Machine, f: &Figures, p: &Plan) -> (String, bool) {
    let mut s = String::new();
    let n = w.connections;
    let _ = writeln!(
        s,
        "roomcast plan: {n} connections{}",
        if w.rooms > 0 {
            format!(
                ", {} rooms of {}, {} msg/s per room, {} B messages",
                w.rooms,
                n / w.rooms,
                w.msg_rate,
                w.msg_size
            )
        } else {
            ", idle".into()
        }
    );
    let _ = writeln!(
        s,
        "machine: {} CPUs, {:.1} GiB, RLIMIT_NOFILE {}, {}",
        m.cpus,
        m.memory_bytes as f64 / GIB,
        m.nofile,
        if m.uring { "io_uring" } else { "epoll" }
    );
    let _ = writeln!(s, "figures: {}", f.measured_on);
    // From here on, this node's share.
    let n = p.node_connections;
    if w.nodes > 1 {
        let _ = writeln!(
            s,
            "cluster: {} nodes on Redis (--redis): this machine is one node, with {} connections; each room spans {} node(s)",
            w.nodes, p.node_connections, p.room_nodes
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "flags     --shards {} --recv-buffers {} --recv-buffer-size {} --out-ring {} --ping-interval {}",
        p.shards, p.recv_buffers, p.recv_buffer_size, p.out_ring, w.ping_interval_secs
    );
    if p.shards > m.cpus {
        let _ = writeln!(
            s,
            "          ({} shards on {} CPUs: each ring's fixed-file table holds at most {} sockets; raise RLIMIT_NOFILE and 1 shard per CPU is enough)",
            p.shards,
            m.cpus,
            m.nofile.saturating_sub(RESERVED_FDS)
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "memory    user space {:>8.1} MiB  ({:.1} MiB fixed + {:.0} B × {n} connections{})",
        p.user_bytes / MIB,
        p.user_fixed_bytes / MIB,
        f.user_bytes_per_conn,
        if w.rooms > 0 { " + rooms" } else { "" }
    );
    if w.deflate {
        let _ = writeln!(
            s,
            "          of which   {:>8.1} MiB  permessage-deflate: {:.2} MiB per shard (compressors, inflater), nothing per connection",
            p.shards as f64 * DEFLATE_SHARD_BYTES / MIB,
            DEFLATE_SHARD_BYTES / MIB
        );
    }
    if w.tls {
        let _ = writeln!(
            s,
            "          of which   {:>8.1} MiB  TLS: {:.0} B per connection (keys and counters; no buffers while idle)",
            n as f64 * TLS_CONN_BYTES / MIB,
            TLS_CONN_BYTES
        );
    }
    if p.history_bytes > 0.0 {
        let _ = writeln!(
            s,
            "          of which   {:>8.1} MiB  history: {} rooms × {:.0} B (--history-size {}, --history-bytes {})",
            p.history_bytes / MIB,
            w.rooms,
            history_per_room(w),
            w.history_size,
            w.history_bytes
        );
    }
    let _ = writeln!(
        s,
        "          kernel     {:>8.1} MiB  ({:.0} B × {n} sockets)",
        p.kernel_bytes / MIB,
        f.kernel_bytes_per_socket
    );
    let mem_ok = p.memory() <= m.memory_bytes as f64 * 0.9;
    let _ = writeln!(
        s,
        "          total      {:>8.2} GiB of {:.1} GiB{}",
        p.memory() / GIB,
        m.memory_bytes as f64 / GIB,
        if mem_ok {
            ""
        } else {
            "  ← more than 90% of memory"
        }
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "CPU       heartbeats {:>6.2} CPUs  ({:.0} pings/s × {:.1} µs)",
        p.heartbeat_cpus,
        p.pings_per_sec,
        f.ping_us(w.link)
    );
    if w.rooms > 0 {
        let delay = if w.write_delay_secs > 0.0 {
            format!(" with --write-delay {:.0}ms", w.write_delay_secs * 1e3)
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "          deliveries {:>6.2} CPUs  ({:.0}/s in {:.0} sends/s, {:.1} per send{delay}: {:.0} ns per send ({}) + {:.0} ns per delivery + {:.2} ns per byte{})",
            p.delivery_cpus,
            p.deliveries_per_sec,
            p.sends_per_sec,
            p.messages_per_send,
            f.send_ns(w.link),
            w.link.name(),
            f.delivery_cpu_ns,
            f.wire_byte_ns,
            if w.tls && p.deliveries_per_sec > 0.0 {
                format!(
                    "; of it {:.0} ns per delivery sealing TLS records",
                    p.tls_cpus * 1e9 / p.deliveries_per_sec
                )
            } else {
                String::new()
            }
        );
        if p.saturated {
            let _ = writeln!(
                s,
                "          saturated: a send per delivery would take more than the CPUs; a busy loop keeps up by gathering {:.1} per send, at all of its CPU, its latency growing with each turn",
                p.messages_per_send
            );
        }
        let _ = writeln!(
            s,
            "          publishes  {:>6.2} CPUs  ({:.0}/s × {:.0} ns{})",
            p.publish_cpus,
            w.rooms as f64 * w.msg_rate / w.nodes.max(1) as f64,
            f.message_cpu_ns,
            if w.deflate && w.msg_size + ENVELOPE_BYTES >= DEFLATE_MIN_SIZE {
                format!(
                    " + {:.0} ns compressing",
                    (w.msg_size + ENVELOPE_BYTES) as f64 * DEFLATE_NS_PER_BYTE
                )
            } else {
                String::new()
            }
        );
        if w.nodes > 1 {
            let _ = writeln!(
                s,
                "          backplane  {:>6.2} CPUs  ({:.0} ns per publish, {:.0} ns per message received)",
                p.backplane_cpus, f.backplane_publish_ns, f.backplane_receive_ns
            );
        }
        let _ = writeln!(
            s,
            "          egress     {:.1} MB/s ({:.0} Mbit/s)",
            p.egress_bytes_per_sec / 1e6,
            p.egress_bytes_per_sec * 8.0 / 1e6
        );
    }
    let cpu_ok = p.cpus() <= m.cpus as f64 * 0.8;
    let _ = writeln!(
        s,
        "          total      {:>6.2} of {} CPUs{}",
        p.cpus(),
        m.cpus,
        if cpu_ok {
            ""
        } else {
            "  ← more than 80% of the CPUs"
        }
    );
    if p.heartbeat_cpus > HEARTBEAT_SHARE * m.cpus as f64 {
        let _ = writeln!(
            s,
            "          heartbeats alone take over {:.0}% of the CPUs: --ping-interval {} keeps them under it",
            HEARTBEAT_SHARE * 100.0,
            p.suggested_ping_interval
        );
    }
    let _ = writeln!(
        s,
        "          a ramp from zero costs {:.0} CPU-seconds of handshakes ({:.1} µs each{})",
        n as f64 * f.handshake_cpu_us / 1e6 + p.handshake_cpu_secs,
        f.handshake_cpu_us,
        if w.tls {
            format!(" + {TLS_HANDSHAKE_US:.0} µs for TLS")
        } else {
            String::new()
        }
    );
    if w.nodes > 1 && w.rooms > 0 {
        let _ = writeln!(
            s,
            "Redis     {:>6.2} CPUs in all ({:.0} publishes/s × ({:.1} µs + {:.1} µs × {} nodes subscribed)): {} Redis server(s), each under {:.0}% of a core (rooms are spread over them by name)",
            p.redis_cpus,
            w.rooms as f64 * w.msg_rate,
            f.redis_publish_us,
            f.redis_subscriber_us,
            p.room_nodes,
            p.redis_servers,
            REDIS_SHARE * 100.0
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "sysctls and limits (scripts/tune.sh sets them for 1M; `roomcast check` reads this machine):");
    for (name, value, why) in &p.sysctls {
        let _ = writeln!(s, "  {name} = {value}    # {why}");
    }
    let fits = mem_ok && cpu_ok;
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{}",
        if fits {
            "verdict: fits"
        } else {
            "verdict: does not fit; see the marked lines"
        }
    );
    (s, fits)
}

mod sends;
pub use sends::{frames_per_send, messages_per_send, Link};

#[cfg(test)]
mod tests;
