//! `calibrate`: idle, ramp, echo and fan-out against a freshly started server, turned into
//! the per-unit costs `roomcast plan` predicts from.

use serde_json::json;

use super::measure::{probe, server_stats};
use super::{echo, fanout, idle, ramp, Fanout, Target};

/// Measures the per-unit costs `roomcast plan` predicts from, against a freshly started
/// server (at rest: its RSS before any connection is the fixed cost): idle connections
/// held past one ping interval (bytes per connection and socket, CPU per ping), a ramp
/// (CPU per handshake), echo (CPU per message), and three fan-outs to tell a send's cost
/// from a delivery's and a byte's: a closed loop (many messages per send) and two at a fixed
/// rate (one message per send), of 64 and 4,000 bytes. Each fan-out's CPU (the server CPU's
/// busy time with `--server-cpu`, else its threads') is solved for CPU per send (the server's
/// own count of them), per delivery and per byte. The receiving end's share of a loopback
/// send is not measured here (`bench/scripts/link-share.sh` does, as root): the built-in
/// figure stands. Returns the figures and the runs they came from.
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
    let fixed = |size| Fanout {
        rooms: 1,
        members: 1_000,
        rate: 50.0,
        window: 8,
        size,
        json: false,
        secs: 5,
        slow_fraction: 0.0,
        check_order: false,
    };
    let small = fanout(t, fixed(64)).await;
    let large = fanout(t, fixed(4_000)).await;
    let get = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(0.0);
    // Each run: [sends, deliveries, bytes] and its CPU in ns.
    let row = |v: &serde_json::Value| {
        let delivered = get(v, "delivered");
        let per = match v.get("server_cpu_total_ns_per_delivery") {
            Some(_) => get(v, "server_cpu_total_ns_per_delivery"),
            None => get(v, "server_cpu_ns_per_delivery"),
        };
        (
            [get(v, "server_sends"), delivered, get(v, "wire_bytes")],
            per * delivered,
        )
    };
    let builtin = roomcast::ops::plan::Figures::builtin();
    let valid = |x: &[f64; 3]| x.iter().all(|v| v.is_finite() && *v >= 0.0);
    let runs = [row(&fan), row(&small), row(&large)];
    let mut fitted = "send, delivery and byte costs solved from three fan-outs";
    let [send, delivery, byte] = match solve(runs).filter(valid) {
        Some(x) => x,
        // A delivery's own part is small beside a send's, and noise can take it below
        // zero: then it is taken as zero, and the two fixed-rate runs give the rest.
        None => match solve([
            ([0.0, 1.0, 0.0], 0.0),
            ([runs[1].0[0], 0.0, runs[1].0[2]], runs[1].1),
            ([runs[2].0[0], 0.0, runs[2].0[2]], runs[2].1),
        ])
        .filter(valid)
        {
            Some(x) => {
                fitted = "send and byte costs from the fixed-rate fan-outs (the delivery's own part came out below zero: taken as 0)";
                x
            }
            None => {
                fitted = "send, delivery and byte costs built-in (the fan-outs did not separate them: a peer without /stats, or noise)";
                [
                    builtin.send_cpu_ns,
                    builtin.delivery_cpu_ns,
                    builtin.wire_byte_ns,
                ]
            }
        },
    };
    println!("calibrate: {fitted}: {send:.0} ns per send, {delivery:.0} ns per delivery, {byte:.2} ns per byte");
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
            "roomcast-bench calibrate: {} × {}, {:.1} GiB, kernel {}, {} shards; {fitted}",
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
        delivery_cpu_ns: delivery,
        send_cpu_ns: send,
        wire_byte_ns: byte,
        message_cpu_ns: get(&echo, "server_cpu_ns_per_msg"),
        handshake_cpu_us: get(&ramp, "server_cpu_us_per_conn"),
        // Not measured here (one node, no Redis): the backplane's and Redis's costs are the
        // built-in ones.
        ..roomcast::ops::plan::Figures::builtin()
    };
    let runs = json!({"rest_rss": rest.rss_bytes, "idle_ticks": ticks, "idle": idle, "ramp": ramp, "echo": echo, "fanout": fan, "fanout_fixed_64": small, "fanout_fixed_4000": large});
    (figures, runs)
}

/// `x` with `a · x = y` for three runs `(a, y)`, by Gaussian elimination; None when the runs
/// do not tell the three apart.
fn solve(runs: [([f64; 3], f64); 3]) -> Option<[f64; 3]> {
    let mut m = runs.map(|(a, y)| [a[0], a[1], a[2], y]);
    for c in 0..3 {
        let p = (c..3).max_by(|&i, &j| m[i][c].abs().total_cmp(&m[j][c].abs()))?;
        m.swap(c, p);
        if m[c][c].abs() < 1e-9 {
            return None;
        }
        for r in 0..3 {
            if r != c {
                let k = m[r][c] / m[c][c];
                let pivot = m[c];
                for (x, p) in m[r].iter_mut().zip(pivot) {
                    *x -= k * p;
                }
            }
        }
    }
    Some([m[0][3] / m[0][0], m[1][3] / m[1][1], m[2][3] / m[2][2]])
}

#[cfg(test)]
mod tests {
    #[test]
    fn three_runs_give_the_three_costs() {
        // 5,800 ns per send, 255 per delivery, 0.47 per byte.
        let cpu = |a: [f64; 3]| a[0] * 5_800.0 + a[1] * 255.0 + a[2] * 0.47;
        let a = [
            [20_000.0, 200_000.0, 22e6],
            [250_000.0, 250_000.0, 28e6],
            [250_000.0, 250_000.0, 1e9],
        ];
        let x = super::solve(a.map(|a| (a, cpu(a)))).unwrap();
        for (got, want) in x.iter().zip([5_800.0, 255.0, 0.47]) {
            assert!((got - want).abs() < 1e-6 * want, "{x:?}");
        }
        assert_eq!(super::solve([([1.0, 1.0, 1.0], 1.0); 3]), None);
    }
}
