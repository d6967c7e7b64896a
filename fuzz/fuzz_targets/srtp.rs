#![no_main]
// Invariants: src/fuzz.rs, fn srtp.
libfuzzer_sys::fuzz_target!(|data: &[u8]| siprec::fuzz::srtp(data));
