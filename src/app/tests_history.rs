//! History, resume, gap notices and `/sse`, against the reactor's real context (no
//! sockets: the turns and the sends are driven by hand, so a slow member is exactly as
//! slow as the test makes it).

use std::time::Instant;

use serde_json::Value;

use crate::protocol::OpCode;
use crate::reactor::shard::Core;

use super::tests::{masked, open, sent, settings, shard_with, texts};
use super::*;

fn core(out_cap: usize, policy: SlowPolicy) -> Core<App> {
    let s = Settings {
        slow_policy: policy,
        ..settings()
    };
    shard_with(out_cap, gate::Gate::default(), s)
}

fn op(core: &mut Core<App>, slot: usize, json: &str) {
    core.receive(slot, &mut masked(OpCode::Text, json.as_bytes()));
}

fn json(core: &mut Core<App>, slot: usize) -> Vec<Value> {
    texts(&sent(core, slot))
        .iter()
        .map(|t| serde_json::from_str(t).unwrap_or_else(|e| panic!("{e}: {t:?}")))
        .collect()
}

/// Publishes `n` messages to `room` from `publisher`, one turn each.
fn publish(core: &mut Core<App>, publisher: usize, room: &str, from: u64, n: u64) {
    for i in from..from + n {
        op(
            core,
            publisher,
            &format!(r#"{{"op":"pub","room":"{room}","data":{i}}}"#),
        );
        core.end_turn();
    }
}

#[test]
fn a_member_that_comes_back_gets_what_it_missed_then_live_without_duplicates() {
    let mut core = core(64, SlowPolicy::Close);
    let publisher = open(&mut core, "/ws");
    let first = open(&mut core, "/ws?room=r");
    core.end_turn();
    let joined = json(&mut core, first);
    let epoch = joined[0]["epoch"].as_str().unwrap().to_owned();
    publish(&mut core, publisher, "r", 1, 5);
    sent(&mut core, publisher);
    core.remove(first);
    core.end_turn();
    publish(&mut core, publisher, "r", 6, 3);
    // Back, having seen 1 and 2; 9 is published in the very turn of the join.
    let back = open(&mut core, "/ws");
    op(
        &mut core,
        back,
        &format!(r#"{{"op":"join","room":"r","since":2,"epoch":"{epoch}"}}"#),
    );
    op(&mut core, publisher, r#"{"op":"pub","room":"r","data":9}"#);
    core.end_turn();
    let got = json(&mut core, back);
    assert_eq!(got[0]["op"], "joined");
    assert_eq!(
        (&got[0]["seq"], &got[0]["epoch"], &got[0]["recovered"]),
        (&8.into(), &epoch.as_str().into(), &true.into())
    );
    let seqs: Vec<u64> = got[1..]
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        (3..=9).collect::<Vec<_>>(),
        "replay 3..8, then 9 live, once each"
    );
    assert!(got[1..].iter().all(|m| m["data"] == m["seq"]));
    assert_eq!(
        (core.cx.figures().resumed, core.cx.figures().replayed),
        (1, 6)
    );

    // Another epoch, or no epoch at all: told plainly, then live.
    for join in [
        r#"{"op":"join","room":"r","since":2,"epoch":"zzzzzz"}"#.to_owned(),
        r#"{"op":"join","room":"r","since":2}"#.to_owned(),
    ] {
        let other = open(&mut core, "/ws");
        op(&mut core, other, &join);
        core.end_turn();
        let got = json(&mut core, other);
        assert_eq!(
            (&got[0]["recovered"], &got[0]["seq"], got.len()),
            (&false.into(), &9.into(), 1)
        );
    }
    assert_eq!(core.cx.figures().resume_failed, 2);
}

/// Every seq from 1 to `last` either arrived as a `msg` or inside exactly one `gap`
/// notice, and the msgs arrived in order.
fn accounted(got: &[Value], last: u64) -> (usize, usize) {
    let mut seen = vec![0u32; last as usize + 1];
    let (mut msgs, mut gaps, mut prev) = (0, 0, 0);
    for m in got {
        match m["op"].as_str().unwrap() {
            "msg" => {
                let s = m["seq"].as_u64().unwrap();
                assert!(s > prev, "msgs in order: {s} after {prev}");
                prev = s;
                seen[s as usize] += 1;
                msgs += 1;
            }
            "gap" => {
                let (from, to) = (m["from"].as_u64().unwrap(), m["to"].as_u64().unwrap());
                assert!(from <= to, "{m}");
                for s in from..=to {
                    seen[s as usize] += 1;
                }
                gaps += 1;
            }
            _ => {}
        }
    }
    let wrong: Vec<usize> = (1..=last as usize).filter(|&s| seen[s] != 1).collect();
    assert!(
        wrong.is_empty(),
        "seqs not accounted for exactly once: {wrong:?}"
    );
    (msgs, gaps)
}

#[test]
fn every_policy_that_skips_messages_says_which_in_gap_notices() {
    for policy in [
        SlowPolicy::DropOldest,
        SlowPolicy::DropNewest,
        SlowPolicy::Conflate,
    ] {
        let mut core = core(2, policy);
        let publisher = open(&mut core, "/ws");
        let slow = open(&mut core, "/ws?room=r");
        core.end_turn();
        json(&mut core, slow);
        // The member reads nothing for 40 turns, then drains, twice over.
        for round in 0..2 {
            publish(&mut core, publisher, "r", 1 + round * 40, 40);
            sent(&mut core, publisher);
            core.end_turn();
            let mut got = Vec::new();
            for _ in 0..100 {
                let more = json(&mut core, slow);
                if more.is_empty() {
                    break;
                }
                got.extend(more);
                core.end_turn();
            }
            let prior: Vec<Value> = (1..=round * 40)
                .map(|s| serde_json::json!({"op":"msg","seq":s}))
                .collect();
            let all: Vec<Value> = prior.into_iter().chain(got.iter().cloned()).collect();
            let (msgs, gaps) = accounted(&all, 40 * (round + 1));
            assert!(
                gaps > 0 && msgs < 40 * (round as usize + 1),
                "{policy:?}: {gaps} gaps"
            );
            let newest = got.iter().rev().find(|m| m["op"] == "msg");
            let newest = newest.unwrap_or_else(|| panic!("{policy:?}: {got:?}"));
            if policy != SlowPolicy::DropNewest {
                assert_eq!(
                    newest["seq"],
                    40 * (round + 1),
                    "{policy:?} keeps the newest"
                );
            }
        }
        let s = &core.cx.figures();
        assert!(s.gap_notices > 0);
        let dropped = match policy {
            SlowPolicy::DropOldest => s.dropped_oldest,
            SlowPolicy::DropNewest => s.dropped_newest,
            _ => s.dropped_conflated,
        };
        assert!(dropped > 0, "{policy:?}");
    }
}

#[test]
fn conflate_keeps_one_batch_per_room() {
    let mut core = core(2, SlowPolicy::Conflate);
    let publisher = open(&mut core, "/ws");
    let slow = open(&mut core, "/ws?room=a,b");
    core.end_turn();
    json(&mut core, slow);
    for i in 1..=10 {
        op(
            &mut core,
            publisher,
            &format!(r#"{{"op":"pub","room":"a","data":{i}}}"#),
        );
        op(
            &mut core,
            publisher,
            &format!(r#"{{"op":"pub","room":"b","data":{i}}}"#),
        );
        core.end_turn();
    }
    let queued = core.conn(slow).unwrap().out.len();
    assert!(
        queued <= 2 + 2 + 2 * 4,
        "one batch per room and its notices: {queued}"
    );
    let got = json(&mut core, slow);
    for room in ["a", "b"] {
        let last = got
            .iter()
            .rev()
            .find(|m| m["room"] == room && m["op"] == "msg")
            .unwrap();
        assert_eq!(last["seq"], 10, "{room}");
    }
}

/// What a stream sent, as `(event, id, data)` per block; the response head is skipped.
fn events(bytes: &[u8]) -> Vec<(String, String, String)> {
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map_or(text.as_str(), |(_, b)| b);
    body.split("\n\n")
        .filter(|b| !b.is_empty())
        .map(|block| {
            let (mut event, mut id, mut data) = (String::new(), String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    event = v.into();
                } else if let Some(v) = line.strip_prefix("id: ") {
                    id = v.into();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = v.into();
                } else if line.starts_with("retry: ") {
                    event = "retry".into();
                }
            }
            (event, id, data)
        })
        .collect()
}

fn stream(core: &mut Core<App>, query: &str, last_id: Option<&str>) -> usize {
    let (slot, _) = core.insert(0, None, Instant::now(), false);
    let header = last_id.map_or(String::new(), |id| format!("Last-Event-ID: {id}\r\n"));
    let mut req = format!("GET /sse?{query} HTTP/1.1\r\nHost: h\r\n{header}\r\n").into_bytes();
    core.receive(slot, &mut req);
    slot
}

#[test]
fn an_event_stream_gets_the_same_ops_and_resumes_from_its_last_event_id() {
    let mut core = core(64, SlowPolicy::Close);
    let publisher = open(&mut core, "/ws?room=a,b");
    let one = stream(&mut core, "room=a", None);
    let many = stream(&mut core, "room=a,b", None);
    core.end_turn();
    let head = sent(&mut core, one);
    assert!(head.starts_with(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"));
    let ev = events(&head);
    assert_eq!(ev[0].0, "retry");
    assert_eq!(ev[1].0, "joined");
    let joined: Value = serde_json::from_str(&ev[1].2).unwrap();
    let epoch = joined["epoch"].as_str().unwrap().to_owned();
    assert_eq!(ev[1].1, format!("a~{epoch}~0"));
    sent(&mut core, many);
    publish(&mut core, publisher, "a", 1, 2);
    publish(&mut core, publisher, "b", 1, 1);
    let ev = events(&sent(&mut core, one));
    assert_eq!(ev.len(), 2, "{ev:?}");
    assert_eq!(
        (ev[1].0.as_str(), ev[1].1.as_str()),
        ("msg", format!("a~{epoch}~2").as_str())
    );
    let m: Value = serde_json::from_str(&ev[1].2).unwrap();
    assert_eq!(
        m,
        serde_json::json!({"op":"msg","room":"a","seq":2,"data":2})
    );
    // Several rooms: no id per event, the stream's position after each batch.
    let ev = events(&sent(&mut core, many));
    let kinds: Vec<&str> = ev.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(kinds, ["msg", "", "msg", "", "msg", ""]);
    let last_id = ev[5].1.clone();
    assert!(
        last_id.starts_with(&format!("a~{epoch}~2,b~")) && last_id.ends_with("~1"),
        "{last_id}"
    );

    // Gone; meanwhile a gets 3 and 4, b gets 2. Back with the last id.
    core.remove(many);
    core.end_turn();
    publish(&mut core, publisher, "a", 3, 2);
    publish(&mut core, publisher, "b", 2, 1);
    let back = stream(&mut core, "room=a,b", Some(&last_id));
    core.end_turn();
    let ev = events(&sent(&mut core, back));
    let msgs: Vec<(String, u64)> = ev
        .iter()
        .filter(|e| e.0 == "msg")
        .map(|e| {
            let v: Value = serde_json::from_str(&e.2).unwrap();
            (
                v["room"].as_str().unwrap().to_owned(),
                v["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut msgs_sorted = msgs.clone();
    msgs_sorted.sort();
    assert_eq!(
        msgs_sorted,
        [("a".into(), 3), ("a".into(), 4), ("b".into(), 2)]
    );
    for e in ev.iter().filter(|e| e.0 == "joined") {
        assert!(e.2.contains("\"recovered\":true"), "{e:?}");
    }

    // The same position from a polyfill, percent-encoded in the query: nothing is missed
    // and nothing repeated either (everything up to it was given).
    let encoded = last_id.replace(',', "%2C").replace('~', "%7E");
    let query = format!("room=a%2Cb&lastEventId={encoded}");
    let polyfill = stream(&mut core, &query, None);
    core.end_turn();
    let ev = events(&sent(&mut core, polyfill));
    let replayed: Vec<&(String, String, String)> = ev.iter().filter(|e| e.0 == "msg").collect();
    assert_eq!(
        replayed.len(),
        3,
        "a 3, a 4 and b 2 again, from the same position: {ev:?}"
    );
    for e in ev.iter().filter(|e| e.0 == "joined") {
        assert!(e.2.contains("\"recovered\":true"), "{e:?}");
    }

    // A foreign id: told, for each room, in a joined and a gap event.
    let lost = stream(&mut core, "room=a", Some("a~zzzzzz~3"));
    core.end_turn();
    let ev = events(&sent(&mut core, lost));
    assert!(ev[1].2.contains("\"recovered\":false"), "{ev:?}");
    assert_eq!(
        (ev[2].0.as_str(), ev[2].2.as_str()),
        ("gap", r#"{"op":"gap","room":"a","recovered":false}"#)
    );
}

#[test]
fn a_stream_without_a_room_is_a_400_and_a_drain_ends_streams_with_a_close_event() {
    let mut core = core(64, SlowPolicy::Close);
    let bad = stream(&mut core, "x=1", None);
    assert!(sent(&mut core, bad).starts_with(b"HTTP/1.1 400"));
    let bad = stream(&mut core, "room=a%20b", None);
    assert!(sent(&mut core, bad).starts_with(b"HTTP/1.1 400"));
    let s = stream(&mut core, "room=a", None);
    core.end_turn();
    sent(&mut core, s);
    assert_eq!(core.cx.figures().sse_open, 1);
    let mut link = core.cx.link_any(s).unwrap();
    crate::reactor::Service::drain(&mut core.service, &mut link);
    let ev = events(&sent(&mut core, s));
    assert_eq!(ev[0].0, "close");
    assert!(core.conn(s).unwrap().is_closing());
}

#[test]
fn every_publish_of_a_pipelined_burst_is_acknowledged() {
    let mut core = core(4, SlowPolicy::Close);
    let publisher = open(&mut core, "/ws?room=r");
    core.end_turn();
    json(&mut core, publisher);
    let mut burst = Vec::new();
    for i in 0..100 {
        let op = format!(r#"{{"op":"pub","room":"r","data":{i},"id":{i}}}"#);
        burst.extend(masked(OpCode::Text, op.as_bytes()));
    }
    core.receive(publisher, &mut burst);
    let (mut acks, mut msgs) = (Vec::new(), 0);
    for _ in 0..200 {
        core.end_turn();
        for m in json(&mut core, publisher) {
            match m["op"].as_str() {
                Some("ack") => acks.push(m["id"].as_u64().unwrap()),
                Some("msg") => msgs += 1,
                _ => panic!("{m}"),
            }
        }
    }
    assert_eq!(
        acks,
        (0..100).collect::<Vec<_>>(),
        "one ack per publish, in order"
    );
    assert_eq!(msgs, 100);
}

#[test]
fn a_batch_the_mesh_dropped_becomes_a_gap_notice() {
    let mut core = core(64, SlowPolicy::Close);
    let publisher = open(&mut core, "/ws");
    let member = open(&mut core, "/ws?room=r");
    core.end_turn();
    json(&mut core, member);
    publish(&mut core, publisher, "r", 1, 2);
    assert_eq!(json(&mut core, member).len(), 2);
    // Batch 3 is lost on its way (the mesh drops deliveries past its backlog); 4 comes.
    let mut buf = Vec::new();
    wire::write_msg("r", 4, "4", &mut buf);
    let frame = SharedFrame::from_encoded(std::sync::Arc::from(buf));
    let deliver = ToMember::Deliver {
        room: "r".into(),
        first: 4,
        last: 4,
        frames: std::sync::Arc::new([Some(frame), None, None, None, None]),
    };
    crate::reactor::Service::message(&mut core.service, &mut core.cx, deliver.into());
    core.end_turn();
    let got = json(&mut core, member);
    assert_eq!(
        got[0],
        serde_json::json!({"op":"gap","room":"r","from":3,"to":3})
    );
    assert_eq!((&got[1]["op"], &got[1]["seq"]), (&"msg".into(), &4.into()));
}
