//! Checksum files (SHA256SUMS, checksums.txt, <asset>.sha256) from a release never panic the parser.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (name, contents) = text.split_once('\n').unwrap_or(("app", &text));
    let _ = handover_fetcher::find_in_checksum_file(contents, name);
    let _ = handover_fetcher::parse_sha256(contents);
});
