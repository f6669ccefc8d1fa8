//! The operational endpoints (`/healthz`, `/stats`, `/metrics`), answered on the main port
//! by the shards and, with `--admin-listen`, on a port of their own served by one small
//! blocking thread (scrapes are rare; it stays up while the main port drains).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use crate::app::gate::Gate;
use crate::protocol::handshake::{http_response, parse, Parsed};
use crate::protocol::Status;
use crate::reactor::stats::SharedStats;
use crate::reactor::Drain;

const TEXT: &str = "text/plain; charset=utf-8";

/// The answer to a plain GET of `path` (`draining`: a drain has begun).
pub fn answer(
    path: &str,
    stats: &SharedStats,
    gate: &Gate,
    draining: bool,
) -> (Status, &'static str, String) {
    match path {
        "/healthz" if draining => (Status::ServiceUnavailable, TEXT, "draining\n".into()),
        "/healthz" => (Status::Ok, TEXT, "ok\n".into()),
        "/stats" => (Status::Ok, "application/json", stats.to_json()),
        "/metrics" => (
            Status::Ok,
            super::metrics::CONTENT_TYPE,
            super::metrics::render(stats, gate, draining),
        ),
        // A WebSocket endpoint asked without `Upgrade: websocket` (DESIGN.md: 400).
        "/ws" | "/echo" => (
            Status::BadRequest,
            TEXT,
            "this endpoint speaks WebSocket: send Upgrade: websocket\n".into(),
        ),
        _ => (Status::NotFound, TEXT, "not found\n".into()),
    }
}

/// Binds `addr` and serves the endpoints on a thread of their own.
pub fn spawn(
    addr: SocketAddr,
    stats: Arc<SharedStats>,
    gate: Arc<Gate>,
    drain: Arc<Drain>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Err(e) = serve(stream, &stats, &gate, &drain) {
                    tracing::debug!(error = %e, "admin request failed");
                }
            }
        })?;
    Ok(local)
}

fn serve(
    mut stream: TcpStream,
    stats: &SharedStats,
    gate: &Gate,
    drain: &Drain,
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
            Ok(Some((Parsed::Plain(req), _))) => {
                let (status, ctype, body) = answer(req.path, stats, gate, drain.active());
                http_response(status, ctype, "", body.as_bytes(), true, &mut out);
            }
            _ => {
                let body = b"the admin port answers GET /healthz, /stats and /metrics\n";
                http_response(Status::BadRequest, TEXT, "", body, true, &mut out);
            }
        }
        return stream.write_all(&out);
    }
}
