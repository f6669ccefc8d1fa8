#![no_main]
// The opening-handshake parser: any bytes, under several header caps.
libfuzzer_sys::fuzz_target!(|data: &[u8]| roomcast::protocol::fuzz::handshake(data));
