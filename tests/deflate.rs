//! permessage-deflate (`--deflate`) against the real binary, from a client written here on
//! raw sockets (it must see the frames' RSV1 bit and bytes, which libraries hide): what is
//! agreed, that a room's batch is compressed once and shared, compressed publishes and
//! echoes, what bad compressed input gets, a compression bomb, and the slow-consumer
//! policies over compressed deliveries. Real clients (Python `websockets`, Node `ws`,
//! Chromium) are in `deflate_clients`, below.

mod common;

use std::time::{Duration, Instant};

use common::{client_frame, connect, shard_sum, Server};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);
const CHROMIUM_OFFER: &str = "permessage-deflate; client_max_window_bits";
const ANSWER: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// A WebSocket client on a bare socket.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
    /// The 101's `Sec-WebSocket-Extensions` (empty: none).
    answer: String,
}

impl Raw {
    async fn connect(server: &Server, path: &str, offer: Option<&str>) -> Raw {
        Raw::over(TcpStream::connect(server.addr).await.unwrap(), path, offer).await
    }

    async fn over(mut s: TcpStream, path: &str, offer: Option<&str>) -> Raw {
        let ext = offer.map_or(String::new(), |o| {
            format!("Sec-WebSocket-Extensions: {o}\r\n")
        });
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{ext}\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed during the handshake");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8(buf[..end].to_vec()).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let answer = head
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Extensions: "))
            .unwrap_or("")
            .to_owned();
        buf.drain(..end);
        Raw { s, buf, answer }
    }

    /// The next frame: its first byte and payload. `None` at EOF or after `wait`.
    async fn frame_within(&mut self, wait: Duration) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                let (len, head) = match self.buf[1] & 0x7F {
                    126 if self.buf.len() >= 4 => (
                        usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]])),
                        4,
                    ),
                    127 if self.buf.len() >= 10 => (
                        u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (usize::from(n), 2),
                };
                if len != usize::MAX && self.buf.len() >= head + len {
                    let first = self.buf[0];
                    let payload = self.buf[head..head + len].to_vec();
                    self.buf.drain(..head + len);
                    return Some((first, payload));
                }
            }
            let mut chunk = vec![0u8; 64 * 1024];
            match tokio::time::timeout(wait, self.s.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }

    async fn frame(&mut self) -> (u8, Vec<u8>) {
        self.frame_within(WAIT).await.expect("a frame")
    }

    /// The next data message as JSON, inflated if it came compressed.
    async fn json(&mut self) -> Value {
        loop {
            let (first, payload) = self.frame().await;
            match first & 0x0F {
                0x9 | 0xA => continue,
                _ => return serde_json::from_slice(&plain(first, &payload, 15)).unwrap(),
            }
        }
    }

    async fn send(&mut self, first_byte: u8, payload: &[u8]) {
        self.s
            .write_all(&client_frame(first_byte, payload))
            .await
            .unwrap();
    }

    /// Reads until the server's close frame: its code.
    async fn close_code(&mut self) -> u16 {
        loop {
            match self.frame_within(WAIT).await {
                Some((first, p)) if first & 0x0F == 0x8 => return u16::from_be_bytes([p[0], p[1]]),
                Some(_) => continue,
                None => panic!("no close frame"),
            }
        }
    }
}

/// A frame's message: inflated (with a `window`-bit inflater) when RSV1 is set.
fn plain(first: u8, payload: &[u8], window: u8) -> Vec<u8> {
    if first & 0x40 == 0 {
        return payload.to_vec();
    }
    let mut d = Decompress::new_with_window_bits(false, window);
    let mut out = Vec::with_capacity(payload.len() * 20 + 1024);
    let input = [payload, &[0, 0, 0xff, 0xff]].concat();
    d.decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .unwrap();
    out
}

/// What a client sends compressed: raw DEFLATE, sync-flushed, the trailer removed.
fn compress(data: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::best(), false);
    let mut out = Vec::with_capacity(data.len() + 64);
    c.compress_vec(data, &mut out, FlushCompress::Sync).unwrap();
    assert!(out.len() < out.capacity(), "one call was enough");
    out.truncate(out.len() - 4);
    out
}

/// About 1 KB of JSON that compresses the way real feeds do.
fn feed(n: usize) -> Value {
    let items: Vec<Value> = (0..20)
        .map(|i| json!({"sym": format!("S{:03}", (n * 7 + i) % 500), "bid": 100.0 + (i * 13 % 97) as f64 / 4.0, "vol": n * 31 + i}))
        .collect();
    json!({ "items": items })
}

async fn tung_json(ws: &mut common::Ws) -> Value {
    common::recv_json(ws, WAIT).await
}

both_backends! {
    async fn a_rooms_batch_is_compressed_once_and_shared_by_every_deflate_member(backend: &str) {
        let server = Server::start(backend, &["--deflate", "--deflate-min-size", "256", "--shards", "2", "--rate", "0"]);
        let mut a = Raw::connect(&server, "/ws?room=r", Some(CHROMIUM_OFFER)).await;
        let mut b = Raw::connect(&server, "/ws?room=r", Some("permessage-deflate")).await;
        let mut n = Raw::connect(&server, "/ws?room=r", Some("x-unknown, permessage-deflate; server_max_window_bits=10")).await;
        assert_eq!(a.answer, ANSWER);
        assert_eq!(b.answer, ANSWER);
        assert_eq!(n.answer, format!("{ANSWER}; server_max_window_bits=10"));
        let mut p = connect(&server, "/ws?room=r").await;
        for c in [&mut a, &mut b, &mut n] {
            assert_eq!(c.json().await["op"], "joined");
        }
        assert_eq!(tung_json(&mut p).await["op"], "joined");

        // A 1 KB message: RSV1 and the same bytes for every member with the default
        // window; the narrow-window member's inflates with a 10-bit window; the plain
        // member's is plain.
        let data = feed(1);
        p.send(Message::Text(json!({"op":"pub","room":"r","data":data}).to_string())).await.unwrap();
        let want = json!({"op":"msg","room":"r","seq":1,"data":data});
        let (fa, pa) = a.frame().await;
        let (fb, pb) = b.frame().await;
        let (fn_, pn) = n.frame().await;
        assert_eq!((fa, fb, fn_), (0xC1, 0xC1, 0xC1), "FIN, RSV1, text");
        assert_eq!(pa, pb, "one compressed frame, shared");
        let json_len = serde_json::to_vec(&want).unwrap().len();
        assert!(pa.len() * 2 < json_len, "{} compressed of {json_len}", pa.len());
        let a_msg: Value = serde_json::from_slice(&plain(fa, &pa, 15)).unwrap();
        assert_eq!(a_msg, want);
        let n_msg: Value = serde_json::from_slice(&plain(fn_, &pn, 10)).unwrap();
        assert_eq!(n_msg, want);
        assert_eq!(tung_json(&mut p).await, want);

        // Under --deflate-min-size: plain.
        p.send(Message::Text(json!({"op":"pub","room":"r","data":{"x":1}}).to_string())).await.unwrap();
        let (first, small) = a.frame().await;
        assert_eq!(first, 0x81);
        assert_eq!(serde_json::from_slice::<Value>(&small).unwrap()["seq"], 2);
        for c in [&mut b, &mut n] {
            assert_eq!(c.json().await["seq"], 2);
        }
        assert_eq!(tung_json(&mut p).await["seq"], 2);

        // A compressed publish: acknowledged, delivered to all.
        let data = feed(2);
        let op = json!({"op":"pub","room":"r","data":data,"id":5}).to_string();
        a.send(0xC1, &compress(op.as_bytes())).await;
        let mut got = [a.json().await, a.json().await];
        got.sort_by_key(|v| v["op"].to_string());
        assert_eq!(got[0], json!({"op":"ack","id":5,"seq":3}));
        assert_eq!(got[1]["data"], data);
        assert_eq!(tung_json(&mut p).await["data"], data);
        for c in [&mut b, &mut n] {
            assert_eq!(c.json().await["data"], data);
        }

        // /echo: a compressed binary message comes back compressed, a small one plain.
        let mut e = Raw::connect(&server, "/echo", Some(CHROMIUM_OFFER)).await;
        let big: Vec<u8> = serde_json::to_vec(&feed(3)).unwrap();
        e.send(0xC2, &compress(&big)).await;
        let (first, echoed) = e.frame().await;
        assert_eq!(first, 0xC2);
        assert_eq!(plain(first, &echoed, 15), big);
        e.send(0xC1, &compress(b"hi")).await;
        assert_eq!(e.frame().await, (0x81, b"hi".to_vec()));

        // Counted: compressed once per encoding in use per message (2 messages × the
        // default and the narrow window) plus the echo, not once per member.
        let s = server.stats();
        assert_eq!(shard_sum(&s, "deflate_agreed"), 4, "{s}");
        assert_eq!(shard_sum(&s, "deflate_in"), 3, "{s}");
        assert_eq!(shard_sum(&s, "deflate_out"), 5, "{s}");

        // Once the deflate members are gone (a leave op, a close, a dropped socket) the
        // room's batches are not compressed any more: the owner's counts per encoding
        // follow them.
        a.send(0x81, json!({"op":"leave","room":"r"}).to_string().as_bytes()).await;
        assert_eq!(a.json().await["op"], "left");
        b.send(0x88, &[0x03, 0xe8]).await;
        assert_eq!(b.close_code().await, 1000);
        drop(n);
        let members = |s: &Value| s["members"].as_u64();
        for _ in 0..100 {
            if members(&server.stats()) == Some(1) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        p.send(Message::Text(json!({"op":"pub","room":"r","data":feed(5)}).to_string())).await.unwrap();
        assert_eq!(tung_json(&mut p).await["data"], feed(5));
        let s = server.stats();
        assert_eq!(members(&s), Some(1), "{s}");
        assert_eq!(shard_sum(&s, "deflate_out"), 5, "nothing compressed for nobody: {s}");
    }

    async fn bad_compressed_input_gets_its_close_and_nobody_else_notices(backend: &str) {
        let server = Server::start(backend, &["--deflate"]);
        let mut bystander = connect(&server, "/echo").await;
        // RSV1 on a control frame, on a continuation, or without the extension: 1002.
        let mut c = Raw::connect(&server, "/echo", Some(CHROMIUM_OFFER)).await;
        c.send(0xC9, b"").await;
        assert_eq!(c.close_code().await, 1002);
        let mut c = Raw::connect(&server, "/echo", Some(CHROMIUM_OFFER)).await;
        c.send(0x01, b"a").await;
        c.send(0xC0, b"b").await;
        assert_eq!(c.close_code().await, 1002);
        let mut c = Raw::connect(&server, "/echo", None).await;
        assert_eq!(c.answer, "");
        c.send(0xC1, &compress(b"hello")).await;
        assert_eq!(c.close_code().await, 1002);
        // Not DEFLATE, or not UTF-8 once inflated: 1007.
        let mut c = Raw::connect(&server, "/ws", Some(CHROMIUM_OFFER)).await;
        c.send(0xC1, &[0xff, 0xff, 0xff, 0xff]).await;
        assert_eq!(c.close_code().await, 1007);
        let mut c = Raw::connect(&server, "/echo", Some(CHROMIUM_OFFER)).await;
        c.send(0xC1, &compress(&[b'a', 0xff, 0xfe])).await;
        assert_eq!(c.close_code().await, 1007);
        bystander.send(Message::Text("still here".into())).await.unwrap();
        assert_eq!(
            common::next_data(&mut bystander).await.unwrap().unwrap(),
            Message::Text("still here".into())
        );
        // Without --deflate the offer is not answered and frames stay plain.
        let plain_server = Server::start(backend, &[]);
        let mut c = Raw::connect(&plain_server, "/ws?room=q", Some(CHROMIUM_OFFER)).await;
        assert_eq!(c.answer, "");
        assert_eq!(c.json().await["op"], "joined");
        let op = json!({"op":"pub","room":"q","data":feed(4)}).to_string();
        c.send(0x81, op.as_bytes()).await;
        assert_eq!(c.frame().await.0, 0x81);
    }

    async fn a_compression_bomb_is_refused_with_1009_without_memory_growing(backend: &str) {
        let server = Server::start(backend, &["--deflate", "--max-message", "65536"]);
        let mut bystander = connect(&server, "/echo").await;
        // Deflate blocks of 1 MiB of zeros, each ~1 KB and ending on a byte boundary:
        // repeated, they make one valid stream of as many MiB.
        let mut c = Compress::new(Compression::best(), false);
        let mut mib = Vec::with_capacity(8192);
        c.compress_vec(&vec![0u8; 1 << 20], &mut mib, FlushCompress::Sync).unwrap();
        let hwm = |pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap().to_owned();
            line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap()
        };
        let before = hwm(server.pid());
        // Under the cap as sent (~56 KB), ~56 MiB inflated: refused once 64 KiB came out.
        let small = mib.repeat(65_000 / mib.len());
        assert!(small.len() < 65_536, "{}", small.len());
        // 100 MiB inflated: its ~100 KB frame is refused before any of it is inflated.
        let big = mib.repeat(100);
        for bomb in [small, big] {
            let mut c = Raw::connect(&server, "/echo", Some(CHROMIUM_OFFER)).await;
            let t = Instant::now();
            c.send(0xC2, &bomb).await;
            assert_eq!(c.close_code().await, 1009);
            assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        }
        let after = hwm(server.pid());
        assert!(after < before + 8 * 1024, "peak RSS {before} KiB -> {after} KiB");
        bystander.send(Message::Binary(vec![7; 100])).await.unwrap();
        assert_eq!(
            common::next_data(&mut bystander).await.unwrap().unwrap(),
            Message::Binary(vec![7; 100])
        );
    }

    async fn slow_deflate_members_get_notices_for_exactly_what_was_dropped(backend: &str) {
        for policy in ["drop-oldest", "conflate"] {
            let server = Server::start(backend, &[
                "--deflate", "--deflate-min-size", "0", "--slow-policy", policy,
                "--max-queued-bytes", "65536", "--rate", "0", "--shards", "2",
            ]);
            // A member whose receive window is a few KB and who reads nothing for now.
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.set_recv_buffer_size(4096).unwrap();
            let s = sock.connect(server.addr).await.unwrap();
            let mut stalled = Raw::over(s, "/ws?room=r", Some(CHROMIUM_OFFER)).await;
            let mut healthy = connect(&server, "/ws?room=r").await;
            assert_eq!(tung_json(&mut healthy).await["op"], "joined");
            let mut publisher = connect(&server, "/ws").await;
            // ~1 KB each once compressed (half of it noise): ~6 MB, more than the server's
            // socket buffer takes for the stalled member (its queue is what overflows).
            const N: u64 = 6000;
            let mut x = 0x9E37_79B9_7F4A_7C15u64;
            let mut noise = move || {
                (0..1500)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        char::from(b"0123456789abcdef"[(x & 15) as usize])
                    })
                    .collect::<String>()
            };
            let reader = tokio::spawn(async move {
                for expect in 1..=N {
                    assert_eq!(tung_json(&mut healthy).await["seq"], expect);
                }
            });
            for i in 0..N {
                let data = json!([i, feed(i as usize), noise()]);
                publisher.feed(Message::Text(json!({"op":"pub","room":"r","data":data}).to_string())).await.unwrap();
                if i % 200 == 199 {
                    publisher.flush().await.unwrap();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            publisher.flush().await.unwrap();
            reader.await.unwrap();
            let s = server.stats();
            assert!(shard_sum(&s, "gap_notices") > 0, "{policy}: nothing was dropped: {s}");
            // Every seq arrives or is in exactly one notice; the last one arrives.
            let (mut seen, mut last, mut gaps, mut compressed) = (vec![0u8; N as usize + 1], 0, 0, 0);
            while let Some((first, payload)) = stalled.frame_within(Duration::from_secs(2)).await {
                compressed += u32::from(first & 0x40 != 0);
                let v: Value = serde_json::from_slice(&plain(first, &payload, 15)).unwrap();
                match v["op"].as_str().unwrap() {
                    "joined" => {}
                    "gap" => {
                        gaps += 1;
                        for s in v["from"].as_u64().unwrap()..=v["to"].as_u64().unwrap() {
                            seen[s as usize] += 1;
                        }
                    }
                    _ => {
                        let seq = v["seq"].as_u64().unwrap();
                        assert!(seq > last, "{policy}: {seq} after {last}");
                        seen[seq as usize] += 1;
                        last = seq;
                    }
                }
            }
            assert!(gaps > 0 && compressed > 0, "{policy}: {gaps} notices, {compressed} compressed");
            let wrong: Vec<usize> = (1..=N as usize).filter(|&s| seen[s] != 1).take(5).collect();
            assert!(wrong.is_empty(), "{policy}: seqs not accounted for exactly once: {wrong:?}");
            assert_eq!(last, N, "{policy} keeps the newest");
        }
    }

    async fn python_node_and_chromium_agree_to_deflate_on_echo_and_a_room(backend: &str) {
        need!(Python, Node, Chromium);
        let server = Server::start(backend, &["--deflate", "--shards", "2"]);
        let base = server.url("");
        let reports = common::deflate_clients(base.trim_end_matches('/'), "deflate", &[]);
        for (name, r) in &reports {
            for part in ["echo", "room"] {
                let ext = r[part]["ext"].as_str().unwrap_or_default();
                assert!(ext.starts_with("permessage-deflate"), "{name} {part}: {r}");
                assert_eq!(r[part]["same"], true, "{name} {part}: {r}");
            }
        }
        // The clients' messages came compressed (each client compresses its ~3 KB echo at
        // least) and the server compressed the echoes and the rooms' deliveries.
        let s = server.stats();
        assert_eq!(shard_sum(&s, "deflate_agreed"), 9, "{s}");
        assert!(shard_sum(&s, "deflate_in") >= 3, "{s}");
        assert!(shard_sum(&s, "deflate_out") >= 6, "3 echoes and 3 deliveries: {s}");
        assert_eq!(shard_sum(&s, "protocol_errors"), 0, "{s}");
    }
}
