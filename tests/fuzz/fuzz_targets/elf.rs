//! The truncation check reads ELF headers from untrusted candidates: it must never panic or
//! allocate without bound.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = handover::fuzzing::elf_intact(data);
});
