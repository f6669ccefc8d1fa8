use clap::{Parser, Subcommand};
use roomcast::config::ServeConfig;
use roomcast::reactor::sys::Signals;

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
    /// The server's --ping-interval.
    #[arg(long, default_value_t = 30)]
    ping_interval: u64,
    /// Shards to plan with [default: the CPUs, or more when RLIMIT_NOFILE caps each
    /// ring's fixed-file table below connections / CPUs].
    #[arg(long)]
    shards: Option<u64>,
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(cfg) => serve(*cfg),
        Command::Check {
            connections,
            shards,
        } => check(connections, shards),
        Command::Plan(args) => plan(&args),
    }
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
            .unwrap_or(roomcast::reactor::sys::allowed_cpus().len().max(1) as u64),
        memory_bytes: a.memory_gib.map_or(check::meminfo("MemTotal:"), |g| {
            (g * (1u64 << 30) as f64) as u64
        }),
        nofile: a.nofile.unwrap_or(check::nofile().1),
        uring: roomcast::reactor::sys::uring::probe().is_ok(),
    };
    let workload = plan::Workload {
        connections: a.connections,
        rooms: a.rooms,
        msg_rate: a.msg_rate,
        msg_size: a.msg_size,
        ping_interval_secs: a.ping_interval,
        shards: a.shards,
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

fn serve(cfg: ServeConfig) -> std::process::ExitCode {
    let cfg = match cfg.validate() {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("roomcast: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    // Blocked here, before any thread starts, so every thread inherits the mask and the
    // signals are taken only by the thread that waits for them.
    let signals = Signals::block(&[libc::SIGTERM, libc::SIGINT]);
    let running = match roomcast::app::start(&cfg) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("roomcast: cannot start on {}: {e}", cfg.listen);
            return std::process::ExitCode::FAILURE;
        }
    };
    let server = running.server;
    if running.gate.auth.is_none() {
        tracing::info!(
            "no --jwt-secret or --jwt-public-key: every client may join and publish to every room"
        );
    }
    if let Some(addr) = cfg.admin_listen {
        let (stats, gate, drain) = (server.stats.clone(), running.gate, server.drain.clone());
        match roomcast::ops::admin::spawn(addr, stats, gate, drain) {
            Ok(local) => tracing::info!(%local, "admin endpoints (/healthz, /stats, /metrics)"),
            Err(e) => {
                eprintln!("roomcast: cannot listen on --admin-listen {addr}: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    let control = server.control();
    let window = cfg.drain_window_secs;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || wait_for_signals(signals, control, window))
        .expect("spawn the signal thread");
    // One line on stdout that scripts and tests wait for.
    println!(
        "roomcast {} listening on {} (backend {}, {} shards)",
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
    let shards = shards.unwrap_or(roomcast::reactor::sys::allowed_cpus().len().max(1) as u64);
    let uring = roomcast::reactor::sys::uring::probe();
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

/// The first SIGTERM/SIGINT starts the drain; a second one exits at once.
fn wait_for_signals(signals: Signals, control: roomcast::reactor::Control, window: u64) {
    let mut draining = false;
    loop {
        let sig = signals.wait();
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
