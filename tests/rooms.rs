//! Rooms over real sockets, on both backends, with three shards so that rooms, members
//! and publishers are spread across cores and every delivery path (local, mesh) is used.

mod common;

use std::time::{Duration, Instant};

use common::{connect, send_json as send, shard_sum, Server};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const WAIT: Duration = Duration::from_secs(20);

/// The next text message as JSON (pings and pongs skipped).
async fn recv(ws: &mut Ws) -> Value {
    common::recv_json(ws, WAIT).await
}

/// The raw text of the next message (to check `data` byte for byte).
async fn recv_raw(ws: &mut Ws) -> String {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("timed out")
        {
            Some(Ok(Message::Text(t))) => return t,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

async fn join(ws: &mut Ws, room: &str) -> u64 {
    send(ws, json!({"op":"join","room":room})).await;
    let v = recv(ws).await;
    assert_eq!(v["op"], "joined", "{v}");
    assert_eq!(v["room"], room);
    v["seq"].as_u64().unwrap()
}

/// `/stats`, parsed.
fn stats(server: &Server) -> Value {
    let resp = server.raw_exchange(
        b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(5),
    );
    let text = String::from_utf8(resp).unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap();
    serde_json::from_str(body).unwrap()
}

/// Polls `/stats` until `ok` holds or the deadline passes.
async fn stats_until(server: &Server, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = stats(server);
        if ok(&s) || Instant::now() > deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The server's peak resident memory (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// What [`ten_messages`] saw.
struct Ten {
    /// The server's sends meanwhile.
    sends: u64,
    /// When the member first heard anything, after the first publish.
    first: Duration,
    /// The same after its ping, if it sent one.
    after_ping: Option<Duration>,
}

/// A publisher sends ten messages (each `pad` bytes of padding) to a room of one member,
/// each acked before the next; with `ping`, the member pings right after. Checks that all
/// ten arrive, in order, and the member stays open.
async fn ten_messages(server: &Server, ping: bool, pad: usize) -> Ten {
    let mut member = connect(server, "/ws").await;
    let room = format!("mail-{ping}-{pad}");
    join(&mut member, &room).await;
    let mut publisher = connect(server, "/ws").await;
    let before = shard_sum(&stats(server), "sends");
    let start = Instant::now();
    for i in 0..10 {
        let data = json!({"i": i, "pad": "x".repeat(pad)});
        send(
            &mut publisher,
            json!({"op":"pub","room":room,"data":data,"id":i}),
        )
        .await;
        let ack = recv(&mut publisher).await;
        assert_eq!(
            (&ack["op"], &ack["id"]),
            (&json!("ack"), &json!(i)),
            "{ack}"
        );
    }
    let mut pinged = None;
    if ping {
        member.send(Message::Ping(b"now".to_vec())).await.unwrap();
        pinged = Some(Instant::now());
    }
    let mut first = None;
    let mut got = Vec::new();
    while got.len() < 10 {
        let m = tokio::time::timeout(WAIT, member.next())
            .await
            .expect("timed out");
        first.get_or_insert_with(Instant::now);
        match m {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                got.push(v["data"]["i"].as_u64().unwrap());
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected a delivery, got {other:?}"),
        }
    }
    assert_eq!(got, (0..10).collect::<Vec<_>>());
    let first = first.unwrap();
    Ten {
        sends: shard_sum(&stats(server), "sends") - before,
        first: first - start,
        after_ping: pinged.map(|p| first - p),
    }
}

both_backends! {
    async fn an_emptied_room_keeps_its_history_for_the_ttl_even_after_an_idle_spell(backend: &str) {
        let server = Server::start(backend, &["--history-ttl", "2"]);
        let mut a = connect(&server, "/ws?room=t").await;
        let epoch = recv(&mut a).await["epoch"].as_str().unwrap().to_owned();
        send(&mut a, json!({"op":"pub","room":"t","data":1})).await;
        assert_eq!(recv(&mut a).await["seq"], 1);
        // Longer than the TTL with nothing to do (the shard sleeps), then the last member
        // leaves: the TTL runs from the leave, not from before the sleep.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        drop(a);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut b = connect(&server, "/ws").await;
        send(&mut b, json!({"op":"join","room":"t","since":0,"epoch":epoch})).await;
        let j = recv(&mut b).await;
        assert_eq!((&j["recovered"], &j["epoch"]), (&json!(true), &json!(epoch)), "{j}");
        assert_eq!(recv(&mut b).await["data"], 1, "the replay");
        drop(b);
        // Past the TTL after the last leave: the room, its history and its epoch are gone.
        tokio::time::sleep(Duration::from_millis(2600)).await;
        let mut c = connect(&server, "/ws").await;
        send(&mut c, json!({"op":"join","room":"t","since":1,"epoch":epoch})).await;
        let j = recv(&mut c).await;
        assert_eq!(j["recovered"], false, "{j}");
        assert_ne!(j["epoch"], json!(epoch), "a new room, a new epoch");
    }

    async fn at_a_low_rate_every_message_leaves_in_the_turn_it_was_published(backend: &str) {
        // Slow members are kept (drop-newest, a large byte allowance) so that the stalled
        // one below keeps getting deliveries queued behind its stuck send.
        let server = Server::start(
            backend,
            &["--shards", "1", "--slow-policy", "drop-newest", "--max-queued-bytes", "100000000"],
        );
        let mut members = Vec::new();
        for _ in 0..20 {
            let mut ws = connect(&server, "/ws").await;
            join(&mut ws, "calm").await;
            members.push(ws);
        }
        let mut publisher = connect(&server, "/ws").await;
        for i in 0..20 {
            send(&mut publisher, json!({"op":"pub","room":"calm","data":i})).await;
            for ws in members.iter_mut() {
                assert_eq!(recv(ws).await["data"], i);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // No flush waited for an earlier send (io_uring) or a full socket (epoll): each
        // message went out before the shard slept again.
        let s = stats(&server);
        assert_eq!(shard_sum(&s, "sends_deferred"), 0, "{s}");
        // The counter does count: a member that stops reading while large messages pile up.
        let mut stalled = connect(&server, "/ws").await;
        join(&mut stalled, "busy").await;
        let big = "x".repeat(60_000);
        for _ in 0..200 {
            send(&mut publisher, json!({"op":"pub","room":"busy","data":big})).await;
        }
        let s = stats_until(&server, |s| shard_sum(s, "sends_deferred") > 0).await;
        assert!(shard_sum(&s, "sends_deferred") > 0, "{s}");
    }

    async fn a_write_delay_gathers_deliveries_into_fewer_sends_and_never_holds_replies_or_controls(backend: &str) {
        // One shard (its figures are the server's) and the longest delay, so that what
        // waits and what does not is plain whatever the machine's load.
        let delayed = Server::start(backend, &["--shards", "1", "--write-delay", "1s"]);
        let plain = Server::start(backend, &["--shards", "1"]);
        let ten = ten_messages(&delayed, false, 0).await;
        assert!(ten.first >= Duration::from_millis(900), "the first delivery came after {:?}", ten.first);
        // Ten acks (replies, never delayed) and the /stats answer are sends too: the ten
        // deliveries took one or a few (one a second while the publishes last).
        assert!(ten.sends <= 10 + 1 + 4, "{} sends", ten.sends);
        let ten = ten_messages(&plain, false, 0).await;
        assert!(ten.sends >= 10 + 10, "without a delay each delivery is a send: {}", ten.sends);
        // A ping while deliveries wait: the pong is not delayed, and takes them along.
        let ten = ten_messages(&delayed, true, 0).await;
        let after_ping = ten.after_ping.unwrap();
        assert!(after_ping < Duration::from_millis(500), "the pong (or what it took along) came {after_ping:?} after the ping");
        // Waiting bytes count against --max-queued-bytes like a slow member's: half of it
        // goes at once, so ten 3 KB messages never get a reading member closed as slow.
        let tight = Server::start(
            backend,
            &["--shards", "1", "--write-delay", "1s", "--max-queued-bytes", "20000", "--slow-policy", "close"],
        );
        let ten = ten_messages(&tight, false, 3000).await;
        assert!(ten.sends >= 10 + 3, "sent as the ring filled: {}", ten.sends);
    }

    async fn a_close_and_a_drain_are_not_held_by_the_write_delay(backend: &str) {
        // A member whose delivery waits (1 s delay) closes: the waiting delivery and the
        // close's answer come at once, not a second later.
        let server = Server::start(backend, &["--shards", "1", "--write-delay", "1s", "--drain-window", "0"]);
        let mut member = connect(&server, "/ws").await;
        join(&mut member, "held").await;
        let mut publisher = connect(&server, "/ws").await;
        send(&mut publisher, json!({"op":"pub","room":"held","data":1,"id":1})).await;
        assert_eq!(recv(&mut publisher).await["op"], "ack");
        let closed = Instant::now();
        member.send(Message::Close(None)).await.unwrap();
        let mut got = Vec::new();
        loop {
            match tokio::time::timeout(WAIT, member.next()).await.expect("timed out") {
                Some(Ok(Message::Text(t))) => got.push(t),
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("{e}"),
            }
        }
        let took = closed.elapsed();
        assert!(took < Duration::from_millis(500), "the close's answer came {took:?} after the close");
        assert_eq!(got.len(), 1, "the waiting delivery came first: {got:?}");
        // A drain (SIGTERM, no window) while a delivery waits: the delivery and the close
        // 1001 come at once.
        let mut member = connect(&server, "/ws").await;
        join(&mut member, "held").await;
        send(&mut publisher, json!({"op":"pub","room":"held","data":2,"id":2})).await;
        assert_eq!(recv(&mut publisher).await["op"], "ack");
        let signalled = Instant::now();
        server.signal("TERM");
        let mut got = Vec::new();
        let code = loop {
            match tokio::time::timeout(WAIT, member.next()).await.expect("timed out") {
                Some(Ok(Message::Text(t))) => got.push(t),
                Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                other => panic!("expected the drain's close, got {other:?}"),
            }
        };
        let took = signalled.elapsed();
        assert_eq!(code, Some(1001), "{got:?}");
        assert!(took < Duration::from_millis(500), "the drain's close came {took:?} after SIGTERM");
        assert_eq!(got.len(), 1, "the waiting delivery came before the close: {got:?}");
    }

    async fn members_on_every_shard_get_every_message_in_order_and_other_rooms_nothing(backend: &str) {
        let server = Server::start(backend, &["--shards", "3"]);
        let mut members = Vec::new();
        for _ in 0..12 {
            let mut ws = connect(&server, "/ws").await;
            assert_eq!(join(&mut ws, "lobby").await, 0);
            members.push(ws);
        }
        let mut others = Vec::new();
        for _ in 0..3 {
            let mut ws = connect(&server, "/ws").await;
            join(&mut ws, "elsewhere").await;
            others.push(ws);
        }
        let s = stats(&server);
        let shards_with_members = s["shards"].as_array().unwrap().iter().filter(|sh| sh["members"].as_u64() > Some(0)).count();
        assert!(shards_with_members >= 2, "members should be spread over shards: {s}");

        let mut publisher = connect(&server, "/ws").await;
        for i in 0..100u64 {
            // Odd spacing and escapes: `data` must come back exactly as sent.
            let data = format!("{{ \"n\" : {i}, \"s\":\"caf\\u00e9 \\\"q\\\"\", \"f\": 1.50 }}");
            publisher.send(Message::Text(format!(r#"{{"op":"pub","room":"lobby","id":{i},"data":{data}}}"#))).await.unwrap();
            let ack = recv(&mut publisher).await;
            assert_eq!(ack, json!({"op":"ack","id":i,"seq":i + 1}));
        }
        for ws in &mut members {
            for i in 0..100u64 {
                let raw = recv_raw(ws).await;
                let data = format!("{{ \"n\" : {i}, \"s\":\"caf\\u00e9 \\\"q\\\"\", \"f\": 1.50 }}");
                assert_eq!(raw, format!(r#"{{"op":"msg","room":"lobby","seq":{},"data":{data}}}"#, i + 1));
            }
        }
        for ws in &mut others {
            assert!(tokio::time::timeout(Duration::from_millis(300), ws.next()).await.is_err(), "other rooms get nothing");
        }
    }

    async fn five_concurrent_publishers_give_every_member_one_identical_gap_free_sequence(backend: &str) {
        let server = Server::start(backend, &["--shards", "3"]);
        let mut members = Vec::new();
        for _ in 0..6 {
            let mut ws = connect(&server, "/ws").await;
            join(&mut ws, "race").await;
            members.push(ws);
        }
        const EACH: u64 = 300;
        let mut tasks = Vec::new();
        for p in 0..5u64 {
            let url = server.url("/ws");
            tasks.push(tokio::spawn(async move {
                let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
                for i in 0..EACH {
                    ws.feed(Message::Text(json!({"op":"pub","room":"race","data":{"p":p,"i":i}}).to_string())).await.unwrap();
                }
                ws.flush().await.unwrap();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }));
        }
        let mut sequences = Vec::new();
        for ws in &mut members {
            let mut seen = Vec::new();
            for expect in 1..=5 * EACH {
                let v = recv(ws).await;
                assert_eq!(v["seq"].as_u64(), Some(expect), "gap-free: {v}");
                seen.push((v["data"]["p"].as_u64().unwrap(), v["data"]["i"].as_u64().unwrap()));
            }
            // Each publisher's messages keep their order.
            for p in 0..5 {
                let mine: Vec<u64> = seen.iter().filter(|(q, _)| *q == p).map(|&(_, i)| i).collect();
                assert_eq!(mine, (0..EACH).collect::<Vec<_>>());
            }
            sequences.push(seen);
        }
        for s in &sequences[1..] {
            assert_eq!(s, &sequences[0], "every member sees the same order");
        }
        for t in tasks {
            t.await.unwrap();
        }
    }

    async fn a_stalled_member_gets_its_policy_while_healthy_members_get_everything(backend: &str) {
        // Members may fall 4 MiB behind before they count as slow.
        let server = Server::start(backend, &["--shards", "3", "--slow-policy", "close", "--max-queued-bytes", "4194304", "--rate", "0"]);
        let mut healthy = Vec::new();
        for _ in 0..10 {
            let mut ws = connect(&server, "/ws").await;
            join(&mut ws, "firehose").await;
            healthy.push(ws);
        }
        // A member that joins and then never reads again.
        let stalled = {
            let mut ws = connect(&server, "/ws?room=firehose").await;
            assert_eq!(recv(&mut ws).await["op"], "joined");
            ws
        };
        // 200,000 messages of ~230 bytes: ~46 MB per member, far more than the kernel's
        // socket buffers hold for the stalled one.
        const N: u64 = 200_000;
        let url = server.url("/ws");
        let publisher = tokio::spawn(async move {
            let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
            let pad = "p".repeat(160);
            // Bursts of 2,000 every 40 ms: at most 50,000 messages/s, a rate the ten
            // readers sharing this 2-core machine with the server can keep up with.
            for i in 0..N {
                ws.feed(Message::Text(format!(r#"{{"op":"pub","room":"firehose","data":[{i},"{pad}"]}}"#))).await.unwrap();
                if i % 2000 == 1999 {
                    ws.flush().await.unwrap();
                    tokio::time::sleep(Duration::from_millis(40)).await;
                }
            }
            ws.flush().await.unwrap();
            ws
        });
        let readers: Vec<_> = healthy
            .into_iter()
            .map(|mut ws| {
                tokio::spawn(async move {
                    for expect in 1..=N {
                        let raw = recv_raw(&mut ws).await;
                        let want = format!(r#"{{"op":"msg","room":"firehose","seq":{expect},"data":[{},""#, expect - 1);
                        assert!(raw.starts_with(&want), "{raw}");
                    }
                })
            })
            .collect();
        for r in readers {
            r.await.unwrap();
        }
        let _publisher = publisher.await.unwrap();
        let s = stats_until(&server, |s| {
            shard_sum(s, "closed_slow") == 1
        })
        .await;
        let closed_slow: u64 = shard_sum(&s, "closed_slow");
        assert_eq!(closed_slow, 1, "the stalled member was closed as a slow consumer: {s}");
        // Memory stays bounded as configured. Worst case: ~16 MiB fixed (process, three
        // shards' 4 MiB receive pools) + 11 members × (4 MiB queued + ~1 MiB for one
        // turn's batch) ≈ 71 MiB. Asserted on the peak, with margin: 96 MiB. (Without the
        // policy the stalled member alone would queue ~46 MB and never be closed.)
        let peak = peak_rss_kib(server.pid());
        println!("{backend}: server peak RSS {peak} KiB");
        assert!(peak < 96 * 1024, "server peak RSS {peak} KiB");
        drop(stalled);
    }

    async fn slow_policies_keep_the_stalled_member_connected_and_account_for_every_seq(backend: &str) {
        for policy in ["drop-oldest", "drop-newest", "conflate"] {
            let server = Server::start(backend, &["--shards", "2", "--slow-policy", policy, "--max-queued-bytes", "4194304", "--rate", "0"]);
            let mut healthy = connect(&server, "/ws?room=r").await;
            assert_eq!(recv(&mut healthy).await["op"], "joined");
            let mut stalled = connect(&server, "/ws?room=r").await;
            assert_eq!(recv(&mut stalled).await["op"], "joined");
            let mut publisher = connect(&server, "/ws").await;
            // ~23 MB for each member, paced as in the test above: the stalled member's
            // socket buffers fill and its queue overflows; the healthy one keeps up.
            const N: u64 = 100_000;
            let pad = "p".repeat(160);
            let reader = tokio::spawn(async move {
                for expect in 1..=N {
                    let raw = recv_raw(&mut healthy).await;
                    assert!(raw.starts_with(&format!(r#"{{"op":"msg","room":"r","seq":{expect},"#)), "{raw}");
                }
            });
            for i in 0..N {
                publisher.feed(Message::Text(format!(r#"{{"op":"pub","room":"r","data":[{i},"{pad}"]}}"#))).await.unwrap();
                if i % 2000 == 1999 {
                    publisher.flush().await.unwrap();
                    tokio::time::sleep(Duration::from_millis(40)).await;
                }
            }
            publisher.flush().await.unwrap();
            reader.await.unwrap();
            let s = stats_until(&server, |s| {
                shard_sum(s, "dropped_oldest") + shard_sum(s, "dropped_newest") + shard_sum(s, "dropped_conflated") > 0
            })
            .await;
            let closed: u64 = shard_sum(&s, "closed_slow");
            assert_eq!(closed, 0, "{policy}: {s}");
            // The stalled member now reads: it is still connected, gets an increasing
            // sequence, and every seq it did not get is in exactly one gap notice; under
            // drop-oldest it ends with the latest message.
            let (mut last, mut seen, mut gaps) = (0, vec![0u8; N as usize + 1], 0);
            loop {
                let v = match tokio::time::timeout(Duration::from_secs(2), stalled.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str::<Value>(&t).unwrap(),
                    Ok(Some(Ok(Message::Ping(_)))) => continue,
                    _ => break,
                };
                if v["op"] == "gap" {
                    gaps += 1;
                    for s in v["from"].as_u64().unwrap()..=v["to"].as_u64().unwrap() {
                        seen[s as usize] += 1;
                    }
                    continue;
                }
                let seq = v["seq"].as_u64().unwrap();
                assert!(seq > last, "{policy}: {seq} after {last}");
                seen[seq as usize] += 1;
                last = seq;
            }
            assert!(last > 0 && gaps > 0, "{policy}: the stalled member got messages and notices");
            let wrong = (1..=N as usize).filter(|&s| seen[s] != 1).count();
            assert_eq!(wrong, 0, "{policy}: every seq arrived or was in one gap notice");
            if policy != "drop-newest" {
                assert_eq!(last, N, "{policy} keeps the newest");
            }
        }
    }

    async fn connect_join_close_storms_leave_no_members_and_no_rooms(backend: &str) {
        let server = Server::start(backend, &["--shards", "3"]);
        for round in 0..3 {
            let mut conns = Vec::new();
            for i in 0..150 {
                let rooms = format!("a{},b{},shared", i % 7, (i + round) % 5);
                let mut ws = connect(&server, &format!("/ws?room={rooms}")).await;
                for _ in 0..3 {
                    assert_eq!(recv(&mut ws).await["op"], "joined");
                }
                if i % 3 == 0 {
                    send(&mut ws, json!({"op":"leave","room":"shared"})).await;
                    assert_eq!(recv(&mut ws).await["op"], "left");
                }
                conns.push(ws);
            }
            let s = stats(&server);
            assert_eq!(s["members"].as_u64(), Some(150 * 3 - 50), "{s}");
            for (i, mut ws) in conns.into_iter().enumerate() {
                if i % 2 == 0 {
                    ws.close(None).await.unwrap();
                }
                // The rest just drop their sockets.
            }
        }
        // The /stats request itself is the one connection left. The 13 rooms (a0-a6, b0-b4,
        // shared) keep their history for --history-ttl with no members.
        let s = stats_until(&server, |s| s["members"] == 0 && s["connections"] == 1).await;
        assert_eq!((s["members"].as_u64(), s["rooms"].as_u64(), s["connections"].as_u64()), (Some(0), Some(13), Some(1)), "{s}");
        let local: u64 = shard_sum(&s, "rooms_local");
        assert_eq!(local, 0, "{s}");
    }

    async fn bad_ops_get_an_error_and_the_connection_stays(backend: &str) {
        let server = Server::start(backend, &["--max-rooms-per-conn", "2"]);
        let mut ws = connect(&server, "/ws?room=a,bad%20room").await;
        let mut first = [recv(&mut ws).await, recv(&mut ws).await];
        first.sort_by_key(|v| v["op"].to_string());
        assert_eq!(first[0]["code"], "invalid_room");
        assert_eq!(first[1]["op"], "joined");
        let cases = [
            ("not json".to_string(), "bad_json"),
            (r#"{"op":"fly","room":"a"}"#.to_string(), "unknown_op"),
            (r#"{"op":"pub","room":"a"}"#.to_string(), "missing_field"),
            (r#"{"op":"join","room":"a"}"#.to_string(), "already_joined"),
            (r#"{"op":"leave","room":"zzz"}"#.to_string(), "not_joined"),
            (format!(r#"{{"op":"join","room":"{}"}}"#, "x".repeat(200)), "invalid_room"),
        ];
        for (text, code) in cases {
            ws.send(Message::Text(text.clone())).await.unwrap();
            let v = recv(&mut ws).await;
            assert_eq!((v["op"].as_str(), v["code"].as_str()), (Some("error"), Some(code)), "{text}: {v}");
            assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()));
        }
        ws.send(Message::Binary(vec![1, 2, 3])).await.unwrap();
        assert_eq!(recv(&mut ws).await["code"], "bad_json");
        assert_eq!(join(&mut ws, "b").await, 0);
        send(&mut ws, json!({"op":"join","room":"c"})).await;
        assert_eq!(recv(&mut ws).await["code"], "too_many_rooms");
        // Still a working member.
        send(&mut ws, json!({"op":"pub","room":"b","data":[1,2],"id":1})).await;
        let mut got = [recv(&mut ws).await, recv(&mut ws).await];
        got.sort_by_key(|v| v["op"].to_string());
        assert_eq!(got[0], json!({"op":"ack","id":1,"seq":1}));
        assert_eq!(got[1], json!({"op":"msg","room":"b","seq":1,"data":[1,2]}));
    }
}
