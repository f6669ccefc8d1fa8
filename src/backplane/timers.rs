//! The backplane's timers: control requests that waited too long, connections that
//! stopped answering (keepalive), and the TTL of the rooms this node has members in.

use std::io;
use std::time::{Duration, Instant};

use crate::rooms::owner_of;

use super::scripts::keys;
use super::*;

impl<M: Carrier> Backplane<M> {
    pub(super) fn timers(&mut self, now: Instant) {
        if !self.ctl_waits.is_empty() {
            self.finish_ctl(true);
        }
        for i in 0..self.servers.len() {
            self.keepalive(i, now);
        }
        if now < self.next_refresh {
            return;
        }
        self.next_refresh = now + refresh_every(self.cfg.ttl_ms);
        // Rooms with members here keep their keys (and so their epoch) alive.
        let n = self.servers.len();
        for (name, r) in &self.rooms {
            if !r.known {
                continue;
            }
            let s = &mut self.servers[owner_of(name, n)];
            let Some(cmd) = s.cmd.as_mut() else {
                continue;
            };
            let (m, st, _) = keys(name);
            cmd.send(&[b"PEXPIRE", &m, self.ttl_arg.as_bytes()]);
            cmd.send(&[b"PEXPIRE", &st, self.ttl_arg.as_bytes()]);
            s.inflight.push_back((Pending::Ignore, now));
            s.inflight.push_back((Pending::Ignore, now));
        }
    }
}

impl<M: Carrier> Backplane<M> {
    /// A connection that stopped answering (a half-open TCP connection: the host or the
    /// network gone) is given up after [`REPLY_TIMEOUT`]: a command unanswered that long,
    /// or a `PING` on the idle connections (every [`KEEPALIVE`]) unanswered.
    pub(super) fn keepalive(&mut self, i: usize, now: Instant) {
        let s = &mut self.servers[i];
        let (Some(cmd), Some(sub)) = (s.cmd.as_mut(), s.sub.as_mut()) else {
            return;
        };
        let oldest = s.inflight.front().map(|(_, at)| now - *at);
        let silent = s.sub_ping.is_some_and(|at| now - at > REPLY_TIMEOUT);
        if oldest.is_some_and(|age| age > REPLY_TIMEOUT) || silent {
            let e = io::Error::new(io::ErrorKind::TimedOut, "Redis stopped answering");
            return self.fail(i, &e);
        }
        if now < s.next_ping {
            return;
        }
        s.next_ping = now + KEEPALIVE;
        if oldest.is_none() {
            cmd.send(&[b"PING"]);
            s.inflight.push_back((Pending::Ignore, now));
        }
        if s.sub_ping.is_none() {
            sub.send(&[b"PING"]);
            s.sub_ping = Some(now);
        }
    }
}

pub(super) fn refresh_every(ttl_ms: u64) -> Duration {
    Duration::from_millis((ttl_ms / 3).max(1000))
}
