// No unsafe here: it lives in the library's sys and reactor modules.
#![forbid(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use roomcast::config::{LogFormat, ServeConfig};
use roomcast::sys::Signals;

// glibc kept freed memory resident after mass disconnects; mimalloc returns it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "roomcast",
    version,
    about = "High-density WebSocket server for rooms and broadcast"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(Box<ServeConfig>),
    /// Say what on this machine stands between it and N connections, and the fix.
    Check {
        /// The number of connections to hold.
        #[arg(long, default_value_t = 1_000_000)]
        connections: u64,
        /// Shards that would hold them [default: the CPUs this process may use].
        #[arg(long)]
        shards: Option<u64>,
    },
    /// Predict memory and CPU for N connections (and a room workload): flags and sysctls.
    Plan(Box<PlanArgs>),
}

#[derive(clap::Args)]
struct PlanArgs {
    /// Connections to hold.
    #[arg(long, default_value_t = 1_000_000)]
    connections: u64,
    /// Rooms the connections are spread over, one room each (0: idle connections).
    #[arg(long, default_value_t = 0)]
    rooms: u64,
    /// Messages published per second to each room.
    #[arg(long, default_value_t = 1.0)]
    msg_rate: f64,
    /// Bytes of `data` per message.
    #[arg(long, default_value_t = 64)]
    msg_size: u64,
    /// The server's --history-size (messages kept per room).
    #[arg(long, default_value_t = 64)]
    history_size: u64,
    /// The server's --history-bytes (data bytes kept per room).
    #[arg(long, default_value = "256KiB", value_parser = roomcast::config::parse_bytes)]
    history_bytes: u64,
    /// The server's --ping-interval.
    #[arg(long, default_value_t = 30)]
    ping_interval: u64,
    /// Shards to plan with [default: the CPUs, or more when RLIMIT_NOFILE caps each
    /// ring's fixed-file table below connections / CPUs].
    #[arg(long)]
    shards: Option<u64>,
    /// Nodes sharing the connections and rooms through Redis (`--redis`): the machine is
    /// one of them; the report adds the backplane's CPU and how many Redis servers the
    /// publishes need.
    #[arg(long, default_value_t = 1)]
    nodes: u64,
    /// The server runs with --deflate: the shards' compressors, the CPU to compress each
    /// message once, and egress at the ratio measured on JSON.
    #[arg(long)]
    deflate: bool,
    /// The server serves TLS (--tls-cert): each connection's session, sealing every
    /// delivery, and the handshakes.
    #[arg(long)]
    tls: bool,
    /// The server's --write-delay: a member's deliveries share sends.
    #[arg(long, default_value = "0", value_parser = roomcast::config::parse_write_delay)]
    write_delay: std::time::Duration,
    /// The server's --max-queued-bytes: half of it is sent at once, whatever the delay.
    #[arg(long, default_value = "1MiB", value_parser = roomcast::config::parse_bytes)]
    max_queued_bytes: u64,
    /// Where the members are: `nic` (across a network interface), or `loopback` (on this
    /// machine, as the benchmarks run: the server's CPU also runs the receiving end's TCP
    /// input of every send).
    #[arg(long, value_enum, default_value_t = roomcast::ops::plan::Link::Nic)]
    link: roomcast::ops::plan::Link,
    /// Figures written by `roomcast-bench calibrate` [default: built-in figures for a
    /// 2-vCPU Linux 6.18 machine].
    #[arg(long)]
    figures: Option<std::path::PathBuf>,
    /// Plan for another machine: its CPUs [default: this one's].
    #[arg(long)]
    cpus: Option<u64>,
    /// … its memory in GiB [default: this one's].
    #[arg(long)]
    memory_gib: Option<f64>,
    /// … its RLIMIT_NOFILE hard limit [default: this process's].
    #[arg(long)]
    nofile: Option<u64>,
    /// Print the prediction as one JSON object instead of the report.
    #[arg(long)]
    json: bool,
}

fn main() -> std::process::ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let matches = Cli::command().get_matches_from(&argv);
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match cli.command {
        Command::Serve(cfg) => {
            let sub = matches
                .subcommand_matches("serve")
                .cloned()
                .unwrap_or_default();
            serve(*cfg, argv, &sub)
        }
        Command::Check {
            connections,
            shards,
        } => {
            init_logs(LogFormat::Text, None);
            check(connections, shards)
        }
        Command::Plan(args) => {
            init_logs(LogFormat::Text, None);
            plan(&args)
        }
    }
}

/// Logs to stderr, as text or one JSON object per line; `level` is a tracing filter
/// (default: RUST_LOG, else info).
fn init_logs(format: LogFormat, level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(l) => EnvFilter::new(l),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.init(),
        // timestamp, level, target, then the message and the event's fields at the top
        // level, one object per line.
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
}

/// Applies `--config`: the file's settings become arguments after the command line's own
/// (only for what no flag or environment variable set), and everything is parsed again.
fn with_config_file(
    cfg: ServeConfig,
    argv: Vec<std::ffi::OsString>,
    sub: &clap::ArgMatches,
) -> Result<(ServeConfig, clap::ArgMatches, ConfigKeys), String> {
    let Some(path) = cfg.config.clone() else {
        return Ok((cfg, sub.clone(), ConfigKeys::new()));
    };
    let serve = serve_command();
    let (extra, keys) = roomcast::config::file::arguments(&path, &serve, sub)?;
    let mut all = argv;
    all.extend(extra);
    let matches = Cli::command().try_get_matches_from(all).map_err(|e| {
        e.to_string()
            .trim_start_matches("error: ")
            .trim()
            .to_owned()
    })?;
    let sub = matches
        .subcommand_matches("serve")
        .cloned()
        .unwrap_or_default();
    match Cli::from_arg_matches(&matches)
        .map_err(|e| e.to_string())?
        .command
    {
        Command::Serve(cfg) => Ok((*cfg, sub, keys)),
        _ => Err("--config: not a serve command".into()),
    }
}

type ConfigKeys = std::collections::BTreeMap<String, roomcast::config::file::FileKey>;

fn serve_command() -> clap::Command {
    Cli::command()
        .find_subcommand("serve")
        .cloned()
        .expect("the serve subcommand")
}

fn plan(a: &PlanArgs) -> std::process::ExitCode {
    use roomcast::ops::{check, plan};
    let figures = match &a.figures {
        Some(path) => match plan::Figures::load(path) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("roomcast plan: {e}");
                return std::process::ExitCode::from(2);
            }
        },
        None => plan::Figures::builtin(),
    };
    let machine = plan::Machine {
        cpus: a
            .cpus
            .unwrap_or(roomcast::sys::allowed_cpus().len().max(1) as u64),
        memory_bytes: a.memory_gib.map_or(check::meminfo("MemTotal:"), |g| {
            (g * (1u64 << 30) as f64) as u64
        }),
        nofile: a.nofile.unwrap_or(check::nofile().1),
        uring: roomcast::reactor::backend::uring::probe().is_ok(),
    };
    let workload = plan::Workload {
        connections: a.connections,
        rooms: a.rooms,
        msg_rate: a.msg_rate,
        msg_size: a.msg_size,
        history_size: a.history_size,
        history_bytes: a.history_bytes,
        ping_interval_secs: a.ping_interval,
        shards: a.shards,
        nodes: a.nodes.max(1),
        deflate: a.deflate,
        tls: a.tls,
        write_delay_secs: a.write_delay.as_secs_f64(),
        max_queued_bytes: a.max_queued_bytes,
        link: a.link,
    };
    let p = plan::plan(&workload, &machine, &figures);
    let (text, fits) = plan::render(&workload, &machine, &figures, &p);
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "connections": a.connections, "shards": p.shards, "recv_buffers": p.recv_buffers,
                "user_bytes": p.user_bytes, "kernel_bytes": p.kernel_bytes,
                "heartbeat_cpus": p.heartbeat_cpus, "delivery_cpus": p.delivery_cpus,
                "publish_cpus": p.publish_cpus, "cpus": p.cpus(), "fits": fits,
                "deliveries_per_sec": p.deliveries_per_sec, "sends_per_sec": p.sends_per_sec,
                "messages_per_send": p.messages_per_send, "link": a.link,
                "egress_bytes_per_sec": p.egress_bytes_per_sec,
                "nodes": a.nodes.max(1), "node_connections": p.node_connections,
                "backplane_cpus": p.backplane_cpus, "redis_cpus": p.redis_cpus,
                "redis_servers": p.redis_servers,
            })
        );
    } else {
        print!("{text}");
    }
    if fits {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

fn serve(
    cfg: ServeConfig,
    argv: Vec<std::ffi::OsString>,
    sub: &clap::ArgMatches,
) -> std::process::ExitCode {
    let (cfg, sub, keys) = match with_config_file(cfg, argv, sub) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("roomcast: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let mut cfg = match cfg
        .validate()
        .and_then(|c| roomcast::server::check(&c).map(|()| c))
    {
        Ok(cfg) => cfg,
        Err(e) => {
            // A cross-flag check that keys from the file failed: say where they are.
            let places: Vec<String> = keys
                .iter()
                .filter(|(k, _)| e.contains(&format!("--{k} ")))
                .map(|(k, fk)| format!("{k} at line {}", fk.line))
                .collect();
            match (
                places.is_empty(),
                sub.get_one::<std::path::PathBuf>("config"),
            ) {
                (false, Some(path)) => {
                    eprintln!(
                        "roomcast: {e} ({} of {})",
                        places.join(", "),
                        path.display()
                    )
                }
                _ => eprintln!("roomcast: {e}"),
            }
            return std::process::ExitCode::from(2);
        }
    };
    if cfg.print_config {
        print!(
            "{}",
            roomcast::config::file::render(&serve_command(), &sub, &keys)
        );
        return std::process::ExitCode::SUCCESS;
    }
    init_logs(cfg.log_format, cfg.log_level.as_deref());
    cfg.effective = roomcast::config::file::effective(&serve_command(), &sub, &keys);
    // Blocked here, before any thread starts, so every thread inherits the mask and the
    // signals are taken only by the thread that waits for them.
    let signals = Signals::block(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP]);
    let running = match roomcast::server::start(&cfg) {
        Ok(r) => r,
        Err(roomcast::server::StartError::Config(e)) => {
            eprintln!("roomcast: {e}");
            return std::process::ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("roomcast: cannot start on {}: {e}", cfg.listen);
            return std::process::ExitCode::FAILURE;
        }
    };
    let server = running.server;
    let hooked = cfg.hook_connect.is_some() || cfg.hook_join.is_some();
    if running.gate.auth.is_none() && !hooked {
        tracing::info!(
            "no --jwt-secret or --jwt-public-key: every client may join and publish to every room"
        );
    }
    if let Some(addr) = cfg.admin_listen {
        let (stats, drain) = (server.stats.clone(), server.drain.clone());
        let main = server.local_addr;
        let limits = roomcast::ops::admin::Limits {
            max_header_bytes: cfg.max_header_bytes,
            api_max_body: cfg.api_max_body.min(u32::MAX as u64) as usize,
        };
        match roomcast::ops::admin::spawn(addr, main, stats, drain, running.info, limits) {
            Ok(local) => {
                tracing::info!(%local, "admin endpoints (/healthz, /stats, /metrics, /api/)")
            }
            Err(e) => {
                eprintln!("roomcast: cannot listen on --admin-listen {addr}: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    let control = server.control();
    let window = cfg.drain_window_secs;
    let tls = running.tls;
    let tls_on = tls.is_some();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || wait_for_signals(signals, control, window, tls))
        .expect("spawn the signal thread");
    // One line on stdout that scripts and tests wait for.
    let tls_note = match (&tls_on, server.tls_addr) {
        (_, Some(addr)) => format!(", TLS on {addr}"),
        (true, None) => ", TLS".to_owned(),
        (false, None) => String::new(),
    };
    println!(
        "roomcast {} listening on {} (backend {}, {} shards{tls_note})",
        env!("CARGO_PKG_VERSION"),
        server.local_addr,
        server.backend,
        server.shards
    );
    match server.join() {
        Ok(()) => {
            tracing::info!("drained: every shard has stopped");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("roomcast: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn check(connections: u64, shards: Option<u64>) -> std::process::ExitCode {
    let shards = shards.unwrap_or(roomcast::sys::allowed_cpus().len().max(1) as u64);
    let uring = roomcast::reactor::backend::uring::probe();
    let findings = roomcast::ops::check::findings(connections, shards, uring);
    println!("roomcast check: {connections} connections over {shards} shards");
    for f in &findings {
        println!("{f}");
    }
    let short = findings.iter().filter(|f| !f.ok).count();
    if short == 0 {
        println!("nothing stands in the way");
        std::process::ExitCode::SUCCESS
    } else {
        println!("{short} thing(s) to fix (scripts/tune.sh applies the sysctls and limits)");
        std::process::ExitCode::FAILURE
    }
}

/// The first SIGTERM/SIGINT starts the drain; a second one exits at once. SIGHUP reloads
/// the TLS certificate and key for new connections.
fn wait_for_signals(
    signals: Signals,
    control: roomcast::reactor::Control,
    window: u64,
    tls: Option<std::sync::Arc<roomcast::reactor::tls::Source>>,
) {
    let mut draining = false;
    loop {
        let sig = signals.wait();
        if sig == libc::SIGHUP {
            match tls.as_ref().map(|t| t.reload()) {
                Some(Ok(())) => {
                    tracing::info!("SIGHUP: TLS certificate reloaded; new connections get it")
                }
                Some(Err(e)) => {
                    tracing::warn!("SIGHUP: TLS certificate not reloaded, the old one stays: {e}")
                }
                None => tracing::info!("SIGHUP: nothing to reload (no --tls-cert)"),
            }
            continue;
        }
        if draining {
            eprintln!("roomcast: second signal: exiting without finishing the drain");
            std::process::exit(1);
        }
        draining = true;
        tracing::info!(
            signal = sig,
            window_secs = window,
            "draining: listeners closed, connections get 1001 over the window"
        );
        control.drain();
    }
}
