//! `echo`: connections each keeping messages in flight to the server's `/echo`: messages
//! per second, their round trip, and the server's CPU per message.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::connect::open_many;
use super::measure::{cpu_fields, probe, with};
use super::workers::{argv, share, sums, Orders, Workers};
use super::Target;
use crate::client::Frames;
use crate::sample::{cdf_us, hist_add_encoded, hist_encode, histogram, quantiles_us};

/// C connections, each keeping D messages of S bytes in flight for T seconds. With
/// workers, each drives its share of the connections and reports its messages and RTT
/// histogram; the parent merges them.
pub async fn echo(t: Target, c: usize, depth: usize, size: usize, secs: u64) -> serde_json::Value {
    let size = size.max(8);
    let (start, end, hist, total, elapsed);
    if t.workers <= 1 {
        let epoch = Instant::now();
        let deadline = epoch + Duration::from_secs(secs);
        let (streams, failed) = open_many(t, "/echo", 0, c, 256, None, None).await;
        assert_eq!(failed, 0, "echo: {failed} connections failed");
        start = probe(t, &[]);
        let started = Instant::now();
        (hist, total) = echo_drive(streams, depth, size, epoch, deadline).await;
        elapsed = started.elapsed().as_secs_f64();
        end = probe(t, &[]);
    } else {
        let workers = t.workers;
        let per = 256usize.div_ceil(workers).to_string();
        let (depth_s, size_s, secs_s) = (depth.to_string(), size.to_string(), secs.to_string());
        let mut ws = Workers::spawn(t, workers, |w| {
            let (first, count) = share(c, w, workers);
            let (first, count) = (first.to_string(), count.to_string());
            argv(&[
                "worker-echo",
                "--first",
                &first,
                "--count",
                &count,
                "--depth",
                &depth_s,
                "--size",
                &size_s,
                "--secs",
                &secs_s,
                "--concurrency",
                &per,
            ])
        });
        // `ready OPEN FAILED` once connected, `done MESSAGES <histogram>` after the run.
        let [_, failed] = sums(&ws.gather("ready", None).await);
        assert_eq!(failed, 0, "echo: {failed} connections failed");
        let done;
        (start, done, elapsed, end) = ws.window(t).await;
        ws.finish("echo").await;
        let mut merged = histogram();
        for d in &done {
            hist_add_encoded(&mut merged, d.split_whitespace().skip(1));
        }
        let [messages] = sums(&done);
        (hist, total) = (merged, messages as u64);
    }
    let rate = total as f64 / elapsed;
    let ns_per_msg = end.cpu_ns.saturating_sub(start.cpu_ns) as f64 / total.max(1) as f64;
    let (p50, p99, p999) = quantiles_us(&hist);
    let (cpu, note) = cpu_fields(
        t,
        &start,
        &end,
        Some(("server_cpu_total_ns_per_msg", total as f64, 1.0)),
    );
    let over = if t.workers > 1 {
        format!(" over {} workers", t.workers)
    } else {
        String::new()
    };
    println!(
        "echo: {c} conns x {depth} in flight x {size} B{over}: {rate:.0} msgs/s, RTT p50 {p50:.1} µs p99 {p99:.1} µs p999 {p999:.1} µs, server {ns_per_msg:.0} ns CPU/msg{note}",
    );
    let figures = json!({
        "secs": elapsed, "messages": total, "msgs_per_sec": rate, "rtt_p50_us": p50,
        "rtt_p99_us": p99, "rtt_p999_us": p999, "latency_cdf_us": cdf_us(&hist),
        "server_cpu_ns_per_msg": ns_per_msg,
    });
    with(figures, cpu)
}

/// Drives every stream of `streams` until `deadline`: the merged RTT histogram and the
/// messages echoed.
async fn echo_drive(
    streams: Vec<TcpStream>,
    depth: usize,
    size: usize,
    epoch: Instant,
    deadline: Instant,
) -> (Histogram<u64>, u64) {
    let mut tasks = tokio::task::JoinSet::new();
    for stream in streams {
        tasks.spawn_local(echo_conn(stream, depth, size, epoch, deadline));
    }
    let mut hist = histogram();
    let mut total = 0u64;
    while let Some(r) = tasks.join_next().await {
        if let Ok((h, n)) = r {
            hist.add(h).expect("same bounds");
            total += n;
        }
    }
    (hist, total)
}

/// One echo worker (see [`echo`]): connects its share, reports `ready OPEN FAILED`; on
/// `go`, runs for `secs` and reports `done MESSAGES <histogram>`; ends when stdin closes.
pub async fn echo_worker(
    t: Target,
    first: usize,
    count: usize,
    depth: usize,
    size: usize,
    secs: u64,
    concurrency: usize,
) {
    let mut orders = Orders::new();
    let (streams, failed) = open_many(t, "/echo", first, count, concurrency, None, None).await;
    println!("ready {} {failed}", streams.len());
    if !orders.wait_for("go").await {
        return;
    }
    let epoch = Instant::now();
    let deadline = epoch + Duration::from_secs(secs);
    let (hist, total) = echo_drive(streams, depth, size.max(8), epoch, deadline).await;
    println!("done {total} {}", hist_encode(&hist));
    orders.wait_end().await;
}

/// Keeps `depth` messages in flight until `deadline`; each carries its send time.
async fn echo_conn(
    mut s: TcpStream,
    depth: usize,
    size: usize,
    epoch: Instant,
    deadline: Instant,
) -> (Histogram<u64>, u64) {
    let mut hist = histogram();
    let template =
        roomcast_bench::masked_frame(roomcast::protocol::OpCode::Binary, &vec![0; size], [0; 4]);
    let header_len = template.len() - size;
    let mut out = Vec::with_capacity(template.len() * depth);
    let stamp = |out: &mut Vec<u8>| {
        let at = out.len();
        out.extend_from_slice(&template);
        let now = epoch.elapsed().as_nanos() as u64;
        out[at + header_len..at + header_len + 8].copy_from_slice(&now.to_le_bytes());
    };
    for _ in 0..depth {
        stamp(&mut out);
    }
    if s.write_all(&out).await.is_err() {
        return (hist, 0);
    }
    let mut frames = Frames::new(64 * 1024);
    let (mut received, mut outstanding) = (0u64, depth);
    while outstanding > 0 && frames.fill(&mut s).await {
        out.clear();
        let now = epoch.elapsed().as_nanos() as u64;
        while let Some(f) = frames.next() {
            if f.opcode != 0x2 {
                continue;
            }
            let payload = frames.bytes(f.payload);
            let sent = u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"));
            let _ = hist.record(now.saturating_sub(sent).max(1));
            received += 1;
            outstanding -= 1;
            if Instant::now() < deadline {
                stamp(&mut out);
                outstanding += 1;
            }
        }
        if !out.is_empty() && s.write_all(&out).await.is_err() {
            break;
        }
    }
    (hist, received)
}
