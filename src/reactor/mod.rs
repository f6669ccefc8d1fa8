//! Thread-per-core: one shard per thread, each with its own listener (`SO_REUSEPORT`),
//! its own slab of connections and its own event loop on io_uring or epoll.
//!
//! The reactor knows sockets, buffers, out-rings, timers and the close lifecycle, and
//! nothing of what runs on it: every shard runs a [`Service`], statically dispatched.

// The epoll and io_uring loops: the only place in the reactor allowed `unsafe`.
#[allow(unsafe_code)]
pub mod backend;
pub mod conn;
pub mod drain;
pub mod heartbeat;
pub mod outring;
pub mod service;
pub mod shard;
pub mod stats;
pub mod tls;

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

pub use drain::Drain;
pub use service::{Cx, Link, Service};
use shard::CoreSetup;
pub use shard::Timeouts;
use stats::SharedStats;

use crate::sys;

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

/// `--backend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    /// io_uring where the kernel supports what roomcast uses, epoll otherwise.
    Auto,
    Uring,
    Epoll,
}

/// What the reactor needs to know, whatever service it runs.
#[derive(Clone, Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    pub backlog: i32,
    pub backend: BackendChoice,
    /// Event loops [default: the CPUs this process may use].
    pub shards: Option<usize>,
    /// Data frames a connection may have queued.
    pub out_ring: usize,
    /// How long a delivery may wait for more to share its send (zero: none).
    pub write_delay: Duration,
    /// io_uring: provided receive buffers per shard (default: [`recv_buffers_for`]) and
    /// their size.
    pub recv_buffers: Option<u16>,
    pub recv_buffer_size: u32,
    pub timeouts: Timeouts,
    pub drain_window: Duration,
    /// Whether the service needs each peer's address (io_uring then accepts one
    /// connection per request, each with its own address buffer).
    pub peer_addresses: bool,
    /// TLS with this certificate: on `listen`, or with `tls_listen` on that address only.
    pub tls: Option<Arc<tls::Source>>,
    /// `--tls-listen`: TLS here, and `listen` stays plain.
    pub tls_listen: Option<SocketAddr>,
}

/// What a shard's service is built with.
pub struct ShardInfo {
    pub index: usize,
    pub shards: usize,
    /// Every shard's figures (`/stats`, `/metrics`).
    pub stats: Arc<SharedStats>,
    /// Whether a drain began (`/healthz`).
    pub drain: Arc<Drain>,
}

/// Everything one shard starts with.
pub struct ShardSetup<S: Service> {
    pub index: usize,
    /// The main listener, then `--tls-listen`'s, and whether each speaks TLS.
    pub listeners: Vec<(socket2::Socket, bool)>,
    pub service: S,
    pub core: CoreSetup<S::Msg>,
    /// io_uring only: fixed-file table size, provided buffers.
    pub fixed_files: u32,
    pub recv_buffers: u16,
    pub recv_buffer_size: u32,
    pub peer_addresses: bool,
}

/// A running server: its address, backend and shard threads.
pub struct Server {
    pub local_addr: SocketAddr,
    /// `--tls-listen`'s address, when set.
    pub tls_addr: Option<SocketAddr>,
    pub backend: Backend,
    pub shards: usize,
    pub stats: Arc<SharedStats>,
    pub drain: Arc<Drain>,
    threads: Vec<JoinHandle<io::Result<()>>>,
    control: Control,
}

/// What another thread (the signal handler) needs to start a drain.
#[derive(Clone)]
pub struct Control {
    drain: Arc<Drain>,
    /// Duplicates of the shards' listeners, to shut them down when a drain begins.
    listeners: Arc<[OwnedFd]>,
}

impl Server {
    /// Binds every shard's listener and starts the shard threads, each running the
    /// service `make` builds for it (on this thread, before the shards start).
    pub fn start<S, F>(cfg: &Settings, make: F) -> io::Result<Server>
    where
        S: Service + Send,
        F: FnMut(ShardInfo) -> S,
    {
        Self::start_with(cfg, 0, make).map(|(server, _)| server)
    }

    /// [`Server::start`] with `others` mesh endpoints that are not shards (a backplane
    /// thread): returned for the caller to run.
    pub fn start_with<S, F>(
        cfg: &Settings,
        others: usize,
        mut make: F,
    ) -> io::Result<(Server, Vec<crate::mesh::Endpoint<S::Msg>>)>
    where
        S: Service + Send,
        F: FnMut(ShardInfo) -> S,
    {
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
        // `--tls-listen`: a second set, the same way.
        let mut tls_listeners = Vec::new();
        let mut tls_addr = None;
        if let Some(addr) = cfg.tls_listen {
            sys::ensure_port_free(addr)?;
            let first = sys::listener(addr, cfg.backlog)?;
            let bound = first.local_addr()?.as_socket();
            tls_listeners.push(first);
            for _ in 1..shards {
                let addr = bound.ok_or_else(|| io::Error::other("no inet address"))?;
                tls_listeners.push(sys::listener(addr, cfg.backlog)?);
            }
            tls_addr = bound;
        }
        let main_tls = cfg.tls.is_some() && cfg.tls_listen.is_none();
        let pin = shards <= cpus.len();
        let fixed_files = nofile.min(1 << 20) as u32;
        let recv_buffers = cfg
            .recv_buffers
            .unwrap_or_else(|| recv_buffers_for(shards, cpus.len()));
        let mut stats = SharedStats::new(shards, <S::Figures as stats::Figures>::META);
        stats.config = serde_json::json!({
            "backend": backend.to_string(),
            "shards": shards,
            "fixed_files": fixed_files,
            "recv_buffers": if backend == Backend::Uring { recv_buffers } else { 0 },
            "recv_buffer_size": cfg.recv_buffer_size,
            "out_ring": cfg.out_ring,
            "ping_interval_secs": cfg.timeouts.ping_interval.as_secs(),
            "pong_timeout_secs": cfg.timeouts.pong_timeout.as_secs(),
        })
        .to_string();
        let stats = Arc::new(stats);
        let drain = Arc::new(Drain::new(cfg.drain_window));
        let dups = listeners
            .iter()
            .chain(&tls_listeners)
            .map(|l| l.try_clone().map(OwnedFd::from))
            .collect::<io::Result<Vec<_>>>()?;
        let mut tls_listeners = tls_listeners.into_iter();
        let mut mesh = crate::mesh::build(shards, others)?;
        let extra = mesh.split_off(shards);
        let mut threads = Vec::with_capacity(shards);
        for ((index, listener), mesh) in listeners.into_iter().enumerate().zip(mesh) {
            let service = make(ShardInfo {
                index,
                shards,
                stats: stats.clone(),
                drain: drain.clone(),
            });
            let mut shard_listeners = vec![(listener, main_tls)];
            shard_listeners.extend(tls_listeners.next().map(|l| (l, true)));
            let setup = ShardSetup {
                index,
                listeners: shard_listeners,
                service,
                core: CoreSetup {
                    index,
                    mesh,
                    timeouts: cfg.timeouts,
                    out_cap: cfg.out_ring,
                    write_delay: cfg.write_delay,
                    drain: drain.clone(),
                    shared: stats.clone(),
                    tls: cfg.tls.clone(),
                },
                fixed_files,
                recv_buffers,
                recv_buffer_size: cfg.recv_buffer_size,
                peer_addresses: cfg.peer_addresses,
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
                        Backend::Uring => backend::uring::run(setup),
                        Backend::Epoll => backend::epoll::run(setup),
                    };
                    if let Err(e) = &result {
                        tracing::error!(shard = index, error = %e, "shard stopped");
                    }
                    result
                })?;
            threads.push(thread);
        }
        let server = Server {
            local_addr,
            tls_addr,
            backend,
            shards,
            stats,
            control: Control {
                drain: drain.clone(),
                listeners: dups.into(),
            },
            drain,
            threads,
        };
        Ok((server, extra))
    }

    /// A handle that can start the drain from another thread.
    pub fn control(&self) -> Control {
        self.control.clone()
    }
}

impl Control {
    /// Begins a graceful drain: the listeners close at once (their pending connections
    /// are reset, and the shards wake), and the shards close their connections over the
    /// drain window, then stop. Returns false if already draining.
    pub fn drain(&self) -> bool {
        if !self.drain.begin() {
            return false;
        }
        for fd in self.listeners.iter() {
            sys::stop_listening(fd);
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
            backend::uring::probe()
                .map_err(|why| io::Error::other(format!("io_uring unavailable: {why}")))?;
            Ok(Backend::Uring)
        }
        BackendChoice::Auto => match backend::uring::probe() {
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
