//! Protocol micro-benchmarks: decode + unmask throughput by payload size, and handshakes
//! parsed per second. Run with `cargo bench -p roomcast-bench --bench protocol`.

use divan::counter::{BytesCount, ItemsCount};
use divan::{black_box, Bencher};
use roomcast::protocol::frame::OpCode;
use roomcast::protocol::handshake;
use roomcast::protocol::message::{Decoder, Limits};
use roomcast_bench::masked_frame;

fn main() {
    divan::main();
}

/// Decodes one masked binary frame of `size` bytes, unmasking in place. The frame is
/// re-masked from a pristine copy each iteration outside the timed region.
#[divan::bench(args = [32, 1024, 65536])]
fn decode_unmask(bencher: Bencher, size: usize) {
    let frame = masked_frame(
        OpCode::Binary,
        &vec![0x5Au8; size],
        [0x37, 0xfa, 0x21, 0x3d],
    );
    let limits = Limits::server(1 << 20);
    let mut decoder = Decoder::new();
    bencher
        .counter(BytesCount::new(size))
        .with_inputs(|| frame.clone())
        .bench_local_refs(|buf| {
            let (n, event) = decoder.decode(buf, &limits).unwrap();
            black_box((n, event.is_some()));
        });
}

/// Decodes a masked text frame of `size` bytes: unmask plus UTF-8 validation.
#[divan::bench(args = [32, 1024, 65536])]
fn decode_unmask_text(bencher: Bencher, size: usize) {
    let frame = masked_frame(OpCode::Text, &vec![b'a'; size], [0x37, 0xfa, 0x21, 0x3d]);
    let limits = Limits::server(1 << 20);
    let mut decoder = Decoder::new();
    bencher
        .counter(BytesCount::new(size))
        .with_inputs(|| frame.clone())
        .bench_local_refs(|buf| {
            let (n, event) = decoder.decode(buf, &limits).unwrap();
            black_box((n, event.is_some()));
        });
}

const REQUEST: &[u8] = b"GET /ws?room=lobby HTTP/1.1\r\nHost: 127.0.0.1:9000\r\n\
Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\nOrigin: http://127.0.0.1:9000\r\nUser-Agent: bench\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";

/// Parses and validates a browser-like upgrade request and writes the 101 response.
#[divan::bench]
fn handshake_parse_and_respond(bencher: Bencher) {
    let mut out = Vec::with_capacity(256);
    bencher.counter(ItemsCount::new(1usize)).bench_local(|| {
        out.clear();
        if let Ok(Some((handshake::Parsed::Upgrade(req), _))) =
            handshake::parse(black_box(REQUEST), 8192)
        {
            handshake::accept_response(&req, None, None, &mut out);
        }
        black_box(out.len());
    });
}
