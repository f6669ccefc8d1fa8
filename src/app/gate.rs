//! Admission at the handshake: allowed origins, tokens, and the connection limits that
//! span shards (total, per address, per user). Shared by every shard; touched once when a
//! connection upgrades and once when it closes, never per message.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::auth::Auth;

#[derive(Debug, Default)]
pub struct Gate {
    /// `--allow-origin` patterns; empty: any origin (or none) is accepted.
    pub origins: Vec<String>,
    pub auth: Option<Auth>,
    /// `--max-conns` (with `auto`, moved by the capacity model as the load changes),
    /// `--max-conns-per-ip`, `--max-conns-per-user`; 0 means no limit.
    max_conns: AtomicUsize,
    pub max_per_ip: usize,
    pub max_per_user: usize,
    open: AtomicUsize,
    ips: Mutex<HashMap<u32, u32>>,
    users: Mutex<HashMap<Arc<str>, u32>>,
}

/// Why a connection was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    TooManyFromAddress,
    TooManyForUser,
    Full,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::TooManyFromAddress => "too many connections from this address",
            Refusal::TooManyForUser => "too many connections for this user",
            Refusal::Full => "server at its connection limit",
        }
    }
}

impl Gate {
    pub fn new(
        origins: Vec<String>,
        auth: Option<Auth>,
        (max_conns, max_per_ip, max_per_user): (usize, usize, usize),
    ) -> Gate {
        Gate {
            origins,
            auth,
            max_conns: AtomicUsize::new(max_conns),
            max_per_ip,
            max_per_user,
            ..Gate::default()
        }
    }

    /// Whether a handshake with this `Origin` may go on (`--allow-origin`).
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        if self.origins.is_empty() {
            return true;
        }
        let Some(origin) = origin else {
            return false;
        };
        self.origins.iter().any(|p| origin_matches(p, origin))
    }

    /// Counts a connection from `peer` (an address key, see [`peer_key`]; 0 = unknown).
    /// On refusal nothing stays counted.
    pub fn admit(&self, peer: u32) -> Result<Admitted, Refusal> {
        let mut admitted = Admitted::default();
        if self.max_per_ip > 0 && peer != 0 {
            let mut ips = self.ips.lock().unwrap_or_else(|e| e.into_inner());
            let n = ips.entry(peer).or_insert(0);
            if *n as usize >= self.max_per_ip {
                return Err(Refusal::TooManyFromAddress);
            }
            *n += 1;
            admitted.ip = true;
        }
        let max_conns = self.max_conns.load(Ordering::Relaxed);
        if max_conns > 0 {
            if self.open.fetch_add(1, Ordering::Relaxed) >= max_conns {
                self.open.fetch_sub(1, Ordering::Relaxed);
                self.release(peer, admitted);
                return Err(Refusal::Full);
            }
            admitted.total = true;
        }
        Ok(admitted)
    }

    /// Sets the total limit (`--max-conns auto` as the load changes). Connections open
    /// past a lowered limit stay; new ones wait until they are under it.
    pub fn set_max_conns(&self, n: usize) {
        self.max_conns.store(n, Ordering::Relaxed);
    }

    /// Gives back what [`Gate::admit`] counted.
    pub fn release(&self, peer: u32, admitted: Admitted) {
        if admitted.ip {
            let mut ips = self.ips.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = ips.get_mut(&peer) {
                *n -= 1;
                if *n == 0 {
                    ips.remove(&peer);
                }
            }
        }
        if admitted.total {
            self.open.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Counts a connection for user `sub` (`--max-conns-per-user`).
    pub fn admit_user(&self, sub: &Arc<str>) -> Result<(), Refusal> {
        if self.max_per_user == 0 {
            return Ok(());
        }
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        let n = users.entry(sub.clone()).or_insert(0);
        if *n as usize >= self.max_per_user {
            return Err(Refusal::TooManyForUser);
        }
        *n += 1;
        Ok(())
    }

    pub fn release_user(&self, sub: &Arc<str>) {
        if self.max_per_user == 0 {
            return;
        }
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = users.get_mut(sub) {
            *n -= 1;
            if *n == 0 {
                users.remove(sub);
            }
        }
    }
}

/// What [`Gate::admit`] counted for a connection, to be released when it closes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Admitted {
    pub ip: bool,
    pub total: bool,
}

/// A 32-bit key for a peer address: the IPv4 address itself, or for IPv6 a hash of the
/// /64 prefix (one host usually owns a whole /64). Never 0 for a real peer.
pub fn peer_key(ip: IpAddr) -> u32 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4).max(1),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u32::from(v4).max(1),
            None => {
                let prefix = u128::from(v6) >> 64;
                // Fibonacci hashing of the prefix, with the low bit set so it is never 0.
                ((prefix as u64 ^ (prefix >> 64) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32)
                    as u32
                    | 1
            }
        },
    }
}

/// `--allow-origin` patterns: an exact origin, or `scheme://*.domain` for any subdomain
/// (not the domain itself). Case-insensitive, as origins are.
pub fn origin_matches(pattern: &str, origin: &str) -> bool {
    let (pattern, origin) = (pattern.to_ascii_lowercase(), origin.to_ascii_lowercase());
    match pattern.split_once("://*.") {
        Some((scheme, domain)) => origin
            .strip_prefix(scheme)
            .and_then(|rest| rest.strip_prefix("://"))
            .and_then(|host| host.strip_suffix(domain))
            .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.') && !sub.contains('/')),
        None => pattern == origin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_match_exactly_or_by_subdomain() {
        for (p, o, m) in [
            ("https://app.example.com", "https://app.example.com", true),
            ("https://app.example.com", "https://APP.example.com", true),
            ("https://app.example.com", "http://app.example.com", false),
            ("https://*.example.com", "https://a.example.com", true),
            ("https://*.example.com", "https://a.b.example.com", true),
            ("https://*.example.com", "https://example.com", false),
            ("https://*.example.com", "https://evil-example.com", false),
            (
                "https://*.example.com",
                "https://a.example.com.evil.io",
                false,
            ),
            ("https://*.example.com", "http://a.example.com", false),
        ] {
            assert_eq!(origin_matches(p, o), m, "{p} vs {o}");
        }
    }

    #[test]
    fn limits_count_and_release() {
        let gate = Gate {
            max_conns: AtomicUsize::new(3),
            max_per_ip: 2,
            max_per_user: 1,
            ..Gate::default()
        };
        let a = gate.admit(7).unwrap();
        let b = gate.admit(7).unwrap();
        assert_eq!(gate.admit(7), Err(Refusal::TooManyFromAddress));
        let c = gate.admit(8).unwrap();
        assert_eq!(gate.admit(9), Err(Refusal::Full));
        gate.release(7, a);
        assert!(gate.admit(9).is_ok(), "a released slot is free again");
        gate.release(7, b);
        gate.release(8, c);
        let ann: Arc<str> = Arc::from("ann");
        gate.admit_user(&ann).unwrap();
        assert_eq!(gate.admit_user(&ann), Err(Refusal::TooManyForUser));
        gate.release_user(&ann);
        gate.admit_user(&ann).unwrap();
        assert_ne!(peer_key("::1".parse().unwrap()), 0);
        assert_eq!(
            peer_key("2001:db8::1".parse().unwrap()),
            peer_key("2001:db8::2".parse().unwrap()),
            "one /64, one key"
        );
    }
}
