//! Operating the server: `/metrics` read by the Prometheus project's own Python parser,
//! the admin port, and the graceful drain on SIGTERM.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{client_frame, upgrade_request, Server};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

const SECOND: Duration = Duration::from_secs(1);

/// Parses an exposition with `prometheus_client.parser` (which raises on anything
/// malformed) and returns every sample as `name{labels}` → value, labels sorted.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    use std::io::Write;
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        out[f"{s.name}{{{labels}}}"] = s.value
print(json.dumps(out))
"#;
    let mut child = std::process::Command::new(common::python())
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client refused the exposition"
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The sum over shards of the samples of `name` whose labels include `label`.
fn total(m: &HashMap<String, f64>, name: &str, label: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| k.starts_with(&format!("{name}{{")) && k.contains(label))
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_move_as_clients_act() {
    need!(Python);
    let admin = format!("127.0.0.1:{}", common::free_port());
    let server = Server::start(
        "uring",
        &["--admin-listen", &admin, "--rate", "5", "--burst", "5"],
    );
    let scrape = |addr: std::net::SocketAddr| {
        let (status, body) = common::http_get(addr, "/metrics");
        assert_eq!(status, 200);
        parse_metrics(&body)
    };
    let before = scrape(server.addr);
    // Three echoes, a protocol error, a refused handshake, a rate-limited flood.
    let (mut ws, _) = tokio_tungstenite::connect_async(server.url("/echo"))
        .await
        .unwrap();
    for i in 0..3 {
        ws.send(Message::Text(format!("m{i}"))).await.unwrap();
        assert_eq!(
            common::next_data(&mut ws).await.unwrap().unwrap(),
            Message::Text(format!("m{i}"))
        );
    }
    let bad = [upgrade_request("/echo"), client_frame(0xC1, b"x")].concat();
    server.raw_exchange(&bad, SECOND * 3);
    let old = String::from_utf8(upgrade_request("/ws"))
        .unwrap()
        .replace("Version: 13", "Version: 7");
    server.raw_exchange(old.as_bytes(), SECOND * 3);
    let flood = [
        upgrade_request("/echo"),
        (0..20).flat_map(|_| client_frame(0x81, b"f")).collect(),
    ]
    .concat();
    server.raw_exchange(&flood, SECOND * 3);
    server.settles_to(1);
    let after = scrape(admin.parse().unwrap());
    let delta = |name: &str, label: &str| total(&after, name, label) - total(&before, name, label);
    assert!(delta("roomcast_accepted_total", "") >= 4.0);
    assert!(delta("roomcast_upgraded_total", "") >= 3.0);
    assert!(delta("roomcast_messages_in_total", "") >= 3.0 + 5.0);
    assert!(
        delta("roomcast_bytes_in_total", "") > 0.0 && delta("roomcast_bytes_out_total", "") > 0.0
    );
    assert_eq!(delta("roomcast_closed_total", r#"code="1002""#), 1.0);
    assert_eq!(delta("roomcast_closed_total", r#"code="1008""#), 1.0);
    assert_eq!(delta("roomcast_rate_limited_total", ""), 1.0);
    assert_eq!(
        delta("roomcast_handshake_refused_total", r#"status="426""#),
        1.0
    );
    assert_eq!(
        total(&after, "roomcast_websockets", ""),
        1.0,
        "the echo client is still open"
    );
    assert!(total(&after, "roomcast_fixed_files_limit", "") > 0.0);
    assert!(total(&after, "roomcast_fd_limit", "") > 0.0);
    assert_eq!(total(&after, "roomcast_draining", ""), 0.0);
    // /healthz and /stats on both ports.
    assert_eq!(
        common::http_get(admin.parse().unwrap(), "/healthz"),
        (200, "ok\n".into())
    );
    assert_eq!(server.get("/healthz").0, 200);
    assert_eq!(common::http_get(admin.parse().unwrap(), "/stats").0, 200);
    drop(ws);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_1000_clients_with_1001_spread_over_the_window_then_exits_0_uring() {
    drain_1000("uring").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_1000_clients_with_1001_spread_over_the_window_then_exits_0_epoll() {
    drain_1000("epoll").await;
}

async fn drain_1000(backend: &str) {
    const CLIENTS: usize = 1000;
    const WINDOW: Duration = Duration::from_secs(4);
    let admin = format!("127.0.0.1:{}", common::free_port());
    let mut server = Server::start(backend, &["--drain-window", "4", "--admin-listen", &admin]);
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let (ws, _) = tokio_tungstenite::connect_async(server.url("/ws?room=all"))
            .await
            .unwrap();
        clients.push(ws);
    }
    server.settles_to(CLIENTS as u64);
    let start = Instant::now();
    server.signal("TERM");
    // Each client records when its 1001 arrived.
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                loop {
                    match tokio::time::timeout(WINDOW * 2, ws.next()).await {
                        Ok(Some(Ok(Message::Close(Some(f))))) => {
                            return Some((u16::from(f.code), start.elapsed()));
                        }
                        Ok(Some(Ok(_))) => continue,
                        _ => return None,
                    }
                }
            })
        })
        .collect();
    // Draining: healthz says so on the admin port, and the main port takes nobody new.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(common::http_get(admin.parse().unwrap(), "/healthz").0, 503);
    assert!(tokio_tungstenite::connect_async(server.url("/ws"))
        .await
        .is_err());
    let mut at = Vec::new();
    for t in tasks {
        let (code, when) = t.await.unwrap().expect("every client gets a close frame");
        assert_eq!(code, 1001);
        at.push(when);
    }
    at.sort();
    let status = server
        .wait_exit(SECOND * 3)
        .expect("the server exits after the drain");
    let exited = start.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(exited < WINDOW + SECOND, "exited after {exited:?}");
    // The spread: closes per half-second of the window.
    let mut buckets = vec![0usize; 8];
    for t in &at {
        buckets[((t.as_millis() / 500) as usize).min(7)] += 1;
    }
    println!("{backend}: closes per 500 ms of the 4 s window: {buckets:?}; first {:?}, last {:?}, exit {exited:?}", at[0], at[CLIENTS - 1]);
    assert!(
        at[CLIENTS - 1] - at[0] > WINDOW * 3 / 4,
        "closes not spread: {buckets:?}"
    );
    for (i, n) in buckets.iter().enumerate() {
        assert!(
            (60..=190).contains(n),
            "bucket {i} holds {n} closes: {buckets:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let mut server = Server::start("epoll", &["--drain-window", "30"]);
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(
            tokio_tungstenite::connect_async(server.url("/echo"))
                .await
                .unwrap()
                .0,
        );
    }
    server.settles_to(20);
    server.signal("TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(server.alive(), "the first signal drains, over 30 s");
    server.signal("INT");
    let status = server
        .wait_exit(SECOND * 2)
        .expect("the second signal exits at once");
    assert!(!status.success());
}

#[test]
fn a_second_server_on_a_taken_port_refuses_to_start() {
    let port = common::free_port();
    let listen = format!("127.0.0.1:{port}");
    let _first = Server::start("epoll", &["--listen", &listen]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_roomcast"))
        .args(["serve", "--listen", &listen])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already in use"), "{err}");
}
