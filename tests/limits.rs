//! Resource limits over real sockets, on both backends.

mod common;

use std::time::Duration;

use common::Server;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

const SECOND: Duration = Duration::from_secs(1);

/// The server's CPU time so far, in nanoseconds (all threads).
fn cpu_ns(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum()
}

async fn try_connect(
    server: &Server,
) -> Option<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
> {
    let attempt = tokio_tungstenite::connect_async(server.url("/echo"));
    match tokio::time::timeout(SECOND * 2, attempt).await {
        Ok(Ok((mut ws, _))) => {
            // Accepted and served: it echoes.
            ws.send(Message::Text("x".into())).await.ok()?;
            match tokio::time::timeout(SECOND * 2, ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) if t == "x" => Some(ws),
                _ => None,
            }
        }
        _ => None,
    }
}

both_backends! {
    async fn a_client_that_ignores_pings_is_dropped_and_one_that_answers_stays(backend: &str) {
        let server = Server::start(backend, &["--ping-interval", "2", "--pong-timeout", "1"]);
        // A raw client: completes the handshake, then never sends another byte.
        let silent = {
            let addr = server.addr;
            tokio::task::spawn_blocking(move || {
                use std::io::{Read, Write};
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(SECOND * 10)).unwrap();
                s.write_all(&common::upgrade_request("/echo")).unwrap();
                let started = std::time::Instant::now();
                let mut got = Vec::new();
                let _ = s.read_to_end(&mut got);
                (started.elapsed(), got)
            })
        };
        // A real client: tungstenite answers every ping while we read.
        let (mut alive, _) = tokio_tungstenite::connect_async(server.url("/echo")).await.unwrap();
        let mut pings = 0;
        let until = std::time::Instant::now() + SECOND * 7;
        while std::time::Instant::now() < until {
            match tokio::time::timeout(SECOND, alive.next()).await {
                Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
                Ok(other) => panic!("unexpected {other:?}"),
                Err(_) => {}
            }
        }
        assert!(pings >= 2, "pinged every 2 s: {pings}");
        alive.send(Message::Text("still here".into())).await.unwrap();
        loop {
            match alive.next().await.unwrap().unwrap() {
                Message::Ping(_) => continue,
                m => {
                    assert_eq!(m, Message::Text("still here".into()));
                    break;
                }
            }
        }
        let (waited, got) = silent.await.unwrap();
        // Pinged within one interval, dropped one pong-timeout later (ticks are 1 s).
        assert!(waited <= SECOND * 5, "dropped after {waited:?}");
        let text_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert_eq!(&got[text_end..text_end + 2], &[0x89, 0x00], "a ping came first");
    }

    async fn out_of_descriptors_refuses_cleanly_logs_once_and_resumes(backend: &str) {
        let dir = std::env::temp_dir().join(format!("roomcast-nofile-{backend}-{}", std::process::id()));
        let log = dir.with_extension("log");
        let server = Server::start_limited(backend, 64, &log, &["--shards", "1"]);
        let mut held = Vec::new();
        let mut refused = 0;
        for _ in 0..90 {
            match try_connect(&server).await {
                Some(ws) => held.push(ws),
                None => refused += 1,
            }
        }
        assert!(held.len() >= 40 && held.len() <= 64, "held {}", held.len());
        assert!(refused >= 90 - 64, "refused {refused}");
        // At the limit, with clients still knocking, the server does not spin.
        let before = cpu_ns(server.pid());
        for _ in 0..20 {
            assert!(try_connect(&server).await.is_none());
        }
        tokio::time::sleep(SECOND).await;
        let spent = cpu_ns(server.pid()) - before;
        assert!(spent < 200_000_000, "server used {spent} ns of CPU while at the limit");
        // Slots free up: accepting resumes.
        held.truncate(held.len() - 10);
        tokio::time::sleep(SECOND / 2).await;
        let mut again = Vec::new();
        for _ in 0..5 {
            again.push(try_connect(&server).await.expect("accepting resumed"));
        }
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(text.matches("out of descriptors").count(), 1, "one log line per episode:\n{text}");
        assert!(text.contains("accepting again"), "{text}");
        let _ = std::fs::remove_file(&log);
    }

    async fn a_client_that_sends_faster_than_its_shard_parses_does_not_stall_the_shard(backend: &str) {
        // One shard, no rate limit: everything below shares one event loop.
        let server = Server::start(backend, &["--shards", "1", "--rate", "0"]);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flooder = {
            let (addr, stop) = (server.addr, stop.clone());
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                use std::sync::atomic::Ordering;
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                let mut reader = s.try_clone().unwrap();
                // What comes back (the 101, acks) is read and dropped, so the flooder is
                // never paused for not reading.
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 1 << 16];
                    while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
                });
                s.write_all(&common::upgrade_request("/ws")).unwrap();
                let body = format!(r#"{{"op":"pub","room":"nobody","data":"{}"}}"#, "x".repeat(30_000));
                let frame = common::client_frame(0x81, body.as_bytes());
                // Bounded: until the checks below are done, 20 s at most.
                let start = std::time::Instant::now();
                let mut sent = 0u64;
                while !stop.load(Ordering::Relaxed) && start.elapsed() < SECOND * 20 {
                    if s.write_all(&frame).is_err() {
                        break;
                    }
                    sent += 1;
                }
                sent
            })
        };
        tokio::time::sleep(SECOND / 2).await;
        // Meanwhile, on the same shard, a new client is accepted, upgraded and echoed, and
        // the flood is still going.
        for _ in 0..3 {
            let ws = try_connect(&server).await;
            assert!(ws.is_some(), "a second client was not served while the first one floods");
            assert!(!flooder.is_finished(), "the flood ended early");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let sent = flooder.join().unwrap();
        assert!(sent > 100, "the flooder sent only {sent} messages");
    }
}
