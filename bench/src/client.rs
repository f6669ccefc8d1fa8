//! The client engine's pieces: connecting (from many source addresses, offering
//! permessage-deflate with `--deflate`), pre-masked frames, and reading server frames out
//! of one reusable buffer with no allocation per message.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::deflate::{Agreed, Inflater};

/// Linux `IP_BIND_ADDRESS_NO_PORT`: bind the source address now, the port at connect time,
/// so the 4-tuple (not the source port alone) must be unique: far more connections per
/// source address.
const IP_BIND_ADDRESS_NO_PORT: libc::c_int = 24;

/// Source address for connection `i` when spreading over `n` (at most 253): 127.0.0.2,
/// 127.0.0.3, … 127.0.0.254.
pub fn source(i: usize, n: u8) -> IpAddr {
    let k = i % n.clamp(1, 253) as usize;
    IpAddr::from([127, 0, 0, 2 + k as u8])
}

/// Connects from `src` and completes the opening handshake on `path`.
pub async fn connect(server: SocketAddr, src: IpAddr, path: &str) -> std::io::Result<TcpStream> {
    handshake(server, src, path, false).await.map(|(s, _)| s)
}

/// Connects from `src` and completes the opening handshake on `path`; with `deflate`,
/// offers permessage-deflate ([`crate::deflate::OFFER`]) and fails unless the server
/// agreed in a way the bench can use ([`crate::deflate::agreed`]): a run asked to measure
/// compressed delivery must not measure plain.
pub async fn handshake(
    server: SocketAddr,
    src: IpAddr,
    path: &str,
    deflate: bool,
) -> std::io::Result<(TcpStream, Option<Agreed>)> {
    handshake_with(server, src, path, deflate, "").await
}

/// [`handshake`] with `extra` request header lines (each ending in `\r\n`), e.g. a
/// `Cookie:` for a connect hook. A refusal's error is the response's status line
/// (`HTTP/1.1 503 …`: see [`refusal_status`]).
pub async fn handshake_with(
    server: SocketAddr,
    src: IpAddr,
    path: &str,
    deflate: bool,
    extra: &str,
) -> std::io::Result<(TcpStream, Option<Agreed>)> {
    let socket = TcpSocket::new_v4()?;
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads an int from a valid pointer; the fd is the socket's own.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            IP_BIND_ADDRESS_NO_PORT,
            (&raw const one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    socket.bind(SocketAddr::new(src, 0))?;
    let stream = socket.connect(server).await?;
    stream.set_nodelay(true)?;
    let mut stream = crate::tls::wrap(stream).await?;
    let offer = if deflate {
        format!("Sec-WebSocket-Extensions: {}\r\n", crate::deflate::OFFER)
    } else {
        String::new()
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {server}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{offer}{extra}\r\n"
    );
    stream.write_all(req.as_bytes()).await?;
    // Peek until the head is complete, then take exactly the head: frames the server
    // sends right behind the 101 (a `joined`) stay in the socket for the frame reader.
    let mut head = [0u8; 1024];
    let len = loop {
        let n = stream.peek(&mut head).await?;
        if n == 0 {
            return Err(std::io::Error::other("closed during handshake"));
        }
        if let Some(end) = head[..n].windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        if n == head.len() {
            return Err(std::io::Error::other("handshake response too long"));
        }
        stream.readable().await?;
    };
    stream.read_exact(&mut head[..len]).await?;
    let head = &head[..len];
    if !head.starts_with(b"HTTP/1.1 101") {
        let line = String::from_utf8_lossy(head);
        return Err(std::io::Error::other(
            line.lines().next().unwrap_or("").to_owned(),
        ));
    }
    let agreed = if deflate {
        Some(crate::deflate::agreed(head).map_err(std::io::Error::other)?)
    } else {
        None
    };
    Ok((stream, agreed))
}

/// The HTTP status of a refused handshake, from [`handshake_with`]'s error (its status
/// line), if the server answered at all.
pub fn refusal_status(e: &std::io::Error) -> Option<u16> {
    let text = e.to_string();
    let rest = text.strip_prefix("HTTP/1.1 ")?;
    rest.get(..3)?.parse().ok()
}

/// A final text frame from the client (masked with the all-zero key: RFC 6455 allows any
/// key, and this one needs no masking pass).
pub fn text(payload: &[u8]) -> Vec<u8> {
    roomcast_bench::masked_frame(roomcast::protocol::OpCode::Text, payload, [0; 4])
}

/// Appends a final text frame (masked as [`text`]'s) to `out`: no allocation once `out`
/// has room for it.
pub fn push_text(payload: &[u8], out: &mut Vec<u8>) {
    roomcast::protocol::encode::write_client_frame(
        true,
        roomcast::protocol::OpCode::Text,
        payload,
        [0; 4],
        out,
    );
}

/// The pong a client owes for a ping with `payload`.
pub fn pong(payload: &[u8]) -> Vec<u8> {
    roomcast_bench::masked_frame(roomcast::protocol::OpCode::Pong, payload, [0; 4])
}

/// Reads server frames (unmasked) from a stream into one buffer.
pub struct Frames {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes read from the socket so far: what the connection cost on the wire (frame
    /// headers included, TCP/IP's not).
    received: u64,
}

/// One server frame: opcode, RSV1 and payload range in the buffer.
pub struct Frame {
    pub opcode: u8,
    /// RSV1: with permessage-deflate, the payload is a compressed message (see
    /// [`crate::deflate::Inflater`]); without, the server never sets it.
    pub rsv1: bool,
    pub payload: std::ops::Range<usize>,
}

impl Frames {
    pub fn new(capacity: usize) -> Frames {
        Frames {
            buf: vec![0; capacity],
            start: 0,
            end: 0,
            received: 0,
        }
    }

    /// The next complete frame already buffered.
    pub fn next(&mut self) -> Option<Frame> {
        let avail = &self.buf[self.start..self.end];
        if avail.len() < 2 {
            return None;
        }
        let (len, head) = match avail[1] & 0x7F {
            126 if avail.len() >= 4 => (u16::from_be_bytes([avail[2], avail[3]]) as usize, 4),
            127 if avail.len() >= 10 => (
                u64::from_be_bytes(avail[2..10].try_into().expect("8 bytes")) as usize,
                10,
            ),
            126 | 127 => return None,
            n => (n as usize, 2),
        };
        if avail.len() < head + len {
            return None;
        }
        let frame = Frame {
            opcode: avail[0] & 0x0F,
            rsv1: avail[0] & 0x40 != 0,
            payload: self.start + head..self.start + head + len,
        };
        self.start += head + len;
        Some(frame)
    }

    pub fn bytes(&self, range: std::ops::Range<usize>) -> &[u8] {
        &self.buf[range]
    }

    /// The message `f` carries: its payload, or inflated by `inflater` when RSV1 marks it
    /// compressed.
    pub fn message<'a>(
        &'a self,
        f: &Frame,
        inflater: &'a mut Inflater,
    ) -> std::io::Result<&'a [u8]> {
        let payload = &self.buf[f.payload.clone()];
        if f.rsv1 {
            inflater.inflate(payload)
        } else {
            Ok(payload)
        }
    }

    /// Bytes read from the socket so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Reads more from `s`; false at EOF or error. Keeps what is unconsumed.
    pub async fn fill(&mut self, s: &mut TcpStream) -> bool {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            let n = self.buf.len() * 2;
            self.buf.resize(n, 0);
        }
        matches!(s.read(&mut self.buf[self.end..]).await, Ok(n) if n > 0 && {
            self.end += n;
            self.received += n as u64;
            true
        })
    }
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process on the box, so a stamp
/// written by a publisher in one process is read by members in another.
pub fn mono_ns() -> u64 {
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: clock_gettime writes into the struct we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The first number inside `"data":[` in a `msg` op (bare, or in a string of digits):
/// the bench's send timestamp. A scan, no JSON parse and no allocation.
pub fn data_stamp(payload: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"data\":[";
    let mut at = payload.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    if payload.get(at) == Some(&b'"') {
        at += 1;
    }
    number_at(payload, at)
}

/// The decimal number that starts at `at`, if one does.
fn number_at(payload: &[u8], at: usize) -> Option<u64> {
    let mut v = 0u64;
    let mut digits = 0;
    for &b in payload.get(at..)? {
        if !b.is_ascii_digit() {
            break;
        }
        v = v.wrapping_mul(10).wrapping_add(u64::from(b - b'0'));
        digits += 1;
    }
    (digits > 0).then_some(v)
}

/// The number after `"seq":` in an op (`msg`, `joined`): the room's sequence number. A
/// scan, no JSON parse and no allocation; it comes before `data` in every op that has it.
pub fn op_seq(payload: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"seq\":";
    let at = payload.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    number_at(payload, at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_found_in_msg_ops() {
        let m = br#"{"op":"msg","room":"r","seq":4,"data":[123456,"pad"]}"#;
        assert_eq!(data_stamp(m), Some(123456));
        let m = br#"{"op":"msg","room":"r","seq":4,"data":["00000000000000123456","pad"]}"#;
        assert_eq!(data_stamp(m), Some(123456));
        assert_eq!(data_stamp(br#"{"op":"joined"}"#), None);
    }

    #[test]
    fn seqs_are_found_in_msg_and_joined_ops() {
        let m = br#"{"op":"msg","room":"r","seq":4,"data":["00000000000000123456","pad"]}"#;
        assert_eq!(op_seq(m), Some(4));
        let j = br#"{"op":"joined","room":"fan-0","seq":1234,"epoch":"abc"}"#;
        assert_eq!(op_seq(j), Some(1234));
        assert_eq!(op_seq(br#"{"op":"left","room":"r"}"#), None);
    }

    /// A server frame: final, text, RSV1 as given, unmasked.
    fn server_frame(rsv1: bool, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![if rsv1 { 0xC1 } else { 0x81 }];
        match payload.len() {
            n @ 0..=125 => f.push(n as u8),
            n => {
                f.push(126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        f.extend_from_slice(payload);
        f
    }

    /// What a server with server_no_context_takeover sends for `msg`: raw DEFLATE of it on
    /// a fresh context, sync-flushed, the flush's 4 trailing bytes stripped.
    fn deflated(msg: &[u8]) -> Vec<u8> {
        use flate2::{Compress, Compression, FlushCompress};
        let mut z = Compress::new(Compression::default(), false);
        let mut out = Vec::with_capacity(msg.len() + 64);
        z.compress_vec(msg, &mut out, FlushCompress::Sync).unwrap();
        assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
        out.truncate(out.len() - 4);
        out
    }

    #[tokio::test]
    async fn compressed_frames_inflate_to_their_message() {
        let quote = |i: usize| format!(r#"{{"sym":"S{i:03}","bid":101.{i:02},"vol":{}}}"#, i * 7);
        let quotes = |n: usize| (0..n).map(quote).collect::<Vec<_>>().join(",");
        let first = format!(
            r#"{{"op":"msg","room":"r","seq":1,"data":[{}]}}"#,
            quotes(40)
        );
        let second = format!(
            r#"{{"op":"msg","room":"r","seq":2,"data":[{}]}}"#,
            quotes(3)
        );
        let mut wire = server_frame(true, &deflated(first.as_bytes()));
        wire.extend(server_frame(false, br#"{"op":"ack"}"#));
        wire.extend(server_frame(true, &deflated(second.as_bytes())));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        server.write_all(&wire).await.unwrap();
        drop(server);
        // A small buffer, so frames straddle reads and the buffer grows.
        let mut frames = Frames::new(64);
        let mut inflater = Inflater::new();
        let mut got = Vec::new();
        while frames.fill(&mut client).await {
            while let Some(f) = frames.next() {
                let text = frames.message(&f, &mut inflater).unwrap();
                got.push((f.rsv1, String::from_utf8(text.to_vec()).unwrap()));
            }
        }
        let want = [
            (true, first.clone()),
            (false, r#"{"op":"ack"}"#.to_owned()),
            (true, second),
        ];
        assert_eq!(got, want);
        assert_eq!(frames.received(), wire.len() as u64);
        assert!(wire.len() < first.len() / 2, "deflate shrank the feed");
        assert_eq!(op_seq(got[0].1.as_bytes()), Some(1));
    }

    #[test]
    fn sources_cycle_over_loopback_addresses() {
        assert_eq!(source(0, 16), IpAddr::from([127, 0, 0, 2]));
        assert_eq!(source(17, 16), IpAddr::from([127, 0, 0, 3]));
        assert_eq!(source(252, 255), IpAddr::from([127, 0, 0, 254]));
    }
}
