//! The backplane: rooms across several roomcast nodes, through Redis (`--redis`).
//!
//! One thread per process, attached to the shards as the mesh endpoint after them. It owns
//! two connections to every Redis server (commands, pipelined; pub/sub), and rooms are
//! spread over the servers by a stable hash of the name.
//!
//! - **One order.** A publish goes from the publisher's shard to this thread, which runs
//!   a Lua script on the room's Redis: it gives the message the room's next `seq` (and the
//!   room's `epoch`, made on first use), appends it to the room's stream (`XADD … MAXLEN ~
//!   --history-size`) and `PUBLISH`es it, atomically. Every node, the publisher's too,
//!   delivers what arrives on the room's channel, in that order. Publishes are written to
//!   Redis together, once per turn of this thread, not one round trip each.
//! - **Subscriptions follow members.** A room's owner shard asks for the room's channel
//!   when the node's first member joins ([`Request::Sub`]) and gives it up when the last leaves
//!   ([`Request::Unsub`]). Once subscribed, this thread reads the room's state (epoch, seq,
//!   and the messages a resuming member needs) and hands it to the owner ([`Event::Synced`]);
//!   messages that arrived meanwhile are held and follow, without duplicates.
//! - **No silent gap.** A message whose seq skips ahead (pub/sub lost some while a
//!   connection was down) makes this thread hold it and read what is missing from the
//!   stream first; what the stream no longer has becomes a `gap` notice on the shards.
//!   After a reconnect every room catches up the same way.
//! - **Resume anywhere.** A join with `since` that the node's own history does not cover
//!   is served from the stream ([`Request::Fetch`]).
//! - **Presence, rooms, disconnect** are asked of every node over a control channel:
//!   each node counts its own members and answers on the same channel. A node that died
//!   is no longer subscribed, so it is not waited for and counts for nothing.
//! - **Redis down**: publishes are refused (`unavailable`), connections stay up, the
//!   backplane reconnects with backoff (100 ms doubling to 2 s), then re-subscribes and
//!   catches every room up from the streams.

pub mod conn;
mod control;
mod messages;
pub mod resp;
mod run;
mod scripts;
mod status;
mod timers;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::gather::{Answer, Reply};
use crate::mesh::Endpoint;
use conn::Conn;
pub use conn::Target;
pub use messages::{Carrier, Event, Request};
pub use status::Status;

/// The control channel (on the first Redis): presence, rooms and disconnect requests.
const CTL: &[u8] = b"rc:ctl";
/// How long a request over the control channel waits for the other nodes.
const CTL_TIMEOUT: Duration = Duration::from_secs(1);
/// A Redis connection that leaves a command (or a `PING`) unanswered this long is given up.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// How often idle connections are pinged.
const KEEPALIVE: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Channels per SUBSCRIBE when re-subscribing many rooms.
const SUBSCRIBE_CHUNK: usize = 1000;

/// What the backplane is started with.
#[derive(Clone, Debug)]
pub struct Settings {
    pub targets: Vec<Target>,
    pub node: String,
    pub shards: usize,
    /// Messages each room's stream keeps (`--history-size`, at least 1).
    pub history_size: usize,
    /// How long a room's keys live without a publish or a member (`--history-ttl`).
    pub ttl_ms: u64,
}

/// Starts the backplane's thread on mesh endpoint `mesh` (the one after the shards),
/// reporting to `status`.
pub fn spawn<M: Carrier>(cfg: Settings, mesh: Endpoint<M>, status: Arc<Status>) -> io::Result<()> {
    let mut bp = Backplane::new(cfg, mesh, status);
    // Connect once before serving, so the first joins do not wait for a retry.
    let now = Instant::now();
    for i in 0..bp.servers.len() {
        bp.connect(i, now);
    }
    std::thread::Builder::new()
        .name("backplane".into())
        .spawn(move || bp.run())?;
    Ok(())
}

/// A random node id: 16 hex digits.
pub fn random_node_id() -> String {
    format!("{:016x}", splitmix(seed()))
}

fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 40)
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What a command sent to Redis was for: its reply is matched in order.
#[derive(Debug)]
enum Pending {
    /// SCRIPT LOAD, PEXPIRE, control answers: nothing waits for the reply.
    Ignore,
    Publish {
        shard: u16,
        slot: u32,
        gen: u32,
        reply: Reply,
        /// What the publisher's shard is told once it has its place (`notify`).
        notify: Option<Box<Told>>,
    },
    /// The room's state for its owner: a (re)subscription's catch-up, or (`fetch`)
    /// history for a resume.
    Sync { room: Arc<str>, fetch: bool },
    Page {
        room: Arc<str>,
        shard: u16,
        req: u32,
        since: u64,
    },
    /// A request published on the control channel: the reply counts the receivers.
    Ctl { id: u64 },
}

/// A publish the publisher's shard is told of once it has its place: room, data, user.
type Told = (Arc<str>, Arc<str>, Option<Arc<str>>);

struct Server {
    target: Target,
    cmd: Option<Conn>,
    sub: Option<Conn>,
    inflight: VecDeque<(Pending, Instant)>,
    retry_at: Instant,
    /// When the idle connections are next pinged, and when the pub/sub one was pinged
    /// (not answered yet).
    next_ping: Instant,
    sub_ping: Option<Instant>,
    /// Whether the command and pub/sub connections were reported readable.
    ready: [bool; 2],
    backoff: Duration,
    ever_up: bool,
    /// Whether the control channel's subscription is confirmed (first server only).
    ctl: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// SUBSCRIBE sent (or to send once connected), not confirmed.
    Subscribing,
    /// Subscribed; the room's state is being read.
    Syncing,
    Live,
}

/// A room this node is subscribed to.
struct Room {
    state: State,
    /// Whether `epoch`/`last` came from Redis (after the first sync).
    known: bool,
    epoch: u32,
    /// The last seq handed to the owner.
    last: u64,
    /// The first sync's messages start after this (a resuming first member's `since`).
    first_after: Option<u64>,
    /// Messages that arrived while syncing, or past a hole: (epoch, seq, data).
    held: Vec<(u32, u64, Arc<str>)>,
    /// The owner's number for this subscription, returned with its states.
    sub: u32,
}

/// A request of a local shard over the control channel, waiting for the other nodes.
struct CtlWait {
    id: u64,
    shard: u16,
    req: u32,
    /// Nodes that received it (but us), once Redis said.
    expected: Option<u64>,
    got: u64,
    acc: Answer,
    deadline: Instant,
}

/// Another node's request, being answered by our shards.
struct Gather {
    gid: u32,
    node: String,
    id: u64,
    left: usize,
    acc: Answer,
}

struct Backplane<M> {
    cfg: Settings,
    mesh: Endpoint<M>,
    /// Our mesh index (shards ask us, and we ask them, as this "shard").
    me: u16,
    status: Arc<Status>,
    servers: Vec<Server>,
    rooms: HashMap<Arc<str>, Room>,
    /// SUBSCRIBEs not yet confirmed, per room: a room is subscribed once all are.
    subs_pending: HashMap<Arc<str>, u32>,
    shas: Vec<String>,
    rng: u64,
    next_ctl: u64,
    ctl_waits: Vec<CtlWait>,
    gathers: Vec<Gather>,
    next_gather: u32,
    next_refresh: Instant,
    /// The scripts' stream length and TTL arguments (`--history-size`, `--history-ttl`),
    /// formatted once.
    size_arg: String,
    ttl_arg: String,
}
