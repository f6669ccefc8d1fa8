//! `GET /sse?room=a,b`: the rooms as a server-sent event stream (`text/event-stream`),
//! for clients that only listen (`EventSource` in a browser, `curl`).
//!
//! The stream is the `/ws` protocol's server half: each event's `data:` is the JSON op a
//! WebSocket member would get (`joined`, `msg`, `gap`), and its `event:` the op's name.
//! A room's batch is encoded once per turn for every stream on one room (each `msg` event
//! carries its own `id:`, so the encoding is the same for all of them) and once for every
//! stream on several rooms (no `id:` per event; a few bytes per stream follow the batch
//! with the stream's whole position, `id: a~<epoch>~<seq>,b~<epoch>~<seq>`). A reconnecting
//! `EventSource` sends the last id back as `Last-Event-ID`, and each room resumes from its
//! entry as a `join` with `since` would.

use std::sync::Arc;

use crate::protocol::handshake::Request;
use crate::protocol::{SharedFrame, Status};
use crate::reactor::Link;

use super::conn::{AppConn, Endpoint};
use super::encoding::Encoding;
use super::figures::Counts;
use super::slow::Tag;
use super::wire::RoomOp;
use super::ws::{refuse, Admit};
use super::{wire, App, Intent};

/// Where a stream stands in one of its rooms.
#[derive(Debug)]
pub struct Pos {
    pub room: Arc<str>,
    pub epoch: u32,
    /// The last seq the stream was given.
    pub seq: u64,
    /// Whether the owner has answered the join (the position means something).
    pub joined: bool,
}

/// An event stream's state: its rooms, in the order of the URL.
#[derive(Debug)]
pub struct Sse {
    pub rooms: Vec<Pos>,
}

impl Sse {
    pub fn encoding(&self) -> Encoding {
        if self.rooms.len() > 1 {
            Encoding::StreamMany
        } else {
            Encoding::StreamOne
        }
    }

    pub fn pos(&mut self, room: &str) -> Option<&mut Pos> {
        self.rooms.iter_mut().find(|p| &*p.room == room)
    }

    /// `a~<epoch>~<seq>,b~…` for the rooms joined so far.
    pub fn cursor(&self) -> String {
        let mut out = String::new();
        for p in self.rooms.iter().filter(|p| p.joined) {
            if !out.is_empty() {
                out.push(',');
            }
            push_pos(&mut out, &p.room, p.epoch, p.seq);
        }
        out
    }
}

fn push_pos(out: &mut String, room: &str, epoch: u32, seq: u64) {
    out.push_str(room);
    out.push('~');
    out.extend(wire::format_epoch(epoch).map(char::from));
    out.push('~');
    out.push_str(itoa::Buffer::new().format(seq));
}

/// The entries of a `Last-Event-ID`: `(room, epoch, seq)`; malformed entries are skipped
/// (that room then starts live, told it was not recovered).
pub fn parse_cursor(text: &str) -> Vec<(&str, u32, u64)> {
    text.split(',')
        .filter_map(|entry| {
            let mut parts = entry.trim().split('~');
            let (room, epoch, seq) = (parts.next()?, parts.next()?, parts.next()?);
            Some((room, wire::parse_epoch(epoch), seq.parse().ok()?))
        })
        .collect()
}

/// The rooms of `?room=a,b` (percent-decoded), each once, in the order given; or why the
/// request is refused (400): a name that is not one, no room, more than `max`.
pub(super) fn asked_rooms(req: &Request<'_>, max: usize) -> Result<Vec<Arc<str>>, String> {
    let mut rooms: Vec<Arc<str>> = Vec::new();
    let asked = req.query_value("room");
    for room in asked.iter().flat_map(|v| v.split(',')) {
        wire::validate_room(room).map_err(|e| e.msg)?;
        if !rooms.iter().any(|r| &**r == room) {
            rooms.push(Arc::from(room));
        }
    }
    if rooms.is_empty() {
        return Err("/sse needs ?room=<name>[,<name>…]".into());
    }
    if rooms.len() > max {
        return Err("too many rooms for one stream".into());
    }
    Ok(rooms)
}

/// Where `room` resumes from, given the entries of `last` (a `Last-Event-ID`) as
/// [`parse_cursor`] read them: `(seq, epoch)` as a `join`'s `since`.
pub(super) fn resume_since(
    resume: &[(&str, u32, u64)],
    last: &str,
    room: &str,
) -> Option<(u64, u32)> {
    resume
        .iter()
        .find(|(r, _, _)| *r == room)
        .map(|&(_, epoch, seq)| (seq, epoch))
        // A cursor that does not name this room still asked to resume.
        .or((!last.is_empty()).then_some((0, u32::MAX)))
}

/// Appends one `msg` event: `id:` (if `with_id`), `event: msg`, and the same JSON a
/// WebSocket member gets as `data:`. The publisher's JSON may hold raw line breaks
/// between tokens (never inside a string): they become spaces, as `data:` is one line.
pub fn write_msg(room: &str, epoch: u32, seq: u64, data: &str, with_id: bool, out: &mut Vec<u8>) {
    let mut seq_buf = itoa::Buffer::new();
    let seq = seq_buf.format(seq);
    if with_id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(room.as_bytes());
        out.push(b'~');
        out.extend_from_slice(&wire::format_epoch(epoch));
        out.push(b'~');
        out.extend_from_slice(seq.as_bytes());
        out.push(b'\n');
    }
    for part in [
        b"event: msg\ndata: {\"op\":\"msg\",\"room\":\"".as_slice(),
        room.as_bytes(),
        b"\",\"seq\":",
        seq.as_bytes(),
        b",\"data\":",
    ] {
        out.extend_from_slice(part);
    }
    let at = out.len();
    out.extend_from_slice(data.as_bytes());
    for b in &mut out[at..] {
        if *b == b'\n' || *b == b'\r' {
            *b = b' ';
        }
    }
    out.extend_from_slice(b"}\n\n");
}

/// One event: `event: <name>`, an optional `id:`, and `data: <json>`.
pub fn event(name: &str, id: Option<&str>, json: &[u8]) -> SharedFrame {
    let mut out = Vec::with_capacity(json.len() + 32 + id.map_or(0, str::len));
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    if let Some(id) = id {
        out.extend_from_slice(b"\nid: ");
        out.extend_from_slice(id.as_bytes());
    }
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(json);
    out.extend_from_slice(b"\n\n");
    SharedFrame::from_encoded(Arc::from(out))
}

/// A block that only moves the stream's last event id (no event is dispatched).
pub fn id_block(cursor: &str) -> SharedFrame {
    SharedFrame::from_encoded(Arc::from(format!("id: {cursor}\n\n").into_bytes()))
}

/// The heartbeat: a comment line (clients ignore it; proxies see traffic).
pub fn heartbeat() -> SharedFrame {
    SharedFrame::from_encoded(Arc::from(&b":\n\n"[..]))
}

/// What a draining server sends last.
pub fn goodbye() -> SharedFrame {
    event(
        "close",
        None,
        b"{\"op\":\"close\",\"reason\":\"server shutting down\"}",
    )
}

/// How long a browser waits before reconnecting a dropped stream (`retry:`), in ms.
const RETRY_MS: u32 = 1000;

impl App {
    /// `GET /sse`: checks the rooms and everything `/ws` checks at the handshake (drain,
    /// Origin, token, room rights, limits), then starts the stream and joins its rooms,
    /// resuming each from `Last-Event-ID` when the client sent one.
    pub(super) fn open_stream(
        &mut self,
        link: &mut Link<'_, AppConn, Tag, Counts>,
        req: &Request<'_>,
        head: &[u8],
    ) -> bool {
        let mut rooms = match asked_rooms(req, self.cfg.max_rooms_per_conn) {
            Ok(rooms) => rooms,
            Err(msg) => {
                refuse(link, Status::BadRequest, &msg);
                return true;
            }
        };
        let session = match self.admit(link, req, head, false) {
            Admit::Go(session) => session,
            Admit::Wait => return false,
            Admit::Refused => return true,
        };
        // Rooms the connect hook joins this client to, beside those it asked for.
        let identity = match &mut self.backend {
            Some(b) => b.take_identity(link.slot() as u32),
            None => None,
        };
        for room in identity.iter().flat_map(|id| &id.rooms) {
            if wire::validate_room(room).is_ok() && !rooms.contains(room) {
                rooms.push(room.clone());
            }
        }
        if let Some(s) = &session {
            if !rooms.iter().all(|r| s.rights.may_join(r)) {
                link.figures().forbidden += 1;
                self.release(link.app());
                self.front.gate.release_user(&s.sub);
                refuse(link, Status::Forbidden, "not allowed to join that room");
                return true;
            }
        }
        let query_id = req.query_value("lastEventId");
        let last = req.last_event_id.or(query_id.as_deref()).unwrap_or("");
        let resume = parse_cursor(last);
        let mut head = String::from(
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
             Connection: close\r\nX-Accel-Buffering: no\r\n",
        );
        if let Some(origin) = req.origin {
            // Allowed (admit checked it): a page from another origin may read the stream.
            head.push_str("Access-Control-Allow-Origin: ");
            head.push_str(origin);
            head.push_str("\r\nAccess-Control-Allow-Credentials: true\r\nVary: Origin\r\n");
        }
        head.push_str("\r\n");
        head.push_str(&format!("retry: {RETRY_MS}\n\n"));
        if link
            .send_control(SharedFrame::from_encoded(Arc::from(head.into_bytes())))
            .is_err()
        {
            link.abort();
            return true;
        }
        link.app().ep = Endpoint::Sse(Sse {
            rooms: rooms
                .iter()
                .map(|room| Pos {
                    room: room.clone(),
                    epoch: 0,
                    seq: 0,
                    joined: false,
                })
                .collect(),
        });
        link.figures().sse_opened += 1;
        link.start_heartbeat();
        link.establish();
        if let Some(s) = session {
            self.intents.push(Intent::Login(s));
        }
        for room in rooms {
            let since = resume_since(&resume, last, &room);
            self.intents
                .push(Intent::Room(RoomOp::Join { room, since }));
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_bad_entries_are_skipped() {
        let mut s = Sse {
            rooms: vec![
                Pos {
                    room: "a".into(),
                    epoch: 5,
                    seq: 41,
                    joined: true,
                },
                Pos {
                    room: "b/c".into(),
                    epoch: 0,
                    seq: 0,
                    joined: false,
                },
            ],
        };
        assert_eq!(s.cursor(), "a~000005~41", "b has not joined yet");
        let b = s.pos("b/c").unwrap();
        (b.epoch, b.joined) = (33, true);
        let text = s.cursor();
        assert_eq!(text, "a~000005~41,b/c~000011~0");
        assert_eq!(parse_cursor(&text), vec![("a", 5, 41), ("b/c", 33, 0)]);
        assert_eq!(
            parse_cursor("x~1~2, bad ,y~000001~nope,z~000002~3"),
            vec![("x", u32::MAX, 2), ("z", 2, 3)]
        );
        assert!(parse_cursor("").is_empty());
    }

    #[test]
    fn msg_events_are_one_line_of_the_ws_json() {
        let mut out = Vec::new();
        write_msg("r", 1, 7, "{\"a\":\r\n 1}", true, &mut out);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "id: r~000001~7\nevent: msg\ndata: {\"op\":\"msg\",\"room\":\"r\",\"seq\":7,\"data\":{\"a\":   1}}\n\n"
        );
    }
}
