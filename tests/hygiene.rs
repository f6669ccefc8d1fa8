//! "What bad input gets" (DESIGN.md), one test per row, each while a bystander on the
//! same server publishes and receives a steady broadcast that must see no gap and no
//! delay. After each, the server must be back to holding only the bystander's sockets.
//! Both backends.

mod common;

use std::time::{Duration, Instant};

use common::{client_frame, upgrade_request, Bystander, Server};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const SECOND: Duration = Duration::from_secs(1);

/// The bystander's two sockets.
const BYSTANDERS: u64 = 2;

/// Sends `request` and reads the whole answer (the server closes after refusing).
async fn exchange(server: &Server, request: &[u8]) -> String {
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(SECOND * 5, s.read_to_end(&mut out))
        .await
        .expect("the server closes after answering")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// A raw socket, upgraded on `path`.
async fn upgraded(server: &Server, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(&upgrade_request(path)).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

/// Reads server frames until a close frame: its code and reason.
async fn close_of(s: &mut TcpStream) -> (u16, String) {
    tokio::time::timeout(SECOND * 10, async {
        loop {
            let mut h = [0u8; 2];
            s.read_exact(&mut h).await.unwrap();
            let len = match h[1] & 0x7F {
                126 => s.read_u16().await.unwrap() as usize,
                127 => s.read_u64().await.unwrap() as usize,
                n => n as usize,
            };
            let mut payload = vec![0u8; len];
            s.read_exact(&mut payload).await.unwrap();
            if h[0] & 0x0F == 0x8 {
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                return (code, String::from_utf8_lossy(&payload[2..]).into_owned());
            }
        }
    })
    .await
    .expect("a close frame")
}

/// Whether the server closed the socket (EOF or reset) within `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// A JWT signed with `secret` for user `sub`, expiring `ttl` seconds from now (negative:
/// already expired), with room rights.
fn token(secret: &str, sub: &str, ttl: i64, join: &[&str], publish: &[&str]) -> String {
    let exp = roomcast::app::auth::unix_now() as i64 + ttl;
    let claims = serde_json::json!({"sub": sub, "exp": exp, "join": join, "pub": publish});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

const SECRET: &str = "test-secret";

/// A token the bystander may use everywhere.
fn bystander_token() -> String {
    token(SECRET, "bystander", 3600, &["*"], &["*"])
}

async fn json(ws: &mut common::Ws) -> serde_json::Value {
    match tokio::time::timeout(SECOND * 5, common::next_data(ws)).await {
        Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str(&t).unwrap(),
        other => panic!("expected a JSON op, got {other:?}"),
    }
}

both_backends! {
    async fn malformed_http_and_missing_upgrade_or_key_get_400(backend: &str) {
        let server = Server::start(backend, &[]);
        let by = Bystander::start(&server, None).await;
        let no_key = b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
            Sec-WebSocket-Version: 13\r\n\r\n";
        let no_upgrade = b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\n\
            Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        for req in [&b"HELLO THERE\r\n\r\n"[..], no_key, no_upgrade, b"GET / HTTP/1.1\r\nHost h\r\n\r\n"] {
            let answer = exchange(&server, req).await;
            assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        }
        server.settles_to(BYSTANDERS);
        by.finish().await;
    }

    async fn a_version_other_than_13_gets_426_naming_13(backend: &str) {
        let server = Server::start(backend, &[]);
        let by = Bystander::start(&server, None).await;
        let req = String::from_utf8(upgrade_request("/ws")).unwrap().replace("Version: 13", "Version: 8");
        let answer = exchange(&server, req.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 426"), "{answer}");
        assert!(answer.contains("Sec-WebSocket-Version: 13\r\n"), "{answer}");
        server.settles_to(BYSTANDERS);
        by.finish().await;
    }

    async fn headers_over_the_cap_get_431(backend: &str) {
        let server = Server::start(backend, &["--max-header-bytes", "2048"]);
        let by = Bystander::start(&server, None).await;
        let big = format!("X-Filler: {}\r\n\r\n", "f".repeat(4000));
        let req = String::from_utf8(upgrade_request("/ws")).unwrap().replace("\r\n\r\n", &format!("\r\n{big}"));
        let answer = exchange(&server, req.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
        server.settles_to(BYSTANDERS);
        by.finish().await;
    }

    async fn an_origin_not_allowed_gets_403(backend: &str) {
        let server = Server::start(backend, &["--allow-origin", "https://app.example.com", "--allow-origin", "https://*.example.org"]);
        let by = Bystander::start(&server, None).await;
        let base = String::from_utf8(upgrade_request("/ws")).unwrap();
        for (origin, status) in [
            (None, "403"),
            (Some("https://evil.example.net"), "403"),
            (Some("https://example.org"), "403"),
            (Some("https://chat.example.org"), "101"),
            (Some("https://app.example.com"), "101"),
        ] {
            let req = match origin {
                Some(o) => base.replace("\r\n\r\n", &format!("\r\nOrigin: {o}\r\n\r\n")),
                None => base.clone(),
            };
            let mut s = TcpStream::connect(server.addr).await.unwrap();
            s.write_all(req.as_bytes()).await.unwrap();
            let mut head = [0u8; 12];
            s.read_exact(&mut head).await.unwrap();
            assert_eq!(&head[9..12], status.as_bytes(), "{origin:?}");
        }
        server.settles_to(BYSTANDERS);
        by.finish().await;
    }

    async fn a_missing_invalid_or_expired_token_gets_401(backend: &str) {
        let server = Server::start(backend, &["--jwt-secret", SECRET]);
        let by = Bystander::start(&server, Some(&bystander_token())).await;
        let expired = token(SECRET, "ann", -5, &["*"], &["*"]);
        let forged = token("not-the-secret", "ann", 60, &["*"], &["*"]);
        for (path, why) in [
            ("/echo".to_owned(), "missing token"),
            (format!("/ws?token={expired}"), "token expired"),
            (format!("/ws?token={forged}"), "invalid token"),
            ("/ws?token=garbage".to_owned(), "invalid token"),
        ] {
            let answer = exchange(&server, &upgrade_request(&path)).await;
            assert!(answer.starts_with("HTTP/1.1 401"), "{path}: {answer}");
            assert!(answer.ends_with(why), "{path}: {answer}");
        }
        server.settles_to(BYSTANDERS);
        by.finish().await;
    }

    async fn too_many_connections_from_one_address_get_429(backend: &str) {
        let server = Server::start(backend, &["--max-conns-per-ip", "3"]);
        let by = Bystander::start(&server, None).await;
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(upgraded(&server, "/ws").await);
        }
        let answer = exchange(&server, &upgrade_request("/ws")).await;
        assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
        // Another address is not affected, and a closed connection frees its place.
        common::connect_from("127.0.0.3", &server.url("/ws"), &[]).await.unwrap();
        drop(held.pop());
        server.settles_to(BYSTANDERS + 2);
        held.push(upgraded(&server, "/ws").await);
        drop(held);
        server.settles_to(BYSTANDERS);
        by.finish().await;
    }

    async fn too_many_connections_for_one_user_get_429(backend: &str) {
        let server = Server::start(backend, &["--jwt-secret", SECRET, "--max-conns-per-user", "2"]);
        let by = Bystander::start(&server, Some(&bystander_token())).await;
        let t = token(SECRET, "ann", 60, &["*"], &["*"]);
        let path = format!("/ws?token={t}");
        let a = upgraded(&server, &path).await;
        let mut b = upgraded(&server, &path).await;
        let answer = exchange(&server, &upgrade_request(&path)).await;
        assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
        // First-message auth counts too: over the limit it is closed with 1008.
        let mut c = upgraded(&server, "/ws").await;
        c.write_all(&client_frame(0x81, format!(r#"{{"op":"auth","token":"{t}"}}"#).as_bytes())).await.unwrap();
        assert_eq!(close_of(&mut c).await, (1008, "too many connections for this user".into()));
        drop(a);
        b.write_all(&client_frame(0x88, &1000u16.to_be_bytes())).await.unwrap();
        assert_eq!(close_of(&mut b).await.0, 1000);
        drop((b, c));
        server.settles_to(BYSTANDERS);
        let again = upgraded(&server, &path).await;
        drop(again);
        server.settles_to(BYSTANDERS);
        by.finish().await;
    }

    async fn the_total_limit_gets_503(backend: &str) {
        let server = Server::start(backend, &["--max-conns", "4"]);
        let by = Bystander::start(&server, None).await;
        let a = upgraded(&server, "/echo").await;
        let _b = upgraded(&server, "/echo").await;
        let answer = exchange(&server, &upgrade_request("/echo")).await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        drop(a);
        server.settles_to(BYSTANDERS + 1);
        let _c = upgraded(&server, "/echo").await;
        by.finish().await;
    }

    async fn a_handshake_not_finished_by_its_deadline_is_cut(backend: &str) {
        let server = Server::start(backend, &["--handshake-timeout", "2"]);
        let by = Bystander::start(&server, None).await;
        // Slowloris: one header byte a second.
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        let start = Instant::now();
        let req = upgrade_request("/ws");
        let mut cut = None;
        for &b in &req {
            if s.write_all(&[b]).await.is_err() || closed_within(&mut s, SECOND).await {
                cut = Some(start.elapsed());
                break;
            }
        }
        let cut = cut.expect("the slow handshake was never cut");
        assert!(cut >= Duration::from_millis(1500) && cut < Duration::from_secs(4), "cut after {cut:?}");
        server.settles_to(BYSTANDERS);
        by.finish().await;
    }

    async fn protocol_violations_get_1002(backend: &str) {
        let server = Server::start(backend, &[]);
        let by = Bystander::start(&server, None).await;
        let mut unmasked = client_frame(0x81, b"hi");
        unmasked[1] &= 0x7F;
        unmasked.drain(2..6);
        let cases: [(&str, Vec<u8>); 6] = [
            ("RSV1 without an extension", client_frame(0xC1, b"hi")),
            ("reserved opcode 3", client_frame(0x83, b"")),
            ("unmasked client frame", unmasked),
            ("control frame over 125 bytes", client_frame(0x89, &[0u8; 126])),
            ("continuation with nothing to continue", client_frame(0x80, b"x")),
            ("new message inside a fragmented one", [client_frame(0x01, b"a"), client_frame(0x81, b"b")].concat()),
        ];
        for (what, bytes) in cases {
            let mut s = upgraded(&server, "/echo").await;
            s.write_all(&bytes).await.unwrap();
            assert_eq!(close_of(&mut s).await.0, 1002, "{what}");
            assert!(closed_within(&mut s, SECOND * 5).await, "{what}");
        }
        server.settles_to(BYSTANDERS);
        by.finish().await;
    }

    async fn invalid_utf8_in_text_gets_1007(backend: &str) {
        let server = Server::start(backend, &[]);
        let by = Bystander::start(&server, None).await;
        for path in ["/echo", "/ws"] {
            let mut s = upgraded(&server, path).await;
            s.write_all(&client_frame(0x81, b"caf\xC3")).await.unwrap();
            assert_eq!(close_of(&mut s).await.0, 1007, "{path}");
        }
        server.settles_to(BYSTANDERS);
        by.finish().await;
    }

    async fn a_message_over_the_cap_gets_1009(backend: &str) {
        let server = Server::start(backend, &["--max-message", "1024"]);
        let by = Bystander::start(&server, None).await;
        let mut s = upgraded(&server, "/echo").await;
        // Fragments that add up past the cap count as one message.
        s.write_all(&[client_frame(0x02, &[7u8; 1000]), client_frame(0x80, &[7u8; 100])].concat()).await.unwrap();
        assert_eq!(close_of(&mut s).await.0, 1009);
        // A header announcing a huge frame is refused before any payload arrives.
        let mut s = upgraded(&server, "/echo").await;
        let mut huge = vec![0x82, 0x80 | 127];
        huge.extend_from_slice(&(1u64 << 40).to_be_bytes());
        huge.extend_from_slice(&[1, 2, 3, 4]);
        s.write_all(&huge).await.unwrap();
        assert_eq!(close_of(&mut s).await.0, 1009);
        server.settles_to(BYSTANDERS);
        by.finish().await;
    }

    async fn a_rate_past_the_burst_gets_1008(backend: &str) {
        let server = Server::start(backend, &["--rate", "40", "--burst", "40"]);
        let by = Bystander::start(&server, None).await;
        // Within the rate: a message every 50 ms for 2 s stays open.
        let mut calm = upgraded(&server, "/echo").await;
        for _ in 0..40 {
            calm.write_all(&client_frame(0x81, b"ok")).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // A flood: 200 at once.
        let mut flood = upgraded(&server, "/echo").await;
        let burst: Vec<u8> = (0..200).flat_map(|_| client_frame(0x81, b"x")).collect();
        flood.write_all(&burst).await.unwrap();
        assert_eq!(close_of(&mut flood).await, (1008, "rate limit exceeded".into()));
        calm.write_all(&client_frame(0x88, &1000u16.to_be_bytes())).await.unwrap();
        assert_eq!(close_of(&mut calm).await.0, 1000, "the calm client was never limited");
        server.settles_to(BYSTANDERS);
        by.finish().await;
    }

    async fn joins_and_publishes_not_allowed_get_an_error_op_and_the_connection_stays(backend: &str) {
        let server = Server::start(backend, &["--jwt-secret", SECRET]);
        let by = Bystander::start(&server, Some(&bystander_token())).await;
        let t = token(SECRET, "ann", 60, &["public-*"], &["public-chat"]);
        let mut ws = common::connect_from("127.0.0.1", &server.url(&format!("/ws?token={t}")), &[]).await.unwrap();
        ws.send(Message::Text(r#"{"op":"join","room":"secret"}"#.into())).await.unwrap();
        let v = json(&mut ws).await;
        assert_eq!((v["op"].as_str(), v["code"].as_str()), (Some("error"), Some("forbidden")), "{v}");
        ws.send(Message::Text(r#"{"op":"pub","room":"public-news","data":1,"id":1}"#.into())).await.unwrap();
        let v = json(&mut ws).await;
        assert_eq!((v["op"].as_str(), v["code"].as_str()), (Some("error"), Some("forbidden")), "{v}");
        ws.send(Message::Text(r#"{"op":"join","room":"public-chat"}"#.into())).await.unwrap();
        assert_eq!(json(&mut ws).await["op"], "joined");
        ws.send(Message::Text(r#"{"op":"pub","room":"public-chat","data":2,"id":2}"#.into())).await.unwrap();
        let (a, b) = (json(&mut ws).await, json(&mut ws).await);
        let ops = [a["op"].as_str().unwrap(), b["op"].as_str().unwrap()];
        assert!(ops.contains(&"ack") && ops.contains(&"msg"), "{a} {b}");
        drop(ws);
        server.settles_to(BYSTANDERS);
        by.finish().await;
    }

    async fn a_client_that_ignores_pings_is_dropped_and_its_slot_freed(backend: &str) {
        let server = Server::start(backend, &["--ping-interval", "2", "--pong-timeout", "1"]);
        let by = Bystander::start(&server, None).await;
        let mut deaf = upgraded(&server, "/ws").await;
        let start = Instant::now();
        // It reads (the pings arrive) but never answers.
        assert!(closed_within(&mut deaf, SECOND * 6).await, "never dropped");
        let after = start.elapsed();
        assert!(after <= Duration::from_millis(4500), "dropped after {after:?}");
        server.settles_to(BYSTANDERS);
        by.finish().await;
    }

    async fn a_slow_consumer_gets_the_policy_and_nobody_else_notices(backend: &str) {
        let server = Server::start(backend, &["--slow-policy", "close", "--rate", "0", "--out-ring", "16", "--max-queued-bytes", "262144"]);
        let by = Bystander::start(&server, None).await;
        // A member of `flood` that never reads.
        let mut stalled = upgraded(&server, "/ws?room=flood").await;
        let (mut publisher, _) = tokio_tungstenite::connect_async(server.url("/ws")).await.unwrap();
        let pad = "p".repeat(1000);
        let mut closed = false;
        for i in 0..20_000 {
            publisher.feed(Message::Text(format!(r#"{{"op":"pub","room":"flood","data":[{i},"{pad}"]}}"#))).await.unwrap();
            if i % 500 == 499 {
                publisher.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
                if server.stats()["shards"].as_array().unwrap().iter().any(|s| s["closed_slow"].as_u64() > Some(0)) {
                    closed = true;
                    break;
                }
            }
        }
        assert!(closed, "the stalled member was never closed");
        // It reads at last: what was queued, then the close frame.
        assert_eq!(close_of(&mut stalled).await, (1008, "slow consumer".into()));
        drop((stalled, publisher));
        server.settles_to(BYSTANDERS);
        by.finish().await;
    }

    async fn an_idle_connection_is_closed_by_the_idle_timeout(backend: &str) {
        let server = Server::start(backend, &["--idle-timeout", "2", "--ping-interval", "2", "--pong-timeout", "1"]);
        // A client that answers pings (tungstenite does, while reading) but sends nothing.
        let (mut ws, _) = tokio_tungstenite::connect_async(server.url("/echo")).await.unwrap();
        let start = Instant::now();
        let close = loop {
            match tokio::time::timeout(SECOND * 8, ws.next()).await {
                Ok(Some(Ok(Message::Close(Some(f))))) => break (u16::from(f.code), f.reason.to_string()),
                Ok(Some(Ok(_))) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        };
        assert_eq!(close, (1000, "idle timeout".into()));
        assert!(start.elapsed() >= Duration::from_millis(1900), "{:?}", start.elapsed());
        drop(ws);
        server.settles_to(0);
    }

    async fn a_peer_that_never_completes_the_close_is_cut_at_the_close_timeout(backend: &str) {
        let server = Server::start(backend, &["--close-timeout", "1"]);
        let mut s = upgraded(&server, "/echo").await;
        s.write_all(&client_frame(0x81, b"\xFF")).await.unwrap();
        let start = Instant::now();
        assert_eq!(close_of(&mut s).await.0, 1007);
        // We never send our close nor our FIN: the server gives up after 1 s.
        assert!(closed_within(&mut s, SECOND * 4).await);
        assert!(start.elapsed() < Duration::from_millis(2500), "{:?}", start.elapsed());
        server.settles_to(0);
    }
}
