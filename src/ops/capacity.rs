//! Capacity headroom: how many more connections this box can take, from the same
//! per-unit figures as `roomcast plan` (built-in, or `--figures`), the memory budget
//! (`--memory-budget`, or the cgroup's limit, or the machine's memory) and the descriptor
//! tables. `/metrics` and `/stats` export it; `--max-conns auto` admits up to it, less
//! `--capacity-margin`, and answers 503 past that.
//!
//! The model is `plan`'s: connections × (user bytes per connection + kernel bytes per
//! socket) must fit in the budget after the fixed cost (process base, and per shard its
//! base and receive pool). It counts what the figures say a connection costs, not what the
//! process happens to hold now, so it does not move with allocator noise; a budget shared
//! with other processes should be given with `--memory-budget`.
//!
//! Memory is what idle connections run out of; a node serving rooms runs out of CPU first.
//! [`Load`] is that side: once a second the shards' counters give the rates the node serves
//! (sends, deliveries, bytes, messages in, handshakes, pings), `plan`'s figures turn them into
//! the CPU they cost, and the connections the shards' CPUs carry at that cost per connection
//! follow. `--max-conns auto` admits up to the lesser of the two, each less the margin, so a
//! node under fan-out load stops admitting before its CPUs saturate.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::plan::{Figures, Link};
use crate::reactor::stats::SharedStats;

/// Descriptors a process keeps for itself (listeners, rings, eventfds, logs).
const RESERVED_FDS: u64 = 1024;

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Capacity {
    /// The memory the connections and the process may use, and where that figure came
    /// from (`--memory-budget`, `cgroup memory.max`, `MemTotal`).
    pub memory_budget_bytes: u64,
    pub memory_budget_source: &'static str,
    /// What does not grow with connections: process base, shards and their receive pools.
    pub fixed_bytes: u64,
    /// User space and kernel, per connection.
    pub bytes_per_connection: u64,
    /// Connections the budget holds, and the descriptor tables hold.
    pub by_memory: u64,
    pub by_descriptors: u64,
    /// The lesser of the two.
    pub connections: u64,
    /// The admission limit `--max-conns auto` sets: `connections` less the margin.
    pub auto_limit: u64,
}

/// What the capacity depends on besides the figures.
#[derive(Clone, Debug)]
pub struct Shape {
    pub shards: u64,
    /// Receive buffers held by each shard (io_uring's provided buffers, epoll's scratch).
    pub recv_pool_bytes: u64,
    /// io_uring: each ring's fixed-file table holds up to RLIMIT_NOFILE sockets; epoll:
    /// the process's RLIMIT_NOFILE holds them all.
    pub uring: bool,
    pub nofile: u64,
    /// `--capacity-margin`, percent.
    pub margin_percent: u64,
    /// `--deflate`: each shard holds its compressors and inflater.
    pub deflate: bool,
    /// `--tls-cert`: each connection holds its TLS session.
    pub tls: bool,
}

impl Capacity {
    pub fn new(f: &Figures, (budget, source): (u64, &'static str), s: &Shape) -> Capacity {
        let deflate = if s.deflate {
            super::plan::DEFLATE_SHARD_BYTES
        } else {
            0.0
        };
        let fixed = f.process_base_bytes
            + s.shards as f64 * (f.shard_base_bytes + s.recv_pool_bytes as f64 + deflate);
        let tls = if s.tls {
            super::plan::TLS_CONN_BYTES
        } else {
            0.0
        };
        let per = f.user_bytes_per_conn + tls + f.kernel_bytes_per_socket;
        let by_memory = ((budget as f64 - fixed).max(0.0) / per) as u64;
        let fds = s.nofile.saturating_sub(RESERVED_FDS);
        let by_descriptors = if s.uring {
            // Every ring's table is capped at 2^20 by the reactor.
            fds.min(1 << 20) * s.shards
        } else {
            fds
        };
        let connections = by_memory.min(by_descriptors);
        let keep = 100 - s.margin_percent.min(100);
        Capacity {
            memory_budget_bytes: budget,
            memory_budget_source: source,
            fixed_bytes: fixed as u64,
            bytes_per_connection: per as u64,
            by_memory,
            by_descriptors,
            connections,
            auto_limit: connections * keep / 100,
        }
    }

    /// Connections that still fit with `open` connections open.
    pub fn left(&self, open: u64) -> u64 {
        self.connections.saturating_sub(open)
    }
}

/// Rates a node serves, per second.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rates {
    pub sends: f64,
    pub deliveries: f64,
    pub bytes_out: f64,
    pub messages_in: f64,
    pub handshakes: f64,
    pub pings: f64,
}

/// The CPUs `r` costs by the model, in two parts: what the open connections' traffic costs
/// (each send's fixed part, each delivery, each byte sent, each message received, parsed and
/// answered, whose reply's send is counted again, so this errs high, and each ping beyond its
/// send; with `tls`, a record sealed per send and its bytes), which more connections like
/// them would multiply; and the handshakes (with `tls`, TLS's too), which come with a ramp,
/// not with the connections held. Compressing (`--deflate`) is not counted: its cost is per
/// message and size, which the counters do not give.
pub fn predicted_cpus(f: &Figures, link: Link, tls: bool, r: &Rates) -> (f64, f64) {
    use super::plan::{TLS_HANDSHAKE_US, TLS_NS_PER_BYTE, TLS_RECORD_NS};
    let (record, per_byte, handshake) = match tls {
        true => (TLS_RECORD_NS, TLS_NS_PER_BYTE, TLS_HANDSHAKE_US),
        false => (0.0, 0.0, 0.0),
    };
    let send = f.send_ns(link) + record;
    let ping_beyond_send = (f.ping_us(link) * 1e3 - f.send_ns(link)).max(0.0);
    let traffic = r.sends * send
        + r.deliveries * f.delivery_cpu_ns
        + r.bytes_out * (f.wire_byte_ns + per_byte)
        + r.messages_in * f.message_cpu_ns
        + r.pings * ping_beyond_send;
    (
        traffic / 1e9,
        r.handshakes * (f.handshake_cpu_us + handshake) / 1e6,
    )
}

/// Below this much predicted CPU for the traffic, the load says nothing about more
/// connections (idle connections: memory binds first).
const MIN_CPUS: f64 = 0.02;

/// Connections `cpus` CPUs carry, `handshakes` CPUs of them taken by handshakes, when `open`
/// connections' traffic costs `traffic` CPUs and more would cost the same each; None while
/// the traffic is too small to tell.
pub fn connections_by_cpu(traffic: f64, handshakes: f64, open: u64, cpus: f64) -> Option<u64> {
    if open == 0 || traffic < MIN_CPUS {
        return None;
    }
    Some(((cpus - handshakes).max(0.0) * open as f64 / traffic) as u64)
}

/// What the node serves now, by the model: published once a second by [`watch`], read by
/// `/stats` and `/metrics`.
#[derive(Debug)]
pub struct Load {
    /// The CPUs the shards may use.
    pub cpus: f64,
    pub link: Link,
    /// `--tls-cert`: sends seal records, handshakes are TLS's too.
    pub tls: bool,
    predicted_milli: AtomicU64,
    /// u64::MAX: not bound by CPU.
    by_cpu: AtomicU64,
    /// The admission limit in effect (0: none).
    limit: AtomicU64,
}

impl Load {
    pub fn new(cpus: f64, link: Link, tls: bool, limit: u64) -> Load {
        Load {
            cpus,
            link,
            tls,
            predicted_milli: AtomicU64::new(0),
            by_cpu: AtomicU64::new(u64::MAX),
            limit: AtomicU64::new(limit),
        }
    }

    /// The CPUs the model says the node's work costs now.
    pub fn predicted_cpus(&self) -> f64 {
        self.predicted_milli.load(Ordering::Relaxed) as f64 / 1e3
    }

    /// Connections the CPUs carry at the current work per connection (None: not bound).
    pub fn by_cpu(&self) -> Option<u64> {
        Some(self.by_cpu.load(Ordering::Relaxed)).filter(|&n| n != u64::MAX)
    }

    /// The admission limit in effect (`--max-conns`; with `auto`, as [`watch`] last set it).
    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Connections that still fit: by memory and descriptors, and by CPU.
    pub fn left(&self, c: &Capacity, open: u64) -> u64 {
        let by_cpu = self.by_cpu().unwrap_or(u64::MAX);
        c.connections.min(by_cpu).saturating_sub(open)
    }

    pub fn json(&self, c: &Capacity, open: u64) -> serde_json::Value {
        serde_json::json!({
            "cpus": self.cpus, "link": self.link, "predicted_cpus": self.predicted_cpus(),
            "connections_by_cpu": self.by_cpu(), "limit": self.limit(),
            "connections_left": self.left(c, open),
        })
    }
}

/// The shards' counters [`watch`] turns into rates.
const COUNTED: [&str; 6] = [
    "sends",
    "delivered",
    "bytes_out",
    "messages_in",
    "upgraded",
    "pings_sent",
];

/// Rates over the last few seconds, so one busy second does not swing admission.
const WINDOW: usize = 3;

/// Once a second until the process ends: the rates from `stats`, the CPU they cost by `f`,
/// published in `load`; with `auto` (`--max-conns auto`), the admission limit set through
/// `admit` to the lesser of `c.auto_limit` and the connections by CPU less the margin.
pub fn watch(
    stats: Arc<SharedStats>,
    load: Arc<Load>,
    f: Figures,
    c: Capacity,
    margin_percent: u64,
    auto: bool,
    mut admit: impl FnMut(u64) + Send + 'static,
) -> std::io::Result<()> {
    let keep = 100 - margin_percent.min(100);
    std::thread::Builder::new()
        .name("capacity".into())
        .spawn(move || {
            // Each second: when, the counters, the connections open.
            let mut seen: VecDeque<(Instant, [u64; 6], u64)> = VecDeque::with_capacity(WINDOW + 1);
            loop {
                let now = Instant::now();
                let counters = COUNTED.map(|field| stats.total(field));
                seen.push_back((now, counters, stats.total("connections")));
                if seen.len() > WINDOW + 1 {
                    seen.pop_front();
                }
                if let (Some((t0, a, _)), Some((t1, b, _))) = (seen.front(), seen.back()) {
                    let secs = t1.duration_since(*t0).as_secs_f64();
                    if secs > 0.5 {
                        let per = |i: usize| b[i].saturating_sub(a[i]) as f64 / secs;
                        let rates = Rates {
                            sends: per(0),
                            deliveries: per(1),
                            bytes_out: per(2),
                            messages_in: per(3),
                            handshakes: per(4),
                            pings: per(5),
                        };
                        let (traffic, handshakes) = predicted_cpus(&f, load.link, load.tls, &rates);
                        // The traffic is the window's: so are the connections that made it
                        // (during a ramp, the ones open now did less than a window's worth).
                        let open = seen.iter().map(|s| s.2).sum::<u64>() / seen.len() as u64;
                        let by_cpu = connections_by_cpu(traffic, handshakes, open, load.cpus);
                        load.predicted_milli
                            .store(((traffic + handshakes) * 1e3) as u64, Ordering::Relaxed);
                        load.by_cpu
                            .store(by_cpu.unwrap_or(u64::MAX), Ordering::Relaxed);
                        if auto {
                            let cpu_limit = by_cpu.map_or(u64::MAX, |n| n * keep / 100);
                            let limit = c.auto_limit.min(cpu_limit).max(1);
                            if limit != load.limit() {
                                load.limit.store(limit, Ordering::Relaxed);
                                admit(limit);
                            }
                        }
                    }
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        })
        .map(drop)
}

/// The memory budget when `--memory-budget` is not given: this process's cgroup limit if
/// it has one, else the machine's memory.
pub fn default_budget() -> (u64, &'static str) {
    if let Some(limit) = cgroup_limit() {
        return (limit, "cgroup memory.max");
    }
    (super::check::meminfo("MemTotal:"), "MemTotal")
}

/// cgroup v2: `memory.max` of the cgroup this process is in ("max": none).
fn cgroup_limit() -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    let max = std::fs::read_to_string(format!("/sys/fs/cgroup{path}/memory.max")).ok()?;
    max.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(uring: bool) -> Shape {
        Shape {
            shards: 2,
            recv_pool_bytes: 4 << 20,
            uring,
            nofile: 20_000,
            margin_percent: 10,
            deflate: false,
            tls: false,
        }
    }

    #[test]
    fn memory_and_descriptors_both_bound_it() {
        let f = Figures::builtin();
        let c = Capacity::new(&f, (64 << 20, "test"), &shape(true));
        let per = f.user_bytes_per_conn + f.kernel_bytes_per_socket;
        let fixed = f.process_base_bytes + 2.0 * (f.shard_base_bytes + (4 << 20) as f64);
        assert_eq!(c.by_memory, (((64 << 20) as f64 - fixed) / per) as u64);
        assert_eq!(
            c.connections, c.by_memory,
            "64 MiB binds before 2 × 18,976 slots"
        );
        assert_eq!(c.auto_limit, c.connections * 9 / 10);
        let big = Capacity::new(&f, (64 << 30, "test"), &shape(false));
        assert_eq!(
            big.connections,
            20_000 - 1024,
            "epoll: one process-wide table"
        );
        assert_eq!(big.left(1000), big.connections - 1000);
    }

    #[test]
    fn the_load_predicts_cpu_from_rates_and_bounds_connections_by_it() {
        let f = Figures::builtin();
        // 1,000 members of a room at 50 msg/s, one message per send, 148 B each.
        let r = Rates {
            sends: 50_000.0,
            deliveries: 50_000.0,
            bytes_out: 50_000.0 * 148.0,
            messages_in: 50.0,
            ..Rates::default()
        };
        let (loopback, none) = predicted_cpus(&f, Link::Loopback, false, &r);
        assert_eq!(none, 0.0, "no handshakes");
        let per_delivery = f.send_cpu_ns + f.delivery_cpu_ns + 148.0 * f.wire_byte_ns;
        let expected = (50_000.0 * per_delivery + 50.0 * f.message_cpu_ns) / 1e9;
        assert!((loopback - expected).abs() < 1e-12, "{loopback}");
        let (nic, _) = predicted_cpus(&f, Link::Nic, false, &r);
        assert!((loopback - nic - 50_000.0 * f.loopback_receive_ns / 1e9).abs() < 1e-12);
        // Twice the connections at the same work each would take twice the CPU: one CPU
        // carries 1,000 / loopback of them.
        let n = connections_by_cpu(loopback, 0.0, 1_000, 1.0).unwrap();
        assert_eq!(n, (1_000.0 / loopback) as u64);
        assert!((2_900..3_300).contains(&n), "{n}");
        // A ramp's handshakes take CPU from the connections, not per connection.
        let ramp = Rates {
            handshakes: 5_000.0,
            ..r
        };
        let (_, hs) = predicted_cpus(&f, Link::Loopback, false, &ramp);
        assert!((hs - 5_000.0 * f.handshake_cpu_us / 1e6).abs() < 1e-12);
        let fewer = connections_by_cpu(loopback, hs, 1_000, 1.0).unwrap();
        assert_eq!(fewer, ((1.0 - hs) * 1_000.0 / loopback) as u64);
        assert_eq!(
            connections_by_cpu(0.001, 0.0, 1_000, 1.0),
            None,
            "idle: memory binds"
        );
        assert_eq!(connections_by_cpu(0.5, 0.0, 0, 1.0), None);
        // TLS: a record per send, its bytes, and TLS's handshake.
        let (sealed, _) = predicted_cpus(&f, Link::Loopback, true, &r);
        let records = 50_000.0 * super::super::plan::TLS_RECORD_NS
            + 50_000.0 * 148.0 * super::super::plan::TLS_NS_PER_BYTE;
        assert!((sealed - loopback - records / 1e9).abs() < 1e-12);
        let load = Load::new(1.0, Link::Loopback, false, 0);
        load.by_cpu.store(n, Ordering::Relaxed);
        let c = Capacity::new(&f, (64 << 30, "test"), &shape(false));
        assert_eq!(load.left(&c, 1_000), n - 1_000, "CPU binds before memory");
    }
}
