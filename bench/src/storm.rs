//! `storm`: a reconnect storm against the connect hook (issue 28). Everyone connects at
//! once, as after a deploy, and every handshake waits on the application's backend.
//!
//! The backend is this process ([`backend`]): a minimal HTTP/1.1 server on
//! `--backend-listen` answering each connect hook call after `--hook-latency-ms` with the
//! user its `session` cookie names (and `"cache_ttl"` with `--cache-ttl`). The operator
//! starts roomcast with `--hook-connect http://<backend-listen>/connect` (the bench checks
//! with one probe connection that the server reaches it).
//!
//! N connections (`--connections`), spread over worker processes (each under its own
//! RLIMIT_NOFILE), all start their handshake at one CLOCK_MONOTONIC instant; connection i
//! carries `Cookie: session=u<i mod --users>` and connects from the source address of its
//! user (ten tabs of one user come from one browser: one address, which is part of the
//! server's question key). A connection is admitted when its 101 came and the server's
//! `{"op":"authed"}` was read with the right `sub`; a refused or failed handshake is tried
//! again after a jittered back-off, as a browser's client would.
//!
//! Two waves: the storm, then (everything closed, the server back to no connections) the
//! same storm again, when a backend's `cache_ttl` answers from the server's cache. Per
//! wave: time until all were admitted, the backend's requests, requests per second (mean
//! and the busiest second), its peak of requests in flight (which must stay under the
//! server's `--hook-max-inflight`: flagged if not) and connections, the server's hook
//! metrics moved (calls by outcome, coalesced, cached, queue timeouts, its in-flight peak),
//! and the CPU of the server's hooks thread (`roomcast-hooks`) per call.

mod backend;
mod observe;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;
use tokio::net::TcpStream;

use crate::client::{handshake_with, mono_ns, refusal_status, source, Frames};
use crate::sample::{hist_add_encoded, hist_encode, histogram};
use crate::scenarios::measure::{cpu_fields, probe, server_stats, with};
use crate::scenarios::workers::{argv, share, Orders, Workers};
use crate::scenarios::{bar, Target};

use backend::Answers;
use observe::{HookMoves, Metrics, ThreadCpu};

/// What a storm is asked to do (`roomcast-bench storm …`).
#[derive(clap::Args, Clone, Debug)]
pub struct Storm {
    /// Connections, all opened at once.
    #[arg(long, default_value_t = 20_000)]
    pub connections: usize,
    /// Distinct users (session cookies) over the connections: connection i is user
    /// i mod users [default: as many as connections: every connection its own user].
    #[arg(long)]
    pub users: Option<usize>,
    /// The backend answers each call after this long.
    #[arg(long, default_value_t = 20)]
    pub hook_latency_ms: u64,
    /// The backend answers `"cache_ttl": S` (0: no cache_ttl).
    #[arg(long, default_value_t = 0)]
    pub cache_ttl: u64,
    /// Where the backend listens; start roomcast with
    /// `--hook-connect http://<this>/connect`.
    #[arg(long, default_value = "127.0.0.1:9100")]
    pub backend_listen: SocketAddr,
    /// The server's `--hook-max-inflight`: the backend's peak in flight is checked
    /// against it.
    #[arg(long, default_value_t = 256)]
    pub hook_max_inflight: u64,
    /// Handshakes in flight over all workers (0: all at once).
    #[arg(long, default_value_t = 0)]
    pub concurrency: usize,
    /// Tries per connection and wave before it counts as failed.
    #[arg(long, default_value_t = 6)]
    pub attempts: u32,
    /// Waves (the first cold, the next ones after closing everything).
    #[arg(long, default_value_t = 2)]
    pub waves: usize,
    /// Load-generator processes [at least one per 15,000 connections].
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
}

impl Storm {
    fn users(&self) -> usize {
        self.users
            .unwrap_or(self.connections)
            .clamp(1, self.connections.max(1))
    }

    fn workers(&self) -> usize {
        self.workers
            .max(self.connections.div_ceil(PER_PROCESS))
            .max(1)
    }

    /// The run's parameters for the results file.
    pub fn params(&self) -> serde_json::Value {
        json!({
            "connections": self.connections, "users": self.users(),
            "hook_latency_ms": self.hook_latency_ms, "cache_ttl": self.cache_ttl,
            "hook_max_inflight": self.hook_max_inflight, "concurrency": self.concurrency,
            "attempts": self.attempts, "waves": self.waves, "workers": self.workers(),
        })
    }
}

/// Connections per worker process at most (each holds one descriptor, under an
/// RLIMIT_NOFILE of 20,000).
const PER_PROCESS: usize = 15_000;

/// One try's bound: the handshake and the `authed` behind it.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the server may take to close everything between waves.
const CLOSE_WAIT: Duration = Duration::from_secs(30);

/// The path the storm connects to.
const PATH: &str = "/ws";

// ---------------------------------------------------------------------------- a worker

/// What one process's connections did in a wave.
#[derive(Debug)]
struct Tally {
    admitted: usize,
    failed: usize,
    refused_503: usize,
    refused_other: usize,
    /// Tries that failed without an HTTP answer (connect error, reset, timeout).
    errors: usize,
    retries: usize,
    /// Admitted as another user than its cookie's (never, if the server is right).
    wrong_user: usize,
    /// From the wave's start to each admission, ns.
    admitted_at: Histogram<u64>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            admitted: 0,
            failed: 0,
            refused_503: 0,
            refused_other: 0,
            errors: 0,
            retries: 0,
            wrong_user: 0,
            admitted_at: histogram(),
        }
    }

    const FIELDS: usize = 7;

    /// `admitted failed refused_503 refused_other errors retries wrong_user | hist…`
    fn encode(&self) -> String {
        format!(
            "{} {} {} {} {} {} {} | {}",
            self.admitted,
            self.failed,
            self.refused_503,
            self.refused_other,
            self.errors,
            self.retries,
            self.wrong_user,
            hist_encode(&self.admitted_at)
        )
    }

    fn merge_encoded(&mut self, line: &str) {
        let (counts, hist) = line.split_once('|').unwrap_or((line, ""));
        let v: Vec<usize> = counts
            .split_whitespace()
            .map(|n| n.parse().unwrap_or(0))
            .chain(std::iter::repeat(0))
            .take(Self::FIELDS)
            .collect();
        self.admitted += v[0];
        self.failed += v[1];
        self.refused_503 += v[2];
        self.refused_other += v[3];
        self.errors += v[4];
        self.retries += v[5];
        self.wrong_user += v[6];
        hist_add_encoded(&mut self.admitted_at, hist.split_whitespace());
    }
}

/// What a worker's connections share.
struct Ctx {
    t: Target,
    users: usize,
    attempts: u32,
    permits: tokio::sync::Semaphore,
    tally: RefCell<Tally>,
    settled: Cell<usize>,
}

/// Why one try failed.
enum Miss {
    Status(u16),
    Error,
}

/// Connection `i`'s back-off before try `attempt` (1, 2, …): 200 ms × attempt plus up to
/// 200 ms of jitter, so the retries of a refused crowd do not come back as one.
fn backoff(i: usize, attempt: u32) -> Duration {
    let mut z = (i as u64 ^ (u64::from(attempt) << 40)).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    Duration::from_millis(200 * u64::from(attempt) + z % 200)
}

/// One try of connection `i`: the handshake with its cookie, then its `authed`. The
/// stream and whether `authed` named the cookie's user.
async fn try_once(ctx: &Ctx, i: usize) -> Result<(TcpStream, bool), Miss> {
    let user = i % ctx.users;
    let cookie = format!("Cookie: theme=light; session=u{user}\r\n");
    let src = source(user, ctx.t.sources);
    let (mut s, _) = handshake_with(ctx.t.server, src, PATH, false, &cookie)
        .await
        .map_err(|e| refusal_status(&e).map_or(Miss::Error, Miss::Status))?;
    let sub = format!("\"sub\":\"u{user}\"");
    let mut frames = Frames::new(512);
    loop {
        while let Some(f) = frames.next() {
            let payload = frames.bytes(f.payload);
            match f.opcode {
                0x1 if contains(payload, b"\"op\":\"authed\"") => {
                    let right = contains(payload, sub.as_bytes());
                    return Ok((s, right));
                }
                0x8 => return Err(Miss::Error),
                _ => {}
            }
        }
        if !frames.fill(&mut s).await {
            return Err(Miss::Error);
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Connection `i` from `start` (a CLOCK_MONOTONIC stamp): tries until admitted or out of
/// tries; the admitted stream is kept in `held`.
async fn admit(ctx: Rc<Ctx>, i: usize, start: u64, held: Rc<RefCell<Option<TcpStream>>>) {
    tokio::time::sleep(Duration::from_nanos(start.saturating_sub(mono_ns()))).await;
    for attempt in 0..ctx.attempts {
        if attempt > 0 {
            ctx.tally.borrow_mut().retries += 1;
            tokio::time::sleep(backoff(i, attempt)).await;
        }
        let tried = {
            let _permit = ctx.permits.acquire().await.expect("semaphore open");
            tokio::time::timeout(ATTEMPT_TIMEOUT, try_once(&ctx, i)).await
        };
        let mut tally = ctx.tally.borrow_mut();
        match tried {
            Ok(Ok((s, right))) => {
                let at = mono_ns().saturating_sub(start).max(1);
                let _ = tally.admitted_at.record(at);
                tally.admitted += 1;
                tally.wrong_user += usize::from(!right);
                *held.borrow_mut() = Some(s);
                ctx.settled.set(ctx.settled.get() + 1);
                return;
            }
            Ok(Err(Miss::Status(503))) => tally.refused_503 += 1,
            Ok(Err(Miss::Status(_))) => tally.refused_other += 1,
            Ok(Err(Miss::Error)) | Err(_) => tally.errors += 1,
        }
    }
    ctx.tally.borrow_mut().failed += 1;
    ctx.settled.set(ctx.settled.get() + 1);
}

/// One wave in a worker: connections `first..first+count` from `start`; `progress K` on
/// the way.
async fn wave(ctx: &Rc<Ctx>, first: usize, start: u64, held: &[Rc<RefCell<Option<TcpStream>>>]) {
    *ctx.tally.borrow_mut() = Tally::new();
    ctx.settled.set(0);
    let mut tasks = tokio::task::JoinSet::new();
    for (k, slot) in held.iter().enumerate() {
        tasks.spawn_local(admit(ctx.clone(), first + k, start, slot.clone()));
    }
    let mut reported = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            next = tasks.join_next() => {
                if next.is_none() {
                    break;
                }
            }
            _ = tick.tick() => {}
        }
        let settled = ctx.settled.get();
        if settled > reported {
            println!("progress {}", settled - reported);
            reported = settled;
        }
    }
    let settled = ctx.settled.get();
    if settled > reported {
        println!("progress {}", settled - reported);
    }
}

/// Closes every held connection: a close frame (1001, going away, as a page does when it
/// is left) and the socket.
fn close_all(held: &[Rc<RefCell<Option<TcpStream>>>]) -> usize {
    let bye = roomcast_bench::masked_frame(
        roomcast::protocol::OpCode::Close,
        &1001u16.to_be_bytes(),
        [0; 4],
    );
    let mut closed = 0;
    for slot in held {
        if let Some(s) = slot.borrow_mut().take() {
            let _ = s.try_write(&bye);
            closed += 1;
        }
    }
    closed
}

/// One storm worker: connections `first..first+count`. Says `ready`, then obeys
/// `go STAMP` (a wave from that CLOCK_MONOTONIC instant, answered `progress K` lines and
/// `admitted …`, see [`Tally::encode`]) and `close` (answered `closed N`) until stdin
/// closes.
pub async fn storm_worker(
    t: Target,
    first: usize,
    count: usize,
    users: usize,
    concurrency: usize,
    attempts: u32,
) {
    let ctx = Rc::new(Ctx {
        t,
        users: users.max(1),
        attempts: attempts.max(1),
        permits: tokio::sync::Semaphore::new(
            concurrency.clamp(1, tokio::sync::Semaphore::MAX_PERMITS),
        ),
        tally: RefCell::new(Tally::new()),
        settled: Cell::new(0),
    });
    let held: Vec<_> = (0..count).map(|_| Rc::new(RefCell::new(None))).collect();
    let mut orders = Orders::new();
    println!("ready");
    while let Some(order) = orders.next().await {
        let (word, arg) = order.split_once(' ').unwrap_or((&order, ""));
        match word {
            "go" => {
                let start = arg.trim().parse().unwrap_or_else(|_| mono_ns());
                wave(&ctx, first, start, &held).await;
                println!("admitted {}", ctx.tally.borrow().encode());
            }
            "close" => println!("closed {}", close_all(&held)),
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------- the parent

/// Runs the storm (see the module doc) and returns its figures: one object per wave.
pub async fn storm(t: Target, a: &Storm) -> serde_json::Value {
    let answers = Answers {
        latency: Duration::from_millis(a.hook_latency_ms),
        cache_ttl: a.cache_ttl,
    };
    let (bound, counts) = match backend::start(a.backend_listen, answers).await {
        Ok(b) => b,
        Err(e) => fail(&format!("cannot listen on {}: {e}", a.backend_listen)),
    };
    let pid = t.pid.or_else(|| observe::listener_pid(t.server));
    let t = Target { pid, ..t };
    let hooks = pid.and_then(|p| observe::thread(p, "roomcast-hooks").map(|tid| (p, tid)));
    match (pid, hooks) {
        (None, _) => eprintln!(
            "storm: no server pid (--server-pid, or a listener on {} this user can see): no server CPU figures",
            t.server
        ),
        (Some(p), None) => eprintln!("storm: server {p} has no thread named roomcast-hooks"),
        _ => {}
    }
    preflight(t, bound, &counts).await;
    let users = a.users();
    let workers = a.workers();
    let concurrency = if a.concurrency == 0 {
        a.connections
    } else {
        a.concurrency
    };
    let per_worker = concurrency.div_ceil(workers).max(1);
    println!(
        "storm: {} connections ({} users) over {workers} workers against {} (pid {}), backend on {bound} answering after {} ms{}",
        a.connections,
        users,
        t.server,
        pid.map_or("?".into(), |p| p.to_string()),
        a.hook_latency_ms,
        if a.cache_ttl > 0 {
            format!(" with cache_ttl {}", a.cache_ttl)
        } else {
            String::new()
        }
    );
    let mut ws = Workers::spawn(t, workers, |w| {
        let (first, count) = share(a.connections, w, workers);
        let [first, count, users, per, attempts] =
            [first, count, users, per_worker, a.attempts as usize].map(|n| n.to_string());
        argv(&[
            "worker-storm",
            "--first",
            &first,
            "--count",
            &count,
            "--users",
            &users,
            "--concurrency",
            &per,
            "--attempts",
            &attempts,
        ])
    });
    ws.gather("ready", None).await;
    let mut waves = Vec::new();
    for n in 1..=a.waves.max(1) {
        if n > 1 {
            let closed = close(&mut ws, t).await;
            println!("storm: closed everything in {closed:.2} s");
        }
        let w = run_wave(&mut ws, t, a, n, &counts, hooks).await;
        waves.push(w);
    }
    ws.finish("storm").await;
    let flag = |k: &str| waves.iter().any(|w| w[k].as_bool().unwrap_or(false));
    let busy = waves
        .iter()
        .filter_map(|w| w["client_busy"].as_f64())
        .fold(0.0, f64::max);
    json!({
        "waves": waves, "over_cap": flag("over_cap"), "client_bound": flag("client_bound"),
        "client_busy": busy, "backend": bound.to_string(),
    })
}

/// Ends the run with `why`.
fn fail(why: &str) -> ! {
    eprintln!("roomcast-bench storm: {why}");
    std::process::exit(1);
}

/// Before the storm: the server answers `/metrics` with hook families, and one probe
/// connection is identified through this backend (so the server's `--hook-connect`
/// points here). Ends the run otherwise.
async fn preflight(t: Target, backend: SocketAddr, counts: &backend::Counts) {
    let m = Metrics::scrape(t.server).await;
    if m.is_empty() {
        fail(&format!("{} does not answer GET /metrics", t.server));
    }
    if !m.has_hooks() {
        fail("the server's /metrics has no roomcast_hook_calls_total: not a roomcast with hooks");
    }
    counts.reset();
    let cookie = "Cookie: session=probe\r\n";
    let src = source(0, 1);
    let probe = handshake_with(t.server, src, PATH, false, cookie).await;
    let asked = counts.wave().requests;
    match probe {
        Ok(_) if asked >= 1 => {}
        Ok(_) => fail(&format!(
            "the probe connection was admitted without asking this backend: start roomcast with --hook-connect http://{backend}/connect"
        )),
        Err(e) => fail(&format!(
            "the probe connection was refused ({e}); the backend was asked {asked} times: start roomcast with --hook-connect http://{backend}/connect"
        )),
    }
    // The probe's close settles before the storm.
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// Tells the workers to close everything and waits until the server holds no other
/// connection than the one asking (at most [`CLOSE_WAIT`]). Returns the seconds it took.
async fn close(ws: &mut Workers, t: Target) -> f64 {
    let started = Instant::now();
    ws.tell(b"close\n").await;
    ws.gather("closed", None).await;
    while started.elapsed() < CLOSE_WAIT {
        let open = server_stats(t.server)
            .await
            .and_then(|s| s["connections"].as_u64());
        // The `/stats` request is a connection itself.
        if open.is_some_and(|n| n <= 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = started.elapsed().as_secs_f64();
    // Let the last closes' work (and the kernel's TIME_WAIT churn) pass before the next.
    tokio::time::sleep(Duration::from_secs(1)).await;
    took
}

/// One wave: every worker's connections from one instant, the figures around it.
async fn run_wave(
    ws: &mut Workers,
    t: Target,
    a: &Storm,
    n: usize,
    counts: &backend::Counts,
    hooks: Option<(u32, u32)>,
) -> serde_json::Value {
    let m0 = Metrics::scrape(t.server).await;
    let cpu0 = hooks.map(|(p, tid)| ThreadCpu::read(p, tid));
    counts.reset();
    let p0 = probe(t, &ws.pids);
    let server0 = t.pid.map(observe::process_ns);
    let start = mono_ns() + 50_000_000;
    let pb = bar(a.connections as u64, &format!("wave {n}"));
    ws.tell(format!("go {start}\n").as_bytes()).await;
    let mut tally = Tally::new();
    for line in ws.gather("admitted", Some(&pb)).await {
        tally.merge_encoded(&line);
    }
    pb.finish_and_clear();
    let p1 = probe(t, &ws.pids);
    let server = t.pid.zip(server0).map(|(p, c0)| ServerCpu {
        ns: observe::process_ns(p).saturating_sub(c0),
        wall_ns: mono_ns().saturating_sub(start),
    });
    // Calls the server gave up on may still be waiting out their latency here.
    let settle = Instant::now() + Duration::from_millis(2 * a.hook_latency_ms + 500);
    while counts.wave().inflight_now > 0 && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let backend = counts.wave();
    let cpu = hooks
        .zip(cpu0)
        .map(|((p, tid), c0)| c0.since(&ThreadCpu::read(p, tid)));
    let m1 = Metrics::scrape(t.server).await;
    let moves = HookMoves::between(&m0, &m1);
    figures(t, a, n, &tally, &backend, &moves, (cpu, server), (&p0, &p1))
}

/// The server process's CPU over a wave (all its threads, from their schedstat) and the
/// wave's wall time, from its start to the last admission: what the server got of its
/// CPU, whoever else ran there.
#[derive(Clone, Copy, Debug)]
struct ServerCpu {
    ns: u64,
    wall_ns: u64,
}

/// A wave's figures and its summary.
#[allow(clippy::too_many_arguments)]
fn figures(
    t: Target,
    a: &Storm,
    n: usize,
    tally: &Tally,
    backend: &backend::Wave,
    moves: &HookMoves,
    (cpu, server): (Option<ThreadCpu>, Option<ServerCpu>),
    (p0, p1): (&crate::sample::ProcSample, &crate::sample::ProcSample),
) -> serde_json::Value {
    let h = &tally.admitted_at;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1e6;
    let all_ms = h.max() as f64 / 1e6;
    let answered = moves.allowed + moves.refused + moves.unavailable;
    let per = |ns: u64, units: f64| {
        if units > 0.0 {
            ns as f64 / 1e3 / units
        } else {
            0.0
        }
    };
    let hooks_ns = cpu.map_or(0, |c| c.sched_ns);
    let per_call = per(hooks_ns, moves.calls);
    let per_connect = per(hooks_ns, answered);
    let server_ns = server.map_or(0, |c| c.ns);
    let server_wall_ns = server.map_or(0, |c| c.wall_ns);
    let server_per_admission = per(server_ns, tally.admitted as f64);
    let over_cap = backend.peak_inflight > a.hook_max_inflight
        || moves.inflight_peak > a.hook_max_inflight as f64;
    let (cpu_m, note) = cpu_fields(
        t,
        p0,
        p1,
        Some(("server_cpu_us_per_admission", tally.admitted as f64, 1000.0)),
    );
    let label = if n == 1 { "cold" } else { "again" };
    println!(
        "storm wave {n} ({label}): {}/{} admitted, all in {all_ms:.0} ms (p50 {:.0} ms, p99 {:.0} ms), {} failed, {} retries ({} refused 503, {} other refusals, {} errors){}\n  backend: {} requests ({} refused), {:.0}/s mean, {:.0}/s in its busiest second, {} in flight at most ({} connections); per 100 ms: {:?}\n  server: {} allowed, {} refused, {} unavailable ({} queue timeouts); {} calls, mean {:.1} ms; {} coalesced, {} cached; in-flight peak {} (cap {}){}\n  hooks thread: {:.1} ms CPU ({:.1} ms by its stat ticks): {per_call:.1} µs per call, {per_connect:.1} µs per connect answered; server process: {:.0} ms CPU over the wave's {:.0} ms, {server_per_admission:.1} µs per admission{note}",
        tally.admitted,
        a.connections,
        ms(0.5),
        ms(0.99),
        tally.failed,
        tally.retries,
        tally.refused_503,
        tally.refused_other,
        tally.errors,
        if tally.wrong_user > 0 {
            format!(", {} ADMITTED AS ANOTHER USER", tally.wrong_user)
        } else {
            String::new()
        },
        backend.requests,
        backend.refused,
        backend.mean_per_sec,
        backend.peak_per_sec,
        backend.peak_inflight,
        backend.peak_conns,
        backend.bins,
        moves.allowed,
        moves.refused,
        moves.unavailable,
        moves.queue_timeouts,
        moves.calls,
        moves.call_mean_ms,
        moves.coalesced,
        moves.cached,
        moves.inflight_peak,
        a.hook_max_inflight,
        if over_cap { " — OVER THE CAP" } else { "" },
        hooks_ns as f64 / 1e6,
        cpu.map_or(0, |c| c.stat_ns) as f64 / 1e6,
        server_ns as f64 / 1e6,
        server_wall_ns as f64 / 1e6,
    );
    let figures = json!({
        "wave": n, "admitted": tally.admitted, "failed": tally.failed,
        "refused_503": tally.refused_503, "refused_other": tally.refused_other,
        "errors": tally.errors, "retries": tally.retries, "wrong_user": tally.wrong_user,
        "all_admitted_ms": all_ms, "admitted_p50_ms": ms(0.5), "admitted_p99_ms": ms(0.99),
        "backend_requests": backend.requests, "backend_refused": backend.refused,
        "backend_mean_per_sec": backend.mean_per_sec, "backend_peak_per_sec": backend.peak_per_sec,
        "backend_peak_inflight": backend.peak_inflight, "backend_peak_conns": backend.peak_conns,
        "backend_conns_opened": backend.conns_opened,
        "backend_per_100ms": backend.bins,
        "server_allowed": moves.allowed, "server_refused": moves.refused,
        "server_unavailable": moves.unavailable, "server_queue_timeouts": moves.queue_timeouts,
        "server_calls": moves.calls, "server_call_mean_ms": moves.call_mean_ms,
        "server_coalesced": moves.coalesced, "server_cached": moves.cached,
        "server_inflight_peak": moves.inflight_peak,
        "hooks_cpu_ns": hooks_ns, "hooks_cpu_stat_ns": cpu.map_or(0, |c| c.stat_ns),
        "hooks_cpu_us_per_call": per_call, "hooks_cpu_us_per_connect": per_connect,
        "server_process_cpu_ns": server_ns, "server_wave_wall_ns": server_wall_ns,
        "server_process_us_per_admission": server_per_admission,
        "over_cap": over_cap,
    });
    with(figures, cpu_m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_cross_processes_intact() {
        let mut a = Tally::new();
        a.admitted = 3;
        a.refused_503 = 2;
        a.retries = 2;
        for v in [1_000_000, 2_000_000, 900_000_000] {
            a.admitted_at.record(v).unwrap();
        }
        let mut sum = Tally::new();
        sum.merge_encoded(&a.encode());
        sum.merge_encoded(&a.encode());
        assert_eq!((sum.admitted, sum.refused_503, sum.retries), (6, 4, 4));
        assert_eq!(sum.admitted_at.len(), 6);
        assert!(sum.admitted_at.max() >= 899_000_000);
        let mut empty = Tally::new();
        empty.merge_encoded(&Tally::new().encode());
        assert_eq!(empty.admitted_at.len(), 0);
    }

    #[test]
    fn backoffs_grow_and_spread() {
        let b: Vec<Duration> = (0..100).map(|i| backoff(i, 1)).collect();
        assert!(b
            .iter()
            .all(|d| (200..400).contains(&(d.as_millis() as u64))));
        assert!(b.iter().any(|d| *d != b[0]), "jittered");
        assert!(backoff(7, 3) >= Duration::from_millis(600));
    }
}
