//! `room_occupied` / `room_vacated` for the whole cluster, from the shards' node-local
//! [`super::What::RoomHere`].
//!
//! Without Redis a node is the cluster: the room's first member here is `room_occupied`,
//! its last one leaving is `room_vacated`.
//!
//! With a backplane, Redis (the first `--redis` server) keeps, per room, the set of nodes
//! that have members in it, and per node the set of rooms it is in. Atomic Lua scripts
//! change them: adding this node to a room fires `room_occupied` only if the set was
//! empty, removing it fires `room_vacated` only if the set became empty, so each fires
//! once however members are spread over nodes.
//!
//! - **Hops.** A member moving from one node to another (a reconnect through a load
//!   balancer) must not flip the room: this node leaves a room's set only [`GRACE`] after
//!   its last member here left, and not at all if a member came back meanwhile.
//! - **Node death.** Every node holds a lease (a key with a TTL of [`LEASE_TTL`], renewed
//!   every [`TICK`]) and is listed in a registry. Every node sweeps every [`TICK`]: one
//!   script (atomic, so one sweeper wins) takes each node whose lease is gone out of the
//!   registry and out of its rooms' sets, and returns the rooms that became empty; the
//!   sweeper reports them `room_vacated`. A dead node's rooms are vacated at most
//!   `LEASE_TTL + TICK` (12 s) after its last renewal, plus the time to POST.
//! - **Redis down.** Changes wait in order in a queue and are applied when Redis is back
//!   (logged, not lost); flips of one room that cancel out while the queue is past its
//!   cap are folded into the room's end state ([`Queue::fold`]). A node that finds its
//!   lease gone (Redis was away past the TTL, and it was swept as dead) puts its rooms
//!   back.
//!
//! Keys (one hash tag, so a Cluster would keep them in one slot; apart from the
//! backplane's `rc:{room}:…`): `roomcast:{occ}:room:<room>` (set of nodes),
//! `roomcast:{occ}:node:<node>` (set of rooms), `roomcast:{occ}:lease:<node>`,
//! `roomcast:{occ}:nodes` (the registry).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// How long after a room's last member here left this node leaves the room's set.
pub const GRACE: Duration = Duration::from_secs(2);
/// The lease's time to live: a node not heard of for this long is dead.
pub const LEASE_TTL: Duration = Duration::from_secs(10);
/// How often a node renews its lease and sweeps for dead nodes.
pub const TICK: Duration = Duration::from_secs(2);
/// One Redis command's deadline (then the connection is dropped and made again).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);
/// Reconnect backoff: from this, doubling …
const RECONNECT_MIN: Duration = Duration::from_millis(100);
/// … up to this.
const RECONNECT_MAX: Duration = Duration::from_secs(2);
/// Changes waiting for Redis past which flips that cancel out are folded away.
const QUEUE_CAP: usize = 10_000;

const PREFIX: &str = "roomcast:{occ}:";

/// A room that became occupied or vacated, for the webhooks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub room: Arc<str>,
    pub occupied: bool,
    /// Unix milliseconds.
    pub at_ms: u64,
}

/// The occupancy side of the webhooks, on the hooks thread.
pub struct Occupancy {
    mode: Mode,
}

enum Mode {
    /// No Redis: this node is the cluster.
    Local(Vec<Change>),
    Cluster(Cluster),
}

/// The node's side with Redis: the grace timers here; the queue of changes and what the
/// worker task made of them, shared with it.
struct Cluster {
    /// Rooms whose last member here left: when this node leaves their set (and when the
    /// last member left, for the event's time).
    grace: HashMap<Arc<str>, (Instant, u64)>,
    shared: Rc<RefCell<Shared>>,
    kick: Rc<Notify>,
}

/// Between [`Cluster`] and its worker task (one thread: a `RefCell`, never held across an
/// await).
#[derive(Default)]
struct Shared {
    queue: Queue,
    /// What Redis said: events to send.
    out: Vec<Change>,
}

/// One change of this node's presence in a room, to apply in Redis.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Op {
    room: Arc<str>,
    /// Add this node to the room's set (or take it out).
    add: bool,
    at_ms: u64,
}

/// The changes waiting for Redis, in order, and the rooms this node is in there.
#[derive(Default)]
struct Queue {
    ops: VecDeque<Op>,
    /// The rooms Redis has this node in (as far as the applied ops say).
    held: HashSet<Arc<str>>,
    /// The op being applied now (out of `ops`: a fold cannot drop it, and folds as if
    /// it were applied).
    inflight: Option<Op>,
    /// Flips folded away while Redis was down.
    folded: u64,
    /// The queue's length past which it is folded next (doubling: a queue of more
    /// distinct rooms than the cap is not folded again on every push).
    fold_at: usize,
}

impl Queue {
    fn push(&mut self, op: Op) {
        self.ops.push_back(op);
        if self.ops.len() > self.fold_at.max(QUEUE_CAP) {
            self.fold();
            self.fold_at = self.ops.len() * 2;
        }
    }

    /// Whether Redis has (or, once the op in flight is applied, will have) this node in
    /// `room`.
    fn holds(&self, room: &Arc<str>) -> bool {
        match &self.inflight {
            Some(op) if op.room == *room => op.add,
            _ => self.held.contains(room),
        }
    }

    /// Keeps, per room, only the last op, and only if it changes what Redis holds: flips
    /// that cancel out are dropped (and counted).
    fn fold(&mut self) {
        let before = self.ops.len();
        let mut last: HashMap<Arc<str>, Op> = HashMap::new();
        let mut order = Vec::new();
        for op in self.ops.drain(..) {
            if !last.contains_key(&op.room) {
                order.push(op.room.clone());
            }
            last.insert(op.room.clone(), op);
        }
        for room in order {
            if let Some(op) = last.remove(&room) {
                if op.add != self.holds(&room) {
                    self.ops.push_back(op);
                }
            }
        }
        let folded = (before - self.ops.len()) as u64;
        self.folded += folded;
        if folded == 0 {
            return;
        }
        tracing::warn!(
            folded,
            left = self.ops.len(),
            "webhooks: Redis is away and occupancy changes piled up: flips that cancel out \
             are folded (those rooms' occupied/vacated events are not sent)"
        );
    }
}

impl Occupancy {
    /// Occupancy for `node`, kept in the Redis at `redis` if given (a worker task is
    /// started on the current `LocalSet`), which wakes the loop through `wake`.
    pub fn new(node: String, redis: Option<String>, wake: Arc<Notify>) -> Occupancy {
        let Some(url) = redis else {
            return Occupancy {
                mode: Mode::Local(Vec::new()),
            };
        };
        let shared = Rc::new(RefCell::new(Shared::default()));
        let kick = Rc::new(Notify::new());
        tokio::task::spawn_local(worker(url, node, shared.clone(), kick.clone(), wake));
        Occupancy {
            mode: Mode::Cluster(Cluster {
                grace: HashMap::new(),
                shared,
                kick,
            }),
        }
    }

    /// The room's first member on this node arrived (`occupied`), or its last one here
    /// left.
    pub fn here(&mut self, room: Arc<str>, occupied: bool, at_ms: u64, now: Instant) {
        match &mut self.mode {
            Mode::Local(out) => out.push(Change {
                room,
                occupied,
                at_ms,
            }),
            Mode::Cluster(c) if occupied => {
                // Back within the grace: this node never left the room's set.
                if c.grace.remove(&room).is_none() {
                    c.apply(Op {
                        room,
                        add: true,
                        at_ms,
                    });
                }
            }
            Mode::Cluster(c) => {
                c.grace.insert(room, (now + GRACE, at_ms));
            }
        }
    }

    /// Moves the changes that are known into `out`; returns when a grace ends next.
    pub fn poll(&mut self, now: Instant, out: &mut Vec<Change>) -> Option<Instant> {
        match &mut self.mode {
            Mode::Local(changes) => {
                out.append(changes);
                None
            }
            Mode::Cluster(c) => {
                let due: Vec<Arc<str>> = c
                    .grace
                    .iter()
                    .filter(|(_, (at, _))| *at <= now)
                    .map(|(room, _)| room.clone())
                    .collect();
                for room in due {
                    if let Some((_, at_ms)) = c.grace.remove(&room) {
                        c.apply(Op {
                            room,
                            add: false,
                            at_ms,
                        });
                    }
                }
                out.append(&mut c.shared.borrow_mut().out);
                c.grace.values().map(|(at, _)| *at).min()
            }
        }
    }
}

impl Cluster {
    fn apply(&mut self, op: Op) {
        self.shared.borrow_mut().queue.push(op);
        self.kick.notify_one();
    }
}

/// `KEYS`: the room's set, the node's rooms, the registry, the node's lease. `ARGV`: the
/// node, the room, the lease's TTL in ms. 1 if the room's set was empty.
const ADD: &str = r"
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('SET', KEYS[4], '1', 'PX', ARGV[3])
redis.call('SADD', KEYS[2], ARGV[2])
if redis.call('SADD', KEYS[1], ARGV[1]) == 1 and redis.call('SCARD', KEYS[1]) == 1 then
  return 1
end
return 0
";

/// `KEYS`: the room's set, the node's rooms. `ARGV`: the node, the room. 1 if the room's
/// set became empty.
const REMOVE: &str = r"
redis.call('SREM', KEYS[2], ARGV[2])
if redis.call('SREM', KEYS[1], ARGV[1]) == 1 and redis.call('SCARD', KEYS[1]) == 0 then
  return 1
end
return 0
";

/// `KEYS`: the node's lease, the registry. `ARGV`: the node, the TTL in ms. 1 if the
/// lease was still there (0: it lapsed, and the node may have been swept as dead).
const RENEW: &str = r"
local had = redis.call('SET', KEYS[1], '1', 'PX', ARGV[2], 'XX')
if not had then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[2])
end
redis.call('SADD', KEYS[2], ARGV[1])
if had then return 1 end
return 0
";

/// `KEYS`: the registry. `ARGV`: the key prefix, and a node to reap whatever its lease
/// says (this node at its start: what an earlier run under its id left) or ''. Takes every
/// node without a lease (and that one) out of the registry and its rooms' sets; returns
/// the rooms that became empty.
const SWEEP: &str = r"
local prefix = ARGV[1]
local gone = {}
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if node == ARGV[2] or redis.call('EXISTS', prefix .. 'lease:' .. node) == 0 then
    redis.call('SREM', KEYS[1], node)
    local nk = prefix .. 'node:' .. node
    for _, room in ipairs(redis.call('SMEMBERS', nk)) do
      local rk = prefix .. 'room:' .. room
      if redis.call('SREM', rk, node) == 1 and redis.call('SCARD', rk) == 0 then
        table.insert(gone, room)
      end
    end
    redis.call('DEL', nk)
  end
end
return gone
";

fn key(kind: &str, name: &str) -> String {
    format!("{PREFIX}{kind}:{name}")
}

/// The scripts, loaded once per connection on first use (`EVALSHA`, then `EVAL`).
struct Scripts {
    add: redis::Script,
    remove: redis::Script,
    renew: redis::Script,
    sweep: redis::Script,
}

/// The worker task: owns the connection, applies the queue in order, renews the lease and
/// sweeps every [`TICK`], reconnects with backoff.
async fn worker(
    url: String,
    node: String,
    shared: Rc<RefCell<Shared>>,
    kick: Rc<Notify>,
    wake: Arc<Notify>,
) {
    let scripts = Scripts {
        add: redis::Script::new(ADD),
        remove: redis::Script::new(REMOVE),
        renew: redis::Script::new(RENEW),
        sweep: redis::Script::new(SWEEP),
    };
    let client = match redis::Client::open(url.as_str()) {
        Ok(c) => c,
        Err(e) => {
            return tracing::error!(error = %e, "webhooks: bad --redis URL: occupancy is not kept")
        }
    };
    let mut backoff = RECONNECT_MIN;
    let mut started = false;
    let mut down_logged = false;
    loop {
        let conn =
            tokio::time::timeout(COMMAND_TIMEOUT, client.get_multiplexed_async_connection()).await;
        let mut conn = match conn {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                if !down_logged {
                    tracing::warn!(error = %e, "webhooks: Redis unreachable: occupancy changes wait");
                    down_logged = true;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RECONNECT_MAX);
                continue;
            }
            Err(_) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RECONNECT_MAX);
                continue;
            }
        };
        if down_logged {
            let waiting = shared.borrow().queue.ops.len();
            tracing::info!(
                waiting,
                "webhooks: Redis is back: applying occupancy changes"
            );
            down_logged = false;
        }
        backoff = RECONNECT_MIN;
        let run = Run {
            node: &node,
            scripts: &scripts,
            shared: &shared,
            wake: &wake,
        };
        let failed = async {
            if !started {
                // What an earlier run under this node's id left behind goes first.
                run.sweep(&mut conn, &node).await?;
                started = true;
            }
            run.session(&mut conn, &kick).await
        }
        .await;
        if let Err(e) = failed {
            tracing::warn!(error = %e, "webhooks: Redis failed: occupancy changes wait");
            down_logged = true;
        }
        tokio::time::sleep(backoff).await;
    }
}

/// One connection's life in the worker.
struct Run<'a> {
    node: &'a str,
    scripts: &'a Scripts,
    shared: &'a Rc<RefCell<Shared>>,
    wake: &'a Arc<Notify>,
}

type Conn = redis::aio::MultiplexedConnection;

impl Run<'_> {
    /// Works on `conn` until it fails.
    async fn session(&self, conn: &mut Conn, kick: &Notify) -> redis::RedisResult<()> {
        self.renew(conn).await?;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            self.drain(conn).await?;
            tokio::select! {
                _ = tick.tick() => {
                    self.renew(conn).await?;
                    self.sweep(conn, "").await?;
                }
                _ = kick.notified() => {}
            }
        }
    }

    /// Applies the waiting ops, in order; each leaves the queue only once Redis took it.
    async fn drain(&self, conn: &mut Conn) -> redis::RedisResult<()> {
        let mut renewed = Instant::now();
        loop {
            if renewed.elapsed() >= TICK {
                // A long drain (Redis back after an outage) must not let the lease lapse.
                self.renew(conn).await?;
                renewed = Instant::now();
            }
            let op = {
                let mut s = self.shared.borrow_mut();
                let Some(op) = s.queue.ops.pop_front() else {
                    return Ok(());
                };
                s.queue.inflight = Some(op.clone());
                op
            };
            let fired = match self.apply(conn, &op).await {
                Ok(fired) => fired,
                Err(e) => {
                    // Not taken: first again on the next connection.
                    let mut s = self.shared.borrow_mut();
                    s.queue.inflight = None;
                    s.queue.ops.push_front(op);
                    return Err(e);
                }
            };
            let mut s = self.shared.borrow_mut();
            s.queue.inflight = None;
            if op.add {
                s.queue.held.insert(op.room.clone());
            } else {
                s.queue.held.remove(&op.room);
            }
            if fired == 1 {
                s.out.push(Change {
                    room: op.room,
                    occupied: op.add,
                    at_ms: op.at_ms,
                });
                self.wake.notify_one();
            }
        }
    }

    /// Applies `op` in Redis: 1 if it changed whether the room is occupied.
    async fn apply(&self, conn: &mut Conn, op: &Op) -> redis::RedisResult<i64> {
        Ok(if op.add {
            let mut inv = self.scripts.add.prepare_invoke();
            inv.key(key("room", &op.room))
                .key(key("node", self.node))
                .key(format!("{PREFIX}nodes"))
                .key(key("lease", self.node))
                .arg(self.node)
                .arg(&*op.room)
                .arg(LEASE_TTL.as_millis() as u64);
            timed(inv.invoke_async(conn)).await?
        } else {
            let mut inv = self.scripts.remove.prepare_invoke();
            inv.key(key("room", &op.room))
                .key(key("node", self.node))
                .arg(self.node)
                .arg(&*op.room);
            timed(inv.invoke_async(conn)).await?
        })
    }

    /// Renews the lease; if it had lapsed, puts this node back in the rooms it holds (a
    /// sweeper may have taken it out as dead and reported them vacated).
    async fn renew(&self, conn: &mut Conn) -> redis::RedisResult<()> {
        let mut inv = self.scripts.renew.prepare_invoke();
        inv.key(key("lease", self.node))
            .key(format!("{PREFIX}nodes"))
            .arg(self.node)
            .arg(LEASE_TTL.as_millis() as u64);
        let had: i64 = timed(inv.invoke_async(conn)).await?;
        if had == 0 {
            let mut s = self.shared.borrow_mut();
            let held: Vec<Arc<str>> = s.queue.held.iter().cloned().collect();
            if !held.is_empty() {
                tracing::warn!(
                    rooms = held.len(),
                    "webhooks: this node's occupancy lease had lapsed: its rooms are put back"
                );
            }
            let at_ms = super::unix_ms();
            // Before what waits: these restore what Redis held when those were queued.
            for room in held {
                s.queue.ops.push_front(Op {
                    room,
                    add: true,
                    at_ms,
                });
            }
        }
        Ok(())
    }

    /// Takes dead nodes (and `reap`, if not empty) out; reports the rooms they left empty.
    async fn sweep(&self, conn: &mut Conn, reap: &str) -> redis::RedisResult<()> {
        let mut inv = self.scripts.sweep.prepare_invoke();
        inv.key(format!("{PREFIX}nodes")).arg(PREFIX).arg(reap);
        let gone: Vec<String> = timed(inv.invoke_async(conn)).await?;
        if gone.is_empty() {
            return Ok(());
        }
        tracing::info!(
            rooms = gone.len(),
            "webhooks: a dead node's rooms are vacated"
        );
        let at_ms = super::unix_ms();
        let mut s = self.shared.borrow_mut();
        for room in gone {
            s.out.push(Change {
                room: room.into(),
                occupied: false,
                at_ms,
            });
        }
        self.wake.notify_one();
        Ok(())
    }
}

/// `fut` within [`COMMAND_TIMEOUT`] (a timeout is an I/O error: the connection is made
/// again).
async fn timed<T>(
    fut: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    match tokio::time::timeout(COMMAND_TIMEOUT, fut).await {
        Ok(r) => r,
        Err(_) => Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "Redis did not answer in time",
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(room: &str, add: bool, at_ms: u64) -> Op {
        Op {
            room: room.into(),
            add,
            at_ms,
        }
    }

    #[test]
    fn local_occupancy_is_the_nodes() {
        let mut o = Occupancy::new("n".into(), None, Arc::new(Notify::new()));
        let now = Instant::now();
        o.here("a".into(), true, 1, now);
        o.here("a".into(), false, 2, now);
        let mut out = Vec::new();
        assert_eq!(o.poll(now, &mut out), None);
        let got: Vec<(bool, u64)> = out.iter().map(|c| (c.occupied, c.at_ms)).collect();
        assert_eq!(got, [(true, 1), (false, 2)]);
    }

    #[test]
    fn folding_keeps_each_rooms_end_state_against_what_redis_holds() {
        let mut q = Queue::default();
        q.held.insert("held".into());
        for i in 0..3 {
            q.ops.push_back(op("flip", true, i));
            q.ops.push_back(op("flip", false, i));
        }
        q.ops.push_back(op("held", false, 7));
        q.ops.push_back(op("held", true, 8));
        q.ops.push_back(op("new", true, 9));
        q.fold();
        assert_eq!(q.ops, [op("new", true, 9)]);
        assert_eq!(q.folded, 8);
        q.ops.push_back(op("held", false, 10));
        q.fold();
        assert_eq!(q.ops, [op("new", true, 9), op("held", false, 10)]);
    }

    #[test]
    fn a_fold_while_an_op_is_in_flight_counts_it_as_applied() {
        // Redis comes back with a pile: the add of "a" is on its way when the remove
        // behind it is folded. Against `held` alone the remove looks like no change and
        // would be dropped: "a" would stay occupied for good.
        let mut q = Queue {
            inflight: Some(op("a", true, 1)),
            ..Queue::default()
        };
        q.ops.push_back(op("a", false, 2));
        q.ops.push_back(op("b", true, 3));
        q.ops.push_back(op("b", false, 4));
        q.fold();
        assert_eq!(q.ops, [op("a", false, 2)]);
        // A queue of more rooms than the cap is not folded again on every push.
        let mut q = Queue::default();
        for i in 0..=QUEUE_CAP as u64 {
            q.push(op(&i.to_string(), true, i));
        }
        assert_eq!(q.fold_at, 2 * (QUEUE_CAP + 1));
        q.push(op("late", true, 0));
        assert_eq!((q.ops.len(), q.folded), (QUEUE_CAP + 2, 0));
    }
}
