#![no_main]
// The `/api` request bodies: each input as a publish, a broadcast and a disconnect body.
libfuzzer_sys::fuzz_target!(|data: &[u8]| roomcast::app::fuzz::api_body(data));
