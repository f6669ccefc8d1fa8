//! One server process holding 25,000 simultaneous connections: more than RLIMIT_NOFILE
//! (20,000 here) allows as plain descriptors, so only io_uring's direct descriptors spread
//! over two shards can do it. The clients run in two child processes (each under its own
//! descriptor limit), from two source addresses (each with its own ephemeral ports).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Server;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

const CHILDREN: usize = 2;
const PER_CHILD: usize = 12_500;

#[test]
fn holds_25k_connections_in_one_process_each_echoing_then_closing_cleanly() {
    let server = Server::start("uring", &["--shards", "2"]);
    let started = Instant::now();
    let mut children: Vec<_> = (0..CHILDREN)
        .map(|i| {
            Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "client_process",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("SCALE_SERVER", server.addr.to_string())
                .env("SCALE_SOURCE", format!("127.0.0.{}", i + 2))
                .env("SCALE_COUNT", PER_CHILD.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut readers: Vec<_> = children
        .iter_mut()
        .map(|c| BufReader::new(c.stdout.take().unwrap()))
        .collect();
    let wait_for = |reader: &mut BufReader<_>, word: &str| -> usize {
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                reader.read_line(&mut line).unwrap() > 0,
                "client process ended before '{word}'"
            );
            // libtest prints "test client_process ... " on the same line first.
            if let Some(n) = line.split(word).nth(1) {
                return n.trim().parse().unwrap();
            }
        }
    };
    let connected: usize = readers.iter_mut().map(|r| wait_for(r, "connected ")).sum();
    assert_eq!(connected, CHILDREN * PER_CHILD);
    println!("{connected} connections open after {:?}", started.elapsed());
    // Every client has finished its handshake and holds its connection: the server holds
    // all of them at once. Now each one echoes and closes.
    for c in &mut children {
        writeln!(c.stdin.as_mut().unwrap(), "go").unwrap();
    }
    let done: usize = readers.iter_mut().map(|r| wait_for(r, "done ")).sum();
    assert_eq!(
        done,
        CHILDREN * PER_CHILD,
        "every connection echoed once and closed cleanly"
    );
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    // The server is still healthy and serves new connections.
    let ok = server.raw_exchange(
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(ok.starts_with(b"HTTP/1.1 200"));
}

/// The client side, run in a child process by the test above.
#[test]
#[ignore = "run as a child process by holds_25k_connections_…"]
fn client_process() {
    let server: std::net::SocketAddr = std::env::var("SCALE_SERVER").unwrap().parse().unwrap();
    let source: std::net::IpAddr = std::env::var("SCALE_SOURCE").unwrap().parse().unwrap();
    let count: usize = std::env::var("SCALE_COUNT").unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let url = format!("ws://{server}/echo");
        let conns: Vec<_> = futures_util::stream::iter(0..count)
            .map(|_| {
                let url = url.clone();
                async move {
                    let socket = tokio::net::TcpSocket::new_v4().unwrap();
                    socket.bind((source, 0).into()).unwrap();
                    let stream = socket.connect(server).await.unwrap();
                    let (ws, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
                    ws
                }
            })
            .buffer_unordered(256)
            .collect()
            .await;
        println!("connected {}", conns.len());
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).unwrap();
        let done: usize = futures_util::stream::iter(conns.into_iter().enumerate())
            .map(|(i, mut ws)| async move {
                let text = format!("hello from {i}");
                ws.send(Message::Text(text.clone())).await.unwrap();
                assert_eq!(
                    common::next_data(&mut ws).await.unwrap().unwrap(),
                    Message::Text(text)
                );
                ws.close(None).await.unwrap();
                // Read the server's close reply, then the end of the stream.
                while let Some(msg) = ws.next().await {
                    if msg.is_err() {
                        return 0;
                    }
                }
                1
            })
            .buffer_unordered(512)
            .fold(0, |a, b| async move { a + b })
            .await;
        println!("done {done}");
    });
}
