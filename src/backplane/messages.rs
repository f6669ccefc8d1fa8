//! What the backplane takes from the shards ([`Request`]) and what it tells them
//! ([`Event`]), in its own types. The mesh carries the app's message type; the app wraps
//! these in it and unwraps them ([`Carrier`]), so the backplane never names the app.

use std::sync::Arc;

use crate::gather::{Answer, Ask, Publish};

/// What the shards ask of the backplane.
#[derive(Debug)]
pub enum Request {
    /// Publish through the room's Redis (one order cluster-wide), then answer as the
    /// publish's `reply` says.
    Publish(Publish),
    /// The room's owner: this node has members in `room` now: subscribe, and send its
    /// state ([`Event::Synced`]) with the messages after `after`.
    Sub {
        room: Arc<str>,
        after: Option<u64>,
        sub: u32,
    },
    /// The room's owner: no members here any more.
    Unsub { room: Arc<str> },
    /// The room's owner: the messages after `after`, for a resume.
    Fetch { room: Arc<str>, after: u64 },
    /// The room's owner: a presence event of `room`, for the other nodes.
    Presence { room: Arc<str>, json: Arc<[u8]> },
    /// API request `req` on `shard` asks every node ([`Event::Answer`] comes back).
    Ask { shard: u16, req: u32, ask: Ask },
    /// A shard's answer to an [`Event::Ask`] this thread sent it.
    Answer { req: u32, answer: Answer },
}

/// What the backplane tells the shards.
#[derive(Debug)]
pub enum Event {
    /// To the room's owner: the room's epoch and last seq in Redis, and the newest
    /// messages after what was asked (in seq order). `fetch`: history asked for a resume.
    Synced {
        room: Arc<str>,
        epoch: u32,
        seq: u64,
        entries: Vec<(u64, Arc<str>)>,
        fetch: bool,
        /// The subscription it answers ([`Request::Sub`]).
        sub: u32,
    },
    /// To the room's owner: a message of `room`, in the cluster's order.
    Remote {
        room: Arc<str>,
        epoch: u32,
        seq: u64,
        data: Arc<str>,
    },
    /// To the room's owner: a presence event from another node.
    Presence { room: Arc<str>, json: Arc<[u8]> },
    /// To the room's owner: `room` cannot be subscribed (its Redis is down).
    SubFailed { room: Arc<str> },
    /// To the room's owner: history asked for a resume ([`Request::Fetch`]) cannot be
    /// read (its Redis is down or answered an error), for subscription `sub`.
    FetchFailed { room: Arc<str>, sub: u32 },
    /// To the publisher's shard: publish `id` of `slot` got `seq`.
    Ack {
        slot: u32,
        gen: u32,
        id: u64,
        seq: u64,
    },
    /// To the publisher's shard: the publish (`id`) of `slot` was not made (Redis is
    /// down), or (`unknown`) its answer was lost with the connection.
    Refused {
        slot: u32,
        gen: u32,
        id: Option<u64>,
        unknown: bool,
    },
    /// To the publisher's shard, for a publish that asked to be told (`notify`): it got
    /// `(epoch, seq)`.
    Published {
        room: Arc<str>,
        epoch: u32,
        seq: u64,
        data: Arc<str>,
        user: Option<Arc<str>>,
    },
    /// To a shard: this thread (mesh endpoint `shard`) asks it, for request `req`.
    Ask { shard: u16, req: u32, ask: Ask },
    /// To the shard whose API request `req` this answers.
    Answer { req: u32, answer: Answer },
}

/// The mesh's message type, as the backplane sees it: it can carry an [`Event`], and it
/// may be a [`Request`].
pub trait Carrier: crate::mesh::Message + From<Event> + std::fmt::Debug {
    /// The request this message makes of the backplane, or the message back if it is
    /// none (a message the backplane does not take).
    fn into_request(self) -> Result<Request, Self>;
}
