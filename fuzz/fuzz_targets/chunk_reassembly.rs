#![no_main]
//! Fuzz target `chunk_reassembly`: see `sremp_fuzz::chunk_reassembly` for what it covers and the input layout.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sremp_fuzz::chunk_reassembly(data));
