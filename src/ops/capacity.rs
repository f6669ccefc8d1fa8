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

use serde::Serialize;

use super::plan::Figures;

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
}
