//! Server-initiated closes reach real clients that are still sending: Python `websockets`
//! and Node `ws` keep writing while the server closes them, and each must read the close
//! code the README promises (not 1006 after a reset). The server lingers after its close
//! frame; a client that never stops sending still loses its slot by --close-timeout.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{clients_dir, Server};

const LIMITS: &[&str] = &[
    "--rate",
    "50",
    "--burst",
    "100",
    "--max-message",
    "65536",
    "--close-timeout",
    "2",
];

/// The cases both clients run, with the code each must read.
const CASES: &[(&str, u16)] = &[
    ("flood", 1008),
    ("oversize-echo", 1009),
    ("oversize-ws", 1009),
    ("utf8", 1007),
    ("protocol", 1002),
];

/// A client process: `python` (the venv scripts/test.sh makes) or `node` (with the `ws`
/// package scripts/test.sh installs), running `cases` against `server`.
fn client(kind: &str, server: &Server, cases: &[&str]) -> Child {
    let dir = clients_dir();
    let (program, script) = match kind {
        "python" => (common::python(), dir.join("closes.py")),
        _ => ("node".into(), dir.join("closes.mjs")),
    };
    let base = server.url("");
    Command::new(program)
        .arg(script)
        .arg(base.trim_end_matches('/'))
        .args(cases)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// Reads the client's result lines: case → (code, reason).
fn results(child: Child, timeout: Duration) -> Vec<(String, u16, String)> {
    let deadline = Instant::now() + timeout;
    let out = wait_output(child, deadline);
    out.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["case"].as_str().unwrap().to_owned(),
                v["code"].as_u64().unwrap() as u16,
                v["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn wait_output(mut child: Child, deadline: Instant) -> String {
    loop {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "client failed: {:?}", out.status);
            return String::from_utf8(out.stdout).unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("client did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

both_backends! {
    async fn python_and_node_clients_read_every_close_code_while_still_sending(backend: &str) {
        need!(Python, Node);
        let server = Server::start(backend, LIMITS);
        let names: Vec<&str> = CASES.iter().map(|(n, _)| *n).collect();
        for kind in ["python", "node"] {
            let got = results(client(kind, &server, &names), Duration::from_secs(60));
            let codes: Vec<(String, u16)> = got.iter().map(|(c, code, _)| (c.clone(), *code)).collect();
            let want: Vec<(String, u16)> = CASES.iter().map(|(c, code)| (c.to_string(), *code)).collect();
            assert_eq!(codes, want, "{kind}: {got:?}");
            let flood = &got[0].2;
            assert_eq!(flood, "rate limit exceeded", "{kind}: the reason reaches the client");
        }
        server.settles_to(0);
    }

    async fn a_drain_reaches_clients_that_are_still_sending_with_1001(backend: &str) {
        need!(Python, Node);
        let mut server = Server::start(backend, &["--drain-window", "1", "--close-timeout", "2", "--rate", "0"]);
        let mut children = Vec::new();
        for kind in ["python", "node"] {
            let mut child = client(kind, &server, &["drain"]);
            let mut line = String::new();
            BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
            assert_eq!(line.trim(), "ready", "{kind}");
            children.push((kind, child));
        }
        std::thread::sleep(Duration::from_millis(300));
        server.signal("TERM");
        for (kind, child) in children {
            let got = results(child, Duration::from_secs(20));
            assert_eq!(got.len(), 1, "{kind}: {got:?}");
            let (_, code, reason) = &got[0];
            assert_eq!((*code, reason.as_str()), (1001, "server shutting down"), "{kind}");
        }
        assert!(server.wait_exit(Duration::from_secs(10)).is_some_and(|s| s.success()));
    }

    async fn node_ws_gets_its_close_code_and_reason_echoed(backend: &str) {
        need!(Node);
        let server = Server::start(backend, &[]);
        let got = results(client("node", &server, &["echo-reason"]), Duration::from_secs(20));
        assert_eq!(got, [("echo-reason".to_owned(), 4001, "bye".to_owned())]);
    }

    async fn a_client_that_sends_forever_after_its_close_loses_its_slot_by_the_close_timeout(backend: &str) {
        let server = Server::start(backend, &["--max-message", "1024", "--close-timeout", "2"]);
        server.settles_to(0);
        let mut sock = std::net::TcpStream::connect(server.addr).unwrap();
        sock.write_all(&common::upgrade_request("/echo")).unwrap();
        // A frame over the cap (1009), then a stream of frames that never ends.
        let header = [0x82u8, 0xFE, 0x10, 0x00, 1, 2, 3, 4];
        sock.write_all(&header).unwrap();
        let start = Instant::now();
        let writer = std::thread::spawn(move || {
            let chunk = common::client_frame(0x82, &[7; 1000]);
            // About 1 MB/s, under the linger byte cap: only the close timeout ends it.
            // Bounded: 10 s at most, or until the server closes the socket.
            while start.elapsed() < Duration::from_secs(10) {
                if sock.write_all(&chunk).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            start.elapsed()
        });
        let cut = writer.join().unwrap();
        // It lingered (read on instead of resetting at once), and not past the timeout.
        let (min, max) = (Duration::from_millis(1500), Duration::from_secs(4));
        assert!(cut > min && cut < max, "cut after {cut:?}");
        server.settles_to(0);
    }
}
