//! The shard core against a toy service (lines of text, no sockets): what the reactor
//! promises every service, whatever it speaks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::protocol::SharedFrame;
use crate::reactor::outring::Kind;
use crate::reactor::service::Link;

/// A toy protocol: one command per line. `hello` establishes the connection (heartbeats
/// on), `bye` closes it, anything else is echoed.
#[derive(Default)]
struct Lines {
    log: Vec<String>,
    closed: Vec<usize>,
    /// Another shard's end of the mesh: sends us a note while we end our turn.
    peer: Option<crate::mesh::Endpoint<Note>>,
}

#[derive(Debug)]
struct Note(&'static str);

impl crate::mesh::Message for Note {
    fn droppable(&self) -> bool {
        false
    }
}

fn frame(bytes: &[u8]) -> SharedFrame {
    SharedFrame::from_encoded(Arc::from(bytes))
}

crate::reactor::stats::figures!(
    /// What the test service counts.
    LineFigures {
        members: Gauge "lines_held" "" "Lines the test service logged.",
    }
);

impl Service for Lines {
    type Conn = u32;
    type Tag = Kind;
    type Msg = Note;
    type Figures = LineFigures;

    fn open(&mut self, _: usize, _: Option<std::net::SocketAddr>) -> u32 {
        0
    }

    fn data(&mut self, cx: &mut Cx<Lines>, slot: usize, data: &mut [u8]) -> usize {
        let mut link = cx.link_any(slot).unwrap();
        if link.is_closing() {
            // Lingering: `bye` from the peer ends it, the rest is dropped.
            if data.starts_with(b"bye\n") {
                link.goodbye();
            }
            return data.len();
        }
        let mut at = 0;
        while let Some(i) = data[at..].iter().position(|&b| b == b'\n') {
            if link.is_full() {
                link.pause();
                break;
            }
            let line = &data[at..at + i];
            *link.app() += 1;
            match line {
                b"hello" => {
                    link.establish();
                    link.start_heartbeat();
                }
                b"bye" => link.finish(frame(b"bye\n")),
                _ => link.send(frame(&data[at..at + i + 1])).unwrap(),
            }
            at += i + 1;
            if link.is_closing() {
                return data.len();
            }
        }
        at
    }

    fn max_pending(&self, _: &u32) -> usize {
        16
    }

    fn overflow(&mut self, link: &mut Link<'_, u32, Kind, LineFigures>) {
        self.log.push("overflow".into());
        link.abort();
    }

    fn tick(&mut self, link: &mut Link<'_, u32, Kind, LineFigures>) -> bool {
        let _ = link.send_control(frame(b"ping\n"));
        true
    }

    fn handshake_timeout(&mut self, link: &mut Link<'_, u32, Kind, LineFigures>) {
        self.log.push("handshake timeout".into());
        link.abort();
    }

    fn drain(&mut self, link: &mut Link<'_, u32, Kind, LineFigures>) {
        link.finish(frame(b"going away\n"));
    }

    fn message(&mut self, _: &mut Cx<Lines>, msg: Note) {
        self.log.push(msg.0.into());
    }

    fn end_turn(&mut self, cx: &mut Cx<Lines>) {
        if let Some(peer) = self.peer.as_mut() {
            peer.send(0, Note("from shard 1"));
            peer.flush();
            self.peer = None;
        }
        cx.mesh.send(0, Note("sent myself"));
        self.log.push("end".into());
        cx.figures().members = self.log.len() as u64;
    }

    fn closed(&mut self, _: &mut Cx<Lines>, slot: usize, _: u32) {
        self.closed.push(slot);
    }
}

const SECOND: Duration = Duration::from_secs(1);

fn core(out_cap: usize) -> (Core<Lines>, Arc<Drain>) {
    let drain = Arc::new(Drain::new(Duration::from_secs(4)));
    let setup = CoreSetup {
        index: 0,
        mesh: crate::mesh::build(1, 0).unwrap().pop().unwrap(),
        timeouts: Timeouts {
            handshake: 3 * SECOND,
            linger: 2 * SECOND,
            ping_interval: 2 * SECOND,
            pong_timeout: SECOND,
        },
        out_cap,
        write_delay: std::time::Duration::ZERO,
        drain: drain.clone(),
        shared: Arc::new(SharedStats::new(
            1,
            <LineFigures as crate::reactor::stats::Figures>::META,
        )),
        tls: None,
    };
    (Core::new(Lines::default(), setup), drain)
}

fn sent(core: &mut Core<Lines>, slot: usize) -> (Vec<u8>, Next) {
    core.send_all(slot)
}

#[test]
fn partial_input_waits_in_the_tail_and_is_offered_again() {
    let (mut core, _) = core(8);
    let (slot, _) = core.insert(0, None, Instant::now(), false);
    for b in b"ab\ncd\n" {
        assert_eq!(core.receive(slot, &mut [*b]), Next::Nothing);
    }
    assert_eq!(core.conn(slot).unwrap().tail_len(), 0);
    assert_eq!(sent(&mut core, slot).0, b"ab\ncd\n");
    assert!(core.has_flush(), "the connection was queued for flushing");
}

#[test]
fn a_full_ring_pauses_and_draining_it_resumes_with_the_held_input() {
    let (mut core, _) = core(2);
    let (slot, _) = core.insert(0, None, Instant::now(), false);
    assert_eq!(
        core.receive(slot, &mut b"1\n2\n3\n4\n5\n".to_vec()),
        Next::StopReading
    );
    let (first, next) = sent(&mut core, slot);
    assert_eq!(first, b"1\n2\n");
    assert_eq!(
        next,
        Next::StopReading,
        "the held input filled the ring again"
    );
    let (second, next) = sent(&mut core, slot);
    assert_eq!(
        next,
        Next::ResumeReading,
        "all held input handled: read again"
    );
    let (third, next) = sent(&mut core, slot);
    assert_eq!(next, Next::Nothing);
    assert_eq!([first, second, third].concat(), b"1\n2\n3\n4\n5\n");
}

#[test]
fn finishing_sends_the_last_bytes_then_half_closes_and_drops_later_input() {
    let (mut core, _) = core(8);
    let (slot, gen) = core.insert(0, None, Instant::now(), false);
    assert_eq!(
        core.receive(slot, &mut b"x\nbye\nlost\n".to_vec()),
        Next::Nothing
    );
    assert_eq!(core.receive(slot, &mut b"more\n".to_vec()), Next::Nothing);
    let (out, next) = sent(&mut core, slot);
    assert_eq!(out, b"x\nbye\n");
    assert_eq!(next, Next::ShutdownWrite);
    assert_eq!(
        core.get(slot, gen).unwrap().app,
        2,
        "nothing read after bye"
    );
    // The peer never closes: the close timeout does.
    let mut out = Vec::new();
    core.expired(Instant::now() + 3 * SECOND, &mut out);
    assert!(out.contains(&slot));
    core.remove(slot);
    assert_eq!(core.service.closed, [slot]);
    assert!(core.is_empty());
}

#[test]
fn the_last_bytes_get_out_even_past_a_full_ring() {
    let (mut core, _) = core(2);
    let (slot, gen) = core.insert(0, None, Instant::now(), false);
    let mut link = core.cx.link(slot, gen).unwrap();
    for i in 0..8u8 {
        link.send_up_to(frame(&[b'0' + i, b'\n']), 8).unwrap();
    }
    link.finish(frame(b"bye\n"));
    let (out, next) = sent(&mut core, slot);
    assert_eq!(
        out, b"bye\n",
        "what was queued went, the last bytes did not"
    );
    assert_eq!(next, Next::ShutdownWrite);
}

#[test]
fn a_connection_not_established_in_time_is_handed_to_the_service_then_closed() {
    let (mut core, _) = core(8);
    let t0 = Instant::now();
    let (slow, _) = core.insert(0, None, t0, false);
    let (quick, _) = core.insert(1, None, t0, false);
    core.receive(quick, &mut b"hello\n".to_vec());
    let mut out = Vec::new();
    core.expired(t0 + 4 * SECOND, &mut out);
    assert_eq!(out, [slow]);
    assert_eq!(core.service.log, ["handshake timeout"]);
}

#[test]
fn input_past_the_services_bound_is_an_overflow() {
    let (mut core, _) = core(8);
    let (slot, _) = core.insert(0, None, Instant::now(), false);
    let next = core.receive(slot, &mut [b'a'; 17]);
    assert_eq!(core.service.log, ["overflow"]);
    assert_eq!(next, Next::Close, "aborted, nothing left to send");
}

#[test]
fn heartbeats_tick_established_connections_and_drop_the_silent() {
    let (mut core, _) = core(8);
    let t0 = Instant::now();
    let (talker, _) = core.insert(0, None, t0, false);
    let (silent, _) = core.insert(1, None, t0, false);
    let (never, _) = core.insert(2, None, t0, false);
    core.receive(talker, &mut b"hello\n".to_vec());
    core.receive(silent, &mut b"hello\n".to_vec());
    core.take_flush();
    let mut dead = Vec::new();
    for s in 1..=4 {
        core.expired(t0 + s * SECOND, &mut dead);
        core.receive(talker, &mut b"x\n".to_vec());
    }
    assert_eq!(
        dead,
        [silent, never],
        "the silent one dropped, the other never upgraded"
    );
    let (out, _) = sent(&mut core, talker);
    let pings = out.windows(5).filter(|w| w == b"ping\n").count();
    assert_eq!(pings, 2, "ticks 2 and 4 ping the talker's bucket");
}

#[test]
fn a_drain_says_goodbye_to_open_streams_over_the_window_and_ends() {
    let (mut core, drain) = core(8);
    let t0 = Instant::now();
    let open: Vec<usize> = (0..4)
        .map(|i| {
            let (slot, _) = core.insert(i, None, t0, false);
            core.receive(slot, &mut b"hello\n".to_vec());
            slot
        })
        .collect();
    let (handshaking, _) = core.insert(9, None, t0, false);
    assert!(drain.begin());
    let mut out = Vec::new();
    assert_eq!(
        core.expired(Instant::now(), &mut out),
        DrainStatus::Draining
    );
    assert_eq!(out, [handshaking], "not a stream yet: closed at once");
    let goodbyes = |core: &mut Core<Lines>| {
        open.iter()
            .filter(|&&s| core.conn(s).unwrap().is_closing())
            .count()
    };
    assert_eq!(goodbyes(&mut core), 1, "the first goes at once");
    core.expired(Instant::now() + 4 * SECOND, &mut out);
    assert_eq!(goodbyes(&mut core), 4);
    for slot in open.into_iter().chain([handshaking]) {
        core.remove(slot);
    }
    assert_eq!(
        core.expired(Instant::now() + 4 * SECOND, &mut out),
        DrainStatus::Done
    );
}

#[test]
fn mesh_messages_reach_the_service_at_the_end_of_the_turn() {
    let (mut core, _) = core(8);
    core.mesh().send(0, Note("to myself"));
    core.end_turn();
    assert_eq!(core.service.log, ["to myself", "end", "sent myself"]);
    assert_eq!(core.shared.value(0, "members"), 2, "figures published");
}

#[test]
fn a_message_that_arrives_while_the_service_ends_its_turn_gets_a_turn_end_of_its_own() {
    let (mut core, _) = core(8);
    let mut ends = crate::mesh::build::<Note>(2, 0).unwrap();
    core.service.peer = ends.pop();
    core.cx.mesh = ends.pop().unwrap();
    core.end_turn();
    // The service's own message is handled in the turn that sent it; shard 1's waits,
    // and the shard must not sleep on it.
    assert_eq!(core.service.log, ["end", "sent myself"]);
    assert!(!core.mesh().prepare_sleep(), "a message is waiting");
    core.mesh().awake();
    core.end_turn();
    assert_eq!(
        core.service.log[2..],
        ["from shard 1", "end", "sent myself"]
    );
}

#[test]
fn a_closing_connection_lingers_until_the_peers_goodbye() {
    let (mut core, _) = core(8);
    let (slot, _) = core.insert(0, None, Instant::now(), false);
    core.receive(slot, &mut b"bye\n".to_vec());
    assert_eq!(sent(&mut core, slot).1, Next::ShutdownWrite);
    // The peer is still mid-way through what it was sending: read and dropped.
    for _ in 0..100 {
        assert_eq!(core.receive(slot, &mut [b'z'; 4096]), Next::Nothing);
    }
    assert_eq!(core.receive(slot, &mut b"bye\n".to_vec()), Next::Close);
}

#[test]
fn a_closing_peer_that_floods_is_cut_off() {
    let (mut core, _) = core(8);
    let (slot, _) = core.insert(0, None, Instant::now(), false);
    core.receive(slot, &mut b"bye\n".to_vec());
    let mut chunk = vec![b'z'; 1 << 20];
    let cut = (0..32).position(|_| core.receive(slot, &mut chunk) == Next::Close);
    assert_eq!(
        cut,
        Some(LINGER_BYTES as usize >> 20),
        "cut past LINGER_BYTES"
    );
}
