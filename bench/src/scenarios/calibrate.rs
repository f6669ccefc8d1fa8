//! `calibrate`: idle, ramp, echo and fan-out against a freshly started server, turned into
//! the per-unit costs `roomcast plan` predicts from.

use serde_json::json;

use super::measure::{probe, server_stats};
use super::{echo, fanout, idle, ramp, Fanout, Target};

/// Measures the per-unit costs `roomcast plan` predicts from, against a freshly started
/// server (at rest: its RSS before any connection is the fixed cost): idle connections
/// held past one ping interval (bytes per connection and socket, CPU per ping), a ramp
/// (CPU per handshake), echo (CPU per message) and a closed-loop fan-out (CPU per
/// delivery). Returns the figures and the runs they came from.
pub async fn calibrate(
    t: Target,
    connections: usize,
) -> (roomcast::ops::plan::Figures, serde_json::Value) {
    let stats = server_stats(t.server)
        .await
        .expect("calibrate needs the server's /stats on its WebSocket port");
    let config = &stats["config"];
    let shards = stats["shards"].as_array().map_or(1, Vec::len) as f64;
    let pool = config["recv_buffers"].as_f64().unwrap_or(0.0)
        * config["recv_buffer_size"].as_f64().unwrap_or(0.0);
    let ping_interval = config["ping_interval_secs"].as_u64().unwrap_or(30);
    let rest = probe(t, &[]);
    // The idle CPU is each shard's 1 s tick plus the pings. A few connections held first
    // give the ticks alone (their pings are negligible); the difference per ping between
    // the two runs is the cost of a ping.
    let few = (shards as usize * 10).min(connections);
    println!("calibrate: {shards} shards, ping interval {ping_interval}s; {few} idle connections for the ticks, then {connections} held one interval");
    let ticks = idle(t, few, 10, t.workers, 2048).await;
    let idle = idle(t, connections, ping_interval + 5, t.workers, 2048).await;
    let ramp = ramp(t, 10_000.min(connections), 64).await;
    let echo = echo(t, 100, 16, 32, 5).await;
    let fan = fanout(
        t,
        Fanout {
            rooms: 1,
            members: 2_000,
            rate: 0.0,
            window: 8,
            size: 64,
            json: false,
            secs: 5,
            slow_fraction: 0.0,
            check_order: false,
        },
    )
    .await;
    let get = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(0.0);
    let pings_per_sec =
        |v: &serde_json::Value| get(v, "pings_sent_in_hold") / get(v, "hold_secs").max(1.0);
    let ping_cpu_us = (get(&idle, "idle_cpu_ms_per_s") - get(&ticks, "idle_cpu_ms_per_s")).max(0.0)
        * 1000.0
        / (pings_per_sec(&idle) - pings_per_sec(&ticks)).max(1.0);
    let machine = crate::sample::machine();
    // Not measured: the part of the at-rest RSS that does not scale with shards (binary,
    // runtime, allocator) is taken from the built-in figures.
    let process_base = roomcast::ops::plan::Figures::builtin().process_base_bytes;
    let figures = roomcast::ops::plan::Figures {
        measured_on: format!(
            "roomcast-bench calibrate: {} × {}, {:.1} GiB, kernel {}, {} shards",
            machine["cores"],
            machine["cpu"].as_str().unwrap_or("?"),
            machine["mem_total_bytes"].as_f64().unwrap_or(0.0) / (1u64 << 30) as f64,
            machine["kernel"].as_str().unwrap_or("?"),
            shards
        ),
        user_bytes_per_conn: get(&idle, "user_bytes_per_conn_marginal"),
        // Both ends of each loopback connection are on this box.
        kernel_bytes_per_socket: get(&idle, "kernel_slab_bytes_per_conn") / 2.0,
        process_base_bytes: process_base,
        shard_base_bytes: ((rest.rss_bytes as f64 - process_base) / shards - pool).max(0.0),
        ping_cpu_us,
        delivery_cpu_ns: get(&fan, "server_cpu_ns_per_delivery"),
        message_cpu_ns: get(&echo, "server_cpu_ns_per_msg"),
        handshake_cpu_us: get(&ramp, "server_cpu_us_per_conn"),
        // Not measured here (one node, no Redis): the backplane's and Redis's costs are the
        // built-in ones.
        ..roomcast::ops::plan::Figures::builtin()
    };
    let runs = json!({"rest_rss": rest.rss_bytes, "idle_ticks": ticks, "idle": idle, "ramp": ramp, "echo": echo, "fanout": fan});
    (figures, runs)
}
