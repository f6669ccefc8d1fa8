//! A test PKI (a CA and a certificate for 127.0.0.1 it signed, made by rcgen) and TLS
//! clients for it: WebSocket (tokio-tungstenite over rustls) and blocking HTTPS.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

use super::{Server, Ws};

/// Files a server and its clients need, in a fresh directory.
pub struct Pki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca_der: CertificateDer<'static>,
    /// The served certificate, to tell which one a handshake got.
    pub cert_der: CertificateDer<'static>,
    /// base64(SHA-256(its public key info)), for Chromium's
    /// `--ignore-certificate-errors-spki-list`.
    pub spki_sha256: String,
}

impl Pki {
    /// A CA and a server certificate for `127.0.0.1` and `localhost` signed by it.
    pub fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("roomcast-pki-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("roomcast test CA {name}"),
        );
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();
        let pki = Pki {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            ca_der: ca.der().clone(),
            cert_der: leaf.der().clone(),
            spki_sha256: {
                use base64::Engine;
                let digest =
                    ring::digest::digest(&ring::digest::SHA256, &leaf_key.public_key_der());
                base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
            },
            dir,
        };
        std::fs::write(&pki.ca, ca.pem()).unwrap();
        // The chain: the server's certificate, then the CA's.
        std::fs::write(&pki.cert, format!("{}{}", leaf.pem(), ca.pem())).unwrap();
        std::fs::write(&pki.key, leaf_key.serialize_pem()).unwrap();
        pki
    }

    /// A client that trusts this CA only, speaking `versions`, offering `suites` (all of
    /// the ring provider's when empty).
    pub fn client(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
        suites: &[rustls::SupportedCipherSuite],
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        let mut provider = rustls::crypto::ring::default_provider();
        if !suites.is_empty() {
            provider.cipher_suites = suites.to_vec();
        }
        let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// TLS 1.3 and 1.2, every suite.
    pub fn any_client(&self) -> Arc<ClientConfig> {
        self.client(rustls::ALL_VERSIONS, &[])
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Replaces the served certificate and key (and the CA clients must trust) with new
/// ones from a new CA.
pub fn reissue(pki: &mut Pki, name: &str) {
    let fresh = Pki::new(name);
    std::fs::copy(&fresh.cert, &pki.cert).unwrap();
    std::fs::copy(&fresh.key, &pki.key).unwrap();
    std::fs::copy(&fresh.ca, &pki.ca).unwrap();
    pki.ca_der = fresh.ca_der.clone();
    pki.cert_der = fresh.cert_der.clone();
    pki.spki_sha256 = fresh.spki_sha256.clone();
}

/// A `wss://` connection to `path`.
pub async fn connect(server: &Server, path: &str, config: Arc<ClientConfig>) -> Ws {
    let url = format!("wss://{}{}", server.addr, path);
    let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(
        url,
        None,
        false,
        Some(tokio_tungstenite::Connector::Rustls(config)),
    )
    .await
    .unwrap();
    ws
}

/// The certificate the server presented on `ws`.
pub fn peer_certificate(ws: &Ws) -> CertificateDer<'static> {
    match ws.get_ref() {
        tokio_tungstenite::MaybeTlsStream::Rustls(s) => {
            s.get_ref().1.peer_certificates().unwrap()[0].clone()
        }
        _ => panic!("not a TLS stream"),
    }
}

/// A blocking TLS connection to `addr`.
pub fn stream(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    rustls::StreamOwned::new(conn, sock)
}

/// `GET path` over HTTPS: (status code, body).
pub fn get(addr: SocketAddr, path: &str, config: Arc<ClientConfig>) -> (u16, String) {
    super::get_over(stream(addr, config), path)
}

/// [`Server::settles_to`] asking `/stats` over TLS.
pub fn settles_to(server: &Server, n: u64, config: &Arc<ClientConfig>) {
    server.settles_with(n, || {
        let (status, body) = get(server.addr, "/stats", config.clone());
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    });
}
