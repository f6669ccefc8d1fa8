//! Thread-per-core: one shard per thread, each with its own listener (`SO_REUSEPORT`),
//! its own slab of connections and its own event loop on io_uring or epoll.

pub mod conn;
pub mod heartbeat;
pub mod outring;
pub mod shard;
pub mod stats;
pub mod sys;

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::app::gate::Gate;
use crate::ops::drain::Drain;

use crate::config::{BackendChoice, ServeConfig};
use crate::protocol::message::Limits;
use conn::Ctx;
use shard::{RoomSettings, Timeouts};
use stats::SharedStats;

/// The event-loop implementation a server runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Uring,
    Epoll,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Uring => "uring",
            Backend::Epoll => "epoll",
        })
    }
}

/// Everything one shard starts with.
pub struct ShardSetup {
    pub index: usize,
    pub listener: socket2::Socket,
    pub ctx: Ctx,
    pub timeouts: Timeouts,
    /// io_uring only: fixed-file table size, provided buffers.
    pub fixed_files: u32,
    pub recv_buffers: u16,
    pub recv_buffer_size: u32,
    pub mesh: crate::mesh::Endpoint,
    pub rooms: RoomSettings,
}

/// A running server: its address, backend and shard threads.
pub struct Server {
    pub local_addr: SocketAddr,
    pub backend: Backend,
    pub shards: usize,
    pub stats: Arc<SharedStats>,
    pub gate: Arc<Gate>,
    threads: Vec<JoinHandle<io::Result<()>>>,
    control: Control,
}

/// What another thread (the signal handler) needs to start a drain.
#[derive(Clone)]
pub struct Control {
    gate: Arc<Gate>,
    /// Duplicates of the shards' listeners, to shut them down when a drain begins.
    listeners: Arc<[OwnedFd]>,
}

impl Server {
    /// Binds every shard's listener and starts the shard threads.
    pub fn start(cfg: &ServeConfig) -> io::Result<Server> {
        let backend = choose_backend(cfg.backend)?;
        let nofile = sys::raise_nofile_limit().unwrap_or(1024);
        let cpus = sys::allowed_cpus();
        let shards = cfg.shards.unwrap_or(cpus.len().max(1));
        // The first listener fixes the port (`:0` picks one); the others join it.
        sys::ensure_port_free(cfg.listen)?;
        let first = sys::listener(cfg.listen, cfg.backlog)?;
        let local_addr = first
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("listener has no inet address"))?;
        let mut listeners = vec![first];
        for _ in 1..shards {
            listeners.push(sys::listener(local_addr, cfg.backlog)?);
        }
        let pin = shards <= cpus.len();
        let fixed_files = nofile.min(1 << 20) as u32;
        let recv_buffers = cfg
            .recv_buffers
            .unwrap_or_else(|| recv_buffers_for(shards, cpus.len()));
        let mut stats = SharedStats::new(shards);
        stats.config = serde_json::json!({
            "backend": backend.to_string(),
            "shards": shards,
            "fixed_files": fixed_files,
            "recv_buffers": if backend == Backend::Uring { recv_buffers } else { 0 },
            "recv_buffer_size": cfg.recv_buffer_size,
            "out_ring": cfg.out_ring,
            "ping_interval_secs": cfg.ping_interval_secs,
            "pong_timeout_secs": cfg.pong_timeout_secs,
        })
        .to_string();
        let shared = Arc::new(stats);
        let gate = Arc::new(Gate::new(
            cfg.allow_origin.clone(),
            cfg.auth().map_err(io::Error::other)?,
            (cfg.max_conns, cfg.max_conns_per_ip, cfg.max_conns_per_user),
            Drain::new(std::time::Duration::from_secs(cfg.drain_window_secs)),
        ));
        let dups = listeners
            .iter()
            .map(|l| l.try_clone().map(OwnedFd::from))
            .collect::<io::Result<Vec<_>>>()?;
        let mesh = crate::mesh::build(shards)?;
        let mut threads = Vec::with_capacity(shards);
        for ((index, listener), mesh) in listeners.into_iter().enumerate().zip(mesh) {
            let setup = ShardSetup {
                index,
                listener,
                ctx: Ctx {
                    limits: Limits::server(cfg.max_message),
                    max_header_bytes: cfg.max_header_bytes,
                    out_cap: cfg.out_ring,
                    rate: cfg.rate,
                    burst: cfg.burst,
                    now_ms: 0,
                    stats: Default::default(),
                    gate: gate.clone(),
                    intents: Vec::new(),
                    shared: shared.clone(),
                },
                timeouts: Timeouts {
                    handshake: cfg.handshake_timeout(),
                    linger: cfg.linger_timeout(),
                    ping_interval: std::time::Duration::from_secs(cfg.ping_interval_secs),
                    pong_timeout: std::time::Duration::from_secs(cfg.pong_timeout_secs),
                    idle: std::time::Duration::from_secs(cfg.idle_timeout_secs),
                },
                fixed_files,
                recv_buffers,
                recv_buffer_size: cfg.recv_buffer_size,
                mesh,
                rooms: RoomSettings {
                    slow_policy: cfg.slow_policy,
                    max_rooms_per_conn: cfg.max_rooms_per_conn,
                    max_queued_bytes: cfg.max_queued_bytes,
                },
            };
            let cpu = pin.then(|| cpus[index]);
            let thread = std::thread::Builder::new()
                .name(format!("shard-{index}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        if let Err(e) = sys::pin_to_cpu(cpu) {
                            tracing::warn!(shard = index, cpu, error = %e, "could not pin shard");
                        }
                    }
                    let result = match backend {
                        Backend::Uring => sys::uring::run(setup),
                        Backend::Epoll => sys::epoll::run(setup),
                    };
                    if let Err(e) = &result {
                        tracing::error!(shard = index, error = %e, "shard stopped");
                    }
                    result
                })?;
            threads.push(thread);
        }
        Ok(Server {
            local_addr,
            backend,
            shards,
            stats: shared,
            control: Control {
                gate: gate.clone(),
                listeners: dups.into(),
            },
            gate,
            threads,
        })
    }

    /// A handle that can start the drain from another thread.
    pub fn control(&self) -> Control {
        self.control.clone()
    }
}

impl Control {
    /// Begins a graceful drain: `/healthz` turns 503, the listeners close at once (their
    /// pending connections are reset, and the shards wake), and the shards close their
    /// connections over the drain window, then stop. Returns false if already draining.
    pub fn drain(&self) -> bool {
        if !self.gate.drain.begin() {
            return false;
        }
        for fd in self.listeners.iter() {
            // SAFETY: a plain syscall on a descriptor we own. On a listening TCP socket
            // SHUT_RD stops listening: accept fails from then on, which wakes the shard.
            unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RD) };
        }
        true
    }
}

impl Server {
    /// Waits for the shards; returns the first error any of them stopped with.
    pub fn join(self) -> io::Result<()> {
        let mut result = Ok(());
        for t in self.threads {
            let r = t
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("shard panicked")));
            if result.is_ok() {
                result = r;
            }
        }
        result
    }
}

/// Provided receive buffers per shard when not set: 64, or with more shards than CPUs
/// (shards taken for their fixed-file tables) 64 per CPU shared out, at least 8. The pool
/// is resident from the start, so it must not grow with idle shards.
pub fn recv_buffers_for(shards: usize, cpus: usize) -> u16 {
    let per_shard = 64 * cpus.max(1) / shards.max(1);
    per_shard.next_power_of_two().clamp(8, 64) as u16
}

/// `auto` probes io_uring and falls back to epoll, saying why in one log line.
fn choose_backend(choice: BackendChoice) -> io::Result<Backend> {
    match choice {
        BackendChoice::Epoll => Ok(Backend::Epoll),
        BackendChoice::Uring => {
            sys::uring::probe()
                .map_err(|why| io::Error::other(format!("io_uring unavailable: {why}")))?;
            Ok(Backend::Uring)
        }
        BackendChoice::Auto => match sys::uring::probe() {
            Ok(()) => Ok(Backend::Uring),
            Err(why) => {
                tracing::info!("io_uring unavailable ({why}); using epoll");
                Ok(Backend::Epoll)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::recv_buffers_for;

    #[test]
    fn receive_pool_stays_per_cpu_when_shards_outnumber_cpus() {
        assert_eq!(recv_buffers_for(1, 1), 64);
        assert_eq!(recv_buffers_for(2, 8), 64);
        assert_eq!(recv_buffers_for(2, 2), 64);
        assert_eq!(recv_buffers_for(4, 2), 32);
        assert_eq!(recv_buffers_for(16, 2), 8);
        assert_eq!(recv_buffers_for(64, 2), 8);
    }
}
