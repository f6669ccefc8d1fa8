//! The operational endpoints (`/healthz`, `/stats`, `/metrics`), answered on the main port
//! by the shards and, with `--admin-listen`, on a port of their own served by one small
//! blocking thread (scrapes are rare; it stays up while the main port drains).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use crate::protocol::handshake::{http_response, parse, Parsed};
use crate::protocol::Status;
use crate::reactor::stats::SharedStats;
use crate::reactor::Drain;

use super::capacity::Capacity;

/// What the endpoints say about the server beyond the shards' figures: the settings in
/// effect and the capacity model.
#[derive(Debug)]
pub struct Info {
    /// `{"<flag>":{"value":…,"source":"flag|environment|file|default"},…}`; secrets are
    /// named, not shown.
    pub settings: String,
    /// `--max-conns` in effect (0: no limit).
    pub max_conns: usize,
    pub capacity: Capacity,
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
            max_conns: 0,
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
        capacity["connections_left"] = self.capacity.left(open).into();
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
            let mut text = super::metrics::render(stats, info.max_conns, draining, &info.capacity);
            if let Some(b) = &info.backplane {
                b.metrics(&mut text);
            }
            if let Some(h) = &info.hooks {
                h.metrics(&mut text);
            }
            (Status::Ok, super::metrics::CONTENT_TYPE, text)
        }
        // A WebSocket endpoint asked without `Upgrade: websocket` (DESIGN.md: 400).
        "/ws" | "/echo" => (
            Status::BadRequest,
            TEXT,
            "this endpoint speaks WebSocket: send Upgrade: websocket\n".into(),
        ),
        _ => (Status::NotFound, TEXT, "not found\n".into()),
    }
}

/// Binds `addr` and serves the endpoints on a thread of their own; `/api/` requests are
/// passed to the main listener at `main` (the shards answer them).
pub fn spawn(
    addr: SocketAddr,
    main: SocketAddr,
    stats: Arc<SharedStats>,
    drain: Arc<Drain>,
    info: Arc<Info>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    let mut main = main;
    if main.ip().is_unspecified() {
        main.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Err(e) = serve(stream, main, &stats, &drain, &info) {
                    tracing::debug!(error = %e, "admin request failed");
                }
            }
        })?;
    Ok(local)
}

/// Passes an API request (its head and `body_len` bytes of body, some already in
/// `buf`) to the main listener and its response back. A draining node's main listener
/// is closed: then 503.
fn forward(
    stream: &mut TcpStream,
    main: SocketAddr,
    buf: &[u8],
    body_len: usize,
    head_len: usize,
) -> std::io::Result<()> {
    let mut request = buf.to_vec();
    let want = head_len + body_len;
    if request.len() < want {
        let at = request.len();
        request.resize(want, 0);
        stream.read_exact(&mut request[at..])?;
    }
    request.truncate(want);
    let Ok(mut upstream) = TcpStream::connect_timeout(&main, Duration::from_secs(2)) else {
        let body = br#"{"error":"unavailable","msg":"the main listener is closed (draining)"}"#;
        let mut out = Vec::new();
        let json = "application/json";
        http_response(Status::ServiceUnavailable, json, "", body, true, &mut out);
        return stream.write_all(&out);
    };
    upstream.set_read_timeout(Some(Duration::from_secs(10)))?;
    upstream.write_all(&request)?;
    std::io::copy(&mut upstream, stream)?;
    Ok(())
}

fn serve(
    mut stream: TcpStream,
    main: SocketAddr,
    stats: &SharedStats,
    drain: &Drain,
    info: &Info,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = vec![0u8; 8192];
    let mut len = 0;
    let mut out = Vec::new();
    loop {
        let n = stream.read(&mut buf[len..])?;
        if n == 0 {
            return Ok(());
        }
        len += n;
        let full = len == buf.len();
        match parse(&buf[..len], 8192) {
            Ok(None) if !full => continue,
            Ok(Some((Parsed::Plain(req), head_len))) if req.path.starts_with("/api/") => {
                let body = req
                    .content_length
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0)
                    .min(1 << 30);
                return forward(&mut stream, main, &buf[..len], body, head_len);
            }
            Ok(Some((Parsed::Plain(req), _))) => {
                let (status, ctype, body) = answer(req.path, stats, drain.active(), info);
                http_response(status, ctype, "", body.as_bytes(), true, &mut out);
            }
            _ => {
                let body = b"the admin port answers GET /healthz, /stats, /metrics and /api/\n";
                http_response(Status::BadRequest, TEXT, "", body, true, &mut out);
            }
        }
        return stream.write_all(&out);
    }
}
