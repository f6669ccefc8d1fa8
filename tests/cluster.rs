//! Several roomcast nodes behind one (or two) real `redis-server` processes (issue 15):
//! one order per room across nodes, resume on another node, Redis killed and restarted
//! mid-broadcast, rooms spread over two Redis servers, presence that forgets a node killed
//! with SIGKILL, and the server API across nodes. Every node is the real binary; nodes of
//! one test mix the two backends, so each path runs on both without doubling the time.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::redis::Redis;
use common::{connect, recv_json, send_json as send, Server, Ws};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "cluster-key";
const SECRET: &str = "cluster-secret";
const WAIT: Duration = Duration::from_secs(5);

/// A node on `redis` (several: rooms spread over them) with the API on.
fn node(backend: &str, id: &str, redis: &[&Redis], extra: &[&str]) -> Server {
    let mut args = vec!["--node-id", id, "--api-key", KEY];
    let urls: Vec<String> = redis.iter().map(|r| r.url()).collect();
    for u in &urls {
        args.extend(["--redis", u.as_str()]);
    }
    args.extend(extra);
    Server::start(backend, &args)
}

async fn recv(ws: &mut Ws) -> Value {
    recv_json(ws, WAIT).await
}

/// Joins `room` (resuming after `since` if given) and returns the `joined` op.
async fn join(ws: &mut Ws, room: &str, since: Option<&Value>) -> Value {
    let mut op = json!({"op": "join", "room": room});
    if let Some(j) = since {
        op["since"] = j["seq"].clone();
        op["epoch"] = j["epoch"].clone();
    }
    send(ws, op).await;
    loop {
        let m = recv(ws).await;
        // Presence events (`--presence-events`) may come first.
        if m["op"] != "presence" {
            assert_eq!(m["op"], "joined", "{m}");
            return m;
        }
    }
}

/// Reads `room`'s messages until `n` have come; returns `(seq, data)` in arrival order.
async fn collect(ws: &mut Ws, n: usize) -> Vec<(u64, Value)> {
    let mut got = Vec::new();
    while got.len() < n {
        let m = recv(ws).await;
        if m["op"] == "msg" {
            got.push((m["seq"].as_u64().unwrap(), m["data"].clone()));
        } else {
            assert_ne!(m["op"], "gap", "a gap: {m}");
        }
    }
    got
}

fn http(server: &Server, method: &str, path: &str, key: Option<&str>, body: &str) -> (u16, Value) {
    http_at(server.addr, method, path, key, body)
}

fn http_at(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: &str,
) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let auth = key.map_or(String::new(), |k| format!("Authorization: apikey {k}\r\n"));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn api(server: &Server, method: &str, path: &str, body: Value) -> (u16, Value) {
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    http(server, method, path, Some(KEY), &body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_five_publishers_one_sequence() {
    need!(Redis);
    let redis = Redis::start();
    let nodes = [
        node("uring", "n1", &[&redis], &[]),
        node("epoll", "n2", &[&redis], &[]),
        node("uring", "n3", &[&redis], &[]),
    ];
    // Two members on every node.
    let mut members = Vec::new();
    for n in &nodes {
        for _ in 0..2 {
            let mut ws = connect(n, "/ws").await;
            let j = join(&mut ws, "order", None).await;
            assert_eq!(j["seq"], 0, "a new room: {j}");
            members.push(ws);
        }
    }
    const EACH: usize = 60;
    let mut publishers = Vec::new();
    for p in 0..5 {
        let ws = connect(&nodes[p % 3], "/ws").await;
        publishers.push(tokio::spawn(async move {
            let mut ws = ws;
            for i in 0..EACH {
                let data = json!({"p": p, "i": i});
                send(
                    &mut ws,
                    json!({"op": "pub", "room": "order", "data": data, "id": i}),
                )
                .await;
            }
            let mut acked = Vec::new();
            while acked.len() < EACH {
                let m = recv(&mut ws).await;
                assert_eq!(m["op"], "ack", "{m}");
                acked.push(m["seq"].as_u64().unwrap());
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for p in publishers {
        acked.extend(p.await.unwrap());
    }
    acked.sort_unstable();
    let total = 5 * EACH;
    assert_eq!(
        acked,
        (1..=total as u64).collect::<Vec<_>>(),
        "every publish got its own seq"
    );
    let mut seen = Vec::new();
    for ws in &mut members {
        seen.push(collect(ws, total).await);
    }
    let first = &seen[0];
    let seqs: Vec<u64> = first.iter().map(|m| m.0).collect();
    assert_eq!(
        seqs,
        (1..=total as u64).collect::<Vec<_>>(),
        "gap-free, in order"
    );
    for (i, other) in seen.iter().enumerate() {
        assert_eq!(other, first, "member {i} saw another sequence");
    }
    // Each publisher's own messages keep their order.
    for p in 0..5 {
        let mine: Vec<u64> = first
            .iter()
            .filter(|m| m.1["p"] == p)
            .map(|m| m.1["i"].as_u64().unwrap())
            .collect();
        assert_eq!(mine, (0..EACH as u64).collect::<Vec<_>>());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_resumes_on_another_node_with_exactly_what_it_missed() {
    need!(Redis);
    let redis = Redis::start();
    let a = node("epoll", "a", &[&redis], &["--history-size", "500"]);
    let b = node("uring", "b", &[&redis], &["--history-size", "500"]);
    // A member on b keeps the room alive there (its history is b's own).
    let mut stay = connect(&b, "/ws").await;
    join(&mut stay, "resume", None).await;
    let mut m = connect(&a, "/ws").await;
    let joined = join(&mut m, "resume", None).await;
    let mut publisher = connect(&b, "/ws").await;
    for i in 0..10 {
        send(
            &mut publisher,
            json!({"op": "pub", "room": "resume", "data": i}),
        )
        .await;
    }
    let before = collect(&mut m, 10).await;
    drop(m);
    // Missed while away: published on b, and through the API on a.
    for i in 10..20 {
        send(
            &mut publisher,
            json!({"op": "pub", "room": "resume", "data": i}),
        )
        .await;
    }
    for i in 20..25 {
        let (status, r) = api(
            &a,
            "POST",
            "/api/publish",
            json!({"room": "resume", "data": i}),
        );
        assert_eq!(
            (status, r["epoch"].clone()),
            (200, joined["epoch"].clone()),
            "{r}"
        );
    }
    // The room's one order, as a member that never left saw it.
    let all = collect(&mut stay, 25).await;
    assert_eq!(all[..10], before[..]);
    // Back on the third node, which has never seen the room: served from Redis.
    let c = node("uring", "c", &[&redis], &["--history-size", "500"]);
    let last = json!({"seq": before.last().unwrap().0, "epoch": joined["epoch"]});
    let mut back = connect(&c, "/ws").await;
    let rejoined = join(&mut back, "resume", Some(&last)).await;
    assert_eq!(rejoined["recovered"], true, "{rejoined}");
    assert_eq!(rejoined["epoch"], joined["epoch"]);
    let replay = collect(&mut back, 15).await;
    assert_eq!(
        replay,
        all[10..],
        "exactly what it missed, in the room's order"
    );
    // Then live, once.
    send(
        &mut publisher,
        json!({"op": "pub", "room": "resume", "data": "live"}),
    )
    .await;
    let live = collect(&mut back, 1).await;
    assert_eq!(live[0], (26, json!("live")));
    // An event stream on c resumes from the same position (its Last-Event-ID).
    let cursor = format!(
        "resume~{}~{}",
        joined["epoch"].as_str().unwrap(),
        last["seq"]
    );
    let events = sse_msgs(&c, &format!("/sse?room=resume&lastEventId={cursor}"), 16);
    assert_eq!(events[..15], all[10..]);
    assert_eq!(events[15], live[0]);
    // And on b (which held the room all along), a resume is served from its own history.
    let mut again = connect(&b, "/ws").await;
    let r = join(&mut again, "resume", Some(&last)).await;
    assert_eq!(r["recovered"], true);
    assert_eq!(collect(&mut again, 16).await.last().unwrap().0, 26);
}

/// Publishes the next id to `outage` and waits for its answer: acked (its seq) or
/// refused as unavailable (None).
async fn publish(ws: &mut Ws, id: &mut u64) -> (u64, Option<u64>) {
    *id += 1;
    let this = *id;
    send(
        ws,
        json!({"op": "pub", "room": "outage", "data": this, "id": this}),
    )
    .await;
    loop {
        let m = recv(ws).await;
        match m["op"].as_str() {
            Some("ack") => return (this, Some(m["seq"].as_u64().unwrap())),
            Some("error") => {
                // `outcome_unknown`: sent just as Redis died (it cannot have run it).
                let code = m["code"].as_str().unwrap_or("");
                assert!(["unavailable", "outcome_unknown"].contains(&code), "{m}");
                assert_eq!(m["id"].as_u64(), Some(this), "{m}");
                return (this, None);
            }
            _ => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_broadcast_then_back() {
    need!(Redis);
    let mut redis = Redis::start();
    let a = node("uring", "a", &[&redis], &["--history-size", "1000"]);
    let b = node("epoll", "b", &[&redis], &["--history-size", "1000"]);
    let mut on_b = connect(&b, "/ws").await;
    let joined = join(&mut on_b, "outage", None).await;
    let mut publisher = connect(&a, "/ws").await;
    join(&mut publisher, "outage", None).await;
    let mut id = 0;
    let mut ok = BTreeMap::new();
    let mut refused = 0;
    // Publish and wait for each answer: acked (seq) or refused (unavailable).
    for _ in 0..30 {
        let (id, seq) = publish(&mut publisher, &mut id).await;
        ok.insert(id, seq.unwrap());
    }
    redis.kill();
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_millis(600) {
        match publish(&mut publisher, &mut id).await {
            (_, None) => refused += 1,
            (id, Some(seq)) => panic!("publish {id} acked as {seq} while Redis was down"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused > 5, "publishes during the outage are refused");
    // A room new to the node cannot be joined while its Redis is down: said, not hung.
    let mut newcomer = connect(&b, "/ws").await;
    send(&mut newcomer, json!({"op": "join", "room": "outage-new"})).await;
    let refusal = recv(&mut newcomer).await;
    assert_eq!(
        (refusal["code"].as_str(), refusal["room"].as_str()),
        (Some("unavailable"), Some("outage-new")),
        "{refusal}"
    );
    let (status, body) = a.get("/healthz");
    assert_eq!(
        (status, body.trim()),
        (200, "degraded: the backplane cannot reach Redis")
    );
    let (status, r) = api(
        &a,
        "POST",
        "/api/publish",
        json!({"room": "outage", "data": 0}),
    );
    assert_eq!(
        (status, r["error"].as_str()),
        (503, Some("unavailable")),
        "{r}"
    );
    assert!(a.stats()["backplane"]["errors"].as_u64().unwrap() >= 1);

    redis.restart();
    let back = Instant::now();
    // Cross-node delivery resumes within 5 s of Redis being back.
    let resumed = loop {
        let (id, seq) = publish(&mut publisher, &mut id).await;
        if let Some(seq) = seq {
            ok.insert(id, seq);
            break back.elapsed();
        }
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "still refused 5 s after Redis returned"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for _ in 0..10 {
        let (id, seq) = publish(&mut publisher, &mut id).await;
        ok.insert(id, seq.expect("Redis is back"));
    }
    // The refused join can be made again now.
    assert_eq!(join(&mut newcomer, "outage-new", None).await["seq"], 0);
    let (status, body) = a.get("/healthz");
    assert_eq!((status, body.trim()), (200, "ok"));
    assert!(a.stats()["backplane"]["reconnects"].as_u64().unwrap() >= 1);
    let last = *ok.values().max().unwrap();
    assert_eq!(
        last as usize,
        ok.len(),
        "acked seqs are 1..=n: none lost, none doubled"
    );
    // The member on b saw every acked message (connections stayed up) within 5 s.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = Vec::new();
    while seen.last().map_or(0, |m: &(u64, Value)| m.0) < last {
        assert!(
            Instant::now() < deadline,
            "b stopped at {:?} of {last}",
            seen.last()
        );
        seen.extend(collect(&mut on_b, 1).await);
    }
    assert_eq!(
        seen.iter().map(|m| m.0).collect::<Vec<_>>(),
        (1..=last).collect::<Vec<_>>()
    );
    // And a member that resumes, on either node, misses nothing from before the outage.
    for n in [&a, &b] {
        let mut ws = connect(n, "/ws").await;
        let r = join(&mut ws, "outage", Some(&joined)).await;
        assert_eq!(r["recovered"], true, "{r}");
        let replay = collect(&mut ws, last as usize).await;
        assert_eq!(replay, seen);
    }
    assert!(resumed < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_spread_over_two_redis_servers_keep_one_order_each() {
    need!(Redis);
    let (r1, r2) = (Redis::start(), Redis::start());
    let a = node("uring", "a", &[&r1, &r2], &[]);
    let b = node("epoll", "b", &[&r1, &r2], &[]);
    const ROOMS: usize = 12;
    const EACH: usize = 20;
    let mut members = Vec::new();
    for n in [&a, &b] {
        let mut ws = connect(n, "/ws").await;
        for r in 0..ROOMS {
            join(&mut ws, &format!("spread-{r}"), None).await;
        }
        members.push(ws);
    }
    let mut pubs = [connect(&a, "/ws").await, connect(&b, "/ws").await];
    for i in 0..EACH {
        for r in 0..ROOMS {
            let ws = &mut pubs[(i + r) % 2];
            send(
                ws,
                json!({"op": "pub", "room": format!("spread-{r}"), "data": i}),
            )
            .await;
        }
    }
    let mut per_member = Vec::new();
    for ws in &mut members {
        let mut rooms: BTreeMap<String, Vec<(u64, Value)>> = BTreeMap::new();
        let mut n = 0;
        while n < ROOMS * EACH {
            let m = recv(ws).await;
            if m["op"] == "msg" {
                let room = m["room"].as_str().unwrap().to_owned();
                rooms
                    .entry(room)
                    .or_default()
                    .push((m["seq"].as_u64().unwrap(), m["data"].clone()));
                n += 1;
            }
        }
        for (room, msgs) in &rooms {
            let seqs: Vec<u64> = msgs.iter().map(|m| m.0).collect();
            assert_eq!(seqs, (1..=EACH as u64).collect::<Vec<_>>(), "{room}");
        }
        per_member.push(rooms);
    }
    assert_eq!(
        per_member[0], per_member[1],
        "both nodes saw one order per room"
    );
    let (k1, k2) = (r1.count_keys("rc:*:s"), r2.count_keys("rc:*:s"));
    assert_eq!(k1 + k2, ROOMS, "every room has its stream on one server");
    assert!(
        k1 > 0 && k2 > 0,
        "rooms are spread over both: {k1} and {k2}"
    );
}

/// Reads `path` as an event stream until `n` `msg` events came: their (seq, data).
fn sse_msgs(server: &Server, path: &str, n: usize) -> Vec<(u64, Value)> {
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut text = String::new();
    let mut buf = [0u8; 16384];
    loop {
        let msgs: Vec<(u64, Value)> = text
            .split("\n\n")
            .filter(|block| block.lines().any(|l| l == "event: msg"))
            .filter_map(|block| block.lines().find_map(|l| l.strip_prefix("data: ")))
            .map(|d| serde_json::from_str::<Value>(d).unwrap())
            .map(|m| (m["seq"].as_u64().unwrap(), m["data"].clone()))
            .collect();
        if msgs.len() >= n {
            return msgs;
        }
        let got = s
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("the stream went quiet ({e}): {text}"));
        assert!(got > 0, "the stream ended: {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..got]));
    }
}

fn token(sub: &str) -> String {
    let exp = roomcast::app::auth::unix_now() + 600;
    let claims = json!({"sub": sub, "exp": exp, "join": ["*"], "pub": ["*"]});
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

async fn user(server: &Server, sub: &str) -> Ws {
    let url = format!("{}?token={}", server.url("/ws"), token(sub));
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

async fn presence(ws: &mut Ws, room: &str) -> Value {
    send(ws, json!({"op": "presence", "room": room})).await;
    loop {
        let m = recv(ws).await;
        // Not a join or leave event: the answer.
        if m["op"] == "presence" && m.get("event").is_none() {
            return m;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_rooms_and_the_api_span_the_cluster_and_forget_a_killed_node() {
    need!(Redis);
    let redis = Redis::start();
    let admin = format!("127.0.0.1:{}", common::free_port());
    let auth = ["--jwt-secret", SECRET, "--presence-events"];
    let with_admin = [&auth[..], &["--admin-listen", &admin]].concat();
    let a = node("uring", "a", &[&redis], &with_admin);
    let mut b = node("epoll", "b", &[&redis], &auth);
    let mut alice = user(&a, "alice").await;
    join(&mut alice, "hall", None).await;
    let event = |e: &str, u: &str| json!({"op": "presence", "room": "hall", "event": e, "user": u});
    assert_eq!(
        recv(&mut alice).await,
        event("join", "alice"),
        "the member's own join"
    );
    let mut bob = user(&b, "bob").await;
    join(&mut bob, "hall", None).await;
    assert_eq!(recv(&mut bob).await, event("join", "bob"));
    assert_eq!(
        recv(&mut alice).await,
        event("join", "bob"),
        "a join on the other node"
    );
    let mut bob2 = user(&b, "bob").await;
    join(&mut bob2, "hall", None).await;
    join(&mut bob2, "side", None).await;
    for ws in [&mut alice, &mut bob] {
        assert_eq!(recv(ws).await, event("join", "bob"));
    }
    let mut tess = user(&b, "tess").await;
    join(&mut tess, "hall", None).await;
    drop(tess);
    for e in ["join", "leave"] {
        assert_eq!(
            recv(&mut alice).await,
            event(e, "tess"),
            "joins and leaves reach the other node"
        );
    }

    let p = presence(&mut alice, "hall").await;
    assert_eq!(
        p,
        json!({"op": "presence", "room": "hall", "members": 3, "users": ["alice", "bob"]})
    );
    let (status, p) = api(&b, "GET", "/api/presence?room=hall", Value::Null);
    assert_eq!(
        (status, p),
        (
            200,
            json!({"room": "hall", "members": 3, "users": ["alice", "bob"]})
        )
    );
    let (_, rooms) = api(&a, "GET", "/api/rooms", Value::Null);
    assert_eq!(
        rooms,
        json!({"rooms": [{"room": "hall", "members": 3}, {"room": "side", "members": 1}]})
    );

    // Published through the API on one node, received on the other; history from Redis
    // on a node with no member in the room.
    let (status, r) = api(
        &a,
        "POST",
        "/api/broadcast",
        json!({"rooms": ["hall", "side"], "data": {"x": 1}}),
    );
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["results"][0]["seq"], 1);
    let m = collect(&mut bob, 1).await;
    assert_eq!(m[0], (1, json!({"x": 1})));
    let (status, h) = api(&a, "GET", "/api/history?room=side&since=0", Value::Null);
    assert_eq!(
        (status, h["complete"].clone(), h["messages"].clone()),
        (200, json!(true), json!([{"seq": 1, "data": {"x": 1}}])),
        "{h}"
    );
    let (status, _) = api(&a, "GET", "/api/history?room=never-used", Value::Null);
    assert_eq!(status, 404);
    assert_eq!(
        http(&a, "GET", "/api/rooms", None, "").0,
        401,
        "the key is still required"
    );
    // The admin port serves the API too.
    let admin = admin.parse().unwrap();
    let (status, p) = http_at(admin, "GET", "/api/presence?room=side", Some(KEY), "");
    assert_eq!((status, p["members"].clone()), (200, json!(1)), "{p}");
    let body = json!({"room": "side", "data": 2}).to_string();
    let (status, r) = http_at(admin, "POST", "/api/publish", Some(KEY), &body);
    assert_eq!((status, r["seq"].clone()), (200, json!(2)), "{r}");
    assert_eq!(http_at(admin, "GET", "/api/rooms", None, "").0, 401);

    // Disconnect reaches bob's connections on the other node, and counts them.
    let (status, d) = api(
        &a,
        "POST",
        "/api/disconnect",
        json!({"user": "bob", "code": 4001, "reason": "bye"}),
    );
    assert_eq!((status, d), (200, json!({"closed": 2})));
    for ws in [&mut bob, &mut bob2] {
        loop {
            match tokio::time::timeout(WAIT, futures_util::StreamExt::next(ws))
                .await
                .unwrap()
            {
                Some(Ok(Message::Close(Some(f)))) => {
                    assert_eq!((u16::from(f.code), &*f.reason), (4001, "bye"));
                    break;
                }
                Some(Ok(_)) => continue,
                other => panic!("{other:?}"),
            }
        }
    }
    let mut carol = user(&b, "carol").await;
    join(&mut carol, "hall", None).await;
    assert_eq!(
        presence(&mut alice, "hall").await["users"],
        json!(["alice", "carol"])
    );

    // A node killed with SIGKILL drops out of every count within 30 s.
    b.signal("KILL");
    assert!(b.wait_exit(WAIT).is_some());
    let killed = Instant::now();
    loop {
        let p = presence(&mut alice, "hall").await;
        if p["members"] == 1 {
            assert_eq!(p["users"], json!(["alice"]));
            break;
        }
        assert!(killed.elapsed() < Duration::from_secs(30), "{p}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, rooms) = api(&a, "GET", "/api/rooms", Value::Null);
    assert_eq!(rooms, json!({"rooms": [{"room": "hall", "members": 1}]}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_loses_its_subscription_catches_up_from_the_stream() {
    need!(Redis);
    let redis = Redis::start();
    let a = node("epoll", "a", &[&redis], &["--history-size", "1000"]);
    let b = node("uring", "b", &[&redis], &["--history-size", "1000"]);
    let mut member = connect(&a, "/ws").await;
    join(&mut member, "lossy", None).await;
    let mut on_b = connect(&b, "/ws").await;
    join(&mut on_b, "lossy", None).await;
    let mut publisher = connect(&b, "/ws").await;
    const N: u64 = 600;
    for i in 1..=N {
        send(
            &mut publisher,
            json!({"op": "pub", "room": "lossy", "data": i, "id": i}),
        )
        .await;
        if i == 150 {
            // Redis stays up and b keeps publishing; a's subscriber connection is cut,
            // so pub/sub drops what comes until a is back and reads the stream.
            redis.kill_client("roomcast:a:sub");
        }
        if i % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let got = collect(&mut member, N as usize).await;
    let expect: Vec<(u64, Value)> = (1..=N).map(|i| (i, json!(i))).collect();
    assert_eq!(got, expect, "every message once, in order, no gap notice");
    assert_eq!(collect(&mut on_b, N as usize).await, expect);
    let bp = &a.stats()["backplane"];
    assert!(bp["reconnects"].as_u64().unwrap() >= 1, "{bp}");
    assert!(bp["catchups"].as_u64().unwrap() >= 1, "{bp}");
    assert!(
        bp["recovered"].as_u64().unwrap() >= 1,
        "some messages came back from the stream, not the channel: {bp}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_back_from_an_older_snapshot_starts_the_room_over_and_says_so() {
    need!(Redis);
    // Redis restarted from a snapshot older than what the nodes saw: the room's seq went
    // back in the same epoch. The next messages must not be taken for ones already seen.
    let mut redis = Redis::start_with(false);
    let a = node("uring", "a", &[&redis], &[]);
    let b = node("epoll", "b", &[&redis], &[]);
    let mut member = connect(&b, "/ws").await;
    let joined = join(&mut member, "rollback", None).await;
    let mut publisher = connect(&a, "/ws").await;
    let mut id = 0;
    for _ in 0..5 {
        assert!(publish_to(&mut publisher, "rollback", &mut id)
            .await
            .is_some());
    }
    assert_eq!(redis.command(&["SAVE"]).as_deref(), Some("+OK"));
    for _ in 0..5 {
        assert!(publish_to(&mut publisher, "rollback", &mut id)
            .await
            .is_some());
    }
    assert_eq!(collect(&mut member, 10).await.last().unwrap().0, 10);
    redis.kill();
    redis.restart();
    // Once the nodes are back, the room is in a new epoch, and the member is told.
    let back = Instant::now();
    let seq = loop {
        if let Some(seq) = publish_to(&mut publisher, "rollback", &mut id).await {
            break seq;
        }
        assert!(back.elapsed() < Duration::from_secs(5), "still refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(seq, 1, "a new epoch starts at 1");
    let reset = loop {
        let m = recv(&mut member).await;
        if m["op"] == "joined" {
            break m;
        }
    };
    assert_eq!(reset["recovered"], false, "{reset}");
    assert_ne!(reset["epoch"], joined["epoch"]);
    let next = collect(&mut member, 1).await;
    assert_eq!(next[0].0, 1, "the new message arrives, not dropped as seen");
}

/// Publishes to `room` with the next id; its seq, or None if refused as unavailable.
async fn publish_to(ws: &mut Ws, room: &str, id: &mut u64) -> Option<u64> {
    *id += 1;
    let this = *id;
    send(
        ws,
        json!({"op": "pub", "room": room, "data": this, "id": this}),
    )
    .await;
    loop {
        let m = recv(ws).await;
        match m["op"].as_str() {
            Some("ack") if m["id"] == this => return Some(m["seq"].as_u64().unwrap()),
            Some("error") if m["id"] == this => return None,
            _ => continue,
        }
    }
}

/// Issue 29's duplicate: a member that saw seq 20 on node a resumes on node b while b
/// cannot reach Redis (b is at 10). Answered at b's 10, it would be handed 11..=20 again
/// when b catches up. It must be refused as `unavailable` (and then resume exactly), or
/// answered at or past 20. b is cut off alone with a Redis ACL user of its own, so a
/// keeps publishing; b runs on each backend in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_on_a_node_cut_off_from_redis_never_repeats_a_seq() {
    need!(Redis);
    let redis = Redis::start();
    let a = node("uring", "a", &[&redis], &["--history-size", "1000"]);
    for backend in ["epoll", "uring"] {
        let (user, room) = (format!("nb{backend}"), format!("dup-{backend}"));
        let on = format!("ACL SETUSER {user} on >pw ~* &* +@all");
        let on: Vec<&str> = on.split(' ').collect();
        assert_eq!(redis.command(&on).as_deref(), Some("+OK"));
        let url = redis
            .url()
            .replace("redis://", &format!("redis://{user}:pw@"));
        let b = Server::start(
            backend,
            &[
                "--node-id",
                &format!("b-{backend}"),
                "--redis",
                &url,
                "--history-size",
                "1000",
            ],
        );
        let mut stay = connect(&b, "/ws").await;
        join(&mut stay, &room, None).await;
        let mut m = connect(&a, "/ws").await;
        let joined = join(&mut m, &room, None).await;
        let mut publisher = connect(&a, "/ws").await;
        let mut id = 0;
        for _ in 0..10 {
            assert!(publish_to(&mut publisher, &room, &mut id).await.is_some());
        }
        assert_eq!(collect(&mut stay, 10).await.last().unwrap().0, 10);
        // b loses Redis; a does not.
        assert_eq!(
            redis.command(&["ACL", "SETUSER", &user, "off"]).as_deref(),
            Some("+OK")
        );
        redis.command(&["CLIENT", "KILL", "USER", &user]);
        let cut = Instant::now();
        while !b.get("/healthz").1.starts_with("degraded") {
            assert!(cut.elapsed() < WAIT, "b never noticed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for _ in 0..10 {
            assert!(publish_to(&mut publisher, &room, &mut id).await.is_some());
        }
        assert_eq!(collect(&mut m, 20).await.last().unwrap().0, 20);
        drop(m);
        // The member comes back on b, from 20.
        let last = json!({"seq": 20, "epoch": joined["epoch"]});
        let mut back = connect(&b, "/ws").await;
        let mut op = json!({"op": "join", "room": room, "since": 20, "epoch": joined["epoch"]});
        send(&mut back, op.clone()).await;
        let first = loop {
            let r = recv(&mut back).await;
            if r["op"] != "presence" {
                break r;
            }
        };
        assert_eq!(redis.command(&on).as_deref(), Some("+OK"));
        if first["op"] == "error" {
            assert_eq!(first["code"], "unavailable", "{first}");
            // Retried as a client would, until b is back and caught up.
            let again = Instant::now();
            let rejoined = loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                op["room"] = json!(room);
                send(&mut back, op.clone()).await;
                let r = recv(&mut back).await;
                if r["op"] == "joined" {
                    break r;
                }
                assert_eq!(r["code"], "unavailable", "{r}");
                assert!(again.elapsed() < Duration::from_secs(10), "never rejoined");
            };
            assert_eq!(
                (&rejoined["epoch"], &rejoined["recovered"]),
                (&last["epoch"], &json!(true)),
                "{rejoined}"
            );
        } else {
            assert_eq!(first["op"], "joined", "{first}");
            let seq = first["seq"].as_u64().unwrap();
            assert!(
                first["epoch"] != joined["epoch"] || seq >= 20,
                "answered behind what it had: {first}"
            );
        }
        // The next message is the first it sees: nothing from 11 to 20 again.
        assert_eq!(publish_to(&mut publisher, &room, &mut id).await, Some(21));
        assert_eq!(
            collect(&mut back, 1).await[0].0,
            21,
            "b handed back seqs it had"
        );
        // The member that stayed on b got 11..=21 once each, in order, after b came back.
        let seqs: Vec<u64> = collect(&mut stay, 11).await.iter().map(|m| m.0).collect();
        assert_eq!(seqs, (11..=21).collect::<Vec<_>>());
    }
}
