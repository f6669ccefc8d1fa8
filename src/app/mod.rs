//! The application layer: the JSON client protocol on `/ws`, authentication, admission
//! and per-room authorization. It glues connections to rooms; it does no I/O itself.

pub mod auth;
pub mod authz;
pub mod gate;
pub mod ops;

use std::sync::Arc;

/// What a `/ws` connection asked for, for its shard to carry out: the shard, not the
/// connection, has the rooms and the mesh.
#[derive(Debug, PartialEq, Eq)]
pub enum Intent {
    Join {
        room: Arc<str>,
    },
    Leave {
        room: Arc<str>,
    },
    /// `data` is the raw JSON text of the message's `data`, copied once out of the read
    /// buffer; it is spliced into the delivered frame as it is.
    Pub {
        room: Arc<str>,
        data: Box<str>,
        id: Option<u64>,
    },
    /// A token was accepted (at the handshake or in an `auth` op): record the session.
    Login(auth::Session),
    /// A `refresh` op brought a valid token: it replaces the session if the user matches.
    Refresh(auth::Session),
}

/// What to do when a member's out-ring is full (`--slow-policy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SlowPolicy {
    /// Drop the oldest queued delivery to make room (the member sees a gap in `seq`).
    DropOldest,
    /// Drop the new delivery (the member sees a gap in `seq`).
    DropNewest,
    /// Close the connection with 1008 "slow consumer".
    Close,
}
