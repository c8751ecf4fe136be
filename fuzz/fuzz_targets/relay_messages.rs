#![no_main]
//! Fuzz target `relay_messages`: see `sremp_fuzz::relay_messages` for what it covers and the input layout.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sremp_fuzz::relay_messages(data));
