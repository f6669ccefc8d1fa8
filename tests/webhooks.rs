//! Webhooks (issue 28) against a real receiver: tests/clients/webhook_receiver.py (Python
//! standard library) checks the signature itself, refuses replays, de-duplicates by event
//! id and writes what it accepted to a JSONL file that these tests read.
//!
//! - every event kind, with the user a JWT gave, signed, in order per room, on both
//!   backends; a replayed, a forged and a stale request refused by the receiver;
//! - the receiver answering 500 (after taking the events) and then down for 10 s: every
//!   event arrives, none twice once de-duplicated by id;
//! - two nodes on one Redis: a member hopping A→B→A makes the room occupied and vacated
//!   once each, and a room whose last member sat on a node killed with SIGKILL is vacated
//!   within the stated bound.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::redis::Redis;
use common::{connect, recv_json, send_json as send, Server, Ws};
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "webhook-test-secret";
const JWT: &str = "webhook-jwt-secret";
const WAIT: Duration = Duration::from_secs(5);
/// The occupancy grace (src/hooks/occupancy.rs, the README).
const GRACE: Duration = Duration::from_secs(2);
/// A dead node's rooms are vacated within the lease's TTL and a sweep period.
const DEATH_BOUND: Duration = Duration::from_secs(12);

/// The receiver process, its files, and its port (kept across a restart).
struct Receiver {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl Receiver {
    fn start(name: &str) -> Receiver {
        let dir = std::env::temp_dir().join(format!("roomcast-wh-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = Receiver {
            child: None,
            port: 0,
            dir,
        };
        r.launch();
        r
    }

    fn launch(&mut self) {
        let script = common::clients_dir().join("webhook_receiver.py");
        let mut child = Command::new(common::python())
            .arg(script)
            .args(["--port", &self.port.to_string(), "--secret", SECRET])
            .arg("--out")
            .arg(self.file("events.jsonl"))
            .arg("--control")
            .arg(self.file("control"))
            .arg("--requests")
            .arg(self.file("requests.jsonl"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("python");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: Value = serde_json::from_str(&line).expect("the receiver's port");
        self.port = v["port"].as_u64().unwrap() as u16;
        self.child = Some(child);
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// Answers 500 (after recording) while on.
    fn fail(&self, on: bool) {
        std::fs::write(self.file("control"), if on { "500" } else { "" }).unwrap();
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Every event accepted so far, in the order it was.
    fn events(&self) -> Vec<Value> {
        read_lines(&self.file("events.jsonl"))
    }

    /// Waits until `done` holds of the events (or fails after `wait`, showing them).
    fn wait_for(&self, wait: Duration, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + wait;
        loop {
            let events = self.events();
            if done(&events) {
                return events;
            }
            assert!(
                Instant::now() < deadline,
                "never saw {what}; the receiver has:\n{}",
                events
                    .iter()
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// POSTs `body` signed with `sig` (as it is, or none) straight to the receiver: its
    /// status.
    fn post(&self, sig: Option<&str>, body: &str) -> u16 {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let sig = sig.map_or(String::new(), |s| format!("X-Roomcast-Signature: {s}\r\n"));
        let req = format!(
            "POST /hook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{sig}\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn token(user: &str) -> String {
    let exp = roomcast::app::auth::unix_now() + 3600;
    let claims = json!({"sub": user, "exp": exp, "join": ["wh-*"], "pub": ["wh-*"]});
    let key = jsonwebtoken::EncodingKey::from_secret(JWT.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

/// The events about `room`, in the order the receiver took them.
fn of_room<'a>(events: &'a [Value], room: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["room"] == room).collect()
}

fn count(events: &[Value], kind: &str, room: &str) -> usize {
    events
        .iter()
        .filter(|e| e["kind"] == kind && e["room"] == room)
        .count()
}

/// Joins `room`; the `joined` op.
async fn join(ws: &mut Ws, room: &str) -> Value {
    send(ws, json!({"op": "join", "room": room})).await;
    loop {
        let v = recv_json(ws, WAIT).await;
        if v["op"] == "joined" {
            return v;
        }
        assert_ne!(v["op"], "error", "{v}");
    }
}

async fn leave(ws: &mut Ws, room: &str) {
    send(ws, json!({"op": "leave", "room": room})).await;
    loop {
        let v = recv_json(ws, WAIT).await;
        if v["op"] == "left" {
            return;
        }
        assert_ne!(v["op"], "error", "{v}");
    }
}

/// Publishes `data` to `room` and waits for its ack: the seq.
async fn publish(ws: &mut Ws, room: &str, data: &Value, id: u64) -> u64 {
    send(
        ws,
        json!({"op": "pub", "room": room, "data": data, "id": id}),
    )
    .await;
    loop {
        let v = recv_json(ws, WAIT).await;
        if v["op"] == "ack" && v["id"] == id {
            return v["seq"].as_u64().unwrap();
        }
        assert_ne!(v["op"], "error", "{v}");
    }
}

/// `/stats`' webhook figures once `done` holds of them (they are counted when the
/// receiver's answer is in, a moment after it wrote the events down).
fn webhook_stats(server: &Server, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let w = server.stats()["hooks"]["webhook"].clone();
        if done(&w) {
            return w;
        }
        assert!(Instant::now() < deadline, "webhook figures: {w}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn hmac_hex(secret: &str, t: u64, body: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, format!("{t}.{body}").as_bytes());
    tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Every kind of event, signed, with the user the JWT gave, in order per room; replays
/// refused by the receiver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_events_carry_the_user_in_order_per_room() {
    need!(Python);
    for backend in ["uring", "epoll"] {
        let rx = Receiver::start(&format!("order-{backend}"));
        let url = rx.url();
        let server = Server::start(
            backend,
            &[
                "--webhook",
                &url,
                "--webhook-secret",
                SECRET,
                "--jwt-secret",
                JWT,
                "--webhook-batch",
                "7",
            ],
        );
        let room = format!("wh-order-{backend}");
        let mut ana = connect(&server, &format!("/ws?token={}", token("ana"))).await;
        let joined = join(&mut ana, &room).await;
        let epoch = joined["epoch"].as_str().unwrap().to_owned();
        let mut published = Vec::new();
        for i in 0..20u64 {
            let data = json!({"i": i, "text": "a \"quoted\" é", "list": [1, 2.5, null]});
            let seq = publish(&mut ana, &room, &data, i + 1).await;
            published.push((seq, data));
        }
        leave(&mut ana, &room).await;
        ana.send(Message::Close(Some(CloseFrame {
            code: CloseCode::Library(4001),
            reason: "bye".into(),
        })))
        .await
        .unwrap();
        while let Some(Ok(_)) = common::next_data(&mut ana).await {}
        // Dropped without a close frame: 1006.
        let bob = connect(&server, &format!("/ws?token={}", token("bob"))).await;
        drop(bob);

        let closed = |e: &Value, user: &str| e["kind"] == "connection_closed" && e["user"] == user;
        let events = rx.wait_for(WAIT * 2, "both connections closed", |evs| {
            evs.iter().any(|e| closed(e, "ana")) && evs.iter().any(|e| closed(e, "bob"))
        });
        let ana_closed = events.iter().find(|e| closed(e, "ana")).unwrap();
        assert_eq!(ana_closed["code"], 4001, "{ana_closed}");
        let bob_closed = events.iter().find(|e| closed(e, "bob")).unwrap();
        assert_eq!(bob_closed["code"], 1006, "{bob_closed}");

        let ours = of_room(&events, &room);
        let kinds: Vec<&str> = ours.iter().map(|e| e["kind"].as_str().unwrap()).collect();
        let mut want = vec!["room_occupied", "member_joined"];
        want.extend(std::iter::repeat_n("client_publish", 20));
        want.extend(["member_left", "room_vacated"]);
        assert_eq!(kinds, want, "{ours:#?}");
        let publishes: Vec<&&Value> = ours
            .iter()
            .filter(|e| e["kind"] == "client_publish")
            .collect();
        for (e, (seq, data)) in publishes.iter().zip(&published) {
            assert_eq!(e["seq"], *seq, "{e}");
            assert_eq!(e["epoch"], epoch.as_str(), "{e}");
            assert_eq!(e["data"], *data, "{e}");
            assert_eq!(e["user"], "ana", "{e}");
        }
        for e in &ours {
            assert!(e["time"].as_u64().unwrap() > 1_600_000_000_000, "{e}");
            assert!(e["id"].as_str().is_some_and(|id| !id.is_empty()), "{e}");
            if e["kind"] != "room_occupied" && e["kind"] != "room_vacated" {
                assert_eq!(e["user"], "ana", "{e}");
            }
        }
        let ids: std::collections::HashSet<&str> =
            events.iter().map(|e| e["id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), events.len());

        // The receiver refuses a request it has seen, a forged one and a stale one.
        let requests = read_lines(&rx.file("requests.jsonl"));
        assert!(requests.len() >= 3, "batches of 7: {}", requests.len());
        let first = &requests[0];
        let (sig, body) = (
            first["sig"].as_str().unwrap(),
            first["body"].as_str().unwrap(),
        );
        assert_eq!(rx.post(Some(sig), body), 400, "a replay");
        assert_eq!(rx.post(None, body), 401, "unsigned");
        let t = roomcast::app::auth::unix_now();
        let forged = format!("t={t},v1={}", hmac_hex("not-the-secret", t, body));
        assert_eq!(rx.post(Some(&forged), body), 401, "forged");
        let stale = format!("t={},v1={}", t - 400, hmac_hex(SECRET, t - 400, body));
        assert_eq!(rx.post(Some(&stale), body), 400, "stale");
        // The test's own HMAC is the receiver's: a fresh one passes.
        let fresh = r#"{"events":[]}"#;
        let good = format!("t={t},v1={}", hmac_hex(SECRET, t, fresh));
        assert_eq!(rx.post(Some(&good), fresh), 200, "fresh");

        let n = events.len() as u64;
        let w = webhook_stats(&server, |w| w["sent"].as_u64() >= Some(n));
        assert_eq!(w["dropped"], 0, "{w}");
        assert_eq!(w["backlog"], 0, "{w}");
    }
}

/// The receiver takes a batch but answers 500, then is down for 10 s: every event
/// arrives, and none twice after de-duplication by id (a retry carries the same ids).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_away_then_back_loses_nothing_and_doubles_nothing() {
    need!(Python);
    let mut rx = Receiver::start("away");
    let url = rx.url();
    let server = Server::start(
        "uring",
        &[
            "--webhook",
            &url,
            "--webhook-secret",
            SECRET,
            "--webhook-events",
            "client_publish",
        ],
    );
    let room = "wh-away";
    let mut ws = connect(&server, "/ws").await;
    join(&mut ws, room).await;
    let mut seqs = Vec::new();
    let mut n = 0;
    let mut pub_one = async |ws: &mut Ws| {
        n += 1;
        publish(ws, room, &json!({"n": n}), n).await
    };

    // Taken, but answered 500: the batch comes again, with the same ids.
    rx.fail(true);
    for _ in 0..5 {
        seqs.push(pub_one(&mut ws).await);
    }
    rx.wait_for(WAIT, "the first batch", |evs| evs.len() >= 5);
    tokio::time::sleep(Duration::from_millis(400)).await;
    rx.fail(false);
    for _ in 0..5 {
        seqs.push(pub_one(&mut ws).await);
    }
    rx.wait_for(WAIT, "ten events", |evs| evs.len() >= 10);

    // Down for 10 s while the room goes on.
    rx.kill();
    let down = Instant::now();
    while down.elapsed() < Duration::from_secs(10) {
        seqs.push(pub_one(&mut ws).await);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let stats = server.stats();
    assert!(
        stats["hooks"]["webhook"]["backlog"].as_u64().unwrap() > 0,
        "{}",
        stats["hooks"]
    );
    rx.launch();
    for _ in 0..5 {
        seqs.push(pub_one(&mut ws).await);
    }
    let n = seqs.len();
    // The backoff has grown to several seconds while the receiver was away.
    let events = rx.wait_for(Duration::from_secs(20), "every event", |evs| evs.len() >= n);
    let got: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(got, seqs, "every publish once, in order");
    let w = webhook_stats(&server, |w| w["sent"].as_u64() >= Some(n as u64));
    assert!(w["failures"].as_u64().unwrap() >= 2, "{w}");
    assert!(w["retried"].as_u64().unwrap() >= 5, "{w}");
    assert_eq!(w["dropped"], 0, "{w}");

    // A receiver that takes at most 1,500 bytes a POST (a proxy's body limit): a batch
    // too large is split and every event still arrives once, in order; one event too
    // large alone is dropped, counted, and does not hold up the ones after it.
    let failures = w["failures"].as_u64().unwrap();
    std::fs::write(rx.file("control"), "max:1500").unwrap();
    let pad = "x".repeat(300);
    let first = 1000;
    for id in first..first + 8 {
        send(
            &mut ws,
            json!({"op": "pub", "room": room, "data": {"pad": pad}, "id": id}),
        )
        .await;
    }
    let mut acked = 0;
    while acked < 8 {
        let v = recv_json(&mut ws, WAIT).await;
        if v["op"] == "ack" {
            seqs.push(v["seq"].as_u64().unwrap());
            acked += 1;
        }
    }
    let big = "y".repeat(2000);
    publish(&mut ws, room, &json!({"pad": big}), first + 8).await;
    seqs.push(pub_one(&mut ws).await);
    let n = seqs.len();
    let events = rx.wait_for(WAIT, "the padded events", |evs| evs.len() >= n);
    let got: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(got, seqs, "all but the one too large, once, in order");
    let w = webhook_stats(&server, |w| w["dropped"].as_u64() >= Some(1));
    assert_eq!(w["dropped"], 1, "{w}");
    assert!(
        w["failures"].as_u64().unwrap() > failures + 1,
        "a batch was split: {w}"
    );
}

/// Two nodes on one Redis: occupied and vacated once each for a member hopping A→B→A;
/// a room whose last member was on a node killed with SIGKILL is vacated within the
/// lease's bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_occupancy_once_and_vacated_when_a_node_dies() {
    need!(Python, Redis);
    let redis = Redis::start_with(false);
    let rx = Receiver::start("nodes");
    let (url, r) = (rx.url(), redis.url());
    let flags = |id: &'static str| {
        vec![
            "--node-id".to_owned(),
            id.to_owned(),
            "--redis".to_owned(),
            r.clone(),
            "--webhook".to_owned(),
            url.clone(),
            "--webhook-secret".to_owned(),
            SECRET.to_owned(),
            "--webhook-events".to_owned(),
            "room_occupied,room_vacated".to_owned(),
        ]
    };
    let a_flags = flags("wh-a");
    let b_flags = flags("wh-b");
    let a = Server::start(
        "epoll",
        &a_flags.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let mut b = Server::start(
        "uring",
        &b_flags.iter().map(String::as_str).collect::<Vec<_>>(),
    );

    let (hop, dead) = ("wh-hop", "wh-dead");
    let mut on_a = connect(&a, "/ws").await;
    join(&mut on_a, hop).await;
    let mut on_b = connect(&b, "/ws").await;
    join(&mut on_b, dead).await;
    rx.wait_for(WAIT, "both rooms occupied", |evs| {
        count(evs, "room_occupied", hop) == 1 && count(evs, "room_occupied", dead) == 1
    });

    // The member hops A → B → A: leave on one, join on the other.
    let mut hop_b = connect(&b, "/ws").await;
    leave(&mut on_a, hop).await;
    join(&mut hop_b, hop).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    leave(&mut hop_b, hop).await;
    join(&mut on_a, hop).await;
    drop(hop_b);

    // B dies with the last member of `dead`.
    tokio::time::sleep(Duration::from_millis(200)).await;
    b.signal("KILL");
    let killed = Instant::now();
    b.wait_exit(WAIT);
    let events = rx.wait_for(
        DEATH_BOUND + Duration::from_secs(4),
        "the dead node's room vacated",
        |evs| count(evs, "room_vacated", dead) == 1,
    );
    let took = killed.elapsed();
    assert!(
        took <= DEATH_BOUND + Duration::from_secs(1),
        "vacated {took:?} after the kill"
    );
    // The hop flipped nothing, and B's death did not take the room from A.
    assert_eq!(count(&events, "room_occupied", hop), 1, "{events:#?}");
    assert_eq!(count(&events, "room_vacated", hop), 0, "{events:#?}");

    // The last member leaves for good: vacated once, after the grace.
    let left = Instant::now();
    leave(&mut on_a, hop).await;
    rx.wait_for(GRACE + WAIT, "the room vacated", |evs| {
        count(evs, "room_vacated", hop) == 1
    });
    assert!(left.elapsed() >= GRACE, "vacated before the grace");
    // And nothing more comes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all = rx.events();
    for room in [hop, dead] {
        assert_eq!(count(&all, "room_occupied", room), 1, "{all:#?}");
        assert_eq!(count(&all, "room_vacated", room), 1, "{all:#?}");
    }
    drop(a);
}
