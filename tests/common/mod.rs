//! Starts the real `roomcast` binary for black-box tests.

#![allow(dead_code)]

pub mod need;
pub mod redis;
pub mod tls;

pub use need::{chromium, python};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    /// The line it printed when it started listening.
    pub line: String,
}

impl Server {
    /// Starts `roomcast serve` on 127.0.0.1 with an OS-chosen port and waits until it
    /// listens.
    pub fn start(backend: &str, extra: &[&str]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_roomcast"));
        cmd.stderr(Stdio::inherit());
        Server::spawn(cmd, backend, extra)
    }

    /// Like [`Server::start`], with `RLIMIT_NOFILE` lowered to `nofile` (by `prlimit`) and
    /// the log written to `log`.
    pub fn start_limited(
        backend: &str,
        nofile: u32,
        log: &std::path::Path,
        extra: &[&str],
    ) -> Server {
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--nofile={nofile}:{nofile}"))
            .arg(env!("CARGO_BIN_EXE_roomcast"));
        cmd.stderr(std::fs::File::create(log).unwrap());
        Server::spawn(cmd, backend, extra)
    }

    fn spawn(mut cmd: Command, backend: &str, extra: &[&str]) -> Server {
        cmd.args(["serve", "--backend", backend]);
        if !extra.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        // Tests that are not about heartbeats should not see pings arrive at random
        // moments; the heartbeat tests set their own interval.
        if !extra.contains(&"--ping-interval") {
            cmd.args(["--ping-interval", "3600", "--pong-timeout", "60"]);
        }
        cmd.args(extra)
            // ROOMCAST_TEST_LOG overrides the server's log filter when chasing a failure.
            .env(
                "RUST_LOG",
                std::env::var("ROOMCAST_TEST_LOG").unwrap_or_else(|_| "warn,roomcast=info".into()),
            );
        let server = Server::launch(cmd);
        assert!(
            server.line.contains(&format!("backend {backend}")),
            "{}",
            server.line
        );
        server
    }

    /// Runs `cmd` (a whole `roomcast serve …` of the test's own) and waits until it
    /// listens.
    pub fn launch(mut cmd: Command) -> Server {
        let mut child = cmd.stdout(Stdio::piped()).spawn().expect("spawn roomcast");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .split(" listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok());
        let Some(addr) = addr else {
            let _ = child.kill();
            panic!("unexpected first line: {line:?}");
        };
        // From here on, dropping the Server (a failed assertion too) kills the process.
        Server { child, addr, line }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Sends raw bytes and reads until the server closes (or `timeout`).
    pub fn raw_exchange(&self, request: &[u8], timeout: Duration) -> Vec<u8> {
        let mut s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(timeout)).unwrap();
        s.write_all(request).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        out
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `field` summed over every shard in a `/stats` answer.
pub fn shard_sum(s: &serde_json::Value, field: &str) -> u64 {
    s["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|sh| sh[field].as_u64().unwrap())
        .sum()
}

/// A request upgrading to WebSocket on `path`.
pub fn upgrade_request(path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// One masked client frame.
pub fn client_frame(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0x11, 0x22, 0x33, 0x44];
    let mut out = vec![first_byte];
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

/// Runs the body once per backend, as two tests in modules `uring` and `epoll`.
#[macro_export]
macro_rules! both_backends {
    ($(async fn $name:ident($backend:ident: &str) $body:block)*) => {
        mod uring {
            #[allow(unused_imports)]
            use super::*;
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name("uring").await })*
        }
        mod epoll {
            #[allow(unused_imports)]
            use super::*;
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name("epoll").await })*
        }
        $(async fn $name($backend: &str) $body)*
    };
}

/// The next message that is not a ping or pong: the server pings on its own schedule
/// (tungstenite answers by itself), so tests looking for data skip control messages.
pub async fn next_data<S>(
    ws: &mut S,
) -> Option<Result<tokio_tungstenite::tungstenite::Message, tokio_tungstenite::tungstenite::Error>>
where
    S: futures_util::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
{
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match ws.next().await {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => return other,
        }
    }
}

/// A WebSocket to `path` on `server`.
pub async fn connect(server: &Server, path: &str) -> Ws {
    tokio_tungstenite::connect_async(server.url(path))
        .await
        .unwrap()
        .0
}

/// Sends `v` as a text message.
pub async fn send_json(ws: &mut Ws, v: serde_json::Value) {
    use futures_util::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::Text(v.to_string()))
        .await
        .unwrap();
}

/// The next text message as JSON, within `wait` (pings and pongs skipped).
pub async fn recv_json(ws: &mut Ws, wait: Duration) -> serde_json::Value {
    use tokio_tungstenite::tungstenite::Message;
    let next = tokio::time::timeout(wait, next_data(ws)).await;
    match next.expect("timed out waiting for a message") {
        Some(Ok(Message::Text(t))) => serde_json::from_str(&t).unwrap(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

impl Server {
    /// `GET path` on the main port: (status code, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path)
    }

    /// The server's `/stats` JSON.
    pub fn stats(&self) -> serde_json::Value {
        let (status, body) = self.get("/stats");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// `field` of `/stats` summed over the shards.
    pub fn shard_sum(&self, field: &str) -> u64 {
        shard_sum(&self.stats(), field)
    }

    /// Waits (up to 10 s) until the server holds exactly `n` sockets: whatever a test
    /// did, every resource of the connections it ended is released. The `/stats`
    /// request itself is one socket, so it counts `n + 1`.
    pub fn settles_to(&self, n: u64) {
        self.settles_with(n, || self.stats());
    }

    /// [`Server::settles_to`] with `/stats` fetched by `stats` (over TLS, say).
    pub fn settles_with(&self, n: u64, stats: impl Fn() -> serde_json::Value) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let s = stats();
            if s["connections"].as_u64() == Some(n + 1) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never settled to {n}: {s}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `signal` (e.g. "TERM") to the server.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits up to `timeout` for the process to exit; its status if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `GET path` over a fresh connection: (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    get_over(s, path)
}

/// `GET path` over `s` (plain or TLS), read until the server closes: (status, body).
pub fn get_over(mut s: impl Read + Write, path: &str) -> (u16, String) {
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut out = Vec::new();
    // The server closes after answering; what it sent arrived whatever the close says.
    let _ = s.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out).into_owned();
    let status = out
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {out:?}"));
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a WebSocket to `url` with extra request headers, from source address `from`.
pub async fn connect_from(
    from: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request()?;
    for (k, v) in headers {
        req.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let host = req.uri().authority().unwrap().as_str().to_owned();
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let stream = sock.connect(host.parse().unwrap()).await.unwrap();
    let (ws, _) =
        tokio_tungstenite::client_async(req, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await?;
    Ok(ws)
}

/// A client on the same server that publishes to room `steady` every 50 ms while a
/// second one receives: it proves that what a test does to other connections costs
/// these two nothing. It connects from 127.0.0.2, so per-address limits on 127.0.0.1
/// do not touch it, and sends an allowed Origin.
pub struct Bystander {
    started: std::time::Instant,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<(u64, Vec<(u64, Duration)>)>,
}

/// The Origin bystanders send (tests with --allow-origin allow it).
pub const BYSTANDER_ORIGIN: &str = "https://app.example.com";

/// The longest a bystander's message may take, publish to delivery, on a busy 2-core CI
/// machine; on loopback it is well under a millisecond.
pub const BYSTANDER_MAX_DELAY: Duration = Duration::from_millis(250);

impl Bystander {
    /// Starts publishing and receiving; `token` goes in `?token=` when auth is on.
    pub async fn start(server: &Server, token: Option<&str>) -> Bystander {
        use futures_util::SinkExt;
        use tokio_tungstenite::tungstenite::Message;
        let q = token.map_or(String::new(), |t| format!("&token={t}"));
        let headers = [("Origin", BYSTANDER_ORIGIN)];
        let url = server.url(&format!("/ws?room=steady{q}"));
        let mut sub = connect_from("127.0.0.2", &url, &headers).await.unwrap();
        match next_data(&mut sub).await.unwrap().unwrap() {
            Message::Text(t) if t.contains("\"joined\"") => {}
            other => panic!("bystander join: {other:?}"),
        }
        let url = server.url(&format!("/ws?x=1{q}"));
        let mut publisher = connect_from("127.0.0.2", &url, &headers).await.unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sent_at = std::sync::Arc::new(std::sync::Mutex::new(Vec::<std::time::Instant>::new()));
        let (stop2, sent2) = (stop.clone(), sent_at.clone());
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let got2 = got.clone();
        let receiver = tokio::spawn(async move {
            while let Some(Ok(Message::Text(t))) = next_data(&mut sub).await {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                assert_eq!(v["op"], "msg", "bystander got {t}");
                let i = v["data"].as_u64().unwrap();
                let delay = sent2.lock().unwrap()[i as usize].elapsed();
                got2.lock().unwrap().push((i, delay));
            }
        });
        let task = tokio::spawn(async move {
            let mut i = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                sent_at.lock().unwrap().push(std::time::Instant::now());
                let op = format!(r#"{{"op":"pub","room":"steady","data":{i}}}"#);
                publisher.send(Message::Text(op)).await.unwrap();
                i += 1;
            }
            // Give the last messages time to arrive, then stop the receiver by closing.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let _ = publisher.close(None).await;
            receiver.abort();
            let _ = receiver.await;
            let got = std::mem::take(&mut *got.lock().unwrap());
            (i, got)
        });
        Bystander {
            started: std::time::Instant::now(),
            stop,
            task,
        }
    }

    /// Stops and checks: every message published arrived, in order, none late.
    pub async fn finish(self) {
        // At least half a second of broadcast, however quick the test was.
        let min = Duration::from_millis(600);
        tokio::time::sleep(min.saturating_sub(self.started.elapsed())).await;
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (sent, got) = self.task.await.unwrap();
        assert!(sent >= 4, "the bystander ran too briefly ({sent} messages)");
        let order: Vec<u64> = got.iter().map(|g| g.0).collect();
        assert_eq!(
            order,
            (0..sent).collect::<Vec<_>>(),
            "the bystander missed messages"
        );
        let worst = got.iter().map(|g| g.1).max().unwrap();
        assert!(
            worst < BYSTANDER_MAX_DELAY,
            "a bystander message took {worst:?}"
        );
    }
}

/// The real clients' folder (`tests/clients`: Python, Node, browser scripts).
pub fn clients_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// Runs `tests/clients/deflate.py` (Python `websockets`) and `deflate.mjs` (Node `ws` and
/// headless Chromium) against `base` (`ws://…` or `wss://…`, rooms named after `prefix`),
/// with `envs` (a CA to trust, say); their reports, by client. The test starts with
/// `need!(Python, Node, Chromium)`.
pub fn deflate_clients(
    base: &str,
    prefix: &str,
    envs: &[(&str, &std::ffi::OsStr)],
) -> Vec<(&'static str, serde_json::Value)> {
    let dir = clients_dir();
    let run = |program: &std::ffi::OsStr, args: &[&std::ffi::OsStr]| -> serde_json::Value {
        let mut cmd = Command::new("timeout");
        cmd.arg("120")
            .arg(program)
            .args(args)
            .envs(envs.iter().copied());
        last_json(&succeeds(&mut cmd))
    };
    let base = std::ffi::OsStr::new(base);
    let (py, js) = (format!("{prefix}-py"), format!("{prefix}-js"));
    let python = run(
        python().as_os_str(),
        &[dir.join("deflate.py").as_os_str(), base, py.as_ref()],
    );
    let both = run(
        "node".as_ref(),
        &[
            dir.join("deflate.mjs").as_os_str(),
            base,
            js.as_ref(),
            chromium().as_os_str(),
        ],
    );
    vec![
        ("python", python),
        ("node", both["node"].clone()),
        ("chromium", both["chromium"].clone()),
    ]
}

/// Runs a client program to its end: its standard output, once it exited with success
/// (otherwise a failure that shows both its outputs).
pub fn succeeds(cmd: &mut Command) -> String {
    let out = cmd.output().expect("client");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The last line of a client's output: its JSON report.
pub fn last_json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

/// A free port on 127.0.0.1 (for `--admin-listen`, a proxy in front of the server).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
