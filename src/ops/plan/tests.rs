use super::*;

fn machine() -> Machine {
    Machine {
        cpus: 2,
        memory_bytes: 24 << 30,
        nofile: 20_000,
        uring: true,
    }
}

fn idle(n: u64) -> Workload {
    Workload {
        connections: n,
        rooms: 0,
        msg_rate: 0.0,
        msg_size: 0,
        history_size: 64,
        history_bytes: 256 << 10,
        ping_interval_secs: 120,
        shards: None,
        nodes: 1,
        deflate: false,
        tls: false,
        write_delay_secs: 0.0,
        max_queued_bytes: 1 << 20,
        link: Link::Nic,
    }
}

#[test]
fn a_million_on_twenty_thousand_descriptors_takes_more_rings_than_cpus() {
    let f = Figures::builtin();
    let p = plan(&idle(1_000_000), &machine(), &f);
    assert_eq!(p.shards, 53, "⌈1M / (20,000 − 1,024)⌉");
    assert_eq!(p.recv_buffers, 8);
    let raised = Machine {
        nofile: 1 << 20,
        ..machine()
    };
    assert_eq!(plan(&idle(1_000_000), &raised, &f).shards, 2);
}

#[test]
fn memory_is_fixed_plus_linear() {
    let f = Figures::builtin();
    let m = machine();
    let at = |n| Workload {
        shards: Some(16),
        ..idle(n)
    };
    let (a, b) = (plan(&at(100_000), &m, &f), plan(&at(200_000), &m, &f));
    // Same shards: the difference is N × per-connection.
    assert_eq!((a.shards, b.shards), (16, 16));
    let per = (b.user_bytes - a.user_bytes) / 100_000.0;
    assert!((per - f.user_bytes_per_conn).abs() < 1e-6, "{per}");
    assert!((b.kernel_bytes - 2.0 * a.kernel_bytes).abs() < 1e-3);
}

#[test]
fn heartbeats_that_eat_the_box_get_a_longer_interval_suggested() {
    let f = Figures::builtin();
    let w = Workload {
        ping_interval_secs: 30,
        ..idle(1_000_000)
    };
    let p = plan(&w, &machine(), &f);
    assert!(p.heartbeat_cpus > 0.5, "{}", p.heartbeat_cpus);
    // 1M × (20.8 − 2.0 µs on loopback for the client's input) / (25% of 2 CPUs) = 37.6 s.
    assert_eq!(p.suggested_ping_interval, 38);
    let (text, fits) = render(&w, &machine(), &f, &p);
    assert!(text.contains("--ping-interval 38"), "{text}");
    let looped = Workload {
        link: Link::Loopback,
        ..w
    };
    assert_eq!(plan(&looped, &machine(), &f).suggested_ping_interval, 42);
    assert!(fits, "{text}");
}

#[test]
fn a_busy_room_workload_reports_deliveries_and_can_fail_to_fit() {
    let f = Figures::builtin();
    let w = Workload {
        connections: 100_000,
        rooms: 10,
        msg_rate: 100.0,
        msg_size: 100,
        history_size: 64,
        history_bytes: 256 << 10,
        ping_interval_secs: 30,
        shards: None,
        nodes: 1,
        ..idle(0)
    };
    let p = plan(&w, &machine(), &f);
    assert_eq!(p.deliveries_per_sec, 10_000_000.0);
    // 5M deliveries/s per CPU: their own part alone (148 B on the wire each) is more than
    // a CPU, so no gathering keeps up; sends carry all they can (16 frames on io_uring).
    assert!(p.saturated);
    assert_eq!(p.messages_per_send, 16.0);
    assert_eq!(p.sends_per_sec, 1e7 / 16.0);
    let each = f.send_ns(Link::Nic) / 16.0 + f.delivery_cpu_ns + 148.0 * f.wire_byte_ns;
    assert!(
        (p.delivery_cpus - 1e7 * each / 1e9).abs() < 1e-9,
        "{}",
        p.delivery_cpus
    );
    let (text, fits) = render(&w, &machine(), &f, &p);
    assert!(!fits, "10M deliveries/s cannot fit in 2 CPUs: {text}");
    assert!(text.contains("does not fit"));
}

#[test]
fn history_is_counted_per_room_by_count_or_bytes() {
    let w = |size, bytes, msg| Workload {
        rooms: 1000,
        msg_size: msg,
        history_size: size,
        history_bytes: bytes,
        ..idle(10_000)
    };
    // 64 messages of 100 B: 64 slots of 24 B + 64 × (16 + 100 → 128 B).
    assert_eq!(
        history_per_room(&w(64, 1 << 20, 100)),
        (64 * 24 + 64 * 128) as f64
    );
    // 1000 B messages under a 10,000 B cap: 10 kept, in 16 slots.
    assert_eq!(
        history_per_room(&w(64, 10_000, 1000)),
        (16 * 24 + 10 * 1024) as f64
    );
    assert_eq!(history_per_room(&w(0, 1 << 20, 100)), 0.0);
    let f = Figures::builtin();
    let (with, without) = (
        plan(&w(64, 1 << 20, 100), &machine(), &f),
        plan(&w(0, 0, 100), &machine(), &f),
    );
    let grew = with.user_bytes - without.user_bytes;
    assert!(
        (grew - 1000.0 * (64 * 24 + 64 * 128) as f64).abs() < 1.0,
        "{grew}"
    );
    let (text, _) = render(&w(64, 1 << 20, 100), &machine(), &f, &with);
    assert!(text.contains("history: 1000 rooms"), "{text}");
}

#[test]
fn figures_round_trip_through_json() {
    let f = Figures::builtin();
    let text = serde_json::to_string(&f).unwrap();
    assert_eq!(serde_json::from_str::<Figures>(&text).unwrap(), f);
}

#[test]
fn a_cluster_splits_connections_and_deliveries_and_counts_redis() {
    let f = Figures::builtin();
    let one = Workload {
        connections: 100_000,
        rooms: 100,
        msg_rate: 10.0,
        msg_size: 100,
        ..idle(0)
    };
    let four = Workload {
        nodes: 4,
        ..one.clone()
    };
    let (a, b) = (plan(&one, &machine(), &f), plan(&four, &machine(), &f));
    assert_eq!((b.node_connections, b.room_nodes), (25_000, 4));
    assert!((b.deliveries_per_sec * 4.0 - a.deliveries_per_sec).abs() < 1e-6);
    assert_eq!(
        (a.backplane_cpus, a.redis_cpus, a.redis_servers),
        (0.0, 0.0, 0)
    );
    // Every node receives every room's messages; Redis runs each publish once and
    // writes it to the 4 nodes.
    let ns = 1000.0 * f.backplane_receive_ns + 250.0 * f.backplane_publish_ns;
    assert!((b.backplane_cpus - ns / 1e9).abs() < 1e-9);
    let redis = 1000.0 * (f.redis_publish_us + 4.0 * f.redis_subscriber_us) / 1e6;
    assert!((b.redis_cpus - redis).abs() < 1e-9);
    let (text, _) = render(&four, &machine(), &f, &b);
    assert!(
        text.contains("4 nodes on Redis") && text.contains("Redis server(s)"),
        "{text}"
    );
    // Enough publishes need more than one Redis.
    let busy = Workload {
        rooms: 10_000,
        msg_rate: 100.0,
        ..four
    };
    let p = plan(&busy, &machine(), &f);
    assert_eq!(p.redis_servers, (p.redis_cpus / REDIS_SHARE).ceil() as u64);
    assert!(p.redis_servers > 1, "{}", p.redis_cpus);
}

/// 10,000 members in 10 rooms, 10 msg/s of 1,000 B each, on 2 shards.
fn ten_rooms() -> Workload {
    Workload {
        connections: 10_000,
        rooms: 10,
        msg_rate: 10.0,
        msg_size: 1000,
        shards: Some(2),
        ..idle(0)
    }
}

#[test]
fn deflate_costs_the_shards_memory_and_each_message_cpu_not_the_connections() {
    let f = Figures::builtin();
    let plain = ten_rooms();
    let deflate = Workload {
        deflate: true,
        ..plain.clone()
    };
    let (a, b) = (plan(&plain, &machine(), &f), plan(&deflate, &machine(), &f));
    assert!((b.user_bytes - a.user_bytes - 2.0 * DEFLATE_SHARD_BYTES).abs() < 1.0);
    let compress = 100.0 * 1048.0 * DEFLATE_NS_PER_BYTE / 1e9;
    assert!((b.publish_cpus - a.publish_cpus - compress).abs() < 1e-12);
    assert!((b.egress_bytes_per_sec - a.egress_bytes_per_sec * DEFLATE_RATIO).abs() < 1.0);
    // As many sends; fewer bytes in them (1,048 B at 0.37: 388 B).
    assert_eq!(a.sends_per_sec, b.sends_per_sec);
    let saved = a.deliveries_per_sec * (1048.0 - 388.0) * f.wire_byte_ns / 1e9;
    assert!((a.delivery_cpus - b.delivery_cpus - saved).abs() < 1e-9);
    // Under --deflate-min-size nothing is compressed.
    let small = Workload {
        msg_size: 100,
        ..deflate
    };
    let c = plan(&small, &machine(), &f);
    let d = plan(
        &Workload {
            deflate: false,
            ..small
        },
        &machine(),
        &f,
    );
    assert_eq!(
        (c.publish_cpus, c.egress_bytes_per_sec),
        (d.publish_cpus, d.egress_bytes_per_sec)
    );
}

#[test]
fn tls_costs_each_connection_its_session_and_each_delivery_its_sealing() {
    let f = Figures::builtin();
    let plain = ten_rooms();
    let tls = Workload {
        tls: true,
        ..plain.clone()
    };
    let (a, b) = (plan(&plain, &machine(), &f), plan(&tls, &machine(), &f));
    assert!((b.user_bytes - a.user_bytes - 10_000.0 * TLS_CONN_BYTES).abs() < 1.0);
    // No delay: one record per delivery.
    let seal = TLS_RECORD_NS + 1048.0 * TLS_NS_PER_BYTE;
    assert!((b.tls_cpus - a.deliveries_per_sec * seal / 1e9).abs() < 1e-9);
    assert!((b.delivery_cpus - a.delivery_cpus - b.tls_cpus).abs() < 1e-9);
    assert_eq!(a.publish_cpus, b.publish_cpus);
    assert_eq!(b.handshake_cpu_secs, 10_000.0 * TLS_HANDSHAKE_US / 1e6);
    let (text, _) = render(&tls, &machine(), &f, &b);
    assert!(text.contains("sealing TLS records"), "{text}");
    assert!(text.contains("for TLS"), "{text}");
}

#[test]
fn one_send_carries_what_comes_within_the_delay_up_to_half_the_ring() {
    // Evenly spaced: 1 + ⌊D·R⌋.
    assert_eq!(messages_per_send(50.0, 0.0, 32, 1 << 20, 148), 1.0);
    assert_eq!(messages_per_send(50.0, 0.005, 32, 1 << 20, 148), 1.0);
    assert_eq!(messages_per_send(50.0, 0.020, 32, 1 << 20, 148), 2.0);
    assert_eq!(messages_per_send(50.0, 0.100, 32, 1 << 20, 148), 6.0);
    // Half the out-ring's frames go at once, and half --max-queued-bytes (with the frame
    // that reaches it: 4 × 3,048 B ≥ 10,000 B).
    assert_eq!(messages_per_send(400.0, 0.100, 32, 1 << 20, 112), 16.0);
    assert_eq!(messages_per_send(400.0, 0.100, 1024, 20_000, 3_048), 4.0);
    // A send carries at most 16 frames on io_uring, 64 on epoll.
    let f = Figures::builtin();
    let busy = Workload {
        connections: 500,
        rooms: 1,
        msg_rate: 400.0,
        msg_size: 64,
        shards: Some(1),
        write_delay_secs: 0.1,
        ..idle(0)
    };
    assert_eq!(plan(&busy, &machine(), &f).messages_per_send, 16.0);
    let epoll = Machine {
        uring: false,
        ..machine()
    };
    assert_eq!(plan(&busy, &epoll, &f).messages_per_send, 41.0);
}

#[test]
fn a_write_delay_counts_fewer_sends_and_nic_leaves_out_the_receivers_input() {
    let f = Figures::builtin();
    // 2,000 members × 50 msg/s of 100 B, one shard: issue 27's first shape.
    let at = |delay, link| Workload {
        connections: 2_000,
        rooms: 1,
        msg_rate: 50.0,
        msg_size: 100,
        shards: Some(1),
        write_delay_secs: delay,
        link,
        ..idle(0)
    };
    let none = plan(&at(0.0, Link::Loopback), &machine(), &f);
    let twenty = plan(&at(0.020, Link::Loopback), &machine(), &f);
    assert_eq!(none.deliveries_per_sec, 100_000.0);
    assert_eq!(none.sends_per_sec, 100_000.0);
    assert_eq!(twenty.sends_per_sec, 50_000.0, "two messages per send");
    let sends = (none.sends_per_sec - twenty.sends_per_sec) * f.send_cpu_ns / 1e9;
    assert!((none.delivery_cpus - twenty.delivery_cpus - sends).abs() < 1e-9);
    // Measured on loopback at D = 0: 0.65 server CPUs (the table); the fit says 0.66.
    assert!((0.6..0.72).contains(&none.cpus()), "{}", none.cpus());
    let nic = plan(&at(0.0, Link::Nic), &machine(), &f);
    let receive = 100_000.0 * f.loopback_receive_ns / 1e9;
    assert!((none.delivery_cpus - nic.delivery_cpus - receive).abs() < 1e-9);
    let (text, _) = render(&at(0.020, Link::Loopback), &machine(), &f, &twenty);
    assert!(
        text.contains("50000 sends/s, 2.0 per send with --write-delay 20ms")
            && text.contains("(loopback)"),
        "{text}"
    );
}

#[test]
fn a_saturated_loop_gathers_what_comes_during_its_turn() {
    let f = Figures::builtin();
    // issue 27's closed loop: 2,000 members taking 1.26M deliveries/s of 64 B on one shard.
    let w = Workload {
        connections: 2_001,
        rooms: 1,
        msg_rate: 628.0,
        msg_size: 64,
        shards: Some(1),
        link: Link::Loopback,
        ..idle(0)
    };
    let one = Machine {
        cpus: 1,
        ..machine()
    };
    let p = plan(&w, &one, &f);
    assert!(p.saturated);
    // k = d·s / (1 − d·m), and the deliveries then take exactly the CPU.
    let (d, s, m) = (
        p.deliveries_per_sec,
        f.send_cpu_ns,
        f.delivery_cpu_ns + 112.0 * f.wire_byte_ns,
    );
    let k = d * s / 1e9 / (1.0 - d * m / 1e9);
    assert!(
        (p.messages_per_send - k).abs() < 1e-9,
        "{}",
        p.messages_per_send
    );
    assert!((p.delivery_cpus - 1.0).abs() < 1e-9, "{}", p.delivery_cpus);
    let (text, fits) = render(&w, &one, &f, &p);
    assert!(!fits && text.contains("saturated"), "{text}");
    // A twentieth of that rate is a send per delivery, not saturated.
    let calm = plan(
        &Workload {
            msg_rate: 31.4,
            ..w
        },
        &one,
        &f,
    );
    assert!(!calm.saturated);
    assert_eq!(calm.messages_per_send, 1.0);
}
