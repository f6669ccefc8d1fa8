#![no_main]
// TLS records from a peer, opened with a real session's keys (rustls handshakes in memory,
// taken over as the shard does): see roomcast::reactor::tls::fuzz.
use std::sync::OnceLock;

use roomcast::reactor::tls::fuzz;
use roomcast::reactor::tls::record::Records;
use rustls::pki_types::PrivateKeyDer;

/// The sessions, made once (five handshakes, each with a fresh certificate).
fn sessions() -> &'static [Records] {
    static SESSIONS: OnceLock<Vec<Records>> = OnceLock::new();
    SESSIONS.get_or_init(|| {
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
        fuzz::sessions(vec![leaf.der().clone()], key, ca.der().clone()).expect("handshakes")
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::records(sessions(), data));
