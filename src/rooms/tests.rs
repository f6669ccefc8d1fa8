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
