//! TLS as a transport layer between a connection's socket bytes and its service.
//!
//! rustls runs each handshake (its buffered `ServerConnection`, a few KB, alive only for
//! the handshake). Once it is done, the session's traffic keys are extracted and the
//! record layer ([`record`]) takes over: an open `wss` connection keeps ~100 bytes of keys
//! and sequence numbers plus a few counters in one boxed [`Session`], its transport in a
//! table beside the slab (the slot itself keeps its size), and no buffer while idle.
//! Records are opened in place in the receive buffer; queued frames, shared by every
//! recipient, are sealed per recipient when they are sent, into a buffer that lives only
//! until the kernel has taken it.
//!
//! What the reactor core does with this lives in `shard/tls.rs`; where it asks a
//! connection's transport, in `shard/transport.rs`.

pub mod ktls;
pub mod record;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::ServerConnection;
use rustls::ServerConfig;
use thin_vec::ThinVec;

use record::Records;

/// The certificate and key the listener serves, reloadable (SIGHUP) for new connections.
pub struct Source {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<ServerConfig>>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Source {
    /// Reads `cert` (PEM, the chain in order) and `key` (PEM: PKCS#8, PKCS#1 or SEC1) and
    /// checks that they belong together.
    pub fn load(cert: &Path, key: &Path) -> Result<Source, String> {
        let config = server_config(cert, key)?;
        Ok(Source {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new(config),
        })
    }

    /// Reads the files again: new connections get the new certificate, open ones keep
    /// theirs. A file that does not load leaves the current certificate in place.
    pub fn reload(&self) -> Result<(), String> {
        let config = server_config(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
        Ok(())
    }

    /// The configuration a new connection's handshake uses.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "--tls-cert {}: no PEM certificate in the file",
            cert.display()
        ));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| {
            format!(
                "--tls-cert {} and --tls-key {} do not make a certificate: {e}",
                cert.display(),
                key.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // The record layer is ours once the handshake is done.
    config.enable_secret_extraction = true;
    // No TLS 1.3 tickets: each would be a post-handshake message per connection, and
    // a resumed session saves a client little next to its WebSocket reconnect.
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// Where a TLS connection is.
pub enum Phase {
    /// rustls runs the handshake.
    Handshake(Box<ServerConnection>),
    /// Established: the record layer holds the keys.
    Open(Records),
    /// The handshake failed (or its keys could not be taken over): closing.
    Failed,
}

/// One TLS connection's transport state (held, boxed, by its `Transport::Tls`).
pub struct Session {
    pub phase: Phase,
    /// Ciphertext received short of a whole record.
    pub cin: ThinVec<u8>,
    /// Records sealed for the kernel, and how much of them it has taken.
    pub cout: Vec<u8>,
    pub cout_sent: usize,
    /// The frames at the front of the out-ring `cout` carries, and their bytes.
    pub frames: u16,
    pub plain: u32,
    /// Frames at the front of the out-ring that are already wire bytes (the handshake's
    /// own records, a sealed alert, the answer to plain HTTP), sent as they are.
    pub raw: u16,
    /// Whether our close_notify is queued.
    pub notified: bool,
    /// Whether any bytes have arrived (plain HTTP is recognised in the first ones).
    pub heard: bool,
}

impl Session {
    /// A new connection's handshake with `config`. If rustls cannot start one, the
    /// session is failed from the start: the connection is closed at its first bytes
    /// (never read as plain).
    pub fn start(config: Arc<ServerConfig>) -> Session {
        let phase = match ServerConnection::new(config) {
            Ok(conn) => Phase::Handshake(Box::new(conn)),
            Err(e) => {
                tracing::warn!(error = %e, "TLS session could not start");
                Phase::Failed
            }
        };
        Session {
            phase,
            cin: ThinVec::new(),
            cout: Vec::new(),
            cout_sent: 0,
            frames: 0,
            plain: 0,
            raw: 0,
            notified: false,
            heard: false,
        }
    }

    /// Whether rustls still runs the handshake.
    pub fn is_handshaking(&self) -> bool {
        matches!(self.phase, Phase::Handshake(_))
    }
}

/// Whether the first bytes of a connection look like plain HTTP (a request line) rather
/// than a TLS record: a TLS record starts with a content type between 20 and 24.
pub fn looks_like_http(first: &[u8]) -> bool {
    first.first().is_some_and(u8::is_ascii_uppercase)
}

/// What plain HTTP sent to the TLS port gets: an answer it can read, then the close.
pub const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n\
Content-Length: 50\r\nConnection: close\r\n\r\nthis port speaks TLS: use wss:// or https:// here\n";

#[cfg(test)]
mod tests {
    /// An open connection's TLS state is one boxed `Session` (and a table entry): keep it
    /// within mimalloc's 192-byte size class (bench/RESULTS.md measured 163–179 B per
    /// idle connection over plain).
    #[test]
    fn a_session_fits_its_size_class() {
        let bytes = std::mem::size_of::<super::Session>();
        assert!(bytes <= 192, "{bytes}");
    }

    #[test]
    fn the_plain_http_answer_says_its_length() {
        let text = std::str::from_utf8(super::PLAIN_HTTP_ANSWER).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        assert!(super::looks_like_http(b"GET / HTTP/1.1"));
        assert!(!super::looks_like_http(&[22, 3, 1]));
    }
}
