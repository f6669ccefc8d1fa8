//! Every scenario, small and short, against a real roomcast: the harness runs, stops by
//! itself, and writes what it measured.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// `need!`, the server's tests' skip for a missing outside program (Redis, here).
#[path = "../../tests/common/need.rs"]
#[allow(dead_code)]
mod need;

/// Where `need!` looks for its functions, as in the server's tests.
mod common {
    pub use super::need;
}

/// The roomcast binary next to ours (`cargo test --workspace` builds both).
fn roomcast() -> std::path::PathBuf {
    let bench = std::path::PathBuf::from(env!("CARGO_BIN_EXE_roomcast-bench"));
    let path = bench.with_file_name("roomcast");
    assert!(
        path.exists(),
        "{} missing: run the tests with --workspace",
        path.display()
    );
    path
}

/// A roomcast on a free port, with `args` after `serve`: the process and its address.
fn serve(args: &[&str]) -> (std::process::Child, String) {
    let mut server = Command::new(roomcast())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split(" listening on ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    (server, addr)
}

/// Stops the server and reads the results file: one JSON record per run.
fn stop_and_read(
    mut server: std::process::Child,
    results: &std::path::Path,
) -> Vec<serde_json::Value> {
    let _ = server.kill();
    let _ = server.wait();
    let text = std::fs::read_to_string(results).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A figure of a record, which must be there.
fn figure(rec: &serde_json::Value, k: &str) -> f64 {
    rec["figures"][k]
        .as_f64()
        .unwrap_or_else(|| panic!("{k} in {rec}"))
}

#[test]
fn every_scenario_runs_and_records_its_figures() {
    let (server, addr) = serve(&["--shards", "1", "--rate", "0"]);
    let dir = std::env::temp_dir().join(format!("roomcast-bench-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let results = dir.join("RESULTS.jsonl");
    let runs: [&[&str]; 7] = [
        &[
            "idle",
            "--connections",
            "400",
            "--hold-secs",
            "1",
            "--workers",
            "2",
        ],
        &["ramp", "--connections", "300"],
        &["echo", "--connections", "4", "--depth", "2", "--secs", "1"],
        &["fanout", "--members", "50", "--rate", "50", "--secs", "1"],
        &[
            "fanout",
            "--rooms",
            "2",
            "--members",
            "20",
            "--rate",
            "0",
            "--secs",
            "1",
        ],
        &["churn", "--rate", "50", "--secs", "1"],
        &[
            "slow",
            "--members",
            "20",
            "--rate",
            "20",
            "--secs",
            "1",
            "--fraction",
            "0.2",
        ],
    ];
    for args in runs {
        let status = Command::new(env!("CARGO_BIN_EXE_roomcast-bench"))
            .args([
                "--server",
                &addr,
                "--server-pid",
                &server.id().to_string(),
                "--sources",
                "4",
            ])
            .arg("--out")
            .arg(&results)
            .args(args)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "{args:?}");
    }
    let recs = stop_and_read(server, &results);
    assert_eq!(recs.len(), 7);
    let fig = |i: usize, k: &str| figure(&recs[i], k);
    assert_eq!(fig(0, "connections"), 400.0);
    assert_eq!(fig(0, "still_open_after_hold"), 400.0);
    assert_eq!(fig(1, "connections"), 300.0);
    assert!(fig(2, "messages") > 0.0 && fig(2, "server_cpu_ns_per_msg") > 0.0);
    assert_eq!(fig(3, "completeness"), 1.0);
    assert!(fig(4, "delivered") > 0.0 && fig(4, "completeness") == 1.0);
    assert_eq!(fig(5, "cycles_failed"), 0.0);
    assert_eq!(recs[6]["figures"]["with"]["slow_members_per_room"], 4);
    for r in &recs {
        assert_eq!(r["server"]["name"], "roomcast");
        assert!(r["machine"]["cores"].as_u64().unwrap() >= 1 && r["params"].is_object());
        // Every scenario reports the load generator's CPU; without --server-cpu, no more.
        let f = &r["figures"];
        assert!(f["client_busy"].as_f64().unwrap() > 0.0, "{r}");
        assert!(f["client_bound"].is_boolean(), "{r}");
        assert!(f["server_softirq_share"].is_null(), "{r}");
        // The default --workers 1 keeps the parameters they always had.
        assert!(
            r["scenario"] == "idle" || r["params"]["workers"].is_null(),
            "{r}"
        );
    }
    // And the report renders them.
    let status = Command::new(env!("CARGO_BIN_EXE_roomcast-bench"))
        .arg("report")
        .arg(&results)
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let report = std::fs::read_to_string(dir.join("REPORT.md")).unwrap();
    assert!(
        report.contains("### fanout") && report.contains(".svg"),
        "{report}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `calibrate` against a real roomcast (a 2 s ping interval so the hold is short) writes
/// figures that `roomcast plan --figures` accepts, each of them a measured, positive cost.
#[test]
fn calibrate_writes_figures_that_plan_reads() {
    let (mut server, addr) = serve(&[
        "--shards",
        "2",
        "--rate",
        "0",
        "--ping-interval",
        "2",
        "--pong-timeout",
        "1",
    ]);
    let figures =
        std::env::temp_dir().join(format!("roomcast-figures-{}.json", std::process::id()));
    let status = Command::new(env!("CARGO_BIN_EXE_roomcast-bench"))
        .args(["--server", &addr, "--server-pid", &server.id().to_string()])
        .args(["calibrate", "--connections", "2000", "--figures"])
        .arg(&figures)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert!(status.success());
    let f = roomcast::ops::plan::Figures::load(&figures).unwrap();
    for (name, v) in [
        ("user_bytes_per_conn", f.user_bytes_per_conn),
        ("kernel_bytes_per_socket", f.kernel_bytes_per_socket),
        ("ping_cpu_us", f.ping_cpu_us),
        ("delivery_cpu_ns", f.delivery_cpu_ns),
        ("send_cpu_ns", f.send_cpu_ns),
        ("message_cpu_ns", f.message_cpu_ns),
        ("handshake_cpu_us", f.handshake_cpu_us),
    ] {
        assert!(v > 0.0 && v.is_finite(), "{name} = {v}: {f:?}");
    }
    let out = Command::new(roomcast())
        .args(["plan", "--connections", "100000", "--figures"])
        .arg(&figures)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("figures: roomcast-bench calibrate:"),
        "{text}"
    );
    assert!(text.contains("verdict:"), "{text}");
    let _ = std::fs::remove_file(&figures);
}

/// With `--server-cpu 0 --workers 2`: the load is spread over two worker processes, the
/// results stay complete, and every run carries the load generator's CPU and CPU 0's
/// busy share, softirq share and CPU-total cost per unit, each within its range.
#[test]
fn workers_and_the_server_cpu_are_reported() {
    let (server, addr) = serve(&["--shards", "1", "--rate", "0"]);
    let results = std::env::temp_dir().join(format!(
        "roomcast-bench-workers-{}.jsonl",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&results);
    let runs: [&[&str]; 5] = [
        &["echo", "--connections", "6", "--depth", "4", "--secs", "1"],
        &[
            "fanout",
            "--rooms",
            "2",
            "--members",
            "30",
            "--rate",
            "0",
            "--secs",
            "1",
        ],
        &[
            "fanout",
            "--members",
            "41",
            "--rate",
            "50",
            "--secs",
            "1",
            "--slow-fraction",
            "0.1",
        ],
        &["ramp", "--connections", "301"],
        &["churn", "--rate", "40", "--secs", "1"],
    ];
    for args in runs {
        let status = Command::new(env!("CARGO_BIN_EXE_roomcast-bench"))
            .args(["--server", &addr, "--server-pid", &server.id().to_string()])
            .args(["--sources", "4", "--server-cpu", "0", "--out"])
            .arg(&results)
            .args(args)
            .args(["--workers", "2"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "{args:?}");
    }
    let recs = stop_and_read(server, &results);
    let _ = std::fs::remove_file(&results);
    assert_eq!(recs.len(), 5);
    let fig = |i: usize, k: &str| figure(&recs[i], k);
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r["params"]["workers"], 2, "{r}");
        assert_eq!(r["figures"]["server_cpu"], 0, "{r}");
        assert!(fig(i, "client_busy") > 0.0, "{r}");
        assert!(r["figures"]["client_bound"].is_boolean(), "{r}");
        let (busy, softirq) = (fig(i, "server_cpu0_busy"), fig(i, "server_softirq_share"));
        assert!((0.0..=1.0).contains(&busy), "{r}");
        assert!((0.0..=1.0).contains(&softirq) && softirq <= busy, "{r}");
    }
    // echo: every connection, in two processes, echoed and timed.
    assert!(fig(0, "messages") > 0.0 && fig(0, "rtt_p50_us") > 0.0);
    assert!(fig(0, "server_cpu_ns_per_msg") > 0.0);
    assert!(fig(0, "server_cpu_total_ns_per_msg") >= 0.0);
    // fanout: members in the workers, every delivery counted once and timed.
    for i in [1, 2] {
        assert_eq!(fig(i, "completeness"), 1.0, "{}", recs[i]);
        assert_eq!(fig(i, "delivered"), fig(i, "expected"));
        assert!(
            fig(i, "latency_p50_us") > 0.0 && fig(i, "server_cpu_total_ns_per_delivery") >= 0.0
        );
    }
    assert_eq!(fig(2, "slow_members_per_room"), 4.0);
    // ramp and churn: the workers' counts summed.
    assert_eq!(fig(3, "connections"), 301.0);
    assert!(fig(3, "server_cpu_total_us_per_conn") >= 0.0 && fig(3, "latency_p50_us") > 0.0);
    assert!(fig(4, "cycles_ok") >= 30.0 && fig(4, "cycles_failed") == 0.0);
}

/// `resume` against a roomcast keeping 1,000 messages of history: 50 members of one room,
/// their sockets reset at once under 200 msg/s, come back within 200 ms and resume with
/// since/epoch. Nothing is lost, nothing arrives twice, every member is recovered and
/// caught up; on both backends, in one process and over two workers.
#[test]
fn resume_loses_nothing_while_history_covers_the_outage() {
    for backend in ["uring", "epoll"] {
        let (server, addr) = serve(&[
            "--backend",
            backend,
            "--shards",
            "2",
            "--rate",
            "0",
            "--history-size",
            "1000",
        ]);
        let results = std::env::temp_dir().join(format!(
            "roomcast-bench-resume-{backend}-{}.jsonl",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&results);
        let runs: [&[&str]; 2] = [
            &["--room", "resume-1"],
            &["--room", "resume-2", "--workers", "2"],
        ];
        for args in runs {
            let status = Command::new(env!("CARGO_BIN_EXE_roomcast-bench"))
                .args(["--server", &addr, "--server-pid", &server.id().to_string()])
                .args(["--sources", "4", "--server-cpu", "0", "--out"])
                .arg(&results)
                .args(["resume", "--members", "50", "--rate", "200"])
                .args([
                    "--jitter-ms",
                    "200",
                    "--warmup-secs",
                    "1",
                    "--timeout-secs",
                    "20",
                ])
                .args(args)
                .stdout(Stdio::null())
                .status()
                .unwrap();
            assert!(status.success(), "{backend} {args:?}");
        }
        let recs = stop_and_read(server, &results);
        let _ = std::fs::remove_file(&results);
        assert_eq!(recs.len(), 2, "{backend}");
        for r in &recs {
            let f = |k: &str| figure(r, k);
            assert_eq!((f("members"), f("joined")), (50.0, 50.0), "{backend}: {r}");
            // The promise: nothing lost, nothing twice, nothing out of place.
            for k in [
                "lost",
                "duplicates",
                "stale",
                "reordered",
                "mismatched",
                "gap_notices",
            ] {
                assert_eq!(f(k), 0.0, "{backend}: {k} in {r}");
            }
            // Every member resumed once, recovered, in the epoch it knew.
            assert_eq!(f("resumes_recovered"), 50.0, "{backend}: {r}");
            for k in [
                "members_not_recovered",
                "epoch_missing",
                "epoch_changed",
                "seq_restarted",
                "not_resumed",
                "reconnect_failed",
                "unexpected_closes",
                "errors",
            ] {
                assert_eq!(f(k), 0.0, "{backend}: {k} in {r}");
            }
            assert!(r["figures"]["caught_up"] == true, "{backend}: {r}");
            // The history did the work: members got what they missed as a replay.
            assert!(f("replayed") > 0.0, "{backend}: {r}");
            assert!(
                f("published") >= 200.0 && f("acked") == f("published"),
                "{r}"
            );
            assert!(f("reconnect_first_ms") <= f("reconnect_last_ms"), "{r}");
            assert!(f("resume_p50_ms") <= f("resume_max_ms"), "{r}");
            assert!(
                f("client_busy") > 0.0 && f("server_cpu0_busy") >= 0.0,
                "{r}"
            );
        }
        assert_eq!(recs[1]["params"]["workers"], 2);
        // And the report has a table for them.
        let dir = std::env::temp_dir().join(format!(
            "roomcast-bench-resume-report-{backend}-{}",
            std::process::id()
        ));
        let file = dir.join("R.jsonl");
        std::fs::create_dir_all(&dir).unwrap();
        let lines: Vec<String> = recs.iter().map(|r| r.to_string()).collect();
        std::fs::write(&file, lines.join("\n")).unwrap();
        let status = Command::new(env!("CARGO_BIN_EXE_roomcast-bench"))
            .arg("report")
            .arg(&file)
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        let report = std::fs::read_to_string(dir.join("REPORT.md")).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            report.contains("### resume") && report.contains("| lost | duplicates |"),
            "{report}"
        );
    }
}

/// A `redis-server` of the test's own on a free port, nothing saved, killed on drop.
struct Redis {
    child: std::process::Child,
    port: u16,
}

impl Redis {
    fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/test.sh installs it)");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Redis { child, port }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `fanout --also`: members split over two nodes on one Redis, in this process and over
/// two workers; every delivery arrives, in order, and the figures carry the nodes, all
/// their CPU and Redis's. The cluster options are refused where they mean nothing.
#[test]
fn fanout_spreads_members_over_a_cluster() {
    need!(Redis);
    let redis = Redis::start();
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let common = ["--shards", "1", "--rate", "0", "--redis", &url];
    let (a, a_addr) = serve(&[&common[..], &["--node-id", "a"]].concat());
    let (b, b_addr) = serve(&[&common[..], &["--node-id", "b"]].concat());
    let results = std::env::temp_dir().join(format!(
        "roomcast-bench-cluster-{}.jsonl",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&results);
    let (a_pid, b_pid, r_pid) = (
        a.id().to_string(),
        b.id().to_string(),
        redis.child.id().to_string(),
    );
    let runs: [&[&str]; 2] = [
        &["--members", "40", "--rate", "50"],
        &["--members", "40", "--rate", "0", "--workers", "2"],
    ];
    for args in runs {
        let status = Command::new(env!("CARGO_BIN_EXE_roomcast-bench"))
            .args(["--server", &a_addr, "--also", &b_addr])
            .args(["--server-pid", &a_pid, "--also-pid", &b_pid])
            .args(["--redis-pid", &r_pid, "--sources", "4", "--out"])
            .arg(&results)
            .args(["fanout", "--secs", "1", "--check-order"])
            .args(args)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "{args:?}");
    }
    let refused = Command::new(env!("CARGO_BIN_EXE_roomcast-bench"))
        .args(["--server", &a_addr, "--also", &b_addr])
        .args(["echo", "--secs", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(refused.code(), Some(2));
    let _ = stop_and_read(b, &results);
    let recs = stop_and_read(a, &results);
    assert_eq!(recs.len(), 2);
    for (i, r) in recs.iter().enumerate() {
        let fig = |k: &str| figure(r, k);
        assert_eq!(fig("completeness"), 1.0, "{r}");
        assert_eq!(fig("delivered"), fig("expected"), "{r}");
        assert!(fig("published") > 0.0, "{r}");
        assert_eq!(fig("nodes"), 2.0, "{r}");
        assert_eq!((fig("order_reordered"), fig("order_skipped")), (0.0, 0.0));
        // Node b delivered to its half: all the nodes cost more than the first.
        assert!(
            fig("nodes_cpu_ns_per_delivery") > fig("server_cpu_ns_per_delivery"),
            "{r}"
        );
        assert!(
            fig("redis_cpu_us_per_msg") > 0.0 && fig("redis_cpu_share") > 0.0,
            "{r}"
        );
        assert_eq!(r["server"]["nodes"][1], b_addr.as_str(), "{r}");
        assert_eq!(r["params"]["check_order"], true);
        if i == 1 {
            assert_eq!(r["params"]["workers"], 2);
        }
    }
    let _ = std::fs::remove_file(&results);
}
