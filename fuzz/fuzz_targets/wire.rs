#![no_main]
// The `/ws` JSON ops: any text message, and the frames a server builds from what it accepts.
libfuzzer_sys::fuzz_target!(|data: &[u8]| roomcast::app::fuzz::wire(data));
