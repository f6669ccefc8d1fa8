//! Who may join and publish to which room: every join and pub goes through here, and a
//! refusal is answered with `{"op":"error","code":"forbidden"}`, the connection staying.
//!
//! Without auth configured everyone may do everything. With it, a connection's rights are
//! those of its token (see [`super::auth`]); one without a session yet (first-message
//! auth pending) may do nothing.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use super::auth::Session;

/// The sessions of one shard's connections, keyed by slab slot.
#[derive(Debug, Default)]
pub struct Sessions {
    /// Whether auth is configured at all.
    pub required: bool,
    by_slot: HashMap<u32, Session>,
    /// Token expiries, earliest first: (exp, slot, generation). A refresh pushes a new
    /// entry; a stale one is recognized by the session's own `exp`.
    pub expiries: BinaryHeap<Reverse<(u64, u32, u32)>>,
}

impl Sessions {
    pub fn new(required: bool) -> Sessions {
        Sessions {
            required,
            by_slot: HashMap::new(),
            expiries: BinaryHeap::new(),
        }
    }

    pub fn may_join(&self, slot: u32, room: &str) -> bool {
        !self.required
            || self
                .by_slot
                .get(&slot)
                .is_some_and(|s| s.rights.may_join(room))
    }

    pub fn may_publish(&self, slot: u32, room: &str) -> bool {
        !self.required
            || self
                .by_slot
                .get(&slot)
                .is_some_and(|s| s.rights.may_publish(room))
    }

    pub fn get(&self, slot: u32) -> Option<&Session> {
        self.by_slot.get(&slot)
    }

    /// Sets `slot`'s session, returning the one it replaces.
    pub fn insert(&mut self, slot: u32, session: Session) -> Option<Session> {
        self.by_slot.insert(slot, session)
    }

    /// The slots of `user`'s connections. O(sessions).
    pub fn slots_of(&self, user: &str) -> Vec<u32> {
        let mine = self.by_slot.iter().filter(|(_, s)| &*s.sub == user);
        mine.map(|(&slot, _)| slot).collect()
    }

    pub fn remove(&mut self, slot: u32) -> Option<Session> {
        self.by_slot.remove(&slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::auth::Rights;
    use std::sync::Arc;

    #[test]
    fn rights_apply_only_when_auth_is_required() {
        let open = Sessions::new(false);
        assert!(open.may_join(1, "x") && open.may_publish(1, "x"));
        let mut s = Sessions::new(true);
        assert!(!s.may_join(1, "x"), "no session, no rights");
        s.insert(
            1,
            Session {
                sub: Arc::from("ann"),
                exp: u64::MAX,
                rights: Arc::new(Rights {
                    join: vec!["x*".into()],
                    publish: vec![],
                }),
            },
        );
        assert!(s.may_join(1, "xy") && !s.may_join(1, "y") && !s.may_publish(1, "xy"));
        assert!(s.remove(1).is_some() && !s.may_join(1, "xy"));
    }
}
