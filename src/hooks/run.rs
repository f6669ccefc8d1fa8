//! The hooks thread's loop: a one-thread tokio runtime that takes the shards' requests
//! from the mesh (its eventfd is polled by the runtime), starts the calls [`Calls`] lets
//! through, hands the answers back, and runs the webhooks beside them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, Notify};

use super::calls::{Calls, Start};
use super::webhook::Webhooks;
use super::{Carrier, Request, Settings, Status};
use crate::mesh::Endpoint;

/// A finished call: its id and the answer (HTTP status and body), or `None` if there was
/// none in time.
type Done = (u64, Option<(u16, Vec<u8>)>);

/// Longest an answer body may be (a bigger one is not an answer).
const MAX_ANSWER: usize = 1 << 20;

pub(super) fn run<M: Carrier>(cfg: Settings, mesh: Endpoint<M>, status: Arc<Status>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return tracing::error!(error = %e, "hooks: cannot start the runtime"),
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, serve(cfg, mesh, status));
}

/// The HTTP client every call and webhook shares: pooled keep-alive connections,
/// HTTP/2 where a TLS backend offers it.
pub(super) fn client(cfg: &Settings) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(cfg.max_inflight.max(1))
        .pool_idle_timeout(Duration::from_secs(90))
        .connect_timeout(cfg.timeout)
        .tcp_nodelay(true)
        .user_agent(concat!("roomcast/", env!("CARGO_PKG_VERSION")))
        .build()
}

async fn serve<M: Carrier>(cfg: Settings, mut mesh: Endpoint<M>, status: Arc<Status>) {
    let client = match client(&cfg) {
        Ok(c) => c,
        Err(e) => return tracing::error!(error = %e, "hooks: cannot build the HTTP client"),
    };
    // Deprecated as unsound for descriptors the value does not own; this one owns its
    // own (a duplicate of the mesh's eventfd), open as long as the AsyncFd.
    #[allow(deprecated)]
    let wake = mesh
        .wake_fd_owned()
        .and_then(|fd| AsyncFd::with_interest(fd, tokio::io::Interest::READABLE));
    let wake = match wake {
        Ok(fd) => fd,
        Err(e) => return tracing::error!(error = %e, "hooks: cannot poll the mesh"),
    };
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    let notify = Arc::new(Notify::new());
    let mut webhooks = cfg
        .webhook
        .clone()
        .map(|w| Webhooks::new(w, client.clone(), notify.clone(), status.clone()));
    let mut calls = Calls::new(cfg, status);
    let mut inbox = Vec::new();
    let mut reorder = super::Reorder::default();
    let mut ready = Vec::new();
    let mut finished: Vec<Done> = Vec::new();
    loop {
        let now = Instant::now();
        mesh.receive(&mut inbox);
        for msg in inbox.drain(..) {
            match msg.into_request() {
                Ok(Request::Call { from, call }) => calls.ask(from, call, now),
                Ok(Request::Happened(h)) => reorder.push(h, now, &mut ready),
                Err(other) => tracing::debug!(?other, "hooks: not a request"),
            }
        }
        let reorder_next = reorder.release(now, &mut ready);
        for h in ready.drain(..) {
            if let Some(w) = &mut webhooks {
                w.happened(h);
            }
        }
        while let Ok(d) = done_rx.try_recv() {
            finished.push(d);
        }
        for (id, answer) in finished.drain(..) {
            let answer = answer.as_ref().map(|(s, b)| (*s, b.as_slice()));
            calls.done(id, answer, now);
        }
        calls.expire(now);
        while let Some(start) = calls.start(now) {
            tokio::task::spawn_local(call(client.clone(), start, done_tx.clone()));
        }
        for d in calls.out.drain(..) {
            let to = usize::from(d.to.shard);
            mesh.send(to, M::from(d));
        }
        let webhooks_next = webhooks.as_mut().and_then(|w| w.poll(now));
        let next = [calls.next_deadline(), reorder_next, webhooks_next]
            .into_iter()
            .flatten()
            .min();
        mesh.flush();
        // A backed-up queue to a shard is pushed again soon; otherwise sleep until
        // something arrives or a deadline is due.
        let until = if mesh.backlog() > 0 {
            now + Duration::from_millis(1)
        } else {
            next.unwrap_or(now + Duration::from_secs(1))
                .min(now + Duration::from_secs(1))
        };
        if !mesh.prepare_sleep() {
            mesh.awake();
            continue;
        }
        tokio::select! {
            ready = wake.readable() => {
                if let Ok(mut guard) = ready {
                    mesh.consume_wake();
                    guard.clear_ready();
                }
            }
            Some(d) = done_rx.recv() => finished.push(d),
            _ = notify.notified() => {}
            _ = tokio::time::sleep_until(until.into()) => {}
        }
        mesh.awake();
    }
}

/// One call to the backend: POST the body, read the answer (bounded), all by the deadline.
async fn call(client: reqwest::Client, start: Start, done: mpsc::UnboundedSender<Done>) {
    let left = start
        .deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    let answer = tokio::time::timeout(left, async {
        let mut response = client
            .post(&*start.url)
            .header("content-type", "application/json")
            .body(start.body)
            .send()
            .await
            .map_err(|e| tracing::debug!(error = %e, "hook call failed"))
            .ok()?;
        let status = response.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.ok()? {
            if body.len() + chunk.len() > MAX_ANSWER {
                return None;
            }
            body.extend_from_slice(&chunk);
        }
        Some((status, body))
    })
    .await
    .ok()
    .flatten();
    let _ = done.send((start.id, answer));
}
