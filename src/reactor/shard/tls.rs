//! The core's TLS transport (see [`crate::reactor::tls`]), reached from `transport.rs`
//! with the connection's session: received records are opened in place and their content
//! handed to the plain path; queued frames are sealed when the backend asks what to send,
//! and counted as sent once the kernel has taken all of their records. The backends see
//! bytes to receive and slices to send, as for plain sockets.

use std::io::IoSlice;
use std::sync::Arc;

use super::{Core, Next, LINGER_BYTES};
use crate::protocol::SharedFrame;
use crate::reactor::conn::flag;
use crate::reactor::outring::{OutRing, Tag};
use crate::reactor::service::Service;
use crate::reactor::tls::record::{self, Records};
use crate::reactor::tls::{self, Phase, Session};

/// Plaintext one send seals at most (whole frames, at least one): bounds the records a
/// connection holds sealed and not yet taken by the kernel.
const BATCH: usize = 64 * 1024;

impl<S: Service> Core<S> {
    /// Bytes arrived on a TLS connection.
    pub(super) fn receive_tls(&mut self, slot: usize, s: &mut Session, data: &mut [u8]) -> Next {
        let Some(conn) = self.cx.conns.get_mut(slot) else {
            return Next::Close;
        };
        conn.set(flag::SEEN);
        if !matches!(s.phase, Phase::Open(_)) && conn.is_closing() {
            // Answered and closing (a failed handshake, plain HTTP): what comes is dropped.
            conn.lingered = conn.lingered.saturating_add(data.len() as u32);
            return if conn.lingered > LINGER_BYTES {
                Next::Close
            } else {
                Next::Nothing
            };
        }
        if !s.heard {
            s.heard = true;
            if tls::looks_like_http(data) {
                self.cx.stats.tls_failed += 1;
                tracing::debug!(slot, "plain HTTP on the TLS port: 400");
                return self.finish_raw(slot, s, tls::PLAIN_HTTP_ANSWER.to_vec(), false);
            }
        }
        if s.cin.is_empty() {
            let (used, next) = self.records(slot, s, data);
            if next != Next::Close && used < data.len() {
                s.cin.extend_from_slice(&data[used..]);
            }
            return next;
        }
        let mut buf = std::mem::take(&mut s.cin);
        buf.extend_from_slice(data);
        let (used, next) = self.records(slot, s, &mut buf);
        if next != Next::Close && used < buf.len() {
            buf.drain(..used);
            s.cin = buf;
        }
        next
    }

    /// Handles the whole records at the front of `buf`; returns the bytes they took.
    fn records(&mut self, slot: usize, s: &mut Session, buf: &mut [u8]) -> (usize, Next) {
        let mut at = 0;
        let mut next = Next::Nothing;
        while at < buf.len() {
            let len = match Records::complete(&buf[at..]) {
                Ok(Some(len)) => len,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(slot, ?e, "TLS record refused: closing");
                    return (at, Next::Close);
                }
            };
            let rec = &mut buf[at..at + len];
            at += len;
            let Phase::Open(records) = &mut s.phase else {
                match self.handshake_record(slot, s, rec) {
                    Next::Nothing => continue,
                    other => return (at, other),
                }
            };
            let opened = match records.open(rec) {
                Ok(Some(opened)) => opened,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(slot, ?e, "TLS record did not open: closing");
                    return (at, Next::Close);
                }
            };
            match opened.typ {
                record::APPLICATION_DATA if opened.plain.is_empty() => {}
                record::APPLICATION_DATA => {
                    match self.receive_plain(slot, &mut rec[opened.plain]) {
                        Next::Close => return (at, Next::Close),
                        Next::StopReading => next = Next::StopReading,
                        _ => {}
                    }
                }
                // close_notify or a fatal alert: the peer is done sending, as at its EOF.
                record::ALERT => return (at, Next::Close),
                // A handshake message after the handshake (a key update, a renegotiation):
                // the record layer keeps keys, not the secrets a key update derives new
                // ones from, so the connection ends here.
                typ => {
                    tracing::debug!(slot, typ, "TLS message after the handshake: closing");
                    return (at, Next::Close);
                }
            }
        }
        (at, next)
    }

    /// A record for rustls's handshake. Once the handshake is done, its keys are taken
    /// over and rustls's state dropped.
    fn handshake_record(&mut self, slot: usize, s: &mut Session, mut rec: &[u8]) -> Next {
        let Phase::Handshake(hs) = &mut s.phase else {
            return Next::Close;
        };
        let mut result = Ok(());
        while !rec.is_empty() && result.is_ok() {
            match hs.read_tls(&mut rec) {
                Ok(0) | Err(_) => return Next::Close,
                Ok(_) => result = hs.process_new_packets().map(drop),
            }
        }
        let mut wire = Vec::new();
        while hs.wants_write() {
            if hs.write_tls(&mut wire).is_err() {
                break;
            }
        }
        if let Err(e) = result {
            self.cx.stats.tls_failed += 1;
            tracing::debug!(slot, error = %e, "TLS handshake failed");
            // rustls's alert, then the close.
            return self.finish_raw(slot, s, wire, true);
        }
        let done = !hs.is_handshaking();
        self.push_raw(slot, s, wire);
        if !done {
            return Next::Nothing;
        }
        let Phase::Handshake(hs) = std::mem::replace(&mut s.phase, Phase::Failed) else {
            return Next::Close;
        };
        let tls12 = hs.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_2);
        match hs
            .dangerous_extract_secrets()
            .ok()
            .and_then(|x| Records::new(tls12, x))
        {
            Some(records) => {
                self.cx.stats.tls_handshakes += 1;
                s.phase = Phase::Open(records);
                Next::Nothing
            }
            None => {
                self.cx.stats.tls_failed += 1;
                tracing::debug!(slot, "TLS keys could not be taken over: closing");
                Next::Close
            }
        }
    }

    /// Queues bytes already in wire form.
    fn push_raw(&mut self, slot: usize, s: &mut Session, wire: Vec<u8>) {
        if wire.is_empty() {
            return;
        }
        let cap = self.cx.rules.out_cap;
        let Some(conn) = self.cx.conns.get_mut(slot) else {
            return;
        };
        if conn.out.push_control(raw_frame(wire), cap).is_ok() {
            s.raw += 1;
            self.queue_flush(slot);
        }
    }

    /// Queues the last bytes (in wire form) and closes: at once once they are out
    /// (`goodbye`), or lingering for what the peer is still sending.
    fn finish_raw(&mut self, slot: usize, s: &mut Session, wire: Vec<u8>, goodbye: bool) -> Next {
        if !matches!(s.phase, Phase::Open(_)) {
            s.phase = Phase::Failed;
        }
        if wire.is_empty() {
            return Next::Close;
        }
        if let Some(mut link) = self.cx.link_any(slot) {
            link.finish(raw_frame(wire));
            if goodbye {
                link.goodbye();
            }
            s.raw += 1;
        }
        Next::Nothing
    }

    /// `n` bytes of a TLS connection's records went out.
    pub(super) fn sent_tls(&mut self, slot: usize, s: &mut Session, n: usize) -> Next {
        let Some(conn) = self.cx.conns.get_mut(slot) else {
            return Next::Nothing;
        };
        s.cout_sent += n;
        if s.cout_sent < s.cout.len() {
            // The frames the rest of the records carry stay where no policy drops them.
            conn.out.pin(usize::from(s.frames));
            return Next::Nothing;
        }
        let (plain, frames) = (s.plain as usize, usize::from(s.frames));
        // Nothing held once the kernel has it all: an idle connection owns no buffer.
        s.cout = Vec::new();
        (s.cout_sent, s.plain, s.frames) = (0, 0, 0);
        s.raw = s.raw.saturating_sub(frames as u16);
        // Our last bytes are going: a close_notify follows them, before the write side
        // is shut (not after the peer's own goodbye: it has stopped reading).
        let last = frames > 0
            && conn.out.len() == frames
            && conn.has(flag::CLOSING)
            && !conn.has(flag::GOODBYE)
            && !s.notified;
        if let (true, Phase::Open(records)) = (last, &mut s.phase) {
            let mut alert = Vec::new();
            records.seal(record::ALERT, [&[1u8, 0][..]], &mut alert);
            if conn
                .out
                .push_control(raw_frame(alert), self.cx.rules.out_cap)
                .is_ok()
            {
                s.raw += 1;
                s.notified = true;
            }
        }
        let next = self.sent_plain(slot, plain);
        if next != Next::Close {
            // More was queued than one batch carried.
            self.queue_flush(slot);
        }
        next
    }
}

/// What a TLS connection sends next: the rest of its sealed records, or the next frames
/// of `out` sealed now (pinned there until the kernel has taken their records).
pub(super) fn egress<'a, T: Tag>(
    s: &'a mut Session,
    out: &mut OutRing<T>,
    iov: &mut [IoSlice<'a>],
) -> usize {
    if s.cout_sent >= s.cout.len() {
        s.cout.clear();
        s.cout_sent = 0;
        let mut slices = [IoSlice::new(&[]); 64];
        let count = out.iovecs(&mut slices);
        let (mut plain, mut i) = (0, 0);
        while i < count {
            if i < usize::from(s.raw) {
                // Raw frames go first and whole: they never wait behind a batch.
                s.cout.extend_from_slice(&slices[i]);
                plain += slices[i].len();
                i += 1;
                continue;
            }
            let Phase::Open(records) = &mut s.phase else {
                break;
            };
            if plain >= BATCH {
                break;
            }
            // A run of frames sealed together: small frames share records.
            let mut end = i;
            while end < count && plain < BATCH {
                plain += slices[end].len();
                end += 1;
            }
            records.seal(
                record::APPLICATION_DATA,
                slices[i..end].iter().map(|s| &s[..]),
                &mut s.cout,
            );
            i = end;
        }
        s.plain = plain as u32;
        s.frames = i as u16;
        out.pin(i);
    }
    if s.cout_sent >= s.cout.len() {
        return 0;
    }
    iov[0] = IoSlice::new(&s.cout[s.cout_sent..]);
    1
}

fn raw_frame(wire: Vec<u8>) -> SharedFrame {
    SharedFrame::from_encoded(Arc::from(wire))
}
