//! The server API over real sockets on one node: every endpoint, every error status, with
//! and without the key, and its effects seen by real WebSocket and event-stream clients.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{connect, Server, Ws};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "api-test-key";
const SECRET: &str = "api-test-secret";
const WAIT: Duration = Duration::from_secs(5);

/// One HTTP request, written in `pieces` (a body may come in several packets); returns
/// the status and the body parsed as JSON (`Value::Null` if it is not JSON).
fn http(
    server: &Server,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: &[u8],
    pieces: usize,
) -> (u16, Value) {
    let mut s = std::net::TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let auth = key.map_or(String::new(), |k| format!("Authorization: apikey {k}\r\n"));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    for chunk in body.chunks(body.len().div_ceil(pieces.max(1)).max(1)) {
        std::thread::sleep(Duration::from_millis(20));
        s.write_all(chunk).unwrap();
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    let status = text
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{text:?}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn post(server: &Server, path: &str, body: Value) -> (u16, Value) {
    http(
        server,
        "POST",
        path,
        Some(KEY),
        body.to_string().as_bytes(),
        1,
    )
}

fn get(server: &Server, path: &str) -> (u16, Value) {
    http(server, "GET", path, Some(KEY), b"", 1)
}

async fn recv(ws: &mut Ws) -> Value {
    common::recv_json(ws, WAIT).await
}

async fn closed(ws: &mut Ws) -> (u16, String) {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("timed out waiting for the close")
        {
            Some(Ok(Message::Close(Some(f)))) => return (f.code.into(), f.reason.to_string()),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

fn token(sub: &str) -> String {
    let exp = roomcast::app::auth::unix_now() + 600;
    let claims = json!({"sub": sub, "exp": exp, "join": ["*"], "pub": ["*"]});
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

both_backends! {
    async fn without_a_key_configured_the_api_is_not_there(backend: &str) {
        let server = Server::start(backend, &[]);
        assert_eq!(get(&server, "/api/rooms").0, 404);
        assert_eq!(post(&server, "/api/publish", json!({"room": "r", "data": 1})).0, 404);
    }

    async fn publish_broadcast_history_rooms_and_every_error(backend: &str) {
        let server = Server::start(backend, &["--shards", "2", "--api-key", KEY, "--api-max-body", "4096"]);
        let mut member = connect(&server, "/ws?room=news").await;
        let joined = recv(&mut member).await;
        let epoch = joined["epoch"].as_str().unwrap().to_owned();

        // A publish reaches the member with data byte for byte; its seq and epoch come back.
        let data = r#"{"price": 1.50, "tags":["a" , "b"]}"#;
        let body = format!(r#"{{"room":"news","data":{data}}}"#);
        let (status, v) = http(&server, "POST", "/api/publish", Some(KEY), body.as_bytes(), 3);
        assert_eq!((status, &v), (200, &json!({"seq": 1, "epoch": epoch})));
        let Some(Ok(Message::Text(raw))) = tokio::time::timeout(WAIT, member.next()).await.unwrap() else {
            panic!("no delivery")
        };
        assert_eq!(raw.as_str(), format!(r#"{{"op":"msg","room":"news","seq":1,"data":{data}}}"#));

        // A broadcast: one result per room, in order; a room that does not exist says seq 0.
        let (status, v) = post(&server, "/api/broadcast", json!({"rooms": ["news", "nobody"], "data": "x"}));
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["results"][0], json!({"room": "news", "seq": 2, "epoch": epoch}));
        assert_eq!(v["results"][1], json!({"room": "nobody", "seq": 0, "epoch": null}));
        assert_eq!(recv(&mut member).await["seq"], 2);

        // History: after `since`, at most `limit`, data as published.
        let (status, v) = get(&server, "/api/history?room=news&since=0&limit=1");
        assert_eq!(status, 200, "{v}");
        assert_eq!((&v["seq"], &v["epoch"], &v["complete"]), (&json!(2), &json!(epoch), &json!(true)));
        assert_eq!(v["messages"], json!([{"seq": 1, "data": {"price": 1.50, "tags": ["a", "b"]}}]));
        let (_, v) = get(&server, "/api/history?room=news&since=1");
        assert_eq!(v["messages"], json!([{"seq": 2, "data": "x"}]));
        assert_eq!(get(&server, "/api/history?room=nobody").0, 404);

        // Rooms, with their members; presence without auth: members only.
        let (status, v) = get(&server, "/api/rooms");
        assert_eq!((status, &v), (200, &json!({"rooms": [{"room": "news", "members": 1}]})));
        let (status, v) = get(&server, "/api/presence?room=news");
        assert_eq!((status, &v), (200, &json!({"room": "news", "members": 1})));

        // Every error gets its status and a JSON body naming it; nothing reaches the member.
        let big = format!(r#"{{"room":"news","data":"{}"}}"#, "x".repeat(5000)).into_bytes();
        let cases: Vec<Case> = vec![
            (401, "unauthorized", "GET", "/api/rooms", None, b""),
            (401, "unauthorized", "GET", "/api/rooms", Some("wrong"), b""),
            (404, "not_found", "GET", "/api/nope", Some(KEY), b""),
            (405, "method_not_allowed", "GET", "/api/publish", Some(KEY), b""),
            (405, "method_not_allowed", "POST", "/api/rooms", Some(KEY), b"{}"),
            (400, "bad_json", "POST", "/api/publish", Some(KEY), b"{nope"),
            (400, "missing_field", "POST", "/api/publish", Some(KEY), br#"{"room":"news"}"#),
            (400, "missing_field", "POST", "/api/broadcast", Some(KEY), br#"{"rooms":[],"data":1}"#),
            (400, "invalid_room", "POST", "/api/publish", Some(KEY), br#"{"room":"a b","data":1}"#),
            (400, "invalid_code", "POST", "/api/disconnect", Some(KEY), br#"{"user":"u","code":1006}"#),
            (413, "too_large", "POST", "/api/publish", Some(KEY), &big),
            (400, "missing_field", "GET", "/api/presence", Some(KEY), b""),
            (400, "bad_number", "GET", "/api/history?room=news&since=x", Some(KEY), b""),
        ];
        for (status, code, method, path, key, body) in cases {
            let (got, v) = http(&server, method, path, key, body, 1);
            assert_eq!((got, v["error"].as_str()), (status, Some(code)), "{method} {path}: {v}");
            assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        }
        // A chunked body is refused: the API reads Content-Length bodies.
        let mut s = std::net::TcpStream::connect(server.addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        write!(s, "POST /api/publish HTTP/1.1\r\nHost: t\r\nAuthorization: apikey {KEY}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n").unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 411"), "{out}");
        assert_eq!(recv_nothing(&mut member).await, None, "no error published anything");
    }

    async fn presence_counts_users_and_disconnect_closes_them_everywhere(backend: &str) {
        let server = Server::start(backend, &["--shards", "2", "--api-key", KEY, "--jwt-secret", SECRET]);
        let (ann, bob) = (token("ann"), token("bob"));
        let mut ann1 = connect(&server, &format!("/ws?room=lobby&token={ann}")).await;
        let mut ann2 = connect(&server, &format!("/ws?room=lobby&token={ann}")).await;
        let mut bob1 = connect(&server, &format!("/ws?room=lobby&token={bob}")).await;
        for ws in [&mut ann1, &mut ann2, &mut bob1] {
            assert_eq!(recv(ws).await["op"], "joined");
        }
        // ann also listens on an event stream.
        let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        write!(stream, "GET /sse?room=lobby&token={ann} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let mut seen = String::new();
        let mut buf = [0u8; 4096];
        while !seen.contains("event: joined") {
            let n = stream.read(&mut buf).unwrap();
            assert!(n > 0, "{seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        let (status, v) = get(&server, "/api/presence?room=lobby");
        assert_eq!((status, &v), (200, &json!({"room": "lobby", "members": 4, "users": ["ann", "bob"]})));
        // The same from a member, as an op; two in one packet are answered apart.
        bob1.feed(Message::Text(r#"{"op":"presence","room":"lobby"}"#.into())).await.unwrap();
        bob1.feed(Message::Text(r#"{"op":"presence","room":"elsewhere"}"#.into())).await.unwrap();
        bob1.flush().await.unwrap();
        let mut answers = [recv(&mut bob1).await, recv(&mut bob1).await];
        answers.sort_by_key(|v| v["room"].to_string());
        assert_eq!(answers[0], json!({"op": "presence", "room": "elsewhere", "members": 0, "users": []}));
        assert_eq!(answers[1], json!({"op": "presence", "room": "lobby", "members": 4, "users": ["ann", "bob"]}));

        let (status, v) = post(&server, "/api/disconnect", json!({"user": "ann", "code": 4001, "reason": "banned"}));
        assert_eq!((status, &v), (200, &json!({"closed": 3})));
        for ws in [&mut ann1, &mut ann2] {
            assert_eq!(closed(ws).await, (4001, "banned".to_owned()));
        }
        let mut rest = String::new();
        let _ = stream.read_to_string(&mut rest);
        assert!(rest.contains("event: close\ndata: {\"op\":\"close\",\"reason\":\"banned\"}"), "{rest}");
        // bob stays, and presence follows.
        bob1.send(Message::Text(r#"{"op":"pub","room":"lobby","data":1}"#.into())).await.unwrap();
        assert_eq!(recv(&mut bob1).await["op"], "msg");
        let v = get(&server, "/api/presence?room=lobby").1;
        assert_eq!(v, json!({"room": "lobby", "members": 1, "users": ["bob"]}));
        assert_eq!(post(&server, "/api/disconnect", json!({"user": "nobody"})).1, json!({"closed": 0}));
    }
}

/// An error case: the status and `error` code expected for method, path, key and body.
type Case<'a> = (u16, &'a str, &'a str, &'a str, Option<&'a str>, &'a [u8]);

/// Waits a moment for a message that should not come.
async fn recv_nothing(ws: &mut Ws) -> Option<Message> {
    match tokio::time::timeout(Duration::from_millis(300), ws.next()).await {
        Ok(Some(Ok(m))) if !matches!(m, Message::Ping(_) | Message::Pong(_)) => Some(m),
        _ => None,
    }
}
