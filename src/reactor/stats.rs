//! Per-shard figures other threads may read (`/stats`). Each shard writes only its own
//! cache line, once per loop turn, with relaxed stores: nothing contended on the hot path.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! shard_figures {
    ($($name:ident),* $(,)?) => {
        /// One shard's published figures.
        #[repr(align(64))]
        #[derive(Default)]
        pub struct ShardFigures { $(pub $name: AtomicU64,)* }

        /// A plain copy of one shard's figures.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct Snapshot { $(pub $name: u64,)* }

        impl ShardFigures {
            pub fn store(&self, s: &Snapshot) {
                $(self.$name.store(s.$name, Ordering::Relaxed);)*
            }

            pub fn load(&self) -> Snapshot {
                Snapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }

        impl Snapshot {
            /// `{"name":value,…}`
            pub fn to_json(&self) -> String {
                let mut parts = Vec::new();
                $(parts.push(format!("\"{}\":{}", stringify!($name), self.$name));)*
                format!("{{{}}}", parts.join(","))
            }
        }
    };
}

shard_figures!(
    connections,
    accepted,
    closed,
    rooms_owned,
    rooms_local,
    members,
    messages_in,
    published,
    delivered,
    dropped_slow,
    closed_slow,
    mesh_backlog,
    mesh_dropped,
);

/// Every shard's figures.
pub struct SharedStats {
    pub shards: Vec<ShardFigures>,
}

impl std::fmt::Debug for SharedStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_json())
    }
}

impl SharedStats {
    pub fn new(n: usize) -> SharedStats {
        SharedStats {
            shards: (0..n).map(|_| ShardFigures::default()).collect(),
        }
    }

    /// `/stats`: totals and one object per shard.
    pub fn to_json(&self) -> String {
        let snaps: Vec<Snapshot> = self.shards.iter().map(ShardFigures::load).collect();
        let sum = |f: fn(&Snapshot) -> u64| snaps.iter().map(f).sum::<u64>();
        let per: Vec<String> = snaps.iter().map(Snapshot::to_json).collect();
        format!(
            "{{\"connections\":{},\"rooms\":{},\"members\":{},\"shards\":[{}]}}\n",
            sum(|s| s.connections),
            sum(|s| s.rooms_owned),
            sum(|s| s.members),
            per.join(",")
        )
    }
}
