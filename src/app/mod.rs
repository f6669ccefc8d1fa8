//! The application: what roomcast's connections mean. It is the reactor's
//! [`Service`](crate::reactor::Service) ([`App`], one per shard): the plain HTTP endpoints,
//! `/echo`, and the JSON client protocol on `/ws` with authentication, admission, per-room
//! authorization and the rooms themselves. It glues connections to [`crate::rooms`] and
//! the mesh; it does no I/O itself.
//!
//! By role, each with its own state:
//! - `ws` (`Front`): bytes in, for one connection: the request, admission, WebSocket
//!   frames, ops; [`sse`]: `GET /sse`, the rooms as a server-sent event stream; [`conn`]:
//!   the app's part of a connection's slot.
//! - [`service`]: the [`Service`](crate::reactor::Service) impl and the intents a
//!   connection hands its shard.
//! - `owner` (`OwnerSide`): the rooms this shard owns: sequencing, sealing, and `batch`,
//!   a batch encoded once per [`encoding::Encoding`] in use.
//! - `member` (`Members`): the rooms' members here, delivery; [`slow`]: slow-consumer
//!   policies and the `gap` notices they owe.
//! - `cluster`: what the backplane tells a shard.
//! - [`authz`] (`Sessions`), [`auth`], [`gate`]: tokens and their expiry, room rights,
//!   admission limits.
//! - [`api`] (`Requests`): `/api/…`, the server API for backends.
//! - `msg`: what travels over the mesh, by channel; [`wire`]: the JSON ops, parsed and
//!   encoded; [`figures`]: what the app counts.

pub mod api;
mod assets;
pub mod auth;
pub mod authz;
pub mod backend;
mod batch;
mod cluster;
mod compress;
pub mod conn;
pub mod encoding;
pub mod figures;
#[doc(hidden)]
pub mod fuzz;
pub mod gate;
mod member;
mod msg;
mod owner;
mod presence;
pub use msg::{Api, Msg, ToMember, ToOwner};
pub mod service;
pub mod slow;
pub mod sse;
pub mod wire;
mod ws;

use std::sync::Arc;

use crate::ops::admin::Info;
use crate::protocol::{Limits, OpCode, SharedFrame};
use crate::reactor::ShardInfo;
use crate::rooms::Owner;

/// What a `/ws` connection asked for, for its shard to carry out once the connection's
/// bytes are handled: the shard, not the connection, has the rooms and the mesh.
#[derive(Debug, PartialEq, Eq)]
pub enum Intent {
    /// A room op. A publish's `data` is the raw JSON text of the message's `data`, copied
    /// once out of the read buffer; it is spliced into the delivered frame as it is.
    Room(wire::RoomOp<Arc<str>>),
    /// A token was accepted (at the handshake or in an `auth` op): record the session.
    Login(auth::Session),
    /// A `refresh` op brought a valid token: it replaces the session if the user matches.
    Refresh(auth::Session),
    /// A room the connect hook joins the connection to (no rights or join hook asked).
    ServerJoin(Arc<str>),
    /// An `rpc` op, for the backend.
    Rpc {
        method: Arc<str>,
        data: Arc<str>,
        id: u64,
    },
}

/// What to do when a member's out-ring is full (`--slow-policy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

/// The app's settings, shared by every shard.
#[derive(Clone, Debug)]
pub struct Settings {
    pub limits: Limits,
    pub max_header_bytes: usize,
    /// `--rate` (messages per second, 0: off) and `--burst`.
    pub rate: u32,
    pub burst: u32,
    /// `--idle-timeout` in ms (0: off).
    pub idle_ms: u32,
    pub slow_policy: SlowPolicy,
    pub max_rooms_per_conn: usize,
    /// Unsent bytes a member may have left over from earlier turns.
    pub max_queued_bytes: usize,
    /// How much history each room keeps (`--history-size`, `--history-bytes`,
    /// `--history-ttl`).
    pub history: crate::rooms::Retention,
    /// `--api-key` (None: the server API is off) and `--api-max-body`.
    pub api_key: Option<Arc<str>>,
    pub api_max_body: usize,
    /// `--demo`: the demo page at `/`.
    pub demo: bool,
    /// `--presence-events`: members are told of joins and leaves.
    pub presence_events: bool,
    /// `--deflate`: permessage-deflate is agreed when offered; `--deflate-min-size`.
    pub deflate: bool,
    pub deflate_min_size: usize,
    /// Whether a backplane (`--redis`) orders the rooms: it is the mesh endpoint after
    /// the shards.
    pub backplane: bool,
    /// The hooks and webhooks in use (`[hooks]`), if any: the hooks thread is the mesh
    /// endpoint after the shards and the backplane.
    pub hooks: Option<backend::HookUse>,
}

/// One shard's app: its share of the rooms, its connections' sessions. Its state is kept
/// by role, each part in the file of the role that owns it.
pub struct App {
    cfg: Arc<Settings>,
    shard: usize,
    shards: usize,
    /// The endpoints' shared state: admission, the figures they answer with, shared frames.
    front: ws::Front,
    /// The rooms' members on this shard and the gap notices they are owed.
    members: member::Members,
    /// The rooms this shard owns: sequencing, history, sealing.
    owner: owner::OwnerSide,
    /// Who may join and publish where: the connections' token sessions and expiries.
    sessions: authz::Sessions,
    /// The server API's requests of this shard, and those of others it waits on.
    api: api::Requests,
    /// What the connection being handled asked of its shard, carried out right after.
    intents: Vec<Intent>,
    /// Of those, publishes that will be acknowledged: they count against the ring.
    acks_owed: usize,
    /// Publishers paused because the mesh towards an owner is backed up.
    mesh_paused: Vec<(usize, u32)>,
    /// permessage-deflate's compressors and inflater (`--deflate`; else none): the
    /// endpoints inflate with it, the owner and the members' replays compress with it.
    codec: Option<Box<compress::Codec>>,
    /// The application's backend (hooks and webhooks on): what this shard asked of it.
    backend: Option<backend::Backend>,
    /// Hook calls asked while a connection's bytes were read, sent right after.
    pending_calls: Vec<crate::hooks::Request>,
}

impl App {
    pub fn new(
        cfg: Arc<Settings>,
        gate: Arc<gate::Gate>,
        info: Arc<Info>,
        shard: &ShardInfo,
    ) -> App {
        let mut history = cfg.history;
        history.idle_bytes /= shard.shards.max(1);
        let mut owner = Owner::new(shard.shards, history, epoch_seed(shard.index));
        if cfg.backplane {
            owner = owner.with_backplane();
        }
        let backend = cfg.hooks.clone().map(|h| {
            let endpoint = shard.shards + usize::from(cfg.backplane);
            backend::Backend::new(h, endpoint)
        });
        let mut deflate_limits = cfg.limits;
        deflate_limits.rules.rsv_allowed = 0b100;
        App {
            sessions: authz::Sessions::new(gate.auth.is_some()),
            front: ws::Front {
                gate,
                info,
                stats: shard.stats.clone(),
                drain: shard.drain.clone(),
                ping: SharedFrame::new(OpCode::Ping, b""),
                sse_beat: sse::heartbeat(),
                deflate_limits,
                ws_closed: 0,
                sse_closed: 0,
            },
            members: member::Members::default(),
            owner: owner::OwnerSide::new(owner),
            api: api::Requests::default(),
            codec: cfg
                .deflate
                .then(|| Box::new(compress::Codec::new(cfg.deflate_min_size))),
            cfg,
            shard: shard.index,
            shards: shard.shards,
            intents: Vec::new(),
            acks_owed: 0,
            mesh_paused: Vec::new(),
            backend,
            pending_calls: Vec::new(),
        }
    }
}

/// A seed for a shard's epochs that differs between runs, processes and shards: a
/// restarted server must not hand out an epoch its previous run used for the same room.
fn epoch_seed(shard: usize) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32) ^ (shard as u64).wrapping_mul(0x9E37_79B9)
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_history;
