//! /echo, /healthz and the bad-input answers over real sockets, on both backends, with
//! tokio-tungstenite as the client (and raw sockets where a real client would refuse to
//! misbehave).

mod common;

use std::time::Duration;

use common::{client_frame, upgrade_request, Server};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

const SECOND: Duration = Duration::from_secs(1);

/// The close code at the front of a server close frame in `bytes` (after the 101).
fn close_code_after_upgrade(bytes: &[u8]) -> Option<u16> {
    let at = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let frame = &bytes[at..];
    (frame.first() == Some(&0x88) && frame.len() >= 4)
        .then(|| u16::from_be_bytes([frame[2], frame[3]]))
}

both_backends! {
    async fn echoes_text_and_binary_of_every_size(backend: &str) {
        let server = Server::start(backend, &[]);
        let (mut ws, _) = tokio_tungstenite::connect_async(server.url("/echo")).await.unwrap();
        for size in [0usize, 1, 125, 126, 65535, 65536 - 64] {
            let text = "é".repeat(size / 2);
            ws.send(Message::Text(text.clone())).await.unwrap();
            assert_eq!(common::next_data(&mut ws).await.unwrap().unwrap(), Message::Text(text));
            let bin: Vec<u8> = (0..size).map(|i| i as u8).collect();
            ws.send(Message::Binary(bin.clone())).await.unwrap();
            assert_eq!(common::next_data(&mut ws).await.unwrap().unwrap(), Message::Binary(bin));
        }
    }

    async fn answers_ping_with_pong_and_completes_the_close_handshake(backend: &str) {
        let server = Server::start(backend, &[]);
        let (mut ws, _) = tokio_tungstenite::connect_async(server.url("/echo")).await.unwrap();
        ws.send(Message::Ping(b"are you there".to_vec())).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::Pong(b"are you there".to_vec()));
        let frame = CloseFrame { code: CloseCode::Library(4000), reason: "bye".into() };
        ws.send(Message::Close(Some(frame))).await.unwrap();
        match common::next_data(&mut ws).await.unwrap().unwrap() {
            Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::Library(4000)),
            other => panic!("expected close, got {other:?}"),
        }
        // Then the server closes the TCP connection.
        assert!(tokio::time::timeout(SECOND * 3, ws.next()).await.unwrap().is_none());
    }

    async fn a_pipelined_burst_larger_than_the_out_ring_comes_back_complete_and_in_order(backend: &str) {
        let server = Server::start(backend, &["--out-ring", "4", "--rate", "0"]);
        let (ws, _) = tokio_tungstenite::connect_async(server.url("/echo")).await.unwrap();
        let (mut tx, mut rx) = ws.split();
        const N: usize = 20_000;
        let writer = tokio::spawn(async move {
            for i in 0..N {
                tx.feed(Message::Text(format!("message {i:05} {}", "x".repeat(i % 300)))).await.unwrap();
            }
            tx.flush().await.unwrap();
            tx
        });
        for i in 0..N {
            let got = tokio::time::timeout(SECOND * 20, common::next_data(&mut rx)).await.unwrap().unwrap().unwrap();
            assert_eq!(got, Message::Text(format!("message {i:05} {}", "x".repeat(i % 300))));
        }
        drop(writer.await.unwrap());
    }

    async fn a_starved_receive_buffer_pool_loses_no_bytes(backend: &str) {
        // Two 4 KiB provided buffers for 40 connections sending 60 KiB messages: io_uring
        // runs out of buffers (ENOBUFS) over and over and must re-arm without losing data.
        let server = Server::start(backend, &["--shards", "1", "--recv-buffers", "2", "--recv-buffer-size", "4096"]);
        let mut tasks = Vec::new();
        for c in 0..40u8 {
            let url = server.url("/echo");
            tasks.push(tokio::spawn(async move {
                let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
                for i in 0..5u8 {
                    let msg: Vec<u8> = (0..60_000u32).map(|j| (j as u8) ^ c ^ i).collect();
                    ws.send(Message::Binary(msg.clone())).await.unwrap();
                    let got = tokio::time::timeout(SECOND * 20, common::next_data(&mut ws)).await.unwrap().unwrap().unwrap();
                    assert_eq!(got, Message::Binary(msg));
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }

    async fn healthz_answers_200_and_unknown_paths_404_before_any_upgrade(backend: &str) {
        let server = Server::start(backend, &[]);
        let ok = server.raw_exchange(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", SECOND * 3);
        assert!(ok.starts_with(b"HTTP/1.1 200 OK\r\n"), "{}", String::from_utf8_lossy(&ok));
        let missing = server.raw_exchange(&upgrade_request("/nope"), SECOND * 3);
        assert!(missing.starts_with(b"HTTP/1.1 404 "), "{}", String::from_utf8_lossy(&missing));
        let err = tokio_tungstenite::connect_async(server.url("/nope")).await.unwrap_err();
        assert!(err.to_string().contains("404"), "{err}");
    }

    async fn bad_handshakes_get_400_426_431(backend: &str) {
        let server = Server::start(backend, &["--max-header-bytes", "1024"]);
        let v8 = String::from_utf8(upgrade_request("/echo")).unwrap().replace("Version: 13", "Version: 8");
        let resp = server.raw_exchange(v8.as_bytes(), SECOND * 3);
        let text = String::from_utf8_lossy(&resp);
        assert!(text.starts_with("HTTP/1.1 426 ") && text.contains("Sec-WebSocket-Version: 13"), "{text}");
        let no_key = String::from_utf8(upgrade_request("/echo")).unwrap().replace("Sec-WebSocket-Key", "X-Key");
        assert!(server.raw_exchange(no_key.as_bytes(), SECOND * 3).starts_with(b"HTTP/1.1 400 "));
        let garbage = server.raw_exchange(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", SECOND * 3);
        assert!(garbage.starts_with(b"HTTP/1.1 400 "), "{}", String::from_utf8_lossy(&garbage));
        let huge = format!("GET /echo HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n", "a".repeat(2000));
        assert!(server.raw_exchange(huge.as_bytes(), SECOND * 3).starts_with(b"HTTP/1.1 431 "));
    }

    async fn protocol_violations_close_with_1002_1007_1009(backend: &str) {
        let server = Server::start(backend, &["--max-message", "1024"]);
        let cases: [(&str, Vec<u8>, u16); 5] = [
            ("unmasked frame", vec![0x81, 0x02, b'h', b'i'], 1002),
            ("reserved opcode", client_frame(0x83, b""), 1002),
            ("rsv bit", client_frame(0xC1, b"x"), 1002),
            ("invalid utf-8", client_frame(0x81, &[0xCE, 0xBA, 0xE1, 0xBD]), 1007),
            ("too big", client_frame(0x82, &[0u8; 2000]), 1009),
        ];
        for (what, frame, code) in cases {
            let mut req = upgrade_request("/echo");
            req.extend(frame);
            let resp = server.raw_exchange(&req, SECOND * 3);
            assert_eq!(close_code_after_upgrade(&resp), Some(code), "{what}: {resp:?}");
        }
    }

    async fn an_unfinished_handshake_is_closed_at_its_deadline(backend: &str) {
        let server = Server::start(backend, &["--handshake-timeout", "1"]);
        let started = std::time::Instant::now();
        let resp = server.raw_exchange(b"GET /echo HTTP/1.1\r\nHost: x\r\n", SECOND * 5);
        assert!(resp.is_empty());
        let waited = started.elapsed();
        assert!(waited >= SECOND && waited < SECOND * 4, "closed after {waited:?}");
    }

    async fn a_misbehaving_client_disturbs_no_one_else(backend: &str) {
        let server = Server::start(backend, &["--max-message", "1024"]);
        let (mut good, _) = tokio_tungstenite::connect_async(server.url("/echo")).await.unwrap();
        for i in 0..50 {
            let mut req = upgrade_request("/echo");
            req.extend(client_frame(0x82, &vec![0u8; 100 * i]));
            let _ = server.raw_exchange(&req, SECOND);
            good.send(Message::Text(format!("still here {i}"))).await.unwrap();
            assert_eq!(common::next_data(&mut good).await.unwrap().unwrap(), Message::Text(format!("still here {i}")));
        }
    }
}
