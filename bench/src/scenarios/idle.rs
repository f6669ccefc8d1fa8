//! `idle`: many connections held open, answering the server's pings: what each costs the
//! server in memory (user space and kernel slab), and its CPU while they idle. Always over
//! worker processes, each under its own RLIMIT_NOFILE.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::connect::{deflate_agreed, deflate_note, with_deflate};
use super::measure::{cpu_fields, probe, server_stats, shard_sum, with, SETTLE};
use super::workers::{argv, share, sums, Workers};
use super::{bar, Target};
use crate::client::{self, handshake, source, Frames};

/// Connections per source address beyond which `idle` spreads over more addresses.
const SOURCE_DENSITY: usize = 8_000;

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

/// Holds `n` idle connections, spread over `workers` processes (each under its own
/// RLIMIT_NOFILE). Memory is sampled with none, half and all open: the average
/// (held − none) / n includes fixed costs that grow with first use; the marginal
/// (all − half) / (n/2) is what one more connection costs, the figure to plan with.
/// Every connection answers pings, and the count still open after `hold` is reported.
/// With `--deflate` each has agreed to permessage-deflate first, so the bytes per
/// connection include whatever the server keeps for that.
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
    let agreed = deflate_agreed(t, "/echo").await;
    let before = probe(t, &[]);
    let started = Instant::now();
    let pb = bar(n as u64, "idle");
    let mut ws = Workers::spawn(t, workers, |w| {
        let (first, count) = share(n, w, workers);
        let (first, count, per) = (first.to_string(), count.to_string(), per_worker.to_string());
        argv(&[
            "worker-idle",
            "--first",
            &first,
            "--count",
            &count,
            "--concurrency",
            &per,
        ])
    });
    // Each worker reports `half OPEN FAILED RETRIES`, then `full …` (see [`idle_worker`]).
    let [half_open] = sums(&ws.gather("half", Some(&pb)).await);
    tokio::time::sleep(SETTLE).await;
    let half = probe(t, &ws.pids);
    ws.tell(b"go\n").await;
    let [open, failed, retries] = sums(&ws.gather("full", Some(&pb)).await);
    // The load generator's and the server CPU's share over the second half of the ramp.
    let ramped = probe(t, &ws.pids);
    pb.finish_and_clear();
    let ramp = started.elapsed();
    tokio::time::sleep(SETTLE).await;
    let held = probe(t, &[]);
    ws.tell(b"mark\n").await;
    ws.gather("marked", None).await;
    let pings_before = server_stats(t.server).await;
    tokio::time::sleep(Duration::from_secs(hold_secs)).await;
    let held_cpu = probe(t, &[]);
    let pings_after = server_stats(t.server).await;
    // Still open after the hold, and answering: the workers count the connections that
    // answered a ping since the mark (the server pings each once per interval, and drops
    // the ones that do not answer).
    ws.tell(b"count\n").await;
    let [still_open, answered] = sums(&ws.gather("alive", None).await);
    let moved = |k: &str| shard_sum(&pings_after, k).saturating_sub(shard_sum(&pings_before, k));
    let (pings_sent, pong_timeouts) = (moved("pings_sent"), moved("pong_timeouts"));
    ws.finish("idle").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = probe(t, &[]);
    let (cpu, note) = cpu_fields(t, &half, &ramped, None);
    let per = |a: u64, b: u64, count: usize| b.saturating_sub(a) as f64 / count.max(1) as f64;
    let user_avg = per(before.rss_bytes, held.rss_bytes, open);
    let user_marginal = per(half.rss_bytes, held.rss_bytes, open - half_open.min(open));
    let kernel = per(before.slab_bytes, held.slab_bytes, open);
    let idle_cpu =
        held_cpu.cpu_ns.saturating_sub(held.cpu_ns) as f64 / hold_secs.max(1) as f64 / 1e6;
    let mib = |b: u64| b as f64 / 1048576.0;
    println!(
        "idle: {open} connections{} ({failed} failed, {retries} handshakes retried) over {workers} workers in {:.2}s ({:.0}/s); {still_open} still open after {hold_secs}s, {answered} answered a ping in it ({pings_sent} pings sent, {pong_timeouts} pong timeouts)\n  server RSS {:.1} MiB -> {:.1} MiB at {half_open} -> {:.1} MiB at {open} -> {:.1} MiB after closing\n  user space per connection: {user_marginal:.0} B marginal, {user_avg:.0} B average\n  kernel slab {kernel:.0} B per connection (both ends of loopback)\n  box memory in use {:.1} GiB -> {:.1} GiB; server CPU while idle {idle_cpu:.2} ms/s\n  over the ramp's second half{note}",
        deflate_note(agreed),
        ramp.as_secs_f64(),
        open as f64 / ramp.as_secs_f64(),
        mib(before.rss_bytes),
        mib(half.rss_bytes),
        mib(held.rss_bytes),
        mib(after.rss_bytes),
        before.used_bytes as f64 / (1u64 << 30) as f64,
        held.used_bytes as f64 / (1u64 << 30) as f64,
    );
    let figures = json!({
        "connections": open, "failed": failed, "retries": retries, "still_open_after_hold": still_open,
        "answered_ping_in_hold": answered, "hold_secs": hold_secs, "pings_sent_in_hold": pings_sent,
        "pong_timeouts_in_hold": pong_timeouts, "workers": workers,
        "ramp_secs": ramp.as_secs_f64(), "rss_before": before.rss_bytes, "rss_half": half.rss_bytes,
        "rss_held": held.rss_bytes, "rss_after": after.rss_bytes,
        "user_bytes_per_conn_marginal": user_marginal, "user_bytes_per_conn_avg": user_avg,
        "kernel_slab_bytes_per_conn": kernel, "idle_cpu_ms_per_s": idle_cpu,
        "box_used_before": before.used_bytes, "box_used_held": held.used_bytes,
    });
    with(with_deflate(figures, agreed), cpu)
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
        let result = handshake(t.server, source(i, t.sources), "/echo", t.deflate).await;
        drop(permit);
        match result {
            Ok((s, _)) => break s,
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
