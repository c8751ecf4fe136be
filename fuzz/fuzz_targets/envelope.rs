#![no_main]
//! Fuzz target `envelope`: see `sremp_fuzz::envelope` for what it covers and the input layout.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sremp_fuzz::envelope(data));
