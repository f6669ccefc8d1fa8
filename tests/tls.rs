//! wss:// and https:// (--tls-cert/--tls-key) on both backends, with real clients: rustls
//! (tokio-tungstenite) in every protocol version and cipher suite, Python `websockets`,
//! Node `ws`, headless Chromium and openssl's s_client; what bad input on the TLS port
//! gets; certificate reload on SIGHUP under 1,000 open connections; exit 2 on a bad
//! certificate; TLS 1.3 key updates from the client and, under a lowered record limit,
//! from the server (and TLS 1.2 ended at its limit); the scanners testssl.sh and sslscan,
//! whose reports are kept in target/artifacts/.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::tls::{self, Pki};
use common::{next_data, Server};
use futures_util::SinkExt;
use roomcast::reactor::tls::record;
use rustls::crypto::ring::cipher_suite as cs;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(5);

fn start(backend: &str, pki: &Pki, extra: &[&str]) -> Server {
    let mut args = vec![
        "--tls-cert",
        pki.cert.to_str().unwrap(),
        "--tls-key",
        pki.key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Server::start(backend, &args)
}

async fn echo(ws: &mut common::Ws, msg: Message) {
    ws.send(msg.clone()).await.unwrap();
    let got = tokio::time::timeout(WAIT, next_data(ws)).await.unwrap();
    assert_eq!(got.unwrap().unwrap(), msg);
}

/// `roomcast_tls_handshakes_total{outcome}` summed over the shards, from `/metrics`.
fn handshakes(metrics: &str, outcome: &str) -> u64 {
    let label = format!("outcome=\"{outcome}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("roomcast_tls_handshakes_total{") && l.contains(&label))
        .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
        .sum()
}

async fn json_next(ws: &mut common::Ws) -> Value {
    match tokio::time::timeout(WAIT, next_data(ws)).await.unwrap() {
        Some(Ok(Message::Text(t))) => serde_json::from_str(&t).unwrap(),
        other => panic!("expected text, got {other:?}"),
    }
}

/// The record limit the key-update tests lower the server's to (see
/// `record::TEST_LIMIT_VAR`): keys are updated at 40 records, a peer's key is refused
/// past 80.
const LIMIT: u64 = 40;

/// A one-shard TLS server whose AEAD record limits are lowered to [`LIMIT`].
fn start_with_record_limit(backend: &str, pki: &Pki) -> Server {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_roomcast"));
    cmd.env(record::TEST_LIMIT_VAR, LIMIT.to_string())
        .env("RUST_LOG", "warn,roomcast=info")
        .stderr(std::process::Stdio::inherit())
        .args([
            "serve",
            "--backend",
            backend,
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "1",
        ])
        .args([
            "--ping-interval",
            "3600",
            "--pong-timeout",
            "60",
            "--tls-cert",
        ])
        .arg(&pki.cert)
        .arg("--tls-key")
        .arg(&pki.key);
    Server::launch(cmd)
}

/// The rustls connection under a `wss://` client.
fn rustls_of(ws: &mut common::Ws) -> &mut rustls::ClientConnection {
    match ws.get_mut() {
        tokio_tungstenite::MaybeTlsStream::Rustls(s) => s.get_mut().1,
        _ => panic!("not a TLS stream"),
    }
}

/// Echoes on `ws` one message at a time (each its own record both ways) until `n` have
/// come back or the server ends the connection; how many came back.
async fn echo_one_at_a_time(ws: &mut common::Ws, n: usize) -> usize {
    for i in 0..n {
        let msg = Message::Text(format!("m{i:03}"));
        if ws.send(msg.clone()).await.is_err() {
            return i;
        }
        match tokio::time::timeout(WAIT, next_data(ws)).await.unwrap() {
            Some(Ok(got)) => assert_eq!(got, msg),
            _ => return i,
        }
    }
    n
}

/// `openssl s_client` speaking WebSocket on `/echo`: text frames one at a time, each
/// after the echo of the one before, the `K` command (a KeyUpdate asking for one back)
/// before frame `key_update_at`. Returns the echoes and s_client's output (`-msg`: every
/// TLS message it sent `>>>` and received `<<<`).
fn s_client_echoes(
    addr: std::net::SocketAddr,
    pki: &Pki,
    n: usize,
    key_update_at: Option<usize>,
    args: &[&str],
) -> (usize, String) {
    use std::process::{Command, Stdio};
    use std::sync::{Arc, Mutex};
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "localhost",
        ])
        .args(["-alpn", "http/1.1", "-msg", "-CAfile"])
        .arg(&pki.ca)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client");
    // Both streams into one buffer: the trace and the echoes on stdout, the answers to
    // commands (`KEYUPDATE`) on stderr.
    let out = Arc::new(Mutex::new(Vec::new()));
    let pump = |mut from: Box<dyn Read + Send>| {
        let sink = out.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = from.read(&mut buf) {
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let readers = [
        pump(Box::new(child.stdout.take().unwrap())),
        pump(Box::new(child.stderr.take().unwrap())),
    ];
    let seen = |what: &str| {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if String::from_utf8_lossy(&out.lock().unwrap()).contains(what) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    };
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&common::upgrade_request("/echo")).unwrap();
    assert!(
        seen("101 Switching Protocols"),
        "{}",
        String::from_utf8_lossy(&out.lock().unwrap())
    );
    let mut echoes = 0;
    for i in 0..n {
        if key_update_at == Some(i) {
            // A line of its own, read alone: s_client's command, not data.
            std::thread::sleep(Duration::from_millis(100));
            stdin.write_all(b"K\n").unwrap();
            assert!(seen("KEYUPDATE"));
            std::thread::sleep(Duration::from_millis(100));
        }
        let text = format!("m{i:03}");
        if stdin
            .write_all(&common::client_frame(0x81, text.as_bytes()))
            .is_err()
            || !seen(&text)
        {
            break;
        }
        echoes += 1;
    }
    let _ = child.kill();
    let _ = child.wait();
    for reader in readers {
        let _ = reader.join();
    }
    let text = String::from_utf8_lossy(&out.lock().unwrap()).into_owned();
    (echoes, text)
}

/// KeyUpdate messages in s_client's `-msg` output: (sent, received).
fn key_updates(msg: &str) -> (usize, usize) {
    let count = |dir: &str| {
        msg.lines()
            .filter(|l| l.starts_with(dir) && l.ends_with("KeyUpdate"))
            .count()
    };
    (count(">>>"), count("<<<"))
}

/// A TLS 1.3 peer that never updates its key, though asked: a rustls handshake, then the
/// session's keys driven by hand (the record layer's own, as a client). Sends one echo
/// frame at a time until the server ends the connection; returns the echoes and whether
/// the server asked it for a key update.
fn lax_peer(server: &Server, pki: &Pki) -> (usize, bool) {
    use roomcast::reactor::tls::capture;
    use roomcast::reactor::tls::record::{Received, Records, TrafficSecrets};
    let mut config = (*pki.client(&[&rustls::version::TLS13], &[])).clone();
    config.enable_secret_extraction = true;
    config.key_log = std::sync::Arc::new(capture::Capture);
    let rustls::StreamOwned { mut conn, mut sock } = tls::stream(server.addr, config.into());
    let mut traffic = TrafficSecrets::default();
    capture::around(&mut traffic, || {
        while conn.is_handshaking() {
            conn.complete_io(&mut sock).unwrap();
        }
    });
    let secrets = conn.dangerous_extract_secrets().unwrap();
    // The record layer takes a server's view: swap the directions, then mirror.
    let swapped = rustls::ExtractedSecrets {
        tx: secrets.rx,
        rx: secrets.tx,
    };
    let client = Records::new(false, swapped, &traffic).unwrap().mirror();
    // One copy seals and one opens: the sealing one never hears a request to update.
    let (mut tx, mut rx) = (client.clone(), client);
    let mut pending = Vec::new();
    let mut asked = false;
    let mut wait_for = |sock: &mut std::net::TcpStream, what: &[u8]| -> bool {
        let mut buf = [0u8; 4096];
        loop {
            while let Ok(Some((received, len))) = rx.receive(&mut pending) {
                let found = match received {
                    Received::Data(plain) => pending[plain].windows(what.len()).any(|w| w == what),
                    Received::KeyUpdate { requested } => {
                        asked |= requested;
                        false
                    }
                    Received::Alert => return false,
                };
                pending.drain(..len);
                if found {
                    return true;
                }
            }
            match sock.read(&mut buf) {
                Ok(n @ 1..) => pending.extend_from_slice(&buf[..n]),
                _ => return false,
            }
        }
    };
    let mut wire = Vec::new();
    tx.seal(
        record::APPLICATION_DATA,
        [&common::upgrade_request("/echo")[..]],
        &mut wire,
    );
    sock.write_all(&wire).unwrap();
    assert!(wait_for(&mut sock, b"101 Switching Protocols"));
    let mut echoes = 0;
    for i in 0..3 * LIMIT {
        let text = format!("m{i:03}");
        wire.clear();
        tx.seal(
            record::APPLICATION_DATA,
            [&common::client_frame(0x81, text.as_bytes())[..]],
            &mut wire,
        );
        if sock.write_all(&wire).is_err() || !wait_for(&mut sock, text.as_bytes()) {
            break;
        }
        echoes += 1;
    }
    (echoes, asked)
}

/// A CA and a server certificate for the scanners: valid from yesterday for 90 days, with
/// the extensions a public certificate carries (key usage, serverAuth, a CRL distribution
/// point: never fetched, testssl.sh does not phone out unless told to). The CA is handed
/// to testssl.sh (`--add-ca`), so its chain-of-trust check runs for real.
fn scanner_pki(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let day = |offset: i64| {
        // Civil date of a day number (days since 1970-01-01), H. Hinnant's algorithm.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        let z = now.as_secs() as i64 / 86_400 + offset + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let y = (yoe + era * 400 + i64::from(m <= 2)) as i32;
        rcgen::date_time_ymd(y, m, d)
    };
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "roomcast scanner test CA");
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    (ca.not_before, ca.not_after) = (day(-1), day(90));
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut leaf =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    leaf.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    leaf.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
        uris: vec!["http://127.0.0.1:9/roomcast-test-ca.crl".to_owned()],
    }];
    (leaf.not_before, leaf.not_after) = (day(-1), day(90));
    let leaf = leaf.signed_by(&key, &ca, &ca_key).unwrap();
    let (ca_path, cert, key_path) = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&ca_path, ca.pem()).unwrap();
    std::fs::write(&cert, format!("{}{}", leaf.pem(), ca.pem())).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (ca_path, cert, key_path)
}

/// Where the scanners' reports are kept.
fn artifacts() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// sslscan's XML report: every protocol below TLS 1.2 disabled, no compression, no
/// renegotiation, not vulnerable to Heartbleed, and every accepted suite an AEAD of at
/// least 128 bits with an ephemeral key exchange (forward secrecy), none anonymous.
fn check_sslscan(xml: &str) {
    let tags = |name: &str| -> Vec<String> {
        xml.split('<')
            .filter(|t| t.starts_with(&format!("{name} ")))
            .map(|t| t.split('>').next().unwrap_or("").to_owned())
            .collect()
    };
    let attr = |tag: &str, a: &str| -> String {
        tag.split(&format!(" {a}=\""))
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or("")
            .to_owned()
    };
    let protocols = tags("protocol");
    assert_eq!(protocols.len(), 6, "{xml}");
    for p in &protocols {
        let name = format!("{} {}", attr(p, "type"), attr(p, "version"));
        let want = if matches!(name.as_str(), "tls 1.2" | "tls 1.3") {
            "1"
        } else {
            "0"
        };
        assert_eq!(attr(p, "enabled"), want, "{name}: {p}");
    }
    for c in tags("compression") {
        assert_ne!(attr(&c, "supported"), "1", "compression: {c}");
    }
    let reneg = tags("renegotiation");
    assert_eq!(reneg.len(), 1, "{xml}");
    assert_eq!(
        attr(&reneg[0], "supported"),
        "0",
        "renegotiation: {}",
        reneg[0]
    );
    for h in tags("heartbleed") {
        assert_eq!(attr(&h, "vulnerable"), "0", "{h}");
    }
    let ciphers = tags("cipher");
    assert!(ciphers.len() >= 6, "{xml}");
    for c in &ciphers {
        let (name, version) = (attr(c, "cipher"), attr(c, "sslversion"));
        let bits: u32 = attr(c, "bits").parse().unwrap();
        assert!(bits >= 128, "{c}");
        assert!(
            name.contains("GCM") || name.contains("CHACHA20"),
            "not an AEAD: {c}"
        );
        assert!(
            version == "TLSv1.3" || name.starts_with("ECDHE-"),
            "no forward secrecy: {c}"
        );
        for weak in ["NULL", "ADH", "AECDH", "anon", "RC4", "DES", "EXP", "MD5"] {
            assert!(!name.contains(weak), "{c}");
        }
    }
}

/// testssl.sh's JSON findings: nothing rated MEDIUM, HIGH or CRITICAL, and the checks the
/// test is about present with the answer wanted.
fn check_testssl(json: &str) {
    let findings: Vec<Value> = serde_json::from_str(json).unwrap();
    let finding = |id: &str| -> String {
        findings
            .iter()
            .find(|f| f["id"] == id)
            .and_then(|f| f["finding"].as_str())
            .unwrap_or_else(|| panic!("no {id} in testssl.sh's report"))
            .to_owned()
    };
    let bad: Vec<String> = findings
        .iter()
        .filter(|f| matches!(f["severity"].as_str(), Some("MEDIUM" | "HIGH" | "CRITICAL")))
        .map(|f| format!("{} {}: {}", f["severity"], f["id"], f["finding"]))
        .collect();
    assert!(
        bad.is_empty(),
        "testssl.sh rates these MEDIUM or worse:\n{}",
        bad.join("\n")
    );
    for id in ["SSLv2", "SSLv3", "TLS1", "TLS1_1"] {
        assert!(
            finding(id).starts_with("not offered"),
            "{id}: {}",
            finding(id)
        );
    }
    for id in [
        "cipherlist_NULL",
        "cipherlist_aNULL",
        "cipherlist_EXPORT",
        "cipherlist_LOW",
        "cipherlist_3DES_IDEA",
    ] {
        assert!(
            finding(id).starts_with("not offered"),
            "{id}: {}",
            finding(id)
        );
    }
    assert!(
        finding("TLS1_3").starts_with("offered"),
        "{}",
        finding("TLS1_3")
    );
    assert!(finding("PFS").starts_with("offered"), "{}", finding("PFS"));
    assert_eq!(finding("ALPN"), "http/1.1");
    assert_eq!(finding("cert_chain_of_trust"), "passed.");
    assert!(
        finding("secure_client_renego").starts_with("not vulnerable"),
        "{}",
        finding("secure_client_renego")
    );
    assert!(
        finding("CRIME_TLS").starts_with("not vulnerable"),
        "{}",
        finding("CRIME_TLS")
    );
    assert!(
        finding("heartbleed").starts_with("not vulnerable"),
        "{}",
        finding("heartbleed")
    );
}

both_backends! {
    async fn echo_rooms_and_http_work_over_tls_in_every_version_and_suite(backend: &str) {
        let pki = Pki::new(&format!("suites-{backend}"));
        let server = start(backend, &pki, &["--shards", "2"]);
        let cases: [(&'static rustls::SupportedProtocolVersion, rustls::SupportedCipherSuite); 6] = [
            (&rustls::version::TLS13, cs::TLS13_AES_128_GCM_SHA256),
            (&rustls::version::TLS13, cs::TLS13_AES_256_GCM_SHA384),
            (&rustls::version::TLS13, cs::TLS13_CHACHA20_POLY1305_SHA256),
            (&rustls::version::TLS12, cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256),
            (&rustls::version::TLS12, cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384),
            (&rustls::version::TLS12, cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256),
        ];
        for (version, suite) in cases {
            let config = pki.client(&[version], &[suite]);
            let mut ws = tls::connect(&server, "/echo", config.clone()).await;
            // Empty, small, at and across the 16 KiB record limit, near --max-message.
            for size in [0usize, 1, 125, 16_383, 16_384, 16_385, 40_000, 65_000] {
                let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
                echo(&mut ws, Message::Binary(data)).await;
            }
            // Many small messages at once: they share records both ways.
            for i in 0..300 {
                ws.feed(Message::Text(format!("m{i}"))).await.unwrap();
            }
            ws.flush().await.unwrap();
            for i in 0..300 {
                let got = tokio::time::timeout(WAIT, next_data(&mut ws)).await.unwrap();
                assert_eq!(got.unwrap().unwrap(), Message::Text(format!("m{i}")), "{suite:?}");
            }
            ws.close(None).await.unwrap();
            // The close handshake completes: the server's close frame comes back.
            let end = tokio::time::timeout(WAIT, next_data(&mut ws)).await.unwrap();
            assert!(matches!(end, Some(Ok(Message::Close(_))) | None), "{suite:?}: {end:?}");

            // A room: two members on a TLS connection each, one publishes.
            let room = format!("r-{:?}", suite.suite());
            let mut a = tls::connect(&server, &format!("/ws?room={room}"), config.clone()).await;
            let mut b = tls::connect(&server, &format!("/ws?room={room}"), config.clone()).await;
            for c in [&mut a, &mut b] {
                assert_eq!(json_next(c).await["op"], "joined");
            }
            let data = json!({"text": "x".repeat(20_000)});
            a.send(Message::Text(json!({"op":"pub","room":room,"data":data}).to_string())).await.unwrap();
            let got = loop {
                let v = json_next(&mut b).await;
                if v["op"] == "msg" {
                    break v;
                }
            };
            assert_eq!(got["data"], data, "{suite:?}");
        }
        // The plain HTTP endpoints are served over TLS too.
        let config = pki.any_client();
        let (status, body) = tls::get(server.addr, "/metrics", config.clone());
        assert_eq!(status, 200);
        let ok = handshakes(&body, "ok");
        assert!(ok >= 18, "3 connections per case: {ok}\n{body}");
        assert_eq!(tls::get(server.addr, "/healthz", config.clone()).0, 200);
        tls::settles_to(&server, 0, &config);
    }

    async fn bad_input_on_the_tls_port_gets_a_clean_answer_and_nothing_leaks(backend: &str) {
        let pki = Pki::new(&format!("bad-{backend}"));
        let server = start(backend, &pki, &["--handshake-timeout", "2", "--shards", "1"]);
        let config = pki.any_client();
        // Plain HTTP and a plain WebSocket handshake: an HTTP answer saying why.
        for request in [
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".to_vec(),
            common::upgrade_request("/echo"),
        ] {
            let answer = server.raw_exchange(&request, WAIT);
            let text = String::from_utf8_lossy(&answer);
            assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
            assert!(text.contains("speaks TLS"), "{text}");
        }
        // A record that is not a ClientHello, and a record longer than any may be: closed
        // at once (with rustls's alert for the first).
        for bytes in [
            vec![0x16, 3, 1, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8],
            vec![0x17, 3, 3, 0xFF, 0xFF, 0],
        ] {
            let start = Instant::now();
            let answer = server.raw_exchange(&bytes, WAIT);
            assert!(start.elapsed() < Duration::from_secs(2), "{answer:?}");
            assert!(answer.is_empty() || answer[0] == 0x15, "an alert or nothing: {answer:?}");
        }
        // Silence, and half a ClientHello: closed by --handshake-timeout (2 s).
        for bytes in [vec![], vec![0x16, 3, 1, 0, 200, 1, 0]] {
            let start = Instant::now();
            let answer = server.raw_exchange(&bytes, Duration::from_secs(10));
            let took = start.elapsed();
            assert!(answer.is_empty(), "{answer:?}");
            assert!(took > Duration::from_millis(1500) && took < Duration::from_secs(6), "{took:?}");
        }
        // After a good handshake, a record that does not decrypt: closed.
        let mut s = tls::stream(server.addr, config.clone());
        s.conn.complete_io(&mut s.sock).unwrap();
        let mut forged = vec![0x17, 3, 3, 0, 40];
        forged.extend_from_slice(&[0x5A; 40]);
        s.sock.write_all(&forged).unwrap();
        // Closed (EOF or reset) well before the 5 s read timeout.
        let start = Instant::now();
        let mut rest = Vec::new();
        let _ = s.sock.read_to_end(&mut rest);
        assert!(start.elapsed() < Duration::from_secs(3), "not closed: {rest:?}");
        // A TLS client that sends a bad WebSocket handshake gets its HTTP answer inside TLS.
        let mut s = tls::stream(server.addr, config.clone());
        s.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n").unwrap();
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        // (No Sec-WebSocket-Version: 426, as in clear.)
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 426 "), "{answer}");
        // Everyone else is unaffected, and no slot is left behind.
        let mut ws = tls::connect(&server, "/echo", config.clone()).await;
        echo(&mut ws, Message::Text("still here".into())).await;
        drop(ws);
        tls::settles_to(&server, 0, &config);
        let (_, metrics) = tls::get(server.addr, "/metrics", config.clone());
        let failed = handshakes(&metrics, "failed");
        assert!(failed >= 3, "{metrics}");
    }

    async fn sighup_gives_new_connections_the_new_certificate_and_keeps_open_ones(backend: &str) {
        let mut pki = Pki::new(&format!("reload-{backend}"));
        let log = pki.dir.join("server.log");
        let mut args = vec!["--tls-cert", pki.cert.to_str().unwrap(), "--tls-key", pki.key.to_str().unwrap()];
        args.extend(["--shards", "2"]);
        let server = Server::start_limited(backend, 20_000, &log, &args);
        let old = pki.any_client();
        let old_cert = pki.cert_der.clone();
        let mut open = Vec::new();
        for _ in 0..1000 {
            open.push(tls::connect(&server, "/echo", old.clone()).await);
        }
        assert_eq!(tls::peer_certificate(&open[0]), old_cert);
        tls::reissue(&mut pki, &format!("reload2-{backend}"));
        let new = pki.any_client();
        server.signal("HUP");
        // The reload is the signal thread's: wait until a new handshake sees it.
        let deadline = Instant::now() + WAIT;
        let mut fresh = loop {
            let url = format!("wss://{}/echo", server.addr);
            let attempt = tokio_tungstenite::connect_async_tls_with_config(
                url, None, false, Some(tokio_tungstenite::Connector::Rustls(new.clone())),
            ).await;
            if let Ok((ws, _)) = attempt {
                break ws;
            }
            assert!(Instant::now() < deadline, "no handshake with the new certificate");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(tls::peer_certificate(&fresh), pki.cert_der);
        echo(&mut fresh, Message::Text("new".into())).await;
        // A client trusting only the old CA no longer gets through.
        let url = format!("wss://{}/echo", server.addr);
        let refused = tokio_tungstenite::connect_async_tls_with_config(
            url, None, false, Some(tokio_tungstenite::Connector::Rustls(old.clone())),
        ).await;
        assert!(refused.is_err());
        // Every connection opened before the reload still works.
        for (i, ws) in open.iter_mut().enumerate() {
            ws.feed(Message::Text(format!("{i}"))).await.unwrap();
        }
        for ws in open.iter_mut() {
            ws.flush().await.unwrap();
        }
        for (i, ws) in open.iter_mut().enumerate() {
            let got = tokio::time::timeout(WAIT, next_data(ws)).await.unwrap();
            assert_eq!(got.unwrap().unwrap(), Message::Text(format!("{i}")));
        }
        // A bad file on the next reload: the current certificate stays, the log says why.
        std::fs::write(&pki.key, "not a key").unwrap();
        server.signal("HUP");
        let deadline = Instant::now() + WAIT;
        while !std::fs::read_to_string(&log).unwrap().contains("not reloaded") {
            assert!(Instant::now() < deadline, "{}", std::fs::read_to_string(&log).unwrap());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut again = tls::connect(&server, "/echo", new.clone()).await;
        assert_eq!(tls::peer_certificate(&again), pki.cert_der);
        echo(&mut again, Message::Text("same".into())).await;
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("--tls-key"), "{text}");
    }

    async fn tls_listen_serves_wss_beside_a_plain_listener(backend: &str) {
        let pki = Pki::new(&format!("listen-{backend}"));
        // Peer addresses wanted: io_uring arms single-shot accepts on both listeners.
        let server = start(backend, &pki, &["--tls-listen", "127.0.0.1:0", "--shards", "2", "--max-conns-per-ip", "1000"]);
        let tls_addr: std::net::SocketAddr = server
            .line
            .split("TLS on ")
            .nth(1)
            .and_then(|rest| rest.trim_end().trim_end_matches(')').parse().ok())
            .unwrap_or_else(|| panic!("no TLS address in {:?}", server.line));
        let config = pki.any_client();
        // The plain port is plain: ws://, and /stats in clear.
        let mut plain = common::connect(&server, "/ws?room=both").await;
        assert_eq!(json_next(&mut plain).await["op"], "joined");
        assert_eq!(server.get("/healthz").0, 200);
        // The TLS port speaks TLS, to the same rooms.
        let url = format!("wss://{tls_addr}/ws?room=both");
        let (mut secure, _) = tokio_tungstenite::connect_async_tls_with_config(
            url, None, false, Some(tokio_tungstenite::Connector::Rustls(config.clone())),
        ).await.unwrap();
        assert_eq!(json_next(&mut secure).await["op"], "joined");
        for (from, to) in [(0, 1), (1, 0)] {
            let pair = [&mut plain, &mut secure];
            let text = format!("from {from}");
            pair[from].send(Message::Text(json!({"op":"pub","room":"both","data":text}).to_string())).await.unwrap();
            // (A member also gets its own messages: skip the earlier one.)
            loop {
                let v = json_next(pair[to]).await;
                if v["op"] == "msg" && v["data"] == text.as_str() {
                    break;
                }
            }
        }
        // Each port refuses the other's speech: TLS to the plain port, clear to the TLS one.
        let wrong = tokio_tungstenite::connect_async_tls_with_config(
            format!("wss://{}/echo", server.addr), None, false,
            Some(tokio_tungstenite::Connector::Rustls(config.clone())),
        ).await;
        assert!(wrong.is_err());
        let mut s = std::net::TcpStream::connect(tls_addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        drop((plain, secure));
        server.settles_to(0);
    }

    async fn python_node_and_chromium_speak_wss_on_echo_and_a_room(backend: &str) {
        need!(Python, Node, Chromium);
        let pki = Pki::new(&format!("clients-{backend}"));
        // With permessage-deflate too: compressed frames inside TLS records.
        let server = start(backend, &pki, &["--deflate", "--shards", "2"]);
        let base = format!("wss://{}", server.addr);
        let envs = [
            ("ROOMCAST_CA", pki.ca.as_os_str()),
            ("ROOMCAST_SPKI", pki.spki_sha256.as_ref()),
        ];
        let reports = common::deflate_clients(&base, "tls", &envs);
        for (name, r) in &reports {
            for part in ["echo", "room"] {
                assert_eq!(r[part]["same"], true, "{name} {part}: {r}");
            }
        }
        let config = pki.any_client();
        let (_, metrics) = tls::get(server.addr, "/metrics", config.clone());
        let ok = handshakes(&metrics, "ok");
        assert!(ok >= 9, "three connections per client: {metrics}");
    }

    async fn a_client_key_update_keeps_the_connection_echoing(backend: &str) {
        let pki = Pki::new(&format!("keyupdate-{backend}"));
        let server = start(backend, &pki, &["--shards", "1"]);
        for suite in [cs::TLS13_AES_128_GCM_SHA256, cs::TLS13_AES_256_GCM_SHA384, cs::TLS13_CHACHA20_POLY1305_SHA256] {
            let config = pki.client(&[&rustls::version::TLS13], &[suite]);
            let mut ws = tls::connect(&server, "/echo", config).await;
            echo(&mut ws, Message::Text("before".into())).await;
            // rustls's KeyUpdate asks for one back: the server moves its receive key on,
            // sends its own KeyUpdate and moves its send key on.
            for round in 0..5 {
                rustls_of(&mut ws).refresh_traffic_keys().unwrap();
                echo(&mut ws, Message::Text(format!("after {round}"))).await;
                echo(&mut ws, Message::Binary(vec![round; 20_000])).await;
            }
            // Ten in a row, then data.
            for _ in 0..10 {
                rustls_of(&mut ws).refresh_traffic_keys().unwrap();
            }
            echo(&mut ws, Message::Text("after ten".into())).await;
        }
        // openssl's s_client: its `K` command sends a KeyUpdate asking for one back; its
        // trace shows the server's answer, and the echoes go on.
        need!(Openssl);
        let (echoes, msg) = s_client_echoes(server.addr, &pki, 6, Some(3), &["-tls1_3"]);
        assert_eq!(echoes, 6, "{msg}");
        assert_eq!(key_updates(&msg), (1, 1), "{msg}");
        tls::settles_to(&server, 0, &pki.any_client());
    }

    async fn a_low_record_limit_updates_keys_both_ways_and_ends_tls12_at_its_limit(backend: &str) {
        let pki = Pki::new(&format!("limit-{backend}"));
        let server = start_with_record_limit(backend, &pki);
        let n = 5 * LIMIT as usize;
        // TLS 1.3, rustls: 200 records each way under a limit of 40. The server updates its
        // send key every 40 records, and asks the client to update its own: without that,
        // it would refuse the client's 81st record under one key.
        for suite in [cs::TLS13_AES_128_GCM_SHA256, cs::TLS13_CHACHA20_POLY1305_SHA256] {
            let config = pki.client(&[&rustls::version::TLS13], &[suite]);
            let mut ws = tls::connect(&server, "/echo", config).await;
            assert_eq!(echo_one_at_a_time(&mut ws, n).await, n, "{suite:?}");
        }
        // The same seen by openssl: the server's KeyUpdates (one per 40 records, each asking
        // for one back) and s_client's answers.
        need!(Openssl);
        let (echoes, msg) = s_client_echoes(server.addr, &pki, 100, None, &["-tls1_3"]);
        assert_eq!(echoes, 100, "{msg}");
        let (sent, received) = key_updates(&msg);
        assert!(received >= 2 && sent >= 2, "sent {sent}, received {received}:\n{msg}");
        // TLS 1.2 has no key update: at 40 records sealed (its Finished, the 101 answer and
        // 38 echoes) the server sends close_notify and closes.
        let config = pki.client(&[&rustls::version::TLS12], &[]);
        let mut ws = tls::connect(&server, "/echo", config).await;
        assert_eq!(echo_one_at_a_time(&mut ws, n).await, LIMIT as usize - 2);
        let (echoes, msg) = s_client_echoes(server.addr, &pki, 100, None, &["-tls1_2", "-nocommands"]);
        assert_eq!(echoes, LIMIT as usize - 2, "{msg}");
        assert!(msg.contains("<<< TLS 1.2, Alert [length 0002], warning close_notify"), "{msg}");
        // A TLS 1.3 peer that ignores the request: refused at its 81st record under one key
        // (its upgrade request and 79 frames went through), having been asked at its 40th.
        let (echoes, asked) = lax_peer(&server, &pki);
        assert!(asked, "the server asked for a key update");
        assert_eq!(echoes, 2 * LIMIT as usize - 1);
        tls::settles_to(&server, 0, &pki.any_client());
    }

    async fn tls_scanners_find_no_old_protocol_weak_suite_or_medium_finding(backend: &str) {
        need!(Testssl, Sslscan);
        let dir = std::env::temp_dir().join(format!("roomcast-scan-{backend}-{}", std::process::id()));
        let (ca, cert, key) = scanner_pki(&dir);
        let server = Server::start(backend, &[
            "--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap(), "--shards", "1",
            "--max-conns-per-ip", "100000",
        ]);
        let target = server.addr.to_string();
        let out = artifacts();
        // sslscan: every protocol and suite, a few seconds.
        let xml = out.join(format!("sslscan-{backend}.xml"));
        let run = std::process::Command::new("timeout")
            .args(["120", "sslscan", "--no-colour", "--show-sigs"])
            .arg(format!("--xml={}", xml.display()))
            .arg(&target)
            .output()
            .unwrap();
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        std::fs::write(out.join(format!("sslscan-{backend}.txt")), &run.stdout).unwrap();
        check_sslscan(&std::fs::read_to_string(&xml).unwrap());
        // testssl.sh, the checks that matter here (about 100 s; not its client simulations
        // or its run over every cipher it knows): protocols (ALPN among them), cipher
        // categories, forward secrecy, the server's order, its defaults (the certificate
        // and its chain, checked against the test CA given with --add-ca, not skipped),
        // the vulnerabilities (renegotiation, compression, Heartbleed, …) and the HTTP
        // headers. Every finding goes to the JSON report; the test fails on any rated
        // MEDIUM or worse.
        let json = out.join(format!("testssl-{backend}.json"));
        let _ = std::fs::remove_file(&json);
        let run = std::process::Command::new("timeout")
            .args(["600", "testssl", "--quiet", "--color", "0", "--warnings", "off"])
            .args(["--add-ca"])
            .arg(&ca)
            .args(["-p", "-s", "-f", "-P", "-S", "-U", "-h", "--jsonfile"])
            .arg(&json)
            .arg(&target)
            .output()
            .unwrap();
        std::fs::write(out.join(format!("testssl-{backend}.txt")), &run.stdout).unwrap();
        let report = std::fs::read_to_string(&json)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&run.stdout)));
        check_testssl(&report);
        drop(server);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn a_missing_unreadable_or_mismatched_certificate_is_a_clear_error_and_exit_2() {
    let a = Pki::new("exit-a");
    let b = Pki::new("exit-b");
    let junk = a.dir.join("junk.pem");
    std::fs::write(
        &junk,
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let missing = a.dir.join("missing.pem");
    let cases: [(&std::path::Path, &std::path::Path, &str); 4] = [
        (&missing, &a.key, "--tls-cert"),
        (&a.cert, &missing, "--tls-key"),
        (&junk, &a.key, "--tls-cert"),
        (&a.cert, &b.key, "do not make a certificate"),
    ];
    for (cert, key, says) in cases {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_roomcast"))
            .args(["serve", "--listen", "127.0.0.1:0", "--tls-cert"])
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(says), "{says}: {err}");
    }
    // One without the other is a usage error too.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_roomcast"))
        .args(["serve", "--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(&a.cert)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
