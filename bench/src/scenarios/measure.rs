//! What every scenario measures beside its own counts: the server, its CPU and the load
//! generator sampled from /proc around the measured window ([`probe`]), the CPU figures and
//! summary note made of two samples ([`cpu_fields`]), and the server's own `/stats`.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::Target;
use crate::sample::{cpu_window, proc_cpu_ns, sample, user_hz, ProcSample};

/// How long the server gets to settle after a burst of handshakes before memory is read.
pub(super) const SETTLE: Duration = Duration::from_secs(3);

/// The share of a CPU past which a load-generator process counts as saturated.
const CLIENT_BOUND: f64 = 0.90;

/// The server, its CPU and the load generator (this process and `workers`), now; and the
/// other nodes and Redis when their pids are given.
pub(crate) fn probe(t: Target, workers: &[u32]) -> ProcSample {
    let mut s = sample(t.pid, t.server_cpu, workers);
    s.also_cpu_ns = t.also_pids.iter().flatten().map(|&p| proc_cpu_ns(p)).sum();
    s.redis_cpu_ns = t.redis_pid.map(proc_cpu_ns);
    s
}

/// The CPU figures of a window `a`..`b`, and a note for the summary line:
///
/// - `client_busy`: the load generator's CPU (this process and its workers) as a fraction
///   of one CPU; `client_bound`: it was saturated (≥ 90% of the CPUs it could use, or one
///   of its processes ≥ 90% of a CPU; pinned to one CPU, as scripts/bench.sh runs it,
///   that is `client_busy ≥ 0.90`), so the run's throughput is a lower bound for the server;
/// - with `--server-cpu N`: `server_cpu0_busy` (user + nice + system + irq + softirq +
///   steal over all of CPU N's ticks: the share of the server's CPU in use, whatever ran
///   there), `server_softirq_share` (softirq over all ticks) and, with `per` = (field,
///   units, ns per unit of the field: 1 for ns, 1000 for µs), CPU N's busy time per unit.
///   The per-thread figures (schedstat of the server's threads) miss what the kernel ran
///   on that CPU outside them: softirq in ksoftirqd or on interrupts (and, with
///   CONFIG_IRQ_TIME_ACCOUNTING, the softirq that interrupted them); these keep it. They
///   also count anything else on that CPU: pin the server alone there. /proc/stat is in
///   ticks (USER_HZ) and, without CONFIG_IRQ_TIME_ACCOUNTING, each tick is charged whole
///   to what ran at that instant: true on a busy CPU over seconds, low on an idle one.
pub(crate) fn cpu_fields(
    t: Target,
    a: &ProcSample,
    b: &ProcSample,
    per: Option<(&str, f64, f64)>,
) -> (serde_json::Map<String, serde_json::Value>, String) {
    let busy = a.client_busy(b);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let usable = cpus.min(b.client_procs.len()).max(1) as f64;
    let bound = busy >= CLIENT_BOUND * usable || a.client_busiest(b) >= CLIENT_BOUND;
    let mut m = serde_json::Map::new();
    m.insert("client_busy".into(), json!(busy));
    m.insert("client_bound".into(), json!(bound));
    let mut note = if bound {
        format!(
            " [load generator {:.0}% busy: client-bound, a lower bound for the server]",
            busy * 100.0
        )
    } else {
        format!(" (load generator {:.0}% busy)", busy * 100.0)
    };
    if let (Some(cpu), Some(x), Some(y)) = (t.server_cpu, &a.server_cpu, &b.server_cpu) {
        let w = cpu_window(x, y, user_hz());
        m.insert("server_cpu".into(), json!(cpu));
        m.insert("server_cpu0_busy".into(), json!(w.busy));
        m.insert("server_softirq_share".into(), json!(w.softirq_share));
        note += &format!(
            "; server's CPU {cpu} {:.0}% busy, {:.0}% in softirq",
            w.busy * 100.0,
            w.softirq_share * 100.0
        );
        if let Some((field, units, scale)) = per {
            let v = w.busy_ns / units.max(1.0) / scale;
            m.insert(field.into(), json!(v));
            let unit = if scale == 1.0 { "ns" } else { "µs" };
            note += &format!(", {v:.1} {unit} of it per unit");
        }
    }
    (m, note)
}

/// `v` (an object) with the fields of `m` added.
pub(crate) fn with(
    mut v: serde_json::Value,
    m: serde_json::Map<String, serde_json::Value>,
) -> serde_json::Value {
    v.as_object_mut().expect("figures are an object").extend(m);
    v
}

/// The server's `/stats`, if it answers: `GET /stats` on the WebSocket port.
pub(crate) async fn server_stats(server: SocketAddr) -> Option<serde_json::Value> {
    use tokio::io::AsyncReadExt;
    let mut s = TcpStream::connect(server).await.ok()?;
    s.write_all(b"GET /stats HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut body = Vec::new();
    s.read_to_end(&mut body).await.ok()?;
    let text = String::from_utf8(body).ok()?;
    serde_json::from_str(text.split_once("\r\n\r\n")?.1).ok()
}

/// Sums the field `name` over the shards of a `/stats` answer.
pub(super) fn shard_sum(stats: &Option<serde_json::Value>, name: &str) -> u64 {
    let shards = stats.as_ref().and_then(|v| v["shards"].as_array());
    shards
        .map(|a| a.iter().filter_map(|s| s[name].as_u64()).sum())
        .unwrap_or_default()
}
