//! `resume`: every member of one room loses its connection at once, as a network failure
//! would, and comes back with `{"op":"join","room":…,"since":<last seq>,"epoch":…}`.
//!
//! One publisher (a connection of its own, not a member) publishes numbered payloads at a
//! steady rate; N members join; after a warm-up the load generator cuts every member's
//! socket with an RST (SO_LINGER 0: no close frame, no FIN); each member reconnects after a
//! uniform random jitter and resumes. Once every member has resumed, the publisher stops,
//! and the run ends when every member has received the publisher's last seq (or at the
//! timeout). Each member keeps a bitmap of the seqs it received since its first `joined`,
//! so the report says exactly which seqs it never got (lost), which it got twice
//! (duplicates) and which came out of order; replayed payloads are checked against their
//! seq (one publisher: seq − payload number is constant).
//!
//! With `--workers N` the members are spread over N worker processes (hidden
//! `worker-resume`); the publisher stays in the parent, which sends the cut (`cut STAMP`,
//! a CLOCK_MONOTONIC time every process shares), polls `status`, and collects `done`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::client::{self, connect, mono_ns, source, Frames};
use crate::sample::ProcSample;
use crate::scenarios::measure::{cpu_fields, probe, with};
use crate::scenarios::workers::{argv, share, sums, Orders, Workers};
use crate::scenarios::{bar, Target};

mod ledger;

use ledger::{parse_op, Counts, Ledger, Op, Seen, Status, Summary};

/// What a resume run is asked to do (`roomcast-bench resume …`).
#[derive(clap::Args, Clone, Debug)]
pub struct Resume {
    /// Members of the room, all cut at once.
    #[arg(long, default_value_t = 1000)]
    pub members: usize,
    /// The room (1 to 128 bytes of `A-Z a-z 0-9 _ - . : @ / #`).
    #[arg(long, default_value = "resume")]
    pub room: String,
    /// Messages per second from the one publisher. The server's history must hold what a
    /// member misses while away (rate × (jitter + reconnect)) for nothing to be lost: the
    /// defaults miss at most ~20 of roomcast's default 64.
    #[arg(long, default_value_t = 20.0, value_parser = positive)]
    pub rate: f64,
    /// Bytes per published message (roughly: `data` is padded to it).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Seconds of steady publishing after every member joined, before the cut.
    #[arg(long, default_value_t = 2.0)]
    pub warmup_secs: f64,
    /// Each member reconnects a uniform random 0..=J ms after the cut.
    #[arg(long, default_value_t = 1000)]
    pub jitter_ms: u64,
    /// Bound on the run from the cut until every member has caught up.
    #[arg(long, default_value_t = 30)]
    pub timeout_secs: u64,
    /// Seed of the members' jitter (the same seed, the same reconnection order).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Load-generator processes the members are split over (the publisher stays in this
    /// one) [at least one per 15,000 members].
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
}

fn positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("{s:?} is not a positive rate")),
    }
}

impl Resume {
    /// The run's parameters for the results file (`workers` only when above one).
    pub fn params(&self) -> serde_json::Value {
        let mut p = json!({
            "members": self.members, "room": self.room, "rate": self.rate, "size": self.size,
            "warmup_secs": self.warmup_secs, "jitter_ms": self.jitter_ms,
            "timeout_secs": self.timeout_secs, "seed": self.seed,
        });
        if self.workers > 1 {
            p["workers"] = json!(self.workers);
        }
        p
    }
}

/// Members per process at most: each holds one descriptor (two while it reconnects), under
/// an RLIMIT_NOFILE of 20,000.
const MEMBERS_PER_PROCESS: usize = 15_000;

/// Initial joins in flight per process.
const JOINS_IN_FLIGHT: usize = 64;

/// Tries per (re)connection, each bounded by [`CONNECT_TIMEOUT`] for the handshake and
/// [`JOINED_TIMEOUT`] for the `joined`.
const CONNECT_ATTEMPTS: u32 = 5;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const JOINED_TIMEOUT: Duration = Duration::from_secs(5);

/// Reconnections per member (the cut, and any connection the server ends) before it
/// gives up.
const MAX_RECONNECTS: u32 = 8;

/// How long the joins may take in all before the run goes on with the members joined.
const JOIN_DEADLINE: Duration = Duration::from_secs(120);

/// How long the publisher waits for the acks of what it sent before it stopped.
const ACK_WAIT: Duration = Duration::from_secs(5);

/// How often the parent polls the members' progress.
const POLL: Duration = Duration::from_millis(20);

/// A member's jitter for member `g`: uniform in 0..=`jitter_ms` (splitmix64 of the seed
/// and the member's number).
fn jitter(seed: u64, g: usize, jitter_ms: u64) -> Duration {
    let mut z = seed ^ (g as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    Duration::from_micros(z % (jitter_ms * 1000 + 1))
}

/// A member's connection: the stream and its frame buffer.
struct Conn {
    s: TcpStream,
    frames: Frames,
}

impl Conn {
    /// Feeds every buffered frame to `ledger` and answers pings: a `joined` or a refusal
    /// among them, if any.
    fn drain(&mut self, ledger: &RefCell<Ledger>) -> Seen {
        let now = mono_ns();
        let mut seen = Seen::Other;
        let mut l = ledger.borrow_mut();
        while let Some(f) = self.frames.next() {
            let payload = self.frames.bytes(f.payload);
            match f.opcode {
                0x1 => match l.on_text(payload, now) {
                    Seen::Other => {}
                    s => seen = s,
                },
                0x8 => l.on_close_frame(payload),
                0x9 => {
                    let _ = self.s.try_write(&client::pong(payload));
                }
                _ => {}
            }
        }
        seen
    }

    /// Reads until a `joined` (or a refusal) has gone through `ledger`.
    async fn until_joined(&mut self, ledger: &RefCell<Ledger>) -> Seen {
        loop {
            match self.drain(ledger) {
                Seen::Other => {}
                s => return s,
            }
            if !self.frames.fill(&mut self.s).await {
                return Seen::Other;
            }
        }
    }
}

/// What one process's members share.
struct Ctx {
    t: Target,
    room: String,
    jitter_ms: u64,
    seed: u64,
    joins: tokio::sync::Semaphore,
}

/// Why a member could not (re)join.
enum Failure {
    /// The server answered the join with an error: trying again would not help.
    Refused,
    Unreachable,
}

/// Connects member `g` and joins (or resumes, once it has joined before), retrying a
/// failed handshake or a missing `joined` a few times.
async fn open(ctx: &Ctx, g: usize, ledger: &RefCell<Ledger>) -> Result<Conn, Failure> {
    for attempt in 0..CONNECT_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
        }
        let src = source(g, ctx.t.sources);
        let Ok(Ok(mut s)) =
            tokio::time::timeout(CONNECT_TIMEOUT, connect(ctx.t.server, src, "/ws")).await
        else {
            ledger.borrow_mut().connect_failed();
            continue;
        };
        ledger.borrow_mut().connected(mono_ns());
        let join = ledger.borrow().join_op(&ctx.room);
        if s.write_all(&client::text(join.as_bytes())).await.is_err() {
            continue;
        }
        let mut conn = Conn {
            s,
            frames: Frames::new(16 * 1024),
        };
        match tokio::time::timeout(JOINED_TIMEOUT, conn.until_joined(ledger)).await {
            Ok(Seen::Joined) => return Ok(conn),
            Ok(Seen::Refused) => return Err(Failure::Refused),
            Ok(Seen::Other) => {}
            Err(_) => ledger
                .borrow_mut()
                .joined_timed_out(JOINED_TIMEOUT.as_secs()),
        }
    }
    Err(Failure::Unreachable)
}

/// How a member's connection ended.
enum Ended {
    /// The load generator cut it, at this CLOCK_MONOTONIC stamp.
    Cut(u64),
    Closed,
}

/// Reads `conn` until it closes or, while `armed`, the cut comes.
async fn read(
    conn: &mut Conn,
    ledger: &RefCell<Ledger>,
    cut: &mut watch::Receiver<Option<u64>>,
    mut armed: bool,
) -> Ended {
    loop {
        conn.drain(ledger);
        tokio::select! {
            changed = cut.changed(), if armed => {
                if changed.is_err() {
                    armed = false;
                } else if let Some(stamp) = *cut.borrow_and_update() {
                    return Ended::Cut(stamp);
                }
            }
            // Cancel-safe: a read that loses the race to the cut takes nothing.
            more = conn.frames.fill(&mut conn.s) => if !more {
                return Ended::Closed;
            }
        }
    }
}

/// Member `g`: joins, reads, and after the cut (or any close) reconnects and resumes.
/// Ends when it gives up; otherwise runs until its task is aborted.
async fn member(
    ctx: Rc<Ctx>,
    g: usize,
    ledger: Rc<RefCell<Ledger>>,
    mut cut: watch::Receiver<Option<u64>>,
) {
    let first = {
        let _permit = ctx.joins.acquire().await;
        open(&ctx, g, &ledger).await
    };
    let Ok(mut conn) = first else {
        ledger.borrow_mut().give_up();
        return;
    };
    let mut reconnects = 0;
    loop {
        let armed = !ledger.borrow().cut_yet();
        match read(&mut conn, &ledger, &mut cut, armed).await {
            Ended::Cut(stamp) => {
                // RST, as a network failure leaves the server: no close frame, no FIN.
                let _ = conn.s.set_zero_linger();
                drop(conn);
                ledger.borrow_mut().cut(stamp, mono_ns());
                tokio::time::sleep(jitter(ctx.seed, g, ctx.jitter_ms)).await;
            }
            Ended::Closed => {
                drop(conn);
                ledger.borrow_mut().closed();
            }
        }
        if reconnects == MAX_RECONNECTS {
            break;
        }
        reconnects += 1;
        ledger.borrow_mut().reconnecting(mono_ns());
        match open(&ctx, g, &ledger).await {
            Ok(c) => conn = c,
            Err(_) => break,
        }
    }
    ledger.borrow_mut().give_up();
}

// ---------------------------------------------------------------------------- one process's members

/// One process's members: their tasks, their ledgers, and the cut.
struct Crowd {
    ledgers: Vec<Rc<RefCell<Ledger>>>,
    cut: watch::Sender<Option<u64>>,
    tasks: tokio::task::JoinSet<()>,
}

impl Crowd {
    /// Starts members `first..first+count`, each joining on its own (at most
    /// [`JOINS_IN_FLIGHT`] at a time); member g connects from source g.
    fn start(
        t: Target,
        room: &str,
        jitter_ms: u64,
        seed: u64,
        first: usize,
        count: usize,
    ) -> Crowd {
        let ctx = Rc::new(Ctx {
            t,
            room: room.to_owned(),
            jitter_ms,
            seed,
            joins: tokio::sync::Semaphore::new(JOINS_IN_FLIGHT),
        });
        let (cut, _) = watch::channel(None);
        let mut tasks = tokio::task::JoinSet::new();
        let mut ledgers = Vec::with_capacity(count);
        for g in first..first + count {
            let ledger = Rc::new(RefCell::new(Ledger::default()));
            ledgers.push(ledger.clone());
            tasks.spawn_local(member(ctx.clone(), g, ledger, cut.subscribe()));
        }
        Crowd {
            ledgers,
            cut,
            tasks,
        }
    }

    /// Waits until every member has joined or given up (or [`JOIN_DEADLINE`]), calling
    /// `progress(k)` as k more settle.
    async fn settle(&self, mut progress: impl FnMut(usize)) -> Status {
        let deadline = Instant::now() + JOIN_DEADLINE;
        let mut reported = 0;
        loop {
            let s = self.status();
            // Joined and still there, or given up.
            let settled = s.live + s.failed;
            if settled > reported {
                progress(settled - reported);
                reported = settled;
            }
            if settled >= self.ledgers.len() || Instant::now() >= deadline {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn status(&self) -> Status {
        let mut s = Status::new();
        for l in &self.ledgers {
            s.add(&l.borrow());
        }
        s
    }

    /// Cuts every member's connection (their tasks do, on their next wake-up).
    fn cut(&self, stamp: u64) {
        self.cut.send_replace(Some(stamp));
    }

    /// What every member saw, owed every seq up to `last_seq`.
    fn report(&self, last_seq: u64) -> Summary {
        let mut sum = Summary::new();
        for l in &self.ledgers {
            sum.add(&l.borrow(), last_seq);
        }
        sum
    }

    fn stop(mut self) {
        self.tasks.abort_all();
    }
}

/// One resume worker (see the module doc): starts its members (`progress K` on the way,
/// `ready JOINED FAILED` once settled), then obeys `cut STAMP`, `status` (answered
/// `status JOINED FAILED LIVE RESUMED MIN_LAST`) and `report LAST_SEQ` (answered
/// `done …`, see [`Summary::encode`]); ends when stdin closes.
pub async fn resume_worker(
    t: Target,
    first: usize,
    count: usize,
    room: &str,
    jitter_ms: u64,
    seed: u64,
) {
    let mut orders = Orders::new();
    let crowd = Crowd::start(t, room, jitter_ms, seed, first, count);
    let s = crowd.settle(|k| println!("progress {k}")).await;
    println!("ready {} {}", s.joined, s.failed);
    while let Some(order) = orders.next().await {
        let (word, arg) = order.split_once(' ').unwrap_or((&order, ""));
        match word {
            "cut" => crowd.cut(arg.trim().parse().unwrap_or_else(|_| mono_ns())),
            "status" => println!("status {}", crowd.status().encode()),
            "report" => {
                let last = arg.trim().parse().unwrap_or(0);
                println!("done {}", crowd.report(last).encode());
            }
            _ => {}
        }
    }
    crowd.stop();
}

/// Where the members are: here, or in worker processes.
enum Side {
    Here(Crowd),
    Workers(Workers),
}

impl Side {
    fn pids(&self) -> Vec<u32> {
        match self {
            Side::Here(_) => Vec::new(),
            Side::Workers(ws) => ws.pids.clone(),
        }
    }

    async fn settle(&mut self, pb: &ProgressBar) -> Status {
        match self {
            Side::Here(c) => c.settle(|k| pb.inc(k as u64)).await,
            Side::Workers(ws) => {
                let [joined, failed] = sums(&ws.gather("ready", Some(pb)).await);
                Status {
                    joined,
                    failed,
                    ..Status::default()
                }
            }
        }
    }

    async fn status(&mut self) -> Status {
        match self {
            Side::Here(c) => c.status(),
            Side::Workers(ws) => {
                ws.tell(b"status\n").await;
                let init = Status::new();
                let lines = ws.gather("status", None).await;
                lines.iter().fold(init, |s, l| s.merge(l))
            }
        }
    }

    async fn cut(&mut self, stamp: u64) {
        match self {
            Side::Here(c) => c.cut(stamp),
            Side::Workers(ws) => ws.tell(format!("cut {stamp}\n").as_bytes()).await,
        }
    }

    async fn report(self, last_seq: u64) -> Summary {
        match self {
            Side::Here(c) => {
                let s = c.report(last_seq);
                c.stop();
                s
            }
            Side::Workers(mut ws) => {
                ws.tell(format!("report {last_seq}\n").as_bytes()).await;
                let mut sum = Summary::new();
                for line in ws.gather("done", None).await {
                    sum.merge_encoded(&line);
                }
                ws.finish("resume").await;
                sum
            }
        }
    }
}

// ---------------------------------------------------------------------------- the publisher

/// What the publisher did.
#[derive(Debug, Default)]
struct Published {
    count: u64,
    acked: u64,
    /// The latest ack's seq: the room's last seq once every ack is in.
    seq: u64,
    /// Acks with a lower seq than the one before: the room's sequence restarted.
    seq_restarts: u64,
    errors: u64,
    error: Option<String>,
}

/// Publishes `{"op":"pub","room":…,"data":[K,"pad"],"id":K}`, K = 1, 2, …, `rate` times a
/// second until `stop`, then waits (at most [`ACK_WAIT`]) for the acks still owed.
async fn publish(mut s: TcpStream, r: Resume, stop: Rc<Cell<bool>>) -> Published {
    let room = serde_json::to_string(&r.room).expect("a string serializes");
    let pad = "x".repeat(r.size.saturating_sub(48));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / r.rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut frames = Frames::new(64 * 1024);
    let mut p = Published::default();
    let take = |frames: &mut Frames, s: &TcpStream, p: &mut Published| {
        while let Some(f) = frames.next() {
            let payload = frames.bytes(f.payload);
            match (f.opcode, parse_op(payload)) {
                (0x1, Op::Ack { seq }) => {
                    p.acked += 1;
                    p.seq_restarts += u64::from(seq < p.seq);
                    p.seq = seq;
                }
                (0x1, Op::Error(e)) => {
                    p.errors += 1;
                    p.error.get_or_insert(e);
                }
                (0x9, _) => {
                    let _ = s.try_write(&client::pong(payload));
                }
                _ => {}
            }
        }
    };
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if stop.get() {
                    break;
                }
                let k = p.count + 1;
                let op = format!(r#"{{"op":"pub","room":{room},"data":[{k},"{pad}"],"id":{k}}}"#);
                if s.write_all(&client::text(op.as_bytes())).await.is_err() {
                    p.error.get_or_insert_with(|| "the publisher's connection failed".into());
                    return p;
                }
                p.count = k;
            }
            more = frames.fill(&mut s) => {
                if !more {
                    p.error.get_or_insert_with(|| "the server closed the publisher".into());
                    return p;
                }
                take(&mut frames, &s, &mut p);
            }
        }
    }
    let until = tokio::time::Instant::now() + ACK_WAIT;
    while p.acked < p.count {
        match tokio::time::timeout_at(until, frames.fill(&mut s)).await {
            Ok(true) => take(&mut frames, &s, &mut p),
            _ => break,
        }
    }
    p
}

// ---------------------------------------------------------------------------- the run

/// The scenario (see the module doc): figures for the results file.
pub async fn resume(t: Target, r: &Resume) -> serde_json::Value {
    let workers = t
        .workers
        .max(r.members.div_ceil(MEMBERS_PER_PROCESS))
        .max(1);
    let publisher = connect(t.server, source(r.members, t.sources), "/ws")
        .await
        .expect("the publisher connects");
    let stop = Rc::new(Cell::new(false));
    let publishing = tokio::task::spawn_local(publish(publisher, r.clone(), stop.clone()));
    let pb = bar(r.members as u64, "join");
    let mut side = if workers <= 1 {
        Side::Here(Crowd::start(t, &r.room, r.jitter_ms, r.seed, 0, r.members))
    } else {
        let (jitter, seed) = (r.jitter_ms.to_string(), r.seed.to_string());
        Side::Workers(Workers::spawn(t, workers, |w| {
            let (first, count) = share(r.members, w, workers);
            let (first, count) = (first.to_string(), count.to_string());
            let mut args = argv(&["worker-resume", "--first", &first, "--count", &count]);
            args.extend(argv(&[
                "--room",
                &r.room,
                "--jitter-ms",
                &jitter,
                "--seed",
                &seed,
            ]));
            args
        }))
    };
    let joined = side.settle(&pb).await;
    pb.finish_and_clear();
    tokio::time::sleep(Duration::from_secs_f64(r.warmup_secs.max(0.0))).await;

    let pids = side.pids();
    let before = probe(t, &pids);
    let cut = mono_ns();
    let cut_at = Instant::now();
    side.cut(cut).await;
    let deadline = cut_at + Duration::from_secs(r.timeout_secs);
    // Every live member back and caught up with its resume's `joined`, while the
    // publisher goes on.
    loop {
        let s = side.status().await;
        if s.resumed >= s.live || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    stop.set(true);
    let published = publishing.await.unwrap_or_default();
    // Then every member has everything up to the publisher's last seq.
    let caught_up = loop {
        let s = side.status().await;
        if s.live == 0 || Instant::now() >= deadline {
            break None;
        }
        if s.min_last >= published.seq {
            break Some(cut_at.elapsed());
        }
        tokio::time::sleep(POLL).await;
    };
    let after = probe(t, &pids);
    let sum = side.report(published.seq).await;
    let run = Outcome {
        workers,
        joined,
        published,
        caught_up,
        before,
        after,
        sum,
    };
    figures(t, r, &run)
}

/// What a run measured, for [`figures`].
struct Outcome {
    workers: usize,
    /// The members' standing once the joins settled.
    joined: Status,
    published: Published,
    /// From the cut until every member had the publisher's last seq, if they all did.
    caught_up: Option<Duration>,
    /// The processes at the cut and at the end.
    before: ProcSample,
    after: ProcSample,
    sum: Summary,
}

/// The summary line and the figures of a run.
fn figures(t: Target, r: &Resume, run: &Outcome) -> serde_json::Value {
    let Outcome {
        workers,
        joined,
        published,
        caught_up,
        before,
        after,
        sum,
    } = run;
    let (workers, caught_up) = (*workers, *caught_up);
    let c = &sum.c;
    let resumed = c.joined.saturating_sub(c.not_resumed);
    let (cpu, note) = cpu_fields(
        t,
        before,
        after,
        Some(("server_cpu_total_us_per_resume", resumed as f64, 1000.0)),
    );
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1e6;
    let (r50, r99, rmax) = (
        ms(&sum.resume, 0.5),
        ms(&sum.resume, 0.99),
        sum.resume.max() as f64 / 1e6,
    );
    let (c50, c99, cmax) = (
        ms(&sum.catchup, 0.5),
        ms(&sum.catchup, 0.99),
        sum.catchup.max() as f64 / 1e6,
    );
    let first_ms = if sum.reconnect_first_ns == u64::MAX {
        f64::NAN
    } else {
        sum.reconnect_first_ns as f64 / 1e6
    };
    let last_ms = sum.reconnect_last_ns as f64 / 1e6;
    let cut_ms = sum.cut_spread_ns as f64 / 1e6;
    let spread = if first_ms.is_nan() {
        "no member reconnected".to_owned()
    } else {
        format!("sockets reset within {cut_ms:.1} ms of the cut, reconnected {first_ms:.0}..{last_ms:.0} ms after it")
    };
    let over = if workers > 1 {
        format!(" over {workers} workers")
    } else {
        String::new()
    };
    let caught = match caught_up {
        Some(d) => format!(
            "all caught up to seq {} {:.2} s after the cut",
            published.seq,
            d.as_secs_f64()
        ),
        None => format!(
            "NOT all caught up to seq {} within {} s",
            published.seq, r.timeout_secs
        ),
    };
    println!(
        "resume: {} of {} members{over} in {:?} at {} msg/s, cut after {} s, jitter 0..{} ms: lost {}, duplicates {}, recovered:false {} members, gap notices {}; {spread}; resumed p50 {r50:.1} ms p99 {r99:.1} ms max {rmax:.1} ms (catch-up from reconnecting: p50 {c50:.2} ms p99 {c99:.2} ms max {cmax:.2} ms); {} replayed; {caught}{note}",
        c.joined, r.members, r.room, r.rate, r.warmup_secs, r.jitter_ms, c.lost, c.duplicates,
        c.members_not_recovered, c.gap_notices, c.replayed,
    );
    let odd: Vec<String> = Counts::NAMES
        .iter()
        .zip(c.values())
        .filter(|(name, v)| {
            *v > 0
                && matches!(
                    **name,
                    "join_failed"
                        | "reconnect_failed"
                        | "connect_failures"
                        | "joined_timeouts"
                        | "not_resumed"
                        | "stale"
                        | "reordered"
                        | "mismatched"
                        | "out_of_range"
                        | "recovered_field_missing"
                        | "epoch_missing"
                        | "epoch_changed"
                        | "seq_restarted"
                        | "unexpected_closes"
                        | "close_frames"
                        | "errors"
                )
        })
        .map(|(name, v)| format!("{name} {v}"))
        .collect();
    if !odd.is_empty() || sum.error.is_some() || published.error.is_some() {
        println!(
            "resume: also {}{}{}",
            odd.join(", "),
            sum.error
                .as_deref()
                .map(|e| format!("; first from the server: {e}"))
                .unwrap_or_default(),
            published
                .error
                .as_deref()
                .map(|e| format!("; publisher: {e}"))
                .unwrap_or_default(),
        );
    }
    let mut f = json!({
        "published": published.count, "acked": published.acked, "last_seq": published.seq,
        "publisher_errors": published.errors, "publisher_seq_restarts": published.seq_restarts,
        "members_joined_at_start": joined.joined, "workers": workers,
        "cut_spread_ms": cut_ms, "reconnect_first_ms": first_ms, "reconnect_last_ms": last_ms,
        "resume_p50_ms": r50, "resume_p99_ms": r99, "resume_max_ms": rmax,
        "catchup_p50_ms": c50, "catchup_p99_ms": c99, "catchup_max_ms": cmax,
        "caught_up": caught_up.is_some(),
        "caught_up_ms": caught_up.map(|d| d.as_secs_f64() * 1e3),
        "first_server_error": sum.error, "publisher_error": published.error,
    });
    for (name, v) in Counts::NAMES.iter().zip(c.values()) {
        f[*name] = json!(v);
    }
    with(f, cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_is_spread_over_its_range() {
        let js: Vec<Duration> = (0..1000).map(|g| jitter(1, g, 1000)).collect();
        assert!(js.iter().all(|j| *j <= Duration::from_millis(1000)));
        let below_half = js
            .iter()
            .filter(|j| **j < Duration::from_millis(500))
            .count();
        assert!((400..600).contains(&below_half), "{below_half}");
        assert_eq!(jitter(1, 7, 0), Duration::ZERO);
        assert_eq!(jitter(1, 7, 1000), jitter(1, 7, 1000));
    }
}
