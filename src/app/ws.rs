//! A connection's bytes, as the app reads them: an HTTP request head (a plain request is
//! answered and the connection closed; an upgrade is admitted or refused), then WebSocket
//! frames for `/echo` and `/ws`. What a `/ws` op asks of the shard (join, leave, publish,
//! a session) is pushed to the app's intents and carried out by [`super::service`].

use std::sync::Arc;

use crate::protocol::deflate;
use crate::protocol::handshake::{self, Parsed, Request};
use crate::protocol::message::{Event, MAX_TAIL};
use crate::protocol::{
    encode, CloseCode, Decoder, Limits, MessageKind, OpCode, ProtocolError, SharedFrame, Status,
};
use crate::reactor::Link;

use super::backend::Connect;
use super::conn::{flag, AppConn, Endpoint, Route, Ws};
use super::figures::Counts;
use super::gate::{Admitted, Gate, Refusal};
use super::slow::Tag;
use super::wire::RoomOp;
use super::{auth, wire, App, Intent};
use crate::ops::admin::Info;
use crate::reactor::stats::SharedStats;
use crate::reactor::Drain;

pub(super) type L<'a, 'b> = &'a mut Link<'b, AppConn, Tag, Counts>;

/// What admission made of a request.
pub(super) enum Admit {
    /// Admitted, with the session of whoever it is (`None`: anonymous, or first-message
    /// auth pending).
    Go(Option<auth::Session>),
    /// Waiting on the connect hook: the request is read again when it answers.
    Wait,
    /// Refused (answered already).
    Refused,
}

/// What the endpoints share on a shard: admission, what `/stats` and `/metrics` answer
/// with, the shard's shared frames.
pub(super) struct Front {
    pub gate: Arc<Gate>,
    /// The settings in effect and the capacity model, for `/stats` and `/metrics`.
    pub info: Arc<Info>,
    pub stats: Arc<SharedStats>,
    pub drain: Arc<Drain>,
    /// The ping every heartbeat sends: one frame shared by the whole shard.
    pub ping: SharedFrame,
    /// The event stream heartbeat, shared by the shard.
    pub sse_beat: SharedFrame,
    /// The decoder's limits for a connection that agreed to deflate (RSV1 allowed).
    pub deflate_limits: Limits,
    /// Upgraded connections closed so far (open WebSockets = upgraded − this).
    pub ws_closed: u64,
    /// Event streams closed so far (open streams = opened − this).
    pub sse_closed: u64,
}

impl App {
    /// Bytes for one connection. Returns how many were consumed.
    pub(super) fn receive(&mut self, link: L, buf: &mut [u8]) -> usize {
        let (closing, broken) = (link.is_closing(), link.app().has(flag::BROKEN));
        let waiting = link.app().has(flag::API_WAIT);
        match &link.app().ep {
            // After the response: dropped (the reactor lingers until the client's EOF).
            Endpoint::Http if closing || waiting => buf.len(),
            Endpoint::Http => self.request(link, buf),
            // An event stream's client has nothing more to say.
            Endpoint::Sse(_) => buf.len(),
            // The framing is lost: nothing more can be parsed.
            Endpoint::Ws(_) if broken => buf.len(),
            Endpoint::Ws(_) => self.frames(link, buf),
        }
    }

    /// How much unconsumed input a connection may hold outside a pause.
    pub(super) fn pending_bound(&self, conn: &AppConn) -> usize {
        match conn.ep {
            Endpoint::Http if conn.has(flag::API_BODY) => {
                self.cfg.max_header_bytes + self.cfg.api_max_body
            }
            Endpoint::Http | Endpoint::Sse(_) => self.cfg.max_header_bytes,
            Endpoint::Ws(_) => MAX_TAIL,
        }
    }

    fn request(&mut self, link: L, buf: &mut [u8]) -> usize {
        let (parsed, head_len) = match handshake::parse(buf, self.cfg.max_header_bytes) {
            Ok(None) => return 0,
            Ok(Some(done)) => done,
            Err(e) => {
                refuse(link, e.status(), &e.to_string());
                return buf.len();
            }
        };
        match parsed {
            Parsed::Plain(req) if req.path.starts_with("/api/") => {
                self.api(link, &req, head_len, buf)
            }
            Parsed::Plain(req) if req.method != "GET" => {
                refuse(link, Status::MethodNotAllowed, "use GET");
                buf.len()
            }
            Parsed::Plain(req) if req.path == "/sse" => {
                match self.open_stream(link, &req, &buf[..head_len]) {
                    // Waiting on the connect hook: the request stays unread.
                    false => 0,
                    true => buf.len(),
                }
            }
            Parsed::Plain(req) if self.asset(link, &req) => buf.len(),
            Parsed::Plain(req) => {
                link.figures().http_requests += 1;
                let draining = self.front.drain.active();
                let (status, content_type, body) = crate::ops::admin::answer(
                    req.path,
                    &self.front.stats,
                    draining,
                    &self.front.info,
                );
                let mut out = Vec::new();
                handshake::http_response(status, content_type, "", body.as_bytes(), true, &mut out);
                link.finish(SharedFrame::from_encoded(Arc::from(out)));
                buf.len()
            }
            Parsed::Upgrade(req) => {
                let route = match req.path {
                    "/echo" => Route::Echo,
                    "/ws" => Route::Rooms,
                    _ => {
                        refuse(link, Status::NotFound, "no such endpoint");
                        return buf.len();
                    }
                };
                let session = match self.admit(link, &req, &buf[..head_len], route == Route::Rooms)
                {
                    Admit::Go(session) => session,
                    // Read again once the connect hook has answered.
                    Admit::Wait => return 0,
                    Admit::Refused => return buf.len(),
                };
                // Offered next to a `bearer.<token>` entry, `roomcast` is the protocol
                // selected.
                let offers = |name: &str| {
                    req.protocols
                        .as_deref()
                        .into_iter()
                        .flat_map(handshake::tokens)
                        .any(|p| p == name)
                };
                let protocol = (route == Route::Rooms && offers(auth::SUBPROTOCOL))
                    .then_some(auth::SUBPROTOCOL);
                self.upgrade(link, &req, route, protocol);
                if let Some(s) = session {
                    self.intents.push(Intent::Login(s));
                }
                let identity = match &mut self.backend {
                    Some(b) => b.take_identity(link.slot() as u32),
                    None => None,
                };
                if let (Some(id), Route::Rooms) = (&identity, route) {
                    super::backend::after_upgrade(link, id);
                    for room in &id.rooms {
                        match wire::validate_room(room) {
                            Ok(()) => self.intents.push(Intent::ServerJoin(room.clone())),
                            Err(e) => reply(link, wire::error(e.code, &e.msg)),
                        }
                    }
                }
                if route == Route::Rooms {
                    // `/ws?room=a,b` joins at connect.
                    let asked = req.query_value("room");
                    for room in asked.iter().flat_map(|v| v.split(',')) {
                        match wire::validate_room(room) {
                            Ok(()) => self.intents.push(Intent::Room(RoomOp::Join {
                                room: Arc::from(room),
                                since: None,
                            })),
                            Err(e) => reply(link, wire::error(e.code, &e.msg)),
                        }
                    }
                }
                // A client may send its first frames right behind the request.
                head_len + self.frames(link, &mut buf[head_len..])
            }
        }
    }

    /// Everything a request for `/ws`, `/echo` or `/sse` must pass, in order: not
    /// draining (503), an allowed Origin (403), who it is: a valid token if it brings one
    /// (401), else the connect hook's answer (its 401/403, or 503 `hook_unavailable`),
    /// else, with auth on, 401 (with `late_auth`, `/ws` may bring a token later in an
    /// `auth` op); then the connection limits (429 per address or user, 503 in total).
    /// `head` is the request head as it came (the connect hook forwards its headers).
    pub(super) fn admit(
        &mut self,
        link: L,
        req: &Request<'_>,
        head: &[u8],
        late_auth: bool,
    ) -> Admit {
        let gate = self.front.gate.clone();
        if self.front.drain.active() {
            refuse(link, Status::ServiceUnavailable, "server shutting down");
            return Admit::Refused;
        }
        if !gate.origin_allowed(req.origin) {
            refuse(link, Status::Forbidden, "origin not allowed");
            return Admit::Refused;
        }
        let mut session = None;
        if let Some(auth) = &gate.auth {
            match auth.find_token(req).map(|t| auth.verify(t)) {
                Some(Ok(s)) => session = Some(s),
                Some(Err(e)) => {
                    link.figures().auth_failures += 1;
                    refuse(link, Status::Unauthorized, e.reason());
                    return Admit::Refused;
                }
                None => {}
            }
        }
        if session.is_none() {
            match self.connect_hook(link, req, head) {
                Connect::Wait => return Admit::Wait,
                Connect::Refused => return Admit::Refused,
                Connect::Identified(s) => session = Some(s),
                Connect::Off if gate.auth.is_none() => {}
                Connect::Off if late_auth => link.app().set(flag::AUTH_PENDING),
                Connect::Off => {
                    link.figures().auth_failures += 1;
                    refuse(link, Status::Unauthorized, "missing token");
                    return Admit::Refused;
                }
            }
        }
        let peer = link.app().peer;
        let admitted = match gate.admit(peer) {
            Ok(a) => a,
            Err(r) => {
                let status = match r {
                    Refusal::Full => Status::ServiceUnavailable,
                    _ => Status::TooManyRequests,
                };
                refuse(link, status, r.reason());
                return Admit::Refused;
            }
        };
        if let Some(s) = &session {
            if let Err(r) = gate.admit_user(&s.sub) {
                gate.release(peer, admitted);
                refuse(link, Status::TooManyRequests, r.reason());
                return Admit::Refused;
            }
        }
        if admitted.ip {
            link.app().set(flag::COUNTED_IP);
        }
        if admitted.total {
            link.app().set(flag::COUNTED_TOTAL);
        }
        Admit::Go(session)
    }

    /// Accepts the upgrade: queues the 101 and starts speaking `route`.
    fn upgrade(&mut self, link: L, req: &Request<'_>, route: Route, protocol: Option<&str>) {
        let agreed = match (&self.codec, req.extensions.as_deref()) {
            (Some(_), Some(offers)) => deflate::negotiate(offers),
            _ => None,
        };
        let mut out = Vec::with_capacity(160);
        let extensions = agreed.as_ref().map(|(_, answer)| answer.as_str());
        handshake::accept_response(req, protocol, extensions, &mut out);
        if link
            .send_control(SharedFrame::from_encoded(Arc::from(out)))
            .is_err()
        {
            return link.abort();
        }
        let now = link.now_ms();
        link.app().ep = Endpoint::Ws(Ws {
            route,
            decoder: Decoder::new(),
            tokens: self.cfg.burst.saturating_mul(1000),
            stamp: now,
            last_msg: now,
            deflate: agreed.as_ref().map(|(a, _)| *a),
        });
        link.figures().upgraded += 1;
        link.figures().deflate_agreed += u64::from(agreed.is_some());
        link.start_heartbeat();
        if !link.app().has(flag::AUTH_PENDING) {
            link.establish();
        }
    }

    /// Takes one message's worth from the rate-limit bucket; past the burst the
    /// connection is closed with 1008. Cost: a few integer operations.
    fn within_rate(&self, link: L) -> bool {
        let (rate, burst, now) = (self.cfg.rate, self.cfg.burst, link.now_ms());
        if rate == 0 {
            return true;
        }
        let Some(ws) = link.app().ws() else {
            return false;
        };
        let elapsed = u64::from(now.wrapping_sub(ws.stamp));
        let cap = u64::from(burst) * 1000;
        // `rate` messages per second is `rate` thousandths per millisecond.
        let tokens = (u64::from(ws.tokens) + elapsed * u64::from(rate)).min(cap);
        ws.stamp = now;
        if tokens < 1000 {
            ws.tokens = tokens as u32;
            link.figures().rate_limited += 1;
            fail(link, CloseCode::POLICY_VIOLATION, "rate limit exceeded");
            return false;
        }
        ws.tokens = (tokens - 1000) as u32;
        true
    }

    /// Decodes frames. After our close frame, frames are still decoded (and dropped) until
    /// the peer's close frame answers it (RFC 6455 §5.5.1), unless the framing broke.
    fn frames(&mut self, link: L, buf: &mut [u8]) -> usize {
        let (mut at, end) = (0, buf.len());
        loop {
            let owed = link.queued().len() + self.acks_owed;
            if (link.is_full() || owed >= link.out_cap()) && !link.is_closing() {
                // Backpressure: stop consuming until what we owe the peer has gone out
                // (acknowledgements count: they come back from the room's owner).
                link.pause();
                return at;
            }
            let Some(ws) = link.app().ws() else {
                return buf.len();
            };
            let limits = match ws.deflate {
                // RSV1 marks a compressed message.
                Some(_) => &self.front.deflate_limits,
                None => &self.cfg.limits,
            };
            let (n, event) = match ws.decoder.decode(&mut buf[at..], limits) {
                Ok(step) => step,
                Err(e) => {
                    violation(link, &e);
                    return buf.len();
                }
            };
            at += n;
            match event {
                Some(event) => self.on_event(link, event),
                None if n == 0 || at == end => return at,
                None => {}
            }
            if link.app().has(flag::BROKEN) {
                return buf.len();
            }
        }
    }

    fn on_event(&mut self, link: L, event: Event<'_>) {
        if link.is_closing() {
            // Our close is out: only the peer's answer to it matters now.
            if let Event::Close(_) = event {
                link.goodbye();
            }
            return;
        }
        match event {
            Event::Message {
                kind,
                payload,
                compressed,
            } => {
                link.figures().messages_in += 1;
                let now = link.now_ms();
                let Some(ws) = link.app().ws() else {
                    return;
                };
                ws.last_msg = now;
                if !self.within_rate(link) {
                    return;
                }
                if !compressed {
                    return self.on_message(link, kind, &payload);
                }
                let Some(codec) = self.codec.as_deref_mut() else {
                    return;
                };
                link.figures().deflate_in += 1;
                match codec.inflate(kind, &payload, self.cfg.limits.max_message) {
                    Ok(inflated) => {
                        self.on_message(link, kind, &inflated);
                        if let Some(codec) = self.codec.as_deref_mut() {
                            codec.give_back(inflated);
                        }
                    }
                    Err(refused) => {
                        link.figures().protocol_errors += 1;
                        let (code, reason) = refused.close();
                        fail(link, code, reason);
                    }
                }
            }
            Event::Ping(payload) => {
                if !self.within_rate(link) {
                    return;
                }
                let pong = SharedFrame::new(OpCode::Pong, payload);
                if link.send_control(pong).is_err() {
                    // Only a peer that pings faster than it reads gets here: it loses the
                    // connection, nobody else notices.
                    link.abort();
                }
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
                finish_with_close(link, code, reply);
                // The closing handshake is complete once our echo is out.
                link.goodbye();
            }
        }
    }

    /// A complete message (inflated if it came compressed).
    fn on_message(&mut self, link: L, kind: MessageKind, payload: &[u8]) {
        let Some(ws) = link.app().ws() else {
            return;
        };
        let (route, deflate) = (ws.route, ws.deflate);
        match (route, deflate, self.codec.as_deref_mut()) {
            (Route::Rooms, ..) => self.on_op(link, kind, payload),
            (Route::Echo, Some(agreed), Some(codec)) => {
                let frame = codec.frame(kind, payload, agreed.narrow);
                if link.send(frame).is_ok() {
                    link.figures().messages_out += 1;
                }
            }
            (Route::Echo, ..) => {
                // Echo: one allocation for the reply frame, one copy of the payload.
                let frame = SharedFrame::new(kind.opcode(), payload);
                if link.send(frame).is_ok() {
                    link.figures().messages_out += 1;
                }
            }
        }
    }

    /// A `/ws` message: a JSON op. Anything wrong with it is answered with an error op and
    /// the connection stays.
    fn on_op(&mut self, link: L, kind: MessageKind, payload: &[u8]) {
        let text = match (kind, std::str::from_utf8(payload)) {
            (MessageKind::Text, Ok(text)) => text,
            _ => {
                return reply(
                    link,
                    wire::error("bad_json", "ops are JSON in text messages"),
                )
            }
        };
        let op = wire::parse(text);
        let pending = link.app().has(flag::AUTH_PENDING);
        if pending && !matches!(op, Ok(wire::ClientOp::Auth { .. })) {
            let id = match &op {
                Ok(wire::ClientOp::Room(RoomOp::Pub { id, .. })) => *id,
                Err(e) => e.id,
                _ => None,
            };
            return reply(link, wire::unauthenticated(id));
        }
        match op {
            Ok(wire::ClientOp::Auth { token }) => self.authenticate(link, &token, false),
            Ok(wire::ClientOp::Refresh { token }) => self.authenticate(link, &token, true),
            Ok(wire::ClientOp::Rpc { method, data, id }) => self.intents.push(Intent::Rpc {
                method: Arc::from(&*method),
                data: Arc::from(data),
                id,
            }),
            Ok(wire::ClientOp::Room(op)) => {
                if let RoomOp::Pub { id: Some(_), .. } = op {
                    self.acks_owed += 1;
                }
                // The one copy of the data out of the read buffer; every delivery shares it.
                self.intents.push(Intent::Room(op.map_data(Arc::from)))
            }
            Err(e) => reply(link, e.frame()),
        }
    }

    /// A token in an `auth` op (first-message auth) or a `refresh` op. A bad token in
    /// `auth` closes with 1008; in `refresh` it is an error op and the current token stands.
    fn authenticate(&mut self, link: L, token: &str, refresh: bool) {
        let gate = self.front.gate.clone();
        let Some(auth) = &gate.auth else {
            return reply(
                link,
                wire::error("auth_disabled", "this server takes no tokens"),
            );
        };
        let pending = link.app().has(flag::AUTH_PENDING);
        if refresh == pending {
            let (code, msg) = if pending {
                ("unauthenticated", "authenticate before refreshing")
            } else {
                ("already_authenticated", "use refresh to replace a token")
            };
            return reply(link, wire::error(code, msg));
        }
        let session = match auth.verify(token) {
            Ok(s) => s,
            Err(e) => {
                link.figures().auth_failures += 1;
                if refresh {
                    return reply(link, wire::error("invalid_token", e.reason()));
                }
                return fail(link, CloseCode::POLICY_VIOLATION, e.reason());
            }
        };
        if refresh {
            // The shard checks it is the same user and answers.
            return self.intents.push(Intent::Refresh(session));
        }
        if let Err(r) = gate.admit_user(&session.sub) {
            return fail(link, CloseCode::POLICY_VIOLATION, r.reason());
        }
        link.app().clear(flag::AUTH_PENDING);
        link.establish();
        reply(link, wire::authed(&session.sub, session.exp));
        self.intents.push(Intent::Login(session));
    }

    /// Gives back what admission counted (the connection has closed).
    pub(super) fn release(&self, conn: &mut AppConn) {
        let admitted = Admitted {
            ip: conn.has(flag::COUNTED_IP),
            total: conn.has(flag::COUNTED_TOTAL),
        };
        conn.clear(flag::COUNTED_IP | flag::COUNTED_TOTAL);
        self.front.gate.release(conn.peer, admitted);
    }
}

/// Queues a reply to this connection's own request: past a full ring, up to 4 × its
/// size (a connection that owes this many replies is not being read).
pub(super) fn reply(link: L, frame: SharedFrame) {
    let cap = link.out_cap() * 4;
    if link.app().route().is_some() && link.send_up_to(frame, cap).is_ok() {
        link.figures().messages_out += 1;
    }
}

/// The peer broke the protocol: close with the code the rule maps to.
fn violation(link: L, e: &ProtocolError) {
    link.figures().protocol_errors += 1;
    link.app().set(flag::BROKEN);
    tracing::debug!(conn = link.gen(), error = %e, "protocol violation");
    fail(link, e.close_code(), e.reason());
}

/// Starts the closing handshake from our side with `code`.
pub(super) fn fail(link: L, code: CloseCode, reason: &str) {
    if link.is_closing() {
        return;
    }
    let mut frame = Vec::with_capacity(4 + reason.len());
    encode::write_close(code, reason, &mut frame);
    finish_with_close(link, code.0, frame);
}

/// Queues a close frame with `code` as the last thing this connection gets, and counts it
/// (a close before the upgrade is a refusal, counted by `refuse`).
fn finish_with_close(link: L, code: u16, frame: Vec<u8>) {
    if link.app().route().is_some() {
        link.figures().count_close(code);
        link.app().set(flag::CLOSE_SENT);
        link.app().close_code = code;
    }
    link.finish(SharedFrame::from_encoded(Arc::from(frame)));
}

/// Refuses a request with an HTTP status and a plain-text reason, then closes.
pub(super) fn refuse(link: L, status: Status, body: &str) {
    link.figures().count_refusal(status.code());
    let mut out = Vec::new();
    handshake::reject_response(status, body, &mut out);
    link.finish(SharedFrame::from_encoded(Arc::from(out)));
}
