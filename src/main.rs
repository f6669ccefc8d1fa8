use clap::{Parser, Subcommand};
use roomcast::config::ServeConfig;
use roomcast::reactor::Server;

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
    Serve(ServeConfig),
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
        Command::Serve(cfg) => serve(cfg),
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
    let server = match Server::start(&cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("roomcast: cannot start on {}: {e}", cfg.listen);
            return std::process::ExitCode::FAILURE;
        }
    };
    // One line on stdout that scripts and tests wait for.
    println!(
        "roomcast {} listening on {} (backend {}, {} shards)",
        env!("CARGO_PKG_VERSION"),
        server.local_addr,
        server.backend,
        server.shards
    );
    match server.join() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("roomcast: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
