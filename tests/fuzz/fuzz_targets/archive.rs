//! Release archives are untrusted input: unpacking must never panic, never write more than the
//! limit, and never write an entry whose path leaves the archive (the hidden entry point checks
//! the first two on every success).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = handover::fuzzing::unpack(data);
});
