//! The `resume` scenario's accounting, with no I/O: reading server ops, one member's
//! ledger of what it received (fed the text frames its connections read), and the counts
//! and histograms merged over members and worker processes.

use hdrhistogram::Histogram;

use crate::client::data_stamp;
use crate::sample::{hist_add_encoded, hist_encode, histogram};

/// The seqs a member keeps a bit for, counted from its first `joined` (512 KiB at most
/// per member); later ones count as `out_of_range`.
const MAX_SEQS: u64 = 1 << 22;

// ---------------------------------------------------------------------------- parsing

/// A server op, as far as this scenario reads it.
#[derive(Debug, PartialEq)]
pub(super) enum Op {
    /// `msg`: its seq, and the publisher's number at the head of `data`.
    Msg {
        seq: u64,
        n: Option<u64>,
    },
    Joined {
        seq: u64,
        epoch: Option<String>,
        recovered: Option<bool>,
    },
    Gap {
        from: u64,
        to: u64,
    },
    Ack {
        seq: u64,
    },
    Error(String),
    Other,
}

/// The number right after the first `key` in `text` (a scan, no allocation).
fn number_after(text: &[u8], key: &[u8]) -> Option<u64> {
    let at = text.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = text[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    std::str::from_utf8(&text[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

/// Reads one text frame. `msg`, the op of nearly every frame, is scanned (roomcast writes
/// `{"op":"msg","room":…,"seq":N,"data":…}`, and the room name cannot hold a `"`); every
/// other op, or a `msg` in another layout, goes through serde_json.
pub(super) fn parse_op(text: &[u8]) -> Op {
    const MSG: &[u8] = br#"{"op":"msg","#;
    if text.starts_with(MSG) {
        if let Some(seq) = number_after(text, br#""seq":"#) {
            return Op::Msg {
                seq,
                n: data_stamp(text),
            };
        }
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(text) else {
        return Op::Other;
    };
    let seq = v["seq"].as_u64();
    match (v["op"].as_str(), seq) {
        (Some("msg"), Some(seq)) => Op::Msg {
            seq,
            n: v["data"][0].as_u64(),
        },
        (Some("joined"), Some(seq)) => Op::Joined {
            seq,
            epoch: v["epoch"].as_str().map(str::to_owned),
            recovered: v["recovered"].as_bool(),
        },
        (Some("gap"), _) => match (v["from"].as_u64(), v["to"].as_u64()) {
            (Some(from), Some(to)) => Op::Gap { from, to },
            _ => Op::Other,
        },
        (Some("ack"), Some(seq)) => Op::Ack { seq },
        (Some("error"), _) => Op::Error(v.to_string()),
        _ => Op::Other,
    }
}

// ---------------------------------------------------------------------------- one member

/// Counters, summed over members (and workers) as they are; `Counts::NAMES` are their
/// names in the results.
macro_rules! counts {
    ($($(#[doc = $doc:literal])* $name:ident,)*) => {
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub(super) struct Counts {
            $($(#[doc = $doc])* pub(super) $name: u64,)*
        }

        impl Counts {
            pub(super) const NAMES: &'static [&'static str] = &[$(stringify!($name)),*];

            pub(super) fn values(&self) -> Vec<u64> {
                vec![$(self.$name),*]
            }

            pub(super) fn from_values(v: &[u64]) -> Counts {
                let mut it = v.iter().copied();
                Counts { $($name: it.next().unwrap_or(0),)* }
            }

            pub(super) fn add(&mut self, o: &Counts) {
                $(self.$name += o.$name;)*
            }
        }
    };
}

counts! {
    /// Members asked for.
    members,
    /// Members whose first join succeeded: the ones every other figure is about.
    joined,
    join_failed,
    /// Members that gave up reconnecting (handshakes or joins kept failing).
    reconnect_failed,
    /// (Re)connection attempts whose handshake failed or timed out.
    connect_failures,
    /// Joins sent on an open connection that no `joined` answered in time.
    joined_timeouts,
    /// Joined members that had not caught up with their resume's `joined` seq at the end.
    not_resumed,
    /// Seqs after a member's first `joined`, up to the publisher's last, it never got.
    lost,
    /// Seqs a member got more than once.
    duplicates,
    /// `msg`s at or below the member's first `joined` seq (owed nothing before it).
    stale,
    /// `msg`s below one already received (and not a duplicate).
    reordered,
    /// `msg`s whose payload number does not go with their seq.
    mismatched,
    /// `msg`s too far past the first `joined` to keep a bit for.
    out_of_range,
    /// Resumes answered `"recovered":true`.
    resumes_recovered,
    /// Resumes answered `"recovered":false`, or with no `recovered` at all.
    resumes_not_recovered,
    /// Resumes whose `joined` had no `recovered` field.
    recovered_field_missing,
    /// Members with at least one resume not recovered.
    members_not_recovered,
    /// Members whose first `joined` carried no epoch.
    epoch_missing,
    /// Resumes whose `joined` had another epoch than the member knew.
    epoch_changed,
    /// Resumes whose `joined` seq was below one the member had received, in the same (or
    /// no) epoch: the room's sequence restarted unannounced.
    seq_restarted,
    gap_notices,
    /// Seqs the gap notices covered.
    gap_seqs,
    /// Connections that ended without the load generator cutting them.
    unexpected_closes,
    /// Close frames from the server.
    close_frames,
    /// `error` ops from the server.
    errors,
    /// `msg`s received in all.
    received,
    /// `msg`s up to a resume's `joined` seq received after it: the replay.
    replayed,
}

/// What one member saw, in order (pure data, fed the frames its connections read).
#[derive(Default)]
pub(super) struct Ledger {
    /// The seq of the first `joined`: the member is owed every seq after it.
    first: Option<u64>,
    epoch: Option<String>,
    /// The highest seq received (`first` until a `msg` comes).
    last: u64,
    /// One bit per seq `first + 1 …`, set once received.
    seen: Vec<u64>,
    /// seq − payload number (wrapping): one publisher numbers its payloads 1, 2, …, so it
    /// is the same for every `msg` of the run.
    offset: Option<u64>,
    /// The seq of the latest resume's `joined`: caught up once `last` reaches it.
    target: Option<u64>,
    /// CLOCK_MONOTONIC ns of the cut, of the first reconnection attempt after it, of that
    /// reconnection's handshake, and of catching up with the resume's `joined` seq.
    cut_ns: Option<u64>,
    /// When this member's socket was actually reset (its task wakes after the cut order).
    reset_ns: Option<u64>,
    reconnect_start_ns: Option<u64>,
    reconnected_ns: Option<u64>,
    resumed_ns: Option<u64>,
    /// Given up (first join or reconnections failed).
    failed: bool,
    c: Counts,
    /// The first error or close the server sent, for the report.
    error: Option<String>,
}

impl Ledger {
    /// The join to send: a plain one first, then a resume from the last seq received.
    pub(super) fn join_op(&self, room: &str) -> String {
        let quoted = |v: &str| serde_json::Value::from(v).to_string();
        let room = quoted(room);
        match self.first {
            None => format!(r#"{{"op":"join","room":{room}}}"#),
            Some(_) => {
                let since = self.last;
                let epoch = self.epoch.as_deref().map(quoted);
                let epoch = epoch
                    .map(|e| format!(r#","epoch":{e}"#))
                    .unwrap_or_default();
                format!(r#"{{"op":"join","room":{room},"since":{since}{epoch}}}"#)
            }
        }
    }

    /// Takes one text frame; says whether it was a `joined` or an `error`.
    pub(super) fn on_text(&mut self, text: &[u8], now: u64) -> Seen {
        match parse_op(text) {
            Op::Msg { seq, n } => self.on_msg(seq, n, now),
            Op::Joined {
                seq,
                epoch,
                recovered,
            } => {
                self.on_joined(seq, epoch, recovered, now);
                return Seen::Joined;
            }
            Op::Gap { from, to } => {
                self.c.gap_notices += 1;
                self.c.gap_seqs += to.saturating_sub(from) + 1;
            }
            Op::Error(e) => {
                self.c.errors += 1;
                self.note(e);
                return Seen::Refused;
            }
            Op::Ack { .. } | Op::Other => {}
        }
        Seen::Other
    }

    fn on_joined(&mut self, seq: u64, epoch: Option<String>, recovered: Option<bool>, now: u64) {
        if self.first.is_none() {
            self.rebase(seq);
            self.c.epoch_missing = u64::from(epoch.is_none());
            self.epoch = epoch;
            return;
        }
        match recovered {
            Some(true) => self.c.resumes_recovered += 1,
            Some(false) => self.c.resumes_not_recovered += 1,
            None => {
                self.c.resumes_not_recovered += 1;
                self.c.recovered_field_missing += 1;
            }
        }
        let new_epoch = epoch.is_some() && epoch != self.epoch;
        if new_epoch || seq < self.last {
            // The room's sequence restarted: what the member is owed from now on is
            // counted from here (what it missed of the old one is the `recovered:false`).
            if new_epoch {
                self.c.epoch_changed += 1;
            } else {
                self.c.seq_restarted += 1;
            }
            self.epoch = epoch.or(self.epoch.take());
            self.rebase(seq);
        }
        // Not recovered: the server goes on live from seq + 1, so the member is as caught
        // up as it will get the moment it hears so.
        self.target = Some(if recovered == Some(true) {
            seq
        } else {
            self.last
        });
        self.check_resumed(now);
    }

    fn on_msg(&mut self, seq: u64, n: Option<u64>, now: u64) {
        self.c.received += 1;
        let Some(first) = self.first.filter(|&f| seq > f) else {
            self.c.stale += 1;
            return;
        };
        let i = seq - first - 1;
        if i >= MAX_SEQS {
            self.c.out_of_range += 1;
            return;
        }
        let (word, bit) = ((i / 64) as usize, 1u64 << (i % 64));
        if word >= self.seen.len() {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & bit != 0 {
            self.c.duplicates += 1;
            return;
        }
        self.seen[word] |= bit;
        if seq < self.last {
            self.c.reordered += 1;
        }
        if self.target.is_some_and(|t| seq <= t) {
            self.c.replayed += 1;
        }
        self.last = self.last.max(seq);
        if let Some(n) = n {
            let offset = seq.wrapping_sub(n);
            match self.offset {
                None => self.offset = Some(offset),
                Some(o) if o != offset => self.c.mismatched += 1,
                Some(_) => {}
            }
        }
        self.check_resumed(now);
    }

    /// Counts from `seq` on, as after a first `joined`.
    fn rebase(&mut self, seq: u64) {
        self.first = Some(seq);
        self.last = seq;
        self.seen.clear();
        self.offset = None;
    }

    /// Whether the cut has come (a member resumes from one cut only).
    pub(super) fn cut_yet(&self) -> bool {
        self.cut_ns.is_some()
    }

    /// The member gave up: its first join or its reconnections failed.
    pub(super) fn give_up(&mut self) {
        self.failed = true;
    }

    /// A handshake failed or timed out.
    pub(super) fn connect_failed(&mut self) {
        self.c.connect_failures += 1;
    }

    /// A join went unanswered (no `joined`, no `error`) for `secs`.
    pub(super) fn joined_timed_out(&mut self, secs: u64) {
        self.c.joined_timeouts += 1;
        self.note(format!("no joined (nor error) within {secs} s of a join"));
    }

    /// A connection ended without the load generator cutting it.
    pub(super) fn closed(&mut self) {
        self.c.unexpected_closes += 1;
    }

    /// A close frame from the server, with `payload` (code and reason).
    pub(super) fn on_close_frame(&mut self, payload: &[u8]) {
        self.c.close_frames += 1;
        let code = payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
        let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or(&[]));
        self.note(format!("close {code:?} {reason}"));
    }

    /// The member's connection, ordered cut at `stamp`, was reset at `now`: what follows
    /// is its resume.
    pub(super) fn cut(&mut self, stamp: u64, now: u64) {
        self.cut_ns = Some(stamp);
        self.reset_ns = Some(now);
        self.target = None;
    }

    /// A (re)connection attempt starts at `now`.
    pub(super) fn reconnecting(&mut self, now: u64) {
        if self.cut_ns.is_some() && self.reconnect_start_ns.is_none() {
            self.reconnect_start_ns = Some(now);
        }
    }

    /// A handshake completed at `now`.
    pub(super) fn connected(&mut self, now: u64) {
        if self.cut_ns.is_some() && self.reconnected_ns.is_none() {
            self.reconnected_ns = Some(now);
        }
    }

    fn check_resumed(&mut self, now: u64) {
        let caught_up = self.target.is_some_and(|t| self.last >= t);
        if caught_up && self.cut_ns.is_some() && self.resumed_ns.is_none() {
            self.resumed_ns = Some(now);
        }
    }

    fn note(&mut self, what: String) {
        if self.error.is_none() {
            self.error = Some(what.chars().take(200).collect());
        }
    }

    /// Seqs `first + 1 ..= last_seq` never received.
    pub(super) fn lost(&self, last_seq: u64) -> u64 {
        let Some(first) = self.first else { return 0 };
        let owed = last_seq.saturating_sub(first);
        let kept = owed.min(MAX_SEQS);
        let full = (kept / 64) as usize;
        let word = |w: usize| self.seen.get(w).copied().unwrap_or(0);
        let mut got: u64 = (0..full).map(|w| u64::from(word(w).count_ones())).sum();
        let rest = kept % 64;
        if rest > 0 {
            got += u64::from((word(full) & ((1u64 << rest) - 1)).count_ones());
        }
        owed - got
    }
}

/// What a batch of frames held, for a connection waiting for its `joined`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Seen {
    Other,
    Joined,
    Refused,
}

// ---------------------------------------------------------------------------- over members and processes

/// Where the members stand, summed over processes.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Status {
    pub(super) joined: usize,
    /// Given up: the first join, or reconnecting.
    pub(super) failed: usize,
    /// Joined and not given up.
    pub(super) live: usize,
    /// Live and caught up with their resume's `joined`.
    pub(super) resumed: usize,
    /// The lowest `last` seq of the live members (u64::MAX if none).
    pub(super) min_last: u64,
}

impl Status {
    pub(super) fn new() -> Status {
        Status {
            min_last: u64::MAX,
            ..Status::default()
        }
    }

    /// Counts one member in.
    pub(super) fn add(&mut self, l: &Ledger) {
        self.joined += usize::from(l.first.is_some());
        self.failed += usize::from(l.failed);
        if l.first.is_some() && !l.failed {
            self.live += 1;
            self.resumed += usize::from(l.resumed_ns.is_some());
            self.min_last = self.min_last.min(l.last);
        }
    }

    pub(super) fn encode(&self) -> String {
        let s = self;
        format!(
            "{} {} {} {} {}",
            s.joined, s.failed, s.live, s.resumed, s.min_last
        )
    }

    /// Adds a worker's [`Status::encode`]d line.
    pub(super) fn merge(mut self, line: &str) -> Status {
        let v: Vec<u64> = line
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        let at = |i: usize| v.get(i).copied().unwrap_or(0);
        self.joined += at(0) as usize;
        self.failed += at(1) as usize;
        self.live += at(2) as usize;
        self.resumed += at(3) as usize;
        self.min_last = self.min_last.min(v.get(4).copied().unwrap_or(u64::MAX));
        self
    }
}

/// What the members saw, merged over members and processes.
pub(super) struct Summary {
    pub(super) c: Counts,
    /// The last member's socket reset, ns after the cut order: how long "at once" took.
    pub(super) cut_spread_ns: u64,
    /// First and last reconnection handshake, ns after the cut.
    pub(super) reconnect_first_ns: u64,
    pub(super) reconnect_last_ns: u64,
    /// Per member: cut → caught up with its resume's `joined` seq; and first reconnection
    /// attempt → caught up (the server's part: handshake, join, replay).
    pub(super) resume: Histogram<u64>,
    pub(super) catchup: Histogram<u64>,
    pub(super) error: Option<String>,
}

impl Summary {
    pub(super) fn new() -> Summary {
        Summary {
            c: Counts::default(),
            cut_spread_ns: 0,
            reconnect_first_ns: u64::MAX,
            reconnect_last_ns: 0,
            resume: histogram(),
            catchup: histogram(),
            error: None,
        }
    }

    /// `counts… cut-spread first last | resume histogram | catch-up histogram | first error`.
    pub(super) fn encode(&self) -> String {
        let mut words: Vec<String> = self.c.values().iter().map(u64::to_string).collect();
        words.push(self.cut_spread_ns.to_string());
        words.push(self.reconnect_first_ns.to_string());
        words.push(self.reconnect_last_ns.to_string());
        let error = self
            .error
            .as_deref()
            .unwrap_or("")
            .replace(['\n', '|'], " ");
        format!(
            "{} | {} | {} | {error}",
            words.join(" "),
            hist_encode(&self.resume),
            hist_encode(&self.catchup)
        )
    }

    /// Counts one member in, owed every seq up to `last_seq`.
    pub(super) fn add(&mut self, l: &Ledger, last_seq: u64) {
        self.c.members += 1;
        if let Some(e) = &l.error {
            self.error.get_or_insert_with(|| e.clone());
        }
        if l.first.is_none() {
            self.c.join_failed += 1;
            self.c.connect_failures += l.c.connect_failures;
            self.c.joined_timeouts += l.c.joined_timeouts;
            self.c.errors += l.c.errors;
            return;
        }
        self.c.joined += 1;
        self.c.add(&l.c);
        self.c.reconnect_failed += u64::from(l.failed);
        self.c.lost += l.lost(last_seq);
        self.c.members_not_recovered += u64::from(l.c.resumes_not_recovered > 0);
        if let (Some(cut), Some(at)) = (l.cut_ns, l.reset_ns) {
            self.cut_spread_ns = self.cut_spread_ns.max(at.saturating_sub(cut));
        }
        if let (Some(cut), Some(at)) = (l.cut_ns, l.reconnected_ns) {
            let after = at.saturating_sub(cut);
            self.reconnect_first_ns = self.reconnect_first_ns.min(after);
            self.reconnect_last_ns = self.reconnect_last_ns.max(after);
        }
        match (l.cut_ns, l.reconnect_start_ns, l.resumed_ns) {
            (Some(cut), Some(start), Some(done)) => {
                let _ = self.resume.record(done.saturating_sub(cut).max(1));
                let _ = self.catchup.record(done.saturating_sub(start).max(1));
            }
            _ => self.c.not_resumed += 1,
        }
    }

    /// Adds a worker's [`Summary::encode`]d line.
    pub(super) fn merge_encoded(&mut self, line: &str) {
        let mut parts = line.splitn(4, '|');
        let numbers: Vec<u64> = parts
            .next()
            .unwrap_or("")
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        let n = Counts::NAMES.len();
        self.c.add(&Counts::from_values(&numbers));
        let at = |i: usize| numbers.get(i).copied();
        self.cut_spread_ns = self.cut_spread_ns.max(at(n).unwrap_or(0));
        self.reconnect_first_ns = self.reconnect_first_ns.min(at(n + 1).unwrap_or(u64::MAX));
        self.reconnect_last_ns = self.reconnect_last_ns.max(at(n + 2).unwrap_or(0));
        hist_add_encoded(
            &mut self.resume,
            parts.next().unwrap_or("").split_whitespace(),
        );
        hist_add_encoded(
            &mut self.catchup,
            parts.next().unwrap_or("").split_whitespace(),
        );
        let error = parts.next().unwrap_or("").trim();
        if self.error.is_none() && !error.is_empty() {
            self.error = Some(error.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64, n: u64) -> Vec<u8> {
        format!(r#"{{"op":"msg","room":"r","seq":{seq},"data":[{n},"xx"]}}"#).into_bytes()
    }

    #[test]
    fn ops_parse() {
        assert_eq!(
            parse_op(&msg(42, 7)),
            Op::Msg {
                seq: 42,
                n: Some(7)
            }
        );
        assert_eq!(
            parse_op(br#"{"op":"joined","room":"r","seq":41,"epoch":"k3v9x2","recovered":true}"#),
            Op::Joined {
                seq: 41,
                epoch: Some("k3v9x2".into()),
                recovered: Some(true)
            }
        );
        assert_eq!(
            parse_op(br#"{"op":"joined","room":"r","seq":3}"#),
            Op::Joined {
                seq: 3,
                epoch: None,
                recovered: None
            }
        );
        assert_eq!(
            parse_op(br#"{"op":"gap","room":"r","from":50,"to":57}"#),
            Op::Gap { from: 50, to: 57 }
        );
        assert_eq!(
            parse_op(br#"{"op":"ack","id":7,"seq":9}"#),
            Op::Ack { seq: 9 }
        );
        assert!(matches!(
            parse_op(br#"{"op":"error","code":"x"}"#),
            Op::Error(_)
        ));
        // Another field order still parses (through serde_json).
        assert_eq!(
            parse_op(br#"{"seq":5,"op":"msg","room":"r","data":[2]}"#),
            Op::Msg { seq: 5, n: Some(2) }
        );
        assert_eq!(parse_op(b"not json"), Op::Other);
    }

    #[test]
    fn a_resume_that_replays_everything_loses_nothing() {
        let mut l = Ledger::default();
        assert_eq!(l.join_op("r"), r#"{"op":"join","room":"r"}"#);
        l.on_text(
            br#"{"op":"joined","room":"r","seq":10,"epoch":"abc123"}"#,
            0,
        );
        for seq in 11..=15 {
            l.on_text(&msg(seq, seq - 10), 1);
        }
        l.cut(100, 101);
        assert_eq!(
            l.join_op("r"),
            r#"{"op":"join","room":"r","since":15,"epoch":"abc123"}"#
        );
        l.reconnecting(150);
        l.connected(160);
        let j = br#"{"op":"joined","room":"r","seq":18,"epoch":"abc123","recovered":true}"#;
        assert_eq!(l.on_text(j, 170), Seen::Joined);
        assert_eq!(l.resumed_ns, None, "the replay is still owed");
        for seq in 16..=18 {
            l.on_text(&msg(seq, seq - 10), 180);
        }
        assert_eq!(l.resumed_ns, Some(180));
        l.on_text(&msg(19, 9), 190);
        assert_eq!(l.lost(19), 0);
        assert_eq!(l.lost(21), 2, "20 and 21 not yet received");
        assert_eq!(l.c.replayed, 3);
        assert_eq!(l.c.resumes_recovered, 1);
        let c = &l.c;
        assert_eq!(
            (c.duplicates, c.stale, c.reordered, c.mismatched),
            (0, 0, 0, 0)
        );
    }

    #[test]
    fn holes_duplicates_and_a_lost_history_are_counted() {
        let mut l = Ledger::default();
        l.on_text(br#"{"op":"joined","room":"r","seq":0,"epoch":"e"}"#, 0);
        l.on_text(&msg(0, 0), 0); // at the joined seq: owed nothing
        for seq in [1, 2, 4, 4, 3, 70, 130] {
            l.on_text(&msg(seq, seq), 0);
        }
        l.on_text(&msg(131, 5), 0); // payload number out of step
        assert_eq!(
            (l.c.stale, l.c.duplicates, l.c.reordered, l.c.mismatched),
            (1, 1, 1, 1)
        );
        // Received 1..=4, 70, 130, 131 of 1..=140.
        assert_eq!(l.lost(140), 140 - 7);
        l.cut(5, 6);
        l.on_text(
            br#"{"op":"joined","room":"r","seq":900,"epoch":"f","recovered":false}"#,
            9,
        );
        assert_eq!(l.resumed_ns, Some(9), "not recovered: live from here on");
        assert_eq!((l.c.resumes_not_recovered, l.c.epoch_changed), (1, 1));
        // Another epoch: owed what follows its joined seq, counted afresh.
        assert_eq!((l.first, l.last, l.lost(902)), (Some(900), 900, 2));
        l.on_text(&msg(901, 1), 9);
        assert_eq!((l.lost(902), l.c.mismatched), (1, 1));
        // The same epoch, but the sequence went back: a restart nobody announced.
        l.on_text(
            br#"{"op":"joined","room":"r","seq":3,"epoch":"f","recovered":false}"#,
            9,
        );
        assert_eq!(
            (l.c.seq_restarted, l.c.epoch_changed, l.first),
            (1, 1, Some(3))
        );
        l.on_text(br#"{"op":"gap","room":"r","from":50,"to":57}"#, 9);
        assert_eq!((l.c.gap_notices, l.c.gap_seqs), (1, 8));
        assert_eq!(l.on_text(br#"{"op":"error","code":"x"}"#, 9), Seen::Refused);
        assert!(l.error.as_deref().unwrap().contains("\"x\""));
    }

    #[test]
    fn summaries_cross_processes_intact() {
        let mut a = Summary::new();
        a.c.members = 3;
        a.c.lost = 2;
        a.c.replayed = 40;
        a.cut_spread_ns = 2_000_000;
        a.reconnect_first_ns = 5_000_000;
        a.reconnect_last_ns = 900_000_000;
        a.resume.record(300_000_000).unwrap();
        a.catchup.record(1_000_000).unwrap();
        a.error = Some("close Some(1008) slow | consumer".into());
        let mut b = Summary::new();
        b.merge_encoded(&a.encode());
        b.merge_encoded(&Summary::new().encode());
        assert_eq!(b.c, a.c);
        assert_eq!(
            (b.cut_spread_ns, b.reconnect_first_ns, b.reconnect_last_ns),
            (2_000_000, 5_000_000, 900_000_000)
        );
        assert_eq!((b.resume.len(), b.catchup.len()), (1, 1));
        assert_eq!(b.error.as_deref(), Some("close Some(1008) slow   consumer"));
    }
}
