#![no_main]
//! Fuzz target `version_header`: see `sremp_fuzz::version_header` for what it covers and the input layout.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sremp_fuzz::version_header(data));
