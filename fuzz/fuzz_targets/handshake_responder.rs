#![no_main]
//! Fuzz target `handshake_responder`: see `sremp_fuzz::handshake_responder` for what it covers and the input layout.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sremp_fuzz::handshake_responder(data));
