#![no_main]
// Invariants: src/fuzz.rs, fn rtp.
libfuzzer_sys::fuzz_target!(|data: &[u8]| siprec::fuzz::rtp(data));
