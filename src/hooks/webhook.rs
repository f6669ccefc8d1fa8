//! Webhooks: what happened ([`Happening`]), batched into signed POSTs to `--webhook`.
//!
//! - **Bounded.** Events wait in a queue of at most [`Settings::queue`]; past it a new
//!   event is dropped and counted (`webhook_dropped`). Nothing here ever blocks a shard:
//!   the shards only hand [`Happening`]s over the mesh.
//! - **Batched.** A POST carries up to [`Settings::batch`] events, or what accumulated
//!   within [`BATCH_WAIT`] of the oldest one waiting.
//! - **Signed.** With `--webhook-secret`, `X-Roomcast-Signature: t=<unix secs>,v1=<hex
//!   HMAC-SHA256(secret, "<t>.<body>")>`, made afresh for every attempt (a receiver that
//!   refuses replays and stale `t` still takes a retry).
//! - **At least once, in order.** One batch in flight at a time; a batch that fails (a
//!   status other than 2xx, no answer within [`POST_TIMEOUT`], no connection) is sent
//!   again, the same events with the same ids, after a backoff of [`BACKOFF_MIN`] doubling
//!   to [`BACKOFF_MAX`]. A receiver de-duplicates by `id`.
//!
//! Event ids are `<node>-<start>-<n>`: this node's id, the Unix milliseconds this thread
//! started (base 36, so a node restarted with the same `--node-id` never repeats an id)
//! and a counter.
//!
//! `room_occupied` / `room_vacated` are made by [`Occupancy`] from the shards' node-local
//! [`What::RoomHere`] (cluster-wide through Redis when there is a backplane).

use std::collections::VecDeque;
use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::cell::Cell;
use std::rc::Rc;

use tokio::sync::Notify;

use super::occupancy::{Change, Occupancy};
use super::{Happening, Status, What};

/// How long the oldest waiting event waits for others to share its POST.
pub const BATCH_WAIT: Duration = Duration::from_millis(50);
/// A batch's body at most (one event may be larger alone): receivers behind a proxy often
/// refuse bodies past 1 MB (nginx's default).
pub const BATCH_BYTES: usize = 256 * 1024;
/// How much of a receiver's answer is read (the rest is not waited for).
const ANSWER_BYTES: usize = 64 * 1024;
/// One POST's deadline: connect, send, and the receiver's whole answer.
pub const POST_TIMEOUT: Duration = Duration::from_secs(5);
/// The first wait before a failed batch is sent again; it doubles up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// `--webhook` and its options.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    pub url: String,
    /// `--webhook-secret`: the HMAC key of `X-Roomcast-Signature`.
    pub secret: Option<String>,
    /// `--webhook-events`: the event kinds sent (empty: all).
    pub events: Vec<String>,
    /// `--webhook-batch`: events per POST at most.
    pub batch: usize,
    /// Events waiting at most (past it, new ones are dropped and counted).
    pub queue: usize,
    /// This node's id (event ids, occupancy in Redis).
    pub node: String,
    /// The first `--redis` URL, when there is a backplane: occupancy is kept there.
    pub redis: Option<String>,
}

/// The event kinds, as the receiver sees them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EventKind {
    RoomOccupied,
    RoomVacated,
    MemberJoined,
    MemberLeft,
    ClientPublish,
    ConnectionClosed,
}

impl EventKind {
    const ALL: [EventKind; 6] = [
        EventKind::RoomOccupied,
        EventKind::RoomVacated,
        EventKind::MemberJoined,
        EventKind::MemberLeft,
        EventKind::ClientPublish,
        EventKind::ConnectionClosed,
    ];

    fn name(self) -> &'static str {
        match self {
            EventKind::RoomOccupied => "room_occupied",
            EventKind::RoomVacated => "room_vacated",
            EventKind::MemberJoined => "member_joined",
            EventKind::MemberLeft => "member_left",
            EventKind::ClientPublish => "client_publish",
            EventKind::ConnectionClosed => "connection_closed",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// An event waiting to be sent: when it was queued and its JSON object.
type Queued = (Instant, String);

/// The batch being POSTed, kept until the receiver took it.
struct InFlight {
    /// The batch's events, kept to split it if the receiver finds it too large.
    events: Vec<String>,
    body: Arc<[u8]>,
    /// Set by the POST's task: the receiver's HTTP status, 0 for no answer.
    result: Rc<Cell<Option<u16>>>,
    attempts: u32,
    /// When it is to be sent again after a failure (none: on its way now).
    retry_at: Option<Instant>,
}

/// The webhooks' state on the hooks thread.
pub struct Webhooks {
    cfg: Settings,
    client: reqwest::Client,
    /// Woken by the webhooks' own tasks when they finish.
    wake: Arc<Notify>,
    status: Arc<Status>,
    /// The kinds wanted, one bit each.
    wanted: u8,
    queue: VecDeque<Queued>,
    inflight: Option<InFlight>,
    backoff: Duration,
    /// `<node>-<start>-`: the prefix of this thread's event ids.
    id_prefix: String,
    next_id: u64,
    occupancy: Occupancy,
    changes: Vec<Change>,
}

impl Webhooks {
    pub fn new(
        cfg: Settings,
        client: reqwest::Client,
        wake: Arc<Notify>,
        status: Arc<Status>,
    ) -> Webhooks {
        let wanted = EventKind::ALL
            .iter()
            .filter(|k| cfg.events.is_empty() || cfg.events.iter().any(|e| e == k.name()))
            .fold(0, |bits, k| bits | k.bit());
        let start = super::unix_ms();
        let id_prefix = format!("{}-{}-", cfg.node, base36(start));
        let occupancy = Occupancy::new(cfg.node.clone(), cfg.redis.clone(), wake.clone());
        Webhooks {
            cfg,
            client,
            wake,
            status,
            wanted,
            queue: VecDeque::new(),
            inflight: None,
            backoff: BACKOFF_MIN,
            id_prefix,
            next_id: 0,
            occupancy,
            changes: Vec::new(),
        }
    }

    /// Something happened on this node.
    pub fn happened(&mut self, h: Happening) {
        let now = Instant::now();
        match h.what {
            What::RoomHere { room, occupied } => {
                if self.wants(EventKind::RoomOccupied) || self.wants(EventKind::RoomVacated) {
                    self.occupancy.here(room, occupied, h.at_ms, now);
                    // Without Redis the change is known now: queued before what follows
                    // it (the member's `member_joined`).
                    self.occupancy_changes(now);
                }
            }
            what => self.push(h.at_ms, &what, now),
        }
    }

    /// Sends what is due; returns when it wants to be called again (besides when its tasks
    /// notify the loop).
    pub fn poll(&mut self, now: Instant) -> Option<Instant> {
        let occupancy_next = self.occupancy_changes(now);
        let send_next = self.send(now);
        self.status
            .webhook_backlog
            .store(self.backlog() as u64, Relaxed);
        match (occupancy_next, send_next) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Queues the occupancy changes that are known; returns when a grace ends next.
    fn occupancy_changes(&mut self, now: Instant) -> Option<Instant> {
        let mut changes = std::mem::take(&mut self.changes);
        let next = self.occupancy.poll(now, &mut changes);
        for c in changes.drain(..) {
            let what = Occupied {
                room: c.room,
                occupied: c.occupied,
            };
            self.push_occupancy(c.at_ms, what, now);
        }
        self.changes = changes;
        next
    }

    fn backlog(&self) -> usize {
        self.queue.len() + self.inflight.as_ref().map_or(0, |f| f.events.len())
    }

    fn wants(&self, kind: EventKind) -> bool {
        self.wanted & kind.bit() != 0
    }

    /// Queues one event (rendered now: the queue holds text, not the shards' types).
    fn push(&mut self, at_ms: u64, what: &What, now: Instant) {
        let kind = match what {
            What::RoomHere { .. } => return,
            What::MemberJoined { .. } => EventKind::MemberJoined,
            What::MemberLeft { .. } => EventKind::MemberLeft,
            What::ClientPublish { .. } => EventKind::ClientPublish,
            What::ConnectionClosed { .. } => EventKind::ConnectionClosed,
        };
        if !self.wants(kind) || !self.room_for_one() {
            return;
        }
        let mut out = self.open(kind);
        match what {
            What::RoomHere { .. } => {}
            What::MemberJoined { room, user } | What::MemberLeft { room, user } => {
                field(&mut out, "room", room);
                user_field(&mut out, user);
            }
            What::ClientPublish {
                room,
                epoch,
                seq,
                data,
                user,
            } => {
                field(&mut out, "room", room);
                let _ = write!(out, ",\"seq\":{seq}");
                let epoch = format_epoch(*epoch);
                field(&mut out, "epoch", std::str::from_utf8(&epoch).unwrap_or(""));
                // Spliced as the client sent it: the shards checked it is JSON.
                out.push_str(",\"data\":");
                out.push_str(data);
                user_field(&mut out, user);
            }
            What::ConnectionClosed { code, reason, user } => {
                let _ = write!(out, ",\"code\":{code}");
                field(&mut out, "reason", reason);
                user_field(&mut out, user);
            }
        }
        self.close(out, at_ms, now);
    }

    fn push_occupancy(&mut self, at_ms: u64, o: Occupied, now: Instant) {
        let kind = if o.occupied {
            EventKind::RoomOccupied
        } else {
            EventKind::RoomVacated
        };
        if !self.wants(kind) || !self.room_for_one() {
            return;
        }
        let mut out = self.open(kind);
        field(&mut out, "room", &o.room);
        self.close(out, at_ms, now);
    }

    /// Whether the queue takes one more event; if not, the event is counted as dropped.
    fn room_for_one(&self) -> bool {
        if self.queue.len() < self.cfg.queue.max(1) {
            return true;
        }
        if self.status.webhook_dropped.fetch_add(1, Relaxed) == 0 {
            tracing::warn!(
                queue = self.cfg.queue,
                "webhooks: the queue is full (receiver away?): events are dropped and counted"
            );
        }
        false
    }

    /// `{"id":"…","kind":"…"`: the start of an event.
    fn open(&mut self, kind: EventKind) -> String {
        let mut out = String::with_capacity(128);
        out.push_str("{\"id\":");
        let id = format!("{}{}", self.id_prefix, self.next_id);
        self.next_id += 1;
        push_str(&mut out, &id);
        let _ = write!(out, ",\"kind\":\"{}\"", kind.name());
        out
    }

    /// `,"time":…}`, and into the queue.
    fn close(&mut self, mut out: String, at_ms: u64, now: Instant) {
        let _ = write!(out, ",\"time\":{at_ms}}}");
        self.queue.push_back((now, out));
        self.status.webhook_queued.fetch_add(1, Relaxed);
    }

    /// Takes the in-flight batch's result, starts the next attempt or batch when due;
    /// returns when it is next due.
    fn send(&mut self, now: Instant) -> Option<Instant> {
        if let Some(f) = &mut self.inflight {
            match f.result.take() {
                Some(200..=299) => {
                    self.status
                        .webhook_sent
                        .fetch_add(f.events.len() as u64, Relaxed);
                    if f.attempts > 1 {
                        tracing::info!(
                            attempts = f.attempts,
                            "webhooks: the receiver took a batch again"
                        );
                    }
                    self.inflight = None;
                    self.backoff = BACKOFF_MIN;
                }
                Some(413) => {
                    // Too large for the receiver: half now, the rest back at the front;
                    // one event alone too large can never be taken, and is dropped.
                    self.status.webhook_failures.fetch_add(1, Relaxed);
                    let f = self.inflight.take().expect("in flight");
                    let mut events = f.events;
                    if events.len() == 1 {
                        tracing::warn!(
                            "webhooks: the receiver refuses an event as too large (413): dropped"
                        );
                        self.status.webhook_dropped.fetch_add(1, Relaxed);
                    } else {
                        let rest = events.split_off(events.len() / 2);
                        for e in rest.into_iter().rev() {
                            self.queue.push_front((now, e));
                        }
                        self.start(events);
                    }
                }
                Some(_) => {
                    self.status.webhook_failures.fetch_add(1, Relaxed);
                    f.retry_at = Some(now + self.backoff);
                    self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                }
                None => {}
            }
        }
        if let Some(f) = &mut self.inflight {
            return match f.retry_at {
                Some(at) if at <= now => {
                    f.retry_at = None;
                    f.attempts += 1;
                    self.status
                        .webhook_retried
                        .fetch_add(f.events.len() as u64, Relaxed);
                    let (body, result) = (f.body.clone(), f.result.clone());
                    self.post(body, result);
                    None
                }
                // Waiting for its backoff, or on its way (its task wakes the loop).
                at => at,
            };
        }
        let (oldest, _) = self.queue.front()?;
        let batch = self.cfg.batch.max(1);
        let due = *oldest + BATCH_WAIT;
        if self.queue.len() < batch && due > now {
            return Some(due);
        }
        // Up to `batch` events and BATCH_BYTES of body (at least one event).
        let mut n = 0;
        let mut bytes = 16;
        for (_, e) in self.queue.iter().take(batch) {
            if n > 0 && bytes + e.len() + 1 > BATCH_BYTES {
                break;
            }
            bytes += e.len() + 1;
            n += 1;
        }
        let events: Vec<String> = self.queue.drain(..n).map(|(_, e)| e).collect();
        self.start(events);
        None
    }

    /// Makes `events` the batch in flight and POSTs it.
    fn start(&mut self, events: Vec<String>) {
        let mut body =
            String::with_capacity(16 + events.iter().map(|e| e.len() + 1).sum::<usize>());
        body.push_str("{\"events\":[");
        for (i, e) in events.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(e);
        }
        body.push_str("]}");
        let body: Arc<[u8]> = Arc::from(body.into_bytes());
        let result = Rc::new(Cell::new(None));
        self.inflight = Some(InFlight {
            events,
            body: body.clone(),
            result: result.clone(),
            attempts: 1,
            retry_at: None,
        });
        self.post(body, result);
    }

    /// POSTs `body` on a task of its own; `result` says how it went, and the loop is woken.
    fn post(&self, body: Arc<[u8]>, result: Rc<Cell<Option<u16>>>) {
        let mut req = self
            .client
            .post(&self.cfg.url)
            .timeout(POST_TIMEOUT)
            .header("content-type", "application/json");
        if let Some(secret) = &self.cfg.secret {
            let t = super::unix_ms() / 1000;
            req = req.header("x-roomcast-signature", signature(secret, t, &body));
        }
        let req = req.body(body.to_vec());
        let wake = self.wake.clone();
        tokio::task::spawn_local(async move {
            let status = match req.send().await {
                Ok(mut response) => {
                    let status = response.status();
                    // Read to the end (bounded by the timeout and ANSWER_BYTES) so the
                    // connection is reused; an answer cut short counts as none.
                    let mut read = 0;
                    let whole = loop {
                        match response.chunk().await {
                            Ok(Some(c)) if read + c.len() <= ANSWER_BYTES => read += c.len(),
                            Ok(None) => break true,
                            _ => break false,
                        }
                    };
                    if !status.is_success() {
                        tracing::debug!(%status, "webhooks: the receiver refused a batch");
                    }
                    if whole || !status.is_success() {
                        status.as_u16()
                    } else {
                        0
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "webhooks: a batch was not delivered");
                    0
                }
            };
            result.set(Some(status));
            wake.notify_one();
        });
    }
}

/// A room occupancy change, as queued.
struct Occupied {
    room: Arc<str>,
    occupied: bool,
}

/// `X-Roomcast-Signature`'s value: `t=<t>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn signature(secret: &str, t: u64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(t.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    let mut out = format!("t={t},v1=");
    for b in tag.as_ref() {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// An epoch as clients see it: 6 characters of `0-9a-v`, 5 bits each (30 bits), most
/// significant first. The same as `app::wire::format_epoch`, which hooks may not import
/// (tests/layering.rs): the test below holds it to the format the README describes.
fn format_epoch(epoch: u32) -> [u8; 6] {
    const DIGITS: &[u8; 32] = b"0123456789abcdefghijklmnopqrstuv";
    let mut out = [0u8; 6];
    for (i, c) in out.iter_mut().enumerate() {
        *c = DIGITS[((epoch >> (25 - 5 * i)) & 31) as usize];
    }
    out
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// `s` as a JSON string.
fn push_str(out: &mut String, s: &str) {
    match serde_json::to_string(s) {
        Ok(quoted) => out.push_str(&quoted),
        Err(_) => out.push_str("\"\""),
    }
}

/// `,"name":"value"`.
fn field(out: &mut String, name: &str, value: &str) {
    let _ = write!(out, ",\"{name}\":");
    push_str(out, value);
}

/// `,"user":"u"`, or `,"user":null` when the connection had none.
fn user_field(out: &mut String, user: &Option<Arc<str>>) {
    match user {
        Some(u) => field(out, "user", u),
        None => out.push_str(",\"user\":null"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_is_six_chars_of_0_to_v_holding_30_bits() {
        for epoch in [0u32, 1, 31, 32, 12345678, (1 << 30) - 1, u32::MAX] {
            let text = format_epoch(epoch);
            assert!(text
                .iter()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'v').contains(c)));
            let back = text.iter().fold(0u32, |v, &c| {
                let d = if c.is_ascii_digit() {
                    c - b'0'
                } else {
                    c - b'a' + 10
                };
                v << 5 | u32::from(d)
            });
            assert_eq!(back, epoch & ((1 << 30) - 1), "{epoch}");
        }
        assert_eq!(&format_epoch(0), b"000000");
        assert_eq!(&format_epoch(33), b"000011");
        assert_eq!(&format_epoch((1 << 30) - 1), b"vvvvvv");
    }

    /// The value a receiver computes with Python's `hmac.new(secret, f"{t}.".encode() +
    /// body, hashlib.sha256).hexdigest()` (RFC 4231 test case 2's key and message, with
    /// the `t.` prefix in front).
    #[test]
    fn signature_is_hmac_sha256_of_t_dot_body() {
        let s = signature("Jefe", 1700000000, b"what do ya want for nothing?");
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"Jefe");
        let tag = ring::hmac::sign(&key, b"1700000000.what do ya want for nothing?");
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(s, format!("t=1700000000,v1={hex}"));
        // RFC 4231 §4.3, to be sure the key and hash are the ones named.
        let tag = ring::hmac::sign(&key, b"what do ya want for nothing?");
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    fn webhooks(events: &[&str], queue: usize) -> Webhooks {
        let cfg = Settings {
            url: "http://127.0.0.1:9/".into(),
            events: events.iter().map(|e| e.to_string()).collect(),
            batch: 10,
            queue,
            node: "n1".into(),
            ..Settings::default()
        };
        let status = Arc::new(Status::default());
        Webhooks::new(cfg, reqwest::Client::new(), Arc::new(Notify::new()), status)
    }

    fn queued(w: &Webhooks) -> Vec<serde_json::Value> {
        w.queue
            .iter()
            .map(|(_, e)| serde_json::from_str(e).unwrap())
            .collect()
    }

    #[test]
    fn events_are_rendered_with_data_spliced_and_the_epoch_as_clients_see_it() {
        let mut w = webhooks(&[], 10);
        let data: Arc<str> = r#"{"b":[1,2.50,"x\"y"],"a":null}"#.into();
        let what = What::ClientPublish {
            room: "r\"1".into(),
            epoch: 33,
            seq: 42,
            data: data.clone(),
            user: Some("ana".into()),
        };
        w.happened(Happening {
            at_ms: 7,
            order: 0,
            what,
        });
        let what = What::ConnectionClosed {
            code: 1006,
            reason: "gone".into(),
            user: None,
        };
        w.happened(Happening {
            at_ms: 8,
            order: 0,
            what,
        });
        let got = queued(&w);
        assert_eq!(
            got[0],
            serde_json::json!({"id": got[0]["id"], "kind": "client_publish", "room": "r\"1",
                "seq": 42, "epoch": "000011", "data": {"b": [1, 2.5, "x\"y"], "a": null},
                "user": "ana", "time": 7})
        );
        // Byte for byte: `2.50` stays as sent.
        assert!(w.queue[0].1.contains(&*data), "{}", w.queue[0].1);
        assert_eq!(
            got[1],
            serde_json::json!({"id": got[1]["id"], "kind": "connection_closed", "code": 1006,
                "reason": "gone", "user": null, "time": 8})
        );
        let (a, b) = (
            got[0]["id"].as_str().unwrap(),
            got[1]["id"].as_str().unwrap(),
        );
        assert!(
            a.starts_with("n1-") && a.ends_with("-0") && b.ends_with("-1"),
            "{a} {b}"
        );
    }

    #[test]
    fn only_the_kinds_asked_for_are_queued_and_a_full_queue_drops_and_counts() {
        let mut w = webhooks(&["member_joined", "room_occupied"], 2);
        for i in 0..4 {
            let what = if i % 2 == 0 {
                What::MemberJoined {
                    room: "r".into(),
                    user: None,
                }
            } else {
                What::MemberLeft {
                    room: "r".into(),
                    user: None,
                }
            };
            w.happened(Happening {
                at_ms: i,
                order: 0,
                what,
            });
        }
        assert_eq!(w.queue.len(), 2);
        let what = What::MemberJoined {
            room: "r".into(),
            user: None,
        };
        w.happened(Happening {
            at_ms: 9,
            order: 0,
            what,
        });
        assert_eq!(w.queue.len(), 2);
        assert_eq!(w.status.webhook_queued.load(Relaxed), 2);
        assert_eq!(w.status.webhook_dropped.load(Relaxed), 1);
        // Without Redis, a room here is occupied at once (and dropped: the queue is full);
        // room_vacated is not wanted.
        for occupied in [true, false] {
            let what = What::RoomHere {
                room: "r".into(),
                occupied,
            };
            w.happened(Happening {
                at_ms: 10,
                order: 0,
                what,
            });
        }
        assert_eq!(w.status.webhook_dropped.load(Relaxed), 2);
        w.queue.clear();
        let what = What::RoomHere {
            room: "r".into(),
            occupied: true,
        };
        w.happened(Happening {
            at_ms: 11,
            order: 0,
            what,
        });
        assert_eq!(queued(&w)[0]["kind"], "room_occupied");
    }

    #[test]
    fn base36_counts() {
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
    }
}
