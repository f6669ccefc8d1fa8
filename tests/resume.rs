//! History and resume (issue 14) as real clients see them, on both backends: Python
//! `websockets` cut mid-stream rejoins with `since`/`epoch` and misses nothing; a rejoin
//! across a server restart is told `recovered:false`; `/sse` in headless Chromium survives
//! a cut by reconnecting with Last-Event-ID; `/sse` read off a plain socket replays exactly
//! what it missed on two rooms, flags a wrong epoch, and ends with `event: close` on drain.
//!
//! The clients (tests/clients/resume.py, tests/clients/sse_browser.mjs) only report what
//! they saw, as JSON lines; every verdict is here.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{chromium, clients_dir, Server};
use serde_json::Value;

/// The WebSocket case publishes 1,000 msg/s and the member is away for at least 300 ms
/// (plus its reconnect): about 300-400 messages to replay, more on a stalled machine. The
/// default 64 would not hold them; 1,000 holds a whole second, and the browser case (200
/// msg/s, away for its 1 s retry) fits too.
const HISTORY: &[&str] = &["--history-size", "1000"];

fn http_base(server: &Server) -> String {
    format!("http://{}", server.addr)
}

/// A client process whose stdout lines are JSON, read with timeouts.
struct Client {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Client {
    fn spawn(mut cmd: Command) -> Client {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Client { child, lines }
    }

    fn python(server: &Server, case: &str) -> Client {
        let mut cmd = Command::new(common::python());
        cmd.arg(clients_dir().join("resume.py"))
            .arg(http_base(server))
            .arg(case);
        Client::spawn(cmd)
    }

    /// The next JSON line (other lines are passed through to the test's output).
    fn next(&mut self, timeout: Duration) -> Value {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with('{') => return serde_json::from_str(&line).unwrap(),
                Ok(line) => println!("client: {line}"),
                Err(e) => {
                    let _ = self.child.kill();
                    let status = self.child.wait().unwrap();
                    panic!("no result from the client ({e}); it exited with {status}");
                }
            }
        }
    }

    /// Waits for the client to exit, which must be with success.
    fn finish(mut self, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "client failed: {status}");
                return;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("client did not finish in time");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn u64_of(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// An epoch as the spec has it: a short lowercase `[0-9a-z]` string.
fn assert_epoch(e: &Value) -> &str {
    let s = e
        .as_str()
        .unwrap_or_else(|| panic!("epoch is not a string: {e}"));
    assert!(
        !s.is_empty()
            && s.len() <= 32
            && s.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()),
        "epoch {s:?}"
    );
    s
}

/// A publisher's acks (`{id: seq}`) as seq → id.
fn acks_by_seq(acks: &Value) -> BTreeMap<u64, u64> {
    acks.as_object()
        .unwrap()
        .iter()
        .map(|(id, seq)| (u64_of(seq), id.parse().unwrap()))
        .collect()
}

/// Seqs `first..=last` with nothing skipped.
fn range(first: u64, last: u64) -> Vec<u64> {
    (first..=last).collect()
}

both_backends! {
    async fn a_websockets_member_cut_mid_stream_rejoins_and_misses_nothing(backend: &str) {
        need!(Python);
        let server = Server::start(backend, HISTORY);
        let mut client = Client::python(&server, "ws-cut");
        let r = client.next(Duration::from_secs(30));
        client.finish(Duration::from_secs(5));
        let (first, second) = (&r["first_join"], &r["second_join"]);
        assert!(first.get("recovered").is_none(), "recovered without since: {first}");
        let epoch = assert_epoch(&first["epoch"]);

        // The publisher's own view: one ack per publish, seqs contiguous from the join on
        // (the room had no member while the member was away: its publishes still count).
        let acks = acks_by_seq(&r["acks"]);
        let sent = r["sent"].as_array().unwrap();
        let unacked: Vec<u64> = sent
            .iter()
            .map(|p| u64_of(&p[0]))
            .filter(|id| r["acks"].get(id.to_string()).is_none())
            .collect();
        // If some were not: whether the member got those messages all the same (id = n).
        let delivered: Vec<(u64, u64)> = r["got1"]
            .as_array()
            .unwrap()
            .iter()
            .chain(r["got2"].as_array().unwrap())
            .map(|m| (u64_of(&m[0]), u64_of(&m[1]["n"])))
            .filter(|(_, n)| unacked.contains(n))
            .collect();
        assert!(
            unacked.is_empty(),
            "{} of {} publishes never acknowledged (ids {:?}…{:?}); the member got (seq, n) {delivered:?}",
            unacked.len(),
            sent.len(),
            unacked.first(),
            unacked.last(),
        );
        let base = u64_of(&first["seq"]);
        let last = *acks.keys().last().unwrap();
        assert_eq!(acks.keys().copied().collect::<Vec<_>>(), range(base + 1, last), "ack seqs");
        // id = position in `sent`, whose n is the payload.
        let n_of_id: BTreeMap<u64, u64> =
            sent.iter().map(|p| (u64_of(&p[0]), u64_of(&p[1]))).collect();

        // The cut: something was read before it and much was missed during it.
        let got1 = r["got1"].as_array().unwrap();
        let got2 = r["got2"].as_array().unwrap();
        assert!(got1.len() >= 50, "read too little before the cut: {}", got1.len());
        let cut_after = u64_of(&got1.last().unwrap()[0]);
        assert_eq!(second["recovered"], true, "rejoin: {second}");
        assert_eq!(second["epoch"].as_str(), Some(epoch), "rejoin: {second}");
        assert_eq!(second["room"], "cut");
        let missed = u64_of(&second["seq"]) - cut_after;
        assert!(missed >= 100, "only {missed} messages were missed (away {} ms)", r["away_ms"]);
        assert_eq!(
            got2.first().map(|m| u64_of(&m[0])),
            Some(cut_after + 1),
            "the replay starts right after the last seq seen"
        );

        // Exactly once, in order, across the cut, with the payload the publisher sent.
        let seqs: Vec<u64> = got1.iter().chain(got2).map(|m| u64_of(&m[0])).collect();
        assert_eq!(seqs, range(base + 1, last), "seqs the member received across the cut");
        for m in got1.iter().chain(got2) {
            let seq = u64_of(&m[0]);
            let n = n_of_id[&acks[&seq]];
            assert_eq!(m[1], serde_json::json!({ "n": n }), "payload of seq {seq}");
        }
        assert_eq!(r["other"], serde_json::json!([]), "nothing but msgs (no gap notice)");
        assert_eq!(r["publisher_other"], serde_json::json!([]));
        server.settles_to(0);
    }

    async fn a_rejoin_after_a_server_restart_is_not_recovered_and_gets_live_messages(backend: &str) {
        need!(Python);
        let addr = format!("127.0.0.1:{}", common::free_port());
        let server = Server::start(backend, &["--listen", &addr]);
        let mut client = Client::python(&server, "ws-restart");
        let before = client.next(Duration::from_secs(15));
        let old_epoch = assert_epoch(&before["joined"]["epoch"]).to_owned();
        let got = before["got"].as_array().unwrap();
        assert_eq!(got.len(), 5, "before the restart: {before}");
        // Stop the process (SIGKILL: nothing of its memory survives) and start a new one
        // on the same port; the client reconnects by itself.
        drop(server);
        let server = Server::start(backend, &["--listen", &addr]);
        let after = client.next(Duration::from_secs(20));
        client.finish(Duration::from_secs(5));
        let joined = &after["joined"];
        assert_eq!(joined["recovered"], false, "{joined}");
        let epoch = assert_epoch(&joined["epoch"]);
        assert_ne!(epoch, old_epoch, "a restarted room has a new epoch");
        // Live from the join on, nothing replayed from the old server.
        let start = u64_of(&joined["seq"]);
        let acks = acks_by_seq(&after["acks"]);
        assert_eq!(acks.keys().copied().collect::<Vec<_>>(), range(start + 1, start + 5));
        let got: Vec<(u64, Value)> = after["got"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                assert_eq!(m["op"], "msg", "{m}");
                (u64_of(&m["seq"]), m["data"].clone())
            })
            .collect();
        let want: Vec<(u64, Value)> =
            (0..5).map(|n| (start + 1 + n, serde_json::json!({ "after": n }))).collect();
        assert_eq!(got, want, "live messages after the restart");
        server.settles_to(0);
    }

    async fn an_event_source_in_chromium_reconnects_after_a_cut_and_a_server_drop_and_misses_nothing(backend: &str) {
        need!(Node, Chromium);
        const KEY: &str = "resume-test-key";
        const SECRET: &str = "resume-test-secret";
        let mut args = HISTORY.to_vec();
        args.extend(["--api-key", KEY, "--jwt-secret", SECRET]);
        let server = Server::start(backend, &args);
        let token = |sub: &str| {
            let exp = roomcast::app::auth::unix_now() + 600;
            let claims = serde_json::json!({"sub": sub, "exp": exp, "join": ["*"], "pub": ["*"]});
            let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
            jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
        };
        let mut cmd = Command::new("node");
        cmd.arg(clients_dir().join("sse_browser.mjs"))
            .arg(http_base(&server))
            .arg(chromium())
            .arg(KEY)
            .arg(token("viewer"))
            .arg(token("publisher"));
        let mut client = Client::spawn(cmd);
        let r = client.next(Duration::from_secs(60));
        client.finish(Duration::from_secs(10));

        // The cut hit the live stream after the browser had been receiving on it.
        assert_eq!(r["cut"]["sse"], 1, "one /sse connection was cut: {}", r["cut"]);
        assert!(u64_of(&r["cut"]["before"]) >= 20, "cut too early: {}", r["cut"]);
        // Then the server itself dropped the stream (the API's disconnect of its user), after
        // `event: close`; the browser reconnected again by itself.
        assert_eq!(r["dropped"]["status"], 200, "{}", r["dropped"]);
        assert_eq!(r["dropped"]["body"]["closed"], 1, "{}", r["dropped"]);
        assert_eq!(r["closes"], 1, "the close event before the drop");
        assert!(u64_of(&r["opens"]) >= 3, "the browser did not reconnect twice: {} opens", r["opens"]);

        let joined = r["joined"].as_array().unwrap();
        let epoch = assert_epoch(&joined[0]["data"]["epoch"]).to_owned();
        assert!(joined[0]["data"].get("recovered").is_none(), "{}", joined[0]);
        for j in &joined[1..] {
            assert_eq!(j["data"]["recovered"], true, "a reconnect was not recovered: {j}");
            assert_eq!(j["data"]["epoch"].as_str(), Some(epoch.as_str()), "{j}");
        }
        assert_eq!(r["gaps"], serde_json::json!([]), "gap events");

        // Every published seq, in order, once, with its payload and its cursor as id.
        let acks: Vec<(u64, u64)> = r["acks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| (u64_of(&a[0]), u64_of(&a[1])))
            .collect();
        assert_eq!(acks.len(), 400);
        let msgs = r["msgs"].as_array().unwrap();
        let got: Vec<(u64, u64)> = msgs.iter().map(|m| (u64_of(&m["n"]), u64_of(&m["seq"]))).collect();
        assert_eq!(got, acks, "(n, seq) the browser got, against the publisher's acks");
        for m in msgs {
            assert_eq!(m["id"], format!("r~{epoch}~{}", m["seq"]), "lastEventId of {m}");
        }
        // Some arrived on the first connection, the rest (the replay first) on a later one.
        let later = msgs.iter().filter(|m| u64_of(&m["open"]) >= 2).count();
        assert!(later > 0 && later < msgs.len(), "{later} of {} after the reconnect", msgs.len());
        server.settles_to(0);
    }

    async fn sse_on_two_rooms_replays_exactly_what_was_missed(backend: &str) {
        need!(Python);
        let server = Server::start(backend, HISTORY);
        for bad in ["/sse", "/sse?room=", "/sse?room=bad~name", "/sse?other=a"] {
            assert_eq!(server.get(bad).0, 400, "GET {bad}");
        }
        let mut client = Client::python(&server, "sse-resume");
        let first = client.next(Duration::from_secs(15));
        let missed = client.next(Duration::from_secs(10));
        let second = client.next(Duration::from_secs(15));
        let query = client.next(Duration::from_secs(15));
        let wrong = client.next(Duration::from_secs(15));
        client.finish(Duration::from_secs(5));

        // The response: an event stream, close-delimited.
        let h = &first["headers"];
        assert_eq!(first["status"], 200);
        assert!(h["content-type"].as_str().unwrap_or("").starts_with("text/event-stream"), "{h}");
        assert_eq!(h["cache-control"], "no-cache", "{h}");
        assert!(h.get("content-length").is_none() && h.get("transfer-encoding").is_none(), "{h}");
        assert!(h["connection"].as_str().is_some_and(|c| c.eq_ignore_ascii_case("close")), "{h}");

        let events = first["events"].as_array().unwrap();
        assert_eq!(events[0], serde_json::json!({ "retry": "1000", "last_id": "" }), "the first block");
        let joined = named(&first, "joined");
        assert_eq!(joined.len(), 2, "{joined:?}");
        let mut epochs = BTreeMap::new();
        for j in &joined {
            assert_eq!(j["op"], "joined");
            assert!(j.get("recovered").is_none(), "{j}");
            epochs.insert(j["room"].as_str().unwrap().to_owned(), assert_epoch(&j["epoch"]).to_owned());
        }
        assert_eq!(epochs.keys().collect::<Vec<_>>(), ["a", "b"]);
        for e in events.iter().filter(|e| e["event"] == "joined") {
            assert!(e["id"].is_string(), "a joined event without its cursor: {e}");
        }
        // Multi-room: msg events carry no id; id-only blocks carry the cursor.
        for e in events.iter().filter(|e| e["event"] == "msg") {
            assert!(e.get("id").is_none(), "a multi-room msg event with an id: {e}");
        }
        assert!(
            events.iter().any(|e| e.get("id").is_some() && e.get("data").is_none() && e.get("event").is_none()),
            "no id-only block"
        );
        // The cursor the client left with names each room's epoch and last seq.
        let cursor = first["cursor"].as_str().unwrap();
        let want_cursor = |acks: &Value| -> Vec<String> {
            ["a", "b"]
                .iter()
                .map(|r| format!("{r}~{}~{}", epochs[*r], acks[r].as_array().unwrap().last().unwrap()[0]))
                .collect()
        };
        assert_eq!(entries(cursor), want_cursor(&first["acks"]), "cursor {cursor}");

        // Each stream got, per room, exactly the seqs acknowledged for it.
        assert_eq!(msgs_by_room(&first), acked_by_room(&[&first["acks"]]), "first stream");
        let joined = named(&second, "joined");
        assert_eq!(joined.len(), 2, "{joined:?}");
        for j in &joined {
            assert_eq!(j["recovered"], true, "{j}");
            assert_eq!(j["epoch"].as_str(), Some(epochs[j["room"].as_str().unwrap()].as_str()), "{j}");
        }
        assert_eq!(named(&second, "gap"), Vec::<Value>::new());
        assert_eq!(
            msgs_by_room(&second),
            acked_by_room(&[&missed["acks"], &second["acks"]]),
            "resumed stream: the missed messages, then the live ones"
        );
        assert_eq!(
            msgs_by_room(&query),
            acked_by_room(&[&missed["acks"], &second["acks"]]),
            "resumed by ?lastEventId="
        );
        // The cursor covers what arrived, a replay too: an EventSource cut right after it
        // must not be sent the same messages again.
        let after_replay = second["cursor_after_replay"].as_str().unwrap();
        assert_eq!(
            entries(after_replay),
            want_cursor(&missed["acks"]),
            "the cursor once the missed messages were replayed: {after_replay}"
        );
        let end = second["cursor"].as_str().unwrap();
        assert_eq!(entries(end), want_cursor(&second["acks"]), "resumed stream's last cursor {end}");
        let end = query["cursor"].as_str().unwrap();
        assert_eq!(entries(end), want_cursor(&second["acks"]), "?lastEventId= stream's last cursor {end}");

        // A cursor from another epoch: recovered:false and a gap per room, then live.
        let joined = named(&wrong, "joined");
        assert_eq!(joined.len(), 2, "{joined:?}");
        for j in &joined {
            assert_eq!(j["recovered"], false, "{j}");
            assert_eq!(j["epoch"].as_str(), Some(epochs[j["room"].as_str().unwrap()].as_str()), "{j}");
        }
        let mut gaps = named(&wrong, "gap");
        gaps.sort_by_key(|g| g["room"].as_str().unwrap_or("").to_owned());
        assert_eq!(
            gaps,
            [
                serde_json::json!({ "op": "gap", "room": "a", "recovered": false }),
                serde_json::json!({ "op": "gap", "room": "b", "recovered": false }),
            ]
        );
        assert_eq!(msgs_by_room(&wrong), acked_by_room(&[&wrong["acks"]]), "live after a wrong epoch");
        let end = wrong["cursor"].as_str().unwrap();
        assert_eq!(entries(end), want_cursor(&wrong["acks"]), "last cursor after a wrong epoch {end}");
        server.settles_to(0);
    }

    async fn sse_ends_with_a_close_event_on_drain(backend: &str) {
        need!(Python);
        let mut server = Server::start(backend, &["--drain-window", "1"]);
        let mut client = Client::python(&server, "sse-drain");
        let ready = client.next(Duration::from_secs(10));
        assert_eq!(ready["joined"][0]["room"], "d", "{ready}");
        server.signal("TERM");
        let end = client.next(Duration::from_secs(30));
        client.finish(Duration::from_secs(5));
        assert_eq!(end["eof"], true, "the server ended the stream: {end}");
        let events = end["events"].as_array().unwrap();
        let last = events.last().unwrap();
        assert_eq!(last["event"], "close", "{end}");
        let data: Value = serde_json::from_str(last["data"].as_str().unwrap()).unwrap();
        assert_eq!(data, serde_json::json!({ "op": "close", "reason": "server shutting down" }));
        assert!(server.wait_exit(Duration::from_secs(10)).is_some_and(|s| s.success()));
    }
}

/// A cursor's `room~epoch~seq` entries, sorted (the order of rooms in it is not specified).
fn entries(cursor: &str) -> Vec<String> {
    let mut out: Vec<String> = cursor.split(',').map(str::to_owned).collect();
    out.sort();
    out
}

/// The data of a stream's events of type `event`, parsed.
fn named(report: &Value, event: &str) -> Vec<Value> {
    report["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == event)
        .map(|e| serde_json::from_str(e["data"].as_str().unwrap()).unwrap())
        .collect()
}

/// A stream's msg events as room → [(seq, n)], in arrival order, each checked against
/// the spec's JSON.
fn msgs_by_room(report: &Value) -> BTreeMap<String, Vec<(u64, u64)>> {
    let mut out: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    for m in named(report, "msg") {
        assert_eq!(m["op"], "msg", "{m}");
        let room = m["room"].as_str().unwrap().to_owned();
        assert_eq!(m["data"]["room"].as_str(), Some(room.as_str()), "{m}");
        out.entry(room)
            .or_default()
            .push((u64_of(&m["seq"]), u64_of(&m["data"]["n"])));
    }
    out
}

/// What the publisher's acks say each room should have received: room → [(seq, n)] over
/// the given phases, in order (each phase lists its acks per room as `[seq, n]` in
/// publish order).
fn acked_by_room(phases: &[&Value]) -> BTreeMap<String, Vec<(u64, u64)>> {
    let mut out: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    for phase in phases {
        for (room, seqs) in phase.as_object().unwrap() {
            let list = out.entry(room.clone()).or_default();
            for a in seqs.as_array().unwrap() {
                list.push((u64_of(&a[0]), u64_of(&a[1])));
            }
        }
    }
    out
}
