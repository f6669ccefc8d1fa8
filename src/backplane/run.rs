//! The backplane's thread: its loop, its Redis connections, publishes and the rooms'
//! subscriptions and catch-ups.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::gather::{Answer, Publish, Reply};
use crate::mesh::Endpoint;
use sha1::{Digest, Sha1};

use crate::rooms::{owner_of, EPOCH_MASK};

use super::conn::Conn;
use super::resp::Value;
use super::scripts::{channel, keys, message, room_of, state, PUBLISH, SCRIPTS, SYNC};
use super::timers::refresh_every;
use super::*;

impl<M: Carrier> Backplane<M> {
    pub(super) fn new(cfg: Settings, mesh: Endpoint<M>, status: Arc<Status>) -> Backplane<M> {
        let now = Instant::now();
        let servers = cfg
            .targets
            .iter()
            .map(|t| Server {
                target: t.clone(),
                cmd: None,
                sub: None,
                inflight: VecDeque::new(),
                retry_at: now,
                next_ping: now,
                sub_ping: None,
                ready: [false; 2],
                backoff: BACKOFF_MIN,
                ever_up: false,
                ctl: false,
            })
            .collect();
        let shas = SCRIPTS
            .iter()
            .map(|s| {
                Sha1::digest(s.as_bytes())
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect()
            })
            .collect();
        Backplane {
            me: mesh.shard() as u16,
            mesh,
            status,
            servers,
            rooms: HashMap::new(),
            subs_pending: HashMap::new(),
            shas,
            rng: seed(),
            next_ctl: 1,
            ctl_waits: Vec::new(),
            gathers: Vec::new(),
            next_gather: 0,
            next_refresh: now + refresh_every(cfg.ttl_ms),
            size_arg: cfg.history_size.max(1).to_string(),
            ttl_arg: cfg.ttl_ms.max(1000).to_string(),
            cfg,
        }
    }

    pub(super) fn run(mut self) {
        let mut inbox = Vec::new();
        let mut fds: Vec<libc::pollfd> = Vec::new();
        // Which server and connection (0: commands, 1: pub/sub) each polled fd is.
        let mut polled: Vec<(usize, usize)> = Vec::new();
        loop {
            self.mesh.receive(&mut inbox);
            for msg in inbox.drain(..) {
                self.on_msg(msg);
            }
            let now = Instant::now();
            for i in 0..self.servers.len() {
                self.read(i);
                if self.servers[i].cmd.is_none() && now >= self.servers[i].retry_at {
                    self.connect(i, now);
                }
            }
            self.timers(now);
            for i in 0..self.servers.len() {
                self.write(i);
            }
            self.mesh.flush();

            fds.clear();
            polled.clear();
            let pfd = |fd, events| libc::pollfd {
                fd,
                events,
                revents: 0,
            };
            fds.push(pfd(self.mesh.wake_fd(), libc::POLLIN));
            for (i, s) in self.servers.iter().enumerate() {
                for (which, c) in [&s.cmd, &s.sub].into_iter().enumerate() {
                    if let Some(c) = c {
                        let out = if c.wants_write() { libc::POLLOUT } else { 0 };
                        fds.push(pfd(c.fd(), libc::POLLIN | out));
                        polled.push((i, which));
                    }
                }
            }
            let timeout = if self.mesh.prepare_sleep() { 50 } else { 0 };
            if let Err(e) = crate::sys::poll(&mut fds, timeout) {
                tracing::error!(error = %e, "backplane: poll failed");
                std::thread::sleep(Duration::from_millis(50));
            }
            self.mesh.awake();
            if fds[0].revents != 0 {
                self.mesh.consume_wake();
            }
            // Only sockets with something to say are read (no EAGAIN reads per turn).
            for (pfd, &(i, which)) in fds[1..].iter().zip(&polled) {
                if pfd.revents & !libc::POLLOUT != 0 {
                    self.servers[i].ready[which] = true;
                }
            }
        }
    }

    pub(super) fn server_of(&self, room: &str) -> usize {
        owner_of(room, self.servers.len())
    }

    pub(super) fn owner(&self, room: &str) -> usize {
        owner_of(room, self.cfg.shards)
    }

    pub(super) fn epoch_candidate(&mut self) -> u32 {
        self.rng = splitmix(self.rng);
        // Never 0: 0 means "not known yet" on the shards.
        ((self.rng as u32) & EPOCH_MASK).max(1)
    }

    pub(super) fn connect(&mut self, i: usize, now: Instant) {
        let status = &self.status;
        let s = &mut self.servers[i];
        let name = |role| format!("roomcast:{}:{role}", self.cfg.node.replace(' ', "_"));
        let conns = Conn::connect(&s.target, &name("cmd"))
            .and_then(|c| Ok((c, Conn::connect(&s.target, &name("sub"))?)));
        let (mut cmd, mut sub) = match conns {
            Ok(c) => c,
            Err(e) => {
                if s.backoff == BACKOFF_MIN {
                    tracing::warn!(redis = %s.target, error = %e, "backplane: cannot connect to Redis; retrying");
                }
                s.retry_at = now + s.backoff;
                s.backoff = (s.backoff * 2).min(BACKOFF_MAX);
                status.errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        for script in SCRIPTS {
            cmd.send(&[b"SCRIPT", b"LOAD", script.as_bytes()]);
            s.inflight.push_back((Pending::Ignore, now));
        }
        if i == 0 {
            sub.send(&[b"SUBSCRIBE", CTL]);
        }
        // Up once Redis answers (`answered`): the connects may still be under way.
        (s.cmd, s.sub) = (Some(cmd), Some(sub));
        (s.sub_ping, s.next_ping) = (None, now + KEEPALIVE);
        // Every room of this server subscribes again and catches up.
        let rooms: Vec<Arc<str>> = self
            .rooms
            .iter_mut()
            .filter(|(name, _)| owner_of(name, self.servers.len()) == i)
            .map(|(name, r)| {
                r.state = State::Subscribing;
                name.clone()
            })
            .collect();
        for chunk in rooms.chunks(SUBSCRIBE_CHUNK) {
            self.subscribe(i, chunk);
        }
    }

    /// Redis answered on server `i`'s command connection: it is up (the first answer after
    /// a connect: counted, logged, the backoff starts over).
    fn answered(&mut self, i: usize) {
        if self.status.up[i].swap(true, Ordering::Relaxed) {
            return;
        }
        let s = &mut self.servers[i];
        if s.ever_up {
            self.status.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        tracing::info!(redis = %s.target, "backplane: connected to Redis");
        (s.ever_up, s.backoff) = (true, BACKOFF_MIN);
    }

    pub(super) fn subscribe(&mut self, i: usize, rooms: &[Arc<str>]) {
        let Some(sub) = self.servers[i].sub.as_mut() else {
            return;
        };
        let chans: Vec<Vec<u8>> = rooms.iter().map(|r| channel(r)).collect();
        let mut args: Vec<&[u8]> = vec![b"SUBSCRIBE"];
        args.extend(chans.iter().map(Vec::as_slice));
        sub.send(&args);
        for r in rooms {
            *self.subs_pending.entry(r.clone()).or_default() += 1;
        }
    }

    /// Redis server `i` is gone: every command waiting for it fails, its rooms will
    /// subscribe again and catch up once it is back.
    pub(super) fn fail(&mut self, i: usize, why: &io::Error) {
        let now = Instant::now();
        let s = &mut self.servers[i];
        let was_up = self.status.up[i].swap(false, Ordering::Relaxed);
        if was_up {
            tracing::warn!(redis = %s.target, error = %why, "backplane: lost Redis; publishes to its rooms are refused until it is back");
        } else if s.backoff == BACKOFF_MIN {
            tracing::warn!(redis = %s.target, error = %why, "backplane: cannot connect to Redis; retrying");
        }
        (s.cmd, s.sub, s.ctl) = (None, None, false);
        s.retry_at = now + s.backoff;
        s.backoff = (s.backoff * 2).min(BACKOFF_MAX);
        self.status.errors.fetch_add(1, Ordering::Relaxed);
        let inflight = std::mem::take(&mut s.inflight);
        for (p, _) in inflight {
            // Sent on a connection that Redis had answered: it may have run.
            self.failed(p, was_up);
        }
        let n = self.servers.len();
        let mut unjoined = Vec::new();
        for (name, r) in self.rooms.iter_mut() {
            if owner_of(name, n) == i {
                r.state = State::Subscribing;
                if !r.known {
                    unjoined.push(name.clone());
                }
            }
        }
        // Rooms whose first joins still wait for their state: refused, not left hanging.
        for room in unjoined {
            self.rooms.remove(&room);
            let to = self.owner(&room);
            self.tell(to, Event::SubFailed { room });
        }
        // No confirmation will come on the lost connection, for rooms given up too.
        self.subs_pending.retain(|name, _| owner_of(name, n) != i);
        if i == 0 {
            // Nobody else will answer: the local counts stand.
            let waits = std::mem::take(&mut self.ctl_waits);
            for w in waits {
                self.tell(
                    usize::from(w.shard),
                    Event::Answer {
                        req: w.req,
                        answer: w.acc,
                    },
                );
            }
        }
    }

    /// A command that failed: refused by Redis, or (`lost`) written to a connection that
    /// was lost before the answer (then a publish's script may have run).
    pub(super) fn failed(&mut self, p: Pending, lost: bool) {
        match p {
            Pending::Publish {
                shard,
                slot,
                gen,
                reply,
                ..
            } => self.refuse(shard, slot, gen, reply, lost),
            Pending::Sync { room, fetch: true } => self.fetch_failed(room),
            Pending::Page { shard, req, .. } => self.tell(
                usize::from(shard),
                Event::Answer {
                    req,
                    answer: Answer::Unavailable {
                        index: 0,
                        unknown: false,
                    },
                },
            ),
            Pending::Sync { fetch: false, .. } | Pending::Ignore | Pending::Ctl { .. } => {}
        }
    }

    /// A resume's history cannot be read: the owner answers what it can (see
    /// `Owner::fetch_failed`). Not a [`Event::Synced`]: Redis's seq is not known, and a
    /// made-up one would let a join from ahead of this node be answered behind it.
    pub(super) fn fetch_failed(&mut self, room: Arc<str>) {
        let sub = self.rooms.get(&room).map_or(0, |r| r.sub);
        let to = self.owner(&room);
        self.tell(to, Event::FetchFailed { room, sub });
    }

    /// Hands `room`'s state from Redis to its owner, for the subscription it holds.
    pub(super) fn send_synced(
        &mut self,
        room: Arc<str>,
        (epoch, seq): (u32, u64),
        entries: Vec<(u64, Arc<str>)>,
        fetch: bool,
    ) {
        let sub = self.rooms.get(&room).map_or(0, |r| r.sub);
        let to = self.owner(&room);
        let msg = Event::Synced {
            room,
            epoch,
            seq,
            entries,
            fetch,
            sub,
        };
        self.tell(to, msg);
    }

    /// A publish that was not made (`unknown`: or whose outcome is unknown: it was written
    /// to Redis and the connection was lost before the answer).
    pub(super) fn refuse(&mut self, shard: u16, slot: u32, gen: u32, reply: Reply, unknown: bool) {
        self.status.refused.fetch_add(1, Ordering::Relaxed);
        let msg = match reply {
            Reply::None | Reply::Ack(_) => Event::Refused {
                slot,
                gen,
                id: match reply {
                    Reply::Ack(id) => Some(id),
                    _ => None,
                },
                unknown,
            },
            Reply::Api(req, index) => Event::Answer {
                req,
                answer: Answer::Unavailable { index, unknown },
            },
        };
        self.tell(usize::from(shard), msg);
    }

    /// Sends `event` to mesh endpoint `to` (a shard).
    pub(super) fn tell(&mut self, to: usize, event: Event) {
        self.mesh.send(to, M::from(event));
    }

    pub(super) fn on_msg(&mut self, msg: M) {
        let msg = match msg.into_request() {
            Ok(request) => request,
            Err(other) => return tracing::debug!(?other, "backplane: not a request"),
        };
        match msg {
            Request::Publish(Publish {
                room,
                data,
                shard,
                slot,
                gen,
                reply,
                notify,
                user,
            }) => {
                let notify = notify.then(|| Box::new((room.clone(), data.clone(), user)));
                let i = self.server_of(&room);
                let epoch = self.epoch_candidate().to_string();
                let up = self.status.up[i].load(Ordering::Relaxed);
                let s = &mut self.servers[i];
                // Not connected (or still connecting): refused now, not held.
                let Some(cmd) = s.cmd.as_mut().filter(|_| up) else {
                    return self.refuse(shard, slot, gen, reply, false);
                };
                let (m, st, ch) = keys(&room);
                cmd.send(&[
                    b"EVALSHA",
                    self.shas[PUBLISH].as_bytes(),
                    b"2",
                    &m,
                    &st,
                    epoch.as_bytes(),
                    data.as_bytes(),
                    self.size_arg.as_bytes(),
                    self.ttl_arg.as_bytes(),
                    &ch,
                ]);
                let p = Pending::Publish {
                    shard,
                    slot,
                    gen,
                    reply,
                    notify,
                };
                s.inflight.push_back((p, Instant::now()));
            }
            Request::Sub { room, after, sub } => {
                self.rooms.insert(
                    room.clone(),
                    Room {
                        state: State::Subscribing,
                        known: false,
                        epoch: 0,
                        last: 0,
                        first_after: after,
                        held: Vec::new(),
                        sub,
                    },
                );
                let i = self.server_of(&room);
                if self.servers[i].sub.is_none() {
                    // Its Redis is down: the joins waiting for the room are refused now
                    // rather than left unanswered.
                    self.rooms.remove(&room);
                    let to = self.owner(&room);
                    return self.tell(to, Event::SubFailed { room });
                }
                self.subscribe(i, &[room]);
                self.status
                    .rooms
                    .store(self.rooms.len() as u64, Ordering::Relaxed);
            }
            Request::Unsub { room } => {
                self.rooms.remove(&room);
                let i = self.server_of(&room);
                if let Some(sub) = self.servers[i].sub.as_mut() {
                    sub.send(&[b"UNSUBSCRIBE", &channel(&room)]);
                }
                self.status
                    .rooms
                    .store(self.rooms.len() as u64, Ordering::Relaxed);
            }
            Request::Fetch { room, after } => {
                if !self.sync(&room, Some(after), true) {
                    self.fetch_failed(room);
                }
            }
            Request::Presence { room, json } => {
                // To the other nodes, on the room's channel (no seq: not a message).
                let i = self.server_of(&room);
                let s = &mut self.servers[i];
                if let Some(cmd) = s.cmd.as_mut() {
                    // Named by node: this node's own subscription brings it back.
                    let payload = [b"p:", self.cfg.node.as_bytes(), b"\t", &json[..]].concat();
                    cmd.send(&[b"PUBLISH", &channel(&room), &payload]);
                    s.inflight.push_back((Pending::Ignore, Instant::now()));
                }
            }
            Request::Ask { shard, req, ask } => self.ask(shard, req, ask),
            Request::Answer { req, answer } => self.gathered(req, answer),
        }
    }

    /// Reads `room`'s state from Redis, with the messages after `after` (`None`: none).
    /// Returns false if its Redis is down.
    pub(super) fn sync(&mut self, room: &Arc<str>, after: Option<u64>, fetch: bool) -> bool {
        let i = self.server_of(room);
        let epoch = self.epoch_candidate().to_string();
        let (seen_epoch, seen_last) = match self.rooms.get(room).filter(|r| r.known) {
            Some(r) => (r.epoch.to_string(), r.last.to_string()),
            None => (String::new(), "0".to_string()),
        };
        let after = after.map_or_else(|| "-1".to_string(), |a| a.to_string());
        let s = &mut self.servers[i];
        let Some(cmd) = s.cmd.as_mut() else {
            return false;
        };
        let (m, st, _) = keys(room);
        cmd.send(&[
            b"EVALSHA",
            self.shas[SYNC].as_bytes(),
            b"2",
            &m,
            &st,
            epoch.as_bytes(),
            after.as_bytes(),
            self.size_arg.as_bytes(),
            self.ttl_arg.as_bytes(),
            seen_epoch.as_bytes(),
            seen_last.as_bytes(),
        ]);
        let p = Pending::Sync {
            room: room.clone(),
            fetch,
        };
        s.inflight.push_back((p, Instant::now()));
        true
    }

    /// Starts a subscribed room's catch-up: its state, and what it missed.
    pub(super) fn catch_up(&mut self, room: &Arc<str>) {
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        r.state = State::Syncing;
        let after = if r.known { Some(r.last) } else { r.first_after };
        if r.known {
            self.status.gaps.fetch_add(1, Ordering::Relaxed);
        }
        // If Redis is down, the reconnect subscribes again and starts over.
        self.sync(room, after, false);
    }

    pub(super) fn read(&mut self, i: usize) {
        let mut replies = Vec::new();
        let s = &mut self.servers[i];
        if let (Some(cmd), true) = (s.cmd.as_mut(), std::mem::take(&mut s.ready[0])) {
            if let Err(e) = cmd.read(&mut replies) {
                return self.fail(i, &e);
            }
        }
        if !replies.is_empty() {
            self.answered(i);
        }
        for v in replies {
            let Some((p, _)) = self.servers[i].inflight.pop_front() else {
                let e = io::Error::other("a reply nothing waited for");
                return self.fail(i, &e);
            };
            self.reply(i, p, v);
        }
        let mut pushes = Vec::new();
        let s = &mut self.servers[i];
        if let (Some(sub), true) = (s.sub.as_mut(), std::mem::take(&mut s.ready[1])) {
            if let Err(e) = sub.read(&mut pushes) {
                return self.fail(i, &e);
            }
        }
        for v in pushes {
            self.push(i, v);
        }
        let lag = self
            .servers
            .iter()
            .filter_map(|s| s.inflight.front().map(|(_, at)| at.elapsed().as_millis()))
            .max()
            .unwrap_or(0);
        self.status.lag_ms.store(lag as u64, Ordering::Relaxed);
    }

    pub(super) fn write(&mut self, i: usize) {
        let s = &mut self.servers[i];
        let r = [s.cmd.as_mut(), s.sub.as_mut()]
            .into_iter()
            .flatten()
            .try_for_each(Conn::write);
        if let Err(e) = r {
            self.fail(i, &e);
        }
    }

    /// A command's reply.
    pub(super) fn reply(&mut self, i: usize, p: Pending, v: Value) {
        if let Value::Err(e) = &v {
            tracing::warn!(redis = %self.servers[i].target, error = %e, "backplane: Redis refused a command");
            if let Pending::Sync { fetch: false, .. } = p {
                // A room that cannot be read would stay stuck: start over (reconnect,
                // subscribe, read again), with the reconnect's backoff.
                return self.fail(i, &io::Error::other(format!("a room's state: {e}")));
            }
            return self.failed(p, false);
        }
        match p {
            Pending::Ignore => {}
            Pending::Publish {
                shard,
                slot,
                gen,
                reply,
                notify,
            } => {
                let (seq, epoch) = match v.into_array().as_deref() {
                    Some([s, e]) => (s.as_u64(), e.as_u64()),
                    _ => (None, None),
                };
                let (Some(seq), Some(epoch)) = (seq, epoch) else {
                    return self.refuse(shard, slot, gen, reply, true);
                };
                self.status.published.fetch_add(1, Ordering::Relaxed);
                let to = usize::from(shard);
                let epoch = epoch as u32;
                if let Some(n) = notify {
                    let (room, data, user) = *n;
                    let published = Event::Published {
                        room,
                        epoch,
                        seq,
                        data,
                        user,
                    };
                    self.tell(to, published);
                }
                match reply {
                    Reply::None => {}
                    Reply::Ack(id) => self.tell(to, Event::Ack { slot, gen, id, seq }),
                    Reply::Api(req, index) => {
                        let epoch = Some(epoch);
                        let answer = Answer::Published { index, seq, epoch };
                        self.tell(to, Event::Answer { req, answer });
                    }
                }
            }
            Pending::Sync { room, fetch } => {
                let Some((epoch, seq, mut entries)) = state(v) else {
                    let e = io::Error::other("a room's state came back malformed");
                    if fetch {
                        self.fetch_failed(room);
                    }
                    return self.fail(i, &e);
                };
                entries.reverse();
                self.status
                    .recovered
                    .fetch_add(entries.len() as u64, Ordering::Relaxed);
                if fetch {
                    return self.send_synced(room, (epoch, seq), entries, true);
                }
                self.synced(room, epoch, seq, entries);
            }
            Pending::Page {
                room,
                shard,
                req,
                since,
            } => {
                let page = state(v).map(|(epoch, seq, messages)| crate::rooms::Page {
                    room,
                    epoch,
                    seq,
                    complete: since >= seq || messages.first().is_some_and(|m| m.0 == since + 1),
                    messages,
                });
                let answer = Answer::History(page);
                self.tell(usize::from(shard), Event::Answer { req, answer });
            }
            Pending::Ctl { id } => {
                // Every subscriber got it, ourselves included.
                let others = v.as_u64().unwrap_or(1).saturating_sub(1);
                if let Some(w) = self.ctl_waits.iter_mut().find(|w| w.id == id) {
                    w.expected = Some(others);
                }
                self.finish_ctl(false);
            }
        }
    }

    /// A subscribed room's state arrived: the owner gets it, then what was held.
    pub(super) fn synced(
        &mut self,
        room: Arc<str>,
        epoch: u32,
        seq: u64,
        entries: Vec<(u64, Arc<str>)>,
    ) {
        let Some(r) = self.rooms.get_mut(&room) else {
            // Unsubscribed meanwhile.
            return;
        };
        if r.state != State::Syncing {
            return;
        }
        (r.state, r.known, r.epoch, r.last) = (State::Live, true, epoch, seq);
        let held = std::mem::take(&mut r.held);
        self.send_synced(room.clone(), (epoch, seq), entries, false);
        // What Redis said is the truth: held messages of another epoch are stale.
        for (e, s, data) in held {
            if e == epoch {
                self.arrived(&room, e, s, data);
            }
        }
    }

    /// A message of `room` from its channel, in Redis's order.
    pub(super) fn arrived(&mut self, room: &Arc<str>, epoch: u32, seq: u64, data: Arc<str>) {
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        if r.state != State::Live {
            r.held.push((epoch, seq, data));
            return;
        }
        if epoch == r.epoch && seq <= r.last {
            return;
        }
        // Some were lost on the way (pub/sub keeps nothing), or the room started over in
        // Redis and this is not its first message: read the room from its stream. A new
        // epoch's first message is taken as it comes.
        if (epoch == r.epoch && seq > r.last + 1) || (epoch != r.epoch && seq != 1) {
            r.held.push((epoch, seq, data));
            return self.catch_up(room);
        }
        (r.epoch, r.last) = (epoch, seq);
        self.status.received.fetch_add(1, Ordering::Relaxed);
        let to = self.owner(room);
        let room = room.clone();
        self.tell(
            to,
            Event::Remote {
                room,
                epoch,
                seq,
                data,
            },
        );
    }

    /// Something on a subscriber connection: a confirmation or a message.
    pub(super) fn push(&mut self, i: usize, v: Value) {
        let Some(parts) = v.into_array() else {
            return;
        };
        let (Some(kind), Some(chan)) = (
            parts.first().and_then(Value::as_bytes),
            parts.get(1).and_then(Value::as_bytes),
        ) else {
            return;
        };
        if kind == b"pong" {
            self.servers[i].sub_ping = None;
            return;
        }
        if chan == CTL {
            match kind {
                b"subscribe" => self.servers[i].ctl = true,
                b"message" => {
                    if let Some(text) = parts.get(2).and_then(Value::as_bytes) {
                        self.control(text);
                    }
                }
                _ => {}
            }
            return;
        }
        let Some(room) = room_of(chan) else {
            return;
        };
        match kind {
            b"subscribe" => {
                let Some((name, &n)) = self.subs_pending.get_key_value(room) else {
                    return;
                };
                let name = name.clone();
                if n > 1 {
                    self.subs_pending.insert(name, n - 1);
                    return;
                }
                self.subs_pending.remove(&name);
                if self
                    .rooms
                    .get(&name)
                    .is_some_and(|r| r.state == State::Subscribing)
                {
                    self.catch_up(&name);
                }
            }
            b"message" => {
                let Some(payload) = parts.get(2).and_then(Value::as_bytes) else {
                    return;
                };
                let Some((name, _)) = self.rooms.get_key_value(room) else {
                    return;
                };
                let name = name.clone();
                if let Some(event) = payload.strip_prefix(b"p:") {
                    let Some(tab) = event.iter().position(|&b| b == b'\t') else {
                        return;
                    };
                    if &event[..tab] == self.cfg.node.as_bytes() {
                        return;
                    }
                    let json = &event[tab + 1..];
                    let to = self.owner(&name);
                    let json = Arc::from(json);
                    return self.tell(to, Event::Presence { room: name, json });
                }
                if let Some((epoch, seq, data)) = message(payload) {
                    self.arrived(&name, epoch, seq, Arc::from(data));
                }
            }
            _ => {}
        }
    }
}
