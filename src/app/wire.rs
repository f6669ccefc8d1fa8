//! The client protocol on `/ws`: JSON ops in text frames (see DESIGN.md).
//!
//! Parsing borrows from the received message and keeps `data` as raw JSON text, so what a
//! publisher sent is spliced into every delivery byte for byte and never re-serialized.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::protocol::{OpCode, SharedFrame};

/// The longest room name, in bytes.
pub const MAX_ROOM_NAME: usize = 128;
/// The longest RPC method name, in bytes.
pub const MAX_METHOD: usize = 128;

/// A room op a client asks for: parsed from a `/ws` message, or implied by the request
/// (`/ws?room=…`, `/sse?room=…`). `D` is the published data: borrowed from the read buffer
/// when parsed, shared (`Arc<str>`) once it is queued for the shard to carry out.
#[derive(Debug, PartialEq, Eq)]
pub enum RoomOp<D> {
    Join {
        room: Arc<str>,
        /// Resume after `(seq, epoch)`; an epoch that was not given (or is not one) is
        /// `u32::MAX`, which no room has: the join is then not recovered.
        since: Option<(u64, u32)>,
    },
    Leave {
        room: Arc<str>,
    },
    /// Who is in a room (members, and users when auth is on).
    Presence {
        room: Arc<str>,
    },
    Pub {
        room: Arc<str>,
        data: D,
        id: Option<u64>,
    },
}

impl<D> RoomOp<D> {
    /// The same op with its data turned by `f` (the one copy out of the read buffer).
    pub fn map_data<E>(self, f: impl FnOnce(D) -> E) -> RoomOp<E> {
        match self {
            RoomOp::Join { room, since } => RoomOp::Join { room, since },
            RoomOp::Leave { room } => RoomOp::Leave { room },
            RoomOp::Presence { room } => RoomOp::Presence { room },
            RoomOp::Pub { room, data, id } => RoomOp::Pub {
                room,
                data: f(data),
                id,
            },
        }
    }
}

/// One client op, as parsed.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientOp<'a> {
    Room(RoomOp<&'a str>),
    /// First-message authentication (when no token came with the handshake).
    Auth {
        token: std::borrow::Cow<'a, str>,
    },
    /// A fresh token before the current one expires (same `sub`).
    Refresh {
        token: std::borrow::Cow<'a, str>,
    },
    /// A call of the backend's `method` (`--hook-rpc`), answered by `rpc_result` or an
    /// error with the same `id`.
    Rpc {
        method: std::borrow::Cow<'a, str>,
        data: &'a str,
        id: u64,
    },
}

/// Why a message is not a valid op: answered with `{"op":"error"}`, the connection stays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpError {
    pub code: &'static str,
    pub msg: String,
    /// The op's `id`, when it had one: the error names it, as an `ack` would.
    pub id: Option<u64>,
}

impl OpError {
    fn new(code: &'static str, msg: impl Into<String>) -> OpError {
        OpError {
            code,
            msg: msg.into(),
            id: None,
        }
    }

    /// The error frame for the client.
    pub fn frame(&self) -> SharedFrame {
        error_id(self.code, &self.msg, self.id)
    }
}

#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(borrow)]
    op: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    room: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    id: Option<u64>,
    since: Option<u64>,
    #[serde(borrow)]
    epoch: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    token: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    method: Option<std::borrow::Cow<'a, str>>,
}

/// Parses one text message. Cost: one pass of serde_json over the message; `data` is not
/// parsed beyond finding where it ends.
pub fn parse(text: &str) -> Result<ClientOp<'_>, OpError> {
    let raw: Raw<'_> = serde_json::from_str(text)
        .map_err(|e| OpError::new("bad_json", format!("not a JSON op object: {e}")))?;
    let id = raw.id;
    parse_raw(raw).map_err(|e| OpError { id, ..e })
}

fn parse_raw(raw: Raw<'_>) -> Result<ClientOp<'_>, OpError> {
    let op = raw
        .op
        .ok_or_else(|| OpError::new("missing_field", "\"op\" is required"))?;
    let room = || -> Result<Arc<str>, OpError> {
        let room = raw
            .room
            .as_deref()
            .ok_or_else(|| OpError::new("missing_field", "\"room\" is required"))?;
        validate_room(room)?;
        Ok(Arc::from(room))
    };
    match &*op {
        "join" => {
            // `since` without the epoch it counts in cannot be honoured.
            let epoch = raw.epoch.as_deref().map_or(u32::MAX, parse_epoch);
            Ok(ClientOp::Room(RoomOp::Join {
                room: room()?,
                since: raw.since.map(|seq| (seq, epoch)),
            }))
        }
        "leave" => Ok(ClientOp::Room(RoomOp::Leave { room: room()? })),
        "presence" => Ok(ClientOp::Room(RoomOp::Presence { room: room()? })),
        "pub" => {
            let data = raw
                .data
                .ok_or_else(|| OpError::new("missing_field", "\"data\" is required"))?;
            Ok(ClientOp::Room(RoomOp::Pub {
                room: room()?,
                data: data.get(),
                id: raw.id,
            }))
        }
        "auth" | "refresh" => {
            let token = raw
                .token
                .ok_or_else(|| OpError::new("missing_field", "\"token\" is required"))?;
            Ok(if &*op == "auth" {
                ClientOp::Auth { token }
            } else {
                ClientOp::Refresh { token }
            })
        }
        "rpc" => {
            let id = raw
                .id
                .ok_or_else(|| OpError::new("missing_field", "\"id\" is required"))?;
            let method = raw
                .method
                .filter(|m| !m.is_empty() && m.len() <= MAX_METHOD)
                .ok_or_else(|| {
                    OpError::new(
                        "missing_field",
                        format!("\"method\" is required (1 to {MAX_METHOD} bytes)"),
                    )
                })?;
            Ok(ClientOp::Rpc {
                method,
                data: raw.data.map_or("null", RawValue::get),
                id,
            })
        }
        other => Err(OpError::new(
            "unknown_op",
            format!("unknown op {:?}", truncate(other, 32)),
        )),
    }
}

/// Room names are 1 to 128 bytes of `A-Z a-z 0-9 _ - . : @ / #`: nothing that needs
/// escaping in JSON, so a name is spliced into frames as it is.
pub fn validate_room(room: &str) -> Result<(), OpError> {
    if room.is_empty() || room.len() > MAX_ROOM_NAME {
        return Err(OpError::new(
            "invalid_room",
            format!("room names are 1 to {MAX_ROOM_NAME} bytes"),
        ));
    }
    let ok = |c: u8| c.is_ascii_alphanumeric() || b"_-.:@/#".contains(&c);
    if !room.bytes().all(ok) {
        return Err(OpError::new(
            "invalid_room",
            "room names use A-Z a-z 0-9 and _ - . : @ / #",
        ));
    }
    Ok(())
}

fn truncate(s: &str, max: usize) -> &str {
    let mut cut = s.len().min(max);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

/// The pieces of one `msg` op's JSON: the envelope around `data`, spliced in byte for byte.
fn msg_parts<'a>(room: &'a str, seq: &'a str, data: &'a str) -> [&'a [u8]; 7] {
    [
        b"{\"op\":\"msg\",\"room\":\"",
        room.as_bytes(),
        b"\",\"seq\":",
        seq.as_bytes(),
        b",\"data\":",
        data.as_bytes(),
        b"}",
    ]
}

/// Appends one `msg` frame for `room` to `out`: the header and the JSON envelope around
/// `data`, spliced in byte for byte. Batches of frames built this way are shared by every
/// member of the room. Cost: one copy of `data`.
pub fn write_msg(room: &str, seq: u64, data: &str, out: &mut Vec<u8>) {
    let mut seq_buf = itoa::Buffer::new();
    let parts = msg_parts(room, seq_buf.format(seq), data);
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut head = [0u8; crate::protocol::frame::MAX_HEADER_LEN];
    let n = crate::protocol::FrameHeader::server(OpCode::Text, len).format(&mut head);
    out.reserve(n + len);
    out.extend_from_slice(&head[..n]);
    for p in parts {
        out.extend_from_slice(p);
    }
}

/// The length of one `msg` op's JSON.
pub fn msg_json_len(room: &str, seq: u64, data: &str) -> usize {
    let mut seq_buf = itoa::Buffer::new();
    msg_parts(room, seq_buf.format(seq), data)
        .iter()
        .map(|p| p.len())
        .sum()
}

/// Appends one `msg` op's JSON (no frame header) to `out`: what a deflate encoding
/// compresses.
pub fn write_msg_json(room: &str, seq: u64, data: &str, out: &mut Vec<u8>) {
    let mut seq_buf = itoa::Buffer::new();
    for p in msg_parts(room, seq_buf.format(seq), data) {
        out.extend_from_slice(p);
    }
}

/// An epoch as clients see it: six characters of `0-9a-v` (30 bits).
pub fn format_epoch(epoch: u32) -> [u8; 6] {
    const DIGITS: &[u8; 32] = b"0123456789abcdefghijklmnopqrstuv";
    let mut out = [0u8; 6];
    for (i, c) in out.iter_mut().enumerate() {
        *c = DIGITS[((epoch >> (25 - 5 * i)) & 31) as usize];
    }
    out
}

/// The epoch a client sent back. Anything that is not one of ours becomes a value no room
/// has (`u32::MAX`): the resume is refused as for another epoch, not as bad input.
pub fn parse_epoch(text: &str) -> u32 {
    if text.len() != 6 {
        return u32::MAX;
    }
    text.bytes()
        .try_fold(0u32, |acc, c| {
            let d = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'v' => c - b'a' + 10,
                _ => return None,
            };
            Some(acc << 5 | u32::from(d))
        })
        .unwrap_or(u32::MAX)
}

/// `{"op":"joined","room":…,"seq":…,"epoch":…}`, with `"recovered":…` when the join
/// asked to resume.
pub fn joined_json(room: &str, seq: u64, epoch: u32, recovered: Option<bool>) -> Vec<u8> {
    let mut seq_buf = itoa::Buffer::new();
    let recovered: &[u8] = match recovered {
        None => b"}",
        Some(true) => b",\"recovered\":true}",
        Some(false) => b",\"recovered\":false}",
    };
    [
        b"{\"op\":\"joined\",\"room\":\"",
        room.as_bytes(),
        b"\",\"seq\":",
        seq_buf.format(seq).as_bytes(),
        b",\"epoch\":\"",
        &format_epoch(epoch),
        b"\"",
        recovered,
    ]
    .concat()
}

/// The `joined` op as a WebSocket frame.
pub fn joined(room: &str, seq: u64, epoch: u32, recovered: Option<bool>) -> SharedFrame {
    SharedFrame::new(OpCode::Text, &joined_json(room, seq, epoch, recovered))
}

/// `{"op":"gap","room":…,"from":…,"to":…}`: the slow-consumer policy skipped `from..=to`.
pub fn gap_json(room: &str, from: u64, to: u64) -> Vec<u8> {
    let (mut a, mut b) = (itoa::Buffer::new(), itoa::Buffer::new());
    [
        b"{\"op\":\"gap\",\"room\":\"",
        room.as_bytes(),
        b"\",\"from\":",
        a.format(from).as_bytes(),
        b",\"to\":",
        b.format(to).as_bytes(),
        b"}",
    ]
    .concat()
}

/// `{"op":"gap","room":…,"recovered":false}`: what was missed before a resume is gone.
pub fn lost_json(room: &str) -> Vec<u8> {
    [
        b"{\"op\":\"gap\",\"room\":\"",
        room.as_bytes(),
        b"\",\"recovered\":false}",
    ]
    .concat()
}

/// `{"op":"left","room":…}`
pub fn left(room: &str) -> SharedFrame {
    SharedFrame::from_parts(
        OpCode::Text,
        &[b"{\"op\":\"left\",\"room\":\"", room.as_bytes(), b"\"}"],
    )
}

/// `{"op":"ack","id":…,"seq":…}`
pub fn ack(id: u64, seq: u64) -> SharedFrame {
    let (mut a, mut b) = (itoa::Buffer::new(), itoa::Buffer::new());
    let parts: [&[u8]; 5] = [
        b"{\"op\":\"ack\",\"id\":",
        a.format(id).as_bytes(),
        b",\"seq\":",
        b.format(seq).as_bytes(),
        b"}",
    ];
    SharedFrame::from_parts(OpCode::Text, &parts)
}

/// `{"op":"authed","sub":…,"exp":…}`: a token from an `auth` or `refresh` op was accepted.
pub fn authed(sub: &str, exp: u64) -> SharedFrame {
    let sub = serde_json::to_string(sub).unwrap_or_else(|_| "\"\"".into());
    let mut exp_buf = itoa::Buffer::new();
    let parts: [&[u8]; 5] = [
        b"{\"op\":\"authed\",\"sub\":",
        sub.as_bytes(),
        b",\"exp\":",
        exp_buf.format(exp).as_bytes(),
        b"}",
    ];
    SharedFrame::from_parts(OpCode::Text, &parts)
}

/// `{"op":"authed","sub":…,"exp":…,"data":…}`: the connect hook said who this is (`exp`
/// 0: no expiry), with the backend's `data` for the client when it gave some.
pub fn identified(sub: &str, exp: u64, data: Option<&str>) -> SharedFrame {
    let sub = serde_json::to_string(sub).unwrap_or_else(|_| "\"\"".into());
    let mut exp_buf = itoa::Buffer::new();
    let (key, data): (&[u8], &[u8]) = match data {
        Some(d) => (b",\"data\":", d.as_bytes()),
        None => (b"", b""),
    };
    let parts: [&[u8]; 7] = [
        b"{\"op\":\"authed\",\"sub\":",
        sub.as_bytes(),
        b",\"exp\":",
        exp_buf.format(exp).as_bytes(),
        key,
        data,
        b"}",
    ];
    SharedFrame::from_parts(OpCode::Text, &parts)
}

/// `{"op":"rpc_result","id":…,"data":…}`: the backend's answer to an `rpc` op, spliced.
pub fn rpc_result(id: u64, data: &str) -> SharedFrame {
    let mut buf = itoa::Buffer::new();
    let parts: [&[u8]; 5] = [
        b"{\"op\":\"rpc_result\",\"id\":",
        buf.format(id).as_bytes(),
        b",\"data\":",
        data.as_bytes(),
        b"}",
    ];
    SharedFrame::from_parts(OpCode::Text, &parts)
}

/// `{"op":"error","code":…,"msg":…,"room":…}`: a join refused (the join hook said no, or
/// could not be asked); the room is named, as several joins may be waiting.
pub fn join_error(code: &str, msg: &str, room: &str) -> SharedFrame {
    let msg = serde_json::to_string(msg).unwrap_or_else(|_| "\"\"".into());
    let parts: [&[u8]; 7] = [
        b"{\"op\":\"error\",\"code\":\"",
        code.as_bytes(),
        b"\",\"msg\":",
        msg.as_bytes(),
        b",\"room\":\"",
        room.as_bytes(),
        b"\"}",
    ];
    SharedFrame::from_parts(OpCode::Text, &parts)
}

/// The error for an op sent before first-message auth.
pub fn unauthenticated(id: Option<u64>) -> SharedFrame {
    error_id(
        "unauthenticated",
        "send {\"op\":\"auth\",\"token\":…} first",
        id,
    )
}

/// `{"op":"error","code":"unavailable","msg":…,"id":…}`: a publish was not made because
/// the backplane cannot reach Redis.
/// `unknown`: `outcome_unknown` instead, for a publish written to Redis whose answer was
/// lost with the connection (it may have been published).
pub fn unavailable(id: Option<u64>, unknown: bool) -> SharedFrame {
    let mut buf = itoa::Buffer::new();
    let id: &[u8] = match id {
        Some(id) => buf.format(id).as_bytes(),
        None => b"null",
    };
    let what: &[u8] = if unknown {
        b"outcome_unknown\",\"msg\":\"the connection to Redis was lost before its answer: it may or may not have been published"
    } else {
        b"unavailable\",\"msg\":\"the backplane cannot reach Redis: not published"
    };
    let parts: [&[u8]; 5] = [
        b"{\"op\":\"error\",\"code\":\"",
        what,
        b"\",\"id\":",
        id,
        b"}",
    ];
    SharedFrame::from_parts(OpCode::Text, &parts)
}

/// `{"op":"error","code":"unavailable","msg":…,"room":…}`: a join the backplane could not
/// make (Redis is down); the client may join again later.
pub fn join_unavailable(room: &str) -> SharedFrame {
    SharedFrame::from_parts(
        OpCode::Text,
        &[
            b"{\"op\":\"error\",\"code\":\"unavailable\",\"msg\":\"the backplane cannot reach Redis: not joined\",\"room\":\"",
            room.as_bytes(),
            b"\"}",
        ],
    )
}

/// `{"op":"error","code":…,"msg":…}` with `msg` escaped as a JSON string.
pub fn error(code: &str, msg: &str) -> SharedFrame {
    error_id(code, msg, None)
}

/// [`error`] for an op that had an `id`: `…,"id":7}`.
pub fn error_id(code: &str, msg: &str, id: Option<u64>) -> SharedFrame {
    let msg = serde_json::to_string(msg).unwrap_or_else(|_| "\"\"".into());
    let mut buf = itoa::Buffer::new();
    let id: &[u8] = match id {
        Some(id) => buf.format(id).as_bytes(),
        None => b"",
    };
    let (sep, end): (&[u8], &[u8]) = if id.is_empty() {
        (b"", b"}")
    } else {
        (b",\"id\":", b"}")
    };
    let parts: [&[u8]; 7] = [
        b"{\"op\":\"error\",\"code\":\"",
        code.as_bytes(),
        b"\",\"msg\":",
        msg.as_bytes(),
        sep,
        id,
        end,
    ];
    SharedFrame::from_parts(OpCode::Text, &parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(f: &SharedFrame) -> serde_json::Value {
        let b = f.as_bytes();
        let start = if b[1] & 0x7F == 126 { 4 } else { 2 };
        serde_json::from_slice(&b[start..]).unwrap()
    }

    #[test]
    fn an_op_that_fails_names_its_id() {
        let e = parse(r#"{"op":"pub","room":"no spaces","data":1,"id":9}"#).unwrap_err();
        assert_eq!((e.code, e.id), ("invalid_room", Some(9)));
        assert_eq!(payload(&e.frame())["id"], 9);
        let e = parse(r#"{"op":"pub","room":"r"}"#).unwrap_err();
        assert_eq!(payload(&e.frame())["code"], "missing_field");
        assert!(payload(&e.frame()).get("id").is_none(), "no id, none named");
        assert_eq!(payload(&unavailable(Some(3), false))["id"], 3);
        assert_eq!(
            payload(&unavailable(None, false))["id"],
            serde_json::Value::Null
        );
        assert_eq!(payload(&unavailable(None, true))["code"], "outcome_unknown");
    }

    #[test]
    fn parses_the_three_ops() {
        assert_eq!(
            parse(r#"{"op":"join","room":"lobby","since":4}"#),
            Ok(ClientOp::Room(RoomOp::Join {
                room: "lobby".into(),
                since: Some((4, u32::MAX)),
            }))
        );
        assert_eq!(
            parse(r#"{"op":"leave","room":"a"}"#),
            Ok(ClientOp::Room(RoomOp::Leave { room: "a".into() }))
        );
        let data = r#"{"t": 1.50, "x":[1, "é\u00e9"]}"#;
        let text = format!(r#"{{"op":"pub","room":"r","data":{data},"id":7}}"#);
        match parse(&text).unwrap() {
            ClientOp::Room(RoomOp::Pub { room, data: d, id }) => {
                assert_eq!(
                    (&*room, d, id),
                    ("r", data, Some(7)),
                    "data is kept byte for byte"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_input_gets_a_named_error() {
        for (text, code) in [
            ("not json", "bad_json"),
            ("[1,2]", "bad_json"),
            (r#"{"room":"a"}"#, "missing_field"),
            (r#"{"op":"join"}"#, "missing_field"),
            (r#"{"op":"pub","room":"a"}"#, "missing_field"),
            (r#"{"op":"dance","room":"a"}"#, "unknown_op"),
            (r#"{"op":"join","room":""}"#, "invalid_room"),
            (r#"{"op":"join","room":"a\"b"}"#, "invalid_room"),
            (r#"{"op":"join","room":"a b"}"#, "invalid_room"),
        ] {
            assert_eq!(parse(text).unwrap_err().code, code, "{text}");
        }
        let long = format!(
            r#"{{"op":"join","room":"{}"}}"#,
            "a".repeat(MAX_ROOM_NAME + 1)
        );
        assert_eq!(parse(&long).unwrap_err().code, "invalid_room");
    }

    #[test]
    fn msg_frames_splice_data_unchanged() {
        let mut out = Vec::new();
        write_msg("lobby", 42, r#"{"b": 2.50,"a":1}"#, &mut out);
        let text = std::str::from_utf8(&out[2..]).unwrap();
        assert_eq!(
            text,
            r#"{"op":"msg","room":"lobby","seq":42,"data":{"b": 2.50,"a":1}}"#
        );
        assert_eq!(out[0], 0x81);
        assert_eq!(out[1] as usize, text.len());
    }

    #[test]
    fn server_ops_are_valid_json() {
        assert_eq!(
            payload(&joined("a", 3, 5, None)),
            serde_json::json!({"op":"joined","room":"a","seq":3,"epoch":"000005"})
        );
        assert_eq!(
            payload(&joined("a", 3, 5, Some(false))),
            serde_json::json!({"op":"joined","room":"a","seq":3,"epoch":"000005","recovered":false})
        );
        let gap: serde_json::Value = serde_json::from_slice(&gap_json("r", 50, 57)).unwrap();
        assert_eq!(
            gap,
            serde_json::json!({"op":"gap","room":"r","from":50,"to":57})
        );
        assert_eq!(
            payload(&ack(7, 9)),
            serde_json::json!({"op":"ack","id":7,"seq":9})
        );
        assert_eq!(
            payload(&left("a")),
            serde_json::json!({"op":"left","room":"a"})
        );
        let e = payload(&error("bad_json", "say \"hi\"\n"));
        assert_eq!(
            e,
            serde_json::json!({"op":"error","code":"bad_json","msg":"say \"hi\"\n"})
        );
    }

    #[test]
    fn epochs_round_trip_and_strangers_match_nothing() {
        for e in [
            0,
            1,
            31,
            32,
            crate::rooms::EPOCH_MASK,
            0x1234_5678 & crate::rooms::EPOCH_MASK,
        ] {
            let text = format_epoch(e);
            assert_eq!(parse_epoch(std::str::from_utf8(&text).unwrap()), e);
        }
        for bad in ["", "00000", "0000000", "00000w", "ABCDEF", "00 000"] {
            assert_eq!(parse_epoch(bad), u32::MAX, "{bad:?}");
        }
    }

    #[test]
    fn msg_json_len_is_the_length_written() {
        assert_eq!(msg_json_len("r/1", 5, "[1]"), {
            let mut j = Vec::new();
            write_msg_json("r/1", 5, "[1]", &mut j);
            j.len()
        });
    }
}
