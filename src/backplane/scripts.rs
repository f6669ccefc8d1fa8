//! The Lua scripts that make a room's order in Redis, the keys they use, and their
//! replies.

use std::sync::Arc;

use super::resp::Value;

/// A room in Redis: its epoch, its last seq, and messages `(seq, data)`.
pub(super) type State = (u32, u64, Vec<(u64, Arc<str>)>);

/// `KEYS`: the room's meta hash and stream. `ARGV`: an epoch to use if the room is new,
/// the data, the stream's length, the TTL (ms), the channel.
pub(super) const PUBLISH_LUA: &str = r"
local e = redis.call('HGET', KEYS[1], 'e')
if not e then
  e = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', e)
end
local s = redis.call('HINCRBY', KEYS[1], 's', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '0-' .. s, 'd', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('PUBLISH', ARGV[5], e .. ':' .. s .. ':' .. ARGV[2])
return {s, e}
";

/// The room's state, made if new: `{epoch, seq, newest entries after ARGV[2] (-1: none),
/// newest first}`. `ARGV`: an epoch for a new room, after, count, TTL (ms), and the epoch
/// and last seq this node already saw ('' and 0: none). A room whose seq went back in that
/// epoch lost writes (Redis restarted from an older snapshot): it starts over in a new
/// epoch, so no node mistakes the new messages for ones it had.
pub(super) const SYNC_LUA: &str = r"
local e = redis.call('HGET', KEYS[1], 'e')
local s = tonumber(redis.call('HGET', KEYS[1], 's') or '0')
if e and e == ARGV[5] and s < tonumber(ARGV[6]) then
  e = false
end
if not e then
  e = ARGV[1]
  s = 0
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', e, 's', 0)
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local entries = {}
if ARGV[2] ~= '-1' then
  entries = redis.call('XREVRANGE', KEYS[2], '+', '(0-' .. ARGV[2], 'COUNT', ARGV[3])
end
return {e, s, entries}
";

/// A page of history, read only: nil for a room Redis does not know, else `{epoch, seq,
/// oldest entries after ARGV[1]}`. `ARGV`: since, count.
pub(super) const PAGE_LUA: &str = r"
local e = redis.call('HGET', KEYS[1], 'e')
if not e then return false end
local s = redis.call('HGET', KEYS[1], 's') or '0'
return {e, s, redis.call('XRANGE', KEYS[2], '(0-' .. ARGV[1], '+', 'COUNT', ARGV[2])}
";

pub(super) const SCRIPTS: [&str; 3] = [PUBLISH_LUA, SYNC_LUA, PAGE_LUA];
pub(super) const PUBLISH: usize = 0;
pub(super) const SYNC: usize = 1;
pub(super) const PAGE: usize = 2;

/// The room's meta hash, stream and channel names. The braces are a hash tag: a Redis
/// Cluster would keep a room's keys together.
pub(super) fn keys(room: &str) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let key = |suffix: &str| format!("rc:{{{room}}}:{suffix}").into_bytes();
    (key("m"), key("s"), key("c"))
}

pub(super) fn channel(room: &str) -> Vec<u8> {
    keys(room).2
}

pub(super) fn room_of(chan: &[u8]) -> Option<&str> {
    let name = chan.strip_prefix(b"rc:{")?.strip_suffix(b"}:c")?;
    std::str::from_utf8(name).ok()
}

/// `epoch:seq:data` as the publish script sends it.
pub(super) fn message(payload: &[u8]) -> Option<(u32, u64, &str)> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut parts = text.splitn(3, ':');
    let epoch = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    Some((epoch, seq, parts.next()?))
}

/// `{epoch, seq, entries}` from the sync and page scripts: entries are `[id, [field,
/// data]]` with id `0-<seq>`.
pub(super) fn state(v: Value) -> Option<State> {
    let mut parts = v.into_array()?.into_iter();
    let epoch = parts.next()?.as_u64()? as u32;
    let seq = parts.next()?.as_u64()?;
    let mut entries = Vec::new();
    for e in parts.next()?.into_array()? {
        let mut e = e.into_array()?.into_iter();
        let id = e.next()?;
        let id = std::str::from_utf8(id.as_bytes()?).ok()?;
        let s = id.strip_prefix("0-")?.parse().ok()?;
        let fields = e.next()?.into_array()?;
        let data = std::str::from_utf8(fields.get(1)?.as_bytes()?).ok()?;
        entries.push((s, Arc::from(data)));
    }
    Some((epoch, seq, entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_payloads_round_trip() {
        let (m, s, c) = keys("lobby:1");
        assert_eq!(
            (&m[..], &s[..]),
            (&b"rc:{lobby:1}:m"[..], &b"rc:{lobby:1}:s"[..])
        );
        assert_eq!(room_of(&c), Some("lobby:1"));
        assert_eq!(room_of(b"other"), None);
        assert_eq!(
            message(b"77:12:{\"a\":\"x:y\"}"),
            Some((77, 12, "{\"a\":\"x:y\"}"))
        );
        assert_eq!(message(b"77:x:1"), None);
    }

    #[test]
    fn the_scripts_state_reply_parses() {
        let entry = |s: &str, d: &str| {
            Value::Array(vec![
                Value::Str(format!("0-{s}").into_bytes()),
                Value::Array(vec![Value::Str(b"d".to_vec()), Value::Str(d.into())]),
            ])
        };
        let v = Value::Array(vec![
            Value::Str(b"12345".to_vec()),
            Value::Str(b"9".to_vec()),
            Value::Array(vec![entry("9", "\"x\""), entry("8", "1")]),
        ]);
        let (e, s, entries) = state(v).unwrap();
        assert_eq!((e, s), (12345, 9));
        assert_eq!(entries, vec![(9, Arc::from("\"x\"")), (8, Arc::from("1"))]);
    }
}
