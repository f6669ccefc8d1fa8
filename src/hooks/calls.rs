//! Which call goes to the backend when, and who gets its answer: the in-flight cap, the
//! queue behind it, coalescing, the decision cache and each connection's publish order.
//! No I/O: the thread's loop ([`super::run`]) starts what [`Calls::start`] hands it and
//! reports back with [`Calls::done`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::status::{Outcome, Status};
use super::{wire, Call, Caller, Decided, Kind, Settings, Verdict};

/// Decisions kept at most (past it, expired ones are swept and new ones not kept).
const CACHE_LIMIT: usize = 100_000;
/// The longest a backend's `cache_ttl` is taken for (a day): "forever" is a day.
const MAX_CACHE_TTL: u64 = 86_400;
/// Calls waiting at most, over all connections (past it: unavailable at once).
const QUEUE_LIMIT: usize = 100_000;
/// Publishes one connection may have waiting on the backend.
const CHAIN_LIMIT: usize = 64;

/// A call to start: POST `body` to `url`, and give up at `deadline`.
#[derive(Debug)]
pub struct Start {
    pub id: u64,
    pub url: Arc<str>,
    pub body: Vec<u8>,
    pub deadline: Instant,
}

struct Job {
    kind: Kind,
    /// Everyone waiting for this answer (more than one: coalesced).
    waiters: Vec<(Caller, Call)>,
    /// Its question key, when it is a question (coalesced and cacheable).
    key: Option<String>,
    /// The refresh's user (kept if the backend does not name one).
    user: Option<Arc<str>>,
    body: Vec<u8>,
    deadline: Instant,
    started: Option<Instant>,
}

pub struct Calls {
    cfg: Settings,
    urls: HashMap<Kind, Arc<str>>,
    status: Arc<Status>,
    jobs: HashMap<u64, Job>,
    /// Jobs not started yet, oldest first.
    queue: VecDeque<u64>,
    /// Questions asked or queued: their job.
    asked: HashMap<String, u64>,
    cache: HashMap<String, (Verdict, Instant)>,
    /// Each connection's publishes after the one asked now, in the order it sent them.
    chains: HashMap<Caller, VecDeque<(Call, Instant)>>,
    inflight: usize,
    next_id: u64,
    /// Answers to hand back.
    pub out: Vec<Decided>,
}

impl Calls {
    pub fn new(cfg: Settings, status: Arc<Status>) -> Calls {
        let urls = Kind::ALL
            .iter()
            .filter_map(|&k| cfg.url(k).map(|u| (k, Arc::from(u))))
            .collect();
        Calls {
            cfg,
            urls,
            status,
            jobs: HashMap::new(),
            queue: VecDeque::new(),
            asked: HashMap::new(),
            cache: HashMap::new(),
            chains: HashMap::new(),
            inflight: 0,
            next_id: 0,
            out: Vec::new(),
        }
    }

    /// Calls in flight now.
    #[cfg(test)]
    pub fn inflight(&self) -> usize {
        self.inflight
    }

    /// A shard asks.
    pub fn ask(&mut self, from: Caller, call: Call, now: Instant) {
        let kind = call.kind();
        if !self.urls.contains_key(&kind) {
            // The shard asks only for hooks that are on; answer anyway.
            return self.answer(from, call, Verdict::Unavailable, kind);
        }
        let deadline = now + self.cfg.timeout;
        if let Call::Publish { .. } = call {
            // One publish per connection at the backend at a time, in order.
            if let Some(chain) = self.chains.get_mut(&from) {
                if chain.len() >= CHAIN_LIMIT {
                    return self.answer(from, call, Verdict::Unavailable, kind);
                }
                chain.push_back((call, deadline));
                return;
            }
            self.chains.insert(from, VecDeque::new());
            return self.enqueue(from, call, None, deadline);
        }
        let key = question_key(&call);
        if let Some(key) = &key {
            if let Some((verdict, until)) = self.cache.get(key) {
                if *until > now {
                    let verdict = verdict.clone();
                    self.status.cached(kind);
                    return self.answer(from, call, verdict, kind);
                }
                self.cache.remove(key);
            }
            if let Some(job) = self.asked.get(key).and_then(|id| self.jobs.get_mut(id)) {
                self.status.coalesced(kind);
                job.waiters.push((from, call));
                return;
            }
        }
        self.enqueue(from, call, key, deadline);
    }

    fn enqueue(&mut self, from: Caller, call: Call, key: Option<String>, deadline: Instant) {
        let kind = call.kind();
        if self.queue.len() >= QUEUE_LIMIT {
            return self.finish_chain_and_answer(from, call, Verdict::Unavailable, kind);
        }
        let id = self.next_id;
        self.next_id += 1;
        let user = match &call {
            Call::Refresh { user, .. } => Some(user.clone()),
            _ => None,
        };
        let body = wire::body(&call);
        if let Some(k) = &key {
            self.asked.insert(k.clone(), id);
        }
        self.jobs.insert(
            id,
            Job {
                kind,
                waiters: vec![(from, call)],
                key,
                user,
                body,
                deadline,
                started: None,
            },
        );
        self.queue.push_back(id);
        self.status.set_queued(self.queue.len());
    }

    /// The next call to start, if one may (under `--hook-max-inflight`). Calls that waited
    /// past their deadline are answered unavailable on the way.
    pub fn start(&mut self, now: Instant) -> Option<Start> {
        while self.inflight < self.cfg.max_inflight {
            let id = self.queue.pop_front()?;
            self.status.set_queued(self.queue.len());
            let Some(job) = self.jobs.get_mut(&id) else {
                continue;
            };
            if job.deadline <= now {
                self.status.timed_out_queued();
                self.settle(id, Verdict::Unavailable, 0, now);
                continue;
            }
            job.started = Some(now);
            self.inflight += 1;
            self.status.set_inflight(self.inflight);
            let url = self.urls[&job.kind].clone();
            return Some(Start {
                id,
                url,
                body: std::mem::take(&mut job.body),
                deadline: job.deadline,
            });
        }
        None
    }

    /// Answers, unavailable, the queued calls whose deadline passed (oldest first; a
    /// chained publish may be older than the queue's head: [`Calls::start`] catches it).
    pub fn expire(&mut self, now: Instant) {
        while let Some(&id) = self.queue.front() {
            if self.jobs.get(&id).is_some_and(|j| j.deadline > now) {
                break;
            }
            self.queue.pop_front();
            self.status.timed_out_queued();
            self.settle(id, Verdict::Unavailable, 0, now);
        }
        self.status.set_queued(self.queue.len());
        if self.cache.len() >= CACHE_LIMIT {
            self.cache.retain(|_, (_, until)| *until > now);
        }
    }

    /// The earliest deadline of a queued call (to wake for it).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.queue
            .front()
            .and_then(|id| self.jobs.get(id))
            .map(|j| j.deadline)
    }

    /// A started call ended: HTTP `status` and `body`, or `None` when it failed (refused
    /// connection, timeout).
    pub fn done(&mut self, id: u64, answer: Option<(u16, &[u8])>, now: Instant) {
        self.inflight -= 1;
        self.status.set_inflight(self.inflight);
        let Some(job) = self.jobs.get(&id) else {
            return;
        };
        if let Some(started) = job.started {
            self.status
                .latency(job.kind, now.saturating_duration_since(started));
        }
        let (verdict, ttl) = match answer {
            Some((status, body)) => wire::verdict(job.kind, status, body, job.user.as_ref()),
            None => (Verdict::Unavailable, 0),
        };
        self.settle(id, verdict, ttl, now);
    }

    /// Answers everyone waiting on job `id`, caches the verdict if asked to, and moves the
    /// publishers' chains on.
    fn settle(&mut self, id: u64, verdict: Verdict, ttl: u64, now: Instant) {
        let Some(job) = self.jobs.remove(&id) else {
            return;
        };
        if let Some(key) = job.key {
            self.asked.remove(&key);
            let answer = !matches!(verdict, Verdict::Unavailable);
            if ttl > 0 && answer && self.cache.len() < CACHE_LIMIT {
                // A day past now: far inside `Instant`'s range.
                let until = now + Duration::from_secs(ttl.min(MAX_CACHE_TTL));
                self.cache.insert(key, (verdict.clone(), until));
            }
        }
        for (from, call) in job.waiters {
            self.finish_chain_and_answer(from, call, verdict.clone(), job.kind);
        }
    }

    /// Answers `from`, and for a publish starts its connection's next one.
    fn finish_chain_and_answer(&mut self, from: Caller, call: Call, verdict: Verdict, kind: Kind) {
        let publish = matches!(call, Call::Publish { .. });
        self.answer(from, call, verdict, kind);
        if !publish {
            return;
        }
        let next = self.chains.get_mut(&from).and_then(VecDeque::pop_front);
        match next {
            Some((call, deadline)) => self.enqueue(from, call, None, deadline),
            None => {
                self.chains.remove(&from);
            }
        }
    }

    fn answer(&mut self, to: Caller, call: Call, mut verdict: Verdict, kind: Kind) {
        let outcome = match &verdict {
            Verdict::Unavailable
                if self.cfg.fail_open && matches!(kind, Kind::Join | Kind::Publish) =>
            {
                verdict = Verdict::Allow;
                Outcome::FailOpen
            }
            Verdict::Unavailable => Outcome::Unavailable,
            Verdict::Refused { .. } => Outcome::Refused,
            _ => Outcome::Allowed,
        };
        self.status.outcome(kind, outcome);
        self.out.push(Decided { to, call, verdict });
    }
}

/// What makes two calls the same question: a connect by what the backend is shown of it
/// (the client's address without its port), a join by user and room. Publishes and RPCs
/// are actions, never the same.
fn question_key(call: &Call) -> Option<String> {
    match call {
        Call::Connect {
            client,
            path,
            query,
            headers,
        } => {
            let mut key = format!("c\0{}\0{path}\0{query}", host(client));
            for (k, v) in headers {
                key.push('\0');
                key.push_str(k);
                key.push('\0');
                key.push_str(v);
            }
            Some(key)
        }
        // Without a user, the backend can only tell joiners apart by address.
        Call::Join {
            user, room, client, ..
        } => Some(match user {
            Some(u) => format!("j\0u{u}\0{room}"),
            None => format!("j\0\u{1}{}\0{room}", host(client)),
        }),
        Call::Refresh { .. } | Call::Publish { .. } | Call::Rpc { .. } => None,
    }
}

/// A client's `ip:port` without its port.
fn host(client: &str) -> &str {
    client.rsplit_once(':').map_or(client, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max_inflight: usize) -> Settings {
        Settings {
            join: Some("http://127.0.0.1:1/join".into()),
            publish: Some("http://127.0.0.1:1/publish".into()),
            timeout: Duration::from_secs(2),
            max_inflight,
            ..Settings::default()
        }
    }

    fn caller(slot: u32) -> Caller {
        Caller {
            shard: 0,
            slot,
            gen: 1,
        }
    }

    fn join(user: &str, room: &str, port: u16) -> Call {
        Call::Join {
            user: Some(Arc::from(user)),
            room: Arc::from(room),
            client: format!("127.0.0.1:{port}"),
            since: None,
        }
    }

    fn publish(n: u32) -> Call {
        Call::Publish {
            user: None,
            room: Arc::from("r"),
            data: Arc::from(n.to_string()),
            id: Some(u64::from(n)),
        }
    }

    #[test]
    fn the_same_question_is_asked_once_and_cached_when_told() {
        let mut c = Calls::new(settings(8), Arc::new(Status::default()));
        let now = Instant::now();
        for slot in 0..10 {
            c.ask(caller(slot), join("ann", "lobby", 1000 + slot as u16), now);
        }
        c.ask(caller(99), join("bob", "lobby", 1), now);
        let first = c.start(now).unwrap();
        let second = c.start(now).unwrap();
        assert!(c.start(now).is_none(), "two questions, two calls");
        c.done(first.id, Some((200, br#"{"cache_ttl":30}"#)), now);
        assert_eq!(c.out.len(), 10, "every tab gets the one answer");
        assert!(c.out.iter().all(|d| d.verdict == Verdict::Allow));
        c.out.clear();
        c.done(second.id, Some((200, br#"{"error":{"reason":"no"}}"#)), now);
        assert!(matches!(c.out[0].verdict, Verdict::Refused { .. }));
        c.out.clear();
        // Cached for 30 s: answered without a call; a refusal was not cached.
        c.ask(
            caller(5),
            join("ann", "lobby", 7),
            now + Duration::from_secs(29),
        );
        assert_eq!(c.out.len(), 1);
        assert!(c.start(now).is_none());
        c.ask(
            caller(5),
            join("ann", "lobby", 7),
            now + Duration::from_secs(31),
        );
        assert!(c.start(now).is_some(), "expired: asked again");
    }

    #[test]
    fn a_cache_ttl_of_forever_is_a_day_and_anonymous_joins_are_told_apart_by_address() {
        let mut c = Calls::new(settings(8), Arc::new(Status::default()));
        let now = Instant::now();
        c.ask(caller(1), join("ann", "lobby", 1), now);
        let call = c.start(now).unwrap();
        c.done(
            call.id,
            Some((200, br#"{"cache_ttl":18446744073709551615}"#)),
            now,
        );
        assert_eq!(c.out.len(), 1);
        c.out.clear();
        c.ask(
            caller(2),
            join("ann", "lobby", 2),
            now + Duration::from_secs(86_399),
        );
        assert!(c.start(now).is_none(), "cached");
        c.ask(
            caller(3),
            join("ann", "lobby", 3),
            now + Duration::from_secs(86_401),
        );
        assert!(c.start(now).is_some(), "a day at most");
        let anon = |host: &str, port: u16| Call::Join {
            user: None,
            room: Arc::from("r"),
            client: format!("{host}:{port}"),
            since: None,
        };
        assert_eq!(
            question_key(&anon("10.0.0.1", 1)),
            question_key(&anon("10.0.0.1", 2))
        );
        assert_ne!(
            question_key(&anon("10.0.0.1", 1)),
            question_key(&anon("10.0.0.2", 1))
        );
    }

    #[test]
    fn the_cap_holds_and_waiting_past_the_timeout_is_unavailable() {
        let mut c = Calls::new(settings(2), Arc::new(Status::default()));
        let now = Instant::now();
        for slot in 0..5 {
            c.ask(caller(slot), join(&slot.to_string(), "r", 1), now);
        }
        let a = c.start(now).unwrap();
        let _b = c.start(now).unwrap();
        assert!(c.start(now).is_none(), "never more than the cap in flight");
        assert_eq!(c.inflight(), 2);
        c.done(a.id, Some((200, b"{}")), now);
        assert!(c.start(now).is_some(), "a freed place is taken");
        c.expire(now + Duration::from_secs(3));
        let unavailable = c
            .out
            .iter()
            .filter(|d| d.verdict == Verdict::Unavailable)
            .count();
        assert_eq!(unavailable, 2, "the two still queued waited too long");
    }

    #[test]
    fn a_connections_publishes_go_one_at_a_time_in_order() {
        let mut c = Calls::new(settings(8), Arc::new(Status::default()));
        let now = Instant::now();
        for n in 0..3 {
            c.ask(caller(1), publish(n), now);
        }
        c.ask(caller(2), publish(9), now);
        let first = c.start(now).unwrap();
        let other = c.start(now).unwrap();
        assert!(
            c.start(now).is_none(),
            "the next of slot 1 waits for its first"
        );
        c.done(other.id, Some((200, b"{}")), now);
        c.done(first.id, Some((200, br#"{"data":"rewritten"}"#)), now);
        let second = c.start(now).unwrap();
        assert!(String::from_utf8_lossy(&second.body).contains("\"data\":1"));
        c.done(second.id, Some((500, b"")), now);
        let third = c.start(now).unwrap();
        c.done(third.id, None, now);
        let got: Vec<_> = c
            .out
            .iter()
            .map(|d| (d.to.slot, d.verdict.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (2, Verdict::Allow),
                (1, Verdict::Data(Arc::from("\"rewritten\""))),
                (1, Verdict::Unavailable),
                (1, Verdict::Unavailable),
            ]
        );
    }

    #[test]
    fn fail_open_lets_joins_and_publishes_through() {
        let mut cfg = settings(8);
        cfg.fail_open = true;
        cfg.connect = Some("http://127.0.0.1:1/c".into());
        let mut c = Calls::new(cfg, Arc::new(Status::default()));
        let now = Instant::now();
        c.ask(caller(1), join("a", "r", 1), now);
        c.ask(caller(2), publish(1), now);
        let connect = Call::Connect {
            client: "1.2.3.4:5".into(),
            path: "/ws".into(),
            query: String::new(),
            headers: vec![],
        };
        c.ask(caller(3), connect, now);
        while let Some(s) = c.start(now) {
            c.done(s.id, None, now);
        }
        let got: Vec<_> = c
            .out
            .iter()
            .map(|d| (d.to.slot, d.verdict.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, Verdict::Allow),
                (2, Verdict::Allow),
                (3, Verdict::Unavailable)
            ],
            "a connect never fails open"
        );
    }
}
