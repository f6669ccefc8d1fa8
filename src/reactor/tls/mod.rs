//! TLS as a transport layer between a connection's socket bytes and its service.
//!
//! rustls runs each handshake (its buffered `ServerConnection`, a few KB, alive only for
//! the handshake). Once it is done, the session's traffic keys are extracted and the
//! record layer ([`record`]) takes over: an open `wss` connection keeps 176 bytes of keys,
//! traffic secrets and sequence numbers plus a few counters in one boxed [`Session`]
//! (192 bytes), its transport in a table beside the slab (the slot itself keeps its
//! size), and no buffer while idle. The TLS 1.3 traffic secrets, which key updates derive
//! from, are what rustls hands its `KeyLog` (see [`capture`]).
//! Records are opened in place in the receive buffer; queued frames, shared by every
//! recipient, are sealed per recipient when they are sent, into a buffer that lives only
//! until the kernel has taken it.
//!
//! What the reactor core does with this lives in `shard/tls.rs`; where it asks a
//! connection's transport, in `shard/transport.rs`.

pub mod fuzz;
pub mod keys;
pub mod record;

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::ServerConnection;
use rustls::ServerConfig;

use record::{Records, TrafficSecrets};

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
    config_for(chain, key_der).map_err(|e| {
        format!(
            "--tls-cert {} and --tls-key {} do not make a certificate: {e}",
            cert.display(),
            key.display()
        )
    })
}

/// The server configuration for a certificate chain and its key: TLS 1.3 and 1.2, the
/// *ring* provider's suites, ALPN `http/1.1`, and what the record layer needs to take a
/// session over.
pub fn config_for(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut provider = rustls::crypto::ring::default_provider();
    // Our order, not the client's: TLS 1.3 first, then AES-128-GCM (the cheapest per byte
    // with AES instructions, and as strong as the 128-bit key exchange), AES-256-GCM,
    // ChaCha20-Poly1305. Every suite is AEAD with ECDHE (forward secrecy); a scanner
    // rates a server without an order of its own as a finding.
    provider.cipher_suites.sort_by_key(|s| {
        let name = format!("{:?}", s.suite());
        let aead = ["AES_128_GCM", "AES_256_GCM", "CHACHA20"]
            .iter()
            .position(|a| name.contains(a))
            .unwrap_or(3);
        (
            s.version().version != rustls::ProtocolVersion::TLSv1_3,
            aead,
        )
    });
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.ignore_client_order = true;
    // What a WebSocket server speaks (RFC 6455 runs over HTTP/1.1).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // The record layer is ours once the handshake is done: the keys are extracted, and
    // the TLS 1.3 traffic secrets that key updates derive from are captured as logged.
    config.enable_secret_extraction = true;
    config.key_log = Arc::new(capture::Capture);
    // No TLS 1.3 tickets: each would be a post-handshake message per connection, and
    // a resumed session saves a client little next to its WebSocket reconnect.
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The TLS 1.3 traffic secrets of the handshake running on this thread, taken from
/// rustls's `KeyLog` hook: rustls logs `CLIENT_TRAFFIC_SECRET_0` and
/// `SERVER_TRAFFIC_SECRET_0` while it processes the flight that completes its side of the
/// key schedule, synchronously, inside `process_new_packets` on the shard's thread. So
/// the shard clears the cell before each call and takes what was logged after it: what
/// is there belongs to that connection (and `Records::new` checks that the secrets give
/// the very keys rustls extracts). Nothing is written anywhere else.
pub mod capture {
    use super::*;

    thread_local! {
        static LOGGED: RefCell<TrafficSecrets> = RefCell::new(TrafficSecrets::default());
    }

    /// The `KeyLog` of every server configuration (see the module).
    #[derive(Debug)]
    pub struct Capture;

    impl rustls::KeyLog for Capture {
        fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
            LOGGED.with(|l| l.borrow_mut().absorb(label, secret));
        }

        fn will_log(&self, label: &str) -> bool {
            matches!(label, "CLIENT_TRAFFIC_SECRET_0" | "SERVER_TRAFFIC_SECRET_0")
        }
    }

    /// Runs `f` (a `process_new_packets`) and adds what was logged meanwhile to `into`.
    pub fn around<R>(into: &mut TrafficSecrets, f: impl FnOnce() -> R) -> R {
        LOGGED.with(|l| *l.borrow_mut() = TrafficSecrets::default());
        let r = f();
        let logged = LOGGED.with(|l| std::mem::take(&mut *l.borrow_mut()));
        if logged.client.is_some() {
            into.client = logged.client;
        }
        if logged.server.is_some() {
            into.server = logged.server;
        }
        r
    }
}

/// A handshake in progress: rustls's connection, and the TLS 1.3 traffic secrets it has
/// logged so far.
pub struct Handshake {
    pub conn: ServerConnection,
    pub traffic: TrafficSecrets,
}

/// Where a TLS connection is.
pub enum Phase {
    /// rustls runs the handshake.
    Handshake(Box<Handshake>),
    /// Established: the record layer holds the keys.
    Open(Records),
    /// The handshake failed (or its keys could not be taken over): closing.
    Failed,
}

/// Bytes in flight through a TLS connection, boxed and held only while there are any: an
/// idle connection pays one empty pointer for them.
#[derive(Default)]
pub struct Flight {
    /// Ciphertext received short of a whole record.
    pub cin: Vec<u8>,
    /// Records sealed for the kernel, and how much of them it has taken.
    pub cout: Vec<u8>,
    pub cout_sent: usize,
    /// The frames at the front of the out-ring `cout` carries, and their bytes.
    pub frames: u16,
    pub plain: u32,
}

/// One TLS connection's transport state (held, boxed, by its `Transport::Tls`).
pub struct Session {
    pub phase: Phase,
    /// What is in flight (`None` when nothing is).
    pub flight: Option<Box<Flight>>,
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
            Ok(conn) => Phase::Handshake(Box::new(Handshake {
                conn,
                traffic: TrafficSecrets::default(),
            })),
            Err(e) => {
                tracing::warn!(error = %e, "TLS session could not start");
                Phase::Failed
            }
        };
        Session {
            phase,
            flight: None,
            raw: 0,
            notified: false,
            heard: false,
        }
    }

    /// What is in flight, boxed on first use.
    pub fn flight(&mut self) -> &mut Flight {
        self.flight.get_or_insert_with(Box::default)
    }

    /// Frees the flight once nothing is in it.
    pub fn tidy(&mut self) {
        if self
            .flight
            .as_ref()
            .is_some_and(|f| f.cin.is_empty() && f.cout_sent >= f.cout.len())
        {
            self.flight = None;
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
    /// within mimalloc's 192-byte size class. With the 224-byte class (when it first kept
    /// traffic secrets) an idle `wss` connection cost 39 B more, 395 against 356 B
    /// (`scripts/ab.sh`, idletls), past the 400 B budget in some runs.
    #[test]
    fn a_session_fits_its_size_class() {
        let bytes = std::mem::size_of::<super::Session>();
        assert!(bytes <= 192, "{bytes}");
        // For the record: what rustls's kernel-connection API would hold instead of the
        // 176 bytes of `Records` (before its boxed key schedule state).
        let kernel = std::mem::size_of::<
            rustls::kernel::KernelConnection<rustls::server::ServerConnectionData>,
        >();
        println!(
            "Session {bytes} B, Records {} B, KernelConnection {kernel} B + its boxed state",
            std::mem::size_of::<super::Records>()
        );
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
