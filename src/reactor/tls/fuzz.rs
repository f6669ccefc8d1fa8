//! The fuzz entry point for TLS records from a peer (`fuzz/fuzz_targets/tls_records.rs`),
//! run by unit tests over its seed corpus too (`fuzz/seeds/tls_records`), like the
//! protocol's targets (`protocol::fuzz`).
//!
//! The records are opened with a real session's keys: [`sessions`] runs rustls handshakes
//! in memory (a rustls client against this server's configuration) and takes the server
//! side over as the shard does. The input then scripts what the peer sends, with the
//! peer's side of the same keys ([`Records::mirror`]): records it seals (of any content
//! type, key updates among them), raw bytes, bit flips, fed to the server in chunks as a
//! socket delivers them; and the server's replies, which the peer must open. The property:
//! nothing panics, opened plaintext lies within its record, and as long as the server
//! has refused nothing, what it seals opens at the peer (the key updates of both sides
//! stay in step).

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConnection};

use super::record::{self, Received, Records, TrafficSecrets};

/// The sessions a fuzz input picks from: TLS 1.3 in each suite, TLS 1.2 with AES-128-GCM
/// and ChaCha20-Poly1305, the server side of each. `chain` and `key` are the server's
/// certificate and key, `ca` the certificate a client trusts. `None` if a handshake fails.
pub fn sessions(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    ca: CertificateDer<'static>,
) -> Option<Vec<Records>> {
    use rustls::crypto::ring::cipher_suite as cs;
    let server = super::config_for(chain, key).ok()?;
    let cases = [
        (&rustls::version::TLS13, cs::TLS13_AES_128_GCM_SHA256),
        (&rustls::version::TLS13, cs::TLS13_AES_256_GCM_SHA384),
        (&rustls::version::TLS13, cs::TLS13_CHACHA20_POLY1305_SHA256),
        (
            &rustls::version::TLS12,
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ),
        (
            &rustls::version::TLS12,
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
    ];
    cases
        .into_iter()
        .map(|(version, suite)| {
            let mut roots = RootCertStore::empty();
            roots.add(ca.clone()).ok()?;
            let mut provider = rustls::crypto::ring::default_provider();
            provider.cipher_suites = vec![suite];
            let client = ClientConfig::builder_with_provider(Arc::new(provider))
                .with_protocol_versions(&[version])
                .ok()?
                .with_root_certificates(roots)
                .with_no_client_auth();
            handshake(server.clone(), Arc::new(client))
        })
        .collect()
}

/// A whole handshake between a rustls client and `server`, in memory; the server's side
/// taken over as `shard/tls.rs` does (keys extracted, TLS 1.3 secrets captured).
pub fn handshake(server: Arc<rustls::ServerConfig>, client: Arc<ClientConfig>) -> Option<Records> {
    let mut s = ServerConnection::new(server).ok()?;
    let name = ServerName::try_from("localhost").ok()?;
    let mut c = ClientConnection::new(client, name).ok()?;
    let mut traffic = TrafficSecrets::default();
    let mut wire = Vec::new();
    for _ in 0..10 {
        if !s.is_handshaking() && !c.is_handshaking() {
            break;
        }
        wire.clear();
        while c.wants_write() {
            c.write_tls(&mut wire).ok()?;
        }
        let mut rd = &wire[..];
        while !rd.is_empty() {
            s.read_tls(&mut rd).ok()?;
            super::capture::around(&mut traffic, || s.process_new_packets().map(drop)).ok()?;
        }
        wire.clear();
        while s.wants_write() {
            s.write_tls(&mut wire).ok()?;
        }
        let mut rd = &wire[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).ok()?;
            c.process_new_packets().ok()?;
        }
    }
    if s.is_handshaking() {
        return None;
    }
    let tls12 = s.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_2);
    Records::new(tls12, s.dangerous_extract_secrets().ok()?, &traffic)
}

/// Reads the input a byte at a time (zeros past its end).
struct Script<'a>(&'a [u8]);

impl Script<'_> {
    fn byte(&mut self) -> u8 {
        let (&b, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        b
    }

    fn take(&mut self, n: usize) -> &[u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }
}

/// The server side of one fuzz run: what it has received and not yet taken, and whether
/// it has refused the peer (or heard its alert).
struct Server {
    records: Records,
    pending: Vec<u8>,
    chunk: usize,
    done: bool,
}

impl Server {
    /// Feeds `wire` in chunks and takes every whole record, as the shard does.
    fn feed(&mut self, wire: &[u8]) {
        for piece in wire.chunks(self.chunk) {
            if self.done {
                return;
            }
            self.pending.extend_from_slice(piece);
            let mut at = 0;
            loop {
                let rest = &mut self.pending[at..];
                match self.records.receive(rest) {
                    Ok(Some((received, len))) => {
                        assert!(len <= rest.len() && len > record::HEADER);
                        if let Received::Data(plain) = &received {
                            assert!(plain.start >= record::HEADER && plain.end <= len);
                            assert!(plain.len() <= record::MAX_PLAINTEXT);
                        }
                        at += len;
                        if received == Received::Alert {
                            self.done = true;
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(_) => {
                        self.done = true;
                        return;
                    }
                }
            }
            self.pending.drain(..at);
        }
    }
}

/// Runs the script in `data` against session `data[0] % sessions.len()` (see the module).
pub fn records(sessions: &[Records], data: &[u8]) {
    let Some((&pick, data)) = data.split_first() else {
        return;
    };
    if sessions.is_empty() {
        return;
    }
    let mut script = Script(data);
    let mut server = Server {
        records: sessions[usize::from(pick) % sessions.len()].clone(),
        pending: Vec::new(),
        chunk: usize::from(script.byte()) * 67 + 1,
        done: false,
    };
    let mut peer = server.records.mirror();
    let mut wire = Vec::new();
    while !script.0.is_empty() && !server.done {
        match script.byte() % 6 {
            // Raw bytes, as if from the wire.
            0 => {
                let n = usize::from(script.byte());
                wire.extend_from_slice(script.take(n));
            }
            // A record the peer seals: content type, length, content.
            1 => {
                let typ = match script.byte() {
                    0..=99 => record::APPLICATION_DATA,
                    100..=139 => record::HANDSHAKE,
                    140..=159 => record::ALERT,
                    other => other,
                };
                let n = usize::from(u16::from_be_bytes([script.byte(), script.byte()]));
                let content = script.take(n);
                peer.seal(typ, [content], &mut wire);
            }
            // The peer updates its key (asking the server to update its own, or not):
            // the KeyUpdate leads its next record.
            2 => peer.update_keys(script.byte() & 1 == 1),
            // A bit flipped somewhere in what is still to be sent.
            3 => {
                let at = usize::from(u16::from_be_bytes([script.byte(), script.byte()]));
                let mask = script.byte();
                if !wire.is_empty() {
                    let len = wire.len();
                    wire[at % len] ^= mask;
                }
            }
            // What was written so far reaches the server.
            4 => {
                server.feed(&wire);
                wire.clear();
            }
            // The server replies: the peer must open it.
            _ => {
                server.feed(&wire);
                wire.clear();
                reply(&mut server, &mut peer, script.byte());
            }
        }
    }
    server.feed(&wire);
    reply(&mut server, &mut peer, 1);
}

/// The server seals `n` bytes (and whatever KeyUpdate it owes); a server that refused
/// nothing must be understood by its peer.
fn reply(server: &mut Server, peer: &mut Records, n: u8) {
    if server.done {
        return;
    }
    let content = vec![n; usize::from(n) * 97];
    let mut wire = Vec::new();
    server
        .records
        .seal(record::APPLICATION_DATA, [&content[..]], &mut wire);
    let mut got = Vec::new();
    let mut at = 0;
    while at < wire.len() {
        let (received, len) = peer
            .receive(&mut wire[at..])
            .expect("the peer opens what the server sealed")
            .expect("whole records");
        if let Received::Data(plain) = received {
            got.extend_from_slice(&wire[at..][plain]);
        }
        at += len;
    }
    assert_eq!(got, content);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA and a server certificate it signed (rcgen), and the sessions of [`sessions`].
    pub(crate) fn real_sessions() -> Vec<Records> {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        let key = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        sessions(vec![leaf.der().clone()], key, ca.der().clone()).expect("handshakes")
    }

    #[test]
    fn every_session_is_taken_over_with_the_keys_of_its_suite() {
        let sessions = real_sessions();
        assert_eq!(sessions.len(), 5);
        for (s, tls12) in sessions.iter().zip([false, false, false, true, true]) {
            assert_eq!(s.tls12, tls12, "{s:?}");
        }
        // A KeyUpdate both ways, then data, in every one.
        for i in 0..sessions.len() as u8 {
            records(&sessions, &[i, 3, 2, 1, 1, 0, 0, 3, b'a', b'b', b'c', 5, 7]);
        }
    }

    #[test]
    fn tls_records_target_over_seed_corpus() {
        let sessions = real_sessions();
        for seed in crate::protocol::fuzz::seeds("tls_records") {
            // Each seed against every session, and with every prefix cut short.
            for pick in 0..sessions.len() as u8 {
                let mut input = seed.clone();
                if let Some(b) = input.first_mut() {
                    *b = pick;
                }
                records(&sessions, &input);
                for cut in 0..input.len() {
                    records(&sessions, &input[..cut]);
                }
            }
        }
    }
}
