//! wss:// and https:// (--tls-cert/--tls-key) on both backends, with real clients: rustls
//! (tokio-tungstenite) in every protocol version and cipher suite, Python `websockets`,
//! Node `ws` and headless Chromium; what bad input on the TLS port gets; certificate
//! reload on SIGHUP under 1,000 open connections; exit 2 on a bad certificate.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::tls::{self, Pki};
use common::{next_data, Server};
use futures_util::SinkExt;
use rustls::crypto::ring::cipher_suite as cs;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(5);

fn start(backend: &str, pki: &Pki, extra: &[&str]) -> Server {
    let mut args = vec![
        "--tls-cert",
        pki.cert.to_str().unwrap(),
        "--tls-key",
        pki.key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Server::start(backend, &args)
}

async fn echo(ws: &mut common::Ws, msg: Message) {
    ws.send(msg.clone()).await.unwrap();
    let got = tokio::time::timeout(WAIT, next_data(ws)).await.unwrap();
    assert_eq!(got.unwrap().unwrap(), msg);
}

/// `roomcast_tls_handshakes_total{outcome}` summed over the shards, from `/metrics`.
fn handshakes(metrics: &str, outcome: &str) -> u64 {
    let label = format!("outcome=\"{outcome}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("roomcast_tls_handshakes_total{") && l.contains(&label))
        .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
        .sum()
}

async fn json_next(ws: &mut common::Ws) -> Value {
    match tokio::time::timeout(WAIT, next_data(ws)).await.unwrap() {
        Some(Ok(Message::Text(t))) => serde_json::from_str(&t).unwrap(),
        other => panic!("expected text, got {other:?}"),
    }
}

both_backends! {
    async fn echo_rooms_and_http_work_over_tls_in_every_version_and_suite(backend: &str) {
        let pki = Pki::new(&format!("suites-{backend}"));
        let server = start(backend, &pki, &["--shards", "2"]);
        let cases: [(&'static rustls::SupportedProtocolVersion, rustls::SupportedCipherSuite); 6] = [
            (&rustls::version::TLS13, cs::TLS13_AES_128_GCM_SHA256),
            (&rustls::version::TLS13, cs::TLS13_AES_256_GCM_SHA384),
            (&rustls::version::TLS13, cs::TLS13_CHACHA20_POLY1305_SHA256),
            (&rustls::version::TLS12, cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256),
            (&rustls::version::TLS12, cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384),
            (&rustls::version::TLS12, cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256),
        ];
        for (version, suite) in cases {
            let config = pki.client(&[version], &[suite]);
            let mut ws = tls::connect(&server, "/echo", config.clone()).await;
            // Empty, small, at and across the 16 KiB record limit, near --max-message.
            for size in [0usize, 1, 125, 16_383, 16_384, 16_385, 40_000, 65_000] {
                let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
                echo(&mut ws, Message::Binary(data)).await;
            }
            // Many small messages at once: they share records both ways.
            for i in 0..300 {
                ws.feed(Message::Text(format!("m{i}"))).await.unwrap();
            }
            ws.flush().await.unwrap();
            for i in 0..300 {
                let got = tokio::time::timeout(WAIT, next_data(&mut ws)).await.unwrap();
                assert_eq!(got.unwrap().unwrap(), Message::Text(format!("m{i}")), "{suite:?}");
            }
            ws.close(None).await.unwrap();
            // The close handshake completes: the server's close frame comes back.
            let end = tokio::time::timeout(WAIT, next_data(&mut ws)).await.unwrap();
            assert!(matches!(end, Some(Ok(Message::Close(_))) | None), "{suite:?}: {end:?}");

            // A room: two members on a TLS connection each, one publishes.
            let room = format!("r-{:?}", suite.suite());
            let mut a = tls::connect(&server, &format!("/ws?room={room}"), config.clone()).await;
            let mut b = tls::connect(&server, &format!("/ws?room={room}"), config.clone()).await;
            for c in [&mut a, &mut b] {
                assert_eq!(json_next(c).await["op"], "joined");
            }
            let data = json!({"text": "x".repeat(20_000)});
            a.send(Message::Text(json!({"op":"pub","room":room,"data":data}).to_string())).await.unwrap();
            let got = loop {
                let v = json_next(&mut b).await;
                if v["op"] == "msg" {
                    break v;
                }
            };
            assert_eq!(got["data"], data, "{suite:?}");
        }
        // The plain HTTP endpoints are served over TLS too.
        let config = pki.any_client();
        let (status, body) = tls::get(server.addr, "/metrics", config.clone());
        assert_eq!(status, 200);
        let ok = handshakes(&body, "ok");
        assert!(ok >= 18, "3 connections per case: {ok}\n{body}");
        assert_eq!(tls::get(server.addr, "/healthz", config.clone()).0, 200);
        tls::settles_to(&server, 0, &config);
    }

    async fn bad_input_on_the_tls_port_gets_a_clean_answer_and_nothing_leaks(backend: &str) {
        let pki = Pki::new(&format!("bad-{backend}"));
        let server = start(backend, &pki, &["--handshake-timeout", "2", "--shards", "1"]);
        let config = pki.any_client();
        // Plain HTTP and a plain WebSocket handshake: an HTTP answer saying why.
        for request in [
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".to_vec(),
            common::upgrade_request("/echo"),
        ] {
            let answer = server.raw_exchange(&request, WAIT);
            let text = String::from_utf8_lossy(&answer);
            assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
            assert!(text.contains("speaks TLS"), "{text}");
        }
        // A record that is not a ClientHello, and a record longer than any may be: closed
        // at once (with rustls's alert for the first).
        for bytes in [
            vec![0x16, 3, 1, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8],
            vec![0x17, 3, 3, 0xFF, 0xFF, 0],
        ] {
            let start = Instant::now();
            let answer = server.raw_exchange(&bytes, WAIT);
            assert!(start.elapsed() < Duration::from_secs(2), "{answer:?}");
            assert!(answer.is_empty() || answer[0] == 0x15, "an alert or nothing: {answer:?}");
        }
        // Silence, and half a ClientHello: closed by --handshake-timeout (2 s).
        for bytes in [vec![], vec![0x16, 3, 1, 0, 200, 1, 0]] {
            let start = Instant::now();
            let answer = server.raw_exchange(&bytes, Duration::from_secs(10));
            let took = start.elapsed();
            assert!(answer.is_empty(), "{answer:?}");
            assert!(took > Duration::from_millis(1500) && took < Duration::from_secs(6), "{took:?}");
        }
        // After a good handshake, a record that does not decrypt: closed.
        let mut s = tls::stream(server.addr, config.clone());
        s.conn.complete_io(&mut s.sock).unwrap();
        let mut forged = vec![0x17, 3, 3, 0, 40];
        forged.extend_from_slice(&[0x5A; 40]);
        s.sock.write_all(&forged).unwrap();
        // Closed (EOF or reset) well before the 5 s read timeout.
        let start = Instant::now();
        let mut rest = Vec::new();
        let _ = s.sock.read_to_end(&mut rest);
        assert!(start.elapsed() < Duration::from_secs(3), "not closed: {rest:?}");
        // A TLS client that sends a bad WebSocket handshake gets its HTTP answer inside TLS.
        let mut s = tls::stream(server.addr, config.clone());
        s.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n").unwrap();
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        // (No Sec-WebSocket-Version: 426, as in clear.)
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 426 "), "{answer}");
        // Everyone else is unaffected, and no slot is left behind.
        let mut ws = tls::connect(&server, "/echo", config.clone()).await;
        echo(&mut ws, Message::Text("still here".into())).await;
        drop(ws);
        tls::settles_to(&server, 0, &config);
        let (_, metrics) = tls::get(server.addr, "/metrics", config.clone());
        let failed = handshakes(&metrics, "failed");
        assert!(failed >= 3, "{metrics}");
    }

    async fn sighup_gives_new_connections_the_new_certificate_and_keeps_open_ones(backend: &str) {
        let mut pki = Pki::new(&format!("reload-{backend}"));
        let log = pki.dir.join("server.log");
        let mut args = vec!["--tls-cert", pki.cert.to_str().unwrap(), "--tls-key", pki.key.to_str().unwrap()];
        args.extend(["--shards", "2"]);
        let server = Server::start_limited(backend, 20_000, &log, &args);
        let old = pki.any_client();
        let old_cert = pki.cert_der.clone();
        let mut open = Vec::new();
        for _ in 0..1000 {
            open.push(tls::connect(&server, "/echo", old.clone()).await);
        }
        assert_eq!(tls::peer_certificate(&open[0]), old_cert);
        tls::reissue(&mut pki, &format!("reload2-{backend}"));
        let new = pki.any_client();
        server.signal("HUP");
        // The reload is the signal thread's: wait until a new handshake sees it.
        let deadline = Instant::now() + WAIT;
        let mut fresh = loop {
            let url = format!("wss://{}/echo", server.addr);
            let attempt = tokio_tungstenite::connect_async_tls_with_config(
                url, None, false, Some(tokio_tungstenite::Connector::Rustls(new.clone())),
            ).await;
            if let Ok((ws, _)) = attempt {
                break ws;
            }
            assert!(Instant::now() < deadline, "no handshake with the new certificate");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(tls::peer_certificate(&fresh), pki.cert_der);
        echo(&mut fresh, Message::Text("new".into())).await;
        // A client trusting only the old CA no longer gets through.
        let url = format!("wss://{}/echo", server.addr);
        let refused = tokio_tungstenite::connect_async_tls_with_config(
            url, None, false, Some(tokio_tungstenite::Connector::Rustls(old.clone())),
        ).await;
        assert!(refused.is_err());
        // Every connection opened before the reload still works.
        for (i, ws) in open.iter_mut().enumerate() {
            ws.feed(Message::Text(format!("{i}"))).await.unwrap();
        }
        for ws in open.iter_mut() {
            ws.flush().await.unwrap();
        }
        for (i, ws) in open.iter_mut().enumerate() {
            let got = tokio::time::timeout(WAIT, next_data(ws)).await.unwrap();
            assert_eq!(got.unwrap().unwrap(), Message::Text(format!("{i}")));
        }
        // A bad file on the next reload: the current certificate stays, the log says why.
        std::fs::write(&pki.key, "not a key").unwrap();
        server.signal("HUP");
        let deadline = Instant::now() + WAIT;
        while !std::fs::read_to_string(&log).unwrap().contains("not reloaded") {
            assert!(Instant::now() < deadline, "{}", std::fs::read_to_string(&log).unwrap());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut again = tls::connect(&server, "/echo", new.clone()).await;
        assert_eq!(tls::peer_certificate(&again), pki.cert_der);
        echo(&mut again, Message::Text("same".into())).await;
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("--tls-key"), "{text}");
    }

    async fn tls_listen_serves_wss_beside_a_plain_listener(backend: &str) {
        let pki = Pki::new(&format!("listen-{backend}"));
        // Peer addresses wanted: io_uring arms single-shot accepts on both listeners.
        let server = start(backend, &pki, &["--tls-listen", "127.0.0.1:0", "--shards", "2", "--max-conns-per-ip", "1000"]);
        let tls_addr: std::net::SocketAddr = server
            .line
            .split("TLS on ")
            .nth(1)
            .and_then(|rest| rest.trim_end().trim_end_matches(')').parse().ok())
            .unwrap_or_else(|| panic!("no TLS address in {:?}", server.line));
        let config = pki.any_client();
        // The plain port is plain: ws://, and /stats in clear.
        let mut plain = common::connect(&server, "/ws?room=both").await;
        assert_eq!(json_next(&mut plain).await["op"], "joined");
        assert_eq!(server.get("/healthz").0, 200);
        // The TLS port speaks TLS, to the same rooms.
        let url = format!("wss://{tls_addr}/ws?room=both");
        let (mut secure, _) = tokio_tungstenite::connect_async_tls_with_config(
            url, None, false, Some(tokio_tungstenite::Connector::Rustls(config.clone())),
        ).await.unwrap();
        assert_eq!(json_next(&mut secure).await["op"], "joined");
        for (from, to) in [(0, 1), (1, 0)] {
            let pair = [&mut plain, &mut secure];
            let text = format!("from {from}");
            pair[from].send(Message::Text(json!({"op":"pub","room":"both","data":text}).to_string())).await.unwrap();
            // (A member also gets its own messages: skip the earlier one.)
            loop {
                let v = json_next(pair[to]).await;
                if v["op"] == "msg" && v["data"] == text.as_str() {
                    break;
                }
            }
        }
        // Each port refuses the other's speech: TLS to the plain port, clear to the TLS one.
        let wrong = tokio_tungstenite::connect_async_tls_with_config(
            format!("wss://{}/echo", server.addr), None, false,
            Some(tokio_tungstenite::Connector::Rustls(config.clone())),
        ).await;
        assert!(wrong.is_err());
        let mut s = std::net::TcpStream::connect(tls_addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        drop((plain, secure));
        server.settles_to(0);
    }

    async fn python_node_and_chromium_speak_wss_on_echo_and_a_room(backend: &str) {
        need!(Python, Node, Chromium);
        let pki = Pki::new(&format!("clients-{backend}"));
        // With permessage-deflate too: compressed frames inside TLS records.
        let server = start(backend, &pki, &["--deflate", "--shards", "2"]);
        let base = format!("wss://{}", server.addr);
        let envs = [
            ("ROOMCAST_CA", pki.ca.as_os_str()),
            ("ROOMCAST_SPKI", pki.spki_sha256.as_ref()),
        ];
        let reports = common::deflate_clients(&base, "tls", &envs);
        for (name, r) in &reports {
            for part in ["echo", "room"] {
                assert_eq!(r[part]["same"], true, "{name} {part}: {r}");
            }
        }
        let config = pki.any_client();
        let (_, metrics) = tls::get(server.addr, "/metrics", config.clone());
        let ok = handshakes(&metrics, "ok");
        assert!(ok >= 9, "three connections per client: {metrics}");
    }
}

#[test]
fn a_missing_unreadable_or_mismatched_certificate_is_a_clear_error_and_exit_2() {
    let a = Pki::new("exit-a");
    let b = Pki::new("exit-b");
    let junk = a.dir.join("junk.pem");
    std::fs::write(
        &junk,
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let missing = a.dir.join("missing.pem");
    let cases: [(&std::path::Path, &std::path::Path, &str); 4] = [
        (&missing, &a.key, "--tls-cert"),
        (&a.cert, &missing, "--tls-key"),
        (&junk, &a.key, "--tls-cert"),
        (&a.cert, &b.key, "do not make a certificate"),
    ];
    for (cert, key, says) in cases {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_roomcast"))
            .args(["serve", "--listen", "127.0.0.1:0", "--tls-cert"])
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(says), "{says}: {err}");
    }
    // One without the other is a usage error too.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_roomcast"))
        .args(["serve", "--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(&a.cert)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
