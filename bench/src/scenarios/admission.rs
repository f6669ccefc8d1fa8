//! `admission`: members join a room at a fixed pace while it publishes at a fixed rate,
//! until the server refuses one (`--max-conns auto` under load): how many it took, its CPU
//! and the model's at the limit, and the latency there.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::fanout::{expect_joined, member, publisher, Fanout, Tally};
use super::measure::{cpu_fields, probe, server_stats, with};
use super::Target;
use crate::client::{handshake, refusal_status, source};
use crate::sample::{histogram, quantiles_us};

/// What an admission run is asked to do.
#[derive(Clone, Copy, Debug)]
pub struct Admission {
    /// Messages per second to the room, of `size` bytes.
    pub rate: f64,
    pub size: usize,
    /// Members joining per second.
    pub pace: f64,
    /// Members at most (the run ends there if the server never refuses).
    pub max: usize,
    /// Seconds held at the limit, measured.
    pub hold: u64,
}

/// One room publishing `rate` msg/s; members join it `pace` a second (each reads
/// everything, timing each message) until a handshake gets 503 or `max` joined. Then the
/// run holds `hold` seconds at the limit and measures there: the server CPU's busy share
/// (`--server-cpu`), the model's CPU and limit (`/stats`), deliveries/s and their latency.
pub async fn admission(t: Target, a: Admission) -> serde_json::Value {
    let f = Fanout {
        rooms: 1,
        members: a.max,
        rate: a.rate,
        window: 8,
        size: a.size,
        json: false,
        secs: 0,
        slow_fraction: 0.0,
        check_order: false,
    };
    let tally = Rc::new(Tally::new());
    let stop = Rc::new(Cell::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    // The publisher, a member of its room like the rest (it drains what it gets).
    let (mut s, _) = handshake(t.server, source(0, t.sources), "/ws?room=fan-0", false)
        .await
        .expect("the publisher connects");
    expect_joined(&mut s).await;
    let ends = Instant::now() + Duration::from_secs(3600);
    tasks.spawn_local(async move {
        publisher(s, 0, f, ends).await;
    });
    let started = Instant::now();
    let gap = Duration::from_secs_f64(1.0 / a.pace.max(0.1));
    let mut joined = 0usize;
    let mut refused = false;
    while joined < a.max {
        let next = started + gap * (joined as u32 + 1);
        let path = "/ws?room=fan-0";
        match handshake(t.server, source(joined + 1, t.sources), path, false).await {
            Ok((mut s, _)) => {
                expect_joined(&mut s).await;
                let (tally, stop) = (tally.clone(), stop.clone());
                tasks.spawn_local(async move { member(s, tally, stop, None).await });
                joined += 1;
            }
            Err(e) if refusal_status(&e) == Some(503) => {
                refused = true;
                break;
            }
            Err(e) => panic!("member {joined}: {e}"),
        }
        tokio::time::sleep_until(next.into()).await;
    }
    let ramp_secs = started.elapsed().as_secs_f64();
    // At the limit: a fresh histogram, the rates over `hold` seconds.
    *tally.hist.borrow_mut() = Some(histogram());
    let delivered_before = tally.delivered.get();
    let before = probe(t, &[]);
    tokio::time::sleep(Duration::from_secs(a.hold)).await;
    let after = probe(t, &[]);
    let stats = server_stats(t.server).await;
    let delivered = tally.delivered.get() - delivered_before;
    stop.set(true);
    tasks.abort_all();
    let hist = tally.hist.borrow_mut().take().expect("histogram");
    let (p50, p99, p999) = quantiles_us(&hist);
    let load = stats
        .as_ref()
        .map(|s| s["capacity"]["load"].clone())
        .unwrap_or_default();
    let rate = delivered as f64 / a.hold.max(1) as f64;
    let (cpu, note) = cpu_fields(t, &before, &after, None);
    println!(
        "admission: one room at {} msg/s × {} B, members joining {}/s: {joined} joined in {ramp_secs:.1}s{}; over {}s at the limit {rate:.0} deliveries/s, p50 {:.2} ms p99 {:.2} ms; the model's CPU {} (limit {}){note}",
        a.rate,
        a.size,
        a.pace,
        if refused { ", then refused (503)" } else { ", never refused" },
        a.hold,
        p50 / 1000.0,
        p99 / 1000.0,
        load["predicted_cpus"],
        load["limit"],
    );
    let figures = json!({
        "joined": joined, "refused": refused, "ramp_secs": ramp_secs,
        "deliveries_per_sec": rate, "latency_p50_us": p50, "latency_p99_us": p99,
        "latency_p999_us": p999, "model_cpus": load["predicted_cpus"],
        "model_limit": load["limit"], "model_connections_by_cpu": load["connections_by_cpu"],
        "link": load["link"],
    });
    with(figures, cpu)
}
