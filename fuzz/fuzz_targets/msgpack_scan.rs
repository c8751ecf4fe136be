#![no_main]
//! Fuzz target `msgpack_scan`: see `sremp_fuzz::msgpack_scan` for what it covers and the input layout.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sremp_fuzz::msgpack_scan(data));
