//! The reference server on tokio-tungstenite (read buffer 4 KiB), one thread.

use std::rc::Rc;

use futures_util::{SinkExt, StreamExt};
use roomcast_peers::{rooms_in_query, Rooms, Session};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

fn main() {
    roomcast_peers::run::<Message, _, _>("peer-tungstenite", serve);
}

// The handshake callback's error type (an HTTP response) is tungstenite's, not ours.
#[allow(clippy::result_large_err)]
async fn serve(stream: tokio::net::TcpStream, id: u64, rooms: Rc<Rooms<Message>>) {
    let mut target = (String::new(), None::<String>);
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let callback = |req: &Request, resp: Response| {
        target = (
            req.uri().path().to_owned(),
            req.uri().query().map(str::to_owned),
        );
        Ok(resp)
    };
    let Ok(ws) =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await
    else {
        return;
    };
    let (path, query) = target;
    if path != "/ws" {
        return echo(ws).await;
    }
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Message>();
    // The idiomatic writer: one `send` (write and flush) per message.
    let writer = tokio::task::spawn_local(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                return;
            }
        }
    });
    let mut session = Session::new(id, tx.clone(), rooms);
    for room in rooms_in_query(query.as_deref()) {
        let _ = tx.send(Message::text(session.join(&room)));
    }
    while let Some(Ok(msg)) = source.next().await {
        match (path.as_str(), msg) {
            ("/ws", Message::Text(t)) => {
                if let Some(reply) =
                    session.handle(t.as_str(), |s| Message::Text(Utf8Bytes::from(s)))
                {
                    let _ = tx.send(Message::text(reply));
                }
            }
            (_, Message::Close(_)) => break,
            _ => {}
        }
    }
    drop(session);
    drop(tx);
    let _ = writer.await;
}

/// `/echo`: the simplest loop, every message sent straight back.
async fn echo(mut ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>) {
    while let Some(Ok(msg)) = ws.next().await {
        let echo = matches!(msg, Message::Text(_) | Message::Binary(_));
        if matches!(msg, Message::Close(_)) || (echo && ws.send(msg).await.is_err()) {
            return;
        }
    }
}
