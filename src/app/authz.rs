//! Who may join and publish to which room: the hook every join and pub goes through.
//!
//! Today the only policy is [`AllowAll`] (no auth configured). The security work plugs a
//! token-derived policy in here; the shard asks it before every join and every publish and
//! answers a refusal with `{"op":"error","code":"forbidden"}`, the connection staying open.

/// A decision about one room operation.
pub trait RoomPolicy: Send {
    fn may_join(&self, conn: ConnRef, room: &str) -> bool;
    fn may_publish(&self, conn: ConnRef, room: &str) -> bool;
}

/// Which connection asks: its shard-local slot and generation (the policy keeps its own
/// per-connection claims keyed by these).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnRef {
    pub slot: u32,
    pub gen: u32,
}

/// Everyone may do everything (no auth configured).
#[derive(Clone, Copy, Debug, Default)]
pub struct AllowAll;

impl RoomPolicy for AllowAll {
    fn may_join(&self, _: ConnRef, _: &str) -> bool {
        true
    }

    fn may_publish(&self, _: ConnRef, _: &str) -> bool {
        true
    }
}
