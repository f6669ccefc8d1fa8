//! `--tls`: every connection speaks TLS to the server (rustls, trusting whatever
//! certificate it presents: a benchmark, not a client to copy). The scenarios drive plain
//! sockets, so each TLS connection is bridged to one end of a Unix socket pair by a task
//! of this process; the scenario reads and writes the other end as it would a TCP stream.
//! The bridge costs the load generator (reported as its CPU, flagged when saturated), not
//! the server, whose figures are what the comparison with plain runs reads.

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;

static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();

/// Turns TLS on for every connection this process makes.
pub fn enable() {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let _ = CONFIG.set(Arc::new(config));
}

pub fn enabled() -> bool {
    CONFIG.get().is_some()
}

/// With `--tls`: the TLS handshake over `tcp`, and the plain end of its bridge, to use as
/// the connection. Without: `tcp` itself.
pub async fn wrap(tcp: TcpStream) -> std::io::Result<TcpStream> {
    let Some(config) = CONFIG.get() else {
        return Ok(tcp);
    };
    let name = ServerName::try_from("127.0.0.1").expect("an IP name");
    let mut tls = tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await?;
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    ours.set_nonblocking(true)?;
    theirs.set_nonblocking(true)?;
    let mut ours = tokio::net::UnixStream::from_std(ours)?;
    tokio::task::spawn_local(async move {
        let _ = tokio::io::copy_bidirectional(&mut tls, &mut ours).await;
    });
    // A Unix stream socket behind tokio's TcpStream type: the scenarios only read, write
    // and peek it, which are the same calls on both.
    TcpStream::from_std(std::net::TcpStream::from(std::os::fd::OwnedFd::from(
        theirs,
    )))
}

#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
