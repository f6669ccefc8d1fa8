#![no_main]
// The `/sse` request: its rooms and its Last-Event-ID, under a room cap from the first byte.
libfuzzer_sys::fuzz_target!(|data: &[u8]| roomcast::app::fuzz::sse(data));
