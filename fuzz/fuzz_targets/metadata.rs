#![no_main]
// Invariants: src/fuzz.rs, fn metadata.
libfuzzer_sys::fuzz_target!(|data: &[u8]| siprec::fuzz::metadata(data));
