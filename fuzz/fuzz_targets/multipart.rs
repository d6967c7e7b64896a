#![no_main]
// Invariants: src/fuzz.rs, fn multipart.
libfuzzer_sys::fuzz_target!(|data: &[u8]| siprec::fuzz::multipart(data));
