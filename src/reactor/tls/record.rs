//! The TLS record layer after the handshake, sans-IO: what an established session keeps
//! (per direction: the AEAD key, the IV and the sequence number, ~100 bytes in all), and
//! sealing and opening records with them. rustls runs the handshake; its traffic keys are
//! then taken over here, so an idle connection holds no rustls state and no buffers.
//!
//! AEADs: AES-128-GCM, AES-256-GCM and ChaCha20-Poly1305, in TLS 1.3 (RFC 8446 §5.2: the
//! real content type inside, nonce = IV ⊕ seq, the header as additional data) and TLS 1.2
//! (RFC 5288 / RFC 7905: the type in the header, a 13-byte additional data; GCM sends an
//! 8-byte explicit nonce, which we derive from the sequence number as rustls does).
//! The key schedule is expanded per batch of records, not kept: ~0.1 µs a batch against
//! the ~1 KB of expanded state per connection it would cost to keep it.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::ConnectionTrafficSecrets;

/// Content types (RFC 8446 §5.1).
pub const ALERT: u8 = 21;
pub const HANDSHAKE: u8 = 22;
pub const APPLICATION_DATA: u8 = 23;

/// The record header: type, legacy version, length.
pub const HEADER: usize = 5;
/// The most plaintext one record carries (2^14).
pub const MAX_PLAINTEXT: usize = 1 << 14;
/// The most ciphertext a peer's record may carry: TLS 1.2 allows 2^14 + 2048.
const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 2048;
const TAG: usize = 16;
/// TLS 1.2 AES-GCM's explicit nonce.
const EXPLICIT: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

impl Suite {
    fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            Suite::Aes128Gcm => &aead::AES_128_GCM,
            Suite::Aes256Gcm => &aead::AES_256_GCM,
            Suite::Chacha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }

    fn key_len(self) -> usize {
        match self {
            Suite::Aes128Gcm => 16,
            _ => 32,
        }
    }
}

/// One direction's traffic keys.
#[derive(Clone)]
pub struct Keys {
    key: [u8; 32],
    iv: [u8; 12],
    pub seq: u64,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl Keys {
    /// Keys from their parts (`key` is cut to the suite's length where used).
    pub fn new(key: &[u8], iv: &[u8; 12], seq: u64) -> Keys {
        let mut keys = Keys {
            key: [0; 32],
            iv: *iv,
            seq,
        };
        let n = key.len().min(32);
        keys.key[..n].copy_from_slice(&key[..n]);
        keys
    }

    pub fn key(&self) -> &[u8; 32] {
        &self.key
    }

    pub fn iv(&self) -> &[u8; 12] {
        &self.iv
    }

    fn from_secrets(seq: u64, secrets: &ConnectionTrafficSecrets) -> Option<(Suite, Keys)> {
        let (suite, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (Suite::Aes128Gcm, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (Suite::Aes256Gcm, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (Suite::Chacha20Poly1305, key, iv)
            }
            _ => return None,
        };
        let (key, iv) = (key.as_ref(), iv.as_ref());
        if key.len() != suite.key_len() || iv.len() != 12 {
            return None;
        }
        let mut keys = Keys {
            key: [0; 32],
            iv: [0; 12],
            seq,
        };
        keys.key[..key.len()].copy_from_slice(key);
        keys.iv.copy_from_slice(iv);
        Some((suite, keys))
    }

    /// IV ⊕ the sequence number, right-aligned.
    fn nonce(&self) -> [u8; 12] {
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        n
    }
}

/// Why a record could not be opened: the connection is closed (no alert is sent).
#[derive(Debug, PartialEq, Eq)]
pub enum RecordError {
    /// Longer than any record may be.
    Overflow,
    /// The tag did not verify, or the record is too short to hold one.
    Decrypt,
    /// A TLS 1.3 record with no content type inside.
    NoContentType,
}

/// An established session's record protection, both directions.
#[derive(Clone, Debug)]
pub struct Records {
    pub suite: Suite,
    pub tls12: bool,
    pub rx: Keys,
    pub tx: Keys,
}

/// A record opened in place: its content type and where its plaintext lies in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Opened {
    pub typ: u8,
    pub plain: std::ops::Range<usize>,
    /// Bytes the record took (header included).
    pub len: usize,
}

impl Records {
    /// Takes over the keys rustls extracted after its handshake.
    pub fn new(tls12: bool, secrets: rustls::ExtractedSecrets) -> Option<Records> {
        let (suite, tx) = Keys::from_secrets(secrets.tx.0, &secrets.tx.1)?;
        let (rx_suite, rx) = Keys::from_secrets(secrets.rx.0, &secrets.rx.1)?;
        (suite == rx_suite).then_some(Records {
            suite,
            tls12,
            rx,
            tx,
        })
    }

    fn key(&self, keys: &Keys) -> LessSafeKey {
        let alg = self.suite.algorithm();
        // The length was checked when the keys were taken over.
        LessSafeKey::new(
            UnboundKey::new(alg, &keys.key[..self.suite.key_len()]).expect("key length"),
        )
    }

    /// Bytes a record adds around `plain` bytes of content.
    pub fn overhead(&self) -> usize {
        HEADER
            + TAG
            + match (self.tls12, self.suite) {
                (false, _) => 1,
                (true, Suite::Chacha20Poly1305) => 0,
                (true, _) => EXPLICIT,
            }
    }

    /// Appends records of content type `typ` carrying the concatenation of `parts` to
    /// `out`, at most [`MAX_PLAINTEXT`] bytes of content each. Cost: one copy of the
    /// content and the AEAD over it; one key expansion per call.
    pub fn seal<'a>(
        &mut self,
        typ: u8,
        parts: impl IntoIterator<Item = &'a [u8]>,
        out: &mut Vec<u8>,
    ) {
        let key = self.key(&self.tx);
        let mut open: Option<usize> = None;
        for mut part in parts {
            while !part.is_empty() {
                let start = match open {
                    Some(s) => s,
                    None => {
                        let s = out.len();
                        out.extend_from_slice(&[0; HEADER]);
                        if self.tls12 && self.suite != Suite::Chacha20Poly1305 {
                            out.extend_from_slice(&[0; EXPLICIT]);
                        }
                        open = Some(s);
                        s
                    }
                };
                let body = out.len() - start - self.body_offset();
                let take = part.len().min(MAX_PLAINTEXT - body);
                out.extend_from_slice(&part[..take]);
                part = &part[take..];
                if body + take == MAX_PLAINTEXT {
                    self.close_record(&key, typ, start, out);
                    open = None;
                }
            }
        }
        if let Some(start) = open {
            self.close_record(&key, typ, start, out);
        }
    }

    /// Where a record's content starts, from its header.
    fn body_offset(&self) -> usize {
        HEADER
            + if self.tls12 && self.suite != Suite::Chacha20Poly1305 {
                EXPLICIT
            } else {
                0
            }
    }

    fn close_record(&mut self, key: &LessSafeKey, typ: u8, start: usize, out: &mut Vec<u8>) {
        let nonce = self.tx.nonce();
        let body = start + self.body_offset();
        let plain_len = out.len() - body;
        if self.tls12 && self.suite != Suite::Chacha20Poly1305 {
            out[start + HEADER..body].copy_from_slice(&nonce[4..]);
        }
        if !self.tls12 {
            // TLS 1.3 hides the real type inside; the header says application data.
            out.push(typ);
        }
        let wire_typ = if self.tls12 { typ } else { APPLICATION_DATA };
        let len = out.len() - start - HEADER + TAG;
        let header = [wire_typ, 3, 3, (len >> 8) as u8, len as u8];
        out[start..start + HEADER].copy_from_slice(&header);
        let aad12 = tls12_aad(self.tx.seq, typ, plain_len);
        let aad: &[u8] = if self.tls12 { &aad12 } else { &header };
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut out[body..],
            )
            .expect("record within AEAD limits");
        out.extend_from_slice(tag.as_ref());
        self.tx.seq += 1;
    }

    /// The length of the complete record at the front of `buf`, if all of it is there.
    pub fn complete(buf: &[u8]) -> Result<Option<usize>, RecordError> {
        if buf.len() < HEADER {
            return Ok(None);
        }
        let len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
        if len > MAX_CIPHERTEXT {
            return Err(RecordError::Overflow);
        }
        Ok((buf.len() >= HEADER + len).then_some(HEADER + len))
    }

    /// Opens the complete record at the front of `buf` in place. `Ok(None)`: not all of it
    /// has arrived.
    pub fn open(&mut self, buf: &mut [u8]) -> Result<Option<Opened>, RecordError> {
        let Some(len) = Records::complete(buf)? else {
            return Ok(None);
        };
        let key = self.key(&self.rx);
        let header: [u8; HEADER] = buf[..HEADER].try_into().expect("header");
        let record = &mut buf[..len];
        let opened = if self.tls12 {
            let gcm = self.suite != Suite::Chacha20Poly1305;
            let head = if gcm { HEADER + EXPLICIT } else { HEADER };
            if len < head + TAG {
                return Err(RecordError::Decrypt);
            }
            let nonce = if gcm {
                let mut n = [0u8; 12];
                n[..4].copy_from_slice(&self.rx.iv[..4]);
                n[4..].copy_from_slice(&record[HEADER..head]);
                n
            } else {
                self.rx.nonce()
            };
            let aad = tls12_aad(self.rx.seq, header[0], len - head - TAG);
            let plain = key
                .open_in_place(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(aad),
                    &mut record[head..],
                )
                .map_err(|_| RecordError::Decrypt)?
                .len();
            Opened {
                typ: header[0],
                plain: head..head + plain,
                len,
            }
        } else {
            let nonce = self.rx.nonce();
            let plain = key
                .open_in_place(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(header),
                    &mut record[HEADER..],
                )
                .map_err(|_| RecordError::Decrypt)?;
            // The content, the real type, then zero padding (RFC 8446 §5.4).
            let end = plain
                .iter()
                .rposition(|&b| b != 0)
                .ok_or(RecordError::NoContentType)?;
            Opened {
                typ: plain[end],
                plain: HEADER..HEADER + end,
                len,
            }
        };
        if opened.plain.len() > MAX_PLAINTEXT {
            return Err(RecordError::Overflow);
        }
        self.rx.seq += 1;
        Ok(Some(opened))
    }
}

fn tls12_aad(seq: u64, typ: u8, len: usize) -> [u8; 13] {
    let mut aad = [0u8; 13];
    aad[..8].copy_from_slice(&seq.to_be_bytes());
    aad[8] = typ;
    aad[9] = 3;
    aad[10] = 3;
    aad[11..].copy_from_slice(&(len as u16).to_be_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(suite: Suite, tls12: bool) -> (Records, Records) {
        let keys = |b: u8| Keys {
            key: [b; 32],
            iv: [b.wrapping_mul(3); 12],
            seq: 7,
        };
        let server = Records {
            suite,
            tls12,
            rx: keys(1),
            tx: keys(2),
        };
        // The peer: the same keys, directions swapped.
        let client = Records {
            suite,
            tls12,
            rx: keys(2),
            tx: keys(1),
        };
        (server, client)
    }

    #[test]
    fn records_round_trip_in_every_suite_and_version_split_at_the_record_limit() {
        for suite in [Suite::Aes128Gcm, Suite::Aes256Gcm, Suite::Chacha20Poly1305] {
            for tls12 in [false, true] {
                let (mut server, mut client) = pair(suite, tls12);
                let big = vec![b'x'; MAX_PLAINTEXT + 10];
                let mut wire = Vec::new();
                server.seal(APPLICATION_DATA, [&b"hello "[..], b"world"], &mut wire);
                server.seal(ALERT, [&[1u8, 0][..]], &mut wire);
                server.seal(APPLICATION_DATA, [&big[..]], &mut wire);
                assert_eq!(server.tx.seq, 7 + 4);
                let mut got = Vec::new();
                let mut at = 0;
                while let Some(o) = client.open(&mut wire[at..]).unwrap() {
                    got.push((o.typ, wire[at..][o.plain.clone()].to_vec()));
                    at += o.len;
                }
                assert_eq!(at, wire.len());
                assert_eq!(got.len(), 4, "{suite:?} tls12={tls12}");
                assert_eq!(got[0], (APPLICATION_DATA, b"hello world".to_vec()));
                assert_eq!(got[1], (ALERT, vec![1, 0]));
                assert_eq!(got[2].1.len(), MAX_PLAINTEXT);
                assert_eq!(got[3].1.len(), 10);
                let first = 5 + 11 + server.overhead() - HEADER;
                assert_eq!(Records::complete(&wire).unwrap(), Some(first));
            }
        }
    }

    #[test]
    fn a_tampered_or_replayed_record_does_not_open() {
        let (mut server, mut client) = pair(Suite::Aes128Gcm, false);
        let mut wire = Vec::new();
        server.seal(APPLICATION_DATA, [&b"data"[..]], &mut wire);
        let copy = wire.clone();
        let mut bad = wire.clone();
        bad[8] ^= 1;
        assert_eq!(client.clone().open(&mut bad), Err(RecordError::Decrypt));
        assert!(client.open(&mut wire).unwrap().is_some());
        // The same record again: the sequence number moved on.
        let mut again = copy;
        assert_eq!(client.open(&mut again), Err(RecordError::Decrypt));
        // Partial, and oversized.
        assert_eq!(client.open(&mut [23, 3, 3, 0][..]), Ok(None));
        assert_eq!(
            Records::complete(&[23, 3, 3, 0xFF, 0xFF]),
            Err(RecordError::Overflow)
        );
    }
}
