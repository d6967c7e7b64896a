#![no_main]
// Invariants: src/fuzz.rs, fn rtcp.
libfuzzer_sys::fuzz_target!(|data: &[u8]| siprec::fuzz::rtcp(data));
