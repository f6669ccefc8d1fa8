//! Requests every node answers (presence, rooms, disconnect), over the control channel
//! on the first Redis: a request names its node and number; every other node asks its
//! shards and publishes their sum back. The requester waits for as many answers as Redis
//! said received the request (a dead node is not subscribed, so not waited for), at most
//! [`CTL_TIMEOUT`].

use std::sync::Arc;
use std::time::Instant;

use crate::gather::{empty, merge, Answer, Ask};

use super::scripts::{keys, PAGE};
use super::*;

impl<M: Carrier> Backplane<M> {
    /// A local shard's API request that the backplane answers for the other nodes.
    pub(super) fn ask(&mut self, shard: u16, req: u32, ask: Ask) {
        if let Ask::History { room, since, limit } = ask {
            let i = self.server_of(&room);
            let s = &mut self.servers[i];
            let Some(cmd) = s.cmd.as_mut() else {
                let answer = Answer::Unavailable {
                    index: 0,
                    unknown: false,
                };
                return self.tell(usize::from(shard), Event::Answer { req, answer });
            };
            let (m, st, _) = keys(&room);
            cmd.send(&[
                b"EVALSHA",
                self.shas[PAGE].as_bytes(),
                b"2",
                &m,
                &st,
                since.to_string().as_bytes(),
                limit.to_string().as_bytes(),
            ]);
            let p = Pending::Page {
                room,
                shard,
                req,
                since,
            };
            s.inflight.push_back((p, Instant::now()));
            return;
        }
        let acc = empty(&ask);
        let s = &mut self.servers[0];
        let (Some(cmd), true) = (s.cmd.as_mut(), s.ctl) else {
            // The control channel is down: the local shards' counts stand alone.
            return self.tell(usize::from(shard), Event::Answer { req, answer: acc });
        };
        let id = self.next_ctl;
        self.next_ctl += 1;
        let text = format!("q\t{}\t{id}\t{}", self.cfg.node, ask_json(&ask));
        cmd.send(&[b"PUBLISH", CTL, text.as_bytes()]);
        s.inflight.push_back((Pending::Ctl { id }, Instant::now()));
        self.ctl_waits.push(CtlWait {
            id,
            shard,
            req,
            expected: None,
            got: 0,
            acc,
            deadline: Instant::now() + CTL_TIMEOUT,
        });
    }

    /// A message on the control channel: another node's request, or an answer to ours.
    pub(super) fn control(&mut self, text: &[u8]) {
        let Ok(text) = std::str::from_utf8(text) else {
            return;
        };
        let mut parts = text.splitn(4, '\t');
        let (Some(kind), Some(node), Some(id), Some(body)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        let Ok(id) = id.parse::<u64>() else {
            return;
        };
        match kind {
            "q" if node != self.cfg.node => {
                let Some(ask) = parse_ask(body) else {
                    return;
                };
                let gid = self.next_gather;
                self.next_gather = self.next_gather.wrapping_add(1);
                for shard in 0..self.cfg.shards {
                    let ask = ask.clone();
                    let me = self.me;
                    self.tell(
                        shard,
                        Event::Ask {
                            shard: me,
                            req: gid,
                            ask,
                        },
                    );
                }
                self.gathers.push(Gather {
                    gid,
                    node: node.into(),
                    id,
                    left: self.cfg.shards,
                    acc: empty(&ask),
                });
            }
            "a" if node == self.cfg.node => {
                let Some(answer) = parse_answer(body) else {
                    return;
                };
                if let Some(w) = self.ctl_waits.iter_mut().find(|w| w.id == id) {
                    merge(&mut w.acc, answer);
                    w.got += 1;
                }
                self.finish_ctl(false);
            }
            _ => {}
        }
    }

    /// Answers the control requests that have every answer (or, `timeouts`, whose time
    /// is up).
    pub(super) fn finish_ctl(&mut self, timeouts: bool) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.ctl_waits.len() {
            let w = &self.ctl_waits[i];
            let done = w.expected.is_some_and(|n| w.got >= n) || (timeouts && now >= w.deadline);
            if !done {
                i += 1;
                continue;
            }
            let w = self.ctl_waits.swap_remove(i);
            if w.expected.is_none_or(|n| w.got < n) {
                tracing::debug!(
                    got = w.got,
                    expected = ?w.expected,
                    "backplane: a control request timed out; answering with the nodes that replied"
                );
            }
            self.tell(
                usize::from(w.shard),
                Event::Answer {
                    req: w.req,
                    answer: w.acc,
                },
            );
        }
    }

    /// A local shard's answer to another node's request.
    pub(super) fn gathered(&mut self, gid: u32, answer: Answer) {
        let Some(i) = self.gathers.iter().position(|g| g.gid == gid) else {
            return;
        };
        let g = &mut self.gathers[i];
        merge(&mut g.acc, answer);
        g.left -= 1;
        if g.left > 0 {
            return;
        }
        let g = self.gathers.swap_remove(i);
        let text = format!("a\t{}\t{}\t{}", g.node, g.id, answer_json(&g.acc));
        let s = &mut self.servers[0];
        if let Some(cmd) = s.cmd.as_mut() {
            cmd.send(&[b"PUBLISH", CTL, text.as_bytes()]);
            s.inflight.push_back((Pending::Ignore, Instant::now()));
        }
    }
}

pub(super) fn ask_json(ask: &Ask) -> String {
    match ask {
        Ask::Presence { room } => serde_json::json!({"k": "p", "room": &**room}),
        Ask::Rooms | Ask::History { .. } => serde_json::json!({"k": "r"}),
        Ask::Disconnect { user, code, reason } => {
            serde_json::json!({"k": "d", "user": &**user, "code": code, "reason": &**reason})
        }
    }
    .to_string()
}

pub(super) fn parse_ask(text: &str) -> Option<Ask> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(Arc::from);
    Some(match v.get("k")?.as_str()? {
        "p" => Ask::Presence { room: s("room")? },
        "r" => Ask::Rooms,
        "d" => Ask::Disconnect {
            user: s("user")?,
            code: u16::try_from(v.get("code")?.as_u64()?).ok()?,
            reason: s("reason")?,
        },
        _ => return None,
    })
}

pub(super) fn answer_json(a: &Answer) -> String {
    match a {
        Answer::Presence { members, users } => {
            let users: Vec<&str> = users.iter().map(|u| &**u).collect();
            serde_json::json!({"m": members, "u": users})
        }
        Answer::Rooms(rooms) => {
            let rooms: Vec<(&str, u64)> = rooms.iter().map(|(r, n)| (&**r, *n)).collect();
            serde_json::json!({ "r": rooms })
        }
        Answer::Closed(n) => serde_json::json!({ "c": n }),
        _ => serde_json::json!({}),
    }
    .to_string()
}

pub(super) fn parse_answer(text: &str) -> Option<Answer> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    if let Some(m) = v.get("m") {
        let users = v
            .get("u")?
            .as_array()?
            .iter()
            .filter_map(|u| u.as_str().map(Arc::from))
            .collect();
        return Some(Answer::Presence {
            members: m.as_u64()?,
            users,
        });
    }
    if let Some(r) = v.get("r") {
        let rooms = r
            .as_array()?
            .iter()
            .filter_map(|p| Some((Arc::from(p.get(0)?.as_str()?), p.get(1)?.as_u64()?)))
            .collect();
        return Some(Answer::Rooms(rooms));
    }
    Some(Answer::Closed(v.get("c")?.as_u64()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_requests_and_answers_round_trip() {
        let ask = Ask::Disconnect {
            user: "alice".into(),
            code: 4000,
            reason: "bye\tnow".into(),
        };
        let back = parse_ask(&ask_json(&ask)).unwrap();
        assert!(
            matches!(back, Ask::Disconnect { ref user, code: 4000, ref reason } if &**user == "alice" && &**reason == "bye\tnow")
        );
        let mut acc = Answer::Presence {
            members: 1,
            users: vec!["a".into()],
        };
        let more = parse_answer(&answer_json(&Answer::Presence {
            members: 2,
            users: vec!["b".into(), "c".into()],
        }))
        .unwrap();
        merge(&mut acc, more);
        assert!(matches!(acc, Answer::Presence { members: 3, ref users } if users.len() == 3));
        let rooms = parse_answer(&answer_json(&Answer::Rooms(vec![("r".into(), 4)]))).unwrap();
        assert!(matches!(rooms, Answer::Rooms(ref r) if r[0].1 == 4));
        assert!(matches!(
            parse_answer(&answer_json(&Answer::Closed(5))),
            Some(Answer::Closed(5))
        ));
    }
}
