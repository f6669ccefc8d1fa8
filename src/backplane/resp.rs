//! RESP2, the Redis protocol: commands out as arrays of bulk strings, replies in as
//! values. Sans-IO: bytes in, values out.

/// A reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Nil,
    Int(i64),
    /// A simple or bulk string.
    Str(Vec<u8>),
    /// An error reply (`-ERR …`).
    Err(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Str(b) => Some(b),
            _ => None,
        }
    }

    /// An integer, or a string holding one (Lua returns both).
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Int(n) => u64::try_from(*n).ok(),
            Value::Str(b) => std::str::from_utf8(b).ok()?.parse().ok(),
            _ => None,
        }
    }

    pub fn into_array(self) -> Option<Vec<Value>> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Appends the command `args` to `out`.
pub fn command(args: &[&[u8]], out: &mut Vec<u8>) {
    let mut n = itoa::Buffer::new();
    out.push(b'*');
    out.extend_from_slice(n.format(args.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    for a in args {
        out.push(b'$');
        out.extend_from_slice(n.format(a.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Deeper nesting than any reply roomcast asks for: refused rather than recursed into.
const MAX_DEPTH: usize = 8;

/// Parses one value from the front of `buf`: `Ok(None)` while it is incomplete, else the
/// value and the bytes it took. `Err`: not RESP (the connection is unusable).
pub fn parse(buf: &[u8]) -> Result<Option<(Value, usize)>, String> {
    parse_at(buf, 0, 0)
}

fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let end = buf.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
    Some((&buf[at..at + end], at + end + 2))
}

fn number(text: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| format!("bad RESP number {:?}", String::from_utf8_lossy(text)))
}

fn parse_at(buf: &[u8], at: usize, depth: usize) -> Result<Option<(Value, usize)>, String> {
    if depth > MAX_DEPTH {
        return Err("RESP nested too deep".into());
    }
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    let Some((text, next)) = line(buf, at + 1) else {
        return Ok(None);
    };
    let value = match kind {
        b'+' => Value::Str(text.to_vec()),
        b'-' => Value::Err(String::from_utf8_lossy(text).into_owned()),
        b':' => Value::Int(number(text)?),
        b'$' => {
            let len = number(text)?;
            if len < 0 {
                return Ok(Some((Value::Nil, next - at)));
            }
            let end = next + len as usize;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err("bulk string not followed by CRLF".into());
            }
            return Ok(Some((Value::Str(buf[next..end].to_vec()), end + 2 - at)));
        }
        b'*' => {
            let len = number(text)?;
            if len < 0 {
                return Ok(Some((Value::Nil, next - at)));
            }
            let mut items = Vec::with_capacity((len as usize).min(1024));
            let mut pos = next;
            for _ in 0..len {
                match parse_at(buf, pos, depth + 1)? {
                    Some((v, used)) => {
                        items.push(v);
                        pos += used;
                    }
                    None => return Ok(None),
                }
            }
            return Ok(Some((Value::Array(items), pos - at)));
        }
        other => return Err(format!("unknown RESP type byte {other:#x}")),
    };
    Ok(Some((value, next - at)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        command(&[b"SET", b"k", b"a b"], &mut out);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\na b\r\n");
    }

    #[test]
    fn replies_parse_whole_or_not_at_all() {
        let reply = b"*3\r\n:42\r\n$5\r\nab\r\nc\r\n*2\r\n$-1\r\n-ERR no\r\n+OK\r\n";
        let (v, used) = parse(reply).unwrap().unwrap();
        assert_eq!(used, reply.len() - 5);
        assert_eq!(
            v,
            Value::Array(vec![
                Value::Int(42),
                Value::Str(b"ab\r\nc".to_vec()),
                Value::Array(vec![Value::Nil, Value::Err("ERR no".into())]),
            ])
        );
        for cut in 0..used {
            assert_eq!(parse(&reply[..cut]).unwrap(), None, "cut at {cut}");
        }
        assert_eq!(
            parse(&reply[used..]).unwrap(),
            Some((Value::Str(b"OK".to_vec()), 5))
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse(b"?what\r\n").is_err());
        assert!(parse(b":12x\r\n").is_err());
        assert!(parse(b"$2\r\nabcd\r\n").is_err());
        let deep = "*1\r\n".repeat(20) + ":1\r\n";
        assert!(parse(deep.as_bytes()).is_err());
    }
}
