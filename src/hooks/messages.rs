//! What the shards ask of the hooks thread ([`Request`]) and what it answers ([`Decided`]),
//! in its own types. Like the backplane's, they travel over the mesh wrapped in the app's
//! message type ([`Carrier`]): the hooks never name the app.

use std::sync::Arc;

/// Who asked: a connection on a shard (its slot and generation, so an answer for a
/// connection that has gone meanwhile finds nobody).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Caller {
    pub shard: u16,
    pub slot: u32,
    pub gen: u32,
}

/// A question for the application's backend. Connects and joins are questions (the same
/// one in flight twice is asked once, and an answer may be cached); publishes and RPCs are
/// actions (each is its own call, a connection's publishes in the order it sent them).
#[derive(Clone, Debug)]
pub enum Call {
    /// A handshake (`/ws` or `/sse`) without a token: who is this?
    Connect {
        /// `ip:port` of the client.
        client: String,
        path: String,
        query: String,
        /// The headers `--hook-forward-headers` names, lowercased, as the client sent them.
        headers: Vec<(String, String)>,
    },
    /// A connection identified by the connect hook nears its `expire_at`: may it go on?
    Refresh { user: Arc<str>, client: String },
    /// May this connection join `room`?
    Join {
        user: Option<Arc<str>>,
        room: Arc<str>,
        client: String,
        /// The join's `since`, carried back so the join goes on as asked.
        since: Option<(u64, u32)>,
    },
    /// A client's `pub`: allowed as sent, rewritten, or refused.
    Publish {
        user: Option<Arc<str>>,
        room: Arc<str>,
        /// The raw JSON text of the message's `data`.
        data: Arc<str>,
        /// The publish's `id` (an ack is owed), carried back.
        id: Option<u64>,
    },
    /// A client's `rpc` op.
    Rpc {
        user: Option<Arc<str>>,
        method: Arc<str>,
        data: Arc<str>,
        id: u64,
    },
}

impl Call {
    /// The kind's name, as the backend sees it and the metrics label it.
    pub fn kind(&self) -> Kind {
        match self {
            Call::Connect { .. } => Kind::Connect,
            Call::Refresh { .. } => Kind::Refresh,
            Call::Join { .. } => Kind::Join,
            Call::Publish { .. } => Kind::Publish,
            Call::Rpc { .. } => Kind::Rpc,
        }
    }
}

/// The kinds of hook calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Connect,
    Refresh,
    Join,
    Publish,
    Rpc,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Connect,
        Kind::Refresh,
        Kind::Join,
        Kind::Publish,
        Kind::Rpc,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Connect => "connect",
            Kind::Refresh => "refresh",
            Kind::Join => "join",
            Kind::Publish => "publish",
            Kind::Rpc => "rpc",
        }
    }
}

/// Who a connect (or refresh) hook says the connection is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    pub user: Arc<str>,
    /// Rooms the connection joins at connect, server-side.
    pub rooms: Vec<Arc<str>>,
    /// Unix seconds after which the connection ends unless a refresh extends it (0: never).
    pub expire_at: u64,
    /// The backend's `data`, raw JSON, handed to the client.
    pub data: Option<Arc<str>>,
}

/// The backend's answer to a call, as the shard acts on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Go on as asked (a join, a publish as sent; with `--hook-fail-open`, also what the
    /// backend could not be asked about).
    Allow,
    /// A connect or refresh: who the connection is.
    Identity(Identity),
    /// A publish rewritten (publish this `data` instead) or an RPC's result.
    Data(Arc<str>),
    /// Refused, with the backend's code (an HTTP status for a connect; 0 when it gave
    /// none) and reason.
    Refused { code: u16, reason: Arc<str> },
    /// The backend could not answer in time (down, too slow, over `--hook-max-inflight`
    /// for longer than `--hook-timeout`, or an answer that is not one).
    Unavailable,
}

/// What the shards send the hooks thread.
#[derive(Debug)]
pub enum Request {
    /// Ask the backend; the answer comes back to `from` as a [`Decided`].
    Call { from: Caller, call: Call },
    /// Something happened that webhooks may report.
    Happened(super::Happening),
}

/// The answer to a [`Request::Call`]: the call given back with the verdict, so the shard
/// needs no table of its own for what it asked.
#[derive(Debug)]
pub struct Decided {
    pub to: Caller,
    pub call: Call,
    pub verdict: Verdict,
}

/// The mesh's message type, as the hooks thread sees it: it can carry a [`Decided`], and
/// it may be a [`Request`].
pub trait Carrier: crate::mesh::Message + From<Decided> + std::fmt::Debug {
    /// The request this message makes of the hooks thread, or the message back if it is
    /// none.
    fn into_request(self) -> Result<Request, Self>;
}
