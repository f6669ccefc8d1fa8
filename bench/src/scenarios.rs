//! The scenarios. Each is bounded in connections and time, exits by itself, prints a
//! human summary and returns its figures for the results file.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::{self, connect, data_stamp, source, Frames};
use crate::sample::{cdf_us, histogram, quantiles_us, sample};

/// Where the load goes and how it spreads.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    pub server: SocketAddr,
    pub pid: Option<u32>,
    pub sources: u8,
}

/// Connections per source address beyond which `idle` spreads over more addresses.
const SOURCE_DENSITY: usize = 8_000;

/// How long the server gets to settle after a burst of handshakes before memory is read.
const SETTLE: Duration = Duration::from_secs(3);

fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .expect("template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_owned());
    pb
}

/// Opens connections `first..first+n` to `path`, at most `concurrency` handshakes in
/// flight; records each handshake's latency. Returns the streams and the failures.
async fn open_many(
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

/// A warning when the load generator was the busy side (over 90% of its CPU).
fn client_bound(busy: f64) -> String {
    if busy > 0.9 {
        format!(
            " [load generator {:.0}% busy: client-bound, a lower bound for the server]",
            busy * 100.0
        )
    } else {
        format!(" (load generator {:.0}% busy)", busy * 100.0)
    }
}

/// Answers the server's pings on an otherwise idle connection until it closes or `stop`.
/// Counts the pongs it sent in `answered`.
async fn hold(mut s: TcpStream, stop: Rc<Cell<bool>>, answered: &Cell<u32>) {
    let mut frames = Frames::new(256);
    while !stop.get() && frames.fill(&mut s).await {
        while let Some(f) = frames.next() {
            if f.opcode == 0x9 {
                let pong = client::pong(frames.bytes(f.payload));
                if s.write_all(&pong).await.is_err() {
                    return;
                }
                answered.set(answered.get() + 1);
            }
        }
    }
}

/// One connection held by an idle worker: the pings it answered, or whether it is still
/// connecting or closed.
struct Held(Cell<u32>);

impl Held {
    const CLOSED: u32 = u32::MAX;
    const PENDING: u32 = u32::MAX - 1;

    fn open(&self) -> bool {
        self.0.get() < Self::PENDING
    }
}

// ---------------------------------------------------------------------------- idle

/// Holds `n` idle connections, spread over `workers` processes (each under its own
/// RLIMIT_NOFILE). Memory is sampled with none, half and all open: the average
/// (held − none) / n includes fixed costs that grow with first use; the marginal
/// (all − half) / (n/2) is what one more connection costs, the figure to plan with.
/// Every connection answers pings, and the count still open after `hold` is reported.
pub async fn idle(
    t: Target,
    n: usize,
    hold_secs: u64,
    workers: usize,
    concurrency: usize,
) -> serde_json::Value {
    let workers = workers.max(n.div_ceil(15_000)).max(1);
    let per_worker = concurrency.div_ceil(workers).max(1);
    // The kernel picks a free source port by probing: past ~8,000 connections per source
    // address each connect() spends most of its time in that search (seen at 1M over 32
    // sources: ~2,000 handshakes/s, the box in __inet_check_established). More sources
    // keep every one sparse.
    let wanted = n.div_ceil(SOURCE_DENSITY).min(253) as u8;
    let t = if wanted > t.sources {
        println!(
            "idle: {n} connections over {wanted} source addresses (--sources {} would crowd each)",
            t.sources
        );
        Target {
            sources: wanted,
            ..t
        }
    } else {
        t
    };
    let exe = std::env::current_exe().expect("own path");
    let before = sample(t.pid);
    let started = Instant::now();
    let mut children = Vec::new();
    let pb = bar(n as u64, "idle");
    for w in 0..workers {
        let (first, count) = (n * w / workers, n * (w + 1) / workers - n * w / workers);
        let child = tokio::process::Command::new(&exe)
            .args([
                "--server",
                &t.server.to_string(),
                "--sources",
                &t.sources.to_string(),
            ])
            .args([
                "worker-idle",
                "--first",
                &first.to_string(),
                "--count",
                &count.to_string(),
                "--concurrency",
                &per_worker.to_string(),
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn a worker");
        children.push(child);
    }
    // Every worker's report lines, as they come, on one channel.
    let (tx, mut reports) = tokio::sync::mpsc::unbounded_channel::<String>();
    for c in children.iter_mut() {
        let mut lines = tokio::io::BufReader::new(c.stdout.take().expect("stdout")).lines();
        let tx = tx.clone();
        tokio::task::spawn_local(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    // Waits for `word A B C` from every worker (see [`idle_worker`]), advancing the bar on
    // `progress K`; returns the sums of A, B and C.
    async fn phase(
        reports: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
        workers: usize,
        word: &str,
        pb: &ProgressBar,
    ) -> [usize; 3] {
        let mut sums = [0; 3];
        let mut seen = 0;
        while seen < workers {
            let line = reports.recv().await.expect("a worker ended early");
            let mut parts = line.split_whitespace();
            let first = parts.next();
            let mut numbers = parts.map(|v| v.parse::<usize>().unwrap_or(0));
            match first {
                Some("progress") => pb.inc(numbers.next().unwrap_or(0) as u64),
                Some(w) if w == word => {
                    for (sum, v) in sums.iter_mut().zip(numbers) {
                        *sum += v;
                    }
                    seen += 1;
                }
                _ => {}
            }
        }
        sums
    }
    let [half_open, ..] = phase(&mut reports, workers, "half", &pb).await;
    tokio::time::sleep(SETTLE).await;
    let half = sample(t.pid);
    tell(&mut children, b"go\n").await;
    let [open, failed, retries] = phase(&mut reports, workers, "full", &pb).await;
    pb.finish_and_clear();
    let ramp = started.elapsed();
    tokio::time::sleep(SETTLE).await;
    let held = sample(t.pid);
    tell(&mut children, b"mark\n").await;
    phase(&mut reports, workers, "marked", &pb).await;
    let pings_before = server_stats(t.server).await;
    tokio::time::sleep(Duration::from_secs(hold_secs)).await;
    let held_cpu = sample(t.pid);
    let pings_after = server_stats(t.server).await;
    // Still open after the hold, and answering: the workers count the connections that
    // answered a ping since the mark (the server pings each once per interval, and drops
    // the ones that do not answer).
    tell(&mut children, b"count\n").await;
    let [still_open, answered, _] = phase(&mut reports, workers, "alive", &pb).await;
    let moved = |k: &str| shard_sum(&pings_after, k).saturating_sub(shard_sum(&pings_before, k));
    let (pings_sent, pong_timeouts) = (moved("pings_sent"), moved("pong_timeouts"));
    for (w, mut c) in children.into_iter().enumerate() {
        drop(c.stdin.take());
        match c.wait().await {
            Ok(status) if !status.success() => eprintln!("idle worker {w} ended with {status}"),
            _ => {}
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = sample(t.pid);
    let per = |a: u64, b: u64, count: usize| b.saturating_sub(a) as f64 / count.max(1) as f64;
    let user_avg = per(before.rss_bytes, held.rss_bytes, open);
    let user_marginal = per(half.rss_bytes, held.rss_bytes, open - half_open.min(open));
    let kernel = per(before.slab_bytes, held.slab_bytes, open);
    let idle_cpu =
        held_cpu.cpu_ns.saturating_sub(held.cpu_ns) as f64 / hold_secs.max(1) as f64 / 1e6;
    let mib = |b: u64| b as f64 / 1048576.0;
    println!(
        "idle: {open} connections ({failed} failed, {retries} handshakes retried) over {workers} workers in {:.2}s ({:.0}/s); {still_open} still open after {hold_secs}s, {answered} answered a ping in it ({pings_sent} pings sent, {pong_timeouts} pong timeouts)\n  server RSS {:.1} MiB -> {:.1} MiB at {half_open} -> {:.1} MiB at {open} -> {:.1} MiB after closing\n  user space per connection: {user_marginal:.0} B marginal, {user_avg:.0} B average\n  kernel slab {kernel:.0} B per connection (both ends of loopback)\n  box memory in use {:.1} GiB -> {:.1} GiB; server CPU while idle {idle_cpu:.2} ms/s",
        ramp.as_secs_f64(),
        open as f64 / ramp.as_secs_f64(),
        mib(before.rss_bytes),
        mib(half.rss_bytes),
        mib(held.rss_bytes),
        mib(after.rss_bytes),
        before.used_bytes as f64 / (1u64 << 30) as f64,
        held.used_bytes as f64 / (1u64 << 30) as f64,
    );
    json!({
        "connections": open, "failed": failed, "retries": retries, "still_open_after_hold": still_open,
        "answered_ping_in_hold": answered, "hold_secs": hold_secs, "pings_sent_in_hold": pings_sent,
        "pong_timeouts_in_hold": pong_timeouts, "workers": workers,
        "ramp_secs": ramp.as_secs_f64(), "rss_before": before.rss_bytes, "rss_half": half.rss_bytes,
        "rss_held": held.rss_bytes, "rss_after": after.rss_bytes,
        "user_bytes_per_conn_marginal": user_marginal, "user_bytes_per_conn_avg": user_avg,
        "kernel_slab_bytes_per_conn": kernel, "idle_cpu_ms_per_s": idle_cpu,
        "box_used_before": before.used_bytes, "box_used_held": held.used_bytes,
    })
}

/// The server's `/stats`, if it answers: `GET /stats` on the WebSocket port.
async fn server_stats(server: SocketAddr) -> Option<serde_json::Value> {
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
fn shard_sum(stats: &Option<serde_json::Value>, name: &str) -> u64 {
    let shards = stats.as_ref().and_then(|v| v["shards"].as_array());
    shards
        .map(|a| a.iter().filter_map(|s| s[name].as_u64()).sum())
        .unwrap_or_default()
}

/// Sends `line` to every worker.
async fn tell(children: &mut [tokio::process::Child], line: &[u8]) {
    for c in children {
        let stdin = c.stdin.as_mut().expect("stdin");
        stdin.write_all(line).await.expect("worker stdin");
    }
}

/// Attempts per connection before an idle worker counts it as failed: on a loaded box a
/// handshake can time out, and a planning run wants the count it asked for.
const IDLE_ATTEMPTS: u32 = 5;

/// What an idle worker's connections have done so far, shared by its tasks.
#[derive(Default)]
struct Connecting {
    /// Connected, or given up on.
    settled: Cell<usize>,
    failed: Cell<usize>,
    retries: Cell<usize>,
}

/// Connects connection `i` (retrying with a growing pause, at most `concurrency` handshakes
/// in flight per worker), then answers its pings until `stop` or the server closes it.
/// The connection is held from the moment its handshake completes, so no ping waits on
/// slower neighbours.
async fn keep_idle(
    t: Target,
    i: usize,
    permits: Rc<tokio::sync::Semaphore>,
    connecting: Rc<Connecting>,
    held: Rc<Held>,
    stop: Rc<Cell<bool>>,
) {
    let mut attempt = 0;
    let stream = loop {
        let permit = permits.acquire().await.expect("semaphore open");
        let result = connect(t.server, source(i, t.sources), "/echo").await;
        drop(permit);
        match result {
            Ok(s) => break s,
            Err(_) if attempt + 1 < IDLE_ATTEMPTS => {
                attempt += 1;
                connecting.retries.set(connecting.retries.get() + 1);
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
            Err(_) => {
                held.0.set(Held::CLOSED);
                connecting.failed.set(connecting.failed.get() + 1);
                connecting.settled.set(connecting.settled.get() + 1);
                return;
            }
        }
    };
    held.0.set(0);
    connecting.settled.set(connecting.settled.get() + 1);
    hold(stream, stop, &held.0).await;
    held.0.set(Held::CLOSED);
}

/// One idle worker process (see [`idle`]). It talks to the parent over stdin/stdout:
/// `progress K` while connecting, `half OPEN FAILED RETRIES` and, after a `go` line,
/// `full …`; then `mark` and `count` (answered by `alive OPEN ANSWERED`) until stdin closes.
pub async fn idle_worker(t: Target, first: usize, count: usize, concurrency: usize) {
    let stop = Rc::new(Cell::new(false));
    let permits = Rc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let connecting = Rc::new(Connecting::default());
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut opened: Vec<Rc<Held>> = Vec::with_capacity(count);
    let half = count / 2;
    let mut reported = 0;
    for (phase, (from, n)) in [
        ("half", (first, half)),
        ("full", (first + half, count - half)),
    ] {
        for i in from..from + n {
            let held = Rc::new(Held(Cell::new(Held::PENDING)));
            opened.push(held.clone());
            tokio::task::spawn_local(keep_idle(
                t,
                i,
                permits.clone(),
                connecting.clone(),
                held,
                stop.clone(),
            ));
        }
        let target = from + n - first;
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let settled = connecting.settled.get();
            if settled > reported {
                println!("progress {}", settled - reported);
                reported = settled;
            }
            if settled >= target {
                break;
            }
        }
        let open = opened.iter().filter(|h| h.open()).count();
        println!(
            "{phase} {open} {} {}",
            connecting.failed.get(),
            connecting.retries.get()
        );
        if phase == "half" {
            let _ = stdin.next_line().await;
        }
    }
    let mut marks = Vec::new();
    loop {
        let line = match stdin.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(e) => {
                eprintln!("idle worker {first}: reading its orders failed: {e}");
                break;
            }
        };
        match line.as_str() {
            "mark" => {
                marks = opened.iter().map(|h| h.0.get()).collect();
                println!("marked 0 0");
            }
            "count" => {
                let open = opened.iter().filter(|h| h.open()).count();
                let answered = opened
                    .iter()
                    .zip(&marks)
                    .filter(|(h, &m)| h.open() && h.0.get() > m)
                    .count();
                println!("alive {open} {answered}");
            }
            _ => {}
        }
    }
    stop.set(true);
}

// ---------------------------------------------------------------------------- ramp

/// Opens `n` connections with `concurrency` handshakes in flight: handshakes per second,
/// handshake latency, and server CPU per connection.
pub async fn ramp(t: Target, n: usize, concurrency: usize) -> serde_json::Value {
    let mut hist = histogram();
    let pb = bar(n as u64, "ramp");
    let before = sample(t.pid);
    let started = Instant::now();
    let (open, failed) = open_many(t, "/echo", 0, n, concurrency, Some(&mut hist), Some(&pb)).await;
    let secs = started.elapsed().as_secs_f64();
    let after = sample(t.pid);
    pb.finish_and_clear();
    let ok = open.len();
    drop(open);
    let cpu_us = after.cpu_ns.saturating_sub(before.cpu_ns) as f64 / ok.max(1) as f64 / 1000.0;
    let (p50, p99, p999) = quantiles_us(&hist);
    let busy = before.client_busy(&after);
    println!(
        "ramp: {ok} handshakes ({failed} failed) in {secs:.2}s: {:.0}/s, latency p50 {p50:.0} µs p99 {p99:.0} µs, server {cpu_us:.1} µs CPU/connection{}",
        ok as f64 / secs,
        client_bound(busy)
    );
    json!({
        "client_busy": busy,
        "connections": ok, "failed": failed, "secs": secs, "handshakes_per_sec": ok as f64 / secs,
        "latency_p50_us": p50, "latency_p99_us": p99, "latency_p999_us": p999,
        "latency_cdf_us": cdf_us(&hist), "server_cpu_us_per_conn": cpu_us,
    })
}

// ---------------------------------------------------------------------------- echo

/// C connections, each keeping D messages of S bytes in flight for T seconds.
pub async fn echo(t: Target, c: usize, depth: usize, size: usize, secs: u64) -> serde_json::Value {
    let size = size.max(8);
    let epoch = Instant::now();
    let deadline = epoch + Duration::from_secs(secs);
    let (streams, failed) = open_many(t, "/echo", 0, c, 256, None, None).await;
    assert_eq!(failed, 0, "echo: {failed} connections failed");
    let start = sample(t.pid);
    let started = Instant::now();
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
    let elapsed = started.elapsed().as_secs_f64();
    let end = sample(t.pid);
    let rate = total as f64 / elapsed;
    let ns_per_msg = end.cpu_ns.saturating_sub(start.cpu_ns) as f64 / total.max(1) as f64;
    let (p50, p99, p999) = quantiles_us(&hist);
    let busy = start.client_busy(&end);
    println!(
        "echo: {c} conns x {depth} in flight x {size} B: {rate:.0} msgs/s, RTT p50 {p50:.1} µs p99 {p99:.1} µs p999 {p999:.1} µs, server {ns_per_msg:.0} ns CPU/msg{}",
        client_bound(busy)
    );
    json!({
        "client_busy": busy,
        "secs": elapsed, "messages": total, "msgs_per_sec": rate, "rtt_p50_us": p50,
        "rtt_p99_us": p99, "rtt_p999_us": p999, "latency_cdf_us": cdf_us(&hist),
        "server_cpu_ns_per_msg": ns_per_msg,
    })
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

// ---------------------------------------------------------------------------- fanout

/// What a fan-out run is asked to do.
#[derive(Clone, Copy, Debug)]
pub struct Fanout {
    pub rooms: usize,
    pub members: usize,
    /// Messages per second per room; 0: closed loop with `window` outstanding per room.
    pub rate: f64,
    pub window: usize,
    pub size: usize,
    pub secs: u64,
    /// Members per room (the first ones) that never read.
    pub slow_fraction: f64,
}

/// Shared counters of a fan-out run (one thread: plain cells).
#[derive(Default)]
struct Tally {
    delivered: Cell<u64>,
    hist: RefCell<Option<Histogram<u64>>>,
}

/// R rooms × M members; one publisher per room (itself a member, which is how a closed
/// loop knows a message went round). Every `msg` carries its send time in `data`.
pub async fn fanout(t: Target, f: Fanout) -> serde_json::Value {
    let epoch = Instant::now();
    let slow_per_room = (f.members as f64 * f.slow_fraction).round() as usize;
    let healthy_per_room = f.members - slow_per_room;
    let tally = Rc::new(Tally {
        delivered: Cell::new(0),
        hist: RefCell::new(Some(histogram())),
    });
    let stop = Rc::new(Cell::new(false));
    let pb = bar((f.rooms * (f.members + 1)) as u64, "join");
    let mut slow_streams = Vec::new();
    let mut members = tokio::task::JoinSet::new();
    let mut index = 0usize;
    for room in 0..f.rooms {
        let path = format!("/ws?room=fan-{room}");
        for m in 0..f.members {
            let mut s = connect(t.server, source(index, t.sources), &path)
                .await
                .expect("member connects");
            index += 1;
            expect_joined(&mut s).await;
            pb.inc(1);
            if m < slow_per_room {
                slow_streams.push(s);
                continue;
            }
            let (tally, stop) = (tally.clone(), stop.clone());
            members.spawn_local(async move { member(s, tally, stop, epoch).await });
        }
    }
    let mut publishers = Vec::new();
    for room in 0..f.rooms {
        let path = format!("/ws?room=fan-{room}");
        let mut s = connect(t.server, source(index, t.sources), &path)
            .await
            .expect("publisher connects");
        index += 1;
        expect_joined(&mut s).await;
        pb.inc(1);
        publishers.push(s);
    }
    pb.finish_and_clear();
    let before = sample(t.pid);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(f.secs);
    let mut pubs = tokio::task::JoinSet::new();
    for (room, s) in publishers.into_iter().enumerate() {
        pubs.spawn_local(publisher(s, room, f, epoch, deadline));
    }
    let mut published = 0u64;
    while let Some(r) = pubs.join_next().await {
        published += r.unwrap_or(0);
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Let what is in flight arrive, then stop the members.
    let expected = published * healthy_per_room as u64;
    let drain_until = Instant::now() + Duration::from_secs(3);
    while tally.delivered.get() < expected && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = sample(t.pid);
    let busy = before.client_busy(&after);
    stop.set(true);
    members.abort_all();
    drop(slow_streams);
    let delivered = tally.delivered.get();
    let hist = tally.hist.borrow_mut().take().expect("histogram");
    let (p50, p99, p999) = quantiles_us(&hist);
    let rate = delivered as f64 / elapsed;
    let completeness = delivered as f64 / expected.max(1) as f64;
    let ns_per_delivery =
        after.cpu_ns.saturating_sub(before.cpu_ns) as f64 / delivered.max(1) as f64;
    let mode = if f.rate > 0.0 {
        format!("{} msg/s per room", f.rate)
    } else {
        format!("closed loop, window {}", f.window)
    };
    println!(
        "fanout: {} rooms x {} members ({slow_per_room} never reading per room), {mode}, {} B: {rate:.0} deliveries/s, publish->delivery p50 {:.2} ms p99 {:.2} ms p999 {:.2} ms, complete {:.4}, server {ns_per_delivery:.0} ns CPU/delivery{}",
        f.rooms, f.members, f.size, p50 / 1000.0, p99 / 1000.0, p999 / 1000.0, completeness, client_bound(busy)
    );
    json!({
        "client_busy": busy,
        "secs": elapsed, "published": published, "delivered": delivered, "expected": expected,
        "completeness": completeness, "deliveries_per_sec": rate, "latency_p50_us": p50,
        "latency_p99_us": p99, "latency_p999_us": p999, "latency_cdf_us": cdf_us(&hist),
        "server_cpu_ns_per_delivery": ns_per_delivery, "slow_members_per_room": slow_per_room,
    })
}

async fn expect_joined(s: &mut TcpStream) {
    let mut frames = Frames::new(512);
    loop {
        assert!(frames.fill(s).await, "closed before joining");
        while let Some(f) = frames.next() {
            let text = frames.bytes(f.payload);
            if text.starts_with(br#"{"op":"joined""#) {
                return;
            }
            assert!(
                !text.starts_with(br#"{"op":"error""#),
                "join refused: {}",
                String::from_utf8_lossy(text)
            );
        }
    }
}

/// A member: counts deliveries and their latency, answers pings.
async fn member(mut s: TcpStream, tally: Rc<Tally>, stop: Rc<Cell<bool>>, epoch: Instant) {
    let mut frames = Frames::new(64 * 1024);
    while !stop.get() && frames.fill(&mut s).await {
        let now = epoch.elapsed().as_nanos() as u64;
        let mut n = 0;
        let mut hist = tally.hist.borrow_mut();
        let Some(hist) = hist.as_mut() else { return };
        while let Some(f) = frames.next() {
            match f.opcode {
                0x1 => {
                    if let Some(sent) = data_stamp(frames.bytes(f.payload)) {
                        let _ = hist.record(now.saturating_sub(sent).max(1));
                        n += 1;
                    }
                }
                0x9 => {
                    let pong = client::pong(frames.bytes(f.payload));
                    let _ = s.try_write(&pong);
                }
                _ => {}
            }
        }
        tally.delivered.set(tally.delivered.get() + n);
    }
}

/// Publishes to room `room` until `deadline`: at a fixed rate, or keeping at most
/// `window` of its own messages in flight (it is a member and sees them come back).
async fn publisher(
    mut s: TcpStream,
    room: usize,
    f: Fanout,
    epoch: Instant,
    deadline: Instant,
) -> u64 {
    // One frame built once; each publish copies it and writes the send time, 20 digits in
    // a string (JSON numbers cannot carry leading zeros), in place: no allocation.
    let pad = "x".repeat(f.size.saturating_sub(40));
    let template = client::text(
        format!(
            r#"{{"op":"pub","room":"fan-{room}","data":["{:020}","{pad}"]}}"#,
            0
        )
        .as_bytes(),
    );
    let stamp_at = template
        .windows(20)
        .position(|w| w == [b'0'; 20])
        .expect("stamp field");
    let mut scratch = Vec::with_capacity(template.len() * f.window.max(1));
    let frame = |now: u64, out: &mut Vec<u8>| {
        let at = out.len();
        out.extend_from_slice(&template);
        out[at + stamp_at..at + stamp_at + 20].copy_from_slice(&itoa_20(now));
    };
    let mut published = 0u64;
    let mut frames = Frames::new(64 * 1024);
    if f.rate > 0.0 {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f.rate));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        while Instant::now() < deadline {
            tick.tick().await;
            scratch.clear();
            frame(epoch.elapsed().as_nanos() as u64, &mut scratch);
            if s.write_all(&scratch).await.is_err() {
                break;
            }
            published += 1;
            // Keep the socket drained (our own deliveries, pings).
            while let Ok(n) = s.try_read(&mut [0u8; 65536]) {
                if n == 0 {
                    break;
                }
            }
        }
        return published;
    }
    let mut outstanding = 0usize;
    loop {
        scratch.clear();
        while outstanding < f.window && Instant::now() < deadline {
            frame(epoch.elapsed().as_nanos() as u64, &mut scratch);
            outstanding += 1;
            published += 1;
        }
        if !scratch.is_empty() && s.write_all(&scratch).await.is_err() {
            break;
        }
        if outstanding == 0 || !frames.fill(&mut s).await {
            break;
        }
        while let Some(fr) = frames.next() {
            match fr.opcode {
                0x1 if data_stamp(frames.bytes(fr.payload.clone())).is_some() => outstanding -= 1,
                0x9 => {
                    let pong = client::pong(frames.bytes(fr.payload));
                    let _ = s.write_all(&pong).await;
                }
                _ => {}
            }
        }
    }
    published
}

/// `v` as 20 ASCII digits, zero-padded.
fn itoa_20(mut v: u64) -> [u8; 20] {
    let mut d = [b'0'; 20];
    for slot in d.iter_mut().rev() {
        *slot = b'0' + (v % 10) as u8;
        v /= 10;
    }
    d
}

// ---------------------------------------------------------------------------- churn

/// Connect → join → leave → close, `rate` times a second for `secs`: success rate and
/// the server's RSS drift.
pub async fn churn(t: Target, rate: f64, secs: u64) -> serde_json::Value {
    let before = sample(t.pid);
    let ok = Rc::new(Cell::new(0u64));
    let failed = Rc::new(Cell::new(0u64));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let pb = bar((rate * secs as f64) as u64, "churn");
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut tasks = tokio::task::JoinSet::new();
    let mut i = 0usize;
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
    pb.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    tokio::time::sleep(SETTLE).await;
    let after = sample(t.pid);
    let (ok, failed) = (ok.get(), failed.get());
    let drift = after.rss_bytes as f64 - before.rss_bytes as f64;
    let success = ok as f64 / (ok + failed).max(1) as f64;
    println!(
        "churn: {ok} cycles ok, {failed} failed ({:.2}% success) at {:.0}/s; server RSS {:.1} MiB -> {:.1} MiB (drift {:+.1} MiB)",
        success * 100.0,
        (ok + failed) as f64 / elapsed,
        before.rss_bytes as f64 / 1048576.0,
        after.rss_bytes as f64 / 1048576.0,
        drift / 1048576.0
    );
    json!({
        "cycles_ok": ok, "cycles_failed": failed, "success_rate": success, "secs": elapsed,
        "rss_before": before.rss_bytes, "rss_after": after.rss_bytes, "rss_drift_bytes": drift,
    })
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

// ---------------------------------------------------------------------------- calibrate

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
    let rest = sample(t.pid);
    // The idle CPU is each shard's 1 s tick plus the pings. A few connections held first
    // give the ticks alone (their pings are negligible); the difference per ping between
    // the two runs is the cost of a ping.
    let few = (shards as usize * 10).min(connections);
    println!("calibrate: {shards} shards, ping interval {ping_interval}s; {few} idle connections for the ticks, then {connections} held one interval");
    let ticks = idle(t, few, 10, 1, 2048).await;
    let idle = idle(t, connections, ping_interval + 5, 1, 2048).await;
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
            secs: 5,
            slow_fraction: 0.0,
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
    };
    let runs = json!({"rest_rss": rest.rss_bytes, "idle_ticks": ticks, "idle": idle, "ramp": ramp, "echo": echo, "fanout": fan});
    (figures, runs)
}
