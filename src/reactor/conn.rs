//! One connection's state and the logic both backends share: bytes received go in,
//! frames to send come out in the connection's [`OutRing`], and the phase says what the
//! backend must do next. No syscalls here: the backends own the sockets.

use std::sync::Arc;

use thin_vec::ThinVec;

use crate::app::gate::{Admitted, Gate};
use crate::app::{auth, ops, Intent};
use crate::protocol::handshake::{self, Parsed, Request};
use crate::protocol::message::{Event, Limits, MAX_TAIL};
use crate::protocol::{encode, CloseCode, Decoder, OpCode, ProtocolError, SharedFrame, Status};

use super::outring::OutRing;
use super::stats::{SharedStats, Snapshot};

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Reading the opening handshake; bytes accumulate in the tail.
    Handshake,
    /// Upgraded: frames in, frames out.
    Open,
    /// A final response or close frame is queued: input is discarded; once the ring
    /// drains the backend half-closes, then closes at EOF or the linger deadline.
    Closing,
}

/// What an upgraded connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    None,
    /// `/echo`: every message comes back as it was (the conformance endpoint).
    Echo,
    /// `/ws`: the rooms protocol (JSON ops).
    Rooms,
}

/// Flags the backends keep per connection.
pub mod flag {
    /// On the shard's list of connections to flush this turn.
    pub const QUEUED: u16 = 1 << 0;
    /// Input processing stopped because the out-ring is full; the backend stops reading
    /// until it drains.
    pub const PAUSED: u16 = 1 << 1;
    /// A send is in flight (io_uring): its iovecs point into the ring.
    pub const SENDING: u16 = 1 << 2;
    /// A multishot recv is armed (io_uring) or reads are wanted (epoll).
    pub const RECEIVING: u16 = 1 << 3;
    /// The write side has been shut down after the final bytes went out.
    pub const SHUT_WR: u16 = 1 << 4;
    /// Close requested; the slot is freed once no operation refers to it any more.
    pub const DEAD: u16 = 1 << 5;
    /// The close deadline is set (the connection entered `Closing`).
    pub const DEADLINE: u16 = 1 << 6;
    /// Bytes arrived since the last heartbeat check.
    pub const SEEN: u16 = 1 << 7;
    /// A ping went out and the peer has not been heard from since.
    pub const AWAIT_PONG: u16 = 1 << 8;
    /// An io_uring shutdown(SHUT_WR) is in flight: the descriptor must not be closed (and
    /// its fixed-file index reused) before it completes.
    pub const SHUTTING: u16 = 1 << 9;
    /// A close frame (ours or the echo of the peer's) was queued.
    pub const CLOSE_SENT: u16 = 1 << 10;
    /// Upgraded without a token: waiting for `{"op":"auth"}` until the handshake deadline.
    pub const AUTH_PENDING: u16 = 1 << 11;
    /// Counted against `--max-conns-per-ip` / `--max-conns`: released when it closes.
    pub const COUNTED_IP: u16 = 1 << 12;
    pub const COUNTED_TOTAL: u16 = 1 << 13;
}

/// Per-shard settings the connection logic needs, and its counters.
#[derive(Debug)]
pub struct Ctx {
    pub limits: Limits,
    pub max_header_bytes: usize,
    pub out_cap: usize,
    /// `--rate` (messages per second, 0: off) and `--burst`.
    pub rate: u32,
    pub burst: u32,
    /// The shard's coarse clock: milliseconds since it started, set once per loop turn.
    pub now_ms: u32,
    /// This shard's counters, published to `shared` once per turn.
    pub stats: Snapshot,
    /// Admission, auth and drain state shared by all shards.
    pub gate: Arc<Gate>,
    /// What the connection being processed asked of its shard (`/ws` ops), drained by the
    /// shard right after.
    pub intents: Vec<Intent>,
    /// Every shard's figures, for `/stats`.
    pub shared: std::sync::Arc<SharedStats>,
}

/// A connection's whole state. Its size is part of the per-connection memory budget.
#[derive(Debug)]
pub struct Conn {
    /// The socket: a plain fd (epoll) or a fixed-file index (io_uring).
    pub io: u32,
    /// Distinguishes this connection from earlier ones in the same slab slot.
    pub gen: u32,
    pub phase: Phase,
    pub route: Route,
    pub flags: u16,
    /// Deliveries dropped for this connection by the slow-consumer policy.
    pub drops: u32,
    /// The peer's address key ([`crate::app::gate::peer_key`]; 0: unknown).
    pub peer: u32,
    /// Rate-limit bucket, in thousandths of a message, as of `stamp` (shard ms).
    tokens: u32,
    stamp: u32,
    /// When the last message arrived (shard ms), for `--idle-timeout`.
    pub last_msg: u32,
    decoder: Decoder,
    pub out: OutRing,
    /// Bytes received but not yet consumed: an incomplete handshake or frame tail, or input
    /// held back while paused. Empty, with no heap storage, while idle; a thin vector
    /// (one pointer) because it is empty nearly always.
    tail: ThinVec<u8>,
}

// The per-connection budget (DESIGN.md: ≤ 256 B per idle connection in user space,
// slab slot included; the reactor issue asks for ≤ 192 B for the struct).
const _: () = assert!(std::mem::size_of::<Conn>() <= 128);

impl Conn {
    pub fn new(io: u32, gen: u32, peer: u32) -> Conn {
        Conn {
            io,
            gen,
            phase: Phase::Handshake,
            route: Route::None,
            flags: 0,
            drops: 0,
            peer,
            tokens: 0,
            stamp: 0,
            last_msg: 0,
            decoder: Decoder::new(),
            out: OutRing::default(),
            tail: ThinVec::new(),
        }
    }

    pub fn has(&self, f: u16) -> bool {
        self.flags & f != 0
    }

    pub fn set(&mut self, f: u16) {
        self.flags |= f;
    }

    pub fn clear(&mut self, f: u16) {
        self.flags &= !f;
    }

    /// Bytes held in the tail (for tests and accounting).
    pub fn tail_len(&self) -> usize {
        self.tail.len()
    }

    /// Handles bytes just received. Afterwards the backend checks `out` (something to
    /// send), [`flag::PAUSED`] (stop reading) and `phase` (closing).
    ///
    /// Only what cannot be consumed yet is copied into the tail; an idle connection's
    /// tail stays unallocated.
    pub fn receive(&mut self, data: &mut [u8], ctx: &mut Ctx) {
        // Any bytes at all count as a sign of life (RFC 6455 §5.5.2: a pong, or anything).
        self.set(flag::SEEN);
        if self.phase == Phase::Closing {
            return;
        }
        if self.tail.is_empty() && !self.has(flag::PAUSED) {
            let n = self.process(data, ctx);
            if n < data.len() && self.phase != Phase::Closing {
                self.tail.extend_from_slice(&data[n..]);
            }
        } else {
            self.tail.extend_from_slice(data);
            if !self.has(flag::PAUSED) {
                self.process_tail(ctx);
            }
        }
        self.check_tail_bound(ctx);
    }

    /// Picks up input held back while paused, after the ring drained.
    pub fn resume(&mut self, ctx: &mut Ctx) {
        self.clear(flag::PAUSED);
        if !self.tail.is_empty() && self.phase != Phase::Closing {
            self.process_tail(ctx);
        }
    }

    fn process_tail(&mut self, ctx: &mut Ctx) {
        let mut tail = std::mem::take(&mut self.tail);
        let n = self.process(&mut tail, ctx);
        if self.phase != Phase::Closing && n < tail.len() {
            tail.drain(..n);
            self.tail = tail;
        }
    }

    /// Holding more than a header's worth outside a pause would mean a decoder bug;
    /// holding a lot while paused means the backend kept reading. Either way the
    /// connection, not the process, pays.
    fn check_tail_bound(&mut self, ctx: &mut Ctx) {
        let bound = match (self.phase, self.has(flag::PAUSED)) {
            (Phase::Handshake, _) => ctx.max_header_bytes,
            (_, false) => MAX_TAIL,
            (_, true) => 4 << 20,
        };
        if self.tail.len() > bound {
            self.tail = ThinVec::new();
            self.fail(CloseCode::POLICY_VIOLATION, "input backlog", ctx);
        }
    }

    fn process(&mut self, buf: &mut [u8], ctx: &mut Ctx) -> usize {
        match self.phase {
            Phase::Handshake => self.handshake(buf, ctx),
            Phase::Open => self.frames(buf, ctx),
            Phase::Closing => buf.len(),
        }
    }

    fn handshake(&mut self, buf: &mut [u8], ctx: &mut Ctx) -> usize {
        let (parsed, head_len) = match handshake::parse(buf, ctx.max_header_bytes) {
            Ok(None) => return 0,
            Ok(Some(done)) => done,
            Err(e) => {
                self.refuse(e.status(), &e.to_string(), ctx);
                return buf.len();
            }
        };
        match parsed {
            Parsed::Plain(req) => {
                ctx.stats.http_requests += 1;
                let (status, content_type, body) =
                    crate::ops::admin::answer(req.path, &ctx.shared, &ctx.gate);
                let mut out = Vec::new();
                handshake::http_response(status, content_type, "", body.as_bytes(), true, &mut out);
                self.finish_with(out, ctx);
                buf.len()
            }
            Parsed::Upgrade(req) => {
                let route = match req.path {
                    "/echo" => Route::Echo,
                    "/ws" => Route::Rooms,
                    _ => {
                        self.refuse(Status::NotFound, "no such endpoint", ctx);
                        return buf.len();
                    }
                };
                if !self.admit(&req, route, ctx) {
                    return buf.len();
                }
                if route == Route::Rooms {
                    // `/ws?room=a,b` joins at connect.
                    for room in req
                        .query_param("room")
                        .into_iter()
                        .flat_map(|v| v.split(','))
                    {
                        match ops::validate_room(room) {
                            Ok(()) => ctx.intents.push(Intent::Join {
                                room: Arc::from(room),
                            }),
                            Err(e) => self.reply(ops::error(e.code, &e.msg), ctx),
                        }
                    }
                }
                // A client may send its first frames right behind the request.
                head_len + self.frames(&mut buf[head_len..], ctx)
            }
        }
    }

    /// Everything a valid upgrade request must still pass, in order: not draining (503),
    /// an allowed Origin (403), a valid token if auth is on (401; `/ws` may bring it
    /// later in an `auth` op), the connection limits (429 per address or user, 503 in
    /// total). Then the 101. Returns whether the connection was upgraded.
    fn admit(&mut self, req: &Request<'_>, route: Route, ctx: &mut Ctx) -> bool {
        let gate = ctx.gate.clone();
        if gate.drain.active() {
            self.refuse(Status::ServiceUnavailable, "server shutting down", ctx);
            return false;
        }
        if !gate.origin_allowed(req.origin) {
            self.refuse(Status::Forbidden, "origin not allowed", ctx);
            return false;
        }
        let mut session = None;
        if let Some(auth) = &gate.auth {
            match auth.find_token(req).map(|t| auth.verify(t)) {
                Some(Ok(s)) => session = Some(s),
                Some(Err(e)) => {
                    ctx.stats.auth_failures += 1;
                    self.refuse(Status::Unauthorized, e.reason(), ctx);
                    return false;
                }
                None if route == Route::Rooms => self.set(flag::AUTH_PENDING),
                None => {
                    ctx.stats.auth_failures += 1;
                    self.refuse(Status::Unauthorized, "missing token", ctx);
                    return false;
                }
            }
        }
        let admitted = match gate.admit(self.peer) {
            Ok(a) => a,
            Err(r) => {
                let status = match r {
                    crate::app::gate::Refusal::Full => Status::ServiceUnavailable,
                    _ => Status::TooManyRequests,
                };
                self.refuse(status, r.reason(), ctx);
                return false;
            }
        };
        if let Some(s) = &session {
            if let Err(r) = gate.admit_user(&s.sub) {
                gate.release(self.peer, admitted);
                self.refuse(Status::TooManyRequests, r.reason(), ctx);
                return false;
            }
        }
        if admitted.ip {
            self.set(flag::COUNTED_IP);
        }
        if admitted.total {
            self.set(flag::COUNTED_TOTAL);
        }
        // Offered next to a `bearer.<token>` entry, `roomcast` is the protocol selected.
        let offers = |name: &str| {
            req.protocols
                .into_iter()
                .flat_map(handshake::tokens)
                .any(|p| p == name)
        };
        let protocol =
            (route == Route::Rooms && offers(auth::SUBPROTOCOL)).then_some(auth::SUBPROTOCOL);
        self.upgrade(req, route, protocol, ctx);
        if let Some(s) = session {
            ctx.intents.push(Intent::Login(s));
        }
        true
    }

    /// Gives back what admission counted (the connection is closing).
    pub fn release(&mut self, gate: &Gate) {
        let admitted = Admitted {
            ip: self.has(flag::COUNTED_IP),
            total: self.has(flag::COUNTED_TOTAL),
        };
        self.clear(flag::COUNTED_IP | flag::COUNTED_TOTAL);
        gate.release(self.peer, admitted);
    }

    /// Accepts the upgrade: queues the 101 and starts speaking `route`.
    fn upgrade(&mut self, req: &Request<'_>, route: Route, protocol: Option<&str>, ctx: &mut Ctx) {
        let mut out = Vec::with_capacity(160);
        handshake::accept_response(req, protocol, &mut out);
        self.push_control(SharedFrame::from_encoded(Arc::from(out)), ctx);
        self.route = route;
        self.phase = Phase::Open;
        self.tokens = ctx.burst.saturating_mul(1000);
        self.stamp = ctx.now_ms;
        self.last_msg = ctx.now_ms;
        ctx.stats.upgraded += 1;
    }

    /// Takes one message's worth from the rate-limit bucket; past the burst the
    /// connection is closed with 1008. Cost: a few integer operations.
    fn within_rate(&mut self, ctx: &mut Ctx) -> bool {
        if ctx.rate == 0 {
            return true;
        }
        let elapsed = u64::from(ctx.now_ms.wrapping_sub(self.stamp));
        let cap = u64::from(ctx.burst) * 1000;
        // `rate` messages per second is `rate` thousandths per millisecond.
        let tokens = (u64::from(self.tokens) + elapsed * u64::from(ctx.rate)).min(cap);
        self.stamp = ctx.now_ms;
        if tokens < 1000 {
            self.tokens = tokens as u32;
            ctx.stats.rate_limited += 1;
            self.fail(CloseCode::POLICY_VIOLATION, "rate limit exceeded", ctx);
            return false;
        }
        self.tokens = (tokens - 1000) as u32;
        true
    }

    fn frames(&mut self, buf: &mut [u8], ctx: &mut Ctx) -> usize {
        let (mut at, end) = (0, buf.len());
        loop {
            if self.out.is_full(ctx.out_cap) {
                // Backpressure: stop consuming until what we owe the peer has gone out.
                self.set(flag::PAUSED);
                return at;
            }
            let (n, event) = match self.decoder.decode(&mut buf[at..], &ctx.limits) {
                Ok(step) => step,
                Err(e) => {
                    self.violation(&e, ctx);
                    return buf.len();
                }
            };
            at += n;
            match event {
                Some(event) => self.on_event(event, ctx),
                None if n == 0 || at == end => return at,
                None => {}
            }
            if self.phase == Phase::Closing {
                return buf.len();
            }
        }
    }

    fn on_event(&mut self, event: Event<'_>, ctx: &mut Ctx) {
        match event {
            Event::Message { kind, payload } => {
                ctx.stats.messages_in += 1;
                self.last_msg = ctx.now_ms;
                if !self.within_rate(ctx) {
                    return;
                }
                match self.route {
                    Route::Rooms => self.on_op(kind, &payload, ctx),
                    _ => {
                        // Echo: one allocation for the reply frame, one copy of the payload.
                        let frame = SharedFrame::new(kind.opcode(), &payload);
                        if self.out.push(frame, ctx.out_cap).is_ok() {
                            ctx.stats.messages_out += 1;
                        }
                    }
                }
            }
            Event::Ping(payload) => {
                if !self.within_rate(ctx) {
                    return;
                }
                self.push_control(SharedFrame::new(OpCode::Pong, payload), ctx);
            }
            Event::Pong(_) => {}
            Event::Close(_) => {
                let mut reply = Vec::with_capacity(4);
                event.reply(&mut reply);
                // The echoed code, or 1005 (none given).
                let code = match reply.get(2..4) {
                    Some(&[hi, lo]) => u16::from_be_bytes([hi, lo]),
                    _ => 1005,
                };
                self.finish_with_close(code, reply, ctx);
            }
        }
    }

    /// A `/ws` message: a JSON op. Anything wrong with it is answered with an error op and
    /// the connection stays.
    fn on_op(&mut self, kind: crate::protocol::MessageKind, payload: &[u8], ctx: &mut Ctx) {
        let text = match (kind, std::str::from_utf8(payload)) {
            (crate::protocol::MessageKind::Text, Ok(text)) => text,
            _ => return self.reply(ops::error("bad_json", "ops are JSON in text messages"), ctx),
        };
        let op = ops::parse(text);
        if self.has(flag::AUTH_PENDING) && !matches!(op, Ok(ops::ClientOp::Auth { .. })) {
            return self.reply(ops::unauthenticated(), ctx);
        }
        match op {
            Ok(ops::ClientOp::Auth { token }) => self.authenticate(&token, false, ctx),
            Ok(ops::ClientOp::Refresh { token }) => self.authenticate(&token, true, ctx),
            Ok(ops::ClientOp::Join { room, .. }) => ctx.intents.push(Intent::Join { room }),
            Ok(ops::ClientOp::Leave { room }) => ctx.intents.push(Intent::Leave { room }),
            Ok(ops::ClientOp::Pub { room, data, id }) => ctx.intents.push(Intent::Pub {
                room,
                data: data.into(),
                id,
            }),
            Err(e) => self.reply(ops::error(e.code, &e.msg), ctx),
        }
    }

    /// A token in an `auth` op (first-message auth) or a `refresh` op. A bad token in
    /// `auth` closes with 1008; in `refresh` it is an error op and the current token stands.
    fn authenticate(&mut self, token: &str, refresh: bool, ctx: &mut Ctx) {
        let gate = ctx.gate.clone();
        let Some(auth) = &gate.auth else {
            return self.reply(
                ops::error("auth_disabled", "this server takes no tokens"),
                ctx,
            );
        };
        let pending = self.has(flag::AUTH_PENDING);
        if refresh == pending {
            let (code, msg) = if pending {
                ("unauthenticated", "authenticate before refreshing")
            } else {
                ("already_authenticated", "use refresh to replace a token")
            };
            return self.reply(ops::error(code, msg), ctx);
        }
        let session = match auth.verify(token) {
            Ok(s) => s,
            Err(e) => {
                ctx.stats.auth_failures += 1;
                if refresh {
                    return self.reply(ops::error("invalid_token", e.reason()), ctx);
                }
                return self.fail(CloseCode::POLICY_VIOLATION, e.reason(), ctx);
            }
        };
        if refresh {
            // The shard checks it is the same user and answers.
            return ctx.intents.push(Intent::Refresh(session));
        }
        if let Err(r) = gate.admit_user(&session.sub) {
            return self.fail(CloseCode::POLICY_VIOLATION, r.reason(), ctx);
        }
        self.clear(flag::AUTH_PENDING);
        self.reply(ops::authed(&session.sub, session.exp), ctx);
        ctx.intents.push(Intent::Login(session));
    }

    /// Queues a reply to this connection's own request.
    pub fn reply(&mut self, frame: SharedFrame, ctx: &mut Ctx) {
        if self.phase == Phase::Open && self.out.push(frame, ctx.out_cap).is_ok() {
            ctx.stats.messages_out += 1;
        }
    }

    /// The peer broke the protocol: close with the code the rule maps to.
    fn violation(&mut self, e: &ProtocolError, ctx: &mut Ctx) {
        ctx.stats.protocol_errors += 1;
        tracing::debug!(conn = self.gen, error = %e, "protocol violation");
        self.fail(e.close_code(), e.reason(), ctx);
    }

    /// Starts the closing handshake from our side with `code`.
    pub fn fail(&mut self, code: CloseCode, reason: &str, ctx: &mut Ctx) {
        if self.phase == Phase::Closing {
            return;
        }
        let mut frame = Vec::with_capacity(4 + reason.len());
        encode::write_close(code, reason, &mut frame);
        self.finish_with_close(code.0, frame, ctx);
    }

    /// Queues a close frame with `code` as the last thing this connection gets, and
    /// counts it (a close before the upgrade is a refusal, counted by `refuse`).
    fn finish_with_close(&mut self, code: u16, frame: Vec<u8>, ctx: &mut Ctx) {
        if self.route != Route::None {
            ctx.stats.count_close(code);
            self.set(flag::CLOSE_SENT);
        }
        self.finish_with(frame, ctx);
    }

    fn refuse(&mut self, status: Status, body: &str, ctx: &mut Ctx) {
        ctx.stats.count_refusal(status.code());
        let mut out = Vec::new();
        handshake::reject_response(status, body, &mut out);
        self.finish_with(out, ctx);
    }

    /// Queues the last bytes this connection will get and stops taking input.
    fn finish_with(&mut self, bytes: Vec<u8>, ctx: &mut Ctx) {
        self.push_control(SharedFrame::from_encoded(Arc::from(bytes)), ctx);
        self.phase = Phase::Closing;
        self.tail = ThinVec::new();
    }

    fn push_control(&mut self, frame: SharedFrame, ctx: &mut Ctx) {
        if self.out.push_control(frame, ctx.out_cap).is_err() {
            // Only a peer that pings faster than it reads gets here: it loses the
            // connection, nobody else notices.
            self.out.clear();
            self.phase = Phase::Closing;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Ctx {
        Ctx {
            limits: Limits::server(1 << 16),
            max_header_bytes: 8192,
            out_cap: 4,
            rate: 0,
            burst: 0,
            now_ms: 0,
            stats: Snapshot::default(),
            gate: Arc::new(Gate::default()),
            intents: Vec::new(),
            shared: std::sync::Arc::new(SharedStats::new(1)),
        }
    }

    const UPGRADE: &[u8] = b"GET /echo HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";

    fn masked(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode::write_client_frame(true, opcode, payload, [1, 2, 3, 4], &mut out);
        out
    }

    fn sent(conn: &mut Conn) -> Vec<u8> {
        let mut all = Vec::new();
        let mut iov = [std::io::IoSlice::new(&[]); 64];
        let n = conn.out.iovecs(&mut iov);
        for s in &iov[..n] {
            all.extend_from_slice(s);
        }
        conn.out.advance(all.len());
        all
    }

    fn open(ctx: &mut Ctx) -> Conn {
        let mut c = Conn::new(0, 0, 0);
        c.receive(&mut UPGRADE.to_vec(), ctx);
        assert_eq!(c.phase, Phase::Open);
        let resp = sent(&mut c);
        assert!(resp.starts_with(b"HTTP/1.1 101"));
        c
    }

    #[test]
    fn conn_fits_its_budget() {
        assert!(
            std::mem::size_of::<Conn>() <= 128,
            "{}",
            std::mem::size_of::<Conn>()
        );
    }

    #[test]
    fn handshake_split_byte_by_byte_then_echo() {
        let mut ctx = ctx();
        let mut c = Conn::new(0, 0, 0);
        let mut stream = UPGRADE.to_vec();
        stream.extend(masked(OpCode::Text, b"hi"));
        for b in &stream {
            c.receive(&mut [*b], &mut ctx);
        }
        let out = sent(&mut c);
        assert!(out.ends_with(&[0x81, 2, b'h', b'i']));
        assert_eq!(c.tail_len(), 0);
    }

    #[test]
    fn a_full_ring_pauses_input_and_resume_continues() {
        let mut ctx = ctx();
        let mut c = open(&mut ctx);
        let mut burst = Vec::new();
        for i in 0..10u8 {
            burst.extend(masked(OpCode::Binary, &[i]));
        }
        c.receive(&mut burst, &mut ctx);
        assert!(c.has(flag::PAUSED));
        assert_eq!(c.out.len(), 4);
        let mut got = sent(&mut c);
        while c.has(flag::PAUSED) {
            c.resume(&mut ctx);
            got.extend(sent(&mut c));
        }
        let expect: Vec<u8> = (0..10u8).flat_map(|i| [0x82, 1, i]).collect();
        assert_eq!(got, expect);
    }

    #[test]
    fn violations_queue_a_close_with_the_mapped_code() {
        let mut ctx = ctx();
        let mut c = open(&mut ctx);
        let mut bad = masked(OpCode::Text, &[0xFF]);
        c.receive(&mut bad, &mut ctx);
        assert_eq!(c.phase, Phase::Closing);
        assert_eq!(&sent(&mut c)[..4], &[0x88, 0x0F, 0x03, 0xEF]); // 1007
    }

    #[test]
    fn plain_requests_get_healthz_or_404() {
        let mut ctx = ctx();
        for (path, status) in [("/healthz", "200"), ("/nope", "404")] {
            let mut c = Conn::new(0, 0, 0);
            let mut req = format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n").into_bytes();
            c.receive(&mut req, &mut ctx);
            assert_eq!(c.phase, Phase::Closing);
            let out = String::from_utf8(sent(&mut c)).unwrap();
            assert!(out.starts_with(&format!("HTTP/1.1 {status}")), "{out}");
        }
    }

    #[test]
    fn unknown_upgrade_path_gets_404_before_upgrading() {
        let mut ctx = ctx();
        let mut c = Conn::new(0, 0, 0);
        let mut req = String::from_utf8(UPGRADE.to_vec())
            .unwrap()
            .replace("/echo", "/nope")
            .into_bytes();
        c.receive(&mut req, &mut ctx);
        assert!(sent(&mut c).starts_with(b"HTTP/1.1 404"));
    }
}
