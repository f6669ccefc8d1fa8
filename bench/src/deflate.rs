//! permessage-deflate (RFC 7692) on the client side (`--deflate`): the offer, the checks
//! on the server's answer, and inflating the server's compressed messages.
//!
//! The bench offers what Chromium offers and insists on `server_no_context_takeover`:
//! every message then inflates on its own, so one inflater per process (reset per message,
//! its window kept) serves all of its connections, instead of ~40 KiB of zlib state per
//! connection. Its own messages it sends uncompressed, which RFC 7692 allows a sender to
//! do with any message: the client parameters the server asks for bind nothing here.

use std::fmt;

/// The `Sec-WebSocket-Extensions` the bench offers: Chromium's.
pub const OFFER: &str = "permessage-deflate; client_max_window_bits";

/// What the server agreed to, beyond the `server_no_context_takeover` it must send.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Agreed {
    /// The window the server compresses with (the inflater's 15 covers any).
    pub server_max_window_bits: Option<u8>,
    /// The window the server allows this client (unused: the bench never compresses).
    pub client_max_window_bits: Option<u8>,
    /// The server asks the client to reset its context per message (idem).
    pub client_no_context_takeover: bool,
}

impl fmt::Display for Agreed {
    /// The extension as the server agreed to it, in a fixed order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("permessage-deflate; server_no_context_takeover")?;
        if let Some(bits) = self.server_max_window_bits {
            write!(f, "; server_max_window_bits={bits}")?;
        }
        if self.client_no_context_takeover {
            f.write_str("; client_no_context_takeover")?;
        }
        if let Some(bits) = self.client_max_window_bits {
            write!(f, "; client_max_window_bits={bits}")?;
        }
        Ok(())
    }
}

/// Reads the extension the server agreed to out of its 101 response `head`, or says why it
/// cannot be used: absent (the server would send plain messages and the run would measure
/// plain), another extension, a parameter RFC 7692 does not define or gives twice, a
/// window out of 8..=15 (§7.1: the client must then fail the connection), or no
/// `server_no_context_takeover` (see the module doc).
pub fn agreed(head: &[u8]) -> Result<Agreed, String> {
    let head = String::from_utf8_lossy(head);
    let values: Vec<&str> = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(name, _)| name.trim().eq_ignore_ascii_case("sec-websocket-extensions"))
        .map(|(_, v)| v.trim())
        .collect();
    let [value] = values[..] else {
        return Err(if values.is_empty() {
            "the server did not agree to permessage-deflate: its 101 has no Sec-WebSocket-Extensions".to_owned()
        } else {
            format!(
                "the server's 101 has {} Sec-WebSocket-Extensions headers",
                values.len()
            )
        });
    };
    let mut params = value.split(';').map(str::trim);
    let name = params.next().unwrap_or("");
    if name != "permessage-deflate" {
        return Err(format!(
            "the server did not agree to permessage-deflate: it answered `{value}`"
        ));
    }
    let mut a = Agreed::default();
    let mut server_no_context_takeover = false;
    let mut seen = Vec::new();
    for p in params {
        let (key, val) = match p.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim().trim_matches('"'))),
            None => (p, None),
        };
        if seen.contains(&key) {
            return Err(format!("the server gave `{key}` twice in `{value}`"));
        }
        seen.push(key);
        let bits = || {
            val.and_then(|v| v.parse::<u8>().ok())
                .filter(|b| (8..=15).contains(b))
                .ok_or_else(|| format!("`{p}` in `{value}`: a window of 8 to 15 bits is due"))
        };
        match (key, val) {
            ("server_no_context_takeover", None) => server_no_context_takeover = true,
            ("client_no_context_takeover", None) => a.client_no_context_takeover = true,
            ("server_max_window_bits", _) => a.server_max_window_bits = Some(bits()?),
            ("client_max_window_bits", _) => a.client_max_window_bits = Some(bits()?),
            _ => {
                return Err(format!(
                    "`{p}` in `{value}` is not a permessage-deflate parameter"
                ))
            }
        }
    }
    if !server_no_context_takeover {
        return Err(format!(
            "the server keeps its compression context across messages (`{value}` has no server_no_context_takeover): the bench inflates every message on its own"
        ));
    }
    Ok(a)
}

/// Inflates the server's compressed messages one at a time (each on its own: see the
/// module doc) into one buffer it keeps: no allocation per message once that buffer holds
/// the largest. The server's own inflater does the work (a raw inflater with a 15-bit
/// window, which takes any window the server compresses with); the cost is zlib's per byte,
/// in the load generator's CPU (`client_busy`).
pub struct Inflater {
    z: roomcast::protocol::deflate::Inflater,
    out: Vec<u8>,
}

/// The largest message the bench inflates: far past any server's `--max-message`.
const MAX_MESSAGE: usize = 64 << 20;

impl Inflater {
    pub fn new() -> Inflater {
        Inflater {
            z: roomcast::protocol::deflate::Inflater::new(),
            out: Vec::with_capacity(4096),
        }
    }

    /// The message whose compressed payload (RSV1 set, the 4 trailing bytes stripped) is
    /// `payload`.
    pub fn inflate(&mut self, payload: &[u8]) -> std::io::Result<&[u8]> {
        self.z
            .inflate(payload, MAX_MESSAGE, &mut self.out)
            .map_err(|e| {
                std::io::Error::other(format!("a compressed message did not inflate: {e:?}"))
            })?;
        Ok(&self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(ext: &str) -> Vec<u8> {
        format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n{ext}\r\n").into_bytes()
    }

    #[test]
    fn the_servers_parameters_are_read() {
        let a = agreed(&head(
            "sec-websocket-extensions: permessage-deflate; server_no_context_takeover; client_max_window_bits=12; client_no_context_takeover\r\n",
        ))
        .unwrap();
        assert_eq!(
            a,
            Agreed {
                server_max_window_bits: None,
                client_max_window_bits: Some(12),
                client_no_context_takeover: true,
            }
        );
        assert_eq!(
            a.to_string(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; client_max_window_bits=12"
        );
        let a = agreed(&head(
            "Sec-WebSocket-Extensions: permessage-deflate;server_no_context_takeover;server_max_window_bits=\"10\"\r\n",
        ))
        .unwrap();
        assert_eq!(a.server_max_window_bits, Some(10));
    }

    #[test]
    fn an_answer_the_bench_cannot_use_is_refused() {
        for (ext, why) in [
            ("", "no Sec-WebSocket-Extensions"),
            ("Sec-WebSocket-Extensions: x-webkit-deflate-frame\r\n", "x-webkit"),
            (
                "Sec-WebSocket-Extensions: permessage-deflate\r\n",
                "keeps its compression context",
            ),
            (
                "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_max_window_bits\r\n",
                "8 to 15",
            ),
            (
                "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; server_max_window_bits=16\r\n",
                "8 to 15",
            ),
            (
                "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; server_no_context_takeover\r\n",
                "twice",
            ),
            (
                "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; level=9\r\n",
                "not a permessage-deflate parameter",
            ),
        ] {
            let e = agreed(&head(ext)).unwrap_err();
            assert!(e.contains(why), "{ext:?}: {e}");
        }
    }
}
