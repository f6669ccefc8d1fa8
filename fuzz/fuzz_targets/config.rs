#![no_main]
// The `--config` file: TOML to flags to a validated configuration.
libfuzzer_sys::fuzz_target!(|data: &[u8]| roomcast::config::fuzz::file(data));
