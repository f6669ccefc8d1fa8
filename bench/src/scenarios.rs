//! The scenarios. Each is bounded in connections and time, exits by itself, prints a
//! human summary and returns its figures for the results file.
//!
//! With `--workers N` (N > 1) a scenario's connections are spread over N child processes
//! of this binary (hidden `worker-*` subcommands): the parent coordinates them over their
//! stdin and stdout (orders in, one report line per phase out), samples the server
//! around the measured window, and merges what they report. Every scenario reports the
//! load generator's own CPU over its window (its workers included) as `client_busy`.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::{self, connect, data_stamp, handshake, mono_ns, op_seq, source, Frames};
use crate::deflate::{Agreed, Inflater};
use crate::feed::Feed;
use crate::sample::{
    cdf_us, cpu_window, hist_add_encoded, hist_encode, histogram, proc_cpu_ns, quantiles_us,
    sample, user_hz, ProcSample,
};

/// Nodes beyond `--server` a target may have (`--also`).
pub const MAX_ALSO: usize = 7;

/// Where the load goes and how it spreads.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    pub server: SocketAddr,
    pub pid: Option<u32>,
    pub sources: u8,
    /// The CPU the server is pinned to (`--server-cpu`): its /proc/stat line is read
    /// around each measured window, softirq included.
    pub server_cpu: Option<usize>,
    /// Load-generator processes for ramp, echo, fanout, churn, slow and resume (`--workers`); 1:
    /// this process alone. `idle` takes its own.
    pub workers: usize,
    /// More nodes of the same cluster (`--also`), after `server`: fan-out's member g
    /// connects to node g % [`Target::nodes`]. A fixed array keeps `Target` `Copy`.
    pub also: [Option<SocketAddr>; MAX_ALSO],
    /// Their pids (`--also-pid`), for the CPU of all the nodes.
    pub also_pids: [Option<u32>; MAX_ALSO],
    /// The cluster's Redis (`--redis-pid`), for its CPU.
    pub redis_pid: Option<u32>,
    /// `--deflate`: `idle`'s and fan-out's connections offer permessage-deflate and fail
    /// unless the server agrees (see [`crate::deflate`]).
    pub deflate: bool,
}

impl Target {
    /// The nodes: `server` and those of `also`.
    pub fn nodes(&self) -> usize {
        1 + self.also.iter().flatten().count()
    }

    /// Node `g % nodes`: `server` first, then `also` in order.
    pub fn node(&self, g: usize) -> SocketAddr {
        match g % self.nodes() {
            0 => self.server,
            k => self
                .also
                .iter()
                .flatten()
                .nth(k - 1)
                .copied()
                .expect("k < nodes"),
        }
    }
}

/// Connections per source address beyond which `idle` spreads over more addresses.
const SOURCE_DENSITY: usize = 8_000;

/// How long the server gets to settle after a burst of handshakes before memory is read.
const SETTLE: Duration = Duration::from_secs(3);

/// The share of a CPU past which a load-generator process counts as saturated.
const CLIENT_BOUND: f64 = 0.90;

pub(crate) fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .expect("template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_owned());
    pb
}

/// The server, its CPU and the load generator (this process and `workers`), now; and the
/// other nodes and Redis when their pids are given.
pub(crate) fn probe(t: Target, workers: &[u32]) -> ProcSample {
    let mut s = sample(t.pid, t.server_cpu, workers);
    s.also_cpu_ns = t.also_pids.iter().flatten().map(|&p| proc_cpu_ns(p)).sum();
    s.redis_cpu_ns = t.redis_pid.map(proc_cpu_ns);
    s
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

/// With `--deflate`, before a run opens anything: one connection to each node on `path`
/// checks that it agrees to permessage-deflate in a way the bench can use. Returns what
/// the first agreed to, for the results; ends the process with the reason if one did not
/// (the run would measure plain). None without `--deflate`.
pub(crate) async fn deflate_agreed(t: Target, path: &str) -> Option<Agreed> {
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
fn deflate_note(agreed: Option<Agreed>) -> String {
    agreed.map(|a| format!(", {a}")).unwrap_or_default()
}

/// `figures` with `deflate`: the extension agreed, with `--deflate`.
fn with_deflate(mut figures: serde_json::Value, agreed: Option<Agreed>) -> serde_json::Value {
    if let Some(a) = agreed {
        figures["deflate"] = json!(a.to_string());
    }
    figures
}

/// Worker `w`'s share of `n` items over `workers`: (first, count).
pub(crate) fn share(n: usize, w: usize, workers: usize) -> (usize, usize) {
    let first = n * w / workers;
    (first, n * (w + 1) / workers - first)
}

/// Child processes of this binary driving a share of the load each (see the module doc).
pub(crate) struct Workers {
    children: Vec<tokio::process::Child>,
    pub(crate) pids: Vec<u32>,
    /// Every worker's report lines, tagged with its number, as they come.
    reports: tokio::sync::mpsc::UnboundedReceiver<(usize, String)>,
}

impl Workers {
    /// Starts `n` workers, worker `w` with the subcommand and arguments `args(w)`.
    pub(crate) fn spawn(t: Target, n: usize, args: impl Fn(usize) -> Vec<String>) -> Workers {
        let exe = std::env::current_exe().expect("own path");
        let (tx, reports) = tokio::sync::mpsc::unbounded_channel();
        let mut children = Vec::new();
        let mut pids = Vec::new();
        for w in 0..n {
            let mut child = tokio::process::Command::new(&exe)
                .args([
                    "--server",
                    &t.server.to_string(),
                    "--sources",
                    &t.sources.to_string(),
                ])
                .args(
                    t.also
                        .iter()
                        .flatten()
                        .flat_map(|a| ["--also".to_owned(), a.to_string()]),
                )
                .args(t.deflate.then_some("--deflate"))
                .args(crate::tls::enabled().then_some("--tls"))
                .args(args(w))
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("spawn a worker");
            pids.extend(child.id());
            let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
            let tx = tx.clone();
            tokio::task::spawn_local(async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    if tx.send((w, line)).is_err() {
                        break;
                    }
                }
            });
            children.push(child);
        }
        Workers {
            children,
            pids,
            reports,
        }
    }

    /// Sends `line` (with its newline) to every worker.
    /// The measured window every worker scenario shares, once the workers are ready: the
    /// processes sampled, `go`, every worker's `done` line, sampled again. Returns the
    /// samples before and after, the `done` lines and the seconds between `go` and the last.
    async fn window(&mut self, t: Target) -> (ProcSample, Vec<String>, f64, ProcSample) {
        let before = probe(t, &self.pids);
        let started = Instant::now();
        self.tell(b"go\n").await;
        let done = self.gather("done", None).await;
        let secs = started.elapsed().as_secs_f64();
        let after = probe(t, &self.pids);
        (before, done, secs, after)
    }

    pub(crate) async fn tell(&mut self, line: &[u8]) {
        tell(&mut self.children, line).await;
    }

    /// Waits for a `word …` line from every worker and returns what follows the word, in
    /// worker order; `progress K` lines advance `pb` meanwhile.
    pub(crate) async fn gather(&mut self, word: &str, pb: Option<&ProgressBar>) -> Vec<String> {
        let mut got: Vec<Option<String>> = vec![None; self.children.len()];
        while got.iter().any(Option::is_none) {
            let (w, line) = self.reports.recv().await.expect("a worker ended early");
            let (first, rest) = line.split_once(' ').unwrap_or((&line, ""));
            if first == "progress" {
                if let Some(pb) = pb {
                    pb.inc(rest.trim().parse().unwrap_or(0));
                }
            } else if first == word {
                got[w] = Some(rest.to_owned());
            }
        }
        got.into_iter().flatten().collect()
    }

    /// Closes the workers' stdin (their signal to end) and waits for them.
    pub(crate) async fn finish(self, what: &str) {
        for (w, mut c) in self.children.into_iter().enumerate() {
            drop(c.stdin.take());
            match c.wait().await {
                Ok(status) if !status.success() => {
                    eprintln!("{what} worker {w} ended with {status}")
                }
                _ => {}
            }
        }
    }
}

/// A command line from its words.
pub(crate) fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| (*w).to_owned()).collect()
}

/// The first `N` numbers of each line, summed over the lines.
pub(crate) fn sums<const N: usize>(lines: &[String]) -> [usize; N] {
    let mut out = [0; N];
    for l in lines {
        let numbers = l
            .split_whitespace()
            .map(|v| v.parse::<usize>().unwrap_or(0));
        for (sum, v) in out.iter_mut().zip(numbers) {
            *sum += v;
        }
    }
    out
}

/// A worker's orders from its parent: one per line on its stdin.
pub(crate) struct Orders(tokio::io::Lines<tokio::io::BufReader<tokio::io::Stdin>>);

impl Orders {
    pub(crate) fn new() -> Orders {
        Orders(tokio::io::BufReader::new(tokio::io::stdin()).lines())
    }

    /// The next order; None once the parent closed stdin (or reading failed).
    pub(crate) async fn next(&mut self) -> Option<String> {
        self.0.next_line().await.ok().flatten()
    }

    /// Waits for the order `word`; false if stdin closed first.
    async fn wait_for(&mut self, word: &str) -> bool {
        while let Some(line) = self.next().await {
            if line == word {
                return true;
            }
        }
        false
    }

    /// Waits until the parent closes stdin.
    async fn wait_end(&mut self) {
        while self.next().await.is_some() {}
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

// ---------------------------------------------------------------------------- ramp

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

// ---------------------------------------------------------------------------- echo

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

// ---------------------------------------------------------------------------- fanout

/// What a fan-out run is asked to do.
#[derive(Clone, Copy, Debug)]
pub struct Fanout {
    pub rooms: usize,
    pub members: usize,
    /// Messages per second per room; 0: closed loop with `window` outstanding per room.
    pub rate: f64,
    pub window: usize,
    /// Bytes per published message, roughly.
    pub size: usize,
    /// The messages are a realistic JSON feed (see [`Feed`]), not padding.
    pub json: bool,
    pub secs: u64,
    /// Members per room (the first ones) that never read.
    pub slow_fraction: f64,
    /// Members check the room's `seq` (see [`Order`]).
    pub check_order: bool,
}

/// What members checking the order saw (`--check-order`): each expects the room's `seq`
/// to go up by one from the one its `joined` gave.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Order {
    /// Messages whose seq was not above the last one seen: out of order or twice.
    pub reordered: u64,
    /// Seqs passed over: messages this member never got (or got later, out of order).
    pub skipped: u64,
}

impl Order {
    /// Counts `seq` after `last` (the member's last seq seen, None before its first), and
    /// returns the new last.
    fn see(&mut self, last: Option<u64>, seq: u64) -> Option<u64> {
        match last {
            Some(l) if seq <= l => {
                self.reordered += 1;
                Some(l)
            }
            Some(l) => {
                self.skipped += seq - l - 1;
                Some(seq)
            }
            None => Some(seq),
        }
    }
}

/// Shared counters of a fan-out run (one thread: plain cells), and the members' one
/// inflater (`--deflate`: each message inflates on its own, see [`crate::deflate`]).
struct Tally {
    delivered: Cell<u64>,
    /// Bytes the members read from their sockets (see [`Frames::received`]) after their
    /// `joined`, until stopped: over the same span as `delivered`.
    wire_bytes: Cell<u64>,
    hist: RefCell<Option<Histogram<u64>>>,
    order: Cell<Order>,
    inflater: RefCell<Inflater>,
}

/// What a fan-out's members counted, once stopped.
struct Counted {
    delivered: u64,
    wire_bytes: u64,
    order: Order,
    hist: Histogram<u64>,
}

/// A fan-out's members in one process: the reading ones (tasks counting deliveries into
/// `tally`) and the never-reading ones, held open.
struct Members {
    tally: Rc<Tally>,
    stop: Rc<Cell<bool>>,
    tasks: tokio::task::JoinSet<()>,
    slow: Vec<TcpStream>,
}

impl Members {
    /// Joins members `first..first+count` of R rooms × `per_room`: member g is number
    /// g % per_room of room g / per_room, and the first `slow_per_room` of each room never
    /// read. Member g connects from source g to node g % nodes. `joined` is called after
    /// each join. With `check_order` every member checks the room's seq.
    async fn join(
        t: Target,
        per_room: usize,
        slow_per_room: usize,
        first: usize,
        count: usize,
        check_order: bool,
        joined: &mut dyn FnMut(),
    ) -> Members {
        let mut m = Members {
            tally: Rc::new(Tally {
                delivered: Cell::new(0),
                wire_bytes: Cell::new(0),
                hist: RefCell::new(Some(histogram())),
                order: Cell::new(Order::default()),
                inflater: RefCell::new(Inflater::new()),
            }),
            stop: Rc::new(Cell::new(false)),
            tasks: tokio::task::JoinSet::new(),
            slow: Vec::new(),
        };
        for g in first..first + count {
            let (room, n) = (g / per_room.max(1), g % per_room.max(1));
            let path = format!("/ws?room=fan-{room}");
            let (mut s, _) = handshake(t.node(g), source(g, t.sources), &path, t.deflate)
                .await
                .expect("member connects");
            let seq = expect_joined(&mut s).await;
            joined();
            if n < slow_per_room {
                m.slow.push(s);
                continue;
            }
            let (tally, stop) = (m.tally.clone(), m.stop.clone());
            let order = check_order.then_some(seq);
            m.tasks
                .spawn_local(async move { member(s, tally, stop, order).await });
        }
        m
    }

    /// Stops them all: what they counted.
    fn stop(mut self) -> Counted {
        self.stop.set(true);
        self.tasks.abort_all();
        drop(self.slow);
        Counted {
            delivered: self.tally.delivered.get(),
            wire_bytes: self.tally.wire_bytes.get(),
            order: self.tally.order.get(),
            hist: self.tally.hist.borrow_mut().take().expect("histogram"),
        }
    }
}

/// Where a fan-out's members are: here, or in worker processes.
enum MemberSide {
    Here(Members),
    Workers(Workers),
}

impl MemberSide {
    fn pids(&self) -> Vec<u32> {
        match self {
            MemberSide::Here(_) => Vec::new(),
            MemberSide::Workers(ws) => ws.pids.clone(),
        }
    }

    /// Deliveries counted so far.
    async fn delivered(&mut self) -> u64 {
        match self {
            MemberSide::Here(m) => m.tally.delivered.get(),
            MemberSide::Workers(ws) => {
                ws.tell(b"count\n").await;
                let [n] = sums(&ws.gather("delivered", None).await);
                n as u64
            }
        }
    }

    /// Stops every member: what they counted, their latency histograms merged.
    async fn stop(self) -> Counted {
        match self {
            MemberSide::Here(m) => m.stop(),
            MemberSide::Workers(mut ws) => {
                ws.tell(b"report\n").await;
                // `done DELIVERED REORDERED SKIPPED WIRE_BYTES <histogram>` from each.
                let done = ws.gather("done", None).await;
                ws.finish("fanout").await;
                let mut hist = histogram();
                for d in &done {
                    hist_add_encoded(&mut hist, d.split_whitespace().skip(4));
                }
                let [n, reordered, skipped, wire] = sums(&done);
                let order = Order {
                    reordered: reordered as u64,
                    skipped: skipped as u64,
                };
                Counted {
                    delivered: n as u64,
                    wire_bytes: wire as u64,
                    order,
                    hist,
                }
            }
        }
    }
}

/// R rooms × M members; one publisher per room (itself a member, which is how a closed
/// loop knows a message went round). Every `msg` carries its send time in `data`
/// (CLOCK_MONOTONIC, one clock for every process). With workers the members are split
/// over them, and the publishers stay here. With `--also` (a cluster) the members are
/// split over the nodes and the publishers stay on the first: with `--redis-pid` and
/// `--also-pid` the figures add Redis's CPU per published message and all the nodes'
/// per delivery. With `--deflate` every connection, publishers included, has agreed to
/// permessage-deflate and the members inflate what comes compressed; plain or not, the
/// members sum what they read from their sockets: the bytes on the wire per delivery.
pub async fn fanout(t: Target, f: Fanout) -> serde_json::Value {
    let agreed = deflate_agreed(t, "/ws").await;
    let slow_per_room = (f.members as f64 * f.slow_fraction).round() as usize;
    let healthy_per_room = f.members - slow_per_room;
    let pb = bar((f.rooms * (f.members + 1)) as u64, "join");
    let n = f.rooms * f.members;
    let mut side = if t.workers <= 1 {
        MemberSide::Here(
            Members::join(
                t,
                f.members,
                slow_per_room,
                0,
                n,
                f.check_order,
                &mut || pb.inc(1),
            )
            .await,
        )
    } else {
        let workers = t.workers;
        let (per_room, slow) = (f.members.to_string(), slow_per_room.to_string());
        let mut ws = Workers::spawn(t, workers, |w| {
            let (first, count) = share(n, w, workers);
            let (first, count) = (first.to_string(), count.to_string());
            let mut args = argv(&[
                "worker-fanout",
                "--first",
                &first,
                "--count",
                &count,
                "--members",
                &per_room,
                "--slow-per-room",
                &slow,
            ]);
            if f.check_order {
                args.push("--check-order".to_owned());
            }
            args
        });
        ws.gather("ready", Some(&pb)).await;
        MemberSide::Workers(ws)
    };
    let mut publishers = Vec::new();
    for room in 0..f.rooms {
        let path = format!("/ws?room=fan-{room}");
        let (mut s, _) = handshake(t.server, source(n + room, t.sources), &path, t.deflate)
            .await
            .expect("publisher connects");
        expect_joined(&mut s).await;
        pb.inc(1);
        publishers.push(s);
    }
    pb.finish_and_clear();
    let pids = side.pids();
    let before = probe(t, &pids);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(f.secs);
    let mut pubs = tokio::task::JoinSet::new();
    for (room, s) in publishers.into_iter().enumerate() {
        pubs.spawn_local(publisher(s, room, f, deadline));
    }
    let mut published = 0u64;
    while let Some(r) = pubs.join_next().await {
        published += r.unwrap_or(0);
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Let what is in flight arrive, then stop the members.
    let expected = published * healthy_per_room as u64;
    let drain_until = Instant::now() + Duration::from_secs(3);
    while side.delivered().await < expected && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = probe(t, &pids);
    let Counted {
        delivered,
        wire_bytes,
        order,
        hist,
    } = side.stop().await;
    let (p50, p99, p999) = quantiles_us(&hist);
    let rate = delivered as f64 / elapsed;
    let wire_per_delivery = wire_bytes as f64 / delivered.max(1) as f64;
    let completeness = delivered as f64 / expected.max(1) as f64;
    let ns_per_delivery =
        after.cpu_ns.saturating_sub(before.cpu_ns) as f64 / delivered.max(1) as f64;
    let (cpu, note) = cpu_fields(
        t,
        &before,
        &after,
        Some(("server_cpu_total_ns_per_delivery", delivered as f64, 1.0)),
    );
    let mode = if f.rate > 0.0 {
        format!("{} msg/s per room", f.rate)
    } else {
        format!("closed loop, window {}", f.window)
    };
    let mut over = if t.workers > 1 {
        format!(", members over {} workers", t.workers)
    } else {
        String::new()
    };
    if t.nodes() > 1 {
        over += &format!(", members over {} nodes", t.nodes());
    }
    let (cluster, cluster_note) = cluster_fields(
        t,
        &before,
        &after,
        published,
        delivered,
        f.check_order.then_some(order),
    );
    let body = if f.json { " of JSON feed" } else { "" };
    println!(
        "fanout: {} rooms x {} members ({slow_per_room} never reading per room{over}), {mode}, {} B{body}{}: {rate:.0} deliveries/s, {wire_per_delivery:.0} B on the wire/delivery, publish->delivery p50 {:.2} ms p99 {:.2} ms p999 {:.2} ms, complete {:.4}, server {ns_per_delivery:.0} ns CPU/delivery{cluster_note}{note}",
        f.rooms, f.members, f.size, deflate_note(agreed), p50 / 1000.0, p99 / 1000.0, p999 / 1000.0, completeness
    );
    let figures = json!({
        "secs": elapsed, "published": published, "delivered": delivered, "expected": expected,
        "completeness": completeness, "deliveries_per_sec": rate, "latency_p50_us": p50,
        "latency_p99_us": p99, "latency_p999_us": p999, "latency_cdf_us": cdf_us(&hist),
        "server_cpu_ns_per_delivery": ns_per_delivery, "slow_members_per_room": slow_per_room,
        "wire_bytes": wire_bytes, "wire_bytes_per_delivery": wire_per_delivery,
    });
    with(with(with_deflate(figures, agreed), cluster), cpu)
}

/// A fan-out's cluster figures over the window `a`..`b`, each only when it was asked for
/// (nothing at all for one node without them), and a note for the summary line:
///
/// - `nodes`: the nodes the members were spread over (with `--also`);
/// - `nodes_cpu_ns_per_delivery` (with `--also-pid`): the CPU of all the nodes whose pids
///   were given (`--server-pid` and `--also-pid`, schedstat of their threads, as
///   `server_cpu_ns_per_delivery` for the first) per delivery;
/// - `redis_cpu_us_per_msg` and `redis_cpu_share` (with `--redis-pid`): Redis's CPU (its
///   threads' schedstat) per published message, and as a share of one CPU;
/// - `order_reordered` and `order_skipped` (with `--check-order`, see [`Order`]).
fn cluster_fields(
    t: Target,
    a: &ProcSample,
    b: &ProcSample,
    published: u64,
    delivered: u64,
    order: Option<Order>,
) -> (serde_json::Map<String, serde_json::Value>, String) {
    let mut m = serde_json::Map::new();
    let mut note = String::new();
    if t.nodes() > 1 {
        m.insert("nodes".into(), json!(t.nodes()));
    }
    if t.also_pids.iter().any(Option::is_some) {
        let ns = (b.cpu_ns + b.also_cpu_ns).saturating_sub(a.cpu_ns + a.also_cpu_ns) as f64
            / delivered.max(1) as f64;
        m.insert("nodes_cpu_ns_per_delivery".into(), json!(ns));
        note += &format!(", all nodes {ns:.0} ns CPU/delivery");
    }
    if let (Some(x), Some(y)) = (a.redis_cpu_ns, b.redis_cpu_ns) {
        let ns = y.saturating_sub(x) as f64;
        let wall = match (a.at, b.at) {
            (Some(a), Some(b)) => (b.duration_since(a).as_nanos() as f64).max(1.0),
            _ => f64::INFINITY,
        };
        let per_msg = ns / 1000.0 / published.max(1) as f64;
        m.insert("redis_cpu_us_per_msg".into(), json!(per_msg));
        m.insert("redis_cpu_share".into(), json!(ns / wall));
        note += &format!(
            ", Redis {per_msg:.1} µs CPU/msg ({:.1}% of a CPU)",
            ns / wall * 100.0
        );
    }
    if let Some(o) = order {
        m.insert("order_reordered".into(), json!(o.reordered));
        m.insert("order_skipped".into(), json!(o.skipped));
        note += &format!(
            ", order: {} out of order or twice, {} skipped",
            o.reordered, o.skipped
        );
    }
    (m, note)
}

/// One fan-out worker (see [`fanout`]): joins its members (`progress K` on the way,
/// `ready JOINED` at the end), answers `count` with `delivered N`; on `report`, stops them
/// and reports `done DELIVERED REORDERED SKIPPED WIRE_BYTES <histogram>`; ends when stdin
/// closes.
pub async fn fanout_worker(
    t: Target,
    first: usize,
    count: usize,
    per_room: usize,
    slow_per_room: usize,
    check_order: bool,
) {
    let mut orders = Orders::new();
    let mut joined = 0usize;
    let mut step = || {
        joined += 1;
        if joined.is_multiple_of(100) {
            println!("progress 100");
        }
    };
    let members = Members::join(
        t,
        per_room,
        slow_per_room,
        first,
        count,
        check_order,
        &mut step,
    )
    .await;
    println!("progress {}", count % 100);
    println!("ready {count}");
    loop {
        match orders.next().await.as_deref() {
            Some("count") => println!("delivered {}", members.tally.delivered.get()),
            Some("report") => break,
            Some(_) => {}
            None => return,
        }
    }
    let c = members.stop();
    println!(
        "done {} {} {} {} {}",
        c.delivered,
        c.order.reordered,
        c.order.skipped,
        c.wire_bytes,
        hist_encode(&c.hist)
    );
    orders.wait_end().await;
}

/// Reads up to the `joined` op: the room's seq it gave (0 if it has none).
async fn expect_joined(s: &mut TcpStream) -> u64 {
    let mut frames = Frames::new(512);
    loop {
        assert!(frames.fill(s).await, "closed before joining");
        while let Some(f) = frames.next() {
            let text = frames.bytes(f.payload);
            if text.starts_with(br#"{"op":"joined""#) {
                return op_seq(text).unwrap_or(0);
            }
            assert!(
                !text.starts_with(br#"{"op":"error""#),
                "join refused: {}",
                String::from_utf8_lossy(text)
            );
        }
    }
}

/// A member: counts deliveries, their latency and the bytes it read, inflates the
/// compressed ones, answers pings. With `order` (the seq its `joined` gave) it also checks
/// that each message's seq is the next one. A message that does not inflate ends it (said
/// on stderr; the run's completeness shows it).
async fn member(mut s: TcpStream, tally: Rc<Tally>, stop: Rc<Cell<bool>>, order: Option<u64>) {
    let mut frames = Frames::new(64 * 1024);
    let mut last = order;
    let mut counted = 0;
    while !stop.get() && frames.fill(&mut s).await {
        let now = mono_ns();
        let received = frames.received();
        tally
            .wire_bytes
            .set(tally.wire_bytes.get() + received - counted);
        counted = received;
        let mut n = 0;
        let mut hist = tally.hist.borrow_mut();
        let Some(hist) = hist.as_mut() else { return };
        let mut inflater = tally.inflater.borrow_mut();
        while let Some(f) = frames.next() {
            match f.opcode {
                0x1 => {
                    let text = match frames.message(&f, &mut inflater) {
                        Ok(text) => text,
                        Err(e) => {
                            eprintln!("fanout member: {e}");
                            tally.delivered.set(tally.delivered.get() + n);
                            return;
                        }
                    };
                    if let Some(sent) = data_stamp(text) {
                        let _ = hist.record(now.saturating_sub(sent).max(1));
                        n += 1;
                        if order.is_some() {
                            if let Some(seq) = op_seq(text) {
                                let mut o = tally.order.get();
                                last = o.see(last, seq);
                                tally.order.set(o);
                            }
                        }
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

/// What a fan-out publisher sends to its room: `pub` ops whose `data` starts with the
/// send time (CLOCK_MONOTONIC), 20 digits in a string (JSON numbers cannot carry leading
/// zeros). Uncompressed even with `--deflate`: RFC 7692 lets a sender send any message
/// plain, and what is measured is the server's fan-out.
enum Payload {
    /// `data` padded to the size with one repeated byte: one frame built once; each
    /// publish copies it and writes the send time in place.
    Padded { template: Vec<u8>, stamp_at: usize },
    /// `--json`: `data` is the send time and a [`Feed`] body of fresh numbers filling the
    /// size, formatted into `body` and framed per publish (a microsecond or two): no
    /// allocation once the buffers have room.
    Feed {
        feed: Feed,
        size: usize,
        /// The op up to the send time: `{"op":"pub","room":…,"data":["`.
        head: Vec<u8>,
        body: Vec<u8>,
    },
}

impl Payload {
    fn new(room: usize, f: Fanout) -> Payload {
        if f.json {
            let head = format!(r#"{{"op":"pub","room":"fan-{room}","data":[""#).into_bytes();
            return Payload::Feed {
                feed: Feed::new(room as u64),
                size: f.size,
                body: Vec::with_capacity(f.size + 64),
                head,
            };
        }
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
        Payload::Padded { template, stamp_at }
    }

    /// Appends the frame of a message sent at `now` to `out`.
    fn push(&mut self, now: u64, out: &mut Vec<u8>) {
        match self {
            Payload::Padded { template, stamp_at } => {
                let at = out.len() + *stamp_at;
                out.extend_from_slice(template);
                out[at..at + 20].copy_from_slice(&itoa_20(now));
            }
            Payload::Feed {
                feed,
                size,
                head,
                body,
            } => {
                let unix_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                body.clear();
                body.extend_from_slice(head);
                body.extend_from_slice(&itoa_20(now));
                body.extend_from_slice(b"\",");
                feed.write(size.saturating_sub(body.len() + 2), unix_ms, body);
                body.extend_from_slice(b"]}");
                client::push_text(body, out);
            }
        }
    }
}

/// Publishes to room `room` until `deadline`: at a fixed rate, or keeping at most
/// `window` of its own messages in flight (it is a member and sees them come back,
/// compressed with `--deflate`: it inflates them to find its stamps).
async fn publisher(mut s: TcpStream, room: usize, f: Fanout, deadline: Instant) -> u64 {
    let mut payload = Payload::new(room, f);
    let mut scratch = Vec::with_capacity((f.size + 64) * f.window.max(1));
    let mut published = 0u64;
    let mut frames = Frames::new(64 * 1024);
    let mut inflater = Inflater::new();
    if f.rate > 0.0 {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f.rate));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        while Instant::now() < deadline {
            tick.tick().await;
            scratch.clear();
            payload.push(mono_ns(), &mut scratch);
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
            payload.push(mono_ns(), &mut scratch);
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
                0x1 => match frames.message(&fr, &mut inflater) {
                    Ok(text) if data_stamp(text).is_some() => outstanding -= 1,
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("fanout publisher: {e}");
                        return published;
                    }
                },
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

#[cfg(test)]
mod tests {
    use super::*;

    fn target(also: &[&str]) -> Target {
        let mut t = Target {
            server: "127.0.0.1:9000".parse().unwrap(),
            pid: None,
            sources: 16,
            server_cpu: None,
            workers: 1,
            also: [None; MAX_ALSO],
            also_pids: [None; MAX_ALSO],
            redis_pid: None,
            deflate: false,
        };
        for (slot, a) in t.also.iter_mut().zip(also) {
            *slot = Some(a.parse().unwrap());
        }
        t
    }

    #[test]
    fn members_go_round_the_nodes() {
        let one = target(&[]);
        assert_eq!(one.nodes(), 1);
        assert!((0..5).all(|g| one.node(g) == one.server));
        let three = target(&["127.0.0.1:9001", "127.0.0.1:9002"]);
        assert_eq!(three.nodes(), 3);
        let ports: Vec<u16> = (0..7).map(|g| three.node(g).port()).collect();
        assert_eq!(ports, [9000, 9001, 9002, 9000, 9001, 9002, 9000]);
    }

    #[test]
    fn the_order_check_counts_what_is_out_of_order_or_missing() {
        let mut o = Order::default();
        let mut last = Some(10);
        for seq in [11, 12, 12, 15, 13, 16] {
            last = o.see(last, seq);
        }
        // 12 twice and 13 after 15: two out of order; 13 and 14 passed over at 15.
        assert_eq!(
            o,
            Order {
                reordered: 2,
                skipped: 2
            }
        );
        assert_eq!(last, Some(16));
        assert_eq!(Order::default().see(None, 7), Some(7));
    }
}
