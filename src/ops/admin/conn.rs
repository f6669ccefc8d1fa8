//! One connection to the admin port, a state machine moved by readiness and deadlines:
//! the request is read into a buffer whose bound is known before a byte of it is read
//! (`--max-header-bytes` for the head, then `--api-max-body` for an `/api/` body, checked
//! against `Content-Length` alone); the answer, made here or passed back from the main
//! listener, is written without blocking; then a short linger. One request per
//! connection, as on the main port: every answer says `Connection: close`.
//!
//! Nothing here waits: [`Conn::drive`] does what the sockets allow and returns, and
//! [`Conn::expire`] is called by the port when [`Conn::deadline`] has passed.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::protocol::handshake::{http_response, parse, Parsed};
use crate::protocol::Status;
use crate::reactor::stats::SharedStats;
use crate::reactor::Drain;

use super::upstream::{Pumped, Upstream};
use super::{answer, Info, TEXT};

/// From accept to a complete request head (a slow-loris head is cut here).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// From accept to a complete request, an `/api/` body included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// For the main listener to take an `/api/` request and send its whole answer.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(10);
/// For the client to take the rest of an answer once it is all here (a scraper that
/// never reads is dropped then, and holds nothing up meanwhile).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// After the answer: how long what the client still sends is read and dropped, so that
/// closing with unread bytes does not reset the answer away before the client reads it.
const LINGER_TIMEOUT: Duration = Duration::from_secs(2);
/// The most bytes dropped while lingering.
const LINGER_MAX: usize = 1 << 20;
/// The most of the main listener's answer held at a time: read on as the client takes it.
const RELAY_MAX: usize = 64 << 10;

/// What every connection of the port shares: where the main listener is, the figures the
/// endpoints render, and the limits.
pub(super) struct Env {
    pub main: SocketAddr,
    pub stats: Arc<SharedStats>,
    pub drain: Arc<Drain>,
    pub info: Arc<Info>,
    pub limits: super::Limits,
}

/// Where a connection is.
#[derive(Debug)]
enum Phase {
    /// Reading the request: its head, then, once the head named it, `want` bytes in all
    /// (head and `/api/` body).
    Request { want: Option<usize> },
    /// The main listener has the request; its answer is passed back as it comes.
    Forward(Upstream),
    /// Writing the answer.
    Respond,
    /// The answer is written and the write side shut; what the client still sends is
    /// read and dropped until its EOF.
    Linger { dropped: usize },
}

/// What the port does with a connection after a [`Conn::drive`] or [`Conn::expire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    Keep,
    Close,
}

/// One admin connection. Idle (no byte yet), it holds its socket and these few words.
#[derive(Debug)]
pub(super) struct Conn {
    client: TcpStream,
    born: Instant,
    deadline: Instant,
    phase: Phase,
    /// The request as read so far; its bound is the phase's (see [`Conn::limit`]).
    input: Vec<u8>,
    /// The answer; `sent` bytes of it are written.
    output: Vec<u8>,
    sent: usize,
    /// Bytes of the main listener's answer passed on (none yet: a failure can still be
    /// answered with 503).
    relayed: bool,
}

impl Conn {
    pub(super) fn new(client: TcpStream, now: Instant) -> Conn {
        Conn {
            client,
            born: now,
            deadline: now + HEAD_TIMEOUT,
            phase: Phase::Request { want: None },
            input: Vec::new(),
            output: Vec::new(),
            sent: 0,
            relayed: false,
        }
    }

    /// When the port must call [`Conn::expire`].
    pub(super) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The `poll` events the client socket waits for, and the main listener's socket's
    /// (0: nothing now; the port leaves such a socket out of its poll set).
    pub(super) fn interest(&self) -> (RawFd, i16, Option<(RawFd, i16)>) {
        let pending = self.output.len() - self.sent;
        let (client, upstream) = match &self.phase {
            Phase::Request { .. } | Phase::Linger { .. } => (libc::POLLIN, None),
            Phase::Respond => (libc::POLLOUT, None),
            Phase::Forward(up) => {
                let client = if pending > 0 { libc::POLLOUT } else { 0 };
                (client, Some(up.interest(RELAY_MAX.saturating_sub(pending))))
            }
        };
        (self.client.as_raw_fd(), client, upstream)
    }

    /// Does what the sockets allow now. O(bytes moved).
    pub(super) fn drive(&mut self, env: &Env, scratch: &mut [u8], now: Instant) -> Step {
        match self.step(env, scratch, now) {
            Ok(step) => step,
            Err(e) => {
                tracing::debug!(error = %e, "admin connection dropped");
                Step::Close
            }
        }
    }

    /// The deadline passed: what that means depends on the phase.
    pub(super) fn expire(&mut self, now: Instant) -> Step {
        match self.phase {
            // The main listener did not answer in time, and nothing of it went out yet.
            Phase::Forward(_) if !self.relayed => {
                let msg = "the main listener did not answer in time";
                self.respond_json(Status::ServiceUnavailable, "unavailable", msg, now);
                self.flush().map_or(Step::Close, |_| Step::Keep)
            }
            _ => Step::Close,
        }
    }

    fn step(&mut self, env: &Env, scratch: &mut [u8], now: Instant) -> io::Result<Step> {
        if let Phase::Request { .. } = self.phase {
            if self.read_request(env, scratch, now)? == Step::Close {
                return Ok(Step::Close);
            }
        }
        if let Phase::Forward(up) = &mut self.phase {
            let room = RELAY_MAX.saturating_sub(self.output.len() - self.sent);
            let request = &self.input;
            let was_connecting = up.connecting();
            let before = self.output.len();
            match up.pump(request, &mut self.output, room, scratch) {
                Ok(Pumped::Pending) => {}
                Ok(Pumped::Done) if self.relayed || self.output.len() > before => {
                    self.input = Vec::new();
                    self.phase = Phase::Respond;
                    self.deadline = now + WRITE_TIMEOUT;
                }
                Ok(Pumped::Done) => {
                    let msg = "the main listener closed without answering";
                    self.respond_json(Status::ServiceUnavailable, "unavailable", msg, now);
                }
                Err(_) if was_connecting && !self.relayed => self.closed_main(now),
                Err(e) if !self.relayed && self.output.len() == before => {
                    tracing::debug!(error = %e, "admin: the main listener dropped a request");
                    let msg = "the main listener dropped the request";
                    self.respond_json(Status::ServiceUnavailable, "unavailable", msg, now);
                }
                Err(e) => return Err(e),
            }
            self.relayed |= self.output.len() > before;
        }
        self.flush()?;
        if let Phase::Respond = self.phase {
            if self.sent == self.output.len() {
                // Our FIN tells a client that reads to EOF that the answer is complete.
                let _ = self.client.shutdown(Shutdown::Write);
                self.output = Vec::new();
                self.sent = 0;
                self.phase = Phase::Linger { dropped: 0 };
                self.deadline = now + LINGER_TIMEOUT;
            }
        }
        if let Phase::Linger { dropped } = &mut self.phase {
            loop {
                match self.client.read(scratch) {
                    Ok(0) => return Ok(Step::Close),
                    Ok(n) => {
                        *dropped += n;
                        if *dropped > LINGER_MAX {
                            return Ok(Step::Close);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(Step::Keep)
    }

    /// How many bytes of request the phase may hold: the head cap until the head is
    /// parsed, then the head and its announced body (already checked against the cap).
    fn limit(&self, env: &Env) -> usize {
        match self.phase {
            Phase::Request { want: Some(want) } => want,
            _ => env.limits.max_header_bytes,
        }
    }

    /// Reads what the client sent, within the phase's bound, and decides on it once it
    /// is complete. `Close` if the client went away before asking anything whole.
    fn read_request(&mut self, env: &Env, scratch: &mut [u8], now: Instant) -> io::Result<Step> {
        loop {
            let mut eof = false;
            loop {
                let room = self.limit(env).saturating_sub(self.input.len());
                if room == 0 {
                    break;
                }
                let want = room.min(scratch.len());
                match self.client.read(&mut scratch[..want]) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => self.input.extend_from_slice(&scratch[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            let was_head = matches!(self.phase, Phase::Request { want: None });
            self.decide(env, now);
            match self.phase {
                // The head named a body: read on for it (some may be here already).
                Phase::Request { want: Some(_) } if was_head && !eof => continue,
                // A client that shut its side before its request was whole.
                Phase::Request { .. } if eof => return Ok(Step::Close),
                _ => return Ok(Step::Keep),
            }
        }
    }

    /// Moves on once the request read so far is enough to act on.
    fn decide(&mut self, env: &Env, now: Instant) {
        if let Phase::Request { want: Some(want) } = self.phase {
            if self.input.len() >= want {
                self.input.truncate(want);
                self.forward(env, now);
            }
            return;
        }
        let (parsed, head_len) = match parse(&self.input, env.limits.max_header_bytes) {
            Ok(None) => return,
            Ok(Some(done)) => done,
            // Over the cap (431), or not a request this port can read (400).
            Err(e) if e.status() == Status::HeadersTooLarge => {
                let body = format!("{e}\n");
                return self.respond(Status::HeadersTooLarge, TEXT, body.into_bytes(), now);
            }
            Err(_) => return self.refuse(now),
        };
        let req = match parsed {
            Parsed::Plain(req) => req,
            Parsed::Upgrade(_) => return self.refuse(now),
        };
        if !req.path.starts_with("/api/") {
            let (status, ctype, body) = answer(req.path, &env.stats, env.drain.active(), &env.info);
            return self.respond(status, ctype, body.into_bytes(), now);
        }
        // The shards answer everything about a body but its size: a body that is not
        // announced by a Content-Length they can read is passed on without it, and
        // they answer 411.
        let body = match (req.method, req.transfer_encoding, req.content_length) {
            ("POST", None, Some(len)) => len.trim().parse::<u64>().unwrap_or(0),
            _ => 0,
        };
        let max = env.limits.api_max_body;
        if body > max as u64 {
            // Answered from the Content-Length alone: nothing of the body is read.
            let msg = format!("bodies are at most {max} bytes (--api-max-body)");
            return self.respond_json(Status::PayloadTooLarge, "too_large", &msg, now);
        }
        self.phase = Phase::Request {
            want: Some(head_len + body as usize),
        };
        self.deadline = self.born + REQUEST_TIMEOUT;
        self.decide(env, now);
    }

    /// Passes the request (all of `input`) to the main listener.
    fn forward(&mut self, env: &Env, now: Instant) {
        match Upstream::connect(env.main) {
            Ok(up) => {
                self.phase = Phase::Forward(up);
                self.deadline = now + UPSTREAM_TIMEOUT;
            }
            Err(_) => self.closed_main(now),
        }
    }

    /// The main listener refused the connection: it is closed while the node drains.
    fn closed_main(&mut self, now: Instant) {
        let msg = "the main listener is closed (draining)";
        self.respond_json(Status::ServiceUnavailable, "unavailable", msg, now);
    }

    fn refuse(&mut self, now: Instant) {
        let body = b"the admin port answers GET /healthz, /stats, /metrics and /api/\n";
        self.respond(Status::BadRequest, TEXT, body.to_vec(), now);
    }

    /// `{"error":<code>,"msg":<msg>}`, as the server API words its errors.
    fn respond_json(&mut self, status: Status, code: &str, msg: &str, now: Instant) {
        let body = serde_json::json!({"error": code, "msg": msg}).to_string();
        self.respond(status, "application/json", body.into_bytes(), now);
    }

    /// Answers with a response of our own (the request and any main-listener leg are
    /// dropped) and gives the client [`WRITE_TIMEOUT`] to take it.
    fn respond(&mut self, status: Status, ctype: &str, body: Vec<u8>, now: Instant) {
        self.input = Vec::new();
        self.output.clear();
        self.sent = 0;
        http_response(status, ctype, "", &body, true, &mut self.output);
        self.phase = Phase::Respond;
        self.deadline = now + WRITE_TIMEOUT;
    }

    /// Writes what the client will take now.
    fn flush(&mut self) -> io::Result<()> {
        while self.sent < self.output.len() {
            match self.client.write(&self.output[self.sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        // A relayed answer is passed on in pieces: what went out is let go.
        if self.sent == self.output.len() && matches!(self.phase, Phase::Forward(_)) {
            self.output.clear();
            self.sent = 0;
        }
        Ok(())
    }
}
