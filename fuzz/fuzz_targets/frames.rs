#![no_main]
// Frame and message decoding, fed in chunks the way a socket delivers bytes.
libfuzzer_sys::fuzz_target!(|data: &[u8]| roomcast::protocol::fuzz::frames(data));
