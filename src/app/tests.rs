//! The app against the reactor's real context, fed bytes directly: no sockets.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::protocol::{encode, OpCode};
use crate::reactor::shard::{Core, CoreSetup, Next, Timeouts};
use crate::reactor::stats::SharedStats;
use crate::reactor::{Drain, ShardInfo};

use super::*;

pub(super) fn settings() -> Settings {
    Settings {
        limits: crate::protocol::Limits::server(1 << 16),
        max_header_bytes: 8192,
        rate: 0,
        burst: 0,
        idle_ms: 0,
        slow_policy: SlowPolicy::Close,
        max_rooms_per_conn: 8,
        max_queued_bytes: 1 << 20,
        history: crate::rooms::Retention {
            size: 64,
            bytes: 1 << 20,
            ttl_ms: 300_000,
            idle_bytes: 1 << 20,
        },
        api_key: Some("k3y".into()),
        api_max_body: 1 << 16,
        backplane: false,
        hooks: None,
        presence_events: false,
        deflate: false,
        deflate_min_size: 512,
        demo: true,
    }
}

fn shard(out_cap: usize, gate: gate::Gate) -> Core<App> {
    shard_with(out_cap, gate, settings())
}

pub(super) fn shard_with(out_cap: usize, gate: gate::Gate, settings: Settings) -> Core<App> {
    let stats = Arc::new(SharedStats::new(
        1,
        <super::figures::Counts as crate::reactor::stats::Figures>::META,
    ));
    let drain = Arc::new(Drain::new(Duration::from_secs(1)));
    let info = ShardInfo {
        index: 0,
        shards: 1,
        stats: stats.clone(),
        drain: drain.clone(),
    };
    let app = App::new(
        Arc::new(settings),
        Arc::new(gate),
        Arc::new(crate::ops::admin::Info::empty()),
        &info,
    );
    let setup = CoreSetup {
        index: 0,
        mesh: crate::mesh::build(1, 0).unwrap().pop().unwrap(),
        timeouts: Timeouts {
            handshake: Duration::from_secs(5),
            linger: Duration::from_secs(2),
            ping_interval: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(10),
        },
        out_cap,
        write_delay: std::time::Duration::ZERO,
        drain,
        shared: stats,
        tls: None,
    };
    Core::new(app, setup)
}

const UPGRADE: &[u8] = b"GET /echo HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\n\r\n";

fn upgrade(path: &str) -> Vec<u8> {
    String::from_utf8(UPGRADE.to_vec())
        .unwrap()
        .replace("/echo", path)
        .into_bytes()
}

pub(super) fn masked(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode::write_client_frame(true, opcode, payload, [1, 2, 3, 4], &mut out);
    out
}

/// Everything queued for `slot`, as if one send took it all.
pub(super) fn sent(core: &mut Core<App>, slot: usize) -> Vec<u8> {
    core.send_all(slot).0
}

pub(super) fn open(core: &mut Core<App>, path: &str) -> usize {
    let (slot, _) = core.insert(0, None, Instant::now(), false);
    core.receive(slot, &mut upgrade(path));
    let resp = sent(core, slot);
    assert!(
        resp.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&resp)
    );
    slot
}

/// The text payloads of the server frames in `bytes`.
pub(super) fn texts(mut bytes: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    while bytes.len() >= 2 {
        let (len, head) = match bytes[1] {
            126 => (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
            n => (usize::from(n), 2),
        };
        out.push(String::from_utf8_lossy(&bytes[head..head + len]).into_owned());
        bytes = &bytes[head + len..];
    }
    out
}

#[test]
fn handshake_split_byte_by_byte_then_echo() {
    let mut core = shard(4, gate::Gate::default());
    let (slot, _) = core.insert(0, None, Instant::now(), false);
    let mut stream = UPGRADE.to_vec();
    stream.extend(masked(OpCode::Text, b"hi"));
    for b in &stream {
        core.receive(slot, &mut [*b]);
    }
    let out = sent(&mut core, slot);
    assert!(out.starts_with(b"HTTP/1.1 101"));
    assert!(
        out.ends_with(&[0x81, 2, b'h', b'i']),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(core.conn(slot).unwrap().tail_len(), 0);
}

#[test]
fn a_full_ring_pauses_input_and_sending_resumes_it() {
    let mut core = shard(4, gate::Gate::default());
    let slot = open(&mut core, "/echo");
    let mut burst = Vec::new();
    for i in 0..10u8 {
        burst.extend(masked(OpCode::Binary, &[i]));
    }
    assert_eq!(core.receive(slot, &mut burst), Next::StopReading);
    assert_eq!(core.conn(slot).unwrap().out.len(), 4);
    let mut got = Vec::new();
    for _ in 0..3 {
        got.extend(sent(&mut core, slot));
    }
    let expect: Vec<u8> = (0..10u8).flat_map(|i| [0x82, 1, i]).collect();
    assert_eq!(got, expect);
}

#[test]
fn violations_queue_a_close_with_the_mapped_code() {
    let mut core = shard(4, gate::Gate::default());
    let slot = open(&mut core, "/echo");
    core.receive(slot, &mut masked(OpCode::Text, &[0xFF]));
    assert!(core.conn(slot).unwrap().is_closing());
    assert_eq!(&sent(&mut core, slot)[..4], &[0x88, 0x0F, 0x03, 0xEF]); // 1007
    assert_eq!(core.cx.figures().close_1007, 1);
}

#[test]
fn plain_requests_get_healthz_or_404() {
    let mut core = shard(4, gate::Gate::default());
    for (path, status) in [("/healthz", "200"), ("/nope", "404"), ("/ws", "400")] {
        let (slot, _) = core.insert(0, None, Instant::now(), false);
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n").into_bytes();
        core.receive(slot, &mut req);
        assert!(core.conn(slot).unwrap().is_closing());
        let out = String::from_utf8(sent(&mut core, slot)).unwrap();
        assert!(out.starts_with(&format!("HTTP/1.1 {status}")), "{out}");
    }
}

#[test]
fn unknown_upgrade_path_gets_404_before_upgrading() {
    let mut core = shard(4, gate::Gate::default());
    let (slot, _) = core.insert(0, None, Instant::now(), false);
    core.receive(slot, &mut upgrade("/nope"));
    assert!(sent(&mut core, slot).starts_with(b"HTTP/1.1 404"));
}

#[test]
fn a_publish_is_sequenced_encoded_once_and_delivered_to_every_member() {
    let mut core = shard(8, gate::Gate::default());
    let a = open(&mut core, "/ws?room=lobby");
    let b = open(&mut core, "/ws");
    core.receive(
        b,
        &mut masked(OpCode::Text, br#"{"op":"join","room":"lobby"}"#),
    );
    core.end_turn();
    for slot in [a, b] {
        let joined = texts(&sent(&mut core, slot));
        assert_eq!(joined.len(), 1);
        let v: serde_json::Value = serde_json::from_str(&joined[0]).unwrap();
        assert_eq!(
            (&v["op"], &v["room"], &v["seq"]),
            (&"joined".into(), &"lobby".into(), &0.into())
        );
        assert_eq!(v["epoch"].as_str().map(str::len), Some(6));
    }
    let publish = br#"{"op":"pub","room":"lobby","id":7,"data":{"n": 1}}"#;
    core.receive(a, &mut masked(OpCode::Text, publish));
    core.receive(
        b,
        &mut masked(OpCode::Text, br#"{"op":"pub","room":"lobby","data":2}"#),
    );
    core.end_turn();
    let msgs = [
        r#"{"op":"msg","room":"lobby","seq":1,"data":{"n": 1}}"#,
        r#"{"op":"msg","room":"lobby","seq":2,"data":2}"#,
    ];
    let (to_a, to_b) = (sent(&mut core, a), sent(&mut core, b));
    assert_eq!(texts(&to_a)[1..], msgs, "data passed through byte for byte");
    assert_eq!(texts(&to_a)[0], r#"{"op":"ack","id":7,"seq":1}"#);
    assert_eq!(texts(&to_b), msgs, "one batch frame holds both");
    assert_eq!(
        core.cx.figures().delivered,
        2,
        "one shared frame per member per turn"
    );
}

#[test]
fn a_closed_member_leaves_its_rooms() {
    let mut core = shard(8, gate::Gate::default());
    let a = open(&mut core, "/ws?room=r");
    core.end_turn();
    assert_eq!(core.cx.figures().members, 1);
    core.remove(a);
    core.end_turn();
    core.end_turn();
    assert_eq!(core.cx.figures().members, 0);
    assert_eq!(core.cx.figures().rooms_owned, 1, "kept for --history-ttl");
    assert_eq!(
        core.cx.figures().close_none,
        1,
        "dropped without a close frame"
    );
}

#[test]
fn without_a_token_in_time_an_upgraded_connection_is_closed_with_1008() {
    let auth = auth::Auth::with_secret(b"s3cret", None);
    let gate = gate::Gate::new(Vec::new(), Some(auth), (0, 0, 0));
    let mut core = shard(8, gate);
    let slot = open(&mut core, "/ws");
    core.receive(
        slot,
        &mut masked(OpCode::Text, br#"{"op":"join","room":"r"}"#),
    );
    assert!(texts(&sent(&mut core, slot))[0].contains("unauthenticated"));
    let mut out = Vec::new();
    core.expired(Instant::now() + Duration::from_secs(6), &mut out);
    let close = sent(&mut core, slot);
    assert_eq!(
        &close[..4],
        &[0x88, 24, 0x03, 0xF0],
        "1008 authentication timeout"
    );
    assert_eq!(core.cx.figures().auth_failures, 1);
}

#[test]
fn after_our_close_frames_are_dropped_until_the_peers_close_ends_it() {
    let limited = Settings {
        rate: 1,
        burst: 1,
        ..settings()
    };
    let mut core = shard_with(4, gate::Gate::default(), limited);
    let slot = open(&mut core, "/echo");
    let mut burst = masked(OpCode::Text, b"a");
    burst.extend(masked(OpCode::Text, b"b")); // past the burst: 1008
    burst.extend(masked(OpCode::Text, b"c")); // after our close: dropped
    core.receive(slot, &mut burst);
    let (out, next) = core.send_all(slot);
    assert_eq!(texts(&out)[0], "a");
    assert_eq!(&out[3..5], &[0x88, 21], "then the close frame");
    assert_eq!(next, Next::ShutdownWrite, "half-closed, still reading");
    // The peer was still writing: read and dropped, the socket stays.
    assert_eq!(
        core.receive(slot, &mut masked(OpCode::Text, b"d")),
        Next::Nothing
    );
    assert_eq!(
        core.cx.figures().messages_out,
        1,
        "nothing echoed after the close"
    );
    // Its close frame answers ours: now the socket goes.
    let mut close = masked(OpCode::Close, &[0x03, 0xF0]);
    assert_eq!(core.receive(slot, &mut close), Next::Close);
}

#[test]
fn a_peers_close_is_echoed_with_its_reason_and_then_the_socket_closes() {
    let mut core = shard(4, gate::Gate::default());
    let slot = open(&mut core, "/echo");
    core.receive(slot, &mut masked(OpCode::Close, b"\x0f\xa1bye"));
    let (out, next) = core.send_all(slot);
    assert_eq!(out, b"\x88\x05\x0f\xa1bye");
    assert_eq!(next, Next::Close, "the closing handshake is complete");
}

#[test]
fn after_a_protocol_error_nothing_more_is_parsed() {
    let mut core = shard(4, gate::Gate::default());
    let slot = open(&mut core, "/echo");
    let mut bad = client_frame_with_rsv2();
    bad.extend(masked(OpCode::Close, &[0x03, 0xE8]));
    core.receive(slot, &mut bad);
    let (out, next) = core.send_all(slot);
    assert_eq!(&out[..4], &[0x88, out[1], 0x03, 0xEA], "1002");
    assert_eq!(
        next,
        Next::ShutdownWrite,
        "the framing is lost: wait for EOF"
    );
}

fn client_frame_with_rsv2() -> Vec<u8> {
    let mut f = masked(OpCode::Text, b"hi");
    f[0] |= 0x20;
    f
}

#[test]
fn drop_oldest_keeps_the_newest_when_what_is_queued_is_being_sent() {
    let mut cfg = settings();
    cfg.slow_policy = SlowPolicy::DropOldest;
    cfg.max_queued_bytes = 100;
    let mut core = shard_with(8, gate::Gate::default(), cfg);
    let member = open(&mut core, "/ws?room=r");
    let publisher = open(&mut core, "/ws");
    core.end_turn();
    sent(&mut core, member);
    let publish = |core: &mut Core<App>, n: u32| {
        let op = format!(
            r#"{{"op":"pub","room":"r","data":"{}{n}"}}"#,
            "x".repeat(200)
        );
        core.receive(publisher, &mut masked(OpCode::Text, op.as_bytes()));
        core.end_turn();
    };
    publish(&mut core, 1);
    // The member's only queued delivery is partly out when the next one comes: over
    // --max-queued-bytes, and nothing that may be dropped.
    core.sent(member, 10);
    publish(&mut core, 2);
    let rest = sent(&mut core, member);
    assert!(
        String::from_utf8_lossy(&rest)
            .ends_with(&format!(r#""seq":2,"data":"{}2"}}"#, "x".repeat(200))),
        "the newest went in: {}",
        String::from_utf8_lossy(&rest)
    );
    assert_eq!(
        (core.cx.figures().delivered, core.cx.figures().gap_notices),
        (2, 0)
    );
}
