//! The server API: `/api/…`, JSON over plain HTTP, for backends that publish, read history
//! and manage users without holding a WebSocket. Off unless `--api-key` is set (every
//! `/api/` request is then a 404); the key comes as `Authorization: apikey <key>`.
//!
//! A request is answered by its connection's shard once the shards concerned have: a
//! publish goes to the room's owner like a `/ws` `pub` and its seq comes back; history
//! asks the owner; presence, rooms and disconnect ask every shard and add up the answers.
//! One request per connection: the response closes it.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::protocol::handshake::{self, Request};
use crate::protocol::{CloseCode, SharedFrame, Status};
use crate::reactor::{Cx, Link};
use crate::rooms::owner_of;

use super::conn::{flag, AppConn};
use super::figures::Counts;
use super::slow::{end, Tag};
use super::{wire, Api, App};
use crate::gather::{Answer, Ask, Publish, Reply};

/// The most messages one history request returns.
pub const MAX_HISTORY_LIMIT: usize = 1000;

/// An API request waiting for its answers.
#[derive(Debug)]
pub struct Wait {
    /// The request's number on this shard: answers find it by that.
    req: u32,
    slot: u32,
    gen: u32,
    /// Answers still to come.
    left: usize,
    acc: Acc,
}

#[derive(Debug)]
enum Acc {
    Publish {
        rooms: Vec<Arc<str>>,
        /// `Err(unknown)`: not made (the backplane cannot reach Redis), or its outcome
        /// is unknown.
        results: Vec<Result<(u64, Option<u32>), bool>>,
        broadcast: bool,
    },
    History,
    Presence {
        room: Arc<str>,
        members: u64,
        users: BTreeSet<Arc<str>>,
        /// Asked by a WebSocket's `presence` op, not an API request.
        ws: bool,
    },
    Rooms(Vec<(Arc<str>, u64)>),
    Closed(u64),
}

#[derive(Deserialize)]
struct PublishBody<'a> {
    #[serde(borrow)]
    room: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    rooms: Option<Vec<std::borrow::Cow<'a, str>>>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct DisconnectBody {
    user: Option<String>,
    code: Option<u16>,
    reason: Option<String>,
}

type L<'a, 'b> = &'a mut Link<'b, AppConn, Tag, Counts>;

/// Why a request body is refused: the status, the error code and the message.
pub(super) type Refusal = (Status, &'static str, String);

fn refusal(status: Status, code: &'static str, msg: impl Into<String>) -> Refusal {
    (status, code, msg.into())
}

/// A publish (or, `broadcast`, a broadcast) body: its rooms, each a valid name, and its
/// `data`, copied once out of the request to be shared by every room's history and
/// delivery. Cost: one pass of serde_json; `data` is not parsed beyond finding its end.
pub(super) fn publish_body(
    body: &[u8],
    broadcast: bool,
) -> Result<(Vec<Arc<str>>, Arc<str>), Refusal> {
    let parsed: PublishBody<'_> = serde_json::from_slice(body)
        .map_err(|e| refusal(Status::BadRequest, "bad_json", e.to_string()))?;
    let rooms: Vec<std::borrow::Cow<'_, str>> = match (broadcast, parsed.room, parsed.rooms) {
        (false, Some(room), _) => vec![room],
        (true, _, Some(rooms)) if !rooms.is_empty() => rooms,
        (false, ..) => {
            let msg = "\"room\" is required";
            return Err(refusal(Status::BadRequest, "missing_field", msg));
        }
        (true, ..) => {
            let msg = "\"rooms\" must list rooms";
            return Err(refusal(Status::BadRequest, "missing_field", msg));
        }
    };
    if rooms.len() > usize::from(u16::MAX) {
        let msg = "too many rooms";
        return Err(refusal(Status::PayloadTooLarge, "too_large", msg));
    }
    for room in &rooms {
        wire::validate_room(room).map_err(|e| refusal(Status::BadRequest, e.code, e.msg))?;
    }
    let Some(data) = parsed.data else {
        let msg = "\"data\" is required";
        return Err(refusal(Status::BadRequest, "missing_field", msg));
    };
    let data: Arc<str> = Arc::from(data.get());
    let rooms: Vec<Arc<str>> = rooms.iter().map(|r| Arc::from(&**r)).collect();
    Ok((rooms, data))
}

/// A disconnect body: whom to close, with which code and reason.
pub(super) fn disconnect_body(body: &[u8]) -> Result<Ask, Refusal> {
    let parsed: DisconnectBody = serde_json::from_slice(body)
        .map_err(|e| refusal(Status::BadRequest, "bad_json", e.to_string()))?;
    let Some(user) = parsed.user.filter(|u| !u.is_empty()) else {
        let msg = "\"user\" is required";
        return Err(refusal(Status::BadRequest, "missing_field", msg));
    };
    let code = parsed.code.unwrap_or(4000);
    if !(code == 1000 || (3000..=4999).contains(&code)) {
        let msg = "code is 1000 or 3000-4999";
        return Err(refusal(Status::BadRequest, "invalid_code", msg));
    }
    let reason = parsed
        .reason
        .unwrap_or_else(|| "disconnected by the server".into());
    if reason.len() > 123 {
        let msg = "a close reason is at most 123 bytes";
        return Err(refusal(Status::BadRequest, "invalid_reason", msg));
    }
    Ok(Ask::Disconnect {
        user: Arc::from(user),
        code,
        reason: Arc::from(reason),
    })
}

/// The server API on a shard: what a request of the connection being handled asks of the
/// shards (sent right after), and the requests waiting for their answers.
#[derive(Default)]
pub(super) struct Requests {
    pub sends: Vec<Publish>,
    pub asks: Vec<(usize, u32, Ask)>,
    pub waits: Vec<Wait>,
    /// The number of the next API request on this shard.
    pub next_req: u32,
}

/// Answers with `status` and a JSON body, then closes.
fn respond(link: L, status: Status, body: &str) {
    let mut out = Vec::with_capacity(128 + body.len());
    let json = "application/json";
    handshake::http_response(status, json, "", body.as_bytes(), true, &mut out);
    link.finish(SharedFrame::from_encoded(Arc::from(out)));
}

/// `{"error":<code>,"msg":<msg>}` with `status`.
fn error(link: L, status: Status, code: &str, msg: &str) {
    let body = serde_json::json!({"error": code, "msg": msg}).to_string();
    respond(link, status, &body);
}

impl App {
    /// An `/api/` request whose head is in `buf[..head_len]`. Returns how many bytes were
    /// consumed: 0 while the body is still coming.
    pub(super) fn api(&mut self, link: L, req: &Request<'_>, head_len: usize, buf: &[u8]) -> usize {
        let Some(key) = self.cfg.api_key.clone() else {
            error(
                link,
                Status::NotFound,
                "not_found",
                "the server API is off (--api-key)",
            );
            return buf.len();
        };
        let given = req
            .authorization
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("apikey"))
            .map(|(_, k)| k.trim());
        if !given.is_some_and(|k| same(k.as_bytes(), key.as_bytes())) {
            link.figures().auth_failures += 1;
            error(
                link,
                Status::Unauthorized,
                "unauthorized",
                "send Authorization: apikey <key>",
            );
            return buf.len();
        }
        let post = req.method == "POST";
        let known = [
            ("/api/publish", true),
            ("/api/broadcast", true),
            ("/api/disconnect", true),
            ("/api/history", false),
            ("/api/presence", false),
            ("/api/rooms", false),
        ];
        let Some(&(_, wants_post)) = known.iter().find(|(p, _)| *p == req.path) else {
            error(link, Status::NotFound, "not_found", "no such API endpoint");
            return buf.len();
        };
        if post != wants_post {
            let allowed = if wants_post { "POST" } else { "GET" };
            error(
                link,
                Status::MethodNotAllowed,
                "method_not_allowed",
                &format!("use {allowed}"),
            );
            return buf.len();
        }
        let mut body: &[u8] = &[];
        if post {
            if req.transfer_encoding.is_some() {
                let msg = "send the body with Content-Length, not chunked";
                error(link, Status::LengthRequired, "length_required", msg);
                return buf.len();
            }
            let Some(len) = req.content_length.and_then(|v| v.parse::<usize>().ok()) else {
                error(
                    link,
                    Status::LengthRequired,
                    "length_required",
                    "Content-Length is required",
                );
                return buf.len();
            };
            if len > self.cfg.api_max_body {
                let msg = format!(
                    "bodies are at most {} bytes (--api-max-body)",
                    self.cfg.api_max_body
                );
                error(link, Status::PayloadTooLarge, "too_large", &msg);
                return buf.len();
            }
            if buf.len() < head_len + len {
                // Authorized and within the cap: the connection may hold the whole body.
                link.app().set(flag::API_BODY);
                return 0;
            }
            body = &buf[head_len..head_len + len];
        }
        link.app().set(flag::API_WAIT);
        match req.path {
            "/api/publish" | "/api/broadcast" => {
                self.api_publish(link, body, req.path == "/api/broadcast")
            }
            "/api/disconnect" => self.api_disconnect(link, body),
            "/api/history" => self.api_history(link, req),
            "/api/presence" => match req
                .query_value("room")
                .map(|r| wire::validate_room(&r).map(|()| Arc::from(&*r)))
            {
                Some(Ok(room)) => {
                    self.ask_presence(link, room, false);
                }
                Some(Err(e)) => error(link, Status::BadRequest, e.code, &e.msg),
                None => error(
                    link,
                    Status::BadRequest,
                    "missing_field",
                    "?room= is required",
                ),
            },
            _ => self.ask_all(link, Ask::Rooms, Acc::Rooms(Vec::new())),
        }
        buf.len()
    }

    /// Counts `room`'s members on every shard, for `/api/presence` or, `ws`, the
    /// `presence` op of a WebSocket (answered with `{"op":"presence",…}`).
    pub(super) fn ask_presence(&mut self, link: L, room: Arc<str>, ws: bool) {
        let acc = Acc::Presence {
            room: room.clone(),
            members: 0,
            users: BTreeSet::new(),
            ws,
        };
        self.ask_all(link, Ask::Presence { room }, acc);
    }

    fn api_publish(&mut self, link: L, body: &[u8], broadcast: bool) {
        let (rooms, data) = match publish_body(body, broadcast) {
            Ok(p) => p,
            Err((status, code, msg)) => return error(link, status, code, &msg),
        };
        let req = self.api.next_req;
        for (index, room) in rooms.iter().enumerate() {
            link.figures().published += 1;
            self.api.sends.push(Publish {
                room: room.clone(),
                data: data.clone(),
                shard: self.shard as u16,
                slot: link.slot() as u32,
                gen: link.gen(),
                reply: Reply::Api(req, index as u16),
                // A server API publish is the backend's own: not reported back to it.
                notify: false,
                user: None,
            });
        }
        let results = vec![Ok((0, None)); rooms.len()];
        self.wait(
            link,
            rooms.len(),
            Acc::Publish {
                rooms,
                results,
                broadcast,
            },
        );
    }

    fn api_history(&mut self, link: L, req: &Request<'_>) {
        let room = match req.query_value("room") {
            Some(r) => r,
            None => {
                return error(
                    link,
                    Status::BadRequest,
                    "missing_field",
                    "?room= is required",
                )
            }
        };
        if let Err(e) = wire::validate_room(&room) {
            return error(link, Status::BadRequest, e.code, &e.msg);
        }
        let number = |name: &str, default: u64| match req.query_param(name) {
            None => Some(default),
            Some(v) => v.parse::<u64>().ok(),
        };
        let (Some(since), Some(limit)) = (number("since", 0), number("limit", 100)) else {
            return error(
                link,
                Status::BadRequest,
                "bad_number",
                "since and limit are whole numbers",
            );
        };
        let limit = (limit as usize).min(MAX_HISTORY_LIMIT);
        let room: Arc<str> = Arc::from(&*room);
        // With a backplane the history is Redis's; else the owner's.
        let owner = if self.cfg.backplane {
            self.shards
        } else {
            owner_of(&room, self.shards)
        };
        let ask = Ask::History { room, since, limit };
        self.api.asks.push((owner, self.api.next_req, ask));
        self.wait(link, 1, Acc::History);
    }

    fn api_disconnect(&mut self, link: L, body: &[u8]) {
        let ask = match disconnect_body(body) {
            Ok(ask) => ask,
            Err((status, code, msg)) => return error(link, status, code, &msg),
        };
        self.ask_all(link, ask, Acc::Closed(0));
    }

    /// Asks every shard (ours included), and with a backplane the other nodes through
    /// it, and waits for all the answers.
    fn ask_all(&mut self, link: L, ask: Ask, acc: Acc) {
        let backplane = usize::from(self.cfg.backplane);
        for shard in 1..self.shards + backplane {
            let to = (self.shard + shard) % (self.shards + backplane);
            self.api.asks.push((to, self.api.next_req, ask.clone()));
        }
        self.api.asks.push((self.shard, self.api.next_req, ask));
        self.wait(link, self.shards + backplane, acc);
    }

    /// Records a request whose `left` answers are coming, under the next request number
    /// (the one its messages were sent with).
    fn wait(&mut self, link: L, left: usize, acc: Acc) {
        let req = self.api.next_req;
        self.api.next_req = self.api.next_req.wrapping_add(1);
        self.api.waits.push(Wait {
            req,
            slot: link.slot() as u32,
            gen: link.gen(),
            left,
            acc,
        });
    }

    /// Sends what API requests of this connection's input asked of the shards.
    pub(super) fn send_api(&mut self, cx: &mut Cx<App>) {
        for publish in std::mem::take(&mut self.api.sends) {
            self.send_publish(cx, publish);
        }
        let me = self.shard as u16;
        for (to, req, ask) in self.api.asks.drain(..) {
            let msg = if to == self.shards {
                // The backplane asks the other nodes and adds their answers up.
                crate::backplane::Request::Ask {
                    shard: me,
                    req,
                    ask,
                }
                .into()
            } else {
                Api::Ask {
                    shard: me,
                    req,
                    ask,
                }
                .into()
            };
            cx.mesh().send(to, msg);
        }
    }

    /// This shard's answer to an API request on `shard`.
    pub(super) fn on_ask(&mut self, cx: &mut Cx<App>, ask: Ask) -> Answer {
        match ask {
            Ask::History { room, since, limit } => {
                Answer::History(self.owner.rooms.page(&room, since, limit))
            }
            Ask::Presence { room } => {
                // Members on their way out (closing) no longer count.
                let mut present = Vec::new();
                for &slot in self.members.local.members(&room) {
                    if cx.link_any(slot as usize).is_some_and(|l| !l.is_closing()) {
                        present.push(slot);
                    }
                }
                let users = present
                    .iter()
                    .filter_map(|&slot| self.sessions.get(slot).map(|s| Arc::from(&*s.sub)))
                    .collect();
                Answer::Presence {
                    members: present.len() as u64,
                    users,
                }
            }
            Ask::Rooms => Answer::Rooms(self.owner.rooms.rooms()),
            Ask::Disconnect { user, code, reason } => {
                let slots = self.sessions.slots_of(&user);
                let mut closed = 0;
                for slot in slots {
                    if let Some(mut link) = cx.link_any(slot as usize) {
                        if !link.is_closing() {
                            closed += 1;
                            end(&mut link, CloseCode(code), &reason);
                        }
                    }
                }
                Answer::Closed(closed)
            }
        }
    }

    /// An answer for API request `req`: once all are in, the response.
    pub(super) fn on_answer(&mut self, cx: &mut Cx<App>, req: u32, answer: Answer) {
        let Some(i) = self.api.waits.iter().position(|w| w.req == req) else {
            return;
        };
        let w = &mut self.api.waits[i];
        let (slot, gen) = (w.slot, w.gen);
        w.left = w.left.saturating_sub(1);
        match (&mut w.acc, answer) {
            (Acc::Publish { results, .. }, Answer::Published { index, seq, epoch }) => {
                if let Some(r) = results.get_mut(usize::from(index)) {
                    *r = Ok((seq, epoch));
                }
            }
            (Acc::Publish { results, .. }, Answer::Unavailable { index, unknown }) => {
                if let Some(r) = results.get_mut(usize::from(index)) {
                    *r = Err(unknown);
                }
            }
            (Acc::History, Answer::Unavailable { .. }) => {
                let w = self.api.waits.swap_remove(i);
                if let Some(mut link) = cx.link(slot as usize, gen) {
                    unavailable(&mut link, false);
                }
                drop(w);
                return;
            }
            (
                Acc::Presence { members, users, .. },
                Answer::Presence {
                    members: m,
                    users: u,
                },
            ) => {
                *members += m;
                users.extend(u);
            }
            (Acc::Rooms(all), Answer::Rooms(mut r)) => all.append(&mut r),
            (Acc::Closed(n), Answer::Closed(m)) => *n += m,
            (Acc::History, Answer::History(page)) => {
                let w = self.api.waits.swap_remove(i);
                if let Some(mut link) = cx.link(slot as usize, gen) {
                    match page {
                        Some(p) => respond(&mut link, Status::Ok, &page_json(&p)),
                        None => error(
                            &mut link,
                            Status::NotFound,
                            "unknown_room",
                            "no such room: no members and no history",
                        ),
                    }
                }
                drop(w);
                return;
            }
            _ => {}
        }
        if w.left > 0 {
            return;
        }
        let w = self.api.waits.swap_remove(i);
        let Some(mut link) = cx.link(slot as usize, gen) else {
            return;
        };
        let body = match w.acc {
            Acc::Publish {
                rooms,
                results,
                broadcast,
            } => {
                let one = |room: &str, result: Result<(u64, Option<u32>), bool>| {
                    let (seq, epoch) = match result {
                        Ok(r) => r,
                        Err(unknown) => {
                            let code = if unknown {
                                "outcome_unknown"
                            } else {
                                "unavailable"
                            };
                            return serde_json::json!({"room": room, "error": code});
                        }
                    };
                    let epoch =
                        epoch.map(|e| String::from_utf8_lossy(&wire::format_epoch(e)).into_owned());
                    serde_json::json!({"room": room, "seq": seq, "epoch": epoch})
                };
                if results.iter().all(Result::is_err) {
                    // Nothing was published (or, with an unknown outcome, perhaps some).
                    let unknown = results.contains(&Err(true));
                    return unavailable(&mut link, unknown);
                }
                if broadcast {
                    let all: Vec<_> = rooms.iter().zip(results).map(|(r, x)| one(r, x)).collect();
                    serde_json::json!({ "results": all })
                } else {
                    let mut v = one(&rooms[0], results[0]);
                    v.as_object_mut().map(|o| o.remove("room"));
                    v
                }
            }
            Acc::Presence {
                room,
                members,
                users,
                ws,
            } => {
                let mut v = serde_json::json!({"room": &*room, "members": members});
                if self.sessions.required {
                    v["users"] = users
                        .iter()
                        .map(|u| serde_json::Value::from(&**u))
                        .collect();
                }
                if ws {
                    let text = format!("{{\"op\":\"presence\",{}", &v.to_string()[1..]);
                    let frame = SharedFrame::new(crate::protocol::OpCode::Text, text.as_bytes());
                    return super::ws::reply(&mut link, frame);
                }
                v
            }
            Acc::Rooms(mut all) => {
                all.sort();
                // The same room counted on several nodes: one entry, their sum.
                all.dedup_by(|later, first| {
                    let same = later.0 == first.0;
                    if same {
                        first.1 += later.1;
                    }
                    same
                });
                let rooms: Vec<_> = all
                    .iter()
                    .map(|(r, n)| serde_json::json!({"room": &**r, "members": n}))
                    .collect();
                serde_json::json!({ "rooms": rooms })
            }
            Acc::Closed(n) => serde_json::json!({ "closed": n }),
            Acc::History => return,
        };
        respond(&mut link, Status::Ok, &body.to_string());
    }
}

/// `{"room":…,"epoch":…,"seq":…,"complete":…,"messages":[{"seq":…,"data":<as sent>},…]}`,
/// each `data` spliced in as it was published.
fn page_json(p: &crate::rooms::Page) -> String {
    let epoch = wire::format_epoch(p.epoch);
    let mut out = format!(
        "{{\"room\":\"{}\",\"epoch\":\"{}\",\"seq\":{},\"complete\":{},\"messages\":[",
        p.room,
        String::from_utf8_lossy(&epoch),
        p.seq,
        p.complete
    );
    for (i, (seq, data)) in p.messages.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!("{{\"seq\":{seq},\"data\":{data}}}"));
    }
    out.push_str("]}");
    out
}

/// 503: the backplane cannot reach Redis (`unknown`: it lost the connection after the
/// publish was sent: it may have been made).
fn unavailable(link: L, unknown: bool) {
    if unknown {
        let msg = "the connection to Redis was lost before its answer: the publish may or may not have been made";
        return error(link, Status::ServiceUnavailable, "outcome_unknown", msg);
    }
    let msg = "the backplane cannot reach Redis; nothing was done, retry later";
    error(link, Status::ServiceUnavailable, "unavailable", msg);
}

/// Compares a key in time that does not depend on where the first difference is
/// (`subtle`'s `ConstantTimeEq`; only a length mismatch returns early, and the length is
/// no secret worth guarding). Not `ring::constant_time`: ring 0.17 deprecates it as an
/// internal function "with no promises regarding side channels".
fn same(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq as _;
    bool::from(a.ct_eq(b))
}
