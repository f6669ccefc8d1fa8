//! The deployment files in `sysctl/` against a live server: the Grafana dashboard reads
//! only metrics `/metrics` exports, and clients behind HAProxy (configured from
//! `sysctl/haproxy.cfg`) move to the other node when one drains.

mod common;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, Ws};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

const SECOND: Duration = Duration::from_secs(1);

fn sysctl(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sysctl")
        .join(file)
}

/// Every `roomcast_*` identifier in a PromQL expression.
fn metric_names(expr: &str, into: &mut BTreeSet<String>) {
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("roomcast_") {
        let start = i + at;
        // Only at the start of an identifier.
        let fresh = start == 0 || {
            let b = bytes[start - 1];
            !(b.is_ascii_alphanumeric() || b == b'_' || b == b':')
        };
        let mut end = start + "roomcast_".len();
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        if fresh {
            into.insert(expr[start..end].to_owned());
        }
        i = end;
    }
}

/// Every panel, rows' nested panels included, rows themselves excluded.
fn panels(list: &serde_json::Value, out: &mut Vec<serde_json::Value>) {
    for p in list.as_array().expect("`panels` is an array") {
        if p["type"] == "row" {
            if let Some(nested) = p.get("panels") {
                panels(nested, out);
            }
        } else {
            out.push(p.clone());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_uses_only_metrics_a_live_server_exports() {
    need!(Redis);
    let text = std::fs::read_to_string(sysctl("grafana-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut all = Vec::new();
    panels(&dash["panels"], &mut all);
    assert!(
        all.len() >= 10,
        "the dashboard has {} panels, want at least 10",
        all.len()
    );
    let mut used = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for p in &all {
        let title = p["title"].as_str().unwrap_or("");
        assert!(!title.trim().is_empty(), "a panel without a title: {p}");
        assert!(ids.insert(p["id"].as_u64()), "panel id repeated: {title}");
        let targets = p["targets"].as_array().map_or(&[][..], |t| &t[..]);
        assert!(!targets.is_empty(), "panel {title:?} has no target");
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or("");
            assert!(
                expr.contains("roomcast_"),
                "panel {title:?}: a target without a roomcast metric: {t}"
            );
            assert_eq!(
                t["datasource"]["uid"], "${DS_PROMETHEUS}",
                "panel {title:?}: a target on another data source"
            );
            metric_names(expr, &mut used);
        }
    }
    // The template variables' queries count too ($instance, $shard).
    for v in dash["templating"]["list"].as_array().unwrap() {
        for q in [&v["definition"], &v["query"], &v["query"]["query"]] {
            if let Some(q) = q.as_str() {
                metric_names(q, &mut used);
            }
        }
    }
    assert!(used.contains("roomcast_connections"), "{used:?}");

    // A live server with one WebSocket open, so every per-shard family has samples, on a
    // Redis of its own so that the backplane's families are there too.
    let admin: SocketAddr = format!("127.0.0.1:{}", common::free_port())
        .parse()
        .unwrap();
    let redis = common::redis::Redis::start();
    let server = Server::start(
        "uring",
        &[
            "--admin-listen",
            &admin.to_string(),
            "--redis",
            &redis.url(),
            // The hooks' and webhooks' families are exported once either is on (nothing
            // listens there: this server never needs an answer).
            "--hook-rpc",
            "http://127.0.0.1:9/rpc",
            "--webhook",
            "http://127.0.0.1:9/events",
        ],
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(server.url("/ws?room=lobby"))
        .await
        .unwrap();
    match common::next_data(&mut ws).await.unwrap().unwrap() {
        Message::Text(t) if t.contains("\"joined\"") => {}
        other => panic!("expected joined, got {other:?}"),
    }
    server.settles_to(1);
    let (status, scrape) = common::http_get(admin, "/metrics");
    assert_eq!(status, 200, "{scrape}");
    // A histogram's family is queried by its series: `_bucket`, `_sum`, `_count`.
    let exported: BTreeSet<String> = scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .flat_map(|(name, kind)| {
            let series: &[&str] = match kind {
                "histogram" => &["", "_bucket", "_sum", "_count"],
                _ => &[""],
            };
            series.iter().map(move |s| format!("{name}{s}"))
        })
        .collect();
    assert!(exported.contains("roomcast_websockets"), "{scrape}");
    let missing: Vec<&String> = used.difference(&exported).collect();
    println!(
        "the dashboard uses {} metric families, /metrics exports {}",
        used.len(),
        exported.len()
    );
    assert!(
        missing.is_empty(),
        "sysctl/grafana-dashboard.json uses metrics that /metrics does not export: {missing:?}\n\
         (exported: {exported:?})"
    );
    drop(ws);
}

/// `haproxy` from the PATH (scripts/test.sh installs Debian's package).
fn haproxy_version() -> String {
    match Command::new("haproxy").arg("-v").output() {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .to_owned(),
        Err(e) => panic!(
            "haproxy is not installed ({e}): this test runs sysctl/haproxy.cfg. scripts/test.sh \
             installs it; by hand: apt-get install -y haproxy"
        ),
    }
}

/// `haproxy -c -f cfg`: the configuration is valid.
fn haproxy_check(cfg: &Path) {
    let out = Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "haproxy refuses {}:\n{}{}",
        cfg.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `text` with `from` (which must occur exactly once) replaced by `to`.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "sysctl/haproxy.cfg no longer has exactly one `{from}`: update tests/deploy.rs with it"
    );
    text.replace(from, to)
}

/// HAProxy in the foreground (`-db`) in a directory of its own; dropping it kills it and
/// removes the directory.
struct Haproxy {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Haproxy {
    fn start(cfg: &str) -> Haproxy {
        let dir = std::env::temp_dir().join(format!(
            "roomcast-deploy-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        haproxy_check(&path);
        let log = std::fs::File::create(dir.join("haproxy.log")).unwrap();
        let child = Command::new("haproxy")
            .arg("-f")
            .arg(&path)
            .arg("-db")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn haproxy");
        let port = cfg
            .lines()
            .find_map(|l| l.trim().strip_prefix("bind 127.0.0.1:"))
            .and_then(|p| p.trim().parse::<u16>().ok())
            .expect("a `bind 127.0.0.1:PORT` line");
        let mut lb = Haproxy {
            child,
            dir,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let deadline = Instant::now() + SECOND * 5;
        while TcpStream::connect(lb.addr).is_err() {
            if let Some(status) = lb.child.try_wait().unwrap() {
                panic!("haproxy exited ({status}):\n{}", lb.log());
            }
            assert!(
                Instant::now() < deadline,
                "haproxy does not listen:\n{}",
                lb.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        lb
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("haproxy.log")).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("haproxy's log:\n{}", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A node's open WebSockets, from `/stats` on its admin port.
fn websockets(admin: SocketAddr) -> u64 {
    let (status, body) = common::http_get(admin, "/stats");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["websockets"].as_u64().unwrap()
}

/// One echo round trip within 5 s.
async fn echo(ws: &mut Ws, text: &str) -> Result<(), String> {
    let round = async {
        ws.send(Message::Text(text.to_owned()))
            .await
            .map_err(|e| format!("send: {e}"))?;
        match common::next_data(ws).await {
            Some(Ok(Message::Text(t))) if t == text => Ok(()),
            other => Err(format!("echo of {text:?}: got {other:?}")),
        }
    };
    tokio::time::timeout(SECOND * 5, round)
        .await
        .unwrap_or_else(|_| Err(format!("no echo of {text:?} within 5 s")))
}

/// A WebSocket to `/echo` through the proxy, checked by an echo round trip.
async fn connect_through(lb: SocketAddr, tag: &str) -> Result<Ws, String> {
    let url = format!("ws://{lb}/echo");
    let (mut ws, _) = tokio::time::timeout(SECOND * 3, tokio_tungstenite::connect_async(url))
        .await
        .map_err(|_| "no handshake within 3 s".to_owned())?
        .map_err(|e| format!("handshake: {e}"))?;
    echo(&mut ws, tag).await?;
    Ok(ws)
}

/// What happened to one client of the draining node.
struct Moved {
    code: Result<Option<u16>, String>,
    closed_at: Duration,
    attempts: u32,
    /// From the close frame to a reconnected echo.
    took: Duration,
    reconnected: Result<Ws, String>,
}

both_backends! {
    async fn clients_behind_haproxy_move_to_the_other_node_when_one_drains(backend: &str) {
        need!(Haproxy);
        drain_behind_haproxy(backend).await;
    }

    async fn the_live_dashboard_on_the_admin_port_charts_the_load_and_the_models_cpu(backend: &str) {
        need!(Node, Chromium);
        let admin: SocketAddr = format!("127.0.0.1:{}", common::free_port()).parse().unwrap();
        let server = Server::start(
            backend,
            &["--admin-listen", &admin.to_string(), "--max-conns", "auto", "--shards", "1"],
        );
        // 50 members reading a room that gets 100 msg/s: 5,000 deliveries/s.
        let mut members = Vec::new();
        for _ in 0..50 {
            let (mut ws, _) = tokio_tungstenite::connect_async(server.url("/ws?room=busy")).await.unwrap();
            members.push(tokio::spawn(async move { while let Some(Ok(_)) = ws.next().await {} }));
        }
        let (mut publisher, _) = tokio_tungstenite::connect_async(server.url("/ws")).await.unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let publishing = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                let m = serde_json::json!({"op":"pub","room":"busy","data":"tick"});
                if publisher.send(Message::Text(m.to_string())).await.is_err() {
                    break;
                }
                // Drain the acks as they come.
                while let Ok(Some(_)) = tokio::time::timeout(Duration::ZERO, publisher.next()).await {}
            }
        });
        let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("target/artifacts/dashboard-{backend}.png"));
        let url = format!("http://{admin}/dashboard");
        let out = tokio::task::spawn_blocking(move || {
            common::succeeds(
                Command::new("timeout")
                    .args(["120", "node"])
                    .arg(common::clients_dir().join("dashboard_browser.mjs"))
                    .arg(&url)
                    .arg(common::chromium())
                    .arg(&shot)
                    .arg("5"),
            )
        })
        .await
        .unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        publishing.await.unwrap();
        let page = common::last_json(&out);
        assert!(page.get("error").is_none(), "{page}");
        assert!(page["samples"].as_u64().unwrap() >= 5, "{page}");
        assert!(page["connections"].as_u64().unwrap() >= 51, "the members, the publisher: {page}");
        let deliveries = page["deliveries"].as_f64().unwrap();
        assert!((2_000.0..=6_000.0).contains(&deliveries), "about 5,000 deliveries/s: {page}");
        assert!(page["measured"].as_f64().unwrap() > 0.0, "the shard's CPU: {page}");
        assert!(page["predicted"].as_f64().unwrap() > 0.0, "the model's CPU: {page}");
        let left = page["left"].as_u64().unwrap();
        assert!(left > 0 && left < server.stats()["capacity"]["connections"].as_u64().unwrap(), "{page}");
        // Four charts: connections and the limit, deliveries and sends, the model and the
        // shard, connections left.
        assert!(page["polylines"].as_u64().unwrap() >= 6, "{page}");
        let png = std::fs::read(page["screenshot"].as_str().unwrap()).unwrap();
        assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a screenshot: {} bytes", png.len());
        // The page is the server's own: no outside assets.
        let (status, html) = common::http_get(admin, "/dashboard");
        assert_eq!(status, 200);
        assert!(!html.contains("http://") && !html.contains("https://"), "an outside asset in /dashboard");
        for m in members {
            m.abort();
        }
    }
}

async fn drain_behind_haproxy(backend: &str) {
    const CLIENTS: usize = 40;
    const RECONNECT_FOR: Duration = Duration::from_secs(10);
    println!("{}", haproxy_version());
    haproxy_check(&sysctl("haproxy.cfg"));

    // Two nodes, each with its admin port; the drain spreads 1001s over 2 s.
    let admin_a: SocketAddr = format!("127.0.0.1:{}", common::free_port())
        .parse()
        .unwrap();
    let admin_b: SocketAddr = format!("127.0.0.1:{}", common::free_port())
        .parse()
        .unwrap();
    let node = |admin: SocketAddr| {
        Server::start(
            backend,
            &["--admin-listen", &admin.to_string(), "--drain-window", "2"],
        )
    };
    let mut a = node(admin_a);
    let b = node(admin_b);

    // HAProxy from the example, with this test's ports and checks every 200 ms.
    let example = std::fs::read_to_string(sysctl("haproxy.cfg")).unwrap();
    let mut cfg = replace_once(
        &example,
        "bind 127.0.0.1:8080",
        &format!("bind 127.0.0.1:{}", common::free_port()),
    );
    for (name, main, admin) in [("a", a.addr, admin_a), ("b", b.addr, admin_b)] {
        let port = if name == "a" { 9001 } else { 9002 };
        cfg = replace_once(
            &cfg,
            &format!("server {name} 127.0.0.1:{port} check port {}", port + 100),
            &format!("server {name} {main} check port {}", admin.port()),
        );
    }
    cfg = replace_once(
        &cfg,
        "inter 2s fastinter 500ms fall 2 rise 2",
        "inter 200ms fall 1 rise 1",
    );
    cfg = replace_once(&cfg, "maxconn 100000", "maxconn 1000");
    let lb = Haproxy::start(&cfg);
    // Let the first health checks pass on both nodes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        common::http_get(lb.addr, "/metrics").0,
        404,
        "the proxy keeps /metrics to the admin port"
    );

    // 40 clients through the proxy; each one's node, from the nodes' /stats.
    let mut on_a = Vec::new();
    let mut on_b = Vec::new();
    let (mut was_a, mut was_b) = (websockets(admin_a), websockets(admin_b));
    for i in 0..CLIENTS {
        let ws = connect_through(lb.addr, &format!("hello {i}"))
            .await
            .unwrap_or_else(|e| panic!("client {i} through haproxy: {e}"));
        let deadline = Instant::now() + SECOND * 3;
        let (now_a, now_b) = loop {
            let (x, y) = (websockets(admin_a), websockets(admin_b));
            if x + y == was_a + was_b + 1 {
                break (x, y);
            }
            assert!(
                Instant::now() < deadline,
                "client {i}: the nodes count {x} + {y} WebSockets"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        if now_a > was_a {
            on_a.push(ws);
        } else {
            on_b.push(ws);
        }
        (was_a, was_b) = (now_a, now_b);
    }
    println!(
        "{backend}: leastconn: {} clients on node a, {} on node b",
        on_a.len(),
        on_b.len()
    );
    assert!(
        on_a.len() >= CLIENTS / 4 && on_b.len() >= CLIENTS / 4,
        "leastconn should spread the clients: {} on a, {} on b",
        on_a.len(),
        on_b.len()
    );
    assert_eq!(common::http_get(admin_a, "/healthz"), (200, "ok\n".into()));

    // Drain node a. Each of its clients waits for its close frame, then reconnects
    // through the proxy with backoff.
    let start = Instant::now();
    a.signal("TERM");
    let tasks: Vec<_> = on_a
        .into_iter()
        .enumerate()
        .map(|(i, mut ws)| {
            let lb = lb.addr;
            tokio::spawn(async move {
                let code = loop {
                    match tokio::time::timeout(SECOND * 6, ws.next()).await {
                        Ok(Some(Ok(Message::Close(f)))) => break Ok(f.map(|f| u16::from(f.code))),
                        Ok(Some(Ok(_))) => continue,
                        Ok(Some(Err(e))) => break Err(format!("error instead of a close: {e}")),
                        Ok(None) => break Err("the stream ended without a close frame".into()),
                        Err(_) => break Err("no close frame within 6 s".into()),
                    }
                };
                let closed_at = start.elapsed();
                // Finish the close handshake (tungstenite echoes the close) until EOF.
                let _ = tokio::time::timeout(SECOND * 3, async {
                    while let Some(Ok(_)) = ws.next().await {}
                })
                .await;
                drop(ws);
                let since = Instant::now();
                let mut backoff = Duration::from_millis(50);
                let mut attempts = 0;
                let reconnected = loop {
                    attempts += 1;
                    match connect_through(lb, &format!("back {i}")).await {
                        Ok(ws) => break Ok(ws),
                        Err(e) if since.elapsed() + backoff > RECONNECT_FOR => {
                            break Err(format!("{attempts} attempts, the last: {e}"))
                        }
                        Err(_) => {
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(SECOND);
                        }
                    }
                };
                Moved {
                    code,
                    closed_at,
                    attempts,
                    took: since.elapsed(),
                    reconnected,
                }
            })
        })
        .collect();

    // While it drains, node a's admin port says so (what the proxy checks).
    let deadline = Instant::now() + SECOND * 2;
    let healthz_503_after = loop {
        let (status, body) = common::http_get(admin_a, "/healthz");
        if status == 503 {
            assert_eq!(body, "draining\n");
            break start.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "node a's admin /healthz still answers {status} 2 s into the drain"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    let mut moved = Vec::new();
    for t in tasks {
        moved.push(t.await.unwrap());
    }
    let status = a
        .wait_exit(SECOND * 6)
        .expect("node a exits after its drain");
    assert!(status.success(), "node a: {status:?}");

    let mut problems = Vec::new();
    let mut closes = Vec::new();
    for (i, m) in moved.iter().enumerate() {
        match &m.code {
            Ok(Some(1001)) => closes.push(m.closed_at),
            Ok(code) => problems.push(format!("client {i} of node a got close code {code:?}")),
            Err(e) => problems.push(format!("client {i} of node a: {e}")),
        }
        if let Err(e) = &m.reconnected {
            problems.push(format!("client {i} of node a did not reconnect: {e}"));
        }
    }
    closes.sort();
    let retried = moved.iter().filter(|m| m.attempts > 1).count();
    println!(
        "{backend}: node a: /healthz 503 after {healthz_503_after:?}; {} of {} clients closed with 1001, \
         first at {:?}, last at {:?}; {retried} needed more than one attempt to reconnect \
         (at most {}); slowest reconnect {:?}",
        closes.len(),
        moved.len(),
        closes.first(),
        closes.last(),
        moved.iter().map(|m| m.attempts).max().unwrap_or(0),
        moved.iter().map(|m| m.took).max().unwrap_or_default()
    );
    for line in lb.log().lines().filter(|l| l.contains("roomcast/")) {
        println!("haproxy: {line}");
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(
        lb.log().contains("roomcast/a is DOWN"),
        "haproxy never marked node a down:\n{}",
        lb.log()
    );

    // Every client is now on node b: its own, undisturbed, and a's, moved.
    let deadline = Instant::now() + SECOND * 5;
    loop {
        let n = websockets(admin_b);
        if n == CLIENTS as u64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node b holds {n} WebSockets, want all {CLIENTS}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (i, ws) in on_b.iter_mut().enumerate() {
        echo(ws, &format!("still here {i}"))
            .await
            .unwrap_or_else(|e| panic!("client {i} of node b: {e}"));
    }
    for (i, m) in moved.iter_mut().enumerate() {
        let ws = m.reconnected.as_mut().unwrap();
        echo(ws, &format!("moved {i}"))
            .await
            .unwrap_or_else(|e| panic!("moved client {i}: {e}"));
    }
    drop(b);
}
