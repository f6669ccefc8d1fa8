//! How many sends carry a member's deliveries: what a write delay gathers into one, what one
//! can carry, and where the members are (who pays for the receiving end of each send).

use serde::{Deserialize, Serialize};

/// Where the members are, which decides who pays for the receiving end of each send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Link {
    /// Across a network interface: the member's machine runs its own TCP input.
    Nic,
    /// On this machine (127.0.0.0/8): the receiving end's TCP input runs in softirq on the
    /// sending CPU, so the server's CPU pays for it.
    Loopback,
}

impl Link {
    pub fn name(self) -> &'static str {
        match self {
            Link::Nic => "nic",
            Link::Loopback => "loopback",
        }
    }
}

/// Messages one send to a member carries when its rooms publish `rate` messages per second
/// between them, evenly spaced: every message that comes within `delay` of the first waits
/// for it (1 + ⌊delay·rate⌋), until half the out-ring's frames or half `max_bytes` are
/// queued, which go at once (the frame that reaches half the bytes goes too). With no delay
/// each message is a send of its own. One send carries at most [`frames_per_send`] of them.
pub fn messages_per_send(
    rate: f64,
    delay_secs: f64,
    out_ring: u64,
    max_bytes: u64,
    wire: u64,
) -> f64 {
    if rate <= 0.0 || delay_secs <= 0.0 {
        return 1.0;
    }
    let gathered = 1.0 + (delay_secs * rate + 1e-9).floor();
    let by_frames = (out_ring / 2).max(1) as f64;
    let by_bytes = (max_bytes / 2).div_ceil(wire.max(1)).max(1) as f64;
    gathered.min(by_frames).min(by_bytes)
}

/// Frames one send can carry: io_uring's sendmsg takes 16 iovecs from the shard's arena,
/// epoll's writev 64.
pub fn frames_per_send(uring: bool) -> f64 {
    if uring {
        16.0
    } else {
        64.0
    }
}
