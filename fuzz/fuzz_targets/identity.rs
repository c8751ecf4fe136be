#![no_main]
//! Fuzz target `identity`: see `sremp_fuzz::identity` for what it covers and the input layout.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sremp_fuzz::identity(data));
