//! Webhooks: what happened ([`Happening`]), batched into signed POSTs to `--webhook`.
//!
//! (Interface in place; the queue, batching, signing, retries and cluster-wide occupancy
//! are being built.)

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Notify;

use super::{Happening, Status};

/// `--webhook` and its options.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    pub url: String,
    /// `--webhook-secret`: the HMAC key of `X-Roomcast-Signature`.
    pub secret: Option<String>,
    /// `--webhook-events`: the event kinds sent (empty: all).
    pub events: Vec<String>,
    /// `--webhook-batch`: events per POST at most.
    pub batch: usize,
    /// Events waiting at most (past it, new ones are dropped and counted).
    pub queue: usize,
    /// This node's id (event ids, occupancy in Redis).
    pub node: String,
    /// The first `--redis` URL, when there is a backplane: occupancy is kept there.
    pub redis: Option<String>,
}

/// The webhooks' state on the hooks thread.
pub struct Webhooks {
    #[allow(dead_code)]
    cfg: Settings,
    #[allow(dead_code)]
    client: reqwest::Client,
    /// Woken by the webhooks' own tasks when they finish.
    #[allow(dead_code)]
    wake: Arc<Notify>,
    #[allow(dead_code)]
    status: Arc<Status>,
    queue: VecDeque<Happening>,
}

impl Webhooks {
    pub fn new(
        cfg: Settings,
        client: reqwest::Client,
        wake: Arc<Notify>,
        status: Arc<Status>,
    ) -> Webhooks {
        Webhooks {
            cfg,
            client,
            wake,
            status,
            queue: VecDeque::new(),
        }
    }

    /// Something happened on this node.
    pub fn happened(&mut self, h: Happening) {
        self.queue.push_back(h);
    }

    /// Sends what is due; returns when it wants to be called again (besides when its tasks
    /// notify the loop).
    pub fn poll(&mut self, _now: Instant) -> Option<Instant> {
        None
    }
}
