//! Fuzz entry points. The cargo-fuzz targets in `fuzz/` call these, and unit tests run
//! them over the seed corpus in `fuzz/seeds/`, so CI exercises the same code paths. The
//! property they check: no input panics, and whatever is accepted is internally consistent.

use super::handshake::{self, Parsed};
use super::message::{decode_buffered, Decoder, Limits, MAX_TAIL};

/// Parses `data` as a request head, under a cap taken from the input's length so both the
/// complete and the too-large paths are reached, and formats a response for it.
pub fn handshake(data: &[u8]) {
    for cap in [data.len().max(1), 64, 8192] {
        let mut out = Vec::new();
        match handshake::parse(data, cap) {
            Ok(Some((Parsed::Upgrade(req), n))) => {
                assert!(n <= data.len() && n <= cap);
                assert!(req.accept.is_some());
                let protocol = req
                    .protocols
                    .as_deref()
                    .and_then(|p| handshake::tokens(p).next());
                handshake::accept_response(&req, protocol, None, &mut out);
            }
            Ok(Some((Parsed::Plain(_), n))) => assert!(n <= data.len()),
            Ok(None) => assert!(data.len() < cap),
            Err(e) => handshake::reject_response(e.status(), &e.to_string(), &mut out),
        }
    }
}

/// Feeds `data[1..]` to a server-side decoder in chunks whose sizes come from `data[0]`,
/// the way a socket might deliver it, building the reply for every event.
pub fn frames(data: &[u8]) {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(seed % 64) + 1;
    let limits = Limits::server(if seed & 0x80 != 0 { 1 << 16 } else { 512 });
    let mut decoder = Decoder::new();
    let mut pending = Vec::new();
    let mut replies = Vec::new();
    for piece in stream.chunks(chunk) {
        pending.extend_from_slice(piece);
        let result = decode_buffered(&mut decoder, &mut pending, &limits, |event| {
            event.reply(&mut replies);
        });
        if let Err(e) = result {
            // Every violation maps to a close code a server may send.
            assert!(e.close_code().is_valid_on_wire());
            return;
        }
        assert!(pending.len() <= MAX_TAIL);
    }
}

/// The seed corpus of fuzz target `target` (`fuzz/seeds/<target>`), sorted: every
/// target's unit test runs over it.
#[cfg(test)]
pub(crate) fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
        .collect();
    out.sort();
    assert!(out.len() >= 4, "seed corpus for {target} is too small");
    out
}

#[cfg(test)]
mod tests {
    use super::seeds;

    #[test]
    fn handshake_target_over_seed_corpus() {
        for seed in seeds("handshake") {
            super::handshake(&seed);
            // Every prefix too: the partial-input paths.
            for cut in 0..seed.len() {
                super::handshake(&seed[..cut]);
            }
        }
    }

    #[test]
    fn frames_target_over_seed_corpus() {
        for seed in seeds("frames") {
            for first in [0u8, 1, 7, 63, 0x80, 0xFF] {
                let mut input = seed.clone();
                if let Some(b) = input.first_mut() {
                    *b = first;
                }
                super::frames(&input);
            }
        }
    }
}
