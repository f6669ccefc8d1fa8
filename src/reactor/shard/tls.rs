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
use crate::reactor::tls::record::{self, Received, RecordError, Records};
use crate::reactor::tls::{self, Flight, Handshake, Phase, Session};

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
        let Some(mut buf) = s.flight.as_mut().map(|f| std::mem::take(&mut f.cin)) else {
            // Nothing held back: the records are opened where they lie.
            let (used, next) = self.records(slot, s, data);
            if next != Next::Close && used < data.len() {
                s.flight().cin.extend_from_slice(&data[used..]);
            }
            return next;
        };
        if buf.is_empty() {
            let (used, next) = self.records(slot, s, data);
            if next != Next::Close && used < data.len() {
                buf.extend_from_slice(&data[used..]);
                s.flight().cin = buf;
            }
            s.tidy();
            return next;
        }
        buf.extend_from_slice(data);
        let (used, next) = self.records(slot, s, &mut buf);
        if next != Next::Close && used < buf.len() {
            buf.drain(..used);
            s.flight().cin = buf;
        }
        s.tidy();
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
            // Cost: one AEAD key expansion and one pass over the record (three HKDF
            // expansions more for a KeyUpdate).
            let received = match records.receive(rec) {
                Ok(Some((received, _))) => received,
                Ok(None) => break,
                Err(RecordError::KeyExhausted) => {
                    tracing::info!(
                        slot,
                        records = records.rx_seq,
                        "TLS: the peer kept sending under one key past its AEAD limit \
                         (RFC 8446 §5.5) without a key update: closing"
                    );
                    return (at, Next::Close);
                }
                Err(e) => {
                    tracing::debug!(slot, ?e, "TLS record refused: closing");
                    return (at, Next::Close);
                }
            };
            match received {
                Received::Data(plain) if plain.is_empty() => {}
                Received::Data(plain) => match self.receive_plain(slot, &mut rec[plain]) {
                    Next::Close => return (at, Next::Close),
                    Next::StopReading => next = Next::StopReading,
                    _ => {}
                },
                Received::KeyUpdate { requested } => {
                    tracing::trace!(slot, requested, "TLS: the peer updated its key");
                }
                // close_notify or a fatal alert: the peer is done sending, as at its EOF.
                Received::Alert => return (at, Next::Close),
            }
            if records.owes_update() {
                // Our KeyUpdate goes out with the next records we send (flushed now if
                // anything is queued, else before the next frame: RFC 8446 §4.6.3 asks
                // for it before our next application data).
                self.queue_flush(slot);
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
            match hs.conn.read_tls(&mut rec) {
                Ok(0) | Err(_) => return Next::Close,
                Ok(_) => {
                    let conn = &mut hs.conn;
                    result = tls::capture::around(&mut hs.traffic, || {
                        conn.process_new_packets().map(drop)
                    });
                }
            }
        }
        let mut wire = Vec::new();
        while hs.conn.wants_write() {
            if hs.conn.write_tls(&mut wire).is_err() {
                break;
            }
        }
        if let Err(e) = result {
            self.cx.stats.tls_failed += 1;
            tracing::debug!(slot, error = %e, "TLS handshake failed");
            // rustls's alert, then the close.
            return self.finish_raw(slot, s, wire, true);
        }
        let done = !hs.conn.is_handshaking();
        self.push_raw(slot, s, wire);
        if !done {
            return Next::Nothing;
        }
        let Phase::Handshake(hs) = std::mem::replace(&mut s.phase, Phase::Failed) else {
            return Next::Close;
        };
        let tls12 = hs.conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_2);
        let Handshake { conn, traffic } = *hs;
        match conn
            .dangerous_extract_secrets()
            .ok()
            .and_then(|x| Records::new(tls12, x, &traffic))
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
        let Some(f) = s.flight.as_deref_mut() else {
            return Next::Nothing;
        };
        f.cout_sent += n;
        if f.cout_sent < f.cout.len() {
            // The frames the rest of the records carry stay where no policy drops them.
            conn.out.pin(usize::from(f.frames));
            return Next::Nothing;
        }
        let (plain, frames) = (f.plain as usize, usize::from(f.frames));
        // Nothing held once the kernel has it all: an idle connection owns no buffer.
        (f.cout, f.cout_sent, f.plain, f.frames) = (Vec::new(), 0, 0, 0);
        s.tidy();
        s.raw = s.raw.saturating_sub(frames as u16);
        if let (true, Phase::Open(records)) = (s.notified, &s.phase) {
            if records.spent() {
                // A TLS 1.2 session at its AEAD limit (it cannot update keys): its
                // close_notify is out, the connection ends (see `egress`).
                tracing::info!(
                    slot,
                    records = records.tx_seq,
                    "TLS 1.2: the send key reached its AEAD limit (RFC 8446 §5.5; no key \
                     update in TLS 1.2): close_notify sent, closing"
                );
                self.sent_plain(slot, plain);
                return Next::Close;
            }
        }
        let Some(conn) = self.cx.conns.get_mut(slot) else {
            return Next::Nothing;
        };
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
/// of `out` sealed now (pinned there until the kernel has taken their records). A
/// KeyUpdate we owe or that is due goes out in front of the first record sealed (see
/// `Records::seal`); a TLS 1.2 session whose key is spent sends its close_notify instead
/// of anything more, and is closed once it is out (`sent_tls`).
pub(super) fn egress<'a, T: Tag>(
    s: &'a mut Session,
    out: &mut OutRing<T>,
    iov: &mut [IoSlice<'a>],
) -> usize {
    let Session {
        phase,
        flight,
        raw,
        notified,
        ..
    } = &mut *s;
    if flight.is_none() && out.is_empty() {
        // Nothing sealed and nothing queued (a send completed and its connection was
        // queued again): no flight to box.
        return 0;
    }
    let f: &mut Flight = flight.get_or_insert_with(Box::default);
    if f.cout_sent >= f.cout.len() {
        f.cout.clear();
        f.cout_sent = 0;
        let mut slices = [IoSlice::new(&[]); 64];
        let count = out.iovecs(&mut slices);
        let (mut plain, mut i) = (0, 0);
        while i < count {
            if i < usize::from(*raw) {
                // Raw frames go first and whole: they never wait behind a batch.
                f.cout.extend_from_slice(&slices[i]);
                plain += slices[i].len();
                i += 1;
                continue;
            }
            let Phase::Open(records) = phase else {
                break;
            };
            if records.spent() {
                if !*notified {
                    records.seal(record::ALERT, [&[1u8, 0][..]], &mut f.cout);
                    *notified = true;
                }
                break;
            }
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
                &mut f.cout,
            );
            i = end;
        }
        f.plain = plain as u32;
        f.frames = i as u16;
        out.pin(i);
    }
    if f.cout_sent >= f.cout.len() {
        s.tidy();
        return 0;
    }
    let Some(f) = s.flight.as_deref() else {
        return 0;
    };
    iov[0] = IoSlice::new(&f.cout[f.cout_sent..]);
    1
}

fn raw_frame(wire: Vec<u8>) -> SharedFrame {
    SharedFrame::from_encoded(Arc::from(wire))
}
