//! roomcast-bench: drives a WebSocket server over loopback and reports what it cost.
//!
//! The client is one single-threaded event loop per process (tokio's current-thread
//! runtime on epoll). It speaks raw frames, pre-masked with the all-zero key (RFC 6455
//! §5.3 allows any key; the server still unmasks), reads server frames out of one buffer
//! per connection, and allocates nothing per message. With `--workers N` a scenario spreads
//! its connections over N worker processes (`idle` also to keep each under its own
//! RLIMIT_NOFILE), and every scenario spreads them over source addresses 127.0.0.2 and up
//! (IP_BIND_ADDRESS_NO_PORT).
//!
//! Every scenario reports the load generator's own CPU over its measured window
//! (`client_busy`, its workers included, and `client_bound` when it was saturated), and
//! with `--server-cpu N` the server's CPU as a whole from /proc/stat, softirq included.
//!
//! Against a cluster (roomcast nodes on one Redis), `fanout` and `slow` take the other
//! nodes with `--also ADDR` and spread their members over all of them; `--also-pid` and
//! `--redis-pid` add all the nodes' CPU per delivery and Redis's per published message
//! (bench/scripts/cluster-fanout.sh runs it against one node).
//!
//! With `--deflate`, `idle`'s and fan-out's connections offer permessage-deflate (RFC
//! 7692) as Chromium does, the run fails unless the server agrees, and fan-out's members
//! inflate what comes compressed; `fanout --json` publishes a realistic JSON feed to
//! compress. Fan-out reports the bytes its members read per delivery, plain or not.
//!
//! `storm` runs the application's backend itself (a connect hook answering after a fixed
//! latency, on `--backend-listen`) and reconnects everyone at once against a roomcast
//! started with `--hook-connect` pointing at it (bench/scripts/storm.sh does both).
//!
//! Every run prints a summary and, with `--out`, appends one JSON object to a results
//! file: the scenario, its parameters, the server (name, version, address), the machine
//! and the figures. `roomcast-bench report` turns such a file into Markdown and SVG plots.

mod client;
mod deflate;
mod feed;
mod report;
mod resume;
mod sample;
mod scenarios;
mod storm;
mod tls;

use std::io::Write as _;
use std::net::SocketAddr;

use clap::{Parser, Subcommand};
use scenarios::{Fanout, Target};

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
    /// What the server is, for the results ("roomcast", "tokio-tungstenite", …).
    #[arg(long, default_value = "roomcast", global = true)]
    server_name: String,
    /// The server's version, for the results.
    #[arg(long, default_value = "", global = true)]
    server_version: String,
    /// The CPU the server is pinned to (`taskset -c N`): reads its /proc/stat line around
    /// each measured window for its busy share, softirq share and CPU-total cost per unit.
    #[arg(long, global = true)]
    server_cpu: Option<usize>,
    /// Another node of the same cluster (roomcast nodes sharing a Redis: `serve --redis`),
    /// repeatable, at most 7: `fanout` and `slow` spread their members over `--server` and
    /// these (member g on node g % nodes), the publishers stay on `--server`.
    #[arg(long, global = true, value_name = "ADDR")]
    also: Vec<SocketAddr>,
    /// The pid of an `--also` node (repeatable): fan-out reports the CPU of all the nodes
    /// given (these and `--server-pid`) per delivery.
    #[arg(long, global = true, value_name = "PID")]
    also_pid: Vec<u32>,
    /// The cluster's Redis server's pid: fan-out reports its CPU per published message and
    /// its share of a CPU over the measured window.
    #[arg(long, global = true, value_name = "PID")]
    redis_pid: Option<u32>,
    /// `idle`, `fanout` and `slow`: every connection offers permessage-deflate
    /// (`permessage-deflate; client_max_window_bits`, as Chromium) and the run fails unless
    /// the server agrees with server_no_context_takeover; members inflate compressed
    /// messages, publishers send theirs uncompressed.
    #[arg(long, global = true)]
    deflate: bool,
    /// Every connection speaks TLS 1.3 to the server (`serve --tls-cert`), whatever
    /// certificate it presents; see the `tls` module for how the scenarios use it.
    #[arg(long, global = true)]
    tls: bool,
    /// Source addresses to spread connections over: 127.0.0.2 … (at most 253).
    #[arg(long, default_value_t = 16, global = true)]
    sources: u8,
    /// Append one JSON line per run to this file.
    #[arg(long, global = true)]
    out: Option<std::path::PathBuf>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Hold N idle connections (answering pings) for T seconds: bytes per connection.
    Idle {
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        #[arg(long, default_value_t = 5)]
        hold_secs: u64,
        /// Worker processes [default: one per 15,000 connections].
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Handshakes in flight over all workers together.
        #[arg(long, default_value_t = 2048)]
        concurrency: usize,
    },
    /// Members join a room publishing R msg/s, P a second, until the server refuses one
    /// (`--max-conns auto` under load): CPU, the model's CPU and latency at the limit.
    Admission {
        #[arg(long, default_value_t = 50.0)]
        rate: f64,
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// Members joining per second.
        #[arg(long, default_value_t = 200.0)]
        pace: f64,
        /// Members at most.
        #[arg(long, default_value_t = 20_000)]
        max: usize,
        /// Seconds measured at the limit.
        #[arg(long, default_value_t = 5)]
        hold: u64,
    },
    /// Open N connections, K handshakes in flight: handshakes/s, latency, CPU per connection.
    Ramp {
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Load-generator processes, each opening its share.
        #[arg(long, default_value_t = 1)]
        workers: usize,
    },
    /// C connections × D messages of S bytes in flight for T seconds.
    Echo {
        #[arg(long, default_value_t = 100)]
        connections: usize,
        #[arg(long, default_value_t = 16)]
        depth: usize,
        #[arg(long, default_value_t = 32)]
        size: usize,
        #[arg(long, default_value_t = 10)]
        secs: u64,
        /// Load-generator processes, each driving its share of the connections.
        #[arg(long, default_value_t = 1)]
        workers: usize,
    },
    /// R rooms × M members, one publisher per room at a rate or closed loop.
    Fanout {
        #[command(flatten)]
        args: FanoutArgs,
        /// Members per room that never read (0..1).
        #[arg(long, default_value_t = 0.0)]
        slow_fraction: f64,
    },
    /// Connect → join → leave → close at a given rate: success rate, RSS drift.
    Churn {
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        #[arg(long, default_value_t = 10)]
        secs: u64,
        /// Load-generator processes, each running its share of the rate.
        #[arg(long, default_value_t = 1)]
        workers: usize,
    },
    /// Fan-out twice, without and with a fraction of members that never read: the healthy
    /// members' latency side by side.
    Slow {
        #[command(flatten)]
        args: FanoutArgs,
        #[arg(long, default_value_t = 0.1)]
        fraction: f64,
    },
    /// Every member of one room cut at once (RST, no close frame) under a steady publish
    /// rate; each reconnects after a random jitter and resumes with since/epoch: messages
    /// lost, duplicates, members not recovered, gap notices, reconnection spread, time
    /// until every member resumed.
    Resume {
        #[command(flatten)]
        args: resume::Resume,
    },
    /// A reconnect storm against the connect hook: everyone connects at once and every
    /// handshake waits on a backend in this process (`--backend-listen`; start roomcast
    /// with `--hook-connect http://<it>/connect`); then again after closing everything.
    /// Time until all are admitted, the backend's requests/s and peak in flight, the
    /// server's hook metrics, the hooks thread's CPU per call.
    Storm {
        #[command(flatten)]
        args: storm::Storm,
    },
    /// Markdown tables and SVG plots from a results file.
    Report {
        results: std::path::PathBuf,
        /// Where the Markdown and the plots go.
        #[arg(long, default_value = "bench/report")]
        dir: std::path::PathBuf,
    },
    /// Measure the per-unit costs `roomcast plan` predicts from (against a freshly started
    /// server) and write them where `roomcast plan --figures` reads them.
    Calibrate {
        /// Idle connections to measure bytes per connection and heartbeat cost with.
        #[arg(long, default_value_t = 50_000)]
        connections: usize,
        #[arg(long, default_value = "figures.json")]
        figures: std::path::PathBuf,
        /// Load-generator processes for every run.
        #[arg(long, default_value_t = 1)]
        workers: usize,
    },
    /// (internal) One process of `idle`'s workers.
    #[command(hide = true)]
    WorkerIdle {
        #[arg(long)]
        first: usize,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        concurrency: usize,
    },
    /// (internal) One process of `ramp --workers`.
    #[command(hide = true)]
    WorkerRamp {
        #[arg(long)]
        first: usize,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        concurrency: usize,
    },
    /// (internal) One process of `echo --workers`.
    #[command(hide = true)]
    WorkerEcho {
        #[arg(long)]
        first: usize,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        depth: usize,
        #[arg(long)]
        size: usize,
        #[arg(long)]
        secs: u64,
        #[arg(long)]
        concurrency: usize,
    },
    /// (internal) One process of `fanout --workers`: members `first..first+count`.
    #[command(hide = true)]
    WorkerFanout {
        #[arg(long)]
        first: usize,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        members: usize,
        #[arg(long)]
        slow_per_room: usize,
        #[arg(long)]
        check_order: bool,
    },
    /// (internal) One process of `resume --workers`: members `first..first+count`.
    #[command(hide = true)]
    WorkerResume {
        #[arg(long)]
        first: usize,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        room: String,
        #[arg(long)]
        jitter_ms: u64,
        #[arg(long)]
        seed: u64,
    },
    /// (internal) One process of `storm`: connections `first..first+count`.
    #[command(hide = true)]
    WorkerStorm {
        #[arg(long)]
        first: usize,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        users: usize,
        #[arg(long)]
        concurrency: usize,
        #[arg(long)]
        attempts: u32,
    },
    /// (internal) One process of `churn --workers`.
    #[command(hide = true)]
    WorkerChurn {
        #[arg(long)]
        first: usize,
        #[arg(long)]
        rate: f64,
        #[arg(long)]
        secs: u64,
    },
}

#[derive(clap::Args, Clone, Copy, Debug)]
struct FanoutArgs {
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    #[arg(long, default_value_t = 1000)]
    members: usize,
    /// Messages per second per room; 0: closed loop.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Closed loop: messages per room in flight.
    #[arg(long, default_value_t = 8)]
    window: usize,
    /// Bytes per published message (roughly: `data` is padded to it, or with `--json`
    /// filled with feed items up to it).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// `data` is a realistic JSON feed (quotes with repeated keys and fresh numbers in
    /// every message, as `{"items":[{"sym":"S042","bid":101.37,…},…]}`) instead of padding:
    /// what compression (`--deflate`) meets in real traffic.
    #[arg(long)]
    json: bool,
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Load-generator processes the members are split over (the publishers stay in this
    /// one).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Every member checks that the room's `seq` goes up by one from its `joined`:
    /// messages out of order (or twice) and skipped are reported.
    #[arg(long)]
    check_order: bool,
}

impl FanoutArgs {
    fn with_slow(self, slow_fraction: f64) -> Fanout {
        Fanout {
            rooms: self.rooms,
            members: self.members,
            rate: self.rate,
            window: self.window,
            size: self.size,
            json: self.json,
            secs: self.secs,
            slow_fraction,
            check_order: self.check_order,
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let workers = match &cli.scenario {
        Scenario::Ramp { workers, .. }
        | Scenario::Echo { workers, .. }
        | Scenario::Churn { workers, .. }
        | Scenario::Calibrate { workers, .. } => *workers,
        Scenario::Fanout { args, .. } | Scenario::Slow { args, .. } => args.workers,
        Scenario::Resume { args } => args.workers,
        _ => 1,
    };
    let cluster = !cli.also.is_empty() || !cli.also_pid.is_empty() || cli.redis_pid.is_some();
    let fanout = matches!(
        cli.scenario,
        Scenario::Fanout { .. } | Scenario::Slow { .. } | Scenario::WorkerFanout { .. }
    );
    if cluster && !fanout {
        eprintln!("roomcast-bench: --also, --also-pid and --redis-pid are for fanout and slow");
        std::process::exit(2);
    }
    let deflating = matches!(
        cli.scenario,
        Scenario::Idle { .. }
            | Scenario::Fanout { .. }
            | Scenario::Slow { .. }
            | Scenario::WorkerIdle { .. }
            | Scenario::WorkerFanout { .. }
    );
    if cli.deflate && !deflating {
        eprintln!("roomcast-bench: --deflate is for idle, fanout and slow");
        std::process::exit(2);
    }
    if cli.also.len() > scenarios::MAX_ALSO || cli.also_pid.len() > scenarios::MAX_ALSO {
        eprintln!(
            "roomcast-bench: at most {} --also nodes (and --also-pid)",
            scenarios::MAX_ALSO
        );
        std::process::exit(2);
    }
    let (mut also, mut also_pids) = ([None; scenarios::MAX_ALSO], [None; scenarios::MAX_ALSO]);
    for (slot, a) in also.iter_mut().zip(&cli.also) {
        *slot = Some(*a);
    }
    for (slot, p) in also_pids.iter_mut().zip(&cli.also_pid) {
        *slot = Some(*p);
    }
    if cli.tls {
        tls::enable();
    }
    let t = Target {
        server: cli.server,
        pid: cli.server_pid,
        sources: cli.sources,
        server_cpu: cli.server_cpu,
        workers: workers.max(1),
        also,
        also_pids,
        redis_pid: cli.redis_pid,
        deflate: cli.deflate,
    };
    if let Scenario::Report { results, dir } = &cli.scenario {
        if let Err(e) = report::write(results, dir) {
            eprintln!("roomcast-bench report: {e}");
            std::process::exit(1);
        }
        return;
    }
    let server = server_record(&cli);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    let (name, mut params, figures) = local.block_on(&rt, async {
        match cli.scenario {
            Scenario::Idle { connections, hold_secs, workers, concurrency } => (
                "idle",
                serde_json::json!({"connections": connections, "hold_secs": hold_secs, "workers": workers, "concurrency": concurrency}),
                scenarios::idle(t, connections, hold_secs, workers, concurrency).await,
            ),
            Scenario::Admission { rate, size, pace, max, hold } => (
                "admission",
                serde_json::json!({"rate": rate, "size": size, "pace": pace, "max": max, "hold": hold}),
                scenarios::admission(t, scenarios::Admission { rate, size, pace, max, hold }).await,
            ),
            Scenario::Ramp { connections, concurrency, workers } => (
                "ramp",
                with_workers(serde_json::json!({"connections": connections, "concurrency": concurrency}), workers),
                scenarios::ramp(t, connections, concurrency).await,
            ),
            Scenario::Echo { connections, depth, size, secs, workers } => (
                "echo",
                with_workers(serde_json::json!({"connections": connections, "depth": depth, "size": size, "secs": secs}), workers),
                scenarios::echo(t, connections, depth, size, secs).await,
            ),
            Scenario::Fanout { args, slow_fraction } => (
                "fanout",
                fanout_params(&args, slow_fraction),
                scenarios::fanout(t, args.with_slow(slow_fraction)).await,
            ),
            Scenario::Churn { rate, secs, workers } => (
                "churn",
                with_workers(serde_json::json!({"rate": rate, "secs": secs}), workers),
                scenarios::churn(t, rate, secs).await,
            ),
            Scenario::Slow { args, fraction } => {
                let base = scenarios::fanout(t, args.with_slow(0.0)).await;
                let slow = scenarios::fanout(t, args.with_slow(fraction)).await;
                let ratio = |k: &str| slow[k].as_f64().unwrap_or(0.0) / base[k].as_f64().unwrap_or(1.0).max(1e-9);
                println!(
                    "slow: healthy members' p50 x{:.2}, p99 x{:.2} with {:.0}% never reading",
                    ratio("latency_p50_us"),
                    ratio("latency_p99_us"),
                    fraction * 100.0
                );
                // The load generator over both runs: its busier run, and bound if either was.
                let busy = base["client_busy"].as_f64().unwrap_or(0.0).max(slow["client_busy"].as_f64().unwrap_or(0.0));
                let bound = base["client_bound"].as_bool().unwrap_or(false) || slow["client_bound"].as_bool().unwrap_or(false);
                (
                    "slow",
                    fanout_params(&args, fraction),
                    serde_json::json!({"without": base, "with": slow,
                        "p50_ratio": ratio("latency_p50_us"), "p99_ratio": ratio("latency_p99_us"),
                        "client_busy": busy, "client_bound": bound}),
                )
            }
            Scenario::Resume { args } => ("resume", args.params(), resume::resume(t, &args).await),
            Scenario::Storm { args } => ("storm", args.params(), storm::storm(t, &args).await),
            Scenario::Calibrate { connections, figures, workers } => {
                let (f, runs) = scenarios::calibrate(t, connections).await;
                let text = serde_json::to_string_pretty(&f).expect("figures serialize");
                if let Err(e) = std::fs::write(&figures, format!("{text}\n")) {
                    eprintln!("roomcast-bench calibrate: cannot write {}: {e}", figures.display());
                    std::process::exit(1);
                }
                println!("calibrate: figures written to {} (use: roomcast plan --figures {0})\n{text}", figures.display());
                (
                    "calibrate",
                    with_workers(serde_json::json!({"connections": connections}), workers),
                    serde_json::json!({"figures": f, "runs": runs}),
                )
            }
            Scenario::WorkerIdle { first, count, concurrency } => {
                scenarios::idle_worker(t, first, count, concurrency).await;
                std::process::exit(0);
            }
            Scenario::WorkerRamp { first, count, concurrency } => {
                scenarios::ramp_worker(t, first, count, concurrency).await;
                std::process::exit(0);
            }
            Scenario::WorkerEcho { first, count, depth, size, secs, concurrency } => {
                scenarios::echo_worker(t, first, count, depth, size, secs, concurrency).await;
                std::process::exit(0);
            }
            Scenario::WorkerFanout { first, count, members, slow_per_room, check_order } => {
                scenarios::fanout_worker(t, first, count, members, slow_per_room, check_order).await;
                std::process::exit(0);
            }
            Scenario::WorkerResume { first, count, room, jitter_ms, seed } => {
                resume::resume_worker(t, first, count, &room, jitter_ms, seed).await;
                std::process::exit(0);
            }
            Scenario::WorkerStorm { first, count, users, concurrency, attempts } => {
                storm::storm_worker(t, first, count, users, concurrency, attempts).await;
                std::process::exit(0);
            }
            Scenario::WorkerChurn { first, rate, secs } => {
                scenarios::churn_worker(t, first, rate, secs).await;
                std::process::exit(0);
            }
            Scenario::Report { .. } => unreachable!("handled above"),
        }
    });
    if cli.deflate {
        params["deflate"] = serde_json::json!(true);
    }
    if let Some(path) = &cli.out {
        let record = serde_json::json!({
            "scenario": name,
            "params": params,
            "server": server,
            "machine": sample::machine(),
            "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            "figures": figures,
        });
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("results file");
        writeln!(f, "{record}").expect("write results");
    }
    // A storm whose backend saw more calls in flight than the server's cap failed its
    // check: the results are written, the exit status says so.
    if figures["over_cap"].as_bool() == Some(true) {
        eprintln!("roomcast-bench: more hook calls in flight than --hook-max-inflight");
        std::process::exit(3);
    }
}

/// The results' `server`: name, version, address, and with `--also` every node's address
/// (`nodes`), the first being `addr`. The scenario's parameters stay those of one node, so
/// the report puts a cluster (under its own `--server-name`) beside one node.
fn server_record(cli: &Cli) -> serde_json::Value {
    let mut v = serde_json::json!({"name": cli.server_name, "version": cli.server_version, "addr": cli.server.to_string()});
    if !cli.also.is_empty() {
        let nodes: Vec<String> = std::iter::once(&cli.server)
            .chain(&cli.also)
            .map(ToString::to_string)
            .collect();
        v["nodes"] = serde_json::json!(nodes);
    }
    v
}

fn fanout_params(a: &FanoutArgs, slow_fraction: f64) -> serde_json::Value {
    let mut params = with_workers(
        serde_json::json!({
            "rooms": a.rooms, "members": a.members, "rate": a.rate, "window": a.window,
            "size": a.size, "secs": a.secs, "slow_fraction": slow_fraction,
        }),
        a.workers,
    );
    if a.check_order {
        params["check_order"] = serde_json::json!(true);
    }
    if a.json {
        params["json"] = serde_json::json!(true);
    }
    params
}

/// `params` with `workers` when there is more than one load-generator process: a run
/// with the default keeps the parameters (and so the report's grouping) it always had.
fn with_workers(mut params: serde_json::Value, workers: usize) -> serde_json::Value {
    if workers > 1 {
        params["workers"] = serde_json::json!(workers);
    }
    params
}
