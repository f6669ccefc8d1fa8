//! The operational endpoints (`/healthz`, `/stats`, `/metrics`), answered on the main port
//! by the shards and, with `--admin-listen`, on a port of their own: one thread with a
//! non-blocking `poll` loop ([`port`]), its connections bounded in number, size and time
//! ([`conn`]), `/api/` passed on to the main listener ([`upstream`]). It stays up while
//! the main port drains.

use std::sync::Arc;

use crate::protocol::Status;
use crate::reactor::stats::SharedStats;

use super::capacity::{Capacity, Load};

mod conn;
mod port;
mod upstream;

pub use conn::{HEAD_TIMEOUT, REQUEST_TIMEOUT, UPSTREAM_TIMEOUT, WRITE_TIMEOUT};
pub use port::{spawn, MAX_CONNS, SEND_BUFFER};

/// What one admin connection may send.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// `--max-header-bytes`: a longer request head is answered 431.
    pub max_header_bytes: usize,
    /// `--api-max-body`: an `/api/` body announced longer is answered 413 from its
    /// `Content-Length`, before any of it is read.
    pub api_max_body: usize,
}

/// What the endpoints say about the server beyond the shards' figures: the settings in
/// effect and the capacity model.
#[derive(Debug)]
pub struct Info {
    /// `{"<flag>":{"value":…,"source":"flag|environment|file|default"},…}`; secrets are
    /// named, not shown.
    pub settings: String,
    /// Capacity by memory and descriptors, fixed at start.
    pub capacity: Capacity,
    /// Capacity by CPU from what the node serves, and the `--max-conns` in effect.
    pub load: Arc<Load>,
    /// With `--redis`: the backplane's state.
    pub backplane: Option<Arc<dyn Report>>,
    /// With hooks or webhooks: their figures.
    pub hooks: Option<Arc<dyn Report>>,
}

/// A part of the server beyond the shards that reports on itself (the backplane).
pub trait Report: Send + Sync + std::fmt::Debug {
    /// Whether the part is down in a way that still leaves this node serving.
    fn degraded(&self) -> bool;
    /// Its `/stats` object.
    fn json(&self) -> String;
    /// Appends its `/metrics` families.
    fn metrics(&self, out: &mut String);
}

impl Info {
    /// For tests and tools that start a server without a command line.
    pub fn empty() -> Info {
        Info {
            settings: "{}".into(),
            load: Arc::new(Load::new(1.0, super::plan::Link::Nic, false, 0)),
            capacity: Capacity::new(
                &super::plan::Figures::builtin(),
                (0, "none"),
                &super::capacity::Shape {
                    shards: 1,
                    recv_pool_bytes: 0,
                    uring: false,
                    nofile: 0,
                    margin_percent: 0,
                    deflate: false,
                    tls: false,
                },
            ),
            backplane: None,
            hooks: None,
        }
    }

    /// The settings object from (flag, values, source) triples; the values of the flags
    /// named in `secrets` are not shown.
    pub fn settings_json(
        effective: &[(String, Vec<String>, &'static str)],
        secrets: &[&str],
    ) -> String {
        let map: serde_json::Map<String, serde_json::Value> = effective
            .iter()
            .map(|(key, values, source)| {
                let value = match values.as_slice() {
                    [] => serde_json::Value::Null,
                    _ if secrets.contains(&key.as_str()) => "(set, not shown)".into(),
                    [one] => one.clone().into(),
                    many => many.to_vec().into(),
                };
                (
                    key.clone(),
                    serde_json::json!({"value": value, "source": source}),
                )
            })
            .collect();
        serde_json::Value::Object(map).to_string()
    }

    /// `/stats`'s members beyond the shards' figures.
    fn stats_members(&self, open: u64) -> String {
        let mut capacity = serde_json::to_value(&self.capacity).unwrap_or_default();
        capacity["connections_left"] = self.load.left(&self.capacity, open).into();
        capacity["load"] = self.load.json(&self.capacity, open);
        let backplane = match &self.backplane {
            Some(b) => format!(",\"backplane\":{}", b.json()),
            None => String::new(),
        };
        let hooks = match &self.hooks {
            Some(h) => format!(",\"hooks\":{}", h.json()),
            None => String::new(),
        };
        format!(
            ",\"settings\":{},\"capacity\":{capacity}{backplane}{hooks}",
            self.settings
        )
    }
}

const TEXT: &str = "text/plain; charset=utf-8";
const DASHBOARD: &str = include_str!("admin/dashboard.html");

/// The answer to a plain GET of `path` (`draining`: a drain has begun).
pub fn answer(
    path: &str,
    stats: &SharedStats,
    draining: bool,
    info: &Info,
) -> (Status, &'static str, String) {
    match path {
        "/healthz" if draining => (Status::ServiceUnavailable, TEXT, "draining\n".into()),
        // Degraded still serves this node's own members: not a reason to take it out.
        "/healthz" if info.backplane.as_ref().is_some_and(|b| b.degraded()) => (
            Status::Ok,
            TEXT,
            "degraded: the backplane cannot reach Redis\n".into(),
        ),
        "/healthz" => (Status::Ok, TEXT, "ok\n".into()),
        "/stats" => {
            let open = stats.total("connections");
            let extra = info.stats_members(open);
            (Status::Ok, "application/json", stats.to_json_with(&extra))
        }
        "/metrics" => {
            let mut text = super::metrics::render(stats, draining, &info.capacity, &info.load);
            if let Some(b) = &info.backplane {
                b.metrics(&mut text);
            }
            if let Some(h) = &info.hooks {
                h.metrics(&mut text);
            }
            (Status::Ok, super::metrics::CONTENT_TYPE, text)
        }
        // A page that charts /stats once a second: embedded, no outside assets.
        "/dashboard" => (Status::Ok, "text/html; charset=utf-8", DASHBOARD.into()),
        // A WebSocket endpoint asked without `Upgrade: websocket` (DESIGN.md: 400).
        "/ws" | "/echo" => (
            Status::BadRequest,
            TEXT,
            "this endpoint speaks WebSocket: send Upgrade: websocket\n".into(),
        ),
        _ => (Status::NotFound, TEXT, "not found\n".into()),
    }
}
