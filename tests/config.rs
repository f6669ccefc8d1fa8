//! Operating roomcast: a config file (precedence, errors, `--print-config`), JSON logs,
//! and admission from the capacity model (`--max-conns auto`).

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::Server;

/// `roomcast` with no `ROOMCAST_*` variables from the test's own environment.
fn roomcast() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_roomcast"));
    for (k, _) in std::env::vars() {
        if k.starts_with("ROOMCAST_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn tmp() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "roomcast-config-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap()
}

/// `key = value` lines of a `--print-config` output: key → (value, source).
fn printed(text: &str) -> BTreeMap<String, (String, String)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('[') && l.contains(" = "))
        .map(|l| {
            let (kv, source) = l.rsplit_once("  # ").unwrap();
            let (k, v) = kv.split_once(" = ").unwrap();
            (k.to_owned(), (v.to_owned(), source.to_owned()))
        })
        .collect()
}

const EVERYTHING: &str = r#"
listen = "127.0.0.1:0"

[server]
backend = "epoll"
shards = 2
backlog = 1000
recv-buffer-size = 8192

[limits]
max-message = 4096
max-header-bytes = 2048
out-ring = 16
write-delay = "5ms"
max-queued-bytes = 65536
max-rooms-per-conn = 3
rate = 77
burst = 9
max-conns = 500
max-conns-per-ip = 7
max-conns-per-user = 5
slow-policy = "drop-oldest"

[timeouts]
handshake-timeout = 3
ping-interval = 20
pong-timeout = 4
idle-timeout = 600
close-timeout = 3
drain-window = 4

[auth]
allow-origin = ["https://a.example", "https://*.example.org"]
auth-cookie = "rc"

[capacity]
memory-budget = "2G"
capacity-margin = 20

[logs]
log-format = "json"
log-level = "info"
"#;

#[test]
fn a_config_file_alone_starts_a_server_with_every_setting_applied() {
    let dir = tmp();
    let path = write(&dir, "all.toml", EVERYTHING);
    let mut cmd = roomcast();
    cmd.args(["serve", "--config"]).arg(&path);
    let server = Server::launch(cmd);
    assert!(
        server.line.contains("backend epoll, 2 shards"),
        "{}",
        server.line
    );
    let stats = server.stats();
    let settings = &stats["settings"];
    let file = roomcast::config::file::read_keys(EVERYTHING).unwrap();
    assert!(file.len() >= 25, "the file sets {} keys", file.len());
    for (key, fk) in &file {
        let got = &settings[key.as_str()];
        assert_eq!(got["source"], "file", "{key}: {got}");
        let want: serde_json::Value = match fk.values.as_slice() {
            [one] => one.clone().into(),
            many => many.to_vec().into(),
        };
        assert_eq!(got["value"], want, "{key}");
    }
    // And they took effect where they show.
    assert_eq!(stats["config"]["out_ring"], 16);
    assert_eq!(stats["config"]["ping_interval_secs"], 20);
    assert_eq!(stats["capacity"]["memory_budget_bytes"], 2u64 << 30);
    let (_, metrics) = server.get("/metrics");
    assert!(metrics.contains("\nroomcast_max_conns 500\n"), "{metrics}");
    // An origin the file does not allow is refused.
    let refused = server.raw_exchange(
        &String::from_utf8(common::upgrade_request("/echo"))
            .unwrap()
            .replace("\r\n\r\n", "\r\nOrigin: https://evil.example\r\n\r\n")
            .into_bytes(),
        Duration::from_secs(2),
    );
    assert!(refused.starts_with(b"HTTP/1.1 403"));
}

#[test]
fn a_flag_beats_the_environment_which_beats_the_file() {
    let dir = tmp();
    let path = write(&dir, "rate.toml", "[limits]\nrate = 10\n");
    let rate = |env: Option<&str>, flag: Option<&str>, file: bool| {
        let mut cmd = roomcast();
        cmd.arg("serve");
        if file {
            cmd.arg("--config").arg(&path);
        }
        if let Some(e) = env {
            cmd.env("ROOMCAST_RATE", e);
        }
        if let Some(f) = flag {
            cmd.args(["--rate", f]);
        }
        let out = run(cmd.arg("--print-config"));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        printed(&String::from_utf8(out.stdout).unwrap())["rate"].clone()
    };
    let pair = |v: &str, s: &str| (v.to_owned(), s.to_owned());
    assert_eq!(rate(Some("20"), Some("30"), true), pair("30", "flag"));
    assert_eq!(rate(Some("20"), None, true), pair("20", "environment"));
    assert_eq!(rate(None, None, true), pair("10", "file"));
    assert_eq!(rate(None, None, false), pair("1000", "default"));
    // The file may also be named by ROOMCAST_CONFIG; and a live server agrees.
    let mut cmd = roomcast();
    cmd.env("ROOMCAST_CONFIG", &path)
        .env("ROOMCAST_BURST", "3")
        .args(["serve", "--listen", "127.0.0.1:0"]);
    let server = Server::launch(cmd);
    let settings = &server.stats()["settings"];
    assert_eq!(settings["rate"]["value"], "10");
    assert_eq!(settings["rate"]["source"], "file");
    assert_eq!(settings["burst"]["source"], "environment");
    assert_eq!(settings["listen"]["source"], "flag");
}

#[test]
fn bad_configs_are_refused_before_anything_starts_naming_the_key_and_line() {
    let dir = tmp();
    let cases = [
        ("unknown key", "rate = 5\nspeed = 3\n", vec!["speed", ":2:"]),
        (
            "wrong type",
            "[limits]\nrate = \"many\"\n",
            vec!["rate", ":2:", "many"],
        ),
        (
            "out of range",
            "\n\n[server]\nshards = 5000\n",
            vec!["shards", ":4:", "1..=1024"],
        ),
        (
            "bad enum",
            "slow-policy = \"sometimes\"\n",
            vec!["slow-policy", ":1:"],
        ),
        (
            "wrong table",
            "[limits]\nlisten = \"x\"\n",
            vec!["listen", "line 2", "[server]"],
        ),
        (
            "unknown table",
            "[extras]\nrate = 1\n",
            vec!["[extras]", "line 1"],
        ),
        (
            "a write delay past 1s",
            "[limits]\nwrite-delay = \"2s\"\n",
            vec!["write-delay", ":2:", "at most 1s"],
        ),
        ("not TOML", "rate = = 1\n", vec!["line 1"]),
        (
            "a table for a value",
            "rate = { per = 1 }\n",
            vec!["rate", "line 1"],
        ),
        (
            "inconsistent",
            "[timeouts]\nping-interval = 5\npong-timeout = 9\n",
            vec!["pong-timeout", "line 3", "ping-interval"],
        ),
        ("missing file", "", vec!["--config", "No such file"]),
    ];
    for (what, text, wants) in cases {
        let path = if text.is_empty() {
            dir.join("missing.toml")
        } else {
            write(&dir, "bad.toml", text)
        };
        let out = run(roomcast()
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&path));
        assert_eq!(out.status.code(), Some(2), "{what}: should exit 2");
        let err = String::from_utf8_lossy(&out.stderr);
        for want in wants {
            assert!(err.contains(want), "{what}: {want:?} not in {err:?}");
        }
        assert!(out.stdout.is_empty(), "{what}: nothing started");
    }
}

#[test]
fn print_config_round_trips() {
    let dir = tmp();
    let first = write(&dir, "first.toml", EVERYTHING);
    let out = run(roomcast()
        .args(["serve", "--rate", "33", "--config"])
        .arg(&first)
        .arg("--print-config"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed_once = String::from_utf8(out.stdout).unwrap();
    let second = write(&dir, "second.toml", &printed_once);
    let out = run(roomcast()
        .args(["serve", "--config"])
        .arg(&second)
        .arg("--print-config"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed_twice = String::from_utf8(out.stdout).unwrap();
    let values = |text: &str| -> BTreeMap<String, String> {
        printed(text)
            .into_iter()
            .map(|(k, (v, _))| (k, v))
            .collect()
    };
    let (a, b) = (values(&printed_once), values(&printed_twice));
    assert!(a.len() >= 25, "{printed_once}");
    assert_eq!(a, b, "fed back, it gives the same configuration");
    assert_eq!(a["rate"], "33");
    assert_eq!(printed(&printed_once)["rate"].1, "flag");
    assert_eq!(printed(&printed_twice)["rate"].1, "file");
}

#[test]
fn json_logs_are_one_object_per_line_with_timestamp_level_target_message_and_fields() {
    let mut child = roomcast()
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .args(["--max-conns", "auto", "--memory-budget", "1G"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("listening on"), "{line}");
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    std::thread::sleep(Duration::from_millis(200));
    let _ = child.kill();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let _ = child.wait();
    let lines: Vec<serde_json::Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    assert!(lines.len() >= 2, "{err}");
    for l in &lines {
        for key in ["timestamp", "level", "target", "message"] {
            assert!(l.get(key).is_some_and(|v| v.is_string()), "{key} in {l}");
        }
    }
    let capacity = lines
        .iter()
        .find(|l| l["message"].as_str().unwrap().contains("--max-conns auto"))
        .expect("the admission line");
    assert_eq!(capacity["level"], "INFO");
    assert_eq!(capacity["target"], "roomcast::server");
    assert!(
        capacity["max_conns"].as_u64().unwrap() > 0,
        "fields: {capacity}"
    );
    assert_eq!(capacity["source"], "--memory-budget");
}

/// Upgrades one WebSocket on a raw socket: the status line's code.
fn upgrade(addr: std::net::SocketAddr) -> (u16, std::net::TcpStream) {
    let mut sock = std::net::TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    sock.write_all(&common::upgrade_request("/echo")).unwrap();
    let mut head = [0u8; 12];
    sock.read_exact(&mut head).unwrap();
    let code = std::str::from_utf8(&head[9..12]).unwrap().parse().unwrap();
    (code, sock)
}

both_backends! {
    async fn max_conns_auto_refuses_at_the_capacity_models_count(backend: &str) {
        let server = Server::start(
            backend,
            &["--max-conns", "auto", "--memory-budget", "24M", "--shards", "2"],
        );
        let capacity = server.stats()["capacity"].clone();
        let (total, limit) = (
            capacity["connections"].as_u64().unwrap(),
            capacity["auto_limit"].as_u64().unwrap(),
        );
        assert_eq!(limit, total * 9 / 10, "the default margin is 10%: {capacity}");
        assert!((1_000..20_000).contains(&limit), "{capacity}");
        // roomcast plan (the same model, another code path) says those connections need
        // about the budget.
        if backend == "uring" {
            let out = run(roomcast().args(["plan", "--shards", "2", "--json", "--connections"]).arg(total.to_string()));
            let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let memory = plan["user_bytes"].as_f64().unwrap() + plan["kernel_bytes"].as_f64().unwrap();
            let budget = (24u64 << 20) as f64;
            assert!((memory / budget - 1.0).abs() < 0.10, "plan: {memory} B for {total}, budget {budget}");
        }
        let left = |s: &Server| {
            let (_, m) = s.get("/metrics");
            m.lines()
                .find_map(|l| l.strip_prefix("roomcast_capacity_connections_left "))
                .unwrap()
                .parse::<u64>()
                .unwrap()
        };
        let before = left(&server);
        let mut held = Vec::new();
        for _ in 0..100 {
            let (code, sock) = upgrade(server.addr);
            assert_eq!(code, 101);
            held.push(sock);
        }
        let after = left(&server);
        // Each figure counts every socket, the scrapes' own too (and one that is still
        // closing): within two of the 100 added.
        let fell = before as i64 - after as i64;
        assert!((98..=102).contains(&fell), "connections_left falls as connections are added: {before} -> {after}");
        let mut refused_at = None;
        for n in 100..limit + 10 {
            let (code, sock) = upgrade(server.addr);
            if code != 101 {
                assert_eq!(code, 503);
                refused_at = Some(n);
                break;
            }
            held.push(sock);
        }
        assert_eq!(refused_at, Some(limit), "refused past the predicted count");
        drop(held);
        server.settles_to(0);
    }

    async fn max_conns_auto_stops_admitting_before_the_load_saturates_the_cpu(backend: &str) {
        use futures_util::StreamExt;
        use serde_json::json;
        // Figures that make a send cost 1 ms, so a member of a room at 20 msg/s costs 2% of a
        // CPU by the model and one shard's CPU carries 50 of them: admission under load is
        // seen at tens of connections, not the box's real thousands (bench/RESULTS.md has
        // those).
        let mut figures = roomcast::ops::plan::Figures::builtin();
        figures.send_cpu_ns = 1e6;
        let dir = std::env::temp_dir().join(format!("roomcast-load-{}-{backend}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("figures.json");
        std::fs::write(&path, serde_json::to_string(&figures).unwrap()).unwrap();
        let server = Server::start(
            backend,
            &["--max-conns", "auto", "--memory-budget", "64M", "--shards", "1", "--figures", path.to_str().unwrap()],
        );
        let by_memory = server.stats()["capacity"]["auto_limit"].as_u64().unwrap();
        assert!(by_memory > 1_000, "memory admits thousands: {by_memory}");
        // A publisher at 20 msg/s (its acks are sends too).
        let publishing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let mut publisher = common::connect(&server, "/ws").await;
        let running = publishing.clone();
        let publisher = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            while running.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                common::send_json(&mut publisher, json!({"op":"pub","room":"load","data":"x"})).await;
                // Acks pile up unread in the socket: fine for 20 a second.
            }
            publisher
        });
        // Members join one by one, each reading what it gets, until the server refuses.
        let mut members = Vec::new();
        let mut refused_at = None;
        for n in 0..200u64 {
            match tokio_tungstenite::connect_async(server.url("/ws")).await {
                Ok((mut ws, _)) => {
                    common::send_json(&mut ws, json!({"op":"join","room":"load"})).await;
                    members.push(tokio::spawn(async move { while let Some(Ok(_)) = ws.next().await {} }));
                }
                Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                    assert_eq!(r.status(), 503, "refused as full");
                    refused_at = Some(n);
                    break;
                }
                Err(e) => panic!("member {n}: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let refused_at = refused_at.expect("the load stops admission well before 200 members");
        // 50 connections per CPU, less the 10% margin: 45, the publisher among them.
        let load = server.stats()["capacity"]["load"].clone();
        assert!((40..=46).contains(&refused_at), "refused after {refused_at} members: {load}");
        // Once the rates cover only the connections held, the model's CPU is the limit's
        // (0.9 of the shard's CPU), and the server still refuses: the limit moves with the
        // measured rates by a connection or two, no more.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let mut extra = Vec::new();
        for _ in 0..5 {
            if let Ok((ws, _)) = tokio_tungstenite::connect_async(server.url("/ws")).await {
                extra.push(ws);
            }
        }
        let load = server.stats()["capacity"]["load"].clone();
        assert!(refused_at as usize + extra.len() <= 47, "{} more admitted at the limit: {load}", extra.len());
        drop(extra);
        let predicted = load["predicted_cpus"].as_f64().unwrap();
        assert!((0.75..=0.95).contains(&predicted), "the model's CPU at the refusal: {load}");
        assert_eq!(load["link"], "loopback", "{load}");
        let (_, metrics) = server.get("/metrics");
        let left = metrics
            .lines()
            .find_map(|l| l.strip_prefix("roomcast_capacity_connections_left "))
            .unwrap()
            .parse::<u64>()
            .unwrap();
        assert!(left < 10, "connections left by CPU, not by memory: {left}");
        // The publisher stops: the load goes, admission comes back.
        publishing.store(false, std::sync::atomic::Ordering::Relaxed);
        drop(publisher.await.unwrap());
        let mut admitted = false;
        for _ in 0..80 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Ok((ws, _)) = tokio_tungstenite::connect_async(server.url("/ws")).await {
                drop(ws);
                admitted = true;
                break;
            }
        }
        assert!(admitted, "admitted again within 8 s of the load stopping: {}", server.stats()["capacity"]);
        for m in members {
            m.abort();
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn a_write_delay_is_zero_or_a_duration_up_to_a_second() {
    use roomcast::config::parse_write_delay as parse;
    for zero in ["0", "0s", "0ms", " 0.0 "] {
        assert_eq!(parse(zero), Ok(Duration::ZERO), "{zero:?}");
    }
    assert_eq!(parse("5ms"), Ok(Duration::from_millis(5)));
    assert_eq!(parse("1s"), Ok(Duration::from_secs(1)));
    for bad in ["1001ms", "2s", "-5ms", "soon", ""] {
        assert!(parse(bad).is_err(), "{bad:?}");
    }
}
