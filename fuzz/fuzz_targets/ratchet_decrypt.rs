#![no_main]
//! Fuzz target `ratchet_decrypt`: see `sremp_fuzz::ratchet_decrypt` for what it covers and the input layout.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sremp_fuzz::ratchet_decrypt(data));
