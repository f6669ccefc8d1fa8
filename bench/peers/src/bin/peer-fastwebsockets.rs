//! The reference server on fastwebsockets (split halves, fragments collected), one thread.

use std::rc::Rc;

use base64::Engine as _;
use fastwebsockets::{
    FragmentCollector, FragmentCollectorRead, Frame, OpCode, Payload, Role, WebSocket,
};
use roomcast_peers::{rooms_in_query, Rooms, Session};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A frame to send: opcode and payload (shared by every member for a `msg`).
type Out = (OpCode, Rc<[u8]>);

fn main() {
    roomcast_peers::run::<Out, _, _>("peer-fastwebsockets", serve);
}

/// Reads the request head and answers 101; returns the request target.
async fn handshake(stream: &mut tokio::net::TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 16 * 1024 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(_)) = req.parse(&buf) {
            let key = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-key"))?
                .value;
            let mut sha = Sha1::new();
            sha.update(key);
            sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
            let accept = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
            let resp = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            );
            stream.write_all(resp.as_bytes()).await.ok()?;
            return req.path.map(str::to_owned);
        }
    }
}

async fn serve(mut stream: tokio::net::TcpStream, id: u64, rooms: Rc<Rooms<Out>>) {
    let Some(target) = handshake(&mut stream).await else {
        return;
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (target, None),
    };
    let mut ws = WebSocket::after_handshake(stream, Role::Server);
    ws.set_auto_pong(true);
    ws.set_auto_close(true);
    if path != "/ws" {
        return echo(FragmentCollector::new(ws)).await;
    }
    let (read, mut write) = ws.split(tokio::io::split);
    let mut read = FragmentCollectorRead::new(read);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Out>();
    let writer = tokio::task::spawn_local(async move {
        while let Some((opcode, payload)) = rx.recv().await {
            let frame = Frame::new(true, opcode, None, Payload::Borrowed(&payload));
            if write.write_frame(frame).await.is_err() || opcode == OpCode::Close {
                return;
            }
        }
    });
    let mut session = Session::new(id, tx.clone(), rooms);
    let text = |s: String| -> Out { (OpCode::Text, Rc::from(s.into_bytes())) };
    for room in rooms_in_query(query.as_deref()) {
        let _ = tx.send(text(session.join(&room)));
    }
    // Frames the protocol obliges us to send (pong, close) go through the writer too.
    let obligated = tx.clone();
    let mut send_fn = move |f: Frame<'_>| {
        let _ = obligated.send((f.opcode, Rc::from(&f.payload[..])));
        async { Ok::<(), std::io::Error>(()) }
    };
    while let Ok(frame) = read.read_frame(&mut send_fn).await {
        match (path.as_str(), frame.opcode) {
            ("/ws", OpCode::Text) => {
                let Ok(t) = std::str::from_utf8(&frame.payload) else {
                    break;
                };
                if let Some(reply) = session.handle(t, text) {
                    let _ = tx.send(text(reply));
                }
            }
            (_, OpCode::Close) => break,
            _ => {}
        }
    }
    drop(session);
    drop(tx);
    let _ = writer.await;
}

/// `/echo`: the simplest loop on the unsplit socket, every message written straight back.
async fn echo(mut ws: FragmentCollector<tokio::net::TcpStream>) {
    while let Ok(frame) = ws.read_frame().await {
        match frame.opcode {
            OpCode::Text | OpCode::Binary => {
                let reply = Frame::new(true, frame.opcode, None, frame.payload);
                if ws.write_frame(reply).await.is_err() {
                    return;
                }
            }
            OpCode::Close => return,
            _ => {}
        }
    }
}
