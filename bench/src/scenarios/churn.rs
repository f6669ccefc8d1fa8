//! `churn`: connect → join → leave → close at a steady rate: how many cycles succeed, and
//! whether the server's memory drifts.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use super::measure::{cpu_fields, probe, with, SETTLE};
use super::workers::{argv, sums, Orders, Workers};
use super::{bar, Target};
use crate::client::{self, connect, source, Frames};

/// Connect → join → leave → close, `rate` times a second for `secs`: success rate and
/// the server's RSS drift. With workers, each runs its share of the rate.
pub async fn churn(t: Target, rate: f64, secs: u64) -> serde_json::Value {
    let before = probe(t, &[]);
    let (ok, failed, elapsed, start, active);
    if t.workers <= 1 {
        let pb = bar((rate * secs as f64) as u64, "churn");
        start = before.clone();
        let started = Instant::now();
        (ok, failed) = churn_drive(t, 0, rate, secs, &pb).await;
        elapsed = started.elapsed().as_secs_f64();
        active = probe(t, &[]);
        pb.finish_and_clear();
    } else {
        let workers = t.workers;
        let (each, secs_s) = ((rate / workers as f64).to_string(), secs.to_string());
        let mut ws = Workers::spawn(t, workers, |w| {
            // Connection numbers (their source addresses and rooms) apart per worker.
            let first = (w * 1_000_000_000).to_string();
            argv(&[
                "worker-churn",
                "--first",
                &first,
                "--rate",
                &each,
                "--secs",
                &secs_s,
            ])
        });
        ws.gather("ready", None).await;
        // `done OK FAILED` from each.
        let done;
        (start, done, elapsed, active) = ws.window(t).await;
        let [o, f] = sums(&done);
        ws.finish("churn").await;
        (ok, failed) = (o as u64, f as u64);
    }
    let (cpu, note) = cpu_fields(t, &start, &active, None);
    tokio::time::sleep(SETTLE).await;
    let after = probe(t, &[]);
    let drift = after.rss_bytes as f64 - before.rss_bytes as f64;
    let success = ok as f64 / (ok + failed).max(1) as f64;
    println!(
        "churn: {ok} cycles ok, {failed} failed ({:.2}% success) at {:.0}/s; server RSS {:.1} MiB -> {:.1} MiB (drift {:+.1} MiB){note}",
        success * 100.0,
        (ok + failed) as f64 / elapsed,
        before.rss_bytes as f64 / 1048576.0,
        after.rss_bytes as f64 / 1048576.0,
        drift / 1048576.0
    );
    let figures = json!({
        "cycles_ok": ok, "cycles_failed": failed, "success_rate": success, "secs": elapsed,
        "rss_before": before.rss_bytes, "rss_after": after.rss_bytes, "rss_drift_bytes": drift,
    });
    with(figures, cpu)
}

/// Runs cycles `rate` times a second for `secs`, numbered from `first`: (ok, failed).
async fn churn_drive(
    t: Target,
    first: usize,
    rate: f64,
    secs: u64,
    pb: &ProgressBar,
) -> (u64, u64) {
    let ok = Rc::new(Cell::new(0u64));
    let failed = Rc::new(Cell::new(0u64));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut tasks = tokio::task::JoinSet::new();
    let mut i = first;
    while Instant::now() < deadline {
        tick.tick().await;
        let (ok, failed, pb) = (ok.clone(), failed.clone(), pb.clone());
        let (server, src) = (t.server, source(i, t.sources));
        i += 1;
        tasks.spawn_local(async move {
            let r = tokio::time::timeout(Duration::from_secs(10), cycle(server, src, i)).await;
            match r {
                Ok(Ok(())) => ok.set(ok.get() + 1),
                _ => failed.set(failed.get() + 1),
            }
            pb.inc(1);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    (ok.get(), failed.get())
}

/// One churn worker (see [`churn`]): `ready`; on `go`, runs its cycles and reports
/// `done OK FAILED`; ends when stdin closes.
pub async fn churn_worker(t: Target, first: usize, rate: f64, secs: u64) {
    let mut orders = Orders::new();
    println!("ready");
    if !orders.wait_for("go").await {
        return;
    }
    let (ok, failed) = churn_drive(t, first, rate, secs, &ProgressBar::hidden()).await;
    println!("done {ok} {failed}");
    orders.wait_end().await;
}

async fn cycle(server: SocketAddr, src: std::net::IpAddr, i: usize) -> std::io::Result<()> {
    let room = format!("churn-{}", i % 16);
    let mut s = connect(server, src, "/ws").await?;
    let mut frames = Frames::new(1024);
    for (op, want) in [("join", "joined"), ("leave", "left")] {
        let msg = format!(r#"{{"op":"{op}","room":"{room}"}}"#);
        s.write_all(&client::text(msg.as_bytes())).await?;
        let prefix = format!(r#"{{"op":"{want}""#);
        'wait: loop {
            if !frames.fill(&mut s).await {
                return Err(std::io::Error::other("closed"));
            }
            while let Some(f) = frames.next() {
                if frames.bytes(f.payload).starts_with(prefix.as_bytes()) {
                    break 'wait;
                }
            }
        }
    }
    let close = roomcast_bench::masked_frame(
        roomcast::protocol::OpCode::Close,
        &1000u16.to_be_bytes(),
        [0; 4],
    );
    s.write_all(&close).await?;
    // Wait for the server's close and its FIN.
    while frames.fill(&mut s).await {}
    Ok(())
}
