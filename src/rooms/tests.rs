//! The owner's and the shards' room bookkeeping.

use super::*;

fn name(s: &str) -> Arc<str> {
    Arc::from(s)
}

#[test]
fn owner_is_stable_and_spread() {
    assert_eq!(owner_of("lobby", 4), owner_of("lobby", 4));
    let mut seen = [0; 4];
    for i in 0..1000 {
        seen[owner_of(&format!("room-{i}"), 4)] += 1;
    }
    assert!(seen.iter().all(|&n| n > 150), "{seen:?}");
}

/// What the deprecated `std::hash::SipHasher` gave these names: a node upgraded to the
/// `siphasher` crate puts every room on the shard it was on.
#[test]
fn owner_hash_is_what_std_siphasher_gave() {
    for (room, hash) in [
        ("lobby", 0x8ee6_1b97_cc94_d1c9_u64),
        ("a", 0x57af_97ec_c6df_eb45),
        ("room-42", 0xe8f7_8813_36ff_b309),
        ("", 0x20dd_4eb3_3d95_90f2),
    ] {
        assert_eq!(name_hash(room), hash, "{room:?}");
        assert_eq!(owner_of(room, 7), (hash % 7) as usize);
    }
}

type Handed = (Arc<str>, Vec<(u64, Arc<str>)>, Vec<u32>, (u64, u64));

fn sealed(o: &mut Owner) -> Vec<Handed> {
    let mut got = Vec::new();
    o.seal(|s| {
        let batch = s.batch.cloned().collect();
        got.push((s.room.clone(), batch, s.members.to_vec(), (s.first, s.last)));
    });
    got
}

#[test]
fn owner_sequences_batches_and_frees_empty_rooms() {
    let mut o = Owner::new(2, Retention::NONE, 1);
    let r = name("r");
    assert_eq!(
        o.publish(&r, name("1"), 0),
        None,
        "no members: nothing kept"
    );
    assert_eq!(o.join(&r, 0, 0, None).seq, 0);
    assert_eq!(o.join(&r, 1, 0, None).seq, 0);
    assert_eq!(o.publish(&r, name("1"), 0).map(|p| p.0), Some(1));
    assert_eq!(o.publish(&r, name("\"two\""), 0).map(|p| p.0), Some(2));
    let got = sealed(&mut o);
    assert_eq!(got.len(), 1, "one batch per room per turn");
    let (_, batch, members, span) = &got[0];
    assert_eq!(members, &vec![1, 1]);
    assert_eq!(*span, (1, 2));
    assert_eq!(batch, &vec![(1, name("1")), (2, name("\"two\""))]);
    assert!(sealed(&mut o).is_empty(), "nothing published since");
    o.leave(&r, (0, 0), 0, 0);
    assert_eq!(o.len(), 1);
    o.leave(&r, (1, 0), 0, 0);
    assert!(o.is_empty(), "no members anywhere, no history: freed");
    assert_eq!(o.join(&r, 1, 0, None).seq, 0, "a new room starts over");
}

fn keep(size: usize) -> Retention {
    Retention {
        size,
        bytes: 1 << 20,
        ttl_ms: 1000,
        idle_bytes: 1 << 20,
    }
}

#[test]
fn rooms_with_no_members_keep_at_most_their_budget_longest_idle_first() {
    let mut o = Owner::new(
        1,
        Retention {
            idle_bytes: 25,
            ..keep(64)
        },
        7,
    );
    for (i, room) in ["a", "b", "c"].iter().enumerate() {
        let r = name(room);
        o.join(&r, 0, 0, None);
        o.publish(&r, name(&"x".repeat(10)), 0);
        sealed(&mut o);
        o.leave(&r, (0, 0), 0, i as u64);
    }
    assert_eq!(o.len(), 2, "30 bytes idle > 25: the longest idle (a) went");
    let j = o.join(&name("a"), 0, 0, None);
    assert_eq!(j.seq, 0, "a starts over");
    // b and c are kept; publishing to an idle room counts too.
    o.publish(&name("c"), name(&"y".repeat(10)), 5);
    assert_eq!(o.len(), 2, "b went for c's new message");
    sealed(&mut o);
    assert_eq!(o.join(&name("c"), 0, 0, None).seq, 2, "c kept both");
}

#[test]
fn a_join_mid_turn_gets_the_batch_live_and_history_before_it() {
    let mut o = Owner::new(1, keep(4), 7);
    let r = name("r");
    let first = o.join(&r, 0, 0, None);
    for i in 1..=6 {
        o.publish(&r, name(&i.to_string()), 0);
    }
    sealed(&mut o);
    o.publish(&r, name("7"), 0);
    // 7 is in this turn's batch: it arrives live, not in the replay.
    let j = o.join(&r, 0, 0, Some((3, first.epoch)));
    assert_eq!((j.seq, j.epoch, j.recovered), (6, first.epoch, Some(true)));
    let seqs: Vec<u64> = j.replay.iter().map(|e| e.0).collect();
    assert_eq!(seqs, vec![4, 5, 6]);
    let j = o.join(&r, 0, 0, Some((1, first.epoch)));
    assert_eq!(
        j.recovered,
        Some(false),
        "2 fell out of a 4-message history"
    );
    assert!(j.replay.is_empty());
    let j = o.join(&r, 0, 0, Some((3, first.epoch ^ 1)));
    assert_eq!(j.recovered, Some(false), "another epoch");
    let j = o.join(&r, 0, 0, Some((9, first.epoch)));
    assert_eq!(j.recovered, Some(false), "from the future");
    let j = o.join(&r, 0, 0, Some((6, first.epoch)));
    assert_eq!((j.recovered, j.replay.len()), (Some(true), 0), "up to date");
    assert_eq!(sealed(&mut o)[0].3, (7, 7));
}

#[test]
fn an_empty_room_keeps_its_history_and_epoch_for_the_ttl() {
    let mut o = Owner::new(1, keep(8), 7);
    let r = name("r");
    let e = o.join(&r, 0, 1, None).epoch;
    o.publish(&r, name("1"), 10);
    sealed(&mut o);
    o.leave(&r, (0, 0), 1, 100);
    assert_eq!(
        o.publish(&r, name("2"), 500).map(|p| p.0),
        Some(2),
        "still recorded"
    );
    sealed(&mut o);
    o.expire(1099);
    let j = o.join(&r, 0, 0, Some((0, e)));
    assert_eq!((j.epoch, j.recovered, j.replay.len()), (e, Some(true), 2));
    o.leave(&r, (0, 0), 0, 1200);
    o.expire(1500);
    assert_eq!(o.len(), 1, "left at 1200: kept until 2200");
    o.expire(2200);
    assert!(o.is_empty());
    let j = o.join(&r, 0, 0, Some((2, e)));
    assert_ne!(j.epoch, e, "a new room, a new epoch");
    assert_eq!((j.seq, j.recovered), (0, Some(false)));
    assert!(o.history_bytes() == 0);
}

#[test]
fn epochs_differ_between_rooms_and_processes() {
    let (mut a, mut b) = (Owner::new(1, keep(1), 1), Owner::new(1, keep(1), 2));
    let ea = a.join(&name("x"), 0, 0, None).epoch;
    let ea2 = a.join(&name("y"), 0, 0, None).epoch;
    let eb = b.join(&name("x"), 0, 0, None).epoch;
    assert!(ea != ea2 && ea != eb && ea <= EPOCH_MASK);
}

#[test]
fn local_joins_go_through_pending_and_leave_all_cleans_up() {
    let mut l = Local::default();
    let (a, b) = (name("a"), name("b"));
    l.request_join(&a, 7, 8).unwrap();
    assert_eq!(l.request_join(&a, 7, 8), Err(JoinRefused::AlreadyJoined));
    assert!(l.members("a").is_empty(), "pending until the owner answers");
    assert!(l.joined("a", 7));
    assert!(!l.joined("a", 7));
    assert_eq!(l.members("a"), &[7]);
    l.request_join(&b, 7, 8).unwrap();
    l.request_join(&a, 9, 8).unwrap();
    assert_eq!(l.rooms(), 2);
    let mut left = l.leave_all(7);
    left.sort();
    assert_eq!(left, vec![a.clone(), b.clone()]);
    assert_eq!(l.rooms(), 1, "b had only 7; a still has 9 pending");
    assert!(l.leave("a", 9));
    assert!(!l.leave("a", 9));
    assert_eq!((l.rooms(), l.memberships()), (0, 0));
}

#[test]
fn a_room_that_comes_back_gets_a_new_id_and_the_old_one_names_nothing() {
    let mut l = Local::default();
    let (a, b) = (name("a"), name("b"));
    l.request_join(&a, 1, 8).unwrap();
    let old = l.id("a").unwrap();
    assert_eq!(l.name(old), Some(&a));
    assert_eq!(
        l.id("a"),
        Some(old),
        "stable while the room has a member here"
    );
    assert!(l.leave("a", 1));
    assert_eq!((l.id("a"), l.name(old)), (None, None));
    // The slab slot `a` had is taken by `b`, then `a` comes back elsewhere.
    l.request_join(&b, 2, 8).unwrap();
    l.request_join(&a, 3, 8).unwrap();
    let (new_a, new_b) = (l.id("a").unwrap(), l.id("b").unwrap());
    assert!(new_a != old && new_b != old, "ids are never given again");
    assert_eq!((l.name(new_a), l.name(new_b)), (Some(&a), Some(&b)));
    assert_eq!(l.name(old), None);
    assert_eq!(l.name(RoomId::NONE), None);
}

#[test]
fn a_batch_that_starts_late_reports_what_was_missed() {
    let mut l = Local::default();
    let a = name("a");
    l.request_join(&a, 1, 8).unwrap();
    assert_eq!(
        l.arrived("a", 4, 5),
        None,
        "before any answer: nothing expected"
    );
    assert_eq!(l.expect("a", 10), None);
    assert!(l.joined("a", 1));
    assert_eq!(
        l.arrived("a", 8, 10),
        None,
        "sealed before the join: ignored"
    );
    assert_eq!(l.arrived("a", 11, 12), None);
    let late = l.arrived("a", 15, 15);
    assert_eq!(late, Some((13, 14)), "13 and 14 never came");
    assert_eq!(l.expect("a", 15), None, "a later join, all caught up");
    assert_eq!(
        l.expect("a", 18),
        Some((16, 18)),
        "16 to 18 were dropped before it"
    );
    assert_eq!(l.arrived("a", 19, 19), None);
    assert_eq!(l.arrived("b", 1, 1), None, "no members here");
}

#[test]
fn rooms_per_connection_are_capped() {
    let mut l = Local::default();
    l.request_join(&name("a"), 1, 2).unwrap();
    l.request_join(&name("b"), 1, 2).unwrap();
    assert_eq!(
        l.request_join(&name("c"), 1, 2),
        Err(JoinRefused::TooManyRooms)
    );
    assert_eq!(
        l.request_join(&name("c"), 2, 0),
        Err(JoinRefused::TooManyRooms)
    );
    assert_eq!(l.rooms(), 2);
}

// ---------------------------------------------------------------- with a backplane

fn parked(slot: u32, since: Option<(u64, u32)>) -> Parked {
    Parked {
        shard: 0,
        slot,
        gen: 1,
        encoding: 0,
        since,
        asked: false,
    }
}

fn msgs(range: std::ops::RangeInclusive<u64>) -> Vec<(u64, Arc<str>)> {
    range.map(|s| (s, name(&s.to_string()))).collect()
}

fn seqs(replay: &[(u64, Arc<str>)]) -> Vec<u64> {
    replay.iter().map(|m| m.0).collect()
}

/// A live room on a node: Redis said epoch 7 at seq 10, with 5..=10 as history.
fn remote_room() -> (Owner, Arc<str>) {
    let mut o = Owner::new(1, keep(64), 1).with_backplane();
    let r = name("r");
    let need = o.join_remote(&r, parked(1, Some((4, 7))));
    assert_eq!(
        need,
        Need::Subscribe {
            after: Some(4),
            sub: 1
        }
    );
    let (answered, fetch) = o.synced(&r, (7, 10), msgs(5..=10), (false, 1));
    assert_eq!(fetch, None);
    let [(p, j)] = &answered[..] else {
        panic!("{answered:?}")
    };
    assert_eq!(
        (p.slot, j.seq, j.epoch, j.recovered),
        (1, 10, 7, Some(true))
    );
    assert_eq!(seqs(&j.replay), vec![5, 6, 7, 8, 9, 10]);
    (o, r)
}

#[test]
fn a_room_new_to_the_node_waits_for_redis_then_answers_from_what_it_sent() {
    let (mut o, r) = remote_room();
    // A second join while live: from the node's own history, at once.
    match o.join_remote(&r, parked(2, Some((8, 7)))) {
        Need::Ready(j) => assert_eq!(seqs(&j.replay), vec![9, 10]),
        other => panic!("{other:?}"),
    }
    // Messages arrive in Redis's order; a duplicate is dropped.
    assert!(!o.arrive(&r, 7, 11, name("11")));
    assert!(!o.arrive(&r, 7, 11, name("11 again")));
    assert!(!o.arrive(&r, 7, 12, name("12")));
    let batches = sealed(&mut o);
    assert_eq!(batches[0].3, (11, 12));
    assert_eq!(seqs(&batches[0].1), vec![11, 12]);
}

#[test]
fn a_jump_or_a_new_epoch_starts_the_log_over_after_the_batch_is_sealed() {
    let (mut o, r) = remote_room();
    o.arrive(&r, 7, 11, name("11"));
    assert!(o.must_seal(&r, 7, 14), "a jump with a batch open");
    assert!(!o.must_seal(&r, 7, 12), "the next one");
    assert!(o.must_seal(&r, 9, 1), "a new epoch");
    sealed(&mut o);
    assert!(!o.must_seal(&r, 7, 14), "sealed: nothing to seal");
    assert!(!o.arrive(&r, 7, 14, name("14")));
    assert_eq!(
        sealed(&mut o)[0].3,
        (14, 14),
        "the shards see the jump: a gap notice"
    );
    // The history before the hole is gone: a resume from before it is not recovered.
    match o.join_remote(&r, parked(3, Some((10, 7)))) {
        Need::Fetch { after: 10 } => {}
        other => panic!("{other:?}"),
    }
    assert!(o.arrive(&r, 9, 1, name("new")), "a new epoch is reported");
    assert_eq!(o.position(&r), Some((9, 0)));
}

#[test]
fn a_fetch_only_adds_older_history_and_answers_the_joins_that_waited() {
    let (mut o, r) = remote_room();
    let need = o.join_remote(&r, parked(2, Some((2, 7))));
    assert_eq!(need, Need::Fetch { after: 2 });
    // Redis's stream: 3..=12; 11 and 12 are on their way over the channel: not taken
    // from the fetch (they would jump the sequence ahead of the channel).
    let (answered, fetch) = o.synced(&r, (7, 12), msgs(3..=12), (true, 1));
    assert_eq!(fetch, None);
    let [(p, j)] = &answered[..] else {
        panic!("{answered:?}")
    };
    assert_eq!((p.slot, j.seq, j.recovered), (2, 10, Some(true)));
    assert_eq!(seqs(&j.replay), (3..=10).collect::<Vec<_>>());
    assert_eq!(o.position(&r), Some((7, 10)), "the sequence did not move");
    assert!(!o.arrive(&r, 7, 11, name("11")));
    assert_eq!(sealed(&mut o)[0].3, (11, 11));
}

#[test]
fn a_join_from_ahead_of_the_node_waits_until_the_node_gets_there() {
    let (mut o, r) = remote_room();
    // The client saw 12 elsewhere; this node has sealed 10.
    assert_eq!(
        o.join_remote(&r, parked(2, Some((12, 7)))),
        Need::Fetch { after: 12 }
    );
    let (answered, _) = o.synced(&r, (7, 13), msgs(13..=13), (true, 1));
    assert!(answered.is_empty(), "waits");
    assert!(o.ready().is_empty());
    for s in 11..=13 {
        o.arrive(&r, 7, s, name(&s.to_string()));
    }
    sealed(&mut o);
    let ready = o.ready();
    let [(room, p, j)] = &ready[..] else {
        panic!("{ready:?}")
    };
    assert_eq!(
        (&**room, p.slot, j.seq, j.recovered),
        ("r", 2, 13, Some(true))
    );
    assert_eq!(seqs(&j.replay), vec![13], "nothing twice, nothing missed");
    assert!(o.ready().is_empty());
    // A `since` beyond Redis's own seq is not waited for.
    o.join_remote(&r, parked(3, Some((99, 7))));
    let (answered, _) = o.synced(&r, (7, 13), Vec::new(), (true, 1));
    assert_eq!(answered[0].1.recovered, Some(false));
}

#[test]
fn a_resume_from_ahead_is_never_answered_behind_it_when_redis_cannot_be_read() {
    // Issue 29's duplicate: the member saw 12 on another node; this node (sealed 10)
    // cannot read Redis. Answered at 10, it would be handed 11 and 12 again when the
    // node catches up.
    let (mut o, r) = remote_room();
    assert_eq!(
        o.join_remote(&r, parked(2, Some((12, 7)))),
        Need::Fetch { after: 12 }
    );
    // From behind the node's history (it holds 5..=10): what it has, not recovered.
    assert_eq!(
        o.join_remote(&r, parked(3, Some((3, 7)))),
        Need::Fetch { after: 3 }
    );
    let (answered, refused, unused) = o.fetch_failed(&r, 1);
    assert_eq!(refused.iter().map(|p| p.slot).collect::<Vec<_>>(), vec![2]);
    let [(p, j)] = &answered[..] else {
        panic!("{answered:?}")
    };
    assert_eq!((p.slot, j.seq, j.recovered), (3, 10, Some(false)));
    assert!(!unused, "slot 1 and 3 are members");
    // An earlier subscription's failure changes nothing.
    o.join_remote(&r, parked(4, Some((12, 7))));
    let (answered, refused, _) = o.fetch_failed(&r, 0);
    assert!(answered.is_empty() && refused.is_empty());
}

#[test]
fn a_room_whose_only_resume_is_refused_is_dropped() {
    let (mut o, r) = remote_room();
    assert!(o.leave(&r, (0, 1), 0, 0), "the last member left");
    let need = o.join_remote(&r, parked(2, Some((12, 7))));
    assert_eq!(
        need,
        Need::Subscribe {
            after: Some(12),
            sub: 2
        }
    );
    // Not live yet: the subscription's own sync answers, not a failed fetch.
    let (answered, refused, unused) = o.fetch_failed(&r, 2);
    assert!(answered.is_empty() && refused.is_empty() && !unused);
    let (mut o, r) = remote_room();
    o.join_remote(&r, parked(2, Some((12, 7))));
    assert!(!o.leave(&r, (0, 1), 0, 0), "a resume is parked");
    let (_, refused, unused) = o.fetch_failed(&r, 1);
    assert_eq!(refused.len(), 1);
    assert!(unused && o.is_empty(), "nobody left: the channel can go");
}

#[test]
fn a_parked_join_withdrawn_by_its_leave_counts_nothing_and_frees_the_room() {
    let mut o = Owner::new(1, keep(64), 1).with_backplane();
    let r = name("r");
    o.join_remote(&r, parked(1, None));
    assert!(
        o.leave(&r, (0, 1), 0, 0),
        "the node no longer needs the channel"
    );
    assert!(o.is_empty());
    let (answered, _) = o.synced(&r, (7, 3), Vec::new(), (false, 1));
    assert!(
        answered.is_empty(),
        "a late state for a room gone is ignored"
    );
    // Joined again before the first subscription's state came: that state is not this
    // subscription's, and is ignored; the new one's is taken.
    assert_eq!(
        o.join_remote(&r, parked(2, None)),
        Need::Subscribe {
            after: None,
            sub: 2
        }
    );
    let (answered, _) = o.synced(&r, (7, 3), Vec::new(), (false, 1));
    assert!(answered.is_empty());
    let (answered, _) = o.synced(&r, (7, 9), Vec::new(), (false, 2));
    assert_eq!(answered[0].1.seq, 9);
}
