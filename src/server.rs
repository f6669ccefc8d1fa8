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
    let hooks = hooks_settings(cfg, backplane.as_ref().map(|b| b.node.clone()));
    let hooks_status = hooks
        .as_ref()
        .map(|_| Arc::new(crate::hooks::Status::default()));
    let load = Arc::new(capacity::Load::new(
        cfg.shards
            .unwrap_or(usize::MAX)
            .min(sys::allowed_cpus().len())
            .max(1) as f64,
        link_of(cfg),
        cfg.tls_cert.is_some(),
        max_conns as u64,
    ));
    let info = Arc::new(Info {
        settings: Info::settings_json(&cfg.effective, crate::config::file::SECRETS),
        load: load.clone(),
        capacity: capacity.clone(),
        backplane: status.clone().map(|s| s as Arc<dyn Report>),
        hooks: hooks_status.clone().map(|s| s as Arc<dyn Report>),
    });
    // Per-address limits need each peer's address at accept, and the hooks show it to
    // the backend.
    reactor.peer_addresses = gate.max_per_ip > 0 || settings.hooks.is_some();
    if let (Some(cert), Some(key)) = (&cfg.tls_cert, &cfg.tls_key) {
        let source = reactor::tls::Source::load(cert, key).map_err(StartError::Config)?;
        reactor.tls = Some(Arc::new(source));
    }
    let tls = reactor.tls.clone();
    let threads = usize::from(backplane.is_some()) + usize::from(hooks.is_some());
    let (server, others) = Server::start_with(&reactor, threads, |shard| {
        App::new(settings.clone(), gate.clone(), info.clone(), &shard)
    })
    .map_err(StartError::Io)?;
    // The mesh's endpoints after the shards: the backplane's, then the hooks'.
    let mut others = others.into_iter();
    if let (Some(b), Some(status)) = (backplane, status) {
        let mesh = others
            .next()
            .ok_or_else(|| StartError::Config("mesh".into()))?;
        tracing::info!(node = %b.node, redis = b.targets.len(), "backplane: rooms are ordered through Redis");
        crate::backplane::spawn(b, mesh, status).map_err(StartError::Io)?;
    }
    let admit = gate.clone();
    capacity::watch(
        server.stats.clone(),
        load,
        figures_of(cfg).map_err(StartError::Config)?,
        capacity,
        cfg.capacity_margin,
        cfg.max_conns == MaxConns::Auto,
        move |n| admit.set_max_conns(n as usize),
    )
    .map_err(StartError::Io)?;
    if let (Some(h), Some(status)) = (hooks, hooks_status) {
        let mesh = others
            .next()
            .ok_or_else(|| StartError::Config("mesh".into()))?;
        tracing::info!("hooks: the application's backend is asked and told");
        crate::hooks::spawn(h, mesh, status).map_err(StartError::Io)?;
    }
    Ok(Running {
        server,
        gate,
        info,
        tls,
    })
}

/// The capacity model's figures: `--figures`, or the built-in ones.
fn figures_of(cfg: &ServeConfig) -> Result<crate::ops::plan::Figures, String> {
    match &cfg.figures {
        Some(path) => crate::ops::plan::Figures::load(path).map_err(|e| format!("--figures: {e}")),
        None => Ok(crate::ops::plan::Figures::builtin()),
    }
}

/// Where the members are, for the CPU side of capacity: a server that listens only on a
/// loopback address has only loopback peers, whose TCP input runs on its CPUs.
fn link_of(cfg: &ServeConfig) -> crate::ops::plan::Link {
    let loopback =
        cfg.listen.ip().is_loopback() && cfg.tls_listen.is_none_or(|a| a.ip().is_loopback());
    match loopback {
        true => crate::ops::plan::Link::Loopback,
        false => crate::ops::plan::Link::Nic,
    }
}

/// The capacity model for these settings on this machine.
fn capacity_of(cfg: &ServeConfig) -> Result<Capacity, String> {
    let figures = figures_of(cfg)?;
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
        write_delay: cfg.write_delay,
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
        hooks: hook_use(cfg),
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

/// Which hooks the app asks and what it tells the webhooks (none: no hooks thread).
fn hook_use(cfg: &ServeConfig) -> Option<crate::app::backend::HookUse> {
    let any = cfg.hook_connect.is_some()
        || cfg.hook_join.is_some()
        || cfg.hook_publish.is_some()
        || cfg.hook_rpc.is_some()
        || cfg.webhook.is_some();
    if !any {
        return None;
    }
    let wants = |name: &str| {
        cfg.webhook.is_some()
            && (cfg.webhook_events.is_empty() || cfg.webhook_events.iter().any(|e| e == name))
    };
    Some(crate::app::backend::HookUse {
        connect: cfg.hook_connect.is_some(),
        join: cfg.hook_join.is_some(),
        publish: cfg.hook_publish.is_some(),
        rpc: cfg.hook_rpc.is_some(),
        forward_headers: forward_headers(cfg),
        events: crate::app::backend::Events {
            occupancy: wants("room_occupied") || wants("room_vacated"),
            members: wants("member_joined") || wants("member_left"),
            client_publish: wants("client_publish"),
            connection_closed: wants("connection_closed"),
        },
    })
}

fn forward_headers(cfg: &ServeConfig) -> Vec<String> {
    cfg.hook_forward_headers
        .iter()
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .collect()
}

/// The hooks thread's settings (any hook or `--webhook` given); `node`: the backplane's
/// node id, if there is one.
fn hooks_settings(cfg: &ServeConfig, node: Option<String>) -> Option<crate::hooks::Settings> {
    hook_use(cfg)?;
    let webhook = cfg
        .webhook
        .as_ref()
        .map(|url| crate::hooks::webhook::Settings {
            url: url.clone(),
            secret: cfg.webhook_secret.clone(),
            events: if cfg.webhook_events.is_empty() {
                crate::config::WEBHOOK_EVENTS
                    .iter()
                    .map(|e| e.to_string())
                    .collect()
            } else {
                cfg.webhook_events.clone()
            },
            batch: cfg.webhook_batch as usize,
            queue: WEBHOOK_QUEUE,
            node: node
                .clone()
                .or_else(|| cfg.node_id.clone())
                .unwrap_or_else(crate::backplane::random_node_id),
            redis: cfg.redis.first().cloned(),
        });
    Some(crate::hooks::Settings {
        connect: cfg.hook_connect.clone(),
        join: cfg.hook_join.clone(),
        publish: cfg.hook_publish.clone(),
        rpc: cfg.hook_rpc.clone(),
        forward_headers: forward_headers(cfg),
        timeout: cfg.hook_timeout,
        max_inflight: cfg.hook_max_inflight as usize,
        fail_open: cfg.hook_fail_open,
        webhook,
    })
}

/// Webhook events a node holds at most while its receiver is away (past it, new ones are
/// dropped and counted).
const WEBHOOK_QUEUE: usize = 100_000;

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

/// `/stats` and `/metrics` show the hooks' and webhooks' figures.
impl Report for crate::hooks::Status {
    fn degraded(&self) -> bool {
        false
    }

    fn json(&self) -> String {
        crate::hooks::Status::json(self)
    }

    fn metrics(&self, out: &mut String) {
        crate::hooks::Status::metrics(self, out)
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
