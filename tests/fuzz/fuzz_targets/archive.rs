//! Release archives are untrusted input: extraction must never panic, never return more than
//! the limit, and never hand back an entry whose path leaves the archive.
#![no_main]
use handover_fetcher_http::archive::{extract, Format};

/// Small, so that oversize entries are exercised as often as ordinary ones.
const LIMIT: u64 = 64 * 1024;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let format = match selector % 4 {
        0 => Format::Gzip,
        1 => Format::TarGz,
        2 => Format::Zip,
        _ => Format::sniff(bytes),
    };
    if let Ok(binary) = extract(bytes, format, "app", LIMIT) {
        assert!(binary.len() as u64 <= LIMIT, "extract returned more than the limit");
    }
});
