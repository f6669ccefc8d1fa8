//! `fanout` (and `slow`, which main makes of two fan-outs): rooms of members with one
//! publisher each: how fast and how completely the server delivers every published message
//! to every member, with what latency, at what CPU per delivery; over a cluster's nodes
//! with `--also`. The members ([`Members`]) are here or in worker processes, the
//! publishers ([`publisher`]) always here.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::connect::{deflate_agreed, deflate_note, with_deflate};
use super::measure::{cpu_fields, probe, server_stats, shard_sum, with};
use super::workers::{argv, share, sums, Orders, Workers};
use super::{bar, Target};
use crate::client::{self, data_stamp, handshake, mono_ns, op_seq, source, Frames};
use crate::deflate::Inflater;
use crate::feed::Feed;
use crate::sample::{cdf_us, hist_add_encoded, hist_encode, histogram, quantiles_us, ProcSample};

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
pub(super) struct Tally {
    pub(super) delivered: Cell<u64>,
    /// Bytes the members read from their sockets (see [`Frames::received`]) after their
    /// `joined`, until stopped: over the same span as `delivered`.
    wire_bytes: Cell<u64>,
    pub(super) hist: RefCell<Option<Histogram<u64>>>,
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

impl Tally {
    /// Nothing counted yet.
    pub(super) fn new() -> Tally {
        Tally {
            delivered: Cell::new(0),
            wire_bytes: Cell::new(0),
            hist: RefCell::new(Some(histogram())),
            order: Cell::new(Order::default()),
            inflater: RefCell::new(Inflater::new()),
        }
    }
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
            tally: Rc::new(Tally::new()),
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
    // roomcast counts its sends (`/stats`); a peer without it gives none.
    let sends_before = server_stats(t.server).await;
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
    let sends_after = server_stats(t.server).await;
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
        "server_rss_bytes": after.rss_bytes,
    });
    let mut figures = with(with(with_deflate(figures, agreed), cluster), cpu);
    if sends_before.is_some() && sends_after.is_some() {
        // The window's sends: deliveries, acks, and the second /stats answer.
        let sends =
            shard_sum(&sends_after, "sends").saturating_sub(shard_sum(&sends_before, "sends"));
        figures["server_sends"] = json!(sends);
        figures["server_sends_per_delivery"] = json!(sends as f64 / delivered.max(1) as f64);
    }
    figures
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
pub(super) async fn expect_joined(s: &mut TcpStream) -> u64 {
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
pub(super) async fn member(
    mut s: TcpStream,
    tally: Rc<Tally>,
    stop: Rc<Cell<bool>>,
    order: Option<u64>,
) {
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
pub(super) async fn publisher(mut s: TcpStream, room: usize, f: Fanout, deadline: Instant) -> u64 {
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

#[cfg(test)]
mod tests {
    use super::*;

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
