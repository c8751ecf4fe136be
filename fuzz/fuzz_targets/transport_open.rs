#![no_main]
//! Fuzz target `transport_open`: see `sremp_fuzz::transport_open` for what it covers and the input layout.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sremp_fuzz::transport_open(data));
