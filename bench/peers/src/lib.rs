//! What both reference servers share: the rooms protocol of `/ws` (join, leave, pub with
//! `data` passed through, acks, errors), kept as small and as ordinary as a developer
//! would write it on these libraries. Single-threaded: rooms live in a `RefCell`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use serde_json::value::RawValue;
use tokio::sync::mpsc::UnboundedSender;

/// A connection's outgoing queue; `M` is the library's message type.
pub type Tx<M> = UnboundedSender<M>;

struct Room<M> {
    seq: u64,
    members: Vec<(u64, Tx<M>)>,
}

/// Every room of the server.
pub struct Rooms<M> {
    rooms: RefCell<HashMap<String, Room<M>>>,
}

#[derive(serde::Deserialize)]
struct Op<'a> {
    op: String,
    room: Option<String>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    id: Option<u64>,
}

/// One connection's state on `/ws`.
pub struct Session<M> {
    pub id: u64,
    pub tx: Tx<M>,
    joined: Vec<String>,
    rooms: Rc<Rooms<M>>,
}

impl<M: Clone> Rooms<M> {
    pub fn new() -> Rc<Rooms<M>> {
        Rc::new(Rooms {
            rooms: RefCell::new(HashMap::new()),
        })
    }
}

impl<M: Clone> Session<M> {
    pub fn new(id: u64, tx: Tx<M>, rooms: Rc<Rooms<M>>) -> Session<M> {
        Session {
            id,
            tx,
            joined: Vec::new(),
            rooms,
        }
    }

    /// Joins `room` and returns the `joined` reply.
    pub fn join(&mut self, room: &str) -> String {
        let mut rooms = self.rooms.rooms.borrow_mut();
        let r = rooms.entry(room.to_owned()).or_insert(Room {
            seq: 0,
            members: Vec::new(),
        });
        if !self.joined.iter().any(|j| j == room) {
            r.members.push((self.id, self.tx.clone()));
            self.joined.push(room.to_owned());
        }
        format!(r#"{{"op":"joined","room":"{room}","seq":{}}}"#, r.seq)
    }

    /// Handles one text message; returns the reply to this connection, if any.
    /// `make` turns the one encoded `msg` into the library's message, cloned per member.
    pub fn handle(&mut self, text: &str, make: impl FnOnce(String) -> M) -> Option<String> {
        let op: Op<'_> = match serde_json::from_str(text) {
            Ok(op) => op,
            Err(_) => return Some(error("bad_json")),
        };
        let Some(room) = op.room.as_deref() else {
            return Some(error("missing_field"));
        };
        match op.op.as_str() {
            "join" => Some(self.join(room)),
            "leave" => {
                self.leave(room);
                Some(format!(r#"{{"op":"left","room":"{room}"}}"#))
            }
            "pub" => {
                let data = op.data?.get();
                let mut rooms = self.rooms.rooms.borrow_mut();
                let seq = match rooms.get_mut(room) {
                    Some(r) => {
                        r.seq += 1;
                        let msg = make(format!(
                            r#"{{"op":"msg","room":"{room}","seq":{},"data":{data}}}"#,
                            r.seq
                        ));
                        r.members.retain(|(_, tx)| tx.send(msg.clone()).is_ok());
                        r.seq
                    }
                    None => 0,
                };
                op.id
                    .map(|id| format!(r#"{{"op":"ack","id":{id},"seq":{seq}}}"#))
            }
            _ => Some(error("unknown_op")),
        }
    }

    fn leave(&mut self, room: &str) {
        self.joined.retain(|j| j != room);
        if let Some(r) = self.rooms.rooms.borrow_mut().get_mut(room) {
            r.members.retain(|(id, _)| *id != self.id);
        }
    }
}

impl<M> Drop for Session<M> {
    fn drop(&mut self) {
        let mut rooms = self.rooms.rooms.borrow_mut();
        for room in &self.joined {
            if let Some(r) = rooms.get_mut(room) {
                r.members.retain(|(id, _)| *id != self.id);
            }
        }
    }
}

fn error(code: &str) -> String {
    format!(r#"{{"op":"error","code":"{code}","msg":"{code}"}}"#)
}

/// The rooms to join from `?room=a,b`.
pub fn rooms_in_query(query: Option<&str>) -> Vec<String> {
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter_map(|kv| kv.strip_prefix("room="))
        .flat_map(|v| v.split(','))
        .filter(|r| !r.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Runs a peer: one thread, one accept loop on [`listen_addr`]; every connection gets
/// `serve(stream, id, rooms)` as a task of its own.
pub fn run<M, F, Fut>(name: &str, serve: F)
where
    M: Clone + 'static,
    F: Fn(tokio::net::TcpStream, u64, Rc<Rooms<M>>) -> Fut,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let listener = tokio::net::TcpListener::bind(listen_addr())
            .await
            .expect("bind");
        println!(
            "{name} listening on {}",
            listener.local_addr().expect("address")
        );
        let rooms = Rooms::<M>::new();
        let mut next_id = 0u64;
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            next_id += 1;
            tokio::task::spawn_local(serve(stream, next_id, rooms.clone()));
        }
    });
}

/// The listen address: the first argument, or 127.0.0.1:9200.
pub fn listen_addr() -> std::net::SocketAddr {
    std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9200".into())
        .parse()
        .expect("listen address")
}
