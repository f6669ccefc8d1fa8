use super::*;
use crate::protocol::frame::MAX_HEADER_LEN;
use proptest::prelude::*;

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// One masked client frame, as a browser would send it.
fn client_frame(fin: bool, opcode: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    let header = FrameHeader {
        fin,
        rsv: 0,
        opcode: OpCode::from_u8(opcode).unwrap(),
        mask: Some(key),
        payload_len: payload.len() as u64,
    };
    let mut head = [0u8; MAX_HEADER_LEN];
    let n = header.format(&mut head);
    let mut out = head[..n].to_vec();
    let mut body = payload.to_vec();
    crate::protocol::mask::apply_mask_bytewise(&mut body, key, 0);
    out.extend_from_slice(&body);
    out
}

/// An event with its borrow released, for comparing.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Owned {
    Message(MessageKind, Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, String)>),
}

fn own(event: Event<'_>) -> Owned {
    match event {
        Event::Message { kind, payload, .. } => Owned::Message(kind, payload.into_owned()),
        Event::Ping(p) => Owned::Ping(p.to_vec()),
        Event::Pong(p) => Owned::Pong(p.to_vec()),
        Event::Close(c) => Owned::Close(c.map(|c| (c.code.0, c.reason.to_string()))),
    }
}

/// Feeds `stream` in pieces cut at `cuts`, as a socket would deliver it.
fn feed(stream: &[u8], cuts: &[usize], limits: &Limits) -> Result<Vec<Owned>, ProtocolError> {
    let mut decoder = Decoder::new();
    let mut pending = Vec::new();
    let mut events = Vec::new();
    let mut from = 0;
    for &cut in cuts.iter().chain(std::iter::once(&stream.len())) {
        let cut = cut.clamp(from, stream.len());
        pending.extend_from_slice(&stream[from..cut]);
        from = cut;
        decode_buffered(&mut decoder, &mut pending, limits, |e| events.push(own(e)))?;
        assert!(pending.len() <= MAX_TAIL, "kept {} bytes", pending.len());
    }
    Ok(events)
}

fn feed_whole(stream: &[u8]) -> Result<Vec<Owned>, ProtocolError> {
    feed(stream, &[], &Limits::server(1 << 20))
}

fn text(s: &str) -> Owned {
    Owned::Message(MessageKind::Text, s.as_bytes().to_vec())
}

#[test]
fn decoder_is_small_and_idle_decoders_own_no_heap() {
    assert!(
        std::mem::size_of::<Decoder>() <= 32,
        "{}",
        std::mem::size_of::<Decoder>()
    );
    let mut d = Decoder::new();
    let mut stream = client_frame(true, 1, b"hi", KEY);
    let mut pending = std::mem::take(&mut stream);
    decode_buffered(&mut d, &mut pending, &Limits::server(100), |_| {}).unwrap();
    assert!(!d.is_assembling());
}

#[test]
fn rfc_5_7_masked_hello_is_lent_without_copy() {
    let mut bytes = [
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    let mut d = Decoder::new();
    let (n, ev) = d.decode(&mut bytes, &Limits::server(100)).unwrap();
    assert_eq!(n, 11);
    match ev {
        Some(Event::Message {
            kind: MessageKind::Text,
            payload: Cow::Borrowed(p),
            compressed: false,
        }) => {
            assert_eq!(p, b"Hello")
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn rfc_5_7_fragmented_hello_with_ping_between() {
    let mut stream = client_frame(false, 1, b"Hel", KEY);
    stream.extend(client_frame(true, 9, b"Hello", [1, 2, 3, 4]));
    stream.extend(client_frame(true, 0, b"lo", [5, 6, 7, 8]));
    let events = feed_whole(&stream).unwrap();
    assert_eq!(events, vec![Owned::Ping(b"Hello".to_vec()), text("Hello")]);
}

#[test]
fn every_split_of_a_mixed_stream_decodes_the_same() {
    let mut stream = client_frame(true, 2, &[0u8; 300], KEY);
    stream.extend(client_frame(false, 1, "κό".as_bytes(), KEY));
    stream.extend(client_frame(true, 10, b"", KEY));
    stream.extend(client_frame(true, 0, "σμε".as_bytes(), [9, 9, 9, 9]));
    stream.extend(client_frame(true, 8, &[0x03, 0xE8, b'b', b'y', b'e'], KEY));
    let expected = vec![
        Owned::Message(MessageKind::Binary, vec![0u8; 300]),
        Owned::Pong(vec![]),
        text("κόσμε"),
        Owned::Close(Some((1000, "bye".into()))),
    ];
    for cut in 0..stream.len() {
        assert_eq!(
            feed(&stream, &[cut], &Limits::server(1000)).unwrap(),
            expected,
            "cut {cut}"
        );
    }
    let every_byte: Vec<usize> = (0..stream.len()).collect();
    assert_eq!(
        feed(&stream, &every_byte, &Limits::server(1000)).unwrap(),
        expected
    );
}

#[test]
fn invalid_utf8_fails_in_the_first_fragment_not_at_fin() {
    // 0xC0 can never start a valid sequence: fail before any continuation arrives.
    let stream = client_frame(false, 1, &[b'a', 0xC0, 0x80], KEY);
    assert_eq!(feed_whole(&stream), Err(ProtocolError::InvalidUtf8));
}

#[test]
fn invalid_utf8_fails_mid_frame_before_the_frame_ends() {
    // A single 1000-byte frame whose first bytes arrive alone: F4 90 is past U+10FFFF.
    let mut payload = vec![b'a'; 1000];
    payload[10] = 0xF4;
    payload[11] = 0x90;
    let stream = client_frame(true, 1, &payload, KEY);
    let mut d = Decoder::new();
    let mut first = stream[..30].to_vec();
    let got = decode_buffered(&mut d, &mut first, &Limits::server(2000), |_| {});
    assert_eq!(got, Err(ProtocolError::InvalidUtf8));
}

#[test]
fn utf8_split_across_fragments_at_every_byte() {
    let s = "aκόσμε€𝄞z";
    for cut in 0..=s.len() {
        let mut stream = client_frame(false, 1, &s.as_bytes()[..cut], KEY);
        stream.extend(client_frame(true, 0, &s.as_bytes()[cut..], KEY));
        assert_eq!(feed_whole(&stream).unwrap(), vec![text(s)], "cut {cut}");
    }
}

#[test]
fn text_ending_inside_a_character_is_invalid() {
    let mut stream = client_frame(false, 1, &[0xE2, 0x82], KEY);
    stream.extend(client_frame(true, 0, &[], KEY));
    assert_eq!(feed_whole(&stream), Err(ProtocolError::InvalidUtf8));
    let single = client_frame(true, 1, &[b'x', 0xE2, 0x82], KEY);
    assert_eq!(feed_whole(&single), Err(ProtocolError::InvalidUtf8));
}

#[test]
fn binary_is_not_checked_for_utf8() {
    let stream = client_frame(true, 2, &[0xFF, 0xC0], KEY);
    assert_eq!(
        feed_whole(&stream).unwrap(),
        vec![Owned::Message(MessageKind::Binary, vec![0xFF, 0xC0])]
    );
}

#[test]
fn oversized_message_is_refused_from_its_header_alone() {
    let stream = client_frame(true, 2, &vec![0u8; 2000], KEY);
    let mut d = Decoder::new();
    let mut head_only = stream[..8].to_vec(); // 2 + 2 (length) + 4 (mask key)
    let got = decode_buffered(&mut d, &mut head_only, &Limits::server(1000), |_| {});
    assert_eq!(
        got,
        Err(ProtocolError::MessageTooLong {
            size: 2000,
            max: 1000
        })
    );
    assert!(!d.is_assembling(), "nothing was allocated for it");
}

#[test]
fn oversized_fragmented_message_is_refused_at_the_fragment_that_crosses() {
    let mut stream = client_frame(false, 2, &[0u8; 600], KEY);
    stream.extend(client_frame(true, 0, &[0u8; 600], KEY));
    let got = feed(&stream, &[], &Limits::server(1000));
    assert_eq!(
        got,
        Err(ProtocolError::MessageTooLong {
            size: 1200,
            max: 1000
        })
    );
    let exactly = feed(&stream, &[], &Limits::server(1200)).unwrap();
    assert_eq!(exactly.len(), 1);
}

#[test]
fn continuation_without_a_start_is_a_protocol_error() {
    let stream = client_frame(true, 0, b"x", KEY);
    assert_eq!(
        feed_whole(&stream),
        Err(ProtocolError::UnexpectedContinuation)
    );
}

#[test]
fn new_message_inside_a_fragmented_one_is_a_protocol_error() {
    let mut stream = client_frame(false, 1, b"a", KEY);
    stream.extend(client_frame(true, 2, b"b", KEY));
    assert_eq!(
        feed_whole(&stream),
        Err(ProtocolError::ExpectedContinuation)
    );
}

#[test]
fn close_payload_rules() {
    assert_eq!(
        feed_whole(&client_frame(true, 8, &[], KEY)).unwrap(),
        vec![Owned::Close(None)]
    );
    assert_eq!(
        feed_whole(&client_frame(true, 8, &[3], KEY)),
        Err(ProtocolError::CloseFrameTooShort)
    );
    for bad in [0u16, 999, 1004, 1005, 1006, 1015, 2999, 5000] {
        let got = feed_whole(&client_frame(true, 8, &bad.to_be_bytes(), KEY));
        assert_eq!(got, Err(ProtocolError::InvalidCloseCode(bad)));
    }
    let mut bad_reason = 1000u16.to_be_bytes().to_vec();
    bad_reason.extend([0xCE, 0xBA, 0xE1, 0xBD]);
    assert_eq!(
        feed_whole(&client_frame(true, 8, &bad_reason, KEY)),
        Err(ProtocolError::InvalidUtf8)
    );
}

#[test]
fn everything_after_close_is_discarded() {
    let mut stream = client_frame(true, 8, &[0x03, 0xE8], KEY);
    stream.extend(client_frame(true, 1, b"late", KEY));
    stream.extend([0xFF, 0xFF, 0xFF]); // garbage that would otherwise be an error
    let got = feed_whole(&stream).unwrap();
    assert_eq!(got, vec![Owned::Close(Some((1000, String::new())))]);
}

#[test]
fn replies_are_a_pong_with_the_payload_and_an_echoed_close() {
    let mut out = Vec::new();
    assert!(Event::Ping(b"abc").reply(&mut out));
    assert_eq!(out, [0x8A, 3, b'a', b'b', b'c']);
    out.clear();
    let close = CloseFrame {
        code: CloseCode(4001),
        reason: "x",
    };
    assert!(Event::Close(Some(close)).reply(&mut out));
    assert_eq!(out, [0x88, 3, 0x0F, 0xA1, b'x'], "code and reason echoed");
    out.clear();
    assert!(Event::Close(None).reply(&mut out));
    assert_eq!(out, [0x88, 0]);
    assert!(!Event::Pong(b"").reply(&mut out));
}

#[test]
fn control_frame_rules_reach_the_decoder() {
    let mut long_ping = client_frame(true, 9, &[0u8; 126], KEY);
    assert!(matches!(
        feed_whole(&long_ping),
        Err(ProtocolError::ControlFrameTooLong { .. })
    ));
    long_ping[0] &= 0x7F; // clear FIN
    assert_eq!(
        feed_whole(&long_ping),
        Err(ProtocolError::FragmentedControlFrame)
    );
}

#[derive(Clone, Debug)]
enum Item {
    Message {
        binary: bool,
        payload: Vec<u8>,
        fragments: Vec<usize>,
    },
    Ping(Vec<u8>),
}

fn item() -> impl Strategy<Value = Item> {
    prop_oneof![
        4 => (any::<bool>(), prop::collection::vec(0usize..400, 0..4)).prop_flat_map(|(binary, fragments)| {
            let payload = if binary {
                prop::collection::vec(any::<u8>(), 0..700).boxed()
            } else {
                ".{0,200}".prop_map(String::into_bytes).boxed()
            };
            payload.prop_map(move |payload| Item::Message { binary, payload, fragments: fragments.clone() })
        }),
        1 => prop::collection::vec(any::<u8>(), 0..=125).prop_map(Item::Ping),
    ]
}

/// Encodes items as masked client frames, fragmenting messages at the given points and
/// putting a ping between fragments.
fn encode_items(items: &[Item], key: [u8; 4]) -> (Vec<u8>, Vec<Owned>) {
    let mut stream = Vec::new();
    let mut expected = Vec::new();
    for it in items {
        match it {
            Item::Ping(p) => {
                stream.extend(client_frame(true, 9, p, key));
                expected.push(Owned::Ping(p.clone()));
            }
            Item::Message {
                binary,
                payload,
                fragments,
            } => {
                let mut cuts: Vec<usize> =
                    fragments.iter().map(|c| c % (payload.len() + 1)).collect();
                cuts.sort_unstable();
                cuts.push(payload.len());
                let mut from = 0;
                for (i, &cut) in cuts.iter().enumerate() {
                    let opcode = if i > 0 {
                        0
                    } else if *binary {
                        2
                    } else {
                        1
                    };
                    let last = i + 1 == cuts.len();
                    stream.extend(client_frame(last, opcode, &payload[from..cut], key));
                    if !last && i == 0 {
                        stream.extend(client_frame(true, 9, b"between", key));
                        expected.push(Owned::Ping(b"between".to_vec()));
                    }
                    from = cut;
                }
                let kind = if *binary {
                    MessageKind::Binary
                } else {
                    MessageKind::Text
                };
                expected.push(Owned::Message(kind, payload.clone()));
            }
        }
    }
    (stream, expected)
}

proptest! {
    #[test]
    fn roundtrip_under_arbitrary_fragmentation_and_stream_splits(
        items in prop::collection::vec(item(), 0..8),
        key in any::<[u8; 4]>(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
    ) {
        let (stream, expected) = encode_items(&items, key);
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        cuts.sort_unstable();
        let got = feed(&stream, &cuts, &Limits::server(1 << 16)).unwrap();
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600), cut in 0usize..600) {
        let _ = feed(&bytes, &[cut], &Limits::server(300));
    }
}

#[test]
fn compressed_messages_are_marked_and_rsv1_elsewhere_is_refused() {
    let deflate = Limits {
        max_message: 1 << 20,
        rules: crate::protocol::Rules {
            rsv_allowed: 0b100,
            require_mask: true,
        },
    };
    let rsv1 = |mut frame: Vec<u8>| {
        frame[0] |= 0x40;
        frame
    };
    // Not UTF-8 as it is: compressed text is checked once inflated, not here.
    let bytes = [0xf2, 0x48, 0xcd];
    for cuts in [&[][..], &[1, 3, 7]] {
        let mut d = Decoder::new();
        let mut pending = rsv1(client_frame(true, 1, &bytes, KEY));
        let mut pieces = Vec::new();
        let mut from = 0;
        let mut got = Vec::new();
        for &cut in cuts.iter().chain(std::iter::once(&pending.len())) {
            pieces.extend_from_slice(&pending[from..cut]);
            from = cut;
            decode_buffered(&mut d, &mut pieces, &deflate, |e| match e {
                Event::Message {
                    payload,
                    compressed,
                    ..
                } => got.push((payload.into_owned(), compressed)),
                other => panic!("{other:?}"),
            })
            .unwrap();
        }
        pending.clear();
        assert_eq!(got, [(bytes.to_vec(), true)], "cut at {cuts:?}");
    }
    // Fragmented: RSV1 on the first frame only.
    let mut stream = rsv1(client_frame(false, 1, &bytes[..1], KEY));
    stream.extend(client_frame(true, 0, &bytes[1..], KEY));
    let mut d = Decoder::new();
    let mut got = Vec::new();
    decode_buffered(&mut d, &mut stream, &deflate, |e| {
        if let Event::Message {
            payload,
            compressed,
            ..
        } = e
        {
            got.push((payload.into_owned(), compressed));
        }
    })
    .unwrap();
    assert_eq!(got, [(bytes.to_vec(), true)]);
    // RSV1 on a continuation or a control frame, or without the extension: 1002.
    let mut stream = client_frame(false, 1, b"a", KEY);
    stream.extend(rsv1(client_frame(true, 0, b"b", KEY)));
    assert!(matches!(
        feed(&stream, &[], &deflate),
        Err(ProtocolError::ReservedBitsSet { .. })
    ));
    let ping = rsv1(client_frame(true, 9, b"", KEY));
    assert!(matches!(
        feed(&ping, &[], &deflate),
        Err(ProtocolError::ReservedBitsSet { .. })
    ));
    let plain_server = rsv1(client_frame(true, 1, b"a", KEY));
    assert!(matches!(
        feed_whole(&plain_server),
        Err(ProtocolError::ReservedBitsSet { .. })
    ));
}
