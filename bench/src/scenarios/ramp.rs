//! `ramp`: connections opened as fast as the server takes them: handshakes per second,
//! their latency, and the server's CPU per connection.

use std::time::Instant;

use serde_json::json;

use super::connect::open_many;
use super::measure::{cpu_fields, probe, with};
use super::workers::{argv, share, sums, Orders, Workers};
use super::{bar, Target};
use crate::sample::{cdf_us, hist_add_encoded, hist_encode, histogram, quantiles_us};

/// Opens `n` connections with `concurrency` handshakes in flight: handshakes per second,
/// handshake latency, and server CPU per connection. With workers, each opens its share
/// with its share of the concurrency, all starting together.
pub async fn ramp(t: Target, n: usize, concurrency: usize) -> serde_json::Value {
    let mut hist = histogram();
    let (ok, failed, secs, before, after);
    if t.workers <= 1 {
        let pb = bar(n as u64, "ramp");
        before = probe(t, &[]);
        let started = Instant::now();
        let (open, fails) =
            open_many(t, "/echo", 0, n, concurrency, Some(&mut hist), Some(&pb)).await;
        secs = started.elapsed().as_secs_f64();
        after = probe(t, &[]);
        pb.finish_and_clear();
        (ok, failed) = (open.len(), fails);
        drop(open);
    } else {
        let workers = t.workers;
        let per = concurrency.div_ceil(workers).max(1).to_string();
        let mut ws = Workers::spawn(t, workers, |w| {
            let (first, count) = share(n, w, workers);
            let (first, count) = (first.to_string(), count.to_string());
            argv(&[
                "worker-ramp",
                "--first",
                &first,
                "--count",
                &count,
                "--concurrency",
                &per,
            ])
        });
        ws.gather("ready", None).await;
        // `done OPEN FAILED <histogram>` from each; they hold their connections until told.
        let done;
        (before, done, secs, after) = ws.window(t).await;
        ws.finish("ramp").await;
        [ok, failed] = sums(&done);
        for d in &done {
            hist_add_encoded(&mut hist, d.split_whitespace().skip(2));
        }
    }
    let cpu_us = after.cpu_ns.saturating_sub(before.cpu_ns) as f64 / ok.max(1) as f64 / 1000.0;
    let (p50, p99, p999) = quantiles_us(&hist);
    let (cpu, note) = cpu_fields(
        t,
        &before,
        &after,
        Some(("server_cpu_total_us_per_conn", ok as f64, 1000.0)),
    );
    println!(
        "ramp: {ok} handshakes ({failed} failed) in {secs:.2}s: {:.0}/s, latency p50 {p50:.0} µs p99 {p99:.0} µs, server {cpu_us:.1} µs CPU/connection{note}",
        ok as f64 / secs,
    );
    let figures = json!({
        "connections": ok, "failed": failed, "secs": secs, "handshakes_per_sec": ok as f64 / secs,
        "latency_p50_us": p50, "latency_p99_us": p99, "latency_p999_us": p999,
        "latency_cdf_us": cdf_us(&hist), "server_cpu_us_per_conn": cpu_us,
    });
    with(figures, cpu)
}

/// One ramp worker (see [`ramp`]): `ready`; on `go`, opens its connections and reports
/// `done OPEN FAILED <histogram>`; holds them until stdin closes.
pub async fn ramp_worker(t: Target, first: usize, count: usize, concurrency: usize) {
    let mut orders = Orders::new();
    println!("ready");
    if !orders.wait_for("go").await {
        return;
    }
    let mut hist = histogram();
    let (open, failed) =
        open_many(t, "/echo", first, count, concurrency, Some(&mut hist), None).await;
    println!("done {} {failed} {}", open.len(), hist_encode(&hist));
    orders.wait_end().await;
}
