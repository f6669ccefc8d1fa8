//! What the backplane shows on `/healthz`, `/stats` and `/metrics`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::Settings;

/// The backplane's figures, for `/healthz`, `/stats` and `/metrics`.
#[derive(Debug)]
pub struct Status {
    pub node: String,
    pub(super) targets: Vec<String>,
    pub(super) up: Vec<AtomicBool>,
    pub(super) errors: AtomicU64,
    pub(super) reconnects: AtomicU64,
    /// Age of the oldest command still waiting for Redis (ms).
    pub(super) lag_ms: AtomicU64,
    pub(super) published: AtomicU64,
    pub(super) refused: AtomicU64,
    pub(super) received: AtomicU64,
    pub(super) gaps: AtomicU64,
    /// Messages read back from streams (catch-ups and resumes).
    pub(super) recovered: AtomicU64,
    pub(super) rooms: AtomicU64,
}

impl Status {
    /// Whether some Redis server is unreachable (the node still serves its local work).
    pub fn degraded(&self) -> bool {
        self.up.iter().any(|u| !u.load(Ordering::Relaxed))
    }

    fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    /// `/stats`'s `"backplane"` object.
    pub fn json(&self) -> String {
        let up: Vec<bool> = self.up.iter().map(|u| u.load(Ordering::Relaxed)).collect();
        serde_json::json!({
            "node": self.node,
            "redis": self.targets,
            "up": up,
            "state": if self.degraded() { "degraded" } else { "ok" },
            "lag_ms": Self::get(&self.lag_ms),
            "errors": Self::get(&self.errors),
            "reconnects": Self::get(&self.reconnects),
            "published": Self::get(&self.published),
            "refused": Self::get(&self.refused),
            "received": Self::get(&self.received),
            "catchups": Self::get(&self.gaps),
            "recovered": Self::get(&self.recovered),
            "rooms": Self::get(&self.rooms),
        })
        .to_string()
    }

    /// The `roomcast_backplane_*` metrics.
    pub fn metrics(&self, out: &mut String) {
        let up = self.up.iter().filter(|u| u.load(Ordering::Relaxed)).count();
        let lag = Self::get(&self.lag_ms);
        let gauges = [
            (
                "redis_up",
                "Redis servers the backplane is connected to.",
                up.to_string(),
            ),
            (
                "redis_servers",
                "Redis servers configured (--redis).",
                self.up.len().to_string(),
            ),
            (
                "lag_seconds",
                "Age of the oldest command waiting for Redis.",
                format!("{}.{:03}", lag / 1000, lag % 1000),
            ),
            (
                "rooms",
                "Rooms this node is subscribed to.",
                Self::get(&self.rooms).to_string(),
            ),
        ];
        let counters: [(&str, &str, &AtomicU64); 7] = [
            ("errors", "Redis connections lost or refused.", &self.errors),
            (
                "reconnects",
                "Reconnections to Redis after a loss.",
                &self.reconnects,
            ),
            (
                "published",
                "Messages published through Redis.",
                &self.published,
            ),
            (
                "refused",
                "Publishes refused because Redis was unreachable.",
                &self.refused,
            ),
            (
                "received",
                "Messages received from Redis for rooms with members here.",
                &self.received,
            ),
            (
                "catchups",
                "Times a room was read back from its stream (a skipped seq or a reconnect).",
                &self.gaps,
            ),
            (
                "recovered",
                "Messages read back from streams (catch-ups and resumes).",
                &self.recovered,
            ),
        ];
        let gauges = gauges
            .into_iter()
            .map(|(n, h, v)| (n.to_string(), h, "gauge", v));
        let counters = counters
            .into_iter()
            .map(|(n, h, c)| (format!("{n}_total"), h, "counter", Self::get(c).to_string()));
        for (name, help, kind, value) in gauges.chain(counters) {
            let name = format!("roomcast_backplane_{name}");
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        }
    }
}

impl Status {
    pub fn new(cfg: &Settings) -> Status {
        let counter = || AtomicU64::new(0);
        Status {
            node: cfg.node.clone(),
            targets: cfg.targets.iter().map(ToString::to_string).collect(),
            up: cfg.targets.iter().map(|_| AtomicBool::new(false)).collect(),
            errors: counter(),
            reconnects: counter(),
            lag_ms: counter(),
            published: counter(),
            refused: counter(),
            received: counter(),
            gaps: counter(),
            recovered: counter(),
            rooms: counter(),
        }
    }
}
