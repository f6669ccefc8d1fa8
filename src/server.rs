//! The composition root: turns the validated configuration into each layer's own
//! settings and starts them. The only module (with `main`) that knows [`crate::config`]:
//! the reactor, the app, the backplane and ops each take settings types they define, and
//! this file translates.
//!
//! Start order: the capacity model (it may set `--max-conns`), the admission gate, the
//! reactor's shards with an [`App`] on each, then the backplane thread on the mesh
//! endpoint after the shards.

use std::sync::Arc;
use std::time::Duration;

use crate::app::{auth::Auth, gate::Gate, App};
use crate::config::{BackendChoice, MaxConns, ServeConfig, SlowPolicy};
use crate::ops::admin::{Info, Report};
use crate::ops::capacity::{self, Capacity};
use crate::reactor::{self, Server};
use crate::sys;

/// A running roomcast: the reactor's server and the state the app shares with the admin
/// endpoints.
pub struct Running {
    pub server: Server,
    pub gate: Arc<Gate>,
    pub info: Arc<Info>,
    /// The certificate the listener serves (reloaded on SIGHUP).
    pub tls: Option<Arc<reactor::tls::Source>>,
}

/// Why roomcast did not start.
#[derive(Debug)]
pub enum StartError {
    /// A setting cannot work (exit 2, like a bad flag).
    Config(String),
    /// The listeners or the shards could not start.
    Io(std::io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(e) => f.write_str(e),
            StartError::Io(e) => e.fmt(f),
        }
    }
}

/// Starts the reactor with the app on every shard.
pub fn start(cfg: &ServeConfig) -> Result<Running, StartError> {
    let capacity = capacity_of(cfg).map_err(StartError::Config)?;
    let max_conns = match cfg.max_conns {
        MaxConns::Limit(n) => n,
        MaxConns::Auto if capacity.auto_limit == 0 => {
            return Err(StartError::Config(format!(
                "--max-conns auto: the memory budget ({} bytes, from {}) holds no connection \
                 after the fixed cost of {} bytes",
                capacity.memory_budget_bytes, capacity.memory_budget_source, capacity.fixed_bytes
            )))
        }
        MaxConns::Auto => capacity.auto_limit as usize,
    };
    if cfg.max_conns == MaxConns::Auto {
        tracing::info!(
            max_conns,
            capacity = capacity.connections,
            memory_budget = capacity.memory_budget_bytes,
            source = capacity.memory_budget_source,
            "--max-conns auto: admitting up to the capacity model's count less the margin"
        );
    }
    let gate = Arc::new(Gate::new(
        cfg.allow_origin.clone(),
        auth(cfg).map_err(StartError::Config)?,
        (max_conns, cfg.max_conns_per_ip, cfg.max_conns_per_user),
    ));
    let settings = Arc::new(app_settings(cfg));
    let mut reactor = reactor_settings(cfg);
    let backplane = match settings.backplane {
        true => {
            let shards = reactor.shards.unwrap_or(sys::allowed_cpus().len().max(1));
            Some(backplane_settings(cfg, shards).map_err(StartError::Config)?)
        }
        false => None,
    };
    let status = backplane
        .as_ref()
        .map(|b| Arc::new(crate::backplane::Status::new(b)));
    let info = Arc::new(Info {
        settings: Info::settings_json(&cfg.effective, crate::config::file::SECRETS),
        max_conns,
        capacity,
        backplane: status.clone().map(|s| s as Arc<dyn Report>),
    });
    // Per-address limits need each peer's address at accept.
    reactor.peer_addresses = gate.max_per_ip > 0;
    if let (Some(cert), Some(key)) = (&cfg.tls_cert, &cfg.tls_key) {
        let source = reactor::tls::Source::load(cert, key).map_err(StartError::Config)?;
        reactor.tls = Some(Arc::new(source));
    }
    let tls = reactor.tls.clone();
    let (server, mut others) =
        Server::start_with(&reactor, usize::from(backplane.is_some()), |shard| {
            App::new(settings.clone(), gate.clone(), info.clone(), &shard)
        })
        .map_err(StartError::Io)?;
    if let (Some(b), Some(status), Some(mesh)) = (backplane, status, others.pop()) {
        tracing::info!(node = %b.node, redis = b.targets.len(), "backplane: rooms are ordered through Redis");
        crate::backplane::spawn(b, mesh, status).map_err(StartError::Io)?;
    }
    Ok(Running {
        server,
        gate,
        info,
        tls,
    })
}

/// The capacity model for these settings on this machine.
fn capacity_of(cfg: &ServeConfig) -> Result<Capacity, String> {
    let figures = match &cfg.figures {
        Some(path) => {
            crate::ops::plan::Figures::load(path).map_err(|e| format!("--figures: {e}"))?
        }
        None => crate::ops::plan::Figures::builtin(),
    };
    let cpus = sys::allowed_cpus().len().max(1);
    let shards = cfg.shards.unwrap_or(cpus);
    let uring = match cfg.backend {
        BackendChoice::Epoll => false,
        BackendChoice::Uring => true,
        BackendChoice::Auto => reactor::backend::uring::probe().is_ok(),
    };
    let recv_pool_bytes = if uring {
        let buffers = cfg
            .recv_buffers
            .unwrap_or_else(|| reactor::recv_buffers_for(shards, cpus));
        u64::from(buffers) * u64::from(cfg.recv_buffer_size)
    } else {
        reactor::backend::epoll::SCRATCH as u64
    };
    let budget = cfg
        .memory_budget
        .map_or_else(capacity::default_budget, |b| (b, "--memory-budget"));
    let shape = capacity::Shape {
        shards: shards as u64,
        recv_pool_bytes,
        uring,
        nofile: sys::nofile_limit().1,
        margin_percent: cfg.capacity_margin,
        deflate: cfg.deflate,
        tls: cfg.tls_cert.is_some(),
    };
    Ok(Capacity::new(&figures, budget, &shape))
}

/// What the reactor needs of these settings.
fn reactor_settings(cfg: &ServeConfig) -> reactor::Settings {
    reactor::Settings {
        listen: cfg.listen,
        backlog: cfg.backlog,
        backend: match cfg.backend {
            BackendChoice::Auto => reactor::BackendChoice::Auto,
            BackendChoice::Uring => reactor::BackendChoice::Uring,
            BackendChoice::Epoll => reactor::BackendChoice::Epoll,
        },
        shards: cfg.shards,
        out_ring: cfg.out_ring,
        recv_buffers: cfg.recv_buffers,
        recv_buffer_size: cfg.recv_buffer_size,
        timeouts: reactor::Timeouts {
            handshake: cfg.handshake_timeout(),
            linger: cfg.linger_timeout(),
            ping_interval: Duration::from_secs(cfg.ping_interval_secs),
            pong_timeout: Duration::from_secs(cfg.pong_timeout_secs),
        },
        drain_window: Duration::from_secs(cfg.drain_window_secs),
        peer_addresses: cfg.max_conns_per_ip > 0,
        tls: None,
        tls_listen: cfg.tls_listen,
    }
}

/// What the app needs of these settings.
fn app_settings(cfg: &ServeConfig) -> crate::app::Settings {
    crate::app::Settings {
        limits: crate::protocol::Limits::server(cfg.max_message),
        max_header_bytes: cfg.max_header_bytes,
        rate: cfg.rate,
        burst: cfg.burst,
        idle_ms: (cfg.idle_timeout_secs.saturating_mul(1000)).min(u64::from(u32::MAX / 2)) as u32,
        slow_policy: match cfg.slow_policy {
            SlowPolicy::DropOldest => crate::app::SlowPolicy::DropOldest,
            SlowPolicy::DropNewest => crate::app::SlowPolicy::DropNewest,
            SlowPolicy::Conflate => crate::app::SlowPolicy::Conflate,
            SlowPolicy::Close => crate::app::SlowPolicy::Close,
        },
        max_rooms_per_conn: cfg.max_rooms_per_conn,
        max_queued_bytes: cfg.max_queued_bytes,
        api_key: cfg
            .api_key
            .as_deref()
            .filter(|k| !k.is_empty())
            .map(Into::into),
        api_max_body: cfg.api_max_body.min(u32::MAX as u64) as usize,
        backplane: !cfg.redis.is_empty(),
        presence_events: cfg.presence_events,
        deflate: cfg.deflate,
        deflate_min_size: cfg.deflate_min_size,
        demo: cfg.demo,
        history: crate::rooms::Retention {
            size: cfg.history_size,
            bytes: cfg.history_bytes.min(usize::MAX as u64) as usize,
            ttl_ms: cfg.history_ttl_secs.saturating_mul(1000),
            // The whole process's; each shard's owner gets its share (`App::new`).
            idle_bytes: cfg.history_idle_bytes.min(usize::MAX as u64) as usize,
        },
    }
}

/// The backplane's settings (`--redis` given), for a server of `shards` shards.
fn backplane_settings(
    cfg: &ServeConfig,
    shards: usize,
) -> Result<crate::backplane::Settings, String> {
    Ok(crate::backplane::Settings {
        targets: redis_targets(cfg)?,
        node: cfg
            .node_id
            .clone()
            .unwrap_or_else(crate::backplane::random_node_id),
        shards,
        history_size: cfg.history_size,
        ttl_ms: cfg.history_ttl_secs.saturating_mul(1000),
    })
}

fn redis_targets(cfg: &ServeConfig) -> Result<Vec<crate::backplane::Target>, String> {
    cfg.redis
        .iter()
        .map(|url| crate::backplane::Target::parse(url).map_err(|e| format!("--redis {url}: {e}")))
        .collect()
}

/// The checks of settings that only the layer using them can make (a Redis URL's
/// syntax), for `main` to run with the flags' own checks, before anything starts.
pub fn check(cfg: &ServeConfig) -> Result<(), String> {
    redis_targets(cfg).map(drop)
}

/// `/stats`, `/metrics` and `/healthz` show the backplane's state.
impl Report for crate::backplane::Status {
    fn degraded(&self) -> bool {
        crate::backplane::Status::degraded(self)
    }

    fn json(&self) -> String {
        crate::backplane::Status::json(self)
    }

    fn metrics(&self, out: &mut String) {
        crate::backplane::Status::metrics(self, out)
    }
}

/// The token checker the auth flags ask for, if any.
fn auth(cfg: &ServeConfig) -> Result<Option<Auth>, String> {
    let cookie = cfg.auth_cookie.clone();
    if let Some(secret) = &cfg.jwt_secret {
        return Ok(Some(Auth::with_secret(secret.as_bytes(), cookie)));
    }
    if let Some(path) = &cfg.jwt_public_key {
        let pem =
            std::fs::read(path).map_err(|e| format!("--jwt-public-key {}: {e}", path.display()))?;
        return Auth::with_public_key(&pem, cookie)
            .map(Some)
            .map_err(|e| format!("--jwt-public-key {}: {e}", path.display()));
    }
    Ok(None)
}
