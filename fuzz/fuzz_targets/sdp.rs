#![no_main]
// Invariants: src/fuzz.rs, fn sdp.
libfuzzer_sys::fuzz_target!(|data: &[u8]| siprec::fuzz::sdp(data));
