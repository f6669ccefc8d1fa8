//! A realistic JSON body for fan-out's messages (`fanout --json`): a market-data-like
//! feed, an array of quotes with the same keys and fresh numbers in every message, e.g.
//! `{"items":[{"sym":"S042","bid":101.37,"ask":101.52,"vol":318,"ts":1764000001234},…]}`.
//! Compression (permessage-deflate) then sees what a real feed gives it: keys and
//! structure that repeat, digits that do not. The default padding (one repeated byte)
//! would shrink a hundredfold and flatter the server's compression.

use std::io::Write as _;

/// The longest quote [`Feed::write`] appends, its comma included.
const QUOTE_MAX: usize =
    r#",{"sym":"S000","bid":1000.00,"ask":1000.00,"vol":10000,"ts":1764000001234}"#.len();

/// Quotes with numbers from a pseudo-random sequence (splitmix64): different in every
/// message, the same run after run for a given seed.
pub struct Feed {
    state: u64,
}

impl Feed {
    pub fn new(seed: u64) -> Feed {
        Feed { state: seed }
    }

    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Appends `{"items":[…]}` to `out`, with as many quotes as keep it within `size`
    /// bytes (none below ~90), each stamped a little before `now_ms` (Unix milliseconds).
    /// Formats into `out`: no allocation once it has room.
    pub fn write(&mut self, size: usize, now_ms: u64, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(br#"{"items":["#);
        let mut first = true;
        while out.len() - start + QUOTE_MAX + 2 <= size {
            let r = self.next();
            // Prices 10.00 to 999.99 with a spread of 1 to 40 cents, volumes up to 9999.
            let bid = 1_000 + r % 99_000;
            let ask = bid + 1 + (r >> 17) % 40;
            let (sym, vol, age) = ((r >> 23) % 500, 1 + (r >> 32) % 9_999, (r >> 46) % 2_000);
            let comma = if first { "" } else { "," };
            first = false;
            let _ = write!(
                out,
                r#"{comma}{{"sym":"S{sym:03}","bid":{}.{:02},"ask":{}.{:02},"vol":{vol},"ts":{}}}"#,
                bid / 100,
                bid % 100,
                ask / 100,
                ask % 100,
                now_ms.saturating_sub(age)
            );
        }
        out.extend_from_slice(b"]}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feeds_are_json_near_their_size_and_differ_per_message() {
        let mut feed = Feed::new(7);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        feed.write(1000, 1_764_000_001_234, &mut a);
        feed.write(1000, 1_764_000_001_234, &mut b);
        assert_ne!(a, b);
        for body in [&a, &b] {
            assert!(
                body.len() <= 1000 && body.len() > 1000 - QUOTE_MAX - 2,
                "{}",
                body.len()
            );
            let v: serde_json::Value = serde_json::from_slice(body).unwrap();
            let q = &v["items"][0];
            assert!(
                q["bid"].as_f64().unwrap() < q["ask"].as_f64().unwrap(),
                "{q}"
            );
            assert!(q["sym"].as_str().unwrap().starts_with('S'));
        }
        let mut tiny = Vec::new();
        feed.write(10, 0, &mut tiny);
        assert_eq!(tiny, br#"{"items":[]}"#);
    }

    #[test]
    fn feeds_compress_like_a_feed_not_like_padding() {
        use flate2::{Compress, Compression, FlushCompress};
        let mut body = Vec::new();
        Feed::new(1).write(1024, 1_764_000_001_234, &mut body);
        let mut z = Compress::new(Compression::default(), false);
        let mut out = Vec::with_capacity(2048);
        z.compress_vec(&body, &mut out, FlushCompress::Sync)
            .unwrap();
        let ratio = body.len() as f64 / out.len() as f64;
        assert!((1.5..6.0).contains(&ratio), "{ratio:.2}");
    }
}
