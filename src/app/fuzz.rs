//! Fuzz entry points for what the app parses from peers: the `/ws` JSON ops, the `/api`
//! request bodies and the `/sse` request. The cargo-fuzz targets in `fuzz/` call these,
//! and unit tests run them over the seed corpora in `fuzz/seeds/`, as
//! [`crate::protocol::fuzz`] does for frames and the handshake. The property they check: no
//! input panics, and whatever is accepted is what the rest of the app relies on (room
//! names that need no escaping, a `data` that is one JSON value spliced back unchanged,
//! a close reason that fits a close frame, a stream cursor that reads back as written).

use serde_json::value::RawValue;

use crate::gather::Ask;
use crate::protocol::handshake::{self, Parsed};
use crate::protocol::{encode, CloseCode, SharedFrame, Status};

use super::api;
use super::sse::{self, Pos, Sse};
use super::wire::{self, ClientOp, RoomOp};

/// The epochs rooms hand out (and `format_epoch` prints): 30 bits.
const EPOCH_BITS: u32 = (1 << 30) - 1;

/// One `/ws` text message: parsed as an op, and what a server makes of it encoded.
pub fn wire(data: &[u8]) {
    // The frame layer closes a connection that sends text that is not UTF-8 (1007).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match wire::parse(text) {
        Ok(ClientOp::Room(op)) => room_op(text, op),
        Ok(ClientOp::Auth { token } | ClientOp::Refresh { token }) => {
            let _ = wire::authed(&token, u64::MAX);
        }
        Ok(ClientOp::Rpc { method, data, id }) => {
            assert!(!method.is_empty() && method.len() <= wire::MAX_METHOD);
            // The op's `data` goes to the backend as sent; an answer's `data` comes back
            // spliced into an `rpc_result` that reads as JSON.
            let within = text.as_ptr() as usize..=text.as_ptr() as usize + text.len();
            assert!(data == "null" || within.contains(&(data.as_ptr() as usize)));
            let frame = wire::rpc_result(id, data);
            let b = frame.as_bytes();
            let start = match b[1] & 0x7F {
                126 => 4,
                127 => 10,
                _ => 2,
            };
            #[derive(serde::Deserialize)]
            struct Result<'a> {
                op: &'a str,
                id: u64,
                #[serde(borrow)]
                data: &'a RawValue,
            }
            let r: Result<'_> = serde_json::from_slice(&b[start..]).expect("rpc_result is JSON");
            assert_eq!((r.op, r.id, r.data.get()), ("rpc_result", id, data));
        }
        Err(e) => {
            let json = payload(&e.frame());
            assert_eq!(json["op"], "error");
            assert_eq!(json["code"], e.code);
            assert_eq!(json.get("id").and_then(|v| v.as_u64()), e.id);
        }
    }
}

fn room_op(text: &str, op: RoomOp<&str>) {
    let seq = text.len() as u64;
    match op {
        RoomOp::Join { room, since } => {
            assert!(wire::validate_room(&room).is_ok());
            let epoch = since.map_or(0, |(_, e)| e);
            let joined: serde_json::Value =
                serde_json::from_slice(&wire::joined_json(&room, seq, epoch, Some(false)))
                    .expect("joined is JSON");
            assert_eq!(joined["room"], &*room);
            let _ = wire::gap_json(&room, seq, u64::MAX);
        }
        RoomOp::Leave { room } | RoomOp::Presence { room } => {
            assert!(wire::validate_room(&room).is_ok());
            let _ = wire::left(&room);
        }
        RoomOp::Pub { room, data, id } => {
            assert!(wire::validate_room(&room).is_ok());
            // `data` is borrowed from the message, never re-serialized.
            let within = text.as_ptr() as usize..=text.as_ptr() as usize + text.len();
            assert!(within.contains(&(data.as_ptr() as usize)));
            spliced(&room, seq, data);
            if let Some(id) = id {
                let _ = wire::ack(id, seq);
            }
        }
    }
}

/// `data` spliced into a `msg` op (WebSocket and SSE) reads back as itself, and the SSE
/// event's `data:` stays one line.
fn spliced(room: &str, seq: u64, data: &str) {
    let mut json = Vec::new();
    wire::write_msg_json(room, seq, data, &mut json);
    assert_eq!(json.len(), wire::msg_json_len(room, seq, data));
    #[derive(serde::Deserialize)]
    struct Msg<'a> {
        room: &'a str,
        seq: u64,
        #[serde(borrow)]
        data: &'a RawValue,
    }
    let msg: Msg<'_> = serde_json::from_slice(&json).expect("a msg op is JSON");
    assert_eq!((msg.room, msg.seq, msg.data.get()), (room, seq, data));
    let mut frame = Vec::new();
    wire::write_msg(room, seq, data, &mut frame);
    assert!(frame.ends_with(&json));

    let mut event = Vec::new();
    sse::write_msg(room, 1, seq, data, true, &mut event);
    let body = event
        .strip_suffix(b"\n\n")
        .expect("an event ends with a blank line");
    let line = body
        .split(|&b| b == b'\n')
        .next_back()
        .expect("a data: line");
    let line = line
        .strip_prefix(b"data: ")
        .expect("the last line is data:");
    assert!(!line.contains(&b'\r'));
    // Syntax only, as the server checks `data`: a number past f64 (`1e999`) is valid
    // JSON, passed through as sent (caught by this target with serde_json::Value).
    serde_json::from_slice::<serde::de::IgnoredAny>(line).expect("the data: line is JSON");
}

/// One `/api` request body, as a publish, a broadcast and a disconnect.
pub fn api_body(data: &[u8]) {
    for broadcast in [false, true] {
        match api::publish_body(data, broadcast) {
            Ok((rooms, json)) => {
                assert!(!rooms.is_empty() && rooms.len() <= usize::from(u16::MAX));
                assert!(broadcast || rooms.len() == 1);
                for room in &rooms {
                    assert!(wire::validate_room(room).is_ok());
                }
                spliced(&rooms[0], 0, &json);
            }
            Err(refusal) => refused(refusal),
        }
    }
    match api::disconnect_body(data) {
        Ok(Ask::Disconnect { user, code, reason }) => {
            assert!(!user.is_empty());
            // What the shards then send: a close frame with this code and reason.
            assert!(CloseCode(code).is_valid_on_wire());
            let mut out = Vec::new();
            encode::write_close(CloseCode(code), &reason, &mut out);
            assert!(out.len() <= 2 + 125);
            assert_eq!(&out[2..4], &code.to_be_bytes());
            assert_eq!(&out[4..], reason.as_bytes(), "the reason fits whole");
        }
        Ok(other) => panic!("a disconnect body became {other:?}"),
        Err(refusal) => refused(refusal),
    }
}

fn refused((status, code, msg): api::Refusal) {
    assert!(matches!(
        status,
        Status::BadRequest | Status::PayloadTooLarge
    ));
    assert!(!code.is_empty() && !msg.is_empty());
}

/// A `GET /sse` request head (after a byte that sets `--max-rooms-per-conn`): its rooms
/// and where each resumes from `Last-Event-ID` (or `?lastEventId=`); the stream's cursor,
/// once joined, reads back as written.
pub fn sse(data: &[u8]) {
    let Some((&max, head)) = data.split_first() else {
        return;
    };
    let max = usize::from(max % 16) + 1;
    let req = match handshake::parse(head, 8192) {
        Ok(Some((Parsed::Plain(req), _))) => req,
        _ => return,
    };
    let rooms = match sse::asked_rooms(&req, max) {
        Ok(rooms) => rooms,
        Err(msg) => return assert!(!msg.is_empty()),
    };
    assert!(!rooms.is_empty() && rooms.len() <= max);
    for (i, room) in rooms.iter().enumerate() {
        assert!(wire::validate_room(room).is_ok());
        assert!(!rooms[..i].contains(room), "a room twice");
    }
    let query_id = req.query_value("lastEventId");
    let last = req.last_event_id.or(query_id.as_deref()).unwrap_or("");
    let resume = sse::parse_cursor(last);
    // Joined where each asked to resume (an owner answers with one of its epochs).
    let stream = Sse {
        rooms: rooms
            .iter()
            .map(|room| {
                let (seq, epoch) = sse::resume_since(&resume, last, room).unwrap_or((0, 0));
                Pos {
                    room: room.clone(),
                    epoch: epoch & EPOCH_BITS,
                    seq,
                    joined: true,
                }
            })
            .collect(),
    };
    let cursor = stream.cursor();
    assert!(!cursor.contains(['\n', '\r']), "an id: line stays one line");
    let read: Vec<_> = stream
        .rooms
        .iter()
        .map(|p| (&*p.room, p.epoch, p.seq))
        .collect();
    assert_eq!(sse::parse_cursor(&cursor), read);
    let _ = sse::id_block(&cursor);
}

/// The JSON payload of a short text frame built by the app.
fn payload(f: &SharedFrame) -> serde_json::Value {
    let b = f.as_bytes();
    let start = match b[1] & 0x7F {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    serde_json::from_slice(&b[start..]).expect("the app's frames are JSON")
}

#[cfg(test)]
mod tests {
    use crate::protocol::fuzz::seeds;

    #[test]
    fn wire_target_over_seed_corpus() {
        for seed in seeds("wire") {
            super::wire(&seed);
            for cut in 0..seed.len() {
                super::wire(&seed[..cut]);
            }
        }
    }

    #[test]
    fn api_target_over_seed_corpus() {
        for seed in seeds("api") {
            super::api_body(&seed);
            for cut in 0..seed.len() {
                super::api_body(&seed[..cut]);
            }
        }
    }

    #[test]
    fn sse_target_over_seed_corpus() {
        for seed in seeds("sse") {
            for first in [0u8, 1, 15] {
                let mut input = seed.clone();
                if let Some(b) = input.first_mut() {
                    *b = first;
                }
                super::sse(&input);
            }
        }
    }
}
