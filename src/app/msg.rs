//! What the shards and the backplane send each other over the mesh, by channel: each
//! receiver matches only the channel it is on the end of. Room names and data are shared
//! (`Arc<str>`), frames are shared (`SharedFrame`): sending one copies no payload.
//!
//! - [`ToOwner`]: to a room's owner shard, from a member's shard.
//! - [`ToMember`]: from a room's owner to the shard of its members.
//! - [`Api`]: the server API's scatter-gather between shards (and the backplane).
//! - [`Msg::Backplane`] and [`Msg::FromBackplane`]: to and from the backplane, in its own
//!   types ([`backplane::Request`], [`backplane::Event`]); this file is where the app wraps
//!   them ([`backplane::Carrier`]).

use std::sync::Arc;

use crate::backplane::{self, Event, Request};
use crate::gather::{Answer, Ask, Publish, Reply};
use crate::hooks;
use crate::protocol::SharedFrame;
use crate::rooms::{Joined, ENCODINGS};

use super::encoding::Encoding;

/// One mesh message.
#[derive(Debug)]
pub enum Msg {
    Owner(ToOwner),
    Member(ToMember),
    Api(Api),
    /// To the backplane thread.
    Backplane(Request),
    /// From the backplane thread, as it said it.
    FromBackplane(Event),
    /// To the hooks thread.
    Hooks(hooks::Request),
    /// From the hooks thread: the backend's answer to a call.
    FromHooks(hooks::Decided),
}

/// To a room's owner shard.
#[derive(Debug)]
pub enum ToOwner {
    /// A connection on `shard` wants to join, with its deliveries in `encoding`
    /// , resuming after `since = (seq, epoch)` if given.
    Join {
        room: Arc<str>,
        shard: u16,
        slot: u32,
        gen: u32,
        encoding: Encoding,
        since: Option<(u64, u32)>,
    },
    /// A member on `shard` (in `slot`) left (or closed).
    Leave {
        room: Arc<str>,
        shard: u16,
        slot: u32,
        encoding: Encoding,
    },
    /// Publish (without a backplane: with one, publishes go to it as a
    /// [`Request::Publish`]).
    Publish(Publish),
    /// A presence event of `room` (`--presence-events`), from a member's shard (the owner
    /// sends it on to the backplane as a [`Request::Presence`]).
    Presence { room: Arc<str>, json: Arc<[u8]> },
}

/// From a room's owner to a member's shard.
#[derive(Debug)]
pub enum ToMember {
    /// The join took effect after message `joined.seq`; `joined.replay` is what the member
    /// missed, if it resumed.
    Joined {
        room: Arc<str>,
        slot: u32,
        gen: u32,
        joined: Joined,
    },
    /// The join of `slot` was refused (the backplane cannot reach Redis).
    JoinFailed { room: Arc<str>, slot: u32, gen: u32 },
    /// This turn's batch for `room`, messages `first..=last`, encoded once per encoding
    /// some member uses (indexed by encoding).
    Deliver {
        room: Arc<str>,
        first: u64,
        last: u64,
        frames: Arc<[Option<SharedFrame>; ENCODINGS]>,
    },
    /// A presence event for the members on this shard.
    PresenceDeliver { room: Arc<str>, json: Arc<[u8]> },
    /// The publish `id` of `slot` got sequence number `seq`.
    Ack {
        slot: u32,
        gen: u32,
        id: u64,
        seq: u64,
    },
    /// `room`'s sequence started over in `epoch` after `seq` (Redis lost it): positions
    /// held so far mean nothing.
    Reset {
        room: Arc<str>,
        epoch: u32,
        seq: u64,
    },
}

/// The server API's scatter-gather.
#[derive(Debug)]
pub enum Api {
    /// API request `req` on `shard` asks this shard something.
    Ask { shard: u16, req: u32, ask: Ask },
    /// The answer, back to the requesting shard.
    Answer { req: u32, answer: Answer },
}

impl crate::mesh::Message for Msg {
    /// Deliveries and WebSocket publishes may be dropped past the backlog limit (counted);
    /// membership, acknowledgements and the API's requests never: losing one would
    /// corrupt a room or leave a request unanswered.
    fn droppable(&self) -> bool {
        match self {
            Msg::Member(ToMember::Deliver { .. } | ToMember::PresenceDeliver { .. })
            | Msg::Owner(ToOwner::Presence { .. })
            | Msg::Backplane(Request::Presence { .. })
            | Msg::FromBackplane(Event::Presence { .. }) => true,
            // What webhooks report may be lost under a backed-up mesh (counted, like a
            // full webhook queue); a call and its answer never.
            Msg::Hooks(hooks::Request::Happened(_)) => true,
            Msg::Owner(ToOwner::Publish(p)) | Msg::Backplane(Request::Publish(p)) => {
                !matches!(p.reply, Reply::Api(..))
            }
            _ => false,
        }
    }
}

impl From<ToOwner> for Msg {
    fn from(m: ToOwner) -> Msg {
        Msg::Owner(m)
    }
}

impl From<ToMember> for Msg {
    fn from(m: ToMember) -> Msg {
        Msg::Member(m)
    }
}

impl From<Api> for Msg {
    fn from(m: Api) -> Msg {
        Msg::Api(m)
    }
}

impl From<Request> for Msg {
    fn from(r: Request) -> Msg {
        Msg::Backplane(r)
    }
}

impl From<Event> for Msg {
    fn from(e: Event) -> Msg {
        Msg::FromBackplane(e)
    }
}

/// The backplane takes what is sent to it as its own request; the app addresses it so.
impl backplane::Carrier for Msg {
    fn into_request(self) -> Result<Request, Msg> {
        match self {
            Msg::Backplane(r) => Ok(r),
            other => Err(other),
        }
    }
}

impl From<hooks::Request> for Msg {
    fn from(r: hooks::Request) -> Msg {
        Msg::Hooks(r)
    }
}

impl From<hooks::Decided> for Msg {
    fn from(d: hooks::Decided) -> Msg {
        Msg::FromHooks(d)
    }
}

/// The hooks thread takes what is sent to it as its own request.
impl hooks::Carrier for Msg {
    fn into_request(self) -> Result<hooks::Request, Msg> {
        match self {
            Msg::Hooks(r) => Ok(r),
            other => Err(other),
        }
    }
}
