//! The app's side of the application's backend: what a shard asks the hooks thread
//! (connect, join, publish, RPC, refresh) and does with its answers, and what it tells the
//! webhooks. The shard never waits: a handshake waiting on the connect hook stays paused
//! with its request unread in its input, a join or publish waits as the call itself.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use crate::hooks::{self, Call, Caller, Decided, Identity, Verdict, What};
use crate::protocol::handshake::Request;
use crate::protocol::Status;
use crate::reactor::Cx;

use super::auth::{unix_now, Rights, Session};
use super::ws::{refuse, reply, L};
use super::{wire, App};

/// Which hooks are on and what the webhooks want to hear of (`[hooks]`).
#[derive(Clone, Debug, Default)]
pub struct HookUse {
    pub connect: bool,
    pub join: bool,
    pub publish: bool,
    pub rpc: bool,
    /// `--hook-forward-headers`, lowercased.
    pub forward_headers: Vec<String>,
    pub events: Events,
}

/// The webhook events some receiver wants (what is not wanted is not even sent to the
/// hooks thread).
#[derive(Clone, Copy, Debug, Default)]
pub struct Events {
    /// `room_occupied`, `room_vacated`.
    pub occupancy: bool,
    /// `member_joined`, `member_left`.
    pub members: bool,
    pub client_publish: bool,
    pub connection_closed: bool,
}

/// How long before a connect hook's `expire_at` the refresh hook is asked.
const REFRESH_LEAD_SECS: u64 = 30;

/// One shard's dealings with the backend.
#[derive(Debug)]
pub(super) struct Backend {
    pub use_: HookUse,
    /// The hooks thread's mesh endpoint.
    pub endpoint: usize,
    /// Handshakes asked about: slot → (generation, the answer once it came).
    handshakes: HashMap<u32, (u32, Option<Verdict>)>,
    /// Joins waiting on the join hook.
    joining: HashSet<(u32, Arc<str>)>,
    /// Client addresses, for the calls (only while some hook is on).
    clients: HashMap<u32, SocketAddr>,
    /// Connect-hook sessions to refresh: (when, slot, generation).
    refreshes: BinaryHeap<Reverse<(u64, u32, u32)>>,
    /// What the connect hook said, kept from the answer to the upgrade.
    identified: HashMap<u32, Identity>,
}

/// What the connect hook says of a handshake.
pub(super) enum Connect {
    /// No connect hook, or the connection brought a token.
    Off,
    /// Asked now (or earlier): the connection is paused until the answer.
    Wait,
    /// The backend says who it is.
    Identified(Session),
    /// Refused (answered already).
    Refused,
}

impl Backend {
    pub fn new(use_: HookUse, endpoint: usize) -> Backend {
        Backend {
            use_,
            endpoint,
            handshakes: HashMap::new(),
            joining: HashSet::new(),
            clients: HashMap::new(),
            refreshes: BinaryHeap::new(),
            identified: HashMap::new(),
        }
    }

    fn client(&self, slot: u32) -> String {
        self.clients
            .get(&slot)
            .map_or_else(String::new, ToString::to_string)
    }

    /// A connection opened in `slot` from `peer`.
    pub fn opened(&mut self, slot: u32, peer: Option<SocketAddr>) {
        if let Some(peer) = peer {
            self.clients.insert(slot, peer);
        }
    }

    /// The connection in `slot` closed.
    pub fn closed(&mut self, slot: u32) {
        self.clients.remove(&slot);
        self.handshakes.remove(&slot);
        self.identified.remove(&slot);
        self.joining.retain(|(s, _)| *s != slot);
    }

    /// A join of `room` by `slot` is waiting on the hook: a leave withdraws it.
    pub fn withdraw_join(&mut self, slot: u32, room: &Arc<str>) -> bool {
        self.joining.remove(&(slot, room.clone()))
    }

    /// What the connect hook said of `slot` at its handshake, for after the upgrade.
    pub fn take_identity(&mut self, slot: u32) -> Option<Identity> {
        self.identified.remove(&slot)
    }
}

impl App {
    fn ask(&mut self, cx: &mut Cx<App>, slot: usize, gen: u32, call: Call) {
        let Some(b) = &self.backend else { return };
        let from = Caller {
            shard: self.shard as u16,
            slot: slot as u32,
            gen,
        };
        let to = b.endpoint;
        cx.mesh()
            .send(to, hooks::Request::Call { from, call }.into());
    }

    /// Tells the webhooks that `what` happened.
    pub(super) fn tell_hooks(&self, cx: &mut Cx<App>, what: What) {
        let Some(b) = &self.backend else { return };
        let at_ms = hooks::unix_ms();
        let order = hooks::next_order();
        let h = hooks::Happening { at_ms, order, what };
        cx.mesh()
            .send(b.endpoint, hooks::Request::Happened(h).into());
    }

    /// The connect hook's part of admitting a handshake without a token. The first time,
    /// the backend is asked and the connection paused with its request unread; when the
    /// answer is in, the request is read again and this says what the answer was.
    pub(super) fn connect_hook(&mut self, link: L, req: &Request<'_>, head: &[u8]) -> Connect {
        let shard = self.shard as u16;
        let Some(b) = self.backend.as_mut().filter(|b| b.use_.connect) else {
            return Connect::Off;
        };
        let (slot, gen) = (link.slot() as u32, link.gen());
        match b.handshakes.get(&slot) {
            Some((g, None)) if *g == gen => return Connect::Wait,
            Some((g, Some(_))) if *g == gen => {}
            _ => {
                let headers = forwarded(head, &b.use_.forward_headers);
                let call = Call::Connect {
                    client: b.client(slot),
                    path: req.path.to_string(),
                    query: req.query.unwrap_or("").to_string(),
                    headers,
                };
                b.handshakes.insert(slot, (gen, None));
                let from = Caller { shard, slot, gen };
                self.pending_calls.push(hooks::Request::Call { from, call });
                link.pause();
                return Connect::Wait;
            }
        }
        let Some((_, Some(verdict))) = b.handshakes.remove(&slot) else {
            return Connect::Off;
        };
        match verdict {
            Verdict::Identity(id) => {
                let session = Session {
                    sub: id.user.clone(),
                    exp: if id.expire_at == 0 {
                        u64::MAX
                    } else {
                        id.expire_at
                    },
                    rights: all_rights(),
                };
                if id.expire_at > 0 {
                    let due = id.expire_at.saturating_sub(REFRESH_LEAD_SECS);
                    b.refreshes.push(Reverse((due, slot, gen)));
                }
                b.identified.insert(slot, id);
                Connect::Identified(session)
            }
            Verdict::Refused { code, reason } => {
                link.figures().auth_failures += 1;
                let status = match code {
                    401 => Status::Unauthorized,
                    _ => Status::Forbidden,
                };
                refuse(link, status, &reason);
                Connect::Refused
            }
            _ => {
                refuse(link, Status::ServiceUnavailable, "hook_unavailable");
                Connect::Refused
            }
        }
    }

    /// Sends the calls the connection being handled asked for (collected while its bytes
    /// were read, when the shard's mesh is not at hand).
    pub(super) fn send_calls(&mut self, cx: &mut Cx<App>) {
        let Some(b) = &self.backend else { return };
        let to = b.endpoint;
        for r in self.pending_calls.drain(..) {
            cx.mesh().send(to, r.into());
        }
    }

    /// A join that the join hook decides: asked now, carried out when allowed.
    /// Returns false if there is no join hook (join at once).
    pub(super) fn ask_join(
        &mut self,
        cx: &mut Cx<App>,
        slot: usize,
        gen: u32,
        room: Arc<str>,
        since: Option<(u64, u32)>,
    ) -> bool {
        let Some(b) = self.backend.as_mut().filter(|b| b.use_.join) else {
            return false;
        };
        let who = slot as u32;
        if !b.joining.insert((who, room.clone())) || self.members.local.is_member(&room, who) {
            super::service::reply_to(
                cx,
                slot,
                wire::error("already_joined", "already a member of that room"),
            );
            return true;
        }
        let client = b.client(who);
        let user = self.sessions.get(who).map(|s| s.sub.clone());
        let call = Call::Join {
            user,
            room,
            client,
            since,
        };
        self.ask(cx, slot, gen, call);
        true
    }

    /// A publish the publish hook decides first. Returns the publish back if there is no
    /// publish hook.
    pub(super) fn ask_publish(
        &mut self,
        cx: &mut Cx<App>,
        slot: usize,
        gen: u32,
        (room, data, id): (Arc<str>, Arc<str>, Option<u64>),
    ) -> Option<(Arc<str>, Arc<str>, Option<u64>)> {
        if !self.backend.as_ref().is_some_and(|b| b.use_.publish) {
            return Some((room, data, id));
        }
        let user = self.sessions.get(slot as u32).map(|s| s.sub.clone());
        let call = Call::Publish {
            user,
            room,
            data,
            id,
        };
        self.ask(cx, slot, gen, call);
        None
    }

    /// An `rpc` op: to the backend, or refused when there is no RPC hook.
    pub(super) fn ask_rpc(
        &mut self,
        cx: &mut Cx<App>,
        slot: usize,
        gen: u32,
        (method, data, id): (Arc<str>, Arc<str>, u64),
    ) {
        if !self.backend.as_ref().is_some_and(|b| b.use_.rpc) {
            let e = wire::error_id("rpc_disabled", "this server has no RPC hook", Some(id));
            return super::service::reply_to(cx, slot, e);
        }
        let user = self.sessions.get(slot as u32).map(|s| s.sub.clone());
        let call = Call::Rpc {
            user,
            method,
            data,
            id,
        };
        self.ask(cx, slot, gen, call);
    }

    /// Asks the connect hook again for connections whose `expire_at` nears.
    pub(super) fn refresh_sessions(&mut self, cx: &mut Cx<App>) {
        let Some(b) = self.backend.as_mut() else {
            return;
        };
        if b.refreshes.is_empty() {
            return;
        }
        let now = unix_now();
        let mut due = Vec::new();
        while let Some(&Reverse((at, slot, gen))) = b.refreshes.peek() {
            if at > now {
                break;
            }
            b.refreshes.pop();
            due.push((slot, gen));
        }
        for (slot, gen) in due {
            if cx.gen(slot as usize) != Some(gen) {
                continue;
            }
            let Some(user) = self.sessions.get(slot).map(|s| s.sub.clone()) else {
                continue;
            };
            let client = self
                .backend
                .as_ref()
                .map_or_else(String::new, |b| b.client(slot));
            self.ask(cx, slot as usize, gen, Call::Refresh { user, client });
        }
    }

    /// The backend answered.
    pub(super) fn on_hooks(&mut self, cx: &mut Cx<App>, d: Decided) {
        let Decided { to, call, verdict } = d;
        let (slot, gen) = (to.slot as usize, to.gen);
        if cx.gen(slot) != Some(gen) {
            // The connection is gone. A publish still goes on: the client sent it.
            if let (Call::Publish { room, data, .. }, Verdict::Allow | Verdict::Data(_)) =
                (call, &verdict)
            {
                let data = match verdict {
                    Verdict::Data(d) => d,
                    _ => data,
                };
                self.publish_now(cx, slot, gen, room, data, None);
            }
            return;
        }
        match call {
            Call::Connect { .. } => {
                if let Some(b) = self.backend.as_mut() {
                    b.handshakes.insert(to.slot, (gen, Some(verdict)));
                }
                cx.resume(slot, gen);
            }
            Call::Refresh { user, .. } => match verdict {
                Verdict::Identity(id) if id.user == user && id.expire_at > 0 => {
                    let exp = id.expire_at;
                    if let Some(b) = self.backend.as_mut() {
                        let due = exp.saturating_sub(REFRESH_LEAD_SECS).max(unix_now() + 1);
                        b.refreshes.push(Reverse((due, to.slot, gen)));
                    }
                    let session = Session {
                        sub: user,
                        exp,
                        rights: all_rights(),
                    };
                    self.sessions.expiries.push(Reverse((exp, to.slot, gen)));
                    self.sessions.insert(to.slot, session);
                }
                Verdict::Identity(id) if id.user == user => {
                    // No expiry any more.
                    let session = Session {
                        sub: user,
                        exp: u64::MAX,
                        rights: all_rights(),
                    };
                    self.sessions.insert(to.slot, session);
                }
                // Refused, unavailable or another user: the session ends at its expiry.
                _ => {}
            },
            Call::Join { room, since, .. } => {
                let waiting = self
                    .backend
                    .as_mut()
                    .is_some_and(|b| b.withdraw_join(to.slot, &room));
                if !waiting {
                    // Left (or closed) while the backend was asked.
                    return;
                }
                match verdict {
                    Verdict::Refused { reason, .. } => {
                        cx.figures().forbidden += 1;
                        super::service::reply_to(
                            cx,
                            slot,
                            wire::join_error("forbidden", &reason, &room),
                        );
                    }
                    Verdict::Unavailable => super::service::reply_to(
                        cx,
                        slot,
                        wire::join_error("unavailable", "the backend could not be asked", &room),
                    ),
                    _ => self.join_now(cx, slot, gen, room, since),
                }
            }
            Call::Publish { room, data, id, .. } => match verdict {
                Verdict::Refused { reason, .. } => {
                    cx.figures().forbidden += 1;
                    super::service::reply_to(cx, slot, wire::error_id("forbidden", &reason, id));
                }
                Verdict::Unavailable => super::service::reply_to(
                    cx,
                    slot,
                    wire::error_id(
                        "unavailable",
                        "the backend could not be asked: not published",
                        id,
                    ),
                ),
                Verdict::Data(rewritten) => self.publish_now(cx, slot, gen, room, rewritten, id),
                _ => self.publish_now(cx, slot, gen, room, data, id),
            },
            Call::Rpc { id, .. } => {
                let frame = match verdict {
                    Verdict::Data(data) => wire::rpc_result(id, &data),
                    Verdict::Refused { code, reason } => {
                        let code = if code == 0 { 403 } else { code };
                        rpc_error(id, code, &reason)
                    }
                    _ => wire::error_id("unavailable", "the backend could not be asked", Some(id)),
                };
                super::service::reply_to(cx, slot, frame);
            }
        }
    }
}

/// The headers of a request head that `names` lists, lowercased, in order (a header
/// repeated is forwarded joined with `, `, as HTTP allows).
fn forwarded(head: &[u8], names: &[String]) -> Vec<(String, String)> {
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut fields);
    if parsed.parse(head).is_err() {
        return Vec::new();
    }
    let mut out: Vec<(String, String)> = Vec::new();
    for h in parsed.headers.iter() {
        if !names.iter().any(|n| n.eq_ignore_ascii_case(h.name)) {
            continue;
        }
        let name = h.name.to_ascii_lowercase();
        let value = String::from_utf8_lossy(h.value).into_owned();
        match out.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => {
                v.push_str(", ");
                v.push_str(&value);
            }
            None => out.push((name, value)),
        }
    }
    out
}

/// `{"op":"error","code":"rpc_error","msg":…,"id":…,"status":…}`: the backend refused an
/// RPC with its own code.
fn rpc_error(id: u64, status: u16, reason: &str) -> crate::protocol::SharedFrame {
    let msg = serde_json::to_string(reason).unwrap_or_else(|_| "\"\"".into());
    let text = format!(
        "{{\"op\":\"error\",\"code\":\"rpc_error\",\"msg\":{msg},\"id\":{id},\"status\":{status}}}"
    );
    crate::protocol::SharedFrame::new(crate::protocol::OpCode::Text, text.as_bytes())
}

/// A connect-hook session may join and publish anywhere its hooks allow: the join and
/// publish hooks (when on) decide, not token claims.
fn all_rights() -> Arc<Rights> {
    static ALL: std::sync::OnceLock<Arc<Rights>> = std::sync::OnceLock::new();
    ALL.get_or_init(|| {
        Arc::new(Rights {
            join: vec!["*".into()],
            publish: vec!["*".into()],
        })
    })
    .clone()
}

/// After the upgrade of a connection the connect hook identified: the rooms it joins
/// server-side, and the backend's `data` for the client.
pub(super) fn after_upgrade(link: L, identity: &Identity) {
    let exp = identity.expire_at;
    reply(
        link,
        wire::identified(&identity.user, exp, identity.data.as_deref()),
    );
}
