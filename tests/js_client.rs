//! The JavaScript client (`clients/js/roomcast.js`, served at `/roomcast.js`) and the demo
//! page (issue 16): its own Node tests (`node --test clients/js/test/`: the backoff
//! schedule, and against the real server: replay after a cut, queued publishes, refusals
//! not retried), and the client in headless Chromium (tests/clients/js_browser.mjs: join
//! and publish, a cut at 200 msg/s, a drain onto a fresh server, a failover between two
//! nodes on Redis, WebSocket blocked by a proxy, the demo page with a screenshot). The
//! scripts only report; the verdicts
//! are here.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use common::{chromium, clients_dir, last_json, succeeds, Server};
use serde_json::Value;

fn js_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/js")
}

#[test]
fn the_clients_own_node_tests_pass() {
    need!(NodeJsClient);
    // Bounded: a client a failed test left open must not hang the suite.
    let text = succeeds(
        Command::new("timeout")
            .args(["300", "node", "--test", "test/"])
            .current_dir(js_dir())
            .env("ROOMCAST_BIN", env!("CARGO_BIN_EXE_roomcast")),
    );
    assert!(
        text.contains("# fail 0") && !text.contains("# pass 0"),
        "{text}"
    );
}

#[test]
fn the_server_serves_the_client_the_demo_and_says_why_a_handshake_fails() {
    let server = Server::start("epoll", &[]);
    let (status, js) = server.get("/roomcast.js");
    assert_eq!(status, 200);
    assert_eq!(
        js,
        std::fs::read_to_string(js_dir().join("roomcast.js")).unwrap()
    );
    let (status, html) = server.get("/");
    assert_eq!(status, 200);
    assert!(html.contains("import { Roomcast } from \"/roomcast.js\""));
    assert_eq!(server.get("/ws").0, 400, "no token needed (auth is off)");
    drop(server);

    let off = Server::start("epoll", &["--demo", "false"]);
    assert_eq!(off.get("/").0, 404);
    assert_eq!(off.get("/roomcast.js").0, 200);
    drop(off);

    let secret = [
        "--jwt-secret",
        "s3cret",
        "--allow-origin",
        "https://app.example",
    ];
    let auth = Server::start("epoll", &secret);
    let probe = |headers: &str| {
        let req = format!("GET /ws HTTP/1.1\r\nHost: t\r\n{headers}\r\n");
        let out = auth.raw_exchange(req.as_bytes(), std::time::Duration::from_secs(5));
        String::from_utf8_lossy(&out).into_owned()
    };
    let ok_origin = "Origin: https://app.example\r\n";
    let bad = probe(&format!("{ok_origin}Authorization: Bearer nope\r\n"));
    assert!(bad.starts_with("HTTP/1.1 401"), "{bad}");
    assert!(bad.contains("invalid token"), "{bad}");
    assert!(
        bad.contains("Access-Control-Allow-Origin: https://app.example"),
        "the page's fetch may read it: {bad}"
    );
    let foreign = probe("Origin: https://evil.example\r\n");
    assert!(foreign.starts_with("HTTP/1.1 403"), "{foreign}");
    let late = probe(ok_origin);
    assert!(
        late.starts_with("HTTP/1.1 400"),
        "a token may still come in an auth op: {late}"
    );
}

fn seqs(r: &Value) -> Vec<u64> {
    r["msgs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect()
}

/// Every acknowledged seq exactly once, in order.
fn exactly_once(name: &str, r: &Value) {
    let acked: BTreeSet<u64> = r["acks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a[1].as_u64().unwrap())
        .collect();
    let got = seqs(r);
    let last = *acked.iter().max().unwrap();
    assert_eq!(got, (1..=last).collect::<Vec<_>>(), "{name}: {r}");
    assert_eq!(acked.len() as u64, last, "{name}: acks {acked:?}");
    assert_eq!(r["gaps"], Value::Array(vec![]), "{name}");
}

#[test]
fn roomcast_js_in_headless_chromium() {
    need!(Node, Chromium, Redis);
    let out_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/artifacts");
    let report = last_json(&succeeds(
        Command::new("timeout")
            .args(["300", "node"])
            .arg(clients_dir().join("js_browser.mjs"))
            .arg(env!("CARGO_BIN_EXE_roomcast"))
            .arg(chromium())
            .arg(&out_dir),
    ));
    for (name, r) in report.as_object().unwrap() {
        assert!(r.get("error").is_none(), "{name}: {}", r["error"]);
    }

    // The connect hook made the page's cookie a user; an RPC round trip, and a refused one.
    let rpc = &report["rpc"];
    assert_eq!(rpc["sum"], 5, "{rpc}");
    assert_eq!(rpc["user"], "ann", "{rpc}");
    assert_eq!(rpc["authed"]["data"]["greeting"], "hi ann", "{rpc}");
    assert_eq!(rpc["failed"]["code"], "rpc_error", "{rpc}");
    assert_eq!(rpc["failed"]["status"], 418, "{rpc}");

    // Joins, publishes, receives its own message.
    let basic = &report["basic"];
    assert_eq!(basic["published_seq"], 1, "{basic}");
    assert_eq!(basic["msgs"][0]["data"]["text"], "hello", "{basic}");
    assert_eq!(basic["states"][0], "open", "{basic}");

    // A cut at 200 msg/s: back by itself, every message once, the missed ones replayed.
    let cut = &report["cut"];
    exactly_once("cut", cut);
    assert!(cut["before_cut"].as_u64().unwrap() > 50, "{cut}");
    let states: Vec<&str> = cut["states"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(states, ["open", "reconnecting", "open"], "{cut}");
    let replayed = cut["msgs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["replayed"] == true)
        .count();
    assert!(
        replayed > 0,
        "the messages sent while cut came in the replay"
    );

    // A drain onto a fresh server: reconnected, told of the gap, receiving again.
    let drain = &report["drain"];
    assert_ne!(drain["epoch_before"], drain["epoch_after"], "{drain}");
    let gaps = drain["gaps"].as_array().unwrap();
    assert_eq!(gaps.len(), 1, "{drain}");
    assert_eq!(gaps[0]["recovered"], false);
    assert_eq!(gaps[0]["room"], "d");
    let n: Vec<u64> = drain["msgs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["n"].as_u64().unwrap())
        .collect();
    assert_eq!(n, (1..=30).collect::<Vec<_>>(), "{drain}");
    assert_eq!(
        seqs(drain)[20..],
        (1..=10).collect::<Vec<_>>(),
        "the new epoch's seqs"
    );
    assert!(drain["states"]
        .as_array()
        .unwrap()
        .contains(&Value::from("reconnecting")));

    // Two nodes on Redis: the first drains mid-stream; the page moves and loses nothing.
    let failover = &report["failover"];
    exactly_once("failover", failover);
    let nodes = &failover["nodes"];
    let targets = failover["proxied_to"].as_array().unwrap();
    assert_eq!(targets.first(), Some(&nodes[0]), "{failover}");
    assert_eq!(targets.last(), Some(&nodes[1]), "moved to the second node");

    // WebSocket blocked by a proxy: receiving moves to /sse; publishing says why it can't.
    let blocked = &report["blocked"];
    assert_eq!(blocked["transport"], "sse", "{blocked}");
    assert_eq!(blocked["state"], "open", "{blocked}");
    assert!(
        blocked["upgrades_blocked"].as_u64().unwrap() >= 3,
        "{blocked}"
    );
    exactly_once("blocked", blocked);
    assert_eq!(blocked["publish"], "publish_unavailable");

    // The demo page: messages, members, server figures; the screenshot is kept.
    let demo = &report["demo"];
    let lines: Vec<&str> = demo["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    for want in [
        ": hello from the page",
        "node: hi from node",
        "node: second line",
    ] {
        assert!(
            lines.iter().any(|l| l.contains(want)),
            "{want} in {lines:?}"
        );
    }
    assert_eq!(demo["members"], "2", "{demo}");
    assert_eq!(demo["state"], "open", "{demo}");
    assert!(demo["stats"].as_str().unwrap().contains("websockets"));
    let png = std::fs::read(demo["screenshot"].as_str().unwrap()).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(
        png.len() > 10_000,
        "a page, not a blank: {} bytes",
        png.len()
    );
}
