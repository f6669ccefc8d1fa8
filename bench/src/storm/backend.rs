//! The application's backend a storm runs against: a minimal HTTP/1.1 keep-alive server
//! (tokio, `httparse` for the request heads) answering roomcast's connect hook after a
//! fixed latency with the user named by the request's `session` cookie.
//!
//! Hand-written rather than `hyper`: the bench depends on no HTTP server, the hook speaks
//! one request shape (`POST`, `Content-Length`, no chunking, one request at a time per
//! connection as a pooled HTTP/1.1 client sends them), and a few dozen lines cost less
//! than the dependency tree.
//!
//! It counts what a storm does to it: requests, when they arrived (100 ms bins), requests
//! in flight (read and not yet answered: waiting out the latency) and their peak, and
//! the connections the server's pool opened.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the backend answers and how slowly.
#[derive(Clone, Copy, Debug)]
pub struct Answers {
    /// Every answer waits this long (the application's own work: a session lookup).
    pub latency: Duration,
    /// `"cache_ttl"` in every answer (0: none).
    pub cache_ttl: u64,
}

/// Longest request head plus body taken (a connect hook's body is a few hundred bytes).
const MAX_REQUEST: usize = 64 * 1024;

/// The width of the arrival bins.
pub const BIN: Duration = Duration::from_millis(100);

/// The backend's counts, shared by its connections (one thread: cells).
#[derive(Debug)]
pub struct Counts {
    requests: Cell<u64>,
    /// Answered 401 (no `session` cookie) or 400 (not a connect hook request).
    refused: Cell<u64>,
    inflight: Cell<u64>,
    peak: Cell<u64>,
    conns: Cell<u64>,
    conns_peak: Cell<u64>,
    conns_opened: Cell<u64>,
    /// Since the last [`Counts::reset`]: its instant, arrivals per [`BIN`], the first
    /// arrival and the last answer.
    since: Cell<Instant>,
    bins: RefCell<Vec<u32>>,
    first: Cell<Option<Instant>>,
    last: Cell<Option<Instant>>,
}

/// The backend's figures over one wave (from a [`Counts::reset`] to now).
#[derive(Clone, Debug, Default)]
pub struct Wave {
    pub requests: u64,
    pub refused: u64,
    /// Requests read and not yet answered at once, at most.
    pub peak_inflight: u64,
    /// The server's connections to the backend open at once, at most, and opened.
    pub peak_conns: u64,
    pub conns_opened: u64,
    /// Requests per second from the first arrival to the last answer.
    pub mean_per_sec: f64,
    /// The most requests that arrived in one second (a sliding window over the bins).
    pub peak_per_sec: f64,
    /// Arrivals per [`BIN`] from the reset.
    pub bins: Vec<u32>,
    /// Requests still unanswered now.
    pub inflight_now: u64,
}

impl Counts {
    fn new() -> Counts {
        Counts {
            requests: Cell::new(0),
            refused: Cell::new(0),
            inflight: Cell::new(0),
            peak: Cell::new(0),
            conns: Cell::new(0),
            conns_peak: Cell::new(0),
            conns_opened: Cell::new(0),
            since: Cell::new(Instant::now()),
            bins: RefCell::new(Vec::new()),
            first: Cell::new(None),
            last: Cell::new(None),
        }
    }

    /// Starts a wave: counts from zero, peaks from what is open now.
    pub fn reset(&self) {
        self.requests.set(0);
        self.refused.set(0);
        self.peak.set(self.inflight.get());
        self.conns_peak.set(self.conns.get());
        self.conns_opened.set(0);
        self.since.set(Instant::now());
        self.bins.borrow_mut().clear();
        self.first.set(None);
        self.last.set(None);
    }

    /// The wave so far.
    pub fn wave(&self) -> Wave {
        let bins = self.bins.borrow().clone();
        let per_bin = (Duration::from_secs(1).as_nanos() / BIN.as_nanos()) as usize;
        let peak = bins
            .windows(per_bin.min(bins.len()).max(1))
            .map(|w| w.iter().map(|&n| u64::from(n)).sum::<u64>())
            .max()
            .unwrap_or(0);
        // A wave shorter than a second: its requests per second over what it lasted.
        let span = match (self.first.get(), self.last.get()) {
            (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
            _ => 0.0,
        };
        let requests = self.requests.get();
        let mean = if span > 0.0 {
            requests as f64 / span
        } else {
            0.0
        };
        let peak_per_sec = if bins.len() < per_bin {
            mean.max(peak as f64)
        } else {
            peak as f64
        };
        Wave {
            requests,
            refused: self.refused.get(),
            peak_inflight: self.peak.get(),
            peak_conns: self.conns_peak.get(),
            conns_opened: self.conns_opened.get(),
            mean_per_sec: mean,
            peak_per_sec,
            bins,
            inflight_now: self.inflight.get(),
        }
    }

    fn arrived(&self) {
        let now = Instant::now();
        self.requests.set(self.requests.get() + 1);
        let n = self.inflight.get() + 1;
        self.inflight.set(n);
        self.peak.set(self.peak.get().max(n));
        if self.first.get().is_none() {
            self.first.set(Some(now));
        }
        let bin = (now.duration_since(self.since.get()).as_nanos() / BIN.as_nanos()) as usize;
        let mut bins = self.bins.borrow_mut();
        if bins.len() <= bin {
            bins.resize(bin + 1, 0);
        }
        bins[bin] += 1;
    }

    fn answered(&self) {
        self.inflight.set(self.inflight.get() - 1);
        self.last.set(Some(Instant::now()));
    }

    fn opened(&self) {
        let n = self.conns.get() + 1;
        self.conns.set(n);
        self.conns_peak.set(self.conns_peak.get().max(n));
        self.conns_opened.set(self.conns_opened.get() + 1);
    }

    fn closed(&self) {
        self.conns.set(self.conns.get() - 1);
    }
}

/// Listens on `addr` and serves the connect hook there (on this thread's `LocalSet`)
/// until the process ends. Returns the address bound and the counts.
pub async fn start(
    addr: SocketAddr,
    answers: Answers,
) -> std::io::Result<(SocketAddr, Rc<Counts>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let counts = Rc::new(Counts::new());
    let c = counts.clone();
    tokio::task::spawn_local(async move {
        loop {
            match listener.accept().await {
                Ok((s, _)) => {
                    let _ = s.set_nodelay(true);
                    tokio::task::spawn_local(serve(s, answers, c.clone()));
                }
                Err(e) => {
                    // Out of descriptors, for one: wait rather than spin.
                    eprintln!("storm backend: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    });
    Ok((bound, counts))
}

/// One connection from the server's pool: requests in turn, each answered after the
/// latency, until the server closes it.
async fn serve(mut s: TcpStream, answers: Answers, counts: Rc<Counts>) {
    counts.opened();
    let mut buf = Vec::with_capacity(2048);
    'conn: loop {
        // Every complete request already buffered, in order (HTTP/1.1 answers in order).
        loop {
            match parse(&buf) {
                Parsed::Partial => break,
                Parsed::Bad => {
                    let _ = s.write_all(&response(400, b"{}", true)).await;
                    break 'conn;
                }
                Parsed::Request { len, close, body } => {
                    counts.arrived();
                    let (status, answer) = answer(&buf[body], answers.cache_ttl);
                    if status != 200 {
                        counts.refused.set(counts.refused.get() + 1);
                    }
                    tokio::time::sleep(answers.latency).await;
                    let sent = s
                        .write_all(&response(status, answer.as_bytes(), close))
                        .await;
                    counts.answered();
                    buf.drain(..len);
                    if sent.is_err() || close {
                        break 'conn;
                    }
                }
            }
        }
        if buf.len() >= MAX_REQUEST {
            break;
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    counts.closed();
}

/// What the buffer holds.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    Partial,
    Bad,
    /// A whole request of `len` bytes, its body at `body`; `close`: it asked to close.
    Request {
        len: usize,
        close: bool,
        body: std::ops::Range<usize>,
    },
}

fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let head = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Bad,
    };
    let mut length = 0usize;
    let mut close = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            match std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
            {
                Some(n) => length = n,
                None => return Parsed::Bad,
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // The hook always sends a length; chunked bodies are not spoken here.
            return Parsed::Bad;
        } else if h.name.eq_ignore_ascii_case("connection") {
            close = h.value.eq_ignore_ascii_case(b"close");
        }
    }
    if head + length > MAX_REQUEST {
        return Parsed::Bad;
    }
    if buf.len() < head + length {
        return Parsed::Partial;
    }
    Parsed::Request {
        len: head + length,
        close,
        body: head..head + length,
    }
}

/// The status and body answering a connect hook request `body`: `{"user":<session>}`
/// (with `"cache_ttl"` when set), 401 without a `session` cookie, 400 if it is not a
/// connect request.
fn answer(body: &[u8], cache_ttl: u64) -> (u16, String) {
    let Ok(req) = serde_json::from_slice::<serde_json::Value>(body) else {
        return (400, r#"{"error":{"code":400,"reason":"not json"}}"#.into());
    };
    if req["kind"] != "connect" {
        return (
            400,
            r#"{"error":{"code":400,"reason":"not a connect"}}"#.into(),
        );
    }
    let Some(user) = req["headers"]["cookie"].as_str().and_then(session) else {
        return (
            401,
            r#"{"error":{"code":401,"reason":"no session"}}"#.into(),
        );
    };
    let user = serde_json::to_string(user).unwrap_or_default();
    if cache_ttl > 0 {
        (200, format!(r#"{{"user":{user},"cache_ttl":{cache_ttl}}}"#))
    } else {
        (200, format!(r#"{{"user":{user}}}"#))
    }
}

/// The `session` value of a `Cookie` header.
fn session(cookie: &str) -> Option<&str> {
    cookie
        .split(';')
        .find_map(|c| c.trim().strip_prefix("session="))
        .filter(|v| !v.is_empty())
}

fn response(status: u16, body: &[u8], close: bool) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        _ => "Bad Request",
    };
    let connection = if close { "Connection: close\r\n" } else { "" };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{connection}\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQ: &str =
        "POST /connect HTTP/1.1\r\ncontent-type: application/json\r\nhost: x\r\ncontent-length: ";

    fn request(body: &str) -> String {
        format!("{REQ}{}\r\n\r\n{body}", body.len())
    }

    #[test]
    fn requests_are_taken_whole_and_in_turn() {
        let body = r#"{"kind":"connect","headers":{"cookie":"a=1; session=u7"}}"#;
        let one = request(body);
        let two = format!("{one}{one}");
        let Parsed::Request {
            len,
            close,
            body: b,
        } = parse(two.as_bytes())
        else {
            panic!("a whole request")
        };
        assert_eq!((len, close), (one.len(), false));
        assert_eq!(&two.as_bytes()[b], body.as_bytes());
        assert_eq!(parse(&one.as_bytes()[..one.len() - 1]), Parsed::Partial);
        assert_eq!(
            parse(b"POST /c HTTP/1.1\r\ncontent-length: x\r\n\r\n"),
            Parsed::Bad
        );
    }

    #[test]
    fn the_session_cookie_names_the_user() {
        let ask = |cookie: &str| {
            let body = serde_json::json!({"kind":"connect","headers":{"cookie":cookie}});
            answer(body.to_string().as_bytes(), 0)
        };
        assert_eq!(
            ask("theme=dark; session=u42"),
            (200, r#"{"user":"u42"}"#.into())
        );
        assert_eq!(ask("theme=dark").0, 401);
        let body = br#"{"kind":"connect","headers":{"cookie":"session=u1"}}"#;
        assert_eq!(
            answer(body, 60),
            (200, r#"{"user":"u1","cache_ttl":60}"#.into())
        );
        assert_eq!(answer(br#"{"kind":"join"}"#, 0).0, 400);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_pooled_connection_is_answered_after_the_latency() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let answers = Answers {
                    latency: Duration::from_millis(30),
                    cache_ttl: 0,
                };
                let (addr, counts) = start("127.0.0.1:0".parse().unwrap(), answers)
                    .await
                    .unwrap();
                let mut s = TcpStream::connect(addr).await.unwrap();
                let body = r#"{"kind":"connect","headers":{"cookie":"session=u3"}}"#;
                let started = Instant::now();
                for _ in 0..2 {
                    s.write_all(request(body).as_bytes()).await.unwrap();
                    let mut got = Vec::new();
                    while !got.ends_with(br#"{"user":"u3"}"#) {
                        let mut b = [0u8; 512];
                        let n = s.read(&mut b).await.unwrap();
                        assert!(n > 0, "the connection stays open");
                        got.extend_from_slice(&b[..n]);
                    }
                    assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"));
                }
                assert!(started.elapsed() >= Duration::from_millis(60));
                let w = counts.wave();
                assert_eq!((w.requests, w.peak_inflight, w.peak_conns), (2, 1, 1));
                assert_eq!(w.inflight_now, 0);
            })
            .await;
    }
}
