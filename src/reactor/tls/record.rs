//! The TLS record layer after the handshake, sans-IO: what an established session keeps
//! (per direction: the AEAD key, the IV, the traffic secret the next key derives from, and
//! the record count: 176 bytes in all), sealing and opening records with them, and the
//! TLS 1.3 key updates that keep every key within its AEAD limits. rustls runs the
//! handshake; its traffic keys are then taken over here, so an idle connection holds no
//! rustls state and no buffers.
//!
//! AEADs: AES-128-GCM, AES-256-GCM and ChaCha20-Poly1305, in TLS 1.3 (RFC 8446 §5.2: the
//! real content type inside, nonce = IV ⊕ seq, the header as additional data) and TLS 1.2
//! (RFC 5288 / RFC 7905: the type in the header, a 13-byte additional data; GCM sends an
//! 8-byte explicit nonce, which we derive from the sequence number as rustls does).
//! The AEAD key schedule is expanded per batch of records, not kept: ~0.1 µs a batch
//! against the ~1 KB of expanded state per connection it would cost to keep it.
//!
//! Key updates (TLS 1.3, RFC 8446 §4.6.3 and §7.2): the next traffic secret is
//! HKDF-Expand-Label(secret, "traffic upd", "", Hash.length), and the key and IV come from
//! it as at the handshake (§7.3). Both are derived here with *ring*, from the secrets
//! rustls logs for the session (see `tls::capture`): keeping the secret costs 32 bytes a
//! direction (48, boxed, for AES-256-GCM: see [`Secrets`]), where rustls's `KernelConnection` (which would do the same derivation)
//! holds its whole key schedule and common state per connection. The expanded key and IV
//! are kept beside the secret (not derived per batch: an HKDF-Expand-Label pair costs
//! ~3x the AEAD key setup), so sealing costs what it did before key updates existed.
//!
//! - A peer's KeyUpdate is opened like any record: the receive key moves on; with
//!   `update_requested`, our own KeyUpdate (`update_not_requested`) goes out before our
//!   next record, and the send key moves on after it.
//! - Our send key moves on by itself before it reaches its limit ([`Limits::rekey`]):
//!   a KeyUpdate goes out first, sealed under the old key.
//! - A receive key that reaches the same count asks the peer for an update (our KeyUpdate
//!   with `update_requested`, before our next record); a peer still sending under it past
//!   [`Limits::refuse`] is refused ([`RecordError::KeyExhausted`]).
//! - TLS 1.2 cannot update keys (no renegotiation here): a connection whose send key
//!   reaches its limit is ended with a close_notify ([`Records::spent`]); a peer past the
//!   receive limit is refused.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::ConnectionTrafficSecrets;

pub use super::keys::{Dir, Keys, Limits, Secrets, Suite, TrafficSecrets, TEST_LIMIT_VAR};

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

/// The KeyUpdate handshake message's type and its one-byte body (RFC 8446 §4.6.3).
const KEY_UPDATE: u8 = 24;
const UPDATE_NOT_REQUESTED: u8 = 0;
const UPDATE_REQUESTED: u8 = 1;
/// KeyUpdates a peer may send in a row with no application data between them (rustls
/// allows the same number): past it, a peer is only making us spend HKDF and records.
const MAX_UPDATES_IN_A_ROW: u8 = 32;

/// Why a record could not be taken: the connection is closed (no alert is sent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordError {
    /// Longer than any record may be.
    Overflow,
    /// The tag did not verify, or the record is too short to hold one.
    Decrypt,
    /// A TLS 1.3 record with no content type inside.
    NoContentType,
    /// The peer kept sending under one key past [`Limits::refuse`] (RFC 8446 §5.5), though
    /// asked to update it (TLS 1.3), or with no way to (TLS 1.2).
    KeyExhausted,
    /// A handshake message after the handshake that is not a whole KeyUpdate alone in its
    /// record (RFC 8446 §5.1: a message before a key change ends its record; a client has
    /// no other post-handshake message to send us), or any in TLS 1.2 (a renegotiation,
    /// which we do not do).
    UnexpectedHandshake,
    /// A KeyUpdate whose `request_update` is neither 0 nor 1 (RFC 8446 §4.6.3).
    IllegalUpdate,
    /// More than [`MAX_UPDATES_IN_A_ROW`] KeyUpdates with no application data between.
    TooManyUpdates,
    /// A content type that has no place after the handshake (change_cipher_spec, …).
    UnexpectedContent,
}

/// What an opened record was.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// Application data, at this range of the record (possibly empty).
    Data(std::ops::Range<usize>),
    /// A KeyUpdate: the receive key moved on (and ours will, if it asked).
    KeyUpdate { requested: bool },
    /// An alert (close_notify or fatal): the peer is done sending.
    Alert,
}

/// A KeyUpdate we owe the peer before our next record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owed {
    Nothing,
    /// Ours, `update_not_requested`: the peer asked, or our send key is worn.
    Update,
    /// Ours, `update_requested`: the peer's key is worn.
    Request,
}

/// An established session's record protection, both directions: 176 bytes.
#[derive(Clone, Debug)]
pub struct Records {
    pub suite: Suite,
    pub tls12: bool,
    rx: Keys,
    tx: Keys,
    /// What the next keys derive from (TLS 1.3).
    secrets: Secrets,
    /// Records opened and sealed under the current keys (TLS 1.3 restarts them at 0 with
    /// each key, §5.3): the counts the limits apply to, and the sequence numbers of the
    /// nonces (every limit is below 2^32, so they never wrap).
    pub rx_seq: u32,
    pub tx_seq: u32,
    owed: Owed,
    /// Whether we asked the peer to update since its last KeyUpdate.
    asked: bool,
    /// KeyUpdates received since the last application data.
    updates: u8,
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
    /// Takes over the keys rustls extracted after its handshake; in TLS 1.3 with the
    /// traffic secrets it logged (`traffic`), which must give the very same keys, and from
    /// which key updates derive. `None`: the session cannot be taken over.
    pub fn new(
        tls12: bool,
        secrets: rustls::ExtractedSecrets,
        traffic: &TrafficSecrets,
    ) -> Option<Records> {
        let suite = match &secrets.tx.1 {
            ConnectionTrafficSecrets::Aes128Gcm { .. } => Suite::Aes128Gcm,
            ConnectionTrafficSecrets::Aes256Gcm { .. } => Suite::Aes256Gcm,
            ConnectionTrafficSecrets::Chacha20Poly1305 { .. } => Suite::Chacha20Poly1305,
            _ => return None,
        };
        let tx = Keys::from_extracted(suite, &secrets.tx.1)?;
        let rx = Keys::from_extracted(suite, &secrets.rx.1)?;
        let kept = if tls12 {
            Secrets::None
        } else {
            fn secret(suite: Suite, s: &Option<([u8; 48], u8)>) -> Option<&[u8]> {
                let (bytes, len) = s.as_ref()?;
                let len = usize::from(*len);
                (len == suite.secret_len()).then_some(&bytes[..len])
            }
            let stx = secret(suite, &traffic.server)?;
            let srx = secret(suite, &traffic.client)?;
            // The secrets belong to this session only if they give its keys.
            if !Keys::from_secret(suite, stx).same(&tx) || !Keys::from_secret(suite, srx).same(&rx)
            {
                return None;
            }
            Secrets::new(suite, srx, stx)
        };
        Some(Records {
            suite,
            tls12,
            rx,
            tx,
            secrets: kept,
            rx_seq: u32::try_from(secrets.rx.0).ok()?,
            tx_seq: u32::try_from(secrets.tx.0).ok()?,
            owed: Owed::Nothing,
            asked: false,
            updates: 0,
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

    /// Whether this TLS 1.2 session's send key has sealed all it may (TLS 1.2 has no key
    /// update): the connection should end, with a close_notify.
    pub fn spent(&self) -> bool {
        self.tls12 && self.tx_seq >= self.suite.limits().rekey
    }

    /// Whether a KeyUpdate of ours waits for our next record (the peer asked, or its key
    /// is worn): worth a send even if nothing else is queued.
    pub fn owes_update(&self) -> bool {
        self.owed != Owed::Nothing
    }

    /// Asks for a key update before our next record: ours, and the peer's too when
    /// `request` (TLS 1.3; nothing in TLS 1.2).
    pub fn update_keys(&mut self, request: bool) {
        if self.tls12 {
            return;
        }
        self.owed = match (self.owed, request) {
            (Owed::Request, _) | (_, true) => Owed::Request,
            _ => Owed::Update,
        };
    }

    /// Appends records of content type `typ` carrying the concatenation of `parts` to
    /// `out`, at most [`MAX_PLAINTEXT`] bytes of content each; before any record, the
    /// KeyUpdate that is owed or due (TLS 1.3). Cost: one copy of the content and the AEAD
    /// over it; one key expansion per call (and per key update).
    pub fn seal<'a>(
        &mut self,
        typ: u8,
        parts: impl IntoIterator<Item = &'a [u8]>,
        out: &mut Vec<u8>,
    ) {
        let mut key: Option<LessSafeKey> = None;
        let mut open: Option<usize> = None;
        for mut part in parts {
            while !part.is_empty() {
                let start = match open {
                    Some(s) => s,
                    None => {
                        self.update_if_due(&mut key, out);
                        let s = self.start_record(out);
                        open = Some(s);
                        s
                    }
                };
                let body = out.len() - start - self.body_offset();
                let take = part.len().min(MAX_PLAINTEXT - body);
                out.extend_from_slice(&part[..take]);
                part = &part[take..];
                if body + take == MAX_PLAINTEXT {
                    let k = key.get_or_insert_with(|| self.key(&self.tx));
                    Self::close_record(
                        self.tls12,
                        self.suite,
                        &self.tx,
                        &mut self.tx_seq,
                        k,
                        typ,
                        start,
                        out,
                    );
                    open = None;
                }
            }
        }
        if let Some(start) = open {
            let k = key.get_or_insert_with(|| self.key(&self.tx));
            Self::close_record(
                self.tls12,
                self.suite,
                &self.tx,
                &mut self.tx_seq,
                k,
                typ,
                start,
                out,
            );
        }
    }

    /// Before a record: our KeyUpdate if one is owed or our key is worn (TLS 1.3), sealed
    /// under the old key; then the send key moves on (§4.6.3).
    fn update_if_due(&mut self, key: &mut Option<LessSafeKey>, out: &mut Vec<u8>) {
        if self.tls12 || (self.owed == Owed::Nothing && self.tx_seq < self.suite.limits().rekey) {
            return;
        }
        // The next keys first: a session with no secrets to derive them from sends no
        // KeyUpdate (it cannot happen: TLS 1.3 sessions are taken over with theirs).
        let Some(next) = self.secrets.advance(Dir::Tx, self.suite) else {
            return;
        };
        let request = if self.owed == Owed::Request {
            UPDATE_REQUESTED
        } else {
            UPDATE_NOT_REQUESTED
        };
        let start = self.start_record(out);
        out.extend_from_slice(&[KEY_UPDATE, 0, 0, 1, request]);
        let k = key.get_or_insert_with(|| self.key(&self.tx));
        Self::close_record(
            self.tls12,
            self.suite,
            &self.tx,
            &mut self.tx_seq,
            k,
            HANDSHAKE,
            start,
            out,
        );
        self.tx = next;
        self.tx_seq = 0;
        self.owed = Owed::Nothing;
        *key = None;
    }

    /// Appends a record's header (and TLS 1.2 GCM's explicit nonce), to be filled in when
    /// it is closed; returns where it starts.
    fn start_record(&self, out: &mut Vec<u8>) -> usize {
        let s = out.len();
        out.extend_from_slice(&[0; HEADER]);
        if self.tls12 && self.suite != Suite::Chacha20Poly1305 {
            out.extend_from_slice(&[0; EXPLICIT]);
        }
        s
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

    #[allow(clippy::too_many_arguments)]
    fn close_record(
        tls12: bool,
        suite: Suite,
        keys: &Keys,
        seq: &mut u32,
        key: &LessSafeKey,
        typ: u8,
        start: usize,
        out: &mut Vec<u8>,
    ) {
        let nonce = keys.nonce(*seq);
        let gcm12 = tls12 && suite != Suite::Chacha20Poly1305;
        let body = start + HEADER + if gcm12 { EXPLICIT } else { 0 };
        let plain_len = out.len() - body;
        if gcm12 {
            out[start + HEADER..body].copy_from_slice(&nonce[4..]);
        }
        if !tls12 {
            // TLS 1.3 hides the real type inside; the header says application data.
            out.push(typ);
        }
        let wire_typ = if tls12 { typ } else { APPLICATION_DATA };
        let len = out.len() - start - HEADER + TAG;
        let header = [wire_typ, 3, 3, (len >> 8) as u8, len as u8];
        out[start..start + HEADER].copy_from_slice(&header);
        let aad12 = tls12_aad(u64::from(*seq), typ, plain_len);
        let aad: &[u8] = if tls12 { &aad12 } else { &header };
        // ring refuses only a buffer past the AEAD's per-message limit (far above 2^14).
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut out[body..],
            )
            .expect("record within the AEAD's message size");
        out.extend_from_slice(tag.as_ref());
        *seq += 1;
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

    /// Opens the complete record at the front of `buf` in place and acts on what it is: a
    /// KeyUpdate moves the receive key on (and owes ours when asked), application data
    /// counts against the key's limit (asking the peer for an update when it is worn).
    /// `Ok(None)`: not all of it has arrived. Errors close the connection.
    pub fn receive(&mut self, buf: &mut [u8]) -> Result<Option<(Received, usize)>, RecordError> {
        if Records::complete(buf)?.is_none() {
            return Ok(None);
        }
        let limits = self.suite.limits();
        if self.rx_seq >= limits.refuse {
            return Err(RecordError::KeyExhausted);
        }
        let Some(opened) = self.open(buf)? else {
            return Ok(None);
        };
        let received = match opened.typ {
            APPLICATION_DATA => {
                self.updates = 0;
                if !self.tls12 && !self.asked && self.rx_seq >= limits.rekey {
                    // The peer's key is worn: ask it to update (§4.6.3) before it is refused.
                    self.asked = true;
                    self.update_keys(true);
                }
                Received::Data(opened.plain)
            }
            ALERT => Received::Alert,
            HANDSHAKE if !self.tls12 => {
                let requested = match buf[opened.plain] {
                    [KEY_UPDATE, 0, 0, 1, UPDATE_NOT_REQUESTED] => false,
                    [KEY_UPDATE, 0, 0, 1, UPDATE_REQUESTED] => true,
                    [KEY_UPDATE, 0, 0, 1, _] => return Err(RecordError::IllegalUpdate),
                    _ => return Err(RecordError::UnexpectedHandshake),
                };
                self.updates += 1;
                if self.updates > MAX_UPDATES_IN_A_ROW {
                    return Err(RecordError::TooManyUpdates);
                }
                self.rx = self
                    .secrets
                    .advance(Dir::Rx, self.suite)
                    .ok_or(RecordError::UnexpectedHandshake)?;
                self.rx_seq = 0;
                self.asked = false;
                if requested {
                    self.update_keys(false);
                }
                Received::KeyUpdate { requested }
            }
            HANDSHAKE => return Err(RecordError::UnexpectedHandshake),
            _ => return Err(RecordError::UnexpectedContent),
        };
        Ok(Some((received, opened.len)))
    }

    /// Opens the complete record at the front of `buf` in place. `Ok(None)`: not all of it
    /// has arrived.
    pub fn open(&mut self, buf: &mut [u8]) -> Result<Option<Opened>, RecordError> {
        let Some(len) = Records::complete(buf)? else {
            return Ok(None);
        };
        let key = self.key(&self.rx);
        let header: [u8; HEADER] = [buf[0], buf[1], buf[2], buf[3], buf[4]];
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
                self.rx.nonce(self.rx_seq)
            };
            let aad = tls12_aad(u64::from(self.rx_seq), header[0], len - head - TAG);
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
            let nonce = self.rx.nonce(self.rx_seq);
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
        self.rx_seq += 1;
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

impl Records {
    /// The peer's view of this session: the same keys, directions swapped (to play the
    /// peer in tests and the fuzz target).
    pub fn mirror(&self) -> Records {
        Records {
            rx: self.tx.clone(),
            tx: self.rx.clone(),
            secrets: self.secrets.swapped(),
            rx_seq: self.tx_seq,
            tx_seq: self.rx_seq,
            owed: Owed::Nothing,
            asked: false,
            updates: 0,
            ..self.clone()
        }
    }
}

/// Per idle TLS connection: keep it in mind when adding a field (see `tls::Session`).
const _: () = assert!(std::mem::size_of::<Records>() == 176);

#[cfg(test)]
mod tests {
    use super::*;

    /// A server's records and its peer's, from made-up secrets (TLS 1.3) or keys (1.2).
    pub(crate) fn pair(suite: Suite, tls12: bool) -> (Records, Records) {
        let secret = |b: u8| vec![b; suite.secret_len()];
        let keys = |b: u8| Keys::from_secret(suite, &secret(b));
        let server = Records {
            suite,
            tls12,
            rx: keys(1),
            tx: keys(2),
            secrets: if tls12 {
                Secrets::None
            } else {
                Secrets::new(suite, &secret(1), &secret(2))
            },
            rx_seq: 7,
            tx_seq: 7,
            owed: Owed::Nothing,
            asked: false,
            updates: 0,
        };
        let client = server.mirror();
        (server, client)
    }

    /// Everything `from` seals, opened by `to`: (type, content) of each record.
    fn deliver(to: &mut Records, wire: &mut [u8]) -> Vec<(u8, Vec<u8>)> {
        let mut got = Vec::new();
        let mut at = 0;
        while let Some(o) = to.open(&mut wire[at..]).unwrap() {
            got.push((o.typ, wire[at..][o.plain.clone()].to_vec()));
            at += o.len;
        }
        assert_eq!(at, wire.len());
        got
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
                assert_eq!(server.tx_seq, 7 + 4);
                let first = 5 + 11 + server.overhead() - HEADER;
                assert_eq!(Records::complete(&wire).unwrap(), Some(first));
                let got = deliver(&mut client, &mut wire);
                assert_eq!(got.len(), 4, "{suite:?} tls12={tls12}");
                assert_eq!(got[0], (APPLICATION_DATA, b"hello world".to_vec()));
                assert_eq!(got[1], (ALERT, vec![1, 0]));
                assert_eq!(got[2].1.len(), MAX_PLAINTEXT);
                assert_eq!(got[3].1.len(), 10);
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

    /// RFC 8448 §3 (a simple 1-RTT handshake), the server's application traffic secret and
    /// the key and IV it gives (AES-128-GCM, SHA-256).
    #[test]
    fn the_key_schedule_matches_rfc_8448() {
        let hex = |s: &str| -> Vec<u8> {
            let s: String = s.split_whitespace().collect();
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect()
        };
        let secret = hex("a1 1a f9 f0 55 31 f8 56 ad 47 11 6b 45 a9 50 32 82 04 b4 f4 4b fb 6b 3a 4b 4f 1f 3f cb 63 16 43");
        let keys = Keys::from_secret(Suite::Aes128Gcm, &secret);
        assert_eq!(
            keys.key[..16],
            hex("9f 02 28 3b 6c 9c 07 ef c2 6b b9 f2 ac 92 e3 56")[..]
        );
        assert_eq!(keys.iv[..], hex("cf 78 2b 88 dd 83 54 9a ad f1 e9 84")[..]);
    }

    #[test]
    fn a_peer_key_update_moves_both_keys_on_when_it_asks() {
        for suite in [Suite::Aes128Gcm, Suite::Aes256Gcm, Suite::Chacha20Poly1305] {
            let (mut server, mut client) = pair(suite, false);
            // The client asks: its KeyUpdate goes out before its next record.
            client.update_keys(true);
            let mut wire = Vec::new();
            client.seal(APPLICATION_DATA, [&b"after"[..]], &mut wire);
            assert_eq!(client.tx_seq, 1, "the new key sealed one record");
            let mut at = 0;
            let (r, n) = server.receive(&mut wire[at..]).unwrap().unwrap();
            assert_eq!(r, Received::KeyUpdate { requested: true });
            at += n;
            let (r, n) = server.receive(&mut wire[at..]).unwrap().unwrap();
            assert_eq!(r, Received::Data(HEADER..HEADER + 5));
            assert_eq!(&wire[at + HEADER..at + HEADER + 5], b"after");
            at += n;
            assert_eq!(at, wire.len());
            // The server owes its own (not requested), before its next record.
            assert!(server.owes_update());
            let mut back = Vec::new();
            server.seal(APPLICATION_DATA, [&b"reply"[..]], &mut back);
            assert!(!server.owes_update());
            let mut at = 0;
            let (r, n) = client.receive(&mut back[at..]).unwrap().unwrap();
            assert_eq!(r, Received::KeyUpdate { requested: false });
            at += n;
            let (r, _) = client.receive(&mut back[at..]).unwrap().unwrap();
            assert!(matches!(r, Received::Data(_)));
            assert!(!client.owes_update(), "not requested: no answer");
        }
    }

    #[test]
    fn a_worn_send_key_is_updated_before_the_next_record_and_tls12_is_spent() {
        let limit = Suite::Aes128Gcm.limits().rekey;
        let (mut server, mut client) = pair(Suite::Aes128Gcm, false);
        (server.tx_seq, client.rx_seq) = (limit - 1, limit - 1);
        let mut wire = Vec::new();
        server.seal(
            APPLICATION_DATA,
            [&[b'a'; MAX_PLAINTEXT + 1][..]],
            &mut wire,
        );
        // One record under the old key, the KeyUpdate (the old key's last), one more.
        let mut at = 0;
        let mut kinds = Vec::new();
        while let Some((r, n)) = client.receive(&mut wire[at..]).unwrap() {
            kinds.push(r);
            at += n;
        }
        assert_eq!(kinds.len(), 3, "{kinds:?}");
        assert_eq!(kinds[1], Received::KeyUpdate { requested: false });
        assert_eq!((server.tx_seq, client.rx_seq), (1, 1));
        // TLS 1.2 cannot: its session is spent.
        let (mut old, _) = pair(Suite::Aes128Gcm, true);
        assert!(!old.spent());
        old.tx_seq = limit;
        assert!(old.spent());
    }

    #[test]
    fn a_worn_receive_key_asks_the_peer_and_one_past_the_bound_is_refused() {
        let limits = Suite::Aes256Gcm.limits();
        let (mut server, mut client) = pair(Suite::Aes256Gcm, false);
        (client.tx_seq, server.rx_seq) = (limits.rekey - 1, limits.rekey - 1);
        let mut wire = Vec::new();
        client.seal(APPLICATION_DATA, [&b"x"[..]], &mut wire);
        let (r, _) = server.receive(&mut wire).unwrap().unwrap();
        assert!(matches!(r, Received::Data(_)));
        assert!(server.owes_update(), "asks the peer to update");
        let mut ask = Vec::new();
        server.seal(APPLICATION_DATA, [&b"y"[..]], &mut ask);
        let (r, n) = client.receive(&mut ask).unwrap().unwrap();
        assert_eq!(r, Received::KeyUpdate { requested: true });
        client.receive(&mut ask[n..]).unwrap().unwrap();
        // The client's answer moves the server's receive key on: counting starts over.
        let mut wire = Vec::new();
        client.seal(APPLICATION_DATA, [&b"z"[..]], &mut wire);
        let (r, n) = server.receive(&mut wire).unwrap().unwrap();
        assert_eq!(r, Received::KeyUpdate { requested: false });
        server.receive(&mut wire[n..]).unwrap().unwrap();
        assert_eq!(server.rx_seq, 1);
        // A peer still under one key at the bound is refused, whatever it sends.
        server.rx_seq = limits.refuse;
        let mut record = [
            23, 3, 3, 0, 17, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(server.receive(&mut record), Err(RecordError::KeyExhausted));
    }

    #[test]
    fn bad_key_updates_and_post_handshake_messages_are_refused() {
        let cases: [(&[u8], bool, RecordError); 5] = [
            (&[KEY_UPDATE, 0, 0, 1, 2], false, RecordError::IllegalUpdate),
            (
                &[KEY_UPDATE, 0, 0, 2, 0, 0],
                false,
                RecordError::UnexpectedHandshake,
            ),
            // Two in one record: the first would not end its record (§5.1).
            (
                &[KEY_UPDATE, 0, 0, 1, 0, KEY_UPDATE, 0, 0, 1, 0],
                false,
                RecordError::UnexpectedHandshake,
            ),
            // A Finished (post-handshake authentication we never asked for).
            (&[20, 0, 0, 1, 0], false, RecordError::UnexpectedHandshake),
            // Any handshake message in TLS 1.2: a renegotiation.
            (&[1, 0, 0, 1, 0], true, RecordError::UnexpectedHandshake),
        ];
        for (content, tls12, error) in cases {
            let (mut server, mut client) = pair(Suite::Aes128Gcm, tls12);
            let mut wire = Vec::new();
            client.seal(HANDSHAKE, [content], &mut wire);
            assert_eq!(server.receive(&mut wire), Err(error), "{content:?}");
        }
        let (mut server, mut client) = pair(Suite::Aes128Gcm, false);
        let mut wire = Vec::new();
        client.seal(20, [&[1u8][..]], &mut wire);
        assert_eq!(
            server.receive(&mut wire),
            Err(RecordError::UnexpectedContent)
        );
        // KeyUpdates in a row, with no data between: 32 pass, the 33rd does not.
        let (mut server, mut client) = pair(Suite::Aes128Gcm, false);
        for i in 0..=MAX_UPDATES_IN_A_ROW {
            client.update_keys(false);
            let mut wire = Vec::new();
            // An empty record of data would reset the count: seal a KeyUpdate alone.
            client.update_if_due(&mut None, &mut wire);
            let got = server.receive(&mut wire);
            if i < MAX_UPDATES_IN_A_ROW {
                assert_eq!(
                    got.unwrap().unwrap().0,
                    Received::KeyUpdate { requested: false }
                );
            } else {
                assert_eq!(got, Err(RecordError::TooManyUpdates));
            }
        }
    }
}
