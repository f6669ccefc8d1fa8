//! Where the load goes and how it spreads: the server (and, in a cluster, the other
//! nodes), the processes whose CPU a run reads, the source addresses and the workers.

use std::net::SocketAddr;

/// Nodes beyond `--server` a target may have (`--also`).
pub const MAX_ALSO: usize = 7;

/// Where the load goes and how it spreads.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    pub server: SocketAddr,
    pub pid: Option<u32>,
    pub sources: u8,
    /// The CPU the server is pinned to (`--server-cpu`): its /proc/stat line is read
    /// around each measured window, softirq included.
    pub server_cpu: Option<usize>,
    /// Load-generator processes for ramp, echo, fanout, churn, slow and resume (`--workers`); 1:
    /// this process alone. `idle` takes its own.
    pub workers: usize,
    /// More nodes of the same cluster (`--also`), after `server`: fan-out's member g
    /// connects to node g % [`Target::nodes`]. A fixed array keeps `Target` `Copy`.
    pub also: [Option<SocketAddr>; MAX_ALSO],
    /// Their pids (`--also-pid`), for the CPU of all the nodes.
    pub also_pids: [Option<u32>; MAX_ALSO],
    /// The cluster's Redis (`--redis-pid`), for its CPU.
    pub redis_pid: Option<u32>,
    /// `--deflate`: `idle`'s and fan-out's connections offer permessage-deflate and fail
    /// unless the server agrees (see [`crate::deflate`]).
    pub deflate: bool,
}

impl Target {
    /// The nodes: `server` and those of `also`.
    pub fn nodes(&self) -> usize {
        1 + self.also.iter().flatten().count()
    }

    /// Node `g % nodes`: `server` first, then `also` in order.
    pub fn node(&self, g: usize) -> SocketAddr {
        match g % self.nodes() {
            0 => self.server,
            k => self
                .also
                .iter()
                .flatten()
                .nth(k - 1)
                .copied()
                .expect("k < nodes"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(also: &[&str]) -> Target {
        let mut t = Target {
            server: "127.0.0.1:9000".parse().unwrap(),
            pid: None,
            sources: 16,
            server_cpu: None,
            workers: 1,
            also: [None; MAX_ALSO],
            also_pids: [None; MAX_ALSO],
            redis_pid: None,
            deflate: false,
        };
        for (slot, a) in t.also.iter_mut().zip(also) {
            *slot = Some(a.parse().unwrap());
        }
        t
    }

    #[test]
    fn members_go_round_the_nodes() {
        let one = target(&[]);
        assert_eq!(one.nodes(), 1);
        assert!((0..5).all(|g| one.node(g) == one.server));
        let three = target(&["127.0.0.1:9001", "127.0.0.1:9002"]);
        assert_eq!(three.nodes(), 3);
        let ports: Vec<u16> = (0..7).map(|g| three.node(g).port()).collect();
        assert_eq!(ports, [9000, 9001, 9002, 9000, 9001, 9002, 9000]);
    }
}
