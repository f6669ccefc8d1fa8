//! Opening a scenario's connections: many at once, with a bound on the handshakes in
//! flight ([`open_many`]); and with `--deflate`, the check before a run that every node
//! agrees to permessage-deflate, and what it agreed to in the summary and the figures.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use serde_json::json;
use tokio::net::TcpStream;

use super::Target;
use crate::client::{connect, handshake, source};
use crate::deflate::Agreed;

/// Opens connections `first..first+n` to `path`, at most `concurrency` handshakes in
/// flight; records each handshake's latency. Returns the streams and the failures.
pub(super) async fn open_many(
    t: Target,
    path: &str,
    first: usize,
    n: usize,
    concurrency: usize,
    hist: Option<&mut Histogram<u64>>,
    pb: Option<&ProgressBar>,
) -> (Vec<TcpStream>, usize) {
    let mut pending = tokio::task::JoinSet::new();
    let mut open = Vec::with_capacity(n);
    let mut failed = 0usize;
    let mut latencies = Vec::new();
    let mut take = |r: Result<std::io::Result<(TcpStream, Duration)>, _>| match r {
        Ok(Ok((s, d))) => {
            open.push(s);
            latencies.push(d);
            if let Some(pb) = pb {
                pb.inc(1);
            }
        }
        _ => failed += 1,
    };
    for i in first..first + n {
        let (server, src, path) = (t.server, source(i, t.sources), path.to_owned());
        pending.spawn_local(async move {
            let start = Instant::now();
            connect(server, src, &path)
                .await
                .map(|s| (s, start.elapsed()))
        });
        while pending.len() >= concurrency {
            if let Some(r) = pending.join_next().await {
                take(r);
            }
        }
    }
    while let Some(r) = pending.join_next().await {
        take(r);
    }
    if let Some(h) = hist {
        for d in latencies {
            let _ = h.record(d.as_nanos().max(1) as u64);
        }
    }
    (open, failed)
}

/// With `--deflate`, before a run opens anything: one connection to each node on `path`
/// checks that it agrees to permessage-deflate in a way the bench can use. Returns what
/// the first agreed to, for the results; ends the process with the reason if one did not
/// (the run would measure plain). None without `--deflate`.
pub(super) async fn deflate_agreed(t: Target, path: &str) -> Option<Agreed> {
    if !t.deflate {
        return None;
    }
    let mut agreed = None;
    for g in 0..t.nodes() {
        match handshake(t.node(g), source(g, t.sources), path, true).await {
            Ok((_, a)) => agreed = agreed.or(a),
            Err(e) => {
                eprintln!("roomcast-bench --deflate: {}: {e}", t.node(g));
                std::process::exit(1);
            }
        }
    }
    agreed
}

/// For a summary line: `, <the extension agreed>` with `--deflate`, else nothing.
pub(super) fn deflate_note(agreed: Option<Agreed>) -> String {
    agreed.map(|a| format!(", {a}")).unwrap_or_default()
}

/// `figures` with `deflate`: the extension agreed, with `--deflate`.
pub(super) fn with_deflate(
    mut figures: serde_json::Value,
    agreed: Option<Agreed>,
) -> serde_json::Value {
    if let Some(a) = agreed {
        figures["deflate"] = json!(a.to_string());
    }
    figures
}
