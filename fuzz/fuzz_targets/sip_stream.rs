#![no_main]
// Invariants: src/fuzz.rs, fn sip_stream.
libfuzzer_sys::fuzz_target!(|data: &[u8]| siprec::fuzz::sip_stream(data));
