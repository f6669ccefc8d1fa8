//! roomcast-bench: drives a WebSocket server over loopback and reports what it cost.
//!
//! Scenarios so far: `idle` (hold N connections: server bytes per connection) and `echo`
//! (C connections × D messages in flight: throughput, RTT, server CPU per message). The
//! client is one single-threaded event loop (tokio's current-thread runtime on epoll),
//! speaks raw frames with no allocation per message, and masks with the all-zero key so
//! frames need no masking pass (RFC 6455 §5.3 allows any key; the server still unmasks).

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

#[derive(Parser)]
#[command(
    name = "roomcast-bench",
    version,
    about = "Load generator for roomcast and peers"
)]
struct Cli {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:9000", global = true)]
    server: SocketAddr,
    /// The server's pid, to read its memory and CPU from /proc.
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    /// Source addresses 127.0.0.2, .3, … (spreads ephemeral ports).
    #[arg(long, default_value_t = 8, global = true)]
    sources: u8,
    /// Append one JSON line per run to this file.
    #[arg(long, global = true)]
    out: Option<std::path::PathBuf>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Hold N idle connections for T seconds.
    Idle {
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        #[arg(long, default_value_t = 5)]
        hold_secs: u64,
    },
    /// C connections, each with D messages of S bytes in flight, for T seconds.
    Echo {
        #[arg(long, default_value_t = 100)]
        connections: usize,
        #[arg(long, default_value_t = 16)]
        depth: usize,
        #[arg(long, default_value_t = 32)]
        size: usize,
        #[arg(long, default_value_t = 10)]
        secs: u64,
    },
}

fn main() {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let result = rt.block_on(async {
        match cli.scenario {
            Scenario::Idle {
                connections,
                hold_secs,
            } => idle(&cli, connections, hold_secs).await,
            Scenario::Echo {
                connections,
                depth,
                size,
                secs,
            } => echo(&cli, connections, depth, size, secs).await,
        }
    });
    if let Some(path) = &cli.out {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("results file");
        writeln!(f, "{result}").expect("write results");
    }
}

fn source(cli: &Cli, i: usize) -> IpAddr {
    IpAddr::from([127, 0, 0, 2 + (i % cli.sources.max(1) as usize) as u8])
}

/// Connects and completes the opening handshake on `path`.
async fn connect(server: SocketAddr, src: IpAddr, path: &str) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(src, 0))?;
    let mut stream = socket.connect(server).await?;
    stream.set_nodelay(true)?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {server}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await?;
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    // The 101 response is small and nothing follows it until we send, so reading it a
    // byte at a time costs only setup time.
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 {
            return Err(std::io::Error::other("closed during handshake"));
        }
        head.push(byte[0]);
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        return Err(std::io::Error::other(
            String::from_utf8_lossy(&head).into_owned(),
        ));
    }
    Ok(stream)
}

/// Server memory and CPU from /proc.
#[derive(Clone, Copy, Debug, Default)]
struct ProcSample {
    rss_bytes: u64,
    cpu_ns: u64,
    slab_bytes: u64,
}

fn sample(pid: Option<u32>) -> ProcSample {
    let mut s = ProcSample::default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    s.slab_bytes = field_kib(&meminfo, "Slab:") * 1024;
    let Some(pid) = pid else { return s };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.rss_bytes = field_kib(&status, "VmRSS:") * 1024;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let stat = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
            s.cpu_ns += stat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    s
}

fn field_kib(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// How long the server gets to settle after a burst of handshakes before memory is read.
const SETTLE: Duration = Duration::from_secs(3);

/// Opens `n` connections with at most 512 handshakes in flight.
async fn open_many(cli: &Cli, first: usize, n: usize, conns: &mut Vec<TcpStream>) -> usize {
    let mut pending = tokio::task::JoinSet::new();
    let mut failed = 0usize;
    for i in first..first + n {
        let (server, src) = (cli.server, source(cli, i));
        pending.spawn(async move { connect(server, src, "/echo").await });
        while pending.len() >= 512 {
            match pending.join_next().await {
                Some(Ok(Ok(s))) => conns.push(s),
                _ => failed += 1,
            }
        }
    }
    while let Some(r) = pending.join_next().await {
        match r {
            Ok(Ok(s)) => conns.push(s),
            _ => failed += 1,
        }
    }
    failed
}

/// Holds `n` idle connections. Memory is sampled with none, half and all of them open:
/// the average (held − none) / n includes fixed costs that grow with first use (buffer
/// pools, slab growth); the marginal (all − half) / (n/2) is what one more connection
/// costs, the figure to plan capacity with.
async fn idle(cli: &Cli, n: usize, hold: u64) -> serde_json::Value {
    let before = sample(cli.server_pid);
    let started = Instant::now();
    let mut conns = Vec::with_capacity(n);
    let mut failed = open_many(cli, 0, n / 2, &mut conns).await;
    // Let the allocator return what the handshake burst used before sampling.
    tokio::time::sleep(SETTLE).await;
    let half = sample(cli.server_pid);
    let half_open = conns.len();
    failed += open_many(cli, n / 2, n - n / 2, &mut conns).await;
    let ramp = started.elapsed();
    tokio::time::sleep(SETTLE).await;
    let held = sample(cli.server_pid);
    tokio::time::sleep(Duration::from_secs(hold)).await;
    let held_cpu = sample(cli.server_pid);
    let open = conns.len();
    drop(conns);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = sample(cli.server_pid);
    let per = |a: u64, b: u64, count: usize| (b.saturating_sub(a)) as f64 / count.max(1) as f64;
    let user_avg = per(before.rss_bytes, held.rss_bytes, open);
    let user_marginal = per(half.rss_bytes, held.rss_bytes, open - half_open);
    let kernel = per(before.slab_bytes, held.slab_bytes, open);
    let idle_cpu = (held_cpu.cpu_ns - held.cpu_ns) as f64 / hold.max(1) as f64 / 1e6;
    let mib = |b: u64| b as f64 / 1048576.0;
    println!(
        "idle: {open} connections ({failed} failed) in {:.2}s ({:.0}/s)\n  server RSS {:.1} MiB -> {:.1} MiB at {half_open} -> {:.1} MiB at {open} -> {:.1} MiB after closing\n  user space per connection: {user_marginal:.0} B marginal, {user_avg:.0} B average\n  kernel slab {kernel:.0} B per connection (both ends of loopback)\n  server CPU while idle: {idle_cpu:.2} ms/s",
        ramp.as_secs_f64(),
        open as f64 / ramp.as_secs_f64(),
        mib(before.rss_bytes),
        mib(half.rss_bytes),
        mib(held.rss_bytes),
        mib(after.rss_bytes),
    );
    serde_json::json!({
        "scenario": "idle", "connections": open, "failed": failed, "ramp_secs": ramp.as_secs_f64(),
        "rss_before": before.rss_bytes, "rss_half": half.rss_bytes, "rss_held": held.rss_bytes,
        "rss_after": after.rss_bytes, "user_bytes_per_conn_marginal": user_marginal,
        "user_bytes_per_conn_avg": user_avg, "kernel_slab_bytes_per_conn": kernel,
        "idle_cpu_ms_per_s": idle_cpu, "machine": machine(),
    })
}

async fn echo(cli: &Cli, c: usize, depth: usize, size: usize, secs: u64) -> serde_json::Value {
    let size = size.max(8);
    let epoch = Instant::now();
    let deadline = epoch + Duration::from_secs(secs);
    let mut streams = Vec::with_capacity(c);
    for i in 0..c {
        streams.push(
            connect(cli.server, source(cli, i), "/echo")
                .await
                .expect("connect"),
        );
    }
    let start = sample(cli.server_pid);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for stream in streams {
        tasks.spawn(echo_conn(stream, depth, size, epoch, deadline));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram");
    let mut total = 0u64;
    while let Some(r) = tasks.join_next().await {
        if let Ok((h, n)) = r {
            hist.add(h).expect("same bounds");
            total += n;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let end = sample(cli.server_pid);
    let rate = total as f64 / elapsed;
    let ns_per_msg = (end.cpu_ns - start.cpu_ns) as f64 / total.max(1) as f64;
    let q = |p: f64| hist.value_at_quantile(p) as f64 / 1000.0;
    println!(
        "echo: {c} conns x {depth} in flight x {size} B: {rate:.0} msgs/s, RTT p50 {:.1} µs p99 {:.1} µs p999 {:.1} µs, server {ns_per_msg:.0} ns CPU/msg",
        q(0.5),
        q(0.99),
        q(0.999)
    );
    serde_json::json!({
        "scenario": "echo", "connections": c, "depth": depth, "size": size, "secs": elapsed,
        "messages": total, "msgs_per_sec": rate, "rtt_p50_us": q(0.5), "rtt_p99_us": q(0.99),
        "rtt_p999_us": q(0.999), "server_cpu_ns_per_msg": ns_per_msg, "machine": machine(),
    })
}

/// Keeps `depth` messages in flight until `deadline`; each carries its send time.
async fn echo_conn(
    mut s: TcpStream,
    depth: usize,
    size: usize,
    epoch: Instant,
    deadline: Instant,
) -> (Histogram<u64>, u64) {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram");
    let frame_len =
        roomcast_bench::masked_frame(roomcast::protocol::OpCode::Binary, &vec![0; size], [0; 4])
            .len();
    let header_len = frame_len - size;
    let template =
        roomcast_bench::masked_frame(roomcast::protocol::OpCode::Binary, &vec![0; size], [0; 4]);
    let mut out = Vec::with_capacity(frame_len * depth);
    let stamp = |out: &mut Vec<u8>| {
        let at = out.len();
        out.extend_from_slice(&template);
        let now = epoch.elapsed().as_nanos() as u64;
        out[at + header_len..at + header_len + 8].copy_from_slice(&now.to_le_bytes());
    };
    for _ in 0..depth {
        stamp(&mut out);
    }
    if s.write_all(&out).await.is_err() {
        return (hist, 0);
    }
    let mut buf = vec![0u8; 64 * 1024];
    let (mut filled, mut received, mut outstanding) = (0usize, 0u64, depth);
    let server_frame =
        2 + if size > 125 {
            if size > 0xFFFF {
                8
            } else {
                2
            }
        } else {
            0
        } + size;
    while outstanding > 0 {
        let n = match s.read(&mut buf[filled..]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        filled += n;
        out.clear();
        let mut at = 0;
        let now = epoch.elapsed().as_nanos() as u64;
        while filled - at >= server_frame {
            let payload = &buf[at + server_frame - size..at + server_frame];
            let sent = u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"));
            let _ = hist.record(now.saturating_sub(sent).max(1));
            received += 1;
            outstanding -= 1;
            at += server_frame;
            if Instant::now() < deadline {
                stamp(&mut out);
                outstanding += 1;
            }
        }
        buf.copy_within(at..filled, 0);
        filled -= at;
        if !out.is_empty() && s.write_all(&out).await.is_err() {
            break;
        }
    }
    (hist, received)
}

fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    serde_json::json!({
        "cpu": model,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "kernel": kernel.trim(),
    })
}
