//! The application's backend hooks over real sockets, against a real HTTP backend written
//! for the tests (tests/clients/hook_backend.py, Python's standard library): a cookie
//! becomes a user at connect (and a refusal is read by the client as 401/403 with the
//! backend's reason), joins refused, publishes rewritten and refused, RPC round trips,
//! the same question asked once, and what clients get while the backend is down — with a
//! bystander that never notices — and after it is back; `--hook-fail-open`.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, Ws};
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{self, Message};

const SECOND: Duration = Duration::from_secs(1);

/// The test backend on `port`, stopped (SIGKILL) on drop.
struct Backend {
    child: Child,
    port: u16,
}

impl Backend {
    fn start(port: u16, extra: &[&str]) -> Backend {
        let script = common::clients_dir().join("hook_backend.py");
        let mut child = Command::new(common::python())
            .arg(script)
            .arg(port.to_string())
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the test backend");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "listening", "the backend did not start");
        Backend { child, port }
    }

    fn url(&self, kind: &str) -> String {
        format!("http://127.0.0.1:{}/{kind}", self.port)
    }

    /// What it was asked so far, by kind.
    fn stats(&self) -> Value {
        let (code, body) = common::http_get(([127, 0, 0, 1], self.port).into(), "/stats");
        assert_eq!(code, 200);
        serde_json::from_str(&body).unwrap()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The flags that point every hook at `backend`.
fn hook_flags(backend: &Backend) -> Vec<String> {
    let mut flags = Vec::new();
    for kind in ["connect", "join", "publish", "rpc"] {
        flags.push(format!("--hook-{kind}"));
        flags.push(backend.url(kind));
    }
    flags
}

/// Opens `path` with a `session` cookie (none: no cookie). `Err`: the refusal's status and
/// body.
async fn open(server: &Server, path: &str, session: Option<&str>) -> Result<Ws, String> {
    let cookie = session.map(|s| format!("theme=dark; session={s}"));
    let headers: Vec<(&str, &str)> = cookie.iter().map(|c| ("Cookie", c.as_str())).collect();
    match common::connect_from("127.0.0.1", &server.url(path), &headers).await {
        Ok(ws) => Ok(ws),
        Err(tungstenite::Error::Http(resp)) => {
            let body = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default());
            Err(format!("{} {}", resp.status().as_u16(), body.trim()))
        }
        Err(e) => panic!("{path}: {e}"),
    }
}

async fn recv(ws: &mut Ws) -> Value {
    common::recv_json(ws, 5 * SECOND).await
}

async fn send(ws: &mut Ws, v: Value) {
    common::send_json(ws, v).await
}

/// Opens `/ws` as `user` and reads the `authed` op the connect hook's answer brings.
async fn login(server: &Server, path: &str, user: &str) -> Ws {
    let mut ws = open(server, path, Some(user)).await.unwrap();
    let authed = recv(&mut ws).await;
    assert_eq!(authed["op"], "authed", "{authed}");
    assert_eq!(authed["sub"], user);
    ws
}

async fn join(ws: &mut Ws, room: &str) -> Value {
    send(ws, json!({"op": "join", "room": room})).await;
    recv(ws).await
}

/// A GET of `/sse?{query}` with a cookie: the status line and what followed, up to the
/// first event (or the refusal's body).
fn sse(server: &Server, query: &str, session: Option<&str>) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(5 * SECOND)).unwrap();
    let cookie = session.map_or(String::new(), |u| format!("Cookie: session={u}\r\n"));
    write!(s, "GET /sse?{query} HTTP/1.1\r\nHost: t\r\n{cookie}\r\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        let done = if text.starts_with("HTTP/1.1 200") {
            text.contains("event: joined")
        } else {
            text.contains("\r\n\r\n") && !text.ends_with("\r\n\r\n")
        };
        if done {
            return text;
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return text,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

both_backends! {
    async fn the_backend_identifies_refuses_rewrites_and_answers(backend: &str) {
        need!(Python);
        let api = Backend::start(common::free_port(), &[]);
        let flags = hook_flags(&api);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let server = Server::start(backend, &flags);

        // Who it is comes from the cookie; a refusal is read by the client with its reason.
        assert_eq!(open(&server, "/ws", None).await.err().unwrap(), "401 log in first");
        assert_eq!(
            open(&server, "/ws", Some("banned")).await.err().unwrap(),
            "403 banned user"
        );
        // The connect hook's `data` reaches the client, and its rooms are joined.
        let mut ann = open(&server, "/ws?autojoin=lobby", Some("ann")).await.unwrap();
        let authed = recv(&mut ann).await;
        assert_eq!(authed["op"], "authed");
        assert_eq!(authed["sub"], "ann");
        assert_eq!(authed["data"]["hello"], "ann");
        let client = authed["data"]["client"].as_str().unwrap();
        assert!(client.starts_with("127.0.0.1:"), "the client's address and port: {client}");
        let joined = recv(&mut ann).await;
        assert_eq!((joined["op"].as_str(), joined["room"].as_str()), (Some("joined"), Some("lobby")));

        // Joins: the backend refuses with its reason, naming the room; admin may.
        let refused = join(&mut ann, "private-x").await;
        assert_eq!(refused["code"], "forbidden", "{refused}");
        assert_eq!(refused["msg"], "members only");
        assert_eq!(refused["room"], "private-x");
        let mut admin = login(&server, "/ws", "admin").await;
        assert_eq!(join(&mut admin, "private-x").await["op"], "joined");

        // Publishes: rewritten (and the ack's seq is the published one), refused (the
        // publisher is told; nobody gets it), or as sent, in the order sent.
        let mut bob = login(&server, "/ws", "bob").await;
        assert_eq!(join(&mut bob, "lobby").await["op"], "joined");
        send(&mut ann, json!({"op": "pub", "room": "lobby", "data": {"shout": "hi"}, "id": 1})).await;
        let ack = recv(&mut ann).await;
        let got = recv(&mut bob).await;
        assert_eq!(got["data"], json!({"shout": "HI", "by": "ann"}), "{got}");
        assert_eq!((ack["op"].as_str(), ack["id"].as_u64()), (Some("ack"), Some(1)));
        assert_eq!(ack["seq"], got["seq"], "the acked seq is the one published");
        assert_eq!(recv(&mut ann).await["data"]["shout"], "HI", "ann is a member too");
        send(&mut ann, json!({"op": "pub", "room": "lobby", "data": "a badword", "id": 2})).await;
        let no = recv(&mut ann).await;
        assert_eq!((no["code"].as_str(), no["id"].as_u64()), (Some("forbidden"), Some(2)), "{no}");
        assert_eq!(no["msg"], "watch your language");
        for n in 0..20 {
            send(&mut ann, json!({"op": "pub", "room": "lobby", "data": {"n": n}})).await;
        }
        for n in 0..20 {
            let m = recv(&mut bob).await;
            assert_eq!(m["data"], json!({"n": n}), "in the order sent, the refused one never came");
            assert_eq!(recv(&mut ann).await["data"], json!({"n": n}), "ann is a member too");
        }

        // RPC.
        send(&mut ann, json!({"op": "rpc", "method": "add", "data": {"a": 1, "b": 2}, "id": 7})).await;
        assert_eq!(recv(&mut ann).await, json!({"op": "rpc_result", "id": 7, "data": 3}));
        send(&mut ann, json!({"op": "rpc", "method": "echo", "data": [1, "x"], "id": 8})).await;
        let echo = recv(&mut ann).await;
        assert_eq!(echo["data"], json!({"data": [1, "x"], "user": "ann"}));
        send(&mut ann, json!({"op": "rpc", "method": "fail", "id": 9})).await;
        let fail = recv(&mut ann).await;
        assert_eq!((fail["code"].as_str(), fail["status"].as_u64()), (Some("rpc_error"), Some(418)));
        assert_eq!((fail["msg"].as_str(), fail["id"].as_u64()), (Some("teapot"), Some(9)));
        send(&mut ann, json!({"op": "rpc", "data": 1, "id": 10})).await;
        assert_eq!(recv(&mut ann).await["code"], "missing_field");

        // /sse goes through the same hooks.
        assert!(sse(&server, "room=lobby", None).starts_with("HTTP/1.1 401"));
        let stream = sse(&server, "room=lobby", Some("carol"));
        assert!(stream.starts_with("HTTP/1.1 200"), "{stream}");
        assert!(stream.contains("event: joined"), "{stream}");

        // Ten tabs of one user at once: one question to the backend, then cached.
        let before = api.stats()["connect"].as_u64().unwrap();
        let tabs = (0..10).map(|_| login(&server, "/ws", "cached-dan"));
        let tabs = futures_util::future::join_all(tabs).await;
        assert_eq!(tabs.len(), 10);
        let asked = api.stats()["connect"].as_u64().unwrap() - before;
        assert_eq!(asked, 1, "ten identical connects in flight or cached: one call");
        let metrics = server.get("/metrics").1;
        let coalesced = metric(&metrics, "roomcast_hook_coalesced_total{kind=\"connect\"}");
        let cached = metric(&metrics, "roomcast_hook_cached_total{kind=\"connect\"}");
        assert_eq!(coalesced + cached, 9, "{metrics}");
        assert!(metric(&metrics, "roomcast_hook_calls_total{kind=\"join\",outcome=\"refused\"}") >= 1);

        // A connection with an expiry is refreshed before it (30 s ahead of expire_at).
        let mut eve = login(&server, "/ws", "expiring-eve").await;
        let deadline = Instant::now() + 10 * SECOND;
        while api.stats()["refresh"].as_u64().unwrap() == 0 {
            assert!(Instant::now() < deadline, "no refresh call came");
            tokio::time::sleep(SECOND / 10).await;
        }
        assert_eq!(join(&mut eve, "lobby").await["op"], "joined", "still connected");
    }

    async fn while_the_backend_is_down_clients_are_told_and_nobody_else_notices(backend: &str) {
        need!(Python);
        let port = common::free_port();
        let mut api = Backend::start(port, &[]);
        let mut flags = hook_flags(&api);
        flags.extend(["--hook-timeout".into(), "700ms".into()]);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let server = Server::start(backend, &flags);
        let mut ann = login(&server, "/ws", "ann").await;
        assert_eq!(join(&mut ann, "lobby").await["op"], "joined");
        // A bystander on /echo: its messages never go to the backend.
        let mut echo = open(&server, "/echo", Some("zed")).await.unwrap();

        api.kill();
        let started = Instant::now();
        let probes = async {
            let mut worst = Duration::ZERO;
            while started.elapsed() < 3 * SECOND {
                let t = Instant::now();
                echo.send(Message::Text("still here".into())).await.unwrap();
                let back = tokio::time::timeout(5 * SECOND, common::next_data(&mut echo)).await;
                assert!(matches!(back, Ok(Some(Ok(Message::Text(_))))), "{back:?}");
                worst = worst.max(t.elapsed());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            worst
        };
        let asks = async {
            let refused = open(&server, "/ws", Some("bob")).await.err().unwrap();
            assert_eq!(refused, "503 hook_unavailable");
            let j = join(&mut ann, "kitchen").await;
            assert_eq!((j["code"].as_str(), j["room"].as_str()), (Some("unavailable"), Some("kitchen")), "{j}");
            send(&mut ann, json!({"op": "pub", "room": "lobby", "data": 1, "id": 5})).await;
            let p = recv(&mut ann).await;
            assert_eq!((p["code"].as_str(), p["id"].as_u64()), (Some("unavailable"), Some(5)), "{p}");
            send(&mut ann, json!({"op": "rpc", "method": "add", "data": {"a": 1, "b": 1}, "id": 6})).await;
            assert_eq!(recv(&mut ann).await["code"], "unavailable");
        };
        let (worst, ()) = tokio::join!(probes, asks);
        assert!(
            worst < SECOND,
            "the bystander waited {worst:?} for an echo while hook calls timed out"
        );
        let metrics = server.get("/metrics").1;
        assert!(metric(&metrics, "roomcast_hook_calls_total{kind=\"connect\",outcome=\"unavailable\"}") >= 1);

        // Back: everything as before.
        let api = Backend::start(port, &[]);
        let mut bob = login(&server, "/ws", "bob").await;
        assert_eq!(join(&mut bob, "kitchen").await["op"], "joined");
        assert!(api.stats()["join"].as_u64().unwrap() >= 1);
    }

    async fn fail_open_lets_joins_and_publishes_through_but_never_a_connect(backend: &str) {
        // Nothing listens on the hooks' port: every call fails at once.
        let dead = format!("http://127.0.0.1:{}/hook", common::free_port());
        let server = Server::start(
            backend,
            &[
                "--jwt-secret", "s3cret",
                "--hook-connect", &dead,
                "--hook-join", &dead,
                "--hook-publish", &dead,
                "--hook-fail-open",
            ],
        );
        // A token identifies the user without the connect hook.
        let exp = roomcast::app::auth::unix_now() + 600;
        let claims = json!({"sub": "ann", "exp": exp, "join": ["*"], "pub": ["*"]});
        let key = jsonwebtoken::EncodingKey::from_secret(b"s3cret");
        let token = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap();
        let mut ann = tokio_tungstenite::connect_async(server.url(&format!("/ws?token={token}")))
            .await
            .unwrap()
            .0;
        assert_eq!(join(&mut ann, "lobby").await["op"], "joined");
        send(&mut ann, json!({"op": "pub", "room": "lobby", "data": 1, "id": 1})).await;
        assert_eq!(recv(&mut ann).await["op"], "ack");
        assert_eq!(open(&server, "/ws", Some("bob")).await.err().unwrap(), "503 hook_unavailable");
        let metrics = server.get("/metrics").1;
        assert_eq!(metric(&metrics, "roomcast_hook_calls_total{kind=\"join\",outcome=\"fail_open\"}"), 1);
    }
}

/// A sample's value in a `/metrics` text (0 when absent).
fn metric(text: &str, sample: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}
