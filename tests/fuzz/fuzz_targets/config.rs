//! Any text given as handover.toml yields a config or an error, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = handover::Config::from_toml(text, "fuzz.toml");
    }
});
