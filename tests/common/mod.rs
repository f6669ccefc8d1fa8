//! Starts the real `roomcast` binary for black-box tests.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Server {
    child: Child,
    pub addr: SocketAddr,
}

impl Server {
    /// Starts `roomcast serve` on 127.0.0.1 with an OS-chosen port and waits until it
    /// listens.
    pub fn start(backend: &str, extra: &[&str]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_roomcast"));
        cmd.stderr(Stdio::inherit());
        Server::spawn(cmd, backend, extra)
    }

    /// Like [`Server::start`], with `RLIMIT_NOFILE` lowered to `nofile` (by `prlimit`) and
    /// the log written to `log`.
    pub fn start_limited(
        backend: &str,
        nofile: u32,
        log: &std::path::Path,
        extra: &[&str],
    ) -> Server {
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--nofile={nofile}:{nofile}"))
            .arg(env!("CARGO_BIN_EXE_roomcast"));
        cmd.stderr(std::fs::File::create(log).unwrap());
        Server::spawn(cmd, backend, extra)
    }

    fn spawn(mut cmd: Command, backend: &str, extra: &[&str]) -> Server {
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--backend", backend]);
        // Tests that are not about heartbeats should not see pings arrive at random
        // moments; the heartbeat tests set their own interval.
        if !extra.contains(&"--ping-interval") {
            cmd.args(["--ping-interval", "3600", "--pong-timeout", "60"]);
        }
        let mut child = cmd
            .args(extra)
            // ROOMCAST_TEST_LOG overrides the server's log filter when chasing a failure.
            .env(
                "RUST_LOG",
                std::env::var("ROOMCAST_TEST_LOG").unwrap_or_else(|_| "warn,roomcast=info".into()),
            )
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn roomcast");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .split(" listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .parse()
            .unwrap();
        assert!(line.contains(&format!("backend {backend}")), "{line}");
        Server { child, addr }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Sends raw bytes and reads until the server closes (or `timeout`).
    pub fn raw_exchange(&self, request: &[u8], timeout: Duration) -> Vec<u8> {
        let mut s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(timeout)).unwrap();
        s.write_all(request).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        out
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A request upgrading to WebSocket on `path`.
pub fn upgrade_request(path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// One masked client frame.
pub fn client_frame(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0x11, 0x22, 0x33, 0x44];
    let mut out = vec![first_byte];
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

/// Runs the body once per backend, as two tests in modules `uring` and `epoll`.
#[macro_export]
macro_rules! both_backends {
    ($(async fn $name:ident($backend:ident: &str) $body:block)*) => {
        mod uring {
            #[allow(unused_imports)]
            use super::*;
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name("uring").await })*
        }
        mod epoll {
            #[allow(unused_imports)]
            use super::*;
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name("epoll").await })*
        }
        $(async fn $name($backend: &str) $body)*
    };
}

/// The next message that is not a ping or pong: the server pings on its own schedule
/// (tungstenite answers by itself), so tests looking for data skip control messages.
pub async fn next_data<S>(
    ws: &mut S,
) -> Option<Result<tokio_tungstenite::tungstenite::Message, tokio_tungstenite::tungstenite::Error>>
where
    S: futures_util::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
{
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match ws.next().await {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => return other,
        }
    }
}
