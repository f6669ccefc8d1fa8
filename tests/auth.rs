//! JWT auth over real sockets: every way a token can come (header, query, cookie,
//! subprotocol, first message) × valid, expired, wrong signature, wrong room for join,
//! wrong room for pub; expiry mid-connection and refresh; RS256 and ES256 keys; the same
//! checks (and Origin, and the per-user limit) on `/sse`.

mod common;

use std::time::Duration;

use common::{Server, Ws};
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::{self, Message};

const SECRET: &str = "auth-test-secret";
const SECOND: Duration = Duration::from_secs(1);

fn claims(sub: &str, ttl: i64) -> serde_json::Value {
    let exp = roomcast::app::auth::unix_now() as i64 + ttl;
    serde_json::json!({"sub": sub, "exp": exp, "join": ["public-*"], "pub": ["public-chat"]})
}

fn hs256(secret: &str, claims: &serde_json::Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), claims, &key).unwrap()
}

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[derive(Clone, Copy, Debug)]
enum Source {
    Header,
    Query,
    Cookie,
    Subprotocol,
    FirstMessage,
}

const SOURCES: [Source; 5] = [
    Source::Header,
    Source::Query,
    Source::Cookie,
    Source::Subprotocol,
    Source::FirstMessage,
];

/// Connects to `/ws` presenting `token` the way `source` says. `Err` describes the
/// refusal: an HTTP status, or a close frame.
async fn open(server: &Server, source: Source, token: &str) -> Result<Ws, String> {
    let mut path = "/ws".to_owned();
    let mut headers: Vec<(&str, String)> = Vec::new();
    match source {
        Source::Header => headers.push(("Authorization", format!("Bearer {token}"))),
        Source::Query => path = format!("/ws?token={token}"),
        Source::Cookie => headers.push(("Cookie", format!("theme=dark; rc_token={token}"))),
        Source::Subprotocol => headers.push((
            "Sec-WebSocket-Protocol",
            format!("roomcast, bearer.{token}"),
        )),
        Source::FirstMessage => {}
    }
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut ws = match common::connect_from("127.0.0.1", &server.url(&path), &headers).await {
        Ok(ws) => ws,
        Err(tungstenite::Error::Http(resp)) => {
            let body =
                String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned();
            return Err(format!("{} {body}", resp.status().as_u16()));
        }
        Err(e) => panic!("{source:?}: {e}"),
    };
    if let Source::FirstMessage = source {
        let op = format!(r#"{{"op":"auth","token":"{token}"}}"#);
        ws.send(Message::Text(op)).await.unwrap();
        match next(&mut ws).await {
            Message::Text(t) if t.contains(r#""op":"authed""#) => {}
            Message::Close(Some(f)) => {
                return Err(format!("close {} {}", u16::from(f.code), f.reason))
            }
            other => panic!("{source:?}: unexpected answer to auth: {other:?}"),
        }
    }
    Ok(ws)
}

async fn next(ws: &mut Ws) -> Message {
    match tokio::time::timeout(SECOND * 5, common::next_data(ws)).await {
        Ok(Some(Ok(m))) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

async fn op(ws: &mut Ws, text: &str) -> serde_json::Value {
    ws.send(Message::Text(text.into())).await.unwrap();
    match next(ws).await {
        Message::Text(t) => serde_json::from_str(&t).unwrap(),
        other => panic!("expected a JSON op, got {other:?}"),
    }
}

/// The close frame the server sends within `secs` seconds: code and reason.
async fn closed(ws: &mut Ws, secs: u64) -> (u16, String) {
    match tokio::time::timeout(SECOND * secs as u32, common::next_data(ws)).await {
        Ok(Some(Ok(Message::Close(Some(f))))) => (u16::from(f.code), f.reason.into_owned()),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

/// What a refusal looks like for `source`: 401 at the handshake, or close 1008 after a
/// first-message auth.
fn refused(source: Source, why: &str) -> String {
    match source {
        Source::FirstMessage => format!("close 1008 {why}"),
        _ => format!("401 {why}"),
    }
}

/// Opens `GET /sse?{query}` with `headers`; returns the status code, the response head and
/// the stream (open on a 200) once the head and, on a 200, the first `joined` event are in.
fn sse(
    server: &Server,
    query: &str,
    headers: &[(&str, String)],
) -> (u16, String, std::net::TcpStream) {
    use std::io::{Read, Write};
    let addr = server
        .url("")
        .trim_start_matches("ws://")
        .trim_end_matches('/')
        .to_owned();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(5 * SECOND)).unwrap();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(s, "GET /sse?{query} HTTP/1.1\r\nHost: t\r\n{extra}\r\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        let ok = text.starts_with("HTTP/1.1 200");
        if (!ok && text.contains("\r\n\r\n"))
            || text.contains("event: joined") && text.ends_with("\n\n")
        {
            let code = text[9..12].parse().unwrap();
            return (code, text, s);
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => panic!("/sse?{query}: the stream ended after {text:?}"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

both_backends! {
    async fn event_streams_check_tokens_rights_origin_and_the_user_limit(backend: &str) {
        let server = Server::start(
            backend,
            &[
                "--jwt-secret", SECRET, "--auth-cookie", "rc_token",
                "--allow-origin", "https://good.example", "--max-conns-per-user", "2",
            ],
        );
        let (valid, bob) = (hs256(SECRET, &claims("ann", 60)), hs256(SECRET, &claims("bob", 60)));
        let expired = hs256(SECRET, &claims("ann", -10));
        let origin = ("Origin", "https://good.example".to_owned());
        let ways: [(&str, Vec<(&str, String)>); 3] = [
            ("room=public-chat&token=", vec![]),
            ("room=public-chat", vec![("Authorization", format!("Bearer {bob}"))]),
            ("room=public-chat", vec![("Cookie", format!("theme=dark; rc_token={bob}"))]),
        ];
        let mut open = Vec::new();
        for (i, (query, headers)) in ways.iter().enumerate() {
            let query = if i == 0 { format!("{query}{valid}") } else { query.to_string() };
            let mut headers = headers.clone();
            headers.push(origin.clone());
            let (code, text, stream) = sse(&server, &query, &headers);
            assert_eq!(code, 200, "{query} {headers:?}: {text}");
            assert!(text.contains("Content-Type: text/event-stream"), "{text}");
            assert!(text.contains("Access-Control-Allow-Origin: https://good.example"), "{text}");
            open.push(stream);
        }
        let refused = |query: &str, headers: &[(&str, String)]| {
            let (code, text, _) = sse(&server, query, headers);
            (code, text.rsplit("\r\n\r\n").next().unwrap_or("").trim().to_owned())
        };
        let with_origin = std::slice::from_ref(&origin);
        assert_eq!(refused("room=public-chat", with_origin).0, 401, "no token");
        assert_eq!(refused(&format!("room=public-chat&token={expired}"), with_origin), (401, "token expired".into()));
        assert_eq!(refused(&format!("room=private&token={valid}"), with_origin).0, 403, "no right to the room");
        let evil = [("Origin", "https://evil.example".to_owned())];
        assert_eq!(refused(&format!("room=public-chat&token={valid}"), &evil).0, 403, "origin");
        // bob has two streams open: a third is over --max-conns-per-user.
        let auth = [("Authorization", format!("Bearer {bob}")), origin.clone()];
        assert_eq!(refused("room=public-chat", &auth).0, 429);
        drop(open);
        server.settles_to(0);
    }

    async fn every_token_source_checks_signature_expiry_and_room_rights(backend: &str) {
        let server = Server::start(
            backend,
            &["--jwt-secret", SECRET, "--auth-cookie", "rc_token"],
        );
        let valid = hs256(SECRET, &claims("ann", 60));
        let expired = hs256(SECRET, &claims("ann", -10));
        let forged = hs256("someone-else", &claims("ann", 60));
        for source in SOURCES {
            // Valid: in, and allowed rooms work.
            let mut ws = open(&server, source, &valid)
                .await
                .unwrap_or_else(|e| panic!("{source:?}: {e}"));
            let v = op(&mut ws, r#"{"op":"join","room":"public-chat"}"#).await;
            assert_eq!(v["op"], "joined", "{source:?}: {v}");
            // Wrong room for join, then for pub: an error op each, and the connection stays.
            let v = op(&mut ws, r#"{"op":"join","room":"private"}"#).await;
            assert_eq!(
                (v["op"].as_str(), v["code"].as_str()),
                (Some("error"), Some("forbidden")),
                "{source:?}: {v}"
            );
            let v = op(
                &mut ws,
                r#"{"op":"pub","room":"public-other","data":1,"id":1}"#,
            )
            .await;
            assert_eq!(
                (v["op"].as_str(), v["code"].as_str()),
                (Some("error"), Some("forbidden")),
                "{source:?}: {v}"
            );
            let v = op(&mut ws, r#"{"op":"join","room":"public-other"}"#).await;
            assert_eq!(
                v["op"], "joined",
                "{source:?}: still open after refusals: {v}"
            );
            // Expired and wrong signature: refused.
            assert_eq!(
                open(&server, source, &expired).await.err(),
                Some(refused(source, "token expired")),
                "{source:?}"
            );
            assert_eq!(
                open(&server, source, &forged).await.err(),
                Some(refused(source, "invalid token")),
                "{source:?}"
            );
        }
        // Each valid connection was dropped at the end of its round: nothing is left over.
        server.settles_to(0);
    }

    async fn the_subprotocol_form_selects_roomcast_and_never_echoes_the_token(backend: &str) {
        let server = Server::start(backend, &["--jwt-secret", SECRET]);
        let t = hs256(SECRET, &claims("ann", 60));
        let mut req = common::upgrade_request("/ws");
        let extra = format!("Sec-WebSocket-Protocol: roomcast, bearer.{t}\r\n\r\n");
        req.truncate(req.len() - 2);
        req.extend_from_slice(extra.as_bytes());
        let answer = String::from_utf8(server.raw_exchange(&req, SECOND)).unwrap();
        assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
        assert!(
            answer.contains("Sec-WebSocket-Protocol: roomcast\r\n"),
            "{answer}"
        );
        assert!(!answer.contains(&t), "{answer}");
    }

    async fn a_token_expiring_mid_connection_closes_1008_unless_refreshed(backend: &str) {
        let server = Server::start(backend, &["--jwt-secret", SECRET]);
        let short = hs256(SECRET, &claims("ann", 2));
        let mut lapsing = open(&server, Source::Query, &short).await.unwrap();
        let mut refreshed = open(&server, Source::Header, &short).await.unwrap();
        // A refresh for someone else, or with a bad token, is refused; the connection stays.
        let v = op(
            &mut refreshed,
            &format!(
                r#"{{"op":"refresh","token":"{}"}}"#,
                hs256(SECRET, &claims("bob", 60))
            ),
        )
        .await;
        assert_eq!(v["code"], "wrong_user", "{v}");
        let v = op(&mut refreshed, r#"{"op":"refresh","token":"nonsense"}"#).await;
        assert_eq!(v["code"], "invalid_token", "{v}");
        let fresh = hs256(SECRET, &claims("ann", 60));
        let v = op(
            &mut refreshed,
            &format!(r#"{{"op":"refresh","token":"{fresh}"}}"#),
        )
        .await;
        assert_eq!(v["op"], "authed", "{v}");
        // The unrefreshed one is closed at expiry (the heartbeat tick checks every second).
        assert_eq!(
            closed(&mut lapsing, 6).await,
            (1008, "token expired".into())
        );
        // The refreshed one lives on past the first expiry.
        let v = op(&mut refreshed, r#"{"op":"join","room":"public-a"}"#).await;
        assert_eq!(v["op"], "joined", "{v}");
    }

    async fn first_message_auth_must_come_before_the_handshake_deadline(backend: &str) {
        let server = Server::start(
            backend,
            &["--jwt-secret", SECRET, "--handshake-timeout", "1"],
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(server.url("/ws"))
            .await
            .unwrap();
        // Anything but auth is answered, not obeyed.
        let v = op(&mut ws, r#"{"op":"join","room":"public-a"}"#).await;
        assert_eq!(v["code"], "unauthenticated", "{v}");
        assert_eq!(
            closed(&mut ws, 4).await,
            (1008, "authentication timeout".into())
        );
    }

    async fn public_keys_verify_rs256_and_es256_and_refuse_algorithm_confusion(backend: &str) {
        for (public, private, alg) in [
            (
                "rs256-public.pem",
                "rs256-private.pem",
                jsonwebtoken::Algorithm::RS256,
            ),
            (
                "es256-public.pem",
                "es256-private.pem",
                jsonwebtoken::Algorithm::ES256,
            ),
        ] {
            let key_path = fixture(public);
            let server = Server::start(backend, &["--jwt-public-key", key_path.to_str().unwrap()]);
            let pem = std::fs::read(fixture(private)).unwrap();
            let key = match alg {
                jsonwebtoken::Algorithm::RS256 => jsonwebtoken::EncodingKey::from_rsa_pem(&pem),
                _ => jsonwebtoken::EncodingKey::from_ec_pem(&pem),
            }
            .unwrap();
            let good = jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), &claims("ann", 60), &key)
                .unwrap();
            let mut ws = open(&server, Source::Header, &good)
                .await
                .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
            assert_eq!(
                op(&mut ws, r#"{"op":"join","room":"public-a"}"#).await["op"],
                "joined"
            );
            // HS256 "signed" with the public key itself must not pass.
            let public_pem = std::fs::read_to_string(&key_path).unwrap();
            let confused = hs256(&public_pem, &claims("ann", 60));
            assert_eq!(
                open(&server, Source::Header, &confused).await.err(),
                Some("401 invalid token".into()),
                "{alg:?}"
            );
        }
    }
}
