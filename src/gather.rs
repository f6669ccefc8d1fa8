//! The server API's scatter-gather and the answers to publishes: what a shard (or, through
//! the backplane, every node) is asked on behalf of an API request elsewhere ([`Ask`]), its
//! [`Answer`], how answers add up, and whom a publish's outcome goes to ([`Reply`]).
//!
//! The app asks and answers on the shards; the backplane carries the same questions to the
//! other nodes and adds their answers up. Both use these types, and neither imports the
//! other. Pure data: no I/O.

use std::sync::Arc;

/// A publish on its way to be given its seq (by the room's owner shard, or by Redis through
/// the backplane); `slot` on `shard` is answered as `reply` says.
#[derive(Debug)]
pub struct Publish {
    pub room: Arc<str>,
    /// The raw JSON text of the message's `data`, spliced into deliveries as it is.
    pub data: Arc<str>,
    pub shard: u16,
    pub slot: u32,
    pub gen: u32,
    pub reply: Reply,
    /// Whether the webhooks want to hear of it once it has its place (`client_publish`),
    /// and the publisher's user for them.
    pub notify: bool,
    pub user: Option<Arc<str>>,
}

/// What a shard is asked on behalf of an API request elsewhere.
#[derive(Clone, Debug)]
pub enum Ask {
    /// To the owner: `room`'s messages after `since`, at most `limit`.
    History {
        room: Arc<str>,
        since: u64,
        limit: usize,
    },
    /// To every shard: its members of `room` and their users.
    Presence { room: Arc<str> },
    /// To every shard: the rooms it owns, with their members.
    Rooms,
    /// To every shard: close `user`'s connections with `code` and `reason`.
    Disconnect {
        user: Arc<str>,
        code: u16,
        reason: Arc<str>,
    },
}

/// A shard's answer to an [`Ask`].
#[derive(Debug)]
pub enum Answer {
    History(Option<crate::rooms::Page>),
    Presence {
        members: u64,
        users: Vec<Arc<str>>,
    },
    Rooms(Vec<(Arc<str>, u64)>),
    Closed(u64),
    /// A publish of a broadcast (or a publish) got `seq` in `epoch` (0, `None`: the room
    /// does not exist).
    Published {
        index: u16,
        seq: u64,
        epoch: Option<u32>,
    },
    /// The backplane cannot reach Redis: publish `index` was not made (or the history
    /// cannot be read); `unknown`: it was sent and the answer was lost with the connection.
    Unavailable {
        index: u16,
        unknown: bool,
    },
}

/// What the owner answers a publish with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Nothing (a `pub` without `id`).
    None,
    /// `{"op":"ack","id":…}` to the publisher's WebSocket.
    Ack(u64),
    /// The `index`-th publish of API request `req` (its number on the publisher's shard).
    Api(u32, u16),
}

/// An answer that counts nothing yet, of the kind `ask` wants.
pub fn empty(ask: &Ask) -> Answer {
    match ask {
        Ask::Presence { .. } => Answer::Presence {
            members: 0,
            users: Vec::new(),
        },
        Ask::Rooms | Ask::History { .. } => Answer::Rooms(Vec::new()),
        Ask::Disconnect { .. } => Answer::Closed(0),
    }
}

/// Adds `more` into `acc` (answers of the same kind).
pub fn merge(acc: &mut Answer, more: Answer) {
    match (acc, more) {
        (
            Answer::Presence { members, users },
            Answer::Presence {
                members: m,
                users: u,
            },
        ) => {
            *members += m;
            users.extend(u);
        }
        (Answer::Rooms(all), Answer::Rooms(r)) => all.extend(r),
        (Answer::Closed(n), Answer::Closed(m)) => *n += m,
        _ => {}
    }
}
